"""Closed-loop evaluation of a checkpoint on held-out tabletop episodes (eager models, CPU).

    python -m flashrt_ros.tools.evaluate --episodes 50
    python -m flashrt_ros.tools.evaluate --checkpoint path/to/dir --episodes 200 --coaching 20

Seeds start at `HELD_OUT_SEED_START`, disjoint from the training seeds
(`flashrt_ros.tools.train.TRAIN_SEED_LIMIT`). Each episode reseeds the flow-matching noise with its
world seed, so a run is reproducible episode by episode.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..models import REFERENCE_WEIGHTS, EagerPolicy
from ..sim import CoachEvent, EpisodeResult, ExpertPolicy, TabletopWorld, WorldConfig, expert_subtask, run_episode

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(REFERENCE_WEIGHTS))
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed-start", type=int, default=HELD_OUT_SEED_START)
    parser.add_argument("--coaching", type=int, default=10, help="coaching episodes ('go to green')")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up when logged to a file
    torch.set_num_threads(args.threads)

    policy = EagerPolicy.from_checkpoint(args.checkpoint)
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
