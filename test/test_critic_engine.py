"""The critic graph beside the built-in engine (CPU): it reads the actor's buffers in place, and a
critic that does not fit the policy is refused at configure, naming what does not fit."""
import dataclasses

import numpy as np
import pytest
import torch

from flashrt_ros.engines.builtin import Engine
from flashrt_ros.engines.critic import CriticError, CriticGraph
from flashrt_ros.host.loop import PolicyLoop
from flashrt_ros.host.params import ConfigError, load_config
from flashrt_ros.models.critic import REFERENCE_CRITIC, Critic, CriticConfig, load_critic, save_critic
from flashrt_ros.sim import TabletopWorld


def test_the_critic_values_the_observation_the_actor_last_acted_on():
    world = TabletopWorld()
    obs = world.reset(11)
    engine = Engine(device="cpu")
    engine.set_task(world.task_text)
    engine.plan([obs.images["top"]], ["rgb8"])
    critic = load_critic(REFERENCE_CRITIC)
    graph = CriticGraph(engine, critic)
    engine.act([obs.images["top"]], ["rgb8"], obs.joint_positions, chunk_seq=1)
    value = graph.evaluate(1.0)
    # the same module run eagerly on what the actor was given: the graph reads those buffers in place
    b = engine.buffers
    subtask = b["subtask.slots"].index_select(0, b["subtask.state"][:1])
    with torch.inference_mode():
        expected = torch.sigmoid(critic(b["actor.images"], b["actor.state"], b["planner.task"], subtask,
                                        torch.tensor([1.0]))).item()
    assert value == pytest.approx(expected, abs=1e-6)
    # another observation (a target knocked off the table) changes what it reads
    world.knock_off(world.next_target)
    engine.act([world.render()], ["rgb8"], obs.joint_positions, chunk_seq=2)
    assert graph.evaluate(1.0) != pytest.approx(value, abs=1e-6)


def test_a_critic_that_does_not_fit_the_engine_is_refused_naming_the_buffer():
    engine = Engine(device="cpu")
    wrong = Critic(dataclasses.replace(CriticConfig(), image_size=224, patch_size=16))
    with pytest.raises(CriticError, match=r"'actor.images' is \(1, 1, 3, 96, 96\).*\(1, 1, 3, 224, 224\)"):
        CriticGraph(engine, wrong)


def test_the_host_refuses_a_critic_for_another_policy_at_configure(tmp_path):
    torch.manual_seed(0)
    save_critic(tmp_path / "critic", Critic(dataclasses.replace(CriticConfig(), text_len=6)))
    loop = PolicyLoop(load_config([], {}, [("device", "cpu"), ("critic", str(tmp_path / "critic"))]))
    with pytest.raises(ConfigError, match="text_len: critic 6, policy 4"):
        loop.configure("test", dispatch=False)
    assert "text_len" in loop.readiness()[1]
    assert np.isfinite(load_critic(REFERENCE_CRITIC).head.weight.detach().numpy()).all()
