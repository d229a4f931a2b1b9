"""ROS 2 node `sim_rig`: a focal-sweep rig in real time with no hardware.

The lens is whatever /lens/focus_state reports (the focus controller's `sim` driver), so the
controller really drives the rig; with `lens_source: internal` the node sweeps its own
simulated lens and publishes /lens/focus_state itself. The static scene's focal stack is
rendered once at start-up (efs_ros.sim); then, for every lens reading, the luminance at the
reported focus (interpolated between stack levels) goes through the event sensor model, whose
events are EVT3-encoded and published as event_camera_msgs/EventPacket the way
metavision_driver does it: one packet per ~1 ms of sensor time, stamped with the ROS time of
its first event plus a random 0..5 ms transport delay, seq counting up by one. Frames (mean of
the stack over the exposure along the lens trajectory) go out at a fixed rate on
/camera/image_raw, with the scene's sharp image and depth on /ground_truth/* under the same
stamp.

    python -m efs_ros.nodes.sim_rig --ros-args -p width:=256 -p height:=192
"""
from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from event_camera_msgs.msg import EventPacket
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState

from efs_ros.core.events import EVENT_DTYPE, TRIGGER_DTYPE
from efs_ros.core.evt3 import Evt3Encoder
from efs_ros.core.images import encode_float, encode_frame
from efs_ros.core.waveform import TriangleSweep
from efs_ros.nodes.common import (
    DIAG_OK,
    DIAG_WARN,
    check_parameter_change,
    declare_settings,
    diagnostic_array,
    diagnostic_status,
    float_param,
    int_param,
    qos,
    read_settings,
    spin_node_main,
    text_param,
)
from efs_ros.nodes.convert import (
    joint_state_focus,
    make_camera_info,
    make_event_packet,
    make_focus_state,
    uint8_array,
)
from efs_ros.sim.optics import FocalRenderer, ThinLens, luminance
from efs_ros.sim.scene import SCENE_KINDS, make_scene
from efs_ros.sim.sensor import SENSOR_MODELS, EventSensor, SensorConfig

EVENTS_TOPIC = "/event_camera/events"
FRAMES_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
FOCUS_TOPIC = "/lens/focus_state"
GT_AIF_TOPIC = "/ground_truth/all_in_focus"
GT_DEPTH_TOPIC = "/ground_truth/depth"
DIAGNOSTICS_TOPIC = "/diagnostics"
LENS_SOURCES = ("topic", "internal")
FRAME_ENCODINGS = ("rgb8", "bgr8", "mono8")
TRAJECTORY_KEEP_S = 2.0
"""Lens trajectory kept for frame exposures (far more than one exposure)."""
STACK_MARGIN_DPT = 0.25
"""Stack levels reach this far beyond the sweep ends (lens overshoot, reading noise)."""
MAX_EVENTS_PER_PACKET = 200_000
LAG_WARN_MS = 100.0
"""Events published this long after the lens reading that made them: the rig is too slow."""


@dataclass(frozen=True)
class RigSettings:
    width: int = 256
    height: int = 192
    seed: int = 0
    scene_kind: str = "mixed"
    scene_near_m: float = 0.3
    scene_far_m: float = 2.0
    near_dpt: float = 5.0
    far_dpt: float = 0.5
    max_blur_radius_px: float = 5.0
    stack_levels: int = 96
    lens_source: str = "topic"
    sweep_duration_s: float = 0.5
    dwell_s: float = 0.0
    lens_rate_hz: float = 250.0
    lens_noise_mdpt: float = 2.0
    lens_time_constant_s: float = 0.005
    frame_rate_hz: float = 10.0
    exposure_s: float = 0.004
    encoding: str = "rgb8"
    read_noise: float = 0.0
    publish_ground_truth: bool = True
    sensor_model: str = "v2e"
    threshold: float = 0.2
    sigma_threshold: float = 0.03
    shot_hz: float = 0.1
    leak_hz: float = 0.01
    max_step_dpt: float = 0.05
    min_step_ms: float = 0.0
    packet_period_ms: float = 2.0
    max_delay_ms: float = 5.0
    clock_drift_ppm: float = 0.0
    sensor_time_offset_us: int = 0
    with_triggers: bool = False
    publish_events: bool = True
    flood_events_per_s: float = 0.0
    publish_frames: bool = True
    diagnostics_period_s: float = 1.0

    def sensor_config(self) -> SensorConfig:
        return SensorConfig(model=self.sensor_model, threshold_pos=self.threshold,
                            threshold_neg=self.threshold, sigma_threshold=self.sigma_threshold,
                            shot_hz=self.shot_hz, leak_hz=self.leak_hz)

    def stack_range(self) -> tuple[float, float]:
        return (max(0.0, self.far_dpt - STACK_MARGIN_DPT), self.near_dpt + STACK_MARGIN_DPT)


_DESCRIPTORS = {
    "width": int_param("image and sensor width, pixels", 16, 2048, read_only=True),
    "height": int_param("image and sensor height, pixels", 16, 2048, read_only=True),
    "seed": int_param("random seed of the scene and sensor", 0, 2**31 - 1, read_only=True),
    "scene_kind": text_param("kind of synthetic scene", SCENE_KINDS, read_only=True),
    "scene_near_m": float_param("nearest surface, metres", 0.05, 100.0, read_only=True),
    "scene_far_m": float_param("farthest surface, metres", 0.06, 1000.0, read_only=True),
    "near_dpt": float_param("near end of the focus range the stack covers, diopters", 0.1, 20.0,
                            read_only=True),
    "far_dpt": float_param("far end of the focus range the stack covers, diopters", 0.0, 20.0,
                           read_only=True),
    "max_blur_radius_px": float_param("blur radius at the worst focus of the range, pixels", 0.5,
                                      64.0, read_only=True),
    "stack_levels": int_param("pre-rendered focus levels (the lens state is interpolated)", 8,
                              1024, read_only=True),
    "lens_source": text_param("topic = the focus controller drives the rig; internal = own lens",
                              LENS_SOURCES, read_only=True),
    "sweep_duration_s": float_param("internal lens: one sweep, seconds", 0.02, 60.0),
    "dwell_s": float_param("internal lens: rest at each end, seconds", 0.0, 60.0),
    "lens_rate_hz": float_param("internal lens: /lens/focus_state rate, Hz", 50.0, 2000.0),
    "lens_noise_mdpt": float_param("internal lens: reading noise, millidiopters", 0.0, 100.0),
    "lens_time_constant_s": float_param("internal lens: first-order lag, seconds", 0.0, 1.0),
    "frame_rate_hz": float_param("camera frame rate, Hz", 0.1, 200.0),
    "exposure_s": float_param("camera exposure, seconds", 0.0, 1.0),
    "encoding": text_param("camera frame encoding", FRAME_ENCODINGS, read_only=True),
    "read_noise": float_param("frame read noise, fraction of full scale", 0.0, 0.5),
    "publish_ground_truth": text_param("publish /ground_truth/all_in_focus and depth"),
    "sensor_model": text_param("event sensor model", SENSOR_MODELS, read_only=True),
    "threshold": float_param("contrast threshold (log intensity)", 0.01, 2.0, read_only=True),
    "sigma_threshold": float_param("threshold mismatch between pixels (std)", 0.0, 1.0,
                                   read_only=True),
    "shot_hz": float_param("shot-noise events per pixel per second", 0.0, 100.0, read_only=True),
    "leak_hz": float_param("leak events per pixel per second", 0.0, 100.0, read_only=True),
    "max_step_dpt": float_param("largest focus change per sensor step, diopters", 0.001, 1.0),
    "min_step_ms": float_param("skip lens readings closer than this to the last sensor step "
                               "(0 = step at every reading); raise it when the rig lags",
                               0.0, 100.0),
    "packet_period_ms": float_param("sensor time covered by one EventPacket, ms", 0.1, 100.0),
    "max_delay_ms": float_param("packet stamp = ROS time of its first event + U(0, this)", 0.0,
                                100.0),
    "clock_drift_ppm": float_param("sensor clock drift against ROS time, ppm", -1000.0, 1000.0,
                                   read_only=True),
    "sensor_time_offset_us": int_param("sensor clock at start, us (near 2^24 to see a wrap "
                                       "soon)", 0, 2**40, read_only=True),
    "with_triggers": text_param("EXT_TRIGGER pairs (channel 0) at exposure start and end",
                                read_only=True),
    "publish_events": text_param("false = the event camera goes silent (fault drills)"),
    "flood_events_per_s": float_param("extra random events per second on top of the scene's "
                                      "(load drills; 0 = none)", 0.0, 1e9),
    "publish_frames": text_param("false = the frame camera goes silent (fault drills)"),
    "diagnostics_period_s": float_param("period of /diagnostics, seconds", 0.1, 10.0,
                                        read_only=True),
}


def validate_settings(s: RigSettings) -> str | None:
    if s.lens_source not in LENS_SOURCES:
        return f"lens_source must be one of {LENS_SOURCES}, got {s.lens_source!r}"
    if s.encoding not in FRAME_ENCODINGS:
        return f"encoding must be one of {FRAME_ENCODINGS}, got {s.encoding!r}"
    if s.scene_kind not in SCENE_KINDS:
        return f"scene_kind must be one of {SCENE_KINDS}, got {s.scene_kind!r}"
    if s.sensor_model not in SENSOR_MODELS:
        return f"sensor_model must be one of {SENSOR_MODELS}, got {s.sensor_model!r}"
    if not s.near_dpt > s.far_dpt:
        return f"near_dpt ({s.near_dpt:g}) must be greater than far_dpt ({s.far_dpt:g})"
    if not s.scene_near_m < s.scene_far_m:
        return f"scene_near_m ({s.scene_near_m:g}) must be less than scene_far_m ({s.scene_far_m:g})"
    if s.exposure_s >= 1.0 / s.frame_rate_hz:
        return f"exposure_s {s.exposure_s:g} does not fit a frame period at {s.frame_rate_hz:g} Hz"
    if s.lens_source == "internal" and s.sweep_duration_s * s.lens_rate_hz < 10:
        return "internal lens: fewer than 10 readings per sweep"
    return None


class FocalStack:
    """The scene pre-rendered at evenly spaced focus levels; any focus is a linear blend."""

    def __init__(self, settings: RigSettings, rng: np.random.Generator):
        s = settings
        self.scene = make_scene(rng, s.height, s.width, s.scene_kind, s.scene_near_m,
                                s.scene_far_m)
        lo, hi = s.stack_range()
        # ThinLens.default scales the blur with the width; ask for our radius at our width.
        lens = ThinLens.default(s.width, max_radius_px=s.max_blur_radius_px * 256.0 / s.width,
                                near_dpt=s.near_dpt, far_dpt=s.far_dpt)
        renderer = FocalRenderer(self.scene, lens, (lo, hi))
        self.levels = np.linspace(lo, hi, s.stack_levels)
        self.rgb = renderer.render_many(self.levels)
        self.lum = luminance(self.rgb)
        self.sharp = self.scene.all_in_focus()
        self.depth = self.scene.depth_map()

    def _index(self, dpt) -> tuple[np.ndarray, np.ndarray]:
        pos = (np.clip(dpt, self.levels[0], self.levels[-1]) - self.levels[0]) \
            / (self.levels[1] - self.levels[0])
        k = np.minimum(np.floor(pos).astype(np.int64), self.levels.size - 2)
        return k, (pos - k).astype(np.float32)

    def luminance_at(self, dpt: float) -> np.ndarray:
        k, a = self._index(np.float64(dpt))
        return (1.0 - a) * self.lum[k] + a * self.lum[k + 1]

    def rgb_mean(self, dpts: np.ndarray) -> np.ndarray:
        """Mean colour image over focus samples (a frame's exposure)."""
        k, a = self._index(np.asarray(dpts, dtype=np.float64))
        out = np.zeros(self.rgb.shape[1:], dtype=np.float64)
        for kk, aa in zip(k.tolist(), a.tolist(), strict=True):
            out += (1.0 - aa) * self.rgb[kk] + aa * self.rgb[kk + 1]
        return (out / max(len(k), 1)).astype(np.float32)


class SensorClock:
    """ROS time <-> the event camera's own microsecond clock (offset and drift)."""

    def __init__(self, origin_ns: int, offset_us: float, drift_ppm: float):
        self.origin_ns = int(origin_ns)
        self.offset_us = float(offset_us)
        self.rate = 1.0 + drift_ppm * 1e-6

    def to_sensor_us(self, ros_ns):
        return self.offset_us + (np.asarray(ros_ns, dtype=np.float64) - self.origin_ns) \
            * 1e-3 * self.rate

    def to_ros_ns(self, sensor_us) -> np.ndarray:
        return self.origin_ns + (np.asarray(sensor_us, dtype=np.float64) - self.offset_us) \
            * 1e3 / self.rate


class SimRigNode(Node):
    """The simulated rig; constructible in any executor/context (`main()` is thin)."""

    def __init__(self, node_name: str = "sim_rig", **kwargs):
        super().__init__(node_name, **kwargs)
        settings = declare_settings(self, RigSettings, _DESCRIPTORS, validate_settings)
        self._settings = settings
        rng = np.random.default_rng(settings.seed)
        t0 = time.perf_counter()
        self.stack = FocalStack(settings, np.random.default_rng(rng.integers(2**63)))
        self._rng = np.random.default_rng(rng.integers(2**63))
        self._sensor = EventSensor(settings.sensor_config(), settings.height, settings.width,
                                   np.random.default_rng(rng.integers(2**63)))
        self.get_logger().info(
            f"scene {settings.scene_kind} {settings.width}x{settings.height}, "
            f"{settings.stack_levels} focus levels rendered in {time.perf_counter() - t0:.2f} s")
        self._gt_aif_pixels = None
        self._gt_depth_fields = encode_float(self.stack.depth)

        self._lock = threading.Lock()
        self._encoder = Evt3Encoder()
        self._clock_map: SensorClock | None = None
        self._trajectory: deque[tuple[int, float]] = deque()
        self._last_sensor_us = -1.0
        self._last_stamp_ns = -1
        self._next_frame_ns: int | None = None
        self._seq = 0
        self._stats = dict.fromkeys(("lens_readings", "lens_rejected", "lens_skipped",
                                     "lens_resets", "packets", "events", "triggers", "frames",
                                     "steps"), 0)
        self._step_ms: deque[float] = deque(maxlen=200)
        self._lag_ms: deque[float] = deque(maxlen=200)
        self._last_lens_wall: float | None = None
        self._rate_mark = (time.monotonic(), dict(self._stats))
        self._rates: dict = {}

        self._events_pub = self.create_publisher(EventPacket, EVENTS_TOPIC, qos(depth=1000))
        self._frame_pub = self.create_publisher(Image, FRAMES_TOPIC, qos(depth=10))
        self._info_pub = self.create_publisher(CameraInfo, CAMERA_INFO_TOPIC, qos(depth=10))
        self._gt_aif_pub = self.create_publisher(Image, GT_AIF_TOPIC, qos(depth=10))
        self._gt_depth_pub = self.create_publisher(Image, GT_DEPTH_TOPIC, qos(depth=10))
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, qos(depth=10))
        self._focus_pub = None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        self.create_timer(settings.diagnostics_period_s, self._publish_diagnostics,
                          callback_group=MutuallyExclusiveCallbackGroup(),
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._stop_lens = threading.Event()
        self._lens_thread = None
        if settings.lens_source == "topic":
            self.create_subscription(JointState, FOCUS_TOPIC, self._on_focus, qos(depth=100),
                                     callback_group=MutuallyExclusiveCallbackGroup())
        else:
            self._focus_pub = self.create_publisher(JointState, FOCUS_TOPIC, qos(depth=100))
            self._lens_thread = threading.Thread(target=self._internal_lens_loop,
                                                 name="sim_rig_lens", daemon=True)
            self._lens_thread.start()

    # --- parameters ----------------------------------------------------------------------------
    def _read_settings(self, changes=()) -> RigSettings:
        return read_settings(self, RigSettings, changes)

    def _on_set_parameters(self, params) -> SetParametersResult:
        return check_parameter_change(self, RigSettings, validate_settings, params)

    def _after_set_parameters(self, params) -> None:
        new = self._read_settings()
        with self._lock:
            if new.frame_rate_hz != self._settings.frame_rate_hz:
                self._next_frame_ns = None  # restart the frame grid at the next reading
            self._settings = new

    # --- lens input ----------------------------------------------------------------------------
    def _on_focus(self, msg: JointState) -> None:
        reading = joint_state_focus(msg)
        if reading is None:
            with self._lock:
                self._stats["lens_rejected"] += 1
            return
        stamp_ns, position, _ = reading
        self.advance(stamp_ns, position)

    def _internal_lens_loop(self) -> None:
        """Own lens (no focus controller): triangle sweep through a first-order lens."""
        from efs_ros.lens.sim import SimLens

        s = self._settings
        lens = SimLens(time_constant_s=s.lens_time_constant_s, noise_mdpt=s.lens_noise_mdpt,
                       initial_dpt=s.far_dpt, seed=s.seed)
        lens.connect()
        origin = time.monotonic()
        next_tick = origin
        window: deque[tuple[float, float]] = deque(maxlen=5)
        while not self._stop_lens.is_set():
            s = self._settings
            wave = TriangleSweep(s.near_dpt, s.far_dpt, s.sweep_duration_s, s.dwell_s)
            lens.set_focus(float(wave.vergence_at(time.monotonic() - origin)))
            stamp_ns = self.get_clock().now().nanoseconds
            position = lens.read_focus()
            window.append((stamp_ns * 1e-9, position))
            times, values = np.array(window).T
            velocity = float(np.polyfit(times - times[-1], values, 1)[0]) if len(window) > 1 else 0.0
            self._focus_pub.publish(make_focus_state(stamp_ns, position, velocity))
            try:
                self.advance(stamp_ns, position)
            except Exception as exc:  # noqa: BLE001 - the lens loop must keep running
                self.get_logger().error(f"simulation step failed: {exc}", throttle_duration_sec=5.0)
            next_tick += 1.0 / s.lens_rate_hz
            delay = next_tick - time.monotonic()
            if delay < -0.1:
                next_tick = time.monotonic()
            elif delay > 0:
                self._stop_lens.wait(delay)

    # --- simulation ----------------------------------------------------------------------------
    def advance(self, stamp_ns: int, dpt: float) -> None:
        """Move the simulated world to a lens reading: events up to it, frames that ended."""
        if not math.isfinite(dpt):
            with self._lock:
                self._stats["lens_rejected"] += 1
            return
        t_wall = time.perf_counter()
        with self._lock:
            s = self._settings
            self._stats["lens_readings"] += 1
            self._last_lens_wall = time.monotonic()
            if self._clock_map is None or stamp_ns < self._last_stamp_ns - 100_000_000:
                self._restart(stamp_ns, dpt)
                return
            if stamp_ns <= self._last_stamp_ns:
                self._stats["lens_rejected"] += 1
                return
            t_prev, d_prev = self._trajectory[-1]
            if stamp_ns - t_prev < s.min_step_ms * 1e6 and abs(dpt - d_prev) < s.max_step_dpt:
                self._stats["lens_skipped"] += 1
                return
            self._lag_ms.append((self.get_clock().now().nanoseconds - stamp_ns) * 1e-6)
            n_sub = max(1, math.ceil(abs(dpt - d_prev) / s.max_step_dpt))
            knots_ns = t_prev + (stamp_ns - t_prev) * np.arange(1, n_sub + 1) / n_sub
            knots_ns[-1] = stamp_ns
            knots_dpt = d_prev + (dpt - d_prev) * np.arange(1, n_sub + 1) / n_sub
            chunks = []
            for k_ns, k_dpt in zip(knots_ns, knots_dpt, strict=True):
                t_us = float(self._clock_map.to_sensor_us(k_ns))
                if t_us <= self._last_sensor_us:
                    continue
                ev = self._sensor.step(self.stack.luminance_at(k_dpt), t_us)
                self._last_sensor_us = t_us
                self._stats["steps"] += 1
                if ev.size:
                    chunks.append(ev)
            if s.flood_events_per_s > 0:
                chunks.append(self._flood(t_prev, stamp_ns, s))
            events = np.concatenate(chunks) if chunks else None
            if events is not None and s.flood_events_per_s > 0:
                events = events[np.argsort(events["t"], kind="stable")]
            triggers = self._triggers_between(t_prev, stamp_ns) if s.with_triggers else None
            if s.publish_events:
                self._publish_events(events, triggers, s)
            for k_ns, k_dpt in zip(knots_ns, knots_dpt, strict=True):
                self._trajectory.append((int(k_ns), float(k_dpt)))
            while self._trajectory and self._trajectory[0][0] < stamp_ns - TRAJECTORY_KEEP_S * 1e9:
                self._trajectory.popleft()
            self._last_stamp_ns = stamp_ns
            self._emit_frames(stamp_ns, s)
        self._step_ms.append(1e3 * (time.perf_counter() - t_wall))

    def _flood(self, t0_ns: int, t1_ns: int, s: RigSettings) -> np.ndarray:
        """Uniform random events in (t0, t1]: a scene far busier than the simulated one."""
        n = int(self._rng.poisson(s.flood_events_per_s * (t1_ns - t0_ns) * 1e-9))
        lo, hi = self._clock_map.to_sensor_us([t0_ns, t1_ns])
        out = np.empty(n, EVENT_DTYPE)
        out["t"] = np.sort(self._rng.integers(int(np.floor(lo)) + 1, int(np.floor(hi)) + 1, n))
        out["x"] = self._rng.integers(0, s.width, n)
        out["y"] = self._rng.integers(0, s.height, n)
        out["p"] = self._rng.choice(np.array([-1, 1], np.int8), n)
        return out

    def _restart(self, stamp_ns: int, dpt: float) -> None:
        """First reading, or ROS time went back (sim time restarted): a new sensor time base.

        The sensor clock itself keeps running forward (the EVT3 stream stays monotonic)."""
        s = self._settings
        if self._clock_map is None:
            offset = float(s.sensor_time_offset_us)
        else:
            self._stats["lens_resets"] += 1
            offset = self._last_sensor_us + 1000.0
        self._clock_map = SensorClock(stamp_ns, offset, s.clock_drift_ppm)
        self._sensor.reset(self.stack.luminance_at(dpt), offset)
        self._last_sensor_us = offset
        self._trajectory.clear()
        self._trajectory.append((int(stamp_ns), float(dpt)))
        self._last_stamp_ns = stamp_ns
        self._next_frame_ns = None

    def _frame_grid(self, s: RigSettings) -> tuple[int, int]:
        """(period ns, next frame middle ns), starting the grid one period after the start."""
        period = int(round(1e9 / s.frame_rate_hz))
        if self._next_frame_ns is None:
            self._next_frame_ns = self._trajectory[0][0] + period
        return period, self._next_frame_ns

    def _triggers_between(self, t0_ns: int, t1_ns: int) -> np.ndarray | None:
        """Exposure start/end edges in (t0, t1] as EXT_TRIGGER events (sensor time)."""
        s = self._settings
        period, mid = self._frame_grid(s)
        half = int(round(0.5 * s.exposure_s * 1e9))
        edges = []
        k0 = max(0, math.floor((t0_ns - half - mid) / period))
        for k in range(k0, k0 + int((t1_ns - t0_ns) / period) + 3):
            m = mid + k * period
            for t, value in ((m - half, 1), (m + half, 0)):
                if t0_ns < t <= t1_ns:
                    edges.append((t, value))
        if not edges:
            return None
        edges.sort()
        out = np.zeros(len(edges), TRIGGER_DTYPE)
        out["t"] = np.rint(self._clock_map.to_sensor_us([e[0] for e in edges])).astype(np.int64)
        out["value"] = [e[1] for e in edges]
        return out

    def _publish_events(self, events, triggers, s: RigSettings) -> None:
        """Cut the stream into packets of packet_period_ms sensor time and publish them."""
        if events is None:
            events = np.zeros(0, EVENT_DTYPE)
        if triggers is None:
            triggers = np.zeros(0, TRIGGER_DTYPE)
        if events.size == 0 and triggers.size == 0:
            return
        period_us = s.packet_period_ms * 1e3
        t_all = np.concatenate([events["t"], triggers["t"]])
        bins = np.unique(np.floor(t_all / period_us).astype(np.int64))
        edges = np.append(bins, bins[-1] + 1) * period_us
        ev_cut = np.searchsorted(events["t"], edges, side="left")  # both sorted by t
        tr_cut = np.searchsorted(triggers["t"], edges, side="left")
        for i in range(bins.size):  # one iteration per packet, not per event
            ev = events[ev_cut[i]:ev_cut[i + 1]]
            tr = triggers[tr_cut[i]:tr_cut[i + 1]]
            for start in range(0, max(ev.size, 1), MAX_EVENTS_PER_PACKET):
                self._publish_packet(ev[start:start + MAX_EVENTS_PER_PACKET],
                                     tr if start == 0 else None, s)

    def _publish_packet(self, events, triggers, s: RigSettings) -> None:
        firsts = [int(a["t"][0]) for a in (events, triggers) if a is not None and a.size]
        if not firsts:
            return
        data = self._encoder.encode(events, triggers)
        first_ns = float(self._clock_map.to_ros_ns(min(firsts)))
        stamp = int(first_ns + self._rng.uniform(0.0, s.max_delay_ms * 1e6))
        stamp = max(stamp, getattr(self, "_last_packet_stamp", stamp))  # in arrival order
        self._last_packet_stamp = stamp
        msg = make_event_packet(stamp, data, s.width, s.height, self._seq)
        self._seq += 1
        self._events_pub.publish(msg)
        self._stats["packets"] += 1
        self._stats["events"] += 0 if events is None else int(events.size)
        self._stats["triggers"] += 0 if triggers is None else int(triggers.size)

    def _emit_frames(self, now_ns: int, s: RigSettings) -> None:
        """Every frame whose exposure has ended by now_ns (the lens path is known over it)."""
        period, mid = self._frame_grid(s)
        half = 0.5 * s.exposure_s * 1e9
        while mid + half <= now_ns:
            if mid - half >= self._trajectory[0][0] and s.publish_frames:
                self._publish_frame(mid, s)
            mid += period
        self._next_frame_ns = mid

    def _publish_frame(self, mid_ns: int, s: RigSettings) -> None:
        knots_t = np.array([t for t, _ in self._trajectory], dtype=np.float64)
        knots_d = np.array([d for _, d in self._trajectory], dtype=np.float64)
        samples = max(4, math.ceil(s.exposure_s / 0.0005))
        offsets = ((np.arange(samples) + 0.5) / samples - 0.5) * s.exposure_s * 1e9
        dpts = np.interp(mid_ns + offsets, knots_t, knots_d)
        frame = self.stack.rgb_mean(dpts)
        if s.read_noise > 0:
            frame = frame + self._rng.normal(0.0, s.read_noise, frame.shape).astype(np.float32)
        frame = np.clip(frame, 0.0, 1.0)
        self._frame_pub.publish(self._image(mid_ns, self._as_encoding(frame, s.encoding),
                                            s.encoding))
        # nominal pinhole (a 53 degree field of view): the simulator renders no perspective
        self._info_pub.publish(make_camera_info(mid_ns, "camera", s.width, s.height, float(s.width)))
        self._stats["frames"] += 1
        if s.publish_ground_truth:
            if self._gt_aif_pixels is None:
                self._gt_aif_pixels = self._as_encoding(self.stack.sharp, s.encoding)
            self._gt_aif_pub.publish(self._image(mid_ns, self._gt_aif_pixels, s.encoding))
            self._gt_depth_pub.publish(self._image(mid_ns, self._gt_depth_fields, "32FC1"))

    @staticmethod
    def _as_encoding(frame: np.ndarray, encoding: str):
        if encoding == "mono8":
            frame = luminance(frame)
        return encode_frame(frame, encoding)

    @staticmethod
    def _image(stamp_ns: int, fields_, encoding: str) -> Image:
        msg = Image()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
        msg.header.frame_id = "camera"
        msg.height, msg.width = fields_.height, fields_.width
        msg.encoding, msg.is_bigendian, msg.step = encoding, 0, fields_.step
        msg.data = uint8_array(fields_.data)
        return msg

    # --- diagnostics ---------------------------------------------------------------------------
    def status(self) -> tuple[int, str, dict]:
        now = time.monotonic()
        with self._lock:
            s = self._settings
            stats = dict(self._stats)
            mark_t, mark = self._rate_mark
            if now - mark_t >= 0.5:
                dt = now - mark_t
                self._rates = {f"{k}_per_s": (stats[k] - mark[k]) / dt
                               for k in ("lens_readings", "packets", "events", "frames")}
                self._rate_mark = (now, stats)
            silent = None if self._last_lens_wall is None else now - self._last_lens_wall
        steps = sorted(self._step_ms)
        lag = sorted(self._lag_ms)
        lag_ms = lag[len(lag) // 2] if lag else 0.0
        values = {**stats, **{k: round(v, 2) for k, v in self._rates.items()},
                  "step_ms_median": steps[len(steps) // 2] if steps else 0.0,
                  "step_ms_max": steps[-1] if steps else 0.0,
                  "lag_ms_median": lag_ms,
                  "lens_source": s.lens_source, "size": f"{s.width}x{s.height}",
                  "lens_silent_s": -1.0 if silent is None else round(silent, 2)}
        if silent is None:
            return DIAG_WARN, "waiting for /lens/focus_state", values
        if silent > 1.0:
            return DIAG_WARN, f"no lens state for {silent:.1f} s", values
        if lag_ms > LAG_WARN_MS:
            return DIAG_WARN, (f"simulation {lag_ms:.0f} ms behind the lens: raise min_step_ms or "
                               "lower the size"), values
        return DIAG_OK, "simulating", values

    def _publish_diagnostics(self) -> None:
        try:
            level, message, values = self.status()
            st = diagnostic_status(f"{self.get_name()}: rig", level, message, "sim", values)
            self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), st))
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"diagnostics failed: {exc}", throttle_duration_sec=10.0)

    def destroy_node(self):
        self._stop_lens.set()
        if self._lens_thread is not None and self._lens_thread.is_alive():
            self._lens_thread.join(timeout=2.0)
        return super().destroy_node()


def main(args=None) -> int:
    return spin_node_main(SimRigNode, "sim_rig", args)


if __name__ == "__main__":
    sys.exit(main())
