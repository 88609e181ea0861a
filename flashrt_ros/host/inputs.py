"""The latest inputs, as ROS callbacks stored them, and the policy that turns them into one
observation: cameras synchronised latest-within-slop, staleness by time since the last valid
message (robust to publishers whose clocks are off or zero).

Plain Python (no rclpy): callbacks `put` converted inputs, the actor and planner take snapshots.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Frame:
    image: np.ndarray     # H x W x C uint8
    encoding: str
    stamp_ns: int         # header stamp (the receive time when the header's is zero)
    received: float       # when DDS received it, on the loop's clock (seconds)


@dataclass(frozen=True)
class Observation:
    images: list[np.ndarray]
    encodings: list[str]
    joint_positions: np.ndarray | None
    stamp_ns: int         # the newest stamp among the inputs used: the chunk's time origin


@dataclass(frozen=True)
class Stale:
    reason: str


@dataclass(frozen=True)
class Unsynced(Stale):
    """Every input is fresh, but the cameras' newest frames do not match within the slop (one
    camera's frames are a moment behind): not a reason to stop, unless it lasts."""


@dataclass
class InputStats:
    received: int = 0
    rejected: int = 0
    last_error: str = ""
    last_error_at: float = float("-inf")    # monotonic


@dataclass
class _Joints:
    positions: np.ndarray
    stamp_ns: int
    received: float


class LatestInputs:
    """Thread-safe latest camera frames (a short ring per camera for synchronisation) and joints."""

    def __init__(self, cameras: Sequence[str], slop_s: float, camera_timeout_s: float,
                 joint_timeout_s: float, ring: int = 8):
        self.cameras = list(cameras)
        self.slop_ns = int(slop_s * 1e9)
        self.camera_timeout_s = camera_timeout_s
        self.joint_timeout_s = joint_timeout_s
        self._frames: dict[str, deque[Frame]] = {c: deque(maxlen=ring) for c in self.cameras}
        self._joints: _Joints | None = None
        self._lock = threading.Lock()
        self.stats: dict[str, InputStats] = {c: InputStats() for c in self.cameras}
        self.stats["joint_states"] = InputStats()
        self.unsynced = 0

    # --- from callbacks ----------------------------------------------------------------------------
    def put_frame(self, camera: str, frame: Frame) -> None:
        with self._lock:
            self._frames[camera].append(frame)
            self.stats[camera].received += 1

    def put_joints(self, positions: np.ndarray, stamp_ns: int, received: float) -> None:
        with self._lock:
            self._joints = _Joints(positions, stamp_ns, received)
            self.stats["joint_states"].received += 1

    def reject(self, source: str, error: str, now: float) -> None:
        with self._lock:
            s = self.stats[source]
            s.rejected += 1
            s.last_error = error
            s.last_error_at = now

    def clear(self) -> None:
        with self._lock:
            for ring in self._frames.values():
                ring.clear()
            self._joints = None

    # --- snapshots -----------------------------------------------------------------------------------
    @property
    def last_joint_positions(self) -> np.ndarray | None:
        j = self._joints
        return None if j is None else j.positions

    def joints(self) -> "_Joints | None":
        """The newest valid joint state (positions, stamp, receive time), or None."""
        return self._joints

    def ages(self, now: float) -> dict[str, float]:
        """Seconds since the last valid message per input (inf when none yet)."""
        with self._lock:
            out = {c: (now - r[-1].received) if r else float("inf") for c, r in self._frames.items()}
            out["joint_states"] = (now - self._joints.received) if self._joints else float("inf")
        return out

    def complete_after(self, stamp_ns: int) -> bool:
        """A new complete observation: every camera's and the joints' newest stamps are later than
        `stamp_ns` and within the sync slop of each other (lock-step triggering)."""
        with self._lock:
            if self._joints is None or any(not r for r in self._frames.values()):
                return False
            stamps = [r[-1].stamp_ns for r in self._frames.values()] + [self._joints.stamp_ns]
        return min(stamps) > stamp_ns and max(stamps) - min(stamps) <= self.slop_ns

    def observation(self, now: float, need_joints: bool = True) -> Observation | Stale:
        """One synchronised set of frames (+ joints), or why there is none."""
        with self._lock:
            for cam, ring in self._frames.items():
                if not ring:
                    return Stale(f"no image from camera {cam!r} yet")
                age = now - ring[-1].received
                if age > self.camera_timeout_s:
                    return Stale(f"camera {cam!r} is stale: last image {age:.2f} s ago "
                                 f"(camera_timeout_s {self.camera_timeout_s:g})")
            joints = self._joints
            if need_joints:
                if joints is None:
                    return Stale("no /joint_states yet")
                age = now - joints.received
                if age > self.joint_timeout_s:
                    return Stale(f"joint states are stale: last {age:.2f} s ago "
                                 f"(joint_state_timeout_s {self.joint_timeout_s:g})")
            frames = self._synchronised()
            if frames is None:
                self.unsynced += 1
                spread = max(r[-1].stamp_ns for r in self._frames.values()) - \
                    min(r[-1].stamp_ns for r in self._frames.values())
                return Unsynced(f"cameras out of sync: stamps {spread / 1e9:.3f} s apart "
                                f"(camera_sync_slop_s {self.slop_ns / 1e9:g})")
        stamps = [f.stamp_ns for f in frames] + ([joints.stamp_ns] if need_joints else [])
        return Observation(images=[f.image for f in frames], encodings=[f.encoding for f in frames],
                           joint_positions=None if not need_joints else joints.positions.copy(),
                           stamp_ns=max(stamps))

    def _synchronised(self) -> list[Frame] | None:
        """Latest-within-slop: the reference is the oldest camera's newest frame; every camera
        contributes its newest frame no later than reference + slop, which must be within slop."""
        if len(self._frames) == 1:
            return [next(iter(self._frames.values()))[-1]]
        reference = min(r[-1].stamp_ns for r in self._frames.values())
        chosen = []
        for ring in self._frames.values():
            pick = next((f for f in reversed(ring) if f.stamp_ns <= reference + self.slop_ns), None)
            if pick is None or abs(pick.stamp_ns - reference) > self.slop_ns:
                return None
            chosen.append(pick)
        return chosen
