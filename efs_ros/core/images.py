"""sensor_msgs/Image fields <-> numpy, and camera frames <-> the float layout of SweepJob.

No rclpy here: the functions take the message's plain fields (width, height, encoding, step,
is_bigendian, data), so that the bag reader, the offline eval and the live node all convert
pixels through the same code and reject the same malformed images with the same message.

SweepJob frames are float32 linear intensity in [0, 1] in RGB order (H x W x 3) or H x W
for mono; `bgr*` is flipped on the way in and back on the way out so that the pipeline never
sees channel order, `bayer_*` mosaics are demosaiced on the way in (their outputs are `rgb8`,
CONTRACT section 4), and a frame transfer (`linear`, `srgb`, `gamma:<g>`) is undone on the
way in and applied again on the way out, so the pipeline only ever sees linear light.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# encoding -> (dtype of one channel, channels)
ENCODINGS = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "mono8": (np.dtype(np.uint8), 1),
    "rgb16": (np.dtype(np.uint16), 3),
    "bgr16": (np.dtype(np.uint16), 3),
    "mono16": (np.dtype(np.uint16), 1),
    "bayer_rggb8": (np.dtype(np.uint8), 1),
    "bayer_bggr8": (np.dtype(np.uint8), 1),
    "bayer_gbrg8": (np.dtype(np.uint8), 1),
    "bayer_grbg8": (np.dtype(np.uint8), 1),
    "32FC1": (np.dtype(np.float32), 1),
}
FRAME_ENCODINGS = ("rgb8", "bgr8", "mono8")
"""The 8-bit encodings of CONTRACT section 1, kept as they were for callers that handle only
uint8 frames; CAMERA_ENCODINGS is everything to_linear / decode_frame accept."""
BAYER_ENCODINGS = ("bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8")
CAMERA_ENCODINGS = FRAME_ENCODINGS + ("rgb16", "bgr16", "mono16") + BAYER_ENCODINGS
"""Every encoding a camera frame may have (CONTRACT sections 1 and 4); 32FC1 is for maps."""

# OpenCV names a Bayer pattern by the 2x2 block that starts at the second row and second
# column, one pixel diagonally off from the ROS name (the top-left block): ROS rggb is
# OpenCV "BG". The newer aliases agree (COLOR_BayerRGGB2RGB == COLOR_BayerBG2RGB); the legacy
# names are used because every OpenCV version has them. test_images.py checks all four.
_OPENCV_BAYER = {
    "bayer_rggb8": "COLOR_BayerBG2RGB",
    "bayer_bggr8": "COLOR_BayerRG2RGB",
    "bayer_gbrg8": "COLOR_BayerGR2RGB",
    "bayer_grbg8": "COLOR_BayerGB2RGB",
}


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


@dataclass(frozen=True)
class Transfer:
    """How frame values relate to scene irradiance; build it with parse_transfer."""

    name: str  # "linear" | "srgb" | "gamma"
    gamma: float = 1.0

    def __str__(self) -> str:
        return f"gamma:{self.gamma:g}" if self.name == "gamma" else self.name

    def to_linear(self, values: np.ndarray) -> np.ndarray:
        """Frame values in [0, 1] -> linear irradiance in [0, 1] (inputs clipped to [0, 1])."""
        v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
        if self.name == "srgb":
            return np.where(v <= np.float32(0.04045), v / np.float32(12.92),
                            ((v + np.float32(0.055)) / np.float32(1.055)) ** np.float32(2.4))
        if self.name == "gamma":
            return v ** np.float32(self.gamma)
        return v

    def from_linear(self, linear: np.ndarray) -> np.ndarray:
        """Linear irradiance in [0, 1] -> frame values in [0, 1] (inputs clipped to [0, 1])."""
        x = np.clip(np.asarray(linear, dtype=np.float32), 0.0, 1.0)
        if self.name == "srgb":
            return np.where(x <= np.float32(0.0031308), x * np.float32(12.92),
                            np.float32(1.055) * x ** np.float32(1.0 / 2.4) - np.float32(0.055))
        if self.name == "gamma":
            return x ** np.float32(1.0 / self.gamma)
        return x


LINEAR = Transfer("linear")
_GAMMA = re.compile(r"gamma:((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")


def parse_transfer(transfer: str | Transfer) -> Transfer:
    """`linear`, `srgb` or `gamma:<g>` (g > 0, frame = irradiance ** (1/g)) -> Transfer.

    The one place the calibration key's syntax is checked, so every reader rejects the same
    strings with the same message. Raises ValueError (one line) for anything else.
    """
    if isinstance(transfer, Transfer):
        return transfer
    if transfer == "linear":
        return LINEAR
    if transfer == "srgb":
        return Transfer("srgb")
    match = _GAMMA.fullmatch(transfer) if isinstance(transfer, str) else None
    if match is not None:
        gamma = float(match.group(1))
        if np.isfinite(gamma) and gamma > 0.0:
            return Transfer("gamma", gamma)
    raise ValueError(f"unknown frame transfer {transfer!r} "
                     "(expected linear, srgb or gamma:<g> with g a positive number)")


def output_encoding(encoding: str) -> str:
    """The encoding of a frame's outputs: its own, except that Bayer mosaics give rgb8."""
    _check_camera_encoding(encoding)
    return "rgb8" if encoding in BAYER_ENCODINGS else encoding


def _layout(encoding: str) -> tuple[np.dtype, int]:
    try:
        return ENCODINGS[encoding]
    except KeyError:
        raise ImageError(f"unknown image encoding {encoding!r} "
                         f"(supported: {', '.join(ENCODINGS)})") from None


def _check_camera_encoding(encoding: str) -> None:
    if encoding not in CAMERA_ENCODINGS:
        raise ImageError(f"unknown frame encoding {encoding!r} "
                         f"(supported: {', '.join(CAMERA_ENCODINGS)})")


def image_to_array(width: int, height: int, encoding: str, step: int, data,
                   is_bigendian: bool = False) -> np.ndarray:
    """The pixels of an Image in the encoding's own layout and channel order.

    Returns H x W (mono8 / bayer_* uint8, mono16 uint16, 32FC1 float32) or H x W x 3 (uint8
    or uint16). Row padding (step larger than a row) is cropped and big-endian 16-bit and float
    values are swapped to native order. The result never aliases `data`. Raises ImageError on
    an unknown encoding, a step shorter than a row or a data size other than height x step.
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


def array_to_image(pixels: np.ndarray, encoding: str, *, is_bigendian: bool = False) -> ImageFields:
    """Pack an array already in the encoding's layout (the inverse of image_to_array).

    Writes unpadded rows, little-endian unless `is_bigendian` (which only matters for 16-bit
    and float encodings). Raises ImageError when the shape or dtype does not fit.
    """
    dtype, channels = _layout(encoding)
    pixels = np.asarray(pixels)
    expected_ndim = 2 if channels == 1 else 3
    if pixels.ndim != expected_ndim or (channels > 1 and pixels.shape[2] != channels):
        raise ImageError(f"array of shape {pixels.shape} does not fit encoding {encoding}")
    if pixels.dtype != dtype:
        raise ImageError(f"array of dtype {pixels.dtype} does not fit encoding {encoding} "
                         f"({dtype})")
    pixels = np.ascontiguousarray(pixels, dtype=dtype.newbyteorder(">" if is_bigendian else "<"))
    height, width = pixels.shape[:2]
    return ImageFields(width=int(width), height=int(height), encoding=encoding,
                       step=int(width * channels * dtype.itemsize), is_bigendian=bool(is_bigendian),
                       data=pixels.tobytes())


@lru_cache(maxsize=32)
def _linear_table(transfer: Transfer, dtype: np.dtype) -> np.ndarray:
    """Frame level -> linear float32 for every level of `dtype`: one lookup per pixel."""
    full = np.iinfo(dtype).max
    values = np.arange(full + 1, dtype=np.float32) * np.float32(1.0 / full)
    table = values if transfer == LINEAR else transfer.to_linear(values).astype(np.float32)
    table.setflags(write=False)
    return table


@lru_cache(maxsize=32)
def _bayer_table(transfer: Transfer) -> np.ndarray:
    """uint8 Bayer level -> uint16 linear level, so that demosaicing averages linear light."""
    table = np.rint(_linear_table(transfer, np.dtype(np.uint8)) * 65535.0).astype(np.uint16)
    table.setflags(write=False)
    return table


def _demosaic(mosaic: np.ndarray, encoding: str, transfer: Transfer) -> np.ndarray:
    # cv2 only where a Bayer frame arrives, so the rest of the package imports without it.
    import cv2

    linear16 = _bayer_table(transfer)[mosaic]
    rgb16 = cv2.cvtColor(linear16, getattr(cv2, _OPENCV_BAYER[encoding]))
    return rgb16.astype(np.float32) * np.float32(1.0 / 65535.0)


def bayer_mosaic(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """H x W x 3 RGB (any dtype) -> the H x W mosaic a camera with `encoding` would send.

    Each pixel keeps the one channel its filter passes; the pattern names the top-left 2x2
    block row by row, as ROS does. For simulating Bayer cameras and testing the demosaic.
    """
    if encoding not in BAYER_ENCODINGS:
        raise ImageError(f"{encoding!r} is not a Bayer encoding (supported: {', '.join(BAYER_ENCODINGS)})")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"array of shape {rgb.shape} is not H x W x 3 RGB")
    pattern = encoding[len("bayer_"):len("bayer_") + 4]
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for k, letter in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "rgb".index(letter)]
    return out


def to_linear(pixels: np.ndarray, encoding: str, *, transfer: str | Transfer = "linear") -> np.ndarray:
    """A frame in its encoding's layout -> SweepJob layout (float32 linear [0, 1], RGB order).

    8-bit levels are divided by 255 and 16-bit by 65535, then `transfer` is undone; Bayer
    mosaics (H x W uint8) are linearised and then demosaiced with OpenCV into H x W x 3.
    """
    _check_camera_encoding(encoding)
    curve = parse_transfer(transfer)
    pixels = np.asarray(pixels)
    _check_frame_shape(pixels, encoding)
    dtype = ENCODINGS[encoding][0]
    if pixels.dtype != dtype:
        raise ImageError(f"{encoding} frame must be {dtype}, got {pixels.dtype}")
    if encoding in BAYER_ENCODINGS:
        return _demosaic(pixels, encoding, curve)
    if curve == LINEAR:  # plain scaling is several times faster than a lookup
        out = pixels.astype(np.float32) * np.float32(1.0 / np.iinfo(dtype).max)
    else:
        out = np.take(_linear_table(curve, dtype), pixels)
    if encoding.startswith("bgr"):
        out = np.ascontiguousarray(out[:, :, ::-1])
    return out


def from_linear(frame: np.ndarray, encoding: str, *,
                transfer: str | Transfer = "linear") -> np.ndarray:
    """SweepJob layout (float [0, 1], RGB order) -> pixels in output_encoding(encoding)'s layout.

    Values are clipped to [0, 1], NaN becomes 0, `transfer` is applied and the result rounded
    to the nearest 8- or 16-bit level. A Bayer encoding gives rgb8 pixels (what its outputs
    are published as), so callers can pass the frame's encoding whatever it is.
    """
    encoding = output_encoding(encoding)
    curve = parse_transfer(transfer)
    frame = np.asarray(frame, dtype=np.float32)
    _check_frame_shape(frame, encoding)
    dtype = ENCODINGS[encoding][0]
    values = np.clip(np.nan_to_num(frame, nan=0.0), 0.0, 1.0)
    if curve != LINEAR:
        values = curve.from_linear(values)
    levels = np.rint(values * float(np.iinfo(dtype).max)).astype(dtype)
    if encoding.startswith("bgr"):
        levels = np.ascontiguousarray(levels[:, :, ::-1])
    return levels


def _check_frame_shape(pixels: np.ndarray, encoding: str) -> None:
    channels = ENCODINGS[encoding][1]
    ok = pixels.ndim == 2 if channels == 1 else (pixels.ndim == 3 and pixels.shape[2] == channels)
    if not ok:
        raise ImageError(f"array of shape {pixels.shape} does not fit encoding {encoding}")


def decode_frame(width: int, height: int, encoding: str, step: int, data,
                 is_bigendian: bool = False, *, transfer: str | Transfer = "linear") -> np.ndarray:
    """Image fields of a camera frame -> SweepJob layout (float32 linear [0, 1], RGB order)."""
    _check_camera_encoding(encoding)
    pixels = image_to_array(width, height, encoding, step, data, is_bigendian)
    return to_linear(pixels, encoding, transfer=transfer)


def encode_frame(frame: np.ndarray, encoding: str, *, transfer: str | Transfer = "linear",
                 is_bigendian: bool = False) -> ImageFields:
    """SweepJob layout -> Image fields in output_encoding(encoding) (clipped, rounded).

    A Bayer `encoding` gives rgb8 fields, the encoding CONTRACT section 4 publishes them in.
    """
    return array_to_image(from_linear(frame, encoding, transfer=transfer), output_encoding(encoding),
                          is_bigendian=is_bigendian)


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
