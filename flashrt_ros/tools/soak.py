"""flashrt-ros soak: a long run of the host, as deployed, against a moving robot; does it stall?

    flashrt-ros soak [--seconds 600] [--actor-hz 20] [--cameras 1] [--joints N] [--warmup S]
                     [--set NAME=VALUE ...] [--host-cmd "CMD"] [--out docs/benchmarks] [--tag NAME]

The host runs as its own process (`flashrt-ros host --set actor_hz=... --set ...`, or --host-cmd,
e.g. another checkout's `scripts/run_in_env.sh flashrt-ros host`). This process is the robot:
N cameras of 640x480 rgb8 at 30 Hz (the reference world's render scaled up; camera i on
/camera/cam<i>/image_raw, or /camera/top/image_raw for one camera) and /joint_states at 100 Hz,
both published reliable, from a robot that follows /flashrt/joint_trajectory as joint_trajectory_controller would
(flashrt_ros.sim.follower). With more than one camera the model is the reference architecture
with N camera inputs and seeded random weights (the shipped weights take one camera).
--joints N: the robot is instead an N-joint arm (joint1..jointN, from 0 rad, limits +-3.1 rad, max
velocity 2 rad/s: config/lerobot_pi05.yaml's arm) and the host is told so; with a LeRobot policy
(`--set model=lerobot_pi05 --set checkpoint=DIR`) N is the policy's action size.

Measured after the first chunks, for --seconds: chunk rate, gaps between trajectories (largest,
> 0.5 s, > 10 actor periods, and stalls: > 10 periods while every input was fresh), holds
published while every input was fresh, observation stamp -> trajectory arrival, and from the
host's /diagnostics: deadline misses (`flashrt: actor`), the largest executor backlog and the
longest GC pause while serving (`flashrt: host`, keys executor_backlog_max_ms, gc_pause_max_ms and for
full collections gc_full_pause_max_ms / gc_full_collections; "n/a" when
the host does not report them). Per ActionChunk received: its header stamp (= the camera stamp it
answers) -> arrival here (`obs_to_chunk`), and the host's own fields: observation_to_ready and
inference_time (the engine's act() wall time), so the ROS overhead shows as the difference.
The chunk's stamp is the newest of its inputs' stamps: with joint states at 100 Hz usually a joint
state's, so obs_to_chunk is then newest input -> chunk; --joints-with-cameras publishes the joint
states in each camera tick with the camera stamp (30 Hz), which makes it camera message -> chunk
(`chunk_stamp_is_camera_stamp` counts the chunks where that holds).
--warmup S: the first S seconds after the first chunks are not measured. Inputs are fresh when this process published each of them within the
host's timeouts (0.5 s) throughout; a gap or hold caused by this process falling behind is not
the host's.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from flashrt_ros.msg import ActionChunk
from flashrt_ros.ros.conversions import image_to_msg, joint_state_to_msg, ns_to_stamp, stamp_to_ns
from flashrt_ros.sim import JOINT_NAMES

from .host_process import RigNode, machine, pct, start_host, stop_host, world_image, write_results

CAMERA_HZ, JOINT_HZ, SIZE = 30.0, 100.0, (640, 480)
ARM_LIMIT, ARM_MAX_VELOCITY = 3.1, 2.0   # --joints N: config/lerobot_pi05.yaml's arm (rad, rad/s)
FRESH_S = 0.5               # the host's default camera_timeout_s and joint_state_timeout_s
MAX_VELOCITY = (0.5, 0.5)   # the host's default max_velocity
# reliable, as camera drivers and joint_state_broadcaster publish by default: it serves reliable and
# best-effort subscriptions alike (delivery is then the subscription's choice)
PUBLISHED = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)


def camera_names(n: int) -> list[str]:
    return ["top"] if n == 1 else [f"cam{i}" for i in range(n)]


def arm_joint_names(n: int) -> list[str]:
    return [f"joint{i}" for i in range(1, n + 1)]


def arm_sets(n: int) -> list[str]:
    """The host parameters of the --joints N arm."""
    lst = lambda v: "[" + ",".join(str(x) for x in v) + "]"   # noqa: E731
    return [f"joint_names={lst(arm_joint_names(n))}", f"joint_lower_limits={lst([-ARM_LIMIT] * n)}",
            f"joint_upper_limits={lst([ARM_LIMIT] * n)}", f"max_velocity={lst([ARM_MAX_VELOCITY] * n)}"]


def _is_stop(msg: JointTrajectory) -> bool:
    return not msg.points or (len(msg.points) == 1 and not any(msg.points[0].velocities))


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _duration_s(d) -> float:
    return d.sec + d.nanosec * 1e-9


class Robot(RigNode):
    """Cameras and joint states published from one thread; trajectories followed; what arrived."""

    def __init__(self, n_cameras: int, n_joints: int = 0, joints_with_cameras: bool = False):
        super().__init__("soak_robot")
        # joint states in the camera tick, with the camera stamp (instead of at JOINT_HZ): the chunk's stamp,
        # the newest of its inputs', is then the camera stamp of the frames it answers
        self.joints_with_cameras = joints_with_cameras
        self.camera_stamps_ns: set[int] = set()
        world, image = world_image(SIZE)
        # one message per camera, built once: only the stamp changes (the robot's own cost stays small)
        self.images = [image_to_msg(image, "rgb8") for _ in range(n_cameras)]
        self.image_pubs = [self.node.create_publisher(Image, f"/camera/{c}/image_raw", PUBLISHED)
                           for c in camera_names(n_cameras)]
        self.joint_pub = self.node.create_publisher(JointState, "/joint_states", PUBLISHED)
        self.task = world.task_text
        from flashrt_ros.sim.follower import TrajectoryFollower
        if n_joints:    # an N-joint arm at 0 rad
            self.joint_names = tuple(arm_joint_names(n_joints))
            self.follower = TrajectoryFollower(n_joints, np.zeros(n_joints), max_velocity=ARM_MAX_VELOCITY)
        else:           # the reference world's point robot
            self.joint_names = JOINT_NAMES
            self.follower = TrajectoryFollower(len(JOINT_NAMES), np.asarray(world.position, np.float64),
                                               max_velocity=np.asarray(MAX_VELOCITY))
        self._lock = threading.Lock()
        # what happened, in time.time() seconds
        self.camera_sent: list[float] = []
        self.joints_sent: list[float] = []
        self.trajectories: list[tuple[float, float, bool]] = []   # (arrival, header stamp, stop)
        # per ActionChunk: (arrival, header stamp, observation_to_ready, inference_time), seconds
        self.chunks: list[tuple[float, float, float, float]] = []
        self.chunk_stamps_ns: list[int] = []
        self.refused = 0                                          # trajectories already past on arrival
        self.diagnostics: dict[str, dict[str, str]] = {}          # status name -> its latest values
        self.backlog_max = self.gc_pause_max_ms = self.gc_full_pause_max_ms = self.gc_full_collections = None
        self.input_to_act_p50_ms = self.input_to_act_p99_ms = None
        self.node.create_subscription(JointTrajectory, "/flashrt/joint_trajectory", self._on_trajectory, 50)
        self.node.create_subscription(ActionChunk, "/flashrt/action_chunk", self._on_chunk, 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        now = time.time()
        stamp = stamp_to_ns(msg.header.stamp) / 1e9
        self.trajectories.append((now, stamp, _is_stop(msg)))
        times = [_duration_s(p.time_from_start) for p in msg.points]
        positions = [list(p.positions) for p in msg.points]
        velocities = [list(p.velocities) for p in msg.points] if all(p.velocities for p in msg.points) else None
        with self._lock:
            try:
                self.follower.command(stamp, times, positions, velocities, now=now)
            except ValueError:      # already past on arrival: the previous motion goes on, as JTC
                self.refused += 1

    def _on_chunk(self, msg: ActionChunk) -> None:
        stamp_ns = stamp_to_ns(msg.header.stamp)
        self.chunks.append((time.time(), stamp_ns / 1e9, float(msg.observation_to_ready), float(msg.inference_time)))
        self.chunk_stamps_ns.append(stamp_ns)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            self.diagnostics[status.name] = values
            if status.name == "flashrt: host":
                for keys, attr in ((("executor_backlog_max_ms", "executor_backlog_max"), "backlog_max"),
                                   (("gc_pause_max_ms",), "gc_pause_max_ms")):
                    value = next((_float(values[k]) for k in keys if k in values), math.nan)
                    if not math.isnan(value):
                        setattr(self, attr, max(value, getattr(self, attr) or 0.0))
                # the GC figures count from the end of start-up (the host's heap freeze): the latest
                # report covers all of serving, an earlier one may still hold start-up's collections
                if values.get("ready") == "true":
                    for key in ("gc_pause_max_ms", "gc_full_pause_max_ms", "gc_full_collections"):
                        if key in values and not math.isnan(_float(values[key])):
                            setattr(self, key, _float(values[key]))
            elif status.name == "flashrt: actor":   # the latest percentiles (the host's last 1024 chunks)
                for key in ("input_to_act_p50_ms", "input_to_act_p99_ms"):
                    if key in values and not math.isnan(_float(values[key])):
                        setattr(self, key, _float(values[key]))

    def _publish(self) -> None:
        """Joint states every 10 ms, the cameras every 33 ms, on one schedule that never bursts."""
        t0 = time.monotonic()
        next_joint = next_camera = t0
        while not self._stop.is_set():
            now_m = time.monotonic()
            if now_m >= next_camera:
                stamp_ns = time.time_ns()
                stamp = ns_to_stamp(stamp_ns)
                for msg, pub in zip(self.images, self.image_pubs):
                    msg.header.stamp = stamp
                    pub.publish(msg)
                self.camera_sent.append(time.time())
                self.camera_stamps_ns.add(stamp_ns)
                if self.joints_with_cameras:
                    with self._lock:
                        position = self.follower.advance(stamp_ns / 1e9)
                    self.joint_pub.publish(joint_state_to_msg(self.joint_names, position, stamp_ns))
                    self.joints_sent.append(time.time())
                next_camera = max(next_camera + 1 / CAMERA_HZ, now_m)
                if self.joints_with_cameras:
                    next_joint = next_camera
            if now_m >= next_joint and not self.joints_with_cameras:
                t = time.time()
                with self._lock:
                    position = self.follower.advance(t)
                self.joint_pub.publish(joint_state_to_msg(self.joint_names, position, int(t * 1e9)))
                self.joints_sent.append(t)
                next_joint = max(next_joint + 1 / JOINT_HZ, now_m)
            time.sleep(max(0.0, min(next_joint, next_camera) - time.monotonic()))


def _fresh(sent: np.ndarray, t0: float, t1: float) -> bool:
    """Was an input published at least every FRESH_S throughout [t0, t1]?"""
    inside = sent[(sent >= t0 - FRESH_S) & (sent <= t1)]
    edges = np.concatenate([[t0 - FRESH_S], inside, [t1]])
    return bool(inside.size) and float(np.max(np.diff(edges))) <= FRESH_S


def summarize(robot: Robot, t0: float, t1: float, actor_hz: float, misses_at_start: int | None) -> dict:
    seconds = t1 - t0
    cams, joints = np.asarray(robot.camera_sent), np.asarray(robot.joints_sent)
    fresh = lambda a, b: _fresh(cams, a, b) and _fresh(joints, a, b)   # noqa: E731
    traj = [t for t in robot.trajectories if t0 <= t[0] <= t1]
    moving = [t[0] for t in traj if not t[2]]
    # a gap: from one moving trajectory to the next (or from the start / to the end of the run)
    edges = [t0, *moving, t1]
    gaps = [(a, b) for a, b in zip(edges, edges[1:])]
    lengths = np.array([b - a for a, b in gaps])
    period = 1.0 / actor_hz
    stalls = [(a, b) for a, b in gaps if b - a > 10 * period and fresh(a, b)]
    holds_fresh = sum(1 for arrival, _, stop in traj if stop and fresh(arrival - FRESH_S, arrival))
    latency_ms = [(arrival - stamp) * 1e3 for arrival, stamp, stop in traj if not stop]
    measured = [c for c in robot.chunks if t0 <= c[0] <= t1]
    chunks = len(measured)
    actor = robot.diagnostics.get("flashrt: actor", {})
    misses = int(actor["deadline_misses"]) - (misses_at_start or 0) if "deadline_misses" in actor else None
    return {
        "seconds": seconds, "actor_hz": actor_hz, "chunks": chunks, "chunk_rate_hz": chunks / seconds,
        "chunk_rate_pct": 100.0 * chunks / seconds / actor_hz, "trajectories": len(moving),
        "gap_max_s": float(lengths.max()), "gaps_over_0_5s": int(np.sum(lengths > 0.5)),
        "gaps_over_10_periods": int(np.sum(lengths > 10 * period)),
        "stalls_fresh": [[round(a - t0, 3), round(b - a, 3)] for a, b in stalls],   # (start s, length s)
        "holds_fresh": holds_fresh, "holds": sum(1 for t in traj if t[2]),
        "refused_by_follower": robot.refused,
        "obs_to_trajectory": pct(latency_ms),
        # ActionChunk: camera stamp -> received here; the host's stamp -> ready; the engine's act() alone
        "obs_to_chunk": pct([(a - s) * 1e3 for a, s, _, _ in measured]),
        "chunk_observation_to_ready": pct([r * 1e3 for _, _, r, _ in measured]),
        "chunk_inference_time": pct([i * 1e3 for _, _, _, i in measured]),
        # chunks whose stamp is a camera stamp: then obs_to_chunk is camera message -> ActionChunk exactly
        "chunk_stamp_is_camera_stamp": sum(1 for (a, *_), ns in zip(robot.chunks, robot.chunk_stamps_ns)
                                           if t0 <= a <= t1 and ns in robot.camera_stamps_ns),
        "deadline_misses": misses,
        "executor_backlog_max": robot.backlog_max, "gc_pause_max_ms": robot.gc_pause_max_ms,
        "gc_full_pause_max_ms": robot.gc_full_pause_max_ms, "gc_full_collections": robot.gc_full_collections,
        # the host's: the observation's last input received -> act() starts
        "input_to_act": {"p50_ms": robot.input_to_act_p50_ms, "p99_ms": robot.input_to_act_p99_ms},
        "camera_publish_gap_max_s": float(np.max(np.diff(cams[(cams >= t0) & (cams <= t1)]), initial=0.0)),
    }


def _exit(signum, frame):
    raise SystemExit(128 + signum)     # SIGTERM: through `finally`, so the host is stopped too


def _random_checkpoint(n_cameras: int, directory: Path) -> Path:
    """The reference architecture with `n_cameras` camera inputs, seeded random weights."""
    import dataclasses

    import torch

    from flashrt_ros.models.actor import Actor
    from flashrt_ros.models.checkpoint import REFERENCE_WEIGHTS, load_config, save_checkpoint
    from flashrt_ros.models.planner import Planner
    config = dataclasses.replace(load_config(REFERENCE_WEIGHTS), n_cameras=n_cameras)
    torch.manual_seed(0)
    return save_checkpoint(directory, Actor(config), Planner(config), extra={"soak": "random weights"})


def run(args) -> dict:
    names = camera_names(args.cameras)
    sets = [f"actor_hz={args.actor_hz:g}", f"cameras=[{','.join(names)}]",
            *(arm_sets(args.joints) if args.joints else []), *args.set]
    with tempfile.TemporaryDirectory(prefix="flashrt_soak_") as tmp:
        if args.cameras > 1 and not any(s.startswith(("checkpoint=", "model=", "preset=")) for s in args.set):
            sets.append(f"checkpoint={_random_checkpoint(args.cameras, Path(tmp))}")
        host_log = Path(args.host_log) if args.host_log else Path(tmp) / "host.log"
        with open(host_log, "w") as log:
            host = start_host(sets, args.host_cmd, stderr=log)
        robot = None
        previous = signal.signal(signal.SIGTERM, _exit) if threading.current_thread() is threading.main_thread() \
            else None
        try:
            robot = Robot(args.cameras, args.joints, args.joints_with_cameras)
            robot.start(robot.task)
            deadline = time.monotonic() + args.startup_timeout
            # host up, discovery, first subtask, and a first actor diagnostic (the deadline-miss baseline)
            while sum(1 for t in robot.trajectories if not t[2]) < 5 or "flashrt: actor" not in robot.diagnostics:
                if host.poll() is not None or time.monotonic() > deadline:
                    log = host_log.read_text()[-3000:]
                    raise RuntimeError(f"the host produced no trajectories (exit {host.poll()}):\n{log}")
                time.sleep(0.1)
            if args.warmup > 0:     # not measured: first chunks after start-up (allocator, caches, clocks)
                until = time.monotonic() + args.warmup
                while time.monotonic() < until and host.poll() is None:
                    time.sleep(0.2)
                diag_at = time.monotonic()   # a fresh diagnostic (1 Hz) for the deadline-miss baseline
                robot.diagnostics.pop("flashrt: actor", None)
                while "flashrt: actor" not in robot.diagnostics and time.monotonic() < diag_at + 5.0:
                    time.sleep(0.05)
            misses = robot.diagnostics.get("flashrt: actor", {}).get("deadline_misses")
            t0 = time.time()
            while time.time() < t0 + args.seconds:
                if host.poll() is not None:
                    raise RuntimeError(f"the host exited ({host.returncode}) during the soak:\n"
                                       + host_log.read_text()[-3000:])
                time.sleep(0.2)
            t1 = time.time()
        finally:
            if robot is not None:
                robot.close()
            stop_host(host)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return summarize(robot, t0, t1, args.actor_hz, int(misses) if misses is not None else None)


def _na(v, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


TABLE_HEADER = ("| run | load (1 min) | cameras | s | chunks/s (% of actor Hz) | largest gap (s) | gaps > 0.5 s "
                "| gaps > 10 periods | stalls (inputs fresh) | holds (inputs fresh) "
                "| obs → trajectory p50 / p99 / max (ms) "
                "| deadline misses | executor backlog max (ms) | GC pause max (ms) |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def table_row(res: dict) -> str:
    lat = res["obs_to_trajectory"]
    return (f"| {res['tag']} | {res['loadavg_start'][0]:.2f} → {res['loadavg'][0]:.2f} | {res['cameras']} "
            f"| {res['seconds']:.0f} | {res['chunk_rate_hz']:.1f} ({res['chunk_rate_pct']:.0f} %) "
            f"| {res['gap_max_s']:.2f} | {res['gaps_over_0_5s']} | {res['gaps_over_10_periods']} "
            f"| {len(res['stalls_fresh'])} | {res['holds_fresh']} "
            f"| {_na(lat['p50_ms'], '.0f')} / {_na(lat['p99_ms'], '.0f')} / {_na(lat.get('max_ms'), '.0f')} "
            f"| {_na(res['deadline_misses'], 'd')} | {_na(res['executor_backlog_max'], '.1f')} "
            f"| {_na(res['gc_pause_max_ms'], '.1f')} |\n")


def chunk_line(res: dict) -> str:
    """Camera stamp -> ActionChunk received, the host's stamp -> ready, the engine's act() (ms)."""
    f = lambda d: " / ".join(_na(d.get(k), ".1f") for k in ("p50_ms", "p99_ms", "max_ms"))   # noqa: E731
    return (f"ActionChunk p50 / p99 / max (ms): camera stamp → received {f(res['obs_to_chunk'])}; "
            f"stamp → ready on the host {f(res['chunk_observation_to_ready'])}; "
            f"act() {f(res['chunk_inference_time'])} ({res['obs_to_chunk']['n']} chunks); the host's last input "
            f"received → act() p50 / p99 {f(res.get('input_to_act', {}))}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="flashrt-ros soak", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--actor-hz", type=float, default=20.0)
    ap.add_argument("--cameras", type=int, default=1)
    ap.add_argument("--joints", type=int, default=0,
                    help="an N-joint arm (joint1..jointN) instead of the reference world's robot; 0 = the world's")
    ap.add_argument("--warmup", type=float, default=0.0, help="seconds after the first chunks not measured")
    ap.add_argument("--joints-with-cameras", action="store_true",
                    help="joint states in each camera tick with the camera stamp (30 Hz) instead of at 100 Hz")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="host parameter (repeatable)")
    ap.add_argument("--host-cmd", default=None, help="host command line instead of this install's `flashrt-ros host`")
    ap.add_argument("--startup-timeout", type=float, default=120.0)
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument("--tag", default="")
    ap.add_argument("--host-log", default="", help="keep the host's log (stderr) in this file")
    args = ap.parse_args(argv)
    if args.cameras < 1:
        ap.error("--cameras must be >= 1")
    if args.joints < 0 or args.warmup < 0:
        ap.error("--joints and --warmup must be >= 0")
    start = machine()
    res = run(args)
    res.update(start, loadavg_start=start["loadavg"], loadavg=machine()["loadavg"], cameras=args.cameras,
               joints=args.joints or len(JOINT_NAMES), warmup_s=args.warmup,
               fastdds_builtin_transports=os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", "(default)"),
               tag=args.tag or f"{args.cameras}cam", command="flashrt-ros soak " + " ".join(argv))
    md = (f"# flashrt-ros soak — {res['tag']}\n\n- date: {res['date']}\n- machine: {res['platform']}, "
          f"{res['nproc']} cores, load average at start {res['loadavg_start']}, at end {res['loadavg']}\n"
          f"- command: `{res['command']}`\n- stalls (start s, length s): {res['stalls_fresh']}\n"
          f"- {chunk_line(res)}\n\n"
          + TABLE_HEADER + table_row(res))
    write_results(args.out, f"soak-{res['tag']}", res, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
