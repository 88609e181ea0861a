"""Start the flashrt_ros host (planner + actor lifecycle nodes in one process) with a params file.

    ros2 launch flashrt_ros flashrt.launch.py
    ros2 launch flashrt_ros flashrt.launch.py params_file:=/path/robot.yaml namespace:=arm use_sim_time:=true
    ros2 launch flashrt_ros flashrt.launch.py joint_states_topic:=/arm/joint_states \
        joint_trajectory_topic:=/arm_controller/joint_trajectory respawn:=true respawn_delay:=2.0
    ros2 launch flashrt_ros flashrt.launch.py use_lifecycle_manager:=true   # nodes wait unconfigured
    ros2 launch flashrt_ros flashrt.launch.py --show-args                   # every argument

Thin on purpose: everything else is a parameter (config/flashrt.yaml; camera and controller topics
too). What this file does, and why:
- The params file goes to the host as its own `--params-file` argument, not as launch_ros
  `parameters=[file]`: launch_ros skips a missing file with a warning and the host would start on
  defaults. The host reads the file itself and exits 2 naming the path when it cannot. A host that
  exits 2 (a configuration error) ends the launch with exit code 1: respawning cannot fix it.
- Topic arguments are plain remap rules (`-r joint_states:=...`), without a node prefix: they
  apply to both nodes of the process. Relative names resolve inside `namespace`.
- No node name is set: the process holds two nodes (flashrt_planner, flashrt_actor) and a
  `__node` remap would give both the same name.
- use_lifecycle_manager:=true passes `--set autostart=false`: the nodes come up unconfigured and a
  lifecycle manager (or `ros2 lifecycle set /flashrt_planner configure`, ...) drives them.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# (launch argument, the topic name the host uses, what flows on it). Each argument that differs
# from the name becomes a remap rule.
TOPICS = (
    ("joint_states_topic", "joint_states", "in: sensor_msgs/JointState"),
    ("task_topic", "flashrt/task", "in: std_msgs/String, the task"),
    ("coach_topic", "flashrt/coach", "in: std_msgs/String, a subtask now"),
    ("interrupt_topic", "flashrt/interrupt", "in: std_msgs/String, stop at the next chunk boundary"),
    ("joint_trajectory_topic", "flashrt/joint_trajectory", "out: trajectory_msgs/JointTrajectory"),
    ("action_chunk_topic", "flashrt/action_chunk", "out: flashrt_ros/ActionChunk"),
    ("subtask_topic", "flashrt/subtask", "out: flashrt_ros/Subtask (transient-local)"),
)
CONFIG_ERROR = 2   # the host's exit code for a bad params file, argument or value


def _bool(context, name: str) -> bool:
    value = LaunchConfiguration(name).perform(context).strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"launch argument {name}:={value!r}: expected true or false")
    return value == "true"


def _host(context):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    host_args = ["--params-file", arg("params_file")]
    if _bool(context, "use_lifecycle_manager"):
        host_args += ["--set", "autostart=false"]
    try:
        respawn_delay = float(arg("respawn_delay"))
    except ValueError:
        raise ValueError(f"launch argument respawn_delay:={arg('respawn_delay')!r}: expected seconds") from None
    host = Node(
        package="flashrt_ros",
        executable="flashrt_host",
        namespace=arg("namespace"),
        arguments=host_args,
        ros_arguments=["--log-level", arg("log_level"),
                       "-p", f"use_sim_time:={str(_bool(context, 'use_sim_time')).lower()}"],
        remappings=[(topic, arg(name)) for name, topic, _ in TOPICS if arg(name) != topic],
        respawn=_bool(context, "respawn"),
        respawn_delay=respawn_delay,
        output="screen",
        emulate_tty=True,
    )
    stop_on_config_error = RegisterEventHandler(OnProcessExit(
        target_action=host,
        on_exit=lambda event, _: [OpaqueFunction(function=_config_error)] if event.returncode == CONFIG_ERROR
        else None))
    return [stop_on_config_error, host]


def _config_error(context):
    # An exception ends `ros2 launch` with exit code 1 (a Shutdown action would end it with 0).
    raise RuntimeError(f"flashrt_host exited with code {CONFIG_ERROR}: a configuration error (its message is "
                       "above); not respawned")


def generate_launch_description():
    args = [
        DeclareLaunchArgument("params_file", description="host parameters (ROS 2 params YAML); a path the host "
                              "cannot read stops the launch",
                              default_value=PathJoinSubstitution([FindPackageShare("flashrt_ros"), "config",
                                                                  "flashrt.yaml"])),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of both nodes and their topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=["true", "false"],
                              description="use /clock (e.g. the lockstep world)"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error"),
        DeclareLaunchArgument("use_lifecycle_manager", default_value="false", choices=["true", "false"],
                              description="true: autostart=false, the nodes wait unconfigured for a lifecycle "
                              "manager to configure and activate /flashrt_planner and /flashrt_actor"),
        DeclareLaunchArgument("respawn", default_value="false", choices=["true", "false"],
                              description="start the host again when it exits (not after a configuration error)"),
        DeclareLaunchArgument("respawn_delay", default_value="1.0", description="seconds before a respawn"),
        *[DeclareLaunchArgument(name, default_value=topic, description=f"{what}; remaps {topic}")
          for name, topic, what in TOPICS],
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_host)])
