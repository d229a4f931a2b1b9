"""Sensor -> ROS time: trigger pairs, and the lower envelope of late packet stamps."""
import numpy as np
import pytest

from efs_ros.core.events import TRIGGER_DTYPE
from efs_ros.core.timesync import ClockSync, SyncConfig, lower_envelope_line

ROS0 = 1_700_000_000_000_000_000
T0_US = 16_000_000  # near the EVT3 wrap: unwrapped sensor times keep growing past 2^24


def packet_stream(rng, n, drift_ppm, delay_ms=(0.0, 5.0), t0_us=T0_US, ros0=ROS0):
    """First-event sensor times, their true host times and arrival stamps (in order, 0..5 ms late)."""
    first_us = t0_us + np.cumsum(rng.integers(500, 1500, n))
    true_ns = ros0 + np.rint((first_us - t0_us) * 1000.0 * (1 + drift_ppm * 1e-6)).astype(np.int64)
    stamps = true_ns + rng.uniform(delay_ms[0] * 1e6, delay_ms[1] * 1e6, n).astype(np.int64)
    return first_us, true_ns, np.maximum.accumulate(stamps)


def feed(sync, first_us, stamps):
    for f, s in zip(first_us.tolist(), stamps.tolist(), strict=True):
        sync.add_packet(f, s)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stamp_fit_within_half_a_millisecond_after_a_few_hundred_packets(seed):
    rng = np.random.default_rng(seed)
    first_us, true_ns, stamps = packet_stream(rng, 400, drift_ppm=80.0)
    sync = ClockSync()
    feed(sync, first_us, stamps)
    fit = sync.fit()
    assert fit.source == "stamps"
    err_ms = (fit.to_ros_ns(first_us) - true_ns) / 1e6
    # the raw stamps are off by 2.5 ms on average: the envelope must do far better
    assert np.abs(err_ms).max() < 0.5
    assert np.mean((stamps - true_ns) / 1e6) > 2.0


def test_stamp_fit_estimates_drift_over_a_long_window():
    rng = np.random.default_rng(5)
    first_us, true_ns, stamps = packet_stream(rng, 9000, drift_ppm=-90.0)  # about 9 s
    sync = ClockSync(SyncConfig(window_s=10.0))
    feed(sync, first_us, stamps)
    fit = sync.fit()
    assert abs(fit.drift_ppm - (-90.0)) < 30.0
    err_ms = (fit.to_ros_ns(first_us) - true_ns) / 1e6
    assert np.abs(err_ms).max() < 0.2


def test_fit_as_of_a_time_ignores_later_packets():
    """A job's conversion must not depend on how far the stream had got when it was formed."""
    rng = np.random.default_rng(3)
    first_us, _, stamps = packet_stream(rng, 3000, drift_ppm=50.0)
    at = int(stamps[1500])
    early, late = ClockSync(), ClockSync()
    feed(early, first_us[:1501], stamps[:1501])
    feed(late, first_us, stamps)
    a, b = early.fit(at), late.fit(at)
    probe = first_us[::100]
    np.testing.assert_array_equal(a.to_ros_ns(probe), b.to_ros_ns(probe))
    # and a later query does use the newer packets
    assert late.fit().n_points != a.n_points


def test_relative_us_matches_to_ros_ns():
    rng = np.random.default_rng(4)
    first_us, _, stamps = packet_stream(rng, 500, drift_ppm=30.0)
    sync = ClockSync()
    feed(sync, first_us, stamps)
    fit = sync.fit()
    origin = int(stamps[250])
    rel = fit.relative_us(first_us, origin)
    expected = np.rint((fit.to_ros_ns(first_us) - origin) / 1000.0).astype(np.int64)
    assert np.abs(rel - expected).max() <= 1


def test_sensor_clock_jump_resets_the_stamp_fit():
    rng = np.random.default_rng(6)
    first_us, true_ns, stamps = packet_stream(rng, 600, drift_ppm=0.0)
    sync = ClockSync()
    feed(sync, first_us[:300], stamps[:300])
    # the camera restarts: its clock goes back to an arbitrary value, host time carries on
    jumped = first_us[300:] - first_us[300] + 1_000
    feed(sync, jumped, stamps[300:])
    assert sync.stats.stamp_resets == 1
    assert "sensor time went back" in sync.stats.last_reset_reason
    fit = sync.fit()
    err_ms = (fit.to_ros_ns(jumped) - true_ns[300:]) / 1e6
    assert np.abs(err_ms).max() < 1.0


def test_sensor_clock_jump_forward_is_caught_by_stamps_arriving_too_early():
    rng = np.random.default_rng(7)
    first_us, true_ns, stamps = packet_stream(rng, 600, drift_ppm=0.0)
    sync = ClockSync()
    shifted = first_us.copy()
    shifted[300:] += 2_000_000  # sensor clock leaps 2 s ahead, host time does not
    feed(sync, shifted, stamps)
    assert sync.stats.stamp_resets == 1
    assert "before its first event" in sync.stats.last_reset_reason
    err_ms = (sync.fit().to_ros_ns(shifted[300:]) - true_ns[300:]) / 1e6
    assert np.abs(err_ms).max() < 1.0


def test_lower_envelope_with_a_fixed_slope_is_the_least_delayed_point():
    x = np.array([0, 1000, 2000, 3000], dtype=np.int64)
    y = np.array([5_000_000, 6_100_000, 7_000_000, 8_300_000], dtype=np.int64) + ROS0
    ref_x, ref_y, offset, slope = lower_envelope_line(x, y, 100.0, fixed_slope=1000.0)
    assert slope == 1000.0
    line = (ref_y - ROS0) + offset + slope * (x - ref_x)
    assert np.all(line <= y - ROS0)
    assert np.min(y - ROS0 - line) == 0


def triggers_for(mids_us, exposure_us):
    tr = np.zeros(2 * mids_us.size, TRIGGER_DTYPE)
    tr["t"][0::2] = mids_us - exposure_us // 2
    tr["t"][1::2] = mids_us + exposure_us // 2
    tr["value"][0::2] = 1
    return tr


def test_trigger_pairs_give_exact_time_and_survive_a_lost_frame():
    rng = np.random.default_rng(8)
    drift = 60.0
    first_us, _, stamps = packet_stream(rng, 2500, drift_ppm=drift)
    mids = T0_US + 20_000 + np.arange(70) * 33_333
    frame_ns = ROS0 + np.rint((mids - T0_US) * 1000.0 * (1 + drift * 1e-6)).astype(np.int64)
    tr = triggers_for(mids, 4000)
    sync = ClockSync()
    k = 0
    for f, s in zip(first_us.tolist(), stamps.tolist(), strict=True):
        # each packet carries the trigger edges that happened since the previous one
        j = np.searchsorted(tr["t"], f, side="right")
        sync.add_packet(f, s, tr[k:j])
        k = j
    lost = 40
    for i, stamp in enumerate(frame_ns.tolist()):
        if i != lost:
            sync.add_frame(stamp)
    assert sync.stats.matched_pairs == 69
    assert sync.stats.unmatched_pairs == 1
    fit = sync.fit()
    assert fit.source == "triggers"
    assert abs(fit.drift_ppm - drift) < 2.0
    err_us = (fit.to_ros_ns(mids) - frame_ns) / 1e3
    assert np.abs(err_us).max() < 2.0
    assert sync.exposure_s(int(frame_ns[10])) == pytest.approx(0.004, rel=1e-3)
    assert sync.exposure_s(int(frame_ns[lost])) == 0.0


@pytest.mark.parametrize("start_value", [1, 0])
def test_inverted_strobes_pair_with_the_calibrated_start_value(start_value):
    """A strobe that idles high marks exposure start with a falling edge (value 0): told so
    (rig calibration trigger_exposure_start_value), the pairs and exposure are the same; told
    the wrong polarity, every pair spans the gap between exposures instead."""
    rng = np.random.default_rng(9)
    first_us, _, stamps = packet_stream(rng, 1500, drift_ppm=0.0)
    mids = T0_US + 20_000 + np.arange(40) * 33_333
    frame_ns = ROS0 + np.rint((mids - T0_US) * 1000.0).astype(np.int64)
    tr = triggers_for(mids, 4000)
    if start_value == 0:
        tr["value"] = 1 - tr["value"]

    def run(value):
        sync = ClockSync(SyncConfig(trigger_start_value=value))
        k = 0
        for f, s_ in zip(first_us.tolist(), stamps.tolist(), strict=True):
            j = np.searchsorted(tr["t"], f, side="right")
            sync.add_packet(f, s_, tr[k:j])
            k = j
        for stamp in frame_ns.tolist():
            sync.add_frame(stamp)
        return sync

    right = run(start_value)
    assert right.stats.matched_pairs == 40
    assert right.exposure_s(int(frame_ns[5])) == pytest.approx(0.004, rel=1e-3)
    wrong = run(1 - start_value)
    wrong_exposure = wrong.exposure_s(int(frame_ns[5]))
    assert wrong.stats.matched_pairs < 40 or wrong_exposure != pytest.approx(0.004, rel=0.1)


def test_orphan_trigger_edges_are_counted_not_paired():
    sync = ClockSync()
    tr = np.zeros(3, TRIGGER_DTYPE)
    tr["t"] = [T0_US, T0_US + 10, T0_US + 4000]
    tr["value"] = [0, 1, 1]  # a falling edge first, then two rising edges
    sync.add_packet(T0_US, ROS0, tr)
    assert sync.stats.orphan_edges == 2
    assert sync.stats.trigger_pairs == 0


def test_frames_without_any_trigger_wiring_stay_bounded_and_uncounted():
    sync = ClockSync(SyncConfig(max_waiting=16))
    sync.add_packet(T0_US, ROS0)
    for k in range(200):
        sync.add_frame(ROS0 + k * 33_000_000)
    assert len(sync.triggers._frames) == 16
    assert sync.stats.unmatched_frames == 0  # no pairs ever: not a fault
    assert sync.fit().source == "stamps"
