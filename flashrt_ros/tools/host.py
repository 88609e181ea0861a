"""`flashrt-ros host`: the ROS 2 host (planner + actor nodes); see flashrt_ros.nodes.host."""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from flashrt_ros.nodes.host import main as host_main
    return host_main(argv)
