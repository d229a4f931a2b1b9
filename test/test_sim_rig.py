"""The simulated rig over real DDS: focus controller (sim lens) and sim_rig in their own
processes, a listener here. Also the helpers the other node tests share (NodeProcess,
Listener)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from progress import STALL_S, wait_for_condition, wait_for_progress
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

from efs_ros.core.evt3 import Evt3Decoder
from efs_ros.nodes.convert import (
    as_uint8,
    diagnostic_values,
    image_msg_to_numpy,
    stamp_to_ns,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = {"width": 96, "height": 72}
WRAP_US = 1 << 24
"""EVT3 time wraps here; the rig's sensor clock starts 3 s before it."""


# ------------------------------------------------------------------------------------ helpers

class NodeProcess:
    """`python -m module --ros-args -p k:=v ...` in its own process, log kept for failures."""

    def __init__(self, module: str, params: dict | None = None, args=(), log_dir: Path = None,
                 name: str | None = None):
        name = name or module.rsplit(".", 1)[-1]
        self.log_path = Path(log_dir or "/tmp") / f"{name}.log"
        cmd = [sys.executable, "-m", module, *map(str, args)]
        if params:
            cmd.append("--ros-args")
            for key, value in params.items():
                text = str(value).lower() if isinstance(value, bool) else str(value)
                cmd += ["-p", f"{key}:={text}"]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ))

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode

    def log(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def reliable(depth: int = 1000) -> QoSProfile:
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def all_alive(*procs: NodeProcess):
    """For wait_for_progress(alive=...): every process under test still running."""
    return lambda: all(p.alive() for p in procs)


class Listener:
    """An rclpy node in its own context, spinning on a thread, storing what arrives.

    Every message is converted on arrival (copied out of the rclpy buffers) and appended to
    `got[topic]` as (stamp_ns, payload, monotonic arrival time).

    Waiting: progress.wait_for_progress for work that moves counters (`count` gives the
    usual snapshot), progress.wait_for_condition for discovery; `wait_until` (a deadline) is
    kept for the callers that still use it."""

    def __init__(self, name: str = "efs_test_listener"):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.got: dict[str, list] = {}
        self.subscriptions: dict[str, object] = {}
        self.lock = threading.Lock()
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)

    def listen(self, msg_type, topic: str, convert, qos: QoSProfile | None = None):
        self.got.setdefault(topic, [])

        def callback(msg):
            item = convert(msg)
            with self.lock:
                self.got[topic].append((*item, time.monotonic()) if isinstance(item, tuple)
                                       else (item, time.monotonic()))
        self.subscriptions[topic] = self.node.create_subscription(msg_type, topic, callback,
                                                                  qos or reliable())
        return self

    def matched(self, *topics: str) -> bool:
        """Each of our readers of `topics` (all by default) has matched a publisher."""
        return all(self.subscriptions[t].get_publisher_count() >= 1
                   for t in topics or self.subscriptions)

    def count(self, *topics: str) -> tuple[int, ...]:
        """Messages heard so far on each topic: the usual progress snapshot."""
        with self.lock:
            return tuple(len(self.got.get(t, ())) for t in topics)

    def start(self):
        self.thread.start()
        return self

    def items(self, topic: str) -> list:
        with self.lock:
            return list(self.got.get(topic, []))

    def wait_until(self, predicate, timeout: float, step: float = 0.1) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(step)
        return predicate()

    def close(self):
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def image_item(msg):
    """(stamp, pixels or None for an image that does not parse, encoding)."""
    try:
        pixels = image_msg_to_numpy(msg).copy()
    except ValueError:
        pixels = None
    return stamp_to_ns(msg.header.stamp), pixels, msg.encoding


def diagnostics_item(msg):
    return stamp_to_ns(msg.header.stamp), diagnostic_values(msg)


def latest_status(listener: Listener, name: str) -> dict | None:
    for _, statuses, _ in reversed(listener.items("/diagnostics")):
        if name in statuses:
            return statuses[name]
    return None


def node_statuses(listener: Listener, name: str) -> list[dict]:
    """Every status `name` published that the listener heard, in arrival order."""
    return [st[name] for _, st, _ in listener.items("/diagnostics") if name in st]


# ------------------------------------------------------------------------------------ tests

def test_focal_stack_blend_hits_levels_and_clock_round_trips():
    from efs_ros.nodes.sim_rig import FocalStack, RigSettings, SensorClock

    settings = RigSettings(width=48, height=32, stack_levels=16)
    stack = FocalStack(settings, np.random.default_rng(3))
    for k in (0, 7, 15):
        np.testing.assert_allclose(stack.luminance_at(stack.levels[k]), stack.lum[k], atol=1e-6)
    mid = 0.5 * (stack.levels[4] + stack.levels[5])
    np.testing.assert_allclose(stack.luminance_at(mid), 0.5 * (stack.lum[4] + stack.lum[5]),
                               atol=1e-6)
    # a frame exposed at one focus is that level's colour image
    np.testing.assert_allclose(stack.rgb_mean(np.full(4, stack.levels[3])), stack.rgb[3], atol=1e-6)
    clock = SensorClock(origin_ns=1_700_000_000_000_000_000, offset_us=16_000_000, drift_ppm=80.0)
    ros = np.array([1_700_000_000_000_000_000, 1_700_000_003_000_000_000])
    np.testing.assert_allclose(clock.to_ros_ns(clock.to_sensor_us(ros)), ros, atol=2.0)
    assert clock.to_sensor_us(ros[1]) - clock.to_sensor_us(ros[0]) == pytest.approx(3e6 * 1.00008)


def test_rig_rejects_contradictory_parameters():
    from rclpy.parameter import Parameter

    from efs_ros.nodes.sim_rig import SimRigNode

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ValueError, match="near_dpt"):
            SimRigNode(context=context, parameter_overrides=[
                Parameter("near_dpt", value=0.5), Parameter("far_dpt", value=2.0)])
        with pytest.raises(ValueError, match="exposure_s"):
            SimRigNode(context=context, parameter_overrides=[
                Parameter("frame_rate_hz", value=100.0), Parameter("exposure_s", value=0.02)])
    finally:
        rclpy.try_shutdown(context=context)


def _event_rate(packets, t_from_ns: int, t_to_ns: int) -> float:
    """Decoded events per second of sensor (stamp) time, of packets stamped in [t_from, t_to):
    the rig's work, the same however fast the machine runs it."""
    n = sum(events for stamp, events, _ in packets if t_from_ns <= stamp < t_to_ns)
    return n / ((t_to_ns - t_from_ns) * 1e-9)


SETTLE_NS = 500_000_000
"""After the lens is told to hold: it settles within a few time constants (5 ms)."""
HELD_NS = 1_500_000_000
"""Stamp time the held lens is watched for."""


def test_rig_publishes_contract_streams_driven_by_the_lens(tmp_path):
    """Focus controller (sim lens) driving sim_rig, each in its own process. The listener
    is matched to the rig before the lens starts, so it sees the stream from its first word
    (the sensor clock starts 3 s before the EVT3 wrap). Windows are in stamp time (what the
    rig simulated), not in wall time (how fast this machine simulated it)."""
    from event_camera_msgs.msg import EventPacket
    from sensor_msgs.msg import Image
    from std_srvs.srv import Trigger

    decoder = Evt3Decoder(SIZE["width"], SIZE["height"])
    faults, firsts, meta, outside, triggers = [], [], [], [], []

    def packet_item(msg):
        chunk = decoder.decode(as_uint8(msg.events).copy())
        faults.extend((len(meta), fault) for fault in chunk.faults)
        triggers.append(chunk.triggers)
        stamp = stamp_to_ns(msg.header.stamp)
        times = [int(a["t"][0]) for a in (chunk.events, chunk.triggers) if a.size]
        if times:
            firsts.append((stamp, min(times)))
        meta.append((msg.seq, msg.encoding, msg.width, msg.height, msg.is_bigendian))
        if chunk.events.size:
            ev = chunk.events
            outside.append(int(np.sum((ev["x"] >= SIZE["width"]) | (ev["y"] >= SIZE["height"]))))
        return stamp, int(chunk.events.size)

    listener = Listener().listen(EventPacket, "/event_camera/events", packet_item)
    for topic in ("/camera/image_raw", "/ground_truth/all_in_focus", "/ground_truth/depth"):
        listener.listen(Image, topic, image_item, reliable(50))
    listener.start()
    procs = [NodeProcess("efs_ros.nodes.sim_rig", {
        **SIZE, "frame_rate_hz": 10.0, "packet_period_ms": 2.0, "with_triggers": True,
        "sensor_time_offset_us": WRAP_US - 3_000_000}, log_dir=tmp_path)]

    def frames_heard() -> int:
        return listener.count("/camera/image_raw")[0]

    def last_stamp(topic: str) -> int:
        items = listener.items(topic)
        return items[-1][0] if items else -1

    def call(service: str) -> None:
        client = listener.node.create_client(Trigger, service)
        assert client.wait_for_service(timeout_sec=STALL_S), f"{service} never appeared"
        response = client.call(Trigger.Request(), timeout_sec=STALL_S)
        assert response is not None and response.success, (service, response)

    try:
        # every reader matched to the rig's writers before the lens moves and the first word
        # goes out (the rig publishes nothing until it has a lens reading)
        wait_for_condition(listener.matched, "the listener matching sim_rig's publishers",
                          alive=all_alive(*procs))
        procs.append(NodeProcess("efs_ros.nodes.focus_controller", {"sim_noise_mdpt": 2.0},
                                 log_dir=tmp_path))
        wait_for_progress(frames_heard, lambda: frames_heard() >= 25, "25 frames from sim_rig",
                          alive=all_alive(*procs))
        frames = listener.items("/camera/image_raw")
        sweeping = (frames[9][0], frames[24][0])  # 1.5 s of stamps, the lens sweeping

        call("/focus_controller/stop")
        # the lens holds from now on (ROS time, the clock the lens readings are stamped with)
        held_from = listener.node.get_clock().now().nanoseconds + SETTLE_NS
        held = (held_from, held_from + HELD_NS)
        wait_for_progress(frames_heard, lambda: last_stamp("/camera/image_raw") >= held[1],
                          "frames past the held window", alive=all_alive(*procs))
        call("/focus_controller/start")
        # a packet stamped after the restart: every packet before it has been decoded (one
        # reliable writer, delivered in order)
        restarted = listener.node.get_clock().now().nanoseconds
        wait_for_progress(lambda: listener.count("/event_camera/events"),
                          lambda: last_stamp("/event_camera/events") >= restarted,
                          "packets after the sweep restarted", alive=all_alive(*procs))
    finally:
        listener.close()
        for p in procs:
            p.stop()

    # EventPackets as metavision_driver publishes them; the stream decodes without a fault
    assert faults == []
    assert meta[0][0] == 0  # from the first packet on
    assert sum(outside) == 0
    seqs = [m[0] for m in meta]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert {m[1:] for m in meta} == {("evt3", SIZE["width"], SIZE["height"], False)}
    # stamp = ROS time of the first event + a 0..5 ms delay: the spread of stamp - event time
    # (drift 0) is the spread of the delays
    offsets = np.array([stamp - 1000 * t for stamp, t in firsts], dtype=np.float64)
    assert len(offsets) > 500
    spread_ms = (offsets.max() - offsets.min()) * 1e-6
    assert 3.0 < spread_ms <= 5.1

    # exposure trigger pairs (channel 0: 1 at the start, 0 at the end), one per 10 Hz frame,
    # on a sensor clock that wrapped past 2^24 us during the test
    edges = np.concatenate(triggers)
    assert edges.size >= 40, (edges.size, len(meta), faults[:3])
    edges = edges[np.argmax(edges["value"] == 1):]  # from the first rising edge
    assert edges.size >= 40 and set(edges["channel"]) == {0}
    assert np.all(edges["value"][0::2] == 1) and np.all(edges["value"][1::2] == 0)
    rise, fall = edges["t"][0::2], edges["t"][1::2]
    n = min(rise.size, fall.size)
    np.testing.assert_allclose(fall[:n] - rise[:n], 4000, atol=2)  # 4 ms exposure
    np.testing.assert_allclose(np.diff(rise), 100_000, atol=2)
    assert rise[0] < WRAP_US < rise[-1]

    # the lens drives the rig: sweeping makes events, a held lens only noise
    packets = listener.items("/event_camera/events")
    sweeping_rate = _event_rate(packets, *sweeping)
    held_rate = _event_rate(packets, *held)
    assert sweeping_rate > 5000, sweeping_rate
    assert held_rate < 0.1 * sweeping_rate, (held_rate, sweeping_rate)

    # frames at 10 Hz, ground truth under the same stamps
    frames = listener.items("/camera/image_raw")
    stamps = np.array([f[0] for f in frames])
    assert np.all(np.diff(stamps) == 100_000_000)
    assert {(f[1].shape, f[2]) for f in frames} == {((72, 96, 3), "rgb8")}
    gt = {item[0]: item[1] for item in listener.items("/ground_truth/all_in_focus")}
    depth = {item[0]: item[1] for item in listener.items("/ground_truth/depth")}
    assert set(stamps) <= set(gt) | {stamps[-1]}  # the last one may still be in flight
    assert set(stamps) <= set(depth) | {stamps[-1]}
    some_depth = next(iter(depth.values()))
    assert some_depth.dtype == np.float32 and some_depth.shape == (72, 96)
    finite = some_depth[np.isfinite(some_depth)]
    assert finite.size > 0 and np.all((finite >= 0.3 - 1e-3) & (finite <= 2.0 + 1e-3))
    # frames change with the focus over one 1 s period of the triangle sweep
    first = frames[0][1].astype(np.int16)
    assert max(np.abs(f[1].astype(np.int16) - first).mean() for f in frames[1:10]) > 0.5
