"""A real arm's ROS side, simulated faithfully for the DDS tests: a 6-joint arm under a
joint_trajectory_controller, a gripper under its own controller (a second joint_trajectory_controller,
or a forward_command_controller taking std_msgs/Float64MultiArray), each driver publishing its own
sensor_msgs/JointState topic, two cameras. Joint units are ROS's (radians, metres).

Each controller follows only messages naming exactly its joints (a joint_trajectory_controller
refuses a trajectory with joints it does not own): refusals are kept in `refused`. The arm moves
as commanded (flashrt_ros.sim.follower: JTC semantics, at most `max_velocity`); the gripper's
forward controller moves toward its last command at most its max velocity per second.
"""
from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from flashrt_ros.msg import ActionChunk
from flashrt_ros.ros.conversions import image_to_msg, joint_state_to_msg, stamp_to_ns
from flashrt_ros.sim.follower import TrajectoryFollower
from host_harness import SpinningNode, call_service, newest_status

ARM = [f"arm_joint_{i}" for i in range(1, 7)]
GRIPPER = "gripper_finger"
ARM_LOWER = np.array([-2.9, -1.7, -2.5, -3.0, -1.9, -3.0])
ARM_UPPER = np.array([2.9, 1.7, 2.5, 3.0, 1.9, 3.0])
ARM_VMAX = np.array([1.5, 1.5, 1.8, 2.0, 2.0, 2.5])
GRIPPER_RANGE = (0.0, 0.04)        # metres of opening
GRIPPER_VMAX = 0.1
ARM_START = np.array([0.2, -0.3, 0.4, 0.1, -0.2, 0.3])
GRIPPER_START = 0.02
TRANSITIONS = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP,
               "shutdown": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN}


def pattern(height: int, width: int, phase: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x + phase) % 256, (y * 2) % 256, ((x + y) // 3 + phase) % 256], axis=-1).astype(np.uint8)


class RealArm(SpinningNode):
    def __init__(self, *, gripper: str = "joint_trajectory", rate: float = 20.0,
                 cameras=("/camera/base/image_raw", "/camera/wrist/image_raw")):
        super().__init__("real_arm")
        n = self.node
        self._origin = time.monotonic()
        self.arm = TrajectoryFollower(len(ARM), ARM_START, ARM_VMAX, time=0.0)
        self.gripper_kind = gripper
        self.gripper = TrajectoryFollower(1, [GRIPPER_START], [GRIPPER_VMAX], time=0.0)
        self.gripper_target = GRIPPER_START
        self.publish = {"arm": True, "gripper": True, "cameras": True}
        self.refused: list[tuple[str, str]] = []
        self.received: dict[str, list] = {"arm": [], "gripper": [], "chunks": [], "diagnostics": []}
        self.motion: list[tuple[float, np.ndarray]] = []   # (t, [arm..., gripper])
        self.images = [pattern(240, 320, 0), pattern(240, 320, 97)]
        self.camera_pubs = [n.create_publisher(Image, topic, 10) for topic in cameras]
        self.arm_pub = n.create_publisher(JointState, "/arm/joint_states", 10)
        self.gripper_pub = n.create_publisher(JointState, "/gripper/joint_states", 10)
        self.task_pub = n.create_publisher(String, "/flashrt/task", 10)
        self._subs = [
            n.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory", self._on_arm, 50),
            n.create_subscription(ActionChunk, "/flashrt/action_chunk", self._keep(self.received["chunks"]),
                                  50),
            n.create_subscription(DiagnosticArray, "/diagnostics", self._keep(self.received["diagnostics"]), 50),
        ]
        if gripper == "joint_trajectory":
            self._subs.append(n.create_subscription(JointTrajectory, "/gripper_controller/joint_trajectory",
                                                    self._on_gripper_trajectory, 50))
        else:
            self._subs.append(n.create_subscription(Float64MultiArray, "/gripper_controller/commands",
                                                    self._on_gripper_command, 50))
        self.clients = {name: n.create_client(Trigger, f"/flashrt/{name}") for name in ("start", "stop", "ready")}
        self.lifecycle = {node: (n.create_client(ChangeState, f"/{node}/change_state"),
                                 n.create_client(GetState, f"/{node}/get_state"))
                          for node in ("flashrt_planner", "flashrt_actor")}
        self.start(rate)

    def now(self) -> float:
        return time.monotonic() - self._origin

    # --- the controllers ---------------------------------------------------------------------------
    def _follow(self, key: str, follower: TrajectoryFollower, joints: list[str], msg: JointTrajectory) -> None:
        with self._lock:
            self.received[key].append((time.monotonic(), msg))
            if sorted(msg.joint_names) != sorted(joints):
                self.refused.append((key, f"joints {list(msg.joint_names)} are not this controller's {joints}"))
                return
            columns = [list(msg.joint_names).index(j) for j in joints]
            positions = np.array([[p.positions[c] for c in columns] for p in msg.points]).reshape(-1, len(joints))
            velocities = np.array([[p.velocities[c] for c in columns] for p in msg.points]).reshape(-1, len(joints))
            times = np.array([stamp_to_ns(p.time_from_start) / 1e9 for p in msg.points])
            stamp = stamp_to_ns(msg.header.stamp)
            # stamps are on the ROS wall clock; the followers run on monotonic time since _origin
            start = 0.0 if stamp == 0 else self.now() - (time.time_ns() - stamp) / 1e9
            try:
                follower.command(start, times, positions, velocities if len(msg.points) else None, now=self.now())
            except ValueError as err:
                self.refused.append((key, str(err)))

    def _on_arm(self, msg):
        self._follow("arm", self.arm, ARM, msg)

    def _on_gripper_trajectory(self, msg):
        self._follow("gripper", self.gripper, [GRIPPER], msg)

    def _on_gripper_command(self, msg: Float64MultiArray):
        with self._lock:
            self.received["gripper"].append((time.monotonic(), msg))
            if len(msg.data) != 1:
                self.refused.append(("gripper", f"{len(msg.data)} values for 1 joint"))
                return
            self.gripper_target = float(msg.data[0])

    # --- the drivers ---------------------------------------------------------------------------------
    def tick(self) -> None:
        t = self.now()
        with self._lock:
            arm = np.clip(self.arm.advance(t), ARM_LOWER, ARM_UPPER)
            if self.gripper_kind == "joint_trajectory":
                grip = float(self.gripper.advance(t)[0])
            else:
                last_t, last = getattr(self, "_grip_state", (t, GRIPPER_START))
                step = GRIPPER_VMAX * (t - last_t)
                grip = float(np.clip(self.gripper_target, last - step, last + step))
                self._grip_state = (t, grip)
            grip = float(np.clip(grip, *GRIPPER_RANGE))
            self.motion.append((time.monotonic(), np.append(arm, grip)))
        stamp = self.node.get_clock().now().nanoseconds
        if self.publish["cameras"]:
            for pub, image in zip(self.camera_pubs, self.images):
                pub.publish(image_to_msg(image, "rgb8", stamp))
        if self.publish["arm"]:
            self.arm_pub.publish(joint_state_to_msg(ARM, arm, stamp))
        if self.publish["gripper"]:
            self.gripper_pub.publish(joint_state_to_msg([GRIPPER], [grip], stamp))

    # --- interaction ---------------------------------------------------------------------------------
    def _call(self, client, request, timeout: float = 20.0, retry: bool = False):
        return call_service(client, request, timeout, retry)

    def call(self, name: str):
        return self._call(self.clients[name], Trigger.Request())

    def transition(self, node: str, name: str) -> bool:
        request = ChangeState.Request()
        request.transition.id = TRANSITIONS[name]
        return self._call(self.lifecycle[node][0], request).success

    def state(self, node: str) -> str:
        return self._call(self.lifecycle[node][1], GetState.Request(), retry=True).current_state.label

    def since(self, key: str, t0: float) -> list:
        with self._lock:
            return [m for t, m in self.received[key] if t >= t0]

    def motion_since(self, t0: float) -> np.ndarray:
        with self._lock:
            return np.array([p for t, p in self.motion if t >= t0])

    def diagnostic(self, name: str, t0: float):
        return newest_status(self.since("diagnostics", t0), name)
