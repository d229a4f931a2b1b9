"""Frame camera <-> event sensor geometry, for rigs whose two cameras do not share pixels.

The pipeline works in the event sensor's pixels (that is where the events are); a frame from
another camera is warped there by the calibrated homography, and what the events contributed is
carried back into the frame's own geometry as a per-pixel change of log intensity, so the output
keeps the frame's size and every detail of the frame itself (CONTRACT section 4). OpenCV does the
warps.
"""
from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np

from .job import SweepJob, SweepResult

GAIN_EPS = 1.0 / 255.0
"""Offset of the log ratio that carries the events' correction (keeps black pixels finite)."""


def _scale(h: np.ndarray) -> float:
    """Event pixels per frame pixel (linear), from the homography's affine part."""
    return math.sqrt(abs(float(np.linalg.det(h[:2, :2] / h[2, 2]))))


def _warp(image: np.ndarray, h: np.ndarray, size_hw: tuple[int, int], inverse: bool = False,
          nearest: bool = False, border=cv2.BORDER_REPLICATE) -> np.ndarray:
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | (cv2.WARP_INVERSE_MAP if inverse else 0)
    out = cv2.warpPerspective(np.ascontiguousarray(image, dtype=np.float32), h, (size_hw[1], size_hw[0]),
                              flags=flags, borderMode=border, borderValue=0.0)
    return out


def frame_in_event_pixels(frame: np.ndarray, h: np.ndarray, sensor_hw: tuple[int, int]) -> np.ndarray:
    """The frame resampled onto the event sensor's pixel grid. When that grid is coarser, the
    frame is first averaged over an event pixel's footprint (a Gaussian of the box's variance,
    less the frame pixel's own), as a sensor pixel of that size would integrate it: no more
    blur than that, since the threshold estimate reads the finest scale."""
    scale = _scale(h)
    if scale < 1.0:
        sigma = math.sqrt((1.0 / scale**2 - 1.0) / 12.0)
        frame = cv2.GaussianBlur(np.ascontiguousarray(frame, dtype=np.float32), (0, 0), sigma)
    return _warp(frame, h, sensor_hw)


def event_geometry_job(job: SweepJob) -> SweepJob:
    """The job as if the frame camera were pixel-registered with the event sensor."""
    h = np.asarray(job.frame_to_events, dtype=np.float64)
    frame = frame_in_event_pixels(job.frame, h, job.sensor_size)
    return replace(job, frame=np.clip(frame, 0.0, 1.0), frame_to_events=None, sensor_size=None,
                   ground_truth_aif=None, ground_truth_depth=None)


def result_in_frame_pixels(result: SweepResult, job: SweepJob, frame_in_events: np.ndarray) -> SweepResult:
    """A result computed in event pixels, in the geometry of the job's own frame: the frame times
    the events' per-pixel (per-channel) intensity ratio; maps and depth resampled (depth and
    confidence NaN / 0 where the event sensor does not see)."""
    h = np.asarray(job.frame_to_events, dtype=np.float64)
    size = job.frame.shape[:2]
    eps = np.float32(GAIN_EPS)
    log_gain = np.log(result.all_in_focus + eps) - np.log(frame_in_events.astype(np.float32) + eps)
    seen = _warp(np.ones(frame_in_events.shape[:2], np.float32), h, size, inverse=True,
                 border=cv2.BORDER_CONSTANT) > 0.999
    gain = _warp(log_gain, h, size, inverse=True)
    if gain.ndim == 3:
        gain = gain * seen[..., None]
    else:
        gain = gain * seen
    aif = np.clip((job.frame.astype(np.float32) + eps) * np.exp(gain) - eps, 0.0, 1.0)
    depth = _warp(result.depth, h, size, inverse=True, nearest=True)
    depth[~seen] = np.nan
    refocus = _warp(result.refocus_map, h, size, inverse=True)
    confidence = _warp(result.confidence, h, size, inverse=True) * seen
    return SweepResult(all_in_focus=aif.astype(np.float32), refocus_map=refocus.astype(np.float32),
                       depth=depth.astype(np.float32), confidence=confidence.astype(np.float32),
                       timings_ms=result.timings_ms)


# ----------------------------------------------------------------------------------------------
# Calibration: the homography from one sweep

def event_edge_map(events: np.ndarray, sensor_hw: tuple[int, int], sigma: float = 1.0) -> np.ndarray:
    """Where the sweep's events fire, per event pixel (log of the count, smoothed): defocus moves
    every edge through threshold after threshold, so this is the scene's edge map."""
    h, w = sensor_hw
    counts = np.bincount(events["y"].astype(np.int64) * w + events["x"].astype(np.int64),
                         minlength=h * w).reshape(h, w).astype(np.float32)
    return cv2.GaussianBlur(np.log1p(counts), (0, 0), sigma)


def frame_edge_map(frame: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gradient magnitude of the frame's log luminance (the events see log intensity)."""
    lum = frame @ np.array([0.2126, 0.7152, 0.0722], np.float32) if frame.ndim == 3 else frame
    log = np.log(np.asarray(lum, np.float32) + np.float32(1.0 / 255.0))
    log = cv2.GaussianBlur(log, (0, 0), sigma)
    gx = cv2.Sobel(log, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(log, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(gx * gx + gy * gy)


def centred_similarity(frame_hw: tuple[int, int], sensor_hw: tuple[int, int],
                       scale: float | None = None) -> np.ndarray:
    """frame -> event homography of two centred views, the frame filling the sensor's width
    (`scale`: event px per frame px), the usual starting point of a beam-splitter rig."""
    fh, fw = frame_hw
    sh, sw = sensor_hw
    s = float(scale) if scale else sw / fw
    h = np.eye(3)
    h[0, 0] = h[1, 1] = s
    h[0, 2] = (sw - 1) / 2 - s * (fw - 1) / 2
    h[1, 2] = (sh - 1) / 2 - s * (fh - 1) / 2
    return h


def estimate_frame_to_events(event_edges: np.ndarray, frame_edges: np.ndarray,
                             initial: np.ndarray, levels: int = 3,
                             iterations: int = 200) -> tuple[np.ndarray, float]:
    """(frame -> event homography, correlation) maximising the ECC correlation between the
    event edge map and the frame's edges warped onto the sensor (OpenCV's findTransformECC),
    coarse to fine. Raises cv2.error when it does not converge."""
    h = np.asarray(initial, np.float64) / initial[2, 2]
    corr = float("nan")
    for level in reversed(range(levels)):
        f = 0.5**level
        down = np.diag([f, f, 1.0])
        up = np.linalg.inv(down)
        tmpl, src = (_scaled(event_edges, f), _scaled(frame_edges, f))
        # ECC's warp maps template (event) pixels to input (frame) pixels: the inverse of ours
        warp = (down @ np.linalg.inv(h) @ up).astype(np.float32)
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-6)
        corr, warp = cv2.findTransformECC(tmpl.astype(np.float32), src.astype(np.float32), warp,
                                          cv2.MOTION_HOMOGRAPHY, criteria, None, 5)
        h = np.linalg.inv(up @ warp.astype(np.float64) @ down)
        h /= h[2, 2]
    return h, float(corr)


def _scaled(image: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return np.ascontiguousarray(image, np.float32)
    return cv2.resize(np.asarray(image, np.float32), None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)


def reprojection_error_px(h_est: np.ndarray, h_true: np.ndarray, frame_hw: tuple[int, int]) -> float:
    """Mean distance (event px) between where two homographies send the frame's pixels."""
    fh, fw = frame_hw
    yy, xx = np.mgrid[0:fh:4, 0:fw:4]
    p = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    a, b = h_est @ p, h_true @ p
    return float(np.mean(np.hypot(*(a[:2] / a[2] - b[:2] / b[2]))))
