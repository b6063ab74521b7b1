"""Build the model card of a converted model from its tensors and its training record."""

from __future__ import annotations

import datetime

from edgefrac import __version__
from edgefrac.card import DecisionThreshold, ModelCard, OutputKind
from edgefrac.classifier import tensor_quantization
from edgefrac.preprocessing import PreprocessConfig
from edgefrac.runtime import make_interpreter
from edgefrac.tta import TestTimeAugmentation


def card_for_model(
    tflite: bytes,
    *,
    name: str,
    architecture: str,
    preprocessing: PreprocessConfig,
    output_kind: OutputKind,
    threshold: DecisionThreshold,
    provenance: dict,
    evaluation: dict | None = None,
    test_time_augmentation: TestTimeAugmentation = TestTimeAugmentation.NONE,
) -> ModelCard:
    """Return a card whose tensor fields are read from ``tflite`` by the device runtime itself."""
    interpreter = make_interpreter(tflite, threads=1)
    provenance = {
        "converter": f"edgefrac {__version__}",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **provenance,
    }
    return ModelCard(
        name=name,
        architecture=architecture,
        preprocessing=preprocessing,
        input=tensor_quantization(interpreter.get_input_details()[0]),
        output=tensor_quantization(interpreter.get_output_details()[0]),
        output_kind=OutputKind(output_kind),
        threshold=threshold,
        test_time_augmentation=test_time_augmentation,
        provenance=provenance,
        evaluation=evaluation or {},
    )
