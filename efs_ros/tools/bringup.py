"""Start the whole efs_ros graph in one process (the `ros2 launch` equivalent without `launch`).

    efs_bringup --rig sim                    # simulated rig, sim lens, all-in-focus node
    efs_bringup --rig real --lens-driver optotune --lens-port /dev/ttyACM0

Reads the same parameter files as launch/sweep.launch.py and spins every node on its own
single-threaded executor (see GraphSpinner), so callbacks of one node never wait for another's.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from efs_ros.rosenv import ensure_ros_environment
from efs_ros.tools.graph import CONFIG_DIR, GraphSpinner, NodeSpec, create_nodes, load_node_parameters


def node_overrides(spec: NodeSpec, args) -> dict:
    """Parameters for one node: its YAML file, then the launch-argument equivalents."""
    params = load_node_parameters(Path(args.params_dir) / spec.params_file, spec.name)
    if spec.name == "focus_controller":
        params["driver"] = args.lens_driver
        if args.lens_port:
            params["port"] = args.lens_port
    if spec.name == "all_in_focus":
        params["backend"] = args.backend
    params["use_sim_time"] = args.use_sim_time
    return params


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="efs_bringup", description=__doc__.splitlines()[0])
    parser.add_argument("--rig", choices=["sim", "real"], default="sim")
    parser.add_argument("--backend", default="auto",
                        choices=["auto", "tensorrt", "onnxruntime", "torch", "classical"])
    parser.add_argument("--lens-driver", choices=["sim", "optotune"], default="sim")
    parser.add_argument("--lens-port", default="")
    parser.add_argument("--params-dir", default=str(CONFIG_DIR))
    parser.add_argument("--use-sim-time", action="store_true")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="stop after this many seconds (0 = until Ctrl-C)")
    return parser


def start_graph(args, context=None):
    """Create the graph's nodes and spin each on its own executor thread."""
    nodes = create_nodes(args.rig, lambda spec: node_overrides(spec, args), context)
    return nodes, GraphSpinner(nodes, context=context).start()


def main(argv=None) -> int:
    ensure_ros_environment()
    args = build_parser().parse_args(argv)
    import rclpy

    rclpy.init()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        nodes, spinner = start_graph(args)
    except Exception as exc:  # noqa: BLE001 - one line for the user, not a traceback
        print(f"efs_bringup: error: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    print(f"efs_bringup: running {', '.join(n.get_name() for n in nodes)} (rig={args.rig})",
          flush=True)
    deadline = time.monotonic() + args.duration if args.duration > 0 else None
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        stop.wait(0.2)
    spinner.shutdown(timeout_sec=2.0)
    for node in reversed(nodes):  # consumers first, the lens (whose thread publishes) last
        node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
