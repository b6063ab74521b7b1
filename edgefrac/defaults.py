"""The model ``edgefrac infer`` and ``edgefrac info`` use when no ``--model`` is given.

The default model ships as package data (``edgefrac/models/default.efm``), so a
wheel or an editable install carries it without a download.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from edgefrac.errors import ModelFileError

DEFAULT_MODEL_NAME = "default.efm"


def default_model_path() -> Path:
    """Return the file system path of the shipped default model.

    Raises:
        ModelFileError: the installed package does not contain the default model.
    """
    resource = importlib.resources.files("edgefrac").joinpath("models").joinpath(DEFAULT_MODEL_NAME)
    if not resource.is_file():
        raise ModelFileError(
            f"the default model edgefrac/models/{DEFAULT_MODEL_NAME} is not installed with this copy of "
            "edgefrac; pass --model PATH to an .efm or .tflite file, or reinstall edgefrac"
        )
    if not isinstance(resource, Path):
        # NOTE: a package imported from a zip archive has no file system path for its data.
        # pip installs wheels unpacked, so this only affects zipapp-style deployments.
        raise ModelFileError(
            f"edgefrac is imported from an archive ({resource}), so the default model has no file path; "
            "pass --model PATH to a model file on disk"
        )
    return resource
