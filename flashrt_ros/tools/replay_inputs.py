"""What a bag holds for the host, and what replay will send: the topic map and the input timeline.

No ROS, no torch. `scan(bag, topic_map, config)` reads the whole bag once (so a truncated or corrupt
bag fails here, before anything starts) and returns `ReplayInputs`:
- `inputs`: every message of a mapped topic in log-time order (the order the robot received them),
  each with its header stamp and `skip` ('' when it will be sent, else why not);
- what the report states: unknown topics, missing topics, dropped frames (gaps in a camera's
  stamps), out-of-order or duplicate stamps (skipped: replay never sends a message older than the
  previous one on its topic), service events that are not requests;
- the recorded joint states and commands, for the plots.
`played(bag, inputs)` then streams the raw messages to send, in the same order.

Topic mapping, bag side: each camera's topic is the params file's `camera.<name>.topic` (or that
+ "/compressed" when only the compressed stream was recorded) unless `--camera NAME=TOPIC` says
otherwise; the transport follows the recorded type. Joint states, task, coaching and interrupt
default to the host's own topic names. `/flashrt/{start,stop,reset}` service events (recorded with
`ros2 bag record --all-services`) become service calls. Commands sent to the robot
(trajectory_msgs/JointTrajectory or flashrt_ros/ActionChunk topics) are plotted, never sent.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np

from .bags import IMAGE_TYPES, SERVICE_EVENT_SUFFIX, Bag, BagError, service_event, stamp_ns

CONTROL_TOPICS = {"task": "/flashrt/task", "coach": "/flashrt/coach", "interrupt": "/flashrt/interrupt"}
SERVICES = ("start", "stop", "reset")
COMMAND_TYPES = ("trajectory_msgs/msg/JointTrajectory", "flashrt_ros/msg/ActionChunk")
# what the host publishes: a bag recorded on a robot running flashrt_ros has these; they are outputs
HOST_OUTPUTS = ("/flashrt/action_chunk", "/flashrt/joint_trajectory", "/flashrt/subtask", "/diagnostics")
STRING_TYPE = "std_msgs/msg/String"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
GAP_FACTOR = 1.5   # a camera gap longer than this many periods is reported as dropped frames


def absolute(topic: str) -> str:
    topic = topic.strip()
    return topic if topic.startswith("/") else "/" + topic


@dataclass(frozen=True)
class TopicMap:
    """Bag topic of each input the host takes."""
    cameras: Mapping[str, str]                      # camera name -> bag topic
    joint_states: str = "/joint_states"
    task: str = CONTROL_TOPICS["task"]
    coach: str = CONTROL_TOPICS["coach"]
    interrupt: str = CONTROL_TOPICS["interrupt"]
    services: Mapping[str, str] = field(default_factory=lambda: {
        s: f"/flashrt/{s}{SERVICE_EVENT_SUFFIX}" for s in SERVICES})
    commands: tuple[str, ...] | None = None         # None: every command-typed topic not mapped above

    def kind_of(self) -> dict[str, tuple[str, str]]:
        """bag topic -> (kind, camera name or service name)."""
        out = {t: ("camera", c) for c, t in self.cameras.items()}
        out[self.joint_states] = ("joint_states", "")
        for kind in ("task", "coach", "interrupt"):
            out[getattr(self, kind)] = (kind, "")
        for name, topic in self.services.items():
            out[topic] = ("service", name)
        return out


def topic_map(config, bag: Bag, cameras: Mapping[str, str] | None = None, **overrides) -> TopicMap:
    """The map for `config` (a HostConfig) on `bag`; `cameras` and `overrides` (joint_states, task,
    coach, interrupt, commands) are the command line's and win."""
    cameras = dict(cameras or {})
    unknown = set(cameras) - {c.name for c in config.cameras}
    if unknown:
        raise BagError(f"--camera names camera(s) {sorted(unknown)} the configuration does not have; its "
                       f"cameras: {[c.name for c in config.cameras]}")
    resolved = {}
    for cam in config.cameras:
        if cam.name in cameras:
            resolved[cam.name] = absolute(cameras[cam.name])
            continue
        base = absolute(cam.topic)
        candidates = [base] + ([base + "/compressed"] if not base.endswith("/compressed") else [])
        resolved[cam.name] = next((t for t in candidates if t in bag.topics), base)
    kw = {k: absolute(v) for k, v in overrides.items() if v is not None and k != "commands"}
    if overrides.get("commands") is not None:
        kw["commands"] = tuple(absolute(t) for t in overrides["commands"])
    return TopicMap(cameras=resolved, **kw)


@dataclass
class Input:
    kind: str            # camera | joint_states | task | coach | interrupt | service
    topic: str           # bag topic
    ordinal: int         # index among this topic's messages in the bag
    log_ns: int          # when the robot received it
    stamp_ns: int        # header stamp (log time for messages without a header)
    name: str = ""       # camera or service name
    text: str = ""       # task / coaching / interrupt text
    skip: str = ""       # why it is not sent ('' = sent)


@dataclass
class Trace:
    """Positions over time, one column per configured joint (NaN where a joint is absent)."""
    times_ns: np.ndarray      # [N]
    positions: np.ndarray     # [N, D]


@dataclass
class ReplayInputs:
    path: str
    storage: str
    start_ns: int
    end_ns: int
    topic_map: TopicMap
    joint_names: tuple[str, ...]
    inputs: list[Input]
    topics: dict[str, tuple[str, int]]                 # every topic in the bag: (type, messages)
    unknown_topics: dict[str, tuple[str, int]]         # in the bag, not used
    missing: dict[str, str]                            # input -> expected bag topic, absent
    camera_transport: dict[str, str]                   # camera -> "raw" | "compressed"
    dropped_frames: dict[str, list[tuple[int, int]]]   # camera -> [(gap start stamp, frames missing)]
    camera_period_ns: dict[str, int]
    joint_states: Trace
    commands: dict[str, list[Trace]]                   # command topic -> one trace per message
    notes: list[str]

    @property
    def sent(self) -> list[Input]:
        return [i for i in self.inputs if not i.skip]

    def count(self, kind: str, sent: bool = True) -> int:
        return sum(1 for i in self.inputs if i.kind == kind and (not sent or not i.skip))

    @property
    def observations(self) -> int:
        """Frames sent for the first camera: the observations a lock-step replay processes."""
        first = next(iter(self.topic_map.cameras), None)
        return sum(1 for i in self.sent if i.kind == "camera" and i.name == first)

    def skipped(self) -> dict[tuple[str, str], int]:
        """(topic, reason) -> messages."""
        out: dict[tuple[str, str], int] = {}
        for i in self.inputs:
            if i.skip:
                out[(i.topic, i.skip)] = out.get((i.topic, i.skip), 0) + 1
        return out

    def events(self) -> list[Input]:
        """Task, coaching, interrupt and service inputs that are sent (the timeline's markers)."""
        return [i for i in self.sent if i.kind in ("task", "coach", "interrupt", "service")]


def scan(bag: Bag, tmap: TopicMap, config) -> ReplayInputs:
    """Read the whole bag: the inputs to send (with skip reasons) and everything the report needs."""
    joint_names = tuple(config.joint_names)
    kinds = tmap.kind_of()
    topics = {t: (i.msgtype, i.count) for t, i in bag.topics.items()}
    missing: dict[str, str] = {}
    transport: dict[str, str] = {}
    notes: list[str] = []
    for cam, topic in tmap.cameras.items():
        if topic not in topics:
            missing[f"camera {cam!r}"] = topic
        elif topics[topic][0] not in IMAGE_TYPES:
            raise BagError(f"camera {cam!r}: bag topic {topic} has type {topics[topic][0]}, not "
                           f"sensor_msgs/msg/Image or CompressedImage")
        else:
            transport[cam] = "compressed" if topics[topic][0].endswith("CompressedImage") else "raw"
    if tmap.joint_states not in topics:
        missing["joint states"] = tmap.joint_states
    elif topics[tmap.joint_states][0] != JOINT_STATE_TYPE:
        raise BagError(f"joint states: bag topic {tmap.joint_states} has type {topics[tmap.joint_states][0]}")
    for kind in ("task", "coach", "interrupt"):
        topic = getattr(tmap, kind)
        if topic in topics and topics[topic][0] != STRING_TYPE:
            raise BagError(f"{kind}: bag topic {topic} has type {topics[topic][0]}, not {STRING_TYPE}")
    if tmap.commands is None:
        commands = tuple(t for t, (typ, _) in topics.items() if typ in COMMAND_TYPES and t not in kinds
                         and t not in HOST_OUTPUTS[:2])
        if not commands:
            # a bag from a robot driven by flashrt_ros: its own chunks are the recorded commands
            commands = tuple(t for t in HOST_OUTPUTS[:1] if t in topics)
    else:
        commands = tmap.commands
        for t in commands:
            if t not in topics:
                missing[f"commands {t}"] = t
    tmap = dataclasses.replace(tmap, commands=commands)
    used = set(kinds) | set(commands)
    unknown = {t: v for t, v in topics.items() if t not in used}

    inputs: list[Input] = []
    ordinals: dict[str, int] = {}
    last_stamp: dict[str, int] = {}
    seen_requests: set[tuple[bytes, int, str]] = set()
    js_times, js_pos = [], []
    cmd_traces: dict[str, list[Trace]] = {t: [] for t in commands}
    for topic, log_ns, raw in bag.messages():       # every topic: reading all of it validates the bag
        n = ordinals.get(topic, 0)
        ordinals[topic] = n + 1
        if topic in cmd_traces:
            try:
                cmd_traces[topic].append(_command_trace(bag, topics[topic][0], raw, joint_names))
            except BagError as err:
                notes.append(f"recorded command #{n} on {topic} not plotted: {err}")
            continue
        if topic not in kinds:
            continue
        kind, name = kinds[topic]
        item = Input(kind, topic, n, log_ns, log_ns, name)
        inputs.append(item)
        if kind == "service":
            try:
                event_type, gid, seq = service_event(raw)
            except BagError as err:
                item.skip = f"malformed message: {err}"
                continue
            key = (gid, seq, name)
            if event_type not in (0, 1):        # REQUEST_SENT, REQUEST_RECEIVED
                item.skip = "service response event"
            elif key in seen_requests:
                item.skip = "same request seen by client and server"
            seen_requests.add(key)
            continue
        try:       # decode everything that will be sent: a malformed message never reaches the host
            msg = bag.decode(topics[topic][0], raw)
        except BagError as err:
            item.skip = f"malformed message: {err}"
            continue
        if kind not in ("camera", "joint_states"):
            item.text = msg.data
            continue
        item.stamp_ns = stamp_ns(msg.header.stamp) or log_ns
        prev = last_stamp.get(topic)
        if prev is not None and item.stamp_ns < prev:
            item.skip = "out-of-order stamp"
        elif prev is not None and item.stamp_ns == prev:
            item.skip = "duplicate stamp"
        else:
            last_stamp[topic] = item.stamp_ns
        if kind == "joint_states" and not item.skip:
            index = {j: i for i, j in enumerate(msg.name)}
            pos = np.asarray(msg.position, np.float64)
            js_times.append(item.stamp_ns)
            js_pos.append([pos[index[j]] if j in index and index[j] < pos.size else np.nan for j in joint_names])

    dropped: dict[str, list[tuple[int, int]]] = {}
    periods: dict[str, int] = {}
    for cam, topic in tmap.cameras.items():
        stamps = np.array([i.stamp_ns for i in inputs if i.topic == topic and not i.skip], np.int64)
        if stamps.size < 3:
            continue
        diffs = np.diff(np.sort(stamps))
        period = int(np.median(diffs))
        periods[cam] = period
        gaps = [(int(s), int(round(d / period)) - 1) for s, d in zip(np.sort(stamps)[:-1], diffs)
                if period > 0 and d > GAP_FACTOR * period]
        if gaps:
            dropped[cam] = gaps
    if not any(i.kind == "task" for i in inputs) and not config.task:
        notes.append("the bag has no task message and the configuration sets no task: the planner has "
                     "nothing to plan (give one with --task TEXT)")
    joints = Trace(np.asarray(js_times, np.int64), np.asarray(js_pos, np.float64).reshape(-1, len(joint_names)))
    return ReplayInputs(
        path=str(bag.path), storage=bag.storage, start_ns=bag.start_ns, end_ns=bag.end_ns, topic_map=tmap,
        joint_names=joint_names, inputs=inputs, topics=topics, unknown_topics=unknown, missing=missing,
        camera_transport=transport, dropped_frames=dropped, camera_period_ns=periods, joint_states=joints,
        commands=cmd_traces, notes=notes)


def _command_trace(bag: Bag, msgtype: str, raw: bytes, joint_names: Sequence[str]) -> Trace:
    msg = bag.decode(msgtype, raw)
    t0 = stamp_ns(msg.header.stamp)
    if msgtype.endswith("ActionChunk"):
        names = list(msg.joint_names)
        actions = np.asarray(msg.actions, np.float64).reshape(int(msg.horizon), int(msg.action_dim))
        times = t0 + np.round((np.arange(actions.shape[0]) + 1) * float(msg.dt) * 1e9).astype(np.int64)
        rows = actions
    else:
        names = list(msg.joint_names)
        times = np.array([t0 + stamp_ns(p.time_from_start) for p in msg.points], np.int64)
        rows = np.array([np.asarray(p.positions, np.float64) for p in msg.points]).reshape(len(msg.points), -1)
    index = {j: i for i, j in enumerate(names)}
    cols = [rows[:, index[j]] if j in index and index[j] < rows.shape[1] else np.full(len(rows), np.nan)
            for j in joint_names]
    return Trace(times, np.stack(cols, axis=1) if cols else np.zeros((len(rows), 0)))


def played(bag: Bag, replay_inputs: ReplayInputs) -> Iterator[tuple[Input, bytes]]:
    """The inputs to send with their raw CDR, in log-time order (a second pass over the bag)."""
    by_key = {(i.topic, i.ordinal): i for i in replay_inputs.inputs}
    ordinals: dict[str, int] = {}
    for topic, _, raw in bag.messages(replay_inputs.topic_map.kind_of()):
        n = ordinals.get(topic, 0)
        ordinals[topic] = n + 1
        item = by_key.get((topic, n))
        if item is not None and not item.skip:
            yield item, raw
