"""Which joints the policy reads and commands, and the units between the policy and ROS.

The policy's state and actions are vectors in the model's order and the dataset's units (LeRobot
SO-100/SO-101: degrees, the gripper 0-100); ROS speaks radians and metres, by joint name. Per
joint, ROS value = policy value x scale + offset. Everything the host decides (limits,
max_velocity, stops, the trajectory) is in ROS units; only the engine sees policy units.

- `joint_names`: the joints the policy commands (its action vector).
- `state_joints`: the joints of its state vector (defaults to joint_names); may differ, e.g. the
  state holds the gripper width while the action drives arm + gripper.
- `measured`: every joint the host needs from /joint_states: the commanded ones (limits and stops
  start from where the arm is) and the state's.

Conversions are in float64 and return float32: policy -> ROS -> policy round-trips to within
float32 rounding (test_joints.py).
"""
from __future__ import annotations

import numpy as np

from .params import HostConfig


class JointMap:
    def __init__(self, config: HostConfig):
        self.action_joints = list(config.joint_names)
        self.state_joints = list(config.state_joints)
        self.measured = list(dict.fromkeys([*self.action_joints, *self.state_joints]))
        index = {j: i for i, j in enumerate(self.measured)}
        self.action_index = np.array([index[j] for j in self.action_joints])
        self.state_index = np.array([index[j] for j in self.state_joints])
        units = {u.name: (u.scale, u.offset) for u in config.units}
        self._action_scale, self._action_offset = self._affine(self.action_joints, units)
        self._state_scale, self._state_offset = self._affine(self.state_joints, units)
        self.identity = not units

    @staticmethod
    def _affine(joints, units) -> tuple[np.ndarray, np.ndarray]:
        scale = np.array([units.get(j, (1.0, 0.0))[0] for j in joints], np.float64)
        offset = np.array([units.get(j, (1.0, 0.0))[1] for j in joints], np.float64)
        return scale, offset

    # --- from /joint_states (ROS units, `measured` order) ----------------------------------------
    def commanded(self, measured: np.ndarray) -> np.ndarray:
        """The commanded joints' measured positions (ROS units)."""
        return np.asarray(measured, np.float32)[self.action_index]

    def state(self, measured: np.ndarray) -> np.ndarray:
        """The policy's state vector in policy units."""
        q = np.asarray(measured, np.float64)[self.state_index]
        return ((q - self._state_offset) / self._state_scale).astype(np.float32)

    def state_to_ros(self, state: np.ndarray) -> np.ndarray:
        return (np.asarray(state, np.float64) * self._state_scale + self._state_offset).astype(np.float32)

    # --- actions ---------------------------------------------------------------------------------
    def actions_to_ros(self, actions: np.ndarray) -> np.ndarray:
        """[..., A] policy positions -> ROS units."""
        return (np.asarray(actions, np.float64) * self._action_scale + self._action_offset).astype(np.float32)

    def actions_to_policy(self, positions: np.ndarray) -> np.ndarray:
        """[..., A] ROS positions -> policy units."""
        return ((np.asarray(positions, np.float64) - self._action_offset) / self._action_scale).astype(np.float32)

    def velocities_to_ros(self, velocities: np.ndarray) -> np.ndarray:
        return (np.asarray(velocities, np.float64) * self._action_scale).astype(np.float32)

    def policy_limits(self, lower, upper, max_velocity) -> tuple[np.ndarray, np.ndarray]:
        """ROS-unit limits of the commanded joints as the engine's ([A, 2] limits, [A] max velocity)
        in policy units (a negative scale swaps lower and upper)."""
        lo = (np.asarray(lower, np.float64) - self._action_offset) / self._action_scale
        hi = (np.asarray(upper, np.float64) - self._action_offset) / self._action_scale
        limits = np.stack([np.minimum(lo, hi), np.maximum(lo, hi)], axis=1).astype(np.float32)
        vmax = (np.asarray(max_velocity, np.float64) / np.abs(self._action_scale)).astype(np.float32)
        return limits, vmax

    def columns(self, joints) -> np.ndarray:
        """Indices of `joints` in the action vector (a controller group's columns)."""
        return np.array([self.action_joints.index(j) for j in joints])
