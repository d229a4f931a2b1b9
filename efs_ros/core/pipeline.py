"""One job in, one all-in-focus image, refocus map and depth out: the whole model-free pipeline,
with hooks for the learned refocus and merge networks.

Stages (timed in SweepResult.timings_ms): `stack` (bin events, prefix sums), `threshold`
(contrast threshold from the data unless given), `select` (refocus times), `refocus` (images at
the chosen times, only when a network or the gradient merge needs them), `merge`, `depth`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from .depth import depth_from_refocus_map
from .events import EVENT_DTYPE
from .job import SweepJob, SweepResult
from .merge import focus_weights, merge_focus, merge_gradient, merge_refocus_map, merge_stack
from .refocus import (
    DEFAULT_RESPONSE,
    DEFAULT_THRESHOLD,
    EventStack,
    EventTimeline,
    LinLogResponse,
    LogResponse,
    Refocuser,
    estimate_noise_rate,
    estimate_threshold,
    event_bins_between,
    isolated_event_mask,
    log_frame_chw,
    luminance,
    merge_event_stacks,
)
from .restore import depth_confidence, restore_features, restored_depth, restored_image
from .select import (
    Selection,
    dense_selection,
    event_rate_patches,
    focus_measure,
    golden_section_patches,
    uniform_selection,
)

METHODS = ("dense", "golden", "uniform", "event_rate")
MERGES = ("focus", "refocus_map", "gradient")

RefocusNet = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(log_frame [C, H, W] float32, event_bins [64, H, W] float32) -> log_image [C, H, W]."""
MergeNet = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(stack [N, C, H, W] float32 linear, event_stacks [N, H, W] float32) -> weights [N, H, W]."""


class JobError(ValueError):
    """A job the pipeline cannot process (wrong shapes, dtypes or lens samples)."""


@dataclass
class PipelineConfig:
    method: str = "dense"
    """dense | golden (the paper's patch search) | uniform | event_rate (baselines)."""
    n_bins: int = 64
    """Time bins of the event stack over the sweep (refocus resolution of the dense method)."""
    patch_grid: int = 8
    """Patches per side for golden / event_rate (8 -> the paper's 64 patches)."""
    merge: str = "refocus_map"
    """refocus_map (each pixel at its own time) | focus (soft focus-measure weights) | gradient;
    refocus_map is ahead of focus in all 7 families of bench-quality's matrix, +0.15 dB mean."""
    threshold: float | None = None
    """Contrast threshold; None estimates it from the job."""
    confidence_min: float = 0.15
    """Depth is NaN where the selection's confidence is below this."""
    response: LogResponse | LinLogResponse = DEFAULT_RESPONSE
    """The event sensor's log response (the frame is mapped through it before adding events)."""
    colour: str = "line"
    """Refocused luminance -> colour: "line" (local colour lines) or "gain" (luminance ratio)."""
    event_filter_us: float = 3000.0
    """Drop events with no neighbour (3 x 3 pixels, about +-this many us) before refocusing; 0
    keeps every event. Shot-noise and leak events are isolated; edges fire in bursts."""
    event_filter_sweep_fraction: float = 0.03
    """The filter's window is at least this fraction of the sweep: defocus events spread in time
    with the sweep's duration (3 ms of a 0.1 s sweep, 15 ms of a 0.5 s one); 0 = fixed window."""
    threshold_probe_times: int = 32
    """Times of the first, coarse refocus map that the threshold estimate relies on."""
    n_uniform: int = 64
    dense_times: int | None = None
    """Evaluate the dense focus measure at this many bin edges (None: all)."""
    focus_window: int = 9
    """Window of the focus measure that weighs images in the focus merge."""
    map_window: int = 15
    """Window of the focus measure that gives the refocus map and depth."""
    focus_presmooth: float = 1.0
    focus_power: float = 4.0
    smooth_sigma: float = 2.0
    golden_stop_events: float = 1000
    golden_min_events: float = 2000
    refocus_net: RefocusNet | None = None
    merge_net: MergeNet | None = None
    net_event_bins: int = 64
    restore_net: Callable[[np.ndarray], np.ndarray] | None = None
    """Single-pass learned path: core.restore features [C,H,W] -> corrected log-response RGB
    [3,H,W], applied to the classical refocus-map image (InferenceBackend.restore)."""
    shrink_window: int = 7
    """Refocus-map and focus merges: window of the local Wiener shrinkage of each pixel's change
    from the frame against the events' noise (merge.wiener_shrink); 0 = off."""
    noise_aware: bool = True
    """Estimate the rate of noise events that pass the event filter (refocus.estimate_noise_rate)
    and discount the error they add far from the frame (focus measure, shrinkage)."""
    event_timing: bool = True
    """Refocus-map merge: read each pixel's level between events from their timing
    (refocus.EventTimeline) rather than the binned step function."""

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        if self.merge not in MERGES:
            raise ValueError(f"unknown merge {self.merge!r}; expected one of {MERGES}")
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {self.n_bins}")
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"threshold must be positive, got {self.threshold}")


def validate_job(job: SweepJob) -> None:
    frame = np.asarray(job.frame)
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
        raise JobError(f"frame must be H x W or H x W x 3, got shape {frame.shape}")
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise JobError(f"frame too small: {frame.shape}")
    ev = job.events
    if getattr(ev, "dtype", None) is None or ev.dtype.names is None or \
            not {"t", "x", "y", "p"} <= set(ev.dtype.names):
        raise JobError(f"events must be EVENT_DTYPE, got {getattr(ev, 'dtype', type(ev))}")
    ft = np.asarray(job.focus_t)
    fd = np.asarray(job.focus_dpt)
    if ft.ndim != 1 or ft.size < 2 or ft.shape != fd.shape:
        raise JobError(f"focus_t / focus_dpt must be equal 1-D arrays of >= 2 samples, got "
                       f"{ft.shape} and {fd.shape}")
    if not np.all(np.diff(ft) > 0):
        raise JobError("focus_t must be strictly increasing")


def event_filter_window_us(config: PipelineConfig, job: SweepJob) -> float:
    """The isolated-event filter's window for a job: event_filter_us, or the sweep fraction
    when longer; 0 when the filter is off."""
    if config.event_filter_us <= 0:
        return 0.0
    t0, t1 = job.sweep_span_s
    return max(float(config.event_filter_us), config.event_filter_sweep_fraction * (t1 - t0) * 1e6)


def _ms(t0: float) -> float:
    return 1000.0 * (time.perf_counter() - t0)


def select(refocuser: Refocuser, events: np.ndarray, config: PipelineConfig) -> Selection:
    c = config
    if c.method == "dense":
        return dense_selection(refocuser, c.dense_times, c.focus_window, c.focus_presmooth,
                               c.smooth_sigma, map_window=c.map_window)
    if c.method == "uniform":
        return uniform_selection(refocuser, c.n_uniform, c.focus_window, c.focus_presmooth,
                                 c.smooth_sigma, map_window=c.map_window)
    if c.method == "golden":
        return golden_section_patches(refocuser, events, c.patch_grid, c.golden_stop_events,
                                      c.golden_min_events)
    return event_rate_patches(refocuser, events, c.patch_grid,
                              min_events=c.golden_min_events)


def _net_stack(refocuser: Refocuser, job: SweepJob, events: np.ndarray, times_s: np.ndarray,
               config: PipelineConfig) -> np.ndarray:
    """[N, C, H, W] linear images at the chosen times, from the refocus net when there is one."""
    h, w = job.height, job.width
    if config.refocus_net is None:
        imgs = list(refocuser.colour(refocuser.luminances(times_s)))
    else:
        log_frame = log_frame_chw(job.frame, refocuser.response)
        imgs = []
        for t in times_s:
            bins = event_bins_between(events, 0.0, float(t) * 1e6, config.net_event_bins, h, w)
            out = np.asarray(config.refocus_net(log_frame, bins), dtype=np.float32)
            if out.shape != log_frame.shape:
                raise ValueError(f"refocus_net returned shape {out.shape}, expected {log_frame.shape}")
            lin = np.clip(refocuser.response.inverse(out), 0.0, 1.0)
            imgs.append(lin[0] if job.frame.ndim == 2 else np.transpose(lin, (1, 2, 0)))
    stack = np.stack(imgs)
    return stack[:, None] if stack.ndim == 3 else np.transpose(stack, (0, 3, 1, 2))


def run_pipeline(job: SweepJob, config: PipelineConfig | None = None) -> SweepResult:
    """The all-in-focus image, refocus map (s), depth (m, NaN where unknown) of one job."""
    return run_pipeline_with_info(job, config)[0]


def run_pipeline_with_info(job: SweepJob, config: PipelineConfig | None = None,
                           refocus_map: np.ndarray | None = None) -> tuple[SweepResult, dict]:
    """run_pipeline, plus what it decided: threshold (and whether it was estimated), times.

    A given `refocus_map` ([H, W] s) replaces the selection (confidence 1 everywhere): every
    stage before and after runs as usual, so with the true-depth times this is what a perfect
    selection would give (bench-quality's oracle row). It needs the refocus-map merge, no nets."""
    config = config or PipelineConfig()
    if not job.registered:
        # another camera's frame: run in the event sensor's pixels, carry the result back
        if refocus_map is not None:
            raise ValueError("a given refocus_map needs a pixel-registered job")
        from .registration import event_geometry_job, result_in_frame_pixels

        t = time.perf_counter()
        in_events = event_geometry_job(job)
        result, info = run_pipeline_with_info(in_events, config)
        result = result_in_frame_pixels(result, job, in_events.frame)
        result.timings_ms["registration"] = _ms(t) - result.timings_ms.get("total", 0.0)
        return result, info
    validate_job(job)
    if refocus_map is not None and (config.merge != "refocus_map" or config.refocus_net is not None
                                    or config.merge_net is not None):
        raise ValueError("a given refocus_map needs merge='refocus_map' and no nets")
    if config.restore_net is not None and (config.merge != "refocus_map" or config.refocus_net is not None
                                           or config.merge_net is not None):
        raise ValueError("restore_net corrects the classical refocus-map image: it needs "
                         "merge='refocus_map' and no refocus/merge nets")
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    frame = np.asarray(job.frame, dtype=np.float32)
    h, w = frame.shape[:2]

    t = time.perf_counter()
    events = job.events
    n_removed = 0
    filter_us = event_filter_window_us(config, job)
    if filter_us > 0 and len(events):
        events = events[~isolated_event_mask(events, h, w, filter_us)]
        n_removed = len(job.events) - len(events)
    timings["filter"] = _ms(t)
    t = time.perf_counter()
    stack = EventStack(events, h, w, job.sweep_span_s, config.n_bins)
    timings["stack"] = _ms(t)

    t = time.perf_counter()
    estimated = False
    if config.threshold is None:
        # A cheap first refocus map at the default threshold says where each part of the image
        # is in focus (the argmax barely depends on c); the threshold fit needs only that.
        first = dense_selection(Refocuser(frame, stack, DEFAULT_THRESHOLD, config.response, "gain"),
                                config.threshold_probe_times, config.focus_window,
                                config.focus_presmooth, config.smooth_sigma,
                                map_window=config.focus_window)
        threshold, estimated = estimate_threshold(
            stack, config.response.forward(luminance(frame)), job.focus_at, first.refocus_map,
            first.confidence > config.confidence_min)
    else:
        threshold = float(config.threshold)
    noise_rate = 0.0
    if config.noise_aware and filter_us > 0:
        span = stack.span_s
        noise_rate = estimate_noise_rate(n_removed, h * w, span[1] - span[0], filter_us)
    refocuser = Refocuser(frame, stack, threshold, config.response, config.colour,
                          noise_rate_hz=noise_rate)
    timings["threshold"] = _ms(t)

    t = time.perf_counter()
    if refocus_map is None:
        sel = select(refocuser, events, config)
    else:
        given = np.asarray(refocus_map, dtype=np.float32)
        sel = Selection(times_s=np.zeros(0), refocus_map=given, confidence=np.ones_like(given))
    timings["select"] = _ms(t)

    times = np.asarray(sel.times_s, dtype=np.float64)
    learned_depth = learned_confidence = None
    if config.refocus_net is not None or config.merge_net is not None:
        t = time.perf_counter()
        images = _net_stack(refocuser, job, events, times, config)
        timings["refocus"] = _ms(t)
        t = time.perf_counter()
        if config.merge_net is not None:
            ev_stacks = merge_event_stacks(events, times * 1e6, h, w,
                                           (stack.span_s[0] * 1e6, stack.span_s[1] * 1e6))
            weights = np.asarray(config.merge_net(images, ev_stacks), dtype=np.float32)
            if weights.shape != (times.size, h, w):
                raise ValueError(f"merge_net returned shape {weights.shape}, expected "
                                 f"{(times.size, h, w)}")
        else:
            lum = images[:, 0] if images.shape[1] == 1 else \
                np.einsum("nchw,c->nhw", images, np.array([0.2126, 0.7152, 0.0722], np.float32))
            weights = focus_weights(focus_measure(lum, config.focus_window, config.focus_presmooth),
                                    config.focus_power)
        aif = merge_stack(images, weights)
        timings["merge"] = _ms(t)
    else:
        t = time.perf_counter()
        if config.merge == "refocus_map":
            if config.event_timing:
                refocuser.timeline = EventTimeline(events, h, w, (stack.span_s[0] * 1e6,
                                                                  stack.span_s[1] * 1e6))
            aif = merge_refocus_map(refocuser, sel.refocus_map, config.shrink_window)
        else:
            lums, counts = sel.lums, None
            if lums is None:
                times = np.unique(times)
                counts = refocuser.stack.counts_at(times)
                lums = refocuser.luminance_from_counts(counts)
            if config.merge == "gradient":
                aif, _ = merge_gradient(refocuser, lums)
            else:
                focus = sel.focus if sel.lums is not None else None
                aif, _ = merge_focus(refocuser, lums, focus, config.focus_power,
                                     config.focus_window, config.focus_presmooth, counts,
                                     config.shrink_window, times)
        timings["merge"] = _ms(t)
        if config.restore_net is not None:
            t = time.perf_counter()
            features = restore_features(frame, aif, sel.refocus_map, sel.confidence, events,
                                        job.focus_t, job.focus_dpt, config.response)
            restored = np.asarray(config.restore_net(features), dtype=np.float32)
            if restored.shape[0] not in (3, 4, 5) or restored.shape[1:] != (h, w):
                raise ValueError(f"restore_net returned shape {restored.shape}, "
                                 f"expected (3, 4 or 5, {h}, {w})")
            aif = restored_image(restored, frame, config.response)
            if restored.shape[0] >= 4:
                learned_depth, learned_map = restored_depth(restored[3], aif, job.focus_t, job.focus_dpt)
            if restored.shape[0] == 5:
                learned_confidence = depth_confidence(restored[4])
            timings["restore"] = _ms(t)

    t = time.perf_counter()
    if learned_depth is None:
        depth = depth_from_refocus_map(sel.refocus_map, job.focus_t, job.focus_dpt, sel.confidence,
                                       config.confidence_min)
    else:
        depth = learned_depth
        sel = replace(sel, refocus_map=learned_map, confidence=sel.confidence if learned_confidence is None
                      else learned_confidence)
    timings["depth"] = _ms(t)
    timings["total"] = _ms(t_all)
    result = SweepResult(all_in_focus=aif.astype(np.float32),
                         refocus_map=sel.refocus_map.astype(np.float32), depth=depth,
                         confidence=sel.confidence.astype(np.float32), timings_ms=timings)
    info = {"threshold": threshold, "threshold_estimated": estimated, "noise_rate_hz": noise_rate,
            "event_filter_us": filter_us, "times_s": times,
            "n_events": stack.n_events, "patch_times_s": sel.patch_times_s}
    return result, info


def warm_up() -> None:
    """Compile (or load from numba's disk cache) the pipeline's kernels now, not in a first job."""
    stack = np.zeros((1, 8, 8), np.float32)
    focus_measure(stack, 3, 1.0, stack)  # gradient energy and box mean (one specialisation each)
    events = np.zeros(2, EVENT_DTYPE)
    events["t"], events["p"] = (0, 1), 1
    event_bins_between(events, 0, 2, 2, 8, 8)
