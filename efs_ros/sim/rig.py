"""A simulated focal-sweep rig: focus-tunable lens, frame camera and event camera on one scene.

simulate_sweep gives one frame with its complete sweep (the unit the pipeline works on);
simulate_recording gives a triangle-wave timeline over several sweeps with frames, events,
trigger pairs and lens samples, in sensor microseconds, for the bag writer.

Time model. The lens moves in equal steps of dt = sweep_s / steps between the range ends; the
scene is rendered once per distinct lens state (a recording renders one sweep and reuses it:
the scene is static) and the event sensor sees intensity linear in time between steps. A frame
integrates the same piecewise-linear signal over its exposure, so frame and events agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from efs_ros.core.events import EVENT_DTYPE, TRIGGER_DTYPE, empty_events
from efs_ros.core.job import SweepJob

from .optics import FocalRenderer, ThinLens
from .scene import Scene, make_scene
from .sensor import EventSensor, SensorConfig


@dataclass
class RigConfig:
    height: int = 256
    width: int = 256
    lens: ThinLens | None = None
    """None: ThinLens.default for this width and focus range (blur radius up to ~10 px at 256 px)."""
    near_dpt: float = 3.5
    far_dpt: float = 0.5
    sweep_s: float = 0.1
    """Duration of one monotonic sweep between the range ends."""
    steps: int = 240
    """Lens steps (renders) per sweep; the paper uses 480 frames per sweep."""
    exposure_s: float = 0.004
    frame_fraction: tuple[float, float] = (0.15, 0.85)
    """Where inside the sweep a simulate_sweep frame lies (uniform in this range)."""
    scene_kind: str = "mixed"
    scene_near_m: float = 0.3
    scene_far_m: float = 2.0
    textures: str = "all"
    """Texture pool: all | train | val | sparse (dots on a plain ground), see scene.texture_pool."""
    contrast: float = 1.0
    """Texture contrast about each texture's mean colour (1: as sampled; 0.05: barely visible)."""
    read_noise: float = 0.0
    """Frame read noise, standard deviation in units of full scale."""
    full_well: float = 0.0
    """Photo-electrons at full scale for frame shot noise; 0 = none."""
    lens_rate_hz: float = 500.0
    lens_noise_dpt: float = 0.003
    dwell_s: float = 0.0
    """Recordings: time the lens rests at each end of the range."""

    def __post_init__(self):
        if self.height < 8 or self.width < 8:
            raise ValueError(f"image too small: {self.height} x {self.width}")
        if not (0 <= self.far_dpt < self.near_dpt):
            raise ValueError(f"need 0 <= far_dpt < near_dpt, got {self.far_dpt}, {self.near_dpt}")
        if self.steps < 2 or self.sweep_s <= 0:
            raise ValueError(f"need steps >= 2 and sweep_s > 0, got {self.steps}, {self.sweep_s}")
        if not (0 <= self.exposure_s < self.sweep_s):
            raise ValueError(f"exposure_s {self.exposure_s} must be in [0, sweep_s)")
        lo, hi = self.frame_fraction
        if not (0 <= lo <= hi <= 1):
            raise ValueError(f"frame_fraction must be an interval inside [0, 1], got {self.frame_fraction}")
        if self.lens_rate_hz < 1:
            raise ValueError(f"lens_rate_hz must be >= 1, got {self.lens_rate_hz}")

    @property
    def dt_s(self) -> float:
        return self.sweep_s / self.steps

    def lens_model(self) -> ThinLens:
        if self.lens is not None:
            return self.lens
        return ThinLens.default(self.width, near_dpt=self.near_dpt, far_dpt=self.far_dpt)

    def state_dpt(self) -> np.ndarray:
        """Vergence of lens state j = 0..steps (far end to near end)."""
        return self.far_dpt + (self.near_dpt - self.far_dpt) * np.arange(self.steps + 1) / self.steps

    def random_scene(self, rng: np.random.Generator) -> Scene:
        return make_scene(rng, self.height, self.width, self.scene_kind, self.scene_near_m, self.scene_far_m,
                          self.textures, contrast=self.contrast)


def exposure_weights(times: np.ndarray, t_start: float, t_end: float) -> np.ndarray:
    """Weights w (len(times)) such that sum_k w_k x_k is the mean over [t_start, t_end] of the
    piecewise-linear signal through samples x_k at the given times (a point sample if equal)."""
    times = np.asarray(times, dtype=np.float64)
    w = np.zeros(times.size)
    if t_end <= t_start:
        k = int(np.clip(np.searchsorted(times, t_start, side="right") - 1, 0, times.size - 2))
        f = np.clip((t_start - times[k]) / (times[k + 1] - times[k]), 0.0, 1.0)
        w[k], w[k + 1] = 1.0 - f, f
        return w
    a, b = times[:-1], times[1:]
    lo = np.clip(t_start, a, b)
    hi = np.clip(t_end, a, b)
    span = b - a
    # Integral over [lo, hi] of the hats (b - t)/span and (t - a)/span.
    left = ((b - lo) ** 2 - (b - hi) ** 2) / (2 * span)
    right = ((hi - a) ** 2 - (lo - a) ** 2) / (2 * span)
    np.add.at(w, np.arange(a.size), left)
    np.add.at(w, np.arange(a.size) + 1, right)
    return w / (t_end - t_start)


def _frame_noise(frame: np.ndarray, rig: RigConfig, rng: np.random.Generator) -> np.ndarray:
    if rig.full_well > 0:
        frame = rng.poisson(np.clip(frame, 0, None) * rig.full_well) / rig.full_well
    if rig.read_noise > 0:
        frame = frame + rng.normal(0.0, rig.read_noise, frame.shape)
    return np.clip(frame, 0.0, 1.0).astype(np.float32)


def _child(rng: np.random.Generator) -> np.random.Generator:
    """An independent stream, so that e.g. changing the sensor does not change the scene."""
    return np.random.default_rng(int(rng.integers(2 ** 63)))


class _StateRenders:
    """Renders per lens state, computed on first use (colour) or up front (luminance)."""

    def __init__(self, scene: Scene, rig: RigConfig):
        self.dpt = rig.state_dpt()
        self.renderer = FocalRenderer(scene, rig.lens_model(), (float(self.dpt.min()), float(self.dpt.max())))
        self.luminance = self.renderer.render_many(self.dpt, luminance_only=True)
        self._rgb: dict[int, np.ndarray] = {}

    def rgb(self, state: int) -> np.ndarray:
        if state not in self._rgb:
            self._rgb[state] = self.renderer.render(float(self.dpt[state]))
        return self._rgb[state]

    def blend(self, states: np.ndarray, weights: np.ndarray) -> np.ndarray:
        acc: dict[int, float] = {}
        for s, w in zip(states.tolist(), weights.tolist(), strict=True):
            if w > 0:
                acc[s] = acc.get(s, 0.0) + w
        out = np.zeros(self.luminance.shape[1:] + (3,), dtype=np.float64)
        for s, w in acc.items():
            out += w * self.rgb(s)
        return out


@dataclass(frozen=True)
class FrameCamera:
    """A frame camera that does not share the event sensor's pixels (beam splitter rigs): its own
    size, a homography onto the event sensor and a transfer curve. The scene lives in the event
    sensor's pixels (RigConfig's size); the frame and the truths are its warp into this camera."""

    height: int
    width: int
    frame_to_events: tuple[float, ...]
    """3x3 row-major homography, frame pixel -> event pixel (CONTRACT section 4)."""
    transfer: str = "linear"

    @classmethod
    def similarity(cls, height: int, width: int, sensor_hw: tuple[int, int], scale: float, angle_deg: float,
                   shift_px: tuple[float, float] = (0.0, 0.0), transfer: str = "linear") -> FrameCamera:
        """A frame camera whose centre maps near the sensor's centre: rotation, scale (event px per
        frame px) and a shift, as a real beam-splitter alignment leaves them."""
        a = np.deg2rad(angle_deg)
        rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        centre_f = np.array([(width - 1) / 2, (height - 1) / 2])
        centre_e = np.array([(sensor_hw[1] - 1) / 2, (sensor_hw[0] - 1) / 2]) + np.asarray(shift_px)
        h = np.eye(3)
        h[:2, :2] = rot
        h[:2, 2] = centre_e - rot @ centre_f
        return cls(height, width, tuple(float(v) for v in h.ravel()), transfer)

    def homography(self) -> np.ndarray:
        return np.reshape(np.asarray(self.frame_to_events, np.float64), (3, 3))

    def view(self, image: np.ndarray, nearest: bool = False) -> np.ndarray:
        """What this camera sees of an image in event-sensor pixels."""
        import cv2

        flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
        return cv2.warpPerspective(np.ascontiguousarray(image, np.float32), self.homography(),
                                   (self.width, self.height), flags=flags, borderMode=cv2.BORDER_REPLICATE)


# ----------------------------------------------------------------------------------------------
# One sweep

@dataclass
class SimulatedSweep:
    focus_t: np.ndarray
    """float64 s relative to the frame time (mid-exposure), increasing."""
    focus_dpt: np.ndarray
    """float64 lens vergence at focus_t (exact, noise-free)."""
    frame: np.ndarray
    """H x W x 3 float32 linear in [0, 1]: the scene through the moving lens during the exposure."""
    events: np.ndarray
    """EVENT_DTYPE, t in microseconds relative to the frame time, sorted."""
    gt_aif: np.ndarray
    """H x W x 3 float32: everything sharp, same radiometry as the frame (noise-free)."""
    gt_depth: np.ndarray
    """H x W float32 metres, NaN where no surface."""
    sensor: SensorConfig
    exposure_s: float
    direction: int
    frame_fraction: float
    scene: Scene | None = None
    lens: ThinLens | None = None
    camera: FrameCamera | None = None
    """The frame camera when it is not the event sensor's (frame and truths in its geometry)."""
    sensor_size: tuple[int, int] | None = None

    def to_job(self, stamp_ns: int = 0, encoding: str = "rgb8") -> SweepJob:
        """The sweep as the pipeline's SweepJob (times already relative to the frame)."""
        cam = self.camera
        return SweepJob(stamp_ns=int(stamp_ns), frame=self.frame, encoding=encoding, events=self.events,
                        focus_t=self.focus_t, focus_dpt=self.focus_dpt, exposure_s=float(self.exposure_s),
                        ground_truth_aif=self.gt_aif, ground_truth_depth=self.gt_depth,
                        meta={"source": "efs_ros.sim", "direction": self.direction,
                              "frame_fraction": self.frame_fraction, "sensor_model": self.sensor.model},
                        frame_to_events=None if cam is None else cam.homography(),
                        sensor_size=None if cam is None else self.sensor_size,
                        frame_transfer="linear" if cam is None else cam.transfer)


def simulate_sweep(rig: RigConfig, sensor: SensorConfig, rng: np.random.Generator, scene: Scene | None = None,
                   direction: int = +1, camera: FrameCamera | None = None) -> SimulatedSweep:
    """One monotonic sweep (direction +1: far to near, i.e. increasing diopters) with a frame
    exposed at a random point inside it; with a `camera`, the frame and the truths are that
    camera's view (the event sensor and everything random stay the same)."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    scene_rng, frame_rng, sensor_rng, noise_rng = (_child(rng) for _ in range(4))
    if scene is None:
        scene = rig.random_scene(scene_rng)
    elif (scene.height, scene.width) != (rig.height, rig.width):
        raise ValueError(f"scene is {scene.height} x {scene.width}, rig is {rig.height} x {rig.width}")
    renders = _StateRenders(scene, rig)
    states = np.arange(rig.steps + 1)
    if direction < 0:
        states = states[::-1]
    times = np.arange(rig.steps + 1) * rig.dt_s

    half = 0.5 * rig.exposure_s
    lo = max(rig.frame_fraction[0] * rig.sweep_s, half)
    hi = min(rig.frame_fraction[1] * rig.sweep_s, rig.sweep_s - half)
    t_frame = float(frame_rng.uniform(lo, hi)) if hi > lo else 0.5 * (lo + hi)
    weights = exposure_weights(times, t_frame - half, t_frame + half)
    exposed = renders.blend(states, weights)
    gt_aif, gt_depth = scene.all_in_focus(), scene.depth_map()
    if camera is not None:
        exposed, gt_aif = camera.view(exposed), camera.view(gt_aif)
        gt_depth = camera.view(gt_depth, nearest=True)
    frame = _frame_noise(exposed, rig, noise_rng)

    cam = EventSensor(sensor, rig.height, rig.width, sensor_rng)
    rel_us = (times - t_frame) * 1e6
    cam.reset(renders.luminance[states[0]], rel_us[0])
    chunks = [cam.step(renders.luminance[s], t) for s, t in zip(states[1:], rel_us[1:], strict=True)]
    chunks = [c for c in chunks if c.size]
    events = np.concatenate(chunks) if chunks else empty_events()

    return SimulatedSweep(focus_t=times - t_frame, focus_dpt=renders.dpt[states].astype(np.float64),
                          frame=frame, events=events, gt_aif=gt_aif.astype(np.float32),
                          gt_depth=gt_depth.astype(np.float32),
                          sensor=sensor, exposure_s=rig.exposure_s, direction=direction,
                          frame_fraction=t_frame / rig.sweep_s, scene=scene, lens=renders.renderer.lens,
                          camera=camera, sensor_size=(rig.height, rig.width))


# ----------------------------------------------------------------------------------------------
# A recording: triangle wave over several sweeps

@dataclass
class SimulatedRecording:
    """Everything in sensor microseconds (int64 unless noted), plain numpy, static scene."""

    height: int
    width: int
    start_us: int
    """Sensor time of the first lens step (may sit just below 2^24 so the EVT3 clock wraps)."""
    frames: np.ndarray
    """N x H x W x 3 float32 linear in [0, 1]."""
    frame_t_us: np.ndarray
    """N: middle of each exposure."""
    exposure_s: float
    triggers: np.ndarray
    """TRIGGER_DTYPE, channel 0: value 1 at exposure start, 0 at its end, one pair per frame."""
    events: np.ndarray
    """EVENT_DTYPE with absolute sensor time, sorted."""
    lens_t_us: np.ndarray
    lens_dpt: np.ndarray
    """float64, the lens reading (true focus plus a few millidiopters of noise)."""
    lens_velocity: np.ndarray
    """float64 dpt/s, the true rate of the lens."""
    gt_aif: np.ndarray
    """N x H x W x 3 float32 (a read-only broadcast: the scene is static)."""
    gt_depth: np.ndarray
    """N x H x W float32 metres, NaN where no surface (read-only broadcast)."""
    focus_t_us: np.ndarray
    """float64: the true lens trajectory, one sample per lens step."""
    focus_dpt: np.ndarray
    sweeps_us: np.ndarray
    """M x 2 int64: start and end of each complete sweep (last sample of one end, first of the other)."""
    sweep_direction: np.ndarray
    """M int8: +1 far -> near (diopters increasing), -1 back."""
    frame_sweep: np.ndarray
    """N int: index of the complete sweep containing the frame stamp, -1 if none."""
    sensor: SensorConfig
    sweep_steps: np.ndarray
    """M x 2: the same sweeps as indices into focus_t_us / focus_dpt."""
    rig: RigConfig
    scene: Scene | None = None
    meta: dict = field(default_factory=dict)

    def reference_job(self, i: int, stamp_ns: int = 0) -> SweepJob:
        """What an ideal assembler makes of frame i: its sweep's events and TRUE focus, relative to
        the frame time. Raises ValueError for a frame outside every complete sweep."""
        k = int(self.frame_sweep[i])
        if k < 0:
            raise ValueError(f"frame {i} is not inside a complete sweep")
        t0, t1 = self.sweeps_us[k]
        tf = int(self.frame_t_us[i])
        lo = np.searchsorted(self.events["t"], t0, side="left")
        hi = np.searchsorted(self.events["t"], t1, side="right")
        ev = self.events[lo:hi].copy()
        ev["t"] -= tf
        a, b = self.sweep_steps[k]
        sel = slice(int(a), int(b) + 1)
        return SweepJob(stamp_ns=int(stamp_ns), frame=self.frames[i], encoding="rgb8", events=ev,
                        focus_t=(self.focus_t_us[sel] - tf) * 1e-6, focus_dpt=self.focus_dpt[sel].copy(),
                        exposure_s=self.exposure_s, ground_truth_aif=np.asarray(self.gt_aif[i]),
                        ground_truth_depth=np.asarray(self.gt_depth[i]),
                        meta={"source": "efs_ros.sim.recording", "sweep": k,
                              "direction": int(self.sweep_direction[k])})


def _triangle_states(steps: int, n_sweeps: int, dwell: int, lead: int, tail: int):
    """Lens state per step: a lead-in towards the far end, n_sweeps full sweeps (the first one far
    to near) each followed by dwell extra steps at the end reached, then a partial tail."""
    parts = [np.arange(lead, 0, -1)]  # lead .. 1, then the far end
    bounds = []  # (index of the sweep's first sample, index of its last sample)
    at_far = True
    for _ in range(n_sweeps):
        end_state = 0 if at_far else steps
        parts.append(np.full(1 + dwell, end_state))
        start_idx = sum(p.size for p in parts) - 1
        inner = np.arange(1, steps) if at_far else np.arange(steps - 1, 0, -1)
        parts.append(inner)
        bounds.append((start_idx, start_idx + steps, 1 if at_far else -1))
        at_far = not at_far
    end_state = 0 if at_far else steps
    parts.append(np.full(1 + dwell, end_state))
    step_dir = 1 if at_far else -1
    parts.append(end_state + step_dir * np.arange(1, tail + 1))
    return np.concatenate(parts).astype(np.int64), bounds


def simulate_recording(rig: RigConfig, sensor: SensorConfig, rng: np.random.Generator, n_sweeps: int = 4,
                       frame_rate_hz: float = 30.0, scene: Scene | None = None, start_us: int | None = None,
                       with_triggers: bool = True) -> SimulatedRecording:
    """A static scene watched through a triangle-wave focus sweep.

    The timeline starts part-way through a sweep towards the far end, then runs n_sweeps
    complete sweeps (the first from far to near) and ends part-way into one more, so every
    complete sweep is bounded by turning points. The event sensor runs continuously over the
    whole timeline; frames are taken at frame_rate_hz from a random phase.
    """
    if n_sweeps < 1:
        raise ValueError(f"n_sweeps must be >= 1, got {n_sweeps}")
    if frame_rate_hz <= 0 or rig.exposure_s >= 1.0 / frame_rate_hz:
        raise ValueError(f"exposure {rig.exposure_s} s does not fit a frame period at {frame_rate_hz} Hz")
    scene_rng, time_rng, sensor_rng, noise_rng, lens_rng = (_child(rng) for _ in range(5))
    if scene is None:
        scene = rig.random_scene(scene_rng)
    elif (scene.height, scene.width) != (rig.height, rig.width):
        raise ValueError(f"scene is {scene.height} x {scene.width}, rig is {rig.height} x {rig.width}")
    if start_us is None:
        start_us = int(time_rng.integers(0, 2 ** 24))
    dwell = int(round(rig.dwell_s / rig.dt_s))
    lead = int(time_rng.integers(rig.steps // 5, rig.steps * 3 // 5 + 1))
    tail = int(time_rng.integers(rig.steps // 5, rig.steps * 3 // 5 + 1))
    states, bounds = _triangle_states(rig.steps, n_sweeps, dwell, lead, tail)
    dt_us = rig.dt_s * 1e6
    t_us = start_us + np.arange(states.size) * dt_us
    renders = _StateRenders(scene, rig)
    dpt = renders.dpt[states]

    # Events: one continuous run of the sensor.
    cam = EventSensor(sensor, rig.height, rig.width, sensor_rng)
    cam.reset(renders.luminance[states[0]], t_us[0])
    chunks = []
    for k in range(1, states.size):
        ev = cam.step(renders.luminance[states[k]], t_us[k])
        if ev.size:
            chunks.append(ev)
    events = np.concatenate(chunks) if chunks else np.zeros(0, EVENT_DTYPE)

    # Frames: exposure windows inside the timeline, from a random phase.
    period_us = 1e6 / frame_rate_hz
    half_us = 0.5 * rig.exposure_s * 1e6
    first = t_us[0] + half_us + time_rng.uniform(0.0, period_us)
    mids = np.arange(first, t_us[-1] - half_us, period_us)
    frames = np.empty((mids.size, rig.height, rig.width, 3), np.float32)
    for i, tm in enumerate(mids):
        w = exposure_weights(t_us, tm - half_us, tm + half_us)
        nz = np.flatnonzero(w)
        frames[i] = _frame_noise(renders.blend(states[nz], w[nz]), rig, noise_rng)
    frame_t_us = np.rint(mids).astype(np.int64)
    triggers = np.zeros(2 * mids.size if with_triggers else 0, TRIGGER_DTYPE)
    if with_triggers:
        triggers["t"][0::2] = np.rint(mids - half_us).astype(np.int64)
        triggers["t"][1::2] = np.rint(mids + half_us).astype(np.int64)
        triggers["value"][0::2] = 1

    # Lens readings.
    lens_period_us = 1e6 / rig.lens_rate_hz
    lens_t = np.arange(t_us[0] + lens_rng.uniform(0.0, lens_period_us), t_us[-1], lens_period_us)
    lens_dpt = np.interp(lens_t, t_us, dpt) + lens_rng.normal(0.0, rig.lens_noise_dpt, lens_t.size)
    seg = np.clip(np.searchsorted(t_us, lens_t, side="right") - 1, 0, t_us.size - 2)
    lens_velocity = (dpt[seg + 1] - dpt[seg]) / rig.dt_s

    sweeps_us = np.array([[np.rint(t_us[a]), np.rint(t_us[b])] for a, b, _ in bounds], dtype=np.int64)
    sweep_direction = np.array([d for _, _, d in bounds], dtype=np.int8)
    frame_sweep = np.full(mids.size, -1, dtype=np.int64)
    for k, (a, b) in enumerate(sweeps_us):
        frame_sweep[(frame_t_us > a) & (frame_t_us < b)] = k

    n = mids.size
    gt_aif = np.broadcast_to(scene.all_in_focus(), (n, rig.height, rig.width, 3))
    gt_depth = np.broadcast_to(scene.depth_map(), (n, rig.height, rig.width))
    return SimulatedRecording(
        height=rig.height, width=rig.width, start_us=int(start_us), frames=frames, frame_t_us=frame_t_us,
        exposure_s=rig.exposure_s, triggers=triggers, events=events,
        lens_t_us=np.rint(lens_t).astype(np.int64), lens_dpt=lens_dpt, lens_velocity=lens_velocity,
        gt_aif=gt_aif, gt_depth=gt_depth, focus_t_us=t_us, focus_dpt=dpt.astype(np.float64),
        sweeps_us=sweeps_us, sweep_direction=sweep_direction, frame_sweep=frame_sweep, sensor=sensor,
        sweep_steps=np.array([[a, b] for a, b, _ in bounds], dtype=np.int64), rig=rig, scene=scene,
        meta={"n_sweeps": n_sweeps, "frame_rate_hz": frame_rate_hz, "dwell_steps": dwell})
