"""The bag's inputs fed straight into the Engine, no ROS: the oracle for lock-step replay.

`offline_chunks(bag, inputs, config)` walks the same inputs a `--step` replay sends, in the same
order, and applies the host's lock-step rules (`actor_trigger: observation`, docs/replay.md)
with its own code: decoding, joint matching by name, staleness, the planner every N
observations, coaching, interrupt and the episode services. Its chunks must equal the chunks the
host publishes over DDS, value for value: the ROS path adds nothing and loses nothing.

Deliberately independent of flashrt_ros.ros (an error in the host's conversions or loop shows
up as a difference) except for the input synchronisation rules — latest-within-slop, staleness and
"a new complete observation" — which are pure policy and reused (`LatestInputs`, no ROS in it).

Time in lock-step is the bag's receive time (the /clock replay publishes): a message "arrives" at
its log time, and staleness and coaching holds are measured in that time.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np

from flashrt_ros.host.inputs import Frame, LatestInputs, Stale
from flashrt_ros.host.limits import rate_limit
from flashrt_ros.runtime.kernels import image_from_buffer

from .bags import Bag
from .replay_inputs import ReplayInputs, played
from .replay_outputs import Chunk, SubtaskChange

MAX_TEXT_BYTES = 1024


@dataclass
class OfflineResult:
    chunks: list[Chunk] = field(default_factory=list)
    subtasks: list[SubtaskChange] = field(default_factory=list)
    holds: list[tuple[int, str]] = field(default_factory=list)   # (receive time, why no chunk)
    rejected: list[tuple[int, str]] = field(default_factory=list)


def decode_image(bag: Bag, msgtype: str, raw: bytes) -> tuple[np.ndarray, str, int]:
    """(H x W x C uint8, encoding, header stamp ns); ValueError for what the host would refuse."""
    msg = bag.decode(msgtype, raw)
    stamp = int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)
    if msgtype.endswith("CompressedImage"):
        from PIL import Image as PILImage
        data = bytes(np.asarray(msg.data, np.uint8))
        if not data:
            raise ValueError("empty compressed image")
        with PILImage.open(io.BytesIO(data)) as pil:
            pil.load()
            if pil.mode in ("L", "1", "I;16", "I"):
                return np.asarray(pil.convert("L"), np.uint8)[:, :, None], "mono8", stamp
            return np.asarray(pil.convert("RGB"), np.uint8), "rgb8", stamp
    encoding = msg.encoding.strip().lower()
    data = np.asarray(msg.data, np.uint8)
    if data.size != int(msg.step) * int(msg.height):
        raise ValueError(f"image data is {data.size} bytes, expected step x height")
    image = image_from_buffer(data, msg.height, msg.width, msg.step, encoding)
    return image, encoding, stamp


def joint_positions(bag: Bag, raw: bytes, joint_names) -> tuple[np.ndarray, int]:
    msg = bag.decode("sensor_msgs/msg/JointState", raw)
    names = list(msg.name)
    pos = np.asarray(msg.position, np.float64)
    if len(names) != pos.size or len(set(names)) != len(names):
        raise ValueError("joint names and positions do not match")
    index = {n: i for i, n in enumerate(names)}
    if any(j not in index for j in joint_names):
        raise ValueError(f"joint state lacks configured joints: {names}")
    q = pos[[index[j] for j in joint_names]]
    if not np.all(np.isfinite(q)):
        raise ValueError("joint state is not finite")
    stamp = int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)
    return q.astype(np.float32), stamp


def _text(raw_text: str) -> str | None:
    if len(raw_text.encode("utf-8")) > MAX_TEXT_BYTES or not raw_text.strip():
        return None
    return raw_text.strip()


def make_engine(config):
    from flashrt_ros.engines.factory import make_engine as make
    return make(config)


def planner_every(config) -> int:
    """Observations per planner run in lock-step (the host's rule)."""
    every = int(getattr(config, "planner_every", 0) or 0)
    return every if every > 0 else max(1, round(config.actor_hz / config.planner_hz))


def offline_chunks(bag: Bag, inputs: ReplayInputs, config, engine=None) -> OfflineResult:
    """The chunks a lock-step host computes from `inputs` (see the module doc)."""
    if config.overlap_policy != "replace":
        raise ValueError("the offline reference implements overlap_policy 'replace' only")
    if config.units or tuple(config.state_joints) != tuple(config.joint_names) or len(config.joint_state_topics) != 1:
        raise ValueError("the offline reference implements one joint-state topic, state_joints = joint_names and "
                         "no joint units (joint.<name>.scale/offset) only")
    engine = engine or make_engine(config)
    mc = engine.config
    horizon = config.horizon or mc.horizon
    dt = config.chunk_dt or mc.chunk_dt
    lo = np.asarray(config.joint_lower_limits, np.float32)
    hi = np.asarray(config.joint_upper_limits, np.float32)
    vmax = np.asarray(config.max_velocity, np.float32)
    cams = [c.name for c in config.cameras]
    latest = LatestInputs(cams, config.camera_sync_slop_s, config.camera_timeout_s, config.joint_state_timeout_s,
                          joint_names=config.joint_names)
    every = planner_every(config)
    out = OfflineResult()

    running, interrupted = bool(config.autostart), False
    episode = 1 if running else 0
    task = config.task
    if task:
        set_task(task, inputs.start_ns - 1)          # at configure: sim time is the first /clock
    plan_due, since_plan = True, 0
    coached_until = -math.inf
    chunk_seq, acted = 0, -1

    def publish_subtask(state, now_ns):
        out.subtasks.append(SubtaskChange(now_ns, state.text, state.version, state.source))

    def set_task(text: str, now_ns: int) -> None:
        """Engines without a planner (LeRobot policies) make the task the subtask: the host
        publishes it then (PolicyLoop._set_engine_task)."""
        before = engine.subtask.version
        engine.set_task(text)
        if engine.subtask.version != before:
            publish_subtask(engine.subtask, now_ns)

    def cycle(now_ns: int, frame: bool) -> None:
        """What an accepted camera or joint-state input does: one chunk per new complete observation.
        `holds` notes why a frame gave no chunk (the report's count)."""
        nonlocal plan_due, since_plan, chunk_seq, acted
        now = now_ns / 1e9
        if not running or interrupted:
            if frame:
                out.holds.append((now_ns, "no episode running" if not running else "interrupted"))
            return
        obs = latest.observation(now)
        if isinstance(obs, Stale):
            if frame:
                out.holds.append((now_ns, obs.reason))
            return
        if not latest.complete_after(acted):
            return                                   # the rest of the observation is still coming
        if (plan_due or since_plan >= every) and task:
            plan_due, since_plan = False, 0
            state = engine.plan(obs.images, obs.encodings, allow_commit=not now < coached_until)
            if state is not None:
                publish_subtask(state, now_ns)
        since_plan += 1
        if engine.subtask.version == 0:
            if frame:
                out.holds.append((now_ns, "waiting for a subtask"))
            return
        acted = obs.stamp_ns
        chunk_seq += 1
        result = engine.act(obs.images, obs.encodings, obs.joint_positions, chunk_seq)
        if result.nonfinite:
            out.holds.append((now_ns, "nonfinite chunk"))
            return
        # the host's limits, the same function (host/limits.py)
        positions = rate_limit(obs.joint_positions, result.positions[:horizon], dt, vmax, lo, hi)
        out.chunks.append(Chunk(chunk_seq, episode, obs.stamp_ns, result.subtask_text, result.subtask_version,
                                dt, positions, tuple(config.joint_names), result.latency_s))

    for item, raw in played(bag, inputs):
        now_ns = item.log_ns
        now = now_ns / 1e9
        kind = item.kind
        if kind == "joint_states":
            try:
                q, stamp = joint_positions(bag, raw, config.joint_names)
            except ValueError as err:
                out.rejected.append((now_ns, f"joint_states: {err}"))
                continue
            latest.put_joints(dict(zip(config.joint_names, q.tolist())), stamp or now_ns, now)
            cycle(now_ns, frame=False)
        elif kind == "camera":
            try:
                image, encoding, stamp = decode_image(bag, inputs.topics[item.topic][0], raw)
            except ValueError as err:
                out.rejected.append((now_ns, f"camera {item.name}: {err}"))
                continue
            latest.put_frame(item.name, Frame(image, encoding, stamp or now_ns, now))
            cycle(now_ns, frame=True)
        elif kind == "task":
            text = _text(item.text)
            try:
                if text is None:
                    raise ValueError("empty or oversized")
                set_task(text, now_ns)
            except ValueError as err:
                out.rejected.append((now_ns, f"task: {err}"))
                continue
            task, coached_until, plan_due = text, -math.inf, True
        elif kind == "coach":
            text = _text(item.text)
            try:
                if text is None:
                    raise ValueError("empty or oversized")
                state = engine.coach(text)
            except ValueError as err:
                out.rejected.append((now_ns, f"coach: {err}"))
                continue
            hold = config.coach_hold_s
            coached_until = now + hold if hold > 0 else math.inf
            publish_subtask(state, now_ns)
        elif kind == "interrupt":
            if running:
                interrupted = True
        elif item.name == "start":                   # service calls
            if running and not interrupted:
                continue
            if running:
                interrupted = False
            else:
                running, episode, acted = True, episode + 1, -1
            plan_due = True
        elif item.name == "stop":
            running, interrupted = False, False
        elif item.name == "reset":
            engine.reset()
            coached_until, acted = -math.inf, -1
            task = config.task
            if task:
                set_task(task, now_ns)
            plan_due = True
            if running:
                episode, interrupted = episode + 1, False
    return out
