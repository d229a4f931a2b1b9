"""Lens state rate: /lens/focus_state messages per second from the focus controller process.

CONTRACT asks for 200 Hz or more; the node's default target is 250 Hz. This is a speed figure
(a Python timer on shared cores), so it lives here and not in a test: the tests check what
the stream says, with a fixed number of samples.

    scripts/ros-env .venv/bin/python -m efs_ros.tools.bench_lens [--quick]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from efs_ros.nodes.focus_controller import ControllerSettings
from efs_ros.tools.bench_node import REPO, _ros_env, stop

CONTRACT_MIN_HZ = 200.0


def lens_rate(seconds: float, driver: str = "sim") -> dict:
    """Messages/s over `seconds` after the first 50, and the spread of their stamp intervals."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import JointState

    from efs_ros.nodes.convert import joint_state_focus

    env = _ros_env()
    log = open(Path(tempfile.mkdtemp(prefix="efs_bench_lens_")) / "node.log", "w")  # noqa: SIM115
    node_proc = subprocess.Popen([sys.executable, "-m", "efs_ros.nodes.focus_controller",
                                  "--ros-args", "-p", f"driver:={driver}"], cwd=REPO, stdout=log,
                                 stderr=subprocess.STDOUT, env=env)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("efs_bench_lens", context=context)
    rows: list[tuple[float, int]] = []
    node.create_subscription(JointState, "/lens/focus_state", lambda m: rows.append(
        (time.monotonic(), joint_state_focus(m)[0])), 1000)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        while len(rows) < 50 and node_proc.poll() is None:
            time.sleep(0.05)
        start = len(rows)
        time.sleep(seconds)
        got = rows[start:]
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        stop(node_proc)
        log.close()
    if len(got) < 2:
        raise RuntimeError("no /lens/focus_state from the focus controller")
    steps_ms = np.diff([stamp for _, stamp in got]) / 1e6
    return {"section": "lens rate", "driver": driver, "messages": len(got),
            "hz": (len(got) - 1) / (got[-1][0] - got[0][0]),
            "median_step_ms": float(np.median(steps_ms)),
            "p99_step_ms": float(np.percentile(steps_ms, 99))}


def run(quick: bool = False, report=print) -> list[dict]:
    target = ControllerSettings().publish_rate_hz
    row = lens_rate(3.0 if quick else 10.0)
    report(f"   focus_controller (sim lens), target {target:.0f} Hz, CONTRACT >= "
           f"{CONTRACT_MIN_HZ:.0f} Hz")
    report(f"   {'messages':>9s} {'Hz':>7s} {'median step ms':>15s} {'p99 step ms':>12s}")
    report(f"   {row['messages']:9d} {row['hz']:7.1f} {row['median_step_ms']:15.2f} "
           f"{row['p99_step_ms']:12.2f}")
    return [row]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_lens", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(quick=parser.parse_args(argv).quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
