"""The preprocessing contract: how decoded pixels become a model input.

Training, conversion (representative dataset, drift checks) and the device
runtime all call the functions here, so a model receives the same numbers at every
stage. Decoding files into 8-bit RGB pixels lives in ``edgefrac.images``.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np
from PIL import Image

from edgefrac.errors import UsageError


class ResizeMethod(str, enum.Enum):
    """Pillow resampling filters a model card may name."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"
    AREA = "area"

    @property
    def pillow_filter(self) -> int:
        return {
            ResizeMethod.NEAREST: Image.Resampling.NEAREST,
            ResizeMethod.BILINEAR: Image.Resampling.BILINEAR,
            ResizeMethod.BICUBIC: Image.Resampling.BICUBIC,
            ResizeMethod.LANCZOS: Image.Resampling.LANCZOS,
            ResizeMethod.AREA: Image.Resampling.BOX,
        }[self]


class ValueScaling(str, enum.Enum):
    """Mapping from 8-bit pixel values to the float input of the model."""

    UNIT = "0_1"
    """``x / 255``: the custom CNN."""

    SYMMETRIC = "-1_1"
    """``x / 127.5 - 1``, as ``keras.applications.mobilenet_v2.preprocess_input``."""

    RAW = "0_255"
    """Pixel values unchanged."""

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        values = pixels.astype(np.float32)
        if self is ValueScaling.UNIT:
            return values / np.float32(255.0)
        if self is ValueScaling.SYMMETRIC:
            return values / np.float32(127.5) - np.float32(1.0)
        return values

    @property
    def bounds(self) -> tuple[float, float]:
        return {
            ValueScaling.UNIT: (0.0, 1.0),
            ValueScaling.SYMMETRIC: (-1.0, 1.0),
            ValueScaling.RAW: (0.0, 255.0),
        }[self]


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Input contract of one model: size, channels, resize filter and value scaling."""

    height: int
    width: int
    channels: int = 3
    channel_order: str = "RGB"
    resize: ResizeMethod = ResizeMethod.BILINEAR
    scaling: ValueScaling = ValueScaling.UNIT

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise UsageError(
                f"invalid input size {self.height}x{self.width}: height and width must be positive"
            )
        if self.channels not in (1, 3):
            raise UsageError(f"invalid channel count {self.channels}: expected 1 (grayscale) or 3 (RGB)")
        expected_order = "L" if self.channels == 1 else "RGB"
        if self.channel_order not in (expected_order, "BGR" if self.channels == 3 else "L"):
            raise UsageError(
                f"invalid channel order {self.channel_order!r} for {self.channels} channel(s): "
                f"expected {expected_order!r}"
            )
        object.__setattr__(self, "resize", ResizeMethod(self.resize))
        object.__setattr__(self, "scaling", ValueScaling(self.scaling))

    @property
    def size(self) -> tuple[int, int]:
        """Target size as Pillow wants it: (width, height)."""
        return (self.width, self.height)

    def to_dict(self) -> dict:
        return {
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "channel_order": self.channel_order,
            "resize": self.resize.value,
            "scaling": self.scaling.value,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        return cls(
            height=_whole_number(data, "height"),
            width=_whole_number(data, "width"),
            channels=_whole_number(data, "channels", 3),
            channel_order=str(data.get("channel_order", "RGB")),
            resize=ResizeMethod(data.get("resize", "bilinear")),
            scaling=ValueScaling(data.get("scaling", "0_1")),
        )


def _whole_number(data: dict, name: str, default: int | None = None) -> int:
    """Return ``data[name]`` when it is a JSON integer; text such as "128" or a float such as 128.0 is rejected."""
    value = data[name] if default is None else data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} {value!r} is not a whole number")
    return value


def to_model_input(pixels: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Turn ``(H, W, 3)`` uint8 RGB pixels of the target size into a float32 ``(H, W, C)`` input."""
    if pixels.shape[:2] != (config.height, config.width):
        raise UsageError(
            f"pixels have size {pixels.shape[1]}x{pixels.shape[0]}, expected "
            f"{config.width}x{config.height}: resize with edgefrac.images.load_pixels first"
        )
    if config.channels == 1:
        if pixels.ndim == 3:
            # ITU-R 601 luma, the same weights Pillow uses for convert("L").
            weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
            pixels = np.rint(pixels.astype(np.float32) @ weights).clip(0, 255)
        pixels = pixels.reshape(config.height, config.width, 1)
    elif config.channel_order == "BGR":
        pixels = pixels[..., ::-1]
    return config.scaling.apply(pixels)
