#!/usr/bin/env bash
# Builds event_camera_msgs into the venv when the ROS install does not provide it
# (PyPI-wheel ROS). On a full distro colcon and the system package are used instead.
set -euo pipefail
venv=$(cd "${1:?usage: build_interfaces.sh VENV}" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
py="$venv/bin/python"
pyinc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
npinc=$("$py" -c 'import numpy; print(numpy.get_include())')
# The wheels were built against another interpreter's paths; point the exported CMake files
# at this one so that configure finds Python and numpy headers.
grep -rl '/opt/python/cp311-cp311' "$venv"/share/*/cmake/ 2>/dev/null | while read -r f; do
  sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$npinc#g" \
         -e "s#/opt/python/cp311-cp311/include/python3.11#$pyinc#g" "$f"
done
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv" PATH="$venv/bin:$PATH"
export PYTHONPATH="$("$py" -c 'import site; print(site.getsitepackages()[0])')"
export LD_LIBRARY_PATH="$venv/lib:$(ls -d "$venv"/lib/python3.11/site-packages/ros_*.libs | tr '\n' ':')${LD_LIBRARY_PATH:-}"
cmake -S "$here/third_party/event_camera_msgs" -B "$build" -G Ninja \
  -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF \
  -DCMAKE_BUILD_TYPE=Release >"$build/configure.log" 2>&1 || { tail -30 "$build/configure.log"; exit 1; }
cmake --build "$build" >"$build/build.log" 2>&1 || { tail -30 "$build/build.log"; exit 1; }
cmake --install "$build" >/dev/null
# rosidl installs the Python package under the install prefix's site-packages layout.
sp=$("$py" -c 'import site; print(site.getsitepackages()[0])')
if [ ! -d "$sp/event_camera_msgs" ] && [ -d "$venv/local/lib/python3.11/dist-packages/event_camera_msgs" ]; then
  cp -r "$venv/local/lib/python3.11/dist-packages/event_camera_msgs" "$sp/"
fi
echo "event_camera_msgs built into $venv"
