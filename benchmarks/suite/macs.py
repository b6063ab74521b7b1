"""Multiply-accumulates of a Keras model and an estimate of this CPU's int8 peak.

MACs count convolution and dense layers only (pooling, batch norm and
activations are cheap or folded away in TFLite):

* Conv2D: out_h * out_w * k_h * k_w * (in_c / groups) * out_c
* DepthwiseConv2D: out_h * out_w * k_h * k_w * in_c * depth_multiplier
* Dense: in_features * units (per position for inputs of rank above 2)
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path


def count_macs(model) -> int:
    """Return the MACs of one batch-1 inference of a Keras model, nested models included."""
    return sum(layer_macs(model).values())


def layer_macs(model) -> dict[str, int]:
    """Return the MACs of each convolution and dense layer, keyed by layer name, in model order."""
    from converters.tf import keras

    counts = {}
    for layer in _layers(model, keras):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, out_h, out_w, _ = layer.output.shape
            k_h, k_w = layer.kernel_size
            counts[layer.name] = out_h * out_w * k_h * k_w * layer.input.shape[-1] * layer.depth_multiplier
        elif isinstance(layer, keras.layers.Conv2D):
            _, out_h, out_w, out_c = layer.output.shape
            k_h, k_w = layer.kernel_size
            counts[layer.name] = out_h * out_w * k_h * k_w * (layer.input.shape[-1] // layer.groups) * out_c
        elif isinstance(layer, keras.layers.Dense):
            positions = math.prod(layer.input.shape[1:-1]) if len(layer.input.shape) > 2 else 1
            counts[layer.name] = positions * layer.input.shape[-1] * layer.units
    return {name: int(count) for name, count in counts.items()}


def _layers(model, keras):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer, keras)
        else:
            yield layer


@dataclasses.dataclass(frozen=True)
class Int8Peak:
    """Estimated int8 MACs per second of this CPU, and the terms of the formula."""

    cores: int
    ghz: float
    macs_per_instruction: int
    instructions_per_cycle: int
    instruction: str

    @property
    def macs_per_second(self) -> float:
        return self.cores * self.ghz * 1e9 * self.macs_per_instruction * self.instructions_per_cycle

    def formula(self) -> str:
        return (
            f"{self.cores} cores x {self.ghz:.2f} GHz x {self.macs_per_instruction} int8 MACs per {self.instruction} "
            f"x {self.instructions_per_cycle} per cycle = {self.macs_per_second / 1e9:.0f} GMAC/s"
        )


def int8_peak(cpuinfo: Path = Path("/proc/cpuinfo")) -> Int8Peak:
    """Estimate the int8 peak from the CPU flags, the current clock and the core count.

    The widest int8 dot-product instruction the flags allow sets the MACs per
    instruction: AVX-512 VNNI ``vpdpbusd`` (64), AVX-VNNI or AVX2 ``vpmaddubsw``
    (32 u8 x s8 products on 256 bits), else SSSE3 ``pmaddubsw`` (16). On ARM
    it is NEON ``sdot`` with ``asimddp`` (16 per 128-bit instruction), else
    ``smlal`` (8). Two such instructions per cycle assumes two vector multiply
    pipes per core; it is not read from the CPU.
    """
    import os

    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    flags = set()
    megahertz = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features"):
            flags.update(value.split())
        elif key == "cpu MHz":
            megahertz.append(float(value))
    ghz = (sum(megahertz) / len(megahertz) / 1000.0) if megahertz else _max_ghz()
    cores = os.cpu_count() or 1
    if "avx512_vnni" in flags:
        return Int8Peak(cores, ghz, 64, 2, "AVX-512 VNNI vpdpbusd")
    if "avx_vnni" in flags:
        return Int8Peak(cores, ghz, 32, 2, "AVX-VNNI vpdpbusd")
    if "avx2" in flags:
        return Int8Peak(cores, ghz, 32, 2, "AVX2 vpmaddubsw")
    if "asimddp" in flags:
        return Int8Peak(cores, ghz, 16, 2, "NEON sdot")
    if "asimd" in flags:
        return Int8Peak(cores, ghz, 8, 2, "NEON smlal")
    return Int8Peak(cores, ghz, 16, 2, "SSSE3 pmaddubsw")


def _max_ghz() -> float:
    path = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return int(path.read_text()) / 1e6
    except (OSError, ValueError):
        return math.nan


def cpu_flags_summary(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    match = re.search(r"^(flags|Features)\s*:(.*)$", text, re.MULTILINE)
    flags = set(match.group(2).split()) if match else set()
    listed = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "asimd", "asimddp")
    return ", ".join(flag for flag in listed if flag in flags) or "none of the SIMD flags looked for"
