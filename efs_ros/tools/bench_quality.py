"""`make bench-quality`: all-in-focus quality on a fixed, seeded set of simulated sweeps.

For each sweep (the same scenes seen by a clean and by a noisy v2e sensor) every method runs
through the real pipeline and is scored against the simulator's ground truth: PSNR, SSIM and
MS-SSIM of the all-in-focus image, depth AbsRel with its coverage, the contrast threshold the
pipeline estimated, and the wall time. "oracle map" refocuses every pixel to the time its true
depth is in focus (with the pipeline's estimated threshold): the best any refocus-time selection
can do with Equation 5, a bound for the selection methods, not a method.

    python -m efs_ros.tools.bench_quality [--n 6] [--size 256] [--json out.json] [--quick]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np

from efs_ros.core.job import SweepJob
from efs_ros.core.metrics import abs_rel, ms_ssim, psnr, ssim
from efs_ros.core.pipeline import PipelineConfig, run_pipeline_with_info
from efs_ros.core.refocus import EventStack, Refocuser

METHODS: dict[str, dict] = {
    "event-rate AF + focus merge": dict(method="event_rate", merge="focus"),
    "uniform + focus merge": dict(method="uniform", merge="focus"),
    "golden (paper) + focus merge": dict(method="golden", merge="focus"),
    "golden (paper) + gradient fusion": dict(method="golden", merge="gradient"),
    "dense + focus merge": dict(method="dense", merge="focus"),
    "dense + refocus-map merge": dict(method="dense", merge="refocus_map"),
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


def simulate_jobs(n: int, size: int) -> list[tuple[str, SweepJob, float]]:
    """(label, job, true threshold) for n scenes x {clean, noisy}; fixed seeds."""
    from efs_ros.sim.rig import RigConfig, simulate_sweep
    from efs_ros.sim.sensor import SensorConfig

    out = []
    for i in range(n):
        rig = RigConfig(height=size, width=size, scene_kind=SCENE_KINDS[i % len(SCENE_KINDS)])
        for label, sensor in (("clean", SensorConfig.clean()), ("noisy", SensorConfig.noisy())):
            sweep = simulate_sweep(rig, sensor, np.random.default_rng(1000 + i))
            out.append((label, sweep.to_job(stamp_ns=1_000_000_000 + i), float(sensor.threshold_pos)))
    return out


def run(n: int, size: int, quick: bool = False) -> dict:
    t_sim = time.perf_counter()
    jobs = simulate_jobs(n, size)
    sim_s = time.perf_counter() - t_sim
    methods = {k: v for k, v in METHODS.items() if not quick or "gradient" not in k}
    rows: dict[str, dict[str, list[Score]]] = {}

    def add(name: str, label: str, s: Score):
        rows.setdefault(name, {}).setdefault(label, []).append(s)

    for label, job, _true_c in jobs:
        add("input frame", label, score(job, job.frame, None, float("nan"), 0.0))
        threshold = None
        for name, kw in methods.items():
            t0 = time.perf_counter()
            result, info = run_pipeline_with_info(job, PipelineConfig(**kw))
            ms = 1000.0 * (time.perf_counter() - t0)
            add(name, label, score(job, result.all_in_focus, result.depth, info["threshold"], ms))
            threshold = info["threshold"]
        stack = EventStack(job.events, job.height, job.width, job.sweep_span_s, PipelineConfig().n_bins)
        oracle = Refocuser(job.frame, stack, threshold).image_at_pixel_times(oracle_refocus_map(job))
        add("oracle map (bound)", label, score(job, oracle, None, threshold, float("nan")))
    true_c = sorted({c for _, _, c in jobs})
    return {"n_scenes": n, "size": size, "simulate_s": sim_s, "true_threshold": true_c,
            "rows": {name: {label: [s.__dict__ for s in scores] for label, scores in by.items()}
                     for name, by in rows.items()}}


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


def print_table(report: dict, summary: dict) -> None:
    print(f"{report['n_scenes']} scenes x (clean, noisy v2e), {report['size']} x {report['size']}; "
          f"true threshold {report['true_threshold']}; simulation {report['simulate_s']:.1f} s")
    head = (f"{'method':34s} {'sensor':6s} {'PSNR':>6s} {'gain':>6s} {'SSIM':>6s} {'MS-SSIM':>7s} "
            f"{'AbsRel':>7s} {'cover':>6s} {'c est':>6s} {'ms':>6s}")
    print(head)
    print("-" * len(head))
    for name, by in summary.items():
        for label, m in by.items():
            print(f"{name:34s} {label:6s} {m['psnr']:6.2f} {m['gain_db']:+6.2f} {m['ssim']:6.3f} "
                  f"{m['ms_ssim']:7.3f} {m['abs_rel']:7.3f} {m['coverage']:6.2f} {m['threshold']:6.3f} "
                  f"{m['ms']:6.0f}")
    best = max((k for k in summary if "oracle" not in k and k != "input frame"),
               key=lambda k: summary[k].get("clean", {}).get("gain_db", -1e9))
    print(f"best on clean sweeps: {best}, {summary[best]['clean']['gain_db']:+.2f} dB over the input frame "
          f"(target +6 dB)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=6, help="scenes (each seen by a clean and a noisy sensor)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--json", help="also write the per-sweep scores and the summary here")
    ap.add_argument("--quick", action="store_true", help="skip the gradient-fusion rows")
    args = ap.parse_args(argv)
    if args.n < 1 or args.size < 32:
        print("bench_quality: need --n >= 1 and --size >= 32", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    report = run(args.n, args.size, args.quick)
    summary = summarise(report)
    print_table(report, summary)
    print(f"total {time.perf_counter() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, **report}, f, indent=1, allow_nan=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
