"""The inference pipelines the suite compares, each behind one small interface.

Every variant loads a model for a thread count, runs one preprocessed input
once (``invoke``) and scores one file from disk (``score_file``). A file is
scored in each view of the model's test-time augmentation (``edgefrac.tta``),
so a model with ``horizontal_flip`` costs two invocations per file. Heavy imports
(TensorFlow, ONNX Runtime) happen inside ``load``, so the worker process of
a TFLite variant never imports TensorFlow and its peak RSS is its own.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgefrac.images import load_pixels
from edgefrac.preprocessing import PreprocessConfig, to_model_input
from edgefrac.tta import TestTimeAugmentation, combine_probabilities, views

KERAS_STUDY = "keras-study"
KERAS_TF_FUNCTION = "keras-tf-function"
TFLITE_FLOAT32 = "tflite-float32"
TFLITE_FLOAT16 = "tflite-float16"
TFLITE_INT8 = "tflite-int8"
TFLITE_RUNTIME_INT8 = "tflite-runtime-int8"
ONNX_FLOAT32 = "onnx-float32"
ONNX_INT8 = "onnx-int8"

ALL_VARIANTS = (
    KERAS_STUDY, KERAS_TF_FUNCTION, TFLITE_FLOAT32, TFLITE_FLOAT16, TFLITE_INT8, TFLITE_RUNTIME_INT8,
    ONNX_FLOAT32, ONNX_INT8,
)
TFLITE_VARIANTS = (TFLITE_FLOAT32, TFLITE_FLOAT16, TFLITE_INT8, TFLITE_RUNTIME_INT8)


class StageTimer:
    """Seconds spent per stage (decode, preprocess, invoke of every view) over all ``score_file`` calls."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - started
        return now


class Variant:
    """Base class: decode with edgefrac's decoder, subclasses supply ``invoke``."""

    def __init__(
        self,
        model_path: Path,
        config: PreprocessConfig,
        threads: int,
        augmentation: TestTimeAugmentation = TestTimeAugmentation.NONE,
    ):
        self.model_path = Path(model_path)
        self.config = config
        self.threads = threads
        self.augmentation = augmentation
        self.stages = StageTimer()

    def invoke(self, model_input: np.ndarray) -> float:
        """Run one float32 ``(H, W, C)`` input once and return the fracture probability."""
        raise NotImplementedError

    def score_input(self, model_input: np.ndarray) -> float:
        """Invoke once per view of ``model_input`` and return the probability of the mean logit."""
        per_view = [self.invoke(view) for view in views(model_input, self.augmentation)]
        return float(combine_probabilities(per_view))

    def score_file(self, path: Path) -> float:
        started = time.perf_counter()
        pixels = load_pixels(path, self.config.size, self.config.resize)
        started = self.stages.add("decode and resize", started)
        model_input = to_model_input(pixels, self.config)
        started = self.stages.add("preprocess", started)
        probability = self.score_input(model_input)
        self.stages.add("invoke", started)
        return probability


class KerasStudyVariant(Variant):
    """The original study's pipeline: ``keras.utils.load_img`` and ``model.predict`` per image.

    ``load_img`` resizes with its default nearest-neighbour filter, as the
    study did, so its accuracy can differ a little from the other variants.
    The study scored one view per image. This variant scores every view of
    ``augmentation``, so that its accuracy is comparable with the other variants.
    """

    def __init__(self, model_path, config, threads, augmentation=TestTimeAugmentation.NONE):
        super().__init__(model_path, config, threads, augmentation)
        from converters.tf import keras, tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        self.keras = keras
        self.model = keras.models.load_model(self.model_path, compile=False)

    def invoke(self, model_input):
        output = self.model.predict(model_input[np.newaxis, ...], verbose=0)
        return float(np.asarray(output).reshape(-1)[0])

    def score_file(self, path):
        started = time.perf_counter()
        image = self.keras.utils.load_img(path, target_size=(self.config.height, self.config.width))
        pixels = self.keras.utils.img_to_array(image)
        started = self.stages.add("decode and resize", started)
        model_input = self.config.scaling.apply(pixels)
        started = self.stages.add("preprocess", started)
        probability = self.score_input(model_input)
        self.stages.add("invoke", started)
        return probability


class KerasFunctionVariant(Variant):
    """Keras ``model(x)`` traced once into a ``tf.function``, fed by edgefrac's decoder."""

    def __init__(self, model_path, config, threads, augmentation=TestTimeAugmentation.NONE):
        super().__init__(model_path, config, threads, augmentation)
        from converters.tf import keras, tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        self.tf = tf
        self.model = keras.models.load_model(self.model_path, compile=False)
        self.function = tf.function(lambda batch: self.model(batch, training=False))

    def invoke(self, model_input):
        output = self.function(self.tf.constant(model_input[np.newaxis, ...]))
        return float(np.asarray(output).reshape(-1)[0])


class TFLiteVariant(Variant):
    """A TFLite model run by edgefrac's classifier (LiteRT, or the runtime EDGEFRAC_RUNTIME names).

    Files are scored with ``predict_input``, as ``edgefrac infer`` scores them,
    so the views are the ones the model card names.
    """

    def __init__(self, model_path, config, threads, augmentation=TestTimeAugmentation.NONE):
        super().__init__(model_path, config, threads, augmentation)
        from edgefrac.classifier import FractureClassifier

        self.classifier = FractureClassifier.from_path(self.model_path, threads=threads)
        self.config = self.classifier.preprocessing
        card_augmentation = self.classifier.card.test_time_augmentation
        if card_augmentation is not augmentation:
            raise ValueError(
                f"{self.model_path}: the model card names test-time augmentation {card_augmentation.value!r} "
                f"but the requested one is {augmentation.value!r} (the suite passes the training record's); "
                "convert the model again from this record, or delete benchmarks/.work so the suite converts it again"
            )

    def invoke(self, model_input):
        return self.classifier.to_probability(self.classifier.invoke(model_input))

    def score_input(self, model_input):
        return self.classifier.predict_input(model_input).probability


class OnnxVariant(Variant):
    """An ONNX model run by ONNX Runtime's CPU execution provider."""

    def __init__(self, model_path, config, threads, augmentation=TestTimeAugmentation.NONE):
        super().__init__(model_path, config, threads, augmentation)
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(self.model_path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def invoke(self, model_input):
        (output,) = self.session.run(None, {self.input_name: model_input[np.newaxis, ...].astype(np.float32)})
        return float(np.asarray(output).reshape(-1)[0])


def make_variant(
    name: str,
    model_path: Path,
    config: PreprocessConfig,
    threads: int,
    augmentation: TestTimeAugmentation = TestTimeAugmentation.NONE,
) -> Variant:
    """Load ``name``'s model for ``threads`` threads, scoring files in the views of ``augmentation``."""
    if name == KERAS_STUDY:
        return KerasStudyVariant(model_path, config, threads, augmentation)
    if name == KERAS_TF_FUNCTION:
        return KerasFunctionVariant(model_path, config, threads, augmentation)
    if name in TFLITE_VARIANTS:
        return TFLiteVariant(model_path, config, threads, augmentation)
    if name in (ONNX_FLOAT32, ONNX_INT8):
        return OnnxVariant(model_path, config, threads, augmentation)
    raise ValueError(f"unknown variant {name!r}: expected one of {', '.join(ALL_VARIANTS)}")
