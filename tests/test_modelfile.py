"""The .efm model file: round trip, and rejection of truncated, corrupted, edited and foreign files."""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgefrac.card import ModelCard, TensorQuantization, check_class_names
from edgefrac.classifier import FractureClassifier
from edgefrac.cli import main
from edgefrac.defaults import default_model_path
from edgefrac.errors import ModelFileError
from edgefrac.exitcodes import ExitCode
from edgefrac.modelfile import (
    CARD_NAME,
    MANIFEST_NAME,
    TFLITE_NAME,
    export_tflite,
    load_model,
    pack,
    write_model_file,
)


def rezip(members: dict[str, bytes]) -> bytes:
    """Zip ``members`` in order, stored, as ``pack`` does, with whatever manifest they contain."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def read_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def member_data_offset(data: bytes, name: str) -> int:
    """Return the offset of ``name``'s first data byte: its local header offset plus the header's length."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(name)
    header = info.header_offset
    name_length = int.from_bytes(data[header + 26 : header + 28], "little")
    extra_length = int.from_bytes(data[header + 28 : header + 30], "little")
    return header + 30 + name_length + extra_length


@pytest.fixture(scope="module")
def model_bytes(tiny_int8_model) -> bytes:
    return tiny_int8_model.read_bytes()


@pytest.fixture(scope="module")
def float_card(tiny_float_tflite):
    """A card built from the float32 variant of the tiny model, so its input is float32."""
    from converters.cards import card_for_model

    from edgefrac.card import DecisionThreshold
    from edgefrac.preprocessing import PreprocessConfig

    return card_for_model(
        tiny_float_tflite.read_bytes(),
        name="tiny-float32",
        architecture="tiny",
        preprocessing=PreprocessConfig(height=32, width=32),
        output_kind="probability",
        threshold=DecisionThreshold(0.5),
        provenance={},
    )


def bad_model_files(folder: Path, model_bytes: bytes, tiny_keras_model: Path, float_card) -> dict[str, Path]:
    """Write one file per way a model file can be wrong; return them by case name."""
    members = read_members_from_bytes(model_bytes)
    tflite_start = member_data_offset(model_bytes, TFLITE_NAME)
    central_directory = model_bytes.index(b"PK\x01\x02")
    cases: dict[str, bytes] = {
        "truncated_in_manifest": model_bytes[:60],
        "truncated_in_card": model_bytes[: member_data_offset(model_bytes, CARD_NAME) + 40],
        "truncated_in_tflite": model_bytes[: tflite_start + len(members[TFLITE_NAME]) // 2],
        "truncated_in_central_directory": model_bytes[: central_directory + 30],
        "truncated_last_byte": model_bytes[:-1],
        "empty": b"",
        "random_bytes": np.random.default_rng(0).bytes(4096),
        "hdf5_signature": b"\x89HDF\r\n\x1a\n" + bytes(2048),
        "onnx_like": b"\x08\x07\x12\x07pytorch\x1a\x052.1.0:" + np.random.default_rng(1).bytes(512),
        "keras": tiny_keras_model.read_bytes(),
        "zip_of_other_files": rezip({"readme.txt": b"hello"}),
        "manifest_not_object": rezip({**members, MANIFEST_NAME: b"[1, 2]"}),
        "card_not_object": rezip({**members, CARD_NAME: b"[]"}),
    }
    flipped = bytearray(model_bytes)
    flipped[tflite_start + len(members[TFLITE_NAME]) // 2] ^= 0x01
    cases["flipped_weight_byte"] = bytes(flipped)
    # The same flip, re-zipped so the CRC-32 matches and only the manifest's SHA-256 can catch it.
    tflite = bytearray(members[TFLITE_NAME])
    tflite[len(tflite) // 2] ^= 0x01
    cases["flipped_byte_new_crc"] = rezip({**members, TFLITE_NAME: bytes(tflite)})
    card = json.loads(members[CARD_NAME])
    card["threshold"]["value"] = 0.05
    edited = (json.dumps(card, indent=1, sort_keys=True) + "\n").encode()
    cases["card_threshold_edited"] = rezip({**members, CARD_NAME: edited})
    cases["input_type_disagrees"] = pack(members[TFLITE_NAME], float_card)

    paths = {}
    for name, data in cases.items():
        suffix = {"keras": ".keras", "onnx_like": ".onnx", "hdf5_signature": ".h5"}.get(name, ".efm")
        path = folder / f"{name}{suffix}"
        path.write_bytes(data)
        paths[name] = path
    (folder / "a_directory.efm").mkdir()
    paths["directory"] = folder / "a_directory.efm"
    paths["missing"] = folder / "missing.efm"
    return paths


def read_members_from_bytes(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, model_bytes, tiny_keras_model, float_card) -> dict[str, Path]:
    return bad_model_files(tmp_path_factory.mktemp("bad-models"), model_bytes, tiny_keras_model, float_card)


EXPECTED_MESSAGES = {
    "truncated_in_manifest": "truncated or corrupted",
    "truncated_in_card": "truncated or corrupted",
    "truncated_in_tflite": "truncated or corrupted",
    "truncated_in_central_directory": "truncated or corrupted",
    "truncated_last_byte": "truncated or corrupted",
    "empty": "is empty (0 bytes)",
    "random_bytes": "expected an edgefrac model file (.efm) or a TFLite flatbuffer",
    "hdf5_signature": "HDF5",
    "onnx_like": "ONNX",
    "keras": "Keras model archive",
    "zip_of_other_files": "not an edgefrac model file",
    "manifest_not_object": "unsupported model file format None",
    "card_not_object": "card.json does not match the SHA-256",
    "flipped_weight_byte": "truncated or corrupted",
    "flipped_byte_new_crc": "model.tflite does not match the SHA-256",
    "card_threshold_edited": "card.json does not match the SHA-256",
    "directory": "is a directory",
    "missing": "not found",
}
LOAD_CASES = sorted(EXPECTED_MESSAGES)


def test_round_trip(tiny_int8_model):
    model = load_model(tiny_int8_model)
    members = read_members(tiny_int8_model)
    assert model.tflite == members[TFLITE_NAME]
    assert model.card.to_dict() == json.loads(members[CARD_NAME])
    assert model.verified


def test_pack_deterministic(tiny_int8_model):
    model = load_model(tiny_int8_model)
    assert pack(model.tflite, model.card) == pack(model.tflite, model.card)


def test_pack_member_order(tiny_int8_model):
    assert list(read_members(tiny_int8_model)) == [MANIFEST_NAME, CARD_NAME, TFLITE_NAME]


def test_pack_rejects_non_tflite(tiny_int8_model):
    card = load_model(tiny_int8_model).card
    with pytest.raises(ModelFileError, match="not a TFLite flatbuffer"):
        pack(b"not a model at all", card)


def test_write_sets_shareable_mode(tmp_path, tiny_int8_model):
    model = load_model(tiny_int8_model)
    path = tmp_path / "shared.efm"
    write_model_file(path, model.tflite, model.card)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [entry.name for entry in tmp_path.iterdir()] == ["shared.efm"]


def test_write_returns_file_hash(tmp_path, tiny_int8_model):
    model = load_model(tiny_int8_model)
    digest = write_model_file(tmp_path / "m.efm", model.tflite, model.card)
    assert digest == load_model(tmp_path / "m.efm").sha256


@pytest.mark.parametrize("case", LOAD_CASES)
def test_load_rejects(bad_models, case):
    with pytest.raises(ModelFileError) as caught:
        load_model(bad_models[case])
    assert EXPECTED_MESSAGES[case] in str(caught.value)


def test_input_type_disagrees(bad_models):
    # The hashes match, so the file loads; the classifier compares the card with the model's tensors.
    model = load_model(bad_models["input_type_disagrees"])
    with pytest.raises(ModelFileError) as caught:
        FractureClassifier(model, threads=1)
    message = str(caught.value)
    assert "card describes a float32 input" in message
    assert "model has int8" in message


def test_float_card_input_type(float_card):
    assert float_card.input == TensorQuantization("float32", (1, 32, 32, 3))


# Cards that match their manifest hash but are invalid: built from the shipped model, with the card
# edited and the manifest's hash of it rewritten, so only card validation can reject them.


def with_card(folder: Path, name: str, card_bytes: bytes) -> Path:
    """Write a copy of the shipped default model whose card is ``card_bytes``, with a matching manifest."""
    members = read_members(default_model_path())
    manifest = json.loads(members[MANIFEST_NAME])
    manifest["members"][CARD_NAME] = {"bytes": len(card_bytes), "sha256": hashlib.sha256(card_bytes).hexdigest()}
    path = folder / f"{name}.efm"
    path.write_bytes(rezip({
        MANIFEST_NAME: json.dumps(manifest).encode(),
        CARD_NAME: card_bytes,
        TFLITE_NAME: members[TFLITE_NAME],
    }))
    return path


def shipped_card() -> dict:
    return json.loads(read_members(default_model_path())[CARD_NAME])


def edited_card(edit) -> bytes:
    card = shipped_card()
    edit(card)
    return json.dumps(card).encode()


def deeply_nested_card(levels: int) -> bytes:
    text = json.dumps(shipped_card())
    return (text[:-1] + ', "a": ' + "[" * levels + "]" * levels + "}").encode()


INVALID_CARDS = {
    # case: (card bytes, texts the error must contain)
    "nested_100000": (deeply_nested_card(100_000), ["card.json is not valid JSON", "nested too deeply"]),
    "nested_40": (deeply_nested_card(40), ["card.json is nested 41 levels deep"]),
    "reversed_class_names": (
        edited_card(lambda card: card.update(class_names=["fractured", "not_fractured"])),
        ["class_names ['fractured', 'not_fractured'] are invalid", "swap the names"],
    ),
    "one_channel_rgb": (
        edited_card(lambda card: card["preprocessing"].update(channels=1)),
        ["field 'preprocessing' is invalid", "channel order 'RGB' for 1 channel(s)"],
    ),
    "height_zero": (
        edited_card(lambda card: card["preprocessing"].update(height=0)),
        ["field 'preprocessing' is invalid", "invalid input size 0x224"],
    ),
    "no_preprocessing": (
        edited_card(lambda card: card.pop("preprocessing")),
        ["has no 'preprocessing' field"],
    ),
    "no_threshold_value": (
        edited_card(lambda card: card["threshold"].pop("value")),
        ["field 'threshold' has no 'value' entry"],
    ),
    "class_names_string": (
        edited_card(lambda card: card.update(class_names="ab")),
        ["field 'class_names' is invalid", "expected a list of two strings"],
    ),
    "class_name_control_characters": (
        edited_card(lambda card: card.update(class_names=["not_fractured", "frac\x1b[31mtured\r\n"])),
        ["contain control characters"],
    ),
    "threshold_true": (
        edited_card(lambda card: card["threshold"].update(value=True)),
        ["threshold True is invalid", "expected a probability in [0, 1]"],
    ),
    "threshold_bare_number": (
        edited_card(lambda card: card.update(threshold=0.5)),
        ["field 'threshold' is invalid", "expected an object with a 'value' entry"],
    ),
    "sensitivity_seven": (
        edited_card(lambda card: card["threshold"].update(sensitivity=7)),
        ["field 'threshold' is invalid", "sensitivity 7 is not a number in [0, 1]"],
    ),
    "height_text": (
        edited_card(lambda card: card["preprocessing"].update(height="224")),
        ["field 'preprocessing' is invalid", "height '224' is not a whole number"],
    ),
    "width_float": (
        edited_card(lambda card: card["preprocessing"].update(width=224.0)),
        ["field 'preprocessing' is invalid", "width 224.0 is not a whole number"],
    ),
    "provenance_text": (
        edited_card(lambda card: card.update(provenance="x")),
        ["field 'provenance' is invalid", "expected an object, got 'x'"],
    ),
    "input_shape_float": (
        edited_card(lambda card: card["input"].update(shape=[1, 224.0, 224, 3])),
        ["field 'input' is invalid", "is not a list of whole numbers"],
    ),
    "output_zero_point_float": (
        edited_card(lambda card: card["output"].update(zero_point=-1.5)),
        ["field 'output' is invalid", "zero_point -1.5 is not a whole number"],
    ),
    "chosen_on_number": (
        edited_card(lambda card: card["threshold"].update(chosen_on=5)),
        ["field 'threshold' is invalid", "chosen_on 5 is not text"],
    ),
    "class_name_too_long": (
        edited_card(lambda card: card.update(class_names=["not_fractured", "f" * 5000])),
        ["a name is longer than 64 characters"],
    ),
    "class_names_differ_in_case": (
        edited_card(lambda card: card.update(class_names=["Fractured", "fractured"])),
        ["expected two distinct non-empty names"],
    ),
}


@pytest.fixture(scope="module")
def invalid_cards(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("invalid-cards")
    return {case: with_card(folder, case, card_bytes) for case, (card_bytes, _) in INVALID_CARDS.items()}


def test_shipped_card_copy_loads(tmp_path):
    # The helper itself must produce a loadable file, or the cases below would fail for the wrong reason.
    path = with_card(tmp_path, "unchanged", json.dumps(shipped_card()).encode())
    assert load_model(path).card.class_names == ("not_fractured", "fractured")


@pytest.mark.parametrize("case", sorted(INVALID_CARDS))
def test_load_rejects_invalid_card(invalid_cards, case):
    path = invalid_cards[case]
    with pytest.raises(ModelFileError) as caught:
        load_model(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: card.json")
    for text in INVALID_CARDS[case][1]:
        assert text in message


@pytest.mark.parametrize("case", sorted(INVALID_CARDS))
def test_infer_invalid_card(invalid_cards, sample_images, case):
    path = invalid_cards[case]
    result = CliRunner().invoke(main, ["infer", str(sample_images / "scan0.jpg"), "--model", str(path)])
    assert result.exit_code == ExitCode.RUNTIME_FAILURE, result.output
    assert result.stderr.startswith(f"Error: {path}: card.json")
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", ["nested_100000", "reversed_class_names", "one_channel_rgb"])
def test_info_invalid_card(invalid_cards, case):
    path = invalid_cards[case]
    result = CliRunner().invoke(main, ["info", "--model", str(path)])
    assert result.exit_code == ExitCode.RUNTIME_FAILURE, result.output
    assert f"Error: model: {path}: card.json" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "names",
    [("not_fractured", "fractured"), ("Non_fractured", "Fractured"), ("NotFractured", "Fractured"),
     ("no fracture", "fracture"), ("fracture-free", "fractured"), ("normal", "abnormal")],
)
def test_class_names_accepted(names):
    check_class_names(names)


@pytest.mark.parametrize(
    "names, reason",
    [
        (("fractured", "not_fractured"), "class_names[1] the fractured class"),
        (("fracture", "normal"), "class_names[1] the fractured class"),
        (("normal", "non-fractured"), "class_names[1] the fractured class"),
        (("fractured", "fractured"), "two distinct non-empty names"),
        (("", "fractured"), "two distinct non-empty names"),
        (("not_fractured",), "lists 1 class names"),
        (("a", "b", "c"), "lists 3 class names"),
    ],
)
def test_class_names_rejected(names, reason):
    with pytest.raises(ModelFileError, match=re.escape(reason)):
        check_class_names(names)


def test_card_constructor_checks_class_names():
    card = load_model(default_model_path()).card
    with pytest.raises(ModelFileError, match="class_names"):
        ModelCard(**{**card.__dict__, "class_names": ("fractured", "not_fractured")})


# click rejects a directory as --model (dir_okay=False), which makes it a usage error.
CLI_USAGE_CASES = {"directory", "missing"}


@pytest.mark.parametrize("case", LOAD_CASES + ["input_type_disagrees"])
def test_infer_exit_code(bad_models, sample_images, case):
    result = CliRunner().invoke(main, ["infer", str(sample_images / "scan0.jpg"), "--model", str(bad_models[case])])
    expected = ExitCode.USAGE if case in CLI_USAGE_CASES else ExitCode.RUNTIME_FAILURE
    assert result.exit_code == expected, result.output
    assert "Error: " in result.stderr
    assert "Traceback" not in result.output


# Plain .tflite files have no hash, so the load probe is what rejects a damaged one.


@pytest.fixture(scope="module")
def plain_tflite(tiny_int8_model) -> bytes:
    return load_model(tiny_int8_model).tflite


def test_plain_tflite_loads(tmp_path, plain_tflite):
    path = tmp_path / "model.tflite"
    path.write_bytes(plain_tflite)
    model = load_model(path)
    assert model.card is None
    assert not model.verified


def test_plain_tflite_root_out_of_bounds(tmp_path, plain_tflite):
    path = tmp_path / "short.tflite"
    path.write_bytes(plain_tflite[:12])
    with pytest.raises(ModelFileError, match="truncated TFLite file"):
        load_model(path)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.75, 0.99])
def test_plain_tflite_truncated_probe(tmp_path, plain_tflite, fraction):
    path = tmp_path / "cut.tflite"
    path.write_bytes(plain_tflite[: int(len(plain_tflite) * fraction)])
    with pytest.raises(ModelFileError, match="could not load the model"):
        FractureClassifier.from_path(path, threads=1)


@pytest.mark.parametrize("fraction", [0.5, 0.99])
def test_plain_tflite_truncated_cli(tmp_path, plain_tflite, sample_images, fraction):
    path = tmp_path / "cut.tflite"
    path.write_bytes(plain_tflite[: int(len(plain_tflite) * fraction)])
    result = CliRunner().invoke(main, ["infer", str(sample_images / "scan0.jpg"), "--model", str(path)])
    assert result.exit_code == ExitCode.RUNTIME_FAILURE, result.output
    assert "could not load the model" in result.stderr


# Export


def test_export_identical(tmp_path, tiny_int8_model):
    output = tmp_path / "model.tflite"
    result = CliRunner().invoke(main, ["export", str(tiny_int8_model), str(output)])
    assert result.exit_code == ExitCode.OK, result.output
    assert output.read_bytes() == read_members(tiny_int8_model)[TFLITE_NAME]


def test_export_library_identical(tmp_path, tiny_int8_model):
    output = export_tflite(tiny_int8_model, tmp_path / "model.tflite")
    assert output.read_bytes() == load_model(tiny_int8_model).tflite


def test_export_loads_as_plain(tmp_path, tiny_int8_model):
    output = export_tflite(tiny_int8_model, tmp_path / "model.tflite")
    assert load_model(output).tflite == load_model(tiny_int8_model).tflite


def test_export_corrupted_writes_nothing(tmp_path, bad_models):
    output = tmp_path / "model.tflite"
    result = CliRunner().invoke(main, ["export", str(bad_models["flipped_byte_new_crc"]), str(output)])
    assert result.exit_code == ExitCode.RUNTIME_FAILURE, result.output
    assert not output.exists()


def test_export_rejects_missing_folder(tmp_path, tiny_int8_model):
    folder = tmp_path / "absent" / "deeper"
    result = CliRunner().invoke(main, ["export", str(tiny_int8_model), str(folder / "model.tflite")])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"output folder {folder} does not exist" in result.stderr
    assert "create it first" in result.stderr
    assert not (tmp_path / "absent").exists()


def test_export_rejects_file_as_folder(tmp_path, tiny_int8_model):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(main, ["export", str(tiny_int8_model), str(blocker / "model.tflite")])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"output folder {blocker} is not a folder" in result.stderr


def test_export_missing_model_is_usage_error(tmp_path):
    missing = tmp_path / "absent.efm"
    result = CliRunner().invoke(main, ["export", str(missing), str(tmp_path / "model.tflite")])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "'MODEL'" in result.stderr
    assert "does not exist" in result.stderr
    assert "--model" not in result.stderr
