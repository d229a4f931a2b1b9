"""`make bench-quality`: all-in-focus quality on fixed, seeded sets of simulated sweeps.

Two regimes, each 2 x n sweeps (every scene seen by a clean and by a noisy v2e sensor: clean =
v2e defaults, threshold 0.2 +- 0.03, 300 Hz photoreceptor, no noise to speak of; noisy = v2e's
noisy preset, +- 0.05 mismatch, 30 Hz photoreceptor, 0.1 Hz leak, 5 Hz shot noise):

- "paper" (the default, first): the paper's optics, a 100 mm f/1.2 lens, with the pixel pitch
  scaled so that at 256 px the worst blur of the [0.5, 3.5] dpt focus range has a radius of
  10-16 px (drawn per scene); scenes of several depth layers (occluders over a slanted or
  fronto-parallel background, or one slanted plane) between 0.3 and 2 m, and the frame taken
  at a random point of the whole sweep, so it is strongly out of focus somewhere (input
  frames at 23-36 dB, 30 on average; the deblurring nets of the paper's Table 1 reach 26-28).
- "legacy": the earlier set, worst blur radius 10 px and the frame in the middle 70 % of the
  sweep, so frames are often nearly sharp (about 29-32 dB); kept for comparison.

Every method runs through the real pipeline (contrast threshold estimated from the job) and is
scored against the simulator's ground truth: PSNR, SSIM and MS-SSIM of the all-in-focus image,
depth AbsRel with its coverage, the estimated threshold, and the wall time. "oracle map"
refocuses every pixel to the time its true depth is in focus, as the refocus-map merge would
(same threshold, noise rate, event timing, shrinkage): what a perfect selection would give,
a reference for the selection methods, not a method (not a strict bound: the true depth's time
is not always the best time for a pixel next to an occluding edge). The scene seeds differ
from those the methods were developed on.

    python -m efs_ros.tools.bench_quality [--n 6] [--size 256] [--regime paper|legacy|both]
                                          [--json out.json] [--quick]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np

from efs_ros.core.job import SweepJob
from efs_ros.core.merge import merge_refocus_map
from efs_ros.core.metrics import abs_rel, ms_ssim, psnr, ssim
from efs_ros.core.pipeline import PipelineConfig, run_pipeline_with_info
from efs_ros.core.refocus import EventStack, EventTimeline, Refocuser, isolated_event_mask

METHODS: dict[str, dict] = {
    "event-rate AF + focus merge": dict(method="event_rate", merge="focus"),
    "uniform + focus merge": dict(method="uniform", merge="focus"),
    "golden (paper) + focus merge": dict(method="golden", merge="focus"),
    "golden (paper) + gradient fusion": dict(method="golden", merge="gradient"),
    "dense + focus merge": dict(method="dense", merge="focus"),
    "dense + refocus-map merge": dict(method="dense", merge="refocus_map"),
    "dense + refocus-map, no event timing": dict(method="dense", merge="refocus_map", event_timing=False),
    "dense + gradient fusion": dict(method="dense", merge="gradient"),
}
SCENE_KINDS = ("mixed", "layers", "slanted")


@dataclass
class Score:
    psnr: float
    ssim: float
    ms_ssim: float
    abs_rel: float
    coverage: float
    threshold: float
    ms: float


def score(job: SweepJob, image: np.ndarray, depth: np.ndarray | None, threshold: float, ms: float) -> Score:
    gt = job.ground_truth_aif
    ar, cov = abs_rel(depth, job.ground_truth_depth) if depth is not None else (float("nan"), 0.0)
    return Score(psnr(image, gt), ssim(image, gt), ms_ssim(image, gt), ar, cov, threshold, ms)


def oracle_refocus_map(job: SweepJob) -> np.ndarray:
    """Per pixel, the sweep time at which the lens focused at its true depth (NaN depth: the
    sweep's far end)."""
    gt = job.ground_truth_depth
    vergence = np.where(np.isfinite(gt) & (gt > 0), 1.0 / np.where(gt > 0, gt, 1.0), 0.0)
    order = np.argsort(job.focus_dpt)
    return np.interp(vergence, job.focus_dpt[order], job.focus_t[order]).astype(np.float32)


REGIMES = ("paper", "legacy")
PAPER_BLUR_RADIUS_PX = (10.0, 16.0)
"""Worst blur radius of the focus range at 256 px in the paper regime, drawn per scene."""


def rig_for(regime: str, i: int, size: int):
    """The rig of scene i in a regime (see the module doc); seeded by the scene index."""
    from efs_ros.sim.optics import ThinLens
    from efs_ros.sim.rig import RigConfig

    kind = SCENE_KINDS[i % len(SCENE_KINDS)]
    if regime == "legacy":
        return RigConfig(height=size, width=size, scene_kind=kind)
    if regime != "paper":
        raise ValueError(f"unknown regime {regime!r}; expected one of {REGIMES}")
    radius_256 = np.random.default_rng(2000 + i).uniform(*PAPER_BLUR_RADIUS_PX)
    near_dpt, far_dpt = RigConfig.near_dpt, RigConfig.far_dpt
    lens = ThinLens.default(size, max_radius_px=radius_256 * size / 256.0, near_dpt=near_dpt,
                            far_dpt=far_dpt)
    return RigConfig(height=size, width=size, scene_kind=kind, frame_fraction=(0.0, 1.0), lens=lens)


def simulate_jobs(n: int, size: int, regime: str = "paper") -> list[tuple[str, SweepJob, float]]:
    """(label, job, true threshold) for n scenes x {clean, noisy}; fixed seeds."""
    from efs_ros.sim.rig import simulate_sweep
    from efs_ros.sim.sensor import SensorConfig

    out = []
    for i in range(n):
        rig = rig_for(regime, i, size)
        for label, sensor in (("clean", SensorConfig.clean()), ("noisy", SensorConfig.noisy())):
            sweep = simulate_sweep(rig, sensor, np.random.default_rng(1000 + i))
            out.append((label, sweep.to_job(stamp_ns=1_000_000_000 + i), float(sensor.threshold_pos)))
    return out


def run(n: int, size: int, quick: bool = False, regime: str = "paper") -> dict:
    t_sim = time.perf_counter()
    jobs = simulate_jobs(n, size, regime)
    sim_s = time.perf_counter() - t_sim
    methods = {k: v for k, v in METHODS.items() if not quick or "gradient" not in k}
    rows: dict[str, dict[str, list[Score]]] = {}

    def add(name: str, label: str, s: Score):
        rows.setdefault(name, {}).setdefault(label, []).append(s)

    for label, job, _true_c in jobs:
        add("input frame", label, score(job, job.frame, None, float("nan"), 0.0))
        info = {}
        for name, kw in methods.items():
            t0 = time.perf_counter()
            result, info = run_pipeline_with_info(job, PipelineConfig(**kw))
            ms = 1000.0 * (time.perf_counter() - t0)
            add(name, label, score(job, result.all_in_focus, result.depth, info["threshold"], ms))
        threshold = info["threshold"]
        oracle = oracle_image(job, threshold, info["noise_rate_hz"], info["event_filter_us"])
        add("oracle map (true-depth times)", label, score(job, oracle, None, threshold, float("nan")))
    true_c = sorted({c for _, _, c in jobs})
    return {"regime": regime, "n_scenes": n, "size": size, "simulate_s": sim_s, "true_threshold": true_c,
            "rows": {name: {label: [s.__dict__ for s in scores] for label, scores in by.items()}
                     for name, by in rows.items()}}


def oracle_image(job: SweepJob, threshold: float, noise_rate_hz: float, filter_us: float) -> np.ndarray:
    """Every pixel refocused to the time its true depth is in focus, exactly as the refocus-map
    merge does it (the pipeline's filtered events, threshold, noise rate, event timing and
    shrinkage): the merge with a perfect selection."""
    cfg = PipelineConfig()
    h, w = job.height, job.width
    events = job.events
    if filter_us > 0 and len(events):
        events = events[~isolated_event_mask(events, h, w, filter_us)]
    stack = EventStack(events, h, w, job.sweep_span_s, cfg.n_bins)
    span_us = (stack.span_s[0] * 1e6, stack.span_s[1] * 1e6)
    refocuser = Refocuser(job.frame, stack, threshold, cfg.response, cfg.colour,
                          noise_rate_hz=noise_rate_hz, timeline=EventTimeline(events, h, w, span_us))
    return merge_refocus_map(refocuser, oracle_refocus_map(job), cfg.shrink_window)


def _mean(values) -> float:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    return float(v.mean()) if v.size else float("nan")


def summarise(report: dict) -> dict:
    """Per method and sensor: means, and the PSNR gain over the input frame."""
    out: dict[str, dict] = {}
    frame = report["rows"]["input frame"]
    for name, by in report["rows"].items():
        out[name] = {}
        for label, scores in by.items():
            base = [s["psnr"] for s in frame[label]]
            out[name][label] = {
                "psnr": _mean(s["psnr"] for s in scores),
                "gain_db": _mean(s["psnr"] - b for s, b in zip(scores, base, strict=True)),
                "ssim": _mean(s["ssim"] for s in scores),
                "ms_ssim": _mean(s["ms_ssim"] for s in scores),
                "abs_rel": _mean(s["abs_rel"] for s in scores),
                "coverage": _mean(s["coverage"] for s in scores),
                "threshold": _mean(s["threshold"] for s in scores),
                "ms": _mean(s["ms"] for s in scores),
            }
    return out


REGIME_LINES = {
    "paper": "paper regime: 100 mm f/1.2, worst blur radius 10-16 px at 256 px, frame anywhere in the sweep",
    "legacy": "legacy regime: worst blur radius 10 px, frame in the middle 70 % of the sweep "
              "(often nearly sharp)",
}


def print_table(report: dict, summary: dict) -> None:
    print(REGIME_LINES.get(report.get("regime", ""), report.get("regime", "")))
    print(f"{report['n_scenes']} scenes x (clean, noisy v2e), {report['size']} x {report['size']}; "
          f"true threshold {report['true_threshold']}; simulation {report['simulate_s']:.1f} s")
    head = (f"{'method':38s} {'sensor':6s} {'PSNR':>6s} {'gain':>6s} {'SSIM':>6s} {'MS-SSIM':>7s} "
            f"{'AbsRel':>7s} {'cover':>6s} {'c est':>6s} {'ms':>6s}")
    print(head)
    print("-" * len(head))
    for name, by in summary.items():
        for label, m in by.items():
            print(f"{name:38s} {label:6s} {m['psnr']:6.2f} {m['gain_db']:+6.2f} {m['ssim']:6.3f} "
                  f"{m['ms_ssim']:7.3f} {m['abs_rel']:7.3f} {m['coverage']:6.2f} {m['threshold']:6.3f} "
                  f"{m['ms']:6.0f}")
    best = max((k for k in summary if "oracle" not in k and k != "input frame"),
               key=lambda k: summary[k].get("clean", {}).get("gain_db", -1e9))
    noisy = summary[best].get("noisy", {}).get("gain_db", float("nan"))
    print(f"best on clean sweeps: {best}, {summary[best]['clean']['gain_db']:+.2f} dB over the input frame "
          f"(target +6 dB); on noisy sweeps {noisy:+.2f} dB{' (a loss)' if noisy < 0 else ''}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=6, help="scenes (each seen by a clean and a noisy sensor)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--regime", choices=REGIMES + ("both",), default="both")
    ap.add_argument("--json", help="also write the per-sweep scores and the summary here")
    ap.add_argument("--quick", action="store_true", help="skip the gradient-fusion rows")
    args = ap.parse_args(argv)
    if args.n < 1 or args.size < 32:
        print("bench_quality: need --n >= 1 and --size >= 32", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    out = {}
    for regime in (REGIMES if args.regime == "both" else (args.regime,)):
        report = run(args.n, args.size, args.quick, regime)
        summary = summarise(report)
        print_table(report, summary)
        print()
        out[regime] = {"summary": summary, **report}
    print(f"total {time.perf_counter() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, allow_nan=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
