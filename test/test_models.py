"""Models: presets, tokenizer, checkpoints, and the encode-once structure of the actor."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from flashrt_ros.models import (PRESETS, Actor, CheckpointError, ModelConfig, Planner, WordTokenizer,
                                load_checkpoint, save_checkpoint)
from flashrt_ros.sim import SUBTASKS

TINY = dataclasses.replace(PRESETS["reference"], name="tiny", vision_width=16, prefix_width=16, expert_width=16,
                           vision_layers=1, prefix_layers=1, expert_layers=1, planner_layers=1, horizon=6,
                           num_steps=3)


def parameters(module):
    return sum(p.numel() for p in module.parameters())


def inputs(config, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = config.image_size
    return (torch.rand(batch, config.n_cameras, 3, s, s, generator=g) * 2 - 1,
            torch.rand(batch, config.state_dim, generator=g),
            torch.randint(0, config.vocab_size, (batch, config.text_len), generator=g),
            torch.randn(batch, config.horizon, config.action_dim, generator=g))


def test_presets_by_name_and_unknown_name():
    assert ModelConfig.from_name("reference") is PRESETS["reference"]
    with pytest.raises(KeyError, match="unknown model preset"):
        ModelConfig.from_name("gpt5")
    assert PRESETS["reference"].subtasks == SUBTASKS  # the world's subtask texts, same order


def test_pi0_like_sizes():
    # built on the meta device: the shapes and parameter counts without 3.6 GB of memory
    config = PRESETS["pi0_like"]
    with torch.device("meta"):
        actor = Actor(config)
    expert = sum(p.numel() for n, p in actor.named_parameters()
                 if n.startswith(("expert_", "action_", "time_", "state_to_expert")))
    assert 280e6 <= expert <= 330e6
    assert (config.horizon, config.num_steps, config.image_size) == (50, 10, 224)
    assert 1 <= config.n_cameras <= 3 and config.prefix_width == 2048


def test_pi0_like_layout_runs_a_forward_at_reduced_depth():
    # a full pi0_like forward takes minutes on 2 CPU cores (~0.9B parameters, 774 prefix tokens),
    # so run its exact widths, heads, patching and horizon with one layer per stack instead
    config = dataclasses.replace(PRESETS["pi0_like"], n_cameras=1, vision_layers=1, prefix_layers=1,
                                 expert_layers=1, planner_layers=1, num_steps=2)
    torch.manual_seed(0)
    actor = Actor(config).eval()
    with torch.inference_mode():
        actions = actor(*inputs(config, batch=1))
    assert actions.shape == (1, 50, 2) and torch.isfinite(actions).all()


def test_tokenizer_lowercases_strips_punctuation_and_pads():
    tokenizer = WordTokenizer(PRESETS["reference"].vocabulary)
    ids = tokenizer.encode("Visit RED, then blue!", 6)
    assert ids.dtype == np.int64 and ids.shape == (6,)
    assert tokenizer.decode(ids) == "visit red then blue"
    assert list(ids[4:]) == [0, 0]
    assert tokenizer.encode("go to purple", 4)[2] == 1  # unknown word


def test_tokenizer_refuses_text_longer_than_the_slot():
    tokenizer = WordTokenizer(PRESETS["reference"].vocabulary)
    with pytest.raises(ValueError, match="more than the 3 tokens"):
        tokenizer.encode("go to the red one", 3)


def test_planner_subtask_table_holds_the_subtask_token_ids():
    planner = Planner(TINY)
    tokenizer = WordTokenizer(TINY.vocabulary)
    for row, text in zip(planner.subtask_table, TINY.subtasks):
        assert tokenizer.decode(row.numpy()) == text
    images, _, _, _ = inputs(TINY)
    task = torch.from_numpy(np.stack([tokenizer.encode("visit red, then blue, then green", TINY.task_len)] * 2))
    assert planner(images, task).shape == (2, len(TINY.subtasks))


def test_forward_is_denoise_of_encode_and_denoise_never_reencodes(monkeypatch):
    torch.manual_seed(0)
    actor = Actor(TINY).eval()
    images, state, tokens, noise = inputs(TINY)
    with torch.no_grad():
        expected = actor.denoise(actor.encode(images, state, tokens), noise)
        calls = {"vision": 0, "velocity": 0}
        vision_forward, velocity_from = actor.vision.forward, actor.velocity_from

        def counting_vision(*args):
            calls["vision"] += 1
            return vision_forward(*args)

        def counting_velocity(*args):
            calls["velocity"] += 1
            return velocity_from(*args)

        monkeypatch.setattr(actor.vision, "forward", counting_vision)
        monkeypatch.setattr(actor, "velocity_from", counting_velocity)
        actions = actor(images, state, tokens, noise)
    torch.testing.assert_close(actions, expected, rtol=0, atol=0)
    assert calls == {"vision": 1, "velocity": TINY.num_steps}


def test_actions_depend_on_noise_state_and_subtask():
    torch.manual_seed(0)
    actor = Actor(TINY).eval()
    images, state, tokens, noise = inputs(TINY)
    with torch.no_grad():
        base = actor(images, state, tokens, noise)
        assert not torch.allclose(base, actor(images, state, tokens, noise + 1))
        assert not torch.allclose(base, actor(images, state + 0.5, tokens, noise))
        assert not torch.allclose(base, actor(images, state, (tokens + 1) % TINY.vocab_size, noise))


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    actor, planner = Actor(TINY), Planner(TINY)
    actor.action_std.fill_(0.3)
    save_checkpoint(tmp_path, actor, planner)
    config, actor2, planner2 = load_checkpoint(tmp_path)
    assert config == TINY
    for a, b in ((actor, actor2), (planner, planner2)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_checkpoint_with_wrong_shape_names_the_tensor(tmp_path):
    save_checkpoint(tmp_path, Actor(TINY), Planner(TINY))
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"]["horizon"] = 7
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"'action_position' has shape \(1, 6, 16\).*expects \(1, 7, 16\)"):
        load_checkpoint(tmp_path)


def test_checkpoint_missing_files_and_tensors(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, Actor(TINY), Planner(TINY))
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"]["prefix_layers"] = 2
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="missing .*prefix_blocks.1"):
        load_checkpoint(tmp_path)


def test_planner_stages_compose_to_the_planner():
    from flashrt_ros.models.stages import planner_stages

    torch.manual_seed(0)
    planner = Planner(TINY).eval()
    images = inputs(TINY)[0]
    task = torch.randint(0, TINY.vocab_size, (2, TINY.task_len))
    with torch.no_grad():
        first, last = planner_stages(planner, 2)
        torch.testing.assert_close(last(first((images, task))), planner(images, task), rtol=0, atol=0)
