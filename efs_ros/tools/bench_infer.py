"""Per-job latency of each available inference backend, classical path beside it.

    python -m efs_ros.tools.bench_infer [--quick] [--slices 16] [--repeats 2]

For each size (346 x 260, a DAVIS346; 1280 x 720, a Prophesee Gen4) one synthetic job (a
textured frame, ~2 events per pixel over a 100 ms sweep, as the simulator gives at 256 px)
runs through the classical pipeline and through the learned path (refocus net at `slices`
times + merge net) of every backend that opens here. Rows also give one refocus pass and one
merge pass alone. Timings are the median over repeats after one warm-up; the machine and
device are printed with the table, since they decide the numbers.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from efs_ros.core.events import EVENT_DTYPE
from efs_ros.core.job import SweepJob

SIZES = ((260, 346), (720, 1280))


def synthetic_job(h: int, w: int, seed: int = 0, events_per_px: float = 2.0) -> SweepJob:
    """A frame with texture at several scales and random events over a 100 ms sweep."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.5 + 0.2 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + 0.1 * rng.standard_normal((h, w))
    frame = np.clip(np.stack([base, base * 0.9, base * 1.1], axis=-1), 0, 1).astype(np.float32)
    n = int(events_per_px * h * w)
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(-50_000, 50_000, n))
    ev["x"] = rng.integers(0, w, n)
    ev["y"] = rng.integers(0, h, n)
    ev["p"] = rng.choice(np.array([-1, 1], np.int8), n)
    focus_t = np.linspace(-0.05, 0.05, 51)
    return SweepJob(stamp_ns=0, frame=frame, encoding="rgb8", events=ev, focus_t=focus_t,
                    focus_dpt=np.linspace(0.5, 3.5, 51))


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: lazy allocation, kernel selection, engine build
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(times))


def _open_backends(names=None):
    from efs_ros.infer import BACKEND_NAMES, BackendUnavailableError, load_backend

    opened, skipped = [], {}
    for name in names or BACKEND_NAMES:
        try:
            opened.append(load_backend(name))
        except (BackendUnavailableError, ImportError) as exc:
            skipped[name] = str(exc)
    return opened, skipped


def run(quick: bool = False, slices: int = 16, repeats: int | None = None, backends=None,
        sizes=None) -> list[dict]:
    """Rows of {size, path, backend, ms_per_job, ms_refocus_pass, ms_merge_pass, slices};
    prints them as a table."""
    from efs_ros.core.pipeline import PipelineConfig, run_pipeline

    sizes = sizes or (SIZES[:1] if quick else SIZES)
    repeats = repeats if repeats is not None else (1 if quick else 2)
    if quick:
        slices = min(slices, 8)
    opened, skipped = _open_backends(backends)
    rows: list[dict] = []
    for h, w in sizes:
        job = synthetic_job(h, w)
        size = f"{w}x{h}"
        ms = _median_ms(lambda job=job: run_pipeline(job, PipelineConfig()), repeats)
        rows.append({"size": size, "path": "classical (dense, focus merge)", "backend": "numpy",
                     "ms_per_job": ms, "ms_refocus_pass": None, "ms_merge_pass": None, "slices": None})
        rng = np.random.default_rng(1)
        lf = np.log(job.frame.transpose(2, 0, 1) * 255 + 1).astype(np.float32)
        bins = rng.integers(-1, 2, (64, h, w)).astype(np.float32)
        stack = np.repeat(job.frame.transpose(2, 0, 1)[None], slices, axis=0)
        evs = rng.integers(-2, 3, (slices, h, w)).astype(np.float32)
        for b in opened:
            cfg = PipelineConfig(dense_times=slices, refocus_net=b.refocus, merge_net=b.merge_weights)
            try:
                ms_job = _median_ms(lambda job=job, cfg=cfg: run_pipeline(job, cfg), repeats)
                ms_ref = _median_ms(lambda b=b, a=(lf, bins): b.refocus(*a), repeats)
                ms_mer = _median_ms(lambda b=b, a=(stack, evs): b.merge_weights(*a), repeats)
            except (ValueError, RuntimeError) as exc:  # e.g. outside a TensorRT profile
                skipped[f"{b.name} at {size}"] = str(exc)
                continue
            rows.append({"size": size, "path": "learned refocus + merge", "backend": b.name,
                         "ms_per_job": ms_job, "ms_refocus_pass": ms_ref, "ms_merge_pass": ms_mer,
                         "slices": slices})
    _print(rows, skipped)
    return rows


def _print(rows: list[dict], skipped: dict) -> None:
    import torch

    print(f"   machine: {platform.machine()} {platform.processor() or ''} "
          f"torch threads {torch.get_num_threads()}"
          + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"))
    head = f"   {'size':>9} | {'path':<31} | {'backend':<18} | {'ms/job':>9} | {'refocus pass':>12} | " \
           f"{'merge pass':>10}"
    print(head)
    print("   " + "-" * (len(head) - 3))
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for r in rows:
        label = r["path"] + (f" x{r['slices']}" if r["slices"] else "")
        print(f"   {r['size']:>9} | {label:<31} | {r['backend']:<18} | {r['ms_per_job']:>9.1f} | "
              f"{fmt(r['ms_refocus_pass']):>12} | {fmt(r['ms_merge_pass']):>10}")
    for name, why in skipped.items():
        print(f"   {name}: not run ({why})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="346x260 only, 8 slices, one repeat")
    ap.add_argument("--slices", type=int, default=16, help="refocus times of the learned path")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--backend", action="append", default=None, help="only these backends")
    args = ap.parse_args(argv)
    run(quick=args.quick, slices=args.slices, repeats=args.repeats, backends=args.backend)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
