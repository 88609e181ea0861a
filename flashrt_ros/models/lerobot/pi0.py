"""π0 and π0.5 (LeRobot 0.6.1 / openpi) as one static-shape inference network.

    images (SigLIP + projector) + language tokens  ->  prefix, encoded ONCE per chunk by the
    PaliGemma Gemma (its per-layer K/V kept as plain tensors)
    noise -> num_steps forward-Euler steps of the action expert (a smaller Gemma) whose layers
    attend to [prefix K/V ; own K/V]                                        ->  actions

π0 puts the state in the suffix as one token and mixes the flow time into the action tokens with
an MLP; π0.5 has no state token (the state is in the prompt, see processing.py) and conditions every
expert RMSNorm on the time (adaRMS: scale, shift and a residual gate).

Times are static (t = 1, 0.9, ... for 10 steps), so everything that depends only on t — π0.5's time
MLP and every adaRMS modulation, π0's time half of `action_time_mlp_in` — is computed once at load
(`finalize`) in float32 and kept as tables; the graph does no time work. Same math as LeRobot, in a
different order for π0's split matmul (fp32 differences ~1e-7).

The Gemma layers are plain functions of their weight tensors (prefix_layer, expert_layer). Opt-in,
`compile_layers()` runs them, and SigLIP's layers, through torch.compile: one fused graph per layer
kind, reused by every layer and denoise step, inside the caller's CUDA graph.

Key map (LeRobot state dict -> ours; a leading "model." is optional, as in LeRobot's loader):
    paligemma_with_expert.paligemma.model.vision_tower.vision_model.*  -> vision.*
    paligemma_with_expert.paligemma.model.multi_modal_projector.linear.* -> projector.*
    paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight -> embed.weight
        (absent in some exports: then paligemma.lm_head.weight, its tied twin, is used)
    paligemma_with_expert.paligemma.model.language_model.layers.N.*    -> vlm.N.*
    paligemma_with_expert.gemma_expert.model.layers.N.*                -> expert.N.*
    paligemma_with_expert.gemma_expert.model.norm.*                    -> expert_norm.*
    action_in_proj, action_out_proj, state_proj (π0), action_time_mlp_in/out (π0),
    time_mlp_in/out (π0.5; either name is accepted for either policy, as LeRobot does) -> same names
    unused at inference: the PaliGemma final norm, both lm_heads, vision pooling head (absent).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import common
from .common import (additive_mask, aligned_rows, apply_rope, attention, block_mask, euler_times, fit_state_dict, fold_mask,
                     gelu_tanh, parameter_bytes, rope_cos_sin, sinusoidal_time_embedding)
from ..rtc import Guidance, euler_guided
from ...runtime import fused_expert as _fused_ops  # noqa: F401  (registers flashrt::rows_linear)
from ...runtime.triton_kernels import interpreted
from .processing import resize_with_pad_centered
from .quant import linear
from .siglip import VisionTransformer

PREFIX = "paligemma_with_expert."


@dataclass(frozen=True)
class GemmaDims:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class VisionDims:
    hidden: int = 1152
    layers: int = 27
    heads: int = 16
    intermediate: int = 4304
    patch: int = 14


# openpi's Gemma variants (LeRobot's get_gemma_config) and PaliGemma's SigLIP so400m/14.
GEMMA_VARIANTS = {
    "gemma_300m": GemmaDims(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_2b": GemmaDims(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
}
VOCAB_SIZE = 257152
ROPE_THETA = 10000.0
RMS_EPS = 1e-6


class RMSNorm(nn.Module):
    """Gemma RMSNorm: x / rms(x) * (1 + w), statistics in float32."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.one_plus_w)

    def finalize(self) -> None:
        self.register_buffer("one_plus_w", 1.0 + self.weight.float(), persistent=False)


class AdaRMSNorm(nn.Module):
    """π0.5's time-conditioned RMSNorm. At run time scale/shift/gate come from a per-step table."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.dense = nn.Linear(cond_dim, 3 * dim)


def rms_norm(x: torch.Tensor, one_plus_w: torch.Tensor) -> torch.Tensor:
    return (_rms(x) * one_plus_w).type_as(x)


def _rms(x: torch.Tensor) -> torch.Tensor:
    var = torch.mean(torch.square(x.float()), dim=-1, keepdim=True)
    return x * torch.rsqrt(var + RMS_EPS)


def _modulate(x: torch.Tensor, mod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """adaRMS with a precomputed fp32 modulation row [3 * W] (1 + scale, shift, gate)."""
    one_plus_scale, shift, gate = mod.chunk(3, dim=-1)
    return (_rms(x) * one_plus_scale + shift).to(x.dtype), gate.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, d: GemmaDims):
        super().__init__()
        self.q_proj = nn.Linear(d.width, d.num_heads * d.head_dim, bias=False)
        self.k_proj = nn.Linear(d.width, d.num_kv_heads * d.head_dim, bias=False)
        self.v_proj = nn.Linear(d.width, d.num_kv_heads * d.head_dim, bias=False)
        self.o_proj = nn.Linear(d.num_heads * d.head_dim, d.width, bias=False)

    def fuse(self) -> None:
        """One [q; k; v] matmul instead of three (load time; same dot products)."""
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        self.qkv_proj = nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
        self.qkv_proj.weight.copy_(w)
        del self.q_proj, self.k_proj, self.v_proj


class MLP(nn.Module):
    def __init__(self, d: GemmaDims):
        super().__init__()
        self.gate_proj = nn.Linear(d.width, d.mlp_dim, bias=False)
        self.up_proj = nn.Linear(d.width, d.mlp_dim, bias=False)
        self.down_proj = nn.Linear(d.mlp_dim, d.width, bias=False)

    def fuse(self) -> None:
        """One [gate; up] matmul instead of two (load time)."""
        w = torch.cat([self.gate_proj.weight, self.up_proj.weight])
        self.gate_up_proj = nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
        self.gate_up_proj.weight.copy_(w)
        del self.gate_proj, self.up_proj


class GemmaLayer(nn.Module):
    def __init__(self, d: GemmaDims, ada: bool):
        super().__init__()
        norm = (lambda: AdaRMSNorm(d.width, d.width)) if ada else (lambda: RMSNorm(d.width))
        self.input_layernorm = norm()
        self.self_attn = Attention(d)
        self.post_attention_layernorm = norm()
        self.mlp = MLP(d)

    def weights(self) -> "GemmaWeights":
        """This layer's tensors for the layer functions (after finalize: fused projections, 1 + w norms)."""
        def one_plus_w(norm):
            return norm.one_plus_w if isinstance(norm, RMSNorm) else None
        return GemmaWeights(self.self_attn.qkv_proj.weight, self.self_attn.o_proj.weight, self.mlp.gate_up_proj.weight,
                            self.mlp.down_proj.weight, one_plus_w(self.input_layernorm),
                            one_plus_w(self.post_attention_layernorm))


# --- the layers as functions of tensors -------------------------------------------------------------
# The weights are arguments, not modules closed over: torch.compile guards on shapes and dtypes, not on
# which layer it is given, so one compiled graph serves every layer of a kind and every denoise step
# (Pi0.compile_layers). Uncompiled, they are the default path.

class GemmaWeights(NamedTuple):
    qkv: torch.Tensor                # [q; k; v] rows
    o: torch.Tensor
    gate_up: torch.Tensor            # [gate; up] rows
    down: torch.Tensor
    norm1: torch.Tensor | None       # RMSNorm 1 + w, float32; None where adaRMS rows replace them (π0.5 expert)
    norm2: torch.Tensor | None


# fast path: the expert's GEMMs (<= 64 rows) through flashrt::rows_linear (tuned vs cuBLAS). Off: on an H200
# the Triton GEMM did not beat cuBLAS at 50 rows with the weights cold in L2 (round 4), and its tuner,
# timing with the weights warm, picked it where it is slower
ROWS_GEMM = False


def _linear(h: torch.Tensor, w, fast: bool) -> torch.Tensor:
    """quant.linear, or on the fast path for few rows (the action expert) runtime/fused_expert.py's
    rows_linear op: per shape the faster of cuBLAS and the weight-streaming Triton GEMM."""
    if fast and ROWS_GEMM and h.is_cuda and isinstance(w, torch.Tensor) and h.numel() <= 64 * h.shape[-1]:
        return torch.ops.flashrt.rows_linear(h, w)
    return linear(h, w)


def _project(h: torch.Tensor, w: GemmaWeights, kv_heads: int, head_dim: int, cos: torch.Tensor, sin: torch.Tensor,
             fast: bool = False):
    """Normed h [B, T, W] -> q, k, v [B, heads, T, head_dim] with RoPE."""
    B, T, _ = h.shape
    kv_rows = kv_heads * head_dim
    qkv = _linear(h, w.qkv, fast)
    q, k, v = qkv.split([qkv.shape[-1] - 2 * kv_rows, kv_rows, kv_rows], dim=-1)
    q = q.reshape(B, T, -1, head_dim).transpose(1, 2)
    k = k.reshape(B, T, -1, head_dim).transpose(1, 2)
    v = v.reshape(B, T, -1, head_dim).transpose(1, 2)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def _qkv(h: torch.Tensor, w: GemmaWeights, k_cache: torch.Tensor, v_cache: torch.Tensor, start: int,
         cos: torch.Tensor, sin: torch.Tensor, fast: bool = False):
    """Normed h [B, T, W] -> q, k, v [B, heads, T, head_dim] with RoPE; k and v are also written to the
    caches [B, kv_heads, :, head_dim] at start:start + T. Head counts follow from the shapes."""
    T = h.shape[1]
    q, k, v = _project(h, w, k_cache.shape[1], k_cache.shape[3], cos, sin, fast)
    k_cache[:, :, start:start + T] = k
    v_cache[:, :, start:start + T] = v
    return q, k, v


def _attend(q, k, v, mask, w: GemmaWeights, fast: bool = False, new=None) -> torch.Tensor:
    # a mask with more rows than q has is folded (fold_mask): grouped-query heads as rows
    return _linear(attention(q, k, v, mask, q.shape[-1] ** -0.5, mask.shape[-2] != q.shape[2], fast=fast, new=new),
                   w.o, fast)


def _mlp(h: torch.Tensor, w: GemmaWeights, fast: bool = False) -> torch.Tensor:
    gate, up = _linear(h, w.gate_up, fast).chunk(2, dim=-1)
    return _linear(gelu_tanh(gate) * up, w.down, fast)


def prefix_layer(x, w: GemmaWeights, k_cache, v_cache, mask, cos, sin, fast: bool = False) -> torch.Tensor:
    """One PaliGemma layer over the prefix x [B, P, W]; its K/V go to the caches' first P slots.
    fast: the Triton attention kernel (Pi0.compile_layers(kernels=True))."""
    q, k, v = _qkv(rms_norm(x, w.norm1), w, k_cache, v_cache, 0, cos, sin)
    x = x + _attend(q, k, v, mask, w, fast)
    return x + _mlp(rms_norm(x, w.norm2), w)


def expert_layer(x, w: GemmaWeights, k_cache, v_cache, mask, cos, sin, ada: torch.Tensor | None,
                 fast: bool = False) -> torch.Tensor:
    """One action-expert layer over the suffix x [B, S, W]: its K/V go to the caches' last S slots and it
    attends to all of them [prefix ; suffix] (the fast path on a GPU: the attention kernel reads them in
    place, the caches' last S slots are not written). ada: π0.5's adaRMS rows for this layer and step, float32
    [2, 3W] (input, post-attention), or None for π0 (RMSNorms w.norm1, w.norm2: no gate)."""
    h, gate = (rms_norm(x, w.norm1), None) if ada is None else _modulate(x, ada[0])
    start = k_cache.shape[2] - x.shape[1]
    if torch.is_grad_enabled():
        # differentiated (RTC's ΠGDM vector-Jacobian product): no in-place cache write, whose shared
        # version counter would invalidate the saved K/V of the earlier layers; same values
        q, k, v = _project(h, w, k_cache.shape[1], k_cache.shape[3], cos, sin)
        k_cache, v_cache = torch.cat([k_cache[:, :, :start], k], dim=2), torch.cat([v_cache[:, :, :start], v], dim=2)
        out = _attend(q, k_cache, v_cache, mask, w)
    elif fast and (x.is_cuda or interpreted()) and common.ATTENTION_HEADS:
        # the fast path's attention kernel reads this step's k and v in place behind the prefix's cached
        # keys: no cache write (only this layer and step read them)
        q, k, v = _project(h, w, k_cache.shape[1], k_cache.shape[3], cos, sin, fast)
        out = _attend(q, k_cache, v_cache, mask, w, fast, new=(k, v))
    else:
        q, _, _ = _qkv(h, w, k_cache, v_cache, start, cos, sin, fast)
        out = _attend(q, k_cache, v_cache, mask, w, fast)
    x = x + out if gate is None else x + out * gate
    h, gate = (rms_norm(x, w.norm2), None) if ada is None else _modulate(x, ada[1])
    out = _mlp(h, w, fast and not torch.is_grad_enabled())
    return x + out if gate is None else x + out * gate


def expert_stack(x, ws: list[GemmaWeights], k_cache, v_cache, mask, cos, sin, ada: torch.Tensor | None,
                 fast: bool = False) -> torch.Tensor:
    """Every action-expert layer of one denoise step (expert_layer after expert_layer). Compiled as ONE
    graph (Pi0.compile_layers(kernels=True, stack=True)) so that a layer's last residual and the next
    layer's norm are one kernel. k_cache / v_cache [L, B, Hkv, T, D]; ada [L, 2, 3W] or None."""
    for i, w in enumerate(ws):
        x = expert_layer(x, w, k_cache[i], v_cache[i], mask, cos, sin, None if ada is None else ada[i], fast)
    return x


# compile_layers(kernels=True, stack=None): the expert's layers of a step as one compiled graph (a layer's
# last residual and the next layer's norm in one kernel). On since run 8 (with common.ATTENTION_HEADS, which
# writes no K/V cache inside it): π0.5's chunk 15.48 -> 15.16 ms on the H200 (docs/benchmarks/fast-h200.md)
STACK_DEFAULT = True


class Pi0(nn.Module):
    """π0 (`pi05=False`) or π0.5 (`pi05=True`). forward() is the whole chunk; see module docstring."""

    # resize-with-pad as LeRobot's PI0Policy does it (the in-graph frame kernel reads these)
    pad_centred, pad_clamp = True, True

    def __init__(self, vlm: GemmaDims, expert: GemmaDims, vision: VisionDims, *, pi05: bool, image_size: int = 224,
                 chunk_size: int = 50, max_state_dim: int = 32, max_action_dim: int = 32, num_steps: int = 10,
                 min_period: float = 4e-3, max_period: float = 4.0, vocab_size: int = VOCAB_SIZE):
        super().__init__()
        if (vlm.num_heads, vlm.num_kv_heads, vlm.head_dim) != (expert.num_heads, expert.num_kv_heads, expert.head_dim):
            raise ValueError("the VLM and the action expert must share heads and head_dim (joint attention)")
        if vlm.depth != expert.depth:
            raise ValueError(f"VLM depth {vlm.depth} != expert depth {expert.depth}")
        self.pi05, self.image_size, self.chunk_size = pi05, image_size, chunk_size
        self.max_state_dim, self.max_action_dim, self.num_steps = max_state_dim, max_action_dim, num_steps
        self.min_period, self.max_period = min_period, max_period
        self.vlm_dims, self.expert_dims = vlm, expert
        self.vision = VisionTransformer(vision.hidden, vision.layers, vision.heads, vision.intermediate,
                                        vision.patch, image_size)
        self.projector = nn.Linear(vision.hidden, vlm.width)
        self.embed = nn.Embedding(vocab_size, vlm.width)
        self.vlm = nn.ModuleList(GemmaLayer(vlm, ada=False) for _ in range(vlm.depth))
        self.expert = nn.ModuleList(GemmaLayer(expert, ada=pi05) for _ in range(expert.depth))
        self.expert_norm = AdaRMSNorm(expert.width, expert.width) if pi05 else RMSNorm(expert.width)
        W = expert.width
        self.action_in_proj = nn.Linear(max_action_dim, W)
        self.action_out_proj = nn.Linear(W, max_action_dim)
        if pi05:
            self.time_mlp_in, self.time_mlp_out = nn.Linear(W, W), nn.Linear(W, W)
        else:
            self.state_proj = nn.Linear(max_state_dim, W)
            self.action_time_mlp_in, self.action_time_mlp_out = nn.Linear(2 * W, W), nn.Linear(W, W)
        self._finalized = False
        self._prefix_layer, self._expert_layer = prefix_layer, expert_layer   # compile_layers swaps them
        self._kernels = False   # compile_layers(kernels=True): the Triton attention kernel on a GPU
        self._fused = False     # compile_layers(fused=True): the fused expert layer kernels
        self._expert_stack = None   # compile_layers(stack=True): all expert layers of a step, one graph
        self._ada_shift = None  # and π0.5's adaRMS shift @ W^T tables for them

    # --- checkpoint edge ---------------------------------------------------------------------------
    @staticmethod
    def map_key(key: str) -> str | None:
        """LeRobot key -> ours, or None when the tensor is not used at inference."""
        k = key[len("model."):] if key.startswith("model.") else key
        if not k.startswith(PREFIX):
            return k
        k = k[len(PREFIX):]
        table = (
            ("paligemma.model.vision_tower.vision_model.", "vision."),
            ("paligemma.model.multi_modal_projector.linear.", "projector."),
            ("paligemma.model.language_model.embed_tokens.", "embed."),
            ("paligemma.model.language_model.layers.", "vlm."),
            ("gemma_expert.model.layers.", "expert."),
            ("gemma_expert.model.norm.", "expert_norm."),
        )
        for old, new in table:
            if k.startswith(old):
                return new + k[len(old):]
        if k.startswith(("paligemma.model.language_model.norm.", "paligemma.lm_head.", "gemma_expert.lm_head.")):
            return None
        raise KeyError(f"unknown checkpoint tensor {key!r}")

    def convert_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A LeRobot π0/π0.5 state dict -> ours (every tensor of ours filled, or a KeyError naming it)."""
        out: dict[str, torch.Tensor] = {}
        time_names = ("time_mlp_", "action_time_mlp_")
        mine, other = time_names if self.pi05 else time_names[::-1]
        lm_head = None
        for key, value in sd.items():
            if key.endswith("paligemma.lm_head.weight"):
                lm_head = value
            name = self.map_key(key)
            if name is None:
                continue
            if name.startswith(other):
                name = mine + name[len(other):]
            if self.pi05 and name.startswith("state_proj."):
                continue  # LeRobot skips it for π0.5 too
            out[name] = value
        if "embed.weight" not in out and lm_head is not None:
            out["embed.weight"] = lm_head
        return fit_state_dict(self, out, "π0.5" if self.pi05 else "π0")

    # --- load-time precomputation ------------------------------------------------------------------
    @torch.no_grad()
    def finalize(self, device: torch.device | str, dtype: torch.dtype) -> "Pi0":
        """Move to `device`, compute the per-step time tables in float32 from float32 weights, then cast
        the network to `dtype`. Call once after the weights are loaded."""
        self.to(device=device, dtype=torch.float32)
        t = torch.tensor(euler_times(self.num_steps), dtype=torch.float32, device=device)
        temb = sinusoidal_time_embedding(t, self.expert_dims.width, self.min_period, self.max_period)  # [K, W]
        if self.pi05:
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(temb))))                      # [K, W]
            W = self.expert_dims.width
            one = torch.cat([torch.ones(W, device=device), torch.zeros(2 * W, device=device)])    # 1 + scale
            mods = [torch.stack([layer.input_layernorm.dense(cond), layer.post_attention_layernorm.dense(cond)])
                    for layer in self.expert]                                                    # [2, K, 3W]
            self.register_buffer("ada_layers", torch.stack(mods) + one, persistent=False)         # [L, 2, K, 3W]
            self.register_buffer("ada_final", self.expert_norm.dense(cond) + one, persistent=False)  # [K, 3W]
        else:
            W = self.expert_dims.width
            w_time = self.action_time_mlp_in.weight[:, W:]
            self.register_buffer("time_bias", temb @ w_time.T + self.action_time_mlp_in.bias, persistent=False)
            self.register_buffer("w_action", self.action_time_mlp_in.weight[:, :W].clone(), persistent=False)
        norms = [m for m in self.modules() if isinstance(m, RMSNorm)]
        for m in norms:
            m.finalize()
        for layer in [*self.vlm, *self.expert]:
            layer.self_attn.fuse()
            layer.mlp.fuse()
        self.vision.fuse()
        self._finalized = True
        return self.cast(dtype).eval().requires_grad_(False)

    @torch.no_grad()
    def cast(self, dtype: torch.dtype) -> "Pi0":
        """The finalized network in `dtype` (norm scales and time tables stay float32). The engine's
        quantisation gate runs the float32 network first, then casts it."""
        self.to(dtype=dtype)
        for m in self.modules():  # norm statistics and scales stay float32, as in LeRobot
            if isinstance(m, RMSNorm):
                m.one_plus_w = m.one_plus_w.float()
        # sqrt(width) as HF rounds it (float32 -> weight dtype), kept as a Python float: no host tensor
        # reaches the device inside the captured graph
        self._embed_scale = float(torch.tensor(self.vlm_dims.width ** 0.5).to(dtype))
        for name in ("ada_layers", "ada_final", "time_bias"):  # tables stay float32
            if hasattr(self, name):
                setattr(self, name, getattr(self, name).float())
        return self

    def compile_layers(self, enabled: bool = True, backend: str = "inductor", kernels: bool = False,
                       fused: bool = False, stack: bool | None = None) -> "Pi0":
        """Opt-in fast path: torch.compile the layer functions, fusing each layer's elementwise chains
        (norms, RoPE, residuals, gates, gelu * up) into a few kernels. One graph per layer kind (VLM,
        expert, SigLIP) and input shape, shared by all layers and steps. Matmuls stay cuBLAS (no
        max-autotune), attention stays one SDPA call, and no cudagraph mode: the caller captures its own
        CUDA graph around forward(). Compilation happens at the first forward of each shape: run one
        before capturing (StaticGraph's warm-up does). compile_layers(False) restores the plain path.
        kernels (CUDA): the VLM's and the expert's attention through the Triton row-block kernel
        (common.attention fast=True) instead of SDPA.
        fused (CUDA, with kernels): the action expert's layer step as the fused Triton kernels of
        runtime/fused_expert.py (models/lerobot/fused.py: six launches per layer and step; norms in the
        GEMM prologues, RoPE and the K/V write and gelu * up and the gated residuals in their epilogues)
        instead of the compiled expert_layer, which stays its reference.
        stack (with kernels; None: STACK_DEFAULT): the expert's layers of one denoise step as ONE compiled
        graph (expert_stack: a layer's residual fuses with the next layer's norm); autograd (RTC) keeps
        the per-layer function."""
        self._kernels = bool(enabled and kernels)
        # one graph per layer kind, camera count, weights mode and dtype: a process that serves or
        # benchmarks several of them needs more than dynamo's default 8 per code object
        import torch._dynamo
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))

        def maybe(fn, expert: bool = False):
            return common.compiled(fn, backend, expert) if enabled else fn
        self._prefix_layer, self._expert_layer = maybe(prefix_layer), maybe(expert_layer, True)
        self._fused = bool(enabled and kernels and fused)
        self._ada_shift = None
        stack = STACK_DEFAULT if stack is None else stack
        self._expert_stack = maybe(expert_stack, True) if (enabled and kernels and stack and not self._fused) else None
        if self._fused:
            from .fused import fused_expert_layer, shift_tables
            self._expert_layer = fused_expert_layer
            if self.pi05 and all(isinstance(layer.weights().qkv, torch.Tensor) and isinstance(
                    layer.weights().gate_up, torch.Tensor) for layer in self.expert):
                # adaRMS's shift @ W^T per layer and step (float32 tables, as ada_layers); quantised
                # weights hand over to expert_layer (fused.py) and need none
                with torch.no_grad():
                    self._ada_shift = shift_tables(self)
        for layer in self.vision.encoder.layers:   # siglip.py's layer as it is: its bound forward, compiled
            vars(layer).pop("forward", None)
            if enabled:
                layer.forward = maybe(layer.forward)
        return self

    def weight_bytes(self) -> tuple[int, int]:
        """(bytes read once per chunk: vision, projector, VLM; bytes read per denoise step: the expert and
        the action projections) for the memory-bandwidth floor. The embedding table is gathered, not read."""
        skip = ("dense",)  # adaRMS projections are folded into the per-step tables at load: not read
        once = parameter_bytes(self.vision, self.projector, self.vlm)
        per_step = parameter_bytes(self.expert, self.expert_norm, self.action_in_proj, self.action_out_proj, skip=skip)
        if not self.pi05:
            per_step += parameter_bytes(self.action_time_mlp_out) + self.w_action.numel() * self.w_action.element_size()
        return once, per_step

    # --- the chunk ---------------------------------------------------------------------------------
    def prepare_images(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Cameras [B, 3, H, W] float in [0, 1] -> [B, n, 3, R, R] in [-1, 1], as LeRobot's
        PI0Policy._preprocess_images gives them to the model (centred resize-with-pad)."""
        return torch.stack([resize_with_pad_centered(im.float(), self.image_size) * 2.0 - 1.0 for im in images], 1)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, n, 3, R, R] -> [B, n * patches, width]."""
        B, n = images.shape[:2]
        feats = self.projector(self.vision(images.flatten(0, 1)))
        return feats.view(B, n * feats.shape[1], -1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, img_masks: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor,
                state: torch.Tensor, noise: torch.Tensor, guidance: Guidance | None = None,
                features: torch.Tensor | None = None) -> torch.Tensor:
        """images [B, n, 3, R, R] in [-1, 1], img_masks [B, n] bool, tokens [B, L] int64, token_mask [B, L] bool,
        state [B, max_state_dim] (normalised, padded; unused by π0.5), noise [B, H, max_action_dim]
        -> actions [B, H, max_action_dim] (normalised). guidance: RTC's prefix guidance at every denoise
        step (models/rtc.py); None: the plain loop. features: embed_images(images), computed before (the
        engine encodes the cameras as a graph of their own); None: computed here."""
        if not self._finalized:
            raise RuntimeError("call finalize(device, dtype) after loading the weights")
        dtype = self.action_in_proj.weight.dtype
        B, n = images.shape[:2]
        img = self.embed_images(images) if features is None else features
        P_img = img.shape[1] // n
        # Gemma scales embeddings by sqrt(width), the constant rounded through float32 as HF does
        lang = self.embed(tokens) * self._embed_scale
        prefix = torch.cat([img.to(dtype), lang.to(dtype)], dim=1)
        prefix_pad = torch.cat([img_masks[:, :, None].expand(B, n, P_img).reshape(B, -1), token_mask], dim=1)
        # Suffix layout: π0 [state, actions], π0.5 [actions]; the first suffix token opens a new block.
        H = self.chunk_size
        S = H if self.pi05 else H + 1
        # grouped-query heads as rows: masks folded once here, not per call (on a GPU; and where the
        # kernels run under Triton's CPU interpreter, parity/test_triton_interpreter.py)
        fold = prefix.is_cuda or (self._kernels and interpreted())
        kv = self._encode_prefix(prefix, prefix_pad, S, fold)

        suffix_pad = torch.ones(B, S, dtype=torch.bool, device=prefix.device)
        ar = torch.zeros(B, S, dtype=torch.int64, device=prefix.device)
        ar[:, 0] = 1
        if not self.pi05:
            ar[:, 1] = 1
        allowed = torch.cat([prefix_pad[:, None, :].expand(B, S, prefix_pad.shape[1]), block_mask(suffix_pad, ar)],
                            dim=2)
        mask = additive_mask(allowed, dtype)
        if fold:
            mask = aligned_rows(fold_mask(mask, self.expert_dims.num_heads // self.expert_dims.num_kv_heads))
        positions = prefix_pad.sum(dim=1, keepdim=True) + torch.arange(S, device=prefix.device)[None]
        cos, sin = rope_cos_sin(positions, self.expert_dims.head_dim, ROPE_THETA)
        state_emb = None if self.pi05 else self.state_proj(state.to(dtype))[:, None]

        x_t = noise.to(torch.float32)
        if guidance is not None:
            return euler_guided(lambda step, x: self._velocity(step, x, state_emb, kv, mask, cos, sin), x_t,
                                self.num_steps, guidance)
        dt = -1.0 / self.num_steps
        for step in range(self.num_steps):
            v_t = self._velocity(step, x_t, state_emb, kv, mask, cos, sin)
            x_t = x_t + dt * v_t
        return x_t

    def _encode_prefix(self, x: torch.Tensor, pad: torch.Tensor, suffix_len: int,
                       fold: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The VLM over the prefix. Returns the K and V caches, each [layers, B, kv_heads, P + suffix_len,
        head_dim], with the prefix part filled: each denoise step writes its own K/V behind it (no per-step
        concatenation)."""
        d = self.vlm_dims
        mask = additive_mask(block_mask(pad, torch.zeros_like(pad, dtype=torch.int64)), x.dtype)
        if fold:
            mask = aligned_rows(fold_mask(mask, d.num_heads // d.num_kv_heads))
        positions = torch.cumsum(pad, dim=1) - 1
        cos, sin = rope_cos_sin(positions, d.head_dim, ROPE_THETA)
        B, P = pad.shape
        k_cache, v_cache = x.new_empty(2, len(self.vlm), B, d.num_kv_heads, P + suffix_len, d.head_dim)
        for i, layer in enumerate(self.vlm[:-1]):
            x = self._prefix_layer(x, layer.weights(), k_cache[i], v_cache[i], mask, cos, sin, self._kernels)
        w = self.vlm[-1].weights()   # the last layer's output is never read: only its K/V are
        _qkv(rms_norm(x, w.norm1), w, k_cache[-1], v_cache[-1], 0, cos, sin)
        return k_cache, v_cache

    def _velocity(self, step, x_t, state_emb, kv, mask, cos, sin) -> torch.Tensor:
        dtype = self.action_in_proj.weight.dtype
        act = self.action_in_proj(x_t.to(dtype))
        if self.pi05:
            x = act
        else:
            h = F.silu(F.linear(act, self.w_action) + self.time_bias[step].to(dtype))
            x = torch.cat([state_emb, self.action_time_mlp_out(h)], dim=1)
        k_cache, v_cache = kv
        if getattr(self, "_expert_stack", None) is not None and not torch.is_grad_enabled():
            x = self._expert_stack(x, [layer.weights() for layer in self.expert], k_cache, v_cache, mask, cos, sin,
                                   self.ada_layers[:, :, step] if self.pi05 else None, self._kernels)
        else:
            for i, layer in enumerate(self.expert):
                ada = self.ada_layers[i, :, step] if self.pi05 else None
                if getattr(self, "_ada_shift", None) is not None and self._fused:
                    x = self._expert_layer(x, layer.weights(), k_cache[i], v_cache[i], mask, cos, sin, ada,
                                           self._kernels, (self._ada_shift[0][i, step], self._ada_shift[1][i, step]))
                else:
                    x = self._expert_layer(x, layer.weights(), k_cache[i], v_cache[i], mask, cos, sin, ada,
                                           self._kernels)
        if self.pi05:
            x, _ = _modulate(x, self.ada_final[step])
        else:
            x = self.expert_norm(x)
        return self.action_out_proj(x[:, -self.chunk_size:].to(self.action_out_proj.weight.dtype)).float()
