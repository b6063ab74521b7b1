"""Estimate how often a converted model with a given logit error reaches a decision-agreement target.

Decision agreement between a Keras model and its int8 conversion depends on the
size of the int8 error and on how many images score near the threshold. This
script separates the two. It scores the validation and test splits with the
Keras model (in the views of the test-time augmentation its training record
names), then, for each standard deviation given, adds Gaussian noise of
that size to every logit (optionally rounded to an int8 output step) many
times. Each time it re-tunes the noisy model's threshold on validation the way
``edgefrac convert`` does and counts agreement on both splits. Each row's noise
comes from a generator seeded by --seed and that row's sigma, so a row gives
the same figures whatever other rows are asked for.

    python tools/agreement_noise.py models/mobilenetv2.keras \\
        --split-file models/fracatlas-split.json --data ../shared/fracatlas \\
        --sigma 0.18 --sigma 0.12 --sigma 0.06 --output-step 0.0832

Results go to stdout, one row per standard deviation. Needs the convert extra (TensorFlow).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from converters.convert import retune_threshold  # noqa: E402
from converters.scoring import keras_probabilities, record_augmentation  # noqa: E402
from converters.tf import keras  # noqa: E402
from converters.training import read_model_record  # noqa: E402
from edgefrac.classifier import sigmoid  # noqa: E402
from edgefrac.drift import logit  # noqa: E402
from edgefrac.errors import EdgefracError, UsageError  # noqa: E402
from edgefrac.images import load_input  # noqa: E402
from edgefrac.preprocessing import PreprocessConfig  # noqa: E402
from edgefrac.splitfile import read_split  # noqa: E402


def score(model, split, name: str, config: PreprocessConfig, augmentation) -> tuple[np.ndarray, np.ndarray]:
    """Return the Keras logits, over the record's test-time augmentation views, and labels of one split's images."""
    entries = split.subset(name, decodable_only=True)
    if not entries:
        raise UsageError(
            f"the {name} split has no decodable image, and the tool needs images in both validation and test; "
            "make a split with more images or larger --fractions for those splits"
        )
    inputs = np.stack([load_input(split.path_of(entry), config) for entry in entries])
    probabilities = keras_probabilities(model, inputs, augmentation)
    return logit(probabilities), np.array([entry.label for entry in entries], dtype=np.int64)


def simulate(keras_logits, labels, threshold, target, sigma, step, draws, rng) -> dict[str, np.ndarray]:
    """Return each split's agreement in every draw."""
    reference = {name: keras_logits[name] >= logit(threshold) for name in keras_logits}
    agreement = {name: np.empty(draws) for name in keras_logits}
    for draw in range(draws):
        noisy = {}
        for name, values in keras_logits.items():
            candidate = values + rng.normal(0.0, sigma, values.size)
            noisy[name] = np.round(candidate / step) * step if step > 0 else candidate
        probabilities = {name: sigmoid(values) for name, values in noisy.items()}
        chosen = retune_threshold(probabilities["validation"], labels["validation"], reference["validation"], target)
        for name in keras_logits:
            agreement[name][draw] = np.mean((probabilities[name] >= chosen) == reference[name])
    return agreement


def _non_negative(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a finite number >= 0")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a fraction in (0, 1]")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an integer >= 1")
    return value


def _generator(seed: int, sigma: float) -> np.random.Generator:
    """Return the generator of one row, seeded by --seed and the sigma so that no row depends on the others."""
    return np.random.default_rng([seed, round(sigma * 1_000_000)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="Keras model with its training record (NAME.json) beside it")
    parser.add_argument("--split-file", type=Path, required=True, help="split file written by `edgefrac split`")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder the split file refers to")
    parser.add_argument("--sigma", type=_non_negative, action="append", required=True,
                        help="standard deviation of the logit error; repeat for several")
    parser.add_argument("--output-step", type=_non_negative, default=0.0,
                        help="round noisy logits to this step, as an int8 logit output does [default: 0, no rounding]")
    parser.add_argument("--target", type=_fraction, default=0.98, help="agreement target [default: 0.98]")
    parser.add_argument("--draws", type=_positive, default=200, help="noise draws per sigma [default: 200]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise [default: 0]")
    args = parser.parse_args()

    if not args.model.is_file():
        parser.error(f"Keras model {args.model} not found")
    if not args.split_file.is_file():
        parser.error(f"split file {args.split_file} not found")
    if not args.data.is_dir():
        parser.error(f"data folder {args.data} not found")
    record = read_model_record(args.model)
    if not record or "threshold" not in record or "preprocessing" not in record:
        parser.error(f"{args.model} has no training record with a threshold and preprocessing beside it")
    config = PreprocessConfig.from_dict(record["preprocessing"])
    threshold = float(record["threshold"]["value"])
    target_sensitivity = float(record["threshold"].get("target_sensitivity", 0.90))
    try:
        augmentation = record_augmentation(record, f"training record of {args.model}")
        split = read_split(args.split_file, args.data)
        model = keras.models.load_model(args.model, compile=False)
        keras_logits, labels = {}, {}
        for name in ("validation", "test"):
            keras_logits[name], labels[name] = score(model, split, name, config, augmentation)
    except UsageError as error:
        parser.error(str(error))
    except EdgefracError as error:
        parser.error(f"{error}; check that --data is the folder the split file was written for")

    print(f"model {args.model}, threshold {threshold:.4f}, target sensitivity {target_sensitivity:.2f}, "
          f"test-time augmentation {augmentation.value}, "
          f"agreement target {args.target}, {args.draws} draws per sigma, output step {args.output_step}, "
          f"seed {args.seed}")
    print(f"{'sigma':>6} {'val mean':>9} {'test mean':>9} {'P(val)':>7} {'P(test)':>7} {'P(both)':>7}")
    for sigma in args.sigma:
        agreement = simulate(keras_logits, labels, threshold, target_sensitivity, sigma, args.output_step,
                             args.draws, _generator(args.seed, sigma))
        passed = {name: values >= args.target - 1e-12 for name, values in agreement.items()}
        print(f"{sigma:>6.3f} {agreement['validation'].mean():>9.4f} {agreement['test'].mean():>9.4f} "
              f"{passed['validation'].mean():>7.2f} {passed['test'].mean():>7.2f} "
              f"{(passed['validation'] & passed['test']).mean():>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
