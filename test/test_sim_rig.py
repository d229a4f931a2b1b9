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


class Listener:
    """An rclpy node in its own context, spinning on a thread, storing what arrives.

    Every message is converted on arrival (copied out of the rclpy buffers) and appended to
    `got[topic]` as (stamp_ns, payload, monotonic arrival time)."""

    def __init__(self, name: str = "efs_test_listener"):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.got: dict[str, list] = {}
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
        self.node.create_subscription(msg_type, topic, callback, qos or reliable())
        return self

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


def _event_rate(packets, t_from: float, t_to: float) -> float:
    """Decoded events per second of packets that arrived in [t_from, t_to) (monotonic)."""
    n = sum(events for _, events, arrived in packets if t_from <= arrived < t_to)
    return n / (t_to - t_from)


def test_rig_publishes_contract_streams_driven_by_the_lens(tmp_path):
    """Focus controller (sim lens) driving sim_rig, each in its own process. The listener
    is matched to the rig before the lens starts, so it sees the stream from its first word
    (the sensor clock starts 3 s before the EVT3 wrap)."""
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
    try:
        assert listener.wait_until(
            lambda: all(listener.node.count_publishers(t) >= 1 for t in listener.got), 30), \
            procs[0].log()
        time.sleep(0.5)  # discovery both ways before the first packet
        procs.append(NodeProcess("efs_ros.nodes.focus_controller", {"sim_noise_mdpt": 2.0},
                                 log_dir=tmp_path))
        assert listener.wait_until(lambda: len(listener.items("/camera/image_raw")) >= 25, 60), \
            "no frames from sim_rig:\n" + procs[0].log()
        sweeping_from = time.monotonic()
        time.sleep(1.5)
        sweeping_to = time.monotonic()

        client = listener.node.create_client(Trigger, "/focus_controller/stop")
        assert client.wait_for_service(timeout_sec=10)
        assert client.call(Trigger.Request(), timeout_sec=10).success
        time.sleep(0.5)  # the lens settles within a few time constants (5 ms)
        held_from = time.monotonic()
        time.sleep(1.5)
        held_to = time.monotonic()
        start = listener.node.create_client(Trigger, "/focus_controller/start")
        assert start.wait_for_service(timeout_sec=10)
        assert start.call(Trigger.Request(), timeout_sec=10).success
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
    sweeping = _event_rate(packets, sweeping_from, sweeping_to)
    held = _event_rate(packets, held_from, held_to)
    assert sweeping > 5000, sweeping
    assert held < 0.1 * sweeping, (held, sweeping)

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
