"""Bad input, fuzzed and targeted: 10^5 mutated EVT3 packets through the decoder, the
JobAssembler (the node's core) and the live all_in_focus node over DDS; frames the pipeline
cannot trust, a missing lens and a sweep without events through the live node; corrupt
sqlite3 bags through `make eval`.

The mutations start from real packets (the shared 1280x720 recording) and synthetic ones
(encode_evt3): truncated (odd lengths included), flipped bits, random bytes, empty, EVT2 words
(a wrong encoding), time jumps, wraps, unknown word types, out-of-sensor addresses, spliced
and duplicated word runs. What must hold: nothing raises (non-strict), no call takes long
(a hang detector, not a speed test), every packet and fault is counted, and the valid events
around the faults are still decoded and used.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import time

import numpy as np
import pytest
from progress import STALL_S, wait_for_progress

from efs_ros.core.assembler import AssemblerConfig, JobAssembler
from efs_ros.core.events import EVENT_DTYPE, TRIGGER_DTYPE
from efs_ros.core.evt3 import (
    ADDR_X,
    ADDR_Y,
    TIME_HIGH,
    TIME_LOW,
    VECT_BASE_X,
    Evt3Decoder,
    Evt3Error,
    encode_evt3,
    warm_up,
)

N_PACKETS = 100_000
HANG_S = 5.0
"""No single call may take this long (a 10 kB packet decodes in ~0.1 ms): a hang detector."""
WRAP = 1 << 24
REAL_SIZE = (1280, 720)
SMALL = (96, 72)


# ----------------------------------------------------------------------------- sources

@pytest.fixture(scope="module")
def real_packets(real_evt3_bag) -> list[bytes]:
    from efs_ros.io.recording import TOPIC_EVENTS, read_recording

    packets = [bytes(msg.events) for _, msg, _ in read_recording(real_evt3_bag,
                                                                 topics=[TOPIC_EVENTS])]
    assert len(packets) > 100
    return packets


def synthetic_events(rng, n: int, width: int, height: int, t0: int = 0,
                     span_us: int = 20_000) -> np.ndarray:
    """Sorted events, with same-row runs so that the encoder writes vector words."""
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(t0, t0 + span_us, n))
    ev["y"] = rng.integers(0, height, n)
    ev["x"] = rng.integers(0, width, n)
    runs = rng.random(n) < 0.5  # half the events copy their predecessor's t, y, p at x + 1..3
    runs[0] = False
    prev = np.flatnonzero(runs) - 1
    ev["t"][runs], ev["y"][runs] = ev["t"][prev], ev["y"][prev]
    ev["x"][runs] = np.minimum(ev["x"][prev] + rng.integers(1, 4, prev.size), width - 1)
    ev["p"] = rng.choice(np.array([-1, 1], np.int8), n)
    ev["p"][runs] = ev["p"][prev]
    order = np.lexsort((ev["x"], ev["y"], ev["t"]))
    ev = ev[order]
    keep = np.ones(n, bool)  # the encoder needs distinct (t, y, x, p) within a vector
    keep[1:] = (np.diff(ev["t"]) != 0) | (np.diff(ev["y"].astype(int)) != 0) | \
        (np.diff(ev["x"].astype(int)) != 0)
    return ev[keep]


def some_triggers(rng, t0: int, t1: int, n: int) -> np.ndarray:
    tr = np.zeros(n, TRIGGER_DTYPE)
    tr["t"] = np.sort(rng.integers(t0, t1, n))
    tr["value"] = np.arange(n) % 2
    return tr


@pytest.fixture(scope="module")
def synthetic_packets() -> list[bytes]:
    """One stream crossing an EVT3 wrap, with triggers, split into packets at word boundaries."""
    rng = np.random.default_rng(5)
    t0 = WRAP - 200_000
    ev = synthetic_events(rng, 60_000, *REAL_SIZE, t0=t0, span_us=400_000)
    data = encode_evt3(ev, some_triggers(rng, t0, t0 + 400_000, 40))
    cuts = np.unique(rng.integers(1, len(data) // 2, 300)) * 2
    return [data[a:b] for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(data)], strict=True)]


def clean_packet(rng, width: int, height: int, t0: int):
    """A self-contained packet (TIME_HIGH, TIME_LOW, ADDR_Y before its first event) and what it
    decodes to."""
    ev = synthetic_events(rng, int(rng.integers(1, 300)), width, height, t0=t0, span_us=3000)
    tr = some_triggers(rng, t0, t0 + 3000, int(rng.integers(0, 3)))
    return encode_evt3(ev, tr), ev, tr


# ----------------------------------------------------------------------------- mutations

def _words(data: bytes) -> np.ndarray:
    return np.frombuffer(data[: len(data) // 2 * 2], "<u2").copy()


def _insert(w: np.ndarray, rng, values) -> np.ndarray:
    return np.insert(w, int(rng.integers(0, w.size + 1)), np.asarray(values, np.uint16))


def mutate(rng, data: bytes, width: int, height: int) -> tuple[bytes, str]:
    """One random mutation of a packet: (bytes, kind)."""
    kind = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
    b = np.frombuffer(data, np.uint8)
    w = _words(data)
    if kind == "truncate":
        out = b[: int(rng.integers(0, b.size + 1))].tobytes()
    elif kind == "truncate_odd":
        out = b[: int(rng.integers(0, max(b.size // 2, 1))) * 2 + 1].tobytes() if b.size else b"\x80"
    elif kind == "flip_bits":
        b = b.copy()
        if b.size:
            bits = rng.integers(0, b.size * 8, int(rng.integers(1, 17)))
            np.bitwise_xor.at(b, bits >> 3, (1 << (bits & 7)).astype(np.uint8))
        out = b.tobytes()
    elif kind == "garbage":
        out = rng.integers(0, 256, int(rng.integers(1, 4000)), dtype=np.uint8).tobytes()
    elif kind == "empty":
        out = b""
    elif kind == "evt2_words":  # EVT 2.0: 32-bit CD words (type 0/1 at bits 31..28)
        n = int(rng.integers(1, 500))
        ev2 = (rng.integers(0, 2, n).astype(np.uint32) << 28) | \
            (rng.integers(0, 64, n).astype(np.uint32) << 22) | \
            (rng.integers(0, 2048, n).astype(np.uint32) << 11) | rng.integers(0, 2048, n).astype(np.uint32)
        out = ev2.astype("<u4").tobytes()
    elif kind == "time_jump":  # some TIME_HIGH words get arbitrary values
        high = np.flatnonzero((w >> 12) == TIME_HIGH)
        pick = high[rng.random(high.size) < 0.5] if high.size else np.zeros(0, int)
        w[pick] = (TIME_HIGH << 12) | rng.integers(0, 4096, pick.size).astype(np.uint16)
        out = _insert(w, rng, [(TIME_HIGH << 12) | int(rng.integers(4096))]).tobytes()
    elif kind == "wrap":  # a full-range TIME_HIGH drop somewhere: one more epoch
        out = _insert(w, rng, [(TIME_HIGH << 12) | 0xFFF, TIME_HIGH << 12]).tobytes()
    elif kind == "unknown_words":
        ty = rng.choice(np.array([0x1, 0xB, 0xC, 0xD], np.uint16), int(rng.integers(1, 5)))
        for t in ty:
            w = _insert(w, rng, [(int(t) << 12) | int(rng.integers(4096))])
        out = w.tobytes()
    elif kind == "out_of_range":  # a complete event (time, y, x) beyond the sensor
        x = int(rng.integers(width, 2048))
        y = int(rng.integers(0, height))
        out = _insert(w, rng, [TIME_HIGH << 12, TIME_LOW << 12, (ADDR_Y << 12) | y,
                               (ADDR_X << 12) | x]).tobytes()
    elif kind == "splice":  # two word runs swapped (reordered transport)
        if w.size > 4:
            i, j = np.sort(rng.integers(0, w.size, 2))
            w = np.concatenate([w[j:], w[i:j], w[:i]])
        out = w.tobytes()
    else:  # "duplicate": a word run repeated (time goes back)
        if w.size > 2:
            i, j = np.sort(rng.integers(0, w.size, 2))
            w = np.concatenate([w[:j], w[i:j], w[j:]])
        out = w.tobytes()
    return out, kind


MUTATIONS = ("truncate", "truncate_odd", "flip_bits", "garbage", "empty", "evt2_words",
             "time_jump", "wrap", "unknown_words", "out_of_range", "splice", "duplicate")


def packet_stream(rng, real: list[bytes], synthetic: list[bytes], n: int, p_mutate: float = 0.6):
    """n packets in stream order, a share of them mutated: (bytes, kind, source)."""
    sources = (("real", real), ("synthetic", synthetic))
    out = []
    while len(out) < n:
        name, packets = sources[int(rng.integers(2))]
        start = int(rng.integers(len(packets)))
        for packet in packets[start:start + int(rng.integers(5, 60))]:
            if rng.random() < p_mutate:
                packet, kind = mutate(rng, packet, *REAL_SIZE)
            else:
                kind = "clean"
            out.append((packet, kind, name))
    return out[:n]


def check_chunk(chunk, width, height, n_words: int) -> None:
    assert chunk.events.dtype == EVENT_DTYPE and chunk.triggers.dtype == TRIGGER_DTYPE
    assert chunk.n_words == n_words
    ev = chunk.events
    if ev.size:
        assert int(ev["x"].max()) < width and int(ev["y"].max()) < height
        assert np.all(np.abs(ev["p"]) == 1) and int(ev["t"].min()) >= 0
    if chunk.triggers.size:
        assert int(chunk.triggers["value"].max()) <= 1 and int(chunk.triggers["channel"].max()) <= 15
    if chunk.faults:
        assert chunk.stats["faults"] == len(chunk.faults)
        assert all(f and "\n" not in f for f in chunk.faults)


def same_mod_wrap(got: np.ndarray, want: np.ndarray, fields) -> bool:
    """Equal field by field, time compared modulo the 2^24 us wrap (garbage may add epochs)."""
    if got.size != want.size:
        return False
    return all(np.array_equal(got[f] % WRAP, want[f] % WRAP) if f == "t"
               else np.array_equal(got[f], want[f]) for f in fields)


# ----------------------------------------------------------------------------- (a) decoder

def test_decoder_survives_1e5_mutated_packets_and_counts_their_faults(real_packets,
                                                                       synthetic_packets):
    warm_up()
    rng = np.random.default_rng(1)
    stream = packet_stream(rng, real_packets, synthetic_packets, N_PACKETS)
    worst, n_faults, by_kind = 0.0, 0, {}
    decoder, pending = None, 0
    for i, (packet, kind, _) in enumerate(stream):
        if i % 500 == 0:  # a new stream now and then, some with a sensor smaller than the data
            size = REAL_SIZE if rng.random() < 0.8 else SMALL
            decoder, pending = Evt3Decoder(*size), 0
        start = time.perf_counter()
        chunk = decoder.decode(packet)
        worst = max(worst, time.perf_counter() - start)
        check_chunk(chunk, decoder.width, decoder.height, (pending + len(packet)) // 2)
        aligned = pending == 0  # else the carried odd byte shifts every word of this packet
        pending = (pending + len(packet)) % 2
        n_faults += len(chunk.faults)
        if chunk.faults:
            by_kind[kind] = by_kind.get(kind, 0) + 1
        if kind == "unknown_words" and aligned:  # each inserted word is a fault, anywhere
            assert any("unknown word type" in f for f in chunk.faults), chunk.faults
        if kind == "out_of_range" and aligned and decoder.width == REAL_SIZE[0]:
            assert any("outside the 1280x720 sensor" in f for f in chunk.faults), chunk.faults
        if pending and rng.random() < 0.5:  # end of a stream mid-word: a truncation fault
            tail = decoder.finish()
            assert len(tail.faults) == 1 and "truncated data" in tail.faults[0]
            pending = 0
    assert worst < HANG_S
    assert n_faults > N_PACKETS // 10
    # the kinds of damage a decoder can see show up as faults; clean packets of a stream
    # decoded in order give none (only those right after damage can)
    assert {"garbage", "unknown_words", "out_of_range", "time_jump", "evt2_words"} <= set(by_kind)
    assert by_kind.get("clean", 0) < sum(by_kind.values()) // 4


def test_both_decoder_backends_count_the_same_faults_on_mutated_packets(real_packets,
                                                                         synthetic_packets):
    """Two independent implementations (compiled kernel, numpy passes) agree on events,
    triggers, every fault message and the counters, packet by packet."""
    rng = np.random.default_rng(2)
    stream = packet_stream(rng, real_packets, synthetic_packets, 2000, p_mutate=0.7)
    a, b = Evt3Decoder(*REAL_SIZE, backend="numba"), Evt3Decoder(*REAL_SIZE, backend="numpy")
    n_faults = 0
    for packet, _, _ in stream:
        ca, cb = a.decode(packet), b.decode(packet)
        assert ca.faults == cb.faults
        assert ca.stats == cb.stats
        assert np.array_equal(ca.events, cb.events) and np.array_equal(ca.triggers, cb.triggers)
        n_faults += len(ca.faults)
    assert n_faults > 100 and a.stats == b.stats


def test_strict_mode_raises_exactly_on_faults_with_the_prefix_decoded(real_packets,
                                                                       synthetic_packets):
    rng = np.random.default_rng(3)
    stream = packet_stream(rng, real_packets, synthetic_packets, 3000, p_mutate=0.5)
    lenient, strict = Evt3Decoder(*REAL_SIZE), Evt3Decoder(*REAL_SIZE)
    raised = 0
    for packet, _, _ in stream:
        chunk = lenient.decode(packet)
        try:
            strict_chunk = strict.decode(packet, strict=True)
        except Evt3Error as err:
            raised += 1
            assert chunk.faults and str(err) == chunk.faults[0]
            n = err.partial.events.size
            assert np.array_equal(err.partial.events, chunk.events[:n])
            strict.decode(packet)  # a strict fault leaves the decoder as it was: catch up
            continue
        assert not chunk.faults
        assert np.array_equal(strict_chunk.events, chunk.events)
    assert raised > 100


def test_a_clean_packet_after_garbage_decodes_exactly(real_packets, synthetic_packets):
    """Whatever garbage came before (the stream ended with finish()), a packet that sets time
    and row before its events decodes to exactly its events (time modulo the wrap: garbage
    TIME_HIGH words may have advanced the epoch)."""
    rng = np.random.default_rng(4)
    decoder = Evt3Decoder(*REAL_SIZE)
    for i in range(3000):
        garbage, _ = mutate(rng, (real_packets + synthetic_packets)[i % 200], *REAL_SIZE)
        decoder.decode(garbage)
        decoder.finish()
        data, ev, tr = clean_packet(rng, *REAL_SIZE, t0=int(rng.integers(0, WRAP - 4000)))
        chunk = decoder.decode(data)
        assert same_mod_wrap(chunk.events, ev, ("t", "x", "y", "p")), i
        assert same_mod_wrap(chunk.triggers, tr, ("t", "channel", "value")), i


def _resync_word(words: np.ndarray) -> int | None:
    """Index after which every register a CD event needs (time high, row, vector base when
    vectors follow) has been set by this packet's own words; None if never."""
    ty = words >> 12
    firsts = []
    for t in (TIME_HIGH, ADDR_Y):
        hits = np.flatnonzero(ty == t)
        if not hits.size:
            return None
        firsts.append(int(hits[0]))
    vectors = np.flatnonzero((ty == 0x4) | (ty == 0x5))
    if vectors.size:
        bases = np.flatnonzero(ty == VECT_BASE_X)
        if not bases.size:
            return None
        firsts.append(int(bases[0]))
    return max(firsts) + 1


def test_real_stream_resyncs_after_a_damaged_packet(real_packets):
    """Damage packet k of the real recording: packet k + 1 decodes to the intact stream's
    events from the point where its own words have set time and row again."""
    rng = np.random.default_rng(6)
    reference = Evt3Decoder(*REAL_SIZE)
    ref_chunks = [reference.decode(p) for p in real_packets]
    checked = 0
    for _ in range(300):
        k = int(rng.integers(0, len(real_packets) - 1))
        nxt = real_packets[k + 1]
        cut = _resync_word(np.frombuffer(nxt, "<u2"))
        if cut is None:
            continue
        decoder = Evt3Decoder(*REAL_SIZE)
        for p in real_packets[:k]:
            decoder.decode(p)
        prefix = Evt3Decoder(*REAL_SIZE)  # events the intact stream gets before the resync word
        for p in real_packets[:k + 1]:
            prefix.decode(p)
        n_before = prefix.decode(nxt[:2 * cut]).events.size
        damaged, _ = mutate(rng, real_packets[k], *REAL_SIZE)
        decoder.decode(damaged)
        decoder.finish()  # a damaged packet's odd byte is not carried (the assembler drops it)
        got = decoder.decode(nxt).events
        want = ref_chunks[k + 1].events[n_before:]
        assert got.size >= want.size
        assert same_mod_wrap(got[got.size - want.size:], want, ("t", "x", "y", "p"))
        checked += 1
    assert checked > 100


# ----------------------------------------------------------------------------- (b) assembler

class StreamModel:
    """What the assembler must count for a sequence of event packets (the test's own model)."""

    def __init__(self):
        self.last_seq = None
        self.lost = 0
        self.restarts = 0

    def seq(self, seq: int) -> None:
        if self.last_seq is not None:
            if seq > self.last_seq + 1:
                self.lost += seq - self.last_seq - 1
            elif seq <= self.last_seq:
                self.restarts += 1
        self.last_seq = seq


def fuzz_messages(rng, real, synthetic, n: int, base_ns: int = 1_700_000_000_000_000_000,
                  seq_faults: bool = True):
    """n event-packet messages as (stamp, width, height, encoding, data, seq, big, kind,
    events of a clean packet): the packet stream of packet_stream with transport faults on top
    (stamps jumping back as a looping bag does, wrong sizes and encodings, big-endian flags,
    with seq_faults seq gaps and restarts), and now and then garbage followed by a clean
    self-contained packet (kind 'after_garbage')."""
    stream = packet_stream(rng, real, synthetic, n)
    stamp, seq, out = base_ns, 0, []
    for i, (packet, kind, _) in enumerate(stream):
        stamp += int(rng.integers(200_000, 2_000_000))
        seq += 1
        r = rng.random()
        if r < 0.002:
            stamp -= int(rng.integers(200_000_000, 3_000_000_000))  # bag loop
        elif r < 0.004 and seq_faults:
            seq += int(rng.integers(1, 20))  # lost packets
        elif r < 0.005 and seq_faults:
            seq = int(rng.integers(0, seq))  # publisher restarted
        width, height, encoding, big = *REAL_SIZE, "evt3", False
        r = rng.random()
        if r < 0.01:
            width, height = SMALL
        elif r < 0.015:
            encoding = str(rng.choice(["evt2", "EVT2.1", "mono8", "", "evt3 "]))
        elif r < 0.018:
            big = True
        elif r < 0.02:
            width = 0
        if i % 250 == 248:  # garbage (odd lengths too), then a clean packet
            packet, kind = rng.integers(0, 256, int(rng.integers(1, 3000)), np.uint8).tobytes(), \
                "garbage"
            width, height, encoding, big = *REAL_SIZE, "evt3", False
        elif i % 250 == 249:
            data, ev, _ = clean_packet(rng, *REAL_SIZE, t0=int(rng.integers(0, WRAP - 4000)))
            out.append((stamp, *REAL_SIZE, "evt3", data, seq, False, "after_garbage", ev.size))
            continue
        out.append((stamp, width, height, encoding, packet, seq, big, kind, None))
    return out


def test_assembler_survives_1e5_mutated_packets_and_counts_everything(real_packets,
                                                                       synthetic_packets):
    rng = np.random.default_rng(7)
    messages = fuzz_messages(rng, real_packets, synthetic_packets, N_PACKETS)
    asm = JobAssembler(AssemblerConfig(max_events=300_000))
    model = StreamModel()
    worst, accepted, rejected, odd_faults = 0.0, 0, 0, 0
    for i, (stamp, width, height, encoding, data, seq, big, kind, n_clean) in enumerate(messages):
        model.seq(seq)
        before = asm.counts()
        start = time.perf_counter()
        ok = asm.add_event_packet(stamp, width, height, encoding, np.frombuffer(data, np.uint8),
                                  seq=seq, is_bigendian=big)
        worst = max(worst, time.perf_counter() - start)
        after = asm.counts()
        if ok:
            accepted += 1
            if len(data) % 2:  # an odd byte is a fault of its own, and is not carried over
                odd_faults += 1
                assert after["decode_faults"] > before["decode_faults"]
            if kind == "after_garbage":  # the valid events around faults are still used
                assert after["events"] - before["events"] == n_clean, i
        else:  # rejected (counted) or stale from before a clock jump (counted)
            rejected += 1
            assert after["events"] == before["events"]
            assert (after["packets_rejected"] - before["packets_rejected"]) + \
                (after["stale_messages"] - before["stale_messages"]) == 1
        if i % 100 == 0:
            asm.pop_jobs()
        if i % 1000 == 0:  # bad frames and lens readings between the packets
            feed_bad_frame_and_focus(asm, rng, stamp)
        assert after["events_buffered"] <= 300_000
    assert worst < HANG_S
    stats = asm.stats()
    assert stats["packets"] == accepted and accepted + rejected == N_PACKETS
    assert stats["packets_lost"] == model.lost and stats["seq_restarts"] == model.restarts
    assert stats["clock_resets"] > 50 and stats["contract_violations"] > 0
    assert stats["decode_faults"] > N_PACKETS // 10 + odd_faults // 2
    assert stats["events"] > 10_000_000
    asm.flush()


def feed_bad_frame_and_focus(asm: JobAssembler, rng, stamp: int) -> None:
    w, h = REAL_SIZE if rng.random() < 0.5 else SMALL
    encoding = str(rng.choice(["rgb8", "bgr8", "mono8", "yuv422", "32FC1"]))
    step = w * int(rng.integers(0, 5))
    data = rng.integers(0, 256, int(rng.integers(0, 3 * w * h + 10)), dtype=np.uint8)
    assert asm.add_frame_message(stamp, w, h, encoding, step, data) in (True, False)
    for value in (float("nan"), float("inf"), -1e30, float(rng.normal())):
        assert asm.add_focus(stamp, value) in (True, False)


# ----------------------------------------------------------------------------- node: no evidence

def sim_recording(seed: int, width: int, height: int, n_sweeps: int = 3):
    from efs_ros.sim.rig import RigConfig, simulate_recording
    from efs_ros.sim.sensor import SensorConfig

    rig = RigConfig(height=height, width=width, steps=60, dwell_s=0.02)
    return simulate_recording(rig, SensorConfig(shot_hz=0.1), np.random.default_rng(seed),
                              n_sweeps=n_sweeps, frame_rate_hz=30.0, with_triggers=False)


def rewrite(src, dst, change, drop_topics=()):
    """Copy a bag message by message through change(topic, msg) -> msg."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    from efs_ros.io.typestore import typestore

    store = typestore()
    with Reader(src) as reader, Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP) as out:
        conns = {c.id: out.add_connection(c.topic, c.msgtype, typestore=store)
                 for c in reader.connections if c.topic not in drop_topics}
        for conn, t, raw in reader.messages():
            if conn.id in conns:
                msg = change(conn.topic, store.deserialize_cdr(raw, conn.msgtype))
                out.write(conns[conn.id], t, store.serialize_cdr(msg, conn.msgtype))


def jobs_of(bag) -> tuple[list, JobAssembler]:
    """The jobs `make eval` (and the node) form from a bag, and the assembler that formed them."""
    from efs_ros.io.recording import read_recording
    from efs_ros.tools.eval import feed

    asm, jobs = JobAssembler(), []
    for topic, msg, _ in read_recording(bag):
        if topic in ("/event_camera/events", "/camera/image_raw", "/lens/focus_state"):
            feed(asm, topic, msg)
            jobs += asm.pop_jobs()
    return jobs + asm.flush(), asm


@pytest.fixture(scope="module")
def no_evidence_bags(tmp_path_factory):
    """A clean 96x72 recording (three sweeps) and three damaged copies: the middle sweep's
    frames saturated, the middle sweep's event packets emptied, and no lens topic at all."""
    from efs_ros.io.recording import write_recording

    root = tmp_path_factory.mktemp("no_evidence")
    clean = root / "clean"
    write_recording(clean, sim_recording(7, 96, 72), storage="mcap", use_triggers=False,
                    focus_rate_hz=250, seed=3)
    jobs, _ = jobs_of(clean)
    sweeps = sorted({j.meta["sweep_index"] for j in jobs})
    middle = [j for j in jobs if j.meta["sweep_index"] == sweeps[len(sweeps) // 2]]
    lo = middle[0].meta["sweep_start_ns"] - 10_000_000
    hi = middle[0].meta["sweep_end_ns"] + 10_000_000
    middle_stamps = {j.stamp_ns for j in middle}

    def saturate(topic, msg):
        if topic == "/camera/image_raw" and msg.header.stamp.sec * 10**9 + \
                msg.header.stamp.nanosec in middle_stamps:
            msg.data = np.minimum(msg.data.astype(np.int32) * 8 + 100, 255).astype(np.uint8)
        return msg

    def no_events(topic, msg):
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        if topic == "/event_camera/events" and lo <= stamp <= hi:
            msg.events = np.zeros(0, np.uint8)
        return msg

    bags = {"clean": clean}
    for name, change, drop in (("saturated", saturate, ()), ("no_events", no_events, ()),
                               ("no_lens", lambda t, m: m, ("/lens/focus_state",))):
        bags[name] = root / name
        rewrite(clean, bags[name], change, drop)
    return bags, {j.stamp_ns for j in jobs}, middle_stamps


def test_frames_without_evidence_give_no_image_and_a_counted_reason(no_evidence_bags):
    """In the core (as `make eval` and the node use it): exactly the middle sweep's frames are
    skipped, each with its reason, and every other job is still made."""
    bags, all_stamps, middle = no_evidence_bags
    for name, code in (("saturated", "saturated"), ("no_events", "no_events")):
        jobs, asm = jobs_of(bags[name])
        assert {j.stamp_ns for j in jobs} == all_stamps - middle, name
        assert asm.skipped_by_reason == {code: len(middle)}, (name, asm.skipped_by_reason)
        assert asm.stats()["jobs_skipped"] == len(middle)
    jobs, asm = jobs_of(bags["no_lens"])
    assert jobs == [] and asm.stats()["frames_without_sweep"] > 0


def test_a_slow_camera_after_a_bag_loop_is_not_taken_for_stale(no_evidence_bags):
    """A looping bag jumps the clock back (reset). A camera whose first frame of the new pass
    comes 200 ms after the jump is on the new timeline, not a late message from the old one:
    its frames make jobs again."""
    from efs_ros.io.recording import read_recording
    from efs_ros.tools.eval import feed

    bags, all_stamps, _ = no_evidence_bags
    inputs = ("/event_camera/events", "/camera/image_raw", "/lens/focus_state")
    messages = [(t, m) for t, m, _ in read_recording(bags["clean"]) if t in inputs]
    start = min(m.stamp_ns for _, m in messages)
    asm = JobAssembler()
    for topic, msg in messages:
        feed(asm, topic, msg)
        asm.pop_jobs()
    late_camera = start + 200_000_000
    second = []
    for topic, msg in messages:
        if topic == "/camera/image_raw" and msg.stamp_ns < late_camera:
            continue
        feed(asm, topic, msg)
        second += asm.pop_jobs()
    second += asm.flush()
    assert asm.stats()["clock_resets"] == 1 and asm.stats()["stale_messages"] == 0
    assert {j.stamp_ns for j in second} == {s for s in all_stamps if s >= late_camera}


def test_live_node_reports_missing_lens_saturation_and_empty_sweeps(no_evidence_bags,
                                                                     tmp_path):
    """Over DDS, one node process, the damaged bags replayed one after the other (each replay
    jumps the clock back, which resets the node): no lens -> no output and a WARN that says
    why; saturated frames and an empty sweep -> no image for those frames, a counted reason,
    and every other job published."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from test_sim_rig import Listener, NodeProcess, diagnostics_item

    from efs_ros.nodes.convert import stamp_to_ns
    from efs_ros.tools.replay import Replayer

    bags, all_stamps, middle = no_evidence_bags
    node = NodeProcess("efs_ros.nodes.all_in_focus", {
        "backend": "classical", "reliable_inputs": True, "max_pending_jobs": 50,
        "idle_flush_s": 1.0, "input_timeout_s": 1.0}, log_dir=tmp_path)
    listener = Listener("efs_fuzz_replayer")
    listener.listen(Image, "/efs/all_in_focus", lambda m: (stamp_to_ns(m.header.stamp),), None)
    listener.listen(DiagnosticArray, "/diagnostics", diagnostics_item, None)
    listener.start()
    try:
        assert listener.wait_until(lambda: node_status(listener), STALL_S), node.log()

        def replay(name: str) -> None:
            replayer = Replayer(listener.node, bags[name], rate=2.0)
            try:
                # reliable: once our writers know the node's readers, nothing is lost
                assert replayer.wait_for_subscribers(1, STALL_S, ["/event_camera/events",
                                                                  "/camera/image_raw"]), node.log()
                replayer.run()
            finally:
                replayer.close()

        # no lens at all: the frames wait for a sweep, nothing is published, diagnostics say why
        replay("no_lens")
        assert listener.wait_until(
            lambda: "no lens focus state" in node_status(listener).get("message", ""), STALL_S), \
            node_status(listener)
        assert listener.wait_until(
            lambda: counter(node_status(listener), "frames_without_sweep") > 0, STALL_S)
        assert listener.items("/efs/all_in_focus") == []

        for name, code, text in (("saturated", "saturated", "frame saturated"),
                                 ("no_events", "no_events", "events in its sweep")):
            done = len(listener.items("/efs/all_in_focus"))
            replay(name)

            def published(done=done):
                return {s for s, _ in listener.items("/efs/all_in_focus")[done:]}
            assert listener.wait_until(lambda: published() >= all_stamps - middle, STALL_S), \
                (name, node_status(listener), node.log())
            assert listener.wait_until(
                lambda c=code: f"{c} {len(middle)}" in node_status(listener).get(
                    "jobs_skipped_by_reason", ""), STALL_S), node_status(listener)
            # jobs run in frame order, so an image for a skipped (middle) frame would have come
            # before those of the later frames, which are all in
            assert published() == all_stamps - middle, name
            warned = [st for _, statuses, _ in listener.items("/diagnostics")
                      for key, st in statuses.items() if key == NODE_STATUS
                      and "skipped" in st["message"] and text in st["message"]]
            assert warned and all(int(st["level"]) >= 1 for st in warned), \
                [st["message"] for _, sts, _ in listener.items("/diagnostics")
                 for key, st in sts.items() if key == NODE_STATUS]
        assert node.proc.poll() is None
    finally:
        listener.close()
        node.stop()


# ----------------------------------------------------------------------------- (c) live node

NODE_STATUS = "all_in_focus: pipeline"
NODE_BUFFER = 300_000
DDS_BACKLOG = 6_000
"""Packets published but not yet counted by the node, at most (the queue holds 100 000)."""


def small_packets(packets: list[bytes], rng, lo: int = 8, hi: int = 256) -> list[bytes]:
    """A stream re-cut into small packets (word boundaries), as a fast sensor's driver might."""
    data = b"".join(packets)
    cuts = np.cumsum(rng.integers(lo // 2, hi // 2, len(data) // lo)) * 2
    cuts = cuts[cuts < len(data)]
    return [data[a:b] for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(data)], strict=True)]


def replica_feed(asm: JobAssembler, message) -> None:
    stamp, width, height, encoding, data, seq, big, *_ = message
    asm.add_event_packet(stamp, width, height, encoding, np.frombuffer(data, np.uint8), seq=seq,
                         is_bigendian=big)


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray
    from test_sim_rig import Listener, NodeProcess, diagnostics_item

    node = NodeProcess("efs_ros.nodes.all_in_focus", {
        "backend": "classical", "reliable_inputs": True, "events_queue_depth": 100_000,
        "max_buffered_events": NODE_BUFFER, "idle_flush_s": 0.0},
        log_dir=tmp_path_factory.mktemp("fuzz_node"))
    listener = Listener("efs_fuzz_publisher")
    listener.listen(DiagnosticArray, "/diagnostics", diagnostics_item, None)
    listener.start()
    yield node, listener
    listener.close()
    node.stop()


def node_status(listener) -> dict:
    from test_sim_rig import latest_status

    return latest_status(listener, NODE_STATUS) or {}


def counter(status: dict, key: str) -> int:
    return int(status.get(key, -1))


def test_live_node_counts_every_fuzzed_packet_over_dds(fuzz_node, real_packets,
                                                       synthetic_packets):
    """Small mutated packets over reliable DDS into the node process: none crashes it, every
    packet is counted (received + lost == sent), and its counters equal those of a JobAssembler
    fed the same packets here: every fault counted, the valid events decoded and buffered."""
    from event_camera_msgs.msg import EventPacket
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    from efs_ros.nodes.convert import make_event_packet

    node, listener = fuzz_node
    rng = np.random.default_rng(8)
    real, synthetic = small_packets(real_packets, rng), small_packets(synthetic_packets, rng)
    messages = fuzz_messages(rng, real, synthetic, N_PACKETS, seq_faults=False)
    publisher = listener.node.create_publisher(EventPacket, "/event_camera/events", QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=100_000, reliability=ReliabilityPolicy.RELIABLE))
    assert listener.wait_until(lambda: publisher.get_subscription_count() >= 1
                               and node_status(listener), STALL_S), node.log()
    replica = JobAssembler(AssemblerConfig(max_events=NODE_BUFFER))
    sent = []

    def send(message):
        stamp, width, height, encoding, data, seq, big, *_ = message
        msg = make_event_packet(stamp, data, width, height, seq, encoding=encoding)
        msg.is_bigendian = big
        publisher.publish(msg)
        sent.append(message)

    # handshake: the same clean packet (seq 0) until the node has one; repeats count as restarts
    first_stamp = messages[0][0] - 1_000_000_000
    hello = (first_stamp, *REAL_SIZE, "evt3", clean_packet(rng, *REAL_SIZE, 0)[0], 0, False)
    while counter(node_status(listener), "events_received") < 1:  # discovery: nothing moves
        assert node.proc.poll() is None and len(sent) < STALL_S / 0.2, node.log()
        send(hello)
        time.sleep(0.2)

    def counted() -> int:
        return counter(node_status(listener), "events_received")

    start = time.monotonic()
    for begin in range(0, N_PACKETS, 1000):  # fixed work; fails only if the node stops counting
        for message in messages[begin:begin + 1000]:
            send(message)
        wait_for_progress(counted, lambda: len(sent) - counted() <= DDS_BACKLOG,
                          f"node counting fuzz packets ({len(sent)} sent)",
                          alive=lambda: node.proc.poll() is None)
    n_fuzz = N_PACKETS
    publish_s = time.monotonic() - start

    # a clean packet at the end, repeated with the next seq until the node has counted it
    last_stamp = max(m[0] for m in messages[:n_fuzz])
    tail_seq = messages[n_fuzz - 1][5]

    def accounted() -> int:
        st = node_status(listener)
        return counter(st, "events_received") + counter(st, "packets_lost")

    k, moved = 0, (accounted(), time.monotonic())
    while accounted() != len(sent):  # one more clean packet a second until all are counted
        k += 1
        data, _, _ = clean_packet(rng, *REAL_SIZE, t0=int(rng.integers(0, WRAP - 4000)))
        send((last_stamp + k * 1_000_000, *REAL_SIZE, "evt3", data, tail_seq + k, False))
        listener.wait_until(lambda: accounted() == len(sent), 1.0, step=0.05)
        if accounted() != moved[0]:
            moved = (accounted(), time.monotonic())
        assert node.proc.poll() is None, node.log()
        assert time.monotonic() - moved[1] < STALL_S, (len(sent), node_status(listener))
    drain_s = time.monotonic() - start - publish_s
    reports = len(listener.items("/diagnostics"))  # one more /diagnostics with everything in
    wait_for_progress(lambda: len(listener.items("/diagnostics")),
                      lambda: len(listener.items("/diagnostics")) > reports + 1,
                      "/diagnostics after the last packet", alive=lambda: node.proc.poll() is None)
    status = node_status(listener)
    print(f"\nDDS fuzz: {n_fuzz} fuzz packets + {len(sent) - n_fuzz} handshake/tail, published "
          f"in {publish_s:.1f} s, drained {drain_s:.1f} s later; node: {status.get('message')}")
    for message in sent:  # here, not while publishing: the node needs the CPU then
        replica_feed(replica, message)
    expected = replica.counts()
    assert counter(status, "packets_lost") == 0  # reliable transport, queue never full
    assert counter(status, "events_received") == len(sent)
    for node_key, key in (("packets_accepted", "packets"), ("packets_rejected", "packets_rejected"),
                          ("stale_messages", "stale_messages"), ("decode_faults", "decode_faults"),
                          ("events_decoded", "events"), ("clock_resets", "clock_resets"),
                          ("seq_restarts", "seq_restarts")):
        assert counter(status, node_key) == expected[key], (node_key, status, expected)
    assert expected["decode_faults"] > n_fuzz // 20 and expected["clock_resets"] > 10
    assert counter(status, "buffer_events") <= NODE_BUFFER
    assert int(status["level"]) >= 1 and node.proc.poll() is None


def test_live_node_counts_bad_frames_and_lens_states(fuzz_node):
    from sensor_msgs.msg import Image, JointState

    from efs_ros.nodes.convert import make_focus_state, numpy_to_image_msg

    node, listener = fuzz_node
    assert listener.wait_until(lambda: counter(node_status(listener), "events_received") > 0,
                               STALL_S)
    frames = listener.node.create_publisher(Image, "/camera/image_raw", reliable_qos())
    focus = listener.node.create_publisher(JointState, "/lens/focus_state", reliable_qos())
    assert listener.wait_until(lambda: frames.get_subscription_count() >= 1
                               and focus.get_subscription_count() >= 1, STALL_S)
    before = node_status(listener)  # nothing else is sent now: the counters stand still
    stamp = 1_800_000_000_000_000_000
    rng = np.random.default_rng(9)
    n_frames = n_focus = 0
    for k in range(30):
        if k % 3 == 0:  # the sensor is 1280x720
            msg = numpy_to_image_msg(rng.integers(0, 256, (72, 96, 3), np.uint8), "rgb8",
                                     stamp_ns=stamp + k)
        elif k % 3 == 1:
            msg = numpy_to_image_msg(np.zeros((72, 96), np.uint8), "mono8", stamp_ns=stamp + k)
            msg.encoding = "yuv422"
        else:  # data shorter than height x step
            msg = numpy_to_image_msg(np.zeros((720, 1280), np.uint8), "mono8", stamp_ns=stamp + k)
            msg.data = msg.data[:1000]
        frames.publish(msg)
        n_frames += 1
        bad = make_focus_state(stamp + k, (float("nan"), float("inf"), 1.0)[k % 3], 0.0)
        if k % 3 == 2:
            bad.name = ["zoom", "iris"]
        focus.publish(bad)
        n_focus += 1

    def counted():
        st = node_status(listener)
        return counter(st, "frames_rejected") - counter(before, "frames_rejected") == n_frames \
            and counter(st, "focus_rejected") - counter(before, "focus_rejected") == n_focus
    assert listener.wait_until(counted, STALL_S), (before, node_status(listener))
    assert counter(node_status(listener), "frames_received") - \
        counter(before, "frames_received") == n_frames
    assert node.proc.poll() is None


def reliable_qos(depth: int = 1000):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


# ----------------------------------------------------------------------------- eval: corrupt bags

ERROR_PREFIX = "efs_eval: error: "


def _garbage_pages(db, rng) -> None:
    """8 kB of random bytes over the file at 70 %: damaged pages in the message table."""
    data = bytearray(db.read_bytes())
    at = int(len(data) * 0.7)
    data[at:at + 8192] = rng.integers(0, 256, 8192, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(data))


def _garbage_message(db, rng) -> None:
    """One frame's CDR bytes replaced by random ones (the file itself intact)."""
    con = sqlite3.connect(db)
    con.execute("UPDATE messages SET data = ? WHERE id = (SELECT m.id FROM messages m JOIN topics "
                "t ON m.topic_id = t.id WHERE t.name = '/camera/image_raw' ORDER BY m.timestamp "
                "LIMIT 1 OFFSET 9)", (rng.integers(0, 256, 300, dtype=np.uint8).tobytes(),))
    con.commit()
    con.close()


def _garbage_index(db, rng) -> None:
    """The timestamp index's root page overwritten: rosbags cannot open the bag, the messages
    themselves are intact (read in storage order)."""
    con = sqlite3.connect(db)
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'timestamp_idx'").fetchone()
    page = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    data = bytearray(db.read_bytes())
    data[(root[0] - 1) * page:root[0] * page] = rng.integers(0, 256, page, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(data))


def _cut(db, rng) -> None:
    db.write_bytes(db.read_bytes()[: int(db.stat().st_size * 0.6)])


def _not_a_database(db, rng) -> None:
    db.write_bytes(rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def sqlite_bag(tmp_path_factory):
    from efs_ros.io.recording import write_recording

    path = tmp_path_factory.mktemp("eval_sqlite") / "bag"
    write_recording(path, sim_recording(2, 64, 48), storage="sqlite3", use_triggers=False,
                    seed=4)
    out = path.parent / "out_clean"
    from efs_ros.tools import eval as efs_eval

    assert efs_eval.main([str(path), str(out), "--no-progress"]) == 0
    return path, out


def salvageable_job_stamps(bag) -> list[int]:
    """What the readable part of a bag gives: the jobs before the fault (the reference)."""
    from efs_ros.io.recording import RecordingError, read_recording
    from efs_ros.tools.eval import feed

    asm, stamps = JobAssembler(), []
    try:
        for topic, msg, _ in read_recording(bag):
            if topic in ("/event_camera/events", "/camera/image_raw", "/lens/focus_state"):
                feed(asm, topic, msg)
                stamps += [j.stamp_ns for j in asm.pop_jobs()]
    except RecordingError:
        pass
    return stamps + [j.stamp_ns for j in asm.flush()]


@pytest.mark.parametrize("damage, says, jobs", [
    (_garbage_pages, "corrupt", "some"),
    (_garbage_message, "corrupt /camera/image_raw message", "some"),
    (_garbage_index, "corrupt sqlite3 bag", "all"),
    (_cut, "cannot open recording", "none"),
    (_not_a_database, "file is not a database", "none"),
])
def test_eval_on_a_corrupt_sqlite_bag_writes_the_jobs_before_the_fault(sqlite_bag, tmp_path,
                                                                       capsys, damage, says,
                                                                       jobs):
    from efs_ros.tools import eval as efs_eval

    bag, clean_out = sqlite_bag
    broken = tmp_path / "broken"
    shutil.copytree(bag, broken)
    damage(next(broken.glob("*.db3")), np.random.default_rng(0))
    out = tmp_path / "out"
    capsys.readouterr()
    status = efs_eval.main([str(broken), str(out), "--no-progress"])
    err = capsys.readouterr().err.splitlines()
    assert status == 1 and len(err) == 1 and err[0].startswith(ERROR_PREFIX) and says in err[0], err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["error"] in err[0]
    stamps = salvageable_job_stamps(broken)
    assert [j["stamp_ns"] for j in summary["jobs"]] == stamps
    clean = json.loads((clean_out / "summary.json").read_text())
    n = len(stamps)
    assert {"some": 0 < n < clean["n_jobs"], "all": n == clean["n_jobs"], "none": n == 0}[jobs]
    written = sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".npy"))
    assert len(written) == 3 * len(stamps)
    for name in written:  # the very bytes the intact bag gives for those jobs
        assert (out / name).read_bytes() == (clean_out / name).read_bytes(), name
