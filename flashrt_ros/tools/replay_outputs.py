"""What a replay produced: `outputs.mcap` written and read back, and the comparison of two runs.

`DIR/outputs.mcap` (+ `DIR/metadata.yaml`, so DIR is a rosbag2 bag `ros2 bag info` reads) holds
every /flashrt/action_chunk, /flashrt/joint_trajectory and /flashrt/subtask message the host
published, exactly as received over DDS. Each message's log time is the input stamp it answers:
a chunk's and a trajectory's header.stamp (the observation time), a subtask's stamp (the bag time
at which it was written). The run's settings are in the bag's custom_data (key `flashrt_replay`).

`compare(ours, ref, tolerance)` pairs chunks by observation stamp (and order within a stamp) and
reports, per joint, the largest and mean absolute action difference and the first time the runs
diverge (a difference over the tolerance, a chunk only one run has, or another subtask).
"""
from __future__ import annotations

import functools
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from flashrt_ros.host.recorder import exact_cdr

from .bags import Bag, BagError, stamp_ns

CHUNK_TOPIC = "/flashrt/action_chunk"
TRAJECTORY_TOPIC = "/flashrt/joint_trajectory"
SUBTASK_TOPIC = "/flashrt/subtask"
OUTPUT_TYPES = {
    CHUNK_TOPIC: "flashrt_ros/msg/ActionChunk",
    TRAJECTORY_TOPIC: "trajectory_msgs/msg/JointTrajectory",
    SUBTASK_TOPIC: "flashrt_ros/msg/Subtask",
}
SUBTASK_SOURCES = {0: "planner", 1: "coach", 2: "operator"}
METADATA_KEY = "flashrt_replay"


@dataclass(frozen=True)
class Chunk:
    """One chunk as the host publishes it (flashrt_ros/ActionChunk), in numpy."""
    chunk_seq: int
    episode_id: int
    stamp_ns: int                 # the observation the chunk answers
    subtask: str
    subtask_version: int
    dt: float
    positions: np.ndarray         # [H, D] float32; row i is for stamp + (i + 1) * dt
    joint_names: tuple[str, ...] = ()
    inference_time: float = 0.0   # seconds the actor's inference took


@dataclass(frozen=True)
class SubtaskChange:
    stamp_ns: int
    text: str
    version: int
    source: str                   # planner | coach | operator


@dataclass(frozen=True)
class Trajectory:
    stamp_ns: int
    times_ns: np.ndarray          # [P] absolute
    positions: np.ndarray         # [P, D]

    @property
    def is_stop(self) -> bool:
        """A hold (one point, zero velocity) or an empty trajectory: what the host sends to stop."""
        return len(self.times_ns) <= 1


@dataclass
class Outputs:
    chunks: list[Chunk] = field(default_factory=list)
    trajectories: list[Trajectory] = field(default_factory=list)
    subtasks: list[SubtaskChange] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)


# --- decoding (one path for live messages and for outputs.mcap) ------------------------------------
def decode_output(bag_or_store, topic: str, raw: bytes, out: Outputs) -> None:
    msgtype = OUTPUT_TYPES[topic]
    msg = bag_or_store.decode(msgtype, raw)
    if topic == CHUNK_TOPIC:
        positions = np.asarray(msg.actions, np.float32).reshape(int(msg.horizon), int(msg.action_dim))
        out.chunks.append(Chunk(int(msg.chunk_seq), int(msg.episode_id), stamp_ns(msg.header.stamp), msg.subtask,
                                int(msg.subtask_version), float(msg.dt), positions, tuple(msg.joint_names),
                                float(getattr(msg, "inference_time", getattr(msg, "inference_latency", 0.0)))))
        # (bags recorded before ActionChunk had inference_time call it inference_latency)
    elif topic == TRAJECTORY_TOPIC:
        t0 = stamp_ns(msg.header.stamp)
        times = np.array([t0 + stamp_ns(p.time_from_start) for p in msg.points], np.int64)
        if msg.points:
            pos = np.array([np.asarray(p.positions, np.float64) for p in msg.points]).reshape(len(msg.points), -1)
        else:                            # the host's stop when it knows no position: hold where you are
            pos = np.zeros((0, len(msg.joint_names)), np.float64)
        out.trajectories.append(Trajectory(t0, times, pos))
    else:
        out.subtasks.append(SubtaskChange(stamp_ns(msg.stamp), msg.text, int(msg.version),
                                          SUBTASK_SOURCES.get(int(msg.source), str(msg.source))))


class _Decoder:
    """bags.Bag's decoder without a bag (for messages received live)."""

    def __init__(self):
        from .bags import base_typestore
        self.store = base_typestore()

    def decode(self, msgtype: str, raw: bytes):
        view = memoryview(raw)
        msgdef = self.store.get_msgdef(msgtype)
        return msgdef.deserialize_cdr_le(view[4:], 0, msgdef.cls, self.store)[0]


@functools.lru_cache(maxsize=1)
def _decoder() -> _Decoder:
    return _Decoder()


def decode_records(records: list[tuple[str, int, bytes]], metadata: dict | None = None) -> Outputs:
    out = Outputs(metadata=dict(metadata or {}))
    decoder = _decoder()
    for topic, _, raw in records:
        decode_output(decoder, topic, raw, out)
    return out


# --- writing and reading outputs.mcap --------------------------------------------------------------
def log_time(topic: str, raw: bytes, decoder=None) -> int:
    """The input stamp a message answers (see the module doc)."""
    out = Outputs()
    decode_output(decoder or _decoder(), topic, raw, out)
    if out.chunks:
        return out.chunks[0].stamp_ns
    if out.trajectories:
        return out.trajectories[0].stamp_ns
    return out.subtasks[0].stamp_ns


def write_outputs(directory: Path, records: list[tuple[str, int, bytes]], metadata: dict) -> Path:
    """Write DIR/outputs.mcap + DIR/metadata.yaml; records are (topic, log time ns, CDR)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("outputs.mcap", "metadata.yaml"):
        if (directory / name).exists():
            (directory / name).unlink()
    from .bags import base_typestore
    store = base_typestore()
    with tempfile.TemporaryDirectory(dir=directory, prefix=".outputs-") as tmp:
        bag_dir = Path(tmp) / "outputs"
        writer = Writer(bag_dir, version=9, storage_plugin=StoragePlugin.MCAP)
        writer.set_custom_data(METADATA_KEY, json.dumps(metadata, sort_keys=True, default=str))
        writer.open()
        try:
            conns = {t: writer.add_connection(t, typ, typestore=store) for t, typ in OUTPUT_TYPES.items()}
            last = 0
            for topic, log_ns, raw in sorted(records, key=lambda r: r[1]):
                last = max(last, int(log_ns))
                writer.write(conns[topic], last, exact_cdr(raw, OUTPUT_TYPES[topic]))
        finally:
            writer.close()
        shutil.move(str(bag_dir / "outputs.mcap"), directory / "outputs.mcap")
        shutil.move(str(bag_dir / "metadata.yaml"), directory / "metadata.yaml")
    return directory / "outputs.mcap"


def read_outputs(path: str | Path) -> Outputs:
    """Outputs from an outputs.mcap (or its directory, or any bag holding the host's topics)."""
    path = Path(path)
    if path.is_file() and (path.parent / "metadata.yaml").exists():
        path = path.parent
    with Bag(path) as bag:
        present = [t for t in OUTPUT_TYPES if t in bag.topics]
        if CHUNK_TOPIC not in present:
            raise BagError(f"{str(path)!r} has no {CHUNK_TOPIC} topic: not a replay's outputs.mcap "
                           f"(topics: {sorted(bag.topics)})")
        out = Outputs()
        for topic, _, raw in bag.messages(present):
            decode_output(bag, topic, raw, out)
        try:
            out.metadata = json.loads(bag.custom_data.get(METADATA_KEY, "{}"))
        except ValueError:
            out.metadata = {}
    return out


# --- comparison --------------------------------------------------------------------------------------
@dataclass
class Comparison:
    tolerance: float
    joint_names: tuple[str, ...]
    matched: int
    max_diff: np.ndarray                   # [D] largest |a - b| over matched chunks
    mean_diff: np.ndarray                  # [D]
    only_ours: list[int]                   # stamps of chunks the reference lacks
    only_ref: list[int]
    subtask_mismatches: int
    first_divergence_ns: int | None
    first_divergence: str                  # what diverged first ('' when nothing did)

    @property
    def ok(self) -> bool:
        return self.first_divergence_ns is None

    @property
    def identical(self) -> bool:
        return self.ok and self.matched > 0 and float(np.max(self.max_diff, initial=0.0)) == 0.0


def _keyed(chunks: list[Chunk]) -> dict[tuple[int, int], Chunk]:
    out, seen = {}, {}
    for c in sorted(chunks, key=lambda c: (c.stamp_ns, c.chunk_seq)):
        k = seen.get(c.stamp_ns, 0)
        seen[c.stamp_ns] = k + 1
        out[(c.stamp_ns, k)] = c
    return out


def compare(ours: list[Chunk], ref: list[Chunk], tolerance: float) -> Comparison:
    a, b = _keyed(ours), _keyed(ref)
    names = next((c.joint_names for c in list(ours) + list(ref) if c.joint_names), ())
    d = len(names) or max((c.positions.shape[1] for c in list(ours) + list(ref)), default=0)
    max_diff = np.zeros(d)
    sums, count = np.zeros(d), 0
    events: list[tuple[int, str]] = []
    mismatched_subtasks = 0
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        t = key[0]
        if x.positions.shape != y.positions.shape:
            events.append((t, f"chunk shapes differ: {x.positions.shape} vs {y.positions.shape}"))
            continue
        diff = np.abs(x.positions.astype(np.float64) - y.positions.astype(np.float64))
        max_diff = np.maximum(max_diff, diff.max(axis=0))
        sums += diff.sum(axis=0)
        count += diff.shape[0]
        worst = float(diff.max()) if diff.size else 0.0
        if worst > tolerance:
            j = int(np.unravel_index(np.argmax(diff), diff.shape)[1])
            events.append((t, f"actions differ by {worst:.3g} (joint {names[j] if names else j}) > tolerance "
                              f"{tolerance:g}"))
        if x.subtask != y.subtask:
            mismatched_subtasks += 1
            events.append((t, f"subtask {x.subtask!r} vs reference {y.subtask!r}"))
    only_a = sorted(k[0] for k in set(a) - set(b))
    only_b = sorted(k[0] for k in set(b) - set(a))
    events += [(t, "a chunk the reference does not have") for t in only_a]
    events += [(t, "the reference has a chunk this run does not") for t in only_b]
    first = min(events, default=None)
    return Comparison(tolerance, tuple(names), len(set(a) & set(b)), max_diff,
                      sums / count if count else np.zeros(d), only_a, only_b, mismatched_subtasks,
                      first[0] if first else None, first[1] if first else "")
