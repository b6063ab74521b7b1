"""The Raspberry Pi parity check: its comparison, and a real run under QEMU on FracAtlas images."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_VARIABLE = "EDGEFRAC_PI_PARITY_CACHE"


def _load_check_parity():
    path = REPO_ROOT / "tools" / "pi_parity" / "check_parity.py"
    spec = importlib.util.spec_from_file_location("check_parity", path)
    module = importlib.util.module_from_spec(spec)
    # dataclasses looks the defining module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check_parity = _load_check_parity()


def _write_dump(folder: Path, outputs: list[int], inputs_value: int = 5) -> None:
    folder.mkdir(parents=True)
    np.savez(
        folder / "model.npz",
        names=np.array(["a.jpg", "b.jpg"]),
        inputs=np.full((2, 4, 4, 3), inputs_value, dtype=np.int8),
        outputs=np.array(outputs, dtype=np.int8).reshape(2, 1),
        errors=np.array(["", ""]),
    )


def test_compare_identical(tmp_path):
    _write_dump(tmp_path / "x86", [3, -7])
    _write_dump(tmp_path / "arm", [3, -7])
    tally = check_parity.compare(Path("model.efm"), check_parity.CPUS[0], tmp_path / "x86", tmp_path / "arm")
    assert tally == check_parity.Tally(passed=2, failed=0)


def test_compare_output_differs(tmp_path, capsys):
    _write_dump(tmp_path / "x86", [3, -7])
    _write_dump(tmp_path / "arm", [3, -6])
    tally = check_parity.compare(Path("model.efm"), check_parity.CPUS[0], tmp_path / "x86", tmp_path / "arm")
    assert tally == check_parity.Tally(passed=1, failed=1)
    assert "FAILED model.efm cortex-a72 b.jpg" in capsys.readouterr().out


def test_compare_input_differs(tmp_path):
    _write_dump(tmp_path / "x86", [3, -7])
    _write_dump(tmp_path / "arm", [3, -7], inputs_value=6)
    tally = check_parity.compare(Path("model.efm"), check_parity.CPUS[0], tmp_path / "x86", tmp_path / "arm")
    assert tally.failed == 2


def test_cpuinfo_is_arm():
    text = check_parity.cpuinfo_text(check_parity.CPUS[0])
    assert text.count("processor\t:") == 4
    assert "CPU part\t: 0xd08" in text
    assert "asimd" in text


def test_select_images_spread(tmp_path):
    for index in range(10):
        (tmp_path / f"{index:02d}.jpg").write_bytes(b"")
    chosen = check_parity.select_images(tmp_path, 5)
    assert [path.name for path in chosen] == ["00.jpg", "02.jpg", "04.jpg", "06.jpg", "08.jpg"]


@pytest.mark.slow
def test_pi4_parity_tiny_model(tiny_int8_model, fracatlas_dir, tmp_path):
    for tool in ("qemu-aarch64-static", "mmdebstrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: apt-get install -y qemu-user-static mmdebstrap")
    # Set the cache variable to reuse an arm64 root; without it the root is built in tmp_path.
    cache = Path(os.environ.get(CACHE_VARIABLE) or tmp_path / "cache")
    status = check_parity.main(
        [str(tiny_int8_model), "--images", str(fracatlas_dir / "images"), "--count", "8",
         "--cpu", "cortex-a72", "--cache", str(cache)]
    )
    assert status == 0
