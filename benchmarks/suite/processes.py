"""Run a command as a child process and read its wall time and peak RSS."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
BENCHMARKS = REPOSITORY / "benchmarks"
LAUNCHER = BENCHMARKS / "suite" / "launch.py"


@dataclasses.dataclass(frozen=True)
class ChildRun:
    """One finished child process."""

    seconds: float
    peak_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY), str(BENCHMARKS)])
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    environment.update(extra or {})
    return environment


def run_child(command: list[str], *, environment: dict[str, str] | None = None, timeout: float = 1800) -> ChildRun:
    """Run ``command`` through ``launch.py`` and return its wall time (process start to exit) and peak RSS."""
    with tempfile.TemporaryDirectory() as folder:
        measured = Path(folder) / "launch.json"
        completed = subprocess.run(
            [sys.executable, str(LAUNCHER), str(measured), *command],
            capture_output=True, text=True, env=environment or child_environment(), cwd=REPOSITORY, timeout=timeout,
        )
        if not measured.exists():
            return ChildRun(0.0, 0, completed.returncode or 1, completed.stdout, completed.stderr)
        figures = json.loads(measured.read_text())
    return ChildRun(figures["seconds"], figures["peak_rss_bytes"], figures["returncode"], completed.stdout,
                    completed.stderr)
