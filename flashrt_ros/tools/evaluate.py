"""Closed-loop evaluation of the reference policy on held-out tabletop episodes.

    flashrt-ros evaluate --episodes 50 --delay-ms 200 --overlap-policy rtc --rtc-mode guided --json out.json
    flashrt-ros evaluate --eager --episodes 50          # the models alone (no host), as before

By default the episodes run IN PROCESS through the host's real rules: a PolicyLoop (host/loop.py)
on a simulated clock, the real Engine on the CPU, the world following the published trajectories
with joint_trajectory_controller semantics (sim/follower.py), observations rendered from the world.
`--delay-ms D` injects an inference delay: a chunk is ready D ms after its observation, and the
world goes on following the previous trajectory meanwhile, so the first actions of each new chunk
are in the past and the loop drops them, as on a robot. The overlap of consecutive chunks is the
loop's (`--overlap-policy replace|blend|rtc`), never re-implemented here. Reported: success rate,
mean episode time, and smoothness where a new chunk takes over (see `boundary_figures`).

`--eager` instead runs the models without the host (`evaluate` below: a chunk replaces the last at
its observation time), plus the planner accuracy and coaching checks.

Seeds start at `HELD_OUT_SEED_START`, disjoint from the training seeds
(`flashrt_ros.tools.train.TRAIN_SEED_LIMIT`). Each episode reseeds the flow-matching noise with its
world seed, so a run is reproducible episode by episode.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..models import REFERENCE_WEIGHTS, EagerPolicy
from ..sim import CoachEvent, EpisodeResult, ExpertPolicy, TabletopWorld, WorldConfig, expert_subtask, run_episode
from ..sim.failures import Injection, apply_injection, draw_injection
from ..sim.tabletop import FOLLOWER_CLOCK_OFFSET

HELD_OUT_SEED_START = 1_000_000


@dataclass
class EvaluationSummary:
    episodes: list[EpisodeResult]

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes]))

    @property
    def mean_success_time(self) -> float:
        times = [e.time for e in self.episodes if e.success]
        return float(np.mean(times)) if times else float("nan")

    @property
    def failed_seeds(self) -> list[int]:
        return [e.seed for e in self.episodes if not e.success]


@dataclass
class CoachingResult:
    episode: EpisodeResult
    colour: str
    reached: bool  # came within visit_radius of the coached colour while the coaching held
    closest: float  # metres, over the hold window


def held_out_seeds(n: int, start: int = HELD_OUT_SEED_START) -> list[int]:
    return list(range(start, start + n))


def evaluate(policy: EagerPolicy, seeds, *, world_config: WorldConfig | None = None,
             actor_period_steps: int = 2, planner_period_steps: int = 10) -> EvaluationSummary:
    """Closed-loop episodes of `policy` on the worlds of `seeds`."""
    world = TabletopWorld(world_config or WorldConfig(image_size=policy.config.image_size))
    episodes = []
    for seed in seeds:
        policy.reseed(seed)
        episodes.append(run_episode(world, policy.act, policy.plan, seed=seed,
                                    actor_period_steps=actor_period_steps, planner_period_steps=planner_period_steps))
    return EvaluationSummary(episodes)


def planner_accuracy(policy: EagerPolicy, seeds, *, planner_period_steps: int = 3,
                     world_config: WorldConfig | None = None) -> float:
    """Fraction of states on which the planner names the expert's subtask. The expert drives (so
    the states are the ones a working loop visits), the planner is asked every few steps and once
    more after the last visit (where the answer is "done")."""
    world = TabletopWorld(world_config or WorldConfig(image_size=policy.config.image_size))
    expert = ExpertPolicy(world, horizon=policy.config.horizon)
    grades = []

    def graded_plan(obs, task_text):
        grades.append(policy.plan(obs, task_text) == expert_subtask(world))
        return expert_subtask(world)

    for seed in seeds:
        run_episode(world, expert.act, graded_plan, seed=seed, planner_period_steps=planner_period_steps)
        graded_plan(world.observation(), world.task_text)
    return float(np.mean(grades))


def coaching_check(policy: EagerPolicy, seed: int, *, colour: str = "green", at_step: int = 10,
                   hold_steps: int = 60, world_config: WorldConfig | None = None) -> CoachingResult:
    """Coach "go to <colour>" at `at_step` for `hold_steps`: does the robot reach that target meanwhile?"""
    world = TabletopWorld(world_config or WorldConfig(image_size=policy.config.image_size))
    policy.reseed(seed)
    event = CoachEvent(step=at_step, text=f"go to {colour}", hold_steps=hold_steps)
    episode = run_episode(world, policy.act, policy.plan, seed=seed, coach=[event], stop_on_success=False,
                          max_steps=at_step + hold_steps)
    window = episode.trajectory[at_step + 1: at_step + hold_steps + 1]
    closest = float(np.linalg.norm(window - episode.targets[colour], axis=1).min())
    return CoachingResult(episode, colour, closest <= world.config.visit_radius, closest)


# --- closed loop through the host (PolicyLoop) -------------------------------------------------------

ORIGIN_NS = 1_000_000_000_000      # the simulated ROS clock at world time 0 (a real, non-zero stamp)


@dataclass
class Boundary:
    """Where a new chunk's trajectory took over from the one being followed."""
    time: float                # world seconds at the takeover (the chunk ready)
    tick: int                  # the first control tick after it (world step index)
    position_jump: float       # max over joints |new command - old command| at that tick
    velocity_jump: float       # the same for the commanded velocity
    jerk_rms: float = float("nan")   # RMS jerk of the executed commands over the ticks around it


@dataclass
class LoopEpisode:
    seed: int
    task: tuple[str, ...]
    success: bool
    time: float
    visited: tuple[str, ...]
    chunks: int
    dropped_actions: int
    rejected_trajectories: int
    boundaries: list[Boundary] = field(default_factory=list)
    jerk_rms: float = float("nan")   # RMS jerk of the executed commands over the whole episode
    delay_steps: list[int] = field(default_factory=list)   # the loop's d estimate per chunk
    injection: str = "none"            # the failure injected (sim/failures.py), "none" without
    end_reason: str = ""               # the loop's, when it ended the episode (critic, timeout, ...)
    values: list[tuple[float, float]] = field(default_factory=list)   # critic readings (world s, value)
    trajectory: list[tuple[float, float]] = field(default_factory=list)  # robot position per step


class _SimClock:
    def __init__(self):
        self.ns = ORIGIN_NS


class LoopHarness:
    """The reference world driven through a PolicyLoop (configure(dispatch=False), cycles run here)
    on a simulated clock; `delay_ms`: each chunk ready that long after its observation. The world
    steps at its dt (the control tick); the actor runs every 1/actor_hz, or as soon as the previous
    chunk is ready when the delay is longer (inference-bound, as on a robot); the planner every
    1/planner_hz, on the newest observation."""

    def __init__(self, *, overlap_policy: str = "replace", rtc_mode: str = "guided", delay_ms: float = 0.0,
                 checkpoint: str = "", actor_hz: float = 10.0, planner_hz: float = 2.0, extra_params=(),
                 world_config: WorldConfig | None = None, critic: str = "", critic_hz: float = 2.0,
                 inject: bool = False):
        from flashrt_ros.host.loop import PolicyLoop          # noqa: PLC0415 (host only for this mode)
        from flashrt_ros.host.params import load_config       # noqa: PLC0415
        self.world = TabletopWorld(world_config or WorldConfig())
        self.dt_ns = int(round(self.world.config.dt * 1e9))
        delay_ns = int(round(delay_ms * 1e6))
        if delay_ns < 0 or delay_ns % self.dt_ns:
            raise ValueError(f"--delay-ms must be a multiple of the world step ({self.dt_ns / 1e6:g} ms), got {delay_ms}")
        self.delay_ticks = delay_ns // self.dt_ns
        self.actor_ticks = max(1, int(round(1.0 / (actor_hz * self.world.config.dt))))
        self.planner_ticks = max(1, int(round(1.0 / (planner_hz * self.world.config.dt))))
        self.critic_ticks = max(1, int(round(1.0 / (critic_hz * self.world.config.dt))))
        self.inject = inject
        params = [("critic", critic), ("critic_hz", f"{critic_hz:g}"),("device", "cpu"), ("task", ""), ("actor_hz", f"{actor_hz:g}"), ("planner_hz", f"{planner_hz:g}"),
                  ("overlap_policy", overlap_policy), ("rtc_mode", rtc_mode), ("checkpoint", checkpoint),
                  # inputs are as old as the delay when the next cycle runs: never stale here
                  ("camera_timeout_s", "5.0"), ("joint_state_timeout_s", "5.0"), *extra_params]
        self.config = load_config([], {}, params)
        self.clock = _SimClock()
        loop = self.loop = PolicyLoop(self.config)
        loop.outputs = self
        loop.now_ns = lambda: self.clock.ns
        loop.monotonic = lambda: self.clock.ns / 1e9
        loop.configure("evaluate", dispatch=False)
        loop.set_active("actor", True)
        loop.set_active("planner", True)
        self.engine = loop.engine
        self._real_act = self.engine.act
        self.engine.act = self._delayed_act     # the harness's delay: the world moves while it "computes"
        self._episode: LoopEpisode | None = None
        self._commands: list[np.ndarray] = []    # the follower's setpoint at each tick (executed commands)
        self.inference_s: list[float] = []

    # --- time ----------------------------------------------------------------------------------
    def _world_s(self, ns: int) -> float:
        return (ns - ORIGIN_NS) / 1e9

    def _tick(self) -> None:
        """One world step: the follower's setpoint for the end of the step is the command."""
        w = self.world
        if w.done:
            self.clock.ns += self.dt_ns
            return
        w.step()
        self.clock.ns = ORIGIN_NS + w.steps * self.dt_ns
        self._commands.append(w.chunk_target(w.time).astype(np.float64))
        if self._episode is not None:
            self._episode.trajectory.append(tuple(float(x) for x in w.position))

    def _delayed_act(self, *args, **kwargs):
        t0 = time.perf_counter()
        result = self._real_act(*args, **kwargs)
        self.inference_s.append(time.perf_counter() - t0)
        if self._episode is not None and kwargs.get("prefix") is not None:   # rtc: the loop's d for this chunk
            self._episode.delay_steps.append(int(kwargs.get("delay", 0)))
        for _ in range(self.delay_ticks):
            self._tick()
        return result

    # --- the loop's outputs ----------------------------------------------------------------------
    def publish_chunk(self, chunk, ready_ns: int) -> None:
        ep = self._episode
        if ep is None:
            return
        ep.chunks += 1
        traj = chunk.trajectory
        if traj is None:
            return
        w = self.world
        now = w.time
        next_t = now + w.config.dt
        had = w.follower.trajectory is not None and ep.chunks > 1
        old_p, old_v = w.follower.sample(next_t + FOLLOWER_CLOCK_OFFSET)
        try:
            w.apply_trajectory(self._world_s(traj.stamp_ns), traj.times, traj.positions, traj.velocities)
        except ValueError:
            ep.rejected_trajectories += 1
            return
        if had:
            new_p, new_v = w.follower.sample(next_t + FOLLOWER_CLOCK_OFFSET)
            ep.boundaries.append(Boundary(now, w.steps + 1, float(np.abs(new_p - old_p).max()),
                                          float(np.abs(new_v - old_v).max())))

    def publish_stop(self, stop) -> None:
        if len(stop.times) == 0:
            self.world.hold()
            return
        try:
            self.world.apply_trajectory(self._world_s(stop.stamp_ns), stop.times, stop.positions, stop.velocities)
        except ValueError:
            self.world.hold()

    def publish_subtask(self, state, stamp_ns: int) -> None:
        pass

    # --- inputs and cycles -----------------------------------------------------------------------
    def _feed(self) -> None:
        loop, w = self.loop, self.world
        stamp = self.clock.ns
        for cam in loop.config.cameras:
            loop.put_frame(cam.name, w.render(), "rgb8", stamp, stamp / 1e9)
        loop.put_joints(dict(zip(loop.config.joint_names, w.position.astype(np.float32).tolist())),
                        stamp, stamp / 1e9)

    def _plan(self) -> None:
        for piece in self.loop.scheduler.tasks["planner"].pieces:
            piece()

    def run_episode(self, seed: int) -> LoopEpisode:
        loop, w = self.loop, self.world
        loop.stop("episode over")
        w.reset(seed)
        self.clock.ns = ORIGIN_NS
        self._commands = [w.chunk_target(0.0).astype(np.float64)]
        loop.reset()                              # the engine's initial capsule, applied before the next cycle
        loop.set_task(w.task_text)
        self.engine.chunk_io.seed = int(seed)     # the flow noise: (episode seed, chunk index)
        loop.chunk_seq = 0
        injection = draw_injection(seed) if self.inject else Injection("none")
        inject_at = int(round(injection.time / w.config.dt)) if injection.kind != "none" else -1
        ep = self._episode = LoopEpisode(seed, w.task, False, 0.0, (), 0, 0, 0, injection=injection.describe())
        dropped0 = loop.dropped_actions
        ok, why = loop.start()
        if not ok:
            raise RuntimeError(f"the loop did not start an episode: {why}")
        limit = int(round(w.config.time_limit / w.config.dt))
        next_plan = next_act = next_critic = 0
        ep.trajectory.append(tuple(float(x) for x in w.position))
        while not w.done and w.steps < limit and loop.running:
            if 0 <= inject_at <= w.steps:       # (with a delay the world steps inside the actor's cycle)
                inject_at = -1
                coaching = apply_injection(w, injection)
                if coaching is not None:
                    loop.coach(coaching)          # held until the next task (coach_hold_s 0)
            if w.steps >= next_plan:
                self._feed()
                self._plan()
                next_plan = w.steps + self.planner_ticks
            if w.steps >= next_act:
                started = w.steps
                self._feed()
                loop.step()                       # the loop's own cycle: its rules, overlap and limits
                next_act = started + self.actor_ticks
                if loop.critic is not None and started >= next_critic:
                    loop.critic_step()            # between actor releases, on the observation just acted on
                    next_critic = started + self.critic_ticks
                if not loop.running:              # the loop ended the episode (critic, time): it ends here
                    break
                if w.steps > started:             # the delay passed inside the cycle
                    continue
            self._tick()
        ep.end_reason = loop.end_reason if not loop.running else ""
        ep.values = [(self._world_s(t), v) for t, v in loop.values]
        self._episode = None
        ep.success, ep.time, ep.visited = w.success, w.time, tuple(w.visited)
        ep.dropped_actions = loop.dropped_actions - dropped0
        commands = np.asarray(self._commands)
        dt = w.config.dt
        jerk = np.diff(commands, n=3, axis=0) / dt ** 3 if len(commands) > 3 else np.zeros((0, 2))
        ep.jerk_rms = float(np.sqrt(np.mean(jerk ** 2))) if len(jerk) else float("nan")
        for b in ep.boundaries:
            # third differences jerk[k] use commands[k .. k+3]: those whose stencil holds the takeover tick
            window = jerk[max(0, b.tick - 3): b.tick + 1]
            b.jerk_rms = float(np.sqrt(np.mean(window ** 2))) if len(window) else float("nan")
        return ep

    def close(self) -> None:
        self.loop.stop("evaluation over")
        self.loop.cleanup("evaluate")


def _percentiles(values, q=(50, 95)) -> dict:
    v = np.asarray([x for x in values if x is not None and x == x], np.float64)
    if not len(v):
        return {**{f"p{p}": None for p in q}, "max": None, "n": 0}
    return {**{f"p{p}": float(np.percentile(v, p)) for p in q}, "max": float(v.max()), "n": int(len(v))}


def boundary_figures(episodes: list[LoopEpisode]) -> dict:
    """Smoothness where a new chunk takes over, over every boundary of every episode (p50/p95/max):
    position_jump (joint units): max over joints of |command just after the takeover - the command
    the old chunk had for that tick|, i.e. the jump beyond the motion the old chunk itself had planned
    over that interval (the command just before is the same for both: JTC starts the new trajectory
    from the current setpoint); velocity_jump (units/s): the same for the commanded velocity;
    jerk_rms (units/s^3): RMS third difference of the executed commands over the 4 ticks whose stencil
    holds the takeover; episode_jerk_rms: the same over whole episodes (mean)."""
    bs = [b for e in episodes for b in e.boundaries]
    jerks = [e.jerk_rms for e in episodes if e.jerk_rms == e.jerk_rms]
    return {"position_jump": _percentiles([b.position_jump for b in bs]),
            "velocity_jump": _percentiles([b.velocity_jump for b in bs]),
            "jerk_rms": _percentiles([b.jerk_rms for b in bs]),
            "episode_jerk_rms_mean": float(np.mean(jerks)) if jerks else None,
            "boundaries": len(bs)}


def evaluate_loop(seeds, **harness_args) -> dict:
    """Closed-loop episodes through the host; the summary as a JSON-able dict."""
    harness = LoopHarness(**harness_args)
    started = time.time()
    try:
        episodes = [harness.run_episode(s) for s in seeds]
    finally:
        harness.close()
    times = [e.time for e in episodes if e.success]
    delays = [d for e in episodes for d in e.delay_steps]
    return {
        "episodes": len(episodes),
        "success_rate": float(np.mean([e.success for e in episodes])) if episodes else float("nan"),
        "mean_episode_time_s": float(np.mean(times)) if times else None,
        "mean_episode_time_all_s": float(np.mean([e.time for e in episodes])) if episodes else None,
        "failed_seeds": [e.seed for e in episodes if not e.success],
        "boundary": boundary_figures(episodes),
        "chunks": int(sum(e.chunks for e in episodes)),
        "dropped_actions_per_chunk": (float(sum(e.dropped_actions for e in episodes) / max(1, sum(e.chunks for e in episodes)))),
        "rejected_trajectories": int(sum(e.rejected_trajectories for e in episodes)),
        "delay_steps": _percentiles(delays),
        "inference_ms": _percentiles(np.asarray(harness.inference_s) * 1e3),
        "wall_s": round(time.time() - started, 1),
    }


def _prefix_equal(a: list, b: list) -> bool:
    n = min(len(a), len(b))
    return n > 0 and a[:n] == b[:n]


def evaluate_critic(seeds, critic: str = "reference", critic_hz: float = 2.0, early_s: float = 2.0,
                    **harness_args) -> dict:
    """Held-out episodes with failures injected (sim/failures.py), run twice through the host: without
    the critic (what each episode would have done: success or a failure at the time limit, and the
    actor's latency alone) and with it (where its value ended the episode). The two runs are the same
    episode up to the critic's end (same noise, same simulated clock; checked on the robot's path).
    The actor's act() times of the two: the same episodes, alternated; the critic runs between actor
    cycles in this harness (one thread), so they differ only by what the critic leaves in the caches."""
    started = time.time()
    harnesses = {name: LoopHarness(inject=True, critic=critic_dir, critic_hz=critic_hz, **harness_args)
                 for name, critic_dir in (("without", ""), ("with", critic))}
    runs = {name: [] for name in harnesses}
    try:
        for seed in seeds:        # episode by episode, so a change in the machine's load hits both alike
            for name, harness in harnesses.items():
                runs[name].append(harness.run_episode(seed))
    finally:
        for harness in harnesses.values():
            harness.close()
    summaries = {name: {"actor_inference_ms": _percentiles(np.asarray(h.inference_s) * 1e3, q=(50, 99))}
                 for name, h in harnesses.items()}
    summaries["with"]["critic_ms"] = _percentiles(harnesses["with"].loop.critic_readings.latencies() * 1e3,
                                                  q=(50, 99))
    limit = WorldConfig().time_limit
    episodes, failing, succeeding = [], [], []
    for base, crit in zip(runs["without"], runs["with"]):
        ended = crit.end_reason == "critic"
        row = {"seed": base.seed, "injection": base.injection, "would_succeed": bool(base.success),
               "time_without_s": round(base.time, 2), "ended_by_critic": ended,
               "end_time_s": round(crit.time, 2) if ended else None,
               "lead_s": round(limit - crit.time, 2) if ended else None,
               "success_with_critic": bool(crit.success),
               "same_path_until_end": _prefix_equal(base.trajectory, crit.trajectory),
               "min_value": round(min((v for _, v in crit.values), default=float("nan")), 4)}
        episodes.append(row)
        (succeeding if base.success else failing).append(row)
    early = [r for r in failing if r["ended_by_critic"] and r["lead_s"] >= early_s]
    false_ends = [r for r in succeeding if r["ended_by_critic"]]
    kinds = sorted({r["injection"].split(" at ")[0] for r in episodes})
    by_kind = {}
    for k in kinds:
        rows = [r for r in episodes if r["injection"].split(" at ")[0] == k]
        by_kind[k] = {"episodes": len(rows), "failing": sum(not r["would_succeed"] for r in rows),
                      "failing_ended_early": sum((not r["would_succeed"]) and r["ended_by_critic"]
                                                 and r["lead_s"] >= early_s for r in rows),
                      "succeeding_ended": sum(r["would_succeed"] and r["ended_by_critic"] for r in rows)}
    a0, a1 = summaries["without"]["actor_inference_ms"], summaries["with"]["actor_inference_ms"]
    return {
        "episodes": len(episodes), "failing": len(failing), "would_succeed": len(succeeding),
        "failing_ended_early": len(early),
        "failing_ended_early_fraction": len(early) / len(failing) if failing else None,
        "lead_s": _percentiles([r["lead_s"] for r in early]),
        "succeeding_ended": len(false_ends),
        "succeeding_ended_fraction": len(false_ends) / len(succeeding) if succeeding else None,
        "succeeding_ended_seeds": [r["seed"] for r in false_ends],
        "missed_failing_seeds": [r["seed"] for r in failing if r not in early],
        "same_path_until_end": all(r["same_path_until_end"] for r in episodes),
        "by_injection": by_kind,
        "actor_inference_ms_without_critic": a0, "actor_inference_ms_with_critic": a1,
        "actor_p99_ratio": (a1["p99"] / a0["p99"]) if a0.get("p99") else None,
        "critic_ms": summaries["with"].get("critic_ms"),
        "early_s": early_s, "time_limit_s": limit,
        "per_episode": episodes, "wall_s": round(time.time() - started, 1),
    }


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import os  # noqa: PLC0415
    return (f"{platform.machine()} {cpu}, {os.cpu_count()} cores, CPU engine, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed-start", type=int, default=HELD_OUT_SEED_START)
    parser.add_argument("--checkpoint", default="", help="checkpoint directory ('' = the shipped reference weights)")
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="each chunk is ready this long after its observation (a multiple of 50 ms)")
    parser.add_argument("--overlap-policy", default="replace", choices=("replace", "blend", "rtc"))
    parser.add_argument("--rtc-mode", default="guided", choices=("guided", "trained"))
    parser.add_argument("--actor-hz", type=float, default=10.0)
    parser.add_argument("--planner-hz", type=float, default=2.0)
    parser.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                        help="another host parameter, e.g. --set rtc_execution_horizon=8 (repeatable)")
    parser.add_argument("--json", default="", help="write the summary here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--critic", nargs="?", const="reference", default="",
                        help="evaluate a value critic ('reference' or a critic directory) on held-out episodes with "
                             "failures injected: episodes it ended early, and how early; episodes it ended that would "
                             "have succeeded; the actor's latency with and without it (each episode run twice)")
    parser.add_argument("--critic-hz", type=float, default=2.0)
    parser.add_argument("--eager", action="store_true",
                        help="the models alone, without the host (+ planner accuracy, coaching); of the options "
                             "above only --episodes, --seed-start, --checkpoint and --threads apply")
    parser.add_argument("--coaching", type=int, default=10, help="--eager: coaching episodes ('go to green')")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up when logged to a file
    torch.set_num_threads(args.threads)
    if args.eager:
        return eager_main(args)
    extra = []
    for item in args.set:
        name, _, value = item.partition("=")
        extra.append((name.strip(), value.strip()))
    extra.append(("cpu_threads", str(args.threads)))
    if args.critic:
        return critic_main(args, extra, argv)
    summary = evaluate_loop(held_out_seeds(args.episodes, args.seed_start), overlap_policy=args.overlap_policy,
                            rtc_mode=args.rtc_mode, delay_ms=args.delay_ms, checkpoint=args.checkpoint,
                            actor_hz=args.actor_hz, planner_hz=args.planner_hz, extra_params=extra)
    summary["settings"] = {"overlap_policy": args.overlap_policy, "rtc_mode": args.rtc_mode,
                           "delay_ms": args.delay_ms, "actor_hz": args.actor_hz, "planner_hz": args.planner_hz,
                           "checkpoint": args.checkpoint or "reference (shipped)", "seed_start": args.seed_start,
                           "params": dict(extra)}
    _stamp_and_write(summary, argv, args.json)
    b = summary["boundary"]
    fmt = lambda p: "n/a" if p["p50"] is None else f"{p['p50']:.4f} / {p['p95']:.4f}"  # noqa: E731
    print(f"{args.overlap_policy}{' ' + args.rtc_mode if args.overlap_policy == 'rtc' else ''}, delay "
          f"{args.delay_ms:g} ms: {100 * summary['success_rate']:.1f}% of {summary['episodes']} episodes, "
          f"mean episode time {summary['mean_episode_time_s'] or float('nan'):.2f} s (simulated); "
          f"{b['boundaries']} boundaries: position jump p50/p95 {fmt(b['position_jump'])}, "
          f"velocity jump {fmt(b['velocity_jump'])}, jerk RMS {fmt(b['jerk_rms'])}; "
          f"d p50 {summary['delay_steps']['p50']}; {summary['wall_s']:.0f} s")
    if summary["failed_seeds"]:
        print(f"failed seeds: {summary['failed_seeds']}")
    return 0


def _stamp_and_write(summary: dict, argv, path: str) -> None:
    """The command, machine and date into the summary; the summary to `path` as JSON ('' = not written)."""
    summary["command"] = "flashrt-ros evaluate " + " ".join(sys.argv[1:] if argv is None else argv)
    summary["machine"] = _machine()
    summary["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    if path:
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")


def critic_main(args, extra, argv) -> int:
    summary = evaluate_critic(held_out_seeds(args.episodes, args.seed_start), critic=args.critic,
                              critic_hz=args.critic_hz, overlap_policy=args.overlap_policy, rtc_mode=args.rtc_mode,
                              delay_ms=args.delay_ms, checkpoint=args.checkpoint, actor_hz=args.actor_hz,
                              planner_hz=args.planner_hz, extra_params=extra)
    summary["settings"] = {"critic": args.critic, "critic_hz": args.critic_hz, "params": dict(extra),
                           "seed_start": args.seed_start, "overlap_policy": args.overlap_policy}
    _stamp_and_write(summary, argv, args.json)
    frac = lambda x: "n/a" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    a0, a1 = summary["actor_inference_ms_without_critic"], summary["actor_inference_ms_with_critic"]
    print(f"critic {args.critic!r} on {summary['episodes']} held-out episodes with failures injected: "
          f"{summary['failing']} failing, {summary['would_succeed']} would succeed")
    print(f"  failing episodes it ended >= {summary['early_s']:g} s before the {summary['time_limit_s']:g} s limit: "
          f"{summary['failing_ended_early']}/{summary['failing']} ({frac(summary['failing_ended_early_fraction'])}), "
          f"lead p50 {summary['lead_s']['p50']} s")
    print(f"  episodes it ended that would have succeeded: {summary['succeeding_ended']}/{summary['would_succeed']} "
          f"({frac(summary['succeeding_ended_fraction'])})")
    print(f"  actor act() p50/p99 without the critic {a0['p50']:.2f}/{a0['p99']:.2f} ms, with it "
          f"{a1['p50']:.2f}/{a1['p99']:.2f} ms (this harness runs them in turn on one thread: the concurrent "
          f"figure is `flashrt-ros soak`'s); critic p50 {summary['critic_ms']['p50']:.2f} ms")
    print(f"  same path until the critic's end: {summary['same_path_until_end']}; {summary['wall_s']:.0f} s")
    for kind, row in summary["by_injection"].items():
        print(f"    {kind}: {row}")
    return 0


def eager_main(args) -> int:
    """--eager: the models without the host."""
    checkpoint = args.checkpoint or str(REFERENCE_WEIGHTS)
    policy = EagerPolicy.from_checkpoint(checkpoint)
    started = time.time()
    summary = evaluate(policy, held_out_seeds(args.episodes, args.seed_start))
    print(f"closed loop: {sum(e.success for e in summary.episodes)}/{len(summary.episodes)} episodes "
          f"succeeded ({100 * summary.success_rate:.1f}%), mean episode time {summary.mean_success_time:.2f} s "
          f"(simulated), evaluated in {time.time() - started:.0f} s")
    if summary.failed_seeds:
        print(f"failed seeds: {summary.failed_seeds}")
    accuracy = planner_accuracy(policy, held_out_seeds(20, args.seed_start + 900_000))
    print(f"planner picks the expert's subtask on {100 * accuracy:.1f}% of held-out states")
    if args.coaching:
        seeds = held_out_seeds(args.coaching, args.seed_start + 500_000)
        results = [coaching_check(policy, s) for s in seeds]
        reached = sum(r.reached for r in results)
        print(f"coaching 'go to green': {reached}/{len(results)} reached green within visit_radius "
              f"(median closest {np.median([r.closest for r in results]):.3f} m)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
