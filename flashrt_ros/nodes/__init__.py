"""The ROS 2 layer (rclpy): the host (planner + actor lifecycle nodes on one executor, sharing one
Engine), message conversions, diagnostics, and the reference world node and episode recorder.

    host.py          Host + main(): the process `flashrt-ros host` / `flashrt_host` runs
    planner_node.py  task + coaching in, subtask out (latched)
    actor_node.py    cameras + joint states in, chunks + trajectories out; start/stop/reset/ready
    policy_loop.py   below the nodes: scheduling, episode, safety, recording (one per process)
    inputs.py        latest inputs, camera sync (latest-within-slop), staleness
    conversions.py   one conversion per message type, validating
    params.py        HostConfig: CLI > env > params file, validated
    diagnostics.py   the /diagnostics report
    world_node.py    the reference world as a node;  recorder.py  per-episode MCAP bags

Nothing here is imported by the layers below (runtime, models, world, engine).
"""
