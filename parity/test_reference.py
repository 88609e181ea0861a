"""The reference side is sound: what LeRobot computes from a saved tiny policy is what it computed in
memory, bit for bit, and every input and path (each camera, state, tokens, noise, pi0.5's timestep
conditioning) reaches the actions, so parity against it cannot pass vacuously.

Runs in .venv-lerobot (`make parity`); tiny policies only, a few seconds on a CPU.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from lerobot.policies.pi_gemma import PiGemmaRMSNorm
from safetensors.torch import load_file

from parity import lerobot_reference as lr

SEED = 0


@pytest.fixture(scope="module", params=lr.KINDS)
def case(request, tmp_path_factory):
    """A tiny policy of each kind: built in memory, saved, reloaded by LeRobot; one run of each."""
    kind = request.param
    policy, pre, post = lr.build(kind, "tiny", SEED)
    feed = lr.attach_feed(pre)
    policy_dir = lr.save(policy, pre, post, tmp_path_factory.mktemp(kind))
    inputs = lr.make_inputs(kind, policy_dir, SEED)

    def run(inputs):
        return lr.run(policy, pre, post, feed, inputs)

    memory = run(inputs)
    saved = lr.reference(kind, policy_dir, inputs)
    return types.SimpleNamespace(kind=kind, policy=policy, run=run, dir=policy_dir, inputs=inputs,
                                 memory=memory, saved=saved)


def _changed(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_reloaded_policy_reproduces_the_in_memory_one_bit_for_bit(case):
    (mem, mem_strings), (ref, ref_strings) = case.memory, case.saved
    assert mem.keys() == ref.keys()
    for key in mem:
        assert mem[key].dtype == ref[key].dtype, key
        assert torch.equal(mem[key], ref[key]), f"{key} differs after save/load by {_changed(mem[key], ref[key])}"
    assert mem_strings == ref_strings


def test_saved_directory_is_a_standard_lerobot_policy_directory(case):
    names = {p.name for p in case.dir.iterdir()}
    assert {"config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json",
            "arch.json"} <= names
    assert any(n.startswith("policy_preprocessor_step_") and n.endswith("normalizer_processor.safetensors")
               for n in names)
    assert any(n.startswith("policy_postprocessor_step_") and n.endswith("unnormalizer_processor.safetensors")
               for n in names)
    config = json.loads((case.dir / "config.json").read_text())
    assert config["type"] == case.kind
    if case.kind == "smolvla":
        assert Path(config["vlm_model_name"]) == case.dir / "vlm"
        assert (case.dir / "vlm" / "config.json").is_file() and (case.dir / "vlm" / "tokenizer.json").is_file()
    arch = json.loads((case.dir / "arch.json").read_text())
    assert lr.arch_key(arch) == lr.arch_key(lr.ARCH["smolvla" if case.kind == "smolvla" else "pi"]["tiny"])


def test_every_saved_parameter_is_random_nonzero_and_nonconstant(case):
    with safe_open(str(case.dir / "model.safetensors"), framework="pt") as weights:
        bad = []
        for name in weights.keys():
            t = weights.get_tensor(name).float()
            if not bool(t.abs().gt(0).any()) or (t.numel() > 1 and float(t.std()) == 0.0):
                bad.append(name)
    assert not bad, f"all-zero or constant parameters: {bad}"


def test_actions_are_finite_varied_and_unnormalised(case):
    out, _ = case.memory
    model_actions, actions = out["model.actions"], out["actions"]
    assert actions.shape == model_actions.shape == (lr.BATCH, lr.CHUNK, lr.ACTION_DIM)
    assert torch.isfinite(actions).all()
    # O(1) in normalised units: neither collapsed nor blown up.
    assert 0.3 < float(model_actions.std()) < 10.0
    assert float(model_actions.abs().max()) < 50.0
    # Varies along the chunk, across action dims and across the two rows.
    assert float(model_actions.std(dim=1).min()) > 0.05
    assert float(model_actions.std(dim=2).min()) > 0.05
    assert _changed(model_actions[0], model_actions[1]) > 0.1
    # The postprocessor's stats really apply.
    assert _changed(actions, model_actions) > 0.1


def _perturbed(inputs: dict, what: str) -> dict:
    """A copy of `inputs` with row 0 of one input changed."""
    new = {k: (v.clone() if isinstance(v, torch.Tensor) else list(v)) for k, v in inputs.items()}
    if what == "noise":
        new["noise"][0] = torch.randn(new["noise"][0].shape, generator=torch.Generator().manual_seed(7))
    elif what.startswith("image."):
        new[what][0] = 1.0 - new[what][0]
    elif what == "state":
        new["state"][0] += 0.5
    elif what == "token":
        new["tokens"][0, 1] = (new["tokens"][0, 1] + 1) % 1000 + 3
    elif what == "padded token":
        last = int(new["token_mask"][0].sum())
        assert last < new["tokens"].shape[1], "row 0 must have padding"
        new["tokens"][0, last] = 7
    else:
        raise ValueError(what)
    return new


@pytest.mark.parametrize("what", ["noise", "image.0", "image.1", "state", "token"])
def test_each_input_reaches_the_actions_of_its_own_row(case, what):
    base, base_strings = case.memory
    out, strings = case.run(_perturbed(case.inputs, what))
    if case.kind == "pi05" and what == "state":
        # pi0.5 sees the state only as discretised numbers in the prompt, i.e. through the tokens
        # (fed here, not tokenized): the prompt must change, the actions cannot.
        assert strings["prompt"][0] != base_strings["prompt"][0]
        assert strings["prompt"][1] == base_strings["prompt"][1]
        assert torch.equal(out["actions"], base["actions"])
        return
    assert _changed(out["actions"][0], base["actions"][0]) > 1e-3, f"{what} does not reach the actions"
    torch.testing.assert_close(out["actions"][1], base["actions"][1], rtol=1e-5, atol=1e-5)


def test_padded_tokens_are_masked_out(case):
    base, _ = case.memory
    out, _ = case.run(_perturbed(case.inputs, "padded token"))
    torch.testing.assert_close(out["actions"], base["actions"], rtol=1e-5, atol=1e-5)


def test_model_sees_lerobots_resized_padded_images_and_padded_state(case):
    out, strings = case.memory
    side = 224 if case.kind != "smolvla" else lr.ARCH["smolvla"]["tiny"]["vision"]["image_size"]
    for i in range(len(lr.CAMERAS)):
        image = out[f"model.images.{i}"]
        assert image.shape == (lr.BATCH, 3, side, side)
        assert float(image.min()) >= -1.0 and float(image.max()) <= 1.0
        assert float(image.min()) == -1.0  # the pad band of a 4:3 frame in a square, at -1
    assert out["model.img_masks"].all()
    if case.kind != "pi05":
        state = out["model.state"]
        assert state.shape == (lr.BATCH, 32)
        assert torch.equal(state[:, : lr.STATE_DIM], out["pre.state"])
        assert not state[:, lr.STATE_DIM:].any()
    assert strings["image_keys"] == list(lr.CAMERAS)


def test_pi05_timestep_conditioning_is_live():
    """Zeroing the weights of the expert's adaRMS projections (as LeRobot initialises them: the
    modulation then no longer depends on the timestep) must change the actions."""
    policy, pre, post = lr.build("pi05", "tiny", SEED)
    feed = lr.attach_feed(pre)
    inputs = lr.make_inputs("pi05", policy, SEED)
    base, _ = lr.run(policy, pre, post, feed, inputs)
    dense = [m.dense for m in policy.modules() if isinstance(m, PiGemmaRMSNorm)
             and m.dense is not None]
    assert len(dense) == 2 * lr.ARCH["pi"]["tiny"]["expert"]["num_hidden_layers"] + 1
    with torch.no_grad():
        for d in dense:
            d.weight.zero_()
    out, _ = lr.run(policy, pre, post, feed, inputs)
    assert _changed(out["actions"], base["actions"]) > 1e-2


def test_prompt_is_what_lerobots_text_steps_make_of_the_task(case):
    _, strings = case.memory
    if case.kind != "pi05":  # a newline appended unless present
        assert strings["prompt"] == ["pick up the red_cube\n", "open the top drawer\n"]
        return
    assert strings["prompt"][0].startswith("Task: pick up the red cube, State: ")
    assert strings["prompt"][0].endswith(";\nAction: ")
    # Row 1's state has one value below q01 and one above q99: LeRobot writes -1 and 255.
    assert strings["prompt"][1].startswith("Task: open the top drawer, State: -1 255 ")
    bins = [int(b) for b in strings["prompt"][0].split("State: ")[1].split(";")[0].split()]
    assert len(bins) == lr.STATE_DIM and all(0 <= b <= 255 for b in bins)


def test_pi_full_preset_is_what_lerobot_builds_unpatched():
    """ARCH["pi"]["full"] (what arch.json of a full policy says, and what decides that no patch is
    applied at load) matches LeRobot's own variant dims; built on the meta device, no memory."""
    for kind in ("pi0", "pi05"):
        config = lr._config(kind, "full", "cpu", "float32", None)
        model_cls = lr.modeling_pi0.PI0Pytorch if kind == "pi0" else lr.modeling_pi05.PI05Pytorch
        with torch.device("meta"):
            model = model_cls(config)
        arch = lr.describe_architecture(types.SimpleNamespace(name=kind, model=model, config=config))
        assert lr.arch_key(arch) == lr.arch_key(lr.ARCH["pi"]["full"]), kind


def test_dims_patch_is_restored():
    originals = {m: (m.get_gemma_config, m.PaliGemmaForConditionalGenerationWithPiGemma, m.PiGemmaForCausalLM)
                 for m in lr.MODELING.values()}
    with lr.pi_dims(lr.ARCH["pi"]["tiny"]):
        assert lr.modeling_pi0.get_gemma_config("gemma_2b").width == 128
    for m, names in originals.items():
        assert (m.get_gemma_config, m.PaliGemmaForConditionalGenerationWithPiGemma, m.PiGemmaForCausalLM) == names
    assert lr.modeling_pi0.get_gemma_config("gemma_2b").width == 2048


def test_token_feed_refuses_a_length_the_pipeline_would_not_produce():
    feed = lr.TokenFeed()
    feed.feed(torch.zeros((2, 10), dtype=torch.int64), torch.ones((2, 10), dtype=torch.bool))
    with pytest.raises(ValueError, match="pads to 48"):
        feed(["a", "b"], max_length=48, padding="max_length")
    with pytest.raises(ValueError, match="3 prompts"):
        feed(["a", "b", "c"], max_length=10, padding="longest")


def test_cli_writes_the_reference_next_to_the_policy(tmp_path):
    lr.main(["--kind", "pi05", "--size", "tiny", "--seed", "3", "--out", str(tmp_path / "p"), "--timing", "2"])
    tensors = load_file(str(tmp_path / "p" / "reference.safetensors"))
    meta = json.loads((tmp_path / "p" / "reference.json").read_text())
    expected = {"image.0", "image.1", "state", "tokens", "token_mask", "noise", "model.images.0",
                "model.images.1", "model.img_masks", "pre.state", "model.actions", "actions"}
    assert set(tensors) == expected
    assert tensors["tokens"].dtype == torch.int64 and tensors["token_mask"].dtype == torch.bool
    assert tensors["noise"].shape == (2, 50, 32) and tensors["actions"].shape == (2, 50, 7)
    assert meta["kind"] == "pi05" and len(meta["prompt"]) == 2 and meta["timing"]["p50_ms"] > 0
    # Regenerating from the saved directory alone gives the same numbers.
    again, _ = lr.reference("pi05", tmp_path / "p", lr.make_inputs("pi05", tmp_path / "p", 3))
    for key, value in tensors.items():
        assert torch.equal(again[key], value), key
