"""Fixture bags for the replay tests: the reference world recorded as a robot would record it.

The scripted expert drives the tabletop world (closed loop, 20 Hz) while the recording takes what
`ros2 bag record -a` would on a robot running flashrt_ros: camera images, /joint_states, the task,
coaching and interrupt texts, /flashrt/start service events, the controller's commands, /rosout
and a topic of a vendor type nobody here knows. Written with rosbags, MCAP or sqlite3. The bag can
carry the flaws real bags have: dropped frames, out-of-order stamps, a missing camera topic,
compressed or raw images, resolutions that change mid-bag, DDS-padded CDR.

    python -m flashrt_ros.tools.make_fixture_bag OUT_DIR [--kind robot|compressed|missing_camera]

No ROS needed (rosbags + numpy + Pillow for compressed images). Deterministic given the spec.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_types_from_msg

from flashrt_ros.host.recorder import bag_typestore
from flashrt_ros.sim import JOINT_NAMES, ExpertPolicy, TabletopWorld, WorldConfig, expert_subtask

BAG_EPOCH_NS = 1_700_000_000 * 10**9        # bag time of world time 0 (a plausible wall-clock date)
COMMAND_TOPIC = "/joint_trajectory_controller/joint_trajectory"
UNKNOWN_TOPIC = "/acme/gripper_status"
UNKNOWN_TYPE = "acme_msgs/msg/GripperStatus"
START_EVENT_TOPIC = "/flashrt/start/_service_event"
TRIGGER_EVENT_TYPE = "std_srvs/srv/Trigger_Event"
# Types a robot's bag has that rosbags' built-in store lacks: a vendor message and the service
# event type `ros2 bag record --all-services` writes for std_srvs/srv/Trigger (Jazzy).
EXTRA_TYPES = {
    UNKNOWN_TYPE: "std_msgs/Header header\nfloat32 opening\nbool grasping\n",
    "std_srvs/srv/Trigger_Request": "uint8 structure_needs_at_least_one_member\n",
    "std_srvs/srv/Trigger_Response": "bool success\nstring message\n",
    TRIGGER_EVENT_TYPE: ("service_msgs/ServiceEventInfo info\nstd_srvs/srv/msg/Trigger_Request[<=1] request\n"
                         "std_srvs/srv/msg/Trigger_Response[<=1] response\n"),
}
# ServiceEventInfo.event_type values
REQUEST_SENT, REQUEST_RECEIVED, RESPONSE_SENT, RESPONSE_RECEIVED = 0, 1, 2, 3


@dataclass(frozen=True)
class FixtureSpec:
    seed: int = 7                                  # world seed (targets, start, task)
    duration_s: float = 6.0
    storage: str = "mcap"                          # "mcap" | "sqlite3"
    transport: str = "raw"                         # "raw" | "jpeg" | "png"
    encoding: str = "rgb8"                         # raw images: "rgb8" | "bgr8"
    image_sizes: tuple[int, ...] = (96,)           # frame i is rendered at image_sizes[i % len]
    camera_topic: str = "/camera/top/image_raw"    # "/compressed" is appended for compressed images
    camera_every: int = 2                          # an image every N world steps (20 Hz / 2 = 10 Hz)
    dropped_frames: tuple[int, ...] = ()           # camera frame indices missing from the bag
    out_of_order_frames: tuple[int, ...] = ()      # frame i is logged after frame i + 1
    coach: tuple[tuple[float, str, float], ...] = ((1.5, "go to yellow", 1.0),)  # (t, text, hold s)
    interrupts: tuple[tuple[float, float | None], ...] = ((4.0, 4.8),)  # (t, /flashrt/start at t or None)
    task_at_s: float | None = 0.12                 # None: no task message in the bag
    commands: bool = True                          # the expert's trajectories on COMMAND_TOPIC
    extra_topics: bool = True                      # /rosout and UNKNOWN_TOPIC
    joint_order: tuple[str, ...] = ("gripper", "joint_y", "joint_x")  # /joint_states names (any order)
    dds_padding: bool = True                       # JointState CDR padded as Fast-CDR writes it

    @property
    def image_topic(self) -> str:
        return self.camera_topic + ("/compressed" if self.transport != "raw" else "")


FIXTURES: dict[str, FixtureSpec] = {
    # MCAP, raw images, every flaw but a missing camera
    "robot": FixtureSpec(dropped_frames=(20, 21, 22), out_of_order_frames=(40,)),
    # sqlite3, jpeg, the resolution changes every frame
    "compressed": FixtureSpec(storage="sqlite3", transport="jpeg", image_sizes=(128, 80), seed=11,
                              out_of_order_frames=(12,), dds_padding=False),
    # the camera was recorded under another name: the configured topic is missing
    "missing_camera": FixtureSpec(camera_topic="/camera/wrist/image_raw", duration_s=2.0, interrupts=()),
}


@dataclass
class FixtureInfo:
    path: Path
    spec: FixtureSpec
    task: str
    frames: int                        # camera messages written
    joint_states: int
    counts: dict[str, int]             # topic -> messages written
    events: list[tuple[float, str, str]]  # (world time s, kind, text)


def _qos(reliable: bool = True, transient: bool = False) -> Qos:
    inf = QosTime(0x7FFFFFFF, 0xFFFFFFFF)
    return Qos(QosHistory.UNKNOWN, 0,
               QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               QosDurability.TRANSIENT_LOCAL if transient else QosDurability.VOLATILE,
               inf, inf, QosLiveliness.AUTOMATIC, inf, False)


def _store_name(msgtype: str) -> str:
    """rosbags files service types under pkg/srv/msg/Name; bags name them pkg/srv/Name."""
    pkg, kind, name = msgtype.split("/")
    return f"{pkg}/srv/msg/{name}" if kind == "srv" else msgtype


def _typestore():
    store = bag_typestore()
    if UNKNOWN_TYPE not in store.fielddefs:
        types = {}
        for name, text in EXTRA_TYPES.items():
            types.update(get_types_from_msg(text, _store_name(name)))
        store.register(types)
    return store


class _Bag:
    """Collects (log time, topic, CDR) and writes them sorted by log time at the end."""

    def __init__(self, store):
        self.store = store
        self.types: dict[str, tuple[str, Qos]] = {}
        self.records: list[tuple[int, int, str, bytes]] = []

    def topic(self, name: str, msgtype: str, qos: Qos | None = None) -> None:
        self.types.setdefault(name, (msgtype, qos or _qos()))

    def add(self, name: str, log_ns: int, msg, pad: int = 0) -> None:
        data = bytes(self.store.serialize_cdr(msg, _store_name(self.types[name][0]))) + bytes(pad)
        self.records.append((int(log_ns), len(self.records), name, data))

    def write(self, path: Path, storage: str) -> dict[str, int]:
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
        writer = Writer(path, version=9, storage_plugin=plugin)
        writer.open()
        try:
            conns = {}
            for name, (t, qos) in self.types.items():
                msgdef, _ = self.store.generate_msgdef(_store_name(t), ros_version=2)
                conns[name] = writer.add_connection(name, t, msgdef=msgdef, rihs01=self.store.hash_rihs01(
                    _store_name(t)), offered_qos_profiles=[qos])
            counts = dict.fromkeys(self.types, 0)
            for log_ns, _, name, data in sorted(self.records):
                writer.write(conns[name], log_ns, data)
                counts[name] += 1
        finally:
            writer.close()
        return counts


def _time(store, ns: int):
    return store.types["builtin_interfaces/msg/Time"](sec=int(ns // 10**9), nanosec=int(ns % 10**9))


def _header(store, ns: int, frame_id: str = ""):
    return store.types["std_msgs/msg/Header"](stamp=_time(store, ns), frame_id=frame_id)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize (a camera at another resolution)."""
    h, w = image.shape[:2]
    rows = (np.arange(size) * h // size).clip(0, h - 1)
    cols = (np.arange(size) * w // size).clip(0, w - 1)
    return np.ascontiguousarray(image[rows][:, cols])


def _image_msg(store, spec: FixtureSpec, image: np.ndarray, stamp_ns: int):
    header = _header(store, stamp_ns, "top_camera")
    if spec.transport == "raw":
        pixels = image[..., ::-1] if spec.encoding == "bgr8" else image
        h, w = pixels.shape[:2]
        return store.types["sensor_msgs/msg/Image"](
            header=header, height=h, width=w, encoding=spec.encoding, is_bigendian=0, step=w * 3,
            data=np.ascontiguousarray(pixels).reshape(-1))
    from PIL import Image as PILImage
    buf = io.BytesIO()
    PILImage.fromarray(image).save(buf, format="JPEG" if spec.transport == "jpeg" else "PNG", quality=90)
    fmt = "rgb8; jpeg compressed bgr8" if spec.transport == "jpeg" else "rgb8; png compressed bgr8"
    return store.types["sensor_msgs/msg/CompressedImage"](
        header=header, format=fmt, data=np.frombuffer(buf.getvalue(), np.uint8))


def make_fixture_bag(path: str | Path, spec: FixtureSpec | str = "robot") -> FixtureInfo:
    """Write the bag directory `path` (must not exist) from the world driven by the expert."""
    if isinstance(spec, str):
        spec = FIXTURES[spec]
    path = Path(path)
    store = _typestore()
    T = dict(store.types)   # + the service types under the names bags use
    T[TRIGGER_EVENT_TYPE] = store.types[_store_name(TRIGGER_EVENT_TYPE)]
    T["std_srvs/srv/Trigger_Request"] = store.types[_store_name("std_srvs/srv/Trigger_Request")]
    bag = _Bag(store)
    render_size = max(spec.image_sizes)
    world = TabletopWorld(WorldConfig(image_size=render_size, time_limit=spec.duration_s + 1.0), seed=spec.seed)
    expert = ExpertPolicy(world, horizon=16)
    dt = world.config.dt

    cam = spec.image_topic
    bag.topic(cam, "sensor_msgs/msg/Image" if spec.transport == "raw" else "sensor_msgs/msg/CompressedImage",
              _qos(reliable=False))
    bag.topic("/joint_states", "sensor_msgs/msg/JointState")
    for name in ("/flashrt/task", "/flashrt/coach", "/flashrt/interrupt"):
        bag.topic(name, "std_msgs/msg/String")
    if any(start is not None for _, start in spec.interrupts):
        bag.topic(START_EVENT_TOPIC, TRIGGER_EVENT_TYPE)
    if spec.commands:
        bag.topic(COMMAND_TOPIC, "trajectory_msgs/msg/JointTrajectory")
    if spec.extra_topics:
        bag.topic("/rosout", "rcl_interfaces/msg/Log", _qos(transient=True))
        bag.topic(UNKNOWN_TOPIC, UNKNOWN_TYPE)

    def ns(t: float) -> int:
        return BAG_EPOCH_NS + int(round(t * 1e9))

    events: list[tuple[float, str, str]] = []
    if spec.task_at_s is not None:
        bag.add("/flashrt/task", ns(spec.task_at_s), T["std_msgs/msg/String"](data=world.task_text))
        events.append((spec.task_at_s, "task", world.task_text))
    for t, text, _ in spec.coach:
        bag.add("/flashrt/coach", ns(t), T["std_msgs/msg/String"](data=text))
        events.append((t, "coach", text))
    for k, (t, start) in enumerate(spec.interrupts):
        bag.add("/flashrt/interrupt", ns(t), T["std_msgs/msg/String"](data="operator stop"))
        events.append((t, "interrupt", "operator stop"))
        if start is not None:
            for event_type, delay in ((REQUEST_SENT, 0.0), (REQUEST_RECEIVED, 0.0005)):
                info = T["service_msgs/msg/ServiceEventInfo"](
                    event_type=event_type, stamp=_time(store, ns(start + delay)),
                    client_gid=np.arange(16, dtype=np.uint8), sequence_number=k + 1)
                bag.add(START_EVENT_TOPIC, ns(start + delay), T[TRIGGER_EVENT_TYPE](
                    info=info, request=[T["std_srvs/srv/Trigger_Request"](structure_needs_at_least_one_member=0)],
                    response=[]))
            events.append((start, "start", "/flashrt/start"))

    def coached(t: float) -> str | None:
        active = [text for t0, text, hold in spec.coach if t0 <= t < t0 + hold]
        return active[-1] if active else None

    def interrupted(t: float) -> bool:
        return any(t0 <= t and (start is None or t < start) for t0, start in spec.interrupts)

    steps = int(round(spec.duration_s / dt))
    frame = frames = joints = 0
    delayed: tuple[int, object] | None = None      # an out-of-order frame waiting for its successor
    for step in range(steps):
        t = step * dt
        obs = world.observation()
        q = dict(zip(JOINT_NAMES, obs.joint_positions.tolist()), gripper=0.02)
        js = T["sensor_msgs/msg/JointState"](
            header=_header(store, ns(t)), name=list(spec.joint_order),
            position=np.array([q[n] for n in spec.joint_order], np.float64),
            velocity=np.zeros(0, np.float64), effort=np.zeros(0, np.float64))
        bag.add("/joint_states", ns(t) + 1_000_000, js, pad=8 if spec.dds_padding else 0)
        joints += 1
        if step % spec.camera_every == 0:
            if frame not in spec.dropped_frames:
                size = spec.image_sizes[frame % len(spec.image_sizes)]
                image = obs.images["top"] if size == render_size else _resize(obs.images["top"], size)
                msg = _image_msg(store, spec, image, ns(t))
                log = ns(t) + 4_000_000
                if frame in spec.out_of_order_frames:
                    delayed = (frame, msg)
                else:
                    bag.add(cam, log, msg)
                    frames += 1
                    if delayed is not None:           # the held-back frame arrives after this one
                        bag.add(cam, log + 1_000_000, delayed[1])
                        frames += 1
                        delayed = None
            frame += 1
        if step % 2 == 0 and not interrupted(t):
            subtask = coached(t) or expert_subtask(world)
            positions = expert.act(obs, subtask)
            world.apply_chunk(positions, start_time=t)
            if spec.commands:
                points = [T["trajectory_msgs/msg/JointTrajectoryPoint"](
                    positions=p.astype(np.float64), velocities=np.zeros(2), accelerations=np.zeros(0),
                    effort=np.zeros(0), time_from_start=T["builtin_interfaces/msg/Duration"](
                        sec=int((i + 1) * dt), nanosec=int(round(((i + 1) * dt % 1) * 1e9))))
                    for i, p in enumerate(positions)]
                bag.add(COMMAND_TOPIC, ns(t) + 8_000_000, T["trajectory_msgs/msg/JointTrajectory"](
                    header=_header(store, ns(t)), joint_names=list(JOINT_NAMES), points=points))
        elif interrupted(t) and world.chunk is not None:
            world.apply_chunk(np.repeat(world.position[None], 4, axis=0), start_time=t)   # the robot holds
        if spec.extra_topics and step % 4 == 0:
            bag.add(UNKNOWN_TOPIC, ns(t) + 2_000_000, T[UNKNOWN_TYPE](
                header=_header(store, ns(t)), opening=0.02, grasping=False))
        if spec.extra_topics and step % 20 == 0:
            bag.add("/rosout", ns(t) + 3_000_000, T["rcl_interfaces/msg/Log"](
                stamp=_time(store, ns(t)), level=20, name="robot", msg=f"step {step}", file="", function="",
                line=0))
        world.step()
    if delayed is not None:
        raise ValueError(f"out-of-order frame {delayed[0]} is the last frame: it has no successor")
    counts = bag.write(path, spec.storage)
    return FixtureInfo(path=path, spec=spec, task=world.task_text, frames=frames, joint_states=joints,
                       counts=counts, events=events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashrt_ros.tools.make_fixture_bag", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="bag directory to create (must not exist)")
    parser.add_argument("--kind", choices=sorted(FIXTURES), default="robot")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), help="override the kind's storage")
    parser.add_argument("--seed", type=int, help="override the kind's world seed")
    args = parser.parse_args(argv)
    spec = FIXTURES[args.kind]
    if args.storage:
        spec = dataclasses.replace(spec, storage=args.storage)
    if args.seed is not None:
        spec = dataclasses.replace(spec, seed=args.seed)
    info = make_fixture_bag(args.out, spec)
    print(f"{info.path}: {spec.storage}, task {info.task!r}, {info.frames} frames, "
          f"{info.joint_states} joint states, {sum(info.counts.values())} messages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
