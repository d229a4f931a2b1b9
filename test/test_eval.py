"""`make eval` (efs_ros.tools.eval) over CONTRACT bags: outputs, summary, bad recordings."""
import json
import shutil
import sys

import numpy as np
import pytest

from efs_ros.core.assembler import JobAssembler
from efs_ros.core.images import decode_frame
from efs_ros.core.metrics import psnr, ssim
from efs_ros.io.recording import (
    TOPIC_EVENTS,
    TOPIC_GT_AIF,
    TOPIC_IMAGE,
    read_recording,
    write_recording,
)
from efs_ros.tools import eval as efs_eval

ERROR_PREFIX = "efs_eval: error: "


def simulate(seed=2):
    from efs_ros.sim.rig import RigConfig, simulate_recording
    from efs_ros.sim.sensor import SensorConfig

    rig = RigConfig(height=48, width=64, steps=60, dwell_s=0.02)
    return simulate_recording(rig, SensorConfig(), np.random.default_rng(seed), n_sweeps=3,
                              frame_rate_hz=30)


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "sim"
    write_recording(path, simulate(), drift_ppm=40.0, use_triggers=False, seed=4)
    return path


def run_cli(run_watched, bag, out, *args):
    """`efs_eval bag out ...` in its own process, to its end: it fails if the command stops
    writing job files (or output) for a stall window, not after a time budget."""
    return run_watched([sys.executable, "-m", "efs_ros.tools.eval", bag, out, *args],
                       f"efs_eval {bag}", watch=(out,))


@pytest.fixture(scope="module")
def full_run(bag, tmp_path_factory, run_watched):
    out = tmp_path_factory.mktemp("eval") / "out"
    result = run_cli(run_watched, bag, out)
    return out, result


def expected_job_stamps(bag):
    asm = JobAssembler()
    stamps = []
    for topic, msg, _ in read_recording(bag):
        efs_eval.feed(asm, topic, msg)
        stamps += [j.stamp_ns for j in asm.pop_jobs()]
    return stamps + [j.stamp_ns for j in asm.flush()]


def outputs(out):
    return sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".npy"))


def test_eval_writes_one_set_of_files_per_job_and_a_summary(bag, full_run):
    from PIL import Image

    out, result = full_run
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    stamps = expected_job_stamps(bag)
    assert len(stamps) >= 6
    assert outputs(out) == sorted(f"{s}_{kind}" for s in stamps
                                  for kind in ("aif.png", "depth.npy", "refocus.npy"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["error"] is None
    assert [j["stamp_ns"] for j in summary["jobs"]] == stamps
    frames, gts = {}, {}
    for topic, msg, _ in read_recording(bag, topics=[TOPIC_IMAGE, TOPIC_GT_AIF]):
        table = frames if topic == TOPIC_IMAGE else gts
        table[msg.stamp_ns] = decode_frame(msg.width, msg.height, msg.encoding, msg.step, msg.data)
    for job in summary["jobs"]:
        stamp = job["stamp_ns"]
        image = Image.open(out / f"{stamp}_aif.png")
        assert image.mode == "RGB" and image.size == (64, 48)
        aif = np.asarray(image, dtype=np.float32) / 255.0
        depth = np.load(out / f"{stamp}_depth.npy")
        refocus = np.load(out / f"{stamp}_refocus.npy")
        assert depth.dtype == refocus.dtype == np.float32
        assert depth.shape == refocus.shape == (48, 64)
        assert np.isfinite(refocus).all()
        finite = depth[np.isfinite(depth)]
        assert np.all(finite > 0)  # metres where known, NaN elsewhere
        # the summary's numbers are those of the written image against the bag's ground truth
        assert job["psnr"] == pytest.approx(psnr(aif, gts[stamp]), abs=1e-6)
        assert job["ssim"] == pytest.approx(ssim(aif, gts[stamp]), abs=1e-6)
        assert job["input_psnr"] == pytest.approx(psnr(frames[stamp], gts[stamp]), abs=1e-6)
        for key in ("wall_ms", "ms_ssim", "input_ssim", "input_ms_ssim", "depth_coverage"):
            assert job[key] is not None
        assert 0 <= job["depth_coverage"] <= 1
        assert (job["depth_coverage"] > 0) == (job["depth_abs_rel"] is not None)
    for key, value in summary["means"].items():
        known = [j[key] for j in summary["jobs"] if j.get(key) is not None]
        assert value == pytest.approx(np.mean(known))
    assert {"wall_ms", "psnr", "ssim", "ms_ssim", "input_psnr"} <= set(summary["means"])
    assert summary["stats"]["jobs"] == len(stamps)


def test_eval_is_deterministic(bag, full_run, tmp_path):
    out, _ = full_run
    again = tmp_path / "again"
    assert efs_eval.main([str(bag), str(again)]) == 0
    assert outputs(again) == outputs(out)
    for name in outputs(out):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    a = json.loads((out / "summary.json").read_text())
    b = json.loads((again / "summary.json").read_text())
    for ja, jb in zip(a["jobs"], b["jobs"], strict=True):
        ja.pop("wall_ms"), jb.pop("wall_ms")
        assert ja == jb


def test_truncated_bag_writes_the_jobs_before_the_fault_and_one_error_line(bag, full_run, tmp_path,
                                                                          run_watched):
    out, _ = full_run
    cut = tmp_path / "cut"
    shutil.copytree(bag, cut)
    mcap = next(cut.glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(len(data) * 0.6)])
    partial = tmp_path / "partial"
    result = run_cli(run_watched, cut, partial)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX) and "truncated" in lines[0]
    summary = json.loads((partial / "summary.json").read_text())
    assert summary["complete"] is False and "truncated" in summary["error"]
    written = outputs(partial)
    assert 3 <= len(written) < len(outputs(out))
    for name in written:  # the same bytes the intact bag gives for those jobs
        assert (partial / name).read_bytes() == (out / name).read_bytes(), name


def test_the_real_recording_has_no_frames_or_lens(real_evt3_bag, tmp_path, run_watched):
    result = run_cli(run_watched, real_evt3_bag, tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{ERROR_PREFIX}missing topics /camera/image_raw, /lens/focus_state "
        "(topics present: /event_camera/events)"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_jobs"] == 0 and "missing topics" in summary["error"]


def rewrite_bag(src, dst, change):
    """Copy a bag message by message through change(topic, msg, index on its topic) -> msg."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    from efs_ros.io.typestore import typestore

    store = typestore()
    counts = {}
    with Reader(src) as reader, Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=store)
                 for c in reader.connections}
        for conn, t, raw in reader.messages():
            msg = store.deserialize_cdr(raw, conn.msgtype)
            index = counts.get(conn.topic, 0)
            counts[conn.topic] = index + 1
            msg = change(conn.topic, msg, index)
            writer.write(conns[conn.id], t, store.serialize_cdr(msg, conn.msgtype))


def eval_in_process(bag, out, capsys):
    status = efs_eval.main([str(bag), str(out)])
    err = capsys.readouterr().err.splitlines()
    return status, err, json.loads((out / "summary.json").read_text())


def test_unknown_frame_encoding_stops_with_one_line_after_earlier_jobs(bag, tmp_path, capsys):
    def change(topic, msg, index):
        if topic == TOPIC_IMAGE and index >= 9:
            msg.encoding = "yuv422"
        return msg

    rewrite_bag(bag, tmp_path / "bad", change)
    status, err, summary = eval_in_process(tmp_path / "bad", tmp_path / "out", capsys)
    assert status == 1 and len(err) == 1
    assert err[0].startswith(ERROR_PREFIX) and "unknown image encoding 'yuv422'" in err[0]
    assert summary["n_jobs"] >= 1 and summary["error"] in err[0]


def test_event_packet_size_mismatch_stops_with_one_line(bag, tmp_path, capsys):
    def change(topic, msg, index):
        if topic == TOPIC_EVENTS and index >= 150:
            msg.width = 640
        return msg

    rewrite_bag(bag, tmp_path / "bad", change)
    status, err, summary = eval_in_process(tmp_path / "bad", tmp_path / "out", capsys)
    assert status == 1 and len(err) == 1
    assert "event packet size mismatch: 640x48, sensor is 64x48" in err[0]
    assert summary["stats"]["contract_violations"] == 1


def test_bgr8_and_mono8_frames_keep_their_channels(bag, full_run, tmp_path, capsys):
    from PIL import Image

    out, _ = full_run

    def to_bgr(topic, msg, index):
        if topic == TOPIC_IMAGE:
            msg.encoding = "bgr8"
            msg.data = msg.data.reshape(msg.height, msg.width, 3)[:, :, ::-1].reshape(-1).copy()
        return msg

    rewrite_bag(bag, tmp_path / "bgr", to_bgr)
    status, err, _ = eval_in_process(tmp_path / "bgr", tmp_path / "out_bgr", capsys)
    assert status == 0 and err == []
    # the same job inside, so the same RGB picture comes out
    for name in outputs(out):
        assert (tmp_path / "out_bgr" / name).read_bytes() == (out / name).read_bytes(), name

    def to_mono(topic, msg, index):
        if topic in (TOPIC_IMAGE, TOPIC_GT_AIF):
            msg.encoding = "mono8"
            msg.data = msg.data.reshape(msg.height, msg.width, 3)[:, :, 1].reshape(-1).copy()
            msg.step = msg.width
        return msg

    rewrite_bag(bag, tmp_path / "mono", to_mono)
    status, err, summary = eval_in_process(tmp_path / "mono", tmp_path / "out_mono", capsys)
    assert status == 0 and err == []
    assert summary["n_jobs"] >= 1 and summary["jobs"][0]["psnr"] is not None
    png = Image.open(tmp_path / "out_mono" / f"{summary['jobs'][0]['stamp_ns']}_aif.png")
    assert png.mode == "L" and png.size == (64, 48)


def test_bad_arguments_exit_2_with_one_line(bag, tmp_path, capsys):
    assert efs_eval.main([str(bag), str(tmp_path / "o"), "--method", "nonsense"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(ERROR_PREFIX) and "nonsense" in err[0]


LATE_MS = (12.0, 25.0, 30.0)


@pytest.fixture(scope="module")
def on_time_and_late_bags(tmp_path_factory):
    """One simulated rig with trigger wiring, written with frames stamped at mid-exposure and
    late (a camera driver that stamps on arrival; beyond the 10 ms match window, 30 fps)."""
    folder = tmp_path_factory.mktemp("stamps")
    rec = simulate(seed=5)
    write_recording(folder / "on_time", rec, seed=6)
    for late_ms in LATE_MS:
        write_recording(folder / f"late{late_ms:g}", rec, seed=6, frame_stamp_late_ms=late_ms)
    return folder


def _psnr_by_frame(bag, out, late_ms=0.0, calib=None):
    """Job PSNR keyed by the frame's mid-exposure stamp (the written stamp less its lateness)."""
    args = [str(bag), str(out), "--no-progress"] + (["--calib", str(calib)] if calib else [])
    assert efs_eval.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    late_ns = int(round(late_ms * 1e6))
    return {j["stamp_ns"] - late_ns: j["psnr"] for j in summary["jobs"]}, summary["stats"]


@pytest.mark.parametrize("late_ms", LATE_MS)
def test_late_frame_stamps_are_matched_by_a_fitted_offset(on_time_and_late_bags, tmp_path, late_ms):
    """Frames stamped 12-30 ms after mid-exposure still find their trigger pairs (the constant
    offset is fitted from the pairs: nothing is paired before it is known), and the jobs refocus
    as well as with on-time stamps: the job's origin is mid-exposure, so the lens samples line
    up with the frame. Given in the rig calibration, the offset gives the same."""
    on_time, late = on_time_and_late_bags / "on_time", on_time_and_late_bags / f"late{late_ms:g}"
    reference, ref_stats = _psnr_by_frame(on_time, tmp_path / "a")
    fitted, stats = _psnr_by_frame(late, tmp_path / "b", late_ms)
    assert ref_stats["sync_source"] == stats["sync_source"] == "triggers"
    assert stats["matched_pairs"] == ref_stats["matched_pairs"] > 0
    common = sorted(set(reference) & set(fitted))
    assert len(common) >= len(reference) - 1 > 0
    np.testing.assert_allclose([fitted[k] for k in common], [reference[k] for k in common], atol=0.3)
    calib = tmp_path / "rig.yaml"
    calib.write_text(f"frame_stamp_offset_s: {late_ms / 1000}\n")
    given, _ = _psnr_by_frame(late, tmp_path / "c", late_ms, calib)
    common = sorted(set(reference) & set(given))
    assert len(common) >= len(reference) - 1
    np.testing.assert_allclose([given[k] for k in common], [reference[k] for k in common], atol=0.3)
