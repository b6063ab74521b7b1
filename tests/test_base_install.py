"""A wheel of edgefrac installed without extras in a fresh venv: no TensorFlow, and the commands run.

The wheel is built from a copy of the package sources in a temporary folder, so that setuptools'
``build/`` and ``*.egg-info`` output never lands in the repository. The venv has no system site
packages, and every command runs from a temporary folder without PYTHONPATH, so nothing is imported
from the source tree or from the test environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgefrac.runtime import RUNTIME_ENVIRONMENT_VARIABLE

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODELS = sorted(path.name for path in (REPO_ROOT / "edgefrac" / "models").glob("*.efm"))
TENSORFLOW_DISTRIBUTIONS = {"tensorflow", "tensorflow-cpu", "keras", "tf-keras"}

# Text in pip's output when it could not reach the package index, as opposed to a real resolution failure.
# NOTE: pip prints the connection error only in its "Retrying" warnings, so with PIP_RETRIES=0 an
# unreachable index looks like "No matching distribution found" and the test fails instead of skipping.
CONNECTION_FAILURE_MARKERS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "ConnectTimeoutError",
    "Network is unreachable",
    "Connection refused",
    "Could not fetch URL",
)


def clean_environment() -> dict[str, str]:
    """Return the current environment without the variables that would point Python or edgefrac elsewhere."""
    environment = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", RUNTIME_ENVIRONMENT_VARIABLE):
        environment.pop(name, None)
    return environment


def run(command: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, env=clean_environment(), capture_output=True, text=True, timeout=timeout
    )


def run_pip(python: Path, arguments: list, cwd: Path, step: str) -> subprocess.CompletedProcess:
    """Run pip for ``step``. Skip the test when pip could not reach the package index, and fail on any other error."""
    completed = run([python, "-m", "pip", *arguments, "--disable-pip-version-check"], cwd, timeout=600)
    if completed.returncode == 0:
        return completed
    output = completed.stdout + completed.stderr
    if any(marker in output for marker in CONNECTION_FAILURE_MARKERS):
        pytest.skip(f"{step} needs the package index, which pip could not reach:\n{output[-2000:]}")
    pytest.fail(f"{step} failed (pip exit {completed.returncode}):\n{output[-4000:]}")


def copy_sources(destination: Path) -> Path:
    """Copy what the wheel is built from (pyproject.toml, README.md and the two import packages)."""
    destination.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, destination / name)
    for package in ("edgefrac", "converters"):
        shutil.copytree(
            REPO_ROOT / package,
            destination / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
        )
    return destination


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    sources = copy_sources(root / "sources")
    run_pip(Path(sys.executable), ["wheel", "--no-deps", "--wheel-dir", root / "dist", sources], root, "building the wheel")
    built = sorted((root / "dist").glob("edgefrac-*.whl"))
    assert len(built) == 1, built
    return built[0]


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory, wheel) -> Path:
    """A venv without system site packages, with the edgefrac wheel and its base dependencies installed."""
    root = tmp_path_factory.mktemp("base-venv")
    venv = root / "venv"
    created = run([sys.executable, "-m", "venv", venv], root)
    assert created.returncode == 0, created.stderr
    run_pip(venv / "bin" / "python", ["install", "--quiet", wheel], root, "installing the wheel without extras")
    return venv


@pytest.fixture()
def work_dir(tmp_path) -> Path:
    """An empty folder to run commands from, so that the repository's edgefrac is never importable."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.fixture()
def images(tmp_path) -> list[Path]:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    paths = [folder / "film0.jpg", folder / "film1.png", folder / "film2.jpg"]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (90, 70), dtype=np.uint8), mode="L").save(path)
    return paths


def installed_distributions(venv: Path, cwd: Path) -> set[str]:
    completed = run([venv / "bin" / "python", "-m", "pip", "list", "--format=json", "--disable-pip-version-check"], cwd)
    assert completed.returncode == 0, completed.stderr
    return {entry["name"].lower().replace("_", "-") for entry in json.loads(completed.stdout)}


# The wheel


def test_wheel_contains_both_packages(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "edgefrac/cli/__init__.py" in names
    assert "converters/__init__.py" in names


def test_wheel_contains_shipped_models(wheel):
    if not SHIPPED_MODELS:
        pytest.skip("edgefrac/models holds no .efm file yet, so there is no shipped model to look for in the wheel")
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in SHIPPED_MODELS:
        assert f"edgefrac/models/{model}" in names


def test_wheel_excludes_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert [name for name in names if name.startswith("tests/")] == []


# The base install


def test_base_has_no_tensorflow(base_venv, work_dir):
    assert installed_distributions(base_venv, work_dir) & TENSORFLOW_DISTRIBUTIONS == set()


def test_base_has_litert(base_venv, work_dir):
    assert "ai-edge-litert" in installed_distributions(base_venv, work_dir)


def test_base_cannot_import_tensorflow(base_venv, work_dir):
    completed = run([base_venv / "bin" / "python", "-c", "import tensorflow"], work_dir)
    assert completed.returncode != 0
    assert "No module named 'tensorflow'" in completed.stderr


def test_base_imports_installed_copy(base_venv, work_dir):
    completed = run([base_venv / "bin" / "python", "-c", "import edgefrac; print(edgefrac.__file__)"], work_dir)
    assert completed.returncode == 0, completed.stderr
    assert Path(completed.stdout.strip()).is_relative_to(base_venv)


def test_base_help(base_venv, work_dir):
    completed = run([base_venv / "bin" / "edgefrac", "--help"], work_dir)
    assert completed.returncode == 0, completed.stderr
    assert "infer" in completed.stdout


def test_base_info_reports_litert(base_venv, work_dir, tiny_int8_model):
    completed = run([base_venv / "bin" / "edgefrac", "info", "--model", tiny_int8_model, "--json"], work_dir)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["runtime"]["name"] == "litert"
    assert report["runtime"]["version"].startswith("2.3.")
    assert report["model"]["loads_in_runtime"] is True


def test_base_infer_json(base_venv, work_dir, tiny_int8_model, images):
    completed = run([base_venv / "bin" / "edgefrac", "infer", "--model", tiny_int8_model, "--json", *images], work_dir)
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["runtime"].startswith("litert")
    assert len(document["results"]) == len(images)
    assert {entry["status"] for entry in document["results"]} == {"ok"}
    assert document["summary"]["scored"] == len(images)


def test_base_infer_default_model(base_venv, work_dir, images):
    if "default.efm" not in SHIPPED_MODELS:
        pytest.skip("edgefrac/models/default.efm is not in the source tree, so the wheel ships no default model")
    completed = run([base_venv / "bin" / "edgefrac", "infer", "--json", *images], work_dir)
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert Path(document["model"]["path"]).name == "default.efm"
    assert len(document["results"]) == len(images)
