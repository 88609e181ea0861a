"""The shipped reference weights really drive the tabletop world (eager models, CPU).

Held-out seeds only (training used seeds below TRAIN_SEED_LIMIT)."""

import numpy as np
import pytest

from flashrt_ros.models import REFERENCE_WEIGHTS, EagerPolicy
from flashrt_ros.tools.evaluate import (HELD_OUT_SEED_START, coaching_check, evaluate, held_out_seeds,
                                        planner_accuracy)
from flashrt_ros.tools.train import TRAIN_SEED_LIMIT

pytestmark = pytest.mark.skipif(not (REFERENCE_WEIGHTS / "config.json").is_file(),
                                reason="reference weights not trained yet (python -m flashrt_ros.tools.train)")


@pytest.fixture(scope="module")
def policy():
    return EagerPolicy.from_checkpoint(REFERENCE_WEIGHTS)


def test_held_out_seeds_are_disjoint_from_training_seeds():
    assert HELD_OUT_SEED_START >= TRAIN_SEED_LIMIT


def test_closed_loop_completes_held_out_episodes(policy):
    summary = evaluate(policy, held_out_seeds(10))
    assert sum(e.success for e in summary.episodes) >= 9, f"failed seeds {summary.failed_seeds}"
    for episode in summary.episodes:
        if episode.success:
            assert episode.visited == episode.task


def test_planner_names_the_experts_subtask_on_held_out_states(policy):
    assert planner_accuracy(policy, held_out_seeds(10, HELD_OUT_SEED_START + 900_000)) >= 0.95


def test_coaching_go_to_green_brings_the_robot_to_green(policy):
    for seed in held_out_seeds(3, HELD_OUT_SEED_START + 500_000):
        result = coaching_check(policy, seed, colour="green", at_step=10, hold_steps=60)
        assert result.reached, f"seed {seed}: closest approach to green {result.closest:.3f} m"
        # and it was the coaching, not the task: the subtask in force was "go to green"
        assert set(result.episode.subtasks[10:70]) == {"go to green"}


def test_same_seed_same_episode(policy):
    first = evaluate(policy, [HELD_OUT_SEED_START + 3]).episodes[0]
    again = evaluate(policy, [HELD_OUT_SEED_START + 3]).episodes[0]
    np.testing.assert_array_equal(first.trajectory, again.trajectory)
