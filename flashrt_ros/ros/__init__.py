"""The ROS 2 shells (rclpy): the host process (planner + actor lifecycle nodes on one executor,
sharing one PolicyLoop), message conversions and the /diagnostics report. Thin: the rules live in
`flashrt_ros.host`, the engines in `flashrt_ros.engines`.

    host.py          Host + main(): the process `flashrt-ros host` / `flashrt_host` runs
    planner_node.py  task + coaching in, subtask out (latched)
    actor_node.py    cameras + joint states in, chunks + trajectories out; start/stop/reset/ready
    conversions.py   one conversion per message type, validating
    diagnostics.py   the /diagnostics report

Nothing below (runtime, models, engines, host) imports from here.
"""
