"""``edgefrac convert``: Keras model -> float32, float16 and int8 model files with drift checks.

Steps: read the Keras model and its training record, draw the representative
dataset from training images, scale up the stem's low ReLU6 channels
(``converters.relu6_scaling``; ``converters.tflite`` also folds and merges
layers), convert each variant, refine the int8 model
against a float32 conversion (``converters.post_calibration``), score the
validation (and test) split with Keras and with each converted model through
the device runtime (both in the views of the record's test-time augmentation,
``edgefrac.tta``), re-tune the int8 threshold on the int8 outputs, and write
one ``.efm`` per variant whose card carries the threshold and the measured drift.

The int8 model's output is the logit by default. A sigmoid output quantized
to int8 has only 256 levels (scale 1/256, zero point -128), which near a
low decision threshold leaves few distinct values to choose from. The logit
spans a wider range, so the quantization levels spread over the probability
scale where the decisions are made; the runtime applies the sigmoid itself.
On the shipped MobileNetV2 both outputs gave the same validation agreement
after re-tuning (0.916 before the post-calibration steps existed), because
its int8 error comes from the backbone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from converters import calibration
from converters.post_calibration import PostCalibrationOptions, refine
from converters.relu6_scaling import scale_relu6_channels
from converters.cards import card_for_model
from converters.scoring import keras_probabilities, record_augmentation
from converters.split import Split, read_split
from converters.tf import keras, tf
from converters.tflite import Variant, convert
from converters.training import model_record_path, read_model_record
from edgefrac import drift, metrics
from edgefrac.card import DecisionThreshold, OutputKind
from edgefrac.classifier import FractureClassifier
from edgefrac.dataset import file_sha256
from edgefrac.errors import EdgefracError, InputError, TruncatedImageError, UsageError
from edgefrac.images import load_input
from edgefrac.modelfile import LoadedModel, write_model_file
from edgefrac.preprocessing import PreprocessConfig
from edgefrac.splitfile import check_training_record
from edgefrac.tta import TestTimeAugmentation

logger = logging.getLogger(__name__)

DEFAULT_VARIANTS = (Variant.INT8, Variant.FLOAT32, Variant.FLOAT16)


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """Settings of one conversion run."""

    variants: tuple[Variant, ...] = DEFAULT_VARIANTS
    output_kind: OutputKind = OutputKind.LOGIT
    calibration_size: int = calibration.DEFAULT_CALIBRATION_SIZE
    seed: int = 0
    target_sensitivity: float | None = None
    threshold: float | None = None
    preprocessing: PreprocessConfig | None = None
    post_calibration: PostCalibrationOptions = PostCalibrationOptions()
    allow_missing_images: bool = False
    """Measure drift on the validation and test images present instead of raising UsageError when some are missing."""


@dataclasses.dataclass(frozen=True)
class VariantResult:
    """One converted model file and its drift against the Keras model."""

    variant: Variant
    path: Path
    bytes: int
    sha256: str
    threshold: float
    validation: drift.DriftReport | None
    test: drift.DriftReport | None
    post_calibration: dict | None = None
    relu6_scaling: dict | None = None
    missing_images: dict[str, int] = dataclasses.field(default_factory=dict)
    """Number of image files missing from each measured split. Its drift figures leave those images out."""

    def to_dict(self) -> dict:
        return {
            "variant": self.variant.value,
            "path": str(self.path),
            "bytes": self.bytes,
            "sha256": self.sha256,
            "threshold": self.threshold,
            "relu6_scaling": self.relu6_scaling,
            "post_calibration": self.post_calibration,
            "validation": self.validation.to_dict() if self.validation else None,
            "test": self.test.to_dict() if self.test else None,
            "missing_images": self.missing_images,
        }


@dataclasses.dataclass(frozen=True)
class ConversionReport:
    """Everything ``edgefrac convert`` measured, written beside the model files as JSON."""

    source: Path
    source_sha256: str
    reference_threshold: float
    target_sensitivity: float
    test_time_augmentation: TestTimeAugmentation
    calibration_images: int
    calibration_ids_sha256: str
    results: tuple[VariantResult, ...]

    def result(self, variant: Variant) -> VariantResult | None:
        return next((r for r in self.results if r.variant is Variant(variant)), None)

    def to_dict(self) -> dict:
        return {
            "source": str(self.source),
            "source_sha256": self.source_sha256,
            "reference_threshold": self.reference_threshold,
            "target_sensitivity": self.target_sensitivity,
            "test_time_augmentation": self.test_time_augmentation.value,
            "calibration_images": self.calibration_images,
            "calibration_ids_sha256": self.calibration_ids_sha256,
            "results": [r.to_dict() for r in self.results],
        }


@dataclasses.dataclass(frozen=True)
class _ScoredSplit:
    ids: list[str]
    labels: np.ndarray
    inputs: np.ndarray
    groups: dict[str, list[str]]
    missing: int


def _score_split(split: Split, name: str, config: PreprocessConfig) -> _ScoredSplit | None:
    entries = split.subset(name, decodable_only=True)
    marked = len(split.subset(name)) - len(entries)
    if marked:
        logger.info("%s split: left out %d images that the split file marks as truncated or not decodable", name, marked)
    if not entries:
        return None
    missing = len(split.missing(entries))
    inputs, ids, labels = [], [], []
    failures: list[tuple[str, InputError]] = []
    for entry in entries:
        try:
            inputs.append(load_input(split.path_of(entry), config))
        except InputError as error:
            failures.append((entry.image_id, error))
            continue
        ids.append(entry.image_id)
        labels.append(entry.label)
    _report_failures(f"{name} split", failures, len(entries), split.root)
    kept = {e.image_id: e for e in entries}
    groups: dict[str, list[str]] = {}
    for image_id in ids:
        entry = kept[image_id]
        groups.setdefault(f"class:{'fractured' if entry.label else 'not_fractured'}", []).append(image_id)
        groups.setdefault(f"region:{entry.region}", []).append(image_id)
        if entry.hardware is not None:
            groups.setdefault(f"hardware:{'yes' if entry.hardware else 'no'}", []).append(image_id)
    return _ScoredSplit(
        ids=ids, labels=np.array(labels, dtype=np.int64), inputs=np.stack(inputs), groups=groups, missing=missing
    )


def _report_failures(subset: str, failures: list, total: int, root: Path) -> None:
    """Log how many images of ``subset`` failed to load, and raise when none loaded."""
    if not failures:
        return
    for image_id, error in failures:
        logger.debug("%s image %s left out: %s", subset, image_id, error)
    first_id, first_error = failures[0]
    logger.warning(
        "%s: %d of %d images could not be loaded and are left out of the drift figures (first: %s), "
        "run with -vv to list them",
        subset, len(failures), total, calibration.describe_failure(first_error),
    )
    if len(failures) == total:
        raise UsageError(
            f"no image of the {subset} could be loaded from {root}; check that --calibration points at the "
            "dataset folder the split file was made from"
        )


def _tflite_probabilities(classifier: FractureClassifier, inputs: np.ndarray) -> np.ndarray:
    return np.array([classifier.predict_input(x).probability for x in inputs], dtype=np.float64)


def retune_threshold(
    probabilities: np.ndarray,
    labels: np.ndarray,
    reference_decisions: np.ndarray,
    target_sensitivity: float,
    reference_threshold: float | None = None,
) -> float:
    """Choose the converted model's threshold among its own output levels.

    Candidates are the distinct probabilities the model produced (for an int8
    output these are its quantization levels) and ``reference_threshold``.
    Among those that keep the target sensitivity, the one that agrees most
    often with the reference model's decisions wins. Ties go to
    ``reference_threshold``, so a variant whose outputs equal the reference
    keeps its threshold, and otherwise to the higher threshold, because it
    gives the higher specificity.
    """
    positives = labels == 1

    def score(level: float) -> float | None:
        decisions = probabilities >= level
        sensitivity = decisions[positives].mean() if positives.any() else 1.0
        if sensitivity + 1e-12 < target_sensitivity:
            return None
        return float(np.mean(decisions == reference_decisions))

    best: tuple[float, float] | None = None
    for level in np.unique(probabilities):
        agreement = score(level)
        if agreement is None:
            continue
        if best is None or agreement > best[1] or (agreement == best[1] and level > best[0]):
            best = (float(level), agreement)
    if reference_threshold is not None:
        agreement = score(reference_threshold)
        if agreement is not None and (best is None or agreement >= best[1]):
            return float(reference_threshold)
    if best is None:
        return metrics.threshold_for_sensitivity(probabilities, labels, target_sensitivity)
    return best[0]


def check_no_missing_images(split: Split, split_path: str | Path) -> None:
    """Raise UsageError when image files of the validation or test split are missing from the data folder.

    Drift measured on part of a split is not the figure the model card states
    for that split, so convert stops unless --allow-missing-images is given.
    The error names the folder the split file was written for.
    """
    counts = []
    first_missing = None
    for name in ("validation", "test"):
        entries = split.subset(name, decodable_only=True)
        missing = split.missing(entries)
        if missing:
            counts.append(f"{len(missing)} of {len(entries)} {name} images")
            first_missing = first_missing or missing[0]
    if not counts:
        return
    raise UsageError(
        f"{' and '.join(counts)} of split file {split_path} are missing from {split.root} "
        f"(first: {first_missing.relative_path}), so drift would be measured on part of the split; "
        f"pass --calibration the folder the split file was written for ({_recorded_root(split_path)}), "
        "or add --allow-missing-images to measure drift on the images present"
    )


def _recorded_root(split_path: str | Path) -> str:
    """Return the data folder recorded in the split file (``read_split`` replaces it with --calibration)."""
    return json.loads(Path(split_path).read_text(encoding="utf-8"))["root"]


def check_model_output(model, model_path: Path) -> None:
    """Raise UsageError unless the model ends in one sigmoid unit, the fracture probability.

    The project's architectures end in a Dense(1) layer named ``logit`` and a
    sigmoid Activation layer; a Dense(1, activation="sigmoid") is accepted too.
    """
    expected = (
        "expected one output unit with a sigmoid activation, such as a Dense(1) layer named 'logit' "
        "followed by Activation('sigmoid'), as `edgefrac train` builds"
    )
    if len(model.outputs) != 1:
        raise UsageError(f"model {model_path} has {len(model.outputs)} outputs; {expected}")
    shape = tuple(model.outputs[0].shape)
    if len(shape) != 2 or shape[-1] != 1:
        raise UsageError(f"model {model_path} outputs shape {shape}; {expected}")
    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    if activation != "sigmoid":
        raise UsageError(
            f"model {model_path} ends in layer {last.name!r} with activation {activation or 'none'}, "
            f"so its output is not a probability; {expected}"
        )


def check_input_size(model, config: PreprocessConfig, model_path: Path, source: str) -> None:
    """Raise UsageError when the preprocessing size or channels differ from the model's input."""
    shape = tuple(model.inputs[0].shape)
    model_size = (shape[1], shape[2], shape[3]) if len(shape) == 4 else shape
    if model_size != (config.height, config.width, config.channels):
        raise UsageError(
            f"{source} is for {config.height}x{config.width} inputs with {config.channels} channels, but model "
            f"{model_path} takes {shape[1]}x{shape[2]} with {shape[-1]} channels; "
            "keep the training record that `edgefrac train` wrote for this model beside it"
        )


def convert_keras_model(
    model_path: str | Path,
    output_dir: str | Path,
    *,
    split_path: str | Path | None,
    calibration_dir: str | Path,
    options: ConvertOptions = ConvertOptions(),
    name: str | None = None,
) -> ConversionReport:
    """Convert the Keras model at ``model_path``; see the module docstring for the steps."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise UsageError(f"Keras model {model_path} not found; pass the .keras file written by `edgefrac train`")
    output_dir = Path(output_dir)
    name = name or model_path.stem
    record = read_model_record(model_path) or {}
    config = options.preprocessing or (
        PreprocessConfig.from_dict(record["preprocessing"]) if "preprocessing" in record else None
    )
    if config is None:
        raise UsageError(
            f"no training record {model_path.with_suffix('.json')} beside the model, so its preprocessing is unknown; "
            "pass --scaling (and --resize) to state it"
        )
    recorded_threshold = record.get("threshold", {})
    augmentation = record_augmentation(record, f"training record {model_record_path(model_path)}")
    reference_threshold = options.threshold if options.threshold is not None else recorded_threshold.get("value")
    target_sensitivity = options.target_sensitivity or recorded_threshold.get("target_sensitivity") or 0.90
    model = keras.models.load_model(model_path, compile=False)
    source_sha256 = file_sha256(model_path)
    check_model_output(model, model_path)
    source = "--scaling" if options.preprocessing else f"training record {model_record_path(model_path)}"
    check_input_size(model, config, model_path, source)

    split = read_split(split_path, calibration_dir) if split_path else None
    if split is not None and record:
        check_training_record(split_path, split, record, model_path)
    if split is not None and not options.allow_missing_images:
        check_no_missing_images(split, split_path)
    if split is not None:
        # NOTE: the representative dataset contains the images as they are, also for a record that names
        # horizontal_flip, so the mirror view runs on ranges calibrated without it. On FracAtlas the int8
        # logit error of the two views has the same spread (0.176 and 0.179 on validation). Images that
        # are not alike left and right may need mirrored calibration images.
        representative = calibration.from_split(split, config, options.calibration_size, options.seed)
    else:
        logger.warning("no split file given: calibrating on images from %s without a training split", calibration_dir)
        representative = calibration.from_folder(calibration_dir, config, options.calibration_size, options.seed)
    _log_correction_images(options, representative)

    scored = {}
    if split is not None:
        for split_name in ("validation", "test"):
            subset = _score_split(split, split_name, config)
            if subset is not None:
                scored[split_name] = (subset, keras_probabilities(model, subset.inputs, augmentation))
    if reference_threshold is None:
        if "validation" not in scored:
            raise UsageError("no threshold recorded for this model and no validation split to choose one; pass --threshold")
        subset, reference = scored["validation"]
        reference_threshold = metrics.threshold_for_sensitivity(reference, subset.labels, target_sensitivity)

    # The same function with finer int8 levels in the stem. Every variant converts it, so the
    # float32 reference of the post-calibration steps has the same graph as the int8 model.
    conversion_model, scaling = scale_relu6_channels(model, representative.inputs)
    results = []
    for variant in options.variants:
        variant = Variant(variant)
        output_kind = options.output_kind if variant is Variant.INT8 else OutputKind.PROBABILITY
        tflite = convert(conversion_model, variant, representative_inputs=representative.inputs, output_kind=output_kind)
        post_calibration = None
        if variant is Variant.INT8 and options.post_calibration.enabled:
            tflite, post_calibration = _refine_int8(conversion_model, tflite, output_kind, representative, options)
        results.append(
            _finish_variant(
                variant, tflite, output_kind, name, output_dir, config, augmentation, record, scored,
                reference_threshold, target_sensitivity, representative, source_sha256, model_path, split_path,
                post_calibration, scaling.to_dict() if variant is Variant.INT8 else None,
            )
        )
    report = ConversionReport(
        source=model_path,
        source_sha256=source_sha256,
        reference_threshold=float(reference_threshold),
        target_sensitivity=float(target_sensitivity),
        test_time_augmentation=augmentation,
        calibration_images=len(representative),
        calibration_ids_sha256=representative.ids_sha256,
        results=tuple(results),
    )
    report_path = output_dir / f"{name}-convert-report.json"
    report_path.write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    logger.info("wrote %s", report_path)
    return report


def _log_correction_images(options: ConvertOptions, representative) -> None:
    post = options.post_calibration
    if Variant.INT8 in options.variants and post.enabled and post.images > len(representative):
        logger.warning(
            "--correction-images %d exceeds the %d images of the representative dataset; using %d",
            post.images, len(representative), len(representative),
        )


def _refine_int8(model, tflite: bytes, output_kind, representative, options: ConvertOptions) -> tuple[bytes, dict]:
    """Run the post-calibration steps; on a graph they cannot handle, keep TFLite's calibration.

    The steps are an optimization, so a model they do not support (for example
    one whose float32 and int8 conversions differ in ops) still converts. The
    report and the card record why the steps were skipped.
    """
    reference_tflite = convert(model, Variant.FLOAT32, output_kind=output_kind)
    try:
        return refine(tflite, reference_tflite, representative.inputs, options.post_calibration, seed=options.seed)
    except (EdgefracError, ValueError, IndexError, KeyError, np.linalg.LinAlgError) as error:
        logger.warning(
            "post-calibration steps skipped, so the int8 model keeps TFLite's calibration: %s: %s",
            type(error).__name__, error,
        )
        return tflite, {"skipped": f"{type(error).__name__}: {error}"}


def _finish_variant(
    variant, tflite, output_kind, name, output_dir, config, augmentation, record, scored,
    reference_threshold, target_sensitivity, representative, source_sha256, model_path, split_path,
    post_calibration=None, relu6_scaling=None,
) -> VariantResult:
    provenance = {
        "source_model": model_path.name,
        "source_model_sha256": source_sha256,
        "tensorflow_version": tf.__version__,
        "quantization": variant.value,
        "calibration_images": len(representative) if variant is Variant.INT8 else 0,
        "calibration_ids_sha256": representative.ids_sha256 if variant is Variant.INT8 else None,
        "relu6_scaling": relu6_scaling,
        "post_calibration": post_calibration,
        "split_file_sha256": file_sha256(Path(split_path)) if split_path else None,
        "training": {
            k: record[k] for k in ("architecture", "recipe", "validation_auc", "split_ids_sha256") if k in record
        },
    }
    provisional = card_for_model(
        tflite,
        name=f"{name}-{variant.value}",
        architecture=record.get("architecture", "unknown"),
        preprocessing=config,
        output_kind=output_kind,
        threshold=DecisionThreshold(float(reference_threshold)),
        test_time_augmentation=augmentation,
        provenance=provenance,
    )
    classifier = FractureClassifier(LoadedModel(path=Path(f"{name}-{variant.value}"), tflite=tflite, card=provisional, sha256=""))

    threshold = float(reference_threshold)
    reports: dict[str, drift.DriftReport] = {}
    candidate_scores = {}
    for split_name, (subset, reference) in scored.items():
        candidate_scores[split_name] = _tflite_probabilities(classifier, subset.inputs)
    if "validation" in scored:
        subset, reference = scored["validation"]
        threshold = retune_threshold(
            candidate_scores["validation"], subset.labels, reference >= reference_threshold, target_sensitivity,
            reference_threshold=float(reference_threshold),
        )
    for split_name, (subset, reference) in scored.items():
        reports[split_name] = drift.compare(
            subset.ids, subset.labels, reference, reference_threshold, candidate_scores[split_name], threshold, subset.groups
        )

    chosen = DecisionThreshold(value=float(threshold), target_sensitivity=float(target_sensitivity), chosen_on="not measured")
    if "validation" in reports:
        overall = reports["validation"].overall
        chosen = DecisionThreshold(
            value=float(threshold),
            target_sensitivity=float(target_sensitivity),
            sensitivity=overall.candidate_sensitivity,
            specificity=overall.candidate_specificity,
            chosen_on="validation split" + (f" (split file sha256 {provenance['split_file_sha256'][:12]})" if split_path else ""),
            images=overall.images,
        )
    missing_images = {split_name: subset.missing for split_name, (subset, _) in scored.items()}
    evaluation = {
        f"drift_{k}": {**v.overall.to_dict(), "missing_images": missing_images[k]} for k, v in reports.items()
    }
    card = dataclasses.replace(provisional, threshold=chosen, evaluation=evaluation)
    path = output_dir / f"{name}-{variant.value}.efm"
    digest = write_model_file(path, tflite, card)
    for split_name, report in reports.items():
        logger.info(
            "%s %s: agreement %.4f, AUC %.4f -> %.4f, max |dp| %.4f, threshold %.4f",
            variant.value, split_name, report.overall.agreement, report.overall.reference_auc,
            report.overall.candidate_auc, report.overall.max_abs_delta_p, threshold,
        )
    return VariantResult(
        variant=variant,
        path=path,
        bytes=path.stat().st_size,
        sha256=digest,
        threshold=float(threshold),
        validation=reports.get("validation"),
        test=reports.get("test"),
        post_calibration=post_calibration,
        relu6_scaling=relu6_scaling,
        missing_images=missing_images,
    )
