"""The engine: the planner's choice reaches the actor through the shared buffer, coaching takes
effect on the very next chunk, reset restores the start-up state without recapture, and bad input
is refused before it reaches a graph."""
import numpy as np
import pytest
import torch

from flashrt_ros.engines.builtin import Engine
from flashrt_ros.sim import TabletopWorld

LIMITS = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
VMAX = np.array([0.5, 0.5], np.float32)
import os
CKPT = os.environ.get("FLASHRT_TEST_CKPT")


@pytest.fixture(scope="module")
def engine():
    return Engine(checkpoint=CKPT, device="cpu", joint_limits=LIMITS, max_velocity=VMAX)


@pytest.fixture()
def scene(engine):
    engine.reset()
    world = TabletopWorld()
    obs = world.reset(123)
    engine.set_task(world.task_text)
    return world, obs


def cams(obs):
    return [obs.images["top"]], ["rgb8"]


def test_chunk_has_the_configured_shape_and_stays_inside_joint_limits(engine, scene):
    world, obs = scene
    engine.plan(*cams(obs))
    chunk = engine.act(*cams(obs), obs.joint_positions, chunk_seq=1)
    H, D = engine.config.horizon, engine.config.action_dim
    assert chunk.positions.shape == (H, D) and chunk.velocities.shape == (H, D)
    assert np.all(chunk.positions >= 0.0) and np.all(chunk.positions <= 1.0)
    assert np.all(np.abs(chunk.velocities) <= 0.5 + 1e-6)
    assert not chunk.nonfinite and chunk.latency_s > 0


def test_planner_subtask_reaches_the_actor_through_the_shared_buffer(engine, scene):
    world, obs = scene
    state = engine.plan(*cams(obs))
    assert state is not None and state.source == "planner"
    assert state.text == f"go to {world.task[0]}"  # the first target of the task
    chunk = engine.act(*cams(obs), obs.joint_positions, chunk_seq=1)
    assert chunk.subtask_version == state.version and chunk.subtask_text == state.text
    assert engine.plan(*cams(obs)) is None  # unchanged choice: no new version


def test_coaching_replaces_the_subtask_before_the_next_chunk(engine, scene):
    world, obs = scene
    engine.plan(*cams(obs))
    coached = engine.coach("go to yellow")
    chunk = engine.act(*cams(obs), obs.joint_positions, chunk_seq=2)
    assert chunk.subtask_version == coached.version and chunk.subtask_text == "go to yellow"
    # and the chunk heads for yellow: its end is closer to yellow than where it started
    start, end = obs.joint_positions, chunk.positions[-1]
    assert np.linalg.norm(end - world.targets["yellow"]) < np.linalg.norm(start - world.targets["yellow"])


def test_planner_commit_can_be_held_off_while_coaching_holds(engine, scene):
    world, obs = scene
    coached = engine.coach("go to yellow")
    assert engine.plan(*cams(obs), allow_commit=False) is None
    assert engine.subtask.version == coached.version


def test_same_inputs_and_chunk_seq_give_the_same_chunk_and_seq_changes_the_noise(engine, scene):
    world, obs = scene
    engine.plan(*cams(obs))
    a = engine.act(*cams(obs), obs.joint_positions, chunk_seq=5)
    b = engine.act(*cams(obs), obs.joint_positions, chunk_seq=5)
    c = engine.act(*cams(obs), obs.joint_positions, chunk_seq=6)
    assert a.positions.tobytes() == b.positions.tobytes()
    assert a.positions.tobytes() != c.positions.tobytes()


def test_reset_restores_the_start_up_bytes_without_recapture(engine, scene):
    world, obs = scene
    graph = engine.actor_graph
    engine.plan(*cams(obs))
    engine.coach("go to blue")
    engine.reset()
    assert engine.capsules.matches("initial")
    assert engine.subtask.version == 0 and engine.subtask.text == ""
    assert engine.task == ""  # the task bytes were restored too: no stale task text
    with pytest.raises(ValueError, match="no task"):
        engine.plan(*cams(obs))
    assert engine.actor_graph is graph
    engine.set_task(world.task_text)
    state = engine.plan(*cams(obs))
    assert state.version == 1


def test_planner_cut_into_pieces_computes_exactly_what_the_whole_planner_does(scene):
    world, obs = scene
    whole = Engine(checkpoint=CKPT, device="cpu")
    cut = Engine(checkpoint=CKPT, device="cpu", planner_pieces=3)
    assert len(cut.planner_graphs) == 3
    for e in (whole, cut):
        e.set_task(world.task_text)
        e.plan(*cams(obs))
    np.testing.assert_array_equal(whole.buffers.read("subtask.slots"), cut.buffers.read("subtask.slots"))
    results = []
    pieces = cut.planner_pieces(lambda: cams(obs), results.append)
    assert len(pieces) == 3
    cut.coach("go to yellow")
    for p in pieces:
        p()
    assert results[-1] is not None and results[-1].text == whole.subtask.text


@pytest.mark.parametrize("bad, match", [
    (np.array([np.nan, 0.5], np.float32), "not finite"),
    (np.array([0.5, np.inf], np.float32), "not finite"),
    (np.array([0.5, 0.5, 0.5], np.float32), "3 values"),
])
def test_bad_joint_state_is_refused(engine, scene, bad, match):
    world, obs = scene
    with pytest.raises(ValueError, match=match):
        engine.act(*cams(obs), bad)


@pytest.mark.parametrize("text, match", [("", "empty"), ("   ", "empty"), ("go " * 600, "1024-byte"),
                                         ("go to purple", "does not know")])
def test_bad_coaching_text_is_refused_and_the_subtask_is_kept(engine, scene, text, match):
    world, obs = scene
    before = engine.coach("go to red")
    with pytest.raises(ValueError, match=match):
        engine.coach(text)
    assert engine.subtask == before


def test_wrong_number_of_cameras_is_refused(engine, scene):
    world, obs = scene
    with pytest.raises(ValueError, match="camera image"):
        engine.act([obs.images["top"]] * 2, ["rgb8"] * 2, obs.joint_positions)


def test_nan_in_the_model_output_is_flagged_and_never_returned(scene):
    world, obs = scene
    e = Engine(checkpoint=CKPT, device="cpu")
    e.set_task(world.task_text)
    e.plan(*cams(obs))
    with torch.no_grad():
        e.actor.action_out.bias.fill_(float("nan"))  # same storage the captured graph uses
    chunk = e.act(*cams(obs), obs.joint_positions)
    assert chunk.nonfinite
    assert np.all(np.isfinite(chunk.positions)) and np.all(np.isfinite(chunk.velocities))
