"""flashrt_ros: Vision-Language-Action policies on ROS 2 (slow planner + fast actor, shared GPU buffers).

Layers, bottom to top: runtime (mechanism, no ROS) -> models -> world -> engine -> nodes -> tools.
See docs/design/interfaces.md.
"""

__version__ = "0.1.0"
