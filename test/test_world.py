"""The reference tabletop world: determinism, the visit rule, rendering, the expert, rollout."""

import numpy as np
import pytest

from flashrt_ros.sim import (COLOURS, SUBTASKS, CoachEvent, ExpertPolicy, TabletopWorld, WorldConfig,
                               expert_chunk, expert_subtask, run_episode)
from flashrt_ros.sim.tabletop import COLOUR_RGB, TABLE_RGB


def pixel(world, point):
    s = world.config.image_size
    x, y = point
    return min(int((1 - y) * s), s - 1), min(int(x * s), s - 1)


def test_same_seed_same_world_and_images():
    a, b = TabletopWorld(seed=7), TabletopWorld(seed=7)
    assert a.task == b.task and a.task_text == b.task_text
    for colour in COLOURS:
        np.testing.assert_array_equal(a.targets[colour], b.targets[colour])
    np.testing.assert_array_equal(a.render(), b.render())
    other = TabletopWorld(seed=8)
    assert not np.array_equal(a.render(), other.render())


def test_targets_well_separated_task_distinct_and_text_format():
    for seed in range(50):
        world = TabletopWorld(seed=seed)
        points = np.stack([world.targets[c] for c in COLOURS])
        gaps = np.linalg.norm(points[:, None] - points[None], axis=-1) + 10 * np.eye(4)
        assert gaps.min() >= world.config.min_separation
        assert len(set(world.task)) == 3
        assert world.task_text == f"visit {world.task[0]}, then {world.task[1]}, then {world.task[2]}"


def test_visit_counts_only_the_next_target_in_order():
    world = TabletopWorld(seed=3)
    first, second, _ = world.task
    world.set_state(world.targets[second])  # sit on the second target first: not a visit
    world.apply_chunk(np.repeat(world.targets[second][None], 4, axis=0))
    world.step()
    assert world.visited == []
    world.set_state(world.targets[first] + np.float32([world.config.visit_radius * 0.9, 0]))
    world.apply_chunk(np.repeat(world.position[None], 4, axis=0))
    world.step()
    assert world.visited == [first]
    world.set_state(world.targets[second] + np.float32([world.config.visit_radius * 1.2, 0]))
    world.apply_chunk(np.repeat(world.position[None], 4, axis=0))
    world.step()
    assert world.visited == [first]  # just outside the radius


def test_chunk_execution_is_speed_limited_and_holds_at_the_end():
    world = TabletopWorld(seed=1)
    world.set_state([0.1, 0.1])
    world.apply_chunk(np.float32([[0.9, 0.9], [0.9, 0.9]]))
    world.step()
    step_length = world.config.max_speed * world.config.dt
    assert np.linalg.norm(world.position - np.float32([0.1, 0.1])) == pytest.approx(step_length, rel=1e-4)
    for _ in range(60):
        world.step()
    np.testing.assert_allclose(world.position, [0.9, 0.9], atol=1e-6)  # held the last position


def test_chunk_position_for_each_time():
    world = TabletopWorld(seed=1)
    world.set_state([0.5, 0.5])
    chunk = np.float32([[0.51, 0.5], [0.52, 0.5], [0.53, 0.5]])
    world.apply_chunk(chunk, start_time=0.0)
    world.step()
    np.testing.assert_allclose(world.position, chunk[0], atol=1e-6)
    world.step()
    np.testing.assert_allclose(world.position, chunk[1], atol=1e-6)


def test_bad_chunks_are_refused():
    world = TabletopWorld(seed=1)
    with pytest.raises(ValueError):
        world.apply_chunk(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError):
        world.apply_chunk(np.float32([[np.nan, 0.5]]))


def test_visited_targets_are_drawn_hollow_and_the_robot_is_visible():
    world = TabletopWorld(seed=5)
    first = world.task[0]
    world.set_state([0.5, 0.5] if np.linalg.norm(world.targets[first] - 0.5) > 0.1 else [0.05, 0.05])
    centre = pixel(world, world.targets[first])
    rim = pixel(world, world.targets[first] + np.float32([0, world.config.target_radius - 0.01]))
    image = world.render()
    assert tuple(image[centre]) == COLOUR_RGB[first]
    world.set_state(world.position, n_visited=1)
    image = world.render()
    assert tuple(image[centre]) == TABLE_RGB  # hollow
    assert tuple(image[rim]) == COLOUR_RGB[first]  # ring still drawn
    assert tuple(image[pixel(world, world.position)]) == (20, 20, 20)  # robot marker


def test_observation_layout():
    world = TabletopWorld(WorldConfig(image_size=64), seed=2)
    obs = world.observation()
    assert obs.images["top"].shape == (64, 64, 3) and obs.images["top"].dtype == np.uint8
    assert obs.joint_names == ("joint_x", "joint_y")
    assert obs.joint_positions.dtype == np.float32 and obs.time == 0.0


def test_expert_subtask_follows_the_task_order():
    world = TabletopWorld(seed=4)
    for n in range(3):
        world.set_state(world.position, n_visited=n)
        assert expert_subtask(world) == f"go to {world.task[n]}"
    world.set_state(world.position, n_visited=3)
    assert expert_subtask(world) == "done"
    assert set(SUBTASKS) == {f"go to {c}" for c in COLOURS} | {"done"}


def test_expert_chunk_is_a_straight_line_at_max_speed_then_holds():
    world = TabletopWorld(seed=4)
    world.set_state([0.5, 0.5])
    goal = world.targets["red"]
    chunk = expert_chunk(world, "go to red", 40)
    step = np.linalg.norm(np.diff(np.vstack([world.position, chunk]), axis=0), axis=1)
    assert step.max() <= world.config.max_speed * world.config.dt + 1e-6
    np.testing.assert_allclose(chunk[-1], goal, atol=1e-6)
    np.testing.assert_allclose(expert_chunk(world, "done", 5), np.repeat(world.position[None], 5, 0))


def test_expert_solves_episodes_and_rollout_is_deterministic():
    world = TabletopWorld()
    expert = ExpertPolicy(world)
    results = [run_episode(world, expert.act, expert.plan, seed=s) for s in range(20)]
    assert all(r.success and r.visited == r.task for r in results)
    again = run_episode(world, expert.act, expert.plan, seed=0)
    np.testing.assert_array_equal(again.trajectory, results[0].trajectory)
    assert results[0].actor_calls == (results[0].steps + 1) // 2  # actor every 2 steps


def test_coaching_overrides_the_subtask_then_the_planner_resumes():
    world = TabletopWorld(seed=11)
    expert = ExpertPolicy(world)
    hold = CoachEvent(step=4, text="go to yellow", hold_steps=30)
    result = run_episode(world, expert.act, expert.plan, seed=11, coach=[hold], stop_on_success=False,
                         max_steps=80)
    assert all(s == "go to yellow" for s in result.subtasks[4:34])
    assert result.subtasks[34] != "go to yellow" or world.task[0] == "yellow"
    window = result.trajectory[5:35]
    assert np.linalg.norm(window - result.targets["yellow"], axis=1).min() <= world.config.visit_radius


def test_time_limit_ends_the_episode():
    world = TabletopWorld(WorldConfig(time_limit=1.0), seed=0)
    hold = lambda obs, subtask: np.repeat(obs.joint_positions[None], 4, 0)  # noqa: E731
    result = run_episode(world, hold, lambda obs, task: "done")
    assert not result.success and result.steps == 20
