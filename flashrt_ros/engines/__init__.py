"""Engines: models bound to static buffers and captured graphs, the one object a host drives.

    base.py     ChunkResult, input checks, ChunkIO (shared by every engine)
    builtin.py  Engine: the built-in planner + actor (the reference policy, π0-like presets)
    lerobot.py  LerobotEngine: a LeRobot π0 / π0.5 / SmolVLA checkpoint as the actor
    factory.py  make_engine: host parameters -> an engine (ROS host and offline replay)

No ROS here. Imported lazily: `from flashrt_ros.engines.factory import make_engine`.
"""
