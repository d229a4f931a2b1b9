"""The live all_in_focus node: parameters, and over real DDS with the simulated rig and the
focus controller in their own processes: sharper than its input, and unshaken by bad input."""
from __future__ import annotations

import time

import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from test_sim_rig import Listener, NodeProcess, diagnostics_item, image_item, latest_status

from efs_ros.core.metrics import psnr
from efs_ros.nodes.convert import make_event_packet, make_focus_state, numpy_to_image_msg

SIZE = {"width": 96, "height": 72}
STATUS = "all_in_focus: pipeline"
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
    time.sleep(0.2)
    level, message, values = node.status()
    assert level == bytes([1]) and "silent" in message
    assert values["backend_requested"] == "classical" and values["jobs_done"] == 0


# --------------------------------------------------------------------------- live graph

@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """Focus controller (sim lens) -> sim_rig -> all_in_focus, three processes, and a listener
    for the outputs, the rig's frames and ground truth, and /diagnostics."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

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
    listener.listen(Image, "/efs/depth", image_item, None)
    listener.listen(DiagnosticArray, "/diagnostics", diagnostics_item, None)
    listener.start()
    yield procs, listener
    listener.close()
    for p in procs:
        p.stop()


def _outputs(listener) -> dict:
    return {s: px for s, px, *_ in listener.items("/efs/all_in_focus")}


def test_live_outputs_are_sharper_than_the_input_frames(graph):
    procs, listener = graph
    def heard():
        """Outputs whose input frame and truth the listener also received (it may join late)."""
        frames = {s: px for s, px, *_ in listener.items("/camera/image_raw") if px is not None}
        truth = {s: px for s, px, *_ in listener.items("/ground_truth/all_in_focus")}
        outputs = {s: px for s, px in _outputs(listener).items() if s in truth}
        return frames, truth, outputs

    assert listener.wait_until(lambda: len(heard()[2]) >= 8, 90), \
        "\n".join(p.log(15) for p in procs)
    frames, truth, outputs = heard()
    depth = {s: px for s, px, *_ in listener.items("/efs/depth")}
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
    some_depth = next(iter(depth.values()))
    finite = some_depth[np.isfinite(some_depth)]
    assert some_depth.dtype == np.float32 and finite.size > 0.2 * some_depth.size
    assert np.median(finite) == pytest.approx(1.0, rel=0.8)  # the scene spans 0.3..2 m
    assert listener.wait_until(  # /diagnostics comes once a second
        lambda: int(latest_status(listener, STATUS)["jobs_done"]) >= 8, 5)
    assert latest_status(listener, STATUS)["backend"] == "classical"


def test_bad_input_is_counted_and_output_continues(graph):
    from event_camera_msgs.msg import EventPacket
    from sensor_msgs.msg import Image, JointState

    procs, listener = graph
    assert listener.wait_until(lambda: len(_outputs(listener)) >= 2, 90), procs[2].log()
    rng = np.random.default_rng(11)
    node = listener.node
    events = node.create_publisher(EventPacket, "/event_camera/events", 100)
    frames = node.create_publisher(Image, "/camera/image_raw", 100)
    focus = node.create_publisher(JointState, "/lens/focus_state", 100)
    assert listener.wait_until(lambda: events.get_subscription_count() >= 1
                               and frames.get_subscription_count() >= 1, 10)
    time.sleep(0.5)
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

    def counted():
        st = latest_status(listener, STATUS)
        return st is not None and \
            int(st["decode_faults"]) > int(before["decode_faults"]) and \
            int(st["packets_rejected"]) >= int(before["packets_rejected"]) + 6 and \
            int(st["frames_rejected"]) >= int(before["frames_rejected"]) + 8 and \
            int(st["focus_rejected"]) >= int(before["focus_rejected"]) + 5
    assert listener.wait_until(counted, 15), (before, latest_status(listener, STATUS))
    levels = {int(statuses[STATUS]["level"]) for _, statuses, _ in listener.items("/diagnostics")
              if STATUS in statuses}
    assert levels & {1, 2}, "bad input never raised the level above OK"
    # and the node keeps producing all-in-focus images from the good stream
    assert listener.wait_until(lambda: len(_outputs(listener)) >= n_outputs + 3, 60), \
        (latest_status(listener, STATUS), procs[2].log())
    assert procs[2].proc.poll() is None


def set_remote_parameters(listener, node_name: str, **values) -> None:
    from rclpy.parameter_client import AsyncParameterClient

    client = AsyncParameterClient(listener.node, node_name)
    assert client.wait_for_services(timeout_sec=10)
    future = client.set_parameters([Parameter(k, value=v) for k, v in values.items()])
    assert listener.wait_until(future.done, 10)
    assert all(r.successful for r in future.result().results), future.result()


def test_silent_inputs_are_reported_and_recovered_from(graph):
    """Camera silence, then event-camera silence: each reported, then output resumes."""
    procs, listener = graph
    assert listener.wait_until(lambda: len(_outputs(listener)) >= 2, 90), procs[2].log()
    for topic, parameter in (("frames", "publish_frames"), ("events", "publish_events")):
        set_remote_parameters(listener, "sim_rig", **{parameter: False})
        try:
            assert listener.wait_until(  # input_timeout_s is 2 s
                lambda t=topic: f"{t} silent" in latest_status(listener, STATUS)["message"], 8), \
                latest_status(listener, STATUS)
            status = latest_status(listener, STATUS)
            assert int(status["level"]) >= 1 and float(status[f"{topic}_silent_s"]) >= 2.0
            assert procs[2].proc.poll() is None
        finally:
            set_remote_parameters(listener, "sim_rig", **{parameter: True})
        resumed = len(_outputs(listener))
        assert listener.wait_until(lambda n=resumed: len(_outputs(listener)) >= n + 2, 30), \
            (topic, latest_status(listener, STATUS))
        assert listener.wait_until(
            lambda t=topic: f"{t} silent" not in latest_status(listener, STATUS)["message"], 5)


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_event_flood_is_bounded_counted_and_survived(graph):
    """1 M events/s (a sweep then holds ~3x the buffer): memory stays capped, the excess is
    dropped oldest-first and counted, the sweeps it damaged give no image (skipped, not
    garbage), diagnostics keep coming, and output resumes when the flood ends."""
    procs, listener = graph
    assert listener.wait_until(lambda: len(_outputs(listener)) >= 2, 90), procs[2].log()
    before = latest_status(listener, STATUS)
    rss_before = rss_mb(procs[2].proc.pid)
    set_remote_parameters(listener, "sim_rig", flood_events_per_s=1_000_000.0)
    flood_started = time.monotonic()
    rss = []
    try:
        while time.monotonic() - flood_started < 5.0:
            rss.append(rss_mb(procs[2].proc.pid))
            time.sleep(0.25)
    finally:
        set_remote_parameters(listener, "sim_rig", flood_events_per_s=0.0)
    during = [st[STATUS] for _, st, arrived in listener.items("/diagnostics")
              if STATUS in st and flood_started + 1.0 <= arrived]
    assert len(during) >= 3, "the node stopped answering during the flood"
    assert max(int(st["buffer_events"]) for st in during) <= BUFFER_CAP
    after = during[-1]
    dropped = int(after["events_dropped"]) - int(before["events_dropped"]) + \
        int(after["packets_lost"]) - int(before["packets_lost"])
    assert dropped > 0
    assert int(after["jobs_skipped"]) > int(before["jobs_skipped"])
    assert max(rss) < rss_before + 200, (rss_before, max(rss))  # 150 k events are 2 MB
    resumed = len(_outputs(listener))
    assert listener.wait_until(lambda: len(_outputs(listener)) >= resumed + 2, 30), \
        latest_status(listener, STATUS)


def test_auto_backend_runs_the_nets_only_on_a_gpu():
    """With the shipped models, `auto` runs them on a GPU backend; on a CPU-only machine it
    runs the classical path (the nets would take seconds per job) and says why, not as an error."""
    import torch

    from efs_ros.infer.tensorrt_backend import unavailable_reason
    from efs_ros.nodes.all_in_focus import NodeSettings, PipelineWorker
    from efs_ros.sim.rig import RigConfig, simulate_sweep
    from efs_ros.sim.sensor import SensorConfig

    job = simulate_sweep(RigConfig(height=32, width=48, steps=40), SensorConfig(),
                         np.random.default_rng(0)).to_job(0)
    worker = PipelineWorker()
    _, _, state = worker.run(job, NodeSettings(backend="auto"))
    if torch.cuda.is_available() or unavailable_reason() is None:
        assert state.name in ("tensorrt", "onnxruntime-cuda", "torch-cuda"), state
    else:
        assert state.name == "classical" and not state.error, state
        assert "no GPU backend" in state.note
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
