"""--device parsing, the Edge TPU delegate's errors, and the CPU fallback of --device auto."""

from __future__ import annotations

import ctypes
import logging

import pytest
from click.testing import CliRunner

from edgefrac.classifier import FractureClassifier
from edgefrac.cli import main
from edgefrac.delegates import (
    EDGETPU_LIBRARY_VARIABLE,
    DeviceKind,
    DeviceRequest,
    EdgeTpuUnavailableError,
    delegates_for_device,
    edgetpu_library,
    load_edgetpu_delegate,
    parse_device,
)
from edgefrac.errors import UsageError

MISSING_LIBRARY = "/nonexistent/libedgetpu.so.1"


def _edgetpu_loads() -> bool:
    try:
        load_edgetpu_delegate()
    except EdgeTpuUnavailableError:
        return False
    return True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auto", DeviceRequest(DeviceKind.AUTO)),
        ("cpu", DeviceRequest(DeviceKind.CPU)),
        ("CPU", DeviceRequest(DeviceKind.CPU)),
        ("edgetpu", DeviceRequest(DeviceKind.EDGETPU, None)),
        ("edgetpu:1", DeviceRequest(DeviceKind.EDGETPU, ":1")),
        ("usb", DeviceRequest(DeviceKind.EDGETPU, "usb")),
        ("usb:0", DeviceRequest(DeviceKind.EDGETPU, "usb:0")),
        ("pci", DeviceRequest(DeviceKind.EDGETPU, "pci")),
        ("pci:2", DeviceRequest(DeviceKind.EDGETPU, "pci:2")),
    ],
)
def test_parse_device(text, expected):
    assert parse_device(text) == expected


@pytest.mark.parametrize("text", ["gpu", "edgetpu:", "usb:x", "cpu:0", "auto:1", ""])
def test_parse_device_invalid(text):
    with pytest.raises(UsageError, match="expected auto, cpu, edgetpu"):
        parse_device(text)


@pytest.mark.parametrize(
    ("system", "library"),
    [("Linux", "libedgetpu.so.1"), ("Darwin", "libedgetpu.1.dylib"), ("Windows", "edgetpu.dll")],
)
def test_library_per_system(monkeypatch, system, library):
    monkeypatch.delenv(EDGETPU_LIBRARY_VARIABLE, raising=False)
    assert edgetpu_library(system) == library


def test_library_unknown_system(monkeypatch):
    monkeypatch.delenv(EDGETPU_LIBRARY_VARIABLE, raising=False)
    with pytest.raises(EdgeTpuUnavailableError, match="FreeBSD"):
        edgetpu_library("FreeBSD")


def test_library_override(monkeypatch):
    monkeypatch.setenv(EDGETPU_LIBRARY_VARIABLE, "/opt/coral/libedgetpu.so.1")
    assert edgetpu_library("Linux") == "/opt/coral/libedgetpu.so.1"


def test_cpu_has_no_delegates():
    assert delegates_for_device("cpu") == ()


def test_edgetpu_missing_library_error(monkeypatch):
    monkeypatch.setenv(EDGETPU_LIBRARY_VARIABLE, MISSING_LIBRARY)
    with pytest.raises(EdgeTpuUnavailableError) as caught:
        delegates_for_device("usb:0")
    message = str(caught.value)
    assert MISSING_LIBRARY in message
    assert "'usb:0'" in message
    assert "not plugged in" in message
    assert "libedgetpu1-std" in message
    assert "udev" in message
    assert "older TensorFlow Lite" in message


def test_edgetpu_without_tpu_error():
    if _edgetpu_loads():
        pytest.skip("an Edge TPU is attached and loads here")
    with pytest.raises(EdgeTpuUnavailableError, match="Usual causes"):
        delegates_for_device("edgetpu")


# LiteRT 2.3's Delegate.__del__ raises again on a library without the plugin entry points.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_edgetpu_library_not_delegate(monkeypatch):
    # The C library loads, so the failure comes from the runtime's load_delegate.
    libc = "libc.so.6"
    try:
        ctypes.CDLL(libc)
    except OSError:
        pytest.skip("no glibc on this system")
    monkeypatch.setenv(EDGETPU_LIBRARY_VARIABLE, libc)
    with pytest.raises(EdgeTpuUnavailableError, match="libc.so.6.*not a TFLite delegate plugin"):
        delegates_for_device("edgetpu")


def test_auto_falls_back_to_cpu(monkeypatch, caplog):
    monkeypatch.setenv(EDGETPU_LIBRARY_VARIABLE, MISSING_LIBRARY)
    with caplog.at_level(logging.WARNING, logger="edgefrac.delegates"):
        delegates = delegates_for_device("auto")
    assert delegates == ()
    assert "running on the CPU" in caplog.text
    assert MISSING_LIBRARY in caplog.text


def test_auto_scores_on_cpu(monkeypatch, tiny_int8_model, sample_images):
    monkeypatch.setenv(EDGETPU_LIBRARY_VARIABLE, MISSING_LIBRARY)
    classifier = FractureClassifier.from_path(tiny_int8_model, delegates=delegates_for_device("auto"))
    prediction = classifier.predict_file(sample_images / "scan0.jpg")
    assert 0.0 <= prediction.probability <= 1.0


def test_cli_edgetpu_without_tpu(monkeypatch, tiny_int8_model, tmp_path):
    monkeypatch.setenv(EDGETPU_LIBRARY_VARIABLE, MISSING_LIBRARY)
    result = CliRunner().invoke(
        main, ["capture", "--model", str(tiny_int8_model), "-o", str(tmp_path), "--device", "edgetpu"]
    )
    assert result.exit_code == 1
    assert MISSING_LIBRARY in result.output
    assert "--device cpu" in result.output


def test_infer_edgetpu_without_tpu(monkeypatch, tiny_int8_model, sample_images):
    monkeypatch.setenv(EDGETPU_LIBRARY_VARIABLE, MISSING_LIBRARY)
    result = CliRunner().invoke(
        main, ["infer", str(sample_images), "--model", str(tiny_int8_model), "--device", "edgetpu"]
    )
    assert result.exit_code == 1
    assert MISSING_LIBRARY in result.output
    assert "Usual causes" in result.output


def test_infer_auto_falls_back(monkeypatch, tiny_int8_model, sample_images):
    monkeypatch.setenv(EDGETPU_LIBRARY_VARIABLE, MISSING_LIBRARY)
    result = CliRunner().invoke(
        main, ["infer", str(sample_images), "--model", str(tiny_int8_model), "--device", "auto", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert "running on the CPU" in result.stderr
    assert "scan0.jpg" in result.stdout


def test_cli_invalid_device(tiny_int8_model, tmp_path):
    result = CliRunner().invoke(
        main, ["capture", "--model", str(tiny_int8_model), "-o", str(tmp_path), "--device", "gpu"]
    )
    assert result.exit_code == 2


@pytest.mark.hardware
def test_edgetpu_scores(tiny_int8_model, sample_images):
    if not _edgetpu_loads():
        pytest.skip("no Edge TPU attached, or libedgetpu is not installed")
    classifier = FractureClassifier.from_path(tiny_int8_model, delegates=delegates_for_device("edgetpu"))
    prediction = classifier.predict_file(sample_images / "scan0.jpg")
    assert 0.0 <= prediction.probability <= 1.0
