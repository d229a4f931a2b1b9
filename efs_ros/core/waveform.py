"""Triangle focal-sweep waveform in diopters (ROS-free, vectorised over time).

One period: sweep near -> far (`sweep_duration_s`), dwell at far, sweep far -> near, dwell at
near. Each monotonic stretch is one sweep in the sense of CONTRACT.md; the dwells make the
turning points easy to find and give the lens time to settle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class WaveformError(ValueError):
    """Waveform parameters that cannot describe a sweep."""


@dataclass(frozen=True)
class TriangleSweep:
    near_dpt: float
    far_dpt: float
    sweep_duration_s: float
    dwell_s: float = 0.0

    def __post_init__(self):
        for name in ("near_dpt", "far_dpt", "sweep_duration_s", "dwell_s"):
            if not math.isfinite(getattr(self, name)):
                raise WaveformError(f"{name} must be finite, got {getattr(self, name)}")
        if self.near_dpt == self.far_dpt:
            raise WaveformError(f"near_dpt and far_dpt are equal ({self.near_dpt}): nothing to sweep")
        if self.sweep_duration_s <= 0:
            raise WaveformError(f"sweep_duration_s must be > 0, got {self.sweep_duration_s}")
        if self.dwell_s < 0:
            raise WaveformError(f"dwell_s must be >= 0, got {self.dwell_s}")

    @property
    def period_s(self) -> float:
        return 2.0 * (self.sweep_duration_s + self.dwell_s)

    @property
    def slope_dpt_per_s(self) -> float:
        """Rate of the near -> far sweep (the far -> near sweep has the opposite sign)."""
        return (self.far_dpt - self.near_dpt) / self.sweep_duration_s

    def _phase(self, t):
        return np.mod(np.asarray(t, dtype=np.float64), self.period_s)

    def _segments(self, phase):
        s, d = self.sweep_duration_s, self.dwell_s
        return phase < s, phase < s + d, phase < 2 * s + d

    def vergence_at(self, t):
        """Commanded vergence (dpt) at time(s) t (s since the waveform origin)."""
        phase = self._phase(t)
        outbound, at_far, inbound = self._segments(phase)
        s, d = self.sweep_duration_s, self.dwell_s
        span = self.far_dpt - self.near_dpt
        returning = self.far_dpt - span * (phase - s - d) / s
        value = np.where(outbound, self.near_dpt + span * phase / s,
                         np.where(at_far, self.far_dpt, np.where(inbound, returning, self.near_dpt)))
        return value[()] if np.ndim(value) == 0 else value

    def velocity_at(self, t):
        """d(vergence)/dt (dpt/s) at time(s) t; 0 in the dwells."""
        phase = self._phase(t)
        outbound, at_far, inbound = self._segments(phase)
        slope = self.slope_dpt_per_s
        value = np.where(outbound, slope, np.where(at_far, 0.0, np.where(inbound, -slope, 0.0)))
        return value[()] if np.ndim(value) == 0 else value

    def heading_far_at(self, t: float) -> bool:
        """Whether the next motion from time t goes toward far (dwells count as the coming sweep)."""
        phase = float(self._phase(t))
        outbound, at_far, inbound = self._segments(phase)
        return bool(outbound or not inbound)

    def time_of(self, vergence_dpt: float, heading_far: bool = True) -> float:
        """A time in [0, period) where the waveform is at `vergence_dpt` (clipped to the range)
        moving in the given direction: lets a changed or restarted sweep continue without a jump."""
        fraction = (vergence_dpt - self.near_dpt) / (self.far_dpt - self.near_dpt)
        fraction = min(1.0, max(0.0, fraction))
        s = self.sweep_duration_s
        if heading_far:
            return fraction * s
        return s + self.dwell_s + (1.0 - fraction) * s
