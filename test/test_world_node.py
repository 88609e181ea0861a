"""The reference world as a ROS node, over real rclpy/DDS: what it publishes, what it executes,
lock-step time, and episodes by seed."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from flashrt_ros.ros.conversions import ns_to_stamp, seconds_to_duration, stamp_to_ns  # noqa: E402
from flashrt_ros.sim.world_node import LATCHED, LockstepGate, WorldNode  # noqa: E402
from flashrt_ros.sim import ExpertPolicy, TabletopWorld, expert_chunk, run_episode  # noqa: E402
from flashrt_ros.sim.tabletop import colour_of, subtask_for  # noqa: E402

DT = 0.05


def make_world(ros, **params) -> WorldNode:
    node = WorldNode(context=ros.context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    ros._nodes.append(node)  # destroyed by the harness, after its spin threads are joined
    return node


class Probe:
    """Collects what the world publishes."""

    def __init__(self, ros):
        self.node = ros.node("probe")
        self.lock = threading.Lock()
        self.images: list[Image] = []
        self.joints: list[JointState] = []
        self.events: list[dict] = []
        self.tasks: list[str] = []
        self.node.create_subscription(Image, "/camera/top/image_raw", lambda m: self._add(self.images, m), 50)
        self.node.create_subscription(JointState, "/joint_states", lambda m: self._add(self.joints, m), 50)
        self.node.create_subscription(String, "/world/episode", lambda m: self._add(self.events, json.loads(m.data)),
                                      LATCHED)
        self.node.create_subscription(String, "/flashrt/task", lambda m: self._add(self.tasks, m.data), LATCHED)
        self.trajectory_pub = self.node.create_publisher(JointTrajectory, "/flashrt/joint_trajectory", 10)

    def _add(self, where, item):
        with self.lock:
            where.append(item)

    def position(self) -> np.ndarray:
        with self.lock:
            return np.array(self.joints[-1].position)

    def ended(self) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e["event"] == "end"]


def line_trajectory(start, goal, stamp, joint_names=("joint_x", "joint_y"), points=40) -> JointTrajectory:
    msg = JointTrajectory(joint_names=list(joint_names))
    msg.header.stamp = stamp
    for i, p in enumerate(expert_line(start, goal, points)):
        msg.points.append(JointTrajectoryPoint(positions=[float(p[0]), float(p[1])], velocities=[0.0, 0.0],
                                               time_from_start=seconds_to_duration((i + 1) * DT)))
    return msg


def expert_line(start, goal, points):
    from flashrt_ros.sim import straight_line_chunk
    return straight_line_chunk(start, goal, points, 0.5 * DT)


def test_publishes_camera_joint_states_and_latched_task(ros):
    world = make_world(ros, seed=5)
    reference = TabletopWorld(seed=5)
    ros.spin(world)
    probe = Probe(ros)  # joins after the task was published: transient-local delivers it
    ros.spin(probe.node)
    assert ros.wait_for(lambda: len(probe.images) >= 3 and len(probe.joints) >= 3 and probe.tasks)
    assert probe.tasks[0] == reference.task_text == "visit " + ", then ".join(reference.task)
    image = probe.images[-1]
    assert (image.encoding, image.height, image.width, image.step) == ("rgb8", 96, 96, 96 * 3)
    assert image.header.frame_id == "camera_top"
    pixels = np.frombuffer(bytes(image.data), np.uint8).reshape(96, 96, 3)
    assert np.array_equal(pixels, reference.render())  # nothing commands the robot: the scene holds
    joints = probe.joints[-1]
    assert list(joints.name) == ["joint_x", "joint_y"]
    assert np.allclose(joints.position, reference.position)
    stamps = sorted({stamp_to_ns(m.header.stamp) for m in probe.joints})
    assert any(stamp_to_ns(m.header.stamp) == stamp_to_ns(image.header.stamp) for m in probe.joints)
    assert np.allclose(np.diff(stamps) / 1e9, DT)  # one observation per 50 ms world step
    start = [e for e in probe.events if e["event"] == "start"][0]
    assert start["seed"] == 5 and start["task"] == list(reference.task)
    assert {c: tuple(np.float32(start["targets"][c])) for c in start["targets"]} == \
        {c: tuple(v) for c, v in reference.targets.items()}


def test_executes_a_trajectory_in_real_time_and_stops_on_an_empty_one(ros):
    world = make_world(ros, seed=2)
    ros.spin(world)
    probe = Probe(ros)
    ros.spin(probe.node)
    assert ros.wait_for(lambda: len(probe.joints) >= 2)
    start = probe.position()
    goal = np.array([0.8, 0.3]) if np.linalg.norm(start - [0.8, 0.3]) > 0.3 else np.array([0.2, 0.7])
    probe.trajectory_pub.publish(line_trajectory(start, goal, probe.joints[-1].header.stamp))
    # point i at header.stamp + time_from_start: at 0.5 m/s the robot gets there, then holds
    assert ros.wait_for(lambda: np.linalg.norm(probe.position() - goal) < 1e-5, timeout=10.0), probe.position()

    far = np.array([0.05, 0.05]) if np.linalg.norm(goal - 0.05) > 0.5 else np.array([0.95, 0.95])
    probe.trajectory_pub.publish(line_trajectory(goal, far, probe.joints[-1].header.stamp))
    assert ros.wait_for(lambda: np.linalg.norm(probe.position() - goal) > 0.05)
    probe.trajectory_pub.publish(JointTrajectory(joint_names=["joint_x", "joint_y"]))  # empty: stop
    assert ros.wait_for(lambda: world.world.chunk is None)
    stopped = probe.position()
    n = len(probe.joints)
    assert ros.wait_for(lambda: len(probe.joints) >= n + 6)  # 0.3 s later: still there
    assert np.allclose(probe.position(), stopped, atol=1e-6)
    assert np.linalg.norm(stopped - far) > 0.1


def test_rejects_trajectories_it_cannot_execute(ros):
    world = make_world(ros, seed=4)
    ros.spin(world)
    probe = Probe(ros)
    ros.spin(probe.node)
    assert ros.wait_for(lambda: len(probe.joints) >= 2)
    start = probe.position()
    stamp = probe.joints[-1].header.stamp
    probe.trajectory_pub.publish(line_trajectory(start, [0.5, 0.5], stamp, joint_names=("shoulder", "elbow")))
    nan = line_trajectory(start, [0.5, 0.5], stamp)
    nan.points[3].positions = [float("nan"), 0.5]
    probe.trajectory_pub.publish(nan)
    assert ros.wait_for(lambda: world.rejected == 2)
    assert world.world.chunk is None
    assert np.allclose(probe.position(), start)


class ExpertHost:
    """A stand-in host with privileged knowledge (the targets from the world's start event): it
    answers every second observation with the expert's chunk, like `run_episode` with
    actor_period_steps=2 and a planner every step."""

    def __init__(self, ros, horizon=16):
        self.node = ros.node("expert_host")
        self.horizon = horizon
        self.pub = self.node.create_publisher(JointTrajectory, "/flashrt/joint_trajectory", 10)
        self.episode = None
        self.last_stamp = None
        self.first_stamp = None
        self.visited: list[str] = []
        self.node.create_subscription(String, "/world/episode", self._on_event, LATCHED)
        self.node.create_subscription(JointState, "/joint_states", self._on_joints, 50)

    def _on_event(self, msg):
        event = json.loads(msg.data)
        if event["event"] == "start":
            self.episode = event
            self.visited, self.first_stamp, self.last_stamp = [], None, None

    def _on_joints(self, msg):
        stamp = stamp_to_ns(msg.header.stamp)
        if self.episode is None or stamp == self.last_stamp or stamp < self.episode["stamp_ns"]:
            return  # a republished (paused) observation, or one from before the episode
        self.last_stamp = stamp
        position = np.array(msg.position, dtype=np.float32)
        targets = {c: np.array(v, dtype=np.float32) for c, v in self.episode["targets"].items()}
        task = self.episode["task"]
        if len(self.visited) < len(task) and np.linalg.norm(position - targets[task[len(self.visited)]]) <= 0.06:
            self.visited.append(task[len(self.visited)])  # the world's visit rule
        step = round((stamp - self.episode["stamp_ns"]) / (DT * 1e9))
        if step % 2:
            return
        subtask = subtask_for(task[len(self.visited)] if len(self.visited) < len(task) else None)
        world = TabletopWorld(seed=self.episode["seed"])
        chunk = expert_chunk(world, subtask, self.horizon, position=position)
        out = JointTrajectory(joint_names=["joint_x", "joint_y"])
        out.header.stamp = msg.header.stamp
        for i, p in enumerate(chunk):
            out.points.append(JointTrajectoryPoint(positions=[float(p[0]), float(p[1])], velocities=[0.0, 0.0],
                                                   time_from_start=seconds_to_duration((i + 1) * DT)))
        self.pub.publish(out)
        assert colour_of(subtask) in (None, *task)


def test_lockstep_episode_over_ros_equals_the_in_process_rollout(ros):
    seed = 11
    world = make_world(ros, seed=seed, time_mode="lockstep", lockstep_period=0.1)
    probe = Probe(ros)
    expert = ExpertHost(ros)
    ros.spin(probe.node, expert.node)
    ros.spin(world)
    assert ros.wait_for(lambda: probe.ended(), timeout=30.0)
    end = probe.ended()[0]

    reference_world = TabletopWorld(seed=seed)
    reference = run_episode(reference_world, ExpertPolicy(reference_world).act, ExpertPolicy(reference_world).plan,
                            seed=seed, actor_period_steps=2, planner_period_steps=1)
    assert reference.success and end["success"]
    assert end["visited"] == list(reference.visited)
    assert end["steps"] == reference.steps and end["time"] == pytest.approx(reference.time)
    assert end["lockstep_timeouts"] == 0  # the world waited for every answer, never free-ran
    # Lock-step publishes the observation the host is due to answer (every actor period, and the
    # episode's last): the robot is where the in-process rollout has it at each of those steps.
    start_ns = [e for e in probe.events if e["event"] == "start"][0]["stamp_ns"]
    with probe.lock:
        path = {round((stamp_to_ns(m.header.stamp) - start_ns) / (DT * 1e9)): np.array(m.position)
                for m in probe.joints if stamp_to_ns(m.header.stamp) >= start_ns}
    steps = sorted(path)
    assert steps[:3] == [0, 2, 4] and steps[-1] == reference.steps          # every other step, and the last
    assert len(steps) == reference.steps // 2 + 1 + reference.steps % 2
    assert np.allclose(np.array([path[k] for k in steps]), reference.trajectory[steps], atol=1e-6)


def test_reset_by_seed_parameter(ros):
    world = make_world(ros, seed=1, time_mode="lockstep", lockstep_timeout=0.2, startup_timeout=0.3)
    probe = Probe(ros)
    client_node = ros.node("world_client")
    set_params = client_node.create_client(SetParameters, "/world/set_parameters")
    reset = client_node.create_client(Trigger, "/world/reset")
    ros.spin(world, probe.node, client_node)
    assert set_params.wait_for_service(timeout_sec=10.0) and reset.wait_for_service(timeout_sec=10.0)

    future = set_params.call_async(SetParameters.Request(parameters=[Parameter("seed", value=42).to_parameter_msg()]))
    assert ros.wait_for(future.done) and future.result().results[0].successful
    future = reset.call_async(Trigger.Request())
    assert ros.wait_for(future.done) and future.result().success
    started = json.loads(future.result().message)
    expected = TabletopWorld(seed=42)
    assert started["seed"] == 42 and started["task"] == list(expected.task)
    assert ros.wait_for(lambda: expected.task_text in probe.tasks)
    assert ros.wait_for(lambda: any(e["reason"] == "reset" for e in probe.ended()))
    # with no host answering, lock-step time free-runs after the startup wait
    assert ros.wait_for(lambda: world.world.steps >= 3, timeout=15.0)


def test_trajectory_message_in_world_time_and_joint_order(ros):
    world = make_world(ros, seed=1, time_mode="lockstep")  # not spun: the world stays at time 0
    msg = JointTrajectory(joint_names=["joint_y", "joint_x"])  # the world's order reversed
    msg.header.stamp = ns_to_stamp(world.world_ns(0.5))
    for i, (y, x) in enumerate([(0.1, 0.2), (0.3, 0.4), (0.5, 0.6)]):
        msg.points.append(JointTrajectoryPoint(positions=[y, x], velocities=[-1.0, 1.0],
                                               time_from_start=seconds_to_duration((i + 1) * DT)))
    trajectory = world.trajectory_in_world(msg)
    assert trajectory.start == pytest.approx(0.5)
    assert np.allclose(trajectory.times_from_start, [DT, 2 * DT, 3 * DT])
    assert np.allclose(trajectory.positions, [[0.2, 0.1], [0.4, 0.3], [0.6, 0.5]])
    assert np.allclose(trajectory.velocities, [[1.0, -1.0]] * 3)
    for point in msg.points:  # positions only: no velocities (the follower interpolates linearly)
        point.velocities = []
    msg.header.stamp = ns_to_stamp(0)  # a zero stamp: start now
    trajectory = world.trajectory_in_world(msg)
    assert trajectory.velocities is None and trajectory.start == pytest.approx(world.world.time)
    assert world.trajectory_in_world(JointTrajectory(joint_names=["joint_x", "joint_y"])) is None  # stop


def test_a_trajectory_that_already_ended_is_rejected_and_one_that_started_in_the_past_is_joined(ros):
    world = make_world(ros, seed=2)  # not spun: the test steps it
    for _ in range(5):
        world._step()
    assert world.world.time == pytest.approx(0.25)
    start = world.world.position.copy()
    goal = start + np.float32([0.1, 0.0]) if start[0] < 0.5 else start - np.float32([0.1, 0.0])
    ended = line_trajectory(start, goal, ns_to_stamp(world.world_ns(0.0)), points=4)  # last point at 0.2 s
    world._on_trajectory(ended)
    assert world.rejected == 1 and world.trajectories == 0 and world.world.chunk is None
    late = line_trajectory(start, goal, ns_to_stamp(world.world_ns(0.0)), points=10)  # 0.05 .. 0.5 s
    world._on_trajectory(late)
    assert world.rejected == 1 and world.trajectories == 1
    world._step()  # joins at the point due at 0.3 s: no blend from the robot's state (a step) ...
    points = expert_line(start, goal, 10)
    np.testing.assert_allclose(world.world.chunk_target(0.3), points[5], atol=1e-6)
    assert np.linalg.norm(points[5] - start) > 0.05
    # ... which the robot takes at its speed limit
    reach = world.world.config.max_speed * DT
    assert np.linalg.norm(world.world.position - start) == pytest.approx(reach, rel=1e-4)


def test_lockstep_gate_waits_for_the_host_then_free_runs():
    gate = LockstepGate(period=0.1, timeout=0.5, startup_timeout=2.0)
    assert gate.due(0.0) and not gate.may_step_now(0.0)
    assert not gate.may_step_on_tick(0.0, now=10.0)  # starts waiting
    assert not gate.may_step_on_tick(0.0, now=11.0)
    gate.answered(0.0)
    assert gate.may_step_now(0.05) and not gate.may_step_now(0.1)  # one answer per period
    assert not gate.may_step_on_tick(0.1, now=12.0)
    assert gate.may_step_on_tick(0.1, now=12.6)  # the host went quiet: free-run
    assert not gate.engaged and gate.timeouts == 1
    assert gate.may_step_on_tick(0.15, now=12.65)
    gate.answered(0.15)
    assert gate.engaged and gate.may_step_now(0.2) and not gate.may_step_now(0.25)
