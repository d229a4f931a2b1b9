"""Refocus-time selection: which time of the sweep each part of the image is sharpest at.

- `golden_section_patches`: the paper's Algorithm 1, a golden-section search over the event
  index per patch maximising the variance of the refocused patch, run for all patches at once.
- `dense_selection`: a focus measure at every bin edge, argmax per pixel with parabolic sub-bin
  refinement, a per-pixel confidence, and a confidence-weighted smoothing of the refocus map.
- Baselines: `uniform_times`, and `event_rate_patches` (time of maximum event rate per patch,
  the autofocus criterion of Lin et al., CVPR 2022).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .refocus import Refocuser, pipeline_kernels

GOLDEN = 1.618
"""The paper's phi; brackets shrink by 1/phi per step."""


@dataclass
class Selection:
    times_s: np.ndarray
    """[K] refocus times whose images the merge combines."""
    refocus_map: np.ndarray
    """[H, W] float32 seconds: the time each pixel is judged sharpest at."""
    confidence: np.ndarray
    """[H, W] float32 in [0, 1]: how much the refocus map can be trusted (0 = no texture)."""
    lums: np.ndarray | None = None
    """[K, H, W] refocused luminance at times_s, when the selection already computed it."""
    focus: np.ndarray | None = None
    """[K, H, W] focus measure at times_s, when computed."""
    patch_times_s: np.ndarray | None = None
    """[G, G] chosen time per patch for the patch methods."""


def patch_grid(height: int, width: int, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column boundaries of a grid x grid patch split, and the [H, W] patch id map."""
    grid = max(1, min(int(grid), height, width))
    rows = np.linspace(0, height, grid + 1).round().astype(np.int64)
    cols = np.linspace(0, width, grid + 1).round().astype(np.int64)
    prow = np.searchsorted(rows, np.arange(height), side="right") - 1
    pcol = np.searchsorted(cols, np.arange(width), side="right") - 1
    return rows, cols, (prow[:, None] * grid + pcol[None, :]).astype(np.int64)


def gradient_energy(lum: np.ndarray, presmooth: float = 0.0,
                    noise_var: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel squared gradient of each image of a [K, H, W] stack (central differences,
    edge-replicated), before any window.

    `presmooth` > 0 first blurs each image with a Gaussian of that sigma, which keeps event
    noise from looking like texture. With `noise_var` (per-pixel variance of independent noise
    in each image, e.g. event quantisation) the energy that noise adds on average is
    subtracted, so that a noisy refocused image does not beat an equally sharp but clean one
    (the frame itself).
    """
    x = np.asarray(lum, dtype=np.float32)
    # Var of a central difference of white noise is twice the pixel variance, per axis;
    # a Gaussian presmooth of sigma s scales white-noise variance by 1 / (4 pi s^2).
    gain = np.float32(4.0 if presmooth <= 0 else 4.0 / (4.0 * np.pi * presmooth**2))
    kernel = pipeline_kernels()
    weights = _gaussian_weights(presmooth)
    if (kernel is not None and x.ndim == 3 and weights.size // 2 < min(x.shape[1:])
            and (noise_var is None or np.shape(noise_var) == x.shape)):
        noise = x if noise_var is None else np.asarray(noise_var, dtype=np.float32)
        with _KERNEL_LOCK:  # numba's default threading layer takes one caller at a time
            return kernel.gradient_energy_stack(x, weights, gain, noise, noise_var is not None,
                                                np.empty_like(x))
    if presmooth > 0:
        x = ndimage.gaussian_filter(x, (0, presmooth, presmooth), truncate=3.0)
    energy = _squared_central_difference(x, axis=2)
    energy += _squared_central_difference(x, axis=1)
    if noise_var is not None:
        energy -= gain * noise_var
    return energy


def _gaussian_weights(sigma: float) -> np.ndarray:
    """scipy's gaussian_filter1d weights for truncate=3 ([1.0] for no smoothing)."""
    if sigma <= 0:
        return np.ones(1)
    radius = int(3.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    return phi / phi.sum()


def _squared_central_difference(x: np.ndarray, axis: int) -> np.ndarray:
    """(x[i+1] - x[i-1])^2 along an axis, edges replicated; one new array, no padded copy (at
    1280x720 the stack is hundreds of MB, so temporaries cost more than arithmetic)."""
    out = np.empty_like(x)
    n = x.shape[axis]

    def cut(a, start, stop):
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, stop)
        return a[tuple(index)]
    if n == 1:
        out.fill(0.0)
        return out
    np.subtract(cut(x, 2, None), cut(x, None, -2), out=cut(out, 1, -1))
    np.subtract(cut(x, 1, 2), cut(x, 0, 1), out=cut(out, 0, 1))
    np.subtract(cut(x, n - 1, n), cut(x, n - 2, n - 1), out=cut(out, n - 1, n))
    np.square(out, out=out)
    return out


def window_mean(energy: np.ndarray, window: int, floor: bool = True) -> np.ndarray:
    """Box mean over window x window of each image of a [K, H, W] stack (negative values from
    noise subtraction clipped to 0 afterwards)."""
    out = energy
    if window > 1:
        kernel = pipeline_kernels()
        if (kernel is not None and out.ndim == 3 and out.dtype == np.float32 and window % 2
                and window // 2 < min(out.shape[1:])):
            with _KERNEL_LOCK:
                return kernel.box_mean_stack(out, window, floor, np.empty_like(out))
        out = ndimage.uniform_filter1d(out, window, axis=1, mode="reflect")
        out = ndimage.uniform_filter1d(out, window, axis=2, mode="reflect")
    return np.maximum(out, 0.0) if floor else out


_KERNEL_LOCK = threading.Lock()


def focus_measure(lum: np.ndarray, window: int = 9, presmooth: float = 0.0,
                  noise_var: np.ndarray | None = None) -> np.ndarray:
    """Local gradient energy of each image of a [K, H, W] stack, averaged over window x window
    (see gradient_energy for presmooth and noise_var)."""
    return window_mean(gradient_energy(lum, presmooth, noise_var), window, noise_var is not None)


def peak_times(focus: np.ndarray, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: time of the focus-measure maximum (parabolic sub-sample refinement) and its
    prominence (max - mean) / max in [0, 1] (the mean, not the median: as telling and far cheaper)."""
    k = focus.shape[0]
    best = np.argmax(focus, axis=0)
    if k < 3:
        return np.asarray(times_s, np.float64)[best].astype(np.float32), np.zeros(best.shape, np.float32)
    inner = np.clip(best, 1, k - 2)
    fm = np.take_along_axis(focus, (inner - 1)[None], 0)[0]
    f0 = np.take_along_axis(focus, inner[None], 0)[0]
    fp = np.take_along_axis(focus, (inner + 1)[None], 0)[0]
    denom = fm - 2.0 * f0 + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(denom < 0, 0.5 * (fm - fp) / denom, 0.0)
    offset = np.clip(offset, -0.5, 0.5)
    # Peaks at the ends of the sweep are not refined (the parabola would be one-sided).
    pos = np.where(best == inner, inner + offset, best).astype(np.float64)
    peak_time = np.interp(pos, np.arange(k), np.asarray(times_s, np.float64)).astype(np.float32)
    fmax = focus.max(axis=0)
    fmean = focus.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        prom = np.where(fmax > 0, (fmax - fmean) / fmax, 0.0)
    return peak_time, prom.astype(np.float32)


def smooth_map(values: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Confidence-weighted Gaussian smoothing: sum(G * w v) / sum(G * w); unchanged where the
    neighbourhood has no weight."""
    if sigma <= 0:
        return values.astype(np.float32)
    w = weights.astype(np.float64) + 1e-9
    num = ndimage.gaussian_filter(w * values, sigma, mode="reflect")
    den = ndimage.gaussian_filter(w, sigma, mode="reflect")
    return (num / den).astype(np.float32)


def texture_confidence(focus_peak: np.ndarray, prominence: np.ndarray) -> np.ndarray:
    """Confidence in [0, 1]: prominence of the focus peak, damped where the peak itself is weak
    compared with the image's typical texture (flat regions, event noise)."""
    ref = float(np.percentile(focus_peak, 50)) + 1e-12
    strength = focus_peak / (focus_peak + 0.25 * ref)
    return np.clip(prominence * strength, 0.0, 1.0).astype(np.float32)


def stack_selection(refocuser: Refocuser, times_s: np.ndarray, counts: np.ndarray, window: int = 9,
                    presmooth: float = 1.0, smooth_sigma: float = 2.0, denoise: bool = True,
                    map_window: int = 15) -> Selection:
    """Refocus map from the focus measure of the K images refocused with the given [K, H, W]
    signed counts: per-pixel peak with sub-sample refinement, a confidence, and a
    confidence-weighted smoothing of the map.

    Two windows: `window` for the focus measure the merge weighs images by (small, so fine
    texture keeps its own time), `map_window` for the refocus map and depth (larger, so that
    a pixel next to an edge of another surface is judged by enough of its own texture)."""
    lums = refocuser.luminance_from_counts(counts)
    noise = refocuser.noise_variance(counts, lums, times_s) if denoise else None
    energy = gradient_energy(lums, presmooth, noise)
    focus = window_mean(energy, window)
    map_focus = focus if map_window == window else window_mean(energy, map_window)
    del energy
    peak, prom = peak_times(map_focus, times_s)
    conf = texture_confidence(map_focus.max(axis=0), prom)
    refocus_map = smooth_map(peak, conf * conf, smooth_sigma)
    return Selection(times_s=np.asarray(times_s, np.float64), refocus_map=refocus_map,
                     confidence=conf, lums=lums, focus=focus)


def dense_selection(refocuser: Refocuser, n_times: int | None = None, window: int = 9,
                    presmooth: float = 1.0, smooth_sigma: float = 2.0, denoise: bool = True,
                    map_window: int = 15) -> Selection:
    """The dense variant: focus measure at every bin edge of the stack (or n_times of them),
    where refocusing is exact (no interpolation)."""
    edges = refocuser.stack.times_s
    idx = np.arange(edges.size)
    if n_times is not None and n_times < edges.size:
        idx = np.unique(np.linspace(0, edges.size - 1, n_times).round().astype(np.int64))
    return stack_selection(refocuser, edges[idx], refocuser.stack.counts_at_edges(idx), window,
                           presmooth, smooth_sigma, denoise, map_window)


def uniform_selection(refocuser: Refocuser, k: int = 64, window: int = 9, presmooth: float = 1.0,
                      smooth_sigma: float = 2.0, denoise: bool = True, map_window: int = 15) -> Selection:
    """Baseline: k refocus times evenly over the sweep, judged by the same focus measure."""
    times = uniform_times(refocuser.stack.span_s, k)
    return stack_selection(refocuser, times, refocuser.stack.counts_at(times), window, presmooth,
                           smooth_sigma, denoise, map_window)


def uniform_times(span_s: tuple[float, float], k: int) -> np.ndarray:
    """k refocus times evenly over the sweep (the paper's 'uniform refocus times' ablation)."""
    return np.linspace(span_s[0], span_s[1], max(int(k), 1))


def _patch_time_histogram(events: np.ndarray, patch_id: np.ndarray, n_patches: int,
                          edges_us: np.ndarray) -> np.ndarray:
    """[P, B] event counts per patch and fine time bin."""
    t = events["t"]
    inside = (t >= edges_us[0]) & (t < edges_us[-1])
    ev = events[inside]
    pid = patch_id[ev["y"].astype(np.int64), ev["x"].astype(np.int64)]
    b = edges_us.size - 1
    tb = np.clip(np.searchsorted(edges_us, ev["t"], side="right") - 1, 0, b - 1)
    return np.bincount(pid * b + tb, minlength=n_patches * b).reshape(n_patches, b)


def _scaled_counts(n_events: int, stop_events: float, min_events: float,
                   reference_events: float) -> tuple[float, float]:
    """The paper's 1000 / 2000 event counts hold for a job of `reference_events` events (a
    256 x 256 sweep); smaller jobs scale them down so that the search still resolves time."""
    s = min(1.0, n_events / reference_events)
    return max(stop_events * s, 4.0), max(min_events * s, 16.0)


def golden_section_patches(refocuser: Refocuser, events: np.ndarray, grid: int = 8,
                           stop_events: float = 1000, min_events: float = 2000,
                           reference_events: float = 1e6, fine_bins: int = 4096,
                           max_iter: int = 60) -> Selection:
    """The paper's selection (Algorithm 1), vectorised over patches.

    Per patch, the search variable is the index of the patch's events in time order over the
    sweep; index -> time comes from a fine per-patch event-count histogram. All brackets advance
    together: each step refocuses every pixel to its own patch's new probe time (one gather from
    the prefix sums) and scores all patches with one bincount. Patches with fewer than
    `min_events` events keep the frame (time 0).
    """
    stack = refocuser.stack
    h, w = stack.height, stack.width
    rows, cols, pid = patch_grid(h, w, grid)
    n_p = (rows.size - 1) * (cols.size - 1)
    t0, t1 = stack.span_s
    fine_us = np.linspace(t0, t1, fine_bins + 1) * 1e6
    hist = _patch_time_histogram(events, pid, n_p, fine_us)
    n_ev = hist.sum(axis=1)
    stop, min_ev = _scaled_counts(int(n_ev.sum()), stop_events, min_events, reference_events)
    # Monotone concatenation of all patches' cumulative counts: index -> time for all at once.
    cum = np.concatenate([np.zeros((n_p, 1)), np.cumsum(hist, axis=1)], axis=1).astype(np.float64)
    row_off = (np.arange(n_p) * (n_ev.max() + 1.0))[:, None]
    flat_cum = (cum + row_off).ravel()
    flat_t = np.tile(fine_us / 1e6, n_p)

    def index_to_time(k: np.ndarray) -> np.ndarray:
        q = np.clip(k, 0, n_ev) + row_off[:, 0]
        pos = np.searchsorted(flat_cum, q, side="left")
        pos = np.clip(pos, 1, flat_cum.size - 1)
        c_lo, c_hi = flat_cum[pos - 1], flat_cum[pos]
        frac = np.where(c_hi > c_lo, (q - c_lo) / np.maximum(c_hi - c_lo, 1e-12), 0.0)
        return flat_t[pos - 1] + np.clip(frac, 0, 1) * (flat_t[pos] - flat_t[pos - 1])

    pid_flat = pid.ravel()
    npix = np.bincount(pid_flat, minlength=n_p).astype(np.float64)

    def sharpness(k: np.ndarray) -> np.ndarray:
        times = index_to_time(k)
        lum = refocuser.luminance_at_pixel_times(times[pid], timing=False).ravel().astype(np.float64)
        s1 = np.bincount(pid_flat, lum, n_p) / npix
        s2 = np.bincount(pid_flat, lum * lum, n_p) / npix
        return s2 - s1 * s1

    best = golden_section_max(sharpness, np.zeros(n_p), n_ev.astype(np.float64), stop, max_iter)
    ptimes = index_to_time(best)
    enough = n_ev >= min_ev
    ptimes = np.where(enough, ptimes, 0.0)
    return _patch_selection(refocuser, ptimes, enough, pid, rows.size - 1)


def golden_section_max(score, lo: np.ndarray, hi: np.ndarray, stop: float | np.ndarray,
                       max_iter: int = 60) -> np.ndarray:
    """Golden-section search for the maximum of many unimodal functions at once.

    score(x) takes one abscissa per problem (shape of lo) and returns one value per problem.
    Every step shrinks each active bracket by 1/phi and needs one new probe per problem, so
    all problems share one score call per step; a problem stops once its bracket is narrower
    than `stop` (per problem or shared). Returns the better interior probe of each bracket.
    """
    a = np.asarray(lo, dtype=np.float64).copy()
    b = np.asarray(hi, dtype=np.float64).copy()
    x1 = b - (b - a) / GOLDEN
    x2 = a + (b - a) / GOLDEN
    f1, f2 = score(x1), score(x2)
    for _ in range(max_iter):
        active = (b - a) >= stop
        if not active.any():
            break
        left = active & (f1 > f2)  # the maximum is in [a, x2]
        right = active & ~(f1 > f2)  # the maximum is in [x1, b]
        b = np.where(left, x2, b)
        a = np.where(right, x1, a)
        new_x1, new_x2, new_f1, new_f2 = x1.copy(), x2.copy(), f1.copy(), f2.copy()
        new_x2[left], new_f2[left] = x1[left], f1[left]
        new_x1[left] = (b - (b - a) / GOLDEN)[left]
        new_x1[right], new_f1[right] = x2[right], f2[right]
        new_x2[right] = (a + (b - a) / GOLDEN)[right]
        f_probe = score(np.where(left, new_x1, new_x2))
        new_f1[left] = f_probe[left]
        new_f2[right] = f_probe[right]
        x1, x2, f1, f2 = new_x1, new_x2, new_f1, new_f2
    return np.where(f1 > f2, x1, x2)


def event_rate_patches(refocuser: Refocuser, events: np.ndarray, grid: int = 8,
                       smooth_bins: int = 3, min_events: float = 2000,
                       reference_events: float = 1e6) -> Selection:
    """Event-rate autofocus per patch (Lin et al. 2022): the time of the patch's maximum event
    rate, over the stack's bins lightly smoothed in time. Sparse patches keep the frame."""
    stack = refocuser.stack
    rows, cols, pid = patch_grid(stack.height, stack.width, grid)
    n_p = (rows.size - 1) * (cols.size - 1)
    edges = stack.times_s
    hist = _patch_time_histogram(events, pid, n_p, edges * 1e6).astype(np.float64)
    rate = hist / np.diff(edges)[None, :]
    if smooth_bins > 1:
        rate = ndimage.uniform_filter1d(rate, smooth_bins, axis=1, mode="nearest")
    centers = 0.5 * (edges[:-1] + edges[1:])
    ptimes = centers[np.argmax(rate, axis=1)]
    _, min_ev = _scaled_counts(int(hist.sum()), 1000, min_events, reference_events)
    enough = hist.sum(axis=1) >= min_ev
    ptimes = np.where(enough, ptimes, 0.0)
    return _patch_selection(refocuser, ptimes, enough, pid, rows.size - 1)


def _patch_selection(refocuser: Refocuser, ptimes: np.ndarray, enough: np.ndarray,
                     pid: np.ndarray, grid: int) -> Selection:
    """Selection from per-patch times: the refocus map is piecewise constant per patch and the
    confidence is the local event activity (zero in patches that kept the frame)."""
    activity = ndimage.uniform_filter(refocuser.stack.abs_count.astype(np.float32), 9)
    ref = float(np.mean(activity)) + 1e-6
    conf = (activity / (activity + 0.5 * ref)) * enough[pid]
    return Selection(times_s=ptimes.astype(np.float64), refocus_map=ptimes[pid].astype(np.float32),
                     confidence=conf.astype(np.float32),
                     patch_times_s=ptimes.reshape(grid, -1))
