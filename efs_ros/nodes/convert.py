"""rclpy message <-> numpy adapters for the efs_ros nodes (no processing, only layout).

The generated Python messages keep uint8[] fields as ``array('B')``. Reading one through
``np.frombuffer`` is a zero-copy view; assigning a Python ``bytes`` object instead makes the
field setter check every byte in Python (seconds for a large packet), so writers here always
hand the setter a ready ``array('B')`` built with ``frombytes`` (one memcpy).
"""
from __future__ import annotations

import array
from dataclasses import dataclass

import numpy as np

FOCUS_JOINT = "focus"

# Bytes per pixel and numpy layout of the encodings the nodes read and write.
_ENCODINGS = {
    "mono8": (np.uint8, 1),
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "32FC1": (np.float32, 1),
}


class MessageError(ValueError):
    """A message whose fields contradict each other; the text is one line for diagnostics."""


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int):
    from builtin_interfaces.msg import Time

    ns = int(ns)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def uint8_array(data) -> array.array:
    """bytes / bytearray / memoryview / numpy -> array('B') with one copy (fast field setter)."""
    if isinstance(data, array.array) and data.typecode == "B":
        return data
    out = array.array("B")
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    out.frombytes(memoryview(data).cast("B"))
    return out


def as_uint8(data) -> np.ndarray:
    """A uint8[] message field as a read-only numpy view (no copy)."""
    if len(data) == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


# ---------------------------------------------------------------- event_camera_msgs/EventPacket

@dataclass
class EventPacketData:
    stamp_ns: int
    width: int
    height: int
    encoding: str
    data: np.ndarray
    """uint8 view of the packet's bytes (valid while the message lives)."""
    seq: int
    is_bigendian: bool


def event_packet_to_numpy(msg) -> EventPacketData:
    return EventPacketData(
        stamp_ns=stamp_to_ns(msg.header.stamp),
        width=int(msg.width),
        height=int(msg.height),
        encoding=str(msg.encoding),
        data=as_uint8(msg.events),
        seq=int(msg.seq),
        is_bigendian=bool(msg.is_bigendian),
    )


def make_event_packet(stamp_ns: int, data, width: int, height: int, seq: int,
                      encoding: str = "evt3", frame_id: str = "event_camera"):
    from event_camera_msgs.msg import EventPacket

    msg = EventPacket()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.width = int(width)
    msg.height = int(height)
    msg.seq = int(seq)
    msg.time_base = 0
    msg.encoding = encoding
    msg.is_bigendian = False
    msg.events = uint8_array(data)
    return msg


# ---------------------------------------------------------------------- sensor_msgs/CameraInfo

def make_camera_info(stamp_ns: int, frame_id: str, width: int, height: int, focal_px: float):
    """A distortion-free pinhole CameraInfo (plumb_bob, zero coefficients), principal point at
    the image centre: what a simulated camera, or a rig without a calibration of its own, has."""
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    f = float(focal_px)
    msg.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def restamped_camera_info(info, stamp_ns: int, frame_id: str):
    """A copy of a CameraInfo with another header (the outputs' camera is the input frame's)."""
    from sensor_msgs.msg import CameraInfo

    out = CameraInfo()
    for name in ("height", "width", "distortion_model", "d", "k", "r", "p", "binning_x", "binning_y",
                 "roi"):
        setattr(out, name, getattr(info, name))
    out.header.stamp = ns_to_stamp(stamp_ns)
    out.header.frame_id = frame_id
    return out


# ---------------------------------------------------------------------- sensor_msgs/Image

def image_msg_to_numpy(msg) -> np.ndarray:
    """The pixels of an Image in its own layout: H x W (mono8, 32FC1) or H x W x 3 (rgb8, bgr8).

    Rows padded beyond width (step > width * bytes per pixel) are cropped; a big-endian
    float image is byte-swapped. Raises MessageError for an unknown encoding or a data size
    that does not match height x step.
    """
    encoding = str(msg.encoding)
    if encoding not in _ENCODINGS:
        raise MessageError(f"unsupported image encoding {encoding!r} "
                           f"(expected one of {', '.join(_ENCODINGS)})")
    dtype, channels = _ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    pixel_bytes = np.dtype(dtype).itemsize * channels
    if height <= 0 or width <= 0:
        raise MessageError(f"empty image {width}x{height}")
    if step < width * pixel_bytes:
        raise MessageError(f"image step {step} < width {width} x {pixel_bytes} bytes per pixel")
    raw = as_uint8(msg.data)
    if raw.size != height * step:
        raise MessageError(f"image data has {raw.size} bytes, expected height {height} x step "
                           f"{step} = {height * step}")
    rows = raw.reshape(height, step)[:, : width * pixel_bytes]
    big = bool(msg.is_bigendian) and np.dtype(dtype).itemsize > 1
    pixels = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(">" if big else "<"))
    pixels = pixels.astype(dtype, copy=False)
    return pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height, width)


def numpy_to_image_msg(pixels: np.ndarray, encoding: str, header=None, stamp_ns: int | None = None,
                       frame_id: str = ""):
    """Pack an array already in the encoding's layout and dtype (see image_msg_to_numpy)."""
    from sensor_msgs.msg import Image

    if encoding not in _ENCODINGS:
        raise MessageError(f"unsupported image encoding {encoding!r}")
    dtype, channels = _ENCODINGS[encoding]
    pixels = np.ascontiguousarray(pixels, dtype=np.dtype(dtype).newbyteorder("<"))
    if pixels.ndim != (3 if channels > 1 else 2) or (channels > 1 and pixels.shape[2] != channels):
        raise MessageError(f"array of shape {pixels.shape} does not fit encoding {encoding}")
    msg = Image()
    if header is not None:
        msg.header = header
    else:
        msg.header.stamp = ns_to_stamp(stamp_ns or 0)
        msg.header.frame_id = frame_id
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(pixels.shape[1] * pixels.itemsize * channels)
    msg.data = uint8_array(pixels)
    return msg


# ------------------------------------------------------------------ sensor_msgs/JointState

def joint_state_focus(msg, joint: str = FOCUS_JOINT) -> tuple[int, float, float] | None:
    """(stamp_ns, position diopters, velocity diopters/s) of the focus joint, or None.

    Same reading as `make eval` (core.sweeps.focus_from_joint_state): a bare single-joint
    state counts as the focus, a missing velocity reads as NaN.
    """
    from efs_ros.core.sweeps import focus_from_joint_state

    focus = focus_from_joint_state(msg.name, msg.position, msg.velocity, joint)
    if focus is None:
        return None
    return stamp_to_ns(msg.header.stamp), focus[0], focus[1]


def make_focus_state(stamp_ns: int, position_dpt: float, velocity_dpt_s: float,
                     frame_id: str = "lens"):
    from sensor_msgs.msg import JointState

    msg = JointState()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.name = [FOCUS_JOINT]
    msg.position = [float(position_dpt)]
    msg.velocity = [float(velocity_dpt_s)]
    return msg


# ---------------------------------------------------------- diagnostic_msgs/DiagnosticArray

def diagnostic_values(msg) -> dict[str, dict[str, str]]:
    """{status name: {key: value}} of a DiagnosticArray, with 'level' and 'message' added."""
    out = {}
    for status in msg.status:
        values = {kv.key: kv.value for kv in status.values}
        level = status.level
        values["level"] = str(level[0] if isinstance(level, (bytes, bytearray)) else int(level))
        values["message"] = status.message
        out[status.name] = values
    return out


def make_diagnostic_status(name: str, level: int, message: str, values: dict,
                           hardware_id: str = ""):
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    status = DiagnosticStatus()
    status.name = name
    status.level = bytes([int(level)])
    status.message = message
    status.hardware_id = hardware_id
    status.values = [KeyValue(key=str(k), value=_format_value(v)) for k, v in values.items()]
    return status


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
