"""Message <-> numpy at the host's edge: one conversion per message type, each validating its input.

Inputs raise `InputError` with a message that says what is wrong and what was expected; the
nodes log it, count it on /diagnostics and keep serving. Outputs refuse non-finite values, so
NaN/inf can never leave the node through these functions.
"""
from __future__ import annotations

import array
import io
from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from flashrt_ros.msg import ActionChunk, Subtask

from flashrt_ros.host.params import MAX_TEXT_BYTES

# ROS encoding -> channels. The engine's preprocess kernel takes exactly these.
ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
SUBTASK_SOURCES = {"planner": Subtask.SOURCE_PLANNER, "coach": Subtask.SOURCE_COACH,
                   "operator": Subtask.SOURCE_OPERATOR}


class InputError(ValueError):
    """A message the host refuses (malformed image, bad joint state, bad text)."""


# --- time ------------------------------------------------------------------------------------------
def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def seconds_to_duration(seconds: float) -> Duration:
    ns = int(round(seconds * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


# --- images ----------------------------------------------------------------------------------------
def image_from_msg(msg: Image) -> tuple[np.ndarray, str]:
    """(H x W x C uint8 view of the message data, encoding). Checks encoding, size, step, length."""
    encoding = msg.encoding.strip().lower()
    channels = ENCODINGS.get(encoding)
    if channels is None:
        raise InputError(f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(ENCODINGS)}")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise InputError(f"empty image ({w}x{h})")
    if step < w * channels:
        raise InputError(f"image step {step} is smaller than width x channels = {w} x {channels} = {w * channels}")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != step * h:
        what = "truncated" if data.size < step * h else "oversized"
        raise InputError(f"{what} image data: {data.size} bytes, expected step x height = {step} x {h} = {step * h}")
    rows = data.reshape(h, step)[:, : w * channels]
    return rows.reshape(h, w, channels), encoding


def image_from_compressed(msg: CompressedImage) -> tuple[np.ndarray, str]:
    """Decode a jpeg/png CompressedImage to (H x W x 3 rgb8 | H x W x 1 mono8, encoding)."""
    data = bytes(msg.data)
    if not data:
        raise InputError("empty compressed image")
    fmt = msg.format.lower()
    known = ("jpeg" in fmt or "jpg" in fmt or "png" in fmt or data[:3] == b"\xff\xd8\xff"
             or data[:8] == b"\x89PNG\r\n\x1a\n")
    if not known:
        raise InputError(f"unsupported compressed image format {msg.format!r}; supported: jpeg, png")
    try:
        from PIL import Image as PILImage
    except ImportError:
        raise InputError("decoding compressed images needs Pillow (pip install pillow)") from None
    try:
        with PILImage.open(io.BytesIO(data)) as pil:
            pil.load()
            if pil.mode in ("L", "1", "I;16", "I"):
                out = np.asarray(pil.convert("L"), dtype=np.uint8)[:, :, None]
                encoding = "mono8"
            else:
                out = np.asarray(pil.convert("RGB"), dtype=np.uint8)
                encoding = "rgb8"
    except InputError:
        raise
    except Exception as err:  # PIL raises many types for corrupt data
        raise InputError(f"cannot decode compressed image ({msg.format!r}, {len(data)} bytes): {err}") from None
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise InputError(f"empty image ({out.shape[1]}x{out.shape[0]})")
    return out, encoding


def image_to_msg(image: np.ndarray, encoding: str = "rgb8", stamp_ns: int = 0, frame_id: str = "") -> Image:
    """The inverse of `image_from_msg` (tests, tools)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=0, step=w * channels)
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.data = array.array("B", image.tobytes())  # an array.array skips the per-element type check
    return msg


# --- joint states ----------------------------------------------------------------------------------
def joint_values_from_msg(msg: JointState, wanted: Sequence[str]) -> dict[str, float]:
    """{joint: position} for the joints of `wanted` the message names (possibly none: another
    driver's joints); other joints are ignored. A malformed message, or a non-finite value for a
    wanted joint, is refused whole."""
    names = list(msg.name)
    positions = np.asarray(msg.position, dtype=np.float64)
    if len(names) != positions.size:
        raise InputError(f"joint state has {len(names)} names but {positions.size} positions")
    if len(set(names)) != len(names):
        raise InputError(f"joint state names a joint twice: {names}")
    wanted = set(wanted)
    out = {n: float(v) for n, v in zip(names, positions) if n in wanted}
    bad = [j for j, v in out.items() if not np.isfinite(v)]
    if bad:
        raise InputError(f"joint state is not finite for {bad}: {out}")
    return out


def joint_positions_from_msg(msg: JointState, joint_names: Sequence[str]) -> np.ndarray:
    """float32[D] in `joint_names` order, matched by name; every one must be there."""
    values = joint_values_from_msg(msg, joint_names)
    missing = [j for j in joint_names if j not in values]
    if missing:
        raise InputError(f"joint state lacks configured joints {missing}: it names {list(msg.name)}, "
                         f"the host is configured for {list(joint_names)}")
    return np.array([values[j] for j in joint_names], np.float32)


def joint_state_to_msg(joint_names: Sequence[str], positions, stamp_ns: int = 0) -> JointState:
    msg = JointState(name=list(joint_names), position=[float(x) for x in positions])
    msg.header.stamp = ns_to_stamp(stamp_ns)
    return msg


# --- text (task, coaching, interrupt reason) -------------------------------------------------------
def text_from_msg(msg, what: str, allow_empty: bool = False) -> str:
    """The text of a std_msgs/String: refused when empty (unless allowed) or over 1 KiB."""
    text = msg.data
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_BYTES:
        raise InputError(f"{what} is {size} bytes, over the {MAX_TEXT_BYTES}-byte limit")
    if not allow_empty and not text.strip():
        raise InputError(f"{what} is empty")
    return text.strip()


# --- outputs ---------------------------------------------------------------------------------------
def _finite(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contain NaN or inf: refusing to publish")
    return a


def action_chunk_msg(positions: np.ndarray, *, joint_names: Sequence[str], stamp_ns: int, dt: float,
                     chunk_seq: int, episode_id: int, subtask: str, subtask_version: int,
                     observation_to_ready: float, inference_time: float,
                     velocities: np.ndarray | None = None, delay_steps: int = 0) -> ActionChunk:
    """The full chunk; row i is for stamp + (i + 1) * dt (the engine's convention)."""
    positions = _finite("chunk positions", positions)
    h, d = positions.shape
    msg = ActionChunk(chunk_seq=int(chunk_seq), episode_id=int(episode_id), subtask=subtask,
                      subtask_version=int(subtask_version), dt=float(dt), horizon=h, action_dim=d,
                      joint_names=list(joint_names), observation_to_ready=float(observation_to_ready),
                      inference_time=float(inference_time), delay_steps=int(delay_steps))
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.actions = array.array("f", positions.reshape(-1).tobytes())
    if velocities is not None:
        velocities = _finite("chunk velocities", velocities)
        if velocities.shape != positions.shape:
            raise ValueError(f"chunk velocities {velocities.shape} do not match positions {positions.shape}")
        msg.velocities = array.array("f", velocities.reshape(-1).tobytes())
    return msg


def chunk_msg(chunk, joint_names: Sequence[str]) -> ActionChunk:
    """A host.loop.ChunkOut as ActionChunk."""
    return action_chunk_msg(chunk.positions, joint_names=joint_names, stamp_ns=chunk.stamp_ns, dt=chunk.dt,
                            chunk_seq=chunk.chunk_seq, episode_id=chunk.episode_id, subtask=chunk.subtask,
                            subtask_version=chunk.subtask_version,
                            observation_to_ready=(chunk.ready_ns - chunk.stamp_ns) / 1e9,
                            inference_time=chunk.inference_time, velocities=chunk.velocities,
                            delay_steps=chunk.delay_steps)


def value_msg(reading):
    """A host.loop.ValueReading as flashrt_ros/Value."""
    from flashrt_ros.msg import Value  # noqa: PLC0415 (generated at build time)
    msg = Value(episode_id=int(reading.episode_id), value=float(reading.value),
                episode_time=float(reading.episode_time_s), threshold=float(reading.threshold),
                below=int(reading.below), patience=int(reading.patience))
    msg.header.stamp = ns_to_stamp(reading.stamp_ns)
    return msg


def episode_state_msg(state):
    """A host.loop.EpisodeStateOut as flashrt_ros/EpisodeState."""
    from flashrt_ros.msg import EpisodeState  # noqa: PLC0415
    return EpisodeState(stamp=ns_to_stamp(state.stamp_ns), episode_id=int(state.episode_id), state=state.state,
                        end_reason=state.end_reason, detail=state.detail)


def joint_trajectory_msg(trajectory, joint_names: Sequence[str], columns=None) -> JointTrajectory:
    """A host.loop.TrajectoryOut as JointTrajectory: header.stamp = its stamp, point i at
    time_from_start times[i], positions + velocities. `columns`: the indices of `joint_names` in
    the trajectory's joints (a controller group's share); None = all. No points: the controller
    holds."""
    positions = _finite("trajectory positions", trajectory.positions)
    velocities = _finite("trajectory velocities", trajectory.velocities)
    if columns is not None:
        positions, velocities = positions[:, columns], velocities[:, columns]
    msg = JointTrajectory(joint_names=list(joint_names))
    msg.header.stamp = ns_to_stamp(trajectory.stamp_ns)
    msg.points = [JointTrajectoryPoint(positions=p.astype(np.float64).tolist(), velocities=v.astype(np.float64).tolist(),
                                       time_from_start=seconds_to_duration(float(t)))
                  for t, p, v in zip(trajectory.times, positions, velocities)]
    return msg


def forward_command_msg(positions: np.ndarray) -> Float64MultiArray:
    """Positions for a forward_command_controller group (std_msgs/Float64MultiArray, the
    controller's joint order)."""
    positions = _finite("command positions", positions)
    return Float64MultiArray(data=positions.astype(np.float64).tolist())


def subtask_msg(text: str, version: int, source: str, stamp_ns: int) -> Subtask:
    if source not in SUBTASK_SOURCES:
        raise ValueError(f"unknown subtask source {source!r}; expected one of {sorted(SUBTASK_SOURCES)}")
    return Subtask(stamp=ns_to_stamp(stamp_ns), text=text, version=int(version), source=SUBTASK_SOURCES[source])
