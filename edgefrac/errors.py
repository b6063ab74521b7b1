"""Exception hierarchy shared by the library and the CLI.

Every message names the bad value and what to do about it. The CLI maps the
classes below to exit codes (see ``edgefrac.exitcodes``).
"""


class EdgefracError(Exception):
    """Base class of every error edgefrac raises on purpose."""


class UsageError(EdgefracError):
    """An option or argument value is invalid."""


class MissingDependencyError(EdgefracError):
    """An optional package is not installed; the message gives the pip command."""


class RuntimeNotFoundError(MissingDependencyError):
    """No TFLite interpreter (LiteRT, tflite-runtime or TensorFlow) could be imported."""


class RuntimeIncompatibleError(EdgefracError):
    """The resolved interpreter cannot run this model or this numpy."""


class ModelFileError(EdgefracError):
    """A model file is missing, truncated, corrupted, edited or of the wrong type."""


class OutputNotProbabilityError(EdgefracError):
    """A model read as outputting a probability returned a value outside [0, 1] for one input."""


class InputError(EdgefracError):
    """One input image could not be scored; a batch records it and goes on."""


class UnreadableImageError(InputError):
    """The file is not a decodable image (wrong type, corrupt or unreadable)."""


class TruncatedImageError(InputError):
    """The image data ends before the decoder expected."""


class ImageTooLargeError(InputError):
    """The image header declares more pixels than the decompression-bomb limit."""


class UnsupportedImageError(InputError):
    """The image decodes but its layout cannot be mapped to the model input."""


class DriftExceededError(EdgefracError):
    """The quantized model drifted further from its reference than allowed."""


class OutputWriteError(EdgefracError):
    """A results file (CSV, JSON or audit log) could not be written, for example because the disk is full."""
