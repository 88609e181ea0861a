"""SmolVLA: flashrt_ros computes what LeRobot 0.6.1 computes.

A reduced-size LeRobot SmolVLA (4 of 6 VLM layers kept, self/cross attention interleaved, expert 0.75x
as wide, two 240x320 cameras resized with padding to 256, 7-dof state padded to 32, chunk 50, 10 Euler
steps) with every parameter re-randomised is saved as a policy directory and run through LeRobot's
own pipeline (parity/lerobot_reference.py). Our network is built from that directory's config.json,
the VLM config.json it names and model.safetensors through SmolVLA.map_key — no LeRobot on that side —
and fed the same images, state, token ids and noise. More layer layouts (all-cross with fewer expert
layers, self-attention only, every third layer, an absent camera, a padded prefix) are built here
from the same pieces and compared against LeRobot's sample_actions on all 32 action dims.
fp32 on the CPU: actions max |diff| <= 1e-4 and cosine >= 0.99999; images bit-exact.

Run: HF_HUB_OFFLINE=1 PYTHONPATH=. .venv-lerobot/bin/python -m pytest parity/test_parity_smolvla.py
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flashrt_ros.models.lerobot import load_policy
from flashrt_ros.models.lerobot.smolvla import SMOLVLM2_500M, SmolVLA
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from parity.lerobot_reference import (ARCH, CAMERA_HW, CAMERAS, build, make_inputs, reference, rerandomise, save,
                                      write_smolvlm)

ATOL, MIN_COS = 1e-4, 0.99999
ACTION_DIM = 7


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def network_from(policy_dir: Path) -> SmolVLA:
    """Our network from LeRobot's saved files alone: config.json, the VLM config it names, and
    model.safetensors through map_key (strict: every tensor of ours filled, nothing left over)."""
    cfg = json.loads((policy_dir / "config.json").read_text())
    vlm = json.loads((Path(cfg["vlm_model_name"]) / "config.json").read_text())
    net = SmolVLA(cfg, vlm)
    weights = {}
    for key, value in load_file(str(policy_dir / "model.safetensors")).items():
        name = SmolVLA.map_key(key)
        if name is not None:
            weights[name] = value
    net.load_state_dict(weights, strict=True)
    return net.eval()


# --- the reference policy directory (parity/lerobot_reference.py, LeRobot's pipeline end to end) ----


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    out = save(*build("smolvla", "tiny", seed=0), tmp_path_factory.mktemp("smolvla"))
    inputs = make_inputs("smolvla", out, seed=0)
    ref, _ = reference("smolvla", out, inputs)
    return out, ref, network_from(out)


def images_of(ref):
    return [ref[f"image.{i}"] for i in range(len(CAMERAS))]


def our_actions(net: SmolVLA, ref) -> torch.Tensor:
    """Our forward on exactly what LeRobot handed its model (padded normalised state, masks)."""
    return net(net.prepare_images(images_of(ref)), ref["model.img_masks"], ref["tokens"], ref["token_mask"],
               ref["model.state"], ref["noise"])


def test_images_reach_the_model_as_lerobot_gives_them(case):
    _, ref, net = case
    got = net.prepare_images(images_of(ref))
    assert got.shape == (2, len(CAMERAS), 3, net.image_size, net.image_size)
    for i in range(len(CAMERAS)):
        assert torch.equal(got[:, i], ref[f"model.images.{i}"]), f"camera {i} differs after resize-with-pad"


def test_model_actions_match(case):
    _, ref, net = case
    out = our_actions(net, ref)[..., :ACTION_DIM]
    diff = float((out - ref["model.actions"]).abs().max())
    print(f"smolvla model actions: max |diff| {diff:.2e}, cos {cosine(out, ref['model.actions']):.8f}")
    assert diff <= ATOL and cosine(out, ref["model.actions"]) >= MIN_COS


def test_end_to_end_through_the_loader(case):
    """The lead's load_policy (convert_state_dict, finalize, normalisers) around the same network."""
    out_dir, ref, _ = case
    policy = load_policy(out_dir)
    out = policy.predict(images_of(ref), ref["state"], ref["tokens"], ref["token_mask"], ref["noise"])
    scale = float(ref["actions"].abs().max())
    diff = float((out - ref["actions"]).abs().max())
    print(f"smolvla unnormalised actions: max |diff| {diff:.2e} (max |action| {scale:.2f})")
    assert diff <= ATOL * max(1.0, scale) and cosine(out, ref["actions"]) >= MIN_COS


# Every path the actions depend on, each nudged by 1% of its mean magnitude: the comparison must notice.
LIVE_WEIGHTS = (
    "vision.encoder.layers.0.mlp.fc1.weight",  # SigLIP
    "connector.weight",                         # pixel shuffle -> text width
    "embed.weight",                             # language tokens
    "state_proj.weight",                        # the state token
    "vlm.1.self_attn.k_proj.weight",            # a VLM layer the expert cross-attends to (K only via k_proj)
    "vlm.3.self_attn.v_proj.weight",            # the last VLM layer: only its K/V are read
    "expert.0.self_attn.k_proj.weight",         # expert self-attention
    "expert.1.self_attn.v_proj.weight",         # expert cross-attention: projects the VLM's cached V
    "action_time_mlp_in.weight",                # time + action mixing
    "expert_norm.weight",
)


@pytest.mark.parametrize("name", LIVE_WEIGHTS)
def test_the_check_can_fail(case, name):
    _, ref, net = case
    w = net.get_parameter(name)
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.add_(0.01 * w.abs().mean())
        out = our_actions(net, ref)[..., :ACTION_DIM]
        assert float((out - ref["model.actions"]).abs().max()) > ATOL, f"{name} does not reach the actions"
    finally:
        with torch.no_grad():
            w.copy_(saved)


def test_the_last_vlm_layer_output_is_never_read(case):
    """Only its K/V are: we skip its queries, attention output and MLP, which LeRobot computes and throws
    away. Perturbing them must change nothing."""
    _, ref, net = case
    before = our_actions(net, ref)
    last = net.vlm[-1]
    saved = {n: p.detach().clone() for n, p in last.named_parameters()}
    try:
        with torch.no_grad():
            for n, p in last.named_parameters():
                if n.startswith(("self_attn.q_proj", "self_attn.o_proj", "post_attention_layernorm", "mlp.")):
                    p.mul_(3.0)
        assert torch.equal(our_actions(net, ref), before)
    finally:
        with torch.no_grad():
            for n, p in last.named_parameters():
                p.copy_(saved[n])


def test_rows_and_noise_matter(case):
    """Non-vacuous: the two rows differ and the output is not the noise passed through."""
    _, ref, _ = case
    a = ref["model.actions"]
    assert float((a[0] - a[1]).abs().max()) > 1e-2
    assert float((a - ref["noise"][..., :ACTION_DIM]).abs().mean()) > 1e-2
    assert torch.isfinite(a).all()


def test_forward_is_one_graph(case):
    """No graph breaks (no .item(), no Python branching on tensor values): a proxy on the CPU for
    capturing forward in one CUDA graph."""
    _, ref, net = case
    traced = torch.compile(net, backend="eager", fullgraph=True)
    args = (net.prepare_images(images_of(ref)), ref["model.img_masks"], ref["tokens"], ref["token_mask"],
            ref["model.state"], ref["noise"])
    assert float((traced(*args) - net(*args)).abs().max()) <= 1e-6


def test_bfloat16_runs_close_to_float32(case):
    out_dir, ref, net = case
    half = network_from(out_dir).finalize("cpu", torch.bfloat16)
    assert half.connector.weight.dtype == torch.bfloat16 and half.time_emb.dtype == torch.float32
    out = our_actions(half, ref)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert cosine(out, our_actions(net, ref)) >= 0.999


# --- more layer layouts, built here from the reference module's pieces ------------------------------

TINY = ARCH["smolvla"]["tiny"]
LAYOUTS = {
    "interleaved, absent camera, padded prefix": dict(prefix_length=60),
    "all cross-attention, half as many expert layers": dict(self_attn_every_n_layers=-1, num_expert_layers=2),
    "self-attention only": dict(attention_mode="self_attn"),
    "self-attention every third layer": dict(self_attn_every_n_layers=3),
}


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return write_smolvlm(tmp_path_factory.mktemp("smolvlm"), TINY)


def lerobot_smolvla(vlm_dir: Path, seed: int, **layout) -> SmolVLAPolicy:
    side = TINY["vision"]["image_size"]
    config = SmolVLAConfig(
        vlm_model_name=str(vlm_dir), load_vlm_weights=False, chunk_size=50, n_action_steps=50, num_steps=10,
        num_vlm_layers=TINY["num_vlm_layers"], resize_imgs_with_padding=(side, side), device="cpu",
        input_features={**{k: PolicyFeature(FeatureType.VISUAL, (3, *CAMERA_HW)) for k in CAMERAS},
                        "observation.state": PolicyFeature(FeatureType.STATE, (ACTION_DIM,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))}, **layout)
    with contextlib.redirect_stdout(io.StringIO()):
        policy = SmolVLAPolicy(config)
    rerandomise(policy, seed)
    return policy.eval()


def layout_batch(seed: int, absent_camera: bool):
    gen = torch.Generator().manual_seed(seed)
    B, L = 2, 12
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 8:] = False
    batch = {k: torch.rand(B, 3, *CAMERA_HW, generator=gen) for k in CAMERAS}
    batch["observation.state"] = torch.randn(B, ACTION_DIM, generator=gen)
    batch["observation.language.tokens"] = torch.where(mask, torch.randint(3, 49152, (B, L), generator=gen), 2)
    batch["observation.language.attention_mask"] = mask
    if absent_camera:  # row 1 has no wrist camera this time
        batch[f"{CAMERAS[1]}_padding_mask"] = torch.tensor([True, False])
    return batch, torch.randn(B, 50, 32, generator=gen)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_match_on_all_action_dims(layout, vlm_dir, tmp_path):
    policy = lerobot_smolvla(vlm_dir, seed=1, **LAYOUTS[layout])
    policy.save_pretrained(tmp_path)
    batch, noise = layout_batch(seed=2, absent_camera="absent" in layout)
    with torch.no_grad():
        images, img_masks = policy.prepare_images(batch)
        state = policy.prepare_state(batch)
        tokens, mask = batch["observation.language.tokens"], batch["observation.language.attention_mask"]
        want = policy.model.sample_actions(images, img_masks, tokens, mask, state, noise=noise.clone())
    net = network_from(tmp_path)
    got_images = net.prepare_images([batch[k] for k in CAMERAS])
    assert torch.equal(got_images, torch.stack(images, dim=1))
    got = net(got_images, torch.stack(img_masks, dim=1), tokens, mask, state, noise)
    diff = float((got - want).abs().max())
    print(f"{layout}: max |diff| {diff:.2e}, cos {cosine(got, want):.8f}")
    assert got.shape == want.shape == (2, 50, 32)
    assert diff <= ATOL and cosine(got, want) >= MIN_COS


def test_a_layout_lerobot_cannot_run_is_refused(vlm_dir, tmp_path):
    """Interleaved attention with fewer expert layers pairs a cross-shaped expert layer with a
    self-attention VLM layer: LeRobot fails on the shapes, we refuse at construction."""
    layout = dict(self_attn_every_n_layers=2, num_expert_layers=2)
    policy = lerobot_smolvla(vlm_dir, seed=1, **layout)
    batch, noise = layout_batch(seed=2, absent_camera=False)
    with pytest.raises(RuntimeError), torch.no_grad():
        policy.predict_action_chunk(batch, noise=noise)
    policy.save_pretrained(tmp_path)
    with pytest.raises(NotImplementedError):
        network_from(tmp_path)


# --- full size --------------------------------------------------------------------------------------


def test_full_size_network_has_lerobots_tensors(tmp_path):
    """SMOLVLM2_500M and LeRobot's default SmolVLA config give, through map_key, exactly the tensor names
    and shapes LeRobot's own full-size SmolVLA has (both built on the meta device, no weights)."""
    vlm = write_smolvlm(tmp_path / "vlm", ARCH["smolvla"]["full"])
    config = SmolVLAConfig(
        vlm_model_name=str(vlm), load_vlm_weights=False, device="cpu",
        input_features={**{k: PolicyFeature(FeatureType.VISUAL, (3, *CAMERA_HW)) for k in CAMERAS},
                        "observation.state": PolicyFeature(FeatureType.STATE, (ACTION_DIM,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))})
    with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()):
        theirs = SmolVLAPolicy(config).state_dict()
        ours = SmolVLA(dict(vars(config)), SMOLVLM2_500M)
    mapped = {SmolVLA.map_key(k): tuple(v.shape) for k, v in theirs.items() if SmolVLA.map_key(k) is not None}
    assert mapped == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert ours.image_size == 512 and ours.expert_dims.width == 720 and ours.expert_dims.mlp_dim == 2048
    patches_per_token = ours.connector.in_features // SMOLVLM2_500M["vision_config"]["hidden_size"]
    assert (512 // 16) ** 2 // patches_per_token == 64  # image tokens per camera
