"""Message stream -> SweepJobs: the one place where events, frames and lens states meet.

Both the live all-in-focus node and `make eval` feed messages into a JobAssembler and take
jobs out of it, so replaying a bag through the node gives the same jobs as evaluating it.
Everything it decides is a function of each topic's own message sequence, not of how the
topics interleave:

* a frame becomes a job once the focus stream has settled where it lies (inside a complete
  sweep, or in none), and once an event packet stamped at least `ready_margin_ms` after that
  sweep's end has arrived (packets are stamped 0..5 ms after their first event, so every
  event of the sweep is then in);
* the sensor->ROS clock fit for a job uses only packets stamped up to that same readiness
  time, and only trigger pairs of frames up to the job's own, whatever arrived later (see
  timesync.py);
* job events are those whose ROS time lies in the sweep, in microseconds relative to the frame.

Memory is bounded. Events live as one numpy chunk per packet; chunks no future job can need
are dropped as soon as the focus stream and the latest frame say so. Beyond `max_events` the
OLDEST chunks are dropped and counted (events_dropped_overflow); a job whose sweep lost events
that way is skipped and counted (jobs_skipped) rather than computed from partial data.
Pending frames are bounded by `max_pending_frames` (oldest dropped, counted).

Bad input never raises and never costs data already accepted: a packet with an unknown
encoding, a wrong sensor size or big-endian words is rejected and counted with a one-line
reason; decoder faults are counted and the valid events around them kept; a packet of an odd
number of bytes loses its last byte (a fault: carried into the next packet it would misalign
every later word); seq gaps count as lost packets (whatever the clock does, so that received +
lost = sent); ROS time jumping back (a bag that loops) resets everything and is reported.

No silently wrong image: a job is skipped with a counted reason (`skipped_by_reason`) when
its frame is saturated (more than `max_saturated_fraction` of its pixels clipped at full scale:
the irradiance there is unknown and events cannot restore it) or when its sweep holds fewer
than `min_events_per_pixel` events per pixel (no evidence to refocus with: the output would be
the blurred input passed off as all-in-focus), besides the data-loss reasons above.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from efs_ros.core.calibration import RigCalibration
from efs_ros.core.events import EVENT_DTYPE
from efs_ros.core.evt3 import Evt3Decoder
from efs_ros.core.images import CAMERA_ENCODINGS, ENCODINGS, ImageError, image_to_array, to_linear
from efs_ros.core.job import SweepJob
from efs_ros.core.sweeps import Sweep, SweepConfig, SweepTracker
from efs_ros.core.timesync import ClockFit, ClockSync, SyncConfig

EVENT_ENCODINGS = ("evt3",)
MAX_DECODER_LINES = 3
"""Decoder fault lines kept per packet (the newest)."""
TOPIC_EVENTS, TOPIC_FRAMES, TOPIC_FOCUS = "events", "frames", "focus"


@dataclass
class AssemblerConfig:
    width: int | None = None
    height: int | None = None
    """Sensor size; None = taken from the first event packet. Frames must match it."""
    max_events: int = 16_000_000
    """Events held in memory at most (13 bytes each: 16 M is about 210 MB)."""
    max_pending_frames: int = 64
    """Frames waiting for their sweep to end (kept as received, uint8)."""
    ready_margin_ms: float = 25.0
    """A job waits for a packet stamped this long after its sweep's end: more than the largest
    transport delay (5 ms) plus half the longest exposure (the last frame's trigger pair ends
    there). At the end of a stream, flush() takes what is left (live: when events fall silent)."""
    max_frame_lag_s: float = 1.0
    """Frames may arrive this long after the newest event packet and still find their events."""
    clock_jump_back_ms: float = 100.0
    """ROS time going back this much on any topic is a clock jump (a bag loop): full reset."""
    sync: SyncConfig = field(default_factory=SyncConfig)
    sweeps: SweepConfig = field(default_factory=SweepConfig)
    max_faults_kept: int = 32
    max_saturated_fraction: float = 0.5
    """A frame with more of its pixels saturated (any channel at full scale) gives no job."""
    min_events_per_pixel: float = 1e-3
    """A sweep with fewer events than this per pixel gives no job (at least one event)."""
    calibration: RigCalibration = field(default_factory=RigCalibration)
    """The rig calibration file (CONTRACT section 4): frame geometry and transfer, lens model."""


@dataclass
class _Frame:
    stamp_ns: int
    pixels: np.ndarray
    encoding: str


def saturated_fraction(image: np.ndarray) -> float:
    """Share of pixels with any channel at full scale (the integer type's maximum; float >= 1)."""
    top = np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else 1.0
    full = image >= top
    if full.ndim == 3:
        full = full.any(axis=2)
    return float(full.mean()) if full.size else 0.0


class JobAssembler:
    """Incremental: add_* as messages come, pop_jobs() whenever convenient, flush() at the end."""

    def __init__(self, config: AssemblerConfig | None = None):
        self.config = config or AssemblerConfig()
        self._fault_log: deque = deque(maxlen=self.config.max_faults_kept)
        """Lines, or (prefix, a chunk's decoder faults) formatted only when `faults` is read."""
        self._counters = dict.fromkeys((
            "packets", "packets_rejected", "events", "triggers", "decode_faults",
            "packets_lost", "seq_restarts", "events_dropped_overflow", "events_pruned",
            "frames", "frames_rejected", "frames_dropped", "frames_without_sweep",
            "focus_samples", "focus_rejected", "jobs", "jobs_skipped", "clock_resets",
            "stale_messages", "contract_violations"), 0)
        self.skipped_by_reason: dict[str, int] = {}
        """Jobs skipped, by short reason code (see _make_job)."""
        self.last_skip = ""
        self.last_saturated_fraction = 0.0
        """Of the latest frame that reached a job (reported; above the limit it is skipped)."""
        self.last_violation = ""
        """The latest message rejected for breaking the CONTRACT (offline eval stops on it)."""
        self._width = self.config.width
        self._height = self.config.height
        self.last_reset_reason = ""
        self._last_seq: int | None = None
        """Transport bookkeeping, kept across clock resets: a seq gap is a lost packet."""
        self._reset_state()
        self._reset_stamp: int | None = None
        self._before_reset: dict[str, int] = {}
        """Each topic's last stamp before the latest clock reset (to tell stale messages)."""

    # ------------------------------------------------------------------ state

    def _reset_state(self) -> None:
        self._decoder: Evt3Decoder | None = None
        self._chunks: deque[np.ndarray] = deque()
        self._chunk_tmin: deque[int] = deque()
        self._chunk_tmax: deque[int] = deque()
        self._buffered = 0
        self._sweep_cache = None
        self._overflow_until_us: int | None = None
        self._first_packet_stamp: int | None = None
        self._last_packet_stamp: int | None = None
        self._lost_at: deque[tuple[int, int]] = deque(maxlen=4096)  # (stamp, packets lost)
        calib = self.config.calibration
        sync = replace(self.config.sync, trigger_start_value=calib.trigger_exposure_start_value,
                       frame_stamp_offset_s=calib.frame_stamp_offset_s
                       if calib.frame_stamp_offset_s is not None else self.config.sync.frame_stamp_offset_s)
        self._sync = ClockSync(sync)
        self._tracker = SweepTracker(self.config.sweeps)
        self._frames: deque[_Frame] = deque()
        self._last_frame_stamp: int | None = None
        self._last_stamp: dict[str, int] = {}

    def _fault(self, message: str) -> None:
        self._fault_log.append(message)

    @property
    def faults(self) -> deque[str]:
        """The latest fault lines, oldest first (at most max_faults_kept)."""
        lines: deque[str] = deque(maxlen=self.config.max_faults_kept)
        for entry in self._fault_log:
            if isinstance(entry, str):
                lines.append(entry)
            else:
                prefix, messages = entry
                lines.extend(prefix + m for m in messages[-MAX_DECODER_LINES:])
        return lines

    def _violation(self, counter: str, message: str) -> None:
        """A message breaking CONTRACT section 1 (encoding, size): rejected, counted, kept."""
        self._counters[counter] += 1
        self._counters["contract_violations"] += 1
        self.last_violation = message
        self._fault(message)

    @property
    def sensor_size(self) -> tuple[int, int] | None:
        return (self._width, self._height) if self._width and self._height else None

    def _check_clock(self, topic: str, stamp_ns: int) -> bool:
        """Detect ROS time jumping back (reset) and drop stale pre-jump messages."""
        last = self._last_stamp.get(topic)
        jump = int(self.config.clock_jump_back_ms * 1e6)
        if last is not None and stamp_ns < last - jump:
            reason = (f"ROS time jumped back {(last - stamp_ns) / 1e9:.3f} s on the {topic} topic "
                      "(bag loop?): buffers reset")
            dropped = len(self._frames)
            self._counters["frames_dropped"] += dropped
            self._counters["clock_resets"] += 1
            self.last_reset_reason = reason
            self._fault(reason)
            self._before_reset = dict(self._last_stamp)
            self._reset_state()
            self._reset_stamp = stamp_ns
            last = None
        elif last is None and self._reset_stamp is not None:
            # From before the jump, delivered late on a topic that has not jumped yet: it goes
            # on where that topic was. A first message of the new timeline lies well before
            # that (a slow topic's first frame may come long after the reset, and is kept).
            before = self._before_reset.get(topic)
            if before is not None and stamp_ns > self._reset_stamp + jump \
                    and stamp_ns >= before - jump:
                self._counters["stale_messages"] += 1
                return False
        self._last_stamp[topic] = stamp_ns if last is None else max(last, stamp_ns)
        return True

    # ------------------------------------------------------------------ input

    def add_event_packet(self, stamp_ns: int, width: int, height: int, encoding: str, data,
                         seq: int | None = None, is_bigendian: bool = False) -> bool:
        """One event_camera_msgs/EventPacket. Returns False when it was rejected (counted)."""
        stamp_ns = int(stamp_ns)
        lost = 0
        if seq is not None:  # before the clock check: every packet counts for the transport
            seq = int(seq)
            if self._last_seq is not None:
                if seq > self._last_seq + 1:
                    lost = seq - self._last_seq - 1
                    self._counters["packets_lost"] += lost
                elif seq <= self._last_seq:
                    self._counters["seq_restarts"] += 1
            self._last_seq = seq
        if not self._check_clock(TOPIC_EVENTS, stamp_ns):
            return False
        if lost:
            self._lost_at.append((stamp_ns, lost))
        reason = self._packet_problem(int(width), int(height), str(encoding), bool(is_bigendian))
        if reason:
            self._violation("packets_rejected", reason)
            return False
        n_bytes = len(data)
        if n_bytes & 1:
            self._counters["decode_faults"] += 1
            self._fault(f"event packet stamped {stamp_ns} has {n_bytes} bytes, not whole 16-bit "
                        "words: last byte dropped")
            data = data[:n_bytes - 1]
        if self._decoder is None:
            self._decoder = Evt3Decoder(self._width, self._height)
        try:
            chunk = self._decoder.decode(data)
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop the stream
            self._counters["decode_faults"] += 1
            self._counters["packets_rejected"] += 1
            self._fault(f"evt3 decoder failed on packet stamped {stamp_ns}: {exc}")
            self._decoder = Evt3Decoder(self._width, self._height)
            return False
        self._counters["packets"] += 1
        if chunk.faults:  # counted now, formatted when read (a fault in every packet is cheap)
            self._counters["decode_faults"] += len(chunk.faults)
            self._fault_log.append(("evt3: ", chunk.faults))
        events, triggers = chunk.events, chunk.triggers
        self._counters["events"] += int(events.size)
        self._counters["triggers"] += int(triggers.size)
        first = [int(a["t"][0]) for a in (events, triggers) if a.size]
        self._sync.add_packet(min(first) if first else None, stamp_ns, triggers)
        if self._first_packet_stamp is None:
            self._first_packet_stamp = stamp_ns
        self._last_packet_stamp = stamp_ns if self._last_packet_stamp is None \
            else max(self._last_packet_stamp, stamp_ns)
        if events.size:
            self._sweep_cache = None
            self._chunks.append(events)
            t = events["t"]
            if chunk.faults or chunk.stats.get("time_jitter"):
                self._chunk_tmin.append(int(t.min()))
                self._chunk_tmax.append(int(t.max()))
            else:  # the decoder found no backward step: in time order (two strided passes saved)
                self._chunk_tmin.append(int(t[0]))
                self._chunk_tmax.append(int(t[-1]))
            self._buffered += int(events.size)
            self._enforce_capacity()
        return True

    def _packet_problem(self, width: int, height: int, encoding: str, big: bool) -> str | None:
        if encoding.lower() not in EVENT_ENCODINGS:
            return f"event packet with unknown encoding {encoding!r} (expected evt3): rejected"
        if big:
            return "event packet marked is_bigendian: EVT3 words are little-endian: rejected"
        if width <= 0 or height <= 0:
            return f"event packet without a sensor size ({width}x{height}): rejected"
        if self._width is None or self._height is None:
            self._width, self._height = width, height
        elif (width, height) != (self._width, self._height):
            return (f"event packet size mismatch: {width}x{height}, sensor is "
                    f"{self._width}x{self._height}: rejected")
        return None

    def _enforce_capacity(self) -> None:
        limit = self.config.max_events
        while self._buffered > limit and self._chunks:
            self._sweep_cache = None
            excess = self._buffered - limit
            head = self._chunks[0]
            if head.size <= excess:
                self._chunks.popleft()
                self._chunk_tmin.popleft()
                self._chunk_tmax.popleft()
                dropped = head
            else:
                dropped, self._chunks[0] = head[:excess], head[excess:]
                self._chunk_tmin[0] = int(self._chunks[0]["t"].min())
            self._buffered -= int(dropped.size)
            self._counters["events_dropped_overflow"] += int(dropped.size)
            t_max = int(dropped["t"].max())
            self._overflow_until_us = t_max if self._overflow_until_us is None \
                else max(self._overflow_until_us, t_max)

    def add_frame(self, stamp_ns: int, image: np.ndarray, encoding: str) -> bool:
        """A camera frame: uint8 in the encoding's layout (bgr8 = BGR order), or a float array
        already in SweepJob layout (RGB order, [0, 1]). Returns False when rejected (counted)."""
        stamp_ns = int(stamp_ns)
        if not self._check_clock(TOPIC_FRAMES, stamp_ns):
            return False
        image = np.asarray(image)
        reason = None
        violation = True
        if encoding not in CAMERA_ENCODINGS:
            reason = (f"frame with unknown encoding {encoding!r} "
                      f"(expected {', '.join(CAMERA_ENCODINGS)}): rejected")
        elif image.ndim != (2 if ENCODINGS[encoding][1] == 1 else 3) or \
                (image.ndim == 3 and image.shape[2] != 3):
            reason = f"frame of shape {image.shape} does not fit encoding {encoding}: rejected"
        elif self._last_frame_stamp is not None and stamp_ns <= self._last_frame_stamp:
            reason = f"frame stamped {stamp_ns} not after the previous one: rejected"
            violation = False
        else:
            reason = self._frame_size_problem(image)
        if reason:
            if violation:
                self._violation("frames_rejected", reason)
            else:
                self._counters["frames_rejected"] += 1
                self._fault(reason)
            return False
        self._counters["frames"] += 1
        self._last_frame_stamp = stamp_ns
        self._sync.add_frame(stamp_ns)
        self._frames.append(_Frame(stamp_ns, image.copy(), encoding))
        while len(self._frames) > self.config.max_pending_frames:
            self._frames.popleft()
            self._counters["frames_dropped"] += 1
        return True

    def _frame_size_problem(self, image: np.ndarray) -> str | None:
        """Frames of another size need the homography of a rig calibration file (any size works
        with one); without it, the one line says what is missing."""
        if self.sensor_size is None or not self.config.calibration.registered:
            return None
        h, w = image.shape[:2]
        if (w, h) != self.sensor_size:
            return (f"frame size mismatch: {w}x{h}, event sensor is {self._width}x{self._height}; "
                    "a camera that does not share the sensor's pixels needs a rig calibration file "
                    "with frame_to_events (CALIB=<file> / calibration_file): rejected")
        return None

    def add_frame_message(self, stamp_ns: int, width: int, height: int, encoding: str, step: int,
                          data, is_bigendian: bool = False) -> bool:
        """A sensor_msgs/Image's fields; malformed images are rejected and counted."""
        try:
            pixels = image_to_array(width, height, encoding, step, data, is_bigendian)
        except ImageError as exc:
            if self._check_clock(TOPIC_FRAMES, int(stamp_ns)):
                self._violation("frames_rejected", f"frame: {exc}: rejected")
            return False
        return self.add_frame(stamp_ns, pixels, encoding)

    def add_focus(self, stamp_ns: int, position_dpt: float, velocity: float = float("nan")) -> bool:
        """One lens focus state (diopters). The velocity is not needed (the trend is used)."""
        stamp_ns = int(stamp_ns)
        if not self._check_clock(TOPIC_FOCUS, stamp_ns):
            return False
        before = self._tracker.rejected + self._tracker.out_of_order
        self._tracker.add(stamp_ns, position_dpt)
        if self._tracker.rejected + self._tracker.out_of_order > before:
            self._counters["focus_rejected"] += 1
            return False
        self._counters["focus_samples"] += 1
        return True

    # ------------------------------------------------------------------ output

    def pop_jobs(self) -> list[SweepJob]:
        """Jobs whose sweep has ended and whose events have all arrived (frame order)."""
        return self._collect(final=False)

    def flush(self) -> list[SweepJob]:
        """End of input: every frame in a complete sweep whose events reach its end, now.

        Frames whose sweep never completed are dropped (counted in frames_without_sweep)."""
        return self._collect(final=True)

    def _collect(self, final: bool) -> list[SweepJob]:
        jobs: list[SweepJob] = []
        margin = int(self.config.ready_margin_ms * 1e6)
        waiting_sweep: Sweep | None = None
        while self._frames:
            frame = self._frames[0]
            # the sweep that holds the frame's mid-exposure, not its (possibly late) stamp
            mid_ns = frame.stamp_ns - int(round(self._sync.frame_stamp_offset_ns(frame.stamp_ns)))
            state, sweep = self._tracker.classify(mid_ns)
            if state == "pending":
                if not final:
                    break
                state = "none"
            if state == "none":
                self._frames.popleft()
                self._counters["frames_without_sweep"] += 1
                continue
            assert sweep is not None
            ready_at = sweep.end_ns + margin
            have = self._last_packet_stamp
            if not final and (have is None or have < ready_at):
                waiting_sweep = sweep
                break
            self._frames.popleft()
            # packets are stamped in order: "up to ready_at" is the same set live and offline
            job, reason = self._make_job(frame, sweep, ready_at)
            if job is None:
                code, text = reason
                self._counters["jobs_skipped"] += 1
                self.skipped_by_reason[code] = self.skipped_by_reason.get(code, 0) + 1
                self.last_skip = f"frame {frame.stamp_ns}: {text}: skipped"
                self._fault(self.last_skip)
                continue
            self._counters["jobs"] += 1
            jobs.append(job)
        self._prune(waiting_sweep)
        return jobs

    def _make_job(self, frame: _Frame, sweep: Sweep, fit_at_ns: int):
        """(job, None), or (None, (reason code, one-line reason)) for a job that must be skipped."""
        problem = self._frame_size_problem(frame.pixels)
        if problem:
            self._violation("frames_rejected", problem)
            return None, ("frame_size", problem)
        if self._last_packet_stamp is None:
            return None, ("no_packets", "no event packets")
        if self._last_packet_stamp < sweep.end_ns:
            return None, ("events_end_early", "the event stream ends before the sweep does")
        delay = int(5e6)
        if self._first_packet_stamp is not None and self._first_packet_stamp - delay > sweep.start_ns:
            return None, ("events_start_late", "the event stream starts after the sweep began")
        fit = self._sync.fit(fit_at_ns, frame.stamp_ns)
        if fit is None:
            return None, ("no_clock_fit", "no clock fit (no events decoded)")
        # The job's origin is mid-exposure in ROS time: the stamp less its offset (given, or
        # fitted from trigger pairs). A trigger fit maps sensor time onto the stamps' axis, a
        # stamp fit onto ROS time itself.
        offset_ns = int(round(self._sync.frame_stamp_offset_ns(frame.stamp_ns)))
        origin_ns = frame.stamp_ns - offset_ns
        axis_shift = offset_ns if fit.source == "triggers" else 0
        lo_us = int(np.floor(fit.to_sensor_us(sweep.start_ns + axis_shift))) - 1
        hi_us = int(np.ceil(fit.to_sensor_us(sweep.end_ns + axis_shift))) + 1
        if self._overflow_until_us is not None and self._overflow_until_us >= lo_us:
            return None, ("overflow", "events of its sweep were dropped (buffer overflow)")
        events = self._events_for(fit, lo_us, hi_us, origin_ns + axis_shift, origin_ns, sweep)
        focus_t_ns, lens_dpt = self._tracker.focus_between(sweep.start_ns, sweep.end_ns)
        if focus_t_ns.size < 2:
            return None, ("few_lens_samples", "fewer than two lens samples in its sweep")
        saturated = saturated_fraction(frame.pixels)  # only for frames that make a job
        self.last_saturated_fraction = saturated
        if saturated > self.config.max_saturated_fraction:
            return None, ("saturated", f"frame saturated ({saturated:.0%} of its pixels at "
                                       "full scale): no evidence of the scene there")
        n_pixels = frame.pixels.shape[0] * frame.pixels.shape[1]
        min_events = max(1, int(np.ceil(self.config.min_events_per_pixel * n_pixels)))
        if events.size < min_events:
            return None, ("no_events", f"{events.size} events in its sweep (fewer than "
                                       f"{min_events}): nothing to refocus with")
        pixels = frame.pixels
        calib = self.config.calibration
        linear = to_linear(pixels, frame.encoding, transfer=calib.frame_transfer) \
            if np.issubdtype(pixels.dtype, np.integer) else np.ascontiguousarray(pixels, dtype=np.float32)
        focus_t, focus_dpt = calib.lens_to_focus((focus_t_ns - origin_ns).astype(np.float64) * 1e-9, lens_dpt)
        lost = sum(n for stamp, n in self._lost_at
                   if sweep.start_ns <= stamp <= sweep.end_ns + int(5e6))
        job = SweepJob(
            stamp_ns=frame.stamp_ns,
            frame=linear,
            encoding=frame.encoding,
            events=events,
            focus_t=focus_t,
            focus_dpt=focus_dpt,
            frame_to_events=None if calib.registered else calib.homography,
            sensor_size=None if calib.registered else (self._height, self._width),
            frame_transfer=calib.frame_transfer,
            exposure_s=self._sync.exposure_s(frame.stamp_ns),
            meta={
                "sweep_index": sweep.index,
                "sweep_direction": sweep.direction,
                "sweep_start_ns": sweep.start_ns,
                "sweep_end_ns": sweep.end_ns,
                "sync_source": fit.source,
                "drift_ppm": fit.drift_ppm,
                "packets_lost": lost,
                "n_events": int(events.size),
            },
        )
        return job, None

    def _sweep_events(self, lo_us: int, hi_us: int) -> np.ndarray:
        """Buffered events with sensor time in [lo, hi]; cached for the frames of one sweep."""
        key = (lo_us, hi_us)  # the cache is dropped whenever the buffer changes
        if self._sweep_cache is not None and self._sweep_cache[0] == key:
            return self._sweep_cache[1]
        parts = [c for c, t_min, t_max in zip(self._chunks, self._chunk_tmin, self._chunk_tmax,
                                              strict=True)
                 if t_max >= lo_us and t_min <= hi_us]
        ev = np.concatenate(parts) if parts else np.zeros(0, EVENT_DTYPE)
        ev = ev[(ev["t"] >= lo_us) & (ev["t"] <= hi_us)]
        self._sweep_cache = (key, ev)
        return ev

    def _events_for(self, fit: ClockFit, lo_us: int, hi_us: int, ref_ns: int, origin_ns: int,
                    sweep: Sweep) -> np.ndarray:
        """Events of the sweep in us relative to the job's origin; `ref_ns` is that origin on
        the fit's own time axis."""
        ev = self._sweep_events(lo_us, hi_us)
        if not ev.size:
            return np.zeros(0, EVENT_DTYPE)
        rel = fit.relative_us(ev["t"], ref_ns)
        lo_rel = -((origin_ns - sweep.start_ns) // 1000)  # ceil of (start - origin) / 1000
        hi_rel = (sweep.end_ns - origin_ns) // 1000
        keep = (rel >= lo_rel) & (rel <= hi_rel)
        out = ev[keep]
        out["t"] = rel[keep]
        return out

    def _prune(self, waiting_sweep: Sweep | None) -> None:
        """Drop what no future job can need (see the module docstring)."""
        needed = [self._tracker.earliest_needed_ns()]
        if waiting_sweep is not None:
            needed.append(waiting_sweep.start_ns)
        if self._frames:
            needed.append(self._frames[0].stamp_ns)
        # frames still to come are stamped after the last one: their sweeps end after it
        after = self._last_frame_stamp if self._last_frame_stamp is not None else -(2**62)
        starts = [s.start_ns for s in self._tracker.sweeps if s.end_ns >= after]
        if starts and self._last_packet_stamp is not None:
            lag_floor = self._last_packet_stamp - int(self.config.max_frame_lag_s * 1e9)
            needed.append(max(min(starts), lag_floor))
        if self._tracker.last_stamp_ns is None and self._last_packet_stamp is not None:
            # no lens data yet: sweeps can only start after lens samples that are still to come
            needed.append(self._last_packet_stamp - int(self.config.max_frame_lag_s * 1e9))
        needed = [n for n in needed if n is not None]
        if not needed:
            return
        keep_from_ns = min(needed) - int(self.config.ready_margin_ms * 1e6)
        self._tracker.prune_before(keep_from_ns)
        fit = self._sync.stamps.current()  # cached: pruning keeps a slack far above its error
        if fit is None or not self._chunks:
            return
        keep_from_us = fit.to_sensor_us(keep_from_ns) - self.config.sync.jump_tolerance_ms * 1e3
        while self._chunks and self._chunk_tmax[0] < keep_from_us:
            self._sweep_cache = None
            self._buffered -= int(self._chunks[0].size)
            self._counters["events_pruned"] += int(self._chunks[0].size)
            self._chunks.popleft()
            self._chunk_tmin.popleft()
            self._chunk_tmax.popleft()

    # ------------------------------------------------------------------ health

    def counts(self) -> dict:
        """The counters alone (cheap: for a check after every message)."""
        out = dict(self._counters)
        out["events_buffered"] = self._buffered
        return out

    def stats(self) -> dict:
        out = dict(self._counters)
        out.update({
            "events_buffered": self._buffered,
            "buffer_fill": self._buffered / max(self.config.max_events, 1),
            "frames_pending": len(self._frames),
            "focus_gaps": self._tracker.gaps,
            "sweeps": self._tracker.sweep_count,
            "turning_points": self._tracker.turning_point_count,
            "sensor_size": f"{self._width}x{self._height}" if self.sensor_size else "",
            "last_fault": self.faults[-1] if self.faults else "",
            "last_reset": self.last_reset_reason,
            "last_skip": self.last_skip,
            "skipped_by_reason": ", ".join(f"{k} {v}" for k, v in
                                           sorted(self.skipped_by_reason.items())),
            "frame_saturated_fraction": self.last_saturated_fraction,
        })
        out.update(self._sync.summary())
        return out

    @property
    def contract_violations(self) -> int:
        return self._counters["contract_violations"]

    @property
    def clock(self) -> ClockSync:
        return self._sync

    @property
    def tracker(self) -> SweepTracker:
        return self._tracker
