"""`flashrt-ros world`: the reference world as a ROS 2 node; see flashrt_ros.sim.world_node."""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from flashrt_ros.sim.world_node import main as world_main
    return world_main(argv)
