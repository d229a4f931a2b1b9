"""Turning points and complete sweeps from a noisy, dwelling lens stream."""
import numpy as np
import pytest

from efs_ros.core.sweeps import SweepConfig, SweepTracker, find_sweeps, focus_from_joint_state

RATE_HZ = 250.0
DWELL_S = 0.1
RAMP_S = 0.4
LO, HI = 0.5, 4.5


def lens(t_s):
    """Triangle with dwells: up for RAMP_S, DWELL_S at HI, down for RAMP_S, DWELL_S at LO."""
    period = 2 * (RAMP_S + DWELL_S)
    ph = np.mod(t_s, period)
    up = np.clip(ph / RAMP_S, 0, 1)
    down = np.clip((ph - RAMP_S - DWELL_S) / RAMP_S, 0, 1)
    return LO + (HI - LO) * (up - down)


def true_dwells(t_end, phase):
    """(start, end, kind) of every dwell in [0, t_end) for lens(t + phase)."""
    period = 2 * (RAMP_S + DWELL_S)
    out = []
    for k in range(-1, int(t_end / period) + 2):
        base = k * period - phase
        out.append((base + RAMP_S, base + RAMP_S + DWELL_S, +1))
        out.append((base + 2 * RAMP_S + DWELL_S, base + period, -1))
    return [d for d in out if d[0] > 0 and d[1] < t_end]


def stream(duration_s=4.2, phase=0.3, noise=0.003, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(0, duration_s, 1 / RATE_HZ)
    v = lens(t + phase) + rng.normal(0, noise, t.size)
    return (t * 1e9).astype(np.int64), v


@pytest.mark.parametrize("seed", [0, 1])
def test_turning_points_and_sweeps_follow_the_trend_through_noise_and_dwells(seed):
    stamps, v = stream(seed=seed)
    sweeps, tps = find_sweeps(stamps, v)
    dwells = true_dwells(4.2, 0.3)
    # the first dwell at t = 0.1 s is a real turn (the lens was rising before it)
    assert [tp.kind for tp in tps] == [d[2] for d in dwells]
    step_ns = 1e9 / RATE_HZ
    for tp, (d0, d1, kind) in zip(tps, dwells, strict=True):
        assert d0 * 1e9 - 3 * step_ns <= tp.t_ns <= d1 * 1e9 + 3 * step_ns
        assert abs(tp.dwell_start_ns - d0 * 1e9) <= 3 * step_ns
        assert abs(tp.dwell_end_ns - d1 * 1e9) <= 3 * step_ns
        assert tp.value_dpt == pytest.approx(HI if kind > 0 else LO, abs=0.02)
    assert len(sweeps) == len(dwells) - 1
    for sweep, a, b in zip(sweeps, dwells[:-1], dwells[1:], strict=True):
        assert abs(sweep.start_ns - a[1] * 1e9) <= 3 * step_ns  # leaves one dwell ...
        assert abs(sweep.end_ns - b[0] * 1e9) <= 3 * step_ns  # ... reaches the next
        assert sweep.direction == b[2]
        inside = (stamps >= sweep.start_ns) & (stamps <= sweep.end_ns)
        # monotonic over the sweep up to the noise
        assert np.all(np.diff(lens(stamps[inside] / 1e9 + 0.3)) * sweep.direction >= -1e-12)


def test_noise_alone_makes_no_turning_point():
    rng = np.random.default_rng(2)
    t = (np.arange(2000) * 4e6).astype(np.int64)
    sweeps, tps = find_sweeps(t, 2.0 + rng.normal(0, 0.005, t.size))
    assert tps == [] and sweeps == []


def test_single_sample_spikes_do_not_make_turns():
    stamps, v = stream(seed=3)
    v = v.copy()
    v[100::97] += 0.3  # glitches far above the hysteresis, one sample each
    _, tps_clean = find_sweeps(*stream(seed=3))
    _, tps = find_sweeps(stamps, v)
    assert [tp.kind for tp in tps] == [tp.kind for tp in tps_clean]


def test_incremental_equals_batch():
    stamps, v = stream(seed=4)
    batch_sweeps, batch_tps = find_sweeps(stamps, v)
    tracker = SweepTracker()
    rng = np.random.default_rng(0)
    i = 0
    live = []
    while i < stamps.size:
        n = int(rng.integers(1, 40))
        live += tracker.add_many(stamps[i:i + n], v[i:i + n])
        i += n
    assert live == batch_sweeps
    assert tracker.turning_points == batch_tps


def test_classify_frames_in_sweeps_dwells_before_first_turn_and_in_progress():
    stamps, v = stream(duration_s=2.5, phase=0.3)
    tracker = SweepTracker()
    tracker.add_many(stamps, v)
    first, second = tracker.sweeps[0], tracker.sweeps[1]
    mid = (first.start_ns + first.end_ns) // 2
    assert tracker.classify(mid) == ("sweep", first)
    assert tracker.classify(int(0.05e9))[0] == "none"  # before the first turning point
    dwell = tracker.turning_points[1]
    assert tracker.classify((dwell.dwell_start_ns + dwell.dwell_end_ns) // 2)[0] == "none"
    assert tracker.classify(int(stamps[-1]) - int(0.01e9))[0] == "pending"  # sweep not ended
    assert tracker.classify(int(stamps[-1]) + int(1e9))[0] == "pending"  # no lens data yet
    assert second.start_ns > first.end_ns


def test_a_gap_in_the_lens_stream_breaks_the_sweep_chain():
    stamps, v = stream(duration_s=4.2)
    keep = (stamps < 1.2e9) | (stamps > 1.5e9)  # 300 ms of silence inside a sweep
    sweeps_gap, _ = find_sweeps(stamps[keep], v[keep], SweepConfig(max_gap_ms=100))
    sweeps_all, _ = find_sweeps(stamps, v)
    tracker = SweepTracker(SweepConfig(max_gap_ms=100))
    tracker.add_many(stamps[keep], v[keep])
    assert tracker.gaps == 1
    for s in sweeps_gap:
        assert not (s.start_ns < 1.2e9 < s.end_ns or s.start_ns < 1.5e9 < s.end_ns)
    assert len(sweeps_gap) < len(sweeps_all)


def test_out_of_order_and_nan_readings_are_counted_and_ignored():
    tracker = SweepTracker()
    tracker.add(1000, 1.0)
    tracker.add(900, 1.0)
    tracker.add(2000, float("nan"))
    assert tracker.out_of_order == 1 and tracker.rejected == 1 and tracker.samples == 1


def test_focus_between_returns_raw_samples_of_a_sweep():
    stamps, v = stream(duration_s=2.5)
    tracker = SweepTracker()
    tracker.add_many(stamps, v)
    s = tracker.sweeps[0]
    t, d = tracker.focus_between(s.start_ns, s.end_ns)
    assert t[0] == s.start_ns and t[-1] == s.end_ns
    np.testing.assert_array_equal(d, v[(stamps >= s.start_ns) & (stamps <= s.end_ns)])


def test_sweeps_of_the_simulated_rig_match_its_truth():
    from efs_ros.sim.rig import RigConfig, simulate_recording
    from efs_ros.sim.sensor import SensorConfig

    rig = RigConfig(height=16, width=16, steps=60, dwell_s=0.02)
    rec = simulate_recording(rig, SensorConfig(model="ideal"), np.random.default_rng(3), n_sweeps=4,
                             frame_rate_hz=30)
    sweeps, _ = find_sweeps(rec.lens_t_us * 1000, rec.lens_dpt)
    assert len(sweeps) == len(rec.sweeps_us)
    lens_step_ns = 1e9 / rig.lens_rate_hz
    for s, (a, b), d in zip(sweeps, rec.sweeps_us, rec.sweep_direction, strict=True):
        assert abs(s.start_ns - a * 1000) <= 3 * lens_step_ns
        assert abs(s.end_ns - b * 1000) <= 3 * lens_step_ns
        assert s.direction == d


def test_focus_from_joint_state():
    assert focus_from_joint_state(["pan", "focus"], [0.1, 2.5], [0.0, -3.0]) == (2.5, -3.0)
    pos, vel = focus_from_joint_state([], [1.5])
    assert pos == 1.5 and np.isnan(vel)
    assert focus_from_joint_state(["zoom"], [1.0]) is None
