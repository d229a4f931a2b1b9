"""Refocusing, refocus-time selection, merging and depth.

Most cases are built here: sweeps over textured planes whose events are the exact crossings of
the log intensity through the thresholds, so that what the pipeline should recover is known.
The two-plane test at the end runs the focal-sweep simulator (efs_ros.sim) end to end.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from efs_ros.core.events import EVENT_DTYPE, make_events
from efs_ros.core.job import SweepJob
from efs_ros.core.merge import focus_weights, gradient_fusion_weights, replace_count_outliers
from efs_ros.core.metrics import psnr
from efs_ros.core.pipeline import MERGES, JobError, PipelineConfig, run_pipeline, run_pipeline_with_info
from efs_ros.core.refocus import (
    DEFAULT_RESPONSE,
    LUMA_WEIGHTS,
    EventStack,
    EventTimeline,
    LinLogResponse,
    LogResponse,
    Refocuser,
    colour_line_slopes,
    estimate_noise_rate,
    estimate_threshold,
    event_bins_between,
    isolated_event_mask,
    log_frame_chw,
    merge_event_stacks,
)
from efs_ros.core.select import golden_section_max, patch_grid

# --------------------------------------------------------------------------- synthetic sweeps


def _dead_leaves(rng, h, w, n=60):
    """Occluding discs of random grey: sharp edges at many scales, like natural texture."""
    tex = np.full((h, w), rng.uniform(0.2, 0.8))
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(n):
        r = rng.uniform(1.5, max(h, w) / 6)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        tex[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.1, 0.9)
    return tex.astype(np.float64)


def synthetic_sweep(h=64, w=64, n_steps=200, threshold=0.2, threshold_sigma=0.0, seed=0,
                    depths=(0.5, 2.0), frame_frac=0.4, span_s=0.1, dpt_range=(0.2, 2.8),
                    blur_px_per_dpt=2.0, response=DEFAULT_RESPONSE, noise_events_per_px=0.0):
    """A focal sweep over two textured fronto-parallel planes (left half near, right half far).

    Defocus is a Gaussian of sigma blur_px_per_dpt * |vergence - 1/depth| applied to each
    plane's light (light is conserved). Events are the exact crossings of response(luminance)
    through per-pixel thresholds, interpolated in time between render steps, with the sensor's
    reference levels at a random phase when the sweep starts. Colour: each plane has a tint.
    Returns (SweepJob with ground truth, [near mask, far mask]).
    """
    rng = np.random.default_rng(seed)
    xx = np.mgrid[0:h, 0:w][1]
    masks = [xx < w // 2, xx >= w // 2]
    tex = [_dead_leaves(rng, h, w) for _ in masks]
    tints = [np.array([1.0, 0.75, 0.55]), np.array([0.55, 0.8, 1.0])]
    tints = [t / float(t @ LUMA_WEIGHTS) for t in tints]  # tinted layers keep tex as luminance
    t = np.linspace(-frame_frac * span_s, (1 - frame_frac) * span_s, n_steps)
    dpt = np.interp(t, [t[0], t[-1]], list(dpt_range))

    def render(v, rgb):
        out = np.zeros((h, w, 3) if rgb else (h, w))
        for m, tx, d, tint in zip(masks, tex, depths, tints, strict=True):
            layer = (tx * m)[..., None] * tint if rgb else tx * m
            sigma = blur_px_per_dpt * abs(v - 1.0 / d)
            if sigma > 0.05:
                layer = ndimage.gaussian_filter(layer, (sigma, sigma, 0)[:layer.ndim], mode="reflect")
            out += layer
        return np.clip(out, 0.0, 1.0)

    c_px = np.full((h, w), float(threshold))
    if threshold_sigma:
        c_px = np.clip(rng.normal(threshold, threshold_sigma, (h, w)), 0.05, None)
    prev = response.forward(render(dpt[0], False)).astype(np.float64)
    ref = prev - rng.uniform(0.0, 1.0, (h, w)) * c_px
    ts, pix_all, ps = [], [], []
    for i in range(1, n_steps):
        cur = response.forward(render(dpt[i], False)).astype(np.float64)
        d = cur - ref
        n = np.floor(np.abs(d) / c_px).astype(np.int64).ravel()
        idx = np.flatnonzero(n)
        if idx.size:
            reps = n[idx]
            pix = np.repeat(idx, reps)
            j = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps) + 1
            sgn = np.sign(d.ravel()[pix])
            level = ref.ravel()[pix] + j * c_px.ravel()[pix] * sgn
            a, b = prev.ravel()[pix], cur.ravel()[pix]
            frac = np.clip((level - a) / np.where(b != a, b - a, 1.0), 0.0, 1.0)
            ts.append(t[i - 1] + frac * (t[i] - t[i - 1]))
            pix_all.append(pix)
            ps.append(sgn)
            ref.ravel()[idx] += reps * c_px.ravel()[idx] * np.sign(d.ravel()[idx])
        prev = cur
    if noise_events_per_px > 0:
        k = rng.poisson(noise_events_per_px * h * w)
        ts.append(rng.uniform(t[0], t[-1], k))
        pix_all.append(rng.integers(0, h * w, k))
        ps.append(rng.choice([-1.0, 1.0], k))
    tt = np.concatenate(ts)
    pp = np.concatenate(pix_all)
    order = np.argsort(tt, kind="stable")
    events = make_events(np.round(tt * 1e6).astype(np.int64)[order], pp[order] % w, pp[order] // w,
                         np.concatenate(ps)[order])
    aif = np.clip(sum((tx * m)[..., None] * tint for m, tx, tint in zip(masks, tex, tints, strict=True)),
                  0, 1)
    depth = np.where(masks[0], depths[0], depths[1]).astype(np.float32)
    frame = render(float(np.interp(0.0, t, dpt)), True).astype(np.float32)
    job = SweepJob(stamp_ns=1_000_000_000, frame=frame, encoding="rgb8", events=events, focus_t=t,
                   focus_dpt=dpt, ground_truth_aif=aif.astype(np.float32), ground_truth_depth=depth)
    return job, masks


def gradient_energy(img, mask, erode=6):
    """Mean squared luminance gradient inside a mask (eroded away from the plane boundary)."""
    lum = img if img.ndim == 2 else img @ LUMA_WEIGHTS
    gy, gx = np.gradient(lum.astype(np.float64))
    inner = ndimage.binary_erosion(mask, iterations=erode)
    return float(np.mean((gx**2 + gy**2)[inner]))


def region_psnr(img, gt, mask, erode=6):
    inner = ndimage.binary_erosion(mask, iterations=erode)
    return psnr(img[inner], gt[inner])


@pytest.fixture(scope="module")
def sweep():
    return synthetic_sweep()


def random_events(rng, n, h, w, t0_us, t1_us):
    return make_events(rng.integers(t0_us, t1_us, n), rng.integers(0, w, n), rng.integers(0, h, n),
                       rng.choice([-1, 1], n))


def direct_sum(events, h, w, t_us):
    """Signed event count per pixel from 0 to t (negated for t < 0), the slow obvious way."""
    out = np.zeros((h, w))
    lo, hi, sign = (0, t_us, 1.0) if t_us >= 0 else (t_us, 0, -1.0)
    sel = events[(events["t"] >= lo) & (events["t"] < hi)]
    np.add.at(out, (sel["y"].astype(int), sel["x"].astype(int)), sign * sel["p"])
    return out


# --------------------------------------------------------------------------- event stack


def test_prefix_sums_equal_direct_sums_at_every_edge():
    rng = np.random.default_rng(1)
    h, w = 12, 17
    ev = random_events(rng, 20000, h, w, -30_000, 70_000)
    stack = EventStack(ev, h, w, (-0.03, 0.07), n_bins=40)
    assert stack.edges_s[stack.origin] == 0.0
    counts = stack.counts_at_edges(np.arange(stack.edges_s.size))
    for k, t in enumerate(stack.edges_s):
        assert np.array_equal(counts[k], direct_sum(ev, h, w, round(t * 1e6))), f"edge {k} at {t}"
    # A time map gathers per pixel exactly what the stack gives for that time.
    tmap = rng.choice(stack.edges_s, (h, w))
    expect = np.take_along_axis(counts, np.searchsorted(stack.edges_s, tmap)[None], 0)[0]
    assert np.array_equal(stack.counts_at_pixel_times(tmap), expect)


def test_stack_does_not_depend_on_event_order_and_interpolates_between_edges():
    rng = np.random.default_rng(2)
    ev = random_events(rng, 5000, 8, 9, -10_000, 10_000)
    a = EventStack(ev, 8, 9, (-0.01, 0.01), n_bins=16)
    b = EventStack(ev[rng.permutation(len(ev))], 8, 9, (-0.01, 0.01), n_bins=16)
    assert np.array_equal(a.cum, b.cum)
    e0, e1 = a.edges_s[3], a.edges_s[4]
    mid = a.counts_at([0.25 * e0 + 0.75 * e1])[0]
    lo, hi = a.counts_at_edges([3, 4])
    np.testing.assert_allclose(mid, 0.25 * lo + 0.75 * hi, atol=1e-5)


def test_stack_rejects_events_outside_the_frame():
    ev = make_events([0, 5], [3, 40], [1, 1], [1, -1])
    with pytest.raises(ValueError, match="exceed"):
        EventStack(ev, 8, 32, (-0.01, 0.01))


def test_refocus_to_true_times_recovers_the_log_change(sweep):
    """Equation 5: response(frame) + c S(t) follows the true log intensity to within about one
    threshold per pixel, and refocusing to time 0 returns the frame exactly."""
    job, masks = sweep
    stack = EventStack(job.events, job.height, job.width, job.sweep_span_s, 100)
    rf = Refocuser(job.frame, stack, 0.2)
    np.testing.assert_allclose(rf.image(0.0), job.frame, atol=1e-5)
    t_near = float(np.interp(2.0, job.focus_dpt, job.focus_t))  # near plane in focus
    est = rf.response.forward(rf.luminances([t_near])[0])
    gt_lum = job.ground_truth_aif @ LUMA_WEIGHTS
    inner = ndimage.binary_erosion(masks[0], iterations=8)
    err = np.abs(est - rf.response.forward(gt_lum))[inner]
    err_frame = np.abs(rf.log0 - rf.response.forward(gt_lum))[inner]
    assert np.median(err) < 0.1
    assert err.mean() < 0.5 * err_frame.mean()


def ramp_events(rates, phases, c, t0_us, t1_us):
    """Ideal events of pixels (0, i) whose log intensity moves linearly, rates[i] per second,
    starting phases[i] thresholds above their reference: a crossing every c / |rate| s."""
    ts, xs, ps = [], [], []
    for i, (r, ph) in enumerate(zip(rates, phases, strict=True)):
        gap_us = 1e6 * c / abs(r)
        first = t0_us + (1.0 - ph) * gap_us
        t = np.arange(first, t1_us, gap_us)
        ts.append(t)
        xs.append(np.full(t.size, i))
        ps.append(np.full(t.size, np.sign(r)))
    t = np.concatenate(ts)
    order = np.argsort(t, kind="stable")
    return make_events(np.round(t[order]).astype(np.int64), np.concatenate(xs)[order], 0,
                       np.concatenate(ps)[order])


def test_timeline_is_exact_between_events_on_a_log_ramp():
    """For a log intensity linear in time, reading the level between events from their timing
    recovers the change from the frame (t = 0) to any time exactly, where the binned step
    function is off by up to one threshold."""
    c = 0.2
    rates = np.array([20.0, -30.0, 45.0, -15.0])  # log units per second: a crossing every 4-13 ms
    phases = np.array([0.3, 0.8, 0.55, 0.1])
    ev = ramp_events(rates, phases, c, -50_000, 50_000)
    tl = EventTimeline(ev, 1, rates.size, (-50_000, 50_000))
    stack = EventStack(ev, 1, rates.size, (-0.05, 0.05), n_bins=16)
    rng = np.random.default_rng(3)
    worst_step = 0.0
    for t in rng.uniform(-0.035, 0.035, 20):  # inside every pixel's run of events
        tmap = np.full((1, rates.size), t)
        truth = rates * t / c  # the change in thresholds
        np.testing.assert_allclose(tl.counts_at_pixel_times(tmap)[0], truth, atol=2e-3)
        worst_step = max(worst_step, float(np.abs(stack.counts_at_pixel_times(tmap)[0] - truth).max()))
    assert worst_step > 0.5  # what the timing buys


def test_timeline_ramps_between_same_polarities_and_holds_otherwise():
    ev = make_events([1000, 2000, 3000, 7000, 10_000], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0],
                     [1, 1, 1, -1, -1])
    tl = EventTimeline(ev, 1, 2)
    lv = tl.levels_at(np.zeros(6, np.int64), np.array([500, 1500, 2500, 5000, 8000, 20_000]))
    # before the first event: the start; ramps between same-polarity events; held over the
    # turn from +1 to -1 and after the last event
    np.testing.assert_allclose(lv, [0.0, 1.5, 2.5, 3.0, 2.0, 2.0])
    # an event exactly at the query time has not happened yet (as in EventStack), and the ramp
    # into it makes the level continuous there
    assert tl.levels_at(np.array([0]), np.array([2000]))[0] == 2.0
    assert tl.levels_at(np.array([0]), np.array([7000]))[0] == 3.0  # held up to the turn
    assert tl.levels_at(np.array([1]), np.array([20_000]))[0] == -1.0


def test_timeline_stays_within_one_threshold_of_the_step_and_ignores_order(sweep):
    job, _ = sweep
    h, w = job.height, job.width
    stack = EventStack(job.events, h, w, job.sweep_span_s, 64)
    span_us = (stack.span_s[0] * 1e6, stack.span_s[1] * 1e6)
    tl = EventTimeline(job.events, h, w, span_us)
    rng = np.random.default_rng(4)
    tmap = rng.uniform(*job.sweep_span_s, (h, w))
    a = tl.counts_at_pixel_times(tmap)
    assert np.all(np.abs(a - stack.counts_at_pixel_times(np.round(tmap, 9))) <= 2.0 + 1e-6)
    shuffled = EventTimeline(job.events[rng.permutation(len(job.events))], h, w, span_us)
    np.testing.assert_array_equal(shuffled.counts_at_pixel_times(tmap), a)
    # at the frame time the change is zero by construction, for every pixel
    assert np.all(tl.counts_at_pixel_times(np.zeros((h, w))) == 0)


@pytest.mark.parametrize("response", [LogResponse(0.02), LinLogResponse()])
def test_responses_invert(response):
    lum = np.linspace(0.0, 1.0, 1001, dtype=np.float32)
    np.testing.assert_allclose(response.inverse(response.forward(lum)), lum, atol=2e-6)


def test_log_frame_chw_layout():
    frame = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
    out = log_frame_chw(frame)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out[1], DEFAULT_RESPONSE.forward(frame[..., 1]))
    assert log_frame_chw(frame[..., 0]).shape == (1, 4, 5)


# --------------------------------------------------------------------------- network inputs


def test_event_bins_between_sum_to_the_change_in_both_directions():
    rng = np.random.default_rng(3)
    h, w = 10, 11
    ev = random_events(rng, 6400, h, w, -50_000, 50_000)
    ev = ev[np.argsort(ev["t"], kind="stable")]
    for t1 in (40_000, -35_000):
        bins = event_bins_between(ev, 0, t1, n=64, height=h, width=w)
        assert bins.shape == (64, h, w) and bins.dtype == np.float32
        np.testing.assert_array_equal(bins.sum(axis=0), direct_sum(ev, h, w, t1))
    # Backwards, bin 0 holds the events just before the frame, polarity negated.
    before = ev[(ev["t"] >= -35_000) & (ev["t"] < 0)]
    per_bin = -(-len(before) // 64)  # event i of m goes to bin floor(i * 64 / m)
    expect = np.zeros((h, w))
    last = before[len(before) - per_bin:]
    np.add.at(expect, (last["y"].astype(int), last["x"].astype(int)), -last["p"])
    bins = event_bins_between(ev, 0, -35_000, n=64, height=h, width=w)
    np.testing.assert_array_equal(bins[0], expect)


def test_event_bins_split_by_count_not_time():
    h = w = 4
    t = np.concatenate([np.arange(0, 100), np.arange(1000, 1100)])  # two bursts
    ev = make_events(t, np.zeros(200), np.zeros(200), np.ones(200))
    bins = event_bins_between(ev, 0, 2000, n=4, height=h, width=w)
    np.testing.assert_array_equal(bins[:, 0, 0], [50, 50, 50, 50])


def test_merge_event_stacks_sum_windows_around_each_time():
    rng = np.random.default_rng(4)
    h, w = 6, 7
    ev = random_events(rng, 3000, h, w, 0, 64_000)
    times = np.array([0.0, 10_000.0, 31_500.0, 64_000.0])
    out = merge_event_stacks(ev, times, h, w, span_us=(0.0, 64_000.0))
    d = 1000.0
    for i, t in enumerate(times):
        sel = ev[(ev["t"] >= t - d) & (ev["t"] <= t + d)]
        expect = np.zeros((h, w))
        np.add.at(expect, (sel["y"].astype(int), sel["x"].astype(int)), sel["p"])
        np.testing.assert_array_equal(out[i], expect)


def test_isolated_events_are_flagged_bursts_kept():
    burst = make_events(np.arange(0, 500, 50), np.full(10, 5), np.full(10, 5), np.ones(10))
    lone = make_events([200, 40_000], [20, 1], [20, 30], [1, -1])
    ev = np.concatenate([burst, lone])
    mask = isolated_event_mask(ev, 32, 32, window_us=1000)
    assert not mask[:10].any() and mask[10:].all()


# --------------------------------------------------------------------------- selection pieces


def test_golden_section_finds_each_maximum():
    rng = np.random.default_rng(5)
    peaks = rng.uniform(100, 9000, 64)
    widths = rng.uniform(500, 3000, 64)
    calls = []

    def score(x):
        calls.append(x.shape)
        return np.exp(-((x - peaks) / widths) ** 2) + 0.2 * np.exp(-(x / 1e5) ** 2)

    best = golden_section_max(score, np.zeros(64), np.full(64, 10_000.0), stop=10.0)
    np.testing.assert_allclose(best, peaks, atol=10.0)
    assert all(c == (64,) for c in calls)  # vectorised: one call per step for all problems
    assert len(calls) < 40  # log(1000) / log(1.618) + 2 steps


def test_patch_grid_covers_the_image():
    rows, cols, pid = patch_grid(50, 37, 8)
    assert pid.shape == (50, 37) and pid.min() == 0 and pid.max() == 63
    assert np.all(np.bincount(pid.ravel()) > 0)


def test_threshold_estimate_refocuses_at_least_as_well_as_the_true_threshold():
    """The estimate is the gain that best predicts the log change from the (quantised) counts:
    at most the true threshold, shrunk by the quantisation noise, never far off, and plain
    refocusing (no further shrinkage) with it is no worse than with the true threshold."""
    for c_true, seed in ((0.15, 11), (0.3, 12)):
        job, _ = synthetic_sweep(h=96, w=96, threshold=c_true, seed=seed)
        plain = dict(event_filter_us=0, merge="refocus_map", shrink_window=0)
        est, info = run_pipeline_with_info(job, PipelineConfig(**plain))
        assert info["threshold_estimated"]
        assert 0.25 * c_true < info["threshold"] < 1.2 * c_true, (c_true, info["threshold"])
        true = run_pipeline(job, PipelineConfig(**plain, threshold=c_true))
        gt = job.ground_truth_aif
        assert psnr(est.all_in_focus, gt) > psnr(true.all_in_focus, gt) - 0.2


def test_event_filter_keeps_the_same_share_of_a_slow_sweep():
    """Defocus events spread in time with the sweep: a sweep five times slower keeps as many of
    its (noise-free) events as a fast one, because the filter's window scales with it."""
    kept = []
    for span in (0.1, 0.5):
        job, _ = synthetic_sweep(span_s=span, seed=5)
        _, info = run_pipeline_with_info(job, PipelineConfig(threshold=0.2))
        assert info["event_filter_us"] == pytest.approx(max(3000.0, 0.03 * span * 1e6))
        kept.append(info["n_events"] / len(job.events))
    assert kept[0] > 0.8 and abs(kept[1] - kept[0]) < 0.01, kept
    _, info = run_pipeline_with_info(job, PipelineConfig(threshold=0.2, event_filter_sweep_fraction=0))
    assert info["n_events"] / len(job.events) < kept[1] - 0.2  # a fixed 3 ms would drop many


def test_noise_rate_estimate_follows_the_filter():
    """Noise events that survive the isolated-event filter: none when nothing was removed,
    growing with what was removed, and the model's fixed point (survivors = raw x chance of a
    neighbour) holds."""
    assert estimate_noise_rate(0, 1000, 0.1, 3000) == 0.0
    rates = [estimate_noise_rate(n, 65536, 0.1, 3000) for n in (1000, 10000, 20000)]
    assert 0 < rates[0] < rates[1] < rates[2]
    removed = 20000 / (65536 * 0.1)
    raw = removed + rates[2]
    assert rates[2] == pytest.approx(raw * (1 - np.exp(-27 * 3e-3 * raw)), rel=1e-6)
    # noise too dense for the filter to thin: capped, not divergent
    assert np.isfinite(estimate_noise_rate(10**7, 65536, 0.1, 3000))


def test_colour_lines_recover_pure_colours_at_a_sharp_edge():
    h, w = 24, 40
    sharp = np.zeros((h, w, 3), np.float32)
    sharp[:, : w // 2] = [0.7, 0.15, 0.6]  # purple-ish
    sharp[:, w // 2:] = [0.2, 0.75, 0.3]  # green
    blurred = ndimage.gaussian_filter(sharp, (0, 3, 0))
    target_lum = sharp @ LUMA_WEIGHTS
    slopes = colour_line_slopes(blurred, radius=6)
    np.testing.assert_allclose(slopes @ LUMA_WEIGHTS, 1.0, atol=1e-4)
    line = np.clip(blurred + slopes * (target_lum - blurred @ LUMA_WEIGHTS)[..., None], 0, 1)
    gain = np.clip(blurred * ((target_lum + 1e-3) / (blurred @ LUMA_WEIGHTS + 1e-3))[..., None], 0, 1)
    assert psnr(line, sharp) > psnr(gain, sharp) + 6
    assert psnr(line, sharp) > 30


def test_weights_are_normalised():
    rng = np.random.default_rng(6)
    f = rng.random((5, 9, 8)).astype(np.float32)
    np.testing.assert_allclose(focus_weights(f).sum(axis=0), 1.0, atol=1e-5)
    g = gradient_fusion_weights(rng.random((5, 30, 30, 3)).astype(np.float32))
    np.testing.assert_allclose(g.sum(axis=0), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- whole pipeline


@pytest.mark.parametrize("method", ["dense", "golden", "uniform", "event_rate"])
@pytest.mark.parametrize("merge", ["focus", "refocus_map", "gradient"])
def test_every_method_and_merge_gives_a_valid_result(sweep, method, merge):
    job, _ = sweep
    r = run_pipeline(job, PipelineConfig(method=method, merge=merge, threshold=0.2))
    assert r.all_in_focus.shape == job.frame.shape and r.all_in_focus.dtype == np.float32
    assert np.all(np.isfinite(r.all_in_focus)) and r.all_in_focus.min() >= 0 and r.all_in_focus.max() <= 1
    t0, t1 = job.sweep_span_s
    assert r.refocus_map.shape == (job.height, job.width)
    assert r.refocus_map.min() >= t0 - 1e-9 and r.refocus_map.max() <= t1 + 1e-9
    assert r.depth.dtype == np.float32 and r.confidence.shape == r.refocus_map.shape
    finite = r.depth[np.isfinite(r.depth)]
    assert np.all((finite >= 1 / 2.8 - 1e-4) & (finite <= 1 / 0.2 + 1e-3))  # inside the lens range
    assert {"stack", "threshold", "select", "merge", "depth", "total"} <= set(r.timings_ms)


@pytest.mark.parametrize("merge, plane_gain_db", [("refocus_map", 1.5), ("focus", 0.5)])
def test_dense_pipeline_sharpens_both_planes_and_orders_depth(sweep, merge, plane_gain_db):
    """Each plane comes out sharper and closer to the truth; the refocus-map merge (each pixel
    at its own time) gains more than the soft focus merge, which blends neighbouring times."""
    job, masks = sweep
    r, info = run_pipeline_with_info(job, PipelineConfig(merge=merge))
    gt = job.ground_truth_aif
    for m in masks:
        assert region_psnr(r.all_in_focus, gt, m) > region_psnr(job.frame, gt, m) + plane_gain_db
        # (the estimated gain is shrunk against quantisation noise, so less than the truth's)
        assert gradient_energy(r.all_in_focus, m) > 1.1 * gradient_energy(job.frame, m)
    # The seam between the planes mixes both planes' light at every focus, so the whole image
    # gains less than each plane.
    assert psnr(r.all_in_focus, gt) > psnr(job.frame, gt) + 0.5
    near = np.nanmedian(np.where(ndimage.binary_erosion(masks[0], iterations=6), r.depth, np.nan))
    far = np.nanmedian(np.where(ndimage.binary_erosion(masks[1], iterations=6), r.depth, np.nan))
    assert near < far
    assert abs(near - 0.5) < 0.15 and abs(far - 2.0) < 0.8


def test_golden_section_pipeline_picks_each_planes_time():
    job, masks = synthetic_sweep(h=96, w=96, seed=3)
    _, info = run_pipeline_with_info(job, PipelineConfig(method="golden", patch_grid=4, threshold=0.2))
    ptimes = info["patch_times_s"]  # 4 x 4: left two columns near plane, right two far
    t_near = float(np.interp(2.0, job.focus_dpt, job.focus_t))
    t_far = float(np.interp(0.5, job.focus_dpt, job.focus_t))
    tol = 0.12 * (job.focus_t[-1] - job.focus_t[0])
    assert np.median(np.abs(ptimes[:, 0] - t_near)) < tol
    assert np.median(np.abs(ptimes[:, 3] - t_far)) < tol


def test_noise_events_are_survived(sweep):
    job, masks = synthetic_sweep(seed=4, noise_events_per_px=1.0)
    r = run_pipeline(job, PipelineConfig())
    assert psnr(r.all_in_focus, job.ground_truth_aif) > psnr(job.frame, job.ground_truth_aif)


def test_mono_frames_work(sweep):
    job, masks = sweep
    mono = SweepJob(job.stamp_ns, job.frame @ LUMA_WEIGHTS, "mono8", job.events, job.focus_t,
                    job.focus_dpt, ground_truth_aif=job.ground_truth_aif @ LUMA_WEIGHTS)
    r = run_pipeline(mono, PipelineConfig(threshold=0.2))
    assert r.all_in_focus.shape == mono.frame.shape
    assert psnr(r.all_in_focus, mono.ground_truth_aif) > psnr(mono.frame, mono.ground_truth_aif) + 0.5


def test_learned_hooks_get_the_documented_inputs(sweep):
    job, _ = sweep
    seen = {}

    def refocus_net(log_frame, bins):
        seen.setdefault("refocus", []).append((log_frame.shape, bins.shape, bins.dtype))
        return log_frame + 0.2 * bins.sum(axis=0)[None]  # Equation 5 per channel

    def merge_net(stack, ev_stacks):
        seen["merge"] = (stack.shape, ev_stacks.shape)
        w = np.zeros(ev_stacks.shape, np.float32)
        w[0] = 1.0  # all weight on the first refocused image
        return w

    cfg = PipelineConfig(method="uniform", n_uniform=5, threshold=0.2, refocus_net=refocus_net,
                         merge_net=merge_net)
    r, info = run_pipeline_with_info(job, cfg)
    h, w = job.height, job.width
    assert len(seen["refocus"]) == 5
    assert all(s == ((3, h, w), (64, h, w), np.float32) for s in seen["refocus"])
    assert seen["merge"] == ((5, 3, h, w), (5, h, w))
    # Weight 1 on image 0 = the frame refocused (per channel) to the first time.
    first = info["times_s"][0]
    expect = DEFAULT_RESPONSE.inverse(log_frame_chw(job.frame) + 0.2 * event_bins_between(
        job.events[~isolated_event_mask(job.events, h, w, cfg.event_filter_us)], 0, first * 1e6, 64, h, w
    ).sum(axis=0)[None])
    np.testing.assert_allclose(r.all_in_focus, np.clip(np.transpose(expect, (1, 2, 0)), 0, 1), atol=1e-5)


def test_bad_config_and_bad_jobs_are_rejected(sweep):
    job, _ = sweep
    with pytest.raises(ValueError, match="method"):
        PipelineConfig(method="magic")
    with pytest.raises(ValueError, match="merge"):
        PipelineConfig(merge="average")
    bad = SweepJob(job.stamp_ns, job.frame[..., :2], "rgb8", job.events, job.focus_t, job.focus_dpt)
    with pytest.raises(JobError, match="frame"):
        run_pipeline(bad)
    bad = SweepJob(job.stamp_ns, job.frame, "rgb8", job.events, job.focus_t[::-1], job.focus_dpt)
    with pytest.raises(JobError, match="increasing"):
        run_pipeline(bad)
    bad = SweepJob(job.stamp_ns, job.frame, "rgb8", np.zeros(3), job.focus_t, job.focus_dpt)
    with pytest.raises(JobError, match="EVENT_DTYPE"):
        run_pipeline(bad)


@pytest.mark.parametrize("merge", MERGES)
@pytest.mark.parametrize("events", ["none", "isolated"])
def test_no_events_returns_the_frame(sweep, merge, events):
    """No events, or only isolated ones that the filter removes (a dim scene through a 640x480
    voltmeter sensor gave 1456 events, all isolated): the frame comes back, nothing fails."""
    job, _ = sweep
    ev = np.zeros(0 if events == "none" else 4, EVENT_DTYPE)
    if events == "isolated":  # far apart in space and time
        ev["x"], ev["y"], ev["p"] = (2, 40, 2, 40), (2, 2, 40, 40), (1, -1, 1, -1)
        ev["t"] = np.linspace(job.focus_t[0] * 1e6, job.focus_t[-1] * 1e6, 6)[1:-1].astype(np.int64)
    only = SweepJob(job.stamp_ns, job.frame, "rgb8", ev, job.focus_t, job.focus_dpt)
    r, info = run_pipeline_with_info(only, PipelineConfig(merge=merge))
    np.testing.assert_allclose(r.all_in_focus, job.frame, atol=1e-5)  # float32 log/exp round trip
    assert not info["threshold_estimated"]
    assert np.all(np.isnan(r.depth))


# --------------------------------------------------------------------------- the simulator


@pytest.fixture(scope="module")
def sim_two_planes():
    from efs_ros.sim import rig as rig_mod
    from efs_ros.sim.scene import fronto_scene
    from efs_ros.sim.sensor import SensorConfig

    rng = np.random.default_rng(21)
    size = 128
    far = np.repeat(_dead_leaves(rng, size, size)[..., None], 3, axis=2) * np.array([0.6, 0.8, 1.0])
    near = np.repeat(_dead_leaves(rng, size, size)[..., None], 3, axis=2) * np.array([1.0, 0.8, 0.6])
    alpha_near = np.zeros((size, size), np.float32)
    alpha_near[:, : size // 2] = 1.0
    scene = fronto_scene([far, near], [1.6, 0.4], [np.ones((size, size)), alpha_near])
    # Frame a third into the far-to-near sweep: between the planes, both out of focus.
    rig = rig_mod.RigConfig(height=size, width=size, frame_fraction=(0.33, 0.37))
    sweep = rig_mod.simulate_sweep(rig, SensorConfig.clean(), np.random.default_rng(22), scene=scene)
    return sweep.to_job(0), [alpha_near > 0.5, alpha_near < 0.5]


def test_simulated_two_planes_come_out_sharper_with_the_right_depth_order(sim_two_planes):
    job, (near, far) = sim_two_planes
    # Depth everywhere (confidence_min 0): the refocus map's order is what is checked.
    r, info = run_pipeline_with_info(job, PipelineConfig(merge="refocus_map", confidence_min=0.0))
    gt = job.ground_truth_aif
    for m in (near, far):
        assert gradient_energy(r.all_in_focus, m) > gradient_energy(job.frame, m)
        assert region_psnr(r.all_in_focus, gt, m) > region_psnr(job.frame, gt, m)
    assert psnr(r.all_in_focus, gt) > psnr(job.frame, gt) + 1.0
    d_near = np.nanmedian(np.where(ndimage.binary_erosion(near, iterations=10), r.depth, np.nan))
    d_far = np.nanmedian(np.where(ndimage.binary_erosion(far, iterations=10), r.depth, np.nan))
    assert d_near < d_far
    # v2e's nominal threshold is 0.2; the fitted gain is shrunk against quantisation noise.
    assert info["threshold_estimated"] and 0.1 < info["threshold"] < 0.3


@pytest.mark.parametrize("shape, window", [((3, 20, 30), 9), ((2, 9, 17), 15), ((1, 5, 40), 3),
                                           ((2, 12, 10), 8), ((2, 6, 30), 15)])
def test_focus_measure_kernels_equal_the_scipy_path(shape, window):
    """The compiled kernels (box mean for odd windows that fit; gradient energy with Gaussian
    presmooth and noise subtraction) and the scipy/numpy paths they fall back to (even windows,
    filters wider than the image) give the same numbers."""
    from scipy import ndimage

    from efs_ros.core.select import gradient_energy, window_mean

    x = np.random.default_rng(window).random(shape, dtype=np.float32) - np.float32(0.2)
    want = ndimage.uniform_filter1d(ndimage.uniform_filter1d(x, window, axis=1, mode="reflect"),
                                    window, axis=2, mode="reflect")
    np.testing.assert_allclose(window_mean(x, window, floor=False), want, atol=1e-6)
    np.testing.assert_allclose(window_mean(x, window), np.maximum(want, 0), atol=1e-6)
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gy, gx = pad[:, 2:, 1:-1] - pad[:, :-2, 1:-1], pad[:, 1:-1, 2:] - pad[:, 1:-1, :-2]
    np.testing.assert_array_equal(gradient_energy(x), gx * gx + gy * gy)
    noise = np.random.default_rng(1).random(shape, dtype=np.float32) * np.float32(0.01)
    for sigma in (1.0, 1.5):
        smooth = ndimage.gaussian_filter(x, (0, sigma, sigma), truncate=3.0)
        pad = np.pad(smooth, ((0, 0), (1, 1), (1, 1)), mode="edge")
        gy, gx = pad[:, 2:, 1:-1] - pad[:, :-2, 1:-1], pad[:, 1:-1, 2:] - pad[:, 1:-1, :-2]
        want = gx * gx + gy * gy - np.float32(1.0 / (np.pi * sigma**2)) * noise
        np.testing.assert_allclose(gradient_energy(x, sigma, noise), want, atol=1e-6)


@pytest.mark.parametrize("t0, t1", [(0, 64_000), (50_000, 3_000), (7, 7), (10, 30)])
def test_event_bins_kernel_equals_the_bincount_path(monkeypatch, t0, t1):
    from efs_ros.core import refocus

    rng = np.random.default_rng(t0 + t1)
    h, w = 9, 13
    ev = random_events(rng, 5000, h, w, 0, 64_000)
    fast = refocus.event_bins_between(ev, t0, t1, 16, h, w)
    monkeypatch.setattr(refocus, "_PIPELINE_KERNELS", [None])
    slow = refocus.event_bins_between(ev, t0, t1, 16, h, w)
    assert fast.dtype == slow.dtype == np.float32 and fast.shape == slow.shape == (16, h, w)
    np.testing.assert_array_equal(fast, slow)


def test_lone_count_outliers_take_their_neighbours_median_while_edges_and_ramps_stay():
    """A pixel firing far more events than its neighbours (low threshold, hot pixel) would turn
    into a speck; a defocus edge or ramp is shared by its neighbours and must survive."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:50]
    change = np.where(xx < 25, -3.0, 4.0) + 0.1 * yy + rng.normal(0, 0.3, yy.shape)  # step + ramp
    spiky = change.copy()
    spiky[10, 10] += 12.0  # a hot pixel
    spiky[30, 40] -= 9.0  # a dead-ish one
    out = replace_count_outliers(spiky.astype(np.float32))
    assert abs(out[10, 10] - change[10, 10]) < 1.5 and abs(out[30, 40] - change[30, 40]) < 1.5
    keep = np.ones(change.shape, bool)
    keep[10, 10] = keep[30, 40] = False
    np.testing.assert_allclose(out[keep], spiky[keep].astype(np.float32), atol=1e-6)


@pytest.mark.parametrize("events_per_pixel", [0.5, 4.0])
def test_a_threshold_fit_below_the_floor_is_a_failure_only_when_events_are_plentiful(events_per_pixel):
    """Events that do not predict the frame's change fit c near 0. With few events that means
    "refocus gently" (the floor); with several per pixel it contradicts them (each is a whole
    threshold) and the fit is discarded for the fallback (large blur, continuous depth)."""
    rng = np.random.default_rng(3)
    h, w = 48, 64
    log_frame = np.log(rng.uniform(0.1, 1.0, (h, w)))
    n = int(events_per_pixel * h * w)
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(-40_000, 40_000, n))
    ev["x"], ev["y"], ev["p"] = rng.integers(0, w, n), rng.integers(0, h, n), rng.choice([-1, 1], n)
    stack = EventStack(ev, h, w, (-0.05, 0.05), n_bins=16)

    def vergence_at(t):
        return 2.0 + 20.0 * np.asarray(t, dtype=np.float64)  # 1 dpt and 3 dpt at the ends

    c, estimated = estimate_threshold(stack, log_frame, vergence_at, np.zeros((h, w)), erode=1)
    if events_per_pixel < 1.0:
        assert (c, estimated) == (0.05, True)
    else:
        assert (c, estimated) == (0.2, False)


def test_a_given_refocus_map_replaces_the_selection(sweep):
    """The oracle hook: time 0 everywhere is the frame; the map comes back as given; it needs
    the refocus-map merge."""
    job, _ = sweep
    zeros = np.zeros((job.height, job.width), np.float32)
    r, _ = run_pipeline_with_info(job, PipelineConfig(merge="refocus_map"), refocus_map=zeros)
    np.testing.assert_allclose(r.all_in_focus, job.frame, atol=1e-5)
    np.testing.assert_array_equal(r.refocus_map, zeros)
    later = np.full_like(zeros, 0.5 * job.sweep_span_s[1])
    moved, _ = run_pipeline_with_info(job, PipelineConfig(merge="refocus_map"), refocus_map=later)
    assert np.abs(moved.all_in_focus - job.frame).max() > 0.05
    with pytest.raises(ValueError, match="refocus_map"):
        run_pipeline_with_info(job, PipelineConfig(merge="focus"), refocus_map=zeros)
