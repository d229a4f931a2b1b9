"""Refocus-time selection: the authors' per-patch loop (net probes, classical probes) vs ours.

What the authors' code does (github HYLZ-2019/EFS, make_all_in_focus.py, `make_stack_images`):
8 x 8 patches (l. 261); per patch, in a Python loop, a search over the index of the patch's
events in time order (l. 160-174): while the bracket holds more than 1000 events, TWO probes at
the golden-ratio points (phi = (1 + 5 ** 0.5) / 2, l. 144), both computed afresh every iteration
(the one a textbook golden section would keep is recomputed), and the bracket keeps the side of
the sharper one; the result is the bracket's middle. Each probe (`make_image_and_eval`, l. 92)
runs EvRefocusNet on the PATCH (its frame crop and its first k events in 64 equal-count bins,
re-binned from scratch) and scores the variance of the output's channel mean. Patches with
under 2000 events keep the frame (l. 154). Then one full-image net pass per chosen time and
EvMergeNet (l. 196-197, 277).

Rows, all on the same jobs in one run, with the same threshold and final stage:
- (a) that loop, each probe the shipped EvRefocusNet on the patch (torch CPU, 1 thread);
- (b) the same loop, each probe the classical refocus of the patch (its events integrated from
  scratch per probe, Equation 5 at the pipeline's threshold), same focus measure;
- (c) ours: `method="golden"`, the same search for all patches at once, classical probes from
  the prefix sums; (a), (b) and (c) then share the final stage (the nets when shipped);
- (c') ours golden with the classical final stage, and (d) the default (`PipelineConfig()`:
  dense, classical).
Named speed-ups of the selection: changing the probe (a)/(b), vectorisation (b)/(c); the
latter includes our reuse of one probe per iteration (the authors recompute both).

Deviations from the authors: the project's patch grid (`patch_grid`, h / 8 pixels a side;
theirs ((h // 8) // 4 + 1) * 4, the last ones shifted inside the image), so a probe here sees
0.6-0.8x their pixels and the literal rows are if anything a little fast; the 1000 / 2000 event
counts scaled to the job size as ours scales them (select._scaled_counts); the inputs the
shipped nets were trained on (the pipeline's isolated-event filter, log frame, equal-count bins
from the frame time, no polarity flip); the focus measure the variance of the luminance (theirs
of the channel mean); the chosen times are not sorted (the merge net ignores slice order).
Without shipped weights (models/manifest.json) (a) is not run and the rest use the classical
final stage.

Sweeps: bench_quality's seeded "paper" regime (clean and noisy v2e sensor per scene) at 128 x
128 (below that this regime's lens hardly blurs). Times: the best of --repeats runs per job.
--quick: the clean sweep of one scene, one run.

    scripts/ros-env .venv/bin/python -m efs_ros.tools.bench_search [--quick] [--size 128] [--n 1]
        [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np

from efs_ros.core.job import SweepJob
from efs_ros.core.merge import merge_stack
from efs_ros.core.metrics import psnr
from efs_ros.core.pipeline import (
    PipelineConfig,
    event_filter_window_us,
    run_pipeline_with_info,
    warm_up,
)
from efs_ros.core.refocus import (
    EventStack,
    Refocuser,
    event_bins_between,
    isolated_event_mask,
    log_frame_chw,
    luminance,
    merge_event_stacks,
)
from efs_ros.core.select import _scaled_counts, patch_grid

PHI = (1 + 5**0.5) / 2
"""The authors' golden ratio (make_all_in_focus.py l. 144)."""

ROWS = {
    "a": "(a) literal loop, net probe on the patch",
    "b": "(b) literal loop, classical probe on the patch",
    "c": "(c) ours golden, vectorised, classical probes",
    "c'": "(c') ours golden, all classical",
    "d": "(d) ours dense, classical (the default)",
}
INPUT = "input frame"


def _variance_of_luminance(lin_chw: np.ndarray) -> float:
    """The focus measure of a probe: variance of the luminance of a [C, h, w] linear image."""
    return float(np.var(luminance(lin_chw[0] if lin_chw.shape[0] == 1
                                  else np.moveaxis(lin_chw, 0, -1))))


class LiteralLoop:
    """The authors' `make_stack_images`, patch by patch and probe by probe (see module doc).

    probe "net": EvRefocusNet on the patch; "classical": the patch's events integrated from
    scratch per probe at `threshold`. `net` / `merge_net`: the backend's bound methods or None.
    """

    def __init__(self, job: SweepJob, config: PipelineConfig, threshold: float, probe: str,
                 net=None, merge_net=None):
        if probe not in ("net", "classical") or (probe == "net" and net is None):
            raise ValueError(f"probe {probe!r} needs a refocus net" if probe == "net"
                             else f"unknown probe {probe!r}")
        self.job, self.config, self.threshold = job, config, float(threshold)
        self.probe, self.net, self.merge_net = probe, net, merge_net
        h, w = job.height, job.width
        events = job.events
        filter_us = event_filter_window_us(config, job)  # the events the nets were trained on
        if filter_us > 0 and len(events):
            events = events[~isolated_event_mask(events, h, w, filter_us)]
        self.events = events
        self.probes = 0

    def _probe(self, box: tuple[int, int, int, int], patch_ev: np.ndarray) -> Callable[[int], float]:
        """Sharpness of the patch refocused to the time of its k-th event (one probe)."""
        r0, r1, c0, c1 = box
        ph, pw = r1 - r0, c1 - c0
        crop = np.asarray(self.job.frame, np.float32)[r0:r1, c0:c1]
        response = self.config.response
        t_us = patch_ev["t"]
        if self.probe == "net":
            log_crop = log_frame_chw(crop, response)

            def probe(k: int) -> float:
                bins = event_bins_between(patch_ev, 0.0, float(t_us[k]), self.config.net_event_bins,
                                          ph, pw)
                out = np.asarray(self.net(log_crop, bins), np.float32)
                return _variance_of_luminance(np.clip(response.inverse(out), 0.0, 1.0))
        else:
            log0 = response.forward(luminance(crop))
            pix = patch_ev["y"].astype(np.int64) * pw + patch_ev["x"].astype(np.int64)
            pol = patch_ev["p"].astype(np.float64)
            i0 = int(np.searchsorted(t_us, 0, side="left"))  # the frame time

            def probe(k: int) -> float:
                lo, hi = sorted((i0, int(np.searchsorted(t_us, t_us[k], side="left"))))
                sign = 1.0 if hi > i0 else -1.0  # refocusing backwards undoes the events
                counts = np.bincount(pix[lo:hi], sign * pol[lo:hi], ph * pw).reshape(ph, pw)
                lum = np.clip(response.inverse(log0 + np.float32(self.threshold) * counts), 0, 1)
                return float(np.var(lum))

        def counted(k: int) -> float:
            self.probes += 1
            return probe(k)
        return counted

    def search(self) -> np.ndarray:
        """Per-patch refocus times (s), in patch order (make_all_in_focus.py l. 132-177)."""
        h, w = self.job.height, self.job.width
        rows, cols, _ = patch_grid(h, w, self.config.patch_grid)
        stop, min_ev = _scaled_counts(len(self.events), self.config.golden_stop_events,
                                      self.config.golden_min_events, 1e6)
        ev = self.events
        times = []
        for r0, r1 in zip(rows[:-1], rows[1:], strict=True):
            for c0, c1 in zip(cols[:-1], cols[1:], strict=True):
                inside = (ev["y"] >= r0) & (ev["y"] < r1) & (ev["x"] >= c0) & (ev["x"] < c1)
                patch_ev = ev[inside]
                patch_ev = patch_ev[np.argsort(patch_ev["t"], kind="stable")]
                patch_ev["y"] -= np.uint16(r0)
                patch_ev["x"] -= np.uint16(c0)
                n = len(patch_ev)
                if n < min_ev:
                    times.append(0.0)  # too few events: keep the frame
                    continue
                sharpness = self._probe((int(r0), int(r1), int(c0), int(c1)), patch_ev)
                left, right = 0, n
                while right - left > stop:
                    t1 = max(left + 1, int(right - (right - left) / PHI))
                    t2 = min(right - 1, int(left + (right - left) / PHI))
                    if sharpness(t1) < sharpness(t2):
                        left = t1
                    else:
                        right = t2
                times.append(float(patch_ev["t"][(left + right) // 2]) * 1e-6)
        return np.asarray(times)

    def finish(self, times: np.ndarray) -> np.ndarray:
        """The all-in-focus image: one full-image refocus per chosen time and the merge net
        (slice order does not matter to it, so the authors' sort is left out); without nets the
        classical refocus, each image weighted on the patch its time was chosen for."""
        job, h, w = self.job, self.job.height, self.job.width
        stack = EventStack(self.events, h, w, job.sweep_span_s, self.config.n_bins)
        if self.net is not None:
            log_frame = log_frame_chw(job.frame, self.config.response)
            n_bins = self.config.net_event_bins
            images = np.clip(self.config.response.inverse(np.stack([
                self.net(log_frame, event_bins_between(self.events, 0.0, t * 1e6, n_bins, h, w))
                for t in times])), 0.0, 1.0)
        else:
            refocuser = Refocuser(np.asarray(job.frame, np.float32), stack, self.threshold,
                                  self.config.response, self.config.colour)
            images = refocuser.colour(refocuser.luminances(times))
            images = images[:, None] if images.ndim == 3 else np.transpose(images, (0, 3, 1, 2))
        if self.merge_net is not None:
            span = (stack.span_s[0] * 1e6, stack.span_s[1] * 1e6)
            weights = self.merge_net(images, merge_event_stacks(self.events, times * 1e6, h, w, span))
        else:
            _, _, pid = patch_grid(h, w, self.config.patch_grid)
            weights = (pid[None] == np.arange(times.size)[:, None, None]).astype(np.float32)
        return merge_stack(images.astype(np.float32), np.asarray(weights, np.float32))


def literal_job(job: SweepJob, threshold: float, probe: str, nets: dict | None = None,
                repeats: int = 1) -> dict:
    """One job through the literal loop: selection time (best of `repeats` searches), job
    time, probes, PSNR, times. `nets`: {"refocus_net", "merge_net"} as for PipelineConfig."""
    nets = nets or {}
    t0 = time.perf_counter()
    loop = LiteralLoop(job, PipelineConfig(method="golden"), threshold, probe,
                       nets.get("refocus_net"), nets.get("merge_net"))
    setup_s = time.perf_counter() - t0
    select_s = float("inf")
    for _ in range(max(1, repeats)):
        loop.probes = 0
        t1 = time.perf_counter()
        times = loop.search()
        select_s = min(select_s, time.perf_counter() - t1)
    t2 = time.perf_counter()
    image = loop.finish(times)
    return {"select_s": select_s, "total_s": setup_s + select_s + time.perf_counter() - t2,
            "probes": loop.probes, "psnr": psnr(image, job.ground_truth_aif),
            "patch_times_s": times.tolist()}


def ours_job(job: SweepJob, repeats: int = 1, **config) -> tuple[dict, float]:
    """One job through run_pipeline (best of `repeats`); the selection's time includes binning
    the event stack it reads (the literal loop bins inside its probes)."""
    select_s = total_s = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result, info = run_pipeline_with_info(job, PipelineConfig(**config))
        total_s = min(total_s, time.perf_counter() - t0)
        select_s = min(select_s, (result.timings_ms["stack"] + result.timings_ms["select"]) / 1e3)
    patch_times = info["patch_times_s"]
    return ({"select_s": select_s, "total_s": total_s, "probes": None,
             "psnr": psnr(result.all_in_focus, job.ground_truth_aif),
             "patch_times_s": None if patch_times is None else np.ravel(patch_times).tolist()},
            info["threshold"])


def open_nets(report=print):
    """The torch backend on the shipped weights, or None (and why) when there are none."""
    from efs_ros.nets.checkpoint import MANIFEST_NAME, default_models_dir

    if not (default_models_dir() / MANIFEST_NAME).exists():
        report(f"   no {default_models_dir() / MANIFEST_NAME}: row (a) is not run and the "
               "other rows use the classical final stage")
        return None
    from efs_ros.infer import load_backend

    return load_backend("torch")


def one_thread(fn):
    """`fn` with torch held to one thread: numba's OpenMP kernels (the pipeline's) share the
    OpenMP runtime with torch and set its thread count back to the core count, and two threads
    on a shared 2-core machine make a pass up to 50x slower; every row must run alike."""
    import torch

    def call(*args):
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
        return fn(*args)
    return call


def warm(backend, size: int, patch: int) -> None:
    """First calls of each shape allocate and pick kernels: keep that out of every timing."""
    for s in (size, patch):
        backend.refocus(np.zeros((3, s, s), np.float32), np.zeros((64, s, s), np.float32))
    backend.merge_weights(np.zeros((2, 3, size, size), np.float32),
                          np.zeros((2, size, size), np.float32))


def _speedup(num: dict | None, den: dict | None) -> float:
    if num is None or den is None or den["select_s"] <= 0:
        return float("nan")
    return num["select_s"] / den["select_s"]


def _table(rows: list[dict], size: int, n_jobs: int, repeats: int, report) -> None:
    by = {r["row"]: r for r in rows}
    report(f"   {n_jobs} simulated sweep(s) at {size}x{size} (bench_quality 'paper' regime), means "
           f"per job of the best of {repeats}; select = the refocus-time selection alone (ours: "
           "with its event stack)")
    report(f"   {'method':48s} {'select ms':>10s} {'job s':>7s} {'PSNR dB':>8s} {'probes':>7s} "
           f"{'x vs (a)':>9s} {'x vs (b)':>9s}")
    for r in rows:
        probes = f"{r['probes']:7.0f}" if r["probes"] is not None else " " * 7
        cols = [f"{s:8.3g}x" if np.isfinite(s) else " " * 9
                for s in (_speedup(by.get("a"), r), _speedup(by.get("b"), r))]
        report(f"   {r['method']:48s} {r['select_s'] * 1e3:10.1f} {r['total_s']:7.2f} "
               f"{r['psnr']:8.2f} {probes} {cols[0]} {cols[1]}")
    a, b, c = by.get("a"), by["b"], by["c"]
    if a is not None:
        report(f"   speed-up from changing the probe (a)/(b): {_speedup(a, b):.1f}x (same loop; the "
               "net on the patch -> the classical refocus of the patch)")
    report(f"   speed-up from vectorisation (b)/(c): {_speedup(b, c):.1f}x (classical probes both; "
           f"patch by patch, {b['probes']:.0f} probes -> all patches per probe, one new probe per "
           "iteration)")
    if a is not None:
        report(f"   both (a)/(c): {_speedup(a, c):.0f}x")
    psnrs = [r["psnr"] for r in (a, b, c) if r is not None]
    report(f"   PSNR of the searches (same final stage): spread {max(psnrs) - min(psnrs):.2f} dB")


def run(quick: bool = False, report=print, n: int | None = None, size: int | None = None,
        repeats: int | None = None) -> list[dict]:
    """Rows (a)-(d) and the input frame: mean selection and job time, PSNR, probes, and the
    chosen patch times per job (for the tests); printed as one table. Times are the best of
    `repeats` runs per job (default 3, --quick 1): the cores are shared."""
    from efs_ros.tools.bench_quality import simulate_jobs

    size = size or 128
    reps = repeats or (1 if quick else 3)
    jobs = simulate_jobs(n or 1, size, "paper")
    if quick:
        jobs = jobs[:1]
    warm_up()  # numba's kernels load on first use: not inside the first row's timing
    backend = open_nets(report)
    threads = None
    net_kw = {}
    if backend is not None:
        import torch

        # one thread (see one_thread): slower than two on an idle machine, but steady
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        report(f"   nets: shipped weights through efs_ros.infer ({backend.name}, 1 thread); (a) runs "
               "the refocus net on the patch at every probe")
        rows_, cols_, _ = patch_grid(size, size, PipelineConfig().patch_grid)
        warm(backend, size, int(np.diff(rows_).max()))
        net_kw = {"refocus_net": one_thread(backend.refocus),
                  "merge_net": one_thread(backend.merge_weights)}
    per_row: dict[str, list[dict]] = {}
    try:
        for label, job, _ in jobs:
            per_row.setdefault(INPUT, []).append(
                {"select_s": 0.0, "total_s": 0.0, "probes": None, "patch_times_s": None,
                 "psnr": psnr(job.frame, job.ground_truth_aif)})
            row, threshold = ours_job(job, reps, method="golden")
            per_row.setdefault("c'", []).append(row)
            if net_kw:
                per_row.setdefault("c", []).append(ours_job(job, reps, method="golden", **net_kw)[0])
            per_row.setdefault("d", []).append(ours_job(job, reps)[0])
            if backend is not None:
                per_row.setdefault("a", []).append(literal_job(job, threshold, "net", net_kw, reps))
            per_row.setdefault("b", []).append(literal_job(job, threshold, "classical", net_kw, reps))
            report(f"   job {label} {size}x{size}: done")
    finally:
        if backend is not None:
            backend.close()
            import torch

            torch.set_num_threads(threads)
    if "c" not in per_row:  # no nets: (c) and (c') are the same run
        per_row["c"] = per_row["c'"]
    order = [INPUT, "a", "b", "c", "c'", "d"]
    rows = []
    for key in (k for k in order if k in per_row):
        results = per_row[key]
        probes = [r["probes"] for r in results if r["probes"] is not None]
        rows.append({"row": key, "method": ROWS.get(key, key), "jobs": len(results), "size": size,
                     "select_s": float(np.mean([r["select_s"] for r in results])),
                     "total_s": float(np.mean([r["total_s"] for r in results])),
                     "psnr": float(np.mean([r["psnr"] for r in results])),
                     "probes": float(np.mean(probes)) if probes else None,
                     "patch_times_s": [r["patch_times_s"] for r in results]})
    _table(rows, size, len(jobs), reps, report)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_search", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one sweep")
    parser.add_argument("--n", type=int, default=None, help="scenes (each clean and noisy)")
    parser.add_argument("--size", type=int, default=None, help="sweep width and height")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs per job and row, the best kept (default 3, --quick 1)")
    args = parser.parse_args(argv)
    run(quick=args.quick, n=args.n, size=args.size, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
