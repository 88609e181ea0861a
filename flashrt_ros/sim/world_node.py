"""The reference world as a ROS 2 node: the robot the host drives in the demo, the tests and CI.

Publishes each world step (realtime; lockstep: see below) the top camera (`/camera/top/image_raw`, sensor_msgs/Image rgb8) and
`/joint_states` (joint_x, joint_y), both stamped with the world time of that step; the task text
on `/flashrt/task` at every episode start (transient-local, so a host that starts later gets it);
episode events on `~/episode` (std_msgs/String, JSON: `{"event": "start" | "end", ...}`; the end
event carries success, visited, time). Executes `/flashrt/joint_trajectory` as
joint_trajectory_controller does (flashrt_ros.sim.follower): point i is where the robot should be
at header.stamp + time_from_start, cubic between points with velocities, linear without; a new
trajectory replaces the old one; one that already ended is rejected; an empty trajectory stops
(holds). `~/reset` (std_srvs/Trigger) starts an episode with the `seed`
parameter.

Time, parameter `time_mode`:
- `realtime`: a wall-clock timer steps the world every dt, as a robot lives. No /clock.
- `lockstep`: the world owns time. It publishes `/clock` (the host runs with use_sim_time) and
  steps as fast as the host keeps up: whenever the host's actor is due (no trajectory received
  during the last `lockstep_period` of world time) it waits for the next one before stepping, and
  it publishes the observation (and `/clock`) where such a burst of steps ends, the one the host is
  due to answer. Runs faster than real time on a fast host and gives the same trajectory on a slow
  one, so a run over ROS is comparable with the in-process `run_episode`. A host that stops answering (interrupted,
  stopped, crashed) is waited for `lockstep_timeout` seconds, then the world free-runs at real-time
  pace until a trajectory arrives again.

The world logic lives in `flashrt_ros.sim` (numpy, no ROS) and `LockstepGate` below; the node
only moves messages and time.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import rclpy
from rcl_interfaces.msg import IntegerRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from flashrt_ros.sim import CAMERA_NAMES, JOINT_NAMES, TabletopWorld, WorldConfig

from flashrt_ros.ros.conversions import image_to_msg, joint_state_to_msg, ns_to_stamp, stamp_to_ns

TIME_MODES = ("realtime", "lockstep")
MAX_CATCH_UP_STEPS = 5  # realtime: steps a late heartbeat may take at once
REPUBLISH_AFTER_S = 0.2  # lockstep: a wait this long (wall) streams the paused observation again
LATCHED = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class StaleTrajectory(ValueError):
    """A trajectory stamped before the current episode began."""


# --- plain logic (no ROS) --------------------------------------------------------------------------
@dataclass(frozen=True)
class Trajectory:
    """A JointTrajectory in world terms: point i is due at world time `start + times_from_start[i]`."""

    start: float  # world seconds (the header stamp; "now" for a zero stamp)
    times_from_start: np.ndarray  # (N,) seconds
    positions: np.ndarray  # (N, n_joints) in the world's joint order
    velocities: np.ndarray | None  # (N, n_joints), or None when the message has none (linear)


class LockstepGate:
    """When a world that owns the clock may advance: the host's actor answers once per `period`
    of world time; while an answer is due the world waits for it, at most `timeout` wall seconds
    (`startup_timeout` for the first answer of an episode), then free-runs until answers return.

    Times: `clock` in sim seconds (continuous across episodes: the host's timers keep their
    phase), `now` in monotonic wall seconds.
    """

    def __init__(self, period: float, timeout: float, startup_timeout: float):
        self.period, self.timeout, self.startup_timeout = period, timeout, startup_timeout
        self.answer_clock = -np.inf  # the newest observation the host answered (the host's phase)
        self.engaged = True  # False: the host stopped answering; free-run
        self.answers = self.timeouts = 0  # this episode
        self.waiting_since: float | None = None

    def new_episode(self) -> None:
        self.engaged, self.answers, self.timeouts, self.waiting_since = True, 0, 0, None

    def answered(self, clock: float) -> None:
        """The host answered the observation of `clock`."""
        self.answer_clock = max(self.answer_clock, clock)
        self.engaged = True
        self.answers += 1
        self.waiting_since = None

    def due(self, clock: float) -> bool:
        """An answer is due: none arrived during the last period (1 us slack for float times)."""
        return clock - self.answer_clock >= self.period - 1e-6

    def may_step_now(self, clock: float) -> bool:
        """Right after an answer or a step: advance at once unless an answer is due."""
        return self.engaged and not self.due(clock)

    def may_step_on_tick(self, clock: float, now: float) -> bool:
        """On the wall-clock heartbeat: free-run steps, steps not waiting for anything, and waits
        that ran out."""
        if not self.engaged or not self.due(clock):
            return True
        if self.waiting_since is None:
            self.waiting_since = now
            return False
        if now - self.waiting_since >= (self.timeout if self.answers else self.startup_timeout):
            self.engaged = False
            self.timeouts += 1
            self.waiting_since = None
            return True
        return False


# --- the node --------------------------------------------------------------------------------------
class WorldNode(Node):
    def __init__(self, **kwargs):
        super().__init__("world", **kwargs)
        p = self._declare_parameters()
        self.time_mode = p["time_mode"]
        self.world = TabletopWorld(WorldConfig(image_size=p["image_size"], time_limit=p["time_limit"]), seed=p["seed"])
        self.dt = self.world.config.dt
        self.frame_id = p["camera_frame_id"]
        self.gate = LockstepGate(p["lockstep_period"], p["lockstep_timeout"], p["startup_timeout"])
        # World time t of the current episode is ROS time epoch_ns + t. Sim time starts at the
        # wall-clock second the node started (bags get real dates) and never goes backwards.
        self.origin_ns = (time.time_ns() // 1_000_000_000) * 1_000_000_000
        self.clock_ns = self.origin_ns  # the newest published stamp
        self.epoch_ns = self.origin_ns
        self.episode = 0
        self.running = False  # an episode is in progress (stepping)
        self.trajectories = 0
        self.rejected = 0
        self._burst: list | None = None  # lockstep: the observations of a burst of steps (the last is published)

        self.image_pub = self.create_publisher(Image, "/camera/top/image_raw", 10)
        self.joint_pub = self.create_publisher(JointState, "/joint_states", 10)
        self.task_pub = self.create_publisher(String, "/flashrt/task", LATCHED)
        self.episode_pub = self.create_publisher(String, "~/episode", LATCHED)
        self.clock_pub = self.create_publisher(Clock, "/clock", 10) if self.time_mode == "lockstep" else None
        self.create_subscription(JointTrajectory, "/flashrt/joint_trajectory", self._on_trajectory, 10)
        self.create_service(Trigger, "~/reset", self._on_reset)
        # The heartbeat runs on the wall clock in both modes (this node never uses sim time).
        self.heartbeat = self.create_timer(self.dt, self._on_heartbeat)
        self.get_logger().info(
            f"world: {self.time_mode} time, dt {self.dt:g} s, camera {self.world.config.image_size}px"
            + (f", lockstep period {self.gate.period:g} s" if self.time_mode == "lockstep" else ""))
        if p["autostart"]:
            self.start_episode(p["seed"])

    def _declare_parameters(self) -> dict:
        def declare(name, default, text, **extra):
            return self.declare_parameter(name, default, ParameterDescriptor(description=text, **extra)).value

        p = {
            "seed": declare("seed", 0, "seed of the next episode (targets, task, start); ~/reset uses it",
                            integer_range=[IntegerRange(from_value=0, to_value=2**31 - 1, step=1)]),
            "time_mode": declare("time_mode", "realtime", "'realtime' (wall clock) or 'lockstep' (publishes /clock, "
                                 "waits for the host; run the host with use_sim_time)", read_only=True),
            "lockstep_period": declare("lockstep_period", 0.1, "lockstep: world seconds between host answers "
                                       "(1 / the host's actor_hz)", read_only=True),
            "lockstep_timeout": declare("lockstep_timeout", 0.5, "lockstep: wall seconds to wait for a due answer "
                                        "before free-running", read_only=True),
            "startup_timeout": declare("startup_timeout", 5.0, "lockstep: wall seconds to wait for the first answer "
                                       "of an episode", read_only=True),
            "image_size": declare("image_size", 96, "camera image side in pixels", read_only=True,
                                  integer_range=[IntegerRange(from_value=16, to_value=2048, step=1)]),
            "time_limit": declare("time_limit", 30.0, "episode time limit in world seconds", read_only=True),
            "camera_frame_id": declare("camera_frame_id", "camera_top", "frame_id of the camera images", read_only=True),
            "autostart": declare("autostart", True, "start an episode with `seed` at launch", read_only=True),
            "auto_reset": declare("auto_reset", False, "after an episode ends, start the next (seed + 1) at once"),
        }
        if p["time_mode"] not in TIME_MODES:
            raise ValueError(f"parameter time_mode is {p['time_mode']!r}; expected one of {TIME_MODES}")
        for name in ("lockstep_period", "lockstep_timeout", "startup_timeout", "time_limit"):
            if not p[name] > 0:
                raise ValueError(f"parameter {name} must be > 0, got {p[name]!r}")
        return p

    # --- time ------------------------------------------------------------------------------------
    def sim_seconds(self) -> float:
        """The newest published time, in seconds since the node started (the gate's clock)."""
        return (self.clock_ns - self.origin_ns) / 1e9

    def _next_epoch_ns(self) -> int:
        """Lockstep: where the next episode starts. After the newest published time (time never
        goes backwards), on the host's phase: the world waits for an answer to the episode's first
        observation, as the in-process loop acts at step 0."""
        earliest = self.clock_ns + int(round(self.dt * 1e9))
        if not np.isfinite(self.gate.answer_clock):
            return earliest
        period_ns = int(round(self.gate.period * 1e9))
        phase_ns = self.origin_ns + int(round(self.gate.answer_clock * 1e9))
        return phase_ns + -(-(earliest - phase_ns) // period_ns) * period_ns

    def world_ns(self, t: float) -> int:
        """ROS time (ns) of world time `t` in the current episode."""
        return self.epoch_ns + int(round(t * 1e9))

    def world_time(self, ns: int) -> float:
        return (ns - self.epoch_ns) / 1e9

    # --- episodes --------------------------------------------------------------------------------
    def start_episode(self, seed: int) -> dict:
        if self.running:
            self._end_episode("reset")
        if self.time_mode == "realtime":
            # Step k happens at the heartbeat tick at epoch + k dt: stamps are never in the future.
            until_tick = self.heartbeat.time_until_next_call() or 0
            self.epoch_ns = self.get_clock().now().nanoseconds + until_tick - int(round(self.dt * 1e9))
        else:
            self.epoch_ns = self._next_epoch_ns()
        self.world.reset(int(seed))
        self.episode += 1
        self.trajectories = self.rejected = 0
        self.gate.new_episode()
        info = {"event": "start", "episode": self.episode, "seed": self.world.seed, "task": list(self.world.task),
                "task_text": self.world.task_text, "stamp_ns": self.world_ns(0.0),
                "targets": {c: [float(v) for v in xy] for c, xy in self.world.targets.items()},
                "start": [float(v) for v in self.world.position]}
        self.episode_pub.publish(String(data=json.dumps(info)))
        self.task_pub.publish(String(data=self.world.task_text))
        self.running = True
        self.get_logger().info(f"episode {self.episode}: seed {self.world.seed}, task {self.world.task_text!r}")
        self._publish_observation()
        return info

    def _end_episode(self, reason: str) -> dict:
        self.running = False
        w = self.world
        info = {"event": "end", "episode": self.episode, "seed": w.seed, "task": list(w.task), "reason": reason,
                "success": w.success, "visited": list(w.visited), "time": w.time, "steps": w.steps,
                "stamp_ns": self.world_ns(w.time), "trajectories": self.trajectories, "rejected": self.rejected,
                "lockstep_timeouts": self.gate.timeouts}
        self.episode_pub.publish(String(data=json.dumps(info)))
        self.get_logger().info(f"episode {self.episode} ended ({reason}): success={w.success}, "
                               f"visited {list(w.visited)}, {w.time:.2f} s")
        return info

    def _on_reset(self, request, response):
        seed = self.get_parameter("seed").value
        info = self.start_episode(seed)
        response.success = True
        response.message = json.dumps(info)
        return response

    # --- stepping --------------------------------------------------------------------------------
    def _step(self) -> None:
        self.world.step()
        self._publish_observation()
        if self.world.done:
            self._flush_burst()             # the episode's last observations before its end event
            self._end_episode("success" if self.world.success else "time_limit")
            if self.get_parameter("auto_reset").value:
                self.start_episode(self.world.seed + 1)

    def _publish_observation(self) -> None:
        stamp_ns = self.world_ns(self.world.time)
        obs = self.world.observation()
        self._observation = (image_to_msg(obs.images[CAMERA_NAMES[0]], "rgb8", stamp_ns, self.frame_id),
                             joint_state_to_msg(JOINT_NAMES, obs.joint_positions, stamp_ns),
                             Clock(clock=ns_to_stamp(stamp_ns)))
        self.clock_ns = stamp_ns
        if self._burst is not None:
            self._burst.append(self._observation)
        else:
            self._republish()

    def _flush_burst(self) -> None:
        burst, self._burst = self._burst, None
        if burst:
            self._republish(burst[-1])

    def _republish(self, observation=None) -> None:
        image, joints, clock = observation or self._observation
        # Observation before /clock: a host woken by the new time already has the new image.
        self.image_pub.publish(image)
        self.joint_pub.publish(joints)
        if self.clock_pub is not None:
            self.clock_pub.publish(clock)

    def _on_heartbeat(self) -> None:
        if not self.running:
            return
        if self.time_mode == "realtime":
            # World time follows the wall clock: a late tick catches up, so stamps stay real times
            # and the host's latency compensation sees their true age. A stall longer than a few
            # steps is skipped over (time jumps forward, the robot did not move meanwhile).
            dt_ns = int(round(self.dt * 1e9))
            owed = int((self.get_clock().now().nanoseconds - self.epoch_ns) / dt_ns + 0.5) - self.world.steps
            if owed > MAX_CATCH_UP_STEPS:
                self.epoch_ns += (owed - MAX_CATCH_UP_STEPS) * dt_ns
                owed = MAX_CATCH_UP_STEPS
            for _ in range(max(owed, 0)):
                if self.running:
                    self._step()
        elif self.gate.may_step_on_tick(self.sim_seconds(), time.monotonic()):
            self._step()
            self._advance()
        elif time.monotonic() - (self.gate.waiting_since or math.inf) >= REPUBLISH_AFTER_S:
            # Waiting long for the host: the sensors keep streaming the paused scene, so a host
            # that joined late (missed the image) or checks input freshness on its wall clock has
            # a current observation to answer. Not sooner: every copy is a duplicate in a bag.
            self._republish()

    def _advance(self) -> None:
        """Lockstep: step on while no answer is due, and publish the observation (and /clock) of
        where the burst ends: the one the host is due to answer, as the in-process loop's actor
        sees every `actor_period_steps`-th step. Publishing the steps in between let a host whose
        timer runs on the wall clock answer those too, as often as the machine's speed allowed
        (10 to 14 answers per world second on the same code)."""
        if self.time_mode != "lockstep":
            return
        self._burst = []
        try:
            while self.running and self.gate.may_step_now(self.sim_seconds()):
                self._step()
        finally:
            self._flush_burst()

    # --- trajectories ----------------------------------------------------------------------------
    def _on_trajectory(self, msg: JointTrajectory) -> None:
        if not self.running:
            return
        try:
            trajectory = self.trajectory_in_world(msg)
        except StaleTrajectory:  # an answer to the previous episode, delivered after the reset
            return
        except ValueError as err:
            self.rejected += 1
            self.get_logger().warning(f"trajectory rejected: {err}", throttle_duration_sec=1.0)
            return
        if trajectory is None:
            self.world.hold()  # an empty trajectory: stop, hold where we are
        else:
            try:  # joint_trajectory_controller semantics (flashrt_ros.sim.follower)
                self.world.apply_trajectory(trajectory.start, trajectory.times_from_start, trajectory.positions,
                                            trajectory.velocities)
            except ValueError as err:  # e.g. it ended before now: the previous motion goes on
                self.rejected += 1
                self.get_logger().warning(f"trajectory rejected: {err}", throttle_duration_sec=1.0)
                return
        self.trajectories += 1
        if self.time_mode == "lockstep":
            # The answer is for the observation it is stamped with: a late duplicate answer to an
            # older observation must not buy the world more steps.
            stamp_ns = stamp_to_ns(msg.header.stamp) or self.clock_ns
            self.gate.answered(min(stamp_ns, self.clock_ns) / 1e9 - self.origin_ns / 1e9)
            self._advance()

    def trajectory_in_world(self, msg: JointTrajectory) -> Trajectory | None:
        """The message in world time and joint order; None for an empty one (stop). ValueError for
        one the world cannot execute (unknown or missing joints, NaN, bad velocities)."""
        if not msg.points:
            return None
        names = list(msg.joint_names)
        missing = [j for j in JOINT_NAMES if j not in names]
        if missing:
            raise ValueError(f"joint_names {names} lack {missing}")
        columns = [names.index(j) for j in JOINT_NAMES]
        stamp_ns = stamp_to_ns(msg.header.stamp)
        if stamp_ns == 0:  # joint_trajectory_controller: a zero stamp means "start now"
            stamp_ns = self.world_ns(self.world.time)
        elif stamp_ns < self.epoch_ns:
            raise StaleTrajectory(f"stamped {(self.epoch_ns - stamp_ns) / 1e9:.3f} s before this episode began")
        with_velocities = all(len(point.velocities) for point in msg.points)
        times, positions, velocities = [], [], []
        for i, point in enumerate(msg.points):
            if len(point.positions) != len(names):
                raise ValueError(f"point {i} has {len(point.positions)} positions for {len(names)} joints")
            if with_velocities and len(point.velocities) != len(names):
                raise ValueError(f"point {i} has {len(point.velocities)} velocities for {len(names)} joints")
            times.append(stamp_to_ns(point.time_from_start) / 1e9)
            positions.append([point.positions[c] for c in columns])
            if with_velocities:
                velocities.append([point.velocities[c] for c in columns])
        positions = np.asarray(positions, dtype=np.float64)
        if not np.isfinite(positions).all():
            raise ValueError("positions contain NaN or inf")
        return Trajectory(self.world_time(stamp_ns), np.asarray(times),
                          positions, np.asarray(velocities, dtype=np.float64) if with_velocities else None)


def main(argv: list[str] | None = None) -> int:
    """`flashrt-ros world [--ros-args -p time_mode:=lockstep -p seed:=3 ...]`"""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    rclpy.init(args=["flashrt_world", *argv])
    executor = SingleThreadedExecutor()
    node = None
    try:
        node = WorldNode()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
