"""CONTRACT section 1 recordings: read any such bag, write one from a simulated rig.

Reading goes through rosbags (no ROS install needed) and hands out plain Python/numpy
messages (EventPacketMsg, ImageMsg, JointStateMsg) in bag order. A recording that cannot be
used raises RecordingError with a one-line reason, AFTER everything readable before the fault
was yielded: a truncated mcap file (a recorder killed mid-write has no footer or index, which
rosbags refuses) is scanned record by record up to the cut, so its first part still counts.

Writing turns a SimulatedRecording into what a real rig records: EVT3 packets stamped at
host arrival (first event's host time + a random 0..5 ms delay, kept in order like a USB
stream), a sensor clock that drifts against the host clock, optional trigger pairs, 8-bit
linear frames stamped at mid-exposure, the lens at >= 200 Hz, and ground truth.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from efs_ros.core.events import EVENT_DTYPE, TRIGGER_DTYPE
from efs_ros.core.images import image_to_array
from efs_ros.io.typestore import EVENT_PACKET_TYPE, typestore

TOPIC_EVENTS = "/event_camera/events"
TOPIC_IMAGE = "/camera/image_raw"
TOPIC_FOCUS = "/lens/focus_state"
TOPIC_GT_AIF = "/ground_truth/all_in_focus"
TOPIC_GT_DEPTH = "/ground_truth/depth"
IMAGE_TYPE = "sensor_msgs/msg/Image"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
CONTRACT_TYPES = {
    TOPIC_EVENTS: EVENT_PACKET_TYPE,
    TOPIC_IMAGE: IMAGE_TYPE,
    TOPIC_FOCUS: JOINT_STATE_TYPE,
    TOPIC_GT_AIF: IMAGE_TYPE,
    TOPIC_GT_DEPTH: IMAGE_TYPE,
}
REQUIRED_FOR_JOBS = (TOPIC_EVENTS, TOPIC_IMAGE, TOPIC_FOCUS)
_MCAP_MAGIC = b"\x89MCAP0\r\n"


class RecordingError(RuntimeError):
    """A recording that cannot be (fully) used; str() is one line for the user."""


# ---------------------------------------------------------------------------- messages

@dataclass
class EventPacketMsg:
    stamp_ns: int
    width: int
    height: int
    seq: int
    time_base: int
    encoding: str
    is_bigendian: bool
    events: np.ndarray
    """uint8 bytes of the packet."""


@dataclass
class ImageMsg:
    stamp_ns: int
    width: int
    height: int
    encoding: str
    is_bigendian: bool
    step: int
    data: np.ndarray
    """uint8, height x step bytes (unchecked: to_array() checks)."""

    def to_array(self) -> np.ndarray:
        """Pixels in the encoding's own layout (raises ImageError when malformed)."""
        return image_to_array(self.width, self.height, self.encoding, self.step, self.data,
                              self.is_bigendian)


@dataclass
class JointStateMsg:
    stamp_ns: int
    name: list
    position: np.ndarray
    velocity: np.ndarray


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _plain(topic: str, msg):
    if topic == TOPIC_EVENTS:
        return EventPacketMsg(_stamp_ns(msg.header), int(msg.width), int(msg.height), int(msg.seq),
                              int(msg.time_base), str(msg.encoding), bool(msg.is_bigendian),
                              np.asarray(msg.events, dtype=np.uint8))
    if topic in (TOPIC_IMAGE, TOPIC_GT_AIF, TOPIC_GT_DEPTH):
        return ImageMsg(_stamp_ns(msg.header), int(msg.width), int(msg.height), str(msg.encoding),
                        bool(msg.is_bigendian), int(msg.step), np.asarray(msg.data, dtype=np.uint8))
    return JointStateMsg(_stamp_ns(msg.header), list(msg.name),
                         np.asarray(msg.position, dtype=np.float64),
                         np.asarray(msg.velocity, dtype=np.float64))


# ---------------------------------------------------------------------------- reading

def _storage_files(path: Path) -> tuple[list[Path], str]:
    """The storage files of a bag folder or file, and their kind ('mcap' or 'sqlite3')."""
    if path.is_file():
        kinds = {".mcap": "mcap", ".db3": "sqlite3"}
        if path.suffix not in kinds:
            raise RecordingError(f"{path.name}: not a bag file (expected .mcap or .db3, or a bag "
                                 "folder)")
        return [path], kinds[path.suffix]
    files = []
    meta = path / "metadata.yaml"
    if meta.exists():
        try:
            from ruamel.yaml import YAML

            info = YAML(typ="safe").load(meta.read_text())["rosbag2_bagfile_information"]
            files = [path / name for name in info.get("relative_file_paths", [])]
        except Exception as exc:  # noqa: BLE001 - any YAML problem is one line for the user
            raise RecordingError(f"{meta}: unreadable metadata ({type(exc).__name__}: "
                                 f"{_one_line(exc)})") from None
    if not files:
        files = sorted(path.glob("*.mcap")) or sorted(path.glob("*.db3"))
    if not files:
        raise RecordingError(f"{path}: no bag files (.mcap or .db3) in the folder")
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise RecordingError(f"{path}: storage file {missing[0]} listed in metadata.yaml is missing")
    return files, ("mcap" if files[0].suffix == ".mcap" else "sqlite3")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _check_topics(found: dict[str, str], required) -> None:
    for topic, msgtype in found.items():
        expected = CONTRACT_TYPES.get(topic)
        if expected and msgtype != expected:
            raise RecordingError(f"topic {topic} has message type {msgtype}, expected {expected}")
    missing = [t for t in required if t not in found]
    if missing:
        raise RecordingError(f"missing topic{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(missing)} (topics present: "
                             f"{', '.join(sorted(found)) or 'none'})")


def recording_topics(path) -> dict[str, str]:
    """{topic: message type} of a recording (opening it, reading no messages)."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise RecordingError(f"no such recording: {path}")
    try:
        with Reader(path) as reader:
            return {c.topic: c.msgtype for c in reader.connections}
    except RecordingError:
        raise
    except Exception as exc:  # noqa: BLE001
        files, kind = _storage_files(path)
        if kind == "mcap":
            return {topic: msgtype for topic, msgtype in _mcap_scan_channels(files)}
        raise RecordingError(f"{path.name}: cannot open recording ({_one_line(exc)})") from None


def read_recording(path, topics=None, required=()) -> Iterator[tuple[str, object, int]]:
    """Yield (topic, message, receive time ns) for the CONTRACT topics, in bag order.

    `topics` limits what is yielded (default: all CONTRACT topics); `required` topics must be
    present or RecordingError is raised before anything is yielded. A type other than the
    CONTRACT's on a CONTRACT topic is an error; other topics are ignored. A fault inside the
    data raises RecordingError after every message before it was yielded.
    """
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise RecordingError(f"no such recording: {path}")
    wanted = set(CONTRACT_TYPES if topics is None else topics)
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types; all are one line
        files, kind = _storage_files(path)
        salvage = _salvage_mcap if kind == "mcap" else _salvage_sqlite
        yield from salvage(files, wanted, required, _one_line(exc))
        return
    try:
        found = {c.topic: c.msgtype for c in reader.connections}
        _check_topics(found, required)
        connections = [c for c in reader.connections if c.topic in wanted]
        store = typestore()
        count = 0
        iterator = reader.messages(connections=connections)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001
                raise RecordingError(f"{path.name}: corrupt recording after {count} messages "
                                     f"({_one_line(exc)})") from None
            connection, timestamp, raw = item
            try:
                msg = store.deserialize_cdr(raw, connection.msgtype)
            except Exception as exc:  # noqa: BLE001
                raise RecordingError(f"{path.name}: corrupt {connection.topic} message at "
                                     f"{timestamp} ns ({_one_line(exc)})") from None
            count += 1
            yield connection.topic, _plain(connection.topic, msg), int(timestamp)
    finally:
        reader.close()


# ------------------------------------------------------------- mcap salvage (linear scan)

def _mcap_records(buf: memoryview, pos: int, end: int):
    """(opcode, content, whole) records from pos to end.

    A record cut by the end of the data is yielded once with whole=False (what is there of
    it), then _CutError is raised with the reason."""
    while pos < end:
        if end - pos < 9:
            raise _CutError(f"record header cut at byte {pos}")
        opcode = buf[pos]
        (length,) = struct.unpack_from("<Q", buf, pos + 1)
        if pos + 9 + length > end:
            yield opcode, buf[pos + 9:end], False
            raise _CutError(f"record 0x{opcode:02X} of {length} bytes cut at byte {end}")
        yield opcode, buf[pos + 9:pos + 9 + length], True
        pos += 9 + length


class _CutError(Exception):
    pass


def _read_str(rec: memoryview, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", rec, pos)
    if pos + 4 + n > len(rec):
        raise _CutError("string cut")
    return bytes(rec[pos + 4:pos + 4 + n]).decode(), pos + 4 + n


def _mcap_walk(files: list[Path]):
    """Yield ('schema'|'channel'|'message', ...) from mcap files in file order; _CutError at a
    fault. An uncompressed chunk cut short still gives the messages it holds whole."""
    for file in files:
        data = file.read_bytes()
        if not data.startswith(_MCAP_MAGIC):
            raise _CutError(f"{file.name} is not an mcap file (bad magic)")
        buf = memoryview(data)
        for opcode, rec, whole in _mcap_records(buf, len(_MCAP_MAGIC), len(buf)):
            if opcode in (0x02, 0x0F):  # footer / data end: the data section is over
                break
            if opcode == 0x06:
                if len(rec) < 40:
                    continue  # a chunk header cut short: nothing in it to read
                compression, pos = _read_str(rec, 28)
                (size,) = struct.unpack_from("<Q", rec, pos)
                inner = rec[pos + 8:pos + 8 + size]
                if compression and whole:
                    inner = memoryview(_decompress(compression, bytes(inner)))
                elif compression:
                    continue  # a compressed chunk cut short cannot be read at all
                yield from _mcap_items(_mcap_records(inner, 0, len(inner)))
            elif whole:
                yield from _mcap_items(((opcode, rec, whole),))


def _decompress(compression: str, data: bytes) -> bytes:
    if compression == "zstd":
        try:
            from compression import zstd
        except ImportError:
            from backports import zstd
        return zstd.decompress(data)
    if compression == "lz4":
        from lz4.frame import decompress

        return decompress(data)
    raise _CutError(f"unsupported chunk compression {compression!r}")


def _mcap_items(records):
    for opcode, rec, whole in records:
        if not whole:
            continue
        if opcode == 0x03:
            (sid,) = struct.unpack_from("<H", rec, 0)
            name, _ = _read_str(rec, 2)
            yield "schema", sid, name
        elif opcode == 0x04:
            cid, sid = struct.unpack_from("<HH", rec, 0)
            topic, _ = _read_str(rec, 4)
            yield "channel", cid, sid, topic
        elif opcode == 0x05:
            (cid,) = struct.unpack_from("<H", rec, 0)
            (log_time,) = struct.unpack_from("<Q", rec, 6)
            yield "message", cid, log_time, rec[22:]


def _mcap_scan_channels(files: list[Path]) -> list[tuple[str, str]]:
    schemas, out = {}, []
    try:
        for item in _mcap_walk(files):
            if item[0] == "schema":
                schemas[item[1]] = item[2]
            elif item[0] == "channel":
                out.append((item[3], schemas.get(item[2], "")))
    except (_CutError, struct.error, UnicodeDecodeError):
        pass
    return out


def _salvage_mcap(files: list[Path], wanted, required, open_error: str):
    """Read an mcap that rosbags cannot open (no footer / index): yield up to the fault."""
    store = typestore()
    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, str]] = {}
    count = 0
    checked = False
    name = files[0].name if len(files) == 1 else files[0].parent.name
    reason = None
    try:
        for item in _mcap_walk(files):
            if item[0] == "schema":
                schemas[item[1]] = item[2]
                continue
            if item[0] == "channel":
                channels[item[1]] = (item[3], schemas.get(item[2], ""))
                continue
            if not checked:
                # rosbags writes every schema and channel before the first message
                _check_topics({t: m for t, m in channels.values()}, required)
                checked = True
            _, cid, log_time, raw = item
            topic, msgtype = channels.get(cid, ("", ""))
            if topic not in wanted:
                continue
            msg = _deserialize(store, raw, topic, msgtype, log_time)
            count += 1
            yield topic, _plain(topic, msg), int(log_time)
    except _CutError as exc:
        reason = str(exc)
    except (struct.error, UnicodeDecodeError) as exc:
        reason = f"malformed record ({_one_line(exc)})"
    if not checked:
        _check_topics({t: m for t, m in channels.values()}, required)
    if reason is None:
        reason = open_error
    raise RecordingError(f"{name}: truncated or corrupt mcap ({reason}); {count} messages read "
                         "before the fault")


def _deserialize(store, raw, topic: str, msgtype: str, stamp_ns: int):
    """One salvaged message; _CutError naming the topic and stamp if its CDR does not parse."""
    try:
        return store.deserialize_cdr(bytes(raw), msgtype)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt message
        raise _CutError(f"corrupt {topic} message at {stamp_ns} ns ({_one_line(exc)})") from None


# ----------------------------------------------------------- sqlite3 salvage (storage order)

def _salvage_sqlite(files: list[Path], wanted, required, open_error: str):
    """Read a sqlite3 bag that rosbags cannot open (a damaged page, say): its messages in
    storage order (the order they were recorded in) up to the first page that cannot be read.
    A file whose topic table is unreadable (cut short, not a database) gives nothing."""
    import sqlite3

    store = typestore()
    name = files[0].name if len(files) == 1 else files[0].parent.name
    count = 0
    reason = None
    for index, file in enumerate(files):
        try:
            con = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
            topics = {tid: (topic, msgtype) for tid, topic, msgtype in
                      con.execute("SELECT id, name, type FROM topics")}
        except sqlite3.Error as exc:
            if index == 0:
                raise RecordingError(f"{name}: cannot open recording ({open_error})") from None
            reason = f"{file.name}: {_one_line(exc)}"
            break
        try:
            if index == 0:
                _check_topics({t: m for t, m in topics.values()}, required)
            rows = con.execute("SELECT topic_id, timestamp, data FROM messages ORDER BY id")
            for tid, stamp, data in rows:
                topic, msgtype = topics.get(tid, ("", ""))
                if topic not in wanted:
                    continue
                try:
                    msg = _deserialize(store, data, topic, msgtype, stamp)
                except _CutError as exc:
                    raise RecordingError(f"{name}: {exc}; {count} messages read before the "
                                         "fault") from None
                count += 1
                yield topic, _plain(topic, msg), int(stamp)
        except sqlite3.Error as exc:
            reason = _one_line(exc)
            break
        finally:
            con.close()
    raise RecordingError(f"{name}: corrupt sqlite3 bag ({reason or open_error}); {count} "
                         "messages read before the fault")


# ---------------------------------------------------------------------------- writing

@dataclass
class WrittenRecording:
    path: Path
    packets: int
    frames: int
    focus_samples: int
    frame_stamps_ns: np.ndarray
    sensor_origin_us: int
    """Sensor time that maps to ros_start_ns."""
    ros_start_ns: int
    drift_ppm: float

    def sensor_to_ros_ns(self, t_us) -> np.ndarray:
        """The writer's true clock mapping (tests compare estimates against it)."""
        t = np.asarray(t_us, dtype=np.int64) - self.sensor_origin_us
        return self.ros_start_ns + np.rint(t * 1000.0 * (1.0 + self.drift_ppm * 1e-6)).astype(
            np.int64)


def _attr(rec, *names, default=None):
    for name in names:
        if hasattr(rec, name):
            value = getattr(rec, name)
            if value is not None:
                return value
    return default


def write_recording(path, rec, *, storage: str = "mcap", packet_us: int = 1000,
                    use_triggers: bool = True, delay_ms: tuple[float, float] = (0.0, 5.0),
                    drift_ppm: float = 0.0, ros_start_ns: int = 1_700_000_000_000_000_000,
                    seed: int = 0, focus_rate_hz: float | None = None,
                    focus_noise_dpt: float = 0.0, ground_truth: bool = True,
                    seq_start: int = 0, frame_stamp_late_ms: float = 0.0) -> WrittenRecording:
    """Write a SimulatedRecording as a CONTRACT bag (see the module docstring).

    `rec` needs: width, height, events (EVENT_DTYPE, absolute sensor us, sorted), frames
    (N x H x W x 3 or N x H x W, float linear [0, 1]), frame_t_us (sensor us, mid-exposure),
    exposure_s or exposure_us (scalar or per frame), lens_t_us / lens_dpt (/ lens_velocity); optionally
    triggers (TRIGGER_DTYPE; made from the frames' exposures when absent), gt_aif, gt_depth.
    `focus_rate_hz` resamples the lens (linearly) when given; the CONTRACT wants >= 200 Hz.
    `frame_stamp_late_ms` stamps frames (and their truths) that much after mid-exposure, as a
    camera driver that stamps on arrival does.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    from efs_ros.core.evt3 import Evt3Encoder
    from efs_ros.core.images import encode_float, encode_frame

    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    path = Path(path)
    rng = np.random.default_rng(seed)
    store = typestore()
    types = store.types
    width, height = int(rec.width), int(rec.height)
    events = np.asarray(_attr(rec, "events"), dtype=EVENT_DTYPE)
    frames = np.asarray(_attr(rec, "frames"))
    frame_t = np.asarray(_attr(rec, "frame_t_us", "frame_times_us"), dtype=np.int64)
    exposure_us = _attr(rec, "exposure_us")
    if exposure_us is None:
        exposure_us = np.asarray(_attr(rec, "exposure_s", default=0.0), dtype=np.float64) * 1e6
    exposure = np.broadcast_to(np.asarray(exposure_us, dtype=np.float64), frame_t.shape)
    lens_t = np.asarray(_attr(rec, "lens_t_us"), dtype=np.int64)
    lens_dpt = np.asarray(_attr(rec, "lens_dpt"), dtype=np.float64)
    lens_vel = _attr(rec, "lens_velocity", "lens_velocity_dpt_s")
    lens_vel = np.gradient(lens_dpt, lens_t * 1e-6) if lens_vel is None \
        else np.asarray(lens_vel, dtype=np.float64)
    triggers = np.zeros(0, TRIGGER_DTYPE)
    if use_triggers:
        triggers = _attr(rec, "triggers")
        if triggers is None or len(triggers) == 0:
            start = np.rint(frame_t - exposure / 2).astype(np.int64)
            end = np.rint(frame_t + exposure / 2).astype(np.int64)
            triggers = np.zeros(2 * frame_t.size, TRIGGER_DTYPE)
            triggers["t"][0::2], triggers["value"][0::2] = start, 1
            triggers["t"][1::2], triggers["value"][1::2] = end, 0
        triggers = np.sort(np.asarray(triggers, dtype=TRIGGER_DTYPE), order="t", kind="stable")

    origin = int(min(a.min() for a in (events["t"], frame_t, lens_t, triggers["t"]) if a.size))
    scale = 1000.0 * (1.0 + drift_ppm * 1e-6)

    def host_ns(t_us) -> np.ndarray:
        return ros_start_ns + np.rint((np.asarray(t_us, dtype=np.int64) - origin) * scale
                                      ).astype(np.int64)

    def header(stamp: int, frame_id: str):
        return types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=int(stamp) // 1_000_000_000,
                                                       nanosec=int(stamp) % 1_000_000_000),
            frame_id=frame_id)

    out: list[tuple[int, int, str, bytes]] = []  # (receive time, order, topic, cdr)

    # events: packets of packet_us sensor time, stamped at arrival, in order like a USB stream
    encoder = Evt3Encoder()
    t_all = np.concatenate([events["t"], triggers["t"]])
    n_packets = 0
    if t_all.size:
        first_t, last_t = int(t_all.min()), int(t_all.max())
        edges = np.arange(first_t, last_t + packet_us + 1, packet_us, dtype=np.int64)
        ev_cut = np.searchsorted(events["t"], edges, side="left")
        tr_cut = np.searchsorted(triggers["t"], edges, side="left")
        nonempty = np.flatnonzero((np.diff(ev_cut) + np.diff(tr_cut)) > 0)
        delays = rng.uniform(delay_ms[0] * 1e6, delay_ms[1] * 1e6, nonempty.size)
        previous = -(2**62)
        for k, i in enumerate(nonempty.tolist()):  # one iteration per packet, not per event
            ev = events[ev_cut[i]:ev_cut[i + 1]]
            tr = triggers[tr_cut[i]:tr_cut[i + 1]]
            data = encoder.encode(ev, tr)
            first = min(int(ev["t"][0]) if ev.size else 2**62, int(tr["t"][0]) if tr.size else 2**62)
            stamp = max(int(host_ns(first)) + int(delays[k]), previous)
            previous = stamp
            msg = types[EVENT_PACKET_TYPE](
                header=header(stamp, "event_camera"), height=height, width=width,
                seq=seq_start + k, time_base=0, encoding="evt3", is_bigendian=False,
                events=np.frombuffer(data, dtype=np.uint8))
            out.append((stamp, 0, TOPIC_EVENTS, store.serialize_cdr(msg, EVENT_PACKET_TYPE)))
            n_packets += 1

    def image_msg(stamp: int, fields, frame_id: str):
        return types[IMAGE_TYPE](
            header=header(stamp, frame_id), height=fields.height, width=fields.width,
            encoding=fields.encoding, is_bigendian=int(fields.is_bigendian), step=fields.step,
            data=np.frombuffer(fields.data, dtype=np.uint8))

    frame_stamps = host_ns(frame_t) + int(round(frame_stamp_late_ms * 1e6))
    gt_aif = _attr(rec, "gt_aif") if ground_truth else None
    gt_depth = _attr(rec, "gt_depth") if ground_truth else None
    for i in range(frame_t.size):
        stamp = int(frame_stamps[i])
        encoding = "mono8" if frames[i].ndim == 2 else "rgb8"
        # a frame reaches the host after its exposure ends and it is read out
        received = max(stamp, int(frame_stamps[i] - frame_stamp_late_ms * 1e6) + int(exposure[i] * 500)
                       + 2_000_000)
        cdr = store.serialize_cdr(image_msg(stamp, encode_frame(frames[i], encoding), "camera"),
                                  IMAGE_TYPE)
        out.append((received, 1, TOPIC_IMAGE, cdr))
        if gt_aif is not None:
            cdr = store.serialize_cdr(image_msg(stamp, encode_frame(gt_aif[i], encoding), "camera"),
                                      IMAGE_TYPE)
            out.append((received, 2, TOPIC_GT_AIF, cdr))
        if gt_depth is not None:
            cdr = store.serialize_cdr(image_msg(stamp, encode_float(gt_depth[i]), "camera"),
                                      IMAGE_TYPE)
            out.append((received, 3, TOPIC_GT_DEPTH, cdr))

    if focus_rate_hz:
        step_us = 1e6 / focus_rate_hz
        t_new = np.arange(lens_t[0], lens_t[-1] + 1, step_us).astype(np.int64)
        lens_dpt = np.interp(t_new, lens_t, lens_dpt)
        lens_vel = np.interp(t_new, lens_t, lens_vel)
        lens_t = t_new
    if focus_noise_dpt:
        lens_dpt = lens_dpt + rng.normal(0.0, focus_noise_dpt, lens_dpt.size)
    lens_stamps = host_ns(lens_t)
    for stamp, dpt, vel in zip(lens_stamps.tolist(), lens_dpt.tolist(), lens_vel.tolist(),
                               strict=True):
        msg = types[JOINT_STATE_TYPE](header=header(stamp, "lens"), name=["focus"],
                                      position=np.array([dpt]), velocity=np.array([vel]),
                                      effort=np.zeros(0))
        out.append((stamp, 4, TOPIC_FOCUS, store.serialize_cdr(msg, JOINT_STATE_TYPE)))

    out.sort(key=lambda item: (item[0], item[1]))
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections = {}
        for topic, msgtype in CONTRACT_TYPES.items():
            if any(item[2] == topic for item in out):
                connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
        for received, _, topic, cdr in out:
            writer.write(connections[topic], received, cdr)
    return WrittenRecording(path, n_packets, int(frame_t.size), int(lens_t.size), frame_stamps,
                            origin, ros_start_ns, drift_ppm)
