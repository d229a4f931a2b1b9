"""The live all_in_focus node: parameters, and over real DDS with the simulated rig and the
focus controller in their own processes: sharper than its input, and unshaken by bad input."""
from __future__ import annotations

import numpy as np
import pytest
import rclpy
from progress import STALL_S, wait_for_condition, wait_for_progress
from rclpy.parameter import Parameter
from test_sim_rig import (
    Listener,
    NodeProcess,
    all_alive,
    diagnostics_item,
    image_item,
    latest_status,
    node_statuses,
)

from efs_ros.core.metrics import abs_rel, psnr
from efs_ros.nodes.convert import make_event_packet, make_focus_state, numpy_to_image_msg

SIZE = {"width": 96, "height": 72}
STATUS = "all_in_focus: pipeline"
RIG_STATUS = "sim_rig: rig"
INPUT_TIMEOUT_S = 2.0
"""The node's input_timeout_s in the graph tests (its default)."""
BUFFER_CAP = 150_000
"""Events the node may hold in the graph tests (a 96x72 sweep has ~10-20 k)."""


@pytest.fixture
def node():
    from efs_ros.nodes.all_in_focus import AllInFocusNode

    context = rclpy.Context()
    rclpy.init(context=context)
    instance = AllInFocusNode(context=context, parameter_overrides=[
        Parameter("backend", value="classical"), Parameter("pipeline_process", value=False),
        Parameter("threshold", value=1)])  # an integer for a double parameter is accepted
    yield instance
    instance.destroy_node()
    rclpy.try_shutdown(context=context)


def test_parameters_are_validated_and_applied(node):
    assert node.settings.threshold == 1.0
    for name, value, reason in (("method", "bogus", "method must be one of"),
                                ("backend", "cuda", "backend must be one of"),
                                ("n_bins", 1, "out of range"),
                                ("max_pending_jobs", 0, "out of range")):
        result = node.set_parameters([Parameter(name, value=value)])[0]
        assert not result.successful and reason in result.reason, (name, result.reason)
    assert node.settings.method == "dense"
    result = node.set_parameters([Parameter("method", value="golden"),
                                  Parameter("n_bins", value=64),
                                  Parameter("max_pending_jobs", value=2)])
    assert all(r.successful for r in result)
    assert (node.settings.method, node.settings.n_bins, node.settings.max_pending_jobs) == \
        ("golden", 64, 2)
    events_depth = node.set_parameters([Parameter("events_queue_depth", value=5)])[0]
    assert not events_depth.successful  # read-only: fixed when the subscription was made


def test_status_reports_silent_inputs(node):
    node.set_parameters([Parameter("input_timeout_s", value=0.1)])

    def shortest_silence() -> float:  # grows with the node's clock: nothing arrives here
        return min(v for k, v in node.status()[2].items() if k.endswith("_silent_s"))
    wait_for_progress(shortest_silence, lambda: shortest_silence() > 0.1,
                      "the node's clock passing input_timeout_s")
    level, message, values = node.status()
    assert level == bytes([1]) and "silent" in message
    assert values["backend_requested"] == "classical" and values["jobs_done"] == 0


# --------------------------------------------------------------------------- live graph

@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """Focus controller (sim lens) -> sim_rig -> all_in_focus, three processes, and a listener
    for the outputs, the rig's frames and ground truth, and /diagnostics."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image

    from efs_ros.nodes.convert import stamp_to_ns

    logs = tmp_path_factory.mktemp("node_logs")
    procs = [
        NodeProcess("efs_ros.nodes.focus_controller", log_dir=logs),
        NodeProcess("efs_ros.nodes.sim_rig", {**SIZE, "frame_rate_hz": 5.0,
                                              "max_blur_radius_px": 6.0}, log_dir=logs),
        NodeProcess("efs_ros.nodes.all_in_focus", {"backend": "classical", "method": "golden",
                                                   "max_pending_jobs": 8,
                                                   "max_buffered_events": BUFFER_CAP},
                    log_dir=logs),
    ]
    listener = Listener()
    for topic in ("/efs/all_in_focus", "/camera/image_raw", "/ground_truth/all_in_focus"):
        listener.listen(Image, topic, image_item, None)
    for topic in ("/efs/depth", "/ground_truth/depth"):
        listener.listen(Image, topic, image_item, None)
    listener.listen(DiagnosticArray, "/diagnostics", diagnostics_item, None)
    listener.listen(CameraInfo, "/efs/camera_info",
                    lambda m: (stamp_to_ns(m.header.stamp), m.header.frame_id, m.width, m.height,
                               tuple(m.k)), None)
    listener.start()
    yield procs, listener
    listener.close()
    for p in procs:
        p.stop()


def _outputs(listener) -> dict:
    return {s: px for s, px, *_ in listener.items("/efs/all_in_focus")}


def _counter(status: dict | None, key: str) -> int | None:
    return None if status is None else int(status[key])


def graph_progress(listener) -> tuple:
    """What moves while the graph works towards outputs: its processes reporting at all (once
    each), the first sweeps the node places (capped, they come whether or not jobs finish),
    then outputs heard and the node's job counters. A hung worker stalls this."""
    st = latest_status(listener, STATUS)
    sweeps = _counter(st, "sweeps")
    return (latest_status(listener, RIG_STATUS) is not None, st is not None,
            None if sweeps is None else min(sweeps, 3), len(_outputs(listener)),
            *(_counter(st, k) for k in ("jobs_done", "jobs_skipped", "jobs_failed",
                                         "jobs_dropped")))


def wait_for_outputs(procs, listener, n: int, what: str) -> None:
    """Until the listener has heard n images on /efs/all_in_focus (however long that takes
    here); StalledError when the graph stops moving or a node process exits."""
    wait_for_progress(lambda: graph_progress(listener), lambda: len(_outputs(listener)) >= n,
                      what, alive=all_alive(*procs))


def largest_reported(listener, key: str):
    """A progress snapshot: the largest value of `key` the node has reported so far (it
    grows while e.g. a silence lasts, and stalls when it does not)."""
    seen = [float("-inf")]

    def progress() -> float:
        st = latest_status(listener, STATUS)
        if st is not None:
            seen[0] = max(seen[0], float(st[key]))
        return seen[0]
    return progress


def wait_for_status(procs, listener, predicate, progress, what: str) -> dict:
    """The first status of the node (as latest heard) for which predicate holds; progress is
    what moves on the way there."""
    found = []

    def done() -> bool:
        st = latest_status(listener, STATUS)
        if st is not None and predicate(st):
            found.append(st)
        return bool(found)
    wait_for_progress(progress, done, what, alive=all_alive(*procs))
    return found[0]


def heard_outputs(listener):
    """(frames, truth, outputs) by stamp: the outputs whose input frame's truth the listener
    also received (it may join late)."""
    frames = {s: px for s, px, *_ in listener.items("/camera/image_raw") if px is not None}
    truth = {s: px for s, px, *_ in listener.items("/ground_truth/all_in_focus")}
    outputs = {s: px for s, px in _outputs(listener).items() if s in truth}
    return frames, truth, outputs


def depth_pairs(listener) -> dict:
    """(output depth, true depth) by stamp, of the outputs whose true depth was heard."""
    truth = {s: px for s, px, *_ in listener.items("/ground_truth/depth")}
    return {s: (px, truth[s]) for s, px, *_ in listener.items("/efs/depth") if s in truth}


def wait_for_truthful_outputs(procs, listener, n: int) -> None:
    wait_for_progress(lambda: (graph_progress(listener), len(depth_pairs(listener))),
                      lambda: len(heard_outputs(listener)[2]) >= n
                      and len(depth_pairs(listener)) >= n,
                      f"{n} outputs with their frame and truth", alive=all_alive(*procs))


def test_live_outputs_are_sharper_than_the_input_frames(graph):
    procs, listener = graph
    wait_for_truthful_outputs(procs, listener, 8)
    frames, truth, outputs = heard_outputs(listener)
    first_frame = min(frames)
    assert all(s in frames for s in _outputs(listener) if s >= first_frame), "output without a frame"
    scores = []
    for stamp, out in outputs.items():
        # same size, encoding and stamp as the input frame it was made from
        assert stamp in frames and out.shape == frames[stamp].shape == (72, 96, 3)
        gt = truth[stamp] / 255.0
        scores.append((psnr(frames[stamp] / 255.0, gt), psnr(out / 255.0, gt)))
    scores = np.array(scores)
    assert scores[:, 1].mean() > scores[:, 0].mean() + 0.5, scores.round(1).tolist()
    # the rig's camera_info comes back as the outputs' camera: same header as each output
    wait_for_progress(lambda: len(listener.items("/efs/camera_info")),
                      lambda: {i[0] for i in listener.items("/efs/camera_info")} >= set(outputs),
                      "a /efs/camera_info for every output heard", alive=all_alive(*procs))
    infos = {i[0]: i for i in listener.items("/efs/camera_info")}
    for stamp in outputs:
        _, frame_id, width, height, k, *_ = infos[stamp]
        assert (width, height) == (96, 72) and frame_id == "camera"
        assert k[2] == (96 - 1) / 2 and k[5] == (72 - 1) / 2
    # /diagnostics (once a second) counts them
    status = wait_for_status(procs, listener, lambda st: int(st["jobs_done"]) >= 8,
                             lambda: _counter(latest_status(listener, STATUS), "jobs_done"),
                             "jobs_done reaching the 8 outputs heard")
    assert status["backend"] == "classical"


DEPTH_COVERAGE_MIN = 0.5
"""Share of the pixels with a depth, each output (measured 0.79-0.85; textureless pixels
have none)."""
DEPTH_ABS_REL_GUARD = 0.65
"""Regression guard on AbsRel (metrics.abs_rel: mean |depth - truth| / truth over the covered
pixels), each output: 1.5x the worst measured before the simulator's blur was fixed. Measured
(golden method, classical backend, 96x72 scene at 0.3..2 m; 8 outputs): 0.37-0.44 while
sim/optics.disk_kernel rendered no blur below ~1.1 px (a band around focus equally sharp, depth
~0.65x the truth); 0.26-0.31 since (2026-12-03, blur between pixel grids). What remains is
mostly the golden method's one time per patch (issue 11)."""
DEPTH_ABS_REL_TARGET = 0.25
"""What a working depth must reach, clearly better than any constant (0.31): the test is an
expected failure (strict, so it shows when the pipeline gets there) until it does."""


class DepthOffTargetError(AssertionError):
    """The depth is within the regression guard but not yet at DEPTH_ABS_REL_TARGET."""


@pytest.mark.xfail(raises=DepthOffTargetError, strict=True,
                   reason="live depth AbsRel 0.26-0.31 (one time per golden patch)")
def test_live_depth_matches_the_rig_truth(graph):
    """/efs/depth against the rig's /ground_truth/depth (same stamp), pixel by pixel."""
    procs, listener = graph
    wait_for_truthful_outputs(procs, listener, 8)
    errors, coverage = [], []
    for depth, true_depth in depth_pairs(listener).values():
        assert depth.dtype == np.float32 and depth.shape == true_depth.shape == (72, 96)
        assert np.all(np.isfinite(true_depth))
        assert np.all(depth[np.isfinite(depth)] > 0)  # metres where known, NaN elsewhere
        error, covered = abs_rel(depth, true_depth)
        errors.append(error)
        coverage.append(covered)
    assert min(coverage) > DEPTH_COVERAGE_MIN, coverage
    assert max(errors) < DEPTH_ABS_REL_GUARD, errors
    if max(errors) >= DEPTH_ABS_REL_TARGET:
        raise DepthOffTargetError(f"AbsRel {np.round(errors, 3).tolist()}")


def test_bad_input_is_counted_and_output_continues(graph):
    from event_camera_msgs.msg import EventPacket
    from sensor_msgs.msg import Image, JointState

    procs, listener = graph
    wait_for_outputs(procs, listener, 2, "the first 2 outputs")
    rng = np.random.default_rng(11)
    node = listener.node
    events = node.create_publisher(EventPacket, "/event_camera/events", 100)
    frames = node.create_publisher(Image, "/camera/image_raw", 100)
    focus = node.create_publisher(JointState, "/lens/focus_state", 100)
    # our writers matched the node's readers: what is published from here on is sent to it
    wait_for_condition(lambda: all(p.get_subscription_count() >= 1 for p in (events, frames, focus)),
                      "the node's readers matching our publishers", alive=all_alive(*procs))
    before = latest_status(listener, STATUS)
    n_outputs = len(_outputs(listener))
    now = node.get_clock().now().nanoseconds
    for k in range(20):  # garbage EVT3 bytes, odd lengths included
        data = rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8)
        events.publish(make_event_packet(now + k, data, SIZE["width"], SIZE["height"], 0))
    for k in range(6):  # a wrong encoding string
        events.publish(make_event_packet(now + k, b"\x00" * 64, SIZE["width"], SIZE["height"],
                                         0, encoding="evt2.1"))
    for k in range(4):  # frames of the wrong size, and of an unknown encoding
        frames.publish(numpy_to_image_msg(np.zeros((48, 64, 3), np.uint8), "rgb8",
                                          stamp_ns=now + k))
        bad = numpy_to_image_msg(np.zeros((72, 96), np.uint8), "mono8", stamp_ns=now + 10 + k)
        bad.encoding = "yuv422"
        frames.publish(bad)
    for k in range(5):  # a lens state without the focus joint
        msg = make_focus_state(now + k, 2.0, 0.0)
        msg.name = ["zoom"]
        focus.publish(msg)

    keys = ("decode_faults", "packets_rejected", "frames_rejected", "focus_rejected")

    def rejections() -> tuple:
        st = latest_status(listener, STATUS)
        return tuple(_counter(st, k) - int(before[k]) for k in keys)

    def counted(st) -> bool:
        faults, packets, frames_, focus_ = (int(st[k]) - int(before[k]) for k in keys)
        return faults > 0 and packets >= 6 and frames_ >= 8 and focus_ >= 5
    wait_for_status(procs, listener, counted, rejections, "the bad messages counted")
    levels = {int(st["level"]) for st in node_statuses(listener, STATUS)}
    assert levels & {1, 2}, "bad input never raised the level above OK"
    # and the node keeps producing all-in-focus images from the good stream
    wait_for_outputs(procs, listener, n_outputs + 3, "3 more outputs after the bad input")
    assert procs[2].alive()


def set_remote_parameters(listener, node_name: str, **values) -> None:
    from rclpy.parameter_client import AsyncParameterClient

    client = AsyncParameterClient(listener.node, node_name)
    assert client.wait_for_services(timeout_sec=STALL_S), f"{node_name}'s parameter services"
    future = client.set_parameters([Parameter(k, value=v) for k, v in values.items()])
    wait_for_condition(future.done, f"setting {values} on {node_name}")
    assert all(r.successful for r in future.result().results), future.result()


def test_silent_inputs_are_reported_and_recovered_from(graph):
    """Camera silence, then event-camera silence: each reported, then output resumes.

    The node's own clock measures the silence (its *_silent_s); the test waits for it to
    pass input_timeout_s, and after output resumes for a status that heard the input again."""
    procs, listener = graph
    wait_for_outputs(procs, listener, 2, "the first 2 outputs")
    for topic, parameter in (("frames", "publish_frames"), ("events", "publish_events")):
        silent_key, received_key = f"{topic}_silent_s", f"{topic}_received"
        set_remote_parameters(listener, "sim_rig", **{parameter: False})
        try:
            status = wait_for_status(
                procs, listener, lambda st, k=silent_key: float(st[k]) > INPUT_TIMEOUT_S,
                largest_reported(listener, silent_key),
                f"{topic} silent for more than input_timeout_s")
            assert f"{topic} silent" in status["message"], status
            assert int(status["level"]) >= 1
            assert procs[2].alive()
        finally:
            set_remote_parameters(listener, "sim_rig", **{parameter: True})
        resumed = len(_outputs(listener))
        wait_for_outputs(procs, listener, resumed + 2, f"2 outputs after the {topic} resumed")
        mark = int(latest_status(listener, STATUS)[received_key])
        status = wait_for_status(
            procs, listener, lambda st, k=received_key, m=mark: int(st[k]) > m,
            lambda k=received_key: _counter(latest_status(listener, STATUS), k),
            f"a status that heard the {topic} again")
        assert f"{topic} silent" not in status["message"], status


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


FLOOD_REPORTS = 4
"""Statuses the node publishes while flooded before the flood ends (the first of them may
have been computed before the flood reached it)."""


def test_event_flood_is_bounded_counted_and_survived(graph):
    """1 M events/s (a sweep then holds ~3x the buffer): memory stays capped, the excess is
    dropped oldest-first and counted, the sweeps it damaged give no image (skipped, not
    garbage), diagnostics keep coming, and output resumes when the flood ends.

    The flood lasts until the node has reported FLOOD_REPORTS times, 2 more sweeps placed and
    dropped events (its own counters), not for a time."""
    procs, listener = graph
    wait_for_outputs(procs, listener, 2, "the first 2 outputs")
    before = latest_status(listener, STATUS)
    rss_before = rss_mb(procs[2].proc.pid)
    set_remote_parameters(listener, "sim_rig", flood_events_per_s=1_000_000.0)
    mark = len(node_statuses(listener, STATUS))
    rss = []

    def flooded() -> list[dict]:
        return node_statuses(listener, STATUS)[mark:]

    def lost(st) -> int:
        return int(st["events_dropped"]) - int(before["events_dropped"]) + \
            int(st["packets_lost"]) - int(before["packets_lost"])

    def progress() -> tuple:  # every part is capped: a flood the node ignores stalls this
        rss.append(rss_mb(procs[2].proc.pid))
        during = flooded()
        last = during[-1] if during else before
        return (min(len(during), FLOOD_REPORTS),
                min(int(last["sweeps"]) - int(before["sweeps"]), 2), lost(last) > 0)
    try:
        wait_for_progress(progress, lambda: progress() == (FLOOD_REPORTS, 2, True),
                          "the node reporting through the flood", alive=all_alive(*procs))
    finally:
        set_remote_parameters(listener, "sim_rig", flood_events_per_s=0.0)
    during = flooded()[1:]
    assert len(during) >= FLOOD_REPORTS - 1, "the node stopped answering during the flood"
    assert max(int(st["buffer_events"]) for st in during) <= BUFFER_CAP
    assert lost(during[-1]) > 0
    assert max(rss) < rss_before + 200, (rss_before, max(rss))  # 150 k events are 2 MB
    resumed = len(_outputs(listener))
    wait_for_outputs(procs, listener, resumed + 2, "2 outputs after the flood")
    # jobs run in sweep order: the flooded sweeps were decided before these outputs
    wait_for_status(procs, listener,
                    lambda st: int(st["jobs_skipped"]) > int(before["jobs_skipped"]),
                    lambda: _counter(latest_status(listener, STATUS), "jobs_skipped"),
                    "the flooded sweeps counted as skipped")


def test_auto_backend_runs_the_nets_only_where_they_keep_up():
    """With the shipped models, `auto` runs them on a GPU backend. On a CPU-only machine it runs
    the single-pass restore path there (one pass, fast on a CPU) and the classical path when the
    per-slice nets are asked for (seconds per job), saying why, not as an error."""
    import torch

    from efs_ros.core.pipeline import run_pipeline
    from efs_ros.infer.tensorrt_backend import unavailable_reason
    from efs_ros.nodes.all_in_focus import NodeSettings, PipelineWorker
    from efs_ros.sim.rig import RigConfig, simulate_sweep
    from efs_ros.sim.sensor import SensorConfig

    job = simulate_sweep(RigConfig(height=32, width=48, steps=40), SensorConfig(),
                         np.random.default_rng(0)).to_job(0)
    classical = run_pipeline(job, NodeSettings(backend="classical").pipeline_config())
    worker = PipelineWorker()
    gpu = torch.cuda.is_available() or unavailable_reason() is None
    result, _, state = worker.run(job, NodeSettings(backend="auto"))
    if gpu:
        assert state.name.startswith(("tensorrt", "onnxruntime-cuda", "torch-cuda")), state
    else:
        assert state.name == "onnxruntime-cpu" and not state.error, state
        assert "learned path: restore" in state.note
        assert not np.array_equal(result.all_in_focus, classical.all_in_focus)  # the net ran
    result, _, state = worker.run(job, NodeSettings(backend="auto", learned="slices"))
    if not gpu:
        assert state.name == "classical" and not state.error, state
        assert "no GPU backend" in state.note
        np.testing.assert_array_equal(result.all_in_focus, classical.all_in_focus)
    _, _, state = worker.run(job, NodeSettings(backend="torch"))
    assert state.name.startswith("torch-") and not state.error, state
    worker.close()


def test_backend_fallback_is_classical_and_reported(tmp_path):
    """No models installed: `auto` falls back quietly; an explicit backend is an error (the
    user asked for something that is not running), and both still give the classical image."""
    from efs_ros.core.pipeline import run_pipeline
    from efs_ros.nodes.all_in_focus import NodeSettings, PipelineWorker
    from efs_ros.sim.rig import RigConfig, simulate_sweep
    from efs_ros.sim.sensor import SensorConfig

    job = simulate_sweep(RigConfig(height=32, width=48, steps=40), SensorConfig(),
                         np.random.default_rng(0)).to_job(0)
    classical = run_pipeline(job, NodeSettings(backend="classical").pipeline_config())
    worker = PipelineWorker()
    for backend, is_error in (("auto", False), ("onnxruntime", True)):
        result, _, state = worker.run(job, NodeSettings(backend=backend, models_dir=str(tmp_path)))
        assert state.name == "classical" and state.error is is_error, state
        assert backend in state.note
        np.testing.assert_array_equal(result.all_in_focus, classical.all_in_focus)
