"""Device-side runtime for quantized bone-fracture classifiers.

This package never imports TensorFlow: it needs numpy, Pillow, click and a
TFLite interpreter (LiteRT, tflite-runtime or TensorFlow Lite).
"""

__version__ = "0.1.0"
