"""Closed-loop episodes: a world, an actor callable and a planner callable, each at its own rate.

`act(obs, subtask_text) -> (H, 2) float32 positions` and `plan(obs, task_text) -> subtask_text` are
plain callables, so the same loop drives the scripted expert, the eager models, or the GPU engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .tabletop import Observation, TabletopWorld

ActFn = Callable[[Observation, str], np.ndarray]
PlanFn = Callable[[Observation, str], str]
# Something that happens to the world at a step (a failure injection): it may return a coaching
# text, which then holds to the end of the episode.
WorldEvent = Callable[[TabletopWorld], "str | None"]
# Called every step with (step, the observation the actor acts on, the subtask in force).
StepHook = Callable[[int, Observation, str], None]


@dataclass(frozen=True)
class CoachEvent:
    """From world step `step`, the subtask is `text` for `hold_steps` steps; then the planner resumes."""

    step: int
    text: str
    hold_steps: int


@dataclass
class EpisodeResult:
    seed: int
    task: tuple[str, ...]
    success: bool
    steps: int
    time: float
    visited: tuple[str, ...]
    trajectory: np.ndarray  # (steps + 1, 2) robot positions, first row is the start
    subtasks: list[str]  # the subtask in force at each step
    targets: dict[str, np.ndarray]
    actor_calls: int
    planner_calls: int


def _coaching_at(coach: Sequence[CoachEvent], step: int) -> CoachEvent | None:
    active = [e for e in coach if e.step <= step < e.step + e.hold_steps]
    return active[-1] if active else None  # the latest event wins


def run_episode(
    world: TabletopWorld,
    act: ActFn,
    plan: PlanFn,
    *,
    actor_period_steps: int = 2,
    planner_period_steps: int = 10,
    coach: Sequence[CoachEvent] | None = None,
    seed: int | None = None,
    max_steps: int | None = None,
    stop_on_success: bool = True,
    events: Sequence[tuple[int, WorldEvent]] = (),
    on_step: StepHook | None = None,
) -> EpisodeResult:
    """Run one episode from the world's current state (reset it first with `seed` if given).

    Each step: the planner runs every `planner_period_steps` (and right after a coaching hold ends),
    a coaching event overrides its subtask while it holds, the actor runs every `actor_period_steps`
    on the newest observation and its chunk replaces the executed one (start time = observation
    time), then the world steps.
    """
    if seed is not None:
        world.reset(seed)
    coach = list(coach or ())
    limit = int(round(world.config.time_limit / world.config.dt)) if max_steps is None else max_steps
    obs = world.observation()
    trajectory = [world.position.copy()]
    subtasks: list[str] = []
    planned: str | None = None
    actor_calls = planner_calls = 0
    was_coached = False
    for step in range(limit):
        if world.timed_out or (stop_on_success and world.success):
            break
        for at, world_event in events:
            if at == step:
                text = world_event(world)
                obs = world.observation()
                if text is not None:
                    coach.append(CoachEvent(step, text, hold_steps=limit - step))
        event = _coaching_at(coach, step)
        if event is None and (planned is None or step % planner_period_steps == 0 or was_coached):
            planned = plan(obs, world.task_text)
            planner_calls += 1
        was_coached = event is not None
        subtask = event.text if event is not None else planned
        if step % actor_period_steps == 0:
            world.apply_chunk(act(obs, subtask), start_time=obs.time)
            actor_calls += 1
        subtasks.append(subtask)
        if on_step is not None:
            on_step(step, obs, subtask)
        obs = world.step()
        trajectory.append(world.position.copy())
    return EpisodeResult(
        seed=world.seed,
        task=world.task,
        success=world.success,
        steps=world.steps,
        time=world.time,
        visited=tuple(world.visited),
        trajectory=np.stack(trajectory),
        subtasks=subtasks,
        targets={k: v.copy() for k, v in world.targets.items()},
        actor_calls=actor_calls,
        planner_calls=planner_calls,
    )
