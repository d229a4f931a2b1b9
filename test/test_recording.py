"""CONTRACT bags on disk: writer -> reader round trips, bad files, and Image conversions."""
import shutil

import numpy as np
import pytest

from efs_ros.core.events import EVENT_DTYPE
from efs_ros.core.evt3 import Evt3Decoder
from efs_ros.core.images import (
    ImageError,
    array_to_image,
    decode_float,
    decode_frame,
    encode_float,
    encode_frame,
    from_linear,
    image_to_array,
    to_linear,
)
from efs_ros.io.recording import (
    REQUIRED_FOR_JOBS,
    TOPIC_EVENTS,
    TOPIC_FOCUS,
    TOPIC_GT_AIF,
    TOPIC_GT_DEPTH,
    TOPIC_IMAGE,
    EventPacketMsg,
    RecordingError,
    read_recording,
    recording_topics,
    write_recording,
)


def simulate(seed=0, with_triggers=True, height=32, width=48, n_sweeps=3):
    from efs_ros.sim.rig import RigConfig, simulate_recording
    from efs_ros.sim.sensor import SensorConfig

    rig = RigConfig(height=height, width=width, steps=60, dwell_s=0.02)
    return simulate_recording(rig, SensorConfig(), np.random.default_rng(seed), n_sweeps=n_sweeps,
                              frame_rate_hz=30, with_triggers=with_triggers)


@pytest.fixture(scope="module")
def rec():
    return simulate()


def by_topic(messages):
    out = {}
    for topic, msg, recv in messages:
        out.setdefault(topic, []).append((msg, recv))
    return out


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_written_bag_reads_back_as_the_contract_says(tmp_path, rec, storage):
    drift = 50.0
    info = write_recording(tmp_path / "bag", rec, storage=storage, drift_ppm=drift, seed=1)
    messages = list(read_recording(tmp_path / "bag"))
    recv = [t for _, _, t in messages]
    assert recv == sorted(recv)  # bag order
    topics = by_topic(messages)
    assert set(topics) == {TOPIC_EVENTS, TOPIC_IMAGE, TOPIC_FOCUS, TOPIC_GT_AIF, TOPIC_GT_DEPTH}

    packets = [m for m, _ in topics[TOPIC_EVENTS]]
    assert all(isinstance(p, EventPacketMsg) for p in packets)
    assert [p.seq for p in packets] == list(range(len(packets)))
    assert {(p.encoding, p.width, p.height, p.time_base, p.is_bigendian) for p in packets} == \
        {("evt3", rec.width, rec.height, 0, False)}
    decoder = Evt3Decoder(rec.width, rec.height)
    chunks = [decoder.decode(p.events) for p in packets]
    assert not any(c.faults for c in chunks)
    events = np.concatenate([c.events for c in chunks])
    np.testing.assert_array_equal(events, rec.events)
    triggers = np.concatenate([c.triggers for c in chunks])
    np.testing.assert_array_equal(triggers, rec.triggers)
    # each stamp is its first event's host time plus 0..5 ms, and stamps never go back
    first = np.array([min(c.events["t"][:1].tolist() + c.triggers["t"][:1].tolist()) for c in chunks])
    delay_ms = (np.array([p.stamp_ns for p in packets]) - info.sensor_to_ros_ns(first)) / 1e6
    assert delay_ms.min() >= 0.0 and delay_ms.max() <= 5.0
    assert np.ptp(delay_ms) > 1.0  # it varies packet to packet
    assert np.all(np.diff([p.stamp_ns for p in packets]) >= 0)

    frames = [m for m, _ in topics[TOPIC_IMAGE]]
    assert [f.stamp_ns for f in frames] == info.frame_stamps_ns.tolist()
    expected_stamps = info.sensor_to_ros_ns(rec.frame_t_us)
    np.testing.assert_array_equal(info.frame_stamps_ns, expected_stamps)
    for f, truth in zip(frames, rec.frames, strict=True):
        assert f.encoding == "rgb8"
        np.testing.assert_array_equal(f.to_array(), np.rint(np.clip(truth, 0, 1) * 255).astype(np.uint8))
    for (gt, _), (frame, _) in zip(topics[TOPIC_GT_DEPTH], topics[TOPIC_IMAGE], strict=True):
        assert gt.stamp_ns == frame.stamp_ns and gt.encoding == "32FC1"
    depth = decode_float(*(lambda m: (m.width, m.height, m.step, m.data))(topics[TOPIC_GT_DEPTH][0][0]))
    np.testing.assert_array_equal(depth, np.asarray(rec.gt_depth[0], dtype=np.float32))

    focus = [m for m, _ in topics[TOPIC_FOCUS]]
    assert all(m.name == ["focus"] for m in focus)
    stamps = np.array([m.stamp_ns for m in focus])
    assert np.median(np.diff(stamps)) <= 5e6  # >= 200 Hz
    np.testing.assert_allclose([m.position[0] for m in focus], rec.lens_dpt)


def test_a_storage_file_reads_like_its_folder(tmp_path, rec):
    write_recording(tmp_path / "bag", rec, storage="mcap")
    folder = [(t, r) for t, _, r in read_recording(tmp_path / "bag")]
    file = [(t, r) for t, _, r in read_recording(tmp_path / "bag" / "bag.mcap")]
    assert folder == file
    assert recording_topics(tmp_path / "bag")[TOPIC_EVENTS] == "event_camera_msgs/msg/EventPacket"


def test_without_triggers_and_with_resampled_noisy_lens(tmp_path, rec):
    info = write_recording(tmp_path / "bag", rec, use_triggers=False, focus_rate_hz=250,
                           focus_noise_dpt=0.004, seed=2)
    topics = by_topic(read_recording(tmp_path / "bag", topics=[TOPIC_EVENTS, TOPIC_FOCUS]))
    assert set(topics) == {TOPIC_EVENTS, TOPIC_FOCUS}
    decoder = Evt3Decoder()
    assert sum(decoder.decode(m.events).triggers.size for m, _ in topics[TOPIC_EVENTS]) == 0
    stamps = np.array([m.stamp_ns for m, _ in topics[TOPIC_FOCUS]])
    np.testing.assert_allclose(np.diff(stamps), 4e6, atol=1e3)
    assert info.focus_samples == stamps.size


def test_truncated_mcap_yields_everything_before_the_cut_then_one_line_error(tmp_path, rec):
    write_recording(tmp_path / "bag", rec, storage="mcap")
    full = [(t, m.stamp_ns, r) for t, m, r in read_recording(tmp_path / "bag")]
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "bag", cut)
    data = (cut / "bag.mcap").read_bytes()
    (cut / "bag.mcap").write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(RecordingError) as err:
        for t, m, r in read_recording(cut):
            got.append((t, m.stamp_ns, r))
    message = str(err.value)
    assert "\n" not in message and "truncated" in message
    assert 0 < len(got) < len(full)
    assert got == full[: len(got)]
    assert f"{len(got)} messages" in message


def test_truncated_sqlite_is_a_one_line_error(tmp_path, rec):
    write_recording(tmp_path / "bag", rec, storage="sqlite3")
    db = tmp_path / "bag" / "bag.db3"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    with pytest.raises(RecordingError) as err:
        list(read_recording(tmp_path / "bag"))
    assert "\n" not in str(err.value) and str(err.value)


def test_missing_topics_are_named_before_anything_is_read(real_evt3_bag):
    reader = read_recording(real_evt3_bag, required=REQUIRED_FOR_JOBS)
    with pytest.raises(RecordingError, match="missing topics /camera/image_raw, /lens/focus_state"):
        next(reader)


def test_a_contract_topic_with_another_type_is_an_error(tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer

    from efs_ros.io.typestore import typestore

    store = typestore()
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection(TOPIC_IMAGE, "std_msgs/msg/String", typestore=store)
        msg = store.types["std_msgs/msg/String"](data="not an image")
        writer.write(conn, 1, store.serialize_cdr(msg, "std_msgs/msg/String"))
    expected = "has message type std_msgs/msg/String, expected sensor_msgs/msg/Image"
    with pytest.raises(RecordingError, match=expected):
        list(read_recording(tmp_path / "bag"))


@pytest.mark.parametrize("name, content", [("junk.mcap", b"this is no bag" * 10), ("notes.txt", b"x")])
def test_files_that_are_no_bags(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(RecordingError) as err:
        list(read_recording(path))
    assert "\n" not in str(err.value)
    with pytest.raises(RecordingError, match="no such recording"):
        list(read_recording(tmp_path / "absent"))


def test_the_real_recording_reads_as_event_packets(real_evt3_bag):
    topics = by_topic(read_recording(real_evt3_bag))
    assert set(topics) == {TOPIC_EVENTS}
    packets = [m for m, _ in topics[TOPIC_EVENTS]]
    assert {(p.encoding, p.width, p.height) for p in packets} == {("evt3", 1280, 720)}
    seqs = np.array([p.seq for p in packets])
    assert np.all(np.diff(seqs) == 1)
    decoder = Evt3Decoder(1280, 720)
    chunks = [decoder.decode(p.events) for p in packets]
    assert not any(c.faults for c in chunks)
    events = np.concatenate([c.events for c in chunks])
    assert events.dtype == EVENT_DTYPE and events.size > 10_000
    assert set(np.unique(events["p"]).tolist()) == {-1, 1}
    assert sum(c.triggers.size for c in chunks) == 2


# ------------------------------------------------------------------ Image fields <-> numpy

@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_frame_round_trip_and_channel_order(encoding):
    rng = np.random.default_rng(0)
    shape = (5, 7) if encoding == "mono8" else (5, 7, 3)
    frame = (rng.integers(0, 256, shape) / 255.0).astype(np.float32)
    fields = encode_frame(frame, encoding)
    assert (fields.width, fields.height, fields.encoding) == (7, 5, encoding)
    back = decode_frame(fields.width, fields.height, encoding, fields.step, fields.data)
    np.testing.assert_allclose(back, frame, atol=1e-6)
    raw = image_to_array(fields.width, fields.height, encoding, fields.step, fields.data)
    if encoding == "bgr8":
        np.testing.assert_array_equal(raw[..., 0], from_linear(frame, "rgb8")[..., 2])
        np.testing.assert_allclose(to_linear(raw, "bgr8"), frame, atol=1e-6)


def test_padded_rows_and_big_endian_floats():
    pixels = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3)
    padded = np.zeros((4, 12), np.uint8)
    padded[:, :9] = pixels.reshape(4, 9)
    np.testing.assert_array_equal(image_to_array(3, 4, "rgb8", 12, padded.tobytes()), pixels)
    depth = np.array([[1.5, np.nan], [0.25, 3.0]], dtype=np.float32)
    big = depth.astype(">f4").tobytes()
    out = decode_float(2, 2, 8, big, is_bigendian=True)
    np.testing.assert_array_equal(out, depth)
    fields = encode_float(depth)
    np.testing.assert_array_equal(decode_float(2, 2, fields.step, fields.data), depth)


@pytest.mark.parametrize("args, match", [
    ((3, 4, "yuv422", 6, b"\0" * 24), "unknown image encoding 'yuv422'"),
    ((3, 4, "rgb8", 6, b"\0" * 24), "step 6 is shorter than a row"),
    ((3, 4, "rgb8", 9, b"\0" * 35), "35 bytes, expected height 4 x step 9 = 36"),
    ((0, 4, "mono8", 0, b""), "empty image"),
])
def test_bad_images_raise_one_line_errors(args, match):
    with pytest.raises(ImageError, match=match):
        image_to_array(*args)


def test_arrays_that_do_not_fit_their_encoding():
    with pytest.raises(ImageError, match="does not fit encoding rgb8"):
        array_to_image(np.zeros((4, 4), np.uint8), "rgb8")
    with pytest.raises(ImageError, match="dtype float64"):
        array_to_image(np.zeros((4, 4)), "mono8")
    with pytest.raises(ImageError, match="unknown frame encoding"):
        decode_frame(2, 2, "32FC1", 8, b"\0" * 16)
