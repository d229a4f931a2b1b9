"""Compiled kernels of the pipeline (numba), each with a numpy/scipy path beside it as the
reference and fallback: the focus measure over the images of a [K, H, W] stack (gradient
energy with Gaussian presmooth, central differences and noise subtraction; box mean), parallel
over images, and the refocus net's event bins.

The selection runs these on stacks of tens of full-resolution images; scipy's separable
passes and numpy's temporaries read and write the whole stack several times each. Here each
image is done in one sweep with per-image scratch, scipy's "reflect" edges and float64 sums,
so results equal the scipy/numpy path in `select.py` to float32 rounding.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _reflect(i, n):
    if i < 0:
        return -i - 1
    if i >= n:
        return 2 * n - i - 1
    return i


@njit(cache=True, parallel=True)
def box_mean_stack(x, window, floor, out):
    """out[k] = window x window mean of x[k] (odd window <= each side), clipped at 0 if floor."""
    k_n, h, w = x.shape
    r = window // 2
    scale = 1.0 / (window * window)
    for k in prange(k_n):
        rows = np.empty((h, w), np.float64)
        for i in range(h):
            acc = 0.0
            for j in range(-r, r + 1):
                acc += x[k, i, _reflect(j, w)]
            for j in range(w):
                rows[i, j] = acc
                acc += x[k, i, _reflect(j + r + 1, w)] - x[k, i, _reflect(j - r, w)]
        acc_col = np.zeros(w, np.float64)
        for i in range(-r, r + 1):
            acc_col += rows[_reflect(i, h)]
        for i in range(h):
            for j in range(w):
                v = acc_col[j] * scale
                if floor and v < 0.0:
                    v = 0.0
                out[k, i, j] = v
            add = rows[_reflect(i + r + 1, h)]
            sub = rows[_reflect(i - r, h)]
            for j in range(w):
                acc_col[j] += add[j] - sub[j]
    return out


@njit(cache=True, parallel=True)
def gradient_energy_stack(x, weights, noise_gain, noise_var, use_noise, out):
    """out[k] = squared central-difference gradient (edges replicated) of x[k] smoothed by the
    separable filter `weights` (odd length; length 1 = no smoothing), minus noise_gain x
    noise_var[k] if use_noise."""
    k_n, h, w = x.shape
    r = weights.size // 2
    for k in prange(k_n):
        rows = np.empty((h, w), np.float32)
        smooth = np.empty((h, w), np.float32)
        for i in range(h):
            for j in range(w):
                acc = 0.0
                for d in range(-r, r + 1):
                    acc += weights[d + r] * x[k, i, _reflect(j + d, w)]
                rows[i, j] = acc
        for i in range(h):
            for j in range(w):
                smooth[i, j] = 0.0
            for d in range(-r, r + 1):
                src = rows[_reflect(i + d, h)]
                wd = weights[d + r]
                for j in range(w):
                    smooth[i, j] += wd * src[j]
        for i in range(h):
            up = smooth[max(i - 1, 0)]
            down = smooth[min(i + 1, h - 1)]
            row = smooth[i]
            for j in range(w):
                gx = row[min(j + 1, w - 1)] - row[max(j - 1, 0)]
                gy = down[j] - up[j]
                e = gx * gx + gy * gy
                if use_noise:
                    e -= noise_gain * noise_var[k, i, j]
                out[k, i, j] = e
    return out


@njit(cache=True, nogil=True)
def scatter_event_bins(pixel, polarity, n_bins, hw, sign, out):
    """out[b * hw + pixel] += sign * polarity over m events in n_bins equal-count bins (event i
    goes to bin i * n_bins // m)."""
    m = pixel.size
    for i in range(m):
        out[(i * n_bins) // m * hw + pixel[i]] += sign * polarity[i]
    return out
