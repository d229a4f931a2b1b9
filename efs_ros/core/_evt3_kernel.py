"""Compiled (numba) EVT 3.0 decoding kernel: one pass over the words, state in registers.

Implements exactly the semantics of the vectorised numpy decoder in `evt3.py` (the reference):
same events, triggers, stats and faults, faults reported per kind and block as numeric records
that `evt3.py` turns into the same messages. Importing this module imports numba (slow), so
`evt3.py` imports it only on the first decode that uses it; compiled code is cached on disk.
`nogil=True`: a decoding thread does not block a worker thread computing meanwhile.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from efs_ros.core.evt3 import (
    _HIGH_RANGE,
    _NO_BASE,
    _WRAP_DROP,
    F_BACKWARDS,
    F_NO_STATE,
    F_RANGE,
    F_TRIGGER_NO_TIME,
    F_UNKNOWN,
    FR_A,
    FR_B,
    FR_BLOCK,
    FR_COUNT,
    FR_KIND,
    FR_TYPE,
    FR_VALUE,
    FR_WORD,
    IO_BLOCK_WORDS,
    IO_CUT_EVENTS,
    IO_CUT_TRIGGERS,
    IO_EVENTS,
    IO_FAULTS,
    IO_JITTER,
    IO_MAX_JITTER,
    IO_REGS_IN,
    IO_REGS_OUT,
    IO_RESERVED,
    IO_STRICT,
    IO_TRIGGERS,
    IO_WORDS_DONE,
    IO_X_LIMIT,
    IO_Y_LIMIT,
    N_FAULT_COLS,
    N_FAULT_KINDS,
)

# Register offsets inside a register set (the Evt3State field order).
R_Y, R_BASE_X, R_VEC_P, R_HIGH, R_EPOCH, R_TIME, R_LAST_T, R_WORDS = range(8)

_POPCOUNT_12 = np.array([bin(m).count("1") for m in range(1 << 12)], np.uint8)
_BIT_OFFSETS_12 = np.zeros((1 << 12, 12), np.uint8)
"""Row m: the positions of the set bits of the 12-bit mask m, lowest first."""
for _m in range(1 << 12):
    _bits = [b for b in range(12) if _m >> b & 1]
    _BIT_OFFSETS_12[_m, : len(_bits)] = _bits
_EVENTS_OF_WORD = np.zeros(1 << 16, np.uint8)
"""Number of CD events a word can produce: 1 for ADDR_X, the mask's bit count for vectors."""
_EVENTS_OF_WORD[0x2000:0x3000] = 1
_EVENTS_OF_WORD[0x4000:0x5000] = _POPCOUNT_12
_EVENTS_OF_WORD[0x5000:0x6000] = np.tile(_POPCOUNT_12[:256], 16)


@njit(cache=True, nogil=True)
def count_outputs(words):
    """Upper bounds on the events and triggers the words can produce (exact unless some are
    dropped), to size the outputs of `decode_words`."""
    n_events = 0
    n_triggers = 0
    for i in range(words.size):
        w = words[i]
        n_events += _EVENTS_OF_WORD[w]
        n_triggers += (w >> 12) == 0xA
    return n_events, n_triggers


@njit(cache=True, nogil=True)
def _flush_block(block, acc, faults, n_faults):
    """Move the block's per-kind fault accumulators into fault records (kind order)."""
    for kind in range(N_FAULT_KINDS):
        if acc[kind, FR_WORD] >= 0:
            for col in range(N_FAULT_COLS):
                faults[n_faults, col] = acc[kind, col]
            faults[n_faults, FR_BLOCK] = block
            faults[n_faults, FR_KIND] = kind
            n_faults += 1
            acc[kind, FR_WORD] = -1
            acc[kind, FR_COUNT] = 0
    return n_faults


@njit(cache=True, nogil=True)
def _note(acc, kind, word_index, count, ty, value, a, b):
    """Count a fault of `kind`; remember the first one's details."""
    if acc[kind, FR_WORD] < 0:
        acc[kind, FR_WORD] = word_index
        acc[kind, FR_TYPE] = ty
        acc[kind, FR_VALUE] = value
        acc[kind, FR_A] = a
        acc[kind, FR_B] = b
    acc[kind, FR_COUNT] += count


@njit(cache=True, nogil=True)
def decode_words(words, io, events, triggers, faults):
    """Decode `words` (uint16) from the registers at io[io[IO_REGS_IN]:], write the registers
    after them at io[io[IO_REGS_OUT]:] and the counters at io[IO_EVENTS:].

    Words go in blocks of io[IO_BLOCK_WORDS]; faults are accumulated per kind and block (count
    and first occurrence) like the numpy decoder does. In strict mode decoding stops after the
    first block with a fault, and io[IO_CUT_*] say how many events / triggers precede the first
    faulty word.
    """
    regs_in = io[io[IO_REGS_IN]:]
    regs_out = io[io[IO_REGS_OUT]:]
    y = regs_in[R_Y]
    base_x = regs_in[R_BASE_X]
    vec_p = regs_in[R_VEC_P]
    high = regs_in[R_HIGH]
    epoch = regs_in[R_EPOCH]
    time = regs_in[R_TIME]
    last_t = regs_in[R_LAST_T]
    first_word = regs_in[R_WORDS]
    x_limit = io[IO_X_LIMIT]
    y_limit = io[IO_Y_LIMIT]
    max_jitter = io[IO_MAX_JITTER]
    strict = io[IO_STRICT] != 0
    block_words = io[IO_BLOCK_WORDS]

    high_time = ((epoch * _HIGH_RANGE + high) << 12) if high >= 0 else -1
    vec_pol = np.int8(1) if vec_p else np.int8(-1)
    n = words.size
    n_events = 0
    n_triggers = 0
    n_faults = 0
    n_reserved = 0
    n_jitter = 0
    cut_events = -1
    cut_triggers = -1
    acc = np.empty((N_FAULT_KINDS, N_FAULT_COLS), np.int64)
    acc[:, FR_WORD] = -1
    acc[:, FR_COUNT] = 0
    block = 0
    start = 0
    while start < n:
        stop = min(start + block_words, n)
        for i in range(start, stop):
            w = np.int64(words[i])
            ty = w >> 12
            if ty == 0x2 or ty == 0x4 or ty == 0x5:  # ADDR_X, VECT_12, VECT_8
                if ty == 0x2:
                    x = w & 0x7FF
                    mask = 1
                    pol = np.int8(1) if w & 0x800 else np.int8(-1)
                else:
                    x = base_x
                    mask = w & 0xFFF if ty == 0x4 else w & 0xFF
                    pol = vec_pol
                    base_x += 12 if ty == 0x4 else 8
                if y < 0 or time < 0 or x < 0:
                    _note(acc, F_NO_STATE, first_word + i, _POPCOUNT_12[mask], ty, w, 0, 0)
                    if cut_events < 0:
                        cut_events, cut_triggers = n_events, n_triggers
                    continue
                if time < last_t:
                    step = last_t - time
                    if step <= max_jitter:
                        n_jitter += 1
                    else:
                        _note(acc, F_BACKWARDS, first_word + i, 1, ty, w, last_t, time)
                        if cut_events < 0:
                            cut_events, cut_triggers = n_events, n_triggers
                last_t = time
                if ty == 0x2:
                    if x < x_limit and y < y_limit:
                        ev = events[n_events]
                        ev.t = time
                        ev.x = x
                        ev.y = y
                        ev.p = pol
                        n_events += 1
                    else:
                        _note(acc, F_RANGE, first_word + i, 1, ty, w, x, y)
                        if cut_events < 0:
                            cut_events, cut_triggers = n_events, n_triggers
                elif x + 11 < x_limit and y < y_limit:
                    for k in range(_POPCOUNT_12[mask]):
                        ev = events[n_events]
                        ev.t = time
                        ev.x = x + _BIT_OFFSETS_12[mask, k]
                        ev.y = y
                        ev.p = pol
                        n_events += 1
                else:
                    word_events = n_events
                    for k in range(_POPCOUNT_12[mask]):
                        xk = x + _BIT_OFFSETS_12[mask, k]
                        if xk < x_limit and y < y_limit:
                            ev = events[n_events]
                            ev.t = time
                            ev.x = xk
                            ev.y = y
                            ev.p = pol
                            n_events += 1
                        else:
                            _note(acc, F_RANGE, first_word + i, 1, ty, w, xk, y)
                            if cut_events < 0:
                                cut_events, cut_triggers = word_events, n_triggers
            elif ty == 0x6:  # TIME_LOW
                if high_time >= 0:
                    time = high_time | (w & 0xFFF)
            elif ty == 0x0:  # ADDR_Y
                y = w & 0x7FF
            elif ty == 0x8:  # TIME_HIGH: a drop of more than half the range is a wrap
                h = w & 0xFFF
                if high - h > _WRAP_DROP and high >= 0:
                    epoch += 1
                high = h
                high_time = (epoch * _HIGH_RANGE + high) << 12
                time = high_time
            elif ty == 0x3:  # VECT_BASE_X
                base_x = w & 0x7FF
                vec_p = (w >> 11) & 1
                vec_pol = np.int8(1) if vec_p else np.int8(-1)
            elif ty == 0xA:  # EXT_TRIGGER
                if time >= 0:
                    tr = triggers[n_triggers]
                    tr.t = time
                    tr.channel = (w >> 8) & 0xF
                    tr.value = w & 1
                    n_triggers += 1
                else:
                    _note(acc, F_TRIGGER_NO_TIME, first_word + i, 1, ty, w, 0, 0)
                    if cut_events < 0:
                        cut_events, cut_triggers = n_events, n_triggers
            elif ty == 0x9:
                n_reserved += 1
            elif ty == 0x1 or ty == 0xB or ty == 0xC or ty == 0xD:
                _note(acc, F_UNKNOWN, first_word + i, 1, ty, w, 0, 0)
                if cut_events < 0:
                    cut_events, cut_triggers = n_events, n_triggers
            # CONTINUED_4, OTHERS, CONTINUED_12: skipped
        if base_x < 0:
            base_x = _NO_BASE
        n_faults = _flush_block(block, acc, faults, n_faults)
        block += 1
        start = stop
        if strict and n_faults:
            break

    regs_out[R_Y] = y
    regs_out[R_BASE_X] = base_x
    regs_out[R_VEC_P] = vec_p
    regs_out[R_HIGH] = high
    regs_out[R_EPOCH] = epoch
    regs_out[R_TIME] = time
    regs_out[R_LAST_T] = last_t
    regs_out[R_WORDS] = first_word + start
    io[IO_EVENTS] = n_events
    io[IO_TRIGGERS] = n_triggers
    io[IO_FAULTS] = n_faults
    io[IO_WORDS_DONE] = start
    io[IO_RESERVED] = n_reserved
    io[IO_JITTER] = n_jitter
    io[IO_CUT_EVENTS] = cut_events
    io[IO_CUT_TRIGGERS] = cut_triggers

