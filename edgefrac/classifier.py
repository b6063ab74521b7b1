"""Score radiographs with a model file: decode, preprocess, quantize, invoke, dequantize.

Settings come from three places, in this order of precedence: explicit
arguments (the CLI's flags), the model card, and defaults read off the input
and output tensors of a plain ``.tflite`` that has no card.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path

import numpy as np

from edgefrac import quantization
from edgefrac.card import DecisionThreshold, ModelCard, OutputKind, TensorQuantization
from edgefrac.errors import ModelFileError, OutputNotProbabilityError, UsageError
from edgefrac.images import DEFAULT_MAX_PIXELS, load_input
from edgefrac.modelfile import LoadedModel, load_model
from edgefrac.preprocessing import PreprocessConfig, ResizeMethod, ValueScaling
from edgefrac.runtime import Runtime, make_interpreter, probe_load, resolve_runtime
from edgefrac.tta import TestTimeAugmentation, combine_probabilities, sigmoid, views

logger = logging.getLogger(__name__)

# How far a quantized output's representable range may reach past [0, 1] and still be read as a
# probability: TFLite's int8 logistic output (scale 1/256, zero point -128) spans 0..0.996.
_PROBABILITY_RANGE_MARGIN = 0.05


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One scored image: fracture probability, the raw model output and the decision."""

    probability: float
    raw_output: float
    fractured: bool


@dataclasses.dataclass(frozen=True)
class Overrides:
    """Settings given explicitly; each one that is not None replaces the card's value."""

    height: int | None = None
    width: int | None = None
    resize: ResizeMethod | None = None
    scaling: ValueScaling | None = None
    threshold: float | None = None
    output_kind: OutputKind | None = None
    test_time_augmentation: TestTimeAugmentation | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise UsageError(f"invalid threshold {self.threshold}: expected a probability in [0, 1]")


def tensor_quantization(detail: dict) -> TensorQuantization:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorQuantization(
        dtype=np.dtype(detail["dtype"]).name,
        shape=tuple(int(v) for v in detail["shape"]),
        scale=float(scale),
        zero_point=int(zero_point),
    )


def _departures_from_card(card: ModelCard, effective: ModelCard) -> list[str]:
    """List each setting of ``effective`` that differs from ``card`` as ``name card-value -> new-value``."""
    pairs = [
        ("resize", card.preprocessing.resize.value, effective.preprocessing.resize.value),
        ("scaling", card.preprocessing.scaling.value, effective.preprocessing.scaling.value),
        ("output kind", card.output_kind.value, effective.output_kind.value),
        (
            "test-time augmentation",
            card.test_time_augmentation.value,
            effective.test_time_augmentation.value,
        ),
    ]
    return [f"{name} {before} -> {after}" for name, before, after in pairs if before != after]


def representable_range(output: TensorQuantization) -> tuple[float, float]:
    """Return the lowest and highest real value a quantized tensor can hold: ``scale * (qmin|qmax - zero_point)``."""
    limits = np.iinfo(np.dtype(output.dtype))
    return output.scale * (int(limits.min) - output.zero_point), output.scale * (int(limits.max) - output.zero_point)


def infer_output_kind(output: TensorQuantization) -> OutputKind:
    """Guess the output kind of a model without a card from its output tensor.

    A quantized output can only represent ``scale * (q - zero_point)`` for q in
    the dtype's range. When that range reaches clearly outside [0, 1], the
    output is a logit. A float output, or a quantized one that fits [0, 1], is
    read as a probability. For int16, which TFLite quantizes symmetrically
    (zero point 0), only the upper end counts, because its logistic output
    spans -1..1.
    """
    if not output.is_quantized:
        return OutputKind.PROBABILITY
    lower, upper = representable_range(output)
    below_zero = output.dtype != "int16" and lower < -_PROBABILITY_RANGE_MARGIN
    if upper > 1.0 + _PROBABILITY_RANGE_MARGIN or below_zero:
        return OutputKind.LOGIT
    return OutputKind.PROBABILITY


class FractureClassifier:
    """A loaded model ready to score images; not safe to share between threads.

    A model without a manifest hash (a plain ``.tflite``) is first loaded in a
    child process by ``edgefrac.runtime.probe_load``, so a malformed file that
    crashes the runtime raises ModelFileError here instead of killing the
    process. ``probe=False`` skips that step, which saves about a second per
    load with LiteRT, for callers that already trust the bytes.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        threads: int | None = None,
        delegates: tuple = (),
        overrides: Overrides = Overrides(),
        allow_truncated: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        runtime: Runtime | None = None,
        probe: bool = True,
    ):
        self.model = model
        self.runtime = runtime or resolve_runtime()
        if probe and not model.verified:
            probe_load(model.tflite, runtime=self.runtime, label=str(model.path))
        self.interpreter = make_interpreter(model.tflite, threads=threads, delegates=delegates, runtime=self.runtime)
        self.allow_truncated = allow_truncated
        self.max_pixels = max_pixels
        input_details = self.interpreter.get_input_details()
        output_details = self.interpreter.get_output_details()
        if len(input_details) != 1 or len(output_details) != 1:
            raise ModelFileError(
                f"{model.path} has {len(input_details)} inputs and {len(output_details)} outputs; "
                "edgefrac runs classifiers with one image input and one score output"
            )
        self._input_index = input_details[0]["index"]
        self._output_index = output_details[0]["index"]
        self.input_tensor = tensor_quantization(input_details[0])
        self.output_tensor = tensor_quantization(output_details[0])
        if int(np.prod(self.output_tensor.shape)) != 1:
            raise ModelFileError(
                f"{model.path} outputs shape {list(self.output_tensor.shape)}; expected one score per image"
            )
        self.card = self._effective_card(overrides)
        self._input_dtype = np.dtype(input_details[0]["dtype"])

    @classmethod
    def from_path(cls, path: str | os.PathLike, **options) -> FractureClassifier:
        """Load and verify the model file at ``path`` and build a classifier for it."""
        return cls(load_model(path), **options)

    @property
    def preprocessing(self) -> PreprocessConfig:
        return self.card.preprocessing

    @property
    def threshold(self) -> float:
        return self.card.threshold.value

    def _effective_card(self, overrides: Overrides) -> ModelCard:
        card = self.model.card
        if card is None:
            card = self._card_from_tensors()
        else:
            self._check_card_matches_model(card)
        preprocessing = card.preprocessing
        changes = {
            key: value
            for key, value in (
                ("height", overrides.height),
                ("width", overrides.width),
                ("resize", overrides.resize),
                ("scaling", overrides.scaling),
            )
            if value is not None
        }
        if changes:
            preprocessing = PreprocessConfig(**{**dataclasses.asdict(preprocessing), **changes})
            self._check_size(preprocessing, from_overrides=True)
        threshold = card.threshold
        effective = dataclasses.replace(
            card,
            preprocessing=preprocessing,
            output_kind=overrides.output_kind or card.output_kind,
            test_time_augmentation=overrides.test_time_augmentation or card.test_time_augmentation,
        )
        if self.model.card is not None:
            departures = _departures_from_card(card, effective)
            if departures:
                logger.warning(
                    "%s: %s overridden on the command line; the model was validated with the card's values, "
                    "so its recorded sensitivity and specificity do not apply to these results",
                    self.model.path,
                    ", ".join(departures),
                )
                threshold = DecisionThreshold(
                    threshold.value, chosen_on="the model card, with preprocessing overridden on the command line"
                )
        if overrides.threshold is not None:
            threshold = DecisionThreshold(overrides.threshold, chosen_on="set on the command line")
        effective = dataclasses.replace(effective, threshold=threshold)
        if self.model.card is None:
            logger.warning(
                "%s has no model card, so no preprocessing contract was found: using %dx%d input, %s resize, "
                "%s scaling, %s output (%s), test-time augmentation %s and threshold %g. Pass --resize, "
                "--scaling, --output-kind, --test-time-augmentation or --threshold if the model was trained "
                "otherwise",
                self.model.path,
                preprocessing.width,
                preprocessing.height,
                preprocessing.resize.value,
                preprocessing.scaling.value,
                effective.output_kind.value,
                self._output_kind_source(overrides),
                effective.test_time_augmentation.value,
                threshold.value,
            )
        return effective

    def _output_kind_source(self, overrides: Overrides) -> str:
        if overrides.output_kind is not None:
            return "set on the command line"
        output = self.output_tensor
        if not output.is_quantized:
            return "assumed for a float output"
        lower, upper = representable_range(output)
        return f"inferred from the {output.dtype} output range {lower:.3g}..{upper:.3g}"

    def _card_from_tensors(self) -> ModelCard:
        shape = self.input_tensor.shape
        if len(shape) != 4 or shape[3] not in (1, 3):
            raise ModelFileError(
                f"{self.model.path} has input shape {list(shape)}; expected [1, height, width, 1 or 3]"
            )
        preprocessing = PreprocessConfig(
            height=shape[1], width=shape[2], channels=shape[3], channel_order="RGB" if shape[3] == 3 else "L"
        )
        return ModelCard(
            name=Path(self.model.path).stem,
            architecture="unknown",
            preprocessing=preprocessing,
            input=self.input_tensor,
            output=self.output_tensor,
            output_kind=infer_output_kind(self.output_tensor),
            threshold=DecisionThreshold(0.5, chosen_on="default for a model without a card"),
        )

    def _check_card_matches_model(self, card: ModelCard) -> None:
        for role, recorded, actual in (("input", card.input, self.input_tensor), ("output", card.output, self.output_tensor)):
            if recorded.dtype != actual.dtype or tuple(recorded.shape) != tuple(actual.shape):
                raise ModelFileError(
                    f"{self.model.path}: the card describes a {recorded.dtype} {role} of shape {list(recorded.shape)} "
                    f"but the model has {actual.dtype} {list(actual.shape)}; the file was assembled wrongly, "
                    "convert the model again"
                )
            if actual.is_quantized and not (
                math.isclose(recorded.scale, actual.scale, rel_tol=1e-6) and recorded.zero_point == actual.zero_point
            ):
                raise ModelFileError(
                    f"{self.model.path}: the card's {role} quantization (scale {recorded.scale}, zero point "
                    f"{recorded.zero_point}) differs from the model's ({actual.scale}, {actual.zero_point}); "
                    "convert the model again"
                )
        self._check_size(card.preprocessing, from_overrides=False)

    def _check_size(self, preprocessing: PreprocessConfig, *, from_overrides: bool) -> None:
        shape = self.input_tensor.shape
        expected = (preprocessing.height, preprocessing.width, preprocessing.channels)
        if len(shape) != 4 or tuple(shape[1:]) != expected:
            if not from_overrides:
                raise ModelFileError(
                    f"{self.model.path}: the card's preprocessing gives {preprocessing.height}x{preprocessing.width}"
                    f"x{preprocessing.channels} but the model input is {list(shape)}; convert the model again"
                )
            raise UsageError(
                f"preprocessing gives {preprocessing.height}x{preprocessing.width}x{preprocessing.channels} "
                f"but the model input is {list(shape)}; drop the --height/--width flags or fix them"
            )

    def invoke(self, model_input: np.ndarray) -> float:
        """Run one float32 ``(H, W, C)`` input and return the dequantized raw output."""
        batch = model_input[np.newaxis, ...]
        if self.input_tensor.is_quantized:
            batch = quantization.quantize(
                batch, self.input_tensor.scale, self.input_tensor.zero_point, self._input_dtype
            )
        else:
            batch = batch.astype(self._input_dtype)
        self.interpreter.set_tensor(self._input_index, batch)
        self.interpreter.invoke()
        output = self.interpreter.get_tensor(self._output_index)
        if self.output_tensor.is_quantized:
            output = quantization.dequantize(output, self.output_tensor.scale, self.output_tensor.zero_point)
        return float(np.asarray(output, dtype=np.float64).reshape(-1)[0])

    def to_probability(self, raw_output: float) -> float:
        """Turn the dequantized output into a probability according to the card's output kind.

        Raises:
            OutputNotProbabilityError: the output kind is probability but the
                value is finite and outside [0, 1], so the model most likely
                outputs a logit.
        """
        if self.card.output_kind is OutputKind.LOGIT:
            return float(sigmoid(raw_output))
        if math.isfinite(raw_output) and not 0.0 <= raw_output <= 1.0:
            raise OutputNotProbabilityError(
                f"model output {raw_output:g} is not a probability; pass --output-kind logit"
            )
        return raw_output

    def predict_input(self, model_input: np.ndarray) -> Prediction:
        """Score one preprocessed input, in each view the card's test-time augmentation names.

        With more than one view, the probability comes from the mean of the
        views' logits, and ``raw_output`` is that mean logit for a logit
        output, or that probability for a probability output.
        """
        raws = [self.invoke(view) for view in views(model_input, self.card.test_time_augmentation)]
        if len(raws) == 1:
            raw = raws[0]
            probability = self.to_probability(raw)
        elif self.card.output_kind is OutputKind.LOGIT:
            raw = float(np.mean(raws))
            probability = float(sigmoid(raw))
        else:
            probability = float(combine_probabilities([self.to_probability(value) for value in raws]))
            raw = probability
        return Prediction(probability=probability, raw_output=raw, fractured=probability >= self.threshold)

    def predict_file(self, path: str | os.PathLike) -> Prediction:
        """Decode, preprocess and score one image or DICOM file.

        Raises:
            InputError: the file cannot be decoded; the message gives the reason.
        """
        model_input = load_input(
            path, self.preprocessing, allow_truncated=self.allow_truncated, max_pixels=self.max_pixels
        )
        return self.predict_input(model_input)
