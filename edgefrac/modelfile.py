"""The ``.efm`` model file: one file that carries a TFLite model and its model card.

Format choice. There are two precedents: MediaPipe's ``.task`` file, a zip
archive of the model and its metadata, and TFLite's metadata table written into
the model flatbuffer. edgefrac uses a zip archive because

* the card is plain JSON that ``unzip -p model.efm card.json`` shows on any
  machine, while flatbuffer metadata needs the TFLite metadata schema and the
  ``tflite-support`` tooling, which has no wheels for current Python versions;
* the archive carries a manifest with the SHA-256 of each member, so the model
  bytes are verified before the interpreter reads them. LiteRT has crashed
  (segmentation fault) on truncated flatbuffers, and a hash check cannot crash;
* the ``.tflite`` member is byte-for-byte what the converter wrote, so
  ``edgefrac export`` (or ``unzip``) gives a plain model for benchmark_model,
  edgetpu_compiler or Netron.

Members are stored uncompressed, in this order: ``manifest.json``,
``card.json``, ``model.tflite``. The manifest lists every member's size and
SHA-256; any other member, a missing one or a mismatch rejects the file.

NOTE: the hashes detect corruption, not tampering: whoever edits the card
and rewrites the manifest's hashes produces a file that loads. There is no
signature.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path

from edgefrac.card import ModelCard
from edgefrac.errors import ModelFileError, UsageError

logger = logging.getLogger(__name__)

MODEL_FILE_FORMAT = "edgefrac-model/1"
MODEL_SUFFIX = ".efm"
MANIFEST_NAME = "manifest.json"
CARD_NAME = "card.json"
TFLITE_NAME = "model.tflite"
MAX_MODEL_BYTES = 1 << 30
"""Largest model file read into memory; the shipped models are under 10 MB."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of lists and objects accepted in the manifest and the card; the shipped cards nest 4 levels."""

_TFLITE_IDENTIFIER = b"TFL3"


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A verified model: the TFLite bytes, its card (None for a plain .tflite) and the file's hash."""

    path: Path
    tflite: bytes
    card: ModelCard | None
    sha256: str

    @property
    def has_card(self) -> bool:
        return self.card is not None

    @property
    def verified(self) -> bool:
        """Whether a manifest hash vouches for the TFLite bytes (true for every ``.efm``)."""
        return self.card is not None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_tflite(data: bytes) -> bool:
    """Return whether ``data`` starts like a TFLite flatbuffer (identifier ``TFL3`` at offset 4)."""
    return len(data) >= 8 and data[4:8] == _TFLITE_IDENTIFIER


def _root_table_in_bounds(data: bytes) -> bool:
    # A flatbuffer starts with the little-endian uint32 offset of its root table.
    return int.from_bytes(data[:4], "little") + 4 <= len(data)


def pack(tflite: bytes, card: ModelCard) -> bytes:
    """Build the bytes of a model file from a TFLite model and its card."""
    if not is_tflite(tflite):
        raise ModelFileError("the model bytes are not a TFLite flatbuffer (no TFL3 identifier)")
    card_bytes = (json.dumps(card.to_dict(), indent=1, sort_keys=True) + "\n").encode("utf-8")
    manifest = {
        "format": MODEL_FILE_FORMAT,
        "members": {
            CARD_NAME: {"bytes": len(card_bytes), "sha256": _sha256(card_bytes)},
            TFLITE_NAME: {"bytes": len(tflite), "sha256": _sha256(tflite)},
        },
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in (
            (MANIFEST_NAME, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8")),
            (CARD_NAME, card_bytes),
            (TFLITE_NAME, tflite),
        ):
            # A fixed timestamp keeps the file identical for identical contents.
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            archive.writestr(info, data)
    return buffer.getvalue()


def write_model_file(path: str | os.PathLike, tflite: bytes, card: ModelCard) -> str:
    """Write a model file atomically and return its SHA-256."""
    data = pack(tflite, card)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, data)
    return _sha256(data)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file with mode 0600; a model is meant to be copied and shared.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_model_bytes(path: str | os.PathLike) -> bytes:
    """Read a model file into memory with errors that name the path."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelFileError(f"model file {path} not found; check the path to the .efm or .tflite file") from None
    if path.is_dir():
        raise ModelFileError(f"model path {path} is a directory; pass an .efm or .tflite file")
    if size == 0:
        raise ModelFileError(f"model file {path} is empty (0 bytes); copy the model file again")
    if size > MAX_MODEL_BYTES:
        raise ModelFileError(f"model file {path} is {size:,} bytes, over the {MAX_MODEL_BYTES:,}-byte limit")
    try:
        return path.read_bytes()
    except PermissionError:
        raise ModelFileError(f"model file {path} is not readable (permission denied)") from None


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Read and verify a model file (``.efm``) or a plain ``.tflite``.

    Raises:
        ModelFileError: the file is missing, empty, truncated, corrupted, edited
            after it was written, or not a TFLite model at all.
    """
    path = Path(path)
    data = read_model_bytes(path)
    digest = _sha256(data)
    if data[:4] == b"PK\x03\x04":
        tflite, card = _unpack(path, data)
        return LoadedModel(path=path, tflite=tflite, card=card, sha256=digest)
    if is_tflite(data):
        if not _root_table_in_bounds(data):
            raise ModelFileError(f"{path} is a truncated TFLite file (its root table lies past the end); copy it again")
        logger.debug("%s is a plain TFLite file: no hash to verify, no card", path)
        return LoadedModel(path=path, tflite=data, card=None, sha256=digest)
    raise ModelFileError(f"{path} is not a model edgefrac can run: {_describe_foreign(path, data)}")


def _describe_foreign(path: Path, data: bytes) -> str:
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        return "it is an HDF5 (.h5) Keras file; convert it first with `edgefrac convert`"
    head = data[:256].lower()
    if path.suffix.lower() == ".onnx" or b"onnx" in head or b"pytorch" in head:
        return "it looks like an ONNX model; edgefrac runs TFLite models (.efm or .tflite)"
    if path.suffix.lower() in (".keras", ".h5"):
        return "it is a Keras model; convert it first with `edgefrac convert`"
    return "expected an edgefrac model file (.efm) or a TFLite flatbuffer (.tflite)"


def _unpack(path: Path, data: bytes) -> tuple[bytes, ModelCard]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            if "config.json" in names and "metadata.json" in names:
                raise ModelFileError(
                    f"{path} is a Keras model archive; convert it first with `edgefrac convert {path}`"
                )
            expected = [MANIFEST_NAME, CARD_NAME, TFLITE_NAME]
            if sorted(names) != sorted(expected):
                raise ModelFileError(
                    f"{path} is a zip archive with members {names}, not an edgefrac model file "
                    f"(expected {expected})"
                )
            # Sizes come from the central directory, so a deflated member cannot expand without bound.
            for info in archive.infolist():
                if info.file_size > MAX_MODEL_BYTES:
                    raise ModelFileError(
                        f"{path}: member {info.filename} declares {info.file_size:,} bytes, over the "
                        f"{MAX_MODEL_BYTES:,}-byte limit"
                    )
            manifest_bytes = archive.read(MANIFEST_NAME)
            card_bytes = archive.read(CARD_NAME)
            tflite = archive.read(TFLITE_NAME)
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError) as error:
        raise ModelFileError(
            f"{path} is truncated or corrupted ({type(error).__name__}: {error}); copy the model file again"
        ) from None

    # The manifest has no hash of its own, so a damaged one calls for a fresh copy.
    manifest = _parse_json(path, MANIFEST_NAME, manifest_bytes, fix="copy the model file again")
    file_format = manifest.get("format") if isinstance(manifest, dict) else None
    if file_format != MODEL_FILE_FORMAT:
        raise ModelFileError(
            f"{path}: unsupported model file format {file_format!r} (expected {MODEL_FILE_FORMAT!r}); "
            "upgrade edgefrac or copy the model file again"
        )
    members = manifest.get("members")
    for name, content in ((CARD_NAME, card_bytes), (TFLITE_NAME, tflite)):
        recorded = members.get(name) if isinstance(members, dict) else None
        if not isinstance(recorded, dict):
            raise ModelFileError(f"{path}: the manifest has no entry for {name}; copy the model file again")
        if recorded.get("bytes") != len(content) or recorded.get("sha256") != _sha256(content):
            raise ModelFileError(
                f"{path}: {name} does not match the SHA-256 in the manifest, so the file was corrupted or "
                "edited after it was written; copy the original model file again"
            )
    if not is_tflite(tflite) or not _root_table_in_bounds(tflite):
        raise ModelFileError(f"{path}: {TFLITE_NAME} is not a TFLite flatbuffer")
    # The card matches its manifest hash, so it was written this way and a copy would not help.
    card_data = _parse_json(path, CARD_NAME, card_bytes, fix="convert the model again to write a valid card")
    try:
        card = ModelCard.from_dict(card_data)
    except ModelFileError as error:
        raise ModelFileError(f"{path}: {CARD_NAME}: {error}") from None
    return tflite, card


def _parse_json(path: Path, name: str, data: bytes, *, fix: str):
    """Parse the JSON member ``name``, rejecting nesting deeper than MAX_JSON_DEPTH; ``fix`` ends the error.

    The hash check cannot catch a bad card written with a matching manifest,
    and Python's JSON decoder raises RecursionError when the nesting reaches
    the interpreter's recursion limit, so both cases become a ModelFileError.
    """
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as error:
        # JSONDecodeError and UnicodeDecodeError are both ValueErrors.
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise ModelFileError(f"{path}: {name} is not valid JSON ({reason}); {fix}") from None
    depth = _json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise ModelFileError(
            f"{path}: {name} is nested {depth} levels deep, over the limit of {MAX_JSON_DEPTH}; {fix}"
        )
    return value


def _json_depth(value) -> int:
    """Return the deepest nesting of lists and objects in ``value``, without recursion."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest


def export_tflite(path: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write the verified ``.tflite`` member of a model file to ``output``, atomically.

    Raises:
        UsageError: the folder of ``output`` does not exist; it is not created.
        ModelFileError: the model file is missing, corrupted or not a model.
    """
    output = Path(output)
    folder = output.parent
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"output folder {folder} {problem}; create it first (mkdir -p {folder}) or pick another path")
    model = load_model(path)
    _write_atomically(output, model.tflite)
    logger.info("wrote %s (%d bytes, sha256 %s)", output, len(model.tflite), _sha256(model.tflite))
    return output
