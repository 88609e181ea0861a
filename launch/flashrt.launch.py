"""Start the flashrt_ros host (planner + actor lifecycle nodes in one process) with a params file.

    ros2 launch flashrt_ros flashrt.launch.py
    ros2 launch flashrt_ros flashrt.launch.py params_file:=/path/robot.yaml namespace:=arm use_sim_time:=true

Thin on purpose: everything else is a parameter (config/flashrt.yaml). No node name is set here:
the process holds two nodes (flashrt_planner, flashrt_actor) and a `__node` remap would give both
the same name.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    args = [
        DeclareLaunchArgument("params_file", description="host parameters (ROS 2 params YAML)",
                              default_value=PathJoinSubstitution([FindPackageShare("flashrt_ros"), "config",
                                                                  "flashrt.yaml"])),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of both nodes and their topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (e.g. the lockstep world)"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error"),
    ]
    host = Node(
        package="flashrt_ros",
        executable="flashrt_host",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), {"use_sim_time": LaunchConfiguration("use_sim_time")}],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription([*args, host])
