"""π0 and π0.5: flashrt_ros computes what LeRobot 0.6.1 computes.

A reduced-size LeRobot policy with every parameter re-randomised is saved as a policy directory,
run through LeRobot's own pipeline (parity/lerobot_reference.py), then loaded by flashrt_ros
(no LeRobot import on that side) and fed the same raw images, state, token ids and noise.
fp32 on the CPU: actions max |diff| <= 1e-4 and cosine >= 0.99999; transforms tighter.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flashrt_ros.models.lerobot import load_policy
from parity.lerobot_reference import build, make_inputs, reference, save

ATOL, MIN_COS = 1e-4, 0.99999


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.fixture(scope="module", params=["pi0", "pi05"])
def case(request, tmp_path_factory):
    kind = request.param
    out = save(*build(kind, "tiny", seed=0), tmp_path_factory.mktemp(kind))
    inputs = make_inputs(kind, out, seed=0)
    tensors, strings = reference(kind, out, inputs)
    return kind, out, inputs, tensors, strings, load_policy(out)


def images_of(tensors):
    return [tensors[f"image.{i}"] for i in range(sum(k.startswith("image.") for k in tensors))]


def test_images_reach_the_model_as_lerobot_gives_them(case):
    kind, _, _, ref, _, ours = case
    got = ours.model.prepare_images(images_of(ref))
    for i in range(got.shape[1]):
        assert torch.equal(got[:, i], ref[f"model.images.{i}"]), f"camera {i} differs after resize-with-pad"


def test_state_normalisation_and_padding_match(case):
    kind, _, _, ref, _, ours = case
    norm = ours.normalize_state(ref["state"])
    assert torch.allclose(norm, ref["pre.state"], atol=1e-6, rtol=0), (norm - ref["pre.state"]).abs().max()
    if kind == "pi0":
        padded = torch.nn.functional.pad(norm, (0, 32 - norm.shape[1]))
        assert torch.allclose(padded, ref["model.state"], atol=1e-6, rtol=0)


def test_prompt_is_the_one_lerobot_tokenizes(case):
    """π0.5: the normalised state discretised into the prompt; π0: the task with a trailing newline."""
    kind, _, inputs, ref, strings, ours = case
    state = ref["pre.state"].numpy() if kind == "pi05" else [None] * len(inputs["task"])
    assert [ours.prompt(task, s) for task, s in zip(inputs["task"], state)] == strings["prompt"]


def test_model_actions_match(case):
    kind, _, _, ref, _, ours = case
    state = torch.nn.functional.pad(ours.normalize_state(ref["state"]), (0, 32 - ref["state"].shape[1]))
    out = ours.model(ours.model.prepare_images(images_of(ref)), ref["model.img_masks"], ref["tokens"],
                     ref["token_mask"], state, ref["noise"])[..., : ours.action_dim]
    diff = float((out - ref["model.actions"]).abs().max())
    print(f"{kind} model actions: max |diff| {diff:.2e}, cos {cosine(out, ref['model.actions']):.8f}")
    assert diff <= ATOL and cosine(out, ref["model.actions"]) >= MIN_COS


def test_end_to_end_actions_match(case):
    kind, _, _, ref, _, ours = case
    out = ours.predict(images_of(ref), ref["state"], ref["tokens"], ref["token_mask"], ref["noise"])
    scale = float(ref["actions"].abs().max())
    diff = float((out - ref["actions"]).abs().max())
    print(f"{kind} unnormalised actions: max |diff| {diff:.2e} (max |action| {scale:.2f})")
    assert diff <= ATOL * max(1.0, scale) and cosine(out, ref["actions"]) >= MIN_COS


def test_the_check_can_fail(case):
    """One expert weight nudged by 1% of its scale: the comparison must notice."""
    kind, _, _, ref, _, ours = case
    w = ours.model.expert[-1].mlp.down_proj.weight
    saved = w.clone()
    try:
        with torch.no_grad():
            w.add_(0.01 * w.abs().mean())
        out = ours.predict(images_of(ref), ref["state"], ref["tokens"], ref["token_mask"], ref["noise"])
        assert float((out - ref["actions"]).abs().max()) > ATOL
    finally:
        with torch.no_grad():
            w.copy_(saved)


def test_rows_and_noise_matter(case):
    """Non-vacuous: the two rows differ and the output is not the noise passed through."""
    _, _, _, ref, _, _ = case
    a = ref["model.actions"]
    assert float((a[0] - a[1]).abs().max()) > 1e-2
    assert float((a - ref["noise"][..., : a.shape[-1]]).abs().mean()) > 1e-2
    assert np.isfinite(a.numpy()).all()
