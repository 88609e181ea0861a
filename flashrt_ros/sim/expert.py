"""The scripted expert: the right subtask for a world state and the chunk that carries it out.

It reads the world's privileged state (target positions), so it is the teacher for training and the
oracle for tests, never a policy that runs on the robot.
"""

from __future__ import annotations

import numpy as np

from .tabletop import TabletopWorld, colour_of, subtask_for


def expert_subtask(world: TabletopWorld) -> str:
    """The next unvisited target in task order, or "done"."""
    return subtask_for(world.next_target)


def straight_line_chunk(start, goal, horizon: int, step_length: float) -> np.ndarray:
    """(horizon, 2) positions from `start` toward `goal`, `step_length` per step, then holding at `goal`."""
    start = np.asarray(start, dtype=np.float64)
    goal = np.asarray(goal, dtype=np.float64)
    offset = goal - start
    distance = float(np.linalg.norm(offset))
    travelled = np.minimum(step_length * np.arange(1, horizon + 1), distance)
    direction = offset / distance if distance > 0 else np.zeros(2)
    return (start + travelled[:, None] * direction).astype(np.float32)


def expert_chunk(world: TabletopWorld, subtask: str, horizon: int, position=None) -> np.ndarray:
    """The expert's chunk for `subtask` from `position` (default: the robot's): straight at max speed.

    "done" (or an unrecognised text) holds the current position.
    """
    start = world.position if position is None else position
    colour = colour_of(subtask)
    goal = start if colour is None else world.targets[colour]
    return straight_line_chunk(start, goal, horizon, world.config.max_speed * world.config.dt)


class ExpertPolicy:
    """The expert as the `act` / `plan` callables of `run_episode` (it peeks at `world`)."""

    def __init__(self, world: TabletopWorld, horizon: int = 16):
        self.world = world
        self.horizon = horizon

    def act(self, obs, subtask_text: str) -> np.ndarray:
        return expert_chunk(self.world, subtask_text, self.horizon, position=obs.joint_positions)

    def plan(self, obs, task_text: str) -> str:
        return expert_subtask(self.world)
