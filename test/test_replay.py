"""Bag replay over real DDS: efs_replay publishes a CONTRACT bag with /clock, and replaying a
bag through the live all_in_focus node gives the images `make eval` gives on that bag."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from test_sim_rig import REPO, Listener, NodeProcess, diagnostics_item, image_item, latest_status

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
    try:
        replay = NodeProcess("efs_ros.tools.replay", args=[bag, "--rate", "2", "--clock",
                                                          "--wait-subscribers", "1"],
                             log_dir=tmp_path)
        assert replay.wait(60) == 0, replay.log()
        replay.stop()
        counts = {t: sum(1 for topic, _ in recorded if topic == t) for t, _ in recorded}
        assert listener.wait_until(
            lambda: all(len(listener.items(t)) == n for t, n in counts.items()), 10), \
            {t: (len(listener.items(t)), n) for t, n in counts.items()}
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


def test_replay_through_the_live_node_equals_eval(bag, tmp_path):
    """Bit-exact: the node and eval feed each topic's messages in the same order into the same
    JobAssembler and run the same run_pipeline and 8-bit conversion on the same numpy; the
    transport is reliable (reliable_inputs), so nothing differs but the process."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    out = tmp_path / "eval"
    result = subprocess.run([sys.executable, "-m", "efs_ros.tools.eval", str(bag), str(out),
                             "--no-progress"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
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
    try:
        assert listener.wait_until(
            lambda: listener.node.count_publishers("/efs/all_in_focus") >= 1, 30), node.log()
        replay = NodeProcess("efs_ros.tools.replay", args=[
            bag, "--rate", "1", "--clock", "--passes", "2", "--wait-subscribers", "1"],
            log_dir=tmp_path)
        assert replay.wait(120) == 0, replay.log()
        replay.stop()
        def second_pass_done():
            passes = split_passes(listener.items("/efs/all_in_focus"))
            return len(passes) == 2 and len(passes[1]) >= len(expected)
        listener.wait_until(second_pass_done, 60)
        time.sleep(1.5)  # a late extra output would be a bug: give it the time to show
        status = latest_status(listener, "all_in_focus: pipeline")
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
