"""SmolVLA (LeRobot 0.6.1) as one static-shape inference network.

    images -> SmolVLM vision (SigLIP) -> pixel shuffle -> connector, scaled by sqrt(width)
    + language tokens (embedding * sqrt(width)) + one state token (state_proj)   = the prefix,
    encoded ONCE per chunk by the first `num_vlm_layers` SmolVLM (Llama) layers; their per-layer
    post-RoPE K/V are kept as plain tensors.
    noise -> num_steps forward-Euler steps of the action expert (a narrower Llama) -> actions.

Prefix layout and attention (LeRobot's embed_prefix / make_att_2d_masks):
    [cam0 patches | cam1 patches | ... | language (L) | state (1) | zeros up to prefix_length]
    Images and language attend to each other bidirectionally (padding excluded: token_mask, and
    img_masks for absent cameras); the state token opens a new block, so it sees everything before
    it and nothing before it sees the state. Positions are cumsum(valid) - 1.
Expert layer i pairs with VLM layer i (or every k-th VLM layer when num_expert_layers < num_vlm_layers;
VLM layers without an expert layer pass the action tokens through unchanged):
    self-attention layers (i % self_attn_every_n_layers == 0, or every layer for attention_mode
    "self_attn"): the expert's own q/k/v, RoPE at positions n_valid_prefix + 0..chunk-1, keys
    [prefix K/V of VLM layer i ; own K/V], mask = valid prefix + causal among the action tokens.
    cross-attention layers (the others): the expert's q (RoPE at positions 0..chunk-1) attends to
    its own k_proj/v_proj applied to VLM layer i's cached post-RoPE K/V ([B, Lp, kv_heads * head_dim]
    in, no RoPE on top), mask = valid prefix. Those projected K/V do not depend on the step, so they
    are computed once per chunk, not once per step.
The velocity is action_out_proj(expert_norm(x)); x_t <- x_t + dt * v_t with dt = -1/num_steps from
t = 1 (noise). The flow time enters as a sine-cosine embedding concatenated to action_in_proj(x_t)
and mixed by action_time_mlp_in -> silu -> action_time_mlp_out; the times are static, so their
embeddings are a float32 table (`time_emb`, [num_steps, expert width]) built at construction.

LeRobot details kept on purpose: RoPE uses wavelength 10000 whatever the VLM config's rope_theta says
(LeRobot's own apply_rope ignores it; SmolVLM2's is 100000); the expert's cross-attention queries
restart at position 0 while its self-attention ones continue after the prefix; the suffix is causal.
The fast path (`compile_layers()`, the engine's default on a GPU): the Llama layers as plain functions
of their weight tensors (vlm_layer, expert_self_layer, expert_cross_layer; q/k/v and gate/up one matmul
each where the weights allow), torch.compile'd once per layer kind and shared by every layer and denoise
step; the prefix's K/V in one preallocated cache with the action tokens' slots behind it (no per-step
concatenation); on a GPU the grouped-query heads folded into rows and, with kernels=True, the attention
through the Triton row kernel. compile_layers(False) is the plain module path above, untouched.

Left out because nothing reads them: the last VLM layer's queries, attention output and MLP (only its
K/V are used; its weights are still loaded), the VLM final norm and lm_head. Softmax and RMSNorm statistics are float32; in bfloat16 the attention runs through
common.attention (SDPA) rather than LeRobot's fp32-upcast eager matmuls.

Key map (LeRobot state dict -> ours; a leading "model." is optional):
    vlm_with_expert.vlm.model.vision_model.*                       -> vision.*
    vlm_with_expert.vlm.model.connector.modality_projection.proj.* -> connector.*
    vlm_with_expert.vlm.model.text_model.embed_tokens.*            -> embed.*
    vlm_with_expert.vlm.model.text_model.layers.N.*                -> vlm.N.*
    vlm_with_expert.lm_expert.layers.N.*                           -> expert.N.*
    vlm_with_expert.lm_expert.norm.*                               -> expert_norm.*
    state_proj, action_in_proj, action_out_proj, action_time_mlp_in, action_time_mlp_out -> same
    unused at inference (None): vlm_with_expert.vlm.lm_head.*, vlm_with_expert.vlm.model.text_model.norm.*
Layer sub-names are HF Llama's: input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm,
mlp.{gate,up,down}_proj. LeRobot saves only the first num_vlm_layers VLM layers.

Not supported (explicit errors): add_image_special_tokens=True, non-square resize_imgs_with_padding,
a resize size other than the vision config's image_size (or a patch grid where SmolVLM's bucketized
vision positions are not the identity), and expert/attention layouts on which LeRobot's own module
fails. `empty_cameras` is the caller's: an absent camera is an all-(-1) image
(prepare_images of a zero image) with img_masks False.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import common
from .common import (additive_mask, aligned_rows, apply_rope, attention, block_mask, euler_times, fit_state_dict,
                     fold_mask, parameter_bytes, rope_cos_sin, sinusoidal_time_embedding)
from ..rtc import Guidance, euler_guided
from .quant import linear
from .siglip import VisionTransformer

ROPE_WAVELENGTH = 10_000.0  # LeRobot's apply_rope default, used regardless of the VLM's rope_theta

# HuggingFaceTB/SmolVLM2-500M-Video-Instruct, the config.json fields this module reads (SmolLM2-360M
# text model, SigLIP base/16 at 512 px, 4x4 pixel shuffle -> 64 tokens per image).
SMOLVLM2_500M: dict = {
    "model_type": "smolvlm",
    "scale_factor": 4,
    "image_token_id": 49190,
    "text_config": {
        "model_type": "llama",
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "head_dim": 64,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "max_position_embeddings": 8192,
        "vocab_size": 49280,
        "attention_bias": False,
        "mlp_bias": False,
        "pad_token_id": 2,
    },
    "vision_config": {
        "model_type": "smolvlm_vision",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    },
}


@dataclass(frozen=True)
class LlamaDims:
    width: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    eps: float
    attention_bias: bool = False
    mlp_bias: bool = False


def expert_mlp_dim(width: int, multiplier: int = 4, multiple_of: int = 256) -> int:
    """LeRobot's get_intermediate_size for the action expert (480 -> 1280, 720 -> 2048)."""
    hidden = int(multiplier * int(2 * width / 3))
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class RMSNorm(nn.Module):
    """Llama RMSNorm: w * (x / rms(x)), statistics in float32, normalised x cast back before the weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    """q/k/v/o projections. `kv_in` is the width k_proj/v_proj read: the layer's own width, or for an
    expert cross-attention layer the VLM's kv_heads * head_dim (they read the VLM's cached K/V)."""

    def __init__(self, d: LlamaDims, kv_in: int):
        super().__init__()
        self.d = d
        self.q_proj = nn.Linear(d.width, d.num_heads * d.head_dim, bias=d.attention_bias)
        self.k_proj = nn.Linear(kv_in, d.num_kv_heads * d.head_dim, bias=d.attention_bias)
        self.v_proj = nn.Linear(kv_in, d.num_kv_heads * d.head_dim, bias=d.attention_bias)
        self.o_proj = nn.Linear(d.num_heads * d.head_dim, d.width, bias=d.attention_bias)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, H * hd] -> [B, H, T, hd]"""
        return x.view(x.shape[0], x.shape[1], -1, self.d.head_dim).transpose(1, 2)


class MLP(nn.Module):
    def __init__(self, d: LlamaDims):
        super().__init__()
        self.gate_proj = nn.Linear(d.width, d.mlp_dim, bias=d.mlp_bias)
        self.up_proj = nn.Linear(d.width, d.mlp_dim, bias=d.mlp_bias)
        self.down_proj = nn.Linear(d.mlp_dim, d.width, bias=d.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLayer(nn.Module):
    def __init__(self, d: LlamaDims, kv_in: int | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(d.width, d.eps)
        self.self_attn = Attention(d, d.width if kv_in is None else kv_in)
        self.post_attention_layernorm = RMSNorm(d.width, d.eps)
        self.mlp = MLP(d)

    def finish(self, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """Residual attention output, then the residual MLP."""
        x = x + self.self_attn.o_proj(att.to(self.input_layernorm.weight.dtype))   # o_proj may be quantised
        return x + self.mlp(self.post_attention_layernorm(x))


def _smolvlm_position_ids(patches_per_side: int) -> torch.Tensor:
    """The position ids HF's SmolVLMVisionEmbeddings gives a full-size image with a full patch mask
    (a bucketize of fractional coordinates; float rounding makes it differ from arange for some sizes)."""
    p, cpu = patches_per_side, torch.device("cpu")
    boundaries = torch.arange(1 / p, 1.0, 1 / p, device=cpu)
    coords = torch.arange(p, dtype=torch.float32, device=cpu) * (1.0 / torch.tensor([p], device=cpu))
    coords = torch.clamp(coords, max=1.0 - 1e-6)
    buckets = torch.bucketize(coords, boundaries, right=True)
    return (buckets[:, None] * p + buckets[None, :]).reshape(-1)


def _resize_with_pad_top_left(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """LeRobot's resize_with_pad (the SmolVLA/xVLA convention): keep the aspect ratio, bilinear without
    antialias, then pad with 0 on the LEFT and TOP. An image already at the target size is untouched."""
    h, w = img.shape[-2:]
    if (h, w) == (height, width):
        return img
    ratio = max(w / width, h / height)
    rh, rw = int(h / ratio), int(w / ratio)
    img = F.interpolate(img, size=(rh, rw), mode="bilinear", align_corners=False)
    return F.pad(img, (max(0, width - rw), 0, max(0, height - rh), 0), value=0.0)


def pixel_shuffle(x: torch.Tensor, s: int) -> torch.Tensor:
    """SmolVLMConnector.pixel_shuffle: [N, P, D] -> [N, P / s^2, D * s^2] (s x s patch blocks merged)."""
    n, seq, d = x.shape
    side = math.isqrt(seq)
    x = x.reshape(n, side, side // s, d * s).permute(0, 2, 1, 3)
    x = x.reshape(n, side // s, side // s, d * s * s).permute(0, 2, 1, 3)
    return x.reshape(n, seq // (s * s), d * s * s)


# --- the fast path: the layers as functions of tensors ------------------------------------------------
# The weights are arguments, not modules closed over: torch.compile guards on shapes and dtypes, not on
# which layer it is given, so one compiled graph serves every layer of a kind and every denoise step
# (SmolVLA.compile_layers). Same op order as the modules above (LlamaLayer, RMSNorm, MLP).

class LlamaWeights(NamedTuple):
    norm1: torch.Tensor     # input_layernorm.weight
    norm2: torch.Tensor     # post_attention_layernorm.weight
    qkv: tuple              # ((w, b),): [q; k; v] in one matmul, or ((wq, bq), (wk, bk), (wv, bv)); cross: ((wq, bq),)
    o: tuple                # (w, b)
    gate_up: tuple          # ((w, b),): [gate; up] in one matmul, or ((wg, bg), (wu, bu))
    down: tuple             # (w, b)


def layer_weights(layer: LlamaLayer, cross: bool = False) -> LlamaWeights:
    """A LlamaLayer's tensors for the layer functions. Plain weights (not quantised) are concatenated
    into one q/k/v and one gate/up matrix (new tensors: the modules keep theirs for the plain path);
    quantised ones (QuantLinear: .weight is a QuantWeight) stay one matmul each. A cross-attention expert
    layer's k/v read the VLM's K/V once per chunk, outside the layer: only its q is here."""
    a, m = layer.self_attn, layer.mlp

    def pair(lin):
        return (lin.weight, lin.bias)

    def joined(*lins):
        ws, bs = [lin.weight for lin in lins], [lin.bias for lin in lins]
        if len(lins) == 1 or not all(isinstance(w, torch.Tensor) for w in ws):
            return tuple(pair(lin) for lin in lins)
        if all(b is None for b in bs):
            return ((torch.cat(ws), None),)
        if all(isinstance(b, torch.Tensor) for b in bs):
            return ((torch.cat(ws), torch.cat(bs)),)
        return tuple(pair(lin) for lin in lins)
    qkv = joined(a.q_proj) if cross else joined(a.q_proj, a.k_proj, a.v_proj)
    return LlamaWeights(layer.input_layernorm.weight, layer.post_attention_layernorm.weight, qkv, pair(a.o_proj),
                        joined(m.gate_proj, m.up_proj), pair(m.down_proj))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm.forward as a function."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[B, T, H * hd] -> [B, H, T, hd]"""
    return x.reshape(x.shape[0], x.shape[1], -1, head_dim).transpose(1, 2)


def _qkv(h: torch.Tensor, w: LlamaWeights, kv_rows: int):
    if len(w.qkv) == 1:
        out = linear(h, *w.qkv[0])
        return out.split([out.shape[-1] - 2 * kv_rows, kv_rows, kv_rows], dim=-1)
    return tuple(linear(h, *p) for p in w.qkv)


def _finish(x: torch.Tensor, att: torch.Tensor, w: LlamaWeights, eps: float) -> torch.Tensor:
    """LlamaLayer.finish: the residual attention output, then the residual MLP."""
    x = x + linear(att.to(w.norm1.dtype), *w.o)
    h = rms_norm(x, w.norm2, eps)
    if len(w.gate_up) == 1:
        gate, up = linear(h, *w.gate_up[0]).chunk(2, dim=-1)
    else:
        gate, up = (linear(h, *p) for p in w.gate_up)
    return x + linear(F.silu(gate) * up, *w.down)


def _attend(q, k, v, mask, fast: bool) -> torch.Tensor:
    # a mask with more rows than q has is folded (fold_mask): grouped-query heads as rows
    return attention(q, k, v, mask, q.shape[-1] ** -0.5, mask.shape[-2] != q.shape[2], fast=fast)


def vlm_kv(x, w: LlamaWeights, k_cache, v_cache, cos, sin, eps: float):
    """A VLM layer's normed input and post-RoPE K/V (written to the caches' first T slots) and its q."""
    hd, T = k_cache.shape[3], x.shape[1]
    h = rms_norm(x, w.norm1, eps)
    q, k, v = _qkv(h, w, k_cache.shape[1] * hd)
    k = apply_rope(_heads(k, hd), cos, sin)
    v = _heads(v, hd)
    k_cache[:, :, :T] = k
    v_cache[:, :, :T] = v
    return q, k, v


def vlm_layer(x, w: LlamaWeights, k_cache, v_cache, mask, cos, sin, eps: float, fast: bool = False) -> torch.Tensor:
    """One SmolVLM text layer over the prefix x [B, P, W]; its K/V go to the caches' first P slots."""
    q, k, v = vlm_kv(x, w, k_cache, v_cache, cos, sin, eps)
    q = apply_rope(_heads(q, k_cache.shape[3]), cos, sin)
    return _finish(x, _attend(q, k, v, mask, fast), w, eps)


def expert_self_layer(x, w: LlamaWeights, k_cache, v_cache, mask, cos, sin, eps: float,
                      fast: bool = False) -> torch.Tensor:
    """An expert self-attention layer over the action tokens x [B, H, W]: its own K/V go to the caches'
    last H slots (behind the paired VLM layer's prefix K/V) and it attends to all of them."""
    hd, T = k_cache.shape[3], x.shape[1]
    q, k, v = _qkv(rms_norm(x, w.norm1, eps), w, k_cache.shape[1] * hd)
    start = k_cache.shape[2] - T
    k_cache[:, :, start:] = apply_rope(_heads(k, hd), cos, sin)
    v_cache[:, :, start:] = _heads(v, hd)
    q = apply_rope(_heads(q, hd), cos, sin)
    return _finish(x, _attend(q, k_cache, v_cache, mask, fast), w, eps)


def expert_cross_layer(x, w: LlamaWeights, k, v, mask, cos, sin, eps: float, fast: bool = False) -> torch.Tensor:
    """An expert cross-attention layer: its q over the action tokens attends to the paired VLM layer's
    K/V projected by its own k_proj/v_proj (k, v [B, kv_heads, P, hd], once per chunk)."""
    q = apply_rope(_heads(linear(rms_norm(x, w.norm1, eps), *w.qkv[0]), k.shape[3]), cos, sin)
    return _finish(x, _attend(q, k, v, mask, fast), w, eps)


def action_in(x_t, t, w_in, b_in, w_time_in, b_time_in, w_time_out, b_time_out) -> torch.Tensor:
    """A denoise step's input: action_in_proj(x_t) with the step's time embedding t [W] (float32 table row)
    concatenated, through action_time_mlp_in -> silu -> action_time_mlp_out (SmolVLA._velocity's head)."""
    act = linear(x_t.to(w_in.dtype), w_in, b_in)
    t = t.to(act.dtype)[None, None].expand_as(act)
    return linear(F.silu(linear(torch.cat([act, t], dim=2), w_time_in, b_time_in)), w_time_out, b_time_out)


def action_out(x, x_t, norm, eps: float, w_out, b_out, dt: float) -> torch.Tensor:
    """A denoise step's output: x_t + dt * action_out_proj(expert_norm(x)) (float32)."""
    v = linear(rms_norm(x, norm, eps).to(w_out.dtype), w_out, b_out).float()
    return x_t + dt * v


class SmolVLA(nn.Module):
    """LeRobot's SmolVLA VLAFlowMatching for inference; forward() is the whole chunk (module docstring)."""

    # resize-with-pad as LeRobot's SmolVLAPolicy does it: bars left/top, no clamp (the frame kernel reads these)
    pad_centred, pad_clamp = False, False

    def __init__(self, cfg: dict, vlm: dict):
        super().__init__()
        if cfg.get("add_image_special_tokens", False):
            raise NotImplementedError("add_image_special_tokens=True is not supported")
        tc, vc = vlm["text_config"], vlm["vision_config"]
        if tc.get("model_type", "llama") != "llama" or tc.get("hidden_act", "silu") != "silu":
            raise NotImplementedError("SmolVLA's text model must be a silu Llama")
        # Missing keys take transformers' LlamaConfig / SmolVLMVisionConfig / SmolVLMConfig defaults.
        heads = tc.get("num_attention_heads", 32)
        text = LlamaDims(width=tc["hidden_size"], mlp_dim=tc["intermediate_size"], num_heads=heads,
                         num_kv_heads=tc.get("num_key_value_heads") or heads,
                         head_dim=tc.get("head_dim") or tc["hidden_size"] // heads,
                         eps=tc.get("rms_norm_eps", 1e-6), attention_bias=tc.get("attention_bias", False),
                         mlp_bias=tc.get("mlp_bias", False))
        exp_width = int(text.width * cfg.get("expert_width_multiplier", 0.75))
        expert = LlamaDims(width=exp_width, mlp_dim=expert_mlp_dim(exp_width), num_heads=text.num_heads,
                           num_kv_heads=text.num_kv_heads, head_dim=text.head_dim, eps=text.eps,
                           attention_bias=text.attention_bias, mlp_bias=text.mlp_bias)
        self.text_dims, self.expert_dims = text, expert

        size = cfg.get("resize_imgs_with_padding", (512, 512))
        if size is None or size[0] != size[1]:
            raise NotImplementedError(f"resize_imgs_with_padding must be square, got {size}")
        self.image_size = int(size[0])
        v_size, patch = vc.get("image_size", 224), vc.get("patch_size", 32)
        if v_size != self.image_size:
            raise NotImplementedError(f"images resized to {self.image_size} but the vision model is {v_size}: "
                                      "SmolVLM would interpolate its position grid, which we do not")
        side = v_size // patch
        if not torch.equal(_smolvlm_position_ids(side), torch.arange(side * side, device=torch.device("cpu"))):
            raise NotImplementedError(f"{side} patches per side: SmolVLM's bucketized vision positions "
                                      "are not the identity there")
        self.scale_factor = vlm.get("scale_factor", 2)
        v_hidden = vc.get("hidden_size", 1152)
        self.vision = VisionTransformer(v_hidden, vc.get("num_hidden_layers", 12),
                                        vc.get("num_attention_heads", 16), vc.get("intermediate_size", 3072),
                                        patch, v_size, vc.get("layer_norm_eps", 1e-6))
        self.connector = nn.Linear(v_hidden * self.scale_factor ** 2, text.width, bias=False)
        self.embed = nn.Embedding(tc.get("vocab_size", 32000), text.width)

        # Layer plan: which VLM layers cross-attend and which expert layer (if any) pairs with each.
        n_vlm = cfg.get("num_vlm_layers", -1)
        n_vlm = n_vlm if n_vlm > 0 else tc.get("num_hidden_layers", 32)
        n_exp = cfg.get("num_expert_layers", -1)
        n_exp = n_exp if n_exp > 0 else n_vlm
        if n_vlm % n_exp:
            raise ValueError(f"num_vlm_layers {n_vlm} is not a multiple of num_expert_layers {n_exp}")
        every = cfg.get("self_attn_every_n_layers", 2)
        use_cross = "cross" in cfg.get("attention_mode", "cross_attn")

        def is_cross(i: int) -> bool:  # LeRobot applies the same rule to VLM and to expert layer indices
            return use_cross and not (every > 0 and i % every == 0)

        stride = n_vlm // n_exp
        self.expert_of = [i // stride if i % stride == 0 else None for i in range(n_vlm)]
        self.cross = [is_cross(i) for i in range(n_vlm)]
        for i, j in enumerate(self.expert_of):
            if j is None and not self.cross[i]:
                raise NotImplementedError(f"VLM self-attention layer {i} has no expert layer (LeRobot fails here)")
            if j is not None and is_cross(j) != self.cross[i]:
                raise NotImplementedError(f"expert layer {j} is shaped for {'cross' if is_cross(j) else 'self'}-"
                                          f"attention but runs at VLM layer {i} (LeRobot fails here)")
        vlm_kv = text.num_kv_heads * text.head_dim
        self.vlm = nn.ModuleList(LlamaLayer(text) for _ in range(n_vlm))
        self.expert_cross = [is_cross(j) for j in range(n_exp)]
        self.expert = nn.ModuleList(LlamaLayer(expert, vlm_kv if is_cross(j) else None) for j in range(n_exp))
        self.expert_norm = RMSNorm(expert.width, expert.eps)

        self.chunk_size, self.num_steps = cfg.get("chunk_size", 50), cfg.get("num_steps", 10)
        self.max_state_dim, self.max_action_dim = cfg.get("max_state_dim", 32), cfg.get("max_action_dim", 32)
        self.prefix_length = cfg.get("prefix_length", -1)
        self.state_proj = nn.Linear(self.max_state_dim, text.width)
        self.action_in_proj = nn.Linear(self.max_action_dim, expert.width)
        self.action_out_proj = nn.Linear(expert.width, self.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * expert.width, expert.width)
        self.action_time_mlp_out = nn.Linear(expert.width, expert.width)
        # The flow times are static (1, 1 - 1/K, ...): their embeddings are a float32 table [K, width].
        self.min_period, self.max_period = cfg.get("min_period", 4e-3), cfg.get("max_period", 4.0)
        self.register_buffer("time_emb", self._time_table(torch.device("cpu")), persistent=False)
        self._fast = False      # compile_layers(): the layer functions (compiled) instead of the modules
        self._kernels = False   # compile_layers(kernels=True): the Triton attention kernel on a GPU
        self._fused = False     # no fused expert kernels for SmolVLA (the engine reads this)
        self._fold: bool | None = None   # grouped-query heads as rows in the fast path (None: on CUDA; tests: True)
        self._fast_weights: tuple | None = None   # (key, vlm LlamaWeights, expert LlamaWeights), built lazily
        self._vlm_layer, self._expert_self, self._expert_cross = vlm_layer, expert_self_layer, expert_cross_layer
        self._action_in, self._action_out = action_in, action_out

    def _time_table(self, device: torch.device) -> torch.Tensor:
        t = torch.tensor(euler_times(self.num_steps), dtype=torch.float32, device=device)
        return sinusoidal_time_embedding(t, self.expert_dims.width, self.min_period, self.max_period)

    # --- checkpoint edge ---------------------------------------------------------------------------
    @staticmethod
    def map_key(key: str) -> str | None:
        """LeRobot key -> ours, or None when the tensor is not used at inference."""
        k = key[len("model."):] if key.startswith("model.") else key
        table = (
            ("vlm_with_expert.vlm.model.vision_model.", "vision."),
            ("vlm_with_expert.vlm.model.connector.modality_projection.proj.", "connector."),
            ("vlm_with_expert.vlm.model.text_model.embed_tokens.", "embed."),
            ("vlm_with_expert.vlm.model.text_model.layers.", "vlm."),
            ("vlm_with_expert.lm_expert.layers.", "expert."),
            ("vlm_with_expert.lm_expert.norm.", "expert_norm."),
        )
        for old, new in table:
            if k.startswith(old):
                return new + k[len(old):]
        if k.startswith(("vlm_with_expert.vlm.lm_head.", "vlm_with_expert.vlm.model.text_model.norm.")):
            return None
        if k.startswith(("state_proj.", "action_in_proj.", "action_out_proj.", "action_time_mlp_in.",
                         "action_time_mlp_out.")):
            return k
        raise KeyError(f"unknown SmolVLA checkpoint tensor {key!r}")

    def convert_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A LeRobot SmolVLA state dict -> ours (every tensor of ours filled, or a KeyError naming the misfit)."""
        out = {name: value for key, value in sd.items() if (name := self.map_key(key)) is not None}
        return fit_state_dict(self, out, "SmolVLA")

    def weight_bytes(self) -> tuple[int, int]:
        """(bytes read once per chunk: vision, connector, VLM, and the cross-attention layers' K/V
        projections of the prefix; bytes read per denoise step: the rest of the expert and the action
        projections) for the memory-bandwidth floor."""
        cross_kv = sum(parameter_bytes(layer.self_attn.k_proj, layer.self_attn.v_proj)
                       for layer, cross in zip(self.expert, self.expert_cross) if cross)
        once = parameter_bytes(self.vision, self.connector, self.vlm) + cross_kv
        per_step = parameter_bytes(self.expert, self.expert_norm, self.action_in_proj, self.action_out_proj,
                                   self.action_time_mlp_in, self.action_time_mlp_out) - cross_kv
        return once, per_step

    @torch.no_grad()
    def finalize(self, device: torch.device | str, dtype: torch.dtype) -> "SmolVLA":
        """Move to `device`, cast to `dtype` (the time table is recomputed and kept float32); call once
        after loading the weights."""
        self.to(device=device)
        self.vision.fuse()
        return self.cast(dtype).eval().requires_grad_(False)

    @torch.no_grad()
    def cast(self, dtype: torch.dtype) -> "SmolVLA":
        """The network in `dtype`, its time table recomputed in float32 (see Pi0.cast)."""
        self.to(dtype=dtype)
        self.time_emb = self._time_table(self.action_in_proj.weight.device)
        return self

    def compile_layers(self, enabled: bool = True, backend: str = "inductor", kernels: bool = False,
                       fused: bool = False) -> "SmolVLA":
        """The fast path (as Pi0.compile_layers): the VLM and expert layers run as the layer functions
        above, torch.compile'd (dynamic=False, fullgraph=True, no cudagraph mode: the caller captures its
        own CUDA graph around forward()), one graph per layer kind (VLM, expert self-attention, expert
        cross-attention, SigLIP; and a denoise step's head and tail: action_in, action_out) and input
        shape, shared by all layers and steps. Matmuls stay cuBLAS.
        Compilation happens at the first forward of each shape: run one before capturing.
        kernels (CUDA): the attention through the Triton row kernel (grouped-query heads folded into
        rows; common.attention fast=True) instead of SDPA. fused: π0/π0.5 only (raises).
        compile_layers(False): the plain module path, exactly as before. RTC guidance (forward(...,
        guidance=...)) always runs the plain path."""
        if fused and enabled:
            raise NotImplementedError("compile_layers(fused=True): the fused expert kernels are π0/π0.5's, "
                                      "not for SmolVLA")
        import torch._dynamo
        for name in ("recompile_limit", "cache_size_limit"):   # see Pi0.compile_layers
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
        def maybe(fn, expert: bool = False):
            return common.compiled(fn, backend, expert) if enabled else fn
        self._fast, self._kernels, self._fused = bool(enabled), bool(enabled and kernels), False
        self._vlm_layer, self._expert_self = maybe(vlm_layer), maybe(expert_self_layer, True)
        self._expert_cross = maybe(expert_cross_layer, True)
        self._action_in, self._action_out = maybe(action_in, True), maybe(action_out, True)
        self._fast_weights = None   # rebuilt at the next fast forward (or dropped: the plain path)
        for layer in self.vision.encoder.layers:   # siglip.py's layer as it is: its bound forward, compiled
            vars(layer).pop("forward", None)
            if enabled:
                layer.forward = maybe(layer.forward)
        return self

    def _layer_weights(self) -> tuple[list[LlamaWeights], list[LlamaWeights]]:
        """The layer functions' weights, (re)built when the network's weights moved or changed dtype
        (finalize / cast / quantisation after compile_layers)."""
        def ref(lin):
            w = lin.weight
            t = w if isinstance(w, torch.Tensor) else w.q
            return type(w).__name__, t.dtype, t.device, t.data_ptr()
        key = tuple(ref(lin) for lin in (self.vlm[0].self_attn.q_proj, self.vlm[-1].mlp.down_proj,
                                         self.expert[0].self_attn.q_proj, self.expert[-1].mlp.down_proj))
        if self._fast_weights is None or self._fast_weights[0] != key:
            with torch.no_grad():
                self._fast_weights = (key, [layer_weights(layer) for layer in self.vlm],
                                      [layer_weights(layer, cross) for layer, cross in
                                       zip(self.expert, self.expert_cross)])
        return self._fast_weights[1], self._fast_weights[2]

    # --- input edge --------------------------------------------------------------------------------
    def prepare_images(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Cameras [B, 3, H, W] in [0, 1] -> [B, n, 3, R, R] in [-1, 1] as LeRobot's SmolVLAPolicy feeds its
        model: resize keeping the aspect ratio, pad left/top with 0 (black, -1 after scaling), x * 2 - 1."""
        R = self.image_size
        return torch.stack([_resize_with_pad_top_left(img, R, R) * 2.0 - 1.0 for img in images], dim=1)

    # --- the chunk ---------------------------------------------------------------------------------
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, n, 3, R, R] -> [B, n * tokens, width], scaled by sqrt(width) as LeRobot does (the constant
        rounded to the feature dtype)."""
        B, n = images.shape[:2]
        feats = self.connector(pixel_shuffle(self.vision(images.flatten(0, 1)), self.scale_factor))
        feats = feats * float(torch.tensor(self.text_dims.width ** 0.5, dtype=feats.dtype))  # host scalar: graph-safe
        return feats.reshape(B, n * feats.shape[1], -1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, img_masks: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor,
                state: torch.Tensor, noise: torch.Tensor, guidance: Guidance | None = None,
                features: torch.Tensor | None = None) -> torch.Tensor:
        """images [B, n, 3, R, R] in [-1, 1], img_masks [B, n] bool, tokens [B, L] int64, token_mask [B, L] bool,
        state [B, max_state_dim] (normalised, padded), noise [B, chunk, max_action_dim]
        -> actions [B, chunk, max_action_dim] float32 (normalised). guidance: RTC's prefix guidance at every
        denoise step (models/rtc.py); None: the plain loop. features: embed_images(images), computed before
        (as Pi0.forward); None: computed here."""
        dtype = self.action_in_proj.weight.dtype
        B, n = images.shape[:2]
        dev = images.device
        img = (self.embed_images(images) if features is None else features).to(dtype)
        lang = (self.embed(tokens) * math.sqrt(self.text_dims.width)).to(dtype)
        state_tok = self.state_proj(state.to(dtype))[:, None]
        prefix = torch.cat([img, lang, state_tok], dim=1)
        n_img = img.shape[1]
        pad = torch.cat([img_masks[:, :, None].expand(B, n, n_img // n).reshape(B, n_img), token_mask,
                         torch.ones(B, 1, dtype=torch.bool, device=dev)], dim=1)
        ar = torch.zeros_like(pad, dtype=torch.int64)
        ar[:, -1] = 1  # the state token opens its own block
        extra = self.prefix_length - prefix.shape[1]
        if extra > 0:  # static: LeRobot pads the prefix with invalid zero tokens up to prefix_length
            prefix = F.pad(prefix, (0, 0, 0, extra))
            pad, ar = F.pad(pad, (0, extra), value=False), F.pad(ar, (0, extra))
        if self._fast and guidance is None:
            return self._forward_fast(prefix, pad, ar, noise)
        prefix_k, prefix_v = self._encode_prefix(prefix, pad, ar)

        # Everything the steps share: masks, RoPE tables, the cross-attention layers' K/V.
        H = self.chunk_size
        hd = self.expert_dims.head_dim
        suffix_pad = torch.ones(B, H, dtype=torch.bool, device=dev)
        causal = block_mask(suffix_pad, torch.ones(B, H, dtype=torch.int64, device=dev))
        prefix_allowed = pad[:, None, :].expand(B, H, pad.shape[1])
        self_mask = additive_mask(torch.cat([prefix_allowed, causal], dim=2), dtype)
        cross_mask = additive_mask(prefix_allowed, dtype)
        steps = torch.arange(H, device=dev)[None].expand(B, H)
        self_rope = rope_cos_sin(pad.sum(dim=1, keepdim=True) + steps, hd, ROPE_WAVELENGTH)
        cross_rope = rope_cos_sin(steps, hd, ROPE_WAVELENGTH)  # LeRobot restarts positions at 0 here
        cross_kv = {}
        for i, j in enumerate(self.expert_of):
            if j is not None and self.cross[i]:
                attn = self.expert[j].self_attn
                k_in = prefix_k[i].transpose(1, 2).reshape(B, prefix.shape[1], -1)
                v_in = prefix_v[i].transpose(1, 2).reshape(B, prefix.shape[1], -1)
                cross_kv[i] = attn.heads(attn.k_proj(k_in)), attn.heads(attn.v_proj(v_in))

        x_t = noise.to(torch.float32)
        if guidance is not None:
            return euler_guided(lambda step, x: self._velocity(step, x, prefix_k, prefix_v, cross_kv, self_mask,
                                                               cross_mask, self_rope, cross_rope),
                                x_t, self.num_steps, guidance)
        dt = -1.0 / self.num_steps
        for step in range(self.num_steps):
            v_t = self._velocity(step, x_t, prefix_k, prefix_v, cross_kv, self_mask, cross_mask, self_rope, cross_rope)
            x_t = x_t + dt * v_t
        return x_t

    def _encode_prefix(self, x: torch.Tensor, pad: torch.Tensor, ar: torch.Tensor):
        """Run the VLM layers over the prefix; return each layer's post-RoPE K and V [B, kv_heads, Lp, hd]."""
        mask = additive_mask(block_mask(pad, ar), x.dtype)
        cos, sin = rope_cos_sin(torch.cumsum(pad, dim=1) - 1, self.text_dims.head_dim, ROPE_WAVELENGTH)
        scale = self.text_dims.head_dim ** -0.5
        ks, vs = [], []
        for i, layer in enumerate(self.vlm):
            h = layer.input_layernorm(x)
            a = layer.self_attn
            ks.append(apply_rope(a.heads(a.k_proj(h)), cos, sin))
            vs.append(a.heads(a.v_proj(h)))
            if i == len(self.vlm) - 1:
                break  # the last layer's output is never read: only its K/V are
            q = apply_rope(a.heads(a.q_proj(h)), cos, sin)
            x = layer.finish(x, attention(q, ks[-1], vs[-1], mask, scale))
        return ks, vs

    def _velocity(self, step, x_t, prefix_k, prefix_v, cross_kv, self_mask, cross_mask, self_rope, cross_rope):
        dtype = self.action_in_proj.weight.dtype
        act = self.action_in_proj(x_t.to(dtype))
        t = self.time_emb[step].to(dtype)[None, None].expand_as(act)
        x = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([act, t], dim=2))))
        scale = self.expert_dims.head_dim ** -0.5
        for i, j in enumerate(self.expert_of):
            if j is None:
                continue  # a cross-attention VLM layer without an expert layer: identity for the actions
            layer = self.expert[j]
            a = layer.self_attn
            h = layer.input_layernorm(x)
            if self.cross[i]:
                q = apply_rope(a.heads(a.q_proj(h)), *cross_rope)
                k, v = cross_kv[i]
                att = attention(q, k, v, cross_mask, scale)
            else:
                q = apply_rope(a.heads(a.q_proj(h)), *self_rope)
                k = apply_rope(a.heads(a.k_proj(h)), *self_rope)
                k = torch.cat([prefix_k[i], k], dim=2)
                v = torch.cat([prefix_v[i], a.heads(a.v_proj(h))], dim=2)
                att = attention(q, k, v, self_mask, scale)
            x = layer.finish(x, att)
        x = self.expert_norm(x)
        return self.action_out_proj(x.to(self.action_out_proj.weight.dtype)).float()

    # --- the fast path (compile_layers) ---------------------------------------------------------------
    def _forward_fast(self, prefix, pad, ar, noise) -> torch.Tensor:
        """forward() after the prefix embedding, through the layer functions: the same masks, positions
        and order as the plain path; K/V in one cache [layers, B, kv_heads, P + chunk, hd] whose last
        chunk slots the expert's self-attention layers write at every step; on a GPU the masks folded for
        grouped-query heads as rows once here, not per call."""
        dtype = self.action_in_proj.weight.dtype
        td, ed = self.text_dims, self.expert_dims
        B, P = pad.shape
        H, dev = self.chunk_size, prefix.device
        fold = prefix.is_cuda if self._fold is None else self._fold
        w_vlm, w_exp = self._layer_weights()

        # the prefix
        mask = additive_mask(block_mask(pad, ar), prefix.dtype)
        if fold:
            mask = aligned_rows(fold_mask(mask, td.num_heads // td.num_kv_heads))
        cos, sin = rope_cos_sin(torch.cumsum(pad, dim=1) - 1, td.head_dim, ROPE_WAVELENGTH)
        k_cache, v_cache = prefix.new_empty(2, len(self.vlm), B, td.num_kv_heads, P + H, td.head_dim)
        x = prefix
        for i in range(len(self.vlm) - 1):
            x = self._vlm_layer(x, w_vlm[i], k_cache[i], v_cache[i], mask, cos, sin, td.eps, self._kernels)
        vlm_kv(x, w_vlm[-1], k_cache[-1], v_cache[-1], cos, sin, td.eps)   # the last layer: only its K/V

        # what the steps share
        suffix_pad = torch.ones(B, H, dtype=torch.bool, device=dev)
        causal = block_mask(suffix_pad, torch.ones(B, H, dtype=torch.int64, device=dev))
        prefix_allowed = pad[:, None, :].expand(B, H, P)
        self_mask = additive_mask(torch.cat([prefix_allowed, causal], dim=2), dtype)
        cross_mask = additive_mask(prefix_allowed, dtype)
        if fold:
            groups = ed.num_heads // ed.num_kv_heads
            self_mask, cross_mask = aligned_rows(fold_mask(self_mask, groups)), aligned_rows(fold_mask(cross_mask, groups))
        steps = torch.arange(H, device=dev)[None].expand(B, H)
        self_rope = rope_cos_sin(pad.sum(dim=1, keepdim=True) + steps, ed.head_dim, ROPE_WAVELENGTH)
        cross_rope = rope_cos_sin(steps, ed.head_dim, ROPE_WAVELENGTH)
        cross_kv = {}
        for i, j in enumerate(self.expert_of):
            if j is not None and self.cross[i]:
                attn = self.expert[j].self_attn
                k_in = k_cache[i, :, :, :P].transpose(1, 2).reshape(B, P, -1)
                v_in = v_cache[i, :, :, :P].transpose(1, 2).reshape(B, P, -1)
                cross_kv[i] = attn.heads(attn.k_proj(k_in)), attn.heads(attn.v_proj(v_in))

        x_t = noise.to(torch.float32, copy=True)   # made here, as every later x_t: one compiled graph for all steps
        dt = -1.0 / self.num_steps
        head = [w for lin in (self.action_in_proj, self.action_time_mlp_in, self.action_time_mlp_out)
                for w in (lin.weight, lin.bias)]
        for step in range(self.num_steps):
            x = self._action_in(x_t, self.time_emb[step], *head)
            for i, j in enumerate(self.expert_of):
                if j is None:
                    continue
                if self.cross[i]:
                    x = self._expert_cross(x, w_exp[j], *cross_kv[i], cross_mask, *cross_rope, ed.eps, self._kernels)
                else:
                    x = self._expert_self(x, w_exp[j], k_cache[i], v_cache[i], self_mask, *self_rope, ed.eps,
                                          self._kernels)
            x_t = self._action_out(x, x_t, self.expert_norm.weight, self.expert_norm.eps, self.action_out_proj.weight,
                                   self.action_out_proj.bias, dt)
        return x_t
