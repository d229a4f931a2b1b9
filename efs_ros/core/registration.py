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
