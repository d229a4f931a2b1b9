"""Sensor time (unwrapped EVT3 microseconds) -> ROS time (integer nanoseconds).

Two sources, as CONTRACT section 1 allows:

* Trigger pairs. When the camera's exposure drives the event camera's trigger input, each
  frame has a rising (exposure start) and a falling (end) edge on channel 0; the middle of the
  pair is the frame's header.stamp. Pairs and frames are matched in order, each pair checked
  against the packet-stamp estimate so that one lost frame or pair cannot shift every later
  match, and offset + drift come from a least-squares line through the matched pairs.
* Packet stamps. Without triggers, each packet's header.stamp is its first event's host time
  plus a transport delay of 0..5 ms. Every point then lies ON or ABOVE the true line, so the
  estimate is the lower envelope: the line below all points of a sliding window that is highest
  at the window's mean (a one-dimensional linear programme, solved by bisection on the slope).
  Its error is set by the few packets with the least delay, not by the delay distribution.

Fits are asked for "as of" a ROS time (`fit(at_ns)`) and use only points stamped in
[at - window, at], so a job's conversion does not depend on how many later packets had
arrived when it was formed: the live node and the offline eval give the same numbers.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

NS_PER_US = 1000.0


@dataclass(frozen=True)
class ClockFit:
    """ros_ns = ref_ros_ns + offset_ns + slope_ns_per_us * (t_us - ref_sensor_us).

    The integer reference and the small float offset keep nanosecond precision (a float64
    holding an epoch in ns would quantise to 256 ns)."""

    ref_sensor_us: int
    ref_ros_ns: int
    offset_ns: float
    slope_ns_per_us: float
    source: str
    """'triggers' or 'stamps'."""
    n_points: int = 0

    @property
    def drift_ppm(self) -> float:
        """How much faster ROS time runs than sensor time, in parts per million."""
        return (self.slope_ns_per_us / NS_PER_US - 1.0) * 1e6

    def _rel_ns(self, t_us) -> np.ndarray:
        rel = (np.asarray(t_us, dtype=np.int64) - self.ref_sensor_us).astype(np.float64)
        return self.offset_ns + self.slope_ns_per_us * rel

    def to_ros_ns(self, t_us) -> np.ndarray:
        return self.ref_ros_ns + np.rint(self._rel_ns(t_us)).astype(np.int64)

    def relative_us(self, t_us, origin_ns: int) -> np.ndarray:
        """Sensor times -> int64 microseconds relative to a ROS time (a frame's stamp)."""
        base = float(self.ref_ros_ns - int(origin_ns))
        return np.rint((base + self._rel_ns(t_us)) / NS_PER_US).astype(np.int64)

    def lateness_ns(self, t_us: int, stamp_ns: int) -> float:
        """stamp - predicted ROS time of sensor time t_us, in plain floats (per packet: numpy
        on one scalar costs more than the arithmetic)."""
        return float(int(stamp_ns) - self.ref_ros_ns) - (
            self.offset_ns + self.slope_ns_per_us * float(int(t_us) - self.ref_sensor_us))

    def to_sensor_us(self, ros_ns: int) -> float:
        return self.ref_sensor_us + (float(int(ros_ns) - self.ref_ros_ns) - self.offset_ns) \
            / self.slope_ns_per_us


class _Series:
    """Two growing int64/float64 columns with cheap append and prefix pruning."""

    def __init__(self, dtype_x=np.int64, dtype_y=np.int64, capacity: int = 1024):
        self.x = np.zeros(capacity, dtype=dtype_x)
        self.y = np.zeros(capacity, dtype=dtype_y)
        self.start = 0
        self.end = 0

    def __len__(self) -> int:
        return self.end - self.start

    def append(self, x, y) -> None:
        if self.end == self.x.size:
            n = len(self)
            capacity = max(1024, 2 * n)
            x_new = np.zeros(capacity, dtype=self.x.dtype)
            y_new = np.zeros(capacity, dtype=self.y.dtype)
            x_new[:n] = self.x[self.start:self.end]
            y_new[:n] = self.y[self.start:self.end]
            self.x, self.y, self.start, self.end = x_new, y_new, 0, n
        self.x[self.end] = x
        self.y[self.end] = y
        self.end += 1

    def prune_y_below(self, y_min) -> None:
        ys = self.y[self.start:self.end]
        self.start += int(np.searchsorted(ys, y_min, side="left"))

    def prune_to(self, max_len: int) -> None:
        if len(self) > max_len:
            self.start = self.end - max_len

    def window(self, y_lo, y_hi) -> tuple[np.ndarray, np.ndarray]:
        """Points with y in [y_lo, y_hi]; y must be non-decreasing (stamps are)."""
        ys = self.y[self.start:self.end]
        lo = int(np.searchsorted(ys, y_lo, side="left"))
        hi = int(np.searchsorted(ys, y_hi, side="right"))
        return self.x[self.start + lo:self.start + hi], ys[lo:hi]

    def last(self):
        return (self.x[self.end - 1], self.y[self.end - 1]) if len(self) else None

    def clear(self) -> None:
        self.start = self.end = 0


def lower_envelope_line(x_us: np.ndarray, y_ns: np.ndarray, max_drift_ppm: float,
                        fixed_slope: float | None = None, segments: int = 16
                        ) -> tuple[int, float, float]:
    """A line through the least-delayed points: y = ref_y + slope * (x - ref_x).

    First the line below all points that is highest at their mean x (a linear programme; its
    slope comes from the two hull points around the mean, which can be close together, so it
    only fixes the envelope). Then the least-delayed point of each of up to `segments` equal
    stretches of x, and a least-squares line through those: the slope now rests on the whole
    window. The slope is bounded to 1000 ns/us +- max_drift_ppm; `fixed_slope` skips the drift
    estimate (a window too short to see drift).
    Returns (ref_x_us, ref_y_ns, offset_ns, slope_ns_per_us): the line passes through
    (ref_x, ref_y + offset).
    """
    ref_x = int(x_us[0])
    ref_y = int(y_ns[0])
    xs = (x_us - ref_x).astype(np.float64)
    # residuals from the nominal clock rate keep the numbers small (ns over seconds)
    rs = (y_ns - ref_y).astype(np.float64) - NS_PER_US * xs
    if fixed_slope is not None:
        e = fixed_slope - NS_PER_US
        return ref_x, ref_y, float(np.min(rs - e * xs)), fixed_slope
    x_mean = float(xs.mean())
    e_max = max_drift_ppm * 1e-6 * NS_PER_US

    def support_x(e: float) -> float:
        return float(xs[np.argmin(rs - e * xs)])

    lo, hi = -e_max, e_max
    # f(e) = min_i (r_i - e x_i) + e x_mean is concave; f'(e) = x_mean - x_argmin(e)
    if x_mean - support_x(lo) <= 0.0:
        e = lo
    elif x_mean - support_x(hi) >= 0.0:
        e = hi
    else:
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            if x_mean - support_x(mid) > 0.0:
                lo = mid
            else:
                hi = mid
        e = 0.5 * (lo + hi)
    # least-delayed point per segment (residuals about the envelope, so drift cannot bias it)
    k = int(np.clip(xs.size // 16, 2, segments))
    above = rs - e * xs
    edges = np.linspace(xs[0], xs[-1], k + 1)
    seg = np.clip(np.searchsorted(edges, xs, side="right") - 1, 0, k - 1)
    order = np.lexsort((above, seg))
    first = np.flatnonzero(np.r_[True, seg[order][1:] != seg[order][:-1]])
    pick = order[first]
    if pick.size >= 2 and np.ptp(xs[pick]) > 0:
        e_fit, _ = np.polyfit(xs[pick], rs[pick], 1)
        e = float(np.clip(e_fit, -e_max, e_max))
    offset = float(np.min(rs - e * xs))  # back under every point: delays are never negative
    return ref_x, ref_y, offset, NS_PER_US + e


@dataclass
class SyncConfig:
    window_s: float = 10.0
    """Sliding window of packets (and trigger pairs) one fit uses."""
    min_drift_span_s: float = 1.0
    """Below this window span, drift is not estimated from stamps (nominal rate is used)."""
    max_drift_ppm: float = 500.0
    """Bound on the estimated drift (CONTRACT: up to 100 ppm; margin for bad clocks)."""
    jump_tolerance_ms: float = 10.0
    """A packet stamped this much before its first event's predicted time means the sensor
    clock jumped (or the camera restarted): the stamp fit starts over. Must exceed the largest
    transport delay (a young fit may sit that much above the true line)."""
    late_jump_s: float = 1.0
    late_jump_packets: int = 5
    """That many packets in a row later than predicted by more than late_jump_s: start over."""
    max_points: int = 200_000
    use_triggers: bool = True
    trigger_channel: int = 0
    trigger_start_value: int = 1
    """Edge value that marks exposure start (rig calibration; 0 for inverted strobes)."""
    trigger_match_tol_ms: float = 10.0
    """A trigger pair and a frame are matched when the pair's stamp-estimated middle lies this
    close to the frame stamp less the frame stamp offset; keep it under half the frame period."""
    frame_stamp_offset_s: float | None = None
    """Frame stamp minus mid-exposure (rig calibration); None: estimated from the trigger pairs
    (drivers that stamp on arrival are 10-30 ms late)."""
    max_frame_stamp_offset_ms: tuple[float, float] = (-50.0, 100.0)
    """Range the estimated offset may take (a stamp at exposure start is early, on arrival late)."""
    max_waiting: int = 256
    """Trigger pairs (or frames) waiting for their partner, at most; the oldest go first."""
    min_trigger_span_s: float = 0.1
    """Below this span of matched pairs, drift comes from the stamp fit, offset from the pairs."""


@dataclass
class SyncStats:
    packets: int = 0
    stamp_resets: int = 0
    trigger_edges: int = 0
    trigger_pairs: int = 0
    matched_pairs: int = 0
    unmatched_pairs: int = 0
    unmatched_frames: int = 0
    orphan_edges: int = 0
    last_reset_reason: str = ""
    extra: dict = field(default_factory=dict)


def refit_interval(n_points: int) -> int:
    """Packets between refits of the jump-detection fit: every packet while the fit is young
    (up to 16 points), then as many as it had (doubling: a fit from n points moves little by
    2n), at most every 64 packets below 4096 points and n / 64 above (a 10 s window at 5000
    packets/s is 50 000 points: one fit per 0.16 s, where drift moves a prediction by at most
    0.08 ms, far inside the 10 ms jump tolerance)."""
    if n_points <= 16:
        return 1
    return min(n_points, max(64, n_points // 64))


class StampClock:
    """Lower-envelope fit of (first event sensor us, packet stamp ns) pairs."""

    def __init__(self, config: SyncConfig, stats: SyncStats):
        self.config = config
        self.stats = stats
        self.points = _Series()
        self._late_run = 0
        self._current: ClockFit | None = None
        self._since_refit = 0
        self._refit_interval = 1

    def reset(self, reason: str) -> None:
        self.points.clear()
        self._late_run = 0
        self._current = None
        self._since_refit = 0
        self._refit_interval = 1
        self.stats.stamp_resets += 1
        self.stats.last_reset_reason = reason

    def add(self, first_event_us: int, stamp_ns: int) -> None:
        cfg = self.config
        last = self.points.last()
        if last is not None:
            fit = self.current()
            lateness = fit.lateness_ns(first_event_us, stamp_ns) if fit else None
            gap_us = abs(int(first_event_us) - int(last[0]))
            tolerance = cfg.jump_tolerance_ms * 1e6 + 2 * cfg.max_drift_ppm * 1e-6 * gap_us * 1e3
            if int(stamp_ns) < int(last[1]) - cfg.jump_tolerance_ms * 1e6:
                # stamps are arrival times on one stream: they never go back by themselves
                self.reset(f"packet stamp went back by {(int(last[1]) - int(stamp_ns)) / 1e6:.3f} ms")
            elif int(first_event_us) < int(last[0]) - 1000:
                self.reset(f"sensor time went back by {(int(last[0]) - int(first_event_us)) / 1e3:.1f} ms")
            elif lateness is not None and lateness < -tolerance:
                self.reset(f"packet stamped {-lateness / 1e6:.3f} ms before its first "
                           "event (sensor clock jump)")
            elif lateness is not None and lateness > cfg.late_jump_s * 1e9:
                self._late_run += 1
                if self._late_run >= cfg.late_jump_packets:
                    self.reset(f"{self._late_run} packets over {cfg.late_jump_s:g} s late "
                               "(sensor clock jump)")
                else:
                    return  # a stall: keep it out of the envelope until it persists
            else:
                self._late_run = 0
            # a tiny step back (jitter) is lifted to keep stamps sorted; harmless for an envelope
            stamp_ns = max(int(stamp_ns), int(last[1])) if len(self.points) else int(stamp_ns)
        self.points.append(int(first_event_us), int(stamp_ns))
        self.stats.packets += 1
        self._since_refit += 1
        newest = int(stamp_ns)
        self.points.prune_y_below(newest - int(3 * cfg.window_s * 1e9))
        self.points.prune_to(cfg.max_points)

    def current(self) -> ClockFit | None:
        """The latest fit, for jump detection: refreshed when the points since the last fit
        reach the refit interval, so its cost per packet stays flat at any packet rate."""
        if self._current is None or self._since_refit >= self._refit_interval:
            self._current = self.fit()
            self._since_refit = 0
            self._refit_interval = refit_interval(len(self.points))
        return self._current

    def fit(self, at_ns: int | None = None) -> ClockFit | None:
        if not len(self.points):
            return None
        last = self.points.last()
        at = int(last[1]) if at_ns is None else int(at_ns)
        x, y = self.points.window(at - int(self.config.window_s * 1e9), at)
        if x.size == 0:
            # nothing that old or recent: take the nearest points we have
            x, y = self.points.window(-(2**62), 2**62)
            if at < int(y[0]):
                x, y = x[: min(x.size, 64)], y[: min(y.size, 64)]
            else:
                x, y = x[-64:], y[-64:]
        span_s = (int(x[-1]) - int(x[0])) * 1e-6
        fixed = NS_PER_US if span_s < self.config.min_drift_span_s else None
        ref_x, ref_y, offset, slope = lower_envelope_line(x, y, self.config.max_drift_ppm, fixed)
        return ClockFit(ref_x, ref_y, offset, slope, "stamps", int(x.size))


OFFSET_FRAMES = 32
OFFSET_DEADBAND_NS = 2e6


class TriggerClock:
    """Trigger pairs (channel 0: exposure start edge, then end; which value is the start is
    SyncConfig.trigger_start_value) matched in order to frame stamps."""

    def __init__(self, config: SyncConfig, stats: SyncStats):
        self.config = config
        self.stats = stats
        self._rise_us: int | None = None
        self._pairs: list[tuple[float, float, float]] = []  # (mid_us, exposure_us, coarse_ns)
        self._frames: list[int] = []
        self.matched = _Series(np.float64, np.int64)  # x = mid sensor us, y = frame stamp ns
        self.exposure_us: dict[int, float] = {}
        given = config.frame_stamp_offset_s
        self.offset_ns: float | None = None if given is None else float(given) * 1e9
        """Frame stamp minus the pair's stamp-estimated middle: given, or estimated once enough
        pairs and frames were seen, then followed as the median of the matched ones."""
        self._offset_given = given is not None
        self._matched_offsets: deque[tuple[int, float]] = deque(maxlen=512)  # (stamp, stamp - coarse)

    def add_edges(self, triggers: np.ndarray, coarse: ClockFit | None) -> None:
        """Feed decoded trigger events (TRIGGER_DTYPE, in stream order)."""
        cfg = self.config
        sel = triggers[triggers["channel"] == cfg.trigger_channel]
        self.stats.trigger_edges += int(sel.size)
        start = cfg.trigger_start_value
        for t, value in zip(sel["t"].tolist(), sel["value"].tolist(), strict=True):  # few per frame
            if value == start:
                if self._rise_us is not None:
                    self.stats.orphan_edges += 1
                self._rise_us = int(t)
            elif self._rise_us is None:
                self.stats.orphan_edges += 1
            else:
                mid = 0.5 * (self._rise_us + int(t))
                coarse_ns = float(coarse.to_ros_ns(int(round(mid)))) if coarse else float("nan")
                self._pairs.append((mid, float(int(t) - self._rise_us), coarse_ns))
                self.stats.trigger_pairs += 1
                self._rise_us = None
        self._match()

    def add_frame(self, stamp_ns: int) -> None:
        self._frames.append(int(stamp_ns))
        self._match()

    def _estimate_offset(self) -> None:
        """The constant offset that pairs the waiting frames with waiting pair middles: votes of
        each frame per 1 ms bin of stamp - middle, the most voted bins win. Frames come every
        period, so offsets a period apart tie: the smallest one a stamp can physically have
        wins (no earlier than exposure start); an offset beyond a frame period must be given
        (rig calibration frame_stamp_offset_s)."""
        pairs = [(c, e) for _, e, c in self._pairs[:64] if np.isfinite(c)]
        frames = np.asarray(self._frames[:64], dtype=np.float64)
        if not pairs or frames.size == 0:
            return
        coarse = np.array([c for c, _ in pairs])
        if coarse.max() <= frames[0]:
            return  # the oldest frame's own pair may still be on its way: wait for a later one
        earliest = -(0.5 * max(e for _, e in pairs) * 1e3 + 1e6)  # exposure start, 1 ms slack
        lo, hi = (v * 1e6 for v in self.config.max_frame_stamp_offset_ms)
        diffs = frames[:, None] - coarse[None, :]
        ok = (diffs >= max(lo, earliest)) & (diffs <= hi)
        if not ok.any():
            return
        frame_idx = np.broadcast_to(np.arange(frames.size)[:, None], diffs.shape)[ok]
        bins = np.floor(diffs[ok] / 1e6).astype(np.int64)
        votes = np.zeros(int(bins.max() - bins.min()) + 2, np.int64)
        for shift in (0, 1):  # a frame votes for its bin and the next: offsets on a bin edge count
            pairs_seen = np.unique(np.stack([frame_idx, bins - bins.min() + shift]), axis=1)
            np.add.at(votes, pairs_seen[1], 1)
        best = int(votes.max())
        if best < 0.5 * min(frames.size, len(pairs)):
            return
        first = int(np.flatnonzero(votes == best)[0]) + int(bins.min())  # bins [first - 1, first]
        window = (diffs >= (first - 1) * 1e6) & (diffs < (first + 1) * 1e6)
        self.offset_ns = float(np.median(diffs[window]))

    def _match(self) -> None:
        if self.offset_ns is None:
            self._estimate_offset()
        offset = self.offset_ns
        tol = self.config.trigger_match_tol_ms * 1e6
        pairs, frames = self._pairs, self._frames
        i = j = 0
        # nothing is paired before the offset is known: a guess would pair neighbours, and a
        # wrong pair stays in the fit; the waiting frames and pairs are matched once it is
        while offset is not None and i < len(pairs) and j < len(frames):
            mid, exposure, coarse = pairs[i]
            stamp = frames[j] - offset
            if np.isfinite(coarse) and stamp < coarse - tol:
                self.stats.unmatched_frames += 1  # that frame's pair never came
                j += 1
            elif np.isfinite(coarse) and stamp > coarse + tol:
                self.stats.unmatched_pairs += 1  # that pair's frame never came
                i += 1
            else:
                stamp = frames[j]
                if len(self.matched) and stamp <= int(self.matched.last()[1]):
                    self.stats.unmatched_frames += 1
                    j += 1
                    continue
                self.matched.append(mid, stamp)
                self.exposure_us[stamp] = exposure
                if np.isfinite(coarse) and not self._offset_given:
                    self._matched_offsets.append((stamp, stamp - coarse))
                self.stats.matched_pairs += 1
                i += 1
                j += 1
        del pairs[:i]
        del frames[:j]
        # one side silent (no trigger wiring, or no camera): keep the waiting side bounded
        cap = self.config.max_waiting
        if len(pairs) > cap:
            self.stats.unmatched_pairs += len(pairs) - cap
            del pairs[:len(pairs) - cap]
        if len(frames) > cap:
            if self.stats.trigger_pairs:
                self.stats.unmatched_frames += len(frames) - cap
            del frames[:len(frames) - cap]
        if len(self.matched):
            newest = int(self.matched.last()[1])
            self.matched.prune_y_below(newest - int(3 * self.config.window_s * 1e9))
            if len(self.exposure_us) > 4 * max(len(self.matched), 1):
                keep = set(self.matched.y[self.matched.start:self.matched.end].tolist())
                self.exposure_us = {k: v for k, v in self.exposure_us.items() if k in keep}

    def fit(self, at_ns: int | None, stamp_fit: ClockFit | None) -> ClockFit | None:
        if not len(self.matched):
            return None
        last = self.matched.last()
        at = int(last[1]) if at_ns is None else int(at_ns)
        x, y = self.matched.window(at - int(self.config.window_s * 1e9), at)
        if x.size == 0:
            return None
        ref_x = int(np.floor(x[0]))
        xs = x - ref_x
        ys = (y - int(y[0])).astype(np.float64)
        span_s = float(xs[-1] - xs[0]) * 1e-6
        if x.size >= 2 and span_s >= self.config.min_trigger_span_s:
            slope, intercept = np.polyfit(xs, ys, 1)
            max_e = self.config.max_drift_ppm * 1e-6 * NS_PER_US
            slope = float(np.clip(slope, NS_PER_US - max_e, NS_PER_US + max_e))
            intercept = float(np.mean(ys - slope * xs))
        else:
            # too short to see drift: exact at the newest pair (the job's own frame)
            slope = stamp_fit.slope_ns_per_us if stamp_fit else NS_PER_US
            intercept = float(ys[-1] - slope * xs[-1])
        return ClockFit(ref_x, int(y[0]), intercept, slope, "triggers", int(x.size))

    def offset_for(self, stamp_ns: int) -> float:
        """Frame stamp minus mid-exposure for the frame stamped stamp_ns: given, else the median
        over the last OFFSET_FRAMES matched frames up to it (so it depends on the frames and
        pairs, not on when they arrived); 0 when that is within OFFSET_DEADBAND (stamps at
        mid-exposure: the trigger fit is exact there, the packet-stamp estimate only noise)."""
        if self._offset_given:
            return float(self.offset_ns)
        upto = [d for s, d in self._matched_offsets if s <= stamp_ns][-OFFSET_FRAMES:]
        if not upto:
            return 0.0
        offset = float(np.median(upto))
        return 0.0 if abs(offset) < OFFSET_DEADBAND_NS else offset

    def exposure_s(self, stamp_ns: int, slope: float = NS_PER_US) -> float:
        exposure = self.exposure_us.get(int(stamp_ns))
        return 0.0 if exposure is None else exposure * slope * 1e-9


class ClockSync:
    """Both sources behind one face: triggers when matched pairs exist, else packet stamps."""

    def __init__(self, config: SyncConfig | None = None):
        self.config = config or SyncConfig()
        self.stats = SyncStats()
        self.stamps = StampClock(self.config, self.stats)
        self.triggers = TriggerClock(self.config, self.stats)

    def add_packet(self, first_event_us: int | None, stamp_ns: int,
                   triggers: np.ndarray | None = None) -> None:
        """One decoded packet: its first (CD or trigger) event time and header.stamp."""
        if first_event_us is not None:
            self.stamps.add(first_event_us, stamp_ns)
        if self.config.use_triggers and triggers is not None and triggers.size:
            self.triggers.add_edges(triggers, self.stamps.current())

    def add_frame(self, stamp_ns: int) -> None:
        if self.config.use_triggers:
            self.triggers.add_frame(stamp_ns)

    def fit(self, at_ns: int | None = None, frame_ns: int | None = None) -> ClockFit | None:
        """The fit as of ROS time at_ns; trigger pairs as of frame_ns when given.

        Frames arrive late and on their own topic, so "pairs matched up to at_ns" depends on
        timing; "pairs up to this frame's" does not (its frame and every earlier one are in)."""
        stamp_fit = self.stamps.fit(at_ns)
        if self.config.use_triggers:
            trig = self.triggers.fit(at_ns if frame_ns is None else frame_ns, stamp_fit)
            if trig is not None:
                return trig
        return stamp_fit

    def exposure_s(self, stamp_ns: int) -> float:
        return self.triggers.exposure_s(stamp_ns)

    def frame_stamp_offset_ns(self, stamp_ns: int) -> float:
        """Frame stamp minus mid-exposure in ROS time for this frame (given, or fitted from the
        trigger pairs matched up to it); 0 while unknown."""
        return self.triggers.offset_for(stamp_ns)

    def current(self) -> ClockFit | None:
        """The latest fit, cheaply (trigger pairs when matched, else the cached stamp fit)."""
        stamp_fit = self.stamps.current()
        if self.config.use_triggers:
            trig = self.triggers.fit(None, stamp_fit)
            if trig is not None:
                return trig
        return stamp_fit

    def summary(self) -> dict:
        fit = self.current()
        out = {
            "sync_source": fit.source if fit else "none",
            "sync_drift_ppm": round(fit.drift_ppm, 3) if fit else 0.0,
            "sync_points": fit.n_points if fit else 0,
            "sync_resets": self.stats.stamp_resets,
            "trigger_pairs": self.stats.trigger_pairs,
            "matched_pairs": self.stats.matched_pairs,
            "unmatched_pairs": self.stats.unmatched_pairs,
            "unmatched_frames": self.stats.unmatched_frames,
            "orphan_trigger_edges": self.stats.orphan_edges,
        }
        if self.stats.last_reset_reason:
            out["sync_last_reset"] = self.stats.last_reset_reason
        return out
