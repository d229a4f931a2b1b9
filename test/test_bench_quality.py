"""bench-quality on small cases: the naive reference as issue 11 fixes it, the rig families'
draws, and the bench end to end on one scene (the targets are benchmark numbers, not asserted)."""
import json

import numpy as np
import pytest
from scipy import ndimage

from efs_ros.core.events import EVENT_DTYPE
from efs_ros.core.job import SweepJob
from efs_ros.core.metrics import psnr, textured_mask
from efs_ros.core.naive import NaiveConfig, naive_stack, signed_counts_at
from efs_ros.tools import bench_quality as bq


def test_signed_counts_match_a_per_event_sum_both_sides_of_the_frame():
    rng = np.random.default_rng(0)
    ev = np.zeros(3000, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(-40_000, 60_000, ev.size))
    ev["x"], ev["y"] = rng.integers(0, 7, ev.size), rng.integers(0, 5, ev.size)
    ev["p"] = rng.choice([-1, 1], ev.size)
    times = np.array([-40_000.0, -12_345.0, 0.0, 777.0, 59_999.0])
    got = signed_counts_at(ev, 5, 7, times)
    for k, t in enumerate(times):
        want = np.zeros((5, 7))
        sel = (ev["t"] < t) & (ev["t"] >= 0) if t >= 0 else (ev["t"] >= t) & (ev["t"] < 0)
        np.add.at(want, (ev["y"][sel], ev["x"][sel]), ev["p"][sel])
        np.testing.assert_array_equal(got[k], want if t >= 0 else -want)


def _step_job(event_count: int) -> SweepJob:
    """A vertical edge, blurred in the frame; events (ideal, c = 0.2) sharpen it at t = +20 ms
    on the left half only."""
    h, w = 24, 32
    sharp = np.where(np.arange(w) % 8 < 4, 0.8, 0.2).astype(np.float32)[None].repeat(h, 0)
    frame = ndimage.uniform_filter1d(sharp, 5, axis=1)
    change = np.log(sharp) - np.log(frame)
    n = np.rint(change / 0.2).astype(int)
    n[:, w // 2:] = 0
    ys, xs = np.nonzero(n)
    reps = np.abs(n[ys, xs])
    ev = np.zeros(int(reps.sum()), EVENT_DTYPE)
    ev["y"], ev["x"] = np.repeat(ys, reps), np.repeat(xs, reps)
    ev["p"] = np.repeat(np.sign(n[ys, xs]), reps)
    ev["t"] = np.sort(np.random.default_rng(1).integers(19_000, 20_000, ev.size))
    rgb = np.repeat(frame[..., None], 3, axis=2)
    return SweepJob(0, rgb, "rgb8", ev[:event_count], np.array([-0.05, 0.05]), np.array([1.0, 3.0]),
                    ground_truth_aif=np.repeat(sharp[..., None], 3, axis=2))


def test_naive_reference_refocuses_where_events_sharpen_and_keeps_the_frame_elsewhere():
    job = _step_job(10**9)
    out = naive_stack(job)
    left, right = np.s_[:, 4:12], np.s_[:, 20:28]
    gt = job.ground_truth_aif
    assert psnr(out.all_in_focus[left], gt[left]) > psnr(job.frame[left], gt[left]) + 3
    assert psnr(out.all_in_focus[right], job.frame[right]) > 40  # no events: frame, within softmax blur
    assert out.refocus_map[left].mean() > 0.005  # pulled towards +20 ms by the sharper slices
    # depth = 1 / vergence(time); NaN only where even the best slice has no energy
    np.testing.assert_allclose(out.depth[left], 1.0 / np.interp(out.refocus_map[left], job.focus_t,
                                                                  job.focus_dpt), rtol=1e-5)
    flat = SweepJob(0, np.full((24, 32, 3), 0.5, np.float32), "rgb8", np.zeros(0, EVENT_DTYPE),
                    job.focus_t, job.focus_dpt)
    assert np.all(np.isnan(naive_stack(flat).depth))


def test_naive_reference_is_the_fixed_recipe():
    c = NaiveConfig()
    assert (c.threshold, c.n_slices, c.log_sigma, c.energy_sigma, c.softmax_gain, c.min_energy) == \
        (0.2, 32, 1.5, 3.0, 12.0, 2e-5)


@pytest.mark.parametrize("family", bq.FAMILIES, ids=bq.FAMILY_NAMES)
def test_family_draws_are_reproducible_and_inside_their_ranges(family):
    a, b = bq.draw(family, 3), bq.draw(family, 3)
    assert a.params == b.params and a.rig == b.rig
    p = a.params
    assert tuple(map(int, p["size"].split("x"))) in family.sizes
    assert family.blur_radius_px[0] <= p["blur_radius_px"] <= family.blur_radius_px[1]
    worst = max(a.rig.lens.coc_px_dpt(a.rig.far_dpt, a.rig.near_dpt),
                a.rig.lens.coc_px_dpt(a.rig.near_dpt, a.rig.far_dpt))
    assert worst / 2 == pytest.approx(p["blur_radius_px"], rel=1e-6)
    if p["sensor"] != "voltmeter":
        for key in ("threshold_on", "threshold_off"):
            assert family.threshold[0] <= p[key] <= family.threshold[1]
    assert p["sensor"] in family.sensors and p["scene"] in family.scene_kinds
    assert bq.draw(family, 4).params != p


def test_held_out_family_is_reported_last_and_has_its_own_seed():
    assert bq.FAMILIES[-1].held_out and not any(f.held_out for f in bq.FAMILIES[:-1])
    assert len({f.seed for f in bq.FAMILIES}) == len(bq.FAMILIES)


def test_textured_mask_marks_texture_not_flat_ground():
    img = np.full((40, 40), 0.5, np.float32)
    img[5:15, 5:15] = np.random.default_rng(0).uniform(0.2, 0.8, (10, 10))
    mask = textured_mask(img)
    assert mask[10, 10] and not mask[30, 30]


def test_bench_runs_one_scene_and_writes_every_row(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EFS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "q.json"
    assert bq.main(["--n", "1", "--families", "small-clean", "--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = report["summary"]["small-clean"]
    shipped = bq.learned_method("restore") is not None
    expected = {bq.INPUT, bq.BASELINE, bq.CLASSICAL, bq.ORACLE} | ({bq.DEFAULT} if shipped else set())
    assert set(rows) == expected
    assert f"default path: {bq.DEFAULT if shipped else bq.CLASSICAL}" in text
    for name in rows:
        assert name in text and np.isfinite(rows[name]["psnr"])
    assert rows[bq.BASELINE]["vs_naive_db"] == 0.0
    assert any(line.startswith(("PASS", "FAIL")) for line in text.splitlines())
    assert list((tmp_path / "cache").iterdir())  # the sweep was cached
    assert bq.main(["--n", "1", "--families", "nope"]) == 2


def test_naive_focus_energy_is_the_squared_spatial_laplacian_of_each_slice():
    """Each slice's energy is its own LoG: a flat frame has none even when slices differ in
    level (a Laplacian taken across the slice axis too would see the level steps)."""
    h, w = 20, 20
    ev = np.zeros(h * w, EVENT_DTYPE)
    ev["y"], ev["x"] = np.divmod(np.arange(h * w), w)
    ev["p"], ev["t"] = 1, 10_000  # the whole image brightens by one threshold at +10 ms
    job = SweepJob(0, np.full((h, w, 3), 0.4, np.float32), "rgb8", ev, np.array([-0.05, 0.05]),
                   np.array([1.0, 3.0]))
    out = naive_stack(job)
    assert np.all(np.isnan(out.depth))  # no texture in any slice
