"""Check that int8 models give bit-identical results on x86-64 and on emulated Raspberry Pi CPUs.

Steps:

1. Build an arm64 Debian bookworm root with ``mmdebstrap --variant=extract``
   (it only unpacks packages, so nothing is emulated) and install the aarch64
   wheels of the same ai-edge-litert, numpy and Pillow releases that this
   Python has. The root is cached under ``--cache`` and reused while those
   versions stay the same.
2. Run ``dump_outputs.py`` with this Python, then inside the root under
   ``qemu-aarch64-static -cpu cortex-a72`` (Raspberry Pi 4) and
   ``-cpu cortex-a76`` (Raspberry Pi 5). Both sides import the ``edgefrac``
   package from this repository, so they decode and preprocess with the same code.
3. Compare the quantized model inputs (JPEG decode, EXIF rotation, resize and
   scaling) and the raw int8 outputs byte for byte, image by image.

Each (model, CPU, image) triple is one check. The script prints
``N passed, N failed`` last and exits 1 when any check failed.

Needs the Debian packages ``qemu-user-static`` and ``mmdebstrap``, and
network access to a Debian mirror and PyPI for the first build of the root.
``EDGEFRAC_PI_PARITY_CACHE`` sets the default cache folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).resolve().with_name("dump_outputs.py")
CACHE_VARIABLE = "EDGEFRAC_PI_PARITY_CACHE"
DEFAULT_CACHE = Path(
    os.environ.get(CACHE_VARIABLE)
    or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgefrac" / "pi-parity"
)
DEFAULT_IMAGES = REPOSITORY.parent / "shared" / "fracatlas" / "images"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
ROOT_PYTHON = "3.11"
"""The python3 of Debian bookworm, which Raspberry Pi OS 64-bit (bookworm) also ships."""

# pip does not widen a --platform tag to older manylinux tags, and the
# ai-edge-litert 2.3.0 aarch64 wheel is tagged manylinux_2_27, so every tag
# that bookworm's glibc 2.36 can load is listed.
WHEEL_PLATFORMS = (
    "manylinux_2_36_aarch64",
    "manylinux_2_34_aarch64",
    "manylinux_2_31_aarch64",
    "manylinux_2_28_aarch64",
    "manylinux_2_27_aarch64",
    "manylinux_2_17_aarch64",
    "manylinux2014_aarch64",
)
PACKAGES = ("ai-edge-litert", "numpy", "pillow")


@dataclasses.dataclass(frozen=True)
class EmulatedCpu:
    """A QEMU CPU model and the /proc/cpuinfo a Raspberry Pi with that core shows."""

    board: str
    qemu_cpu: str
    part: str
    features: str


# The interpreter reads /proc/cpuinfo to pick kernels. QEMU 7.2 (bookworm)
# passes the host's x86 file through unchanged, and ai-edge-litert 2.2 and
# later then crash with a segmentation fault while creating the interpreter.
# A file at <root>/proc/cpuinfo takes precedence under ``qemu -L <root>``.
# The feature lists are those the two cores report under Linux.
CPUS = (
    EmulatedCpu("Raspberry Pi 4", "cortex-a72", "0xd08", "fp asimd evtstrm crc32 cpuid"),
    EmulatedCpu(
        "Raspberry Pi 5",
        "cortex-a76",
        "0xd0b",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
    ),
)


def cpuinfo_text(cpu: EmulatedCpu, cores: int = 4) -> str:
    """Return an arm64 /proc/cpuinfo for ``cores`` cores of ``cpu``."""
    blocks = []
    for index in range(cores):
        blocks.append(
            f"processor\t: {index}\n"
            "BogoMIPS\t: 108.00\n"
            f"Features\t: {cpu.features}\n"
            "CPU implementer\t: 0x41\n"
            "CPU architecture: 8\n"
            "CPU variant\t: 0x0\n"
            f"CPU part\t: {cpu.part}\n"
            "CPU revision\t: 1\n"
        )
    return "\n".join(blocks) + "\n"


def host_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in PACKAGES}


def build_root(cache: Path, versions: dict[str, str]) -> Path:
    """Return a cached arm64 root with the given package versions, building it when missing."""
    key = hashlib.sha256(json.dumps([DEBIAN_SUITE, ROOT_PYTHON, versions], sort_keys=True).encode()).hexdigest()[:12]
    root = cache / f"{DEBIAN_SUITE}-arm64-{key}"
    if (root / "usr" / "bin" / "python3").exists() and (root / "opt" / "pyparity").is_dir():
        print(f"using cached arm64 root {root}", file=sys.stderr)
        return root

    for tool in ("mmdebstrap", "qemu-aarch64-static"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install -y qemu-user-static mmdebstrap")
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="building-", dir=cache))
    try:
        print(f"building arm64 {DEBIAN_SUITE} root in {staging}", file=sys.stderr)
        subprocess.run(
            [
                "mmdebstrap", "--quiet", "--variant=extract", "--architectures=arm64",
                "--include=python3,libstdc++6", DEBIAN_SUITE, str(staging / "root"), DEBIAN_MIRROR,
            ],
            check=True,
        )
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--only-binary=:all:"]
        for tag in WHEEL_PLATFORMS:
            pip += ["--platform", tag]
        pip += ["--python-version", ROOT_PYTHON, "--implementation", "cp"]
        pip += ["--target", str(staging / "root" / "opt" / "pyparity")]
        pip += [f"{name}=={version}" for name, version in versions.items()]
        subprocess.run(pip, check=True)
        (staging / "root" / "proc").mkdir(exist_ok=True)
        os.replace(staging / "root", root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def run_native(models: list[Path], image_list: Path, output: Path, threads: int) -> None:
    command = [sys.executable, str(RUNNER), "--models", *map(str, models)]
    command += ["--images", str(image_list), "--output", str(output), "--threads", str(threads)]
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "EDGEFRAC_RUNTIME": "litert"}
    subprocess.run(command, check=True, env=environment)


def run_emulated(
    root: Path, cpu: EmulatedCpu, models: list[Path], image_list: Path, output: Path, threads: int
) -> None:
    (root / "proc" / "cpuinfo").write_text(cpuinfo_text(cpu))
    # Under -L, QEMU looks a path up inside the root first and falls back to
    # the host, so host paths (repository, images, output) work unchanged.
    command = ["qemu-aarch64-static", "-cpu", cpu.qemu_cpu, "-L", str(root), str(root / "usr" / "bin" / "python3")]
    command += [str(RUNNER), "--models", *map(str, models)]
    command += ["--images", str(image_list), "--output", str(output), "--threads", str(threads)]
    environment = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"/opt/pyparity:{REPOSITORY}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "EDGEFRAC_RUNTIME": "litert",
        "HOME": str(output),
    }
    subprocess.run(command, check=True, env=environment)


def select_images(folder: Path, count: int) -> list[Path]:
    """Pick ``count`` images spread evenly over the sorted file list, so every run uses the same ones."""
    suffixes = {".jpg", ".jpeg", ".png"}
    candidates = sorted(path for path in folder.rglob("*") if path.suffix.lower() in suffixes)
    if len(candidates) < count:
        raise SystemExit(f"only {len(candidates)} images under {folder}; requested {count}")
    step = len(candidates) / count
    return [candidates[int(index * step)] for index in range(count)]


@dataclasses.dataclass(frozen=True)
class Tally:
    passed: int = 0
    failed: int = 0


def compare(model: Path, cpu: EmulatedCpu, reference: Path, emulated: Path) -> Tally:
    """Compare one model's dumps image by image and print every difference."""
    x86 = np.load(reference / f"{model.stem}.npz")
    arm = np.load(emulated / f"{model.stem}.npz")
    passed = failed = 0
    input_differences = output_differences = 0
    for row, name in enumerate(x86["names"]):
        problems = []
        if x86["errors"][row] != arm["errors"][row]:
            problems.append(f"decode result differs: x86 {x86['errors'][row]!r}, arm64 {arm['errors'][row]!r}")
        different_inputs = int(np.count_nonzero(x86["inputs"][row] != arm["inputs"][row]))
        if different_inputs:
            input_differences += 1
            problems.append(f"{different_inputs} input values differ")
        if x86["outputs"][row].tobytes() != arm["outputs"][row].tobytes():
            output_differences += 1
            problems.append(f"output x86 {x86['outputs'][row].tolist()} != arm64 {arm['outputs'][row].tolist()}")
        if problems:
            failed += 1
            print(f"FAILED {model.name} {cpu.qemu_cpu} {name}: {'; '.join(problems)}")
        else:
            passed += 1
    decoded = int(np.count_nonzero(x86["errors"] == ""))
    print(
        f"{model.name} on {cpu.board} ({cpu.qemu_cpu}): {passed}/{len(x86['names'])} images identical "
        f"({decoded} decoded); inputs differ on {input_differences}, outputs differ on {output_differences}"
    )
    return Tally(passed, failed)


def check_environments(reference: Path, emulated: Path) -> None:
    x86 = json.loads((reference / "environment.json").read_text())
    arm = json.loads((emulated / "environment.json").read_text())
    print(f"x86 side: {x86}\narm side: {arm}")
    if x86["packages"] != arm["packages"]:
        raise SystemExit(f"package versions differ: x86 {x86['packages']}, arm64 {arm['packages']}")


def default_models() -> list[Path]:
    return sorted((REPOSITORY / "edgefrac" / "models").glob("*.efm"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, help="int8 models (default: every *.efm in edgefrac/models)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of images (default: %(default)s)")
    parser.add_argument("--count", type=int, default=50, help="number of images to compare (default: 50)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder for the arm64 root (default: %(default)s)")
    parser.add_argument(
        "--cpu", action="append", choices=[cpu.qemu_cpu for cpu in CPUS],
        help="emulated CPU, repeatable (default: every Raspberry Pi CPU listed)",
    )
    parser.add_argument("--threads", type=int, default=4, help="interpreter threads on both sides (default: 4)")
    arguments = parser.parse_args(argv)

    models = [path.resolve() for path in arguments.models] or default_models()
    if not models:
        print(f"no models given and no *.efm in {REPOSITORY / 'edgefrac' / 'models'}", file=sys.stderr)
        return 2
    cpus = [cpu for cpu in CPUS if not arguments.cpu or cpu.qemu_cpu in arguments.cpu]
    images = select_images(arguments.images, arguments.count)
    root = build_root(arguments.cache, host_versions())

    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="pi-parity-") as work:
        work_path = Path(work)
        image_list = work_path / "images.txt"
        image_list.write_text("".join(f"{path}\n" for path in images))
        reference = work_path / "x86_64"
        run_native(models, image_list, reference, arguments.threads)
        for cpu in cpus:
            emulated = work_path / cpu.qemu_cpu
            run_emulated(root, cpu, models, image_list, emulated, arguments.threads)
            check_environments(reference, emulated)
            for model in models:
                result = compare(model, cpu, reference, emulated)
                tally = Tally(tally.passed + result.passed, tally.failed + result.failed)

    print(f"{tally.passed} passed, {tally.failed} failed")
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
