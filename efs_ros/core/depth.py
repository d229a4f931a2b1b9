"""Refocus map -> depth through the lens state: a pixel sharp at time t is at the distance the
lens focused on at t, depth = 1 / vergence(t) metres."""
from __future__ import annotations

import numpy as np

from .metrics import abs_rel


def depth_from_refocus_map(refocus_map_s: np.ndarray, focus_t: np.ndarray, focus_dpt: np.ndarray,
                           confidence: np.ndarray | None = None,
                           confidence_min: float = 0.0) -> np.ndarray:
    """[H, W] float32 metres; NaN where the confidence is below `confidence_min` or the lens
    vergence there is not positive (focused at or beyond infinity: no finite depth)."""
    focus_t = np.asarray(focus_t, dtype=np.float64)
    focus_dpt = np.asarray(focus_dpt, dtype=np.float64)
    if focus_t.size == 0 or focus_t.shape != focus_dpt.shape:
        raise ValueError(f"focus_t and focus_dpt must be non-empty and equal length, got "
                         f"{focus_t.shape} and {focus_dpt.shape}")
    dpt = np.interp(np.asarray(refocus_map_s, np.float64), focus_t, focus_dpt)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(dpt > 0, 1.0 / dpt, np.nan)
    if confidence is not None:
        depth = np.where(np.asarray(confidence) >= confidence_min, depth, np.nan)
    return depth.astype(np.float32)


def depth_error(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(AbsRel, coverage) over pixels finite in both; see metrics.abs_rel."""
    return abs_rel(pred, gt)
