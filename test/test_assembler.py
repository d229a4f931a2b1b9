"""JobAssembler: bag messages -> SweepJobs, against the simulator's truth; bad input; bounds."""
import dataclasses

import numpy as np
import pytest

from efs_ros.core.assembler import AssemblerConfig, JobAssembler
from efs_ros.io.recording import (
    TOPIC_EVENTS,
    TOPIC_FOCUS,
    TOPIC_IMAGE,
    read_recording,
    write_recording,
)

DRIFT_PPM = -70.0


def simulate(seed=1, height=32, width=48, n_sweeps=4):
    from efs_ros.sim.rig import RigConfig, simulate_recording
    from efs_ros.sim.sensor import SensorConfig

    rig = RigConfig(height=height, width=width, steps=60, dwell_s=0.02)
    return simulate_recording(rig, SensorConfig(), np.random.default_rng(seed), n_sweeps=n_sweeps,
                              frame_rate_hz=30)


@pytest.fixture(scope="module")
def rec():
    return simulate()


@pytest.fixture(scope="module", params=["triggers", "stamps"])
def bag(request, rec, tmp_path_factory):
    path = tmp_path_factory.mktemp("bags") / request.param
    info = write_recording(path, rec, use_triggers=request.param == "triggers", drift_ppm=DRIFT_PPM,
                           seed=3)
    messages = [(t, m, r) for t, m, r in read_recording(path) if t in (TOPIC_EVENTS, TOPIC_IMAGE,
                                                                        TOPIC_FOCUS)]
    return request.param, info, messages


def add(asm, topic, msg):
    if topic == TOPIC_EVENTS:
        return asm.add_event_packet(msg.stamp_ns, msg.width, msg.height, msg.encoding, msg.events,
                                    seq=msg.seq, is_bigendian=msg.is_bigendian)
    if topic == TOPIC_IMAGE:
        return asm.add_frame_message(msg.stamp_ns, msg.width, msg.height, msg.encoding, msg.step,
                                     msg.data, msg.is_bigendian)
    return asm.add_focus(msg.stamp_ns, msg.position[0], msg.velocity[0])


def run(messages, config=None, pop_every=1, asm=None):
    asm = asm or JobAssembler(config)
    jobs = []
    for i, (topic, msg, _) in enumerate(messages):
        add(asm, topic, msg)
        if (i + 1) % pop_every == 0:
            jobs += asm.pop_jobs()
    return jobs + asm.flush(), asm


def assert_same_jobs(a, b):
    assert [j.stamp_ns for j in a] == [j.stamp_ns for j in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.events, y.events)
        np.testing.assert_array_equal(x.focus_t, y.focus_t)
        np.testing.assert_array_equal(x.focus_dpt, y.focus_dpt)
        np.testing.assert_array_equal(x.frame, y.frame)
        assert x.exposure_s == y.exposure_s


def test_one_job_per_frame_inside_a_complete_sweep_with_true_event_times(rec, bag):
    mode, info, messages = bag
    jobs, asm = run(messages)
    by_stamp = {j.stamp_ns: j for j in jobs}
    sweep_ids = {}
    for i, k in enumerate(rec.frame_sweep):
        stamp = int(info.frame_stamps_ns[i])
        if k < 0:
            assert stamp not in by_stamp, f"frame {i} is outside every sweep but got a job"
            continue
        a, b = rec.sweeps_us[k]
        near_edge = min(rec.frame_t_us[i] - a, b - rec.frame_t_us[i]) < 5000
        if near_edge:
            continue  # lens samples come every 2 ms: a frame this close to a turn may go either way
        job = by_stamp[stamp]
        sweep_ids.setdefault(job.meta["sweep_index"], set()).add(int(k))
        assert job.meta["sync_source"] == mode
        assert job.focus_t[0] <= 0 <= job.focus_t[-1]
        # the sweep span agrees with the simulator's to a lens sample or two
        rel_true = (info.sensor_to_ros_ns(np.array([a, b])) - stamp) / 1e9
        np.testing.assert_allclose([job.focus_t[0], job.focus_t[-1]], rel_true, atol=0.005)
        assert np.all(np.diff(job.focus_dpt) * rec.sweep_direction[k] > -0.02)
        # the job's events are a contiguous run of the recording's, with their true ROS times
        truth_us = (info.sensor_to_ros_ns(rec.events["t"]) - stamp) / 1e3
        ev = job.events
        assert ev.size > 100
        start = int(np.searchsorted(truth_us, ev["t"][0] - 1000))
        for i0 in range(start, start + 2000):
            cand = rec.events[i0:i0 + ev.size]
            if cand.size == ev.size and np.array_equal(cand["x"], ev["x"]) and \
                    np.array_equal(cand["y"], ev["y"]) and np.array_equal(cand["p"], ev["p"]):
                break
        else:
            pytest.fail("job events are not a contiguous run of the recording's events")
        err_us = np.abs(ev["t"] - truth_us[i0:i0 + ev.size])
        if mode == "triggers":
            # exact at the frame (its own pair); away from it at most the drift the pairs so far
            # could not pin down (CONTRACT: <= 100 ppm)
            assert np.all(err_us <= 2.0 + 100e-6 * np.abs(ev["t"]))
        else:
            assert err_us.max() <= 500.0
        if mode == "triggers":
            assert job.exposure_s == pytest.approx(rec.exposure_s, rel=1e-3)
    # each assembled sweep is one simulated sweep
    assert all(len(v) == 1 for v in sweep_ids.values())
    assert len(sweep_ids) == len(rec.sweeps_us)
    stats = asm.stats()
    assert stats["jobs"] == len(jobs) and stats["decode_faults"] == 0 and stats["packets_lost"] == 0
    assert stats["sync_source"] == mode
    assert stats["frames_pending"] == 0


def test_jobs_do_not_depend_on_how_topics_interleave(bag):
    """What the live node sees (frames late, lens late, jitter) gives the offline jobs."""
    _, _, messages = bag
    reference, _ = run(messages)
    rng = np.random.default_rng(0)
    late = {TOPIC_IMAGE: 150e6, TOPIC_FOCUS: 30e6, TOPIC_EVENTS: 0.0}
    keyed = []
    for order, (topic, msg, recv) in enumerate(messages):
        jitter = rng.uniform(0, 20e6)
        keyed.append((recv + late[topic] + jitter, order, topic, msg, recv))
    # keep each topic's own order (one publisher each), shuffle only across topics
    reordered = []
    for topic in late:
        mine = [k for k in keyed if k[2] == topic]
        arrival = np.maximum.accumulate([k[0] for k in mine])
        reordered += [(a, k[1], k[2], k[3], k[4]) for a, k in zip(arrival, mine, strict=True)]
    reordered.sort(key=lambda k: (k[0], k[1]))
    shuffled = [(k[2], k[3], k[4]) for k in reordered]
    assert [m[0] for m in shuffled] != [m[0] for m in messages]
    jobs, _ = run(shuffled, pop_every=7)
    assert_same_jobs(jobs, reference)


def test_flush_alone_gives_the_same_jobs(bag):
    _, _, messages = bag
    reference, _ = run(messages)
    asm = JobAssembler()
    for topic, msg, _ in messages:
        add(asm, topic, msg)
    # without pop_jobs on the way the buffers still hold everything (small recording)
    assert_same_jobs(asm.flush(), reference)


def test_rejected_input_is_counted_and_costs_nothing_else(bag):
    _, _, messages = bag
    reference, _ = run(messages)
    first_packet = next(m for t, m, _ in messages if t == TOPIC_EVENTS)
    first_frame = next(m for t, m, _ in messages if t == TOPIC_IMAGE)
    bad = []
    for i, (topic, msg, recv) in enumerate(messages):
        bad.append((topic, msg, recv))
        if i == len(messages) // 3:
            bad += [
                (TOPIC_EVENTS, dataclasses.replace(first_packet, stamp_ns=msg.stamp_ns, encoding="evt2",
                                                   seq=None), recv),
                (TOPIC_EVENTS, dataclasses.replace(first_packet, stamp_ns=msg.stamp_ns, width=640,
                                                   seq=None), recv),
                (TOPIC_EVENTS, dataclasses.replace(first_packet, stamp_ns=msg.stamp_ns,
                                                   is_bigendian=True, seq=None), recv),
            ]
    asm = JobAssembler()
    jobs = []
    frames_seen = 0
    for topic, msg, _ in bad:
        if topic == TOPIC_EVENTS and msg.seq is None:
            assert not asm.add_event_packet(msg.stamp_ns, msg.width, msg.height, msg.encoding,
                                            msg.events, seq=None, is_bigendian=msg.is_bigendian)
            continue
        if topic == TOPIC_IMAGE:
            frames_seen += 1
            if frames_seen == 3:
                # three bad frames just before a good one: wrong size, encoding, data size
                s = msg.stamp_ns - 3_000_000
                assert not asm.add_frame(s - 2, np.zeros((8, 8, 3), np.uint8), "rgb8")
                assert not asm.add_frame(s - 1, np.zeros((msg.height, msg.width, 3), np.uint8), "yuv422")
                assert not asm.add_frame_message(s, msg.width, msg.height, "rgb8", msg.step,
                                                 first_frame.data[:-5])
        add(asm, topic, msg)
        jobs += asm.pop_jobs()
    jobs += asm.flush()
    assert_same_jobs(jobs, reference)
    stats = asm.stats()
    assert stats["packets_rejected"] == 3 and stats["frames_rejected"] == 3
    assert stats["contract_violations"] == 6
    faults = " | ".join(asm.faults)
    for text in ("unknown encoding 'evt2'", "size mismatch: 640x", "is_bigendian",
                 "frame size mismatch: 8x8", "unknown encoding 'yuv422'", "bytes, expected height"):
        assert text in faults
    assert all("\n" not in f for f in asm.faults)


def test_corrupt_evt3_words_are_counted_and_the_events_around_them_kept(bag):
    _, _, messages = bag
    reference, _ = run(messages)
    corrupted = []
    n_bad = 0
    for topic, msg, recv in messages:
        if topic == TOPIC_EVENTS and msg.seq % 10 == 5 and msg.events.size >= 8:
            words = msg.events.view("<u2")
            # an unknown word type (0xB) in the middle of the packet
            data = np.concatenate([words[:2], np.array([0xB123], "<u2"), words[2:]]).view(np.uint8)
            msg = dataclasses.replace(msg, events=data)
            n_bad += 1
        corrupted.append((topic, msg, recv))
    jobs, asm = run(corrupted)
    assert asm.stats()["decode_faults"] == n_bad > 0
    assert_same_jobs(jobs, reference)


def test_lost_packets_are_counted_and_marked_on_their_jobs(bag):
    _, _, messages = bag
    reference, _ = run(messages)
    target = reference[len(reference) // 2]
    start, end = target.meta["sweep_start_ns"], target.meta["sweep_end_ns"]
    dropped = next(i for i, (t, m, _) in enumerate(messages)
                   if t == TOPIC_EVENTS and start + 20e6 < m.stamp_ns < end - 20e6)
    jobs, asm = run(messages[:dropped] + messages[dropped + 1:])
    assert asm.stats()["packets_lost"] == 1
    lost = {j.stamp_ns: j.meta["packets_lost"] for j in jobs}
    assert lost[target.stamp_ns] == 1
    assert sum(lost.values()) == sum(1 for j in jobs if j.meta["sweep_index"] == target.meta["sweep_index"])


def test_bounded_buffer_drops_oldest_and_skips_jobs_it_starved(bag):
    _, _, messages = bag
    reference, _ = run(messages)
    biggest = max(j.events.size for j in reference)
    limit = biggest // 2
    asm = JobAssembler(AssemblerConfig(max_events=limit))
    jobs = []
    for topic, msg, _ in messages:
        add(asm, topic, msg)
        assert asm.stats()["events_buffered"] <= limit
        jobs += asm.pop_jobs()
    jobs += asm.flush()
    stats = asm.stats()
    assert stats["events_dropped_overflow"] > 0
    assert stats["jobs_skipped"] > 0 and "buffer overflow" in " ".join(asm.faults)
    # whatever was still produced is exactly what the unbounded run made
    ref = {j.stamp_ns: j for j in reference}
    for job in jobs:
        np.testing.assert_array_equal(job.events, ref[job.stamp_ns].events)
    assert len(jobs) + stats["jobs_skipped"] == len(reference)


def test_a_looping_bag_resets_once_and_repeats_its_jobs(bag):
    _, _, messages = bag
    reference, _ = run(messages)
    jobs, asm = run(messages + messages)
    stats = asm.stats()
    assert stats["clock_resets"] == 1 and "jumped back" in stats["last_reset"]
    assert_same_jobs(jobs[len(reference):], reference)
    assert_same_jobs(jobs[:len(reference)], reference)


def test_the_real_recording_through_the_assembler(real_evt3_bag):
    asm = JobAssembler()
    n_events = 0
    for _topic, msg, _ in read_recording(real_evt3_bag):
        assert asm.add_event_packet(msg.stamp_ns, msg.width, msg.height, msg.encoding, msg.events,
                                    seq=msg.seq, is_bigendian=msg.is_bigendian)
        n_events += 0 if msg.events.size == 0 else 1
        assert asm.pop_jobs() == []
    assert asm.flush() == []
    stats = asm.stats()
    assert stats["packets"] == n_events and stats["events"] > 10_000
    assert stats["triggers"] == 2 and stats["decode_faults"] == 0 and stats["packets_lost"] == 0
    assert stats["sensor_size"] == "1280x720" and stats["sync_source"] == "stamps"
    # its two trigger edges are not a CONTRACT exposure pair (falling first): no frame timing
    assert stats["trigger_pairs"] == 0 and stats["orphan_trigger_edges"] >= 1


def test_a_synthetic_stream_without_a_bag():
    """Direct calls: events before the lens starts, and a frame with no lens data is pending."""
    from efs_ros.core.events import make_events
    from efs_ros.core.evt3 import Evt3Encoder

    asm = JobAssembler(AssemblerConfig(width=16, height=8))
    t = np.arange(0, 200_000, 100)
    ev = make_events(t, t % 16, (t // 16) % 8, np.where(t % 200 == 0, 1, -1))
    encoder = Evt3Encoder()  # one stream, cut into packets
    for k in range(0, t.size, 50):
        chunk = ev[k:k + 50]
        assert asm.add_event_packet(10**18 + int(chunk["t"][0]) * 1000 + 2_000_000, 16, 8, "evt3",
                                    encoder.encode(chunk), seq=k // 50)
    assert asm.add_frame(10**18 + 100_000_000, np.zeros((8, 16, 3), np.uint8), "bgr8")
    assert asm.pop_jobs() == []
    stats = asm.stats()
    assert stats["frames_pending"] == 1 and stats["events"] == t.size
    assert asm.flush() == [] and asm.stats()["frames_without_sweep"] == 1

