"""The model card: the preprocessing contract and provenance that travel with a model.

The card is plain JSON inside the model file (see ``edgefrac.modelfile``). Its
fields are what the device needs to score an image exactly as the model was
trained and calibrated, plus what an auditor needs to trace the model back.

``class_names`` lists the negative class first and the positive class second.
The model's single output is the probability (or logit) of ``class_names[1]``,
and every command reads that probability as the probability of a fracture.
So a card whose first name is a fracture class, or whose second name is the
absence of one (``["fractured", "not_fractured"]``), is rejected.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re

from edgefrac.errors import ModelFileError, UsageError
from edgefrac.preprocessing import PreprocessConfig
from edgefrac.tta import TestTimeAugmentation

CARD_FORMAT = "edgefrac-card/1"
DEFAULT_CLASS_NAMES = ("not_fractured", "fractured")
MAX_CLASS_NAME_LENGTH = 64
"""Maximum length of a card's class name, because the name is printed in every results row."""

# A class name about fractures, and one that negates it ("not_fractured", "Non-fractured", "no fracture",
# "unfractured", "NotFractured", "fracture-free"). Separators become spaces before matching.
_FRACTURE_WORD = re.compile(r"fractur")
_NEGATED_FRACTURE = re.compile(r"\b(not|non|no|without)\b.*fractur|\b(not|non|no|un)fractur|fractur\w* free\b")
_REQUIRED = object()


class OutputKind(str, enum.Enum):
    """Meaning of the model's single output value before the runtime turns it into a probability."""

    PROBABILITY = "probability"
    LOGIT = "logit"


@dataclasses.dataclass(frozen=True)
class TensorQuantization:
    """Type and affine quantization of one model input or output tensor."""

    dtype: str
    shape: tuple[int, ...]
    scale: float = 0.0
    zero_point: int = 0

    @property
    def is_quantized(self) -> bool:
        return self.dtype in ("int8", "uint8", "int16") and self.scale > 0

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape), "scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_dict(cls, data: dict) -> TensorQuantization:
        shape, zero_point = data["shape"], data.get("zero_point", 0)
        if not isinstance(shape, list) or not all(_is_whole(v) for v in shape):
            raise ValueError(f"shape {shape!r} is not a list of whole numbers")
        if not _is_whole(zero_point):
            raise ValueError(f"zero_point {zero_point!r} is not a whole number")
        return cls(dtype=str(data["dtype"]), shape=tuple(shape), scale=float(data.get("scale", 0.0)), zero_point=zero_point)


@dataclasses.dataclass(frozen=True)
class DecisionThreshold:
    """The probability at or above which an image is called fractured, and what it was chosen for."""

    value: float
    target_sensitivity: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    chosen_on: str = "not recorded"
    images: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DecisionThreshold:
        if not isinstance(data, dict):
            raise ValueError(f"expected an object with a 'value' entry, got {data!r}")
        fields = {f.name for f in dataclasses.fields(cls)} - {"value"}
        values = {k: v for k, v in data.items() if k in fields}
        for name in ("target_sensitivity", "sensitivity", "specificity"):
            if values.get(name) is not None and not _is_fraction(values[name]):
                raise ValueError(f"{name} {values[name]!r} is not a number in [0, 1]")
        if not isinstance(values.get("chosen_on", ""), str):
            raise ValueError(f"chosen_on {values['chosen_on']!r} is not text")
        images = values.get("images")
        if images is not None and (not _is_number(images) or images != int(images) or images < 0):
            raise ValueError(f"images {images!r} is not a count")
        return cls(data["value"], **values)


def _is_whole(value) -> bool:
    """Return whether ``value`` is a JSON integer (``true`` and ``224.0`` are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """Return whether ``value`` is a finite JSON number (``true`` and ``false`` are not numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_fraction(value) -> bool:
    return _is_number(value) and 0.0 <= value <= 1.0


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """Everything a device needs to run a model as it was validated, and where it came from."""

    name: str
    architecture: str
    preprocessing: PreprocessConfig
    input: TensorQuantization
    output: TensorQuantization
    output_kind: OutputKind = OutputKind.PROBABILITY
    class_names: tuple[str, str] = DEFAULT_CLASS_NAMES
    threshold: DecisionThreshold = DecisionThreshold(0.5)
    test_time_augmentation: TestTimeAugmentation = TestTimeAugmentation.NONE
    provenance: dict = dataclasses.field(default_factory=dict)
    evaluation: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_kind", OutputKind(self.output_kind))
        object.__setattr__(self, "test_time_augmentation", TestTimeAugmentation.parse(self.test_time_augmentation))
        value = self.threshold.value
        if not _is_fraction(value):
            raise ModelFileError(f"model card threshold {value!r} is invalid: expected a probability in [0, 1]")
        check_class_names(self.class_names)

    def to_dict(self) -> dict:
        return {
            "format": CARD_FORMAT,
            "name": self.name,
            "architecture": self.architecture,
            "preprocessing": self.preprocessing.to_dict(),
            "input": self.input.to_dict(),
            "output": self.output.to_dict(),
            "output_kind": self.output_kind.value,
            "class_names": list(self.class_names),
            "threshold": self.threshold.to_dict(),
            "test_time_augmentation": self.test_time_augmentation.value,
            "provenance": self.provenance,
            "evaluation": self.evaluation,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelCard:
        """Build a card from parsed ``card.json``; a ModelFileError names the missing or invalid field."""
        if not isinstance(data, dict):
            raise ModelFileError(f"model card is a JSON {type(data).__name__}, expected an object")
        if data.get("format") != CARD_FORMAT:
            raise ModelFileError(
                f"model card format {data.get('format')!r} is not supported (expected {CARD_FORMAT!r}); "
                "upgrade edgefrac or re-export the model"
            )
        fields = {
            "name": _parse_field(data, "name", str),
            "architecture": _parse_field(data, "architecture", str),
            "preprocessing": _parse_field(data, "preprocessing", PreprocessConfig.from_dict),
            "input": _parse_field(data, "input", TensorQuantization.from_dict),
            "output": _parse_field(data, "output", TensorQuantization.from_dict),
            "output_kind": _parse_field(data, "output_kind", OutputKind, default="probability"),
            "class_names": _parse_field(data, "class_names", _parse_class_names, default=DEFAULT_CLASS_NAMES),
            "threshold": _parse_field(data, "threshold", DecisionThreshold.from_dict),
            "test_time_augmentation": _parse_field(
                data, "test_time_augmentation", TestTimeAugmentation.parse, default="none"
            ),
            "provenance": _parse_field(data, "provenance", _object, default={}),
            "evaluation": _parse_field(data, "evaluation", _object, default={}),
        }
        try:
            return cls(**fields)
        except (TypeError, ValueError) as error:
            raise ModelFileError(f"model card is invalid ({type(error).__name__}: {error})") from None


def _parse_field(data: dict, name: str, parse, *, default=_REQUIRED):
    """Parse ``data[name]`` with ``parse``, raising a ModelFileError that names the field."""
    if name in data:
        value = data[name]
    elif default is _REQUIRED:
        raise ModelFileError(f"model card has no {name!r} field; convert the model again to write a complete card")
    else:
        value = default
    try:
        return parse(value)
    except KeyError as error:
        raise ModelFileError(f"model card field {name!r} has no {error.args[0]!r} entry") from None
    except (AttributeError, TypeError, ValueError, UsageError) as error:
        # PreprocessConfig raises UsageError because the same checks apply to command-line flags.
        raise ModelFileError(f"model card field {name!r} is invalid: {error}") from None


def _object(value) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"expected an object, got {value!r}")
    return value


def _parse_class_names(value) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"expected a list of two strings, got {value!r}")
    return tuple(value)


def check_class_names(names: tuple[str, ...]) -> None:
    """Check that ``names`` are two distinct non-empty names, negative class first, fractured class second.

    Raises:
        ModelFileError: the names are not two, are empty or equal, or are in
            the reversed order.
    """
    if len(names) != 2:
        raise ModelFileError(f"model card lists {len(names)} class names {list(names)}; expected 2")
    negative, positive = names
    if not all(name.isprintable() for name in names):
        raise ModelFileError(
            f"model card class_names {list(names)} are invalid: they contain control characters, which would "
            "corrupt the results table; convert the model again with plain names"
        )
    if any(len(name) > MAX_CLASS_NAME_LENGTH for name in names):
        raise ModelFileError(
            f"model card class_names are invalid: a name is longer than {MAX_CLASS_NAME_LENGTH} characters; "
            "convert the model again with short names"
        )
    if not negative.strip() or not positive.strip() or _normalised(negative) == _normalised(positive):
        raise ModelFileError(
            f"model card class_names {list(names)} are invalid: expected two distinct non-empty names"
        )
    if _names_fracture(negative) or _names_no_fracture(positive):
        raise ModelFileError(
            f"model card class_names {list(names)} are invalid: class_names[0] must be the class without a "
            "fracture and class_names[1] the fractured class, because the model output is read as the probability "
            "of class_names[1]. If the output is the fracture probability, swap the names; otherwise convert the "
            "model with fractured as the positive class"
        )


def _normalised(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def _names_fracture(name: str) -> bool:
    text = _normalised(name)
    return bool(_FRACTURE_WORD.search(text)) and not _NEGATED_FRACTURE.search(text)


def _names_no_fracture(name: str) -> bool:
    return bool(_NEGATED_FRACTURE.search(_normalised(name)))
