"""Event-based refocusing (Equation 5 of the paper): the frame's log intensity plus the signed
event count between the frame time and any other time of the sweep.

The events of a job are binned once into per-pixel signed counts over T time bins and summed
cumulatively, so the signed count from the frame time to ANY bin edge is one subtraction, and a
stack of K refocused images is one gather plus one exp. Time 0 (the frame) is always a bin edge,
so refocusing back to the frame is exact.

The sensor sees luminance, so one per-pixel gain (from the luminance change) scales R, G and B.
Intensities are handled as `L + eps` throughout: `log(L + eps)` is the sensor's log response with
a linear region below `eps` (v2e-style sensors are linear in the dark), and the refocused colour
is `(rgb + eps) * gain - eps`, which keeps the luminance of the result consistent for any eps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LUMA_WEIGHTS = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
"""Rec. 709 weights of linear RGB: the event sensor's response is close to luminance."""

DEFAULT_LOG_EPS = 0.02
"""Offset of the log response: about the sensor's linear (dark) region, as a fraction of full scale."""

DEFAULT_THRESHOLD = 0.2
"""Contrast threshold used only when the data cannot give one (no events, no texture)."""


def luminance(frame: np.ndarray) -> np.ndarray:
    """H x W float32 luminance of an H x W (mono) or H x W x 3 (RGB) linear frame."""
    frame = np.asarray(frame, dtype=np.float32)
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame @ LUMA_WEIGHTS
    raise ValueError(f"frame must be H x W or H x W x 3, got shape {frame.shape}")


def apply_gain(frame: np.ndarray, gain: np.ndarray, eps: float = DEFAULT_LOG_EPS) -> np.ndarray:
    """Scale a frame by a per-pixel luminance gain (H x W), the same for every channel, in [0, 1]."""
    frame = np.asarray(frame, dtype=np.float32)
    g = gain if frame.ndim == 2 else gain[..., None]
    out = (frame + np.float32(eps)) * g - np.float32(eps)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def _check_events(events: np.ndarray, height: int, width: int) -> None:
    if events.dtype.names is None or not {"t", "x", "y", "p"} <= set(events.dtype.names):
        raise ValueError(f"events must be EVENT_DTYPE (t, x, y, p), got dtype {events.dtype}")
    if len(events) and (int(events["x"].max()) >= width or int(events["y"].max()) >= height):
        raise ValueError(f"event coordinates exceed the {width} x {height} frame "
                         f"(max x {int(events['x'].max())}, max y {int(events['y'].max())})")


def _bin_edges_s(t0: float, t1: float, n_bins: int) -> np.ndarray:
    """Edges from t0 to t1 (s), about (t1 - t0) / n_bins apart, with 0 exactly on an edge."""
    t0, t1 = min(t0, 0.0), max(t1, 0.0)
    if t1 <= t0:
        return np.array([0.0])
    width = (t1 - t0) / max(int(n_bins), 1)
    inner = width * np.arange(np.ceil(t0 / width), np.floor(t1 / width) + 1)
    edges = np.unique(np.concatenate([[t0], inner, [t1]]))
    # End bins shorter than a quarter bin only add noise to the time grid: merge them inward.
    keep = np.ones(edges.size, dtype=bool)
    if edges.size > 2 and edges[1] - edges[0] < 0.25 * width and edges[1] != 0.0:
        keep[1] = False
    if edges.size > 2 and edges[-1] - edges[-2] < 0.25 * width and edges[-2] != 0.0:
        keep[-2] = False
    return edges[keep]


class EventStack:
    """Per-pixel cumulative signed event counts at bin edges spanning a sweep.

    `cum[k, y, x]` = sum of polarities of the pixel's events with edges[0] <= t < edges[k];
    `origin` is the index of the edge at t = 0 (the frame). Events outside the span are ignored.
    """

    def __init__(self, events: np.ndarray, height: int, width: int, span_s: tuple[float, float],
                 n_bins: int = 128, max_block_elems: int = 1 << 23):
        _check_events(events, height, width)
        self.height, self.width = int(height), int(width)
        self.edges_s = _bin_edges_s(float(span_s[0]), float(span_s[1]), n_bins)
        self.origin = int(np.flatnonzero(self.edges_s == 0.0)[0])
        hw = self.height * self.width
        n_edges = self.edges_s.size
        edges_us = self.edges_s * 1e6
        t = events["t"]
        inside = (t >= edges_us[0]) & (t < edges_us[-1])
        if not inside.all():
            events = events[inside]
            t = events["t"]
        self.n_events = int(len(events))
        pix = events["y"].astype(np.int64) * self.width + events["x"].astype(np.int64)
        self.abs_count = np.bincount(pix, minlength=hw).reshape(self.height, self.width)
        """Per-pixel number of events in the span (texture/activity measure)."""
        dtype = np.int16 if self.abs_count.max(initial=0) < np.iinfo(np.int16).max else np.int32
        bins = np.searchsorted(edges_us, t, side="right") - 1
        if np.any(bins[1:] < bins[:-1]):  # unsorted input: group the events bin by bin
            order = np.argsort(bins, kind="stable")
            bins, pix, pol = bins[order], pix[order], events["p"][order]
        else:
            pol = events["p"]
        self.cum = np.zeros((n_edges, self.height, self.width), dtype=dtype)
        counts = self.cum.reshape(n_edges, hw)
        # Bin blocks keep the float64 bincount scratch small for large frames.
        block = max(1, max_block_elems // hw)
        for b0 in range(0, n_edges - 1, block):
            b1 = min(b0 + block, n_edges - 1)
            lo, hi = np.searchsorted(bins, [b0, b1])
            flat = (bins[lo:hi] - b0) * hw + pix[lo:hi]
            part = np.bincount(flat, weights=pol[lo:hi], minlength=(b1 - b0) * hw)
            counts[b0 + 1:b1 + 1] = part.reshape(b1 - b0, hw)
        np.cumsum(self.cum, axis=0, out=self.cum)

    @property
    def span_s(self) -> tuple[float, float]:
        return float(self.edges_s[0]), float(self.edges_s[-1])

    @property
    def times_s(self) -> np.ndarray:
        """The bin edges (s), the times at which refocusing needs no interpolation."""
        return self.edges_s

    def _edge_position(self, times_s) -> tuple[np.ndarray, np.ndarray]:
        t = np.clip(np.asarray(times_s, dtype=np.float64), self.edges_s[0], self.edges_s[-1])
        i = np.clip(np.searchsorted(self.edges_s, t, side="right") - 1, 0, self.edges_s.size - 2)
        if self.edges_s.size == 1:
            return np.zeros_like(i), np.zeros_like(t)
        frac = (t - self.edges_s[i]) / (self.edges_s[i + 1] - self.edges_s[i])
        return i, frac

    def counts_at_edges(self, edge_index) -> np.ndarray:
        """[K, H, W] signed event sums from the frame time to the given bin edges (exact)."""
        idx = np.asarray(edge_index, dtype=np.int64)
        return (self.cum[idx].astype(np.float32) - self.cum[self.origin].astype(np.float32))

    def counts_at(self, times_s) -> np.ndarray:
        """[K, H, W] signed event sums from the frame time to each time (s), for all pixels.

        Between bin edges the sum is interpolated linearly in time (events spread evenly within a
        bin); at edges it is exact.
        """
        times = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
        i, frac = self._edge_position(times)
        if self.edges_s.size == 1:
            return np.zeros((times.size, self.height, self.width), np.float32)
        lo = self.cum[i].astype(np.float32)
        hi = self.cum[i + 1].astype(np.float32)
        f = frac.astype(np.float32)[:, None, None]
        return lo + f * (hi - lo) - self.cum[self.origin].astype(np.float32)

    def counts_at_pixel_times(self, time_map_s: np.ndarray) -> np.ndarray:
        """[H, W] signed event sum from the frame time to each pixel's own time (s)."""
        tm = np.asarray(time_map_s, dtype=np.float64)
        if tm.shape != (self.height, self.width):
            raise ValueError(f"time map shape {tm.shape} != frame {(self.height, self.width)}")
        if self.edges_s.size == 1:
            return np.zeros(tm.shape, np.float32)
        i, frac = self._edge_position(tm.ravel())
        flat = self.cum.reshape(self.cum.shape[0], -1)
        cols = np.arange(flat.shape[1])
        lo = flat[i, cols].astype(np.float32)
        hi = flat[i + 1, cols].astype(np.float32)
        out = lo + frac.astype(np.float32) * (hi - lo) - flat[self.origin].astype(np.float32)
        return out.reshape(tm.shape)


def log_response(lum: np.ndarray, eps: float = DEFAULT_LOG_EPS) -> np.ndarray:
    """The sensor's log response to linear luminance, log(L + eps)."""
    return np.log(np.maximum(lum, 0.0) + np.float32(eps)).astype(np.float32)


@dataclass
class Refocuser:
    """A frame, its event stack and a contrast threshold: refocused luminance at any time."""

    frame: np.ndarray
    stack: EventStack
    threshold: float
    eps: float = DEFAULT_LOG_EPS

    def __post_init__(self):
        self.lum = luminance(self.frame)
        self.base = self.lum + np.float32(self.eps)  # L + eps at the frame time

    def gains(self, times_s) -> np.ndarray:
        """[K, H, W] luminance gains (L(t) + eps) / (L(0) + eps) at the given times."""
        return np.exp(np.float32(self.threshold) * self.stack.counts_at(times_s))

    def gains_at_edges(self, edge_index) -> np.ndarray:
        return np.exp(np.float32(self.threshold) * self.stack.counts_at_edges(edge_index))

    def gain_at_pixel_times(self, time_map_s: np.ndarray) -> np.ndarray:
        return np.exp(np.float32(self.threshold) * self.stack.counts_at_pixel_times(time_map_s))

    def luminance_from_gains(self, gains: np.ndarray) -> np.ndarray:
        """Refocused linear luminance for gains of shape [..., H, W] (clipped to [0, 1])."""
        return np.clip(self.base * gains - np.float32(self.eps), 0.0, 1.0)

    def luminances(self, times_s) -> np.ndarray:
        """[K, H, W] refocused linear luminance at the given times."""
        return self.luminance_from_gains(self.gains(times_s))

    def image(self, time_s: float) -> np.ndarray:
        """The frame refocused to one time, same layout as the frame."""
        return apply_gain(self.frame, self.gains([time_s])[0], self.eps)

    def image_at_pixel_times(self, time_map_s: np.ndarray) -> np.ndarray:
        """Every pixel refocused to its own time (a refocus map), same layout as the frame."""
        return apply_gain(self.frame, self.gain_at_pixel_times(time_map_s), self.eps)


def estimate_threshold(stack: EventStack, lum: np.ndarray, eps: float = DEFAULT_LOG_EPS,
                       c_range: tuple[float, float] = (0.01, 2.0),
                       fallback: float = DEFAULT_THRESHOLD) -> tuple[float, bool]:
    """Contrast threshold c from one frame and its sweep, by conservation of light.

    Defocus only redistributes light, so a large region's total linear intensity is the same at
    every focus setting. Refocused with c, the image total at time t is
    f_t(c) = sum (L0 + eps) exp(c S_t), S_t = signed event count from the frame to t.
    f_t(0) = f_t(c_true) = sum (L0 + eps), and f_t is convex in c, so c_true is the one positive
    root of g(c) = sum_t (f_t(c) / f_t(0) - 1) (g < 0 below it, > 0 above). Each f_t only needs
    the L0-weighted histogram of the integer counts S_t, so the root search costs almost nothing.

    Returns (c, True) or (fallback, False) when there is no root in c_range (too few events).
    """
    base = (np.maximum(lum, 0.0) + eps).astype(np.float64).ravel()
    if stack.n_events == 0 or stack.edges_s.size < 2:
        return fallback, False
    # Every edge gives an equation; about 32 of them carry all the information there is.
    edge_idx = np.unique(np.linspace(0, stack.edges_s.size - 1, min(stack.edges_s.size, 33)).round()
                         .astype(np.int64))
    n_edges = edge_idx.size
    flat = stack.cum.reshape(stack.cum.shape[0], -1)
    counts = flat[edge_idx].astype(np.int64) - flat[stack.origin].astype(np.int64)[None, :]
    lo, hi = int(counts.min()), int(counts.max())
    if lo == hi:
        return fallback, False
    nv = hi - lo + 1
    key = (np.arange(n_edges)[:, None] * nv + (counts - lo)).ravel()
    hist = np.bincount(key, weights=np.broadcast_to(base, counts.shape).ravel(),
                       minlength=n_edges * nv).reshape(n_edges, nv)
    values = np.arange(lo, hi + 1, dtype=np.float64)
    total = base.sum()

    def g(c: float) -> float:
        return float((hist * np.exp(np.minimum(c * values, 700.0))[None, :]).sum() / total
                     - n_edges)

    a, b = c_range
    grid = np.geomspace(a, b, 48)
    vals = np.array([g(c) for c in grid])
    sign_change = np.flatnonzero((vals[:-1] < 0) & (vals[1:] >= 0))
    if vals[0] >= 0 or sign_change.size == 0:
        return fallback, False
    lo_c, hi_c = grid[sign_change[0]], grid[sign_change[0] + 1]
    for _ in range(40):
        mid = 0.5 * (lo_c + hi_c)
        if g(mid) < 0:
            lo_c = mid
        else:
            hi_c = mid
    return float(0.5 * (lo_c + hi_c)), True


def _pixel_index(events: np.ndarray, width: int) -> np.ndarray:
    return events["y"].astype(np.int64) * width + events["x"].astype(np.int64)


def event_bins_between(events: np.ndarray, t0_us: float, t1_us: float, n: int = 64,
                       height: int | None = None, width: int | None = None) -> np.ndarray:
    """The refocus net's event input: [n, H, W] float32, the events between t0 and t1 (us) in n
    bins of equal event COUNT, each the per-pixel sum of polarities.

    Bins run from t0 towards t1. When t1 < t0 (refocusing backwards) the events are taken in
    reverse time order with their polarities negated, so that in both directions the sum over
    bins is the log change from t0 to t1 in units of the threshold.
    """
    if height is None or width is None:
        raise ValueError("event_bins_between needs height and width")
    _check_events(events, height, width)
    lo, hi = (t0_us, t1_us) if t1_us >= t0_us else (t1_us, t0_us)
    t = events["t"]
    sel = events[(t >= lo) & (t < hi)]
    sel = sel[np.argsort(sel["t"], kind="stable")]
    sign = 1.0
    if t1_us < t0_us:
        sel, sign = sel[::-1], -1.0
    hw = height * width
    out = np.zeros(n * hw, dtype=np.float64)
    m = len(sel)
    if m:
        chunk = (np.arange(m, dtype=np.int64) * n) // m  # equal-count bins
        out = np.bincount(chunk * hw + _pixel_index(sel, width),
                          weights=sign * sel["p"].astype(np.float64), minlength=n * hw)
    return out.reshape(n, height, width).astype(np.float32)


def merge_event_stacks(events: np.ndarray, times_us, height: int, width: int,
                       span_us: tuple[float, float] | None = None, n_div: int = 64) -> np.ndarray:
    """The merge net's event input: [N, H, W] float32; slice i sums polarities over
    [t_i - d, t_i + d] with d = (t_max - t_min) / n_div (span_us, default the events' span)."""
    _check_events(events, height, width)
    times = np.atleast_1d(np.asarray(times_us, dtype=np.float64))
    hw = height * width
    if len(events) == 0:
        return np.zeros((times.size, height, width), np.float32)
    order = np.argsort(events["t"], kind="stable")
    ev = events[order]
    t = ev["t"]
    if span_us is None:
        span_us = (float(t[0]), float(t[-1]))
    d = (span_us[1] - span_us[0]) / n_div
    starts = np.searchsorted(t, times - d, side="left")
    stops = np.searchsorted(t, times + d, side="right")
    lengths = stops - starts
    total = int(lengths.sum())
    # Concatenated index ranges [start_i, stop_i) without a Python loop.
    slice_id = np.repeat(np.arange(times.size), lengths)
    offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    idx = np.repeat(starts, lengths) + offsets
    out = np.bincount(slice_id * hw + _pixel_index(ev[idx], width),
                      weights=ev["p"][idx].astype(np.float64), minlength=times.size * hw)
    return out.reshape(times.size, height, width).astype(np.float32)


def log_frame_chw(frame: np.ndarray, eps: float = DEFAULT_LOG_EPS) -> np.ndarray:
    """The refocus net's image input: log(frame + eps) as [C, H, W] float32 (C = 1 or 3)."""
    frame = np.asarray(frame, dtype=np.float32)
    chw = frame[None] if frame.ndim == 2 else np.transpose(frame, (2, 0, 1))
    return np.log(np.maximum(chw, 0.0) + np.float32(eps)).astype(np.float32)
