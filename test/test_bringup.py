"""efs_bringup starts the launch graph in one process and it produces all-in-focus images."""
import shutil
import subprocess
import sys
import threading

import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from progress import wait_for_progress
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState

from efs_ros.tools.graph import CONFIG_DIR


def _small_params(tmp_path):
    """The shipped parameter files, with a small sensor so that two cores keep up."""
    for path in CONFIG_DIR.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    rig_file = tmp_path / "sim_rig.yaml"
    doc = yaml.safe_load(rig_file.read_text())
    doc["sim_rig"]["ros__parameters"].update(width=96, height=72, frame_rate_hz=4.0, stack_levels=48)
    rig_file.write_text(yaml.safe_dump(doc))
    return tmp_path


def test_bringup_runs_the_sim_graph_end_to_end(tmp_path):
    params_dir = _small_params(tmp_path)
    proc = subprocess.Popen(  # runs until we stop it: the test waits on progress, not time
        [sys.executable, "-m", "efs_ros.tools.bringup", "--rig", "sim", "--backend", "classical",
         "--params-dir", str(params_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("efs_test_bringup_probe", context=context)
    seen = {"aif": [], "focus": 0, "diagnostics": set()}
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, "/efs/all_in_focus", seen["aif"].append, reliable)
    node.create_subscription(JointState, "/lens/focus_state",
                             lambda _: seen.__setitem__("focus", seen["focus"] + 1), 100)
    node.create_subscription(DiagnosticArray, "/diagnostics",
                             lambda m: seen["diagnostics"].update(s.name.split(":")[0] for s in m.status), 10)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        wait_for_progress(
            lambda: (len(seen["aif"]), seen["focus"], len(seen["diagnostics"])),
            lambda: len(seen["aif"]) >= 3 and seen["focus"] >= 200 and len(seen["diagnostics"]) >= 3,
            "efs_bringup: 3 images, 200 lens states, diagnostics of 3 nodes",
            alive=lambda: proc.poll() is None)
        assert proc.poll() is None, f"efs_bringup exited early: {proc.stdout.read()[-2000:]}"
        image = seen["aif"][0]
        assert (image.width, image.height, image.encoding) == (96, 72, "rgb8")
        assert seen["focus"] >= 200
        assert {"focus_controller", "sim_rig", "all_in_focus"} <= seen["diagnostics"]
    finally:
        proc.terminate()
        output = proc.communicate(timeout=20)[0]
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
    assert proc.returncode == 0, output[-2000:]
