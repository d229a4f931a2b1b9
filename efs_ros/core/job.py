"""What one all-in-focus job is, independent of where it came from (live node, bag, simulator).

A job is one camera frame plus the events and lens states of the complete focal sweep that
contains it. All times inside a job are relative to the frame's ROS stamp, so the pipeline
never needs to know about clocks, wraps or transport delays.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SweepJob:
    stamp_ns: int
    """The frame's header.stamp (ROS time, integer ns): the job's name and time origin."""
    frame: np.ndarray
    """H x W (mono) or H x W x 3 (RGB order) float32, linear intensity scaled to [0, 1]."""
    encoding: str
    """The input frame's encoding (rgb8, bgr8, mono8); outputs are published in it."""
    events: np.ndarray
    """EVENT_DTYPE; t in microseconds relative to stamp_ns (negative = before the frame)."""
    focus_t: np.ndarray
    """float64 seconds relative to stamp_ns, increasing: lens samples spanning the sweep."""
    focus_dpt: np.ndarray
    """float64 diopters at focus_t (monotonic over the sweep, up to sensor noise)."""
    exposure_s: float = 0.0
    """Frame exposure time when known (trigger pairs), else 0."""
    ground_truth_aif: np.ndarray | None = None
    """Synthetic recordings only: same layout as frame, float32 linear in [0, 1]."""
    ground_truth_depth: np.ndarray | None = None
    """Synthetic recordings only: H x W float32 metres, NaN where no surface."""
    meta: dict = field(default_factory=dict)
    frame_to_events: np.ndarray | None = None
    """3x3 homography, frame pixel -> event pixel, when the frame camera is not pixel-registered
    with the event sensor (rig calibration); None: the frame's pixels are the sensor's."""
    sensor_size: tuple[int, int] | None = None
    """(height, width) of the event sensor, with frame_to_events; None: the frame's size."""
    frame_transfer: str = "linear"
    """How the camera encoded the frame (CONTRACT section 4); `frame` itself is always linear,
    outputs are re-encoded with this."""

    @property
    def registered(self) -> bool:
        """Whether events and frame share pixels (the pipeline's own geometry)."""
        return self.frame_to_events is None

    @property
    def height(self) -> int:
        return int(self.frame.shape[0])

    @property
    def width(self) -> int:
        return int(self.frame.shape[1])

    @property
    def sweep_span_s(self) -> tuple[float, float]:
        return float(self.focus_t[0]), float(self.focus_t[-1])

    def focus_at(self, t_s) -> np.ndarray:
        """Lens vergence (diopters) at job-relative times, linearly interpolated."""
        return np.interp(t_s, self.focus_t, self.focus_dpt)


@dataclass
class SweepResult:
    all_in_focus: np.ndarray
    """Same layout as the job's frame, float32 linear in [0, 1]."""
    refocus_map: np.ndarray
    """H x W float32 seconds relative to the frame stamp."""
    depth: np.ndarray
    """H x W float32 metres; NaN where there is no texture to judge."""
    confidence: np.ndarray | None = None
    """H x W float32 in [0, 1], where the method provides one."""
    timings_ms: dict = field(default_factory=dict)
