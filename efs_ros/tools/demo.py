"""`make demo`: the whole graph with no hardware, in one process, and what it produced.

    python -m efs_ros.tools.demo [--out out/demo] [--jobs 6] [--timeout 120]

Brings up focus_controller (sim lens) + sim_rig + all_in_focus, one executor per node
(DDS confined to this host), waits for a few all-in-focus images, then writes per job the
input frame, the output, the ground truth (8-bit linear, as published) and a colour-mapped
depth map, plus `figure.png` (input | output | ground truth | depth, shown with the sRGB
curve so that linear images look natural), and prints PSNR of input and output against the
ground truth. Exits 0 when it got images; otherwise non-zero with the reason (a missing
module, a node that failed to start, or no output in time with the node's last diagnostics).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time
from pathlib import Path

import numpy as np

from efs_ros.rosenv import ensure_ros_environment

PROG = "efs_demo"
REQUIRED_MODULES = (
    "efs_ros.core.assembler", "efs_ros.core.pipeline", "efs_ros.core.images",
    "efs_ros.core.evt3", "efs_ros.sim.rig", "efs_ros.sim.optics", "efs_ros.sim.sensor",
    "efs_ros.lens.sim", "efs_ros.nodes.focus_controller", "efs_ros.nodes.sim_rig",
    "efs_ros.nodes.all_in_focus",
)
STATUS_NAME = "all_in_focus: pipeline"


class DemoError(RuntimeError):
    """Why the demo could not show anything; one line."""


def check_modules() -> None:
    """The demo must not pretend: every piece of the graph has to be there."""
    missing = []
    for name in REQUIRED_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    if missing:
        raise DemoError("missing: " + "; ".join(missing))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    parser.add_argument("--jobs", type=int, default=6, help="all-in-focus images to collect")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for them")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--frame-rate", type=float, default=4.0, help="camera frames per second")
    parser.add_argument("--method", default="dense", help="all_in_focus method parameter")
    parser.add_argument("--backend", default="auto",
                        help="all_in_focus backend (auto, the node's default: a GPU backend, else the "
                        "restore pass on onnxruntime-cpu; classical: no nets)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed")
    return parser


def node_parameters(args) -> dict[str, dict]:
    """Each node's YAML parameters with the demo's overrides."""
    from efs_ros.tools.graph import CONFIG_DIR, load_node_parameters, nodes_for

    params = {}
    for spec in nodes_for("sim"):
        values = load_node_parameters(CONFIG_DIR / spec.params_file, spec.name)
        if spec.name == "focus_controller":
            values["driver"] = "sim"
        elif spec.name == "sim_rig":
            values.update(width=args.width, height=args.height, frame_rate_hz=args.frame_rate,
                          seed=args.seed, lens_source="topic")
        elif spec.name == "all_in_focus":
            values.update(backend=args.backend, method=args.method)
        params[spec.name] = values
    return params


class Collector:
    """Keeps the last images per stamp from the graph's topics, and the node's diagnostics."""

    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.lock = threading.Lock()
        self.images: dict[str, dict[int, np.ndarray]] = {}
        self.status: dict = {}
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        for key, topic in (("input", "/camera/image_raw"), ("output", "/efs/all_in_focus"),
                           ("truth", "/ground_truth/all_in_focus"), ("depth", "/efs/depth")):
            self.images[key] = {}
            node.create_subscription(Image, topic, self._keeper(key), qos)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos)

    def _keeper(self, key: str):
        from efs_ros.nodes.convert import image_msg_to_numpy, stamp_to_ns

        def keep(msg):
            pixels = image_msg_to_numpy(msg).copy()
            with self.lock:
                table = self.images[key]
                table[stamp_to_ns(msg.header.stamp)] = pixels
                if key in ("input", "truth") and len(table) > 200:
                    del table[min(table)]
        return keep

    def _on_diagnostics(self, msg) -> None:
        from efs_ros.nodes.convert import diagnostic_values

        values = diagnostic_values(msg)
        if STATUS_NAME in values:
            with self.lock:
                self.status = values[STATUS_NAME]

    def complete_jobs(self) -> list[int]:
        """Stamps with an output, its input frame, ground truth and depth."""
        with self.lock:
            stamps = set(self.images["output"])
            for key in ("input", "truth", "depth"):
                stamps &= set(self.images[key])
            return sorted(stamps)


def to_display(linear_u8: np.ndarray) -> np.ndarray:
    """8-bit linear -> 8-bit sRGB for viewing."""
    x = linear_u8.astype(np.float64) / 255.0
    srgb = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.rint(np.clip(srgb, 0, 1) * 255).astype(np.uint8)


def depth_colours(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Colour-mapped depth (near = bright), NaN (no texture to judge) black."""
    from matplotlib import colormaps

    finite = np.isfinite(depth)
    scaled = np.zeros(depth.shape)
    scaled[finite] = (hi - np.clip(depth[finite], lo, hi)) / max(hi - lo, 1e-6)
    rgb = (colormaps["viridis"](scaled)[..., :3] * 255).astype(np.uint8)
    rgb[~finite] = 0
    return rgb


def write_results(out: Path, collector: Collector, stamps: list[int]) -> list[tuple]:
    """PNG files and the figure; returns (stamp, psnr input, psnr output) per job."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from efs_ros.core.metrics import psnr

    out.mkdir(parents=True, exist_ok=True)
    with collector.lock:
        jobs = {s: {k: collector.images[k][s] for k in collector.images} for s in stamps}
    depths = np.concatenate([j["depth"][np.isfinite(j["depth"])] for j in jobs.values()])
    lo, hi = (np.percentile(depths, [2, 98]) if depths.size else (0.3, 2.0))
    rows = []
    for stamp, job in jobs.items():
        truth = job["truth"] / 255.0
        rows.append((stamp, psnr(job["input"] / 255.0, truth), psnr(job["output"] / 255.0, truth)))
        for key in ("input", "output", "truth"):
            name = {"output": "aif", "truth": "gt"}.get(key, key)
            Image.fromarray(job[key]).save(out / f"{stamp}_{name}.png")
        Image.fromarray(depth_colours(job["depth"], lo, hi)).save(out / f"{stamp}_depth.png")
        np.save(out / f"{stamp}_depth.npy", job["depth"].astype(np.float32))

    shown = list(jobs.items())[:4]
    fig, axes = plt.subplots(len(shown), 4, figsize=(12, 2.6 * len(shown)), squeeze=False)
    for r, (stamp, job) in enumerate(shown):
        _, p_in, p_out = next(row for row in rows if row[0] == stamp)
        panels = ((to_display(job["input"]), f"input {p_in:.1f} dB"),
                  (to_display(job["output"]), f"all-in-focus {p_out:.1f} dB"),
                  (to_display(job["truth"]), "ground truth"),
                  (depth_colours(job["depth"], lo, hi), f"depth {lo:.2f}..{hi:.2f} m"))
        for c, (image, title) in enumerate(panels):
            axes[r, c].imshow(image)
            axes[r, c].set_title(title, fontsize=9)
            axes[r, c].axis("off")
    fig.suptitle("efs_ros demo: simulated rig -> all_in_focus node (PSNR vs ground truth)")
    fig.tight_layout()
    fig.savefig(out / "figure.png", dpi=100)
    plt.close(fig)
    return rows


def run(args) -> int:
    check_modules()
    import rclpy

    from efs_ros.tools.graph import GraphSpinner, create_nodes

    params = node_parameters(args)
    context = rclpy.Context()
    rclpy.init(context=context)
    nodes, spinner = [], None
    try:
        try:
            nodes = create_nodes("sim", lambda spec: params[spec.name], context)
        except ValueError as exc:  # one line for the user
            raise DemoError(str(exc)) from exc
        listener = rclpy.create_node("efs_demo", context=context)
        nodes.append(listener)
        collector = Collector(listener)
        spinner = GraphSpinner(nodes, context=context).start()
        print(f"{PROG}: focus_controller (sim lens) + sim_rig {args.width}x{args.height} + "
              f"all_in_focus ({args.method}, {args.backend}); waiting for {args.jobs} images",
              flush=True)
        t0 = time.monotonic()
        reported = 0
        while time.monotonic() - t0 < args.timeout:
            done = len(collector.complete_jobs())
            if done >= args.jobs:
                break
            if done > reported:
                print(f"{PROG}: {done}/{args.jobs} images after {time.monotonic() - t0:.1f} s",
                      flush=True)
                reported = done
            time.sleep(0.2)
        # an output's depth / ground truth may trail it by a moment
        time.sleep(0.5)
        stamps = collector.complete_jobs()[: args.jobs]
        if not stamps:
            with collector.lock:
                status = dict(collector.status)
            why = status.get("message", "no diagnostics from all_in_focus")
            raise DemoError(f"no all-in-focus image within {args.timeout:g} s "
                            f"(all_in_focus: {why}; last fault: {status.get('last_fault', '')})")
        rows = write_results(args.out, collector, stamps)
    finally:
        if spinner is not None:  # stop taking work (waits for callbacks) before destroying
            spinner.shutdown(timeout_sec=5.0)
        for node in reversed(nodes):  # consumers first, the lens (whose thread publishes) last
            node.destroy_node()
        rclpy.try_shutdown(context=context)
    print(f"{'stamp_ns':>20}  {'input dB':>8}  {'output dB':>9}")
    for stamp, p_in, p_out in rows:
        print(f"{stamp:>20}  {p_in:8.2f}  {p_out:9.2f}")
    means = np.mean([[r[1], r[2]] for r in rows], axis=0)
    print(f"{'mean':>20}  {means[0]:8.2f}  {means[1]:9.2f}  ({means[1] - means[0]:+.2f} dB)")
    print(f"{PROG}: wrote {len(rows)} jobs and figure.png to {args.out}/", flush=True)
    return 0


def main(argv=None) -> int:
    ensure_ros_environment()
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except DemoError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
