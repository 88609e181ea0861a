"""A trajectory follower with ros2_control joint_trajectory_controller (JTC) semantics (numpy, no ROS).

The rules (docs/runbook.md, "What a stop is"; ros2_controllers' joint_trajectory_controller):
- a new trajectory replaces the old one outright; `stamp == 0` means "start now";
- point i is due at `stamp + times_from_start[i]`; a trajectory with a non-zero stamp whose last
  point is at or before `now` is rejected (ValueError) and the previous motion continues (JTC
  checks only non-zero stamps: a zero-stamped one whose points are all due now goes to its last
  point at once);
- no points = hold the current setpoint (velocity 0);
- before the first point: from the state (position, velocity) the follower had when the message
  arrived (`now`) to the first point; between points: cubic Hermite with the given velocities,
  linear without them (the velocity jumps at each point); after the last point: hold it, velocity 0;
- a trajectory whose first point is already past but whose last is not is sampled in the segment
  containing the time (no blend from the current state: a step is possible).

Times are float seconds on whatever clock the caller uses. `max_velocity` (per joint) makes the
follower a simulated actuator: `advance` moves each joint at most `max_velocity * dt` from where
the previous `advance` left it.

`chunk_velocities` (re-exported from flashrt_ros.host.limits) is the rule the host publishes
velocities of a position-only chunk by, the engine's postprocess kernel's rule.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from flashrt_ros.host.limits import chunk_velocities  # noqa: F401  (the host's rule, one place)


@dataclass(frozen=True)
class FollowedTrajectory:
    """The trajectory being followed, in absolute times (the caller's clock)."""

    times: np.ndarray  # (N,) seconds, strictly increasing
    positions: np.ndarray  # (N, n_joints)
    velocities: np.ndarray | None  # (N, n_joints), None: positions only (linear interpolation)


class TrajectoryFollower:
    """The setpoint of `n_joints` joints following JointTrajectory-like commands.

    State: `position`, `velocity` (float64 arrays, updated in place by `advance` and `set_state`)
    and `time` (of the state; None until the first command or advance). `trajectory` is the
    accepted trajectory being followed, None while holding.
    """

    def __init__(self, n_joints: int, position, max_velocity=None, *, time: float | None = None):
        self.n_joints = int(n_joints)
        self.position = np.array(position, dtype=np.float64).reshape(self.n_joints)
        self.velocity = np.zeros(self.n_joints)
        self.time = None if time is None else float(time)
        if max_velocity is None:
            self.max_velocity = None
        else:
            self.max_velocity = np.array(np.broadcast_to(np.asarray(max_velocity, dtype=np.float64),
                                                         (self.n_joints,)))
            if not (self.max_velocity > 0).all():
                raise ValueError(f"max_velocity must be > 0 per joint, got {self.max_velocity}")
        self.trajectory: FollowedTrajectory | None = None
        self._hold()

    # --- commands ------------------------------------------------------------------------------
    def _hold(self) -> None:
        self._knots: list[float] = []
        self._hold_position = self.position.copy()
        self._zero = np.zeros(self.n_joints)
        self.trajectory = None

    def hold(self) -> None:
        """Hold the current setpoint, velocity 0 (what an empty trajectory does)."""
        self.velocity[:] = 0.0
        self._hold()

    def command(self, stamp: float, times_from_start, positions, velocities=None, *, now: float) -> None:
        """Follow a new trajectory, replacing the old one. ValueError (and the previous motion goes
        on) for one that cannot be followed: wrong shapes, NaN/inf, times not strictly increasing,
        or (non-zero stamp) a last point at or before `now`."""
        now = float(now)
        positions = np.asarray(positions, dtype=np.float64)
        if positions.size == 0:
            self.hold()
            if self.time is None:
                self.time = now
            return
        n = self.n_joints
        if positions.ndim != 2 or positions.shape[1] != n:
            raise ValueError(f"positions must be (N, {n}), got shape {positions.shape}")
        times = np.asarray(times_from_start, dtype=np.float64).reshape(-1)
        if len(times) != len(positions):
            raise ValueError(f"{len(times)} times_from_start for {len(positions)} points")
        if not (np.isfinite(positions).all() and np.isfinite(times).all()):
            raise ValueError("trajectory contains NaN or inf")
        if np.any(np.diff(times) <= 0):
            raise ValueError("trajectory point times must increase strictly")
        if velocities is not None:
            velocities = np.asarray(velocities, dtype=np.float64)
            if velocities.size == 0:
                velocities = None
            elif velocities.shape != positions.shape:
                raise ValueError(f"velocities have shape {velocities.shape}, positions {positions.shape}")
            elif not np.isfinite(velocities).all():
                raise ValueError("velocities contain NaN or inf")
        start = now if stamp == 0 else float(stamp)
        times = start + times
        if stamp != 0 and times[-1] <= now:  # (a zero stamp is never late: JTC does not check it)
            raise ValueError(f"trajectory ends {now - times[-1]:.3f} s before now (last point at {times[-1]:.3f} s, "
                             f"now {now:.3f} s): rejected, the previous motion continues")
        point_velocities = velocities if velocities is not None else np.zeros_like(positions)
        if times[0] > now:  # before the first point: from the state at `now`
            knot_times = np.concatenate([[now], times])
            knot_p = np.concatenate([self.position[None], positions])
            knot_v = np.concatenate([self.velocity[None], point_velocities])
        else:  # the start is past: sample in the segment containing the time, no blend
            knot_times, knot_p, knot_v = times, positions.copy(), point_velocities.copy()
        h = np.diff(knot_times)[:, None]
        p0, p1, v0, v1 = knot_p[:-1], knot_p[1:], knot_v[:-1], knot_v[1:]
        coefficients = np.zeros((len(h), 4, n))  # p(s) = c0 + c1 s + c2 s^2 + c3 s^3, s = t - t_i
        coefficients[:, 0] = p0
        if velocities is None:  # positions only: linear, the velocity jumps at each point
            coefficients[:, 1] = (p1 - p0) / h
        else:  # cubic Hermite: p(0) = p0, p'(0) = v0, p(h) = p1, p'(h) = v1
            coefficients[:, 1] = v0
            coefficients[:, 2] = (3.0 * (p1 - p0) / h - 2.0 * v0 - v1) / h
            coefficients[:, 3] = (2.0 * (p0 - p1) / h + v0 + v1) / (h * h)
        self._knots = knot_times.tolist()
        self._first, self._last = knot_p[0].copy(), knot_p[-1].copy()
        self._coefficients = coefficients
        self.trajectory = FollowedTrajectory(times, positions.copy(), None if velocities is None else velocities.copy())
        if self.time is None:
            self.time = now

    # --- time ----------------------------------------------------------------------------------
    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(position, velocity) of the setpoint at time t (new arrays; the state is unchanged).
        Each point is hit exactly at its time."""
        knots = self._knots
        if not knots:
            return self._hold_position.copy(), self._zero.copy()
        if t >= knots[-1]:
            return self._last.copy(), self._zero.copy()
        i = bisect_right(knots, t) - 1
        if i < 0:  # before the trajectory (the past): where it starts
            return self._first.copy(), self._zero.copy()
        c = self._coefficients[i]
        s = t - knots[i]
        position = c[0] + s * (c[1] + s * (c[2] + s * c[3]))
        velocity = c[1] + s * (2.0 * c[2] + 3.0 * s * c[3])
        return position, velocity

    def advance(self, t: float) -> np.ndarray:
        """Move the state to time t (to `sample(t)`, speed-limited by `max_velocity` from where the
        previous advance left it) and return the new position."""
        position, velocity = self.sample(t)
        if self.max_velocity is not None and self.time is not None:
            dt = max(float(t) - self.time, 0.0)
            reach = self.max_velocity * dt
            wanted = position - self.position
            step = np.clip(wanted, -reach, reach)
            limited = step != wanted
            position = self.position + step
            actual = step / dt if dt > 0 else self._zero
            velocity = np.where(limited, actual, np.clip(velocity, -self.max_velocity, self.max_velocity))
        self.position[:] = position
        self.velocity[:] = velocity
        self.time = float(t)
        return self.position.copy()

    def set_state(self, position, velocity=None, time: float | None = None) -> None:
        """Where the actuator really is (a world that moves the robot itself): a new trajectory
        starts from this state; a holding follower holds it."""
        self.position[:] = position
        self.velocity[:] = 0.0 if velocity is None else velocity
        if time is not None:
            self.time = float(time)
        if not self._knots:
            self._hold_position[:] = self.position
