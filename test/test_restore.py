"""The restoration net's input planes (core.restore) and its place in the pipeline."""
from __future__ import annotations

import numpy as np
import pytest
from test_pipeline import synthetic_sweep

from efs_ros.core.events import EVENT_DTYPE
from efs_ros.core.pipeline import PipelineConfig, run_pipeline_with_info
from efs_ros.core.refocus import DEFAULT_RESPONSE
from efs_ros.core.restore import (
    COUNT_SCALE,
    FEATURE_CHANNELS,
    NEAR_FOCUS_FRACTION,
    restore_features,
    restored_image,
)


def _events(rows):
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for i, (t_us, x, y, p) in enumerate(rows):
        ev[i] = (t_us, x, y, p)
    return ev


@pytest.fixture(scope="module")
def tiny_job():
    return synthetic_sweep(48, 48)[0]


FOCUS_T = np.array([-0.05, 0.05])
FOCUS_DPT = np.array([0.0, 4.0])  # frame at t = 0 sees 2 dpt; 4 dpt of sweep


def test_planes_hold_the_counts_each_pixel_was_refocused_with():
    h, w = 2, 3
    t_map = np.array([[0.02, -0.03, 0.0], [0.05, -0.05, 0.01]], np.float32)
    ev = _events([
        (10_000, 0, 0, 1), (15_000, 0, 0, 1), (30_000, 0, 0, -1),  # (0,0), own time +20 ms
        (-20_000, 1, 0, -1), (-40_000, 1, 0, 1),                  # (0,1), own time -30 ms
        (5_000, 2, 0, 1),                                         # (0,2), own time 0
    ])
    frame = np.full((h, w, 3), 0.5, np.float32)
    classical = np.full((h, w, 3), 0.25, np.float32)
    conf = np.full((h, w), 0.7, np.float32)
    f = restore_features(frame, classical, t_map, conf, ev, FOCUS_T, FOCUS_DPT)
    assert f.shape == (FEATURE_CHANNELS, h, w) and f.dtype == np.float32
    np.testing.assert_allclose(f[0:3], DEFAULT_RESPONSE.forward(np.full((3, h, w), 0.5, np.float32)))
    np.testing.assert_allclose(f[3:6], DEFAULT_RESPONSE.forward(np.full((3, h, w), 0.25, np.float32)))
    # relative vergence: (v(t) - v(0)) / 4 dpt, v(t) = 2 + 40 t
    np.testing.assert_allclose(f[6], 40.0 * t_map / 4.0, atol=1e-6)
    # (0,0): +1 +1 before its time; the -1 at 30 ms is after it. (0,1): the -1 at -20 ms lies
    # between its time and the frame and is undone (+1); the +1 at -40 ms is before its time.
    # (0,2): own time = frame time, nothing to add.
    np.testing.assert_allclose(f[7, 0], COUNT_SCALE * np.array([2.0, 1.0, 0.0]))
    half_us = NEAR_FOCUS_FRACTION * 0.1 * 1e6  # 5 ms
    assert half_us == pytest.approx(5000)
    # near own time (+-5 ms): (0,0) the ON events at 15 ms; (0,1) the OFF at -20 ms is 10 ms away
    np.testing.assert_allclose(f[8, 0], COUNT_SCALE * np.array([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(f[9, 0], 0.0)
    np.testing.assert_allclose(f[10, 0], np.log1p([3.0, 2.0, 1.0]))
    np.testing.assert_allclose(f[11], 0.7)
    assert not f[7:11, 1].any()  # the second row has no events


def test_grey_frames_run_as_grey_rgb_and_come_back_grey():
    frame = np.linspace(0.1, 0.9, 12, dtype=np.float32).reshape(3, 4)
    no_events = np.zeros(0, EVENT_DTYPE)
    f = restore_features(frame, frame, np.zeros((3, 4), np.float32), np.ones((3, 4)), no_events,
                         FOCUS_T, FOCUS_DPT)
    np.testing.assert_allclose(f[0], f[2])
    out = restored_image(f[3:6], frame)
    assert out.shape == frame.shape
    np.testing.assert_allclose(out, frame, rtol=1e-5)


def test_pipeline_applies_the_restore_net_to_the_classical_image(tiny_job):
    classical, _ = run_pipeline_with_info(tiny_job)
    seen = {}

    def identity(features):
        seen["shape"] = features.shape
        return features[3:6]

    same, _ = run_pipeline_with_info(tiny_job, PipelineConfig(restore_net=identity))
    assert seen["shape"] == (FEATURE_CHANNELS, tiny_job.height, tiny_job.width)
    np.testing.assert_allclose(same.all_in_focus, classical.all_in_focus, atol=2e-5)
    assert "restore" in same.timings_ms

    def brighter(features):
        return features[3:6] + np.float32(np.log(1.1))

    lifted, _ = run_pipeline_with_info(tiny_job, PipelineConfig(restore_net=brighter))
    bright = classical.all_in_focus > 0.3  # log part of the response, away from the clip
    expected = np.minimum(1.1 * classical.all_in_focus[bright], 1.0)
    np.testing.assert_allclose(lifted.all_in_focus[bright], expected, rtol=1e-4)
    with pytest.raises(ValueError, match="restore_net"):
        run_pipeline_with_info(tiny_job, PipelineConfig(restore_net=identity, merge="focus"))
