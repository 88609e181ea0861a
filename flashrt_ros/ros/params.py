"""The host's parameters as ROS node parameters (the values themselves: flashrt_ros.host.params)."""
from __future__ import annotations

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.parameter import Parameter

from flashrt_ros.host.params import NESTED_HELP, SPECS, HostConfig


def host_parameter_overrides(config: HostConfig) -> list:
    """The merged values as node parameter overrides: they take precedence over rcl's own reading
    of `--params-file`/`-p`, so what a node declares is exactly what the host runs with."""
    return [Parameter(name, value=value) for name, value in config.as_parameters().items()]


def declare_host_parameters(node, config: HostConfig) -> None:
    """Declare every host parameter, read-only, with its description: `ros2 param get/describe`
    show what the host runs with. Changing them means restarting (the graphs are captured)."""
    for name, value in config.as_parameters().items():
        spec = SPECS.get(name)
        if spec is not None:
            help_ = spec.help
        else:                                   # camera.<name>.topic, joint.<name>.scale, ...
            group, _, key = name.split(".")
            help_ = NESTED_HELP[f"{group}.<name>.{key}"][2]
        node.declare_parameter(name, value, ParameterDescriptor(description=help_, read_only=True))
