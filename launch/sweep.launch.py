"""Focal-sweep all-in-focus imaging: focus controller, (simulated rig,) all-in-focus node.

    ros2 launch efs_ros sweep.launch.py                      # simulated rig, no hardware
    ros2 launch efs_ros sweep.launch.py rig:=real lens_driver:=optotune lens_port:=/dev/ttyACM0

With rig:=real, start the event camera driver (metavision_driver, evt3) and the RGB camera
driver yourself so that they publish /event_camera/events and /camera/image_raw.
The same graph starts without `launch` through `efs_bringup` (efs_ros/tools/graph.py).
"""
import os

from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description():
    config = PathJoinSubstitution([FindPackageShare("efs_ros"), "config"])
    rig = LaunchConfiguration("rig")
    backend = LaunchConfiguration("backend")
    use_sim_time = LaunchConfiguration("use_sim_time")

    def params(file_name):
        return PathJoinSubstitution([LaunchConfiguration("params_dir"), file_name])

    actions = [
        DeclareLaunchArgument("rig", default_value="sim", choices=["sim", "real"],
                              description="sim: built-in simulated rig; real: your camera drivers"),
        DeclareLaunchArgument("backend", default_value="auto",
                              choices=["auto", "tensorrt", "onnxruntime", "torch", "classical"],
                              description="inference backend of the all-in-focus node"),
        DeclareLaunchArgument("lens_driver", default_value="sim", choices=["sim", "optotune"]),
        DeclareLaunchArgument("lens_port", default_value="/dev/ttyACM0"),
        DeclareLaunchArgument("params_dir", default_value=config,
                              description="folder with the nodes' parameter YAML files"),
        DeclareLaunchArgument("use_sim_time", default_value="false"),
    ]
    if os.environ.get("EFS_DDS_LOCALHOST", "1") != "0":
        # DDS stays on this host unless the user opts out (EFS_DDS_LOCALHOST=0).
        actions += [
            SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE",
                                   os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")),
            SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                                   PathJoinSubstitution([config, "fastdds_localhost.xml"])),
        ]
    actions += [
        Node(package="efs_ros", executable="focus_controller", name="focus_controller",
             output="screen",
             parameters=[params("focus_controller.yaml"),
                         {"driver": LaunchConfiguration("lens_driver"),
                          "port": LaunchConfiguration("lens_port"),
                          "use_sim_time": use_sim_time}]),
        Node(package="efs_ros", executable="sim_rig", name="sim_rig", output="screen",
             condition=IfCondition(PythonExpression(["'", rig, "' == 'sim'"])),
             parameters=[params("sim_rig.yaml"), {"use_sim_time": use_sim_time}]),
        Node(package="efs_ros", executable="all_in_focus", name="all_in_focus", output="screen",
             parameters=[params("all_in_focus.yaml"),
                         {"backend": backend, "use_sim_time": use_sim_time}]),
    ]
    return LaunchDescription(actions)
