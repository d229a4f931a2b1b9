"""Training and validation data for the nets, from the focal-sweep simulator.

One *record* is a simulated sweep: the frame, its events (job-relative microseconds), the
all-in-focus ground truth, and the true defocused image at K times of the sweep (the refocus
targets, rendered at the lens vergence of each time). Records are cached under
`.cache/efs_nets/` keyed by everything that shapes them, since simulation dominates the cost.

The net inputs are built with the pipeline's own helpers (`log_frame_chw`,
`event_bins_between`, `merge_event_stacks`), so training and inference see identical inputs.

Splits: "train" uses the simulator's training textures and randomised sensors (including the
clean and noisy v2e presets and both DVS-Voltmeter presets); "val" uses the validation
textures and other seeds. Training sweeps are 128 x 128 through lenses of 160..320 px-wide
geometry (so blur radii cover what 256 px and larger images show), cropped to 64..96 px.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from efs_ros.core import refocus as core_refocus
from efs_ros.core.events import EVENT_DTYPE
from efs_ros.core.refocus import event_bins_between, log_frame_chw, merge_event_stacks
from efs_ros.nets.checkpoint import atomic_write_bytes
from efs_ros.nets.models import N_BINS

DATA_VERSION = 1
SPLIT_SEEDS = {"train": 1_000, "val": 2_000, "test": 3_000}
CHUNK = 32


class EpsLogResponse:
    """log(L + eps), for a core that passes an eps instead of a response object."""

    def __init__(self, eps: float):
        self.eps = float(eps)

    def forward(self, lum):
        return np.log(np.maximum(lum, 0.0) + np.float32(self.eps)).astype(np.float32)

    def inverse(self, y):
        return (np.exp(y) - np.float32(self.eps)).astype(np.float32)


def pipeline_response():
    """The log response the pipeline maps frames through before calling the refocus net (and
    inverts on its output): training must use the same one."""
    from efs_ros.core.pipeline import PipelineConfig

    cfg = PipelineConfig()
    resp = getattr(cfg, "response", None)
    return resp if resp is not None else EpsLogResponse(cfg.log_eps)


def pipeline_event_filter_us() -> float:
    """Window of the pipeline's isolated-event (background activity) filter; 0 = off."""
    from efs_ros.core.pipeline import PipelineConfig

    return float(getattr(PipelineConfig(), "event_filter_us", 0.0) or 0.0)


def filter_events(events: np.ndarray, height: int, width: int, window_us: float | None = None) -> np.ndarray:
    """The events the pipeline keeps for a job: its own isolated-event filter, same window.

    The filter looks at 3 x 3 neighbourhoods, so it runs on whole sweeps (as the pipeline does)
    before any crop."""
    window_us = pipeline_event_filter_us() if window_us is None else window_us
    if window_us <= 0 or len(events) == 0:
        return events
    from efs_ros.core.refocus import isolated_event_mask

    return events[~isolated_event_mask(events, height, width, window_us)]


def response_spec(resp) -> dict:
    """JSON description of a response (stored in the manifest, compared at load time)."""
    fields = {k: float(v) for k, v in vars(resp).items() if isinstance(v, (int, float))}
    return {"type": type(resp).__name__, **fields}


def log_frame(frame: np.ndarray, resp=None) -> np.ndarray:
    """The refocus net's image input, built by the pipeline's own `log_frame_chw`."""
    resp = resp if resp is not None else pipeline_response()
    if isinstance(resp, EpsLogResponse) and not hasattr(core_refocus, "DEFAULT_RESPONSE"):
        return log_frame_chw(frame, resp.eps)
    return log_frame_chw(frame, resp)


def default_cache_dir() -> Path:
    env = os.environ.get("EFS_NETS_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".cache" / "efs_nets"


def sensor_for(kind: str, rng: np.random.Generator):
    """A sensor by mix name: clean / noisy presets, dvs346 / dvs240, or randomised."""
    from efs_ros.sim.sensor import SensorConfig

    if kind == "clean":
        return SensorConfig.clean()
    if kind == "noisy":
        return SensorConfig.noisy()
    if kind == "dvs346":
        return SensorConfig.dvs346()
    if kind == "dvs240":
        return SensorConfig.dvs240()
    if kind == "randomized":
        return SensorConfig.randomized(rng)
    raise ValueError(f"unknown sensor kind {kind!r}")


TRAIN_SENSOR_MIX = (("randomized", 0.5), ("noisy", 0.2), ("clean", 0.15), ("dvs346", 0.075),
                    ("dvs240", 0.075))


@dataclass
class RecordSpec:
    """Everything that determines a set of records (and so its cache key)."""

    split: str = "train"
    n: int = 256
    size: int = 128
    targets: int = 12
    lens_width: tuple[int, int] = (160, 320)
    """Lens geometry as for an image this many px wide (ThinLens.default); a range is sampled."""
    sensors: tuple = TRAIN_SENSOR_MIX
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({"v": DATA_VERSION, **self.__dict__}, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Records:
    """A set of simulated sweeps, as arrays (events concatenated, `ev_offsets` delimit them)."""

    frames: np.ndarray  # [n, H, W, 3] float32
    gt_aif: np.ndarray  # [n, H, W, 3] float32
    span_s: np.ndarray  # [n, 2] sweep start and end, s relative to the frame
    target_t: np.ndarray  # [n, K] s
    targets: np.ndarray  # [n, K, H, W, 3] float16: true image at target_t
    events: np.ndarray  # EVENT_DTYPE, concatenated
    ev_offsets: np.ndarray  # [n + 1]
    sensors: np.ndarray  # [n] sensor kind names

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def events_of(self, i: int) -> np.ndarray:
        return self.events[self.ev_offsets[i]:self.ev_offsets[i + 1]]

    def with_pipeline_filter(self, window_us: float | None = None) -> Records:
        """The same records with each sweep's events passed through the pipeline's filter."""
        h, w = self.frames.shape[1:3]
        kept = [filter_events(self.events_of(i), h, w, window_us) for i in range(len(self))]
        offsets = np.concatenate([[0], np.cumsum([len(k) for k in kept])]).astype(np.int64)
        events = np.concatenate(kept) if kept else self.events[:0]
        return Records(self.frames, self.gt_aif, self.span_s, self.target_t, self.targets, events, offsets,
                       self.sensors)

    @staticmethod
    def concat(parts: list[Records]) -> Records:
        offs = [np.zeros(1, np.int64)]
        base = 0
        for p in parts:
            offs.append(p.ev_offsets[1:] + base)
            base += int(p.ev_offsets[-1])
        return Records(
            frames=np.concatenate([p.frames for p in parts]),
            gt_aif=np.concatenate([p.gt_aif for p in parts]),
            span_s=np.concatenate([p.span_s for p in parts]),
            target_t=np.concatenate([p.target_t for p in parts]),
            targets=np.concatenate([p.targets for p in parts]),
            events=np.concatenate([p.events for p in parts]) if parts else np.zeros(0, EVENT_DTYPE),
            ev_offsets=np.concatenate(offs),
            sensors=np.concatenate([p.sensors for p in parts]),
        )


def _pick_sensor(spec: RecordSpec, rng: np.random.Generator) -> str:
    names = [n for n, _ in spec.sensors]
    p = np.array([w for _, w in spec.sensors], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def simulate_record(spec: RecordSpec, index: int):
    """One sweep of the spec, reproducible from (split, seed, index) alone."""
    from efs_ros.sim.optics import FocalRenderer, ThinLens
    from efs_ros.sim.rig import RigConfig, simulate_sweep

    rng = np.random.default_rng([SPLIT_SEEDS[spec.split], spec.seed, index])
    kind = _pick_sensor(spec, rng)
    sensor = sensor_for(kind, rng)
    lo, hi = spec.lens_width
    lens_w = int(rng.integers(lo, hi + 1)) if hi > lo else lo
    textures = "val" if spec.split != "train" else "train"
    rig = RigConfig(height=spec.size, width=spec.size, textures=textures,
                    lens=ThinLens.default(lens_w), scene_kind=str(rng.choice(["layers", "slanted", "mixed"])))
    sweep = simulate_sweep(rig, sensor, rng, direction=int(rng.choice([-1, 1])))
    t0, t1 = float(sweep.focus_t[0]), float(sweep.focus_t[-1])
    # Target times: stratified over the sweep, so near and far refocusing are both covered.
    k = spec.targets
    tt = t0 + (t1 - t0) * (np.arange(k) + rng.uniform(0.05, 0.95, k)) / k
    renderer = FocalRenderer(sweep.scene, sweep.lens, (rig.far_dpt, rig.near_dpt))
    dpt = np.interp(tt, sweep.focus_t, sweep.focus_dpt)
    targets = np.stack([renderer.render(float(d)) for d in dpt]).astype(np.float16)
    return sweep, kind, tt, targets


def _generate_chunk(spec: RecordSpec, start: int, stop: int) -> Records:
    parts = []
    for i in range(start, stop):
        sweep, kind, tt, targets = simulate_record(spec, i)
        parts.append(Records(
            frames=sweep.frame[None].astype(np.float32), gt_aif=sweep.gt_aif[None].astype(np.float32),
            span_s=np.array([[sweep.focus_t[0], sweep.focus_t[-1]]]), target_t=tt[None],
            targets=targets[None], events=sweep.events,
            ev_offsets=np.array([0, len(sweep.events)], np.int64), sensors=np.array([kind]),
        ))
    return Records.concat(parts)


def _save(path: Path, rec: Records) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: getattr(rec, k) for k in Records.__dataclass_fields__})
    atomic_write_bytes(path, buf.getvalue())


def _load(path: Path) -> Records | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return Records(**{k: z[k] for k in Records.__dataclass_fields__})
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache file is regenerated


def load_records(spec: RecordSpec, cache_dir: str | Path | None = None, progress: bool = False) -> Records:
    """The spec's records, from the cache where present, simulated (and cached) otherwise."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache_dir / f"{spec.split}-{spec.key()}"
    parts = []
    chunks = list(range(0, spec.n, CHUNK))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=spec.n, desc=f"simulate {spec.split}", unit="sweep", leave=False)
    for start in chunks:
        stop = min(start + CHUNK, spec.n)
        path = folder / f"{start:06d}-{stop:06d}.npz"
        rec = _load(path) if path.exists() else None
        if rec is None:
            rec = _generate_chunk(spec, start, stop)
            _save(path, rec)
        parts.append(rec)
        if bar is not None:
            bar.update(stop - start)
    if bar is not None:
        bar.close()
    return Records.concat(parts)


# ------------------------------------------------------------------------------------------------
# Crops and net inputs

def crop_events(events: np.ndarray, y0: int, x0: int, h: int, w: int, flip_x: bool = False,
                flip_y: bool = False) -> np.ndarray:
    """Events inside the window, coordinates relative to it (optionally mirrored)."""
    x = events["x"].astype(np.int64) - x0
    y = events["y"].astype(np.int64) - y0
    keep = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    out = events[keep].copy()
    xs, ys = x[keep], y[keep]
    out["x"] = (w - 1 - xs) if flip_x else xs
    out["y"] = (h - 1 - ys) if flip_y else ys
    return out


def _crop_img(img: np.ndarray, y0: int, x0: int, h: int, w: int, fx: bool, fy: bool) -> np.ndarray:
    out = img[..., y0:y0 + h, x0:x0 + w, :]
    if fx:
        out = out[..., :, ::-1, :]
    if fy:
        out = out[..., ::-1, :, :]
    return out


def to_chw(img: np.ndarray) -> np.ndarray:
    """[..., H, W, C] -> [..., C, H, W] float32."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(img, np.float32), -1, -3))


@dataclass
class Crop:
    index: int
    y0: int
    x0: int
    size: int
    flip_x: bool
    flip_y: bool


def random_crop(rec: Records, rng: np.random.Generator, size: int, index: int | None = None) -> Crop:
    n, h, w = rec.frames.shape[:3]
    i = int(rng.integers(n)) if index is None else index
    return Crop(i, int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)), size,
                bool(rng.integers(2)), bool(rng.integers(2)))


def crop_arrays(rec: Records, c: Crop):
    """Frame, events, all-in-focus and targets of one crop."""
    s = c.size
    frame = _crop_img(rec.frames[c.index], c.y0, c.x0, s, s, c.flip_x, c.flip_y)
    aif = _crop_img(rec.gt_aif[c.index], c.y0, c.x0, s, s, c.flip_x, c.flip_y)
    targets = _crop_img(rec.targets[c.index], c.y0, c.x0, s, s, c.flip_x, c.flip_y)
    ev = crop_events(rec.events_of(c.index), c.y0, c.x0, s, s, c.flip_x, c.flip_y)
    return frame, ev, aif, targets


def refocus_inputs(frame: np.ndarray, events: np.ndarray, t_s: float, resp=None):
    """(log_frame [3,H,W], event_bins [64,H,W]) exactly as the pipeline builds them."""
    h, w = frame.shape[:2]
    return (log_frame(frame, resp),
            event_bins_between(events, 0.0, float(t_s) * 1e6, N_BINS, h, w))


def refocus_batch(rec: Records, rng: np.random.Generator, batch: int, size: int, resp=None):
    """A training batch: log_frame [B,3,s,s], event_bins [B,64,s,s], target [B,3,s,s] linear,
    plus the frame [B,3,s,s] (for the plain-integration baseline)."""
    lf, bins, tgt = [], [], []
    for _ in range(batch):
        c = random_crop(rec, rng, size)
        frame, ev, _, targets = crop_arrays(rec, c)
        k = int(rng.integers(targets.shape[0]))
        a, b = refocus_inputs(frame, ev, rec.target_t[c.index, k], resp)
        lf.append(a)
        bins.append(b)
        tgt.append(to_chw(targets[k]))
    return np.stack(lf), np.stack(bins), np.stack(tgt)


def merge_times(span_s: tuple[float, float], n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """n refocus times evenly over the sweep (as dense selection picks them), jittered a little."""
    t0, t1 = span_s
    times = np.linspace(t0, t1, n)
    if rng is not None and n > 1:
        times = times + rng.uniform(-0.25, 0.25, n) * (t1 - t0) / (n - 1)
    return np.clip(times, t0, t1)


def merge_inputs(events: np.ndarray, times_s: np.ndarray, h: int, w: int, span_s: tuple[float, float]):
    """event_stacks [N,H,W] exactly as the pipeline builds them for the merge net."""
    return merge_event_stacks(events, np.asarray(times_s) * 1e6, h, w, (span_s[0] * 1e6, span_s[1] * 1e6))
