"""Test-time augmentation: the views, their combination, the card field and scoring through the real interpreter."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import numpy as np
import pytest
from click.testing import CliRunner

from edgefrac.card import ModelCard
from edgefrac.classifier import FractureClassifier, Overrides
from edgefrac.errors import ModelFileError
from edgefrac.modelfile import load_model, write_model_file
from edgefrac import tta
from edgefrac.tta import combine_probabilities, views

# Not imported by name: pytest tries to collect any class in a test module whose name starts with "Test".
Augmentation = tta.TestTimeAugmentation
FLIP = Augmentation.HORIZONTAL_FLIP
NONE = Augmentation.NONE


def _asymmetric_input(size: int = 32) -> np.ndarray:
    """A black [0, 1] input with a white bar at the left edge, which the tiny models score unlike its mirror image."""
    image = np.zeros((size, size, 3), dtype=np.float32)
    image[:, :4, :] = 1.0
    return image


def _with_augmentation(source, tmp_path, augmentation: Augmentation):
    """Copy the model file ``source`` with its card's test-time augmentation set to ``augmentation``."""
    loaded = load_model(source)
    path = tmp_path / f"{source.stem}-{augmentation.value}.efm"
    write_model_file(path, loaded.tflite, dataclasses.replace(loaded.card, test_time_augmentation=augmentation))
    return path


def test_views_mirror_the_width_axis():
    image = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    original, mirrored = views(image, FLIP)
    assert original is image
    np.testing.assert_array_equal(mirrored, image[:, ::-1, :])
    assert mirrored.flags["C_CONTIGUOUS"]

    batch = np.stack([image, image + 100])
    _, mirrored_batch = views(batch, FLIP)
    np.testing.assert_array_equal(mirrored_batch[1], image[:, ::-1, :] + 100)
    assert views(image, NONE) == [image]


def test_combine_averages_logits():
    first, second = np.array([0.2, 0.9]), np.array([0.6, 0.5])
    combined = combine_probabilities([first, second])
    for index in range(2):
        mean_logit = (math.log(first[index] / (1 - first[index])) + math.log(second[index] / (1 - second[index]))) / 2
        assert combined[index] == pytest.approx(1 / (1 + math.exp(-mean_logit)), rel=1e-12)
    # The mean logit differs from the mean probability, which would give 0.4 and 0.7.
    assert combined[0] != pytest.approx(0.4, abs=1e-3)


def test_combine_one_view_exact():
    single = np.array([0.123456789, 1.0, 0.0])
    np.testing.assert_array_equal(combine_probabilities([single]), single)


def test_combine_saturated_views_finite():
    combined = combine_probabilities([np.array([1.0, 0.0]), np.array([1.0, 0.3])])
    assert np.all(np.isfinite(combined))
    assert combined[0] > 0.999999
    assert combined[1] < 0.01


def test_parse_names_valid_choices():
    assert Augmentation.parse("horizontal_flip") is FLIP
    with pytest.raises(ValueError, match="'mirror' is unknown; expected one of 'none', 'horizontal_flip'"):
        Augmentation.parse("mirror")


def test_card_round_trip_and_default(tiny_int8_model):
    card = load_model(tiny_int8_model).card
    assert card.test_time_augmentation is NONE
    data = dataclasses.replace(card, test_time_augmentation=FLIP).to_dict()
    assert data["test_time_augmentation"] == "horizontal_flip"
    assert ModelCard.from_dict(data).test_time_augmentation is FLIP
    del data["test_time_augmentation"]
    assert ModelCard.from_dict(data).test_time_augmentation is NONE


@pytest.mark.parametrize("value", ["vertical_flip", 1, None, ["horizontal_flip"]])
def test_card_rejects_unknown_augmentation(tiny_int8_model, value):
    data = load_model(tiny_int8_model).card.to_dict()
    data["test_time_augmentation"] = value
    with pytest.raises(ModelFileError, match="model card field 'test_time_augmentation' is invalid"):
        ModelCard.from_dict(data)


@pytest.mark.parametrize("fixture", ["tiny_int8_model", "tiny_int8_probability_model"])
def test_classifier_averages_the_two_views(request, tmp_path, fixture):
    flipped = FractureClassifier.from_path(_with_augmentation(request.getfixturevalue(fixture), tmp_path, FLIP))
    model_input = _asymmetric_input()
    raw_original = flipped.invoke(model_input)
    raw_mirrored = flipped.invoke(np.ascontiguousarray(model_input[:, ::-1, :]))
    assert raw_original != raw_mirrored, "the input must score differently from its mirror image for this test"

    prediction = flipped.predict_input(model_input)
    expected = combine_probabilities(
        [np.array([flipped.to_probability(raw_original)]), np.array([flipped.to_probability(raw_mirrored)])]
    )[0]
    assert prediction.probability == pytest.approx(expected, rel=1e-9)
    assert prediction.probability != pytest.approx(flipped.to_probability(raw_original), rel=1e-9)
    if flipped.card.output_kind.value == "logit":
        assert prediction.raw_output == pytest.approx((raw_original + raw_mirrored) / 2)


def test_override_to_none_scores_one_view_and_warns(tiny_int8_model, tmp_path, caplog):
    path = _with_augmentation(tiny_int8_model, tmp_path, FLIP)
    model_input = _asymmetric_input()
    with caplog.at_level(logging.WARNING, logger="edgefrac.classifier"):
        single = FractureClassifier.from_path(path, overrides=Overrides(test_time_augmentation=NONE))
    assert "test-time augmentation horizontal_flip -> none overridden" in caplog.text
    assert single.card.threshold.sensitivity is None
    assert single.predict_input(model_input).raw_output == single.invoke(model_input)


def test_override_adds_augmentation_to_a_plain_tflite(tiny_float_tflite):
    plain = FractureClassifier.from_path(tiny_float_tflite)
    flipped = FractureClassifier.from_path(tiny_float_tflite, overrides=Overrides(test_time_augmentation=FLIP))
    model_input = _asymmetric_input()
    mirrored = np.ascontiguousarray(model_input[:, ::-1, :])
    expected = combine_probabilities([np.array([plain.invoke(model_input)]), np.array([plain.invoke(mirrored)])])[0]
    assert flipped.predict_input(model_input).probability == pytest.approx(expected, rel=1e-9)


def test_infer_option_and_card_agree(tiny_int8_model, tmp_path):
    from PIL import Image

    from edgefrac.cli import main

    image = tmp_path / "scan.png"
    Image.fromarray((_asymmetric_input() * 255).astype(np.uint8)).save(image)
    flipped = _with_augmentation(tiny_int8_model, tmp_path, FLIP)

    def probability(*arguments):
        result = CliRunner().invoke(main, ["infer", "--json", *map(str, arguments), str(image)])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["results"][0]["probability"]

    from_card = probability("--model", flipped)
    from_option = probability("--model", tiny_int8_model, "--test-time-augmentation", "horizontal_flip")
    single = probability("--model", flipped, "--test-time-augmentation", "none")
    assert from_card == pytest.approx(from_option, rel=1e-12)
    assert single != pytest.approx(from_card, rel=1e-6)


def test_infer_rejects_unknown_option_value(tiny_int8_model, tmp_path):
    from edgefrac.cli import main

    result = CliRunner().invoke(
        main, ["infer", "--model", str(tiny_int8_model), "--test-time-augmentation", "rotate", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "'rotate' is not one of 'none', 'horizontal_flip'" in result.output


def test_info_shows_the_default_model_views():
    from edgefrac.cli import main

    result = CliRunner().invoke(main, ["info", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["test_time_augmentation"] == "horizontal_flip"


def test_csv_records_views_and_rejects_other_views(tiny_int8_model, tmp_path):
    import csv

    from PIL import Image

    from edgefrac.cli import main

    folder = tmp_path / "scans"
    folder.mkdir()
    Image.fromarray((_asymmetric_input() * 255).astype(np.uint8)).save(folder / "scan.png")
    flipped = _with_augmentation(tiny_int8_model, tmp_path, FLIP)
    table = tmp_path / "results.csv"

    first = CliRunner().invoke(main, ["infer", "--model", str(flipped), "--csv", str(table), str(folder)])
    assert first.exit_code == 0, first.output
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["preprocessing"] == "32x32 RGB bilinear 0_1 logit horizontal_flip"

    arguments = ["infer", "--model", str(flipped), "--csv", str(table), "--test-time-augmentation", "none"]
    second = CliRunner().invoke(main, [*arguments, str(folder)])
    assert second.exit_code == 2
    assert "32x32 RGB bilinear 0_1 logit'; pass a new --csv path" in second.output


def test_cardless_reference_takes_candidate_views(tiny_int8_model, tiny_float_tflite, tmp_path):
    from PIL import Image

    from edgefrac.bench.accuracy import TFLiteReference

    image = tmp_path / "scan.png"
    Image.fromarray((_asymmetric_input() * 255).astype(np.uint8)).save(image)
    candidate = FractureClassifier.from_path(_with_augmentation(tiny_int8_model, tmp_path, FLIP))
    reference = TFLiteReference(tiny_float_tflite, candidate)
    assert reference.classifier.card.test_time_augmentation is FLIP

    plain = FractureClassifier.from_path(tiny_float_tflite)
    model_input = _asymmetric_input()
    mirrored = np.ascontiguousarray(model_input[:, ::-1, :])
    expected = combine_probabilities([np.array([plain.invoke(model_input)]), np.array([plain.invoke(mirrored)])])[0]
    assert reference.probability(image) == pytest.approx(expected, rel=1e-6)


def test_reference_with_other_views_warns(tiny_int8_model, tmp_path, caplog):
    from edgefrac.bench.accuracy import TFLiteReference

    candidate = FractureClassifier.from_path(_with_augmentation(tiny_int8_model, tmp_path, FLIP))
    with caplog.at_level(logging.WARNING, logger="edgefrac.bench.accuracy"):
        TFLiteReference(tiny_int8_model, candidate)
    assert "scored with test-time augmentation none, as its card names, but the candidate with horizontal_flip" in (
        caplog.text
    )


def test_bench_report_names_views(tiny_int8_model, tmp_path):
    from edgefrac.cli import main

    flipped = _with_augmentation(tiny_int8_model, tmp_path, FLIP)
    result = CliRunner().invoke(main, ["bench", str(flipped), "--runs", "2", "--warmup", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["test_time_augmentation"] == "horizontal_flip"
