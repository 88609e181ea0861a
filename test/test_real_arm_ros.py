"""A real arm's setup over real DDS, served by the tiny LeRobot π0.5 fixture (2 cameras, 7 values of
state and action): the arm and the gripper under separate controllers, joint states from two
drivers merged by name, the policy in degrees and 0-100 while ROS speaks radians and metres, and
the lifecycle driven from outside through lifecycle_msgs services (autostart: false).

The arm moves (test/real_arm.py: each controller follows only messages with exactly its joints).
"""
import time
from pathlib import Path

import numpy as np
import pytest

from host_harness import InProcessHost, Robot, host_config, stamp_to_ns, trajectory_times, wait_for
from real_arm import (ARM, ARM_LOWER, ARM_UPPER, ARM_VMAX, GRIPPER, GRIPPER_RANGE, GRIPPER_VMAX, RealArm)

pytestmark = pytest.mark.timeout(240)

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_pi05_tiny"
DEG = 0.017453292519943295
GRIPPER_SCALE = GRIPPER_RANGE[1] / 100.0     # the policy's gripper: 0 (closed) .. 100 (open)


def arm_config(gripper: str = "joint_trajectory", **overrides):
    values = {
        "model": "lerobot_pi05", "checkpoint": str(FIXTURE), "task": "pick up the red cube",
        "cameras": ["base", "wrist"], "camera.base.topic": "/camera/base/image_raw",
        "camera.wrist.topic": "/camera/wrist/image_raw",
        "joint_names": ARM + [GRIPPER],
        "joint_lower_limits": [*ARM_LOWER, GRIPPER_RANGE[0]], "joint_upper_limits": [*ARM_UPPER, GRIPPER_RANGE[1]],
        "max_velocity": [*ARM_VMAX, GRIPPER_VMAX],
        "joint_state_topics": ["/arm/joint_states", "/gripper/joint_states"],
        "controllers": ["arm_controller", "gripper_controller"],
        "controller.arm_controller.joints": ARM, "controller.arm_controller.topic": "/arm_controller/joint_trajectory",
        "controller.gripper_controller.joints": [GRIPPER], "controller.gripper_controller.type": gripper,
        "controller.gripper_controller.topic": ("/gripper_controller/joint_trajectory" if gripper == "joint_trajectory"
                                                else "/gripper_controller/commands"),
        f"joint.{GRIPPER}.scale": GRIPPER_SCALE,
        **{f"joint.{j}.scale": DEG for j in ARM},
        "actor_hz": 5.0, "camera_timeout_s": 1.0, "joint_state_timeout_s": 1.0, **overrides}
    return host_config(**values)


def is_stop(msg) -> bool:
    return len(msg.points) == 0 or (len(msg.points) == 1 and not any(msg.points[0].velocities))


@pytest.fixture
def arm():
    robot = RealArm()
    yield robot
    robot.close()


def test_arm_and_gripper_get_their_own_trajectories_in_ros_units_and_a_silent_driver_holds_both(arm):
    host = InProcessHost(arm_config())
    try:
        t0 = time.monotonic()
        assert wait_for(lambda: len(arm.since("chunks", t0)) >= 4, 60.0), "no chunks"
        time.sleep(0.5)
        arm_msgs, grip_msgs = arm.since("arm", t0), arm.since("gripper", t0)
        assert not arm.refused, arm.refused          # each controller got only its own joints
        assert arm_msgs and all(list(m.joint_names) == ARM for m in arm_msgs)
        assert grip_msgs and all(list(m.joint_names) == [GRIPPER] for m in grip_msgs)
        # one trajectory per chunk, split: the same stamp and times on both topics
        grip_by_stamp = {stamp_to_ns(m.header.stamp): m for m in grip_msgs}
        pairs = [(a, grip_by_stamp[stamp_to_ns(a.header.stamp)]) for a in arm_msgs
                 if stamp_to_ns(a.header.stamp) in grip_by_stamp]
        assert len(pairs) >= 3
        for a, g in pairs:
            np.testing.assert_array_equal(trajectory_times(a), trajectory_times(g))
        # ROS units, within ROS limits: radians for the arm, metres for the gripper
        arm_pos = np.array([p.positions for m in arm_msgs for p in m.points])
        grip_pos = np.array([p.positions for m in grip_msgs for p in m.points])
        assert np.all(arm_pos >= ARM_LOWER - 1e-6) and np.all(arm_pos <= ARM_UPPER + 1e-6)
        assert np.all(grip_pos >= GRIPPER_RANGE[0] - 1e-9) and np.all(grip_pos <= GRIPPER_RANGE[1] + 1e-9)
        chunk = arm.since("chunks", t0)[-1]
        assert list(chunk.joint_names) == ARM + [GRIPPER]
        assert len(chunk.velocities) == len(chunk.actions) == chunk.horizon * 7
        assert chunk.observation_to_ready >= chunk.inference_time > 0
        # the arm moves as commanded
        motion = arm.motion_since(t0)
        assert np.ptp(motion[:, :6], axis=0).max() > 1e-3

        # the gripper's driver goes silent: the host holds (both controllers) and says which joint
        arm.publish["gripper"] = False
        t1 = time.monotonic()
        assert wait_for(lambda: any(is_stop(m) for m in arm.since("arm", t1))
                        and any(is_stop(m) for m in arm.since("gripper", t1)), 10.0), "no stop on both controllers"
        holding = host.loop.holding or ""
        assert f"['{GRIPPER}'] from /gripper/joint_states" in holding, holding
        assert wait_for(lambda: (d := arm.diagnostic("inputs", t1)) is not None and GRIPPER in d[1], 5.0)
        _, message, values = arm.diagnostic("inputs", t1)
        assert "/gripper/joint_states" in message and values[f"joint.{GRIPPER}.source"] == "/gripper/joint_states"
        quiet = time.monotonic()
        time.sleep(1.0)
        assert not [m for m in arm.since("arm", quiet) if not is_stop(m)]      # nothing but stops

        arm.publish["gripper"] = True
        t2 = time.monotonic()
        assert wait_for(lambda: len(arm.since("chunks", t2)) >= 2, 20.0), "chunks did not resume"
        assert not arm.refused
    finally:
        host.close()


def test_a_forward_command_gripper_gets_a_stream_of_positions_while_the_trajectory_runs():
    robot = RealArm(gripper="forward_command")
    host = InProcessHost(arm_config("forward_command"))
    try:
        t0 = time.monotonic()
        assert wait_for(lambda: len(robot.since("chunks", t0)) >= 3, 60.0), "no chunks"
        commands = robot.since("gripper", t0)
        values = np.array([c.data[0] for c in commands])
        assert len(commands) >= 10 and all(len(c.data) == 1 for c in commands)
        assert np.all(values >= GRIPPER_RANGE[0] - 1e-9) and np.all(values <= GRIPPER_RANGE[1] + 1e-9)
        assert all(list(m.joint_names) == ARM for m in robot.since("arm", t0)) and not robot.refused
        assert robot.call("stop").success
        time.sleep(1.5)                          # the stop's own short trajectory streams, then ends
        after = time.monotonic()
        time.sleep(1.0)
        assert robot.since("gripper", after) == []
    finally:
        host.close()
        robot.close()


def test_the_lifecycle_driven_from_outside_issues_chunks_only_while_active(arm):
    host = InProcessHost(arm_config(autostart=False), bring_up=False)
    nodes = ("flashrt_planner", "flashrt_actor")
    try:
        assert [arm.state(n) for n in nodes] == ["unconfigured"] * 2
        for step in ("configure", "activate"):
            assert all(arm.transition(n, step) for n in nodes), step
        assert [arm.state(n) for n in nodes] == ["active"] * 2
        assert arm.call("start").success
        t0 = time.monotonic()
        assert wait_for(lambda: len(arm.since("chunks", t0)) >= 2, 60.0), "no chunks while active"

        t1 = time.monotonic()
        assert arm.transition("flashrt_actor", "deactivate")
        assert wait_for(lambda: any(is_stop(m) for m in arm.since("arm", t1)), 5.0), "no stop on deactivate"
        time.sleep(0.5)
        t2 = time.monotonic()
        time.sleep(2.0)                          # inputs keep coming: an inactive actor sends nothing
        assert arm.since("chunks", t2) == [] and arm.since("arm", t2) == []

        assert arm.transition("flashrt_actor", "activate")
        t3 = time.monotonic()
        assert wait_for(lambda: len(arm.since("chunks", t3)) >= 2, 30.0), "no chunks after re-activation"

        for step in ("deactivate", "cleanup"):
            assert all(arm.transition(n, step) for n in nodes), step
        assert [arm.state(n) for n in nodes] == ["unconfigured"] * 2
        assert host.loop.engine is None          # the last cleanup dropped the engine
        t4 = time.monotonic()
        time.sleep(1.0)
        assert arm.since("chunks", t4) == []
        assert all(arm.transition(n, "shutdown") for n in nodes)
        assert [arm.state(n) for n in nodes] == ["finalized"] * 2
    finally:
        host.close()


def test_use_sim_time_without_a_clock_holds_and_says_so_on_diagnostics():
    """Launched with use_sim_time:=true and nothing publishing /clock, ROS time is 0: nothing may
    go out stamped with it. The host holds, and /diagnostics (on a steady timer) says why."""
    robot = Robot()
    host = InProcessHost(host_config(task="visit red"), ros_args=("-p", "use_sim_time:=true"))
    try:
        t0 = time.monotonic()
        assert wait_for(lambda: (d := robot.diagnostic("actor", t0)) is not None and "no /clock" in d[1], 10.0), \
            robot.diagnostic("actor", t0)
        time.sleep(1.0)
        assert robot.since("chunks", t0) == [] and robot.since("trajectories", t0) == []
        assert "use_sim_time is true and no /clock has arrived" in (host.loop.holding or "")
    finally:
        host.close()
        robot.close()


def test_namespaced_hosts_name_their_diagnostics_apart(ros):
    """Two hosts in namespaces /a and /b both publish on the global /diagnostics: their statuses
    and hardware ids carry the namespace."""
    from diagnostic_msgs.msg import DiagnosticArray
    seen = {}
    listener = ros.node("diagnostics_listener")
    listener.create_subscription(DiagnosticArray, "/diagnostics",
                                 lambda m: seen.update({s.name: s.hardware_id for s in m.status}), 50)
    ros.spin(listener)
    hosts = [InProcessHost(host_config(), ros_args=("-r", f"__ns:=/{ns}")) for ns in ("a", "b")]
    try:
        names = {f"flashrt/{ns}: {c}" for ns in ("a", "b") for c in ("host", "actor", "planner", "inputs")}
        assert wait_for(lambda: names <= set(seen), 10.0), sorted(seen)
        assert {seen[f"flashrt/{ns}: host"] for ns in ("a", "b")} == {"flashrt_host/a", "flashrt_host/b"}
    finally:
        for host in hosts:
            host.close()


def test_a_latched_task_is_applied_once(arm):
    """A task published transient-local reaches both of the planner's task subscriptions (volatile
    and transient-local): it must be applied once (with a LeRobot policy each application is a new
    subtask version)."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String
    host = InProcessHost(arm_config())
    try:
        latched = arm.node.create_publisher(String, "/flashrt/task", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        assert wait_for(lambda: latched.get_subscription_count() >= 2, 10.0)
        before = host.loop.engine.subtask.version
        latched.publish(String(data="open the drawer"))
        assert wait_for(lambda: host.loop.engine.subtask.version > before, 10.0)
        time.sleep(1.0)
        assert host.loop.engine.subtask.version == before + 1
        assert host.loop.task_text == "open the drawer"
    finally:
        host.close()
