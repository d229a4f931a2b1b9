"""The rig calibration file (CONTRACT section 4) and frames from a camera that does not share the
event sensor's pixels."""
from __future__ import annotations

import numpy as np
import pytest

from efs_ros.core.assembler import AssemblerConfig, JobAssembler
from efs_ros.core.calibration import IDENTITY, CalibrationError, RigCalibration
from efs_ros.core.metrics import psnr
from efs_ros.core.pipeline import run_pipeline_with_info
from efs_ros.sim.rig import FrameCamera, RigConfig, simulate_sweep
from efs_ros.sim.sensor import SensorConfig


def test_defaults_are_the_registered_linear_ideal_rig_and_round_trip(tmp_path):
    default = RigCalibration()
    assert default.registered and default.frame_transfer == "linear"
    np.testing.assert_array_equal(default.lens_to_focus([0.1], [2.0])[1], [2.0])
    path = tmp_path / "rig.yaml"
    path.write_text("")
    assert RigCalibration.load(path) == default  # every key optional
    calib = RigCalibration(frame_to_events=(0.5, 0.01, 3.0, -0.01, 0.5, 2.0, 0.0, 0.0, 1.0),
                           frame_transfer="gamma:2.2", vergence_from_lens=(0.8, 0.1), lens_delay_s=0.002,
                           trigger_exposure_start_value=0, frame_stamp_offset_s=0.015)
    calib.save(path, comment="written by a test")
    again = RigCalibration.load(path)
    assert again == calib and not again.registered
    t, v = again.lens_to_focus(np.array([0.0, 0.01]), np.array([1.0, 2.0]))
    np.testing.assert_allclose(t, [0.002, 0.012])
    np.testing.assert_allclose(v, [0.9, 1.7])


@pytest.mark.parametrize("text, message", [
    ("frame_to_event: [1, 0, 0, 0, 1, 0, 0, 0, 1]\n", "unknown calibration key 'frame_to_event'"),
    ("frame_transfer: gamma:0\n", "frame_transfer 'gamma:0'"),
    ("frame_transfer: log\n", "frame_transfer 'log'"),
    ("frame_to_events: [1, 0, 0]\n", "frame_to_events must be 9"),
    ("frame_to_events: [0, 0, 0, 0, 0, 0, 0, 0, 1]\n", "singular"),
    ("vergence_from_lens: [0, 1]\n", "a != 0"),
    ("trigger_exposure_start_value: 2\n", "must be 0 or 1"),
    ("- a list\n", "must be a mapping"),
    ("frame_transfer: [unclosed\n", "is not YAML"),
])
def test_bad_files_are_refused_in_one_line_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "rig.yaml"
    path.write_text(text)
    with pytest.raises(CalibrationError, match=message.replace("[", r"\[")) as err:
        RigCalibration.load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    with pytest.raises(CalibrationError, match="cannot read"):
        RigCalibration.load(tmp_path / "missing.yaml")


SENSOR_HW = (96, 128)


@pytest.fixture(scope="module")
def two_rigs():
    """The same scenes and events seen by a frame camera sharing the sensor's pixels and by a
    240x180 camera rotated 3 degrees, scaled and shifted against it."""
    rig = RigConfig(height=SENSOR_HW[0], width=SENSOR_HW[1], steps=80)
    camera = FrameCamera.similarity(180, 240, SENSOR_HW, scale=0.5, angle_deg=3.0, shift_px=(2.0, -1.5))
    pairs = []
    for seed in (0, 1):
        shared = simulate_sweep(rig, SensorConfig(), np.random.default_rng(seed)).to_job(0)
        other = simulate_sweep(rig, SensorConfig(), np.random.default_rng(seed), camera=camera).to_job(0)
        pairs.append((shared, other))
    return camera, pairs


def test_a_calibrated_camera_of_another_size_gains_what_a_registered_one_does(two_rigs):
    camera, pairs = two_rigs
    for shared, other in pairs:
        assert other.frame.shape == (180, 240, 3) and not other.registered
        np.testing.assert_array_equal(shared.events, other.events)
        result, _ = run_pipeline_with_info(other)
        assert result.all_in_focus.shape == other.frame.shape  # the frame's geometry, not the sensor's
        assert result.depth.shape == result.refocus_map.shape == other.frame.shape[:2]
        # compared where the event sensor sees the frame's pixels (3 deg of rotation puts the
        # frame's corners outside it: there nothing is known and the frame is passed through)
        inside = _seen_by_sensor(camera, margin=3)
        truth = other.ground_truth_aif[inside]
        gain_other = psnr(result.all_in_focus[inside], truth) - psnr(other.frame[inside], truth)
        outside = ~_seen_by_sensor(camera, margin=-1)
        np.testing.assert_allclose(result.all_in_focus[outside], other.frame[outside], atol=1e-5)
        reference, _ = run_pipeline_with_info(shared)
        gain_shared = psnr(reference.all_in_focus, shared.ground_truth_aif) - \
            psnr(shared.frame, shared.ground_truth_aif)
        assert gain_shared > 1.0  # the events do refocus this scene
        assert gain_other > gain_shared - 0.5, (gain_other, gain_shared)
        # depth is judged about as often as on the registered rig, in the frame's pixels
        covered = np.isfinite(result.depth)[inside].mean()
        assert covered > 0.5 * np.isfinite(reference.depth).mean() > 0


def test_the_wrong_homography_loses_the_gain(two_rigs):
    """The registration really is used: the identity-free but wrong warp (no rotation, no
    shift) refocuses the wrong pixels."""
    camera, pairs = two_rigs
    shared, other = pairs[0]
    wrong = FrameCamera.similarity(180, 240, SENSOR_HW, scale=0.5, angle_deg=0.0)
    good, _ = run_pipeline_with_info(other)
    off, _ = run_pipeline_with_info(_with_homography(other, wrong.homography()))
    truth = other.ground_truth_aif
    assert psnr(off.all_in_focus, truth) < psnr(good.all_in_focus, truth) - 1.0


def _seen_by_sensor(camera: FrameCamera, margin: float) -> np.ndarray:
    """Frame pixels that land at least `margin` event pixels inside the sensor."""
    yy, xx = np.mgrid[0:camera.height, 0:camera.width]
    p = camera.homography() @ np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    ex, ey = (p[:2] / p[2]).reshape(2, camera.height, camera.width)
    h, w = SENSOR_HW
    return (ex >= margin) & (ex <= w - 1 - margin) & (ey >= margin) & (ey <= h - 1 - margin)


def _with_homography(job, h):
    from dataclasses import replace

    return replace(job, frame_to_events=h)


def test_assembler_refuses_another_frame_size_without_a_calibration_naming_what_is_missing():
    asm = JobAssembler(AssemblerConfig(width=128, height=96))
    frame = np.zeros((180, 240, 3), np.uint8)
    assert not asm.add_frame(1_000_000_000, frame, "rgb8")
    assert "needs a rig calibration file with frame_to_events" in asm.faults[-1]
    assert "\n" not in asm.faults[-1]
    camera = FrameCamera.similarity(180, 240, SENSOR_HW, 0.5, 3.0)
    calibrated = RigCalibration(frame_to_events=camera.frame_to_events)
    asm = JobAssembler(AssemblerConfig(width=128, height=96, calibration=calibrated))
    assert asm.add_frame(1_000_000_000, frame, "rgb8")
    assert RigCalibration(frame_to_events=IDENTITY).registered


@pytest.mark.parametrize("encoding, dtype, shape", [
    ("bayer_rggb8", np.uint8, (96, 128)), ("mono16", np.uint16, (96, 128)),
    ("rgb16", np.uint16, (96, 128, 3)),
])
def test_assembler_takes_frames_as_cameras_send_them(encoding, dtype, shape):
    from efs_ros.core.images import array_to_image

    asm = JobAssembler(AssemblerConfig(width=128, height=96))
    pixels = np.random.default_rng(0).integers(0, np.iinfo(dtype).max // 2, shape).astype(dtype)
    msg = array_to_image(pixels, encoding)
    assert asm.add_frame_message(1_000_000_000, msg.width, msg.height, msg.encoding, msg.step, msg.data,
                                 msg.is_bigendian), asm.faults
    bad = array_to_image(pixels, encoding)
    assert not asm.add_frame_message(2_000_000_000, bad.width, bad.height, "bayer_xyzw8", bad.step, bad.data)
    assert "bayer_xyzw8" in asm.faults[-1]


def test_the_homography_is_recovered_from_one_sweeps_edges(two_rigs):
    """Groundwork for `efs_calibrate registration`: ECC between the sweep's event edge map and
    the frame's edges, from the centred guess a beam-splitter rig starts at. Measured 0.3-0.8 px
    mean reprojection error from one sweep at 240x180 (the issue's target is 0.5 px: not yet)."""
    from efs_ros.core.registration import (
        centred_similarity,
        estimate_frame_to_events,
        event_edge_map,
        frame_edge_map,
        reprojection_error_px,
    )

    camera, pairs = two_rigs
    _, other = pairs[0]
    guess = centred_similarity(other.frame.shape[:2], SENSOR_HW)
    before = reprojection_error_px(guess, camera.homography(), other.frame.shape[:2])
    h, corr = estimate_frame_to_events(event_edge_map(other.events, SENSOR_HW), frame_edge_map(other.frame),
                                       guess)
    after = reprojection_error_px(h, camera.homography(), other.frame.shape[:2])
    assert before > 3.0 and after < 1.0 and after < before / 4, (before, after)
    assert 0.5 < corr <= 1.0
