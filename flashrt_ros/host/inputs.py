"""The latest inputs, as ROS callbacks stored them, and the policy that turns them into one
observation: cameras synchronised latest-within-slop, joints merged by name from one or several
joint-state sources (each joint stale on its own), staleness by time since the last valid
message (robust to publishers whose clocks are off or zero).

Plain Python (no rclpy): callbacks `put` converted inputs, the actor and planner take snapshots.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Mapping, Sequence

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
    joint_positions: np.ndarray | None   # [J] float32 in LatestInputs.joint_names order, ROS units
    stamp_ns: int         # the newest stamp among the inputs used: the chunk's time origin
    received: float = float("nan")   # the latest receive time among them (loop clock): complete since then


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
    names: tuple[str, ...] = ()             # joint-state sources: the joints their last message named


@dataclass(frozen=True)
class JointSample:
    value: float
    stamp_ns: int
    received: float
    source: str


@dataclass(frozen=True)
class Joints:
    """The configured joints, each from its newest valid sample."""
    positions: np.ndarray     # [J] float32, LatestInputs.joint_names order
    stamp_ns: int             # the newest of their stamps
    oldest_stamp_ns: int
    received: float           # the oldest of their receive times: the set is as fresh as this
    newest_received: float = float("nan")   # the latest of them


class LatestInputs:
    """Thread-safe latest camera frames (a short ring per camera for synchronisation) and joints
    (the newest valid sample of each configured joint, from whichever source named it)."""

    def __init__(self, cameras: Sequence[str], slop_s: float, camera_timeout_s: float,
                 joint_timeout_s: float, joint_names: Sequence[str] = (),
                 joint_sources: Sequence[str] = ("joint_states",), ring: int = 8):
        self.cameras = list(cameras)
        self.joint_names = list(joint_names)
        self.joint_sources = list(joint_sources)
        self.slop_ns = int(slop_s * 1e9)
        self.camera_timeout_s = camera_timeout_s
        self.joint_timeout_s = joint_timeout_s
        self._frames: dict[str, deque[Frame]] = {c: deque(maxlen=ring) for c in self.cameras}
        self._joints: dict[str, JointSample] = {}
        self._lock = threading.Lock()
        self.stats: dict[str, InputStats] = {c: InputStats() for c in self.cameras}
        for source in self.joint_sources:
            self.stats[source] = InputStats()
        self.unsynced = 0

    # --- from callbacks ----------------------------------------------------------------------------
    def put_frame(self, camera: str, frame: Frame) -> None:
        with self._lock:
            self._frames[camera].append(frame)
            self.stats[camera].received += 1

    def put_joints(self, values: Mapping[str, float], stamp_ns: int, received: float,
                   source: str = "joint_states", names: Sequence[str] = ()) -> None:
        """Valid values of some configured joints (by name) from one source; `names`: every joint
        the message named (diagnostics: what a source publishes when a joint is missing)."""
        with self._lock:
            for name, value in values.items():
                self._joints[name] = JointSample(float(value), stamp_ns, received, source)
            stats = self.stats[source]
            stats.received += 1
            stats.names = tuple(names) or tuple(values)

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
            self._joints = {}

    # --- snapshots -----------------------------------------------------------------------------------
    def joints(self) -> Joints | None:
        """Every configured joint's newest valid sample, or None while one has none."""
        with self._lock:
            return self._joint_set()

    def _joint_set(self) -> Joints | None:
        samples = [self._joints.get(j) for j in self.joint_names]
        if any(s is None for s in samples):
            return None
        return Joints(np.array([s.value for s in samples], np.float32), max(s.stamp_ns for s in samples),
                      min(s.stamp_ns for s in samples), min(s.received for s in samples),
                      max(s.received for s in samples))

    def joint_status(self, now: float) -> list[tuple[str, str, float]]:
        """(joint, source of its last sample or '', seconds since it) per configured joint."""
        with self._lock:
            return [(j, s.source, now - s.received) if (s := self._joints.get(j)) else (j, "", float("inf"))
                    for j in self.joint_names]

    def joints_problem(self, now: float) -> str | None:
        """Which joint is missing or stale, from which source, or None."""
        with self._lock:
            return self._joints_stale(now)

    def _joints_stale(self, now: float) -> str | None:
        """Why the joints cannot be used (caller holds the lock), or None."""
        missing = [j for j in self.joint_names if j not in self._joints]
        if missing:
            seen = {src: list(self.stats[src].names) for src in self.joint_sources if self.stats[src].received}
            return (f"no joint state yet for {missing} (joint_state_topics {self.joint_sources}"
                    + (f"; their last messages named {seen})" if seen else ": nothing received)"))
        stale = [(j, s) for j in self.joint_names if now - (s := self._joints[j]).received > self.joint_timeout_s]
        if stale:
            by_source: dict[str, list[str]] = {}
            for j, s in stale:
                by_source.setdefault(s.source, []).append(j)
            worst = max(now - s.received for _, s in stale)
            return ("joint states are stale: " + "; ".join(f"{names} from {src}" for src, names in by_source.items())
                    + f", last {worst:.2f} s ago (joint_state_timeout_s {self.joint_timeout_s:g})")
        return None

    def ages(self, now: float) -> dict[str, float]:
        """Seconds since the last valid message per input (inf when none yet)."""
        with self._lock:
            out = {c: (now - r[-1].received) if r else float("inf") for c, r in self._frames.items()}
            joints = self._joint_set()
            out["joint_states"] = (now - joints.received) if joints else float("inf")
        return out

    def complete_after(self, stamp_ns: int) -> bool:
        """A new complete observation: every camera's and the joints' newest stamps are later than
        `stamp_ns` and within the sync slop of each other (lock-step triggering)."""
        with self._lock:
            joints = self._joint_set()
            if joints is None or any(not r for r in self._frames.values()):
                return False
            stamps = [r[-1].stamp_ns for r in self._frames.values()] + [joints.oldest_stamp_ns, joints.stamp_ns]
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
            joints = None
            if need_joints:
                why = self._joints_stale(now)
                if why is not None:
                    return Stale(why)
                joints = self._joint_set()
            frames = self._synchronised()
            if frames is None:
                self.unsynced += 1
                spread = max(r[-1].stamp_ns for r in self._frames.values()) - \
                    min(r[-1].stamp_ns for r in self._frames.values())
                return Unsynced(f"cameras out of sync: stamps {spread / 1e9:.3f} s apart "
                                f"(camera_sync_slop_s {self.slop_ns / 1e9:g})")
        stamps = [f.stamp_ns for f in frames] + ([joints.stamp_ns] if need_joints else [])
        received = [f.received for f in frames] + ([joints.newest_received] if need_joints else [])
        return Observation(images=[f.image for f in frames], encodings=[f.encoding for f in frames],
                           joint_positions=None if not need_joints else joints.positions.copy(),
                           stamp_ns=max(stamps), received=max(received))

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
