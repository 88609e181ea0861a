"""`flashrt-ros host`: the ROS 2 host (planner + actor nodes); see flashrt_ros.ros.host."""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from flashrt_ros.ros.host import main as host_main
    return host_main(argv)
