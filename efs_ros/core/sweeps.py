"""Focal sweeps from the lens focus-state stream: turning points and complete sweeps.

A sweep is a maximal stretch in which the focus moves monotonically (CONTRACT section 1).
Readings carry a few millidiopters of noise and the lens may dwell at the ends of its range,
so single samples cannot mark a turn. The tracker follows the TREND instead:

1. a running median over a few samples removes single-sample noise;
2. a turning point is confirmed only once the smoothed focus has come back from the running
   extremum by more than `hysteresis_dpt` (so noise never confirms one);
3. its dwell is the contiguous stretch around the extremum within `dwell_tol_dpt` of it.

The complete sweep between two turning points runs from the first one's dwell END to the
second one's dwell START. Frames in a dwell, before the first turning point or after the last
are in no complete sweep. A gap in the stream longer than `max_gap_ms` breaks the chain: no
sweep spans it. Live (`SweepTracker.add`) and batch (`find_sweeps`) run the same code, one
sample at a time (a lens publishes a few hundred samples per second, not millions).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

FOCUS_JOINT = "focus"


@dataclass
class SweepConfig:
    hysteresis_dpt: float = 0.05
    """How far the smoothed focus must come back from an extremum to confirm a turn."""
    dwell_tol_dpt: float = 0.02
    """Samples this close to the extremum belong to its dwell (several times the noise)."""
    smooth_samples: int = 5
    """Running median length (odd); its centre sample's time is kept, so no lag in time."""
    max_gap_ms: float = 100.0
    """A longer silence of the lens topic breaks the sweep chain."""
    min_sweep_ms: float = 5.0
    """Shorter stretches between dwells are not sweeps (a twitch at a turn)."""
    history_s: float = 60.0
    """Raw samples kept for building jobs (the assembler prunes earlier when it can)."""


@dataclass(frozen=True)
class TurningPoint:
    t_ns: int
    """Time of the (smoothed) extremum."""
    value_dpt: float
    kind: int
    """+1 maximum, -1 minimum."""
    dwell_start_ns: int
    dwell_end_ns: int


@dataclass(frozen=True)
class Sweep:
    index: int
    """Counts complete sweeps since the tracker started (or was reset)."""
    start_ns: int
    end_ns: int
    direction: int
    """+1 when the vergence increases (focus moves nearer), -1 when it decreases."""
    start_dpt: float
    end_dpt: float

    def contains(self, stamp_ns: int) -> bool:
        return self.start_ns <= stamp_ns <= self.end_ns

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) * 1e-9


def focus_from_joint_state(names, positions, velocities=(), joint: str = FOCUS_JOINT):
    """(position dpt, velocity dpt/s) of the focus joint of a JointState, or None.

    A bare single-joint state without names is taken as the focus; a missing velocity is NaN.
    """
    names = list(names)
    if joint in names:
        index = names.index(joint)
    elif not names and len(positions) == 1:
        index = 0
    else:
        return None
    if index >= len(positions):
        return None
    velocity = float(velocities[index]) if index < len(velocities) else float("nan")
    return float(positions[index]), velocity


class _Column:
    """Append-only float64/int64 pair with prefix pruning (amortised O(1) append)."""

    def __init__(self):
        self.t = np.zeros(1024, dtype=np.int64)
        self.v = np.zeros(1024, dtype=np.float64)
        self.start = 0
        self.end = 0

    def __len__(self) -> int:
        return self.end - self.start

    def append(self, t: int, v: float) -> None:
        if self.end == self.t.size:
            n = len(self)
            t_new = np.zeros(max(1024, 2 * n), dtype=np.int64)
            v_new = np.zeros(max(1024, 2 * n), dtype=np.float64)
            t_new[:n] = self.t[self.start:self.end]
            v_new[:n] = self.v[self.start:self.end]
            self.t, self.v, self.start, self.end = t_new, v_new, 0, n
        self.t[self.end] = t
        self.v[self.end] = v
        self.end += 1

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        return self.t[self.start:self.end], self.v[self.start:self.end]

    def prune_before(self, t_min: int) -> None:
        t, _ = self.view()
        self.start += int(np.searchsorted(t, t_min, side="left"))

    def clear(self) -> None:
        self.start = self.end = 0


class SweepTracker:
    """Incremental turning-point and sweep detection over (stamp_ns, dpt) samples."""

    def __init__(self, config: SweepConfig | None = None):
        self.config = config or SweepConfig()
        if self.config.smooth_samples < 1 or self.config.smooth_samples % 2 == 0:
            raise ValueError(f"smooth_samples must be odd and >= 1, got "
                             f"{self.config.smooth_samples}")
        self.raw = _Column()
        self.smooth = _Column()
        self.turning_points: list[TurningPoint] = []
        self.sweeps: list[Sweep] = []
        self.sweep_count = 0
        self.turning_point_count = 0
        self.samples = 0
        self.gaps = 0
        self.out_of_order = 0
        self.rejected = 0
        self._window: deque[tuple[int, float]] = deque(maxlen=self.config.smooth_samples)
        self._segment_start: int | None = None  # first smoothed time of the unbroken stretch
        self._reset_segment()

    # ------------------------------------------------------------------ state

    def _reset_segment(self) -> None:
        self._window.clear()
        self.smooth.clear()
        self._direction = 0
        self._cand_t: int | None = None
        self._cand_v = 0.0
        self._lo = self._hi = None  # (t, v) extremes before the direction is known
        self._last_tp: TurningPoint | None = None
        self._segment_start = None

    @property
    def last_stamp_ns(self) -> int | None:
        return int(self.raw.t[self.raw.end - 1]) if len(self.raw) else None

    def add(self, stamp_ns: int, dpt: float) -> list[Sweep]:
        """Feed one reading; returns the sweeps it completed (usually none)."""
        stamp_ns = int(stamp_ns)
        dpt = float(dpt)
        if not np.isfinite(dpt):
            self.rejected += 1
            return []
        last = self.last_stamp_ns
        if last is not None and stamp_ns <= last:
            self.out_of_order += 1
            return []
        if last is not None and stamp_ns - last > self.config.max_gap_ms * 1e6:
            self.gaps += 1
            self._reset_segment()
        self.raw.append(stamp_ns, dpt)
        self.samples += 1
        self.raw.prune_before(stamp_ns - int(self.config.history_s * 1e9))
        self._window.append((stamp_ns, dpt))
        k = self.config.smooth_samples
        if len(self._window) < k:
            return []
        values = sorted(v for _, v in self._window)
        t_mid = self._window[k // 2][0]
        return self._add_smoothed(t_mid, values[k // 2])

    def add_many(self, stamps_ns, dpts) -> list[Sweep]:
        out: list[Sweep] = []
        for t, v in zip(np.asarray(stamps_ns).tolist(), np.asarray(dpts).tolist(), strict=True):
            out.extend(self.add(t, v))
        return out

    def _add_smoothed(self, t: int, v: float) -> list[Sweep]:
        cfg = self.config
        self.smooth.append(t, v)
        if self._segment_start is None:
            self._segment_start = t
        if self._direction == 0:
            if self._lo is None or v < self._lo[1]:
                self._lo = (t, v)
            if self._hi is None or v > self._hi[1]:
                self._hi = (t, v)
            # the start of a recording is never a turning point: only learn the direction
            if v < self._hi[1] - cfg.hysteresis_dpt:
                self._direction, self._cand_t, self._cand_v = -1, t, v
            elif v > self._lo[1] + cfg.hysteresis_dpt:
                self._direction, self._cand_t, self._cand_v = +1, t, v
            return []
        if self._direction * (v - self._cand_v) > 0:
            self._cand_t, self._cand_v = t, v
            return []
        if self._direction * (self._cand_v - v) <= cfg.hysteresis_dpt:
            return []
        tp = self._confirm(self._cand_t, self._cand_v, self._direction)
        self._direction = -self._direction
        self._cand_t, self._cand_v = t, v
        out = []
        if self._last_tp is not None:
            start, end = self._last_tp.dwell_end_ns, tp.dwell_start_ns
            if end - start >= cfg.min_sweep_ms * 1e6:
                sweep = Sweep(self.sweep_count, start, end, tp.kind, self._last_tp.value_dpt,
                              tp.value_dpt)
                self.sweeps.append(sweep)
                self.sweep_count += 1
                out.append(sweep)
        self._last_tp = tp
        # smoothed history before this turn is never looked at again
        self.smooth.prune_before(tp.dwell_start_ns)
        return out

    def _confirm(self, t_c: int, v_c: float, kind: int) -> TurningPoint:
        t, v = self.smooth.view()
        i = int(np.searchsorted(t, t_c))
        outside = np.abs(v - v_c) > self.config.dwell_tol_dpt
        before = np.flatnonzero(outside[:i])
        after = np.flatnonzero(outside[i:])
        first = int(before[-1]) + 1 if before.size else 0
        last = i + int(after[0]) - 1 if after.size else t.size - 1
        tp = TurningPoint(t_c, v_c, kind, int(t[first]), int(t[last]))
        self.turning_points.append(tp)
        self.turning_point_count += 1
        return tp

    # --------------------------------------------------------- queries for jobs

    def decided_until_ns(self) -> int | None:
        """Frames stamped at or before this are settled: inside a complete sweep or in none."""
        if self._last_tp is not None:
            return self._last_tp.dwell_end_ns
        if self._cand_t is not None:
            return self._cand_t - 1
        if len(self.smooth):
            return int(self.smooth.t[self.smooth.end - 1]) - 1
        return self.last_stamp_ns

    def sweep_for(self, stamp_ns: int) -> Sweep | None:
        """The complete sweep containing stamp_ns (frames on a shared boundary go to the later)."""
        for sweep in reversed(self.sweeps):
            if sweep.contains(stamp_ns):
                return sweep
            if sweep.end_ns < stamp_ns:
                break
        return None

    def classify(self, stamp_ns: int) -> tuple[str, Sweep | None]:
        """('sweep', s) | ('none', None) | ('pending', None) for a frame stamp."""
        decided = self.decided_until_ns()
        if decided is None or stamp_ns > decided:
            return "pending", None
        sweep = self.sweep_for(stamp_ns)
        return ("sweep", sweep) if sweep is not None else ("none", None)

    def earliest_needed_ns(self) -> int | None:
        """No future sweep starts before this (events and samples older can go)."""
        if self._last_tp is not None:
            return self._last_tp.dwell_end_ns
        if self._cand_t is not None:
            return self._cand_t
        return self.last_stamp_ns

    def focus_between(self, start_ns: int, end_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw readings with stamps in [start, end] (copies)."""
        t, v = self.raw.view()
        lo = int(np.searchsorted(t, start_ns, side="left"))
        hi = int(np.searchsorted(t, end_ns, side="right"))
        return t[lo:hi].copy(), v[lo:hi].copy()

    def prune_before(self, t_ns: int) -> None:
        self.raw.prune_before(t_ns)
        keep = [s for s in self.sweeps if s.end_ns >= t_ns]
        self.sweeps = keep
        self.turning_points = [tp for tp in self.turning_points if tp.dwell_end_ns >= t_ns
                               or tp is self._last_tp]


def find_sweeps(stamps_ns, dpts, config: SweepConfig | None = None
                ) -> tuple[list[Sweep], list[TurningPoint]]:
    """Batch form: every complete sweep and turning point of a recorded focus stream."""
    tracker = SweepTracker(config)
    tracker.add_many(stamps_ns, dpts)
    return tracker.sweeps, tracker.turning_points
