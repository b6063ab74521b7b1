"""Build every model file the suite runs from one Keras model, and the image subset.

TFLite float32 and float16 come from ``converters.tflite``. The int8 model
is the shipped ``.efm`` when one is given, else a conversion calibrated on
the calibration images. ONNX models come from tf2onnx (opset 17), and the
int8 one from ONNX Runtime's static QDQ quantization (int8 weights per
channel, int8 activations) calibrated on the same calibration images.

Every variant scores files in the views of the test-time augmentation that
the training record names, and a shipped int8 card must name the same one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from edgefrac.card import DecisionThreshold, OutputKind
from edgefrac.images import load_input
from edgefrac.preprocessing import PreprocessConfig
from edgefrac.tta import TestTimeAugmentation

logger = logging.getLogger(__name__)

ONNX_OPSET = 17


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """The model files of one architecture, keyed by variant name, the decision threshold and the views."""

    name: str
    keras: Path
    preprocessing: PreprocessConfig
    threshold: float
    int8_threshold: float
    files: dict[str, Path]
    augmentation: TestTimeAugmentation = TestTimeAugmentation.NONE


def training_record(keras_path: Path) -> dict:
    path = keras_path.with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else {}


def calibration_inputs(paths: list[Path], config: PreprocessConfig) -> np.ndarray:
    return np.stack([load_input(path, config) for path in paths]).astype(np.float32)


def prepare_model(
    name: str,
    keras_path: Path,
    int8_path: Path | None,
    calibration: list[Path],
    work: Path,
    *,
    default_config: PreprocessConfig,
    onnx: bool = True,
) -> ModelFiles:
    """Convert ``keras_path`` into every variant's file under ``work/name``, reusing files already there.

    With ``onnx=False`` the ONNX files are not made, for a machine without
    tf2onnx and onnxruntime, and the ModelFiles have no ONNX entries.
    """
    from converters.cards import card_for_model
    from converters.scoring import record_augmentation
    from converters.tf import keras
    from converters.tflite import convert
    from edgefrac.modelfile import load_model, write_model_file

    folder = work / name
    _clear_if_stale(folder, keras_path)
    record = training_record(keras_path)
    config = PreprocessConfig.from_dict(record["preprocessing"]) if "preprocessing" in record else default_config
    threshold = float(record.get("threshold", {}).get("value", 0.5))
    augmentation = record_augmentation(record, f"training record of {keras_path}")
    model = keras.models.load_model(keras_path, compile=False)
    inputs = None

    files: dict[str, Path] = {"keras-study": keras_path, "keras-tf-function": keras_path}
    # NOTE: with a shipped int8 file, its calibration images are whatever its converter used,
    # while the ONNX int8 model is calibrated on ``calibration``; the two sets may differ.
    for variant in ("float32", "float16", "int8"):
        path = folder / f"{name}-{variant}.efm"
        if variant == "int8" and int8_path is not None:
            files["tflite-int8"] = int8_path
            continue
        if not path.exists():
            if variant == "int8" and inputs is None:
                inputs = calibration_inputs(calibration, config)
            output_kind = OutputKind.LOGIT if variant == "int8" else OutputKind.PROBABILITY
            tflite = convert(model, variant, representative_inputs=inputs, output_kind=output_kind)
            card = card_for_model(
                tflite, name=f"{name}-{variant}", architecture=name, preprocessing=config, output_kind=output_kind,
                threshold=DecisionThreshold(threshold, chosen_on="training record threshold"),
                provenance={"calibration_images": len(calibration) if variant == "int8" else 0},
                test_time_augmentation=augmentation,
            )
            write_model_file(path, tflite, card)
        files[f"tflite-{variant}"] = path
    files["tflite-runtime-int8"] = files["tflite-int8"]
    int8_card = load_model(files["tflite-int8"]).card
    int8_threshold = int8_card.threshold.value if int8_card else threshold
    _check_int8_augmentation(files["tflite-int8"], int8_card, augmentation)

    if not onnx:
        return ModelFiles(name, keras_path, config, threshold, int8_threshold, files, augmentation)
    onnx_float = folder / f"{name}-float32.onnx"
    onnx_int8 = folder / f"{name}-int8.onnx"
    if not onnx_float.exists():
        _export_onnx(model, config, onnx_float)
    if not onnx_int8.exists():
        if inputs is None:
            inputs = calibration_inputs(calibration, config)
        _quantize_onnx(onnx_float, onnx_int8, inputs, folder)
    files["onnx-float32"] = onnx_float
    files["onnx-int8"] = onnx_int8
    return ModelFiles(name, keras_path, config, threshold, int8_threshold, files, augmentation)


def _check_int8_augmentation(path: Path, card, augmentation: TestTimeAugmentation) -> None:
    """Raise ValueError when the int8 file's card names other views than the training record."""
    card_augmentation = card.test_time_augmentation if card else TestTimeAugmentation.NONE
    if card_augmentation is augmentation:
        return
    source = "the int8 model card names" if card else "the int8 file has no model card, so it scores with"
    raise ValueError(
        f"{path}: {source} test-time augmentation {card_augmentation.value!r} but the training record names "
        f"{augmentation.value!r}; pass the int8 file converted from this record, or omit the int8 option so the "
        "suite converts one"
    )


def _clear_if_stale(folder: Path, keras_path: Path) -> None:
    """Delete converted files made from another version of the Keras model or its training record.

    The cards of the converted TFLite files carry the record's threshold and
    test-time augmentation, so the record's SHA-256 is part of the comparison.
    """
    from edgefrac.dataset import file_sha256

    marker = folder / "source.sha256"
    record_path = keras_path.with_suffix(".json")
    digest = file_sha256(keras_path)
    if record_path.is_file():
        digest += " " + file_sha256(record_path)
    if marker.is_file() and marker.read_text().strip() == digest:
        return
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    marker.write_text(digest + "\n")


def _export_onnx(model, config: PreprocessConfig, path: Path) -> None:
    import tf2onnx

    from converters.tf import tf

    signature = [tf.TensorSpec((1, config.height, config.width, config.channels), tf.float32, name="image")]
    function = tf.function(lambda batch: model(batch, training=False))
    tf2onnx.convert.from_function(function, input_signature=signature, opset=ONNX_OPSET, output_path=str(path))
    logger.info("wrote %s", path)


def _quantize_onnx(source: Path, target: Path, inputs: np.ndarray, folder: Path) -> None:
    from onnxruntime import quantization

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.samples = iter(inputs)

        def get_next(self):
            sample = next(self.samples, None)
            return None if sample is None else {"image": sample[np.newaxis, ...]}

    prepared = folder / f"{source.stem}-preprocessed.onnx"
    # Shapes are static, so the symbolic shape inference (which needs sympy) is skipped.
    quantization.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantization.quantize_static(
        str(prepared),
        str(target),
        Reader(),
        quant_format=quantization.QuantFormat.QDQ,
        activation_type=quantization.QuantType.QInt8,
        weight_type=quantization.QuantType.QInt8,
        per_channel=True,
    )
    prepared.unlink()
    logger.info("wrote %s", target)
