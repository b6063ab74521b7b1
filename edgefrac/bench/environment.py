"""The machine a benchmark ran on: board, CPU, governor, load, runtime and package versions."""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
from pathlib import Path

import numpy as np

from edgefrac import __version__
from edgefrac.runtime import RuntimeInfo, default_threads

logger = logging.getLogger(__name__)

DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
CPUINFO = Path("/proc/cpuinfo")
GOVERNOR = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")

BUSY_LOAD_PER_CORE = 0.5
"""A 1-minute load average above this many runnable tasks per core flags the machine as busy."""


@dataclasses.dataclass(frozen=True)
class Environment:
    """Facts about the benchmark machine; None where the system does not expose the value."""

    board: str | None
    cpu_model: str
    cpu_cores: int
    usable_cores: int
    machine: str
    governor: str | None
    load_average: tuple[float, float, float] | None
    python_version: str
    runtime: str
    runtime_version: str
    numpy_version: str
    edgefrac_version: str

    def warnings(self) -> list[str]:
        """Return the reasons why latency measured here may be slower or noisier than usual."""
        found = []
        if self.governor is not None and self.governor != "performance":
            found.append(
                f"CPU governor is {self.governor!r}, not 'performance', so clock scaling may slow and spread "
                "latencies; set it with: echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"
            )
        if self.load_average is not None and self.load_average[0] > BUSY_LOAD_PER_CORE * self.cpu_cores:
            found.append(
                f"machine looks busy: 1-minute load average {self.load_average[0]:.2f} on {self.cpu_cores} cores; "
                "other processes compete for the CPU, so latencies are pessimistic"
            )
        return found

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["load_average"] = list(self.load_average) if self.load_average is not None else None
        return data


def _read_text(path: Path) -> str | None:
    try:
        # The device-tree model string ends with a NUL byte.
        return path.read_text(encoding="utf-8", errors="replace").strip("\x00\n ") or None
    except OSError:
        return None


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """Return the CPU model name from ``/proc/cpuinfo``, or the platform's processor string.

    x86 kernels write ``model name``. ARM kernels often have no such line; a
    Raspberry Pi writes ``Model`` (the board) and ``CPU part`` (the core id).
    """
    text = _read_text(cpuinfo) or ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, separator, value = line.partition(":")
        if separator and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    for key in ("model name", "Processor", "cpu model", "Hardware"):
        if fields.get(key):
            return fields[key]
    if fields.get("CPU part"):
        return f"{fields.get('CPU implementer', 'unknown implementer')} part {fields['CPU part']}"
    return platform.processor() or platform.machine() or "unknown"


def collect_environment(
    runtime: RuntimeInfo,
    *,
    device_tree_model: Path = DEVICE_TREE_MODEL,
    cpuinfo: Path = CPUINFO,
    governor: Path = GOVERNOR,
) -> Environment:
    """Read the environment of this process; the paths are parameters so tests can point them at files."""
    try:
        load = tuple(float(v) for v in os.getloadavg())
    except OSError:
        load = None
    return Environment(
        board=_read_text(device_tree_model),
        cpu_model=cpu_model(cpuinfo),
        cpu_cores=os.cpu_count() or 1,
        usable_cores=default_threads(),
        machine=platform.machine(),
        governor=_read_text(governor),
        load_average=load,
        python_version=platform.python_version(),
        runtime=runtime.name,
        runtime_version=runtime.version,
        numpy_version=np.__version__,
        edgefrac_version=__version__,
    )
