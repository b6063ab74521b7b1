"""The ``edgefrac`` console script's entry point: a Ctrl-C while the commands load exits 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgefrac import __version__
from edgefrac.__main__ import INTERRUPTED_WHILE_LOADING
from edgefrac.exitcodes import ExitCode

REPO_ROOT = Path(__file__).resolve().parent.parent

# Imported by Python at start-up from PYTHONPATH. It blocks the import of edgefrac.cli, the one
# that loads the commands, until a signal arrives, so the Ctrl-C always lands during that import.
HOLD_IMPORT = textwrap.dedent(
    """
    import sys
    import time


    class HoldImport:
        def find_spec(self, name, path=None, target=None):
            if name == "edgefrac.cli":
                sys.stderr.write("holding the import of edgefrac.cli\\n")
                sys.stderr.flush()
                time.sleep(120)
            return None


    sys.meta_path.insert(0, HoldImport())
    """
)


def test_entry_point_is_wrapper():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"edgefrac": "edgefrac.__main__:main"}


def test_module_runs_commands():
    completed = subprocess.run(
        [sys.executable, "-m", "edgefrac", "--version"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == ExitCode.OK, completed.stderr
    assert completed.stdout == f"edgefrac, version {__version__}\n"


def test_interrupt_while_loading_exits_130(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(HOLD_IMPORT)
    environment = {**os.environ, "PYTHONPATH": str(tmp_path)}
    # A harness that runs pytest in the background ignores SIGINT, and the child would inherit that.
    # With the default restored, Python installs its KeyboardInterrupt handler in the child.
    process = subprocess.Popen(
        [sys.executable, "-m", "edgefrac", "--version"],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first_line = process.stderr.readline()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()

    assert first_line == "holding the import of edgefrac.cli\n"
    assert process.returncode == ExitCode.INTERRUPTED
    assert stderr == INTERRUPTED_WHILE_LOADING + "\n"
    assert stdout == ""
