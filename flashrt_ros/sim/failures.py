"""Failures (and harmless disturbances) injected into tabletop episodes, drawn from a seed.

What a critic must learn to tell apart. Each episode gets at most one `Injection` at a world time:
- "none": a clean episode.
- "push": the robot is bumped to a random spot; the policy recovers (mostly): not a failure.
- "wrong_coaching": an operator coaches "go to <the colour not in the task>" and the coaching
  holds to the end of the episode: the robot parks on a target that does not count (fails by time).
- "knocked_off": a task target not yet visited falls off the table: it can never be visited.
- "jammed_joint": one joint seizes: the robot can only move along the other axis.
Whether an episode fails is the world's verdict (`success` at the end), never assumed from the kind:
a jam in line with the remaining targets, or a push, can still end in success.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tabletop import COLOURS, JOINT_NAMES, TabletopWorld, subtask_for

KINDS = ("none", "push", "wrong_coaching", "knocked_off", "jammed_joint")
# The mix of held-out evaluation episodes (and, by default, of training rollouts).
DEFAULT_MIX = {"none": 0.3, "push": 0.1, "wrong_coaching": 0.2, "knocked_off": 0.2, "jammed_joint": 0.2}


@dataclass(frozen=True)
class Injection:
    kind: str
    time: float = 0.0           # world seconds at which it happens
    value: float = 0.0          # push: unused; jammed_joint: joint index
    position: tuple[float, float] = (0.0, 0.0)   # push: where the robot is moved to
    rank: float = 0.0           # knocked_off: which unvisited task target, as a fraction of them

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown injection kind {self.kind!r}; known: {KINDS}")

    def describe(self) -> str:
        return "clean" if self.kind == "none" else f"{self.kind} at {self.time:.2f} s"


# The shipped policy finishes a clean episode in ~3 s (three targets at 0.5 m/s): injections land
# within that, or they would come after the episode is over.
INJECTION_WINDOW_S = (0.3, 2.2)


def draw_injection(seed: int, mix: dict[str, float] | None = None,
                   window: tuple[float, float] = INJECTION_WINDOW_S) -> Injection:
    """The injection of episode `seed` (its own stream, independent of the world's), at a world
    time drawn uniformly from `window`."""
    mix = DEFAULT_MIX if mix is None else mix
    kinds = [k for k in KINDS if mix.get(k, 0.0) > 0]
    weights = np.asarray([mix[k] for k in kinds], np.float64)
    rng = np.random.default_rng([int(seed), 0xC217])
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    time = float(np.round(rng.uniform(*window), 2))
    return Injection(kind, time, value=float(rng.integers(len(JOINT_NAMES))),
                     position=tuple(float(x) for x in rng.uniform(0.05, 0.95, 2)), rank=float(rng.random()))


def wrong_colour(world: TabletopWorld) -> str:
    """The colour on the table that the task does not name."""
    return next(c for c in COLOURS if c not in world.task)


def apply_injection(world: TabletopWorld, injection: Injection) -> str | None:
    """Do it to the world now. Returns the coaching text to send (wrong_coaching), else None."""
    kind = injection.kind
    if kind == "push":
        world.push(injection.position)
    elif kind == "wrong_coaching":
        return subtask_for(wrong_colour(world))
    elif kind == "knocked_off":
        left = [c for c in world.task if c not in world.visited]
        if left:
            world.knock_off(left[min(int(injection.rank * len(left)), len(left) - 1)])
    elif kind == "jammed_joint":
        world.jam(int(injection.value))
    return None
