"""The model card: the preprocessing contract and provenance that travel with a model.

The card is plain JSON inside the model file (see ``edgefrac.modelfile``). Its
fields are what the device needs to score an image exactly as the model was
trained and calibrated, plus what an auditor needs to trace the model back.
"""

from __future__ import annotations

import dataclasses
import enum
import math

from edgefrac.errors import ModelFileError
from edgefrac.preprocessing import PreprocessConfig

CARD_FORMAT = "edgefrac-card/1"
DEFAULT_CLASS_NAMES = ("not_fractured", "fractured")


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
        return cls(
            dtype=str(data["dtype"]),
            shape=tuple(int(v) for v in data["shape"]),
            scale=float(data.get("scale", 0.0)),
            zero_point=int(data.get("zero_point", 0)),
        )


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
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


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
    provenance: dict = dataclasses.field(default_factory=dict)
    evaluation: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_kind", OutputKind(self.output_kind))
        value = self.threshold.value
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ModelFileError(f"model card threshold {value!r} is invalid: expected a probability in [0, 1]")
        if len(self.class_names) != 2:
            raise ModelFileError(f"model card lists {len(self.class_names)} class names; expected 2")

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
            "provenance": self.provenance,
            "evaluation": self.evaluation,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelCard:
        if not isinstance(data, dict):
            raise ModelFileError(f"model card is a JSON {type(data).__name__}, expected an object")
        if data.get("format") != CARD_FORMAT:
            raise ModelFileError(
                f"model card format {data.get('format')!r} is not supported (expected {CARD_FORMAT!r}); "
                "upgrade edgefrac or re-export the model"
            )
        try:
            return cls(
                name=str(data["name"]),
                architecture=str(data["architecture"]),
                preprocessing=PreprocessConfig.from_dict(data["preprocessing"]),
                input=TensorQuantization.from_dict(data["input"]),
                output=TensorQuantization.from_dict(data["output"]),
                output_kind=OutputKind(data.get("output_kind", "probability")),
                class_names=tuple(data.get("class_names", DEFAULT_CLASS_NAMES)),
                threshold=DecisionThreshold.from_dict(data["threshold"]),
                provenance=dict(data.get("provenance", {})),
                evaluation=dict(data.get("evaluation", {})),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"model card is incomplete or invalid ({type(error).__name__}: {error})") from None
