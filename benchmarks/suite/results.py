"""Check the suite's targets and render RESULTS.md from the collected figures."""

from __future__ import annotations

import math

from suite import variants as names

INT8_SPEEDUP_LIMITS = {"cnn": 0.40, "mobilenetv2": 0.45}
END_TO_END_SPEEDUP = 10.0
COLD_START_RATIO = 0.15
INFER_RSS_LIMIT_BYTES = 100 * 10**6


def _mean_ms(model: dict, variant: str, threads: str) -> float | None:
    invoke = model["variants"].get(variant, {}).get("invoke", {}).get(threads, {})
    return invoke.get("invoke", {}).get("mean_ms")


def _target(name: str, model: str, value: float | None, limit: float, lower_is_better: bool, unit: str) -> dict:
    met = None
    if value is not None and not math.isnan(value):
        met = value <= limit if lower_is_better else value >= limit
    return {"target": name, "model": model, "value": value, "limit": limit,
            "comparison": "<=" if lower_is_better else ">=", "unit": unit, "met": met}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator in (None, 0):
        return None
    return numerator / denominator


def check_targets(report: dict) -> list[dict]:
    """Return one entry per target and model: the measured value, the limit and whether it was met."""
    targets = []
    threads_list = [str(t) for t in report["settings"]["threads"]]
    for name, model in report["models"].items():
        for threads in threads_list:
            ratio = _ratio(_mean_ms(model, names.TFLITE_INT8, threads), _mean_ms(model, names.TFLITE_FLOAT32, threads))
            targets.append(_target(f"int8 invoke / float32 TFLite invoke, {threads} thread(s)", name, ratio,
                                   INT8_SPEEDUP_LIMITS.get(name, 0.40), True, "x"))
        for threads in threads_list:
            ratio = _ratio(_mean_ms(model, names.TFLITE_INT8, threads), _mean_ms(model, names.ONNX_INT8, threads))
            targets.append(_target(f"int8 invoke / ONNX Runtime int8 invoke, {threads} thread(s)", name, ratio,
                                   1.0, True, "x"))
        study = model["variants"].get(names.KERAS_STUDY, {}).get("end_to_end", {}).get("images_per_second")
        infer = model.get("infer_folder", {}).get("images_per_second")
        targets.append(_target("edgefrac infer over the folder / study pipeline, images per second", name,
                               _ratio(infer, study), END_TO_END_SPEEDUP, False, "x"))
        cold = model["variants"].get(names.TFLITE_INT8, {}).get("cold_start", {}).get("seconds")
        cold_tf = model["variants"].get(names.KERAS_STUDY, {}).get("cold_start", {}).get("seconds")
        targets.append(_target("one-image edgefrac infer cold start / the same through TensorFlow", name,
                               _ratio(cold, cold_tf), COLD_START_RATIO, True, "x"))
        rss = model.get("infer_folder", {}).get("peak_rss_bytes")
        targets.append(_target("peak RSS of edgefrac infer over the folder", name,
                               rss / 1e6 if rss else None, INFER_RSS_LIMIT_BYTES / 1e6, True, "MB"))
    return targets


def _format(value, digits=2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _end_to_end_rss(result: dict) -> float | None:
    for measured in result["invoke"].values():
        if "end_to_end" in measured:
            return measured["peak_rss_bytes"] / 1e6
    return None


def _variant_rows(name: str, model: dict, threads_list: list[str]) -> list[str]:
    invoke_headers = [f"invoke ms, one view, {t} thr: mean (p50 / p90)" for t in threads_list]
    header = ["variant", *invoke_headers, "end-to-end img/s",
              "cold start s", "peak RSS MB (cold start)", "peak RSS MB (end-to-end)", "file MB", "AUC", "sensitivity", "specificity"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, result in model["variants"].items():
        cells = [variant]
        for threads in threads_list:
            invoke = result["invoke"].get(threads, {})
            if "error" in invoke:
                cells.append(f"failed: {invoke['error'][:80]}")
            else:
                stats = invoke["invoke"]
                cells.append(f"{stats['mean_ms']:.2f} ({stats['p50_ms']:.2f} / {stats['p90_ms']:.2f})")
        cold = result.get("cold_start", {})
        accuracy = result.get("accuracy", {})
        cells += [
            _format(result.get("end_to_end", {}).get("images_per_second"), 1),
            _format(cold.get("seconds")) if "error" not in cold else "failed",
            _format(cold["peak_rss_bytes"] / 1e6, 0) if "peak_rss_bytes" in cold else "n/a",
            _format(_end_to_end_rss(result), 0),
            _format(result["file_bytes"] / 1e6),
            _format(accuracy.get("auc"), 3), _format(accuracy.get("sensitivity"), 3),
            _format(accuracy.get("specificity"), 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _profile_lines(report: dict) -> list[str]:
    lines = ["## Where the time goes", "",
             "End-to-end seconds per stage over the subset, at the highest thread count:", ""]
    lines += ["| model | variant | decode and resize | preprocess | invoke, every view | total |",
              "|---|---|---|---|---|---|"]
    for name, model in report["models"].items():
        for variant, result in model["variants"].items():
            stages = result.get("end_to_end", {}).get("stage_seconds")
            if not stages:
                continue
            total = sum(stages.values())
            cells = [f"{stages.get(stage, 0.0):.2f} s ({stages.get(stage, 0.0) / total:.0%})"
                     for stage in ("decode and resize", "preprocess", "invoke")]
            lines.append(f"| {name} | {variant} | " + " | ".join(cells) + f" | {total:.2f} s |")
    lines += ["", "Layers with the most multiply-accumulates (where invoke time goes, roughly):", ""]
    for name, model in report["models"].items():
        layers = sorted(model.get("macs_by_layer", {}).items(), key=lambda item: item[1], reverse=True)[:5]
        shares = ", ".join(f"{layer} {count / model['macs']:.0%}" for layer, count in layers)
        lines.append(f"- {name}: {shares}")
    lines += ["", "Fixed start-up cost of a new process (median seconds, page cache warm):", ""]
    lines += [f"- {step}: {seconds:.2f} s" for step, seconds in report["startup_profile"].items()]
    return lines


def _model_summary(model: dict) -> str:
    """Return the sentences under a model's heading: input, work per invocation, thresholds and views."""
    views = model.get("views", 1)
    augmentation = model.get("test_time_augmentation", "none")
    if views > 1:
        view_sentence = (f"Test-time augmentation {augmentation}: the accuracy, end-to-end and cold-start figures "
                         f"score each image in {views} views ({views} invocations) and average their logits. "
                         "Invoke figures are one invocation.")
    else:
        view_sentence = f"Test-time augmentation {augmentation}: each image is scored in one view (one invocation)."
    return (f"Keras model `{model['keras']}`, input {model['preprocessing']['height']}x"
            f"{model['preprocessing']['width']}, {model['macs'] / 1e6:.1f} M multiply-accumulates per invocation; "
            f"threshold {model['threshold']:.4f} (int8 model: {model['int8_threshold']:.4f}). {view_sentence}")


def render_markdown(report: dict) -> str:
    """Return the RESULTS.md page for a finished suite run."""
    environment = report["environment"]
    threads_list = [str(t) for t in report["settings"]["threads"]]
    lines = [
        "# Side-by-side benchmark results",
        "",
        f"Figures from one run of `python benchmarks/run_suite.py` on {report['created']}, on a shared machine: "
        "other jobs may have run at the same time, so treat small differences as noise.",
        "",
        f"- Machine: {environment['cpu_model']}, {environment['cpu_cores']} cores, {environment['machine']}, "
        f"board {environment['board'] or 'none (no device tree)'}, governor {environment['governor'] or 'not exposed'}, "
        f"load average at start {', '.join(f'{v:.2f}' for v in environment['load_average'] or [])}",
        f"- CPU flags that matter here: {report['cpu_flags']}; platform {report['platform']}",
        f"- Runtimes: edgefrac {environment['edgefrac_version']} on {environment['runtime']} "
        f"{environment['runtime_version']}, numpy {environment['numpy_version']}, Python {environment['python_version']}",
        f"- Images: {report['selection']}",
        f"- Invoke: {report['settings']['warmup']} warm-up and {report['settings']['runs']} measured runs on a fixed "
        "random input, one invocation (one view) per run, each variant and thread count in a fresh process. "
        "End-to-end figures, accuracy and cold starts score each image in every view the model's training record "
        "names. Cold start: median of "
        f"{report['settings']['cold_start_repeats']} runs of a one-image command (process start to printed result) "
        "after one untimed run that warms the page cache; `edgefrac infer` for the TFLite variants.",
        "",
        "## Targets",
        "",
        "| target | model | measured | limit | result |",
        "|---|---|---|---|---|",
    ]
    for target in report["targets"]:
        result = {True: "met", False: "**missed**", None: "not measured"}[target["met"]]
        lines.append(f"| {target['target']} | {target['model']} | {_format(target['value'])} {target['unit']} | "
                     f"{target['comparison']} {target['limit']} {target['unit']} | {result} |")
    lines += ["", "Invoke ratios compare one invocation (one view). Images per second and cold starts include "
                  "every view of the model, both for `edgefrac infer` and for the study pipeline "
                  "(the original study scored one view)."]
    for name, model in report["models"].items():
        lines += ["", f"## {name}", "", _model_summary(model), ""]
        lines += _variant_rows(name, model, threads_list)
        infer = model.get("infer_folder", {})
        if "images_per_second" in infer:
            lines += ["", f"`edgefrac infer` over the subset folder in one process, process start included: "
                          f"{infer['files']} files in "
                          f"{infer['seconds']:.1f} s ({infer['images_per_second']:.1f} images/s), peak RSS "
                          f"{infer['peak_rss_bytes'] / 1e6:.0f} MB."]
        lines += ["", "Achieved int8 multiply-accumulates per second of the LiteRT int8 model, against the "
                      "estimated peak of the cores its threads can use:", ""]
        per_core_peak = report["int8_peak"]["macs_per_second"] / environment["cpu_cores"]
        for threads in threads_list:
            mean = _mean_ms(model, names.TFLITE_INT8, threads)
            if mean:
                achieved = model["macs"] / (mean / 1000.0)
                usable_peak = per_core_peak * min(int(threads), environment["cpu_cores"])
                lines.append(f"- {threads} thread(s): {achieved / 1e9:.1f} GMAC/s, "
                             f"{achieved / usable_peak:.1%} of {usable_peak / 1e9:.0f} GMAC/s")
    lines += ["", "Estimated int8 peak of this CPU (an upper bound, not a measurement): "
              f"{report['int8_peak']['formula']}. The clock is the current `cpu MHz` of /proc/cpuinfo; two "
              "vector multiply instructions per cycle is an assumption.", ""]
    lines += _profile_lines(report)
    return "\n".join(lines) + "\n"
