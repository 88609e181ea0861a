"""`flashrt-ros replay BAG`: play a recorded bag into a real host over DDS, report, compare.

    flashrt-ros replay robot_bag/ --params-file config/flashrt.yaml --out replay_out
    flashrt-ros replay robot_bag/ --out new --compare replay_out/outputs.mcap --tolerance 1e-5

Modes:
- `--step` (default): lock-step and deterministic. The host runs with `actor_trigger:
  observation` (each new camera frame -> exactly one chunk, the planner every N observations) on
  sim time; replay publishes /clock = the message's log time, sends one input, and waits until the
  host has handled it (and its outputs have arrived) before the next. Results do not depend on
  machine speed: two step replays are identical, and equal `--offline`.
- `--rate R`: the bag's timing scaled by R; /clock follows the bag, the host runs its normal
  timers on sim time, as on the robot. Not deterministic.
- `--offline`: no ROS at all: the same inputs straight into the Engine (flashrt_ros.tools.offline).

The host runs in this process (its own rclpy context, the real nodes, a multi-threaded executor);
replay talks to it only through topics and services, like any robot process. Writes
DIR/outputs.mcap (+ metadata.yaml) and DIR/report.md with PNG plots (flashrt_ros.tools.
replay_report). Exit status: 0 ok; 1 `--compare` beyond tolerance; 2 bad arguments, bad
configuration, or an unreadable bag (truncated, corrupt); 3 nothing to replay (a missing camera
or joint-state topic: the report says which).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bags import Bag, BagError
from .replay_inputs import Input, ReplayInputs, absolute, played, scan, topic_map
from .replay_outputs import (CHUNK_TOPIC, OUTPUT_TYPES, SUBTASK_TOPIC, TRAJECTORY_TOPIC, Comparison, Outputs,
                             compare, decode_records, read_outputs, write_outputs)
from .replay_report import comparison_lines, write_report, write_summary

EXIT_OK, EXIT_DIVERGED, EXIT_ERROR, EXIT_NOTHING = 0, 1, 2, 3
ACK_TIMEOUT_S = 60.0
CLOCK_PERIOD_S = 0.02        # one input (an observation runs the planner and the actor) on a slow CPU


class ReplayError(Exception):
    """The replay cannot go on (the host did not answer, failed to start, ...)."""


# --- arguments and configuration ----------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashrt-ros replay", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Topic mapping: the camera topics come from the params file "
                                       "(camera.<name>.topic), the others default to the host's names. "
                                       "Exit status: 0 ok, 1 diverged from --compare beyond --tolerance, 2 bad "
                                       "arguments or configuration or an unreadable bag, 3 nothing to replay "
                                       "(a camera or joint-state topic missing). Details: docs/replay.md")
    p.add_argument("bag", nargs="+", help="rosbag2 bag(s): a directory (MCAP or sqlite3) or an .mcap/.db3 file; "
                   "several, or a directory holding bags, replay as a fleet (one merged report)")
    p.add_argument("--params-file", action="append", default=[], metavar="F",
                   help="host parameters (ROS 2 params YAML, as `flashrt-ros host` takes); repeatable")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a host parameter")
    p.add_argument("--out", metavar="DIR", help="output directory (default: ./replay_<bag name>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--step", action="store_true", help="deterministic lock-step (default)")
    mode.add_argument("--rate", type=float, metavar="R", help="real-time playback scaled by R (0.5 = half speed)")
    mode.add_argument("--offline", action="store_true", help="no ROS: feed the Engine directly (the reference)")
    p.add_argument("--compare", metavar="REF", help="a previous outputs.mcap (or its directory) to compare with")
    p.add_argument("--tolerance", type=float, default=1e-5, metavar="T",
                   help="largest allowed action difference in joint units (default 1e-5)")
    p.add_argument("--camera", action="append", default=[], metavar="NAME=TOPIC", help="bag topic of a camera")
    p.add_argument("--joint-states", metavar="TOPIC", help="bag topic of the joint states (default /joint_states)")
    p.add_argument("--task-topic", metavar="TOPIC")
    p.add_argument("--coach-topic", metavar="TOPIC")
    p.add_argument("--interrupt-topic", metavar="TOPIC")
    p.add_argument("--command-topic", action="append", metavar="TOPIC",
                   help="recorded commands to plot (default: every JointTrajectory/ActionChunk topic)")
    p.add_argument("--task", metavar="TEXT", help="task to set at start (when the bag has none)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: torch's choice; small models on a busy CPU run faster with 1)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    fleet = p.add_argument_group("fleet (several bags: flashrt_ros/tools/fleet.py, Ray)")
    fleet.add_argument("--workers", type=int, metavar="N", help="bags replayed at once (default: 1 per CPU)")
    fleet.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (default: a local Ray)")
    fleet.add_argument("--gpus-per-bag", type=float, default=0.0, metavar="G",
                       help="GPUs each bag's task asks Ray for (0.25: four replays share a GPU)")
    fleet.add_argument("--force", action="store_true", help="replay bags whose outputs exist for the same "
                       "checkpoint, parameters and bag")
    return p


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag} expects NAME=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        out.append((name.strip(), value))
    return out


def host_config(args, bag: Bag, mode: str):
    """(HostConfig, TopicMap): the params file + env + --set, then what replay needs: the camera
    topics and transports the bag has, lock-step triggering, no episode recording."""
    from flashrt_ros.host.params import SPECS, load_config

    user = _pairs(args.set, "--set")
    if args.task is not None:
        user.append(("task", args.task))
    config = load_config(args.params_file, os.environ, user)
    overrides = {"joint_states": args.joint_states, "task": args.task_topic, "coach": args.coach_topic,
                 "interrupt": args.interrupt_topic, "commands": args.command_topic}
    tmap = topic_map(config, bag, dict(_pairs(args.camera, "--camera")), **overrides)
    forced = [("autostart", "true"), ("record_dir", "")]
    for cam in config.cameras:
        topic = tmap.cameras[cam.name]
        msgtype = bag.topics[topic].msgtype if topic in bag.topics else ""
        compressed = msgtype.endswith("CompressedImage") if msgtype else cam.compressed
        forced += [(f"camera.{cam.name}.topic", topic), (f"camera.{cam.name}.transport",
                                                          "compressed" if compressed else "raw")]
    if mode == "step":
        if "actor_trigger" not in SPECS:
            raise ValueError("this host has no lock-step mode (parameter actor_trigger); use --rate or --offline")
        forced.append(("actor_trigger", "observation"))
    elif "actor_trigger" in SPECS:
        forced.append(("actor_trigger", "timer"))
    return load_config(args.params_file, os.environ, user + forced), tmap


def describe(config, mode: str, rate: float | None) -> dict:
    from .offline import planner_every
    policy = (f"checkpoint `{config.checkpoint}`" if config.checkpoint
              else f"preset `{config.preset}` (shipped weights)")
    policy += f", device {config.device}, seed {config.seed}"
    if mode == "rate":
        host = f"actor {config.actor_hz:g} Hz, planner {config.planner_hz:g} Hz (timers), on sim time"
        mode_text = f"`--rate {rate:g}`: the bag's timing x {rate:g}, /clock published, host on sim time"
    else:
        host = f"one chunk per observation, planner every {planner_every(config)} observations"
        mode_text = ("`--step`: lock-step over DDS, host on sim time (deterministic)" if mode == "step"
                     else "`--offline`: the Engine fed directly, no ROS (the lock-step reference)")
    host += f", horizon {config.horizon or 'model'}, overlap {config.overlap_policy}"
    return {"mode": mode_text, "policy": policy, "host": host, "deadline_s": 1.0 / config.actor_hz,
            "overlap_policy": config.overlap_policy}


# --- progress -----------------------------------------------------------------------------------------
class Progress:
    """One status line on stderr (redrawn in place on a terminal, every 10% otherwise)."""

    def __init__(self, total_obs: int, start_ns: int, end_ns: int, enabled: bool = True):
        self.total = max(total_obs, 1)
        self.start_ns, self.end_ns = start_ns, end_ns
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self._last = 0.0
        self._decile = -1

    def update(self, obs: int, now_ns: int, chunks: int, final: bool = False) -> None:
        if not self.enabled:
            return
        frac = min(1.0, obs / self.total)
        wall = time.monotonic() - self.t0
        if self.tty and not final and wall - self._last < 0.2:
            return
        if not self.tty and not final and (int(frac * 10) == self._decile or frac >= 1.0):
            return              # every 10%; 100% is the final line
        self._last, self._decile = wall, int(frac * 10)
        bar = "#" * int(frac * 20)
        line = (f"replay [{bar:<20}] {frac * 100:3.0f}% {obs}/{self.total} obs | bag "
                f"{max(0, now_ns - self.start_ns) / 1e9:.1f}/{(self.end_ns - self.start_ns) / 1e9:.1f} s | "
                f"{chunks} chunks | {wall:.1f} s")
        sys.stderr.write(("\r" + line + ("\n" if final else "")) if self.tty else line + "\n")
        sys.stderr.flush()


# --- the ROS side -------------------------------------------------------------------------------------
class _CountingOutputs:
    """The host's Outputs, counted: replay knows how many messages the host sent."""

    def __init__(self, inner):
        self.inner = inner
        self.sent = {CHUNK_TOPIC: 0, TRAJECTORY_TOPIC: 0, SUBTASK_TOPIC: 0}
        self.lock = threading.Lock()

    def _count(self, topic):
        with self.lock:
            self.sent[topic] += 1

    def publish_chunk(self, chunk, ready_ns: int) -> None:
        self.inner.publish_chunk(chunk, ready_ns)
        self._count(CHUNK_TOPIC)
        if chunk.trajectory is not None:
            self._count(TRAJECTORY_TOPIC)

    def publish_stop(self, stop) -> None:
        self.inner.publish_stop(stop)
        self._count(TRAJECTORY_TOPIC)

    def publish_subtask(self, state, stamp_ns: int) -> None:
        self.inner.publish_subtask(state, stamp_ns)
        self._count(SUBTASK_TOPIC)


@dataclass
class RosRun:
    records: list[tuple[str, int, bytes]] = field(default_factory=list)
    holds: list[str] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)


class RosReplay:
    """A host in this process and a player node beside it, each on its own rclpy context."""

    def __init__(self, config, inputs: ReplayInputs, bag: Bag, mode: str, rate: float = 1.0,
                 progress: Progress | None = None, engine_factory=None):
        self.config, self.inputs, self.bag = config, inputs, bag
        self.mode, self.rate = mode, rate
        self.progress = progress
        self.engine_factory = engine_factory
        self.run_result = RosRun()
        self._collecting = True
        self._received = {t: 0 for t in OUTPUT_TYPES}
        self._startup_ns: int | None = None      # sim time while the host comes up (see _start)
        self._startup_subtask: tuple | None = None
        self._startup_sent = 0                   # subtasks the host published while coming up
        self._lock = threading.Lock()

    # setup / teardown ----------------------------------------------------------------------------
    def _start(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from std_msgs.msg import String
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        from flashrt_ros.msg import ActionChunk, Subtask
        from flashrt_ros.ros.host import Host

        self.host_ctx, self.player_ctx = rclpy.Context(), rclpy.Context()
        rclpy.init(args=["--ros-args", "-p", "use_sim_time:=true"], context=self.host_ctx)
        rclpy.init(args=[], context=self.player_ctx)
        self.host = Host(self.config, context=self.host_ctx, engine_factory=self.engine_factory)
        self.outputs = _CountingOutputs(self.host.loop.outputs)
        self.host.loop.outputs = self.outputs
        self.node = rclpy.create_node("flashrt_replay", context=self.player_ctx)
        reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._subs = [self.node.create_subscription(kind, topic, lambda raw, t=topic: self._on_output(t, raw), qos,
                                                    raw=True)
                      for topic, kind, qos in ((CHUNK_TOPIC, ActionChunk, reliable),
                                               (TRAJECTORY_TOPIC, JointTrajectory, reliable),
                                               (SUBTASK_TOPIC, Subtask, latched))]
        # bag topic -> publisher on the host's topic
        self.pubs = {}
        for cam in self.config.cameras:
            kind = CompressedImage if cam.compressed else Image
            self.pubs[self.inputs.topic_map.cameras[cam.name]] = self.node.create_publisher(
                kind, absolute(cam.topic), reliable)
        tm = self.inputs.topic_map
        self.pubs[tm.joint_states] = self.node.create_publisher(JointState, "/joint_states", reliable)
        # Volatile on purpose: a subscriber that also listens transient-local (for a task set before
        # it started) must not get each text twice. Its "incompatible QoS" notice is expected.
        quiet = _quiet_incompatible_qos()
        for kind in ("task", "coach", "interrupt"):
            self.pubs[getattr(tm, kind)] = self.node.create_publisher(String, f"/flashrt/{kind}", reliable,
                                                                      event_callbacks=quiet)
        self.clients = {name: self.node.create_client(Trigger, f"/flashrt/{name}") for name in tm.services}
        self.clock_pub = self.node.create_publisher(Clock, "/clock", reliable)
        self._Clock, self._Trigger = Clock, Trigger
        self.player_exec = SingleThreadedExecutor(context=self.player_ctx)
        self.player_exec.add_node(self.node)
        self._stop_spin = threading.Event()
        self._spin = threading.Thread(target=self._spin_player, name="flashrt-replay-spin", daemon=True)
        self._spin.start()
        self._clock_ns = 0
        self._publish_clock(self.inputs.start_ns - 1)      # sim time starts at the bag's beginning
        # subtasks the host publishes while it comes up (a task in the params: at configure and at the
        # episode's start) are stamped now, before the bag's first message; the subtask topic is
        # latched with depth 1, so however late this subscription matches it gets the newest of them:
        # they count as one, and one record (the newest) is kept
        self._startup_ns = self._clock_ns
        self.host.spin_in_thread()
        if not self.host.bring_up():
            raise ReplayError(f"the host did not come up: {self.host.loop.readiness()[1]}")
        self._wait_connected()
        with self.outputs.lock:      # the sim clock has not moved: every subtask so far is start-up's
            self._startup_sent = self.outputs.sent[SUBTASK_TOPIC]

    def _spin_player(self) -> None:
        while not self._stop_spin.is_set() and self.player_ctx.ok():
            self.player_exec.spin_once(timeout_sec=0.05)

    def _close(self) -> None:
        """Tear down whatever `_start` got to, in order; the spin threads are joined (exiting with
        one running aborts the interpreter)."""
        errors = []
        steps = []
        if getattr(self, "host", None) is not None:
            steps.append(self.host.close)
        if getattr(self, "_spin", None) is not None:
            steps.append(lambda: (self._stop_spin.set(), self._spin.join(timeout=10.0)))
        if getattr(self, "player_exec", None) is not None:
            steps.append(self.player_exec.shutdown)
        if getattr(self, "node", None) is not None:
            steps.append(self.node.destroy_node)
        for ctx in (getattr(self, "player_ctx", None), getattr(self, "host_ctx", None)):
            if ctx is not None:
                steps.append(ctx.try_shutdown)
        for step in steps:
            try:
                step()
            except Exception as err:   # keep tearing down; the first error is reported
                errors.append(err)
        if errors:
            raise errors[0]

    def _wait_connected(self, timeout: float = 20.0) -> None:
        """Every publisher matched by the host and every output subscription by the host's
        publishers, every service available: nothing sent before discovery is lost."""
        deadline = time.monotonic() + timeout
        pending = []
        while time.monotonic() < deadline:
            # matched readers for what we send; the host's output writers discovered (Humble's
            # Subscription has no matched-publisher count)
            pending = [p.topic_name for p in self.pubs.values() if p.get_subscription_count() == 0]
            pending += [s.topic_name for s in self._subs if self.node.count_publishers(s.topic_name) == 0]
            pending += [c.srv_name for c in self.clients.values() if not c.service_is_ready()]
            if not pending:
                return
            time.sleep(0.02)
        raise ReplayError(f"the host did not connect within {timeout:.0f} s: {sorted(set(pending))}")

    # outputs -------------------------------------------------------------------------------------
    def _on_output(self, topic: str, raw: bytes) -> None:
        from .replay_outputs import log_time
        stamp = log_time(topic, raw)
        with self._lock:
            if not self._collecting:
                return              # e.g. the stop the host sends when it shuts down: no input's answer
            record = (topic, stamp, bytes(raw))
            if topic == SUBTASK_TOPIC and self._startup_ns is not None and stamp <= self._startup_ns:
                if self._startup_subtask is not None:       # superseded by this newer one
                    self.run_result.records.remove(self._startup_subtask)
                self._startup_subtask = record
            else:
                self._received[topic] += 1
            self.run_result.records.append(record)

    def _all_received(self) -> bool:
        with self._lock, self.outputs.lock:
            sent = dict(self.outputs.sent)
            startup = self._startup_sent
            sent[SUBTASK_TOPIC] -= startup
            return all(self._received[t] >= n for t, n in sent.items()) and \
                (startup == 0 or self._startup_subtask is not None)

    def _wait(self, predicate, what: str, timeout: float = ACK_TIMEOUT_S, poll=None) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise ReplayError(f"the host did not {what} within {timeout:.0f} s")
            if poll is not None:
                poll()
            time.sleep(0.0005)

    # clock ---------------------------------------------------------------------------------------
    def _publish_clock(self, t_ns: int) -> None:
        from builtin_interfaces.msg import Time
        self._clock_ns = t_ns
        self.clock_pub.publish(self._Clock(clock=Time(sec=t_ns // 10**9, nanosec=t_ns % 10**9)))

    def _host_time(self) -> int:
        return min(self.host.actor.get_clock().now().nanoseconds, self.host.planner.get_clock().now().nanoseconds)

    def _advance_clock(self, t_ns: int) -> None:
        """Sim time = t on both host nodes before the next input (re-sent: /clock is best effort)."""
        if t_ns <= self._clock_ns:
            return
        self._publish_clock(t_ns)
        last = [time.monotonic()]

        def resend():
            if time.monotonic() - last[0] > 0.05:
                self._publish_clock(t_ns)
                last[0] = time.monotonic()
        self._wait(lambda: self._host_time() >= t_ns, "take the new /clock", poll=resend)

    # sending -------------------------------------------------------------------------------------
    def _call(self, name: str) -> None:
        future = self.clients[name].call_async(self._Trigger.Request())
        self._wait(future.done, f"answer /flashrt/{name}")
        response = future.result()
        if not response.success:
            self.run_result.holds.append(f"/flashrt/{name} refused: {response.message}")

    def _send(self, item: Input, raw: bytes) -> None:
        if item.kind == "service":
            self._call(item.name)
        else:
            self.pubs[item.topic].publish(bytes(raw))

    def _send_step(self, item: Input, raw: bytes) -> None:
        loop = self.host.loop
        self._advance_clock(item.log_ns)
        before_inputs = loop.inputs_handled
        before_chunks = self.outputs.sent[CHUNK_TOPIC]
        self._send(item, raw)
        if item.kind != "service":
            self._wait(lambda: loop.inputs_handled > before_inputs, f"handle the {item.kind} message "
                       f"#{item.ordinal} on {item.topic}")
        self._wait(loop.idle, f"act on the {item.kind} message #{item.ordinal}")
        self._wait(self._all_received, "deliver its outputs", timeout=10.0)
        if item.kind == "camera" and self.outputs.sent[CHUNK_TOPIC] == before_chunks:
            self.run_result.holds.append(_why_no_chunk(loop))

    def run(self) -> RosRun:
        try:
            self._start()
            obs = 0
            first_cam = self.config.cameras[0].name
            wall0, bag0 = time.monotonic(), self.inputs.start_ns
            clock_thread = None
            if self.mode == "rate":
                clock_thread = threading.Thread(target=self._clock_loop, args=(wall0, bag0), daemon=True)
                clock_thread.start()
            for item, raw in played(self.bag, self.inputs):
                if self.mode == "step":
                    self._send_step(item, raw)
                else:
                    delay = wall0 + (item.log_ns - bag0) / 1e9 / self.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    self._send(item, raw)
                if item.kind == "camera" and item.name == first_cam:
                    obs += 1
                if self.progress:
                    self.progress.update(obs, item.log_ns, self._received[CHUNK_TOPIC])
            if self.mode == "rate":
                time.sleep(max(0.5, 2.0 / self.config.actor_hz))    # the last chunks
                self._stop_clock = True
                clock_thread.join(timeout=5.0)
            self._wait(self._all_received, "deliver its last outputs", timeout=10.0)
            if self.progress:
                self.progress.update(obs, self.inputs.end_ns, self._received[CHUNK_TOPIC], final=True)
            stats = self.host.loop.inputs.stats
            self.run_result.rejected = {f"`{k}`": s.rejected for k, s in stats.items() if s.rejected}
            if self.host.loop.rejected_texts:
                self.run_result.rejected["task/coaching text"] = self.host.loop.rejected_texts
            with self._lock:
                self._collecting = False
        finally:
            self._close()
        return self.run_result

    _stop_clock = False

    def _clock_loop(self, wall0: float, bag0: int) -> None:
        # 50 Hz, like `ros2 bag play --clock`'s default order of magnitude: every /clock message costs
        # each host node an executor wake-up, and rclpy executors are not cheap.
        while not self._stop_clock:
            self._publish_clock(bag0 + int((time.monotonic() - wall0) * self.rate * 1e9))
            time.sleep(CLOCK_PERIOD_S)


def _quiet_incompatible_qos():
    try:
        from rclpy.event_handler import PublisherEventCallbacks
    except ImportError:        # Humble
        from rclpy.qos_event import PublisherEventCallbacks
    return PublisherEventCallbacks(incompatible_qos=lambda event: None)


def _why_no_chunk(loop) -> str:
    """Why the host gave no chunk for this frame (`waiting` is current while set: it clears with
    the next chunk; `holding` can be older)."""
    if not loop.running:
        return "no episode running"
    if loop.interrupted:
        return "interrupted"
    return loop.waiting or loop.holding or "no chunk"


# --- offline ------------------------------------------------------------------------------------------
def offline_records(bag: Bag, inputs: ReplayInputs, config) -> tuple[list[tuple[str, int, bytes]], list[str]]:
    """The offline reference's chunks and subtasks as the CDR the host would have published."""
    from .bags import base_typestore
    from .offline import offline_chunks

    result = offline_chunks(bag, inputs, config)
    store = base_typestore()
    T = store.types

    def stamp(ns):
        return T["builtin_interfaces/msg/Time"](sec=int(ns // 10**9), nanosec=int(ns % 10**9))

    records = []
    for c in result.chunks:
        msg = T["flashrt_ros/msg/ActionChunk"](
            header=T["std_msgs/msg/Header"](stamp=stamp(c.stamp_ns), frame_id=""), chunk_seq=c.chunk_seq,
            episode_id=c.episode_id, subtask=c.subtask, subtask_version=c.subtask_version, dt=c.dt,
            horizon=c.positions.shape[0], action_dim=c.positions.shape[1], joint_names=list(c.joint_names),
            actions=c.positions.reshape(-1).astype(np.float32), inference_time=c.inference_time, observation_to_ready=0.0, delay_steps=0,
            velocities=np.zeros(0, np.float32))   # the offline reference computes positions only
        records.append((CHUNK_TOPIC, c.stamp_ns, bytes(store.serialize_cdr(msg, "flashrt_ros/msg/ActionChunk"))))
    sources = {"planner": 0, "coach": 1, "operator": 2}
    for s in result.subtasks:
        msg = T["flashrt_ros/msg/Subtask"](stamp=stamp(s.stamp_ns), text=s.text, version=s.version,
                                           source=sources[s.source])
        records.append((SUBTASK_TOPIC, s.stamp_ns, bytes(store.serialize_cdr(msg, "flashrt_ros/msg/Subtask"))))
    return records, [why for _, why in result.holds]


# --- the command --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .fleet import find_bags, is_fleet, run_fleet
    if is_fleet(args):
        try:
            return run_fleet(args, find_bags(args.bag))
        except (ValueError, OSError) as err:
            print(f"flashrt-ros replay: {err}", file=sys.stderr)
            return EXIT_ERROR
    args.bag = args.bag[0]
    mode = "rate" if args.rate is not None else "offline" if args.offline else "step"
    if mode == "rate" and not (args.rate > 0 and math.isfinite(args.rate)):
        print(f"flashrt-ros replay: --rate must be > 0, got {args.rate}", file=sys.stderr)
        return EXIT_ERROR
    if args.threads is not None:
        if args.threads < 1:
            print(f"flashrt-ros replay: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return EXIT_ERROR
        import torch
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out or f"replay_{Path(args.bag).resolve().name}")
    from flashrt_ros.models.checkpoint import CheckpointError
    try:
        return _replay(args, mode, out_dir)
    except (BagError, ValueError, ReplayError, CheckpointError) as err:
        print(f"flashrt-ros replay: {err}", file=sys.stderr)
        return EXIT_ERROR


def _replay(args, mode: str, out_dir: Path) -> int:
    t_start = time.monotonic()
    reference: Outputs | None = None
    if args.compare:
        try:
            reference = read_outputs(args.compare)    # fail early on a bad reference
        except BagError as err:
            raise BagError(f"--compare {args.compare}: {err}") from None
    with Bag(args.bag) as bag:
        config, tmap = host_config(args, bag, mode)
        inputs = scan(bag, tmap, config)
        run = describe(config, mode, args.rate)
        if inputs.missing and any(k.startswith("camera") or k == "joint states" for k in inputs.missing):
            images = [f"{t} ({i.msgtype.split('/')[-1]})" for t, i in sorted(bag.topics.items())
                      if i.msgtype.endswith(("/Image", "/CompressedImage"))]
            run["wall_s"] = time.monotonic() - t_start
            write_outputs(out_dir, [], {"bag": str(bag.path), "mode": mode})
            report = write_report(out_dir, inputs, Outputs(), run)
            write_summary(out_dir, inputs, Outputs(), run, None, EXIT_NOTHING)
            missing = "; ".join(f"{k}: {v} is not in the bag" for k, v in inputs.missing.items())
            print(f"flashrt-ros replay: nothing to replay: {missing}. Image topics in the bag: "
                  f"{', '.join(images) or 'none'}; map one with --camera NAME=TOPIC. Report: {report}",
                  file=sys.stderr)
            return EXIT_NOTHING
        progress = Progress(inputs.observations, inputs.start_ns, inputs.end_ns, enabled=not args.quiet)
        if mode == "offline":
            records, holds = offline_records(bag, inputs, config)
            rejected = {}
            progress.update(inputs.observations, inputs.end_ns, sum(r[0] == CHUNK_TOPIC for r in records), final=True)
        else:
            result = RosReplay(config, inputs, bag, mode, args.rate or 1.0, progress).run()
            records, holds, rejected = result.records, result.holds, result.rejected
    metadata = {"bag": str(Path(args.bag).resolve()), "mode": mode, "rate": args.rate,
                "config": config.as_parameters()}
    write_outputs(out_dir, records, metadata)
    outputs = decode_records(records, metadata)
    comparison: Comparison | None = None
    if reference is not None:
        comparison = compare(outputs.chunks, reference.chunks, args.tolerance)
        run["compare_ref"] = args.compare
    run.update(wall_s=time.monotonic() - t_start, holds=holds, rejected=rejected)
    report = write_report(out_dir, inputs, outputs, run, comparison)
    code = EXIT_DIVERGED if comparison is not None and not comparison.ok else EXIT_OK
    write_summary(out_dir, inputs, outputs, run, comparison, code)
    print(f"replay: {len(outputs.chunks)} chunks, {len(outputs.subtasks)} subtask changes -> "
          f"{out_dir / 'outputs.mcap'}; report {report}")
    if comparison is not None:
        for line in comparison_lines(comparison, inputs.start_ns, args.compare)[2:3]:
            print(line.replace("**", ""))
        if not comparison.ok:
            print(f"first divergence: {comparison.first_divergence}", file=sys.stderr)
            return EXIT_DIVERGED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
