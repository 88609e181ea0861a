"""The host's rules, below ROS (no rclpy here): the episode state machine, the safety rules, the
latest inputs, the parameters and the episode recorder. The ROS shells in `flashrt_ros.ros`
convert messages and call in; everything here is testable on a simulated clock.

    loop.py      PolicyLoop: scheduling, episode, safety (stops, limits), outputs
    inputs.py    latest inputs, camera sync (latest-within-slop), staleness
    params.py    HostConfig: CLI > env > params file, validated
    recorder.py  per-episode MCAP bags
"""
