"""`make eval BAG=... OUT=...`: the nodes' pipeline over a recording, offline (CONTRACT section 3).

    python -m efs_ros.tools.eval BAG OUT [--method dense] [--merge refocus_map] [--bins 64]
                                         [--backend none|auto|NAME] [--models DIR]
                                         [--learned restore|slices] [--calib FILE] [--no-progress]

Messages go through the same JobAssembler as the live all-in-focus node, so replaying the
bag through the node gives the same jobs; each job runs `run_pipeline`. OUT receives per job
`<stamp_ns>_aif.png` (8-bit, the input frame's channels and transfer; rgb8 for Bayer frames),
`<stamp_ns>_depth.npy` (float32 m, NaN unknown), `<stamp_ns>_refocus.npy` (float32 s from the
frame stamp) and `summary.json`, rewritten after every job so that it always holds what was computed so far.

A recording it cannot use (missing topic, unknown encoding, size mismatch, corrupt or
truncated file) ends the run with exit status 1 and one stderr line
`efs_eval: error: <reason>`, after the jobs computable from the data before the fault were
written. Bad arguments exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from efs_ros.core.assembler import AssemblerConfig, JobAssembler
from efs_ros.core.calibration import CalibrationError, RigCalibration
from efs_ros.core.images import ImageError, decode_float, decode_frame, from_linear, output_encoding
from efs_ros.core.job import SweepJob, SweepResult
from efs_ros.core.sweeps import focus_from_joint_state
from efs_ros.io.recording import (
    REQUIRED_FOR_JOBS,
    TOPIC_EVENTS,
    TOPIC_FOCUS,
    TOPIC_GT_AIF,
    TOPIC_GT_DEPTH,
    TOPIC_IMAGE,
    RecordingError,
    read_recording,
)

PROG = "efs_eval"
METRIC_KEYS = ("wall_ms", "psnr", "ssim", "ms_ssim", "input_psnr", "input_ssim", "input_ms_ssim",
               "depth_abs_rel", "depth_coverage")


class EvalError(RuntimeError):
    """The recording cannot be used; str() is the one-line reason."""


def feed(assembler: JobAssembler, topic: str, msg) -> None:
    """Hand one CONTRACT message to the assembler, as the live node does.

    Raises EvalError when the message breaks the CONTRACT (unknown encoding, size mismatch),
    which makes the recording unusable for evaluation.
    """
    before = assembler.contract_violations
    if topic == TOPIC_EVENTS:
        assembler.add_event_packet(msg.stamp_ns, msg.width, msg.height, msg.encoding, msg.events,
                                   seq=msg.seq, is_bigendian=msg.is_bigendian)
    elif topic == TOPIC_IMAGE:
        assembler.add_frame_message(msg.stamp_ns, msg.width, msg.height, msg.encoding, msg.step,
                                    msg.data, msg.is_bigendian)
    elif topic == TOPIC_FOCUS:
        focus = focus_from_joint_state(msg.name, msg.position, msg.velocity)
        if focus is not None:
            assembler.add_focus(msg.stamp_ns, *focus)
    if assembler.contract_violations > before:
        raise EvalError(f"{topic}: {assembler.last_violation}")


class GroundTruth:
    """Ground-truth images by stamp (synthetic recordings); pruned as jobs pass them."""

    def __init__(self, transfer: str = "linear"):
        self.transfer = transfer
        """Synthetic truths share the frame's geometry and transfer (CONTRACT section 4)."""
        self.aif: dict[int, np.ndarray] = {}
        self.depth: dict[int, np.ndarray] = {}
        self.rejected = 0
        self.last_problem = ""

    def add(self, topic: str, msg) -> None:
        try:
            if topic == TOPIC_GT_AIF:
                self.aif[msg.stamp_ns] = decode_frame(msg.width, msg.height, msg.encoding, msg.step,
                                                      msg.data, msg.is_bigendian, transfer=self.transfer)
            else:
                self.depth[msg.stamp_ns] = decode_float(msg.width, msg.height, msg.step, msg.data,
                                                        msg.is_bigendian, msg.encoding)
        except ImageError as exc:
            self.rejected += 1
            self.last_problem = f"{topic}: {exc}"

    def take(self, stamp_ns: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        aif, depth = self.aif.pop(stamp_ns, None), self.depth.pop(stamp_ns, None)
        for table in (self.aif, self.depth):
            for old in [k for k in table if k < stamp_ns]:
                del table[old]
        return aif, depth


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def job_metrics(job: SweepJob, result: SweepResult, output_8bit: np.ndarray) -> dict:
    """Quality against ground truth where the recording has it (empty dict otherwise)."""
    from efs_ros.core.metrics import abs_rel, ms_ssim, psnr, ssim

    out: dict = {}
    gt = job.ground_truth_aif
    if gt is not None and gt.shape == job.frame.shape:
        output = output_8bit.astype(np.float32) / 255.0
        if job.encoding == "bgr8":
            output = output[:, :, ::-1]
        for prefix, image in (("", output), ("input_", job.frame)):
            out[prefix + "psnr"] = _finite(psnr(image, gt))
            out[prefix + "ssim"] = _finite(ssim(image, gt))
            out[prefix + "ms_ssim"] = _finite(ms_ssim(image, gt))
    depth = job.ground_truth_depth
    if depth is not None and depth.shape == result.depth.shape:
        value, coverage = abs_rel(result.depth, depth)
        out["depth_abs_rel"] = _finite(value)
        out["depth_coverage"] = _finite(coverage)
    return out


def write_png(path: Path, pixels: np.ndarray, encoding: str) -> None:
    """8-bit PNG with the input frame's channels (bgr is stored in PNG's RGB order)."""
    from PIL import Image

    if encoding in ("bgr8", "bgr16"):
        pixels = pixels[:, :, ::-1]
    if pixels.dtype == np.uint16:  # PIL writes 8-bit RGB; 16-bit outputs keep their top byte
        pixels = (pixels >> 8).astype(np.uint8)
    Image.fromarray(np.ascontiguousarray(pixels), mode="L" if pixels.ndim == 2 else "RGB").save(path)


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


class Evaluation:
    """Runs jobs, writes their files and keeps summary.json current."""

    def __init__(self, bag: Path, out: Path, pipeline_config, options: dict, transfer: str = "linear"):
        self.bag, self.out = bag, out
        self.pipeline_config = pipeline_config
        self.summary = {"bag": str(bag), "options": options, "complete": False, "error": None,
                        "jobs": [], "failed_jobs": [], "means": {}, "n_jobs": 0, "stats": {}}
        self.gt = GroundTruth(transfer)

    def run_job(self, job: SweepJob) -> None:
        from efs_ros.core.pipeline import JobError, run_pipeline

        aif, depth = self.gt.take(job.stamp_ns)
        job.ground_truth_aif, job.ground_truth_depth = aif, depth
        t0 = time.perf_counter()
        try:
            result = run_pipeline(job, self.pipeline_config)
        except JobError as exc:
            self.summary["failed_jobs"].append({"stamp_ns": job.stamp_ns, "reason": str(exc)})
            self.save()
            return
        wall_ms = (time.perf_counter() - t0) * 1e3
        encoding = output_encoding(job.encoding)
        pixels = from_linear(result.all_in_focus, encoding, transfer=job.frame_transfer)
        stem = str(int(job.stamp_ns))
        write_png(self.out / f"{stem}_aif.png", pixels, encoding)
        np.save(self.out / f"{stem}_depth.npy", np.asarray(result.depth, dtype=np.float32))
        np.save(self.out / f"{stem}_refocus.npy", np.asarray(result.refocus_map, dtype=np.float32))
        entry = {"stamp_ns": int(job.stamp_ns), "wall_ms": round(wall_ms, 3),
                 "sweep_index": int(job.meta.get("sweep_index", -1)),
                 "n_events": int(job.events.size)}
        entry.update(job_metrics(job, result, pixels))
        self.summary["jobs"].append(entry)
        self.save()

    def save(self, assembler: JobAssembler | None = None) -> None:
        jobs = self.summary["jobs"]
        means = {}
        for key in METRIC_KEYS:
            values = [j[key] for j in jobs if j.get(key) is not None]
            if values:
                means[key] = float(np.mean(values))
        self.summary["means"] = means
        self.summary["n_jobs"] = len(jobs)
        if assembler is not None:
            stats = assembler.stats()
            self.summary["stats"] = {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                                     for k, v in stats.items()}
            self.summary["stats"]["ground_truth_rejected"] = self.gt.rejected
        _atomic_json(self.out / "summary.json", self.summary)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("bag", type=Path, help="bag folder, .mcap or .db3 file")
    parser.add_argument("out", type=Path, help="output folder (created)")
    from efs_ros.core.pipeline import PipelineConfig

    parser.add_argument("--method", default=PipelineConfig.method,
                        help="refocus-time selection: dense | golden | uniform | event_rate")
    parser.add_argument("--merge", default=PipelineConfig.merge, help="refocus_map | focus | gradient")
    parser.add_argument("--bins", type=int, default=PipelineConfig.n_bins, help="time bins over the sweep")
    parser.add_argument("--backend", default="none",
                        help="learned nets: none (classical), auto, or a backend name")
    parser.add_argument("--models", type=Path, default=None, help="model folder for --backend")
    parser.add_argument("--learned", default="restore",
                        help="learned path with --backend: restore (one EvRestoreNet pass) | slices")
    parser.add_argument("--calib", type=Path, default=None,
                        help="rig calibration file (CONTRACT section 4); default: a pixel-registered, "
                        "linear, ideal-lens rig")
    parser.add_argument("--max-events", type=int, default=AssemblerConfig.max_events,
                        help="events held in memory at most")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _pipeline_config(args):
    from efs_ros.core.pipeline import PipelineConfig

    kwargs = {"method": args.method, "merge": args.merge, "n_bins": args.bins}
    if args.backend != "none":
        from efs_ros.infer import load_backend, pipeline_nets

        backend = load_backend(args.backend, args.models)
        kwargs.update(pipeline_nets(backend, args.learned))
    return PipelineConfig(**kwargs)


def _message_count(bag: Path) -> int | None:
    try:
        from rosbags.rosbag2 import Reader

        with Reader(bag) as reader:
            return int(reader.message_count)
    except Exception:  # noqa: BLE001 - only for the progress bar's total
        return None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def evaluate(bag: Path, out: Path, pipeline_config, options: dict, progress: bool = True,
             assembler_config: AssemblerConfig | None = None) -> tuple[dict, str | None]:
    """Evaluate one recording into `out`; returns (summary, error reason or None)."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    assembler_config = assembler_config or AssemblerConfig()
    run = Evaluation(bag, out, pipeline_config, options, assembler_config.calibration.frame_transfer)
    assembler = JobAssembler(assembler_config)
    error = None
    bar = tqdm(total=_message_count(bag) if progress else None, unit="msg", file=sys.stderr,
               disable=None if progress else True, desc=PROG, dynamic_ncols=True)
    try:
        for topic, msg, _ in read_recording(bag, required=REQUIRED_FOR_JOBS):
            bar.update(1)
            if topic in (TOPIC_GT_AIF, TOPIC_GT_DEPTH):
                run.gt.add(topic, msg)
                continue
            feed(assembler, topic, msg)
            for job in assembler.pop_jobs():
                run.run_job(job)
                bar.set_postfix(jobs=len(run.summary["jobs"]))
    except (RecordingError, EvalError) as exc:
        error = _one_line(str(exc))
    # whatever the stream allowed so far: complete sweeps whose events have all arrived
    for job in assembler.flush():
        run.run_job(job)
    bar.close()
    run.summary["complete"] = error is None
    run.summary["error"] = error
    run.save(assembler)
    return run.summary, error


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        calibration = RigCalibration.load(args.calib) if args.calib else RigCalibration()
    except CalibrationError as exc:
        print(f"{PROG}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    try:
        config = _pipeline_config(args)
    except Exception as exc:  # noqa: BLE001 - bad option or unusable backend: one line, status 2
        print(f"{PROG}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    options = {"method": args.method, "merge": args.merge, "bins": args.bins,
               "backend": args.backend}
    try:
        _, error = evaluate(args.bag, args.out, config, options, progress=not args.no_progress,
                            assembler_config=AssemblerConfig(max_events=args.max_events,
                                                             calibration=calibration))
    except OSError as exc:
        error = _one_line(f"{exc.filename or args.out}: {exc.strerror or exc}")
    if error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
