"""Render a benchmark report as a text table, JSON, or a markdown page with PNG plots.

The plots need matplotlib (``pip install 'edgefrac[bench]'``), imported only
when ``write_markdown_report`` is called, so a device without it can still
print tables and JSON.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from edgefrac.bench.runner import BenchmarkReport
from edgefrac.errors import MissingDependencyError

logger = logging.getLogger(__name__)

LATENCY_PLOT = "latency.png"
SCATTER_PLOT = "drift-scatter.png"
MARKDOWN_NAME = "report.md"
JSON_NAME = "report.json"


def to_json(report: BenchmarkReport) -> str:
    """Return the report as indented JSON; NaN values become null."""
    return json.dumps(_without_nan(report.to_dict()), indent=2, sort_keys=False) + "\n"


def _without_nan(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nan(item) for item in value]
    return value


def _number(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 4) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+.{digits}f}"


def environment_lines(report: BenchmarkReport) -> list[str]:
    env = report.environment
    load = ", ".join(f"{v:.2f}" for v in env.load_average) if env.load_average else "n/a"
    return [
        f"board: {env.board or 'n/a (no device tree)'}",
        f"cpu: {env.cpu_model}, {env.cpu_cores} cores ({env.usable_cores} usable), {env.machine}",
        f"governor: {env.governor or 'n/a'}; load average: {load}",
        f"runtime: {env.runtime} {env.runtime_version}; numpy {env.numpy_version}; "
        f"python {env.python_version}; edgefrac {env.edgefrac_version}",
    ]


def latency_table(report: BenchmarkReport) -> list[list[str]]:
    """Return rows of the latency table: a header, then warm-up, invoke and end-to-end rows per thread count.

    The warm-up row is left out when there were no warm-up runs (``--warmup 0``).
    """
    rows = [["phase", "threads", "runs", "init ms", "first ms", "mean", "std", "min", "p50", "p90", "p95", "p99",
             "max", "per s"]]
    for result in report.invoke:
        if result.warmup is not None:
            rows.append(["warm-up", str(result.threads), str(result.warmup.runs), "", "", *_stats_cells(result.warmup)])
        stats = result.measured
        rows.append([
            "invoke", str(result.threads), str(stats.runs), _number(result.init_ms), _number(result.first_inference_ms),
            *_stats_cells(stats),
        ])
    for result in report.end_to_end:
        stats = result.per_image
        cells = ["n/a"] * 8 if stats is None else [
            _number(stats.mean_ms), _number(stats.std_ms), _number(stats.min_ms), _number(stats.p50_ms),
            _number(stats.p90_ms), _number(stats.p95_ms), _number(stats.p99_ms), _number(stats.max_ms),
        ]
        rows.append(["end-to-end", str(result.threads), str(result.images), "", "", *cells,
                     _number(result.images_per_second, 1)])
    return rows


def _stats_cells(stats) -> list[str]:
    """Return the mean, std, min, percentile, max and per-second cells of one latency row."""
    return [
        _number(stats.mean_ms), _number(stats.std_ms), _number(stats.min_ms), _number(stats.p50_ms),
        _number(stats.p90_ms), _number(stats.p95_ms), _number(stats.p99_ms), _number(stats.max_ms),
        _number(stats.throughput_per_second, 1),
    ]


def drift_rows(report: BenchmarkReport) -> list[list[str]]:
    """Return rows of the drift table: overall first, then each group."""
    if report.drift is None:
        return []
    rows = [["set", "images", "agreement", "flipped", "dAUC", "dsensitivity", "dspecificity", "max |dp|",
             "mean |dp|", "sd logit", "sd near", "n near"]]
    summaries = [("overall", report.drift.report.overall), *sorted(report.drift.report.groups.items())]
    for name, summary in summaries:
        rows.append([
            name, str(summary.images), _number(summary.agreement, 4), str(summary.flipped),
            _signed(summary.delta_auc), _signed(summary.delta_sensitivity), _signed(summary.delta_specificity),
            _number(summary.max_abs_delta_p, 4), _number(summary.mean_abs_delta_p, 4),
            _number(summary.logit_delta_std, 4), _number(summary.logit_delta_std_near_threshold, 4),
            str(summary.near_threshold),
        ])
    return rows


def _format_columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def to_text(report: BenchmarkReport) -> str:
    """Return the report as aligned plain-text tables for a terminal; latencies in milliseconds."""
    model = report.model
    lines = [
        f"model: {model.path} ({model.name}), {model.file_bytes:,} bytes, "
        f"{model.input_dtype} input, {model.output_dtype} output, threshold {model.threshold:.4f}, "
        f"test-time augmentation {model.test_time_augmentation}",
        *environment_lines(report),
        f"peak RSS: {report.peak_rss_bytes / 2**20:.1f} MiB",
        "",
        *_format_columns(latency_table(report)),
    ]
    failed = [r for r in report.end_to_end if r.failed]
    if failed:
        lines.append(f"end-to-end: {failed[0].failed} file(s) failed to decode and are not in the figures")
    if report.drift is not None:
        reference = report.drift.reference
        lines += [
            "",
            f"drift against {reference.path} ({reference.kind}), reference threshold {reference.threshold:.4f} "
            f"from {reference.threshold_source}, candidate threshold {report.drift.report.candidate_threshold:.4f}",
            *_format_columns(drift_rows(report)),
        ]
        flipped = report.drift.report.flipped_ids
        if flipped:
            lines.append(f"flipped decisions ({len(flipped)}): {', '.join(flipped)}")
    return "\n".join(lines) + "\n"


def _markdown_table(rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return lines


def write_markdown_report(report: BenchmarkReport, folder: str | Path) -> Path:
    """Write ``report.md``, ``report.json`` and the PNG plots into ``folder``; return the markdown path."""
    plt = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / JSON_NAME).write_text(to_json(report), encoding="utf-8")
    _plot_latency(plt, report, folder / LATENCY_PLOT)

    model = report.model
    lines = [
        f"# Benchmark of {model.name}",
        "",
        f"Model file `{model.path}`: {model.file_bytes:,} bytes, {model.input_dtype} input, "
        f"{model.output_dtype} output, decision threshold {model.threshold:.4f}, test-time augmentation "
        f"{model.test_time_augmentation} (end-to-end figures include every view; invoke-only latency is one "
        "invocation).",
        "",
        *[f"- {line}" for line in environment_lines(report)],
        f"- peak RSS: {report.peak_rss_bytes / 2**20:.1f} MiB",
        "",
        "## Latency (milliseconds)",
        "",
        *_markdown_table(latency_table(report)),
        "",
        f"![latency distribution]({LATENCY_PLOT})",
    ]
    if report.warnings:
        lines += ["", "## Warnings", "", *[f"- {warning}" for warning in report.warnings]]
    if report.drift is not None:
        _plot_scatter(plt, report, folder / SCATTER_PLOT)
        reference = report.drift.reference
        lines += [
            "",
            "## Accuracy drift",
            "",
            f"Reference `{reference.path}` ({reference.kind}) decides at {reference.threshold:.4f} "
            f"({reference.threshold_source}); this model at {report.drift.report.candidate_threshold:.4f}. "
            f"{reference.images} images scored by both.",
            "",
            *_markdown_table(drift_rows(report)),
            "",
            f"![int8 against reference probabilities]({SCATTER_PLOT})",
            "",
            "Flipped decisions: " + (", ".join(report.drift.report.flipped_ids) or "none"),
        ]
    path = folder / MARKDOWN_NAME
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise MissingDependencyError(
            f"--report needs matplotlib ({error}); install it with: pip install 'edgefrac[bench]'"
        ) from error
    return plt


def _plot_latency(plt, report: BenchmarkReport, path: Path) -> None:
    series = [(f"invoke, {r.threads} thr", r.samples_ms) for r in report.invoke]
    series += [(f"end-to-end, {r.threads} thr", r.samples_ms) for r in report.end_to_end if r.samples_ms]
    figure, axis = plt.subplots(figsize=(8, 1.2 + 0.6 * len(series)))
    axis.boxplot([samples for _, samples in series], vert=False, whis=(1, 99), showfliers=True)
    axis.set_yticks(range(1, len(series) + 1), [name for name, _ in series])
    axis.set_xlabel("latency (ms); whiskers at p1 and p99")
    axis.set_xscale("log")
    axis.set_title(f"{report.model.name}: latency per run")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_scatter(plt, report: BenchmarkReport, path: Path) -> None:
    drift_result = report.drift
    flipped = set(drift_result.report.flipped_ids)
    colours = ["tab:red" if i in flipped else "tab:blue" for i in drift_result.image_ids]
    figure, axis = plt.subplots(figsize=(5.5, 5.5))
    axis.scatter(drift_result.reference_probabilities, drift_result.candidate_probabilities, s=6, c=colours, alpha=0.6)
    axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    axis.axvline(drift_result.reference.threshold, color="grey", linestyle=":", linewidth=0.8)
    axis.axhline(drift_result.report.candidate_threshold, color="grey", linestyle=":", linewidth=0.8)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("reference probability")
    axis.set_ylabel(f"{report.model.name} probability")
    axis.set_title("per-image probabilities (red: decision flipped)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
