"""tools/agreement_noise.py: agreement of a simulated noisy copy of a model's logits."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="tools/agreement_noise.py imports the converters (the convert extra)")


def _load_tool():
    path = Path(__file__).resolve().parents[1] / "tools" / "agreement_noise.py"
    spec = importlib.util.spec_from_file_location("agreement_noise", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    return _load_tool()


def _splits(rng):
    logits, labels = {}, {}
    for name, size in (("validation", 400), ("test", 400)):
        labels[name] = (rng.random(size) < 0.2).astype(np.int64)
        logits[name] = rng.normal(0.0, 1.5, size) + 2.0 * labels[name] - 1.0
    return logits, labels


def _threshold_for(logits, labels, target):
    positives = np.sort(logits[labels == 1])[::-1]
    needed = int(np.ceil(target * positives.size))
    return float(1.0 / (1.0 + np.exp(-positives[needed - 1])))


def test_noiseless_copy_agrees_everywhere(tool):
    rng = np.random.default_rng(0)
    logits, labels = _splits(rng)
    threshold = _threshold_for(logits["validation"], labels["validation"], 0.9)
    agreement = tool.simulate(logits, labels, threshold, 0.9, 0.0, 0.0, 5, rng)
    assert all(np.all(values == 1.0) for values in agreement.values())


def test_agreement_falls_with_noise(tool):
    rng = np.random.default_rng(1)
    logits, labels = _splits(rng)
    threshold = _threshold_for(logits["validation"], labels["validation"], 0.9)
    small = tool.simulate(logits, labels, threshold, 0.9, 0.05, 0.0, 40, rng)
    large = tool.simulate(logits, labels, threshold, 0.9, 0.5, 0.0, 40, rng)
    for name in ("validation", "test"):
        assert small[name].mean() > large[name].mean() + 0.03
        assert 0.5 < large[name].mean() < 0.99


def test_retuned_threshold_keeps_target_sensitivity(tool, monkeypatch):
    rng = np.random.default_rng(2)
    logits, labels = _splits(rng)
    threshold = _threshold_for(logits["validation"], labels["validation"], 0.9)
    chosen = []
    original = tool.retune_threshold

    def recording(probabilities, split_labels, decisions, target):
        value = original(probabilities, split_labels, decisions, target)
        chosen.append((probabilities, split_labels, value))
        return value

    monkeypatch.setattr(tool, "retune_threshold", recording)
    tool.simulate(logits, labels, threshold, 0.9, 0.3, 0.0833, 10, rng)
    assert len(chosen) == 10
    for probabilities, split_labels, value in chosen:
        assert (probabilities[split_labels == 1] >= value).mean() >= 0.9


@pytest.mark.parametrize(
    ("option", "value"),
    [("--sigma", "-0.1"), ("--sigma", "nan"), ("--output-step", "-0.0832"), ("--draws", "0"), ("--target", "1.5")],
)
def test_invalid_numbers_rejected_before_loading(tool, tmp_path, monkeypatch, capsys, option, value):
    arguments = ["agreement_noise.py", str(tmp_path / "missing.keras"), "--split-file", str(tmp_path / "split.json"),
                 "--data", str(tmp_path), "--sigma", "0.1", option, value]
    monkeypatch.setattr("sys.argv", arguments)
    with pytest.raises(SystemExit) as exit_info:
        tool.main()
    assert exit_info.value.code == 2
    assert f"invalid value {value!r}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("missing", "message"),
    [("model", "Keras model"), ("split", "split file"), ("data", "data folder")],
)
def test_missing_paths_named(tool, tmp_path, monkeypatch, capsys, missing, message):
    model = tmp_path / "model.keras"
    split = tmp_path / "split.json"
    data = tmp_path / "data"
    for path in (model, split):
        if missing not in path.stem:
            path.write_text("{}")
    if missing != "data":
        data.mkdir()
    arguments = ["agreement_noise.py", str(model), "--split-file", str(split), "--data", str(data), "--sigma", "0.1"]
    monkeypatch.setattr("sys.argv", arguments)
    with pytest.raises(SystemExit) as exit_info:
        tool.main()
    assert exit_info.value.code == 2
    assert f"{message} {tmp_path}" in capsys.readouterr().err


def test_row_independent_of_other_rows(tool):
    first = tool._generator(0, 0.12).normal(size=5)
    again = tool._generator(0, 0.12).normal(size=5)
    other = tool._generator(0, 0.18).normal(size=5)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_empty_test_split_rejected(tool, tiny_keras_model, tmp_path, monkeypatch, capsys):
    from conftest import write_labelled_folder

    from converters.split import make_split, write_split

    data = write_labelled_folder(tmp_path / "data", {(1, "hand"): 3, (0, "hand"): 3}, copies=0, truncated=0)
    split_file = tmp_path / "split.json"
    write_split(make_split(data), split_file)
    model = tmp_path / "tiny.keras"
    model.write_bytes(tiny_keras_model.read_bytes())
    preprocessing = {"height": 32, "width": 32, "channels": 3, "channel_order": "RGB", "resize": "bilinear",
                     "scaling": "0_1"}
    model.with_suffix(".json").write_text(json.dumps({"preprocessing": preprocessing, "threshold": {"value": 0.5}}))
    arguments = ["agreement_noise.py", str(model), "--split-file", str(split_file), "--data", str(data),
                 "--sigma", "0.1", "--draws", "2"]
    monkeypatch.setattr("sys.argv", arguments)
    with pytest.raises(SystemExit) as exit_info:
        tool.main()
    assert exit_info.value.code == 2
    assert "the test split has no decodable image" in capsys.readouterr().err
