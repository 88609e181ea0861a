"""`make demo` / `flashrt-ros demo`: the closed loop over ROS 2, and proof that it works.

    flashrt-ros demo [--episodes 12] [--speed 2] [--out out/demo] [--checkpoint DIR] [--realtime]

The reference world runs as a ROS node in this process (`flashrt_ros.sim.world_node`); the host
runs as its own process (`flashrt-ros host`), as on a robot; they meet only through topics and
services. A director node in this process runs seeded episodes (/world/reset with the `seed`
parameter, /flashrt/stop, /flashrt/reset, /flashrt/start), coaches one episode ("go to <the colour
not in the task>" on /flashrt/coach, then the task again so the planner resumes) and interrupts
another (/flashrt/interrupt, then /flashrt/start). The same seeds run in-process through
`run_episode` with the eager policy, for comparison.

Time: lock-step sim time by default. The world publishes /clock, the host runs on use_sim_time,
and the world steps only when the host has answered (DESIGN: a run that does not depend on the
machine's speed). `--speed` scales the host's rates against world time (actor 10 Hz and planner
2 Hz of world time, as in the in-process loop); a host slower than that slows the world down
instead of failing. `--realtime` runs both on the wall clock instead, as a robot does.

Writes to --out: recordings/ (the host's MCAP bag per episode), trajectories.png, summary.json,
host.log. Exit status 0 when the loop ran (whatever the success rate), 1 when it could not.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from flashrt_ros.msg import ActionChunk, Subtask
from flashrt_ros.ros.conversions import stamp_to_ns
from flashrt_ros.sim.world_node import LATCHED, WorldNode

WORLD_ACTOR_HZ = 10.0  # chunks per world second: run_episode's actor_period_steps=2 at dt 0.05
WORLD_PLANNER_HZ = 2.0  # planner_period_steps=10
VISIT_RADIUS = 0.06


@dataclass
class Episode:
    kind: str  # "regular", "coaching", "interrupt"
    seed: int
    task: list[str]
    targets: dict[str, list[float]]
    success: bool = False
    time: float = float("nan")  # world seconds
    reason: str = ""
    visited: list[str] = field(default_factory=list)
    path: list[list[float]] = field(default_factory=list)  # robot positions, one per world step
    chunks: int = 0  # chunks the host published during the episode
    answered: int = 0  # distinct observations they answer (the rest repeat one already answered)
    wall_s: float = 0.0
    notes: dict = field(default_factory=dict)


def parse_args(argv: list[str]) -> argparse.Namespace:
    from flashrt_ros.tools.evaluate import HELD_OUT_SEED_START

    p = argparse.ArgumentParser(prog="flashrt-ros demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=12, help="regular seeded episodes (default 12)")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED_START, help="first seed (default: held-out seeds)")
    p.add_argument("--speed", type=float, default=2.0,
                   help="world seconds per wall second the host is asked for (default 2; lock-step only)")
    p.add_argument("--realtime", action="store_true", help="wall-clock time for world and host (speed 1)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory (default out/demo)")
    p.add_argument("--checkpoint", default="", help="checkpoint directory (default: the shipped reference weights)")
    p.add_argument("--device", default="auto", help="host device: auto, cpu, cuda (default auto)")
    p.add_argument("--no-coaching", action="store_true", help="skip the coaching episode")
    p.add_argument("--no-interrupt", action="store_true", help="skip the interrupt episode")
    p.add_argument("--no-in-process", action="store_true", help="skip the in-process comparison")
    p.add_argument("--no-plot", action="store_true", help="skip the trajectory plot")
    args = p.parse_args(argv)
    if args.episodes < 0 or not args.speed > 0:
        p.error("--episodes must be >= 0 and --speed > 0")
    if args.realtime:
        args.speed = 1.0
    return args


# --- the host process --------------------------------------------------------------------------------
class HostProcess:
    """`flashrt-ros host` as a child process, stopped with SIGINT (it publishes a stop and closes
    its recording), then SIGKILL if it does not exit."""

    def __init__(self, args: argparse.Namespace, out: Path):
        self.params_file = out / "host_params.yaml"
        self.log_path = out / "host.log"
        params = {
            "actor_hz": WORLD_ACTOR_HZ * args.speed,
            "planner_hz": WORLD_PLANNER_HZ * args.speed,
            "record_dir": str((out / "recordings").resolve()),
            "device": args.device,
            "checkpoint": str(Path(args.checkpoint).resolve()) if args.checkpoint else "",
            "autostart": True,
        }
        self.params_file.write_text(json.dumps({"/**": {"ros__parameters": params}}, indent=2) + "\n")
        self.command = [sys.executable, "-m", "flashrt_ros.cli", "host", "--params-file", str(self.params_file),
                        "--ros-args", "-p", f"use_sim_time:={'false' if args.realtime else 'true'}"]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "HostProcess":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __exit__(self, *exc) -> None:
        try:
            if self.alive():
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self._log.close()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


# --- ROS side: world + director ---------------------------------------------------------------------
class RosSide:
    """The world node and the director on one executor, spun in a background thread that is always
    joined, on a context of their own."""

    def __init__(self, args: argparse.Namespace):
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        mode = "realtime" if args.realtime else "lockstep"
        self.world = WorldNode(context=self.context, parameter_overrides=[
            Parameter("time_mode", value=mode), Parameter("autostart", value=False),
            Parameter("lockstep_period", value=1.0 / WORLD_ACTOR_HZ), Parameter("lockstep_timeout", value=1.0),
            Parameter("startup_timeout", value=10.0)])
        self.director = Director(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.world)
        self.executor.add_node(self.director)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._spin, name="demo-spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while not self._stop.is_set() and self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except BaseException as err:
            self._error = err

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)
        self.executor.shutdown()
        self.director.destroy_node()
        self.world.destroy_node()
        self.context.try_shutdown()
        if self._error is not None:
            raise self._error


class DemoError(RuntimeError):
    pass


def _wait(predicate, timeout: float, what: str, interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class Director(Node):
    """Runs episodes through the world's and the host's services and watches the topics."""

    def __init__(self, **kwargs):
        super().__init__("demo_director", **kwargs)
        self.lock = threading.Lock()
        self.events: list[dict] = []
        self.episode_start_ns = None
        self.positions: dict[int, tuple[float, float]] = {}  # stamp -> robot position, all episodes
        self.subtasks: list[tuple[float, str, int, int]] = []  # (monotonic, text, version, source)
        self.chunks: list[tuple[int, float]] = []  # (stamp_ns, inference latency s)
        self.diagnostics: dict[str, dict[str, str]] = {}
        self.create_subscription(String, "/world/episode", self._on_event, LATCHED)
        self.create_subscription(JointState, "/joint_states", self._on_joints, 50)
        self.create_subscription(Subtask, "/flashrt/subtask", self._on_subtask, LATCHED)
        self.create_subscription(ActionChunk, "/flashrt/action_chunk", self._on_chunk, 50)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.coach_pub = self.create_publisher(String, "/flashrt/coach", 10)
        self.interrupt_pub = self.create_publisher(String, "/flashrt/interrupt", 10)
        self.task_pub = self.create_publisher(String, "/flashrt/task", LATCHED)  # as the world's
        self.triggers = {name: self.create_client(Trigger, f"/flashrt/{name}") for name in ("start", "stop", "reset", "ready")}
        self.triggers["world_reset"] = self.create_client(Trigger, "/world/reset")
        self.set_world_params = self.create_client(SetParameters, "/world/set_parameters")

    # --- callbacks ------------------------------------------------------------------------------
    def _on_event(self, msg: String) -> None:
        with self.lock:
            self.events.append(json.loads(msg.data))

    def _on_joints(self, msg: JointState) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        with self.lock:
            self.positions[stamp] = (float(msg.position[0]), float(msg.position[1]))

    def _on_subtask(self, msg: Subtask) -> None:
        with self.lock:
            self.subtasks.append((time.monotonic(), msg.text, int(msg.version), int(msg.source)))

    def _on_chunk(self, msg: ActionChunk) -> None:
        with self.lock:
            self.chunks.append((stamp_to_ns(msg.header.stamp), float(msg.inference_time)))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        with self.lock:
            for status in msg.status:
                self.diagnostics[status.name] = {kv.key: kv.value for kv in status.values}

    # --- calls from the main thread (the executor spins in its own thread) ----------------------
    def call(self, name: str, timeout: float = 30.0) -> tuple[bool, str]:
        client = self.triggers[name]
        if not client.wait_for_service(timeout_sec=timeout):
            raise DemoError(f"service {client.srv_name} did not appear within {timeout:g} s")
        future = client.call_async(Trigger.Request())
        _wait(future.done, timeout, f"service {client.srv_name}")
        result = future.result()
        return result.success, result.message

    def set_world_seed(self, seed: int) -> None:
        if not self.set_world_params.wait_for_service(timeout_sec=30.0):
            raise DemoError("the world's parameter service did not appear")
        request = SetParameters.Request(parameters=[Parameter("seed", value=int(seed)).to_parameter_msg()])
        future = self.set_world_params.call_async(request)
        _wait(future.done, 30.0, "setting the world seed")
        if not future.result().results[0].successful:
            raise DemoError(f"the world refused seed {seed}: {future.result().results[0].reason}")

    def begin_episode(self, start_ns: int) -> None:
        with self.lock:
            self.episode_start_ns = start_ns

    def robot(self) -> tuple[float, np.ndarray | None]:
        """(world time of the newest observation, robot position) in the current episode."""
        with self.lock:
            stamp = max(self.positions, default=None)
            if stamp is None or stamp < self.episode_start_ns:
                return 0.0, None
            return (stamp - self.episode_start_ns) / 1e9, np.array(self.positions[stamp])

    def path(self, end_ns: int) -> list[list[float]]:
        """The robot's positions of the current episode, one per world step."""
        with self.lock:
            return [list(self.positions[k]) for k in sorted(self.positions) if self.episode_start_ns <= k <= end_ns]

    def end_event(self, episode: int) -> dict | None:
        with self.lock:
            return next((e for e in self.events if e["event"] == "end" and e["episode"] == episode), None)


# --- episodes ---------------------------------------------------------------------------------------
class Runner:
    def __init__(self, ros: RosSide, host: HostProcess, args: argparse.Namespace):
        self.ros, self.director, self.host, self.args = ros, ros.director, host, args
        self.first = True
        self.diagnostics: dict = {}  # the host's /diagnostics at the end of the last regular episode
        # generous: a slow host slows lock-step time down rather than failing
        self.timeout = 30.0 / args.speed * 4 + 60.0

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.host.alive():
                raise DemoError(f"the host exited (code {self.host.proc.returncode}):\n{self.host.log_tail()}")
            ok, message = self.director.call("ready", timeout=max(1.0, deadline - time.monotonic()))
            if ok:
                return
            if time.monotonic() > deadline:
                raise DemoError(f"the host is not ready: {message}\n{self.host.log_tail()}")
            time.sleep(0.5)

    def episode(self, kind: str, seed: int, script=None) -> Episode:
        d = self.director
        if not self.first:  # the host ran an episode: end it (recording closed), back to the initial state
            d.call("stop")
            d.call("reset")
        d.set_world_seed(seed)
        ok, message = d.call("world_reset")
        if not ok:
            raise DemoError(f"world reset failed: {message}")
        start = json.loads(message)
        d.begin_episode(start["stamp_ns"])
        if not self.first:
            ok, message = d.call("start")
            if not ok:
                raise DemoError(f"the host did not start an episode: {message}")
        self.first = False
        with d.lock:
            chunks_before = len(d.chunks)
        ep = Episode(kind, seed, start["task"], start["targets"])
        t0 = time.monotonic()
        while (end := d.end_event(start["episode"])) is None:
            if not self.host.alive():
                raise DemoError(f"the host exited mid-episode:\n{self.host.log_tail()}")
            if time.monotonic() - t0 > self.timeout:
                raise DemoError(f"episode (seed {seed}) did not end within {self.timeout:.0f} s")
            if script is not None:
                script(ep)
            time.sleep(0.01)
        ep.wall_s = time.monotonic() - t0
        if kind == "regular":
            with d.lock:
                self.diagnostics = {k: dict(v) for k, v in d.diagnostics.items()}
        ep.success, ep.time, ep.reason, ep.visited = end["success"], end["time"], end["reason"], end["visited"]
        deadline = time.monotonic() + 1.0  # the last observation may trail the end event (another topic)
        while end["stamp_ns"] not in d.positions and time.monotonic() < deadline:
            time.sleep(0.005)
        ep.path = d.path(end["stamp_ns"])
        with d.lock:
            stamps = [c[0] for c in d.chunks[chunks_before:] if start["stamp_ns"] <= c[0] <= end["stamp_ns"]]
        ep.chunks, ep.answered = len(stamps), len(set(stamps))
        return ep

    def coaching_episode(self, seed: int, at: float = 1.0, give_up_after: float = 10.0) -> Episode:
        """Coach "go to <the colour not in the task>"; once the robot is there (or gave up), send
        the task again: the planner takes over and the episode should still succeed."""
        d = self.director
        state = {"phase": "before"}

        def script(ep: Episode) -> None:
            t, position = d.robot()
            if position is None:
                return
            if state["phase"] == "before" and t >= at and self._issuing():
                colour = next(c for c in ep.targets if c not in ep.task)
                state.update(phase="coached", colour=colour, text=f"go to {colour}", t=t, since=time.monotonic())
                d.coach_pub.publish(_string(state["text"]))
                ep.notes.update(text=state["text"], colour=colour, at=t, position=position.tolist())
            elif state["phase"] == "coached":
                distance = float(np.linalg.norm(position - np.array(ep.targets[state["colour"]])))
                ep.notes["closest"] = min(distance, ep.notes.get("closest", math.inf))
                if distance <= VISIT_RADIUS or t - state["t"] > give_up_after:
                    ep.notes.update(reached=distance <= VISIT_RADIUS, reached_after=t - state["t"], resumed_at=t,
                                    reached_position=position.tolist())
                    state["phase"] = "resumed"
                    d.task_pub.publish(_string(" ".join(["visit", ", then ".join(ep.task)])))

        ep = self.episode("coaching", seed, script)
        with d.lock:
            coached = [s for s in d.subtasks if s[1] == ep.notes.get("text") and s[3] == 1]  # SOURCE_COACH
        ep.notes["subtask_confirmed"] = bool(coached)
        if coached:
            ep.notes["subtask_version"] = coached[0][2]
        return ep

    def interrupt_episode(self, seed: int, at: float = 1.5, hold: float = 1.0) -> Episode:
        """Interrupt mid-motion; check the robot stands still while interrupted; /flashrt/start."""
        d = self.director
        state = {"phase": "before"}

        def script(ep: Episode) -> None:
            t, position = d.robot()
            if position is None:
                return
            if state["phase"] == "before" and t >= at and self._issuing():
                d.interrupt_pub.publish(_string("demo: operator pause"))
                state.update(phase="interrupted", t=t)
                ep.notes.update(reason="demo: operator pause", at=t, position=position.tolist(), samples=[])
            elif state["phase"] == "interrupted":
                ep.notes["samples"].append((t, position.tolist()))
                if t - state["t"] >= hold:
                    ok, message = d.call("start")
                    ep.notes.update(resumed=ok, resume_message=message, resumed_at=t)
                    state["phase"] = "resumed"

        ep = self.episode("interrupt", seed, script)
        samples = ep.notes.pop("samples", [])
        if samples:
            times = np.array([s[0] for s in samples])
            points = np.array([s[1] for s in samples])
            moving = np.linalg.norm(np.diff(points, axis=0), axis=1) > 1e-6
            still_from = times[int(np.nonzero(moving)[0][-1]) + 1] if moving.any() else times[0]
            ep.notes.update(stopped_after=float(still_from - ep.notes["at"]),
                            held_still=float(times[-1] - still_from),
                            drift_after_stop=float(np.linalg.norm(points[-1] - points[times >= still_from][0])))
        return ep

    def _issuing(self) -> bool:
        """The host has sent a chunk for this episode (the planner ran, the actor answers)."""
        d = self.director
        with d.lock:
            return bool(d.chunks) and d.episode_start_ns is not None and d.chunks[-1][0] >= d.episode_start_ns


def _string(text: str) -> String:
    return String(data=text)


# --- in-process reference ---------------------------------------------------------------------------
def run_in_process(seeds: list[int], checkpoint: str) -> list:
    from flashrt_ros.models import EagerPolicy
    from flashrt_ros.tools.evaluate import evaluate

    policy = EagerPolicy.from_checkpoint(checkpoint) if checkpoint else EagerPolicy.from_checkpoint()
    return evaluate(policy, seeds, actor_period_steps=2, planner_period_steps=10).episodes


# --- outputs ----------------------------------------------------------------------------------------
def check_recordings(directory: Path) -> dict:
    """Every bag the host wrote opens with rosbags; counts."""
    from rosbags.rosbag2 import Reader

    bags = sorted(p.parent for p in directory.glob("**/metadata.yaml"))
    messages, unreadable = 0, []
    for bag in bags:
        try:
            with Reader(bag) as reader:
                messages += sum(1 for _ in reader.messages())
        except Exception as err:  # any reader error is what this check reports
            unreadable.append(f"{bag.name}: {err}")
    return {"directory": str(directory), "bags": len(bags), "messages": messages, "unreadable": unreadable}


def plot(episodes: list[Episode], in_process: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    from flashrt_ros.sim.tabletop import COLOUR_RGB

    cols = min(4, max(1, len(episodes)))
    rows = math.ceil(len(episodes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[len(episodes):]:
        ax.axis("off")
    for ax, ep in zip(axes.flat, episodes):
        ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.set_aspect("equal")
        ax.set_facecolor(np.array((200, 190, 170)) / 255)
        ax.tick_params(labelsize=7)
        for colour, (x, y) in ep.targets.items():
            order = ep.task.index(colour) + 1 if colour in ep.task else None
            rgb = np.array(COLOUR_RGB[colour]) / 255
            if colour in ep.visited:  # hollow, as the world's camera draws visited targets
                ax.add_patch(Circle((x, y), 0.04, fill=False, ec=rgb, lw=4))
            else:
                ax.add_patch(Circle((x, y), 0.05, color=rgb, alpha=0.9 if order else 0.4))
            ax.text(x, y, str(order) if order else "-", ha="center", va="center", fontsize=8, weight="bold",
                    color="k" if colour in ep.visited else "w")
        reference = in_process.get(ep.seed)
        if reference is not None and ep.kind == "regular":
            ax.plot(*reference.trajectory.T, "--", color="0.35", lw=1.2, label="in-process")
        if ep.path:
            p = np.array(ep.path)
            ax.plot(*p.T, "-", color="k", lw=1.6, label="over ROS")
            ax.plot(*p[0], "o", color="k", ms=5)
        n = ep.notes
        if ep.kind == "coaching" and "colour" in n:
            ax.add_patch(Circle(ep.targets[n["colour"]], 0.075, fill=False, ec="m", lw=1.5, ls="--"))
        if ep.kind == "coaching" and "position" in n:
            ax.plot(*n["position"], "*", color="m", ms=13, label=f"coach '{n['text']}'")
            if "reached_position" in n:
                ax.plot(*n["reached_position"], "P", color="m", ms=9, label="task re-sent")
        if ep.kind == "interrupt" and "position" in n:
            ax.plot(*n["position"], "X", color="r", ms=11, label="interrupt")
        outcome = "success" if ep.success else ep.reason
        label = {"regular": "", "coaching": " [coached]", "interrupt": " [interrupted]"}[ep.kind]
        ax.set_title(f"seed {ep.seed}{label}\n{outcome}, {ep.time:.2f} s" + (
            f" (in-process {'success' if reference.success else 'fail'}, {reference.time:.2f} s)"
            if reference is not None and ep.kind == "regular" else ""), fontsize=8)
        ax.legend(fontsize=6, loc="lower right", framealpha=0.7)
    fig.suptitle("flashrt_ros demo: robot paths over ROS 2 (numbers: task order)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise(args, episodes: list[Episode], in_process: dict, director: Director, diagnostics: dict,
              recordings: dict, wall_s: float) -> tuple[str, dict]:
    """The printed summary and summary.json. `diagnostics`: the host's /diagnostics as it was
    during the last regular episode (its rates are over a 5 s window)."""
    regular = [e for e in episodes if e.kind == "regular"]
    ok = sum(e.success for e in regular)
    ref = [in_process[e.seed] for e in regular if e.seed in in_process]
    ref_ok = sum(r.success for r in ref)
    with director.lock:
        inference = np.array([c[1] for c in director.chunks]) * 1e3
    actor, planner = diagnostics.get("flashrt: actor", {}), diagnostics.get("flashrt: planner", {})
    world_s, wall = sum(e.time for e in regular), sum(e.wall_s for e in regular)
    chunks, answered = sum(e.chunks for e in regular), sum(e.answered for e in regular)

    def pct(values, q):
        return float(np.percentile(values, q)) if len(values) else math.nan

    def num(status, key):
        try:
            return float(status.get(key, "nan"))
        except ValueError:
            return math.nan

    data = {
        "mode": "realtime" if args.realtime else "lockstep", "speed": args.speed,
        "episodes": len(regular), "seeds": [e.seed for e in regular],
        "success_ros": ok, "success_in_process": ref_ok if ref else None,
        "mean_time_ros": float(np.mean([e.time for e in regular if e.success])) if ok else None,
        "mean_time_in_process": float(np.mean([r.time for r in ref if r.success])) if ref_ok else None,
        "actor_chunks_per_world_s": chunks / world_s if world_s else None,
        "actor_answers_per_world_s": answered / world_s if world_s else None,
        "actor_hz_wall": chunks / wall if wall else None, "actor_target_hz": WORLD_ACTOR_HZ * args.speed,
        "planner_hz_wall": num(planner, "rate_hz"), "planner_target_hz": WORLD_PLANNER_HZ * args.speed,
        "inference_latency_ms": {"p50": pct(inference, 50), "p99": pct(inference, 99), "chunks": int(inference.size)},
        "cycle_latency_ms": {"p50": num(actor, "cycle_latency_p50_ms"), "p99": num(actor, "cycle_latency_p99_ms")},
        "observation_to_chunk_ms": {"p50": num(actor, "chunk_latency_p50_ms"), "p99": num(actor, "chunk_latency_p99_ms")},
        "deadline_misses": int(num(actor, "deadline_misses") or 0),
        "episodes_detail": [asdict(e) | {"path": None} for e in episodes],
        "recordings": recordings, "wall_s": wall_s,
    }
    mode = ("wall-clock time (realtime)" if args.realtime
            else f"lock-step sim time, host rates set for {args.speed:g}x real time")
    lines = [f"flashrt-ros demo: closed loop over ROS 2 (world node <-> host process), {mode}"]
    if regular:
        lines.append(f"  episodes        {len(regular)} (seeds {regular[0].seed}..{regular[-1].seed})")
        line = f"  success         {ok}/{len(regular)} over ROS"
        if ref:
            line += f"   vs   {ref_ok}/{len(ref)} in-process (same seeds: run_episode, eager policy)"
        lines.append(line)
        if ok:
            line = f"  episode time    {data['mean_time_ros']:.2f} s mean of successes (world time) over ROS"
            if ref_ok:
                line += f"   vs   {data['mean_time_in_process']:.2f} s in-process"
            lines.append(line)
        if world_s and wall:
            lines.append(f"  actor           {data['actor_hz_wall']:.1f} Hz wall (target {data['actor_target_hz']:g}); "
                         f"{data['actor_answers_per_world_s']:.2f} observations answered per world second "
                         f"(in-process loop: {WORLD_ACTOR_HZ:g})")
            if chunks > answered:
                lines.append(f"                  {chunks - answered} of {chunks} chunks repeat an observation already "
                             f"answered (the host's wall-clock cycle outran lock-step time)")
    lines.append(f"  planner         {data['planner_hz_wall']:.2f} Hz wall (target {data['planner_target_hz']:g}: "
                 f"{WORLD_PLANNER_HZ:g} per world second at {args.speed:g}x)")
    lat, cyc, e2e = data["inference_latency_ms"], data["cycle_latency_ms"], data["observation_to_chunk_ms"]
    line = (f"  chunk latency   inference p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms ({lat['chunks']} chunks); "
            f"actor cycle p50 {cyc['p50']:.1f} ms, p99 {cyc['p99']:.1f} ms")
    if args.realtime:  # in lock-step time the clock waits for the chunk: 0 by construction
        line += f"; observation stamp -> chunk p50 {e2e['p50']:.1f} ms, p99 {e2e['p99']:.1f} ms"
    lines.append(line + f"; deadline misses {data['deadline_misses']}")
    for ep in episodes:
        lines += _event_lines(ep)
    rec = recordings
    state = "all readable" if not rec["unreadable"] else "UNREADABLE: " + "; ".join(rec["unreadable"])
    lines.append(f"  recordings      {rec['bags']} MCAP bags, {rec['messages']} messages, {state}: {rec['directory']}")
    lines.append(f"  wall time       {wall_s:.1f} s over ROS")
    return "\n".join(lines), data


def _event_lines(ep: Episode) -> list[str]:
    n, outcome = ep.notes, f"episode {'success' if ep.success else ep.reason} in {ep.time:.2f} s"
    if ep.kind == "coaching":
        if "text" not in n:
            return [f"  coaching        not sent (the host issued no chunk); {outcome}"]
        reached = (f"reached {n['colour']} {n['reached_after']:.2f} s later" if n.get("reached")
                   else f"did not reach {n['colour']} (closest {n.get('closest', math.nan):.3f} m)")
        confirmed = (f"/flashrt/subtask v{n['subtask_version']} from the coach" if n.get("subtask_confirmed")
                     else "no coach subtask on /flashrt/subtask")
        return [f"  coaching        '{n['text']}' (not in the task) at t={n['at']:.2f} s: {reached}; {confirmed}",
                f"                  task re-sent, planner took over again: {outcome}"]
    if ep.kind == "interrupt":
        if "at" not in n:
            return [f"  interrupt       not sent (the host issued no chunk); {outcome}"]
        return [f"  interrupt       '{n['reason']}' at t={n['at']:.2f} s: robot still "
                f"{n.get('stopped_after', math.nan):.2f} s later, held {n.get('held_still', math.nan):.2f} s "
                f"(drift {n.get('drift_after_stop', math.nan):.1e} m)",
                f"                  /flashrt/start {'resumed it' if n.get('resumed') else 'FAILED'}: {outcome}"]
    return []


# --- main -------------------------------------------------------------------------------------------
def prepare_out(out: Path) -> Path:
    """The demo's own outputs from a previous run are replaced; nothing else in `out` is touched."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "recordings", ignore_errors=True)
    for name in ("trajectories.png", "summary.json", "host.log", "host_params.yaml"):
        (out / name).unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    out = prepare_out(args.out)
    t_start = time.monotonic()
    seeds = list(range(args.seed, args.seed + args.episodes))
    extra = args.seed + args.episodes
    print(f"demo: {args.episodes} episodes + {'' if args.no_coaching else 'coaching, '}"
          f"{'' if args.no_interrupt else 'interrupt, '}output in {out}/", flush=True)

    episodes: list[Episode] = []
    ros = None
    try:
        with HostProcess(args, out) as host:
            ros = RosSide(args)
            runner = Runner(ros, host, args)
            runner.wait_ready()
            print(f"demo: host ready ({time.monotonic() - t_start:.1f} s)", flush=True)
            for seed in seeds:
                ep = runner.episode("regular", seed)
                episodes.append(ep)
                print(f"demo: seed {seed}: {'success' if ep.success else ep.reason} in {ep.time:.2f} s "
                      f"({ep.wall_s:.1f} s wall)", flush=True)
            if not args.no_coaching:
                episodes.append(runner.coaching_episode(extra))
                print(f"demo: coaching episode (seed {extra}): {episodes[-1].reason}", flush=True)
            if not args.no_interrupt:
                episodes.append(runner.interrupt_episode(extra + 1))
                print(f"demo: interrupt episode (seed {extra + 1}): {episodes[-1].reason}", flush=True)
            runner.director.call("stop")  # closes the last recording before the host exits
            director, diagnostics = runner.director, runner.diagnostics or dict(runner.director.diagnostics)
            ros_wall = time.monotonic() - t_start
    except DemoError as err:
        print(f"demo: FAILED: {err}", file=sys.stderr)
        return 1
    finally:
        if ros is not None:
            ros.close()

    in_process = {}
    if not args.no_in_process and seeds:
        print("demo: the same seeds in-process (eager policy, run_episode) ...", flush=True)
        in_process = {r.seed: r for r in run_in_process(seeds, args.checkpoint)}
    recordings = check_recordings(out / "recordings")
    if not args.no_plot and episodes:
        plot(episodes, in_process, out / "trajectories.png")
    text, data = summarise(args, episodes, in_process, director, diagnostics, recordings, ros_wall)
    data["plot"] = None if args.no_plot else str(out / "trajectories.png")
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=float) + "\n")
    print()
    print(text)
    if not args.no_plot and episodes:
        print(f"  plot            {out / 'trajectories.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
