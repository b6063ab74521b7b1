"""Evaluation reports, and `edgefrac evaluate` of an int8 model file without TensorFlow."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgefrac import metrics
from edgefrac.cli import main
from edgefrac.evaluation import Case, FailedCase, ScoredCases, evaluate
from edgefrac.evaluation_report import to_markdown, to_text_table

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


def report_of(scored=None, threshold=0.5):
    return evaluate(
        scored or scored_cases(),
        threshold,
        threshold_source="test",
        model={"path": "m.efm", "kind": "model file", "name": "m"},
        split={"file": "split.json", "name": "test", "images": 8},
        resamples=100,
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
    assert "1 images that the split file marks as decodable failed" in result.stderr


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
