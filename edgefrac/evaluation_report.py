"""Render an evaluation report: JSON, a markdown table, a plain-text table and a ROC plot.

The ROC plot needs matplotlib (the ``bench`` extra), which is imported only
when a plot is drawn.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from edgefrac import metrics
from edgefrac.errors import MissingDependencyError
from edgefrac.evaluation import EvaluationReport, GroupMetrics

logger = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"
METRICS_MARKDOWN = "metrics.md"
ROC_PLOT = "roc.png"

_COLUMNS = ("Group", "Images", "Fractured", "AUC (95% CI)", "Sens", "Spec", "PPV", "NPV", "F1", "Acc")


def _rate(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _row(group: GroupMetrics) -> tuple[str, ...]:
    low, high = group.auc_ci
    auc = "n/a" if math.isnan(group.auc) else f"{group.auc:.3f} ({_rate(low)}-{_rate(high)})"
    rates = group.at_threshold
    return (
        group.name,
        str(group.images),
        str(group.fractured),
        auc,
        _rate(rates.sensitivity),
        _rate(rates.specificity),
        _rate(rates.ppv),
        _rate(rates.npv),
        _rate(rates.f1),
        _rate(rates.accuracy),
    )


def _summary_lines(report: EvaluationReport) -> list[str]:
    split = report.split
    lines = [
        f"Model: {report.model.get('path')} ({report.model.get('kind')}, test-time augmentation "
        f"{report.model.get('test_time_augmentation', 'none')})",
        f"Split: {split.get('name')} of {split.get('file')}: {split.get('scored')} images scored, "
        f"{split.get('failed')} could not be read or decoded",
        f"Threshold: {report.threshold:.4f} ({report.threshold_source})",
        f"AUC CI: percentile bootstrap over {report.resamples} resamples",
    ]
    if report.changed:
        lines.append(
            f"Changed files: {len(report.changed)} images differ from the SHA-256 in the split file and were "
            "scored with the split's labels"
        )
    return lines


def to_markdown(report: EvaluationReport) -> str:
    """Return the summary and a markdown table with one row per group."""
    lines = [f"# Evaluation of {report.model.get('name')}", ""]
    lines += [f"- {line}" for line in _summary_lines(report)]
    lines += ["", "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(_row(group)) + " |" for group in report.groups]
    if report.failed:
        lines += ["", "Images left out because they could not be read or decoded:", ""]
        lines += [f"- `{failure.image_id}`: {failure.error}" for failure in report.failed]
    if report.changed:
        lines += ["", "Images whose bytes differ from the SHA-256 in the split file:", ""]
        lines += [f"- `{changed.image_id}`: {changed.path}" for changed in report.changed]
    return "\n".join(lines) + "\n"


def failure_lines(report: EvaluationReport) -> list[str]:
    """Return one line per image left out of the report: its path and why it could not be read or decoded."""
    if not report.failed:
        return []
    lines = [f"images left out because they could not be read or decoded ({len(report.failed)}):"]
    for failure in report.failed:
        # Decoder messages repeat the path after the error type, and the line already starts with it.
        reason = failure.error.replace(f"{failure.path}: ", "", 1)
        marked = " (marked as truncated in the split file)" if failure.expected else ""
        lines.append(f"  {failure.path}: {reason}{marked}")
    return lines


def to_text_table(report: EvaluationReport) -> str:
    """Return the summary and an aligned plain-text table for a terminal."""
    rows = [_COLUMNS, *(_row(group) for group in report.groups)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    table = [
        "  ".join(cell.ljust(width) if column == 0 else cell.rjust(width) for column, (cell, width) in enumerate(zip(row, widths)))
        for row in rows
    ]
    return "\n".join([*_summary_lines(report), "", *table]) + "\n"


def require_matplotlib() -> None:
    """Raise MissingDependencyError with the pip command when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise MissingDependencyError(
            f"the ROC plot needs matplotlib ({error}); install it with pip install 'edgefrac[bench]'"
        ) from None


def plot_roc(report: EvaluationReport, path: Path) -> None:
    """Draw the overall ROC curve with the operating point at the report's threshold."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    fpr, tpr, _ = metrics.roc_curve(report.probabilities, report.labels)
    point = report.overall.at_threshold
    figure, axes = pyplot.subplots(figsize=(5, 5), dpi=120)
    try:
        axes.plot(fpr, tpr, drawstyle="steps-post", label=f"ROC, AUC {_rate(report.overall.auc)}")
        axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
        axes.plot(
            [1.0 - point.specificity],
            [point.sensitivity],
            marker="o",
            color="red",
            linestyle="none",
            label=f"threshold {report.threshold:.3f}",
        )
        axes.set_xlabel("False-positive rate (1 - specificity)")
        axes.set_ylabel("True-positive rate (sensitivity)")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.01)
        axes.set_title(f"{report.model.get('name')} on {report.split.get('name')} ({report.overall.images} images)")
        axes.legend(loc="lower right")
        figure.tight_layout()
        figure.savefig(path)
    finally:
        pyplot.close(figure)


def write_outputs(report: EvaluationReport, folder: Path) -> list[Path]:
    """Write metrics.json, metrics.md and roc.png into ``folder`` and return their paths."""
    require_matplotlib()
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / METRICS_JSON
    json_path.write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    markdown_path = folder / METRICS_MARKDOWN
    markdown_path.write_text(to_markdown(report), encoding="utf-8")
    plot_path = folder / ROC_PLOT
    plot_roc(report, plot_path)
    logger.info("wrote %s, %s and %s", json_path, markdown_path, plot_path)
    return [json_path, markdown_path, plot_path]
