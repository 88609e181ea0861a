"""Test-side helpers for the host tests: the host in-process on its own rclpy context (its own DDS
participant), and a `Robot` node on another context that publishes camera images and joint states
of a reference world and records everything the host publishes. Everything crosses real DDS.
"""
from __future__ import annotations

import io
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from flashrt_ros.msg import ActionChunk, EpisodeState, Subtask, Value
from flashrt_ros.ros.conversions import image_to_msg, joint_state_to_msg, ns_to_stamp, stamp_to_ns
from flashrt_ros.ros.host import Host
from flashrt_ros.host.params import load_config
from flashrt_ros.sim import JOINT_NAMES, TabletopWorld
from flashrt_ros.sim.follower import TrajectoryFollower
from flashrt_ros.sim.tabletop import JOINT_LIMITS

# FLASHRT_TEST_CKPT: a checkpoint directory to use instead of the shipped reference weights.
CHECKPOINT = os.environ.get("FLASHRT_TEST_CKPT", "")
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
STATE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def host_config(**overrides):
    """The default host configuration on CPU, with test-friendly timeouts, plus `overrides`."""
    values = {"device": "cpu", "diagnostics_hz": 5.0, "camera_timeout_s": 0.4, "joint_state_timeout_s": 0.4,
              "checkpoint": CHECKPOINT, **overrides}
    return load_config([], {}, [(k, v if isinstance(v, str) else _text(v)) for k, v in values.items()])


def _text(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v).lower() if isinstance(v, bool) else str(v)


class InProcessHost:
    """A Host on its own context, spinning in a thread; `close()` joins everything."""

    def __init__(self, config, bring_up: bool = True, ros_args: tuple[str, ...] = ()):
        self.context = rclpy.Context()
        rclpy.init(args=["--ros-args", *ros_args] if ros_args else [], context=self.context)
        self.host = Host(config, context=self.context)
        if bring_up:
            assert self.host.bring_up(), "host bring-up failed"
        self.host.spin_in_thread()

    @property
    def loop(self):
        return self.host.loop

    def close(self) -> None:
        try:
            self.host.close()
        finally:
            self.context.try_shutdown()


@dataclass
class Received:
    chunks: list = field(default_factory=list)
    trajectories: list = field(default_factory=list)
    subtasks: list = field(default_factory=list)
    diagnostics: list = field(default_factory=list)
    values: list = field(default_factory=list)
    episode_states: list = field(default_factory=list)


class SpinningNode:
    """A test node on a context of its own, spun in a thread (SingleThreadedExecutor), with a
    periodic `tick` once `start(rate)` is called; `close()` stops and joins everything."""

    def __init__(self, name: str):
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self._lock = threading.Lock()

    def start(self, rate: float) -> None:
        self._timer = self.node.create_timer(1.0 / rate, self.tick)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def tick(self) -> None:
        pass

    def _spin(self):
        while not self._stop.is_set() and self.context.ok():
            self.executor.spin_once(timeout_sec=0.02)

    def _keep(self, store: list):
        """A callback appending (time.monotonic(), msg) to `store`."""
        def callback(msg):
            with self._lock:
                store.append((time.monotonic(), msg))
        return callback

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)
        assert not self._thread.is_alive(), f"{self.node.get_name()} spin thread did not stop"
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


IDEMPOTENT = ("ready",)   # Trigger services that only report: safe to ask twice


def call_service(client, request, timeout: float = 10.0, retry: bool = False):
    """Call and wait for the answer. `retry` (idempotent requests only): a request sent right after
    discovery can lose its response, because the server's response writer is not yet matched to this
    client's reader (wait_for_service covers only the request side; rmw_fastrtps waits a short time
    for the match, then drops the response: a DDS discovery race, seen under load, e.g. against a host
    that answers the moment it is up); ask again every 2 s until the timeout."""
    assert client.wait_for_service(timeout_sec=timeout), f"{client.srv_name} not available"
    deadline = time.monotonic() + timeout
    while True:
        future = client.call_async(request)
        attempt_end = min(deadline, time.monotonic() + (2.0 if retry else timeout))
        while not future.done() and time.monotonic() < attempt_end:
            time.sleep(0.01)
        if future.done() or time.monotonic() >= deadline:
            break
        client.remove_pending_request(future)
    assert future.done(), f"{client.srv_name} did not answer within {timeout} s"
    return future.result()


class Robot(SpinningNode):
    """Publishes a reference world's camera and joint states at `rate` Hz (stamped `stamp_offset_s`
    from now) on its own context, and records the host's outputs with their arrival times.

    The robot moves: `/flashrt/joint_trajectory` drives `follower` (joint_trajectory_controller
    semantics, flashrt_ros.sim.follower) on the node's ROS (wall) clock, advanced on each tick at
    most `max_velocity` per joint (default: the world's max_speed); `world.position` follows it, so
    images and joint states show the motion. Each tick appends `(time.monotonic(), position,
    velocity)` to `motion` (`motion_since(t0)` reads it, like `since`); trajectories the follower
    refused are in `refused` as `(time.monotonic(), reason)`."""

    def __init__(self, seed: int = 3, rate: float = 20.0, camera_topic: str = "/camera/top/image_raw",
                 jpeg: bool = False, max_velocity: float | None = None):
        super().__init__("test_robot")
        self.world = TabletopWorld()
        self.world.reset(seed)
        self.publish_camera = True
        self.publish_joints = True
        self.stamp_offset_s = 0.0
        self.image_stamps: list[int] = []
        self.rx = Received()
        # Follower time: seconds on the node's clock since just before it started (float64 keeps
        # sub-microsecond resolution there); a zero stamp stays 0 ("start now").
        self._origin_ns = self.now_ns() - 1_000_000_000
        self.max_velocity = self.world.config.max_speed if max_velocity is None else float(max_velocity)
        self.follower = TrajectoryFollower(len(JOINT_NAMES), self.world.position, self.max_velocity,
                                           time=self.seconds(self.now_ns()))
        self.motion: list[tuple[float, np.ndarray, np.ndarray]] = []
        self.refused: list[tuple[float, str]] = []
        n = self.node
        self.jpeg = jpeg    # publish sensor_msgs/CompressedImage (jpeg) instead of Image
        self.image_pub = n.create_publisher(CompressedImage if jpeg else Image, camera_topic, 10)
        self.joint_pub = n.create_publisher(JointState, "/joint_states", 10)
        self.task_pub = n.create_publisher(String, "/flashrt/task", 10)
        self.coach_pub = n.create_publisher(String, "/flashrt/coach", 10)
        self.interrupt_pub = n.create_publisher(String, "/flashrt/interrupt", 10)
        self._subs = [
            n.create_subscription(ActionChunk, "/flashrt/action_chunk", self._keep(self.rx.chunks), 50),
            n.create_subscription(JointTrajectory, "/flashrt/joint_trajectory", self._on_trajectory, 50),
            n.create_subscription(Subtask, "/flashrt/subtask", self._keep(self.rx.subtasks), LATCHED),
            n.create_subscription(DiagnosticArray, "/diagnostics", self._keep(self.rx.diagnostics), 50),
            n.create_subscription(Value, "/flashrt/value", self._keep(self.rx.values), 50),
            n.create_subscription(EpisodeState, "/flashrt/episode_state", self._keep(self.rx.episode_states), STATE_QOS),
        ]
        self.clients = {name: n.create_client(Trigger, f"/flashrt/{name}")
                        for name in ("start", "stop", "reset", "reset_done", "ready")}
        self.start(rate)

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def seconds(self, stamp_ns: int) -> float:
        """A ROS time (ns) on the follower's clock; 0 stays 0 ("start now")."""
        return 0.0 if stamp_ns == 0 else (stamp_ns - self._origin_ns) / 1e9

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        arrived = time.monotonic()
        with self._lock:
            self.rx.trajectories.append((arrived, msg))
            try:
                names = list(msg.joint_names)
                if msg.points:
                    missing = [j for j in JOINT_NAMES if j not in names]
                    if missing:
                        raise ValueError(f"joint_names {names} lack {missing}")
                columns = [names.index(j) for j in JOINT_NAMES] if msg.points else []
                positions = np.array([[p.positions[c] for c in columns] for p in msg.points], np.float64)
                with_velocities = bool(msg.points) and all(len(p.velocities) == len(names) for p in msg.points)
                velocities = (np.array([[p.velocities[c] for c in columns] for p in msg.points], np.float64)
                              if with_velocities else None)
                times = np.array([stamp_to_ns(p.time_from_start) / 1e9 for p in msg.points])
                self.follower.command(self.seconds(stamp_to_ns(msg.header.stamp)), times,
                                      positions.reshape(len(msg.points), len(JOINT_NAMES)), velocities,
                                      now=self.seconds(self.now_ns()))
            except (ValueError, IndexError) as err:  # the previous motion goes on
                self.refused.append((arrived, str(err)))

    def _move(self, now_ns: int) -> None:
        """Advance the follower to now; the world's robot is where the follower is."""
        with self._lock:
            position = self.follower.advance(self.seconds(now_ns))
            clipped = np.clip(position, *JOINT_LIMITS)
            if not np.array_equal(clipped, position):  # the table's edge stops the arm
                self.follower.set_state(clipped, np.where(clipped == position, self.follower.velocity, 0.0))
            self.world.position = clipped.astype(np.float32)
            self.motion.append((time.monotonic(), self.follower.position.copy(), self.follower.velocity.copy()))

    def motion_since(self, t0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times [N], positions [N, 2], velocities [N, 2]) of the ticks at or after t0 (monotonic)."""
        with self._lock:
            rows = [m for m in self.motion if m[0] >= t0]
        d = len(JOINT_NAMES)
        return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]).reshape(-1, d),
                np.array([r[2] for r in rows]).reshape(-1, d))

    def tick(self) -> None:
        now = self.now_ns()
        self._move(now)
        stamp = now - int(self.stamp_offset_s * 1e9)
        if self.publish_camera:
            self.image_stamps.append(stamp)
            self.image_pub.publish(jpeg_msg(self.world.render(), stamp) if self.jpeg
                                   else image_to_msg(self.world.render(), "rgb8", stamp))
        if self.publish_joints:
            self.joint_pub.publish(joint_state_to_msg(JOINT_NAMES, self.world.position, stamp))

    # --- interaction ----------------------------------------------------------------------------------
    def call(self, name: str, timeout: float = 10.0):
        """/flashrt/<name> (std_srvs/Trigger); `ready` is a query, asked again if its answer is lost."""
        return call_service(self.clients[name], Trigger.Request(), timeout, retry=name in IDEMPOTENT)

    def send(self, topic: str, text: str) -> None:
        {"task": self.task_pub, "coach": self.coach_pub, "interrupt": self.interrupt_pub}[topic].publish(String(data=text))

    def wait_for_subscribers(self, timeout: float = 10.0) -> None:
        """Until the host's subscriptions have matched ours (so nothing we send is lost)."""
        assert wait_for(lambda: all(p.get_subscription_count() > 0 for p in
                                    (self.task_pub, self.coach_pub, self.interrupt_pub, self.image_pub)), timeout)

    # --- what arrived -------------------------------------------------------------------------------
    def since(self, kind: str, t0: float) -> list:
        with self._lock:
            return [m for t, m in getattr(self.rx, kind) if t >= t0]

    def last(self, kind: str):
        with self._lock:
            items = getattr(self.rx, kind)
            return items[-1][1] if items else None

    def diagnostic(self, name: str, t0: float = 0.0):
        """The newest /diagnostics status `flashrt: <name>` received after t0, as (level, message, values)."""
        return newest_status(self.since("diagnostics", t0), name)


def newest_status(arrays: list, name: str):
    """The newest status `flashrt: <name>` of these DiagnosticArrays, as (level, message, values)."""
    for msg in reversed(arrays):
        for s in msg.status:
            if s.name == f"flashrt: {name}":
                return s.level, s.message, {kv.key: kv.value for kv in s.values}
    return None


def jpeg_msg(image: np.ndarray, stamp_ns: int) -> CompressedImage:
    from PIL import Image as PILImage
    buf = io.BytesIO()
    PILImage.fromarray(image).save(buf, format="JPEG", quality=90)
    msg = CompressedImage(format="jpeg", data=buf.getvalue())
    msg.header.stamp = ns_to_stamp(stamp_ns)
    return msg


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def is_stop(traj: JointTrajectory, robot: "Robot") -> bool:
    """A stop: no points, or one point with zero velocity, stamped when it was sent (a chunk's
    trajectory carries the stamp of one of the robot's observations, and under load may be cut to
    one point)."""
    shape = len(traj.points) == 0 or (len(traj.points) == 1 and not any(traj.points[0].velocities))
    return shape and stamp_to_ns(traj.header.stamp) not in robot.image_stamps


def trajectory_times(traj: JointTrajectory) -> np.ndarray:
    return np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in traj.points])


def fresh_episode(robot: Robot, task: str | None = None) -> float:
    """Stop, reset and start again with the robot's task; returns when chunks flow again (their t0)."""
    robot.call("stop")
    assert robot.call("reset").success
    robot.publish_camera = robot.publish_joints = True
    robot.stamp_offset_s = 0.0
    assert robot.call("start").success
    robot.send("task", task or robot.world.task_text)
    t0 = time.monotonic()
    assert wait_for(lambda: len(robot.since("chunks", t0)) >= 2, 10.0), "no chunks after a fresh episode"
    return t0


# --- the episode state machine (flashrt/episode_state) ----------------------------------------------
def states_of(robot, episode):
    """Episode `episode`'s transitions as the robot received them, (arrival, state, end_reason).
    By episode id, not arrival time: a late-matched latched history arrives late."""
    return [(t, m.state, m.end_reason) for t, m in list(robot.rx.episode_states) if m.episode_id == episode]


def wait_state(robot, episode, state, reason=None, timeout=20.0):
    """Until episode `episode` reached `state` (with `reason`); its arrival time."""
    def seen():
        return [t for t, s, r in states_of(robot, episode) if s == state and (reason is None or r == reason)]
    assert wait_for(seen, timeout), f"episode {episode}: no {state!r} ({reason}): {states_of(robot, episode)}"
    return seen()[0]


def arm_halts_after(robot, t0) -> None:
    """A stop arrives after t0 and the arm stops moving on it (JTC semantics)."""
    assert wait_for(lambda: any(is_stop(t, robot) for t in robot.since("trajectories", t0)), 10.0), "no stop"
    arrival = next(t for t, m in robot.rx.trajectories if t >= t0 and is_stop(m, robot))
    assert wait_for(lambda: time.monotonic() > arrival + 1.5, 5.0)
    _, _, v = robot.motion_since(arrival + 1.0)     # a stop decelerates within max_velocity first
    assert len(v) > 5 and np.abs(v).max() == 0.0, "the arm still moves after the stop"


def moving_since(robot, t0):
    assert wait_for(lambda: len(robot.since("chunks", t0)) >= 3, 20.0), "no chunks"
    assert wait_for(lambda: (len(v := robot.motion_since(t0)[2]) and np.abs(v).max() > 0.05), 20.0), \
        "the arm never moved"



__all__ = ["arm_halts_after", "moving_since", "states_of", "wait_state", "Host", "InProcessHost", "Robot", "fresh_episode", "host_config", "is_stop", "stamp_to_ns",
           "trajectory_times", "wait_for"]
