"""The naive focal-stack reference: the floor every all-in-focus method must clear.

Fixed by issue 11 exactly, so that it means the same in every table: Equation 5 with a constant
threshold c = 0.2 on the frame's luminance; 32 refocused images at uniform times across the
sweep, colour scaled by the luminance ratio; focus energy of each image = squared Laplacian of
its luminance pre-smoothed with a Gaussian of sigma 1.5, then Gaussian-averaged with sigma 3;
per-pixel merge weights softmax(12 E_k / max_k E_k); refocus time = the same soft argmax over
the 32 times; depth = 1 / vergence(time), NaN where max_k E_k < 2e-5. Nothing is estimated or
adapted, so it cannot be tuned.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .job import SweepJob, SweepResult
from .refocus import apply_gain, luminance


@dataclass(frozen=True)
class NaiveConfig:
    threshold: float = 0.2
    n_slices: int = 32
    log_sigma: float = 1.5
    energy_sigma: float = 3.0
    softmax_gain: float = 12.0
    min_energy: float = 2e-5
    eps: float = 1.0 / 255.0
    """Floor of the luminance ratio (one 8-bit step), so black frame pixels can brighten."""


def signed_counts_at(events: np.ndarray, height: int, width: int, times_us: np.ndarray) -> np.ndarray:
    """[K, H, W] float32: per pixel the sum of polarities from the frame time (0) to each time,
    exactly (events strictly between, negated for times before the frame)."""
    times_us = np.asarray(times_us, dtype=np.float64)
    edges = np.unique(np.concatenate([times_us, [0.0]]))
    t = events["t"].astype(np.float64)
    inside = (t >= edges[0]) & (t < edges[-1])
    ev = events[inside]
    hw = height * width
    n_bins = edges.size - 1
    out = np.zeros((edges.size, hw), np.float32)
    if n_bins and len(ev):
        b = np.searchsorted(edges, ev["t"].astype(np.float64), side="right") - 1
        pix = ev["y"].astype(np.int64) * width + ev["x"].astype(np.int64)
        hist = np.bincount(b * hw + pix, weights=ev["p"].astype(np.float64), minlength=n_bins * hw)
        out[1:] = np.cumsum(hist.reshape(n_bins, hw), axis=0)
    origin = int(np.searchsorted(edges, 0.0))
    out -= out[origin]
    rows = np.searchsorted(edges, times_us)
    return out[rows].reshape(times_us.size, height, width)


def naive_stack(job: SweepJob, config: NaiveConfig | None = None) -> SweepResult:
    """The naive reference of one job (see the module doc)."""
    c = config or NaiveConfig()
    t_start = time.perf_counter()
    frame = np.asarray(job.frame, dtype=np.float32)
    h, w = frame.shape[:2]
    t0, t1 = job.sweep_span_s
    times = np.linspace(t0, t1, c.n_slices)
    counts = signed_counts_at(job.events, h, w, times * 1e6)
    gain = np.exp(np.float32(c.threshold) * counts)
    lum0 = luminance(frame)
    lums = np.clip((lum0 + np.float32(c.eps)) * gain - np.float32(c.eps), 0.0, 1.0)
    # the Laplacian over the two image axes only (ndimage.gaussian_laplace would add a second
    # derivative across the slices too)
    sigma = (0.0, c.log_sigma, c.log_sigma)
    laplacian = ndimage.gaussian_filter(lums, sigma, order=(0, 2, 0))
    laplacian += ndimage.gaussian_filter(lums, sigma, order=(0, 0, 2))
    energy = laplacian ** 2
    energy = ndimage.gaussian_filter(energy, (0, c.energy_sigma, c.energy_sigma))
    e_max = energy.max(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        logits = np.where(e_max > 0, c.softmax_gain * energy / e_max, 0.0)
    weights = np.exp(logits - logits.max(axis=0))
    weights /= weights.sum(axis=0)
    aif = np.einsum("khw,khw->hw", weights, lums)
    # colour by the luminance ratio of the merged luminance, as each slice was coloured
    aif = apply_gain(frame, (aif + np.float32(c.eps)) / (lum0 + np.float32(c.eps)), c.eps)
    refocus_map = np.einsum("khw,k->hw", weights, times.astype(np.float32))
    vergence = np.interp(refocus_map, job.focus_t, job.focus_dpt)
    textured = e_max >= c.min_energy
    with np.errstate(divide="ignore"):
        depth = np.where(textured & (vergence > 0), 1.0 / vergence, np.nan)
    return SweepResult(all_in_focus=aif.astype(np.float32), refocus_map=refocus_map.astype(np.float32),
                       depth=depth.astype(np.float32), confidence=textured.astype(np.float32),
                       timings_ms={"total": 1000.0 * (time.perf_counter() - t_start)})
