"""Compiled box mean over the images of a [K, H, W] stack (numba, parallel over images).

The selection's focus measure box-filters stacks of tens of full-resolution images; scipy's
two separable passes read and write the whole stack twice each. Here each image is filtered
in one pass over its rows (running sums in float64) with scipy's "reflect" edges, so the
results equal `ndimage.uniform_filter1d` on both axes to float32 rounding.
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
