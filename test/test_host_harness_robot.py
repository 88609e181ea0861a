"""The host tests' `Robot` really moves: it follows /flashrt/joint_trajectory (joint_trajectory_controller
semantics, its speed limit) and shows the motion in its joint states and images. No host here."""

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from sensor_msgs.msg import JointState  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from flashrt_ros.ros.conversions import ns_to_stamp, seconds_to_duration  # noqa: E402
from host_harness import Robot, wait_for  # noqa: E402


@pytest.fixture
def sender():
    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    node = rclpy.create_node("trajectory_sender", context=context)
    joints = []
    node.create_subscription(JointState, "/joint_states", joints.append, 50)
    pub = node.create_publisher(JointTrajectory, "/flashrt/joint_trajectory", 10)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield node, pub, joints, executor
    executor.shutdown()
    node.destroy_node()
    context.try_shutdown()


def trajectory(robot, points, names=("joint_x", "joint_y"), dt=0.1, now=True):
    msg = JointTrajectory(joint_names=list(names))
    msg.header.stamp = ns_to_stamp(robot.now_ns() if now else 0)
    for i, p in enumerate(points):
        msg.points.append(JointTrajectoryPoint(positions=[float(v) for v in p],
                                               time_from_start=seconds_to_duration((i + 1) * dt)))
    return msg


def test_robot_follows_trajectories_at_its_speed_limit_and_stops_on_an_empty_one(sender):
    node, pub, joints, executor = sender
    robot = Robot(seed=3, rate=50.0)
    try:
        assert wait_for(lambda: pub.get_subscription_count() > 0)
        start = robot.world.position.copy()
        goal = np.where(start < 0.5, start + 0.3, start - 0.3)
        t0 = time.monotonic()
        pub.publish(trajectory(robot, [goal], dt=0.2, now=False))  # asks for 1.5 m/s per joint: the arm does 0.5
        assert wait_for(lambda: np.allclose(robot.world.position, goal, atol=1e-6), 5.0), robot.world.position
        times, positions, velocities = robot.motion_since(t0)
        assert np.abs(velocities).max() == pytest.approx(robot.max_velocity, rel=1e-6)
        assert np.all(np.abs(np.diff(positions, axis=0)) <= robot.max_velocity * np.diff(times)[:, None] * 1.5 + 1e-9)
        assert (times[-1] - times[0]) > 0.5  # 0.3 m at 0.5 m/s takes 0.6 s, not the 0.2 s asked for
        deadline = time.monotonic() + 5.0  # the motion shows in the joint states
        while time.monotonic() < deadline and not (joints and np.allclose(joints[-1].position, goal, atol=1e-6)):
            executor.spin_once(timeout_sec=0.05)
        assert np.allclose(joints[-1].position, goal, atol=1e-6)

        far = np.where(goal < 0.5, goal + 0.3, goal - 0.3)
        pub.publish(trajectory(robot, [goal + (far - goal) * k / 10 for k in range(1, 11)]))  # 0.3 m/s, 1 s
        assert wait_for(lambda: np.linalg.norm(robot.world.position - goal) > 0.05, 5.0)
        t1 = time.monotonic()
        pub.publish(JointTrajectory(joint_names=["joint_x", "joint_y"]))  # empty: hold here
        assert wait_for(lambda: robot.follower.trajectory is None, 5.0)
        held = robot.world.position.copy()
        time.sleep(0.3)
        np.testing.assert_allclose(robot.world.position, held, atol=1e-9)
        assert np.linalg.norm(held - far) > 0.1
        _, _, velocities = robot.motion_since(time.monotonic() - 0.2)
        assert np.abs(velocities).max() == 0.0
        assert robot.since("trajectories", t1) and not robot.refused
    finally:
        robot.close()
