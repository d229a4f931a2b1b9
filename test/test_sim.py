"""Focal-sweep simulator: thin-lens optics, layered rendering, event sensor models, the rig."""
import numpy as np
import pytest
from scipy import ndimage

from efs_ros.core.events import EVENT_DTYPE, TRIGGER_DTYPE
from efs_ros.core.job import SweepJob
from efs_ros.sim import (
    EventSensor,
    FocalRenderer,
    RigConfig,
    Scene,
    SensorConfig,
    ThinLens,
    disk_kernel,
    exposure_weights,
    fronto_scene,
    lin_log,
    make_scene,
    render,
    sample_texture,
    simulate_events,
    simulate_recording,
    simulate_sweep,
    texture_pool,
)

H = W = 96
LENS = ThinLens.default(256)  # blur radius up to ~10 px even on these small test images


def grad_energy(img):
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3:
        img = img.mean(axis=2)
    gy, gx = np.gradient(img)
    return gx ** 2 + gy ** 2


def two_layer_scene(seed=0, v_bg=0.9, v_fg=2.6):
    """Gravel background, grass foreground over the left half: fine textures, known depths."""
    rng = np.random.default_rng(seed)
    bg, _ = sample_texture(rng, H, W, name="gravel.png")
    fg, _ = sample_texture(rng, H, W, name="grass.png")
    mask = np.zeros((H, W), np.float32)
    mask[:, : W // 2] = 1.0
    return fronto_scene([bg, fg], [1.0 / v_bg, 1.0 / v_fg], [np.ones((H, W), np.float32), mask])


FG_REGION = (slice(8, H - 8), slice(4, W // 2 - 14))
BG_REGION = (slice(8, H - 8), slice(W // 2 + 14, W - 4))


# ----------------------------------------------------------------------------------------------
# Optics

def test_coc_matches_image_side_geometry_and_vanishes_in_focus():
    lens = ThinLens(focal_length_m=0.1, f_number=1.2, pixel_pitch_m=2e-3)
    f, a = lens.focal_length_m, lens.aperture_m
    for focus in (0.5, 1.7, 3.5):
        for depth in (0.3, 0.8, 2.0, 10.0):
            s_img = 1.0 / (1.0 / f - focus)  # sensor distance for this focus
            d_img = 1.0 / (1.0 / f - 1.0 / depth)  # where the object converges
            expected = a * abs(s_img - d_img) / d_img / lens.pixel_pitch_m
            assert lens.coc_px(depth, focus) == pytest.approx(expected, rel=1e-9)
        assert lens.coc_px(1.0 / focus, focus) == pytest.approx(0.0, abs=1e-12)
    errors = np.linspace(0, 3, 31)
    c = lens.coc_px_dpt(0.5 + errors, 0.5)
    assert np.all(np.diff(c) > 0)


def test_default_lens_gives_about_ten_pixel_radius_at_256():
    lens = ThinLens.default(256)
    worst = float(lens.coc_px(1.0 / 0.5, 3.5)) / 2
    assert 8.0 <= worst <= 12.0
    scene_range = [float(lens.coc_px(d, f)) / 2 for d in (0.3, 2.0) for f in (0.5, 3.5)]
    assert 5.0 < max(scene_range) <= 12.0
    assert ThinLens.default(128).coc_px(2.0, 3.5) == pytest.approx(lens.coc_px(2.0, 3.5) / 2)


def test_render_of_one_layer_equals_direct_disk_convolution():
    tex, _ = sample_texture(np.random.default_rng(3), 64, 80, name="astronaut.png")
    scene = fronto_scene([tex], [1.0])
    lens = ThinLens(pixel_pitch_m=LENS.pixel_pitch_m)
    # Focus chosen so that the blur diameter is exactly 6 px (a cached grid point).
    focus = _solve_focus_for_diameter(lens, 1.0, 6.0)
    assert lens.coc_px_dpt(1.0, focus) == pytest.approx(6.0, abs=1e-6)
    out = render(scene, focus, lens)
    k = disk_kernel(6.0)
    ref = np.stack([ndimage.convolve(tex[..., c].astype(np.float64), k, mode="reflect")
                    for c in range(3)], -1)
    inner = (slice(8, -8), slice(8, -8))
    assert np.max(np.abs(out[inner] - ref[inner])) < 1e-4
    # In focus the layer comes out unchanged.
    assert np.max(np.abs(render(scene, 1.0, lens) - tex)) < 1e-4


def _solve_focus_for_diameter(lens, object_dpt, diameter_px):
    lo, hi = object_dpt, 1.0 / lens.focal_length_m - 1e-3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if lens.coc_px_dpt(object_dpt, mid) < diameter_px:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def test_blur_grows_with_vergence_error():
    scene = two_layer_scene()
    r = FocalRenderer(scene, LENS, (0.5, 3.5))
    sharp = grad_energy(scene.albedo[1])[FG_REGION].mean()
    energies = [grad_energy(r.render(f))[FG_REGION].mean() for f in (2.6, 2.2, 1.8, 1.2, 0.5)]
    assert energies[0] == pytest.approx(sharp, rel=1e-3)
    assert np.all(np.diff(energies) < 0)


def test_occluder_in_focus_keeps_its_texture_and_hides_the_background():
    scene = two_layer_scene()
    out = FocalRenderer(scene, LENS, (0.5, 3.5)).render(2.6)
    fg = scene.albedo[1]
    np.testing.assert_allclose(out[FG_REGION], fg[FG_REGION], atol=1e-4)
    # Far from the occluder the background is blurred (not equal to its texture).
    assert np.abs(out[BG_REGION] - scene.albedo[0][BG_REGION]).mean() > 1e-3


def test_luminance_render_matches_rgb_render():
    scene = make_scene(np.random.default_rng(4), 48, 64, "mixed")
    r = FocalRenderer(scene, LENS, (0.5, 3.5))
    rgb = r.render(1.3)
    lum = r.render_luminance(1.3)
    np.testing.assert_allclose(lum, rgb @ np.array([0.2126, 0.7152, 0.0722]), atol=1e-5)


def test_bad_optics_input_is_rejected():
    with pytest.raises(ValueError, match="positive"):
        ThinLens(focal_length_m=-1.0)
    with pytest.raises(ValueError, match="focal length"):
        LENS.coc_px(1.0, 20.0)
    r = FocalRenderer(two_layer_scene(), LENS, (0.5, 3.5))
    with pytest.raises(ValueError, match="outside"):
        r.render(5.0)


# ----------------------------------------------------------------------------------------------
# Scenes

@pytest.mark.parametrize("kind", ["layers", "slanted", "mixed"])
def test_scene_kinds_have_valid_layers_and_reproduce(kind):
    a = make_scene(np.random.default_rng(11), 40, 56, kind)
    b = make_scene(np.random.default_rng(11), 40, 56, kind)
    for name in ("albedo", "alpha", "depth_m"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.albedo.dtype == np.float32 and a.albedo.min() >= 0 and a.albedo.max() <= 1
    depth = a.depth_map()
    assert np.all(np.isfinite(depth)) and depth.min() >= 0.3 - 1e-5 and depth.max() <= 2.0 + 1e-5
    if kind == "layers":
        assert a.n_layers >= 2 and np.ptp(a.depth_m[0]) == 0
    if kind == "slanted":
        assert np.ptp(a.depth_m[0]) > 0.2
    # Layers come back to front: each occluder is nearer than the background.
    assert np.all(a.vergence()[1:].min(axis=(1, 2)) > a.vergence()[0].max())


def test_sky_has_no_depth():
    scene = make_scene(np.random.default_rng(2), 48, 48, "layers", sky=True)
    depth = scene.depth_map()
    assert np.isnan(depth).any() and np.isfinite(depth).any()
    aif = scene.all_in_focus()
    assert np.all(np.isfinite(aif))


def test_texture_pools_are_disjoint_and_respected():
    train, val = set(texture_pool("train")), set(texture_pool("val"))
    assert train and val and not train & val
    assert set(texture_pool("all")) == train | val
    assert any(not n.startswith("proc:") for n in val)
    for seed in range(4):
        scene = make_scene(np.random.default_rng(seed), 32, 32, "mixed", textures="val")
        assert set(scene.textures) <= val
    with pytest.raises(ValueError, match="textures"):
        texture_pool("test")


def test_scene_rejects_inconsistent_arrays():
    with pytest.raises(ValueError, match="disagree"):
        Scene(np.zeros((1, 4, 4, 3), np.float32), np.ones((1, 4, 5), np.float32),
              np.ones((1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="positive"):
        fronto_scene([np.zeros((4, 4, 3))], [0.0])


# ----------------------------------------------------------------------------------------------
# Sensor models

def random_walk_frames(rng, n_steps=60, shape=(24, 24)):
    """Per-pixel log-intensity random walks with large and small steps, as linear luminance."""
    steps = rng.normal(0, 0.25, (n_steps, *shape)) * rng.uniform(0, 1, (n_steps, 1, 1))
    log_i = np.log(0.3) + np.cumsum(steps, axis=0)
    return np.clip(np.exp(log_i), 0.1, 1.0)


def test_ideal_sensor_integrates_to_log_change_within_one_threshold():
    rng = np.random.default_rng(0)
    frames = random_walk_frames(rng)
    times = np.arange(frames.shape[0]) * 1000.0
    cfg = SensorConfig.ideal(0.15)
    ev = simulate_events(frames, times, cfg, np.random.default_rng(1))
    assert ev.size > 1000
    log = lin_log(frames * cfg.dn_scale)
    pix = ev["y"].astype(np.int64) * frames.shape[2] + ev["x"]
    for k in range(1, frames.shape[0], 7):
        upto = ev["t"] <= times[k]
        acc = np.bincount(pix[upto], weights=ev["p"][upto].astype(np.float64), minlength=frames[0].size)
        err = (log[k] - log[0]).ravel() - cfg.threshold_pos * acc
        assert np.max(np.abs(err)) <= cfg.threshold_pos * (1 + 1e-3)


def test_event_timestamps_are_interpolated_inside_steps():
    # One pixel ramps linearly in log intensity over one long step: crossings evenly spaced.
    frames = np.exp(np.array([0.0, 1.0]))[:, None, None] * np.full((2, 1, 1), 0.2)
    ev = simulate_events(frames, [0.0, 10000.0], SensorConfig.ideal(0.1), np.random.default_rng(0))
    assert ev.size == 10 and np.all(ev["p"] == 1)
    np.testing.assert_allclose(ev["t"], np.arange(1, 11) * 1000.0, atol=1.0)


def test_v2e_refractory_period_spaces_each_pixels_events():
    rng = np.random.default_rng(5)
    frames = random_walk_frames(rng, 40, (16, 16))
    cfg = SensorConfig.clean().with_(refractory_us=800.0, cutoff_hz=0.0)
    ev = simulate_events(frames, np.arange(40) * 1000.0, cfg, np.random.default_rng(2))
    assert ev.size > 200
    order = np.lexsort((ev["t"], ev["y"], ev["x"]))
    e = ev[order]
    same = (e["x"][1:] == e["x"][:-1]) & (e["y"][1:] == e["y"][:-1])
    gaps = np.diff(e["t"])[same]
    assert gaps.min() >= 800 - 1


def test_v2e_lowpass_delays_the_response():
    frames = np.concatenate([np.full((1, 4, 4), 0.1), np.full((30, 4, 4), 0.8)])
    times = np.arange(31) * 500.0
    fast = simulate_events(frames, times, SensorConfig.clean().with_(cutoff_hz=0.0, sigma_threshold=0.0),
                           np.random.default_rng(0))
    slow = simulate_events(frames, times, SensorConfig.clean().with_(cutoff_hz=50.0, sigma_threshold=0.0),
                           np.random.default_rng(0))
    assert fast.size and slow.size
    assert np.median(slow["t"]) > np.median(fast["t"]) + 1000


def test_leak_events_in_a_static_scene_match_the_rate():
    n_px, t_s, leak = 64 * 64, 20.0, 0.5
    frames = np.full((41, 64, 64), 0.4)
    times = np.linspace(0, t_s * 1e6, 41)
    cfg = SensorConfig.clean().with_(leak_hz=leak, shot_hz=0.0, cutoff_hz=0.0)
    ev = simulate_events(frames, times, cfg, np.random.default_rng(3))
    expected = n_px * leak * t_s
    assert abs(ev.size - expected) < 5 * np.sqrt(expected)
    assert np.all(ev["p"] == 1)  # leak only ever moves the reference down: ON events


def test_shot_noise_in_a_static_scene_matches_the_rate():
    n_steps, t_s = 51, 5.0
    lum = np.tile(np.linspace(0.0, 1.0, 48)[None, :], (48, 1))
    frames = np.broadcast_to(lum, (n_steps, 48, 48))
    times = np.linspace(0, t_s * 1e6, n_steps)
    cfg = SensorConfig.noisy().with_(leak_hz=0.0, shot_hz=2.0, cutoff_hz=0.0)
    ev = simulate_events(frames, times, cfg, np.random.default_rng(4))
    expected = float(cfg.shot_rate_hz(lum).sum() * t_s)
    assert abs(ev.size - expected) < 5 * np.sqrt(expected)
    on = np.count_nonzero(ev["p"] == 1)
    assert abs(on - ev.size / 2) < 5 * np.sqrt(ev.size / 4)
    # Brighter pixels are quieter (the dark half has the higher rate).
    dark = np.count_nonzero(ev["x"] < 24)
    assert dark > 1.3 * (ev.size - dark)


def test_voltmeter_static_drift_and_brightness_ramp():
    cfg = SensorConfig.dvs346()
    # Static: only the drift k4 + k5 L drives the voltage up: ON events at that rate.
    light_dn = 0.5 * cfg.dn_scale
    t_s = 10.0
    frames = np.full((21, 32, 32), 0.5)
    ev = simulate_events(frames, np.linspace(0, t_s * 1e6, 21), cfg, np.random.default_rng(0))
    per_px = ev.size / frames[0].size
    assert abs(per_px - (cfg.k4 + cfg.k5 * light_dn) * t_s * 1e6) < 1.0
    assert np.all(ev["p"] == 1)
    # Brightening then darkening: ON events, then OFF events, about k1 * dlog(L + k2) of each.
    up = np.linspace(0.1, 0.8, 11)
    ramp = np.concatenate([up, up[::-1][1:]])[:, None, None] * np.ones((1, 32, 32))
    times = np.arange(ramp.shape[0]) * 2000.0
    ev = simulate_events(ramp, times, cfg, np.random.default_rng(1))
    first = ev["t"] <= times[10]
    assert np.mean(ev["p"][first] == 1) > 0.95 and np.mean(ev["p"][~first] == -1) > 0.95
    expected = cfg.k1 * np.log((0.8 * cfg.dn_scale + cfg.k2) / (0.1 * cfg.dn_scale + cfg.k2))
    assert abs(np.count_nonzero(first) / 1024 - expected) < 1.0


def test_sensor_input_errors():
    cam = EventSensor(SensorConfig.clean(), 8, 8, np.random.default_rng(0))
    cam.reset(np.full((8, 8), 0.5), 100.0)
    with pytest.raises(ValueError, match="increase"):
        cam.step(np.full((8, 8), 0.5), 50.0)
    with pytest.raises(ValueError, match="shape"):
        cam.step(np.full((8, 9), 0.5), 200.0)
    with pytest.raises(ValueError, match="model"):
        SensorConfig(model="dvs9000")
    with pytest.raises(ValueError, match="threshold"):
        SensorConfig(threshold_pos=0.0)


def test_randomized_sensors_are_valid_and_reproducible():
    a = [SensorConfig.randomized(np.random.default_rng(s)) for s in range(8)]
    b = [SensorConfig.randomized(np.random.default_rng(s)) for s in range(8)]
    assert a == b
    assert {c.model for c in a} == {"v2e", "voltmeter"}


# ----------------------------------------------------------------------------------------------
# The rig: one sweep

def sweep_with_frame_at(v, sensor=None, seed=0, direction=1, **rig_kw):
    """A sweep of two_layer_scene whose frame is exposed when the lens is at v diopters."""
    frac = (v - 0.5) / (3.5 - 0.5)
    frac = frac if direction > 0 else 1.0 - frac
    rig = RigConfig(height=H, width=W, lens=LENS, steps=160, frame_fraction=(frac, frac), **rig_kw)
    sensor = sensor or SensorConfig.ideal()
    return simulate_sweep(rig, sensor, np.random.default_rng(seed), scene=two_layer_scene(),
                          direction=direction)


def test_frame_is_sharpest_where_its_focus_matches_a_layer():
    for v_focus, sharp, soft in ((2.6, FG_REGION, BG_REGION), (0.9, BG_REGION, FG_REGION)):
        sw = sweep_with_frame_at(v_focus)
        assert sw.focus_dpt[np.argmin(np.abs(sw.focus_t))] == pytest.approx(v_focus, abs=0.05)
        gt_e, fr_e = grad_energy(sw.gt_aif), grad_energy(sw.frame)
        keep_sharp = fr_e[sharp].mean() / gt_e[sharp].mean()
        keep_soft = fr_e[soft].mean() / gt_e[soft].mean()
        assert keep_sharp > 0.8 and keep_soft < 0.5 * keep_sharp


def test_events_concentrate_where_each_layer_comes_into_focus():
    sw = sweep_with_frame_at(2.0)
    ev = sw.events
    focus_at_event = np.interp(ev["t"] * 1e-6, sw.focus_t, sw.focus_dpt)
    bins = np.arange(0.5, 3.51, 0.25)
    for region, v_own, v_other in ((FG_REGION, 2.6, 0.9), (BG_REGION, 0.9, 2.6)):
        m = np.zeros((H, W), bool)
        m[region] = True
        f = focus_at_event[m[ev["y"], ev["x"]]]
        hist, _ = np.histogram(f, bins)
        peak = bins[np.argmax(hist)] + 0.125
        assert abs(peak - v_own) <= 0.5
        # Event density (per dpt of sweep) near the layer's own focus beats that near the other's.
        def density(v, f=f):
            lo, hi = max(v - 0.6, 0.5), min(v + 0.6, 3.5)
            return np.count_nonzero((f >= lo) & (f < hi)) / (hi - lo)

        assert density(v_own) > 1.5 * density(v_other)


def test_sweep_to_job_is_a_valid_sweep_job():
    sw = sweep_with_frame_at(1.5, sensor=SensorConfig.clean(), direction=-1)
    assert sw.direction == -1 and np.all(np.diff(sw.focus_dpt) < 0)
    job = sw.to_job(stamp_ns=1_700_000_000_123_456_789)
    assert isinstance(job, SweepJob)
    assert job.stamp_ns == 1_700_000_000_123_456_789
    assert job.frame.shape == (H, W, 3) and job.frame.dtype == np.float32
    assert 0.0 <= job.frame.min() and job.frame.max() <= 1.0
    assert job.events.dtype == EVENT_DTYPE and job.events.size > 0
    assert np.all(np.diff(job.events["t"]) >= 0)
    assert np.all(np.diff(job.focus_t) > 0)
    lo, hi = job.sweep_span_s
    assert lo < 0 < hi  # the frame lies inside its sweep
    assert job.events["t"].min() >= lo * 1e6 - 1 and job.events["t"].max() <= hi * 1e6 + 1
    assert job.ground_truth_aif.shape == (H, W, 3) and job.ground_truth_depth.shape == (H, W)
    assert job.exposure_s == pytest.approx(0.004)


def test_sweeps_reproduce_from_the_seed():
    rig = RigConfig(height=40, width=48, steps=60, scene_kind="mixed", read_noise=0.01, full_well=2000)
    runs = [simulate_sweep(rig, SensorConfig.noisy(), np.random.default_rng(s)) for s in (7, 7, 8)]
    a, b, c = runs
    np.testing.assert_array_equal(a.frame, b.frame)
    np.testing.assert_array_equal(a.events, b.events)
    np.testing.assert_array_equal(a.gt_depth, b.gt_depth)
    assert not np.array_equal(a.frame, c.frame)
    assert not np.array_equal(a.events, c.events)


def test_frame_noise_has_the_configured_size():
    clean = sweep_with_frame_at(1.5)
    noisy = sweep_with_frame_at(1.5, read_noise=0.02)
    diff = (noisy.frame - clean.frame)[(clean.frame > 0.1) & (clean.frame < 0.9)]
    assert np.std(diff) == pytest.approx(0.02, rel=0.1)


def test_exposure_weights_average_a_linear_signal():
    times = np.array([0.0, 1.0, 2.5, 4.0])
    x = 3.0 * times + 1.0
    for a, b in ((0.2, 0.7), (0.5, 3.9), (1.0, 2.5)):
        w = exposure_weights(times, a, b)
        assert w.sum() == pytest.approx(1.0)
        assert w @ x == pytest.approx(3.0 * (a + b) / 2 + 1.0)
    w = exposure_weights(times, 1.75, 1.75)
    assert w @ x == pytest.approx(3.0 * 1.75 + 1.0)


def test_rig_config_rejects_bad_values():
    with pytest.raises(ValueError, match="far_dpt"):
        RigConfig(near_dpt=0.5, far_dpt=3.5)
    with pytest.raises(ValueError, match="exposure"):
        RigConfig(exposure_s=0.5, sweep_s=0.1)
    with pytest.raises(ValueError, match="direction"):
        simulate_sweep(RigConfig(height=16, width=16, steps=4), SensorConfig.ideal(),
                       np.random.default_rng(0), direction=0)


# ----------------------------------------------------------------------------------------------
# The rig: a recording

@pytest.fixture(scope="module")
def recording():
    rig = RigConfig(height=48, width=64, steps=80, sweep_s=0.08, exposure_s=0.003, dwell_s=0.01,
                    lens_rate_hz=400)
    return simulate_recording(rig, SensorConfig.clean(), np.random.default_rng(21), n_sweeps=5,
                              frame_rate_hz=40.0, start_us=2 ** 24 - 150_000)


def test_recording_sweeps_are_monotonic_between_turning_points(recording):
    rec = recording
    rig = rec.rig
    assert rec.sweeps_us.shape == (5, 2)
    assert list(rec.sweep_direction) == [1, -1, 1, -1, 1]
    for (a, b), d in zip(rec.sweep_steps, rec.sweep_direction, strict=True):
        seg = rec.focus_dpt[a:b + 1]
        assert np.all(d * np.diff(seg) > 0)
        assert {seg[0], seg[-1]} == {rig.far_dpt, rig.near_dpt}
    # The lens dwells at the ends between sweeps, and the timeline starts and ends mid-sweep.
    assert rec.focus_dpt[0] not in (rig.far_dpt, rig.near_dpt)
    assert rec.focus_dpt[-1] not in (rig.far_dpt, rig.near_dpt)
    for (_, b), (a, _) in zip(rec.sweep_steps[:-1], rec.sweep_steps[1:], strict=True):
        assert a - b == rec.meta["dwell_steps"]
        assert np.ptp(rec.focus_dpt[b:a + 1]) == 0


def test_recording_lens_samples(recording):
    rec = recording
    assert np.all(np.diff(rec.lens_t_us) > 0) and np.diff(rec.lens_t_us).max() <= 1e6 / 200
    true = np.interp(rec.lens_t_us, rec.focus_t_us, rec.focus_dpt)
    err = rec.lens_dpt - true
    assert 0.001 < np.std(err) < 0.006
    rate = (rec.rig.near_dpt - rec.rig.far_dpt) / rec.rig.sweep_s
    assert set(np.round(np.unique(np.abs(rec.lens_velocity)) / rate, 6)) <= {0.0, 1.0}


def test_recording_triggers_bracket_frames(recording):
    rec = recording
    n = rec.frames.shape[0]
    assert n >= 15 and rec.triggers.dtype == TRIGGER_DTYPE and rec.triggers.size == 2 * n
    rise, fall = rec.triggers[0::2], rec.triggers[1::2]
    assert np.all(rise["value"] == 1) and np.all(fall["value"] == 0) and np.all(rec.triggers["channel"] == 0)
    assert np.all(rise["t"] < rec.frame_t_us) and np.all(rec.frame_t_us < fall["t"])
    np.testing.assert_allclose(fall["t"] - rise["t"], rec.exposure_s * 1e6, atol=1)
    assert np.all(np.diff(rec.triggers["t"]) > 0)
    assert rec.frames.dtype == np.float32 and rec.gt_aif.shape == rec.frames.shape
    assert rec.gt_depth.shape == rec.frames.shape[:3]


def test_recording_events_are_sorted_and_cross_the_clock_wrap(recording):
    rec = recording
    t = rec.events["t"]
    assert rec.events.dtype == EVENT_DTYPE and t.dtype == np.int64
    assert np.all(np.diff(t) >= 0)
    assert t.min() < 2 ** 24 < t.max()
    assert rec.start_us == 2 ** 24 - 150_000 and t.min() >= rec.start_us
    assert rec.frame_t_us.min() < 2 ** 24 < rec.frame_t_us.max()


def test_recording_frames_map_to_sweeps_and_give_valid_jobs(recording):
    rec = recording
    inside = np.flatnonzero(rec.frame_sweep >= 0)
    outside = np.flatnonzero(rec.frame_sweep < 0)
    assert inside.size >= 10 and outside.size >= 1
    for i in outside:  # before the first sweep, after the last, or in a dwell
        t = rec.frame_t_us[i]
        assert not np.any((rec.sweeps_us[:, 0] < t) & (t < rec.sweeps_us[:, 1]))
    job = rec.reference_job(int(inside[3]), stamp_ns=123)
    assert job.focus_t[0] < 0 < job.focus_t[-1]
    d = rec.sweep_direction[rec.frame_sweep[inside[3]]]
    assert np.all(d * np.diff(job.focus_dpt) > 0)
    assert job.events.size and np.all(np.diff(job.events["t"]) >= 0)
    with pytest.raises(ValueError, match="not inside"):
        rec.reference_job(int(outside[0]))


def test_recording_frames_show_the_scene_at_the_lens_state():
    """Frames come from one sweep of renders reused for every sweep; each must still equal the
    scene rendered directly at the lens state of its (instantaneous) exposure."""
    rig = RigConfig(height=32, width=40, steps=50, sweep_s=0.05, exposure_s=0.0, lens=LENS)
    rec = simulate_recording(rig, SensorConfig.ideal(), np.random.default_rng(3), n_sweeps=4,
                             frame_rate_hz=31.0, start_us=1000)
    renderer = FocalRenderer(rec.scene, LENS, (rig.far_dpt, rig.near_dpt))
    lens_at = np.interp(rec.frame_t_us, rec.focus_t_us, rec.focus_dpt)
    assert rec.frames.shape[0] >= 6
    for frame, v in zip(rec.frames, lens_at, strict=True):
        direct = np.clip(renderer.render(v), 0, 1)
        assert np.abs(frame - direct).mean() < 0.005
