"""Turn a ``--device`` choice into TFLite delegates: the CPU or a Coral Edge TPU.

Device strings:

* ``cpu``: no extra delegate (the runtime's default XNNPACK CPU delegate stays on).
* ``edgetpu``: the first Edge TPU libedgetpu finds; ``edgetpu:N`` the N-th one of any kind.
* ``usb``, ``usb:N``, ``pci``, ``pci:N``: the first (or N-th) USB Accelerator or
  PCIe/M.2 module.
* ``auto``: the first Edge TPU if one can be loaded, else the CPU (logged).

The Edge TPU delegate is libedgetpu, loaded through the resolved runtime's
``load_delegate`` with the libedgetpu ``device`` option (``usb``, ``usb:0``,
``pci:1``, ``:0``). A model runs on the Edge TPU only after ``edgetpu_compiler``
has compiled it. A model that was not compiled loads and runs on the CPU even
with the delegate.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import logging
import os
import platform
import re

from edgefrac.errors import EdgefracError, UsageError
from edgefrac.runtime import Runtime, resolve_runtime

logger = logging.getLogger(__name__)

EDGETPU_LIBRARY_VARIABLE = "EDGEFRAC_EDGETPU_LIBRARY"
"""Environment variable that replaces the libedgetpu file name, e.g. with an absolute path."""

EDGETPU_LIBRARIES = {
    "Linux": "libedgetpu.so.1",
    "Darwin": "libedgetpu.1.dylib",
    "Windows": "edgetpu.dll",
}

_DEVICE_PATTERN = re.compile(r"^(?P<kind>auto|cpu|edgetpu|usb|pci)(?::(?P<index>\d+))?$")


class EdgeTpuUnavailableError(EdgefracError):
    """The Edge TPU delegate could not be loaded; the message lists the usual causes."""

    def __init__(self, message: str, *, library: str = "", reason: str = ""):
        super().__init__(message)
        self.library = library
        self.reason = reason


class DeviceKind(str, enum.Enum):
    """Processor that runs the model."""

    AUTO = "auto"
    CPU = "cpu"
    EDGETPU = "edgetpu"


@dataclasses.dataclass(frozen=True)
class DeviceRequest:
    """A parsed ``--device`` value. ``edgetpu_device`` is libedgetpu's ``device`` option, or None for any Edge TPU."""

    kind: DeviceKind
    edgetpu_device: str | None = None

    @property
    def label(self) -> str:
        if self.kind is DeviceKind.EDGETPU and self.edgetpu_device:
            return f"Edge TPU {self.edgetpu_device}"
        return self.kind.value


def parse_device(text: str) -> DeviceRequest:
    """Parse ``auto``, ``cpu``, ``edgetpu[:N]``, ``usb[:N]`` or ``pci[:N]``.

    Raises:
        UsageError: ``text`` is not one of these forms.
    """
    match = _DEVICE_PATTERN.match(text.strip().lower())
    if not match or (match["kind"] in ("auto", "cpu") and match["index"] is not None):
        raise UsageError(
            f"invalid device {text!r}: expected auto, cpu, edgetpu, edgetpu:N, usb, usb:N, pci or pci:N"
        )
    kind, index = match["kind"], match["index"]
    if kind == "auto":
        return DeviceRequest(DeviceKind.AUTO)
    if kind == "cpu":
        return DeviceRequest(DeviceKind.CPU)
    if kind == "edgetpu":
        return DeviceRequest(DeviceKind.EDGETPU, f":{index}" if index is not None else None)
    return DeviceRequest(DeviceKind.EDGETPU, kind if index is None else f"{kind}:{index}")


def edgetpu_library(system: str | None = None) -> str:
    """Return the libedgetpu file name for ``system`` (default: this one), or the override variable."""
    override = os.environ.get(EDGETPU_LIBRARY_VARIABLE)
    if override:
        return override
    system = system or platform.system()
    try:
        return EDGETPU_LIBRARIES[system]
    except KeyError:
        reason = f"the Edge TPU runtime has no build for {system}; it exists for Linux, macOS and Windows"
        raise EdgeTpuUnavailableError(reason, library="libedgetpu", reason=reason) from None


def _unavailable(library: str, device: str | None, reason: str) -> EdgeTpuUnavailableError:
    target = f"Edge TPU {device!r}" if device else "an Edge TPU"
    message = (
        f"could not load {target} through {library}: {reason}. Usual causes: the USB Accelerator or "
        "PCIe module is not plugged in (lsusb lists 1a6e:089a or 18d1:9302, lspci -nn lists 1ac1:089a); the Edge TPU "
        "runtime is not installed (apt-get install libedgetpu1-std, or the gasket-dkms driver for PCIe); "
        "the user may not open the USB device (install the runtime's udev rules, add the user to the "
        "plugdev group, then replug); or libedgetpu was built for an older TensorFlow Lite than "
        "this runtime. Run with --device cpu to use the CPU"
    )
    return EdgeTpuUnavailableError(message, library=library, reason=reason)


def load_edgetpu_delegate(device: str | None = None, *, runtime: Runtime | None = None, library: str | None = None):
    """Load the libedgetpu delegate for ``device`` (libedgetpu's ``device`` option; None picks any).

    Raises:
        EdgeTpuUnavailableError: the library or the device cannot be opened.
    """
    library = library or edgetpu_library()
    # Opening the library first separates "runtime not installed" from "no
    # device". It also avoids a LiteRT 2.3 quirk: when load_delegate cannot open
    # the library, its Delegate.__del__ prints a traceback to stderr.
    try:
        ctypes.CDLL(library)
    except OSError as error:
        raise _unavailable(library, device, f"the library cannot be opened ({error})") from None
    runtime = runtime or resolve_runtime()
    options = {"device": device} if device else {}
    try:
        delegate = runtime.load_delegate(library, options)
    except AttributeError as error:
        # ctypes raises AttributeError when the library lacks the delegate plugin entry points.
        raise _unavailable(library, device, f"the library is not a TFLite delegate plugin ({error})") from None
    except (ValueError, RuntimeError, OSError) as error:
        last_line = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise _unavailable(library, device, last_line) from None
    logger.info("loaded the Edge TPU delegate %s with options %s", library, options)
    return delegate


def delegates_for_device(device: str | DeviceRequest, *, runtime: Runtime | None = None) -> tuple:
    """Return the delegates tuple for ``FractureClassifier(delegates=...)`` that ``device`` requests.

    Raises:
        UsageError: ``device`` is not a valid device string.
        EdgeTpuUnavailableError: an Edge TPU was requested explicitly and cannot be loaded.
    """
    request = parse_device(device) if isinstance(device, str) else device
    if request.kind is DeviceKind.CPU:
        return ()
    if request.kind is DeviceKind.EDGETPU:
        return (load_edgetpu_delegate(request.edgetpu_device, runtime=runtime),)
    try:
        return (load_edgetpu_delegate(None, runtime=runtime),)
    except EdgeTpuUnavailableError as error:
        logger.warning(
            "--device auto: no Edge TPU could be loaded through %s (%s); running on the CPU",
            error.library, error.reason,
        )
        logger.info("%s", error)
        return ()
