"""Shared fixtures: a tiny Keras model converted once per session, real FracAtlas images, sample files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
FRACATLAS_DIR = Path(os.environ.get("EDGEFRAC_FRACATLAS", REPO_ROOT.parent / "shared" / "fracatlas"))
WEIGHTS_DIR = REPO_ROOT.parent / "shared" / "weights"
TINY_SIZE = 32


@pytest.fixture(scope="session")
def fracatlas_dir() -> Path:
    """The shared FracAtlas folder; tests that need real radiographs skip without it."""
    if not (FRACATLAS_DIR / "images").is_dir():
        pytest.skip(f"FracAtlas images not found at {FRACATLAS_DIR}; set EDGEFRAC_FRACATLAS to the dataset folder")
    return FRACATLAS_DIR


@pytest.fixture(scope="session")
def tiny_keras_model(tmp_path_factory):
    """A small untrained Keras classifier with the project's logit/probability head, saved as .keras."""
    from converters import architectures
    from converters.tf import keras

    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape=(TINY_SIZE, TINY_SIZE, 3), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logit = keras.layers.Dense(1, name=architectures.LOGIT_LAYER)(x)
    probability = keras.layers.Activation("sigmoid", name=architectures.PROBABILITY_LAYER)(logit)
    model = keras.Model(inputs, probability, name="tiny")
    path = tmp_path_factory.mktemp("keras") / "tiny.keras"
    model.save(path)
    return path


def _tiny_card_and_bytes(keras_path: Path, variant: str, output_kind: str):
    from converters.cards import card_for_model
    from converters.tf import keras
    from converters.tflite import convert
    from edgefrac.card import DecisionThreshold
    from edgefrac.preprocessing import PreprocessConfig, ValueScaling

    model = keras.models.load_model(keras_path)
    rng = np.random.default_rng(0)
    representative = rng.random((16, TINY_SIZE, TINY_SIZE, 3), dtype=np.float32)
    tflite = convert(model, variant, representative_inputs=representative, output_kind=output_kind)
    config = PreprocessConfig(height=TINY_SIZE, width=TINY_SIZE, scaling=ValueScaling.UNIT)
    card = card_for_model(
        tflite,
        name=f"tiny-{variant}",
        architecture="tiny",
        preprocessing=config,
        output_kind=output_kind,
        threshold=DecisionThreshold(0.5, chosen_on="fixed for tests"),
        provenance={"calibration_images": len(representative)},
    )
    return tflite, card


@pytest.fixture(scope="session")
def tiny_int8_model(tmp_path_factory, tiny_keras_model) -> Path:
    """The tiny model as a full-integer int8 ``.efm`` with a logit output and a card."""
    from edgefrac.modelfile import write_model_file

    tflite, card = _tiny_card_and_bytes(tiny_keras_model, "int8", "logit")
    path = tmp_path_factory.mktemp("models") / "tiny-int8.efm"
    write_model_file(path, tflite, card)
    return path


@pytest.fixture(scope="session")
def tiny_int8_probability_model(tmp_path_factory, tiny_keras_model) -> Path:
    """The tiny model as an int8 ``.efm`` whose output is the 256-level sigmoid."""
    from edgefrac.modelfile import write_model_file

    tflite, card = _tiny_card_and_bytes(tiny_keras_model, "int8", "probability")
    path = tmp_path_factory.mktemp("models") / "tiny-int8-probability.efm"
    write_model_file(path, tflite, card)
    return path


@pytest.fixture(scope="session")
def tiny_float_tflite(tmp_path_factory, tiny_keras_model) -> Path:
    """The tiny model as a plain float32 ``.tflite`` without a card."""
    tflite, _ = _tiny_card_and_bytes(tiny_keras_model, "float32", "probability")
    path = tmp_path_factory.mktemp("models") / "tiny-float32.tflite"
    path.write_bytes(tflite)
    return path


@pytest.fixture()
def sample_images(tmp_path) -> Path:
    """A folder of generated radiograph-like images: two JPEGs, a PNG and a grayscale TIFF in a subfolder."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for index in range(2):
        pixels = rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"scan{index}.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "scan2.png")
    Image.fromarray(rng.integers(0, 256, (70, 50), dtype=np.uint8), mode="L").save(folder / "sub" / "scan3.tif")
    return folder


LABELLED_STRATA = {
    (1, "hand"): 9,
    (1, "leg"): 7,
    (1, "mixed"): 1,
    (0, "hand"): 13,
    (0, "leg"): 11,
    (0, "hip"): 4,
    (0, "shoulder"): 2,
}
"""Images per (label, body region) of ``write_labelled_folder``'s default dataset."""


def write_labelled_folder(
    root: Path, strata: dict = LABELLED_STRATA, *, copies: int = 3, truncated: int = 1, seed: int = 0
) -> Path:
    """Write a FracAtlas-like dataset: images/Fractured, images/Non_fractured and dataset.csv.

    Fractured images carry a bright vertical bar on noise, so a tiny model can
    learn them. Every third image has orthopaedic hardware in the CSV. The
    first ``copies`` images get a byte-identical copy under a new name, and
    the last ``truncated`` images are cut to half their bytes.
    """
    rng = np.random.default_rng(seed)
    rows = []
    paths = []
    for (label, region), count in sorted(strata.items()):
        folder = root / "images" / ("Fractured" if label else "Non_fractured")
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            image_id = f"IMG{len(rows):07d}.jpg"
            pixels = rng.integers(40, 110, (48, 48), dtype=np.uint8)
            if label:
                column = int(rng.integers(8, 40))
                pixels[:, column : column + 6] = 230
            Image.fromarray(pixels, mode="L").convert("RGB").save(folder / image_id, quality=92)
            rows.append((image_id, label, region, len(rows) % 3 == 0))
            paths.append(folder / image_id)
    for index in range(copies):
        source = paths[index]
        image_id, label, region, hardware = rows[index]
        copy_id = f"COPY{index:04d}.jpg"
        (source.parent / copy_id).write_bytes(source.read_bytes())
        rows.append((copy_id, label, region, hardware))
    for path in paths[len(paths) - truncated :]:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    regions = ("hand", "leg", "hip", "shoulder", "mixed")
    lines = ["image_id,hand,leg,hip,shoulder,mixed,hardware,fractured"]
    for image_id, label, region, hardware in rows:
        flags = ",".join(str(int(region == name)) for name in regions)
        lines.append(f"{image_id},{flags},{int(hardware)},{label}")
    (root / "dataset.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def labelled_split(tmp_path_factory) -> tuple[Path, Path]:
    """A generated FracAtlas-like dataset and its split file (seed 1234), shared by the session."""
    from converters.split import make_split, write_split

    root = write_labelled_folder(tmp_path_factory.mktemp("labelled"))
    split_file = root.parent / "split.json"
    write_split(make_split(root, seed=1234), split_file)
    return root, split_file


# Root lists and reads any folder through these two capabilities, whatever the folder's mode.
_FOLDER_ACCESS_CAPABILITIES = "-dac_override,-dac_read_search"


def command_without_folder_access(folder: Path) -> list[str]:
    """Return a command prefix under which listing ``folder`` (mode 000) fails, or skip the test.

    A user other than root needs no prefix. For root, setpriv (util-linux)
    starts the command without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so the
    folder's mode applies to it as to any other user. The prefix is checked by
    listing ``folder`` under it.
    """
    import shutil
    import subprocess
    import sys

    prefixes = [[]]
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        prefixes.append([setpriv, "--bounding-set", _FOLDER_ACCESS_CAPABILITIES])
    probe = "import os, sys; os.listdir(sys.argv[1])"
    for prefix in prefixes:
        completed = subprocess.run(
            [*prefix, sys.executable, "-c", probe, str(folder)], capture_output=True, text=True, timeout=60
        )
        if "PermissionError" in completed.stderr:
            return prefix
    pytest.skip(f"this user can list {folder} despite mode 000, and setpriv cannot drop the capabilities that allow it")
