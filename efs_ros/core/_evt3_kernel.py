"""Compiled (numba) EVT 3.0 decoder and encoder kernels.

They implement exactly the semantics of the vectorised numpy decoder and encoder in `evt3.py`
(the reference): same events, triggers, stats and faults, faults reported per kind and block as
numeric records that `evt3.py` turns into the same messages; the same encoded bytes and errors.
Importing this module imports numba (slow), so `evt3.py` imports it only when a decoder first
needs it; compiled code is cached on disk. `nogil=True`: a decoding thread does not block a
worker thread computing meanwhile.

Speed comes from not deciding per word. A per-word `match` on the type mispredicts about once
per event on real data (the word order follows the scene), so words go in sub-blocks of
SUB_WORDS, and a vectorised pre-pass (`scan_words`) tells which sub-blocks hold only the common
words (ADDR_Y/X, TIME_LOW/HIGH, vectors, padding) with no possible clock wrap. Those take the fast
path: pass 1 folds every word into one 64-bit context register (12-bit lanes for the last
TIME_LOW, ADDR_Y, TIME_HIGH and VECT_BASE_X payloads: one masked insert per word through small
per-type tables, no branch) and keeps the context of each event word; pass 2 turns event words
into events and checks, for the whole sub-block at once, what would be a fault or jitter (time
going backwards, outside the sensor, no vector base). If anything is off, or a sub-block holds
rarer words (triggers, reserved, unknown types), the general path decodes it word by word with
every check: same results, a little slower. Events are written with two unaligned 8-byte stores
each (an LLVM intrinsic), vector words expand to 8 slots whatever their mask, the pre-pass runs
in 16-bit SIMD lanes (LLVM vector IR: numba would widen each word to 64 bits).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from efs_ros.core.events import EVENT_DTYPE, TRIGGER_DTYPE
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
    IO_CUT_EVENTS,
    IO_CUT_TRIGGERS,
    IO_EVENTS,
    IO_FAULTS,
    IO_JITTER,
    IO_MAX_JITTER,
    IO_REGS,
    IO_RESERVED,
    IO_TRIGGERS,
    IO_WORDS_DONE,
    IO_X_LIMIT,
    IO_Y_LIMIT,
    N_FAULT_COLS,
    N_FAULT_KINDS,
)

SUB_WORDS = 2048
"""Words per sub-block: the unit of the fast path's all-or-nothing check (a failed check costs
one sub-block decoded twice); pass 1's per-event-word context then stays in L1 cache."""

SPARE_EVENTS = 12
"""Slots the output needs beyond the events: the fast path writes up to 12 per word ahead."""
EVENT_BYTES = 13
"""EVENT_DTYPE's itemsize: t (8 bytes), x, y (2 each), p (1). The fast path writes an event as two
unaligned 8-byte stores, t and x | y << 16 | p << 32; the second spills 3 bytes into the next
event, which is written after it (the output has SPARE_EVENTS spare events at the end)."""

# Register offsets inside a register set (the Evt3State field order).
R_Y, R_BASE_X, R_VEC_P, R_HIGH, R_EPOCH, R_TIME, R_LAST_T, R_WORDS = range(8)
# The kernel's working state (int64 array): registers, then output and statistics counters.
(S_Y, S_BASE_X, S_VEC_P, S_HIGH, S_EPOCH, S_TIME, S_LAST_T, S_EVENTS, S_TRIGGERS, S_RESERVED,
 S_JITTER, S_CUT_EVENTS, S_CUT_TRIGGERS) = range(13)
N_STATE = 13
# Per sub-block facts from scan_words (int64 array, one row per sub-block).
I_TYPES, I_HIGH_MIN, I_HIGH_MAX = range(3)
N_INFO = 3

_POPCOUNT_12 = np.array([bin(m).count("1") for m in range(1 << 12)], np.uint8)
_BIT_OFFSETS_12 = np.zeros((1 << 12, 12), np.uint8)
"""Row m: the positions of the set bits of the 12-bit mask m, lowest first."""
for _m in range(1 << 12):
    _bits = [b for b in range(12) if _m >> b & 1]
    _BIT_OFFSETS_12[_m, : len(_bits)] = _bits
_HIGHEST_BIT_12 = np.array([m.bit_length() - 1 if m else -4096 for m in range(1 << 12)], np.int16)
"""Offset of a mask's last event (very negative for an empty mask: never outside the sensor)."""

_FAST_TYPES = sum(1 << t for t in (0x0, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0xE, 0xF))
"""Word types the fast path decodes; any other type sends its sub-block to the general path."""
_VECTOR_TYPES = (1 << 0x3) | (1 << 0x4) | (1 << 0x5)

# Pass 1's context register: lanes for the payloads of the last TIME_LOW, ADDR_Y, TIME_HIGH and
# VECT_BASE_X (12 bits each), and the whole last other word (16 bits: the event word itself).
L_LOW, L_Y, L_HIGH, L_BASE, L_WORD = 0, 12, 24, 36, 48
_LANE_KEEP = np.full(16, (1 << L_WORD) - 1, np.int64)
"""Per word type: the context bits it keeps (TIME_HIGH also clears the TIME_LOW lane: as in
Prophesee's decoder, a TIME_HIGH sets the low 12 bits of time to zero)."""
_LANE_SHIFT = np.full(16, L_WORD, np.int64)
"""Per word type: where it goes."""
_LANE_BITS = np.full(16, 0xFFFF, np.int64)
"""Per word type: which of its bits go there."""
for _ty, _lane in ((0x6, L_LOW), (0x0, L_Y), (0x8, L_HIGH), (0x3, L_BASE)):
    _LANE_KEEP[_ty] = ~(0xFFF << _lane)
    _LANE_SHIFT[_ty] = _lane
    _LANE_BITS[_ty] = 0xFFF
_LANE_KEEP[0x8] &= ~(0xFFF << L_LOW)
# Without vector words (no VECT_BASE_X lane) the lanes are whole 16-bit words: no masking.
P_LOW, P_Y, P_HIGH, P_WORD = 0, 16, 32, 48
_PLAIN_KEEP = np.full(16, (1 << P_WORD) - 1, np.int64)
_PLAIN_SHIFT = np.full(16, P_WORD, np.int64)
for _ty, _lane in ((0x6, P_LOW), (0x0, P_Y), (0x8, P_HIGH)):
    _PLAIN_KEEP[_ty] = ~(0xFFFF << _lane)
    _PLAIN_SHIFT[_ty] = _lane
_PLAIN_KEEP[0x8] &= ~(0xFFFF << P_LOW)
_IS_EVENT_WORD = np.zeros(16, np.int64)
_IS_EVENT_WORD[[0x2, 0x4, 0x5]] = 1
_INCREMENT_KEEP = np.full(16, -1, np.int64)
"""Per word type: whether the vector increment since the last VECT_BASE_X carries on (all ones)
or restarts (0, at VECT_BASE_X)."""
_INCREMENT_KEEP[0x3] = 0
_INCREMENT = np.zeros(16, np.int64)
_INCREMENT[0x4], _INCREMENT[0x5] = 12, 8
_IS_ADDR_X = np.zeros(16, np.int64)
_IS_ADDR_X[0x2] = 1
_VECTOR_MASK = np.zeros(16, np.int64)
_VECTOR_MASK[0x4], _VECTOR_MASK[0x5] = 0xFFF, 0xFF


@intrinsic
def _prefetch_for_writing(typingctx, array, byte_offset):
    """Ask for the cache line at byte `byte_offset` of `array`'s data, to be written soon."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.gep(builder.bitcast(data, ir.IntType(8).as_pointer()), [args[1]])
        i32 = ir.IntType(32)
        prefetch = builder.module.declare_intrinsic(
            "llvm.prefetch", [address.type], ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32]))
        builder.call(prefetch, [address, ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(array, byte_offset), codegen


PREFETCH_BYTES = 4096
"""How far ahead of the vector expansion the output is prefetched (large outputs do not fit in
cache; the stores would otherwise wait for their lines)."""


@intrinsic
def _popcount(typingctx, x):
    """Number of set bits (LLVM ctpop: one instruction, vectorised where the CPU has it)."""
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return x(x), codegen


@intrinsic
def _store_8_bytes(typingctx, array, byte_offset, value):
    """Store int64 `value` at byte `byte_offset` of `array`'s data, unaligned."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.gep(builder.bitcast(data, ir.IntType(8).as_pointer()), [args[1]])
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        store = builder.store(value, builder.bitcast(address, ir.IntType(64).as_pointer()))
        store.align = 1
        return context.get_dummy_value()
    return types.void(array, byte_offset, value), codegen


SCAN_LANES = 16


@intrinsic
def _scan_vectors(typingctx, words, start, n_vectors):
    """The pre-pass over words[start : start + SCAN_LANES * n_vectors], SCAN_LANES words at a time
    in 16-bit lanes (numba would widen every word to 64 bits). Returns the OR of 1 << type, the
    minimum of word ^ 0x8000 and of word ^ 0x8FFF (below 0x1000 only for TIME_HIGH: its payload,
    and 0xFFF - payload), the number of events and of EXT_TRIGGER words."""
    result = types.UniTuple(types.int64, 5)

    def codegen(context, builder, signature, args):
        i16, i32, i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
        vector, vector32 = ir.VectorType(i16, SCAN_LANES), ir.VectorType(i32, SCAN_LANES)

        def splat(value):
            return ir.Constant(vector, [ir.Constant(i16, value)] * SCAN_LANES)

        def llvm_intrinsic(name, result_type, arg_types):
            return builder.module.declare_intrinsic(name, (), ir.FunctionType(result_type, arg_types))

        suffix = f"v{SCAN_LANES}i16"
        umin = llvm_intrinsic(f"llvm.umin.{suffix}", vector, [vector, vector])
        ctpop = llvm_intrinsic(f"llvm.ctpop.{suffix}", vector, [vector])
        reduce_or = llvm_intrinsic(f"llvm.vector.reduce.or.{suffix}", i16, [vector])
        reduce_umin = llvm_intrinsic(f"llvm.vector.reduce.umin.{suffix}", i16, [vector])
        reduce_add = llvm_intrinsic(f"llvm.vector.reduce.add.v{SCAN_LANES}i32", i32, [vector32])
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        first = builder.gep(builder.bitcast(data, i16.as_pointer()), [args[1]])
        type_bits = cgutils.alloca_once_value(builder, splat(0))
        high_min = cgutils.alloca_once_value(builder, splat(0xFFFF))
        high_max = cgutils.alloca_once_value(builder, splat(0xFFFF))
        n_events = cgutils.alloca_once_value(builder, splat(0))
        n_triggers = cgutils.alloca_once_value(builder, splat(0))
        with cgutils.for_range(builder, args[2]) as loop:
            at = builder.gep(first, [builder.mul(loop.index, ir.Constant(i64, SCAN_LANES))])
            w = builder.load(builder.bitcast(at, vector.as_pointer()), align=2)
            ty = builder.lshr(w, splat(12))
            builder.store(builder.or_(builder.load(type_bits), builder.shl(splat(1), ty)), type_bits)
            for accumulator, flip in ((high_min, 0x8000), (high_max, 0x8FFF)):
                value = builder.call(umin, [builder.load(accumulator), builder.xor(w, splat(flip))])
                builder.store(value, accumulator)
            mask = builder.and_(w, builder.select(builder.icmp_unsigned("==", ty, splat(4)), splat(0xFFF),
                                                  splat(0xFF)))
            is_vector = builder.icmp_unsigned("<=", builder.sub(ty, splat(4)), splat(1))
            is_addr_x = builder.zext(builder.icmp_unsigned("==", ty, splat(2)), vector)
            events = builder.select(is_vector, builder.call(ctpop, [mask]), is_addr_x)
            builder.store(builder.add(builder.load(n_events), events), n_events)  # <= 12 * 2048 / 16
            is_trigger = builder.zext(builder.icmp_unsigned("==", ty, splat(0xA)), vector)
            builder.store(builder.add(builder.load(n_triggers), is_trigger), n_triggers)
        values = [builder.call(reduce_or, [builder.load(type_bits)]),
                  builder.call(reduce_umin, [builder.load(high_min)]),
                  builder.call(reduce_umin, [builder.load(high_max)]),
                  builder.call(reduce_add, [builder.zext(builder.load(n_events), vector32)]),
                  builder.call(reduce_add, [builder.zext(builder.load(n_triggers), vector32)])]
        return context.make_tuple(builder, result, [builder.zext(v, i64) for v in values])

    return result(words, start, n_vectors), codegen


@njit(cache=True, nogil=True)
def scan_words(words, block_words, info):
    """Pre-pass, SCAN_LANES words at a time. Returns upper bounds on the events and triggers the
    words can produce (exact unless some are dropped), to size the outputs of `decode_words`, and
    fills `info` with each sub-block's word types (bit set) and TIME_HIGH payload range."""
    n = words.size
    n_events = 0
    n_triggers = 0
    sub = 0
    for block_start in range(0, n, block_words):
        block_stop = min(block_start + block_words, n)
        for start in range(block_start, block_stop, SUB_WORDS):
            stop = min(start + SUB_WORDS, block_stop)
            n_vectors = (stop - start) // SCAN_LANES
            types, high_min, high_max, sub_events, sub_triggers = _scan_vectors(words, start, n_vectors)
            tail = words[start + n_vectors * SCAN_LANES:stop]
            for i in range(tail.size):
                w = np.int64(tail[i])
                ty = w >> 12
                types |= 1 << ty
                high_min = min(high_min, w ^ 0x8000)
                high_max = min(high_max, w ^ 0x8FFF)
                mask = w & 0xFFF if ty == 4 else w & 0xFF
                sub_events += _popcount(mask) if ty - 4 <= 1 and ty >= 4 else (ty == 2)
                sub_triggers += ty == 0xA
            high_max = 0xFFF - high_max
            info[sub, I_TYPES] = types
            info[sub, I_HIGH_MIN] = high_min
            info[sub, I_HIGH_MAX] = high_max
            n_events += sub_events
            n_triggers += sub_triggers
            sub += 1
    return n_events, n_triggers


@njit(cache=True, nogil=True)
def info_rows(n_words, block_words):
    """Number of sub-blocks `scan_words` describes."""
    full, rest = divmod(n_words, block_words)
    return full * -(-block_words // SUB_WORDS) + -(-rest // SUB_WORDS)


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
def _general(words, start, stop, st, acc, events, triggers, x_limit, y_limit, max_jitter, first_word):
    """Decode words[start:stop] one by one with every check (the numpy decoder's semantics)."""
    y = st[S_Y]
    base_x = st[S_BASE_X]
    vec_p = st[S_VEC_P]
    high = st[S_HIGH]
    epoch = st[S_EPOCH]
    time = st[S_TIME]
    last_t = st[S_LAST_T]
    n_events = st[S_EVENTS]
    n_triggers = st[S_TRIGGERS]
    n_reserved = st[S_RESERVED]
    n_jitter = st[S_JITTER]
    cut_events = st[S_CUT_EVENTS]
    cut_triggers = st[S_CUT_TRIGGERS]
    high_time = ((epoch * _HIGH_RANGE + high) << 12) if high >= 0 else -1
    vec_pol = np.int8(1) if vec_p else np.int8(-1)
    sub_words = words[start:stop]
    first_word += start
    for i in range(sub_words.size):
        w = np.int64(sub_words[i])
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
                _note(acc, F_NO_STATE, first_word + i, np.int64(_POPCOUNT_12[mask]), ty, w, 0, 0)
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
            word_events = n_events
            if n_events + _POPCOUNT_12[mask] > events.size:
                raise IndexError("EVT3 kernel: more events than scan_words counted")
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
                if n_triggers >= triggers.size:
                    raise IndexError("EVT3 kernel: more triggers than scan_words counted")
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
    st[S_Y] = y
    st[S_BASE_X] = base_x
    st[S_VEC_P] = vec_p
    st[S_HIGH] = high
    st[S_EPOCH] = epoch
    st[S_TIME] = time
    st[S_LAST_T] = last_t
    st[S_EVENTS] = n_events
    st[S_TRIGGERS] = n_triggers
    st[S_RESERVED] = n_reserved
    st[S_JITTER] = n_jitter
    st[S_CUT_EVENTS] = cut_events
    st[S_CUT_TRIGGERS] = cut_triggers


@njit(cache=True, nogil=True)
def _fast(words, start, stop, st, events, contexts, increments, x_limit, y_limit, with_vectors):
    """Decode words[start:stop], known to hold only fast-path types and no clock wrap, from a
    valid y and time. Returns False, with `st` untouched, if some event word needs the general
    path's checks (time going backwards, outside the sensor, vector before any VECT_BASE_X)."""
    y, high, time, base_x = st[S_Y], st[S_HIGH], st[S_TIME], st[S_BASE_X]
    time_base = st[S_EPOCH] << 24
    if with_vectors:
        context = (((time & 0xFFF) << L_LOW) | (y << L_Y) | (high << L_HIGH)
                   | (st[S_VEC_P] << (L_BASE + 11)))
    else:
        context = ((time & 0xFFF) << P_LOW) | (y << P_Y) | (high << P_HIGH)
    increment = base_x  # base x = BASE lane's x + increment; the lane starts at 0
    n_words = 0
    # ---- pass 1: the context of each event word ----
    sub_words = words[start:stop]
    if with_vectors:
        for i in range(sub_words.size):
            w = np.int64(sub_words[i])
            ty = w >> 12
            context = (context & _LANE_KEEP[ty]) | ((w & _LANE_BITS[ty]) << _LANE_SHIFT[ty])
            contexts[np.uint64(n_words)] = context
            increments[np.uint64(n_words)] = increment
            increment = (increment & _INCREMENT_KEEP[ty]) + _INCREMENT[ty]
            n_words += _IS_EVENT_WORD[ty]
    else:
        # two words per step: the second context comes from the first one's inputs, not from
        # the first context, so the loop-carried chain is two operations per two words
        half = sub_words.size >> 1
        for h in range(half):
            w1 = np.int64(sub_words[2 * h])
            w2 = np.int64(sub_words[2 * h + 1])
            keep1 = _PLAIN_KEEP[w1 >> 12]
            keep2 = _PLAIN_KEEP[w2 >> 12]
            put1 = w1 << _PLAIN_SHIFT[w1 >> 12]
            contexts[np.uint64(n_words)] = (context & keep1) | put1
            n_words += _IS_EVENT_WORD[w1 >> 12]
            context = (context & (keep1 & keep2)) | ((put1 & keep2) | (w2 << _PLAIN_SHIFT[w2 >> 12]))
            contexts[np.uint64(n_words)] = context
            n_words += _IS_EVENT_WORD[w2 >> 12]
        if sub_words.size & 1:
            w = np.int64(sub_words[sub_words.size - 1])
            ty = w >> 12
            context = (context & _PLAIN_KEEP[ty]) | (w << _PLAIN_SHIFT[ty])
            contexts[np.uint64(n_words)] = context
            n_words += _IS_EVENT_WORD[ty]

    # ---- pass 2: events; any check failing makes `bad` negative ----
    n_events = st[S_EVENTS]
    last_t = st[S_LAST_T]
    x_last_ok = min(x_limit, 0x10000 - 16) - 1  # x + bit offset must stay within 16 bits
    y_last_ok = y_limit - 1
    bad = 0
    if with_vectors:
        # pass 2a: per event word its time and the event bytes 8..15 for its first x, with the
        # bit mask on top (written over the context and increment, already read)
        for j in range(n_words):
            c = contexts[j]
            w = (c >> L_WORD) & 0xFFFF
            ty = w >> 12
            t = time_base | (((c >> L_HIGH) & 0xFFF) << 12) | ((c >> L_LOW) & 0xFFF)
            yw = (c >> L_Y) & 0x7FF
            # ADDR_X or vector word, chosen by arithmetic on table values, not branches
            is_x = _IS_ADDR_X[ty]
            vector_x = ((c >> L_BASE) & 0x7FF) + increments[j]
            x0 = vector_x + (((w & 0x7FF) - vector_x) & -is_x)
            mask = (w & _VECTOR_MASK[ty]) | is_x
            pol_bit = (((w >> 11) & is_x) | ((c >> (L_BASE + 11)) & (1 - is_x))) & 1
            bad |= (t - last_t) | (x_last_ok - (x0 + _HIGHEST_BIT_12[mask])) | (y_last_ok - yw) | x0
            last_t = t
            increments[j] = t
            # (x0 masked: if it is wrong the sub-block is redone, but the counts must hold)
            contexts[j] = (x0 & 0xFFFF) | (yw << 16) | ((((pol_bit << 1) - 1) & 0xFF) << 32) | (mask << 52)
        # pass 2b: events; the first 8 of each word are written whatever its mask (a loop of
        # data-dependent length mispredicts about once per word), the slots past its last event
        # are overwritten by the next word's
        at = n_events * EVENT_BYTES
        end = (events.size - SPARE_EVENTS - 1) * EVENT_BYTES
        for j in range(n_words):
            t = increments[j]
            rest = contexts[j]
            row = np.uint64((rest >> 52) & 0xFFF)
            rest &= (1 << 52) - 1
            if at > end:  # cannot happen (the output holds every event counted): memory safety
                return False
            _prefetch_for_writing(events, min(at + PREFETCH_BYTES, end))
            for k in range(8):
                _store_8_bytes(events, at + k * EVENT_BYTES, t)
                _store_8_bytes(events, at + k * EVENT_BYTES + 8, rest + _BIT_OFFSETS_12[row, k])
            count = np.int64(_POPCOUNT_12[row])
            if count > 8:
                for k in range(8, 12):
                    _store_8_bytes(events, at + k * EVENT_BYTES, t)
                    _store_8_bytes(events, at + k * EVENT_BYTES + 8, rest + _BIT_OFFSETS_12[row, k])
            at += count * EVENT_BYTES
            n_events += count
    else:
        at = n_events * EVENT_BYTES
        y_field_last_ok = y_last_ok << 16
        for j in range(n_words):
            c = contexts[j]
            t = time_base | ((c >> (P_HIGH - 12)) & 0xFFF000) | ((c >> P_LOW) & 0xFFF)
            x = (c >> P_WORD) & 0x7FF
            y_field = c & (0x7FF << P_Y)  # y where the event bytes 8..15 want it (P_Y = 16)
            bad |= (t - last_t) | (x_last_ok - x) | (y_field_last_ok - y_field)
            last_t = t
            _store_8_bytes(events, at, t)
            _store_8_bytes(events, at + 8, x | y_field | ((((c >> (P_WORD + 10)) & 2) - 1) & 0xFF) << 32)
            at += EVENT_BYTES
        n_events += n_words
    if bad < 0:
        return False
    if with_vectors:
        st[S_Y] = (context >> L_Y) & 0x7FF
        st[S_HIGH] = (context >> L_HIGH) & 0xFFF
        st[S_TIME] = time_base | (st[S_HIGH] << 12) | ((context >> L_LOW) & 0xFFF)
        st[S_BASE_X] = ((context >> L_BASE) & 0x7FF) + increment
        st[S_VEC_P] = (context >> (L_BASE + 11)) & 1
    else:
        st[S_Y] = (context >> P_Y) & 0x7FF
        st[S_HIGH] = (context >> P_HIGH) & 0xFFF
        st[S_TIME] = time_base | (st[S_HIGH] << 12) | ((context >> P_LOW) & 0xFFF)
    st[S_LAST_T] = last_t
    st[S_EVENTS] = n_events
    return True


SCRATCH_SIZE = 2 * (SUB_WORDS + 1) + N_STATE + N_FAULT_KINDS * N_FAULT_COLS
"""A decoder's reusable working memory: pass 1's contexts and increments, the state, the faults
being counted."""


@njit(cache=True, nogil=True)
def decode(words, io, faults, scratch, block_words, strict):
    """Decode `words` (uint16) from the registers in io[IO_REGS:] (see decode_into); returns the
    events, the triggers (None when there are none) and whether there is anything to report.

    Words go in blocks of `block_words`, all of them if fewer than 1.5 blocks (`faults` needs
    N_FAULT_KINDS rows per block). The outputs are allocated here, which saves calls on small
    packets; large ones are better allocated by numpy (huge pages) and given to decode_into.
    """
    block_words = effective_block_words(words.size, block_words)
    info = np.empty((info_rows(words.size, block_words), N_INFO), np.int64)
    n_events, n_triggers = scan_words(words, block_words, info)
    events = np.empty(n_events + SPARE_EVENTS, EVENT_DTYPE)
    triggers = np.empty(n_triggers, TRIGGER_DTYPE)
    report = decode_into(words, io, faults, scratch, block_words, strict, info, events, triggers)
    if io[IO_TRIGGERS] == 0:  # most packets: no record array to box (numba unpickles its dtype)
        return events[:io[IO_EVENTS]], None, report
    return events[:io[IO_EVENTS]], triggers[:io[IO_TRIGGERS]], report


@njit(cache=True, nogil=True)
def effective_block_words(n_words, block_words):
    """Blocks of block_words, or one block if there are fewer than 1.5 of them."""
    return max(n_words, 1) if n_words <= block_words + block_words // 2 else block_words


@njit(cache=True, nogil=True)
def decode_into(words, io, faults, scratch, block_words, strict, info, events, triggers):
    """Decode `words` in blocks of `block_words` (effective_block_words) from the registers in
    io[IO_REGS:], into `events` (SPARE_EVENTS more than scan_words counted) and `triggers`, with
    `info` from scan_words. Leaves the counters in io[IO_EVENTS:] and fault records in `faults`;
    returns whether there is anything to report (faults, reserved words, jitter). The registers
    are updated, unless strict mode met a fault (the decoder stays as it was).

    Faults are counted per kind and block (count and first occurrence) like the numpy decoder
    does. In strict mode decoding stops after the first block with a fault, and io[IO_CUT_*] say
    how many events / triggers precede the first faulty word.
    """
    n = words.size
    contexts = scratch[:SUB_WORDS + 1]
    increments = scratch[SUB_WORDS + 1:2 * SUB_WORDS + 2]
    st = scratch[2 * SUB_WORDS + 2:2 * SUB_WORDS + 2 + N_STATE]
    acc = scratch[2 * SUB_WORDS + 2 + N_STATE:SCRATCH_SIZE].reshape((N_FAULT_KINDS, N_FAULT_COLS))
    regs = io[IO_REGS:]
    x_limit = io[IO_X_LIMIT]
    y_limit = io[IO_Y_LIMIT]
    max_jitter = io[IO_MAX_JITTER]
    first_word = regs[R_WORDS]
    st[S_Y] = regs[R_Y]
    st[S_BASE_X] = regs[R_BASE_X]
    st[S_VEC_P] = regs[R_VEC_P]
    st[S_HIGH] = regs[R_HIGH]
    st[S_EPOCH] = regs[R_EPOCH]
    st[S_TIME] = regs[R_TIME]
    st[S_LAST_T] = regs[R_LAST_T]
    st[S_EVENTS] = 0
    st[S_TRIGGERS] = 0
    st[S_RESERVED] = 0
    st[S_JITTER] = 0
    st[S_CUT_EVENTS] = -1
    st[S_CUT_TRIGGERS] = -1
    acc[:, FR_WORD] = -1
    acc[:, FR_COUNT] = 0
    n_faults = 0
    block = 0
    sub = 0
    block_start = 0
    while block_start < n:
        block_stop = min(block_start + block_words, n)
        for start in range(block_start, block_stop, SUB_WORDS):
            stop = min(start + SUB_WORDS, block_stop)
            types = info[sub, I_TYPES]
            high = st[S_HIGH]
            sub += 1
            if (types & ~_FAST_TYPES) == 0 and st[S_Y] >= 0 and high >= 0 and (
                    max(info[sub - 1, I_HIGH_MAX], high) - min(info[sub - 1, I_HIGH_MIN], high)
                    <= _WRAP_DROP):
                if _fast(words, start, stop, st, events, contexts, increments, x_limit, y_limit,
                         (types & _VECTOR_TYPES) != 0):
                    continue
            _general(words, start, stop, st, acc, events, triggers, x_limit, y_limit, max_jitter,
                     first_word)
        if st[S_BASE_X] < 0:
            st[S_BASE_X] = _NO_BASE
        if n_faults + N_FAULT_KINDS > faults.shape[0]:
            raise IndexError("EVT3 kernel: no room for the fault records of every block")
        n_faults = _flush_block(block, acc, faults, n_faults)
        block += 1
        block_start = block_stop
        if strict and n_faults:
            break

    if not (strict and n_faults):
        regs[R_Y] = st[S_Y]
        regs[R_BASE_X] = st[S_BASE_X]
        regs[R_VEC_P] = st[S_VEC_P]
        regs[R_HIGH] = st[S_HIGH]
        regs[R_EPOCH] = st[S_EPOCH]
        regs[R_TIME] = st[S_TIME]
        regs[R_LAST_T] = st[S_LAST_T]
        regs[R_WORDS] = first_word + block_start
    io[IO_FAULTS] = n_faults
    io[IO_WORDS_DONE] = block_start
    io[IO_RESERVED] = st[S_RESERVED]
    io[IO_JITTER] = st[S_JITTER]
    io[IO_CUT_EVENTS] = st[S_CUT_EVENTS]
    io[IO_CUT_TRIGGERS] = st[S_CUT_TRIGGERS]
    io[IO_EVENTS] = st[S_EVENTS]
    io[IO_TRIGGERS] = st[S_TRIGGERS]
    return n_faults + st[S_RESERVED] + st[S_JITTER] > 0


# ---------------------------------------------------------------------------------------------
# Encoder: the same words as the numpy encoder in evt3.py, one pass over the items in time order
# ---------------------------------------------------------------------------------------------

# The encoder's int64 state array: the stream's registers, then what the checks found.
E_T, E_HAVE_TIME, E_Y, E_ERROR, E_INDEX, E_A, E_B, E_COUNT = range(8)
N_ENCODER_STATE = 8
# Error codes, in the order the numpy encoder checks.
(ERR_NONE, ERR_EVENTS_UNSORTED, ERR_X_RANGE, ERR_Y_RANGE, ERR_POLARITY, ERR_TRIGGERS_UNSORTED,
 ERR_TRIGGER_FIELDS, ERR_BEFORE_ENCODED) = range(8)


@njit(cache=True, nogil=True)
def _check_encoder_input(t, x, y, p, tr_t, tr_channel, tr_value, state):
    """The numpy encoder's input checks, in its order; the first failure goes into state[E_ERROR:]
    (code, index, two values, count). Returns True if all pass."""
    ne = t.size
    if ne:
        n_down = 0
        for i in range(1, ne):
            if t[i] < t[i - 1]:
                if n_down == 0:
                    state[E_INDEX], state[E_A], state[E_B] = i, t[i], t[i - 1]
                n_down += 1
        if n_down:
            state[E_ERROR], state[E_COUNT] = ERR_EVENTS_UNSORTED, n_down
            return False
        for code, values in ((ERR_X_RANGE, x), (ERR_Y_RANGE, y)):
            low, high = values.min(), values.max()
            if low < 0 or high > 2047:
                state[E_ERROR], state[E_A], state[E_B] = code, low, high
                return False
        for i in range(ne):
            if p[i] != 1 and p[i] != -1:
                state[E_ERROR], state[E_INDEX], state[E_A] = ERR_POLARITY, i, p[i]
                return False
    if tr_t.size:
        for j in range(1, tr_t.size):
            if tr_t[j] < tr_t[j - 1]:
                state[E_ERROR] = ERR_TRIGGERS_UNSORTED
                return False
        if tr_channel.max() > 15 or tr_value.max() > 1:
            state[E_ERROR] = ERR_TRIGGER_FIELDS
            return False
    first_t = min(t[0] if ne else 1 << 62, tr_t[0] if tr_t.size else 1 << 62)
    if first_t < state[E_T]:
        state[E_ERROR], state[E_A], state[E_B] = ERR_BEFORE_ENCODED, first_t, state[E_T]
        return False
    return True


@njit(cache=True, nogil=True)
def encode(t, x, y, p, tr_t, tr_channel, tr_value, state, vectorize):
    """EVT 3.0 words for events (columns t, x, y, p) and triggers, continuing the stream whose
    registers are in `state`; an empty result with state[E_ERROR] set if the input is invalid.

    Per item in time order (a trigger before the events of its microsecond): TIME_HIGH 0xFFF,
    0x000 for every clock wrap crossed, TIME_HIGH / TIME_LOW when they change, then EXT_TRIGGER,
    or ADDR_Y when y changes and ADDR_X, or a vector run: consecutive events with equal t, y and
    polarity and x increasing by less than 12, written as VECT_BASE_X and one VECT_12 (the last
    one VECT_8 if it fits) per 12-wide block, when that takes fewer words than ADDR_X each.
    """
    state[E_ERROR] = ERR_NONE
    if not _check_encoder_input(t, x, y, p, tr_t, tr_channel, tr_value, state):
        return np.empty(0, np.uint16)
    ne, nt = t.size, tr_t.size
    prev_t = state[E_T]
    last_t = max(t[ne - 1] if ne else 0, tr_t[nt - 1] if nt else 0)
    out = np.empty(4 * ne + 3 * nt + 2 * ((last_t >> 24) - (prev_t >> 24)) + 4, np.uint16)
    have_time = state[E_HAVE_TIME] != 0
    prev_y = state[E_Y]
    n = 0
    i = 0
    j = 0
    while i < ne or j < nt:
        is_trigger = j < nt and (i >= ne or tr_t[j] <= t[i])
        now = tr_t[j] if is_trigger else t[i]
        for _ in range((now >> 24) - (prev_t >> 24)):  # keep-alive pair per wrap crossed
            out[n] = 0x8FFF
            out[n + 1] = 0x8000
            n += 2
        new_high = (now >> 12) != (prev_t >> 12) or not have_time
        if new_high:
            out[n] = 0x8000 | ((now >> 12) & 0xFFF)
            n += 1
        if new_high or now != prev_t:
            out[n] = 0x6000 | (now & 0xFFF)
            n += 1
        have_time = True
        prev_t = now
        if is_trigger:
            out[n] = 0xA000 | (tr_channel[j] << 8) | tr_value[j]
            n += 1
            j += 1
            continue
        if y[i] != prev_y:
            out[n] = y[i]
            n += 1
            prev_y = y[i]
        p_bit = 1 if p[i] > 0 else 0
        end = i + 1
        if vectorize:
            while (end < ne and t[end] == t[end - 1] and y[end] == y[end - 1]
                   and (p[end] > 0) == (p[end - 1] > 0) and 0 < x[end] - x[end - 1] < 12):
                end += 1
        n_blocks = (x[end - 1] - x[i]) // 12 + 1
        if end - i >= 2 and n_blocks + 1 <= end - i:
            out[n] = 0x3000 | (p_bit << 11) | x[i]
            n += 1
            block = 0
            mask = 0
            for e in range(i, end):
                offset = x[e] - x[i]
                if offset // 12 != block:
                    out[n] = 0x4000 | mask
                    n += 1
                    block = offset // 12
                    mask = 0
                mask |= 1 << (offset - 12 * block)
            out[n] = (0x5000 if mask < 256 else 0x4000) | mask
            n += 1
        else:  # each event of the run on its own (same t and y: no time or y words)
            for e in range(i, end):
                out[n] = 0x2000 | ((1 if p[e] > 0 else 0) << 11) | x[e]
                n += 1
        i = end
    state[E_T] = prev_t
    state[E_HAVE_TIME] = 1
    if ne:
        state[E_Y] = y[ne - 1]
    return out[:n]
