"""EVT 3.0 codec (Prophesee): stream decoder, encoder and `.raw` file IO.

EVT 3.0 is a stream of 16-bit little-endian words whose meaning depends on state set by earlier
words (current y, time, vector base x), so a naive decoder loops per word. Two decoders give
identical results, stats and fault messages: a compiled one (`_evt3_kernel`, numba; used when
numba is installed, several times faster, releases the GIL) and the vectorised numpy reference
described here, selected with `Evt3Decoder(backend=...)`. In the reference every per-word step is
a numpy pass: "last value seen" is a cumulative count of the state words indexing their
values; the state carried from the previous packet enters as synthetic ADDR_Y / TIME_HIGH /
TIME_LOW words in front of the new ones (the vector base as element 0 of its lookup). Everything is
computed per event word, and vector words are expanded to events by unpacking their bit masks at
the very end. A packet may end anywhere, even mid-word. Large inputs go in blocks of BLOCK_WORDS.

Time is 24 bits of microseconds and wraps every 2^24 us. A TIME_HIGH that drops by more than half
its range is a wrap and advances a running epoch, so decoded times are unwrapped microseconds
since the stream's clock origin (Prophesee's decoders use a stricter rule, a drop of nearly the
whole range; the encoder writes TIME_HIGH 0xFFF, 0x000 at every wrap so both agree). As in
Prophesee's decoder, TIME_HIGH sets the low 12 bits to zero until the next TIME_LOW.

Faults never lose valid data: in non-strict mode each fault is a one-line message in
`DecodedChunk.faults` (one per kind and block, with a count and the first word's index, type and
value) and the events around it are kept; events that cannot be placed (no y/time/base yet, or
outside width x height) are dropped and counted. Time order is checked between consecutive event
words that have their state (those outside the sensor included): a backward step up to
`max_jitter_us` is jitter (counted in stats), a larger one is a fault, and the events keep the
time the stream gives them either way. In strict mode the first fault
raises `Evt3Error` whose `.partial` holds everything decoded before the faulty word.
"""
from __future__ import annotations

import dataclasses
from collections.abc import MutableSequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from efs_ros.core.events import EVENT_DTYPE, TRIGGER_DTYPE

# Word types (bits 15..12).
ADDR_Y, ADDR_X, VECT_BASE_X, VECT_12, VECT_8 = 0x0, 0x2, 0x3, 0x4, 0x5
TIME_LOW, CONTINUED_4, TIME_HIGH, EXT_TRIGGER, OTHERS, CONTINUED_12 = 0x6, 0x7, 0x8, 0xA, 0xE, 0xF
RESERVED_9 = 0x9
"""Reserved, but emitted by some cameras (reported for Lucid): skipped silently, only counted."""
_UNKNOWN_TYPES_MASK = np.uint16((1 << 0x1) | (1 << 0xB) | (1 << 0xC) | (1 << 0xD))
"""Types no EVT 3.0 producer should emit: skipped and reported as faults."""

TIME_WRAP_US = 1 << 24
_HIGH_RANGE = 1 << 12
_WRAP_DROP = _HIGH_RANGE // 2
"""A TIME_HIGH drop larger than this (half the range, 8.4 s) is a wrap; a smaller drop is time going
backwards."""
DEFAULT_MAX_JITTER_US = 64
"""Backward steps of event time up to this are sensor jitter (counted in stats, events kept, no
fault); larger backward steps are faults (events still kept, with the time the stream says)."""
_NO_BASE = -(1 << 30)
"""Vector base x before any VECT_BASE_X: stays negative after any number of increments."""


class Evt3Error(ValueError):
    """Bad EVT 3.0 data in strict mode; `.partial` is what was decoded before the fault."""

    def __init__(self, message: str, partial: DecodedChunk):
        super().__init__(message)
        self.partial = partial


@dataclass(slots=True)
class DecodedChunk:
    events: np.ndarray
    """EVENT_DTYPE in stream order; t = unwrapped sensor microseconds."""
    triggers: np.ndarray
    """TRIGGER_DTYPE in stream order."""
    faults: list[str] = field(default_factory=list)
    n_words: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    """Counters that are not faults: reserved_0x9 words, time_jitter steps, dropped_events."""


@dataclass(frozen=True)
class Evt3State:
    """What a packet boundary must carry: the decoder's registers and the clock epoch."""

    y: int = -1
    """Current ADDR_Y (-1: none seen yet)."""
    base_x: int = _NO_BASE
    """Current vector base x (negative: no VECT_BASE_X seen yet)."""
    vec_p: int = 0
    """Polarity bit of the last VECT_BASE_X."""
    high: int = -1
    """Last TIME_HIGH payload (12 bits, -1: none seen yet)."""
    epoch: int = 0
    """Number of 2^24 us wraps seen."""
    time: int = -1
    """Unwrapped time set by the last time word (-1: unknown)."""
    last_t: int = -1
    """Time of the last CD event emitted (for the backward-time check)."""
    words: int = 0
    """Words consumed since reset (fault messages give stream word indices)."""
    pending: bytes = b""
    """A trailing odd byte waiting for its partner in the next call."""


def _empty_chunk(n_words: int = 0) -> DecodedChunk:
    return DecodedChunk(np.zeros(0, EVENT_DTYPE), np.zeros(0, TRIGGER_DTYPE), [], n_words, {})


def _prepend(first, values: np.ndarray, dtype) -> np.ndarray:
    """[first, *values]: the carried state becomes index 0 of a "last value seen" lookup."""
    out = np.empty(values.size + 1, dtype)
    out[0] = first
    out[1:] = values
    return out


def _ramp(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each count c, concatenated (vectorised)."""
    total = int(counts.sum())
    starts = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) - np.repeat(starts, counts)


_P_FROM_WORD_TOP = np.where(np.arange(32) & 1, 1, -1).astype(np.int8)
"""Polarity (+1/-1) indexed by word >> 11 (type and bit 11) for ADDR_X and VECT_BASE_X."""
BLOCK_WORDS = 1 << 18
"""Large inputs are decoded in blocks of this many words (state carried exactly between them) so
the working arrays stay in cache. Faults are counted per kind and block by both backends."""

# Fault kinds, in the order faults found at the same word are listed.
F_UNKNOWN, F_NO_STATE, F_BACKWARDS, F_RANGE, F_TRIGGER_NO_TIME = range(5)
N_FAULT_KINDS = 5

# The compiled backend's int64 in/out array: the registers (the Evt3State fields y .. words, in
# that order; the kernel updates them unless a strict-mode fault leaves the decoder as it was),
# the configuration, and the counters the kernel returns.
IO_REGS, N_REGS = 0, 8
_NO_TRIGGERS = np.empty(0, TRIGGER_DTYPE)
_NO_TRIGGERS.flags.writeable = False  # shared by every chunk without triggers
_REG_FIELDS = tuple(f.name for f in dataclasses.fields(Evt3State))[:N_REGS]
IO_X_LIMIT, IO_Y_LIMIT, IO_MAX_JITTER = 8, 9, 10
IO_FAULTS, IO_RESERVED, IO_JITTER, IO_WORDS_DONE, IO_CUT_EVENTS, IO_CUT_TRIGGERS = range(11, 17)
IO_EVENTS, IO_TRIGGERS = 17, 18
IO_SIZE = 19
_LARGE_WORDS = 1 << 17
"""From this many words (events upwards of a few MB) the outputs are allocated by numpy, which
asks for huge pages: a fresh output of tens of MB otherwise costs more in page faults than in
decoding."""
# Columns of the kernel's fault records (one per kind and block with such faults): the first
# faulty word's type and value, and (backwards) previous and new time or (range) x and y.
FR_BLOCK, FR_KIND, FR_WORD, FR_COUNT, FR_TYPE, FR_VALUE, FR_A, FR_B = range(8)
N_FAULT_COLS = 8

BACKENDS = ("auto", "numba", "numpy")
_WORD_DTYPE = np.dtype("<u2")
_kernel_module = None
_kernel_error: str | None = None


def _load_kernel():
    """The compiled kernel module, imported (numba is slow to import) and warmed on first use;
    None if numba is unavailable."""
    global _kernel_module, _kernel_error
    if _kernel_module is None and _kernel_error is None:
        try:
            from efs_ros.core import _evt3_kernel
        except ImportError as err:
            _kernel_error = f"numba backend unavailable: {err}"
        else:
            _kernel_module = _evt3_kernel
            _warm(_evt3_kernel)
    return _kernel_module


_FAST_BYTES = 2 * BLOCK_WORDS
"""Packets up to this size decode as one block (fault records of one block suffice)."""


def _bytes_entry_point(kernel):
    """The compiled `kernel.decode` for read-only word arrays (what `bytes` give), called
    without numba's per-call type dispatch; None if numba does not expose it (yet)."""
    if _ENTRY_POINT:
        return _ENTRY_POINT[0]
    try:
        for sig, compiled in kernel.decode.overloads.items():
            if not sig[0].mutable:
                _ENTRY_POINT.append(compiled.entry_point)
                return compiled.entry_point
    except (AttributeError, IndexError, TypeError):
        pass
    return None


_ENTRY_POINT: list = []


def _warm(kernel) -> None:
    """Compile (or load from the on-disk cache) the specialisations the decoder and encoder call."""
    events = np.zeros(3, EVENT_DTYPE)
    events["x"], events["p"] = [1, 2, 3], 1
    data = Evt3Encoder(backend="numba").encode(events, np.zeros(1, TRIGGER_DTYPE))
    Evt3Decoder(backend="numba").decode(data)


def warm_up(backend: str = "auto") -> str:
    """Load the compiled decoder and encoder now (first use costs seconds of JIT compilation when
    their disk cache is cold); returns the backend an `Evt3Decoder(backend=...)` uses."""
    return Evt3Decoder(backend=backend).backend


class Evt3Decoder:
    """Stateful EVT 3.0 decoder: feed packets in order, get events with unwrapped time.

    width/height, when given, turn events outside the sensor into faults. `max_jitter_us` is the
    largest backward step of event time accepted silently (see DEFAULT_MAX_JITTER_US). `backend`:
    "numba" (compiled single pass, releases the GIL), "numpy" (vectorised reference) or "auto"
    (numba when installed). Both give identical results, stats and fault messages.
    """

    def __init__(self, width: int | None = None, height: int | None = None, *,
                 max_jitter_us: int = DEFAULT_MAX_JITTER_US, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        if int(max_jitter_us) < 0:
            raise ValueError(f"max_jitter_us must be >= 0, got {max_jitter_us}")
        self.width = width
        self.height = height
        self.max_jitter_us = int(max_jitter_us)
        self._kernel = None if backend == "numpy" else _load_kernel()
        if backend == "numba" and self._kernel is None:
            raise ImportError(_kernel_error)
        self.backend = "numpy" if self._kernel is None else "numba"
        self._io = np.zeros(IO_SIZE, np.int64)
        self._io[IO_X_LIMIT] = 2048 if width is None else width
        self._io[IO_Y_LIMIT] = 2048 if height is None else height
        self._io[IO_MAX_JITTER] = self.max_jitter_us
        self._fault_records = np.empty((N_FAULT_KINDS, N_FAULT_COLS), np.int64)
        """Room for the faults of one block (the kernel's faults in a call of one block)."""
        self._direct = None
        if self._kernel is not None:
            self._scratch = np.empty(self._kernel.SCRATCH_SIZE, np.int64)
            self._direct = _bytes_entry_point(self._kernel)
        self.reset()

    def reset(self) -> None:
        self._set_regs(Evt3State())
        self._pending = b""
        self.stats: dict[str, int] = {}

    def _set_regs(self, st: Evt3State) -> None:
        self._io[IO_REGS:IO_REGS + N_REGS] = [getattr(st, name) for name in _REG_FIELDS]

    @property
    def state(self) -> Evt3State:
        return Evt3State(*self._io[IO_REGS:IO_REGS + N_REGS].tolist(), pending=self._pending)

    def decode(self, data, strict: bool = False) -> DecodedChunk:
        """Decode one packet (bytes, bytearray, memoryview or uint8 ndarray) of the stream.

        In strict mode a fault raises Evt3Error and leaves the decoder as it was before the call.
        """
        direct = self._direct
        if direct is not None and type(data) is bytes and not self._pending:
            n_bytes = len(data)
            if 0 < n_bytes <= _FAST_BYTES and not n_bytes & 1:
                # the common live case (one whole driver packet): no copy, no type dispatch
                events, triggers, report = direct(np.frombuffer(data, _WORD_DTYPE), self._io,
                                                  self._fault_records, self._scratch, BLOCK_WORDS,
                                                  strict)
                return self._merge_stats(self._chunk(events, triggers, report, self._fault_records,
                                                     n_bytes >> 1, strict))
        buf = _as_buffer(data)
        if self._pending:
            buf = self._pending + bytes(buf)
        n_bytes = len(buf)
        n_words = n_bytes >> 1
        pending = bytes(buf[n_bytes - 1:]) if n_bytes & 1 else b""
        if n_words == 0:
            chunk = _empty_chunk()
        elif self._kernel is not None:
            chunk = self._decode_compiled(buf, n_words, strict)
        else:
            chunk = self._decode_numpy(np.frombuffer(buf, dtype="<u2", count=n_words), strict)
        self._pending = pending
        return self._merge_stats(chunk)

    def _merge_stats(self, chunk: DecodedChunk) -> DecodedChunk:
        if chunk.stats:
            for key, value in chunk.stats.items():
                self.stats[key] = self.stats.get(key, 0) + value
        return chunk

    def _decode_numpy(self, words: np.ndarray, strict: bool) -> DecodedChunk:
        st = self.state
        n_words = words.size
        if n_words <= BLOCK_WORDS + BLOCK_WORDS // 2:
            chunk, new_state, first_fault = _decode_block(
                words, st, self.width, self.height, self.max_jitter_us, strict)
            if first_fault is not None and strict:
                raise Evt3Error(first_fault, chunk)
        else:
            chunks = []
            new_state = st
            for start in range(0, n_words, BLOCK_WORDS):
                chunk, new_state, first_fault = _decode_block(
                    words[start:start + BLOCK_WORDS], new_state, self.width, self.height,
                    self.max_jitter_us, strict)
                chunks.append(chunk)
                if first_fault is not None and strict:
                    raise Evt3Error(first_fault, _join(chunks))
            chunk = _join(chunks)
        self._set_regs(new_state)
        return chunk

    def _decode_compiled(self, buf, n_words: int, strict: bool) -> DecodedChunk:
        words = np.frombuffer(buf, _WORD_DTYPE, n_words)
        if type(buf) is not bytes:  # (bytes: read-only and aligned) one specialisation of the kernel
            if not words.flags.aligned:  # a view at an odd offset
                words = words.copy()
            words.flags.writeable = False
        block_words = BLOCK_WORDS
        if n_words <= block_words + block_words // 2:  # one block
            fault_records = self._fault_records
        else:
            fault_records = np.empty((-(-n_words // block_words) * N_FAULT_KINDS, N_FAULT_COLS), np.int64)
        kernel = self._kernel
        if n_words < _LARGE_WORDS:
            events, triggers, anything_to_report = kernel.decode(
                words, self._io, fault_records, self._scratch, block_words, strict)
        else:
            block_words = kernel.effective_block_words(n_words, block_words)
            info = np.empty((kernel.info_rows(n_words, block_words), kernel.N_INFO), np.int64)
            n_events, n_triggers = kernel.scan_words(words, block_words, info)
            events = np.empty(n_events + kernel.SPARE_EVENTS, EVENT_DTYPE)
            triggers = np.empty(n_triggers, TRIGGER_DTYPE)
            anything_to_report = kernel.decode_into(
                words, self._io, fault_records, self._scratch, block_words, strict, info, events, triggers)
            events = events[:self._io[IO_EVENTS]]
            triggers = triggers[:self._io[IO_TRIGGERS]]
        return self._chunk(events, triggers, anything_to_report, fault_records, n_words, strict)

    def _chunk(self, events, triggers, anything_to_report, fault_records, n_words: int,
               strict: bool) -> DecodedChunk:
        """The chunk of a kernel call (triggers None: the kernel found none)."""
        if triggers is None:
            triggers = _NO_TRIGGERS
        if not anything_to_report:
            return DecodedChunk(events, triggers, [], n_words, {})
        return self._report(events, triggers, fault_records, n_words, strict)

    def _report(self, events, triggers, fault_records, n_words: int, strict: bool) -> DecodedChunk:
        """The chunk of a kernel call that has faults, reserved words or jitter to report."""
        n_faults, n_reserved, n_jitter, words_done, cut_events, cut_triggers = \
            self._io[IO_FAULTS:IO_CUT_TRIGGERS + 1].tolist()
        stats = {}
        if n_reserved:
            stats["reserved_0x9"] = n_reserved
        if n_jitter:
            stats["time_jitter"] = n_jitter
        if not n_faults:
            return DecodedChunk(events, triggers, [], n_words, stats)
        records = sorted(fault_records[:n_faults].tolist(),
                         key=lambda r: (r[FR_BLOCK], r[FR_WORD], r[FR_KIND]))
        faults = FaultMessages(records, self.width, self.height, self.max_jitter_us)
        dropped = [r[FR_COUNT] for r in records if r[FR_KIND] in (F_NO_STATE, F_RANGE)]
        if dropped:
            stats["dropped_events"] = sum(dropped)
        stats["faults"] = n_faults
        if strict:
            raise Evt3Error(faults[0], DecodedChunk(events[:cut_events], triggers[:cut_triggers], faults,
                                                    words_done, stats))
        return DecodedChunk(events, triggers, faults, n_words, stats)

    def finish(self, strict: bool = False) -> DecodedChunk:
        """End of stream: a leftover odd byte is a truncated word (a fault)."""
        chunk = _empty_chunk()
        if self._pending:
            pending = self._pending
            message = (f"truncated data: {len(pending)} trailing byte (0x{pending[0]:02X}) "
                       f"after {self.state.words} whole word(s) is not a whole 16-bit word")
            if strict:
                raise Evt3Error(message, chunk)
            chunk.faults.append(message)
            chunk.stats["faults"] = 1
            self.stats["faults"] = self.stats.get("faults", 0) + 1
            self._pending = b""
        return chunk


class FaultMessages(MutableSequence):
    """A chunk's fault lines from the kernel's fault records, formatted when first read: a
    stream with a fault in every packet pays for counting them (len), not for the text.
    Behaves as the list of lines it stands for (slices are plain lists)."""

    def __init__(self, records: list, width, height, max_jitter: int):
        self._records, self._size, self._jitter = records, (width, height), max_jitter
        self._lines: list[str] | None = None

    @property
    def lines(self) -> list[str]:
        if self._lines is None:
            self._lines = [_fault_message(r[FR_KIND], r[FR_WORD], r[FR_COUNT], r[FR_TYPE],
                                          r[FR_VALUE], r[FR_A], r[FR_B], *self._size, self._jitter)
                           for r in self._records]
        return self._lines

    def __len__(self) -> int:
        return len(self._records) if self._lines is None else len(self._lines)

    def __getitem__(self, index):
        return self.lines[index]

    def __setitem__(self, index, value) -> None:
        self.lines[index] = value

    def __delitem__(self, index) -> None:
        del self.lines[index]

    def insert(self, index: int, value: str) -> None:
        self.lines.insert(index, value)

    def __eq__(self, other) -> bool:
        return isinstance(other, (list, FaultMessages)) and self.lines == list(other)

    def __repr__(self) -> str:
        return repr(self.lines)


def _fault_message(kind: int, word: int, count: int, ty: int, value: int, a: int, b: int,
                   width, height, max_jitter: int) -> str:
    """One line per fault kind and block: count, and the first faulty word (stream index, type,
    value), with (backwards) the previous and new time or (range) the event's x and y."""
    if kind == F_UNKNOWN:
        return (f"unknown word type 0x{ty:X} at word {word} (value 0x{value:04X}); "
                f"{count} such word(s) skipped")
    if kind == F_NO_STATE:
        return (f"{count} event(s) before the ADDR_Y/TIME_HIGH/VECT_BASE_X they need, dropped "
                f"(first at word {word}, type 0x{ty:X}, value 0x{value:04X})")
    if kind == F_BACKWARDS:
        return (f"time went backwards by {a - b} us at word {word} (type 0x{ty:X}, value 0x{value:04X}: "
                f"{a} -> {b} us); {count} backward step(s) over the {max_jitter} us jitter tolerance")
    if kind == F_RANGE:
        return (f"{count} event(s) outside the {width}x{height} sensor, dropped "
                f"(first at word {word}: x={a}, y={b}, type 0x{ty:X}, value 0x{value:04X})")
    return (f"{count} trigger(s) before the first TIME_HIGH, dropped "
            f"(first at word {word}, value 0x{value:04X})")


def _join(chunks: list[DecodedChunk]) -> DecodedChunk:
    stats: dict[str, int] = {}
    for c in chunks:
        for key, value in c.stats.items():
            stats[key] = stats.get(key, 0) + value
    return DecodedChunk(_concat([c.events for c in chunks], EVENT_DTYPE),
                        _concat([c.triggers for c in chunks], TRIGGER_DTYPE),
                        [f for c in chunks for f in c.faults], sum(c.n_words for c in chunks), stats)


def _concat(arrays: list[np.ndarray], dtype) -> np.ndarray:
    """Concatenate same-dtype structured arrays as raw bytes (np.concatenate and slice assignment
    copy these packed records field by field, several times slower)."""
    out = np.empty(sum(a.size for a in arrays), dtype)
    raw = out.view(np.uint8)
    start = 0
    for a in arrays:
        stop = start + a.size * dtype.itemsize
        raw[start:stop] = np.ascontiguousarray(a).view(np.uint8)
        start = stop
    return out


def _as_buffer(data):
    if isinstance(data, bytes):
        return data
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise TypeError(f"EVT3 data must be bytes or a uint8 array, got an array of {data.dtype}")
        return memoryview(np.ascontiguousarray(data).reshape(-1))
    if isinstance(data, memoryview):
        return data if data.format in ("B", "b", "c") and data.ndim == 1 else data.cast("B")
    if isinstance(data, bytes | bytearray):
        return data
    raise TypeError(f"EVT3 data must be bytes, bytearray, memoryview or uint8 ndarray, not {type(data)}")


def _state_words(st: Evt3State) -> list[int]:
    """Synthetic ADDR_Y / TIME_HIGH / TIME_LOW words that re-create the carried y and time."""
    words = []
    if st.y >= 0:
        words.append((ADDR_Y << 12) | st.y)
    if st.time >= 0:
        words.append((TIME_HIGH << 12) | st.high)
        words.append((TIME_LOW << 12) | (st.time & 0xFFF))
    return words


_RARE_TYPES_MASK = np.uint16(sum(1 << t for t in (0x1, VECT_BASE_X, VECT_12, VECT_8, RESERVED_9,
                                                  EXT_TRIGGER, 0xB, 0xC, 0xD)))
"""Word types absent from most packets: one bit test tells whether their handling can be skipped."""
_VEC_INCREMENT = np.zeros(16, np.int32)
_VEC_INCREMENT[VECT_12], _VEC_INCREMENT[VECT_8] = 12, 8
_VEC_BITS = np.zeros(16, np.uint16)
_VEC_BITS[VECT_12], _VEC_BITS[VECT_8] = 0xFFF, 0xFF
_MASKS = np.arange(1 << 12)
_POPCOUNT = np.array([bin(m).count("1") for m in range(1 << 12)], np.int64)
_HIGHEST_BIT = np.where(_MASKS > 0, np.floor(np.log2(np.maximum(_MASKS, 1))), -4096).astype(np.int32)
"""Per 12-bit vector mask: number of events, and offset of its last event (very negative if none)."""


def _decode_block(words: np.ndarray, st: Evt3State, width, height, max_jitter: int, strict: bool):
    """Decode whole words; returns (chunk, state after it, first fault message or None).

    Everything is computed per event word (ADDR_X, VECT_12, VECT_8); vector words are expanded to
    events only at the end. In strict mode with a fault, the chunk returned holds only what precedes
    the first faulty word.
    """
    n_words = words.size
    if n_words == 0:
        return _empty_chunk(), st, None
    prefix = _state_words(st)
    k = len(prefix)
    w = np.concatenate((np.array(prefix, np.uint16), words)) if k else words
    first_index = st.words - k
    """Stream word index of w[0] (the k synthetic words come before this block)."""
    ty = w >> 12
    faults: list[tuple[int, str]] = []
    stats: dict[str, int] = {}

    # ---- rare word types: unknown (faults), reserved 0x9 (counted), vectors, triggers ----
    has_vec = has_trig = False
    if ((_RARE_TYPES_MASK >> ty) & 1).any():
        if w.size < 16384:  # one call beats several passes on small packets
            counts = np.bincount(ty, minlength=16).tolist()
            has_vec = counts[VECT_BASE_X] + counts[VECT_12] + counts[VECT_8] > 0
            has_trig = counts[EXT_TRIGGER] > 0
            n_reserved = counts[RESERVED_9]
            has_unknown = counts[0x1] + counts[0xB] + counts[0xC] + counts[0xD] > 0
        else:
            has_vec = bool(((ty - np.uint16(VECT_BASE_X)) <= 2).any())  # 3, 4, 5 (uint16 wraps below)
            has_trig = bool((ty == EXT_TRIGGER).any())
            n_reserved = int(np.count_nonzero(ty == RESERVED_9))
            has_unknown = bool(((_UNKNOWN_TYPES_MASK >> ty) & 1).any())
        if n_reserved:
            stats["reserved_0x9"] = n_reserved
        if has_unknown:
            where = np.flatnonzero((_UNKNOWN_TYPES_MASK >> ty) & 1)
            i = int(where[0])
            faults.append((i, F_UNKNOWN, _fault_message(F_UNKNOWN, first_index + i, where.size, int(ty[i]),
                                                        int(w[i]), 0, 0, width, height, max_jitter)))

    # ---- y: the i-th ADDR_Y value is y_vals[i - 1]; count_y says how many came up to a word ----
    m_y = ty == ADDR_Y
    y_vals = np.compress(m_y, w) & 0x7FF
    count_y = np.add.accumulate(m_y.view(np.uint8), dtype=np.int32)

    # ---- time at each time word, unwrapped; -1 while no TIME_HIGH has been seen ----
    m_time = (ty == TIME_LOW) | (ty == TIME_HIGH)
    tw = np.compress(m_time, w)
    count_t = np.add.accumulate(m_time.view(np.uint8), dtype=np.int32)
    is_th = tw >= (TIME_HIGH << 12)
    th_vals = (np.compress(is_th, tw) & 0xFFF).astype(np.int64)
    epoch, high, time_gaps = st.epoch, st.high, False
    if th_vals.size:
        wrap = (th_vals[:-1] - th_vals[1:]) > _WRAP_DROP
        if wrap.any():
            epochs = np.empty(th_vals.size, np.int64)
            epochs[0] = 0
            np.cumsum(wrap, out=epochs[1:])
            epochs += epoch
            high_full = th_vals + epochs * _HIGH_RANGE
            epoch = int(epochs[-1])
        else:
            high_full = th_vals + epoch * _HIGH_RANGE if epoch else th_vals
        high = int(th_vals[-1])
        which_high = np.add.accumulate(is_th.view(np.uint8), dtype=np.int32).astype(np.intp)
        which_high -= 1
        t_words = (high_full[which_high] << 12) | ((tw & 0xFFF) * (tw < (TIME_HIGH << 12)))
        if not is_th[0]:  # TIME_LOW words before the first TIME_HIGH ever: time unknown
            t_words[: int(np.argmax(is_th))] = -1
            time_gaps = True
        time = int(t_words[-1])
    else:
        t_words = np.full(tw.size, -1, np.int64)
        time_gaps = tw.size > 0
        time = st.time

    # ---- event words: ADDR_X, and VECT_12 / VECT_8 with their base x, polarity and bit mask ----
    base_x, vec_p = st.base_x, st.vec_p
    if has_vec:
        src, x_c, pol_c, mask_c, base_x, vec_p = _event_words_with_vectors(w, ty, st)
    else:
        src = np.flatnonzero(ty == ADDR_X)
        wc = w[src]
        x_c = wc & 0x7FF
        pol_c = ((wc >> 10) & 2).astype(np.int8)
        pol_c -= 1  # bit 11 -> +1 / -1
        mask_c = None
    n_c = src.size
    if n_c:
        # int32 counts keep the per-word arrays small; indices for take must be intp to be fast
        ky = count_y[src].astype(np.intp)
        ky -= 1
        kt = count_t[src].astype(np.intp)
        kt -= 1
        y_c = np.take(y_vals, ky, mode="wrap") if y_vals.size else np.zeros(n_c, np.uint16)
        t_c = np.take(t_words, kt, mode="wrap") if t_words.size else np.full(n_c, -1, np.int64)
        if ky[0] < 0 or kt[0] < 0 or time_gaps or has_vec:
            no_state = (ky < 0) | (kt < 0) | (t_c < 0)
            if has_vec:
                no_state |= x_c < 0
            if no_state.any():
                bad = np.flatnonzero(no_state)
                i = int(src[bad[0]])
                n_bad = bad.size if mask_c is None else int(_POPCOUNT[mask_c[bad]].sum())
                faults.append((i, F_NO_STATE, _fault_message(F_NO_STATE, first_index + i, n_bad, int(ty[i]),
                                                             int(w[i]), 0, 0, width, height, max_jitter)))
                stats["dropped_events"] = n_bad
                keep = ~no_state
                src, x_c, pol_c, y_c, t_c = src[keep], x_c[keep], pol_c[keep], y_c[keep], t_c[keep]
                mask_c = None if mask_c is None else mask_c[keep]
    else:
        y_c = np.zeros(0, np.uint16)
        t_c = np.zeros(0, np.int64)

    # ---- time order (per placed event word, in or outside the sensor): small backward steps are
    # jitter, larger ones faults ----
    last_t = st.last_t
    if t_c.size:
        if last_t > t_c[0] or (t_c[1:] < t_c[:-1]).any():
            prev_t = np.empty(t_c.size, np.int64)
            prev_t[0] = max(last_t, int(t_c[0]))
            prev_t[1:] = t_c[:-1]
            step = prev_t - t_c
            jitter = (step > 0) & (step <= max_jitter)
            if jitter.any():
                stats["time_jitter"] = int(np.count_nonzero(jitter))
            big = np.flatnonzero(step > max_jitter)
            if big.size:
                j = int(big[0])
                i = int(src[j])
                message = _fault_message(F_BACKWARDS, first_index + i, big.size, int(ty[i]), int(w[i]),
                                         int(prev_t[j]), int(t_c[j]), width, height, max_jitter)
                faults.append((i, F_BACKWARDS, message))
        last_t = int(t_c[-1])

    # ---- outside the sensor: per word for ADDR_X, per event for vectors (after expansion) ----
    x_limit = 2048 if width is None else width
    y_limit = 2048 if height is None else height
    vector_range_check = False
    if src.size:
        x_last = x_c if mask_c is None else x_c + np.take(_HIGHEST_BIT, mask_c.astype(np.intp))
        if int(x_last.max()) >= x_limit or int(y_c.max()) >= y_limit:
            if mask_c is None:
                out_of_range = (x_c >= x_limit) | (y_c >= y_limit)
                bad = np.flatnonzero(out_of_range)
                j = int(bad[0])
                _range_fault(faults, stats, bad.size, int(src[j]), first_index, int(x_c[j]), int(y_c[j]),
                             w, ty, width, height)
                keep = ~out_of_range
                src, x_c, pol_c, y_c, t_c = src[keep], x_c[keep], pol_c[keep], y_c[keep], t_c[keep]
            else:
                vector_range_check = True

    # ---- events: one per ADDR_X word, one per set bit of each vector word ----
    if mask_c is None:
        events = np.empty(src.size, EVENT_DTYPE)
        events["t"] = t_c
        events["x"] = x_c
        events["y"] = y_c
        events["p"] = pol_c
        row = None
    else:
        bits = np.unpackbits(mask_c.astype("<u2", copy=False).view(np.uint8), bitorder="little")
        flat = np.flatnonzero(bits.view(bool))
        row = flat >> 4
        x = np.take(x_c, row)
        x += flat & 15
        if vector_range_check:
            out_of_range = (x >= x_limit) | (np.take(y_c, row) >= y_limit)
            bad = np.flatnonzero(out_of_range)
            if bad.size:
                j = int(bad[0])
                _range_fault(faults, stats, bad.size, int(src[row[j]]), first_index, int(x[j]),
                             int(y_c[row[j]]), w, ty, width, height)
                keep = ~out_of_range
                row, x = row[keep], x[keep]
        events = np.empty(row.size, EVENT_DTYPE)
        np.take(t_c, row, out=events["t"])
        np.take(y_c, row, out=events["y"])
        np.take(pol_c, row, out=events["p"])
        events["x"] = x

    # ---- external triggers ----
    trig_src = None
    if has_trig:
        trig_src = np.flatnonzero(ty == EXT_TRIGGER)
        trig_words = w[trig_src]
        kt = count_t[trig_src].astype(np.intp) - 1
        trig_t = t_words[kt] if t_words.size else np.full(kt.size, -1, np.int64)
        no_time = (trig_t < 0) | (kt < 0)
        if no_time.any():
            i = int(trig_src[np.flatnonzero(no_time)[0]])
            faults.append((i, F_TRIGGER_NO_TIME, _fault_message(F_TRIGGER_NO_TIME, first_index + i,
                                                                int(no_time.sum()), int(ty[i]), int(w[i]),
                                                                0, 0, width, height, max_jitter)))
            trig_src, trig_words, trig_t = trig_src[~no_time], trig_words[~no_time], trig_t[~no_time]
        triggers = np.empty(trig_src.size, TRIGGER_DTYPE)
        triggers["t"] = trig_t
        triggers["channel"] = (trig_words >> 8) & 0xF
        triggers["value"] = trig_words & 1
    else:
        triggers = np.zeros(0, TRIGGER_DTYPE)

    first_fault = None
    if faults:
        faults.sort(key=lambda f: f[:2])
        stats["faults"] = len(faults)
        if strict:
            cut_at, _, first_fault = faults[0]
            words_before = int(np.searchsorted(src, cut_at))
            events = events[: words_before if row is None else int(np.searchsorted(row, words_before))]
            if trig_src is not None:
                triggers = triggers[: int(np.searchsorted(trig_src, cut_at))]
    chunk = DecodedChunk(events, triggers, [f[2] for f in faults], n_words, stats)
    new_state = Evt3State(y=int(y_vals[-1]) if y_vals.size else -1, base_x=base_x, vec_p=vec_p,
                          high=high, epoch=epoch, time=time, last_t=last_t, words=st.words + n_words)
    return chunk, new_state, first_fault


def _range_fault(faults, stats, n_bad, i, first_index, x, y, w, ty, width, height) -> None:
    faults.append((i, F_RANGE, _fault_message(F_RANGE, first_index + i, n_bad, int(ty[i]), int(w[i]), x, y,
                                              width, height, 0)))
    stats["dropped_events"] = stats.get("dropped_events", 0) + n_bad


def _event_words_with_vectors(w: np.ndarray, ty: np.ndarray, st: Evt3State):
    """Per event word (ADDR_X, VECT_12, VECT_8): source index, x or vector base x (negative: no
    VECT_BASE_X yet), polarity, bit mask (1 for ADDR_X); plus the base x / polarity bit to carry."""
    m_family = (ty - np.uint16(VECT_BASE_X)) <= 2  # VECT_BASE_X, VECT_12, VECT_8 (uint16 wraps below 3)
    wq = np.compress(m_family, w)
    tq = wq >> 12
    is_base = tq == VECT_BASE_X
    inc = np.take(_VEC_INCREMENT, tq)
    inc_incl = np.add.accumulate(inc, dtype=np.int32)
    inc_excl = inc_incl - inc
    base_words = np.compress(is_base, wq)
    # Base x of each VECT_BASE_X shifted back by the increments before it: a vector word's base
    # is then origin[its VECT_BASE_X] + its own exclusive increment sum.
    origin = _prepend(st.base_x, (base_words & 0x7FF).astype(np.int32) - np.compress(is_base, inc_excl),
                      np.int32)
    polarity = _prepend(_P_FROM_WORD_TOP[st.vec_p], np.take(_P_FROM_WORD_TOP, base_words >> 11), np.int8)
    which_base = np.add.accumulate(is_base.view(np.uint8), dtype=np.int32).astype(np.intp)
    vec = np.flatnonzero(~is_base)
    vec_base = np.take(origin, which_base[vec]) + inc_excl[vec]
    vec_pol = np.take(polarity, which_base[vec])
    vec_mask = wq[vec] & np.take(_VEC_BITS, tq[vec])
    base_x = int(origin[which_base[-1]] + inc_incl[-1])
    base_x = base_x if base_x >= 0 else _NO_BASE
    vec_p = int(polarity[which_base[-1]] > 0)

    src = np.flatnonzero((ty == ADDR_X) | (ty == VECT_12) | (ty == VECT_8))
    wc = w[src]
    is_v = np.flatnonzero((wc >> 12) != ADDR_X)
    x_c = (wc & 0x7FF).astype(np.int32)
    pol_c = ((wc >> 10) & 2).astype(np.int8)
    pol_c -= 1  # bit 11 -> +1 / -1
    mask_c = np.ones(src.size, np.uint16)
    x_c[is_v] = vec_base
    pol_c[is_v] = vec_pol
    mask_c[is_v] = vec_mask
    return src, x_c, pol_c, mask_c, base_x, vec_p


def decode_evt3(data, width: int | None = None, height: int | None = None,
                strict: bool = False, *, backend: str = "auto") -> DecodedChunk:
    """Decode a complete EVT 3.0 byte stream (a trailing odd byte is a truncation fault)."""
    decoder = Evt3Decoder(width, height, backend=backend)
    chunk = decoder.decode(data, strict=strict)
    try:
        tail = decoder.finish(strict=strict)
    except Evt3Error as err:
        raise Evt3Error(str(err), chunk) from None
    if tail.faults:
        chunk.faults.extend(tail.faults)
        chunk.stats["faults"] = chunk.stats.get("faults", 0) + len(tail.faults)
    return chunk


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------

class Evt3Encoder:
    """Stateful EVT 3.0 encoder: successive calls continue one stream (time, y carried).

    The stream's clock starts at 0 and every wrap since then is written (TIME_HIGH 0xFFF, 0x000),
    so the decoder recovers absolute times past any number of wraps and gaps. `backend` as for
    Evt3Decoder: both write the same bytes; the compiled one costs microseconds per call, not the
    numpy one's tens of numpy calls (the simulator encodes one small packet at a time).
    """

    def __init__(self, vectorize: bool = True, *, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        self.vectorize = vectorize
        self._kernel = None if backend == "numpy" else _load_kernel()
        if backend == "numba" and self._kernel is None:
            raise ImportError(_kernel_error)
        self.backend = "numpy" if self._kernel is None else "numba"
        self.reset()

    def reset(self) -> None:
        self._t = 0
        self._have_time = False
        self._y = -1
        if self._kernel is not None:
            self._state = np.zeros(self._kernel.N_ENCODER_STATE, np.int64)
            self._state[self._kernel.E_Y] = -1

    def encode(self, events, triggers=None) -> bytes:
        if self._kernel is not None:
            return self._encode_compiled(events, triggers)
        ev = _check_events(events)
        tr = _check_triggers(triggers)
        if ev.size == 0 and tr.size == 0:
            return b""
        t_ev = ev["t"].astype(np.int64)
        first_t = min(int(t_ev[0]) if ev.size else np.iinfo(np.int64).max,
                      int(tr["t"][0]) if tr.size else np.iinfo(np.int64).max)
        if first_t < self._t:
            raise ValueError(f"events must be sorted by t: t={first_t} us comes after {self._t} us "
                             f"already encoded (or is negative)")
        return _encode(self, ev, t_ev, tr)

    def _encode_compiled(self, events, triggers) -> bytes:
        kernel = self._kernel
        ev = _structured(events, ("t", "x", "y", "p"), EVENT_DTYPE, "events")
        tr = _structured(triggers, ("t", "channel", "value"), TRIGGER_DTYPE, "triggers")
        if ev.size == 0 and tr.size == 0:
            return b""
        state = self._state
        columns = [np.ascontiguousarray(ev[name], np.int64) for name in ("t", "x", "y", "p")]
        columns += [np.ascontiguousarray(tr[name], np.int64) for name in ("t", "channel", "value")]
        words = kernel.encode(*columns, state, self.vectorize)
        error = int(state[kernel.E_ERROR])
        if error:
            i, a, b, count = (int(v) for v in state[kernel.E_INDEX:kernel.E_COUNT + 1])
            raise ValueError(_ENCODER_ERRORS[error].format(i=i, a=a, b=b, count=count))
        self._t, self._have_time, self._y = int(state[kernel.E_T]), True, int(state[kernel.E_Y])
        return words.tobytes()


_ENCODER_ERRORS = {
    1: "events must be sorted by t: event {i} has t={a} us after t={b} us ({count} such step(s))",
    2: "event x must be in 0..2047 for EVT 3.0, got {a}..{b}",
    3: "event y must be in 0..2047 for EVT 3.0, got {a}..{b}",
    4: "event polarity must be -1 or +1, event {i} has p={a}",
    5: "triggers must be sorted by t",
    6: "trigger channel must be 0..15 and value 0 or 1",
    7: "events must be sorted by t: t={a} us comes after {b} us already encoded (or is negative)",
}
"""The compiled encoder's error codes (ERR_* in _evt3_kernel): the numpy encoder's messages."""


def _structured(array, names: tuple[str, ...], empty_dtype, what: str) -> np.ndarray:
    if array is None:
        return np.zeros(0, empty_dtype)
    out = np.asarray(array)
    if out.dtype.names is None or not set(names) <= set(out.dtype.names):
        raise TypeError(f"{what} must be a structured array with fields {', '.join(names)} (got {out.dtype})")
    return out


def _check_events(events) -> np.ndarray:
    ev = _structured(events, ("t", "x", "y", "p"), EVENT_DTYPE, "events")
    if ev.size == 0:
        return ev
    t = ev["t"]
    down = np.flatnonzero(t[1:] < t[:-1])
    if down.size:
        i = int(down[0]) + 1
        raise ValueError(f"events must be sorted by t: event {i} has t={int(t[i])} us after "
                         f"t={int(t[i - 1])} us ({down.size} such step(s))")
    for name in ("x", "y"):
        values = ev[name]
        if int(values.min()) < 0 or int(values.max()) > 2047:
            raise ValueError(f"event {name} must be in 0..2047 for EVT 3.0, got "
                             f"{int(values.min())}..{int(values.max())}")
    p = ev["p"]
    bad_p = np.flatnonzero((p != 1) & (p != -1))
    if bad_p.size:
        raise ValueError(f"event polarity must be -1 or +1, event {int(bad_p[0])} has p={int(p[bad_p[0]])}")
    return ev


def _check_triggers(triggers) -> np.ndarray:
    tr = _structured(triggers, ("t", "channel", "value"), TRIGGER_DTYPE, "triggers")
    if tr.size == 0:
        return tr
    if np.any(tr["t"][1:] < tr["t"][:-1]):
        raise ValueError("triggers must be sorted by t")
    if int(tr["channel"].max()) > 15 or int(tr["value"].max()) > 1:
        raise ValueError("trigger channel must be 0..15 and value 0 or 1")
    return tr


def _encode(enc: Evt3Encoder, ev: np.ndarray, t_ev: np.ndarray, tr: np.ndarray) -> bytes:
    """Word layout per item (event or trigger), in time order:
    [keep-alive TIME_HIGHs] [TIME_HIGH] [TIME_LOW] then ADDR_Y? + (ADDR_X | VECT_BASE_X + vectors)
    for an event, EXT_TRIGGER for a trigger. Triggers go before events of the same microsecond.
    Every step is a pass over all items: word counts per item, their cumulative sum gives each
    item's first word, and each kind of word is scattered to its place.
    """
    ne, nt = ev.size, tr.size
    n = ne + nt
    if nt:
        slot = np.searchsorted(t_ev, tr["t"], side="left") + np.arange(nt)
        is_trig = np.zeros(n, bool)
        is_trig[slot] = True
        event_slot = np.flatnonzero(~is_trig)
        t_all = np.empty(n, np.int64)
        t_all[slot] = tr["t"]
        t_all[event_slot] = t_ev
    else:
        t_all = t_ev

    # Time words: when the time changes; TIME_HIGH when its 4096 us block changes. At every wrap
    # crossed since the previous item, a TIME_HIGH 0xFFF then 0x000 (as a sensor emits them): a
    # near-full-range drop, a wrap for our rule (> half range) and for Prophesee's stricter one,
    # even across gaps longer than the wrap period.
    prev_t = _prepend(enc._t, t_all[:-1], np.int64)
    new_time = t_all != prev_t
    high = t_all >> 12
    new_high = high != (prev_t >> 12)
    if not enc._have_time:
        new_time[0] = new_high[0] = True
    new_time |= new_high
    words_per_item = new_high.astype(np.int64)
    words_per_item += new_time
    wraps_crossed = (t_all >> 24) - (prev_t >> 24)
    keep_alive = np.flatnonzero(wraps_crossed)
    n_keep = 2 * wraps_crossed[keep_alive]
    words_per_item[keep_alive] += n_keep

    # Events: ADDR_Y when y changes, then ADDR_X, or one vector run per VECT_BASE_X.
    x = ev["x"].astype(np.int32)
    y = ev["y"].astype(np.int32)
    pbit = (ev["p"] > 0).astype(np.int32)
    new_y = y != _prepend(enc._y, y[:-1], np.int32)
    vec = None
    if enc.vectorize and ne > 1:
        dx = x[1:] - x[:-1]
        same = (t_ev[1:] == t_ev[:-1]) & (y[1:] == y[:-1]) & (pbit[1:] == pbit[:-1]) & (dx > 0) & (dx < 12)
        if same.any():
            run_head = np.ones(ne, bool)
            run_head[1:] = ~same
            heads = np.flatnonzero(run_head)
            run_len = np.diff(np.append(heads, ne))
            run_of = np.cumsum(run_head, dtype=np.int32).astype(np.intp)
            run_of -= 1
            offset = x - x[heads][run_of]
            block = offset // 12
            n_blocks = block[heads + run_len - 1] + 1
            is_vec_run = (run_len >= 2) & (n_blocks + 1 <= run_len)
            in_vec = is_vec_run[run_of]
            vec = np.flatnonzero(in_vec)
    ev_words = np.ones(ne, np.int64) if vec is None or vec.size == 0 else (~in_vec).astype(np.int64)
    if vec is not None and vec.size:
        vec_heads = heads[is_vec_run]
        blocks_per_run = n_blocks[is_vec_run]
        ev_words[vec_heads] = 1 + blocks_per_run
    else:
        vec = None
    ev_words += new_y
    if nt:
        words_per_item[event_slot] += ev_words
        words_per_item[slot] += 1
    else:
        words_per_item += ev_words

    cursor = np.cumsum(words_per_item)
    out = np.empty(int(cursor[-1]) if n else 0, np.uint16)
    cursor -= words_per_item
    if keep_alive.size:
        step = _ramp(n_keep)
        out[np.repeat(cursor[keep_alive], n_keep) + step] = (TIME_HIGH << 12) | (0xFFF * (1 - (step & 1)))
        cursor[keep_alive] += n_keep
    i = np.flatnonzero(new_high)
    out[cursor[i]] = (TIME_HIGH << 12) | (high[i] & 0xFFF)
    cursor += new_high
    i = np.flatnonzero(new_time)
    out[cursor[i]] = (TIME_LOW << 12) | (t_all[i] & 0xFFF)
    cursor += new_time
    if nt:
        out[cursor[slot]] = (EXT_TRIGGER << 12) | (tr["channel"].astype(np.int32) << 8) | tr["value"]
        cursor = cursor[event_slot]
    i = np.flatnonzero(new_y)
    out[cursor[i]] = (ADDR_Y << 12) | y[i]
    cursor += new_y
    address = (pbit << 11) | x
    if vec is None:
        out[cursor] = (ADDR_X << 12) | address
    else:
        i = np.flatnonzero(~in_vec)
        out[cursor[i]] = (ADDR_X << 12) | address[i]
        out[cursor[vec_heads]] = (VECT_BASE_X << 12) | address[vec_heads]
        # One vector word per 12-wide block of each run: OR of its events' bits (distinct x).
        first_block = np.cumsum(blocks_per_run) - blocks_per_run
        run_rank = np.cumsum(is_vec_run, dtype=np.int32).astype(np.intp)
        run_rank -= 1
        global_block = first_block[run_rank[run_of[vec]]] + block[vec]
        bits = np.left_shift(1, offset[vec] - 12 * block[vec])
        block_start = np.flatnonzero(np.diff(global_block, prepend=-1))
        masks = np.bitwise_or.reduceat(bits, block_start)
        last_block = first_block + blocks_per_run - 1
        last_fits_8 = masks[last_block] < (1 << 8)
        block_type = np.full(masks.size, VECT_12 << 12, np.int32)
        block_type[last_block[last_fits_8]] = VECT_8 << 12
        block_pos = np.repeat(cursor[vec_heads] + 1, blocks_per_run) + _ramp(blocks_per_run)
        out[block_pos] = block_type | masks

    enc._t = int(t_all[-1])
    enc._have_time = True
    if ne:
        enc._y = int(y[-1])
    return out.astype("<u2", copy=False).tobytes()


def encode_evt3(events, triggers=None, *, vectorize: bool = True, backend: str = "auto") -> bytes:
    """Encode events (sorted by t, sensor us from clock origin 0) and triggers as one EVT 3.0 stream.

    Decoding gives back exactly the same events in the same order: runs of consecutive events with
    equal t, y and polarity and increasing x less than 12 apart become vector words (sort by
    (t, y, x) beforehand for the most compact stream).
    """
    return Evt3Encoder(vectorize=vectorize, backend=backend).encode(events, triggers)


# ---------------------------------------------------------------------------------------------
# .raw files
# ---------------------------------------------------------------------------------------------

def _parse_header(data: bytes) -> tuple[dict, int]:
    header: dict = {}
    pos = 0
    while data.startswith(b"% ", pos):
        end = data.find(b"\n", pos)
        if end < 0:
            raise ValueError("corrupt .raw header: a '% ' line has no end of line")
        line = data[pos + 2:end].decode("utf-8", errors="replace").rstrip("\r")
        pos = end + 1
        if line == "end":
            break
        key, _, value = line.partition(" ")
        header[key] = value
    fmt = header.get("format", "")
    if fmt:
        name, *params = fmt.split(";")
        header["evt"] = name
        for param in params:
            key, _, value = param.partition("=")
            if key in ("width", "height"):
                header[key] = int(value)
    elif "geometry" in header:
        w, _, h = header["geometry"].partition("x")
        header["width"], header["height"] = int(w), int(h)
    return header, pos


def read_raw(path) -> tuple[dict, DecodedChunk]:
    """Read a Prophesee EVT 3.0 `.raw` file: header dict (width/height as ints) and its events."""
    data = Path(path).read_bytes()
    header, start = _parse_header(data)
    evt = header.get("evt", "EVT3")
    if evt.upper() not in ("EVT3", "EVT 3.0", "3.0"):
        raise ValueError(f"{path}: not an EVT 3.0 file (format {header.get('format')!r})")
    chunk = decode_evt3(memoryview(data)[start:], header.get("width"), header.get("height"))
    return header, chunk


def write_raw(path, events, triggers=None, width: int = 1280, height: int = 720) -> None:
    """Write events (and triggers) as a Prophesee EVT 3.0 `.raw` file."""
    header = (f"% camera_integrator_name efs_ros\n% evt 3.0\n% format EVT3;height={height};width={width}\n"
              f"% geometry {width}x{height}\n% end\n")
    Path(path).write_bytes(header.encode() + encode_evt3(events, triggers))
