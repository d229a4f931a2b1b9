"""EVT 3.0 codec: cross-checked against independent decoders on a real recording, stream vs
one-shot decoding, exact round trips (vectors, triggers, clock wraps) and faults on bad input."""
from __future__ import annotations

import evt3
import faery
import numba  # noqa: F401 - the compiled backend is checked below: without numba that is an error
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from efs_ros.core import evt3 as codec
from efs_ros.core.events import EVENT_DTYPE, TRIGGER_DTYPE
from efs_ros.core.evt3 import (
    DecodedChunk,
    Evt3Decoder,
    Evt3Encoder,
    Evt3Error,
    decode_evt3,
    encode_evt3,
    read_raw,
    write_raw,
)

WRAP = 1 << 24


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_packets(real_evt3_bag):
    """The real recording's EventPacket payloads, in bag order, plus the sensor size."""
    from rosbags.rosbag2 import Reader

    from efs_ros.io.typestore import typestore

    store = typestore()
    packets, sizes, encodings = [], set(), set()
    with Reader(real_evt3_bag) as reader:
        for conn, _, raw in reader.messages():
            msg = store.deserialize_cdr(raw, conn.msgtype)
            packets.append(bytes(msg.events))
            sizes.add((int(msg.width), int(msg.height)))
            encodings.add(msg.encoding)
    assert encodings == {"evt3"}
    assert len(sizes) == 1
    (width, height), = sizes
    return packets, width, height


@pytest.fixture(scope="module")
def real_decoded(real_packets):
    packets, width, height = real_packets
    decoder = Evt3Decoder(width, height)
    chunks = [decoder.decode(p, strict=True) for p in packets]
    return _cat(chunks)


def _cat(chunks: list[DecodedChunk]) -> DecodedChunk:
    return DecodedChunk(np.concatenate([c.events for c in chunks]),
                        np.concatenate([c.triggers for c in chunks]),
                        [f for c in chunks for f in c.faults], sum(c.n_words for c in chunks))


def busy_events(n_segments: int, seed: int, width: int = 1280, height: int = 720,
                duration_us: int = 200_000, wrap_gaps: bool = False) -> np.ndarray:
    """A busy synthetic scene: short same-row runs of nearby x (so vector words occur), mixed
    with isolated events and duplicates; sorted by (t, y, x). With wrap_gaps the recording lasts
    several 2^24 us clock periods and has gaps longer than half a period."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, duration_us, n_segments))
    if wrap_gaps:
        # a few jumps of 5..20 s: the clock wraps (several times) between some events
        jumps = np.zeros(n_segments, np.int64)
        jumps[rng.integers(0, n_segments, 6)] = rng.integers(5_000_000, 20_000_000, 6)
        t = t + np.cumsum(jumps)
    y = rng.integers(0, height, n_segments)
    p = rng.choice(np.array([-1, 1], np.int8), n_segments)
    length = rng.integers(1, 30, n_segments)
    x0 = rng.integers(0, width - 100, n_segments)
    seg = np.repeat(np.arange(n_segments), length)
    start = np.cumsum(length) - length
    step = rng.choice([0, 1, 1, 2, 3, 5, 13], seg.size)  # 0: duplicate pixel, 13: breaks a vector
    step[start] = 0
    offset = np.cumsum(step)
    x = x0[seg] + offset - offset[start][seg]
    ev = np.empty(seg.size, EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = t[seg], np.minimum(x, width - 1), y[seg], p[seg]
    return ev[np.lexsort((ev["x"], ev["y"], ev["t"]))]


def some_triggers(events: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tr = np.zeros(n, TRIGGER_DTYPE)
    tr["t"] = np.sort(rng.choice(events["t"], n))  # same microseconds as events: ordering matters
    tr["channel"] = rng.integers(0, 3, n)
    tr["value"] = np.arange(n) % 2
    return tr


def word_types(data: bytes) -> np.ndarray:
    return np.bincount(np.frombuffer(data, "<u2") >> 12, minlength=16)


def words(*values: int) -> bytes:
    return np.array(values, "<u2").tobytes()


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype
    assert a.size == b.size
    for name in a.dtype.names:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ---------------------------------------------------------------------------------------------
# (1) the real recording against independent decoders
# ---------------------------------------------------------------------------------------------

def test_real_recording_matches_evt3_package_event_for_event(real_packets, real_decoded):
    packets, width, height = real_packets
    assert len(packets) == 105 and (width, height) == (1280, 720)
    ours = real_decoded.events
    assert real_decoded.faults == []
    ref = evt3.decode_bytes(b"".join(packets), sensor_width=width, sensor_height=height)
    assert len(ours) == len(ref) > 50_000
    np.testing.assert_array_equal(ours["x"], ref.x)
    np.testing.assert_array_equal(ours["y"], ref.y)
    np.testing.assert_array_equal(ours["t"], ref.t.astype(np.int64))
    np.testing.assert_array_equal(ours["p"], np.where(ref.p > 0, 1, -1))
    # evt3's own stream decoder, fed the same packets, agrees too
    stream = evt3.Decoder(sensor_width=width, sensor_height=height)
    fed = [stream.feed(p) for p in packets]
    np.testing.assert_array_equal(ours["t"], np.concatenate([f.t for f in fed]).astype(np.int64))


def test_real_recording_events_and_triggers_match_faery_and_evt3_files(real_packets, real_decoded, tmp_path):
    packets, width, height = real_packets
    raw = tmp_path / "real.raw"
    raw.write_bytes(f"% evt 3.0\n% format EVT3;height={height};width={width}\n% end\n".encode()
                    + b"".join(packets))
    events, triggers = [], []
    for packet in faery.evt.Decoder(str(raw), (width, height), "evt3"):
        if "events" in packet:
            events.append(packet["events"])
        if "triggers" in packet:
            triggers.append(packet["triggers"])
    fe = np.concatenate(events)
    ft = np.concatenate(triggers)
    ours = real_decoded
    np.testing.assert_array_equal(ours.events["t"], fe["t"].astype(np.int64))
    np.testing.assert_array_equal(ours.events["x"], fe["x"])
    np.testing.assert_array_equal(ours.events["y"], fe["y"])
    np.testing.assert_array_equal(ours.events["p"] > 0, fe["on"])
    # the recording's two external-trigger edges
    assert len(ours.triggers) == 2
    np.testing.assert_array_equal(ours.triggers["t"], ft["t"].astype(np.int64))
    np.testing.assert_array_equal(ours.triggers["channel"], ft["source"])
    np.testing.assert_array_equal(ours.triggers["value"], ft["rising"].astype(np.uint8))
    _, et = evt3.decode_file_with_triggers(str(raw))
    np.testing.assert_array_equal(ours.triggers["t"], np.asarray(et.timestamp).astype(np.int64))
    np.testing.assert_array_equal(ours.triggers["value"], np.asarray(et.value))
    # read_raw on the same file gives the same
    header, chunk = read_raw(raw)
    assert (header["width"], header["height"]) == (width, height)
    assert_same(chunk.events, ours.events)
    assert_same(chunk.triggers, ours.triggers)


@pytest.mark.parametrize("seed", range(40))
def test_random_word_soup_decodes_like_evt3(seed):
    """Random streams of every word type (vectors, triggers, OTHERS/CONTINUED, TIME_LOW jumping
    back and forth inside a TIME_HIGH) agree with the independent decoder event for event."""
    rng = np.random.default_rng(seed)
    n = 500
    types = rng.choice([0x0, 0x2, 0x2, 0x2, 0x3, 0x4, 0x5, 0x6, 0x6, 0x8, 0xA, 0xE, 0x7, 0xF], n)
    payload = rng.integers(0, 4096, n)
    payload = np.where(types == 0x8, np.cumsum(rng.integers(0, 3, n)) % 4096, payload)
    payload = np.where(types == 0x0, payload & 0x3FF, payload)  # master camera, y < 1024
    payload = np.where((types == 0x2) | (types == 0x3), payload & 0xBFF, payload)  # x < 1024
    head = [0x8000, 0x6000, 0x0000, 0x3000]
    data = words(*head) + ((types << 12) | payload).astype("<u2").tobytes()
    ours = decode_evt3(data)
    ref = evt3.decode_bytes(data, sensor_width=2048, sensor_height=2048)
    assert len(ours.events) == len(ref) > 100
    np.testing.assert_array_equal(ours.events["x"], ref.x)
    np.testing.assert_array_equal(ours.events["y"], ref.y)
    np.testing.assert_array_equal(ours.events["t"], ref.t.astype(np.int64))
    np.testing.assert_array_equal(ours.events["p"] > 0, ref.p > 0)
    assert len(ours.triggers) == np.count_nonzero(types == 0xA)


# ---------------------------------------------------------------------------------------------
# (2) one-shot vs stream, arbitrary split points
# ---------------------------------------------------------------------------------------------

def test_one_shot_equals_stream_on_real_recording(real_packets, real_decoded):
    packets, width, height = real_packets
    one = decode_evt3(b"".join(packets), width, height, strict=True)
    assert_same(one.events, real_decoded.events)
    assert_same(one.triggers, real_decoded.triggers)
    assert one.n_words == real_decoded.n_words == len(b"".join(packets)) // 2


def _decode_split(data: bytes, cuts: list[int], width=None, height=None) -> DecodedChunk:
    decoder = Evt3Decoder(width, height)
    bounds = [0, *sorted(set(cuts)), len(data)]
    view = memoryview(data)
    chunks = [decoder.decode(view[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    chunks.append(decoder.finish())
    return _cat(chunks)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 758_295), min_size=1, max_size=40))
def test_real_bytes_split_anywhere_decode_the_same(real_packets, real_decoded, cuts):
    packets, width, height = real_packets
    data = b"".join(packets)
    split = _decode_split(data, [c % len(data) for c in cuts], width, height)
    assert split.faults == []
    assert_same(split.events, real_decoded.events)
    assert_same(split.triggers, real_decoded.triggers)


@pytest.fixture(scope="module")
def synthetic_stream():
    events = busy_events(3000, seed=1, wrap_gaps=True)
    triggers = some_triggers(events, 40, seed=2)
    return events, triggers, encode_evt3(events, triggers)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=60))
def test_synthetic_bytes_split_anywhere_decode_the_same(synthetic_stream, cuts):
    events, triggers, data = synthetic_stream
    split = _decode_split(data, [c % len(data) for c in cuts])
    assert split.faults == []
    assert_same(split.events, events)
    assert_same(split.triggers, triggers)


def test_large_input_is_decoded_in_blocks_with_identical_result(monkeypatch, synthetic_stream):
    events, triggers, data = synthetic_stream
    whole = decode_evt3(data)
    monkeypatch.setattr(codec, "BLOCK_WORDS", 1000)  # forces ~len/1000 internal blocks
    blocked = decode_evt3(data)
    assert_same(blocked.events, whole.events)
    assert_same(blocked.triggers, whole.triggers)
    assert_same(whole.events, events)


def test_decoder_state_carries_mid_word_and_registers():
    decoder = Evt3Decoder()
    data = words(0x8001, 0x6005, 0x0007, 0x3010, 0x4005)
    first = decoder.decode(data[:9])  # ends inside the VECT_12 word (odd byte kept)
    assert len(first.events) == 0
    state = decoder.state
    assert state.pending == data[8:9]
    assert (state.y, state.base_x, state.time, state.words) == (7, 16, 4096 + 5, 3 + 1)
    second = decoder.decode(data[9:])
    assert second.events["x"].tolist() == [16, 18]
    assert second.events["t"].tolist() == [4101, 4101]
    assert decoder.state.base_x == 28


# ---------------------------------------------------------------------------------------------
# (3) encode -> decode round trips
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vectorize", [True, False])
def test_round_trip_exact_with_vectors_triggers_and_wraps(synthetic_stream, vectorize):
    events, triggers, _ = synthetic_stream
    assert events["t"][-1] > 3 * WRAP  # several clock wraps, some gaps over half a period
    assert np.diff(events["t"]).max() > WRAP // 2
    data = encode_evt3(events, triggers, vectorize=vectorize)
    types = word_types(data)
    if vectorize:
        assert types[codec.VECT_BASE_X] > 0 and types[codec.VECT_12] > 0 and types[codec.VECT_8] > 0
    else:
        assert types[codec.VECT_12] == types[codec.VECT_8] == 0
    assert types[codec.EXT_TRIGGER] == len(triggers)
    out = decode_evt3(data, 1280, 720, strict=True)
    assert_same(out.events, events)
    assert_same(out.triggers, triggers)


def test_vectors_make_the_stream_smaller(synthetic_stream):
    events, triggers, data = synthetic_stream
    assert len(data) < 0.8 * len(encode_evt3(events, triggers, vectorize=False))


def test_round_trip_across_packets_carries_wraps():
    """A recording encoded packet by packet (as the simulator writes bags) and decoded packet by
    packet keeps absolute time across every wrap."""
    events = busy_events(4000, seed=5, duration_us=int(3.5 * WRAP))  # dense: no gap needs keep-alives
    triggers = some_triggers(events, 12, seed=6)
    encoder = Evt3Encoder()
    decoder = Evt3Decoder(1280, 720)
    edges = np.linspace(0, events["t"][-1] + 1, 80).astype(np.int64)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        ev = events[(events["t"] >= lo) & (events["t"] < hi)]
        tr = triggers[(triggers["t"] >= lo) & (triggers["t"] < hi)]
        out.append(decoder.decode(encoder.encode(ev, tr), strict=True))
    got = _cat(out)
    assert decoder.state.epoch == 3
    assert_same(got.events, events)
    assert_same(got.triggers, triggers)


def test_encoder_output_is_read_by_independent_decoder(synthetic_stream):
    """evt3 (Prophesee's wrap rule: a TIME_HIGH drop of nearly the full range) reads our vectors,
    wraps and gaps of several clock periods the same way."""
    events, _, data = synthetic_stream
    assert word_types(data)[codec.VECT_12] > 0
    ref = evt3.decode_bytes(data)
    np.testing.assert_array_equal(ref.x, events["x"])
    np.testing.assert_array_equal(ref.y, events["y"])
    np.testing.assert_array_equal(ref.t.astype(np.int64), events["t"])
    np.testing.assert_array_equal(np.where(ref.p > 0, 1, -1), events["p"])


event_lists = st.lists(
    st.tuples(st.one_of(st.integers(0, 30), st.integers(0, 3 * WRAP)), st.integers(0, 40),
              st.integers(0, 3), st.sampled_from([-1, 1])),
    max_size=200)


@settings(max_examples=60, deadline=None)
@given(event_lists, st.booleans())
def test_round_trip_random_small_streams(rows, vectorize):
    ev = np.array(sorted(rows, key=lambda r: r[0]), dtype=EVENT_DTYPE)
    out = decode_evt3(encode_evt3(ev, vectorize=vectorize), strict=True)
    assert_same(out.events, ev)


# ---------------------------------------------------------------------------------------------
# (4) the real recording re-encoded by our encoder
# ---------------------------------------------------------------------------------------------

def test_real_recording_reencoded_decodes_to_the_same(real_decoded):
    ours = real_decoded
    data = encode_evt3(ours.events, ours.triggers)
    again = decode_evt3(data, 1280, 720, strict=True)
    assert_same(again.events, ours.events)
    assert_same(again.triggers, ours.triggers)


# ---------------------------------------------------------------------------------------------
# (5) bad input
# ---------------------------------------------------------------------------------------------

GOOD = [0x8001, 0x6005, 0x0007, 0x2803, 0x2004]  # t=4101, y=7: (3, +1) and (4, -1)
AFTER = [0x6009, 0x2805]                          # t=4105: (5, +1)


def test_truncated_word_is_a_fault_and_keeps_events():
    data = words(*GOOD) + b"\x05"
    with pytest.raises(Evt3Error, match=r"truncated data: 1 trailing byte \(0x05\)") as err:
        decode_evt3(data, strict=True)
    assert err.value.partial.events["x"].tolist() == [3, 4]
    out = decode_evt3(data)
    assert len(out.faults) == 1 and "truncated" in out.faults[0]
    assert out.events["x"].tolist() == [3, 4]


def test_unknown_word_type_is_a_fault_and_skipped():
    data = words(*GOOD, 0xB123, *AFTER)
    with pytest.raises(Evt3Error, match=r"unknown word type 0xB at word 5 \(value 0xB123\)") as err:
        decode_evt3(data, strict=True)
    assert err.value.partial.events["x"].tolist() == [3, 4]
    out = decode_evt3(data)
    assert len(out.faults) == 1 and out.stats["faults"] == 1
    assert out.events["x"].tolist() == [3, 4, 5]
    assert out.events["t"].tolist() == [4101, 4101, 4105]


def test_reserved_type_9_is_skipped_silently_and_counted():
    out = decode_evt3(words(*GOOD, 0x9ABC, 0x9000, *AFTER), strict=True)
    assert out.faults == []
    assert out.stats["reserved_0x9"] == 2
    assert out.events["x"].tolist() == [3, 4, 5]


def test_time_going_backwards_is_a_fault_and_events_are_kept():
    back = [0x8000, 0x6010, 0x2806]  # TIME_HIGH 1 -> 0: 4101 -> 16 us (not a wrap: small drop)
    data = words(*GOOD, *back, *AFTER)
    with pytest.raises(Evt3Error, match=r"time went backwards by 4085 us at word 7") as err:
        decode_evt3(data, strict=True)
    assert err.value.partial.events["x"].tolist() == [3, 4]
    out = decode_evt3(data)
    assert len(out.faults) == 1 and "backwards" in out.faults[0]
    assert out.events["x"].tolist() == [3, 4, 6, 5]
    assert out.events["t"].tolist() == [4101, 4101, 16, 9]


def test_small_backward_jitter_is_counted_not_a_fault():
    data = words(*GOOD, 0x6001, 0x2806, *AFTER)  # 4101 -> 4097: 4 us back
    out = decode_evt3(data, strict=True)
    assert out.faults == []
    assert out.stats["time_jitter"] == 1
    assert out.events["t"].tolist() == [4101, 4101, 4097, 4105]
    strict_decoder = Evt3Decoder(max_jitter_us=0)
    with pytest.raises(Evt3Error, match="backwards by 4 us"):
        strict_decoder.decode(data, strict=True)


def test_wrap_is_not_backwards():
    data = words(0x8FFF, 0x6FFE, 0x0001, 0x2801, 0x8000, 0x6003, 0x2802)
    out = decode_evt3(data, strict=True)
    assert out.events["t"].tolist() == [WRAP - 2, WRAP + 3]


def test_out_of_range_events_are_faults_with_width_height():
    data = words(*GOOD, 0x2878, 0x0040, 0x2801, 0x0008, *AFTER)  # x=120 at y=7; (1, 64); y=8
    with pytest.raises(Evt3Error, match=r"outside the 100x50 sensor.*word 5: x=120, y=7") as err:
        decode_evt3(data, width=100, height=50, strict=True)
    assert err.value.partial.events["x"].tolist() == [3, 4]
    out = decode_evt3(data, width=100, height=50)
    assert len(out.faults) == 1 and "2 event(s) outside" in out.faults[0]
    assert out.stats["dropped_events"] == 2
    assert out.events["x"].tolist() == [3, 4, 5]
    assert out.events["y"].tolist() == [7, 7, 8]
    assert decode_evt3(data).faults == []  # without a size nothing is out of range


def test_vector_beyond_width_is_out_of_range():
    data = words(*GOOD, 0x305E, 0x4FFF)  # base 94 + 12 bits: x = 94..105 with width 100
    out = decode_evt3(data, width=100)
    assert out.stats["dropped_events"] == 6
    assert out.events["x"].tolist() == [3, 4, 94, 95, 96, 97, 98, 99]


def test_events_before_state_words_are_dropped_and_counted():
    data = words(0x2801, 0x4003, *GOOD, *AFTER)  # ADDR_X and VECT_12 with no time, y or base yet
    with pytest.raises(Evt3Error, match=r"3 event\(s\) before the ADDR_Y/TIME_HIGH/VECT_BASE_X.*word 0"):
        decode_evt3(data, strict=True)
    out = decode_evt3(data)
    assert out.stats["dropped_events"] == 3
    assert out.events["x"].tolist() == [3, 4, 5]


def test_strict_error_leaves_decoder_unchanged():
    decoder = Evt3Decoder(100, 50)
    decoder.decode(words(*GOOD))
    before = decoder.state
    bad = words(0x2878, *AFTER)
    with pytest.raises(Evt3Error):
        decoder.decode(bad, strict=True)
    assert decoder.state == before
    out = decoder.decode(bad)
    assert out.events["x"].tolist() == [5] and len(out.faults) == 1


def test_encoder_rejects_bad_events():
    ev = busy_events(50, seed=3)
    with pytest.raises(ValueError, match="sorted by t"):
        encode_evt3(ev[::-1])
    bad = ev.copy()
    bad["p"][3] = 0
    with pytest.raises(ValueError, match="polarity"):
        encode_evt3(bad)
    bad = ev.copy()
    bad["x"][0] = 4000
    with pytest.raises(ValueError, match="0..2047"):
        encode_evt3(bad)
    encoder = Evt3Encoder()
    encoder.encode(ev[ev["t"] > 1000])
    with pytest.raises(ValueError, match="sorted by t"):
        encoder.encode(ev[:5])


def test_decoder_accepts_any_byte_buffer(synthetic_stream):
    events, _, data = synthetic_stream
    as_words = np.frombuffer(data[: len(data) // 2 * 2], "<u2")
    for buf in (bytearray(data), memoryview(data), np.frombuffer(data, np.uint8), memoryview(as_words)):
        out = decode_evt3(buf)
        assert out.n_words == len(data) // 2
        assert_same(out.events, decode_evt3(data).events)


def test_bytes_packets_decode_like_any_other_buffer(real_packets):
    """Whole `bytes` packets take the compiled decoder's direct path (no copy, no type
    dispatch); other buffers the general one: chunk by chunk the same events, triggers, faults
    and stats, faults injected included."""
    packets, width, height = real_packets
    data = _inject(b"".join(packets), 40, np.random.default_rng(7))
    step = len(data) // 60 // 2 * 2
    chunks = [data[i:i + step] for i in range(0, len(data), step)]
    direct, general = Evt3Decoder(width, height), Evt3Decoder(width, height)
    if direct.backend == "numba":
        assert direct._direct is not None
    for chunk in chunks:
        a, b = direct.decode(chunk), general.decode(bytearray(chunk))
        assert_same(a.events, b.events)
        assert_same(a.triggers, b.triggers)
        assert (a.faults, a.n_words, a.stats) == (b.faults, b.n_words, b.stats)
    assert direct.stats == general.stats and direct.stats.get("faults", 0) > 0
    assert direct.state == general.state


def test_decoder_rejects_non_byte_input():
    with pytest.raises(TypeError, match="uint8"):
        Evt3Decoder().decode(np.zeros(4, np.uint16))


# ---------------------------------------------------------------------------------------------
# (6) .raw files
# ---------------------------------------------------------------------------------------------

def test_raw_write_read_round_trip(tmp_path, synthetic_stream):
    events, triggers, _ = synthetic_stream
    path = tmp_path / "rec.raw"
    write_raw(path, events, triggers, width=1280, height=720)
    header, chunk = read_raw(path)
    assert header["evt"] == "EVT3"
    assert (header["width"], header["height"]) == (1280, 720)
    assert chunk.faults == []
    assert_same(chunk.events, events)
    assert_same(chunk.triggers, triggers)


def test_raw_rejects_other_formats(tmp_path):
    path = tmp_path / "evt2.raw"
    path.write_bytes(b"% format EVT2;height=480;width=640\n% end\n" + b"\0" * 8)
    with pytest.raises(ValueError, match="not an EVT 3.0 file"):
        read_raw(path)


# ---------------------------------------------------------------------------------------------
# (7) compiled (numba) backend against the numpy reference: identical events, triggers, faults,
#     stats and state, whatever the input and wherever the packets are cut
# ---------------------------------------------------------------------------------------------

BACKENDS = ("numpy", "numba")


def _decode_all(data: bytes, cuts, backend: str, width=None, height=None, strict=False,
                max_jitter_us=codec.DEFAULT_MAX_JITTER_US):
    """Feed data cut at `cuts`; per packet the chunk or the strict-mode error, then the state."""
    decoder = Evt3Decoder(width, height, max_jitter_us=max_jitter_us, backend=backend)
    bounds = [0, *sorted(set(cuts)), len(data)]
    view = memoryview(data)
    outcomes = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        try:
            outcomes.append(decoder.decode(view[a:b], strict=strict))
        except Evt3Error as err:
            outcomes.append((str(err), err.partial, decoder.state))
    try:
        outcomes.append(decoder.finish(strict=strict))
    except Evt3Error as err:
        outcomes.append((str(err), err.partial, decoder.state))
    return outcomes, decoder.state, decoder.stats


def _assert_same_chunk(a: DecodedChunk, b: DecodedChunk) -> None:
    assert_same(a.events, b.events)
    assert_same(a.triggers, b.triggers)
    assert a.faults == b.faults
    assert a.stats == b.stats
    assert a.n_words == b.n_words


def assert_backends_agree(data: bytes, cuts=(), **options) -> list:
    """Decode with both backends and compare everything; returns the numpy backend's outcomes."""
    (ref, ref_state, ref_stats), (got, got_state, got_stats) = (
        _decode_all(data, cuts, backend, **options) for backend in BACKENDS)
    assert len(ref) == len(got)
    for r, g in zip(ref, got, strict=True):
        assert type(r) is type(g)
        if isinstance(r, tuple):  # strict-mode error: message, partial chunk, state after it
            assert r[0] == g[0]
            _assert_same_chunk(r[1], g[1])
            assert r[2] == g[2]
        else:
            _assert_same_chunk(r, g)
    assert ref_state == got_state
    assert ref_stats == got_stats
    return ref


def test_backends_are_chosen_and_validated():
    assert Evt3Decoder().backend == "numba"
    assert Evt3Decoder(backend="numpy").backend == "numpy"
    assert codec.warm_up("numpy") == "numpy"
    with pytest.raises(ValueError, match="backend must be one of"):
        Evt3Decoder(backend="cuda")
    with pytest.raises(ValueError, match="max_jitter_us must be >= 0"):
        Evt3Decoder(max_jitter_us=-1)


def test_compiled_kernel_releases_the_gil():
    """The live node decodes in a callback thread while a worker computes."""
    from efs_ros.core import _evt3_kernel as kernel

    for name in ("scan_words", "decode", "decode_into", "_general", "_fast", "encode"):
        assert getattr(kernel, name).targetoptions.get("nogil") is True, name


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 9000), st.sampled_from([700, 2048, 5000, 1 << 18]))
def test_kernel_pre_pass_counts_and_sub_block_facts(seed, n_words, block_words):
    """The compiled pre-pass (16-bit SIMD lanes plus a scalar tail) sizes the outputs and picks
    each sub-block's path: its counts and facts are checked against plain numpy."""
    from efs_ros.core import _evt3_kernel as kernel

    rng = np.random.default_rng(seed)
    w = rng.integers(0, 1 << 16, n_words).astype(np.uint16)
    info = np.empty((kernel.info_rows(n_words, block_words), kernel.N_INFO), np.int64)
    n_events, n_triggers = kernel.scan_words(w, block_words, info)
    ty = (w >> 12).astype(np.int64)
    mask = np.where(ty == 4, w & 0xFFF, w & 0xFF)
    per_word = np.where((ty == 4) | (ty == 5), np.bitwise_count(mask), ty == 2)
    assert n_events == per_word.sum() and n_triggers == np.count_nonzero(ty == 0xA)
    starts = [s for b in range(0, n_words, block_words)
              for s in range(b, min(b + block_words, n_words), kernel.SUB_WORDS)]
    assert len(starts) == len(info)
    for row, start in zip(info, starts, strict=True):
        stop = min(start + kernel.SUB_WORDS, (start // block_words + 1) * block_words, n_words)
        sub = ty[start:stop]
        assert row[kernel.I_TYPES] == np.bitwise_or.reduce(1 << sub)
        highs = w[start:stop][sub == 8] & 0xFFF
        if highs.size:
            assert (row[kernel.I_HIGH_MIN], row[kernel.I_HIGH_MAX]) == (highs.min(), highs.max())
        else:
            assert row[kernel.I_HIGH_MIN] > row[kernel.I_HIGH_MAX]


def test_backends_agree_on_real_recording(real_packets, real_decoded):
    packets, width, height = real_packets
    data = b"".join(packets)
    cuts = np.cumsum([len(p) for p in packets])[:-1].tolist()
    for strict in (False, True):
        outcomes = assert_backends_agree(data, cuts, width=width, height=height, strict=strict)
        got = _cat(outcomes)
        assert_same(got.events, real_decoded.events)
    one_shot = assert_backends_agree(data, width=width, height=height)
    assert len(one_shot[0].events) == len(real_decoded.events)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 758_295), max_size=30), st.integers(0, 2**32 - 1), st.integers(0, 6))
def test_backends_agree_on_real_recording_with_faults_injected(real_packets, cuts, seed, n_faults):
    """Clean data goes through the compiled fast path; a packet with a fault falls back to the
    word-by-word path: both give exactly what the reference gives."""
    packets, width, height = real_packets
    data = _inject(b"".join(packets), n_faults, np.random.default_rng(seed))
    assert_backends_agree(data, [c % len(data) for c in cuts], width=width, height=height)


def _inject(data: bytes, n: int, rng) -> bytes:
    """Insert n random words (any type, and the usual troublemakers) at random word positions."""
    w = np.frombuffer(data[: len(data) // 2 * 2], "<u2")
    troublemakers = [0x8000, 0x8FFF, 0x6000, 0x6FFF, 0x2FFF, 0x4FFF, 0x3FFF, 0x0FFF, 0xA001, 0xB123,
                     0x9000, 0x1ABC, 0x4000, 0x5000]
    values = np.where(rng.random(n) < 0.5, rng.choice(troublemakers, n), rng.integers(0, 1 << 16, n))
    where = np.sort(rng.integers(0, w.size + 1, n))
    return np.insert(w, where, values).astype("<u2").tobytes() + data[len(data) // 2 * 2:]


def dense_events(n_runs: int, seed: int) -> np.ndarray:
    """Runs of 1..40 neighbouring pixels firing together: vector words with up to 12 events."""
    rng = np.random.default_rng(seed)
    length = rng.integers(1, 41, n_runs)
    run = np.repeat(np.arange(n_runs), length)
    start = np.cumsum(length) - length
    ev = np.empty(run.size, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, 50_000, n_runs))[run]
    ev["y"] = rng.integers(0, 720, n_runs)[run]
    ev["x"] = rng.integers(0, 1200, n_runs)[run] + np.arange(run.size) - start[run]
    ev["p"] = rng.choice(np.array([-1, 1], np.int8), n_runs)[run]
    return ev[np.lexsort((ev["x"], ev["y"], ev["t"]))]


def _random_stream(rng, kind: str, n_words: int) -> bytes:
    """Word streams that stress every path: a soup of all 16 word types (faults everywhere), or a
    clean encoded recording (vectors, triggers, clock wraps and long gaps; or dense vectors) with a
    few words inserted."""
    if kind == "soup":
        types = rng.choice(16, n_words, p=np.array([4, 1, 6, 3, 3, 3, 5, 1, 2, 1, 1, 1, 1, 1, 1, 1]) / 35)
        payload = rng.integers(0, 4096, n_words)
        # TIME_HIGH mostly steps forward a little, sometimes drops (wraps) or steps back
        steps = rng.choice([0, 1, 1, 2, 3000, -1, -2100], n_words)
        payload = np.where(types == 0x8, np.cumsum(steps) % 4096, payload)
        head = np.array([0x8000, 0x6000, 0x0000, 0x3000]) if rng.random() < 0.7 else np.zeros(0, int)
        return np.concatenate((head, (types << 12) | payload)).astype("<u2").tobytes()
    n_segments = max(1, n_words // 12)
    if rng.random() < 0.3:
        events = dense_events(n_segments, seed=int(rng.integers(1 << 30)))
    else:
        events = busy_events(n_segments, seed=int(rng.integers(1 << 30)), width=1280, height=720,
                             wrap_gaps=bool(rng.random() < 0.5))
    triggers = some_triggers(events, int(rng.integers(0, 4)), seed=int(rng.integers(1 << 30)))
    data = encode_evt3(events, triggers)
    return _inject(data, int(rng.integers(0, 4)) if kind == "mutated" else 0, rng)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["soup", "clean", "mutated"]),
       st.integers(1, 7000), st.sampled_from([(None, None), (1280, 720), (300, 200)]),
       st.sampled_from([0, 64, 10_000]), st.integers(0, 12), st.booleans())
def test_backends_agree_on_random_streams(seed, kind, n_words, size, max_jitter, n_cuts, strict):
    rng = np.random.default_rng(seed)
    data = _random_stream(rng, kind, n_words)
    if rng.random() < 0.2:
        data += b"\x07"  # a truncated last word
    cuts = rng.integers(0, len(data) + 1, n_cuts).tolist()
    assert_backends_agree(data, cuts, width=size[0], height=size[1], strict=strict,
                          max_jitter_us=max_jitter)


@pytest.mark.parametrize("block_words", [700, 5000])
def test_backends_agree_per_block_faults(monkeypatch, block_words):
    """Faults are counted per kind and block: both backends cut blocks at the same words."""
    rng = np.random.default_rng(block_words)
    data = _random_stream(rng, "mutated", 400_000) + _random_stream(rng, "soup", 4000)
    assert len(data) // 2 > codec._LARGE_WORDS  # outputs allocated by numpy, not in the kernel
    monkeypatch.setattr(codec, "BLOCK_WORDS", block_words)
    for strict in (False, True):
        outcomes = assert_backends_agree(data, [len(data) // 3], strict=strict, width=1000, height=700)
        assert any(isinstance(o, DecodedChunk) and len(o.faults) > 1 for o in outcomes) or strict


FAULT_CASES = {
    "truncated": words(*GOOD) + b"\x05",
    "unknown type": words(*GOOD, 0xB123, *AFTER),
    "reserved 0x9": words(*GOOD, 0x9ABC, 0x9000, *AFTER),
    "backwards": words(*GOOD, 0x8000, 0x6010, 0x2806, *AFTER),
    "jitter": words(*GOOD, 0x6001, 0x2806, *AFTER),
    "wrap": words(0x8FFF, 0x6FFE, 0x0001, 0x2801, 0x8000, 0x6003, 0x2802),
    "out of range": words(*GOOD, 0x2878, 0x0040, 0x2801, 0x0008, *AFTER),
    "vector beyond width": words(*GOOD, 0x305E, 0x4FFF),
    "before state": words(0x2801, 0x4003, *GOOD, *AFTER),
    "empty vector before base": words(*GOOD, 0x4000, 0x3010, 0x4000, 0x5000, *AFTER),
    "vectors before base": words(*GOOD, *[0x4FFF, 0x5000, 0x4801, 0x6009] * 40, 0x3010, 0x4FFF, *AFTER),
    "trigger before time": words(0xA001, *GOOD, 0xA100, *AFTER),
    "out of range and backwards": words(*GOOD, 0x6001, 0x2878, *AFTER),
}


@pytest.mark.parametrize("name", FAULT_CASES)
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("max_jitter", [0, 4, 64])  # 4: the "jitter" case's step exactly
def test_backends_agree_on_every_fault(name, strict, max_jitter):
    data = FAULT_CASES[name]
    for cuts in ([], [3], list(range(1, len(data), 1 + len(data) // 64))):  # down to every byte
        assert_backends_agree(data, cuts, width=100, height=50, strict=strict, max_jitter_us=max_jitter)
        assert_backends_agree(data, cuts, strict=strict, max_jitter_us=max_jitter)


@pytest.mark.parametrize("backend", BACKENDS)
def test_time_order_is_checked_on_events_outside_the_sensor_too(backend):
    """An event word counts for time order wherever its events are: dropping it for being outside
    the sensor does not hide the backward step it made."""
    out = decode_evt3(FAULT_CASES["out of range and backwards"], width=100, height=50, backend=backend)
    assert out.stats == {"time_jitter": 1, "dropped_events": 1, "faults": 1}
    assert out.events["t"].tolist() == [4101, 4101, 4105]


@pytest.mark.parametrize("backend", BACKENDS)
def test_clean_streams_are_decoded_exactly_by_both_backends(synthetic_stream, backend):
    events, triggers, data = synthetic_stream
    out = decode_evt3(data, 1280, 720, strict=True, backend=backend)
    assert_same(out.events, events)
    assert_same(out.triggers, triggers)
    dense = dense_events(2000, seed=7)
    data = encode_evt3(dense)
    vector_masks = np.frombuffer(data, "<u2")[word_types_of(data) == codec.VECT_12] & 0xFFF
    assert np.bitwise_count(vector_masks).max() == 12
    out = decode_evt3(data, 1280, 720, strict=True, backend=backend)
    assert_same(out.events, dense)


def word_types_of(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<u2") >> 12


# ---------------------------------------------------------------------------------------------
# (8) compiled encoder against the numpy reference: the same bytes, the same errors
# ---------------------------------------------------------------------------------------------

def _encode_both(pieces, vectorize=True) -> list:
    """Encode the (events, triggers) pieces as one stream with each backend: bytes or error."""
    outcomes = []
    for backend in BACKENDS:
        encoder = Evt3Encoder(vectorize=vectorize, backend=backend)
        out = []
        for ev, tr in pieces:
            try:
                out.append(encoder.encode(ev, tr))
            except (ValueError, TypeError) as err:
                out.append((type(err), str(err)))
        outcomes.append(out)
    assert outcomes[0] == outcomes[1]
    return outcomes[0]


trigger_lists = st.lists(
    st.tuples(st.one_of(st.integers(0, 30), st.integers(0, 3 * WRAP)), st.integers(0, 15), st.integers(0, 1)),
    max_size=20)


@settings(max_examples=80, deadline=None)
@given(event_lists, trigger_lists, st.booleans(), st.lists(st.integers(0, 3 * WRAP), max_size=4))
def test_encoder_backends_write_the_same_bytes(rows, trigger_rows, vectorize, cut_times):
    ev = np.array(sorted(rows, key=lambda r: r[0]), dtype=EVENT_DTYPE)
    tr = np.array(sorted(trigger_rows, key=lambda r: r[0]), dtype=TRIGGER_DTYPE)
    edges = [0, *sorted(cut_times), 4 * WRAP]
    pieces = [(ev[(ev["t"] >= a) & (ev["t"] < b)], tr[(tr["t"] >= a) & (tr["t"] < b)])
              for a, b in zip(edges[:-1], edges[1:], strict=True)]
    out = _encode_both(pieces, vectorize)
    assert all(isinstance(o, bytes) for o in out)
    decoded = decode_evt3(b"".join(out), strict=True)
    assert_same(decoded.events, ev)
    assert_same(decoded.triggers, tr)


def test_encoder_backends_agree_on_busy_streams_in_packets(synthetic_stream):
    events, triggers, data = synthetic_stream
    assert _encode_both([(events, triggers)]) == [data]
    dense = dense_events(3000, seed=11)
    edges = np.linspace(0, dense["t"][-1] + 1, 40).astype(np.int64)
    pieces = [(dense[(dense["t"] >= a) & (dense["t"] < b)], None)
              for a, b in zip(edges[:-1], edges[1:], strict=True)]
    for vectorize in (True, False):
        out = _encode_both(pieces, vectorize)
        assert_same(decode_evt3(b"".join(out), strict=True).events, dense)


def test_encoder_backends_reject_the_same_input():
    ev = busy_events(50, seed=3)
    tr = some_triggers(ev, 5, seed=4)
    bad_p, bad_x, bad_y, bad_channel, bad_value = ev.copy(), ev.copy(), ev.copy(), tr.copy(), tr.copy()
    bad_p["p"][3] = 0
    bad_x["x"][0] = 4000
    bad_y["y"][7] = 3000
    bad_channel["channel"][2] = 16
    bad_value["value"][4] = 2
    cases = [[(ev[::-1], None)], [(bad_p, None)], [(bad_x, None)], [(bad_y, None)], [(ev, tr[::-1])],
             [(ev, bad_channel)], [(ev, bad_value)], [(ev[ev["t"] > 1000], None), (ev[:5], None)],
             [(np.zeros(3, [("t", "i8")]), None)], [(None, np.zeros(2, [("t", "i8")]))]]
    messages = ["sorted by t: event 4 has t=", "polarity must be -1 or +1, event 3 has p=0",
                "x must be in 0..2047 for EVT 3.0, got", "y must be in 0..2047", "triggers must be sorted",
                "channel must be 0..15", "value 0 or 1", "comes after", "fields t, x, y, p",
                "fields t, channel, value"]
    for pieces, message in zip(cases, messages, strict=True):
        error_type, text = _encode_both(pieces)[-1]
        assert message in text
        assert error_type is (TypeError if "fields" in message else ValueError)


def test_fault_lines_are_formatted_when_read_not_per_packet():
    """A fault in every packet is counted at once; its text is made only when someone reads it
    (the node reports the latest once a second), and then equals the numpy reference's."""
    import efs_ros.core.evt3 as evt3_module

    rng = np.random.default_rng(3)
    ev = np.zeros(200, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, 3000, ev.size))
    ev["x"], ev["y"] = rng.integers(0, 64, ev.size), rng.integers(0, 48, ev.size)
    ev["p"] = rng.choice(np.array([-1, 1], np.int8), ev.size)
    words = np.frombuffer(encode_evt3(ev), "<u2").copy()
    bad = np.insert(words, [5, 40], np.uint16(0xB << 12)).tobytes()  # two unknown-type words
    formatted = []
    original = evt3_module._fault_message
    try:
        evt3_module._fault_message = lambda *a: formatted.append(a) or original(*a)
        chunk = Evt3Decoder(64, 48, backend="numba").decode(bad)
        assert len(chunk.faults) == 1 and formatted == []  # one record (kind x block), no text
        lines = list(chunk.faults)
        assert len(formatted) == 1 and chunk.faults[-1:] == lines[-1:]
    finally:
        evt3_module._fault_message = original
    reference = Evt3Decoder(64, 48, backend="numpy").decode(bad)
    assert lines == reference.faults and "unknown word type 0xB" in lines[0]
    np.testing.assert_array_equal(chunk.events, reference.events)
