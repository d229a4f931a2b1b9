"""sensor_msgs/Image fields <-> numpy, and 8-bit frames <-> the float layout of SweepJob.

No rclpy here: the functions take the message's plain fields (width, height, encoding, step,
is_bigendian, data), so that the bag reader, the offline eval and the live node all convert
pixels through the same code and reject the same malformed images with the same message.

SweepJob frames are float32 linear intensity in [0, 1] in RGB order (H x W x 3) or H x W
for mono; `bgr8` is flipped on the way in and back on the way out so that the pipeline never
sees channel order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# encoding -> (dtype of one channel, channels)
ENCODINGS = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "mono8": (np.dtype(np.uint8), 1),
    "32FC1": (np.dtype(np.float32), 1),
}
FRAME_ENCODINGS = ("rgb8", "bgr8", "mono8")
"""Encodings a camera frame may have (CONTRACT section 1); 32FC1 is for depth / maps."""


class ImageError(ValueError):
    """An image whose fields contradict each other or the expected layout; one-line message."""


@dataclass
class ImageFields:
    """The fields of a sensor_msgs/Image without the header (what a publisher fills in)."""

    width: int
    height: int
    encoding: str
    step: int
    is_bigendian: bool
    data: bytes


def _layout(encoding: str) -> tuple[np.dtype, int]:
    try:
        return ENCODINGS[encoding]
    except KeyError:
        raise ImageError(f"unknown image encoding {encoding!r} "
                         f"(supported: {', '.join(ENCODINGS)})") from None


def image_to_array(width: int, height: int, encoding: str, step: int, data,
                   is_bigendian: bool = False) -> np.ndarray:
    """The pixels of an Image in the encoding's own layout and channel order.

    Returns H x W (mono8 uint8, 32FC1 float32) or H x W x 3 uint8. Row padding (step larger
    than a row) is cropped and big-endian floats are swapped to native order. The result never
    aliases `data`. Raises ImageError on an unknown encoding, a step shorter than a row or a
    data size other than height x step.
    """
    dtype, channels = _layout(encoding)
    width, height, step = int(width), int(height), int(step)
    if width <= 0 or height <= 0:
        raise ImageError(f"empty image {width}x{height}")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageError(f"image step {step} is shorter than a row of {width} {encoding} pixels "
                         f"({row_bytes} bytes)")
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if raw.size != height * step:
        raise ImageError(f"image data has {raw.size} bytes, expected height {height} x step "
                         f"{step} = {height * step}")
    rows = raw.reshape(height, step)[:, :row_bytes]
    order = ">" if (is_bigendian and dtype.itemsize > 1) else "<"
    pixels = np.ascontiguousarray(rows).view(dtype.newbyteorder(order)).astype(dtype, copy=True)
    if channels == 1:
        return pixels.reshape(height, width)
    return pixels.reshape(height, width, channels)


def array_to_image(pixels: np.ndarray, encoding: str) -> ImageFields:
    """Pack an array already in the encoding's layout (the inverse of image_to_array).

    Writes unpadded little-endian rows. Raises ImageError when the shape or dtype does not fit.
    """
    dtype, channels = _layout(encoding)
    pixels = np.asarray(pixels)
    expected_ndim = 2 if channels == 1 else 3
    if pixels.ndim != expected_ndim or (channels > 1 and pixels.shape[2] != channels):
        raise ImageError(f"array of shape {pixels.shape} does not fit encoding {encoding}")
    if pixels.dtype != dtype:
        raise ImageError(f"array of dtype {pixels.dtype} does not fit encoding {encoding} "
                         f"({dtype})")
    pixels = np.ascontiguousarray(pixels, dtype=dtype.newbyteorder("<"))
    height, width = pixels.shape[:2]
    return ImageFields(width=int(width), height=int(height), encoding=encoding,
                       step=int(width * channels * dtype.itemsize), is_bigendian=False,
                       data=pixels.tobytes())


def to_linear(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """A frame in its encoding's layout (uint8) -> SweepJob layout (float32 [0, 1], RGB order)."""
    if encoding not in FRAME_ENCODINGS:
        raise ImageError(f"unknown frame encoding {encoding!r} "
                         f"(supported: {', '.join(FRAME_ENCODINGS)})")
    pixels = np.asarray(pixels)
    _check_frame_shape(pixels, encoding)
    if pixels.dtype != np.uint8:
        raise ImageError(f"{encoding} frame must be uint8, got {pixels.dtype}")
    out = pixels.astype(np.float32) * np.float32(1.0 / 255.0)
    if encoding == "bgr8":
        out = np.ascontiguousarray(out[:, :, ::-1])
    return out


def from_linear(frame: np.ndarray, encoding: str) -> np.ndarray:
    """SweepJob layout (float [0, 1], RGB order) -> uint8 pixels in the encoding's layout.

    Values are clipped to [0, 1] and rounded to the nearest level; NaN becomes 0.
    """
    if encoding not in FRAME_ENCODINGS:
        raise ImageError(f"unknown frame encoding {encoding!r} "
                         f"(supported: {', '.join(FRAME_ENCODINGS)})")
    frame = np.asarray(frame, dtype=np.float32)
    _check_frame_shape(frame, encoding)
    levels = np.rint(np.clip(np.nan_to_num(frame, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    if encoding == "bgr8":
        levels = np.ascontiguousarray(levels[:, :, ::-1])
    return levels


def _check_frame_shape(pixels: np.ndarray, encoding: str) -> None:
    channels = ENCODINGS[encoding][1]
    ok = pixels.ndim == 2 if channels == 1 else (pixels.ndim == 3 and pixels.shape[2] == channels)
    if not ok:
        raise ImageError(f"array of shape {pixels.shape} does not fit encoding {encoding}")


def decode_frame(width: int, height: int, encoding: str, step: int, data,
                 is_bigendian: bool = False) -> np.ndarray:
    """Image fields of a camera frame -> SweepJob layout (float32 [0, 1], RGB order)."""
    if encoding not in FRAME_ENCODINGS:
        raise ImageError(f"unknown frame encoding {encoding!r} "
                         f"(supported: {', '.join(FRAME_ENCODINGS)})")
    return to_linear(image_to_array(width, height, encoding, step, data, is_bigendian), encoding)


def encode_frame(frame: np.ndarray, encoding: str) -> ImageFields:
    """SweepJob layout -> Image fields in `encoding` (8-bit, clipped, rounded)."""
    return array_to_image(from_linear(frame, encoding), encoding)


def encode_float(values: np.ndarray) -> ImageFields:
    """H x W float map (depth in metres, refocus seconds) -> 32FC1 Image fields; NaN kept."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ImageError(f"a 32FC1 image needs an H x W array, got shape {values.shape}")
    return array_to_image(values.astype(np.float32), "32FC1")


def decode_float(width: int, height: int, step: int, data, is_bigendian: bool = False,
                 encoding: str = "32FC1") -> np.ndarray:
    """32FC1 Image fields -> H x W float32 (native byte order)."""
    if encoding != "32FC1":
        raise ImageError(f"expected a 32FC1 image, got encoding {encoding!r}")
    return image_to_array(width, height, encoding, step, data, is_bigendian)
