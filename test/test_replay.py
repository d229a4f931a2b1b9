"""Bag replay over real DDS: efs_replay publishes a CONTRACT bag with /clock, and replaying a
bag through the live all_in_focus node gives the images `make eval` gives on that bag."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from progress import wait_for_condition, wait_for_progress
from rosbags.highlevel import AnyReader
from test_sim_rig import (
    Listener,
    NodeProcess,
    all_alive,
    diagnostics_item,
    image_item,
    latest_status,
    node_statuses,
)

from efs_ros.io.typestore import typestore
from efs_ros.nodes.convert import stamp_to_ns


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    """A synthetic 96x72 recording: three complete 0.1 s sweeps, 30 fps frames, no triggers."""
    from efs_ros.io.recording import write_recording
    from efs_ros.sim.rig import RigConfig, simulate_recording
    from efs_ros.sim.sensor import SensorConfig

    rig = RigConfig(height=72, width=96, steps=60, dwell_s=0.02)
    rec = simulate_recording(rig, SensorConfig(shot_hz=0.1), np.random.default_rng(7),
                             n_sweeps=3, frame_rate_hz=30.0, with_triggers=False)
    path = tmp_path_factory.mktemp("replay") / "bag"
    write_recording(path, rec, storage="mcap", use_triggers=False, focus_rate_hz=250, seed=3)
    return path


def bag_messages(path):
    with AnyReader([path], default_typestore=typestore()) as reader:
        return [(c.topic, t) for c, t, _ in reader.messages()]


def test_replay_publishes_every_message_in_order_with_clock(bag, tmp_path):
    from event_camera_msgs.msg import EventPacket
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image, JointState

    recorded = bag_messages(bag)
    listener = Listener()
    listener.listen(EventPacket, "/event_camera/events", lambda m: (m.seq,))
    listener.listen(JointState, "/lens/focus_state", lambda m: (stamp_to_ns(m.header.stamp),))
    for topic in ("/camera/image_raw", "/ground_truth/all_in_focus", "/ground_truth/depth"):
        listener.listen(Image, topic, lambda m: (stamp_to_ns(m.header.stamp),))
    listener.listen(Clock, "/clock", lambda m: (stamp_to_ns(m.clock),))
    listener.start()
    counts = {t: sum(1 for topic, _ in recorded if topic == t) for t, _ in recorded}
    topics = tuple(counts)
    try:
        replay = NodeProcess("efs_ros.tools.replay", args=[bag, "--rate", "2", "--clock",
                                                          "--wait-subscribers", "1"],
                             log_dir=tmp_path)
        # the replay ends (its messages heard here are the progress), then the last in flight
        wait_for_progress(lambda: listener.count(*topics, "/clock"), lambda: not replay.alive(),
                          "the replay publishing the bag")
        assert replay.stop() == 0, replay.log()
        wait_for_progress(lambda: listener.count(*topics),
                          lambda: listener.count(*topics) == tuple(counts.values()),
                          f"every message of the bag heard ({counts})")
    finally:
        listener.close()
    seqs = [item[0] for item in listener.items("/event_camera/events")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    lens = [item[0] for item in listener.items("/lens/focus_state")]
    assert lens == sorted(lens)
    clock = np.array([item[0] for item in listener.items("/clock")])
    bag_times = np.array([t for _, t in recorded])
    assert clock.size > 50 and np.all(np.diff(clock) > 0)
    assert clock[0] == bag_times[0] and clock[-1] <= bag_times[-1]
    assert np.all(np.diff(clock) >= 5_000_000 - 1)  # --clock-hz 200: at most one per 5 ms


def read_png(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


def split_passes(outputs):
    """Outputs in arrival order -> one list per pass of the bag (stamps restart each pass)."""
    passes, last = [[]], None
    for item in outputs:
        if last is not None and item[0] < last:
            passes.append([])
        passes[-1].append(item)
        last = item[0]
    return passes


STATUS = "all_in_focus: pipeline"
INPUTS = ("events", "frames", "focus")


def settled(st: dict, outputs_heard: int) -> bool:
    """The node has nothing left to do: every input silent past idle_flush_s (1 s, so the
    end-of-input flush ran, leaving no frame pending), no job queued, and every job it
    finished heard here."""
    return all(float(st[f"{k}_silent_s"]) > 1.0 for k in INPUTS) and \
        int(st["frames_pending"]) == 0 and int(st["jobs_pending"]) == 0 and \
        int(st["jobs_done"]) == outputs_heard


def test_replay_through_the_live_node_equals_eval(bag, tmp_path, run_watched):
    """Bit-exact: the node and eval feed each topic's messages in the same order into the same
    JobAssembler and run the same run_pipeline and 8-bit conversion on the same numpy; the
    transport is reliable (reliable_inputs), so nothing differs but the process."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    out = tmp_path / "eval"
    result = run_watched([sys.executable, "-m", "efs_ros.tools.eval", bag, out, "--no-progress"],
                         "efs_eval on the bag", watch=(out,))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    expected = {int(p.name.split("_")[0]): read_png(p) for p in out.glob("*_aif.png")}
    assert len(expected) >= 3, summary

    node = NodeProcess("efs_ros.nodes.all_in_focus", {
        "backend": "classical", "reliable_inputs": True, "max_pending_jobs": 100,
        "idle_flush_s": 1.0, "use_sim_time": True}, log_dir=tmp_path)
    listener = Listener()
    listener.listen(Image, "/efs/all_in_focus", image_item, None)
    listener.listen(Image, "/efs/depth", image_item, None)
    listener.listen(Image, "/efs/refocus_map", image_item, None)
    listener.listen(DiagnosticArray, "/diagnostics", diagnostics_item, None)
    listener.start()
    topics = ("/efs/all_in_focus", "/efs/depth", "/efs/refocus_map")

    def work() -> tuple:  # what moves while the bag goes through the node
        st = latest_status(listener, STATUS)
        return (*listener.count(*topics), None if st is None else
                tuple(int(st[k]) for k in ("packets_accepted", "frames_received", "jobs_done",
                                           "jobs_skipped", "jobs_failed")))
    try:
        wait_for_condition(lambda: listener.matched(*topics), "the node's publishers",
                          alive=all_alive(node))
        replay = NodeProcess("efs_ros.tools.replay", args=[
            bag, "--rate", "1", "--clock", "--passes", "2", "--wait-subscribers", "1"],
            log_dir=tmp_path)
        wait_for_progress(work, lambda: not replay.alive(), "the replay through the node",
                          alive=all_alive(node))
        assert replay.stop() == 0, replay.log()
        # no sleep for a late extra output to show: wait until the node says it has nothing
        # left (two settled reports in a row, the job counter unchanged between them)
        mark = len(node_statuses(listener, STATUS))

        def quiet() -> bool:
            after = node_statuses(listener, STATUS)[mark:]
            heard = listener.count("/efs/all_in_focus")[0]
            return len(after) >= 2 and all(settled(st, heard) for st in after[-2:])
        wait_for_progress(work, quiet, "the node finishing the bag", alive=all_alive(node))
        status = latest_status(listener, STATUS)
    finally:
        listener.close()
        node.stop()

    passes = split_passes(listener.items("/efs/all_in_focus"))
    assert len(passes) == 2, ([len(p) for p in passes], str(status), node.log())
    first, second = passes
    # the first pass ends with a clock jump back (not silence), which resets the assembler:
    # jobs that eval only gets from its end-of-bag flush may be missing there, nothing else
    assert first, "the first pass produced no output"
    assert len(first) <= len(expected), ([s for s, *_ in first], sorted(expected))
    assert [s for s, *_ in second] == sorted(expected)
    for stamp, pixels, encoding, _ in first + second:
        assert encoding == "rgb8"
        np.testing.assert_array_equal(pixels, expected[stamp], err_msg=f"job {stamp}")
    for topic, suffix in (("/efs/depth", "depth"), ("/efs/refocus_map", "refocus")):
        maps = {s: m for s, m, *_ in listener.items(topic)}
        assert set(maps) == set(expected)
        for stamp, values in maps.items():
            np.testing.assert_array_equal(values, np.load(out / f"{stamp}_{suffix}.npy"))
    assert status is not None
    assert int(status["clock_resets"]) >= 1
    assert int(status["decode_faults"]) == 0 and int(status["packets_lost"]) == 0
    assert int(status["jobs_dropped"]) == 0 and int(status["jobs_failed"]) == 0
