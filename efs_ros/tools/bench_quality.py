"""`make bench-quality`: all-in-focus image and depth quality over a seeded matrix of rig families.

Each family (sim/families.py) is a set of ranges (sensor size, worst blur, lens, focus range, frame position,
event sensor, frame noise, textures, scene geometry); every scene draws its rig at random inside
them from a fixed seed, so the numbers cannot be tuned to one regime. The last family,
"held-out", spans the widest ranges with textures from the validation pool and its own seeds:
it is never used to develop a method, and is reported last.

Rows per family: the input frame, the naive reference (core.naive, fixed by issue 11: the floor
every method must clear), the methods, and the oracle map (every pixel refocused to the time its
true depth is in focus, exactly as the refocus-map merge does it: what a perfect selection
would give; not a strict bound next to occluding edges). Scores against the simulator's ground
truth: PSNR, SSIM, depth AbsRel over textured pixels (metrics.textured_mask of the true image)
with the coverage of those pixels, and the wall time per job.

Simulated sweeps are cached (keyed by the rig, the sensor and the simulator's source), so a
second run only re-runs the methods.

    python -m efs_ros.tools.bench_quality [--n 4] [--families a,b] [--methods a,b] [--learned]
                                          [--json out.json] [--quick] [--no-cache]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from efs_ros.core.job import SweepJob, SweepResult
from efs_ros.core.metrics import abs_rel, psnr, ssim, textured_mask
from efs_ros.core.naive import naive_stack
from efs_ros.core.pipeline import PipelineConfig, run_pipeline_with_info
from efs_ros.sim.families import FAMILIES, FAMILY_NAMES, Draw, RigFamily, draw


def _sim_source_hash() -> str:
    import efs_ros.sim as sim

    digest = hashlib.sha256()
    for path in sorted(Path(sim.__file__).parent.glob("*.py")):
        if path.name != "families.py":  # the draws are in the key already (rig and sensor)
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    root = os.environ.get("EFS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "efs_ros")
    return Path(root) / "bench_quality"


JOB_ARRAYS = ("frame", "events", "focus_t", "focus_dpt", "ground_truth_aif", "ground_truth_depth")


def simulate(d: Draw, use_cache: bool = True) -> SweepJob:
    """The job of one draw (cached on disk by rig, sensor and simulator source)."""
    from efs_ros.sim.rig import simulate_sweep

    what = repr((d.family, d.index, d.rig, d.sensor, _sim_source_hash()))
    key = hashlib.sha256(what.encode()).hexdigest()[:20]
    path = cache_dir() / f"{d.family}-{d.index}-{key}.npz"
    if use_cache and path.exists():
        with np.load(path) as z:
            arrays = {k: z[k] for k in JOB_ARRAYS}
            exposure = float(z["exposure_s"])
    else:
        sweep = simulate_sweep(d.rig, d.sensor, np.random.default_rng([d.rig.width, d.index, 7]))
        job = sweep.to_job(stamp_ns=1_000_000_000 + d.index)
        arrays = {k: getattr(job, k) for k in JOB_ARRAYS}
        exposure = job.exposure_s
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, exposure_s=exposure, **arrays)
            os.replace(tmp, path)
    return SweepJob(stamp_ns=1_000_000_000 + d.index, frame=arrays["frame"], encoding="rgb8",
                    events=arrays["events"], focus_t=arrays["focus_t"], focus_dpt=arrays["focus_dpt"],
                    exposure_s=exposure, ground_truth_aif=arrays["ground_truth_aif"],
                    ground_truth_depth=arrays["ground_truth_depth"], meta={"source": "bench_quality"})


# ----------------------------------------------------------------------------------------------
# Methods: each maps a job to a SweepResult

Method = Callable[[SweepJob], SweepResult]


def pipeline_method(**kw) -> Method:
    def method(job: SweepJob) -> SweepResult:
        return run_pipeline_with_info(job, PipelineConfig(**kw))[0]
    return method


MODELS_DIR: str | None = None
"""--models: the nets' folder (None: the shipped ones)."""


def learned_method(learned: str = "slices") -> Method | None:
    """The shipped nets through onnxruntime on one learned path, or None (saying why) without
    them."""
    try:
        from efs_ros.infer import load_backend, pipeline_nets
        backend = load_backend("onnxruntime", MODELS_DIR)
        if learned == "restore" and not backend.has_restore:
            raise RuntimeError("the models folder has no evrestorenet")
    except Exception as exc:  # noqa: BLE001 - no models or runtime: the row is left out, saying why
        print(f"bench_quality: learned {learned} row left out: {exc}", file=sys.stderr)
        return None
    return pipeline_method(**pipeline_nets(backend, learned))


BASELINE = "naive reference"
CLASSICAL = "classical (dense + refocus-map merge)"
RESTORE = "classical + EvRestoreNet (onnxruntime)"
DEFAULT = RESTORE
"""The default path: what the node runs without a GPU (backend auto -> onnxruntime-cpu with the
restore net); CLASSICAL stands in when the models folder has no restore net."""
METHODS: dict[str, Callable[[], Method | None]] = {
    BASELINE: lambda: naive_stack,
    RESTORE: lambda: learned_method("restore"),
    CLASSICAL: lambda: pipeline_method(),
    "dense + focus merge": lambda: pipeline_method(merge="focus"),
    "golden (paper) + focus merge": lambda: pipeline_method(method="golden"),
    "uniform 64 + focus merge": lambda: pipeline_method(method="uniform"),
}
LEARNED = "per-slice nets (onnxruntime)"
INPUT, ORACLE = "input frame", "oracle map (true-depth times)"


def oracle_refocus_map(job: SweepJob) -> np.ndarray:
    """Per pixel, the sweep time at which the lens focused at its true depth (NaN depth: the
    sweep's far end)."""
    gt = job.ground_truth_depth
    vergence = np.where(np.isfinite(gt) & (gt > 0), 1.0 / np.where(gt > 0, gt, 1.0), 0.0)
    order = np.argsort(job.focus_dpt)
    return np.interp(vergence, job.focus_dpt[order], job.focus_t[order]).astype(np.float32)


def oracle_image(job: SweepJob) -> np.ndarray:
    """Every pixel refocused to the time its true depth is in focus by the default pipeline
    itself (its filter, threshold, noise rate, event timing and shrinkage): the merge with a
    perfect selection."""
    return run_pipeline_with_info(job, PipelineConfig(), refocus_map=oracle_refocus_map(job))[0].all_in_focus


# ----------------------------------------------------------------------------------------------
# Scoring and the report

@dataclass
class Score:
    psnr: float
    ssim: float
    abs_rel: float
    coverage: float
    ms: float
    confident_abs_rel: float = float("nan")
    """Depth AbsRel where the method's own confidence is >= CONFIDENT (a user's threshold)."""
    confident_coverage: float = 0.0


CONFIDENT = 0.5


def score(job: SweepJob, image: np.ndarray, depth: np.ndarray | None, ms: float,
          textured: np.ndarray, confidence: np.ndarray | None = None) -> Score:
    gt = job.ground_truth_aif
    ar, cov = abs_rel(depth, job.ground_truth_depth, textured) if depth is not None else (float("nan"), 0.0)
    sure_ar, sure_cov = float("nan"), 0.0
    if depth is not None and confidence is not None:
        sure = np.where(np.asarray(confidence) >= CONFIDENT, depth, np.nan)
        sure_ar, sure_cov = abs_rel(sure, job.ground_truth_depth, textured)
    return Score(psnr(image, gt), ssim(image, gt), ar, cov, ms, sure_ar, sure_cov)


def run(families: list[RigFamily], n: int, methods: dict[str, Method], use_cache: bool = True,
        progress=None) -> dict:
    """Per family, per row: the list of per-scene scores; plus each scene's drawn parameters."""
    rows: dict[str, dict[str, list[dict]]] = {}
    scenes: dict[str, list[dict]] = {}
    sim_s = 0.0
    for fam in families:
        by = rows.setdefault(fam.name, {})
        for i in range(n):
            d = draw(fam, i)
            t0 = time.perf_counter()
            job = simulate(d, use_cache)
            sim_s += time.perf_counter() - t0
            textured = textured_mask(job.ground_truth_aif)
            scenes.setdefault(fam.name, []).append({**d.params, "n_events": int(len(job.events)),
                                                     "textured": float(textured.mean())})
            by.setdefault(INPUT, []).append(asdict(score(job, job.frame, None, 0.0, textured)))
            for name, method in methods.items():
                t = time.perf_counter()
                result = method(job)
                ms = 1000.0 * (time.perf_counter() - t)
                by.setdefault(name, []).append(asdict(score(job, result.all_in_focus, result.depth, ms,
                                                            textured, result.confidence)))
            by.setdefault(ORACLE, []).append(asdict(score(job, oracle_image(job), None, float("nan"),
                                                          textured)))
            if progress:
                progress(f"{fam.name} {i + 1}/{n}: {d.params['size']} {d.params['sensor']} "
                         f"{d.params['scene']} {d.params['textures']}")
    return {"n_per_family": n, "simulate_s": sim_s, "rows": rows, "scenes": scenes,
            "families": {f.name: asdict(f) for f in families}}


def _mean(values) -> float:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    return float(v.mean()) if v.size else float("nan")


SCORE_KEYS = ("psnr", "ssim", "abs_rel", "coverage", "ms", "confident_abs_rel", "confident_coverage")


def summarise(report: dict) -> dict:
    """Per family and row: means, and the PSNR gain over the naive reference (scene by scene)."""
    out: dict[str, dict[str, dict]] = {}
    for fam, by in report["rows"].items():
        base = [s["psnr"] for s in by[BASELINE]] if BASELINE in by else None
        out[fam] = {}
        for name, scores in by.items():
            m = {k: _mean(s[k] for s in scores) for k in SCORE_KEYS}
            m["vs_naive_db"] = _mean(s["psnr"] - b for s, b in zip(scores, base, strict=True)) if base else \
                float("nan")
            m["min_vs_naive_db"] = float(min(s["psnr"] - b for s, b in zip(scores, base, strict=True))) \
                if base else float("nan")
            out[fam][name] = m
    rows = {name for by in out.values() for name in by}
    out["mean"] = {name: {k: _mean(out[f][name][k] for f in report["rows"] if name in out[f])
                          for k in (*SCORE_KEYS, "vs_naive_db")}
                   for name in sorted(rows, key=list(next(iter(out.values()))).index)}
    return out


def targets(summary: dict, default: str = DEFAULT) -> list[tuple[str, bool]]:
    """Issue 11's targets for the default path, each with whether it holds."""
    fams = [f for f in summary if f != "mean"]
    out = []
    for f in fams:
        d, base, inp = summary[f][default], summary[f][BASELINE], summary[f][INPUT]
        out.append((f"{f}: default >= naive + 1.5 dB ({d['vs_naive_db']:+.2f})", d["vs_naive_db"] >= 1.5))
        out.append((f"{f}: default >= input frame ({d['psnr'] - inp['psnr']:+.2f} dB)",
                    d["psnr"] >= inp["psnr"]))
        out.append((f"{f}: SSIM above naive and input ({d['ssim']:.3f} vs {base['ssim']:.3f}, "
                    f"{inp['ssim']:.3f})", d["ssim"] > max(base["ssim"], inp["ssim"])))
        ok = any(d[a] <= 0.08 and d[c] >= 0.6 for a, c in (("abs_rel", "coverage"),
                                                            ("confident_abs_rel", "confident_coverage")))
        out.append((f"{f}: depth AbsRel <= 0.08 at coverage >= 60 % ({d['abs_rel']:.3f} at "
                    f"{d['coverage']:.0%}; confidence >= {CONFIDENT}: {d['confident_abs_rel']:.3f} at "
                    f"{d['confident_coverage']:.0%})", ok))
    m = summary["mean"][default]
    out.append((f"mean: default >= naive + 2.5 dB ({m['vs_naive_db']:+.2f})", m["vs_naive_db"] >= 2.5))
    return out


def print_report(report: dict, summary: dict, out=print) -> None:
    head = (f"{'row':40s} {'PSNR':>6s} {'vs naive':>8s} {'worst':>6s} {'SSIM':>6s} {'AbsRel':>7s} "
            f"{'cover':>6s} {'conf.AR':>7s} {'cover':>6s} {'ms':>6s}")
    for fam, by in summary.items():
        about = report["families"][fam]["about"] if fam in report["families"] else \
            f"mean over the {len(summary) - 1} families"
        held = " [held out]" if report["families"].get(fam, {}).get("held_out") else ""
        out(f"== {fam}{held}: {about}")
        out(head)
        for name, m in by.items():
            worst = m.get("min_vs_naive_db", float("nan"))
            out(f"{name:40s} {m['psnr']:6.2f} {m['vs_naive_db']:+8.2f} {worst:+6.2f} {m['ssim']:6.3f} "
                f"{m['abs_rel']:7.3f} {m['coverage']:6.0%} {m['confident_abs_rel']:7.3f} "
                f"{m['confident_coverage']:6.0%} {m['ms']:6.0f}")
        out("")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4, help="scenes per family")
    ap.add_argument("--families", default=",".join(FAMILY_NAMES),
                    help=f"comma-separated subset of {', '.join(FAMILY_NAMES)}")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated rows besides the "
                    "input, the naive reference and the oracle")
    ap.add_argument("--learned", action="store_true", help=f"add the row '{LEARNED}'")
    ap.add_argument("--quick", action="store_true", help="naive reference and default path only")
    ap.add_argument("--json", help="write the per-scene scores, the draws and the summary here")
    ap.add_argument("--no-cache", action="store_true", help="simulate every sweep afresh")
    ap.add_argument("--models", default=None, help="folder of the nets (default: the shipped models)")
    args = ap.parse_args(argv)
    global MODELS_DIR
    MODELS_DIR = args.models
    names = [s for s in args.families.split(",") if s]
    unknown = [s for s in names if s not in FAMILY_NAMES]
    wanted = [s for s in args.methods.split(",") if s] if not args.quick else [DEFAULT, CLASSICAL]
    bad = [s for s in wanted if s not in METHODS]
    if args.n < 1 or unknown or bad:
        print(f"bench_quality: need --n >= 1 and known names (unknown: {unknown + bad})", file=sys.stderr)
        return 2
    families = sorted((f for f in FAMILIES if f.name in names), key=lambda f: f.held_out)
    methods = {BASELINE: naive_stack}
    methods.update({k: m for k in wanted if k != BASELINE and (m := METHODS[k]()) is not None})
    default = DEFAULT if DEFAULT in methods else CLASSICAL
    if args.learned and (learned := learned_method()) is not None:
        methods[LEARNED] = learned
    t0 = time.perf_counter()
    report = run(families, args.n, methods, not args.no_cache,
                 progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
    summary = summarise(report)
    print(f"{len(families)} families x {args.n} scenes; simulation {report['simulate_s']:.0f} s")
    print_report(report, summary)
    print(f"default path: {default}")
    for line, ok in targets(summary, default):
        print(f"{'PASS' if ok else 'FAIL'}  {line}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, **report}, f, indent=1, allow_nan=True)
    return 0


# ----------------------------------------------------------------------------------------------
# The "paper" regime of earlier benches, kept for bench_search: 100 mm f/1.2, worst blur radius
# 10-16 px at 256 px, frame anywhere in the sweep, clean and noisy v2e sensor per scene.

PAPER_BLUR_RADIUS_PX = (10.0, 16.0)
PAPER_SCENE_KINDS = ("mixed", "layers", "slanted")


def simulate_jobs(n: int, size: int, regime: str = "paper") -> list[tuple[str, SweepJob, float]]:
    """(label, job, true threshold) for n scenes x {clean, noisy}; fixed seeds."""
    from efs_ros.sim.optics import ThinLens
    from efs_ros.sim.rig import RigConfig, simulate_sweep
    from efs_ros.sim.sensor import SensorConfig

    if regime != "paper":
        raise ValueError(f"unknown regime {regime!r}; only 'paper' is kept")
    out = []
    for i in range(n):
        radius_256 = np.random.default_rng(2000 + i).uniform(*PAPER_BLUR_RADIUS_PX)
        lens = ThinLens.default(size, max_radius_px=radius_256 * size / 256.0, near_dpt=RigConfig.near_dpt,
                                far_dpt=RigConfig.far_dpt)
        rig = RigConfig(height=size, width=size, scene_kind=PAPER_SCENE_KINDS[i % 3],
                        frame_fraction=(0.0, 1.0), lens=lens)
        for label, sensor in (("clean", SensorConfig.clean()), ("noisy", SensorConfig.noisy())):
            sweep = simulate_sweep(rig, sensor, np.random.default_rng(1000 + i))
            out.append((label, sweep.to_job(stamp_ns=1_000_000_000 + i), float(sensor.threshold_pos)))
    return out


if __name__ == "__main__":
    sys.exit(main())
