"""ament_python build of efs_ros; also installs with pip (see Makefile)."""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "efs_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/models", [f for f in glob("models/*") if os.path.isfile(f)]),
    ],
    # PEP 561 marker (efs_ros/py.typed): the code is annotated, so type checkers of packages that
    # import efs_ros use its annotations.
    package_data={PACKAGE: ["py.typed"]},
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="efs_ros developers",
    maintainer_email="efs-ros@example.com",
    description="All-in-focus images and depth from an event focal stack (ROS 2).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            # ROS nodes (ros2 run efs_ros <name>)
            "all_in_focus = efs_ros.nodes.all_in_focus:main",
            "focus_controller = efs_ros.nodes.focus_controller:main",
            "sim_rig = efs_ros.nodes.sim_rig:main",
            # tools
            "efs_bringup = efs_ros.tools.bringup:main",
            "efs_replay = efs_ros.tools.replay:main",
            "efs_eval = efs_ros.tools.eval:main",
            "efs_demo = efs_ros.tools.demo:main",
            "efs_bench = efs_ros.tools.bench:main",
            "efs_bench_quality = efs_ros.tools.bench_quality:main",
            "efs_train = efs_ros.nets.train:main",
            "efs_lens_emulator = efs_ros.lens.emulator:main",
        ],
    },
)
