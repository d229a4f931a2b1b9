"""Process environment for efs_ros entry points: ROS wheel libraries and host-only DDS.

Every node and tool must keep DDS discovery on this host unless the user opts out with
EFS_DDS_LOCALHOST=0 (or sets ROS_AUTOMATIC_DISCOVERY_RANGE / FASTDDS_DEFAULT_PROFILES_FILE
themselves). The variables are read when the first DDS participant is created, so calling
`apply_dds_localhost_defaults()` before `rclpy.init()` is enough.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

PROFILE_NAME = "fastdds_localhost.xml"
_REEXEC_GUARD = "_ROS_WHEELS_BOOTSTRAP_COMPLETE"


def localhost_profile_path() -> Path | None:
    """The Fast DDS profile, from the source tree or the installed share folder."""
    candidates = [Path(__file__).resolve().parents[1] / "config" / PROFILE_NAME]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("efs_ros")) / "config" / PROFILE_NAME)
    except Exception:  # noqa: BLE001 - no ament index (plain pip install): source tree only
        pass
    return next((p for p in candidates if p.is_file()), None)


def apply_dds_localhost_defaults(environ=os.environ) -> bool:
    """Confine DDS to this host unless the user said otherwise; returns whether applied."""
    if environ.get("EFS_DDS_LOCALHOST", "1") == "0":
        return False
    environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    profile = localhost_profile_path()
    if profile is not None:
        environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
    return True


def _wheel_library_dirs() -> list[str]:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = Path(sys.prefix) / "lib" / version / "site-packages"
    dirs = [str(p) for p in sorted(site.glob("ros_*.libs")) if p.is_dir()]
    return [str(Path(sys.prefix) / "lib"), *dirs] if dirs else []


def ensure_ros_environment() -> None:
    """Re-exec once with the ROS wheels' libraries on LD_LIBRARY_PATH (PyPI-wheel installs only).

    On a sourced ROS distro there are no ros_*.libs folders and nothing happens.
    """
    apply_dds_localhost_defaults()
    needed = _wheel_library_dirs()
    current = os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    if not needed or all(d in current for d in needed) or os.environ.get(_REEXEC_GUARD):
        return
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(needed + [c for c in current if c])
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env[_REEXEC_GUARD] = "1"
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
