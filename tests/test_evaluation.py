"""Evaluation reports, and `edgefrac evaluate` of an int8 model file without TensorFlow."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgefrac import metrics
from edgefrac.cli import main
from edgefrac.dataset import file_sha256
from edgefrac.evaluation import ChangedFile, Case, FailedCase, ScoredCases, evaluate, failure_of, find_changed_files
from edgefrac.evaluation_report import failure_lines, to_markdown, to_text_table

CASES = (
    # image_id, label, region, hardware, probability
    ("a", 1, "hand", True, 0.9),
    ("b", 1, "hand", False, 0.4),
    ("c", 0, "hand", False, 0.7),
    ("d", 0, "hand", None, 0.2),
    ("e", 1, "leg", True, 0.8),
    ("f", 0, "leg", False, 0.3),
    ("g", 0, "leg", False, 0.6),
    ("h", 1, "mixed", False, 0.55),
)


def scored_cases(rows=CASES, failed=()) -> ScoredCases:
    cases = tuple(Case(image_id, Path(image_id), label, region, hardware) for image_id, label, region, hardware, _ in rows)
    probabilities = np.array([row[4] for row in rows])
    return ScoredCases(cases, probabilities, tuple(failed))


def report_of(scored=None, threshold=0.5, changed=()):
    return evaluate(
        scored or scored_cases(),
        threshold,
        threshold_source="test",
        model={"path": "m.efm", "kind": "model file", "name": "m"},
        split={"file": "split.json", "name": "test", "images": 8},
        resamples=100,
        changed=changed,
    )


def test_report_overall_matches_metrics():
    report = report_of()
    labels = [row[1] for row in CASES]
    scores = [row[4] for row in CASES]
    assert report.overall.auc == pytest.approx(metrics.roc_auc(scores, labels))
    assert report.overall.at_threshold == metrics.confusion(scores, labels, 0.5)


def test_report_region_counts():
    report = report_of()
    counts = {group.name: (group.images, group.fractured) for group in report.regions}
    assert counts == {"hand": (4, 2), "leg": (3, 1), "mixed": (1, 1)}


def test_report_region_rates():
    hand = report_of().regions[0]
    # Hand at 0.5: a (0.9) is a true positive, b (0.4) a false negative,
    # c (0.7) a false positive and d (0.2) a true negative.
    assert hand.at_threshold.sensitivity == pytest.approx(0.5)
    assert hand.at_threshold.specificity == pytest.approx(0.5)
    # Pairs: (a,c) (a,d) (b,d) right, (b,c) wrong.
    assert hand.auc == pytest.approx(0.75)


def test_report_hardware_groups():
    report = report_of()
    counts = {group.name: group.images for group in report.hardware}
    # Case d has no hardware record and belongs to neither group.
    assert counts == {"with hardware": 2, "without hardware": 5}


def test_report_one_class_group_is_null():
    report = report_of()
    mixed = report.to_dict()["regions"][2]
    assert mixed["name"] == "mixed"
    assert mixed["auc"] is None
    assert mixed["auc_ci95"] == [None, None]
    assert mixed["specificity"] is None


def test_report_ci_contains_auc():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 120)
    scores = rng.random(120) + labels * 0.4
    rows = tuple((f"i{n}", int(label), "hand", None, float(score)) for n, (label, score) in enumerate(zip(labels, scores)))
    report = report_of(scored_cases(rows))
    low, high = report.overall.auc_ci
    assert low <= report.overall.auc <= high


def test_report_json_is_strict():
    text = json.dumps(report_of().to_dict(), allow_nan=False)
    assert json.loads(text)["format"] == "edgefrac-evaluation/1"


def test_report_lists_failures():
    failure = FailedCase("z", "z.jpg", "TruncatedImageError: z.jpg is truncated", expected=True)
    report = report_of(scored_cases(failed=[failure]))
    assert report.to_dict()["failed"][0]["image_id"] == "z"
    assert report.unexpected_failures == 0
    assert "`z`" in to_markdown(report)


def test_failure_lines_name_path_and_reason():
    failures = [
        FailedCase("z", "data/z.jpg", "TruncatedImageError: data/z.jpg is truncated", expected=True),
        FailedCase("y", "data/y.jpg", "UnreadableImageError: data/y.jpg: not an image", expected=False),
    ]
    lines = failure_lines(report_of(scored_cases(failed=failures)))
    assert lines[0] == "images left out because they could not be read or decoded (2):"
    assert lines[1] == "  data/z.jpg: TruncatedImageError: data/z.jpg is truncated (marked as truncated in the split file)"
    assert lines[2] == "  data/y.jpg: UnreadableImageError: not an image"


def test_failure_lines_empty_without_failures():
    assert failure_lines(report_of()) == []


def test_report_records_changed_files():
    changed = (ChangedFile("c", "data/c.jpg"),)
    report = report_of(changed=changed)
    data = report.to_dict()
    assert data["split"]["changed_files"] == 1
    assert data["changed_files"] == [{"image_id": "c", "path": "data/c.jpg"}]
    assert "Changed files: 1 images differ" in to_text_table(report)
    assert "`c`: data/c.jpg" in to_markdown(report)


def test_report_without_changed_files():
    data = report_of().to_dict()
    assert data["split"]["changed_files"] == 0
    assert data["changed_files"] == []
    assert "Changed files" not in to_text_table(report_of())


def test_find_changed_files(tmp_path, caplog):
    paths = []
    for index in range(5):
        path = tmp_path / f"img{index}.png"
        Image.fromarray(np.full((8, 8), index * 40, dtype=np.uint8)).save(path)
        paths.append(path)
    cases = [Case(path.name, path, 0, sha256=file_sha256(path)) for path in paths]
    cases.append(Case("unrecorded.png", paths[0], 0, sha256=None))
    cases.append(Case("missing.png", tmp_path / "missing.png", 0, sha256="0" * 64))
    for path in paths[1:5]:
        Image.fromarray(np.full((8, 8), 255, dtype=np.uint8)).save(path)

    with caplog.at_level("WARNING", logger="edgefrac.evaluation"):
        changed = find_changed_files(cases)

    assert [item.image_id for item in changed] == ["img1.png", "img2.png", "img3.png", "img4.png"]
    message = caplog.records[-1].getMessage()
    assert "4 of 7 images differ from the SHA-256 in the split file" in message
    assert f"{paths[1]}, {paths[2]}, {paths[3]} and 1 more" in message


def test_find_changed_files_none_changed(tmp_path, caplog):
    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)
    with caplog.at_level("WARNING", logger="edgefrac.evaluation"):
        assert find_changed_files([Case("img.png", path, 0, sha256=file_sha256(path))]) == ()
    assert not caplog.records


def test_report_markdown_rows():
    lines = to_markdown(report_of()).splitlines()
    rows = [line for line in lines if line.startswith("| ")]
    # Header, overall, three regions, two hardware groups.
    assert len(rows) == 7


def test_report_text_table_rows():
    table = to_text_table(report_of())
    assert "with hardware" in table
    assert "n/a" in table


def test_report_rejects_empty():
    from edgefrac.errors import UsageError

    with pytest.raises(UsageError, match="no image"):
        report_of(scored_cases(rows=()))


def test_report_predictions_listed():
    predictions = report_of().to_dict()["predictions"]
    assert [p["image_id"] for p in predictions] == [row[0] for row in CASES]
    assert math.isclose(predictions[0]["probability"], 0.9)


def run_blocked(arguments: list[str], blocked: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter in which importing each of ``blocked`` fails."""
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "from edgefrac.cli import main\n"
        f"main({arguments!r})\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_evaluate_efm_without_tensorflow(tiny_int8_model, labelled_split, tmp_path):
    _, split_file = labelled_split
    output = tmp_path / "report"
    arguments = ["evaluate", str(tiny_int8_model), "--split-file", str(split_file), "--split", "validation",
                 "--output", str(output), "--resamples", "50"]
    result = run_blocked(arguments, ("tensorflow", "keras"))
    assert result.returncode == 0, result.stderr
    report = json.loads((output / "metrics.json").read_text())
    assert report["model"]["kind"] == "model file"
    assert report["threshold"]["source"] == "model card"
    assert report["overall"]["images"] == report["split"]["images"]
    assert (output / "roc.png").is_file()
    assert "AUC (95% CI)" in result.stdout


@pytest.mark.slow
def test_evaluate_efm_matches_classifier(tiny_int8_model, labelled_split):
    from converters.split import read_split
    from edgefrac.classifier import FractureClassifier

    _, split_file = labelled_split
    result = CliRunner().invoke(
        main, ["evaluate", str(tiny_int8_model), "--split-file", str(split_file), "--json", "--resamples", "20"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    split = read_split(split_file)
    classifier = FractureClassifier.from_path(tiny_int8_model)
    entries = {entry.image_id: entry for entry in split.subset("test")}
    for prediction in report["predictions"]:
        expected = classifier.predict_file(split.path_of(entries[prediction["image_id"]])).probability
        assert prediction["probability"] == pytest.approx(expected)


@pytest.mark.slow
def test_evaluate_lists_truncated(tiny_int8_model, labelled_split, tmp_path):
    _, split_file = labelled_split
    document = json.loads(split_file.read_text())
    truncated = next(entry for entry in document["entries"] if not entry["decodes_fully"])
    truncated["split"] = "test"
    moved = tmp_path / "split.json"
    moved.write_text(json.dumps(document))
    result = CliRunner().invoke(main, ["evaluate", str(tiny_int8_model), "--split-file", str(moved), "--json",
                                       "--resamples", "20"])
    assert result.exit_code == 0, result.output
    failed = json.loads(result.stdout)["failed"]
    assert [item["image_id"] for item in failed] == [truncated["image_id"]]
    assert failed[0]["expected"] is True
    assert "TruncatedImageError" in failed[0]["error"]


@pytest.mark.slow
def test_evaluate_unexpected_failure_exit(tiny_int8_model, labelled_split, tmp_path):
    root, split_file = labelled_split
    document = json.loads(split_file.read_text())
    victim = next(entry for entry in document["entries"] if entry["split"] == "test")
    # A copy of the dataset in which one test image is replaced by garbage.
    copy = tmp_path / "data"
    for entry in document["entries"]:
        target = copy / entry["relative_path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((root / entry["relative_path"]).read_bytes())
    (copy / victim["relative_path"]).write_bytes(b"not an image")
    result = CliRunner().invoke(
        main, ["evaluate", str(tiny_int8_model), "--split-file", str(split_file), "--data", str(copy),
               "--resamples", "20"]
    )
    assert result.exit_code == 3, result.output
    assert "1 images that the split file marks as decodable could not be read or decoded" in result.stderr


@pytest.mark.slow
def test_evaluate_without_matplotlib(tiny_int8_model, labelled_split, tmp_path):
    _, split_file = labelled_split
    arguments = ["evaluate", str(tiny_int8_model), "--split-file", str(split_file), "--output", str(tmp_path / "r")]
    result = run_blocked(arguments, ("matplotlib",))
    assert result.returncode == 1
    assert "pip install 'edgefrac[bench]'" in result.stderr
    assert not (tmp_path / "r").exists()


def test_evaluate_rejects_suffix(labelled_split, tmp_path):
    _, split_file = labelled_split
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    result = CliRunner().invoke(main, ["evaluate", str(model), "--split-file", str(split_file)])
    assert result.exit_code == 2
    assert "expected a .keras model" in result.output


def test_evaluate_missing_split_file(tiny_int8_model, tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(tiny_int8_model), "--split-file", str(tmp_path / "none.json")])
    assert result.exit_code == 2
    assert "edgefrac split" in result.output


def copy_dataset(root: Path, document: dict, target: Path) -> Path:
    """Copy every image of a split file's dataset into ``target``, keeping relative paths."""
    for entry in document["entries"]:
        destination = target / entry["relative_path"]
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes((root / entry["relative_path"]).read_bytes())
    return target


@pytest.mark.slow
def test_evaluate_reports_changed_files(tiny_int8_model, labelled_split, tmp_path):
    root, split_file = labelled_split
    document = json.loads(split_file.read_text())
    victim = next(entry for entry in document["entries"] if entry["split"] == "test" and entry["decodes_fully"])
    copy = copy_dataset(root, document, tmp_path / "data")
    # Re-encoding keeps the image decodable, so it is scored, but its bytes no longer match the split file.
    re_encoded = copy / victim["relative_path"]
    with Image.open(re_encoded) as image:
        image.convert("RGB").save(re_encoded, format="JPEG", quality=60)

    result = CliRunner().invoke(
        main, ["evaluate", str(tiny_int8_model), "--split-file", str(split_file), "--data", str(copy),
               "--json", "--resamples", "20"]
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split"]["changed_files"] == 1
    assert report["changed_files"] == [{"image_id": victim["image_id"], "path": str(re_encoded)}]
    assert victim["image_id"] in [item["image_id"] for item in report["predictions"]]
    assert "1 of" in result.stderr
    assert "images differ from the SHA-256 in the split file" in result.stderr
    assert str(re_encoded) in result.stderr


@pytest.mark.slow
def test_evaluate_unchanged_dataset(tiny_int8_model, labelled_split):
    _, split_file = labelled_split
    result = CliRunner().invoke(
        main, ["evaluate", str(tiny_int8_model), "--split-file", str(split_file), "--json", "--resamples", "20"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["split"]["changed_files"] == 0
    assert "SHA-256" not in result.stderr


@pytest.mark.slow
def test_evaluate_nfd_copy_of_nfc_split(tiny_int8_model, labelled_split, tmp_path):
    root, split_file = labelled_split
    document = json.loads(split_file.read_text())
    # Each name gains an "é", recorded in NFC as on Linux, and the copy has the NFD names of a macOS copy.
    copy = tmp_path / "data"
    for entry in document["entries"]:
        renamed = unicodedata.normalize("NFC", entry["relative_path"].replace(".jpg", "-é.jpg"))
        destination = copy / unicodedata.normalize("NFD", renamed)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes((root / entry["relative_path"]).read_bytes())
        entry["relative_path"] = renamed
    renamed_split = tmp_path / "split.json"
    renamed_split.write_text(json.dumps(document))

    result = CliRunner().invoke(
        main, ["evaluate", str(tiny_int8_model), "--split-file", str(renamed_split), "--data", str(copy),
               "--json", "--resamples", "20"]
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    unexpected = [item for item in report["failed"] if not item["expected"]]
    assert unexpected == []
    decodable_test = [e for e in document["entries"] if e["split"] == "test" and e["decodes_fully"]]
    assert len(report["predictions"]) == len(decodable_test)


def break_one_test_image(labelled_split, folder: Path) -> tuple[Path, Path]:
    """Copy the dataset into ``folder`` with one decodable test image replaced by text; return the copy and that file."""
    root, split_file = labelled_split
    document = json.loads(split_file.read_text())
    victim = next(entry for entry in document["entries"] if entry["split"] == "test" and entry["decodes_fully"])
    copy = copy_dataset(root, document, folder)
    broken = copy / victim["relative_path"]
    broken.write_bytes(b"not an image")
    return copy, broken


@pytest.mark.slow
def test_evaluate_table_lists_failures(tiny_int8_model, labelled_split, tmp_path):
    _, split_file = labelled_split
    copy, broken = break_one_test_image(labelled_split, tmp_path / "data")

    result = CliRunner().invoke(
        main, ["evaluate", str(tiny_int8_model), "--split-file", str(split_file), "--data", str(copy),
               "--resamples", "20"]
    )

    assert result.exit_code == 3, result.output
    assert "images left out because they could not be read or decoded (1):" in result.stderr
    assert f"  {broken}: UnreadableImageError" in result.stderr
    assert "they are named in the list above" in result.stderr
    assert "JSON" not in result.stderr


@pytest.mark.slow
def test_evaluate_json_names_failed_list(tiny_int8_model, labelled_split, tmp_path):
    _, split_file = labelled_split
    copy, broken = break_one_test_image(labelled_split, tmp_path / "data")

    result = CliRunner().invoke(
        main, ["evaluate", str(tiny_int8_model), "--split-file", str(split_file), "--data", str(copy),
               "--json", "--resamples", "20"]
    )

    assert result.exit_code == 3, result.output
    assert "in the 'failed' list of the JSON output" in result.stderr
    assert [item["path"] for item in json.loads(result.stdout)["failed"]] == [str(broken)]


@pytest.mark.slow
def test_evaluate_plain_tflite_overrides(tiny_float_tflite, labelled_split):
    from converters.split import read_split
    from edgefrac.classifier import FractureClassifier, Overrides
    from edgefrac.preprocessing import ResizeMethod, ValueScaling

    _, split_file = labelled_split
    arguments = ["evaluate", str(tiny_float_tflite), "--split-file", str(split_file), "--json", "--resamples", "20"]
    result = CliRunner().invoke(main, [*arguments, "--scaling", "-1_1", "--resize", "nearest", "--threshold", "0.4"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"]["preprocessing"]["scaling"] == "-1_1"
    assert report["model"]["preprocessing"]["resize"] == "nearest"
    assert report["threshold"] == {"value": 0.4, "source": "command line"}

    split = read_split(split_file)
    entries = {entry.image_id: entry for entry in split.subset("test")}
    overridden = FractureClassifier.from_path(
        tiny_float_tflite, overrides=Overrides(scaling=ValueScaling.SYMMETRIC, resize=ResizeMethod.NEAREST)
    )
    default = FractureClassifier.from_path(tiny_float_tflite)
    differs = 0
    for prediction in report["predictions"]:
        path = split.path_of(entries[prediction["image_id"]])
        assert prediction["probability"] == pytest.approx(overridden.predict_file(path).probability)
        differs += prediction["probability"] != pytest.approx(default.predict_file(path).probability)
    assert differs > 0


@pytest.mark.parametrize("option", [["--scaling", "0_1"], ["--test-time-augmentation", "horizontal_flip"]])
def test_evaluate_keras_rejects_overrides(labelled_split, tmp_path, option):
    _, split_file = labelled_split
    model = tmp_path / "model.keras"
    model.write_bytes(b"not read")
    result = CliRunner().invoke(main, ["evaluate", str(model), "--split-file", str(split_file), *option])
    assert result.exit_code == 2
    assert "--output-kind and --test-time-augmentation apply to .efm and .tflite models" in result.stderr


def _keras_with_record(tiny_keras_model, folder: Path, *, size: int, train_ids_sha256: str | None) -> Path:
    """Copy the tiny Keras model into ``folder`` with a training record for ``size`` x ``size`` inputs."""
    model = folder / "tiny.keras"
    model.write_bytes(tiny_keras_model.read_bytes())
    record = {
        "preprocessing": {"height": size, "width": size, "channels": 3, "scaling": "0_1", "resize": "bilinear"},
        "threshold": {"value": 0.5},
        "architecture": "cnn",
    }
    if train_ids_sha256 is not None:
        record["split_ids_sha256"] = {"train": train_ids_sha256}
    (folder / "tiny.json").write_text(json.dumps(record))
    return model


def test_evaluate_keras_other_training_split_exits_2(tiny_keras_model, labelled_split, tmp_path):
    root, split_file = labelled_split
    model = _keras_with_record(tiny_keras_model, tmp_path, size=32, train_ids_sha256="0" * 64)
    result = CliRunner().invoke(
        main, ["evaluate", str(model), "--split-file", str(split_file), "--data", str(root), "--resamples", "20"]
    )
    assert result.exit_code == 2, result.output
    assert "differ from those" in result.stderr
    assert "pass the --split-file the model was trained with" in result.stderr


def test_evaluate_keras_same_training_split_runs(tiny_keras_model, labelled_split, tmp_path):
    from edgefrac.splitfile import read_split

    root, split_file = labelled_split
    split = read_split(split_file, root)
    model = _keras_with_record(tiny_keras_model, tmp_path, size=32, train_ids_sha256=split.ids_hash(split.subset("train")))
    result = CliRunner().invoke(
        main, ["evaluate", str(model), "--split-file", str(split_file), "--data", str(root), "--resamples", "20"]
    )
    assert result.exit_code == 0, result.output


def test_evaluate_keras_record_size_differs_exits_2(tiny_keras_model, labelled_split, tmp_path):
    root, split_file = labelled_split
    model = _keras_with_record(tiny_keras_model, tmp_path, size=64, train_ids_sha256=None)
    result = CliRunner().invoke(
        main, ["evaluate", str(model), "--split-file", str(split_file), "--data", str(root), "--resamples", "20"]
    )
    assert result.exit_code == 2, result.output
    assert "is for 64x64 inputs with 3 channels" in result.stderr


def _model_with_provenance(tiny_int8_model, folder: Path, provenance: dict) -> Path:
    import dataclasses

    from edgefrac.modelfile import load_model, write_model_file

    loaded = load_model(tiny_int8_model)
    path = folder / "provenance.efm"
    write_model_file(path, loaded.tflite, dataclasses.replace(loaded.card, provenance=provenance))
    return path


def test_evaluate_model_file_other_training_split_exits_2(tiny_int8_model, labelled_split, tmp_path):
    root, split_file = labelled_split
    model = _model_with_provenance(tiny_int8_model, tmp_path, {"training": {"split_ids_sha256": {"train": "0" * 64}}})
    result = CliRunner().invoke(
        main, ["evaluate", str(model), "--split-file", str(split_file), "--data", str(root), "--resamples", "20"]
    )
    assert result.exit_code == 2, result.output
    assert "differ from those" in result.stderr


def test_evaluate_model_file_other_split_file_warns(tiny_int8_model, labelled_split, tmp_path):
    root, split_file = labelled_split
    model = _model_with_provenance(tiny_int8_model, tmp_path, {"split_file_sha256": "f" * 64})
    result = CliRunner().invoke(
        main, ["evaluate", str(model), "--split-file", str(split_file), "--data", str(root), "--resamples", "20"]
    )
    assert result.exit_code == 0, result.output
    assert "differs from the one" in result.stderr


def test_truncated_failure_has_no_infer_advice(tmp_path):
    from edgefrac.errors import TruncatedImageError
    from edgefrac.images import load_pixels

    pixels = np.random.default_rng(2).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "whole.jpg", quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((tmp_path / "whole.jpg").read_bytes()[:1500])
    with pytest.raises(TruncatedImageError) as caught:
        load_pixels(cut, (32, 32))
    case = Case(image_id="cut.jpg", path=cut, label=1, region="hand", hardware=False, decodes_fully=False)
    failure = failure_of(case, caught.value)
    assert failure.error.startswith("TruncatedImageError: ")
    assert "image data is truncated" in failure.error
    assert "--allow-truncated" not in failure.error
    assert failure.expected


def test_evaluate_model_file_without_training_ids_warns(tiny_int8_model, labelled_split, tmp_path):
    root, split_file = labelled_split
    model = _model_with_provenance(tiny_int8_model, tmp_path, {})
    result = CliRunner().invoke(
        main, ["evaluate", str(model), "--split-file", str(split_file), "--data", str(root), "--resamples", "20"]
    )
    assert result.exit_code == 0, result.output
    assert "records no hash of its training images" in result.stderr
