"""Focus-tunable lens drivers (simulated and Optotune Lens Driver 4) and a serial emulator."""
from efs_ros.lens.base import LensDriver, LensError
from efs_ros.lens.optotune import OptotuneLens, crc16_arc
from efs_ros.lens.sim import SimLens

__all__ = ["LensDriver", "LensError", "OptotuneLens", "SimLens", "crc16_arc"]
