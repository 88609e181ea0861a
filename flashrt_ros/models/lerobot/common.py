"""Pieces the LeRobot-compatible models share: RoPE, attention, the flow-matching time embedding.

Everything here is static-shape tensor math: it runs inside a captured CUDA graph and on the CPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flashrt_ros.runtime.triton_kernels import attention_rows_supported, interpreted

# LeRobot/openpi fill masked attention logits with this finite value (not -inf): a padded query row
# then averages instead of producing NaN, and a NaN never leaks into the keys others read.
MASK_VALUE = -2.3819763e38
# fast=True's kernel. True (the default since run 8): attention_heads -- q read in place, output in
# [B, Tq, H * d], the expert's own K/V read in place (no cache write); π0.5's chunk 16.30 -> 15.48 ms on the
# H200 alone, 15.16 with pi0.STACK_DEFAULT (docs/benchmarks/fast-h200.md, run 8). False: round 3's
# attention_rows on the folded copy of q, then the transpose copy, the expert's K/V written to the caches
ATTENTION_HEADS = True

# inductor options of the fast path's torch.compile calls ({}: inductor's defaults), for every layer kind,
# plus EXPERT_OPTIONS for the action expert's few-row layers. Set per path by parity/gpu_fused.py; a
# module default changes only with a whole-chunk measurement behind it (docs/benchmarks/fast-h200.md)
INDUCTOR_OPTIONS: dict = {}
EXPERT_OPTIONS: dict = {}


def compiled(fn, backend: str = "inductor", expert: bool = False):
    """torch.compile(fn) as the fast path compiles a layer function: static shapes, one whole graph, no
    cudagraph mode (the engine captures its own CUDA graph around the chunk), with INDUCTOR_OPTIONS
    (+ EXPERT_OPTIONS for expert=True) when the backend is inductor."""
    options = {**INDUCTOR_OPTIONS, **(EXPERT_OPTIONS if expert else {})} if backend == "inductor" else {}
    return torch.compile(fn, backend=backend, dynamic=False, fullgraph=True, options=options or None)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, T, head_dim] for integer positions [B, T] (HF "default" rotary, float32 math)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device)
                                .float() / head_dim))
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, head_dim]; cos/sin [B, T, head_dim] (cast to x's dtype, as HF does)."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    return x * cos + rotate_half(x) * sin


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, additive_mask: torch.Tensor | None,
              scale: float, fold: bool | None = None, fast: bool = False,
              new: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """q [B, H, Tq, d], k/v [B, Hkv, Tk, d] (grouped-query when Hkv < H), mask [B, 1, Tq, Tk] added to
    the logits (or already folded, [B, 1, G * Tq, Tk], see fold_mask). Returns [B, Tq, H * d].

    fold (default: on CUDA): the G query heads that share a K/V head become G * Tq rows of one head,
    so K/V are read as they are instead of being repeated G times per call. The same dot products and
    row softmaxes. Off (the CPU default): the reference's exact op order, scores and softmax in fp32.
    fast (folded, CUDA, power-of-2 head_dim): the Triton row-block kernel (runtime/triton_kernels.py
    attention_heads: q read through its strides, output written in [B, Tq, H * d]: no copies around it)
    instead of SDPA, for the few-row, short-key attention of the action expert and the prefix.
    new (k_new, v_new) [B, Hkv, Tn, d]: the last Tn keys and values are these instead of k's and v's (the
    action expert's own K/V: the kernel reads them in place, nothing is written to the caches)."""
    B, H, Tq, d = q.shape
    groups = H // k.shape[1]
    fold = q.is_cuda if fold is None else fold
    if fold and groups > 1 and fast and (q.is_cuda or interpreted()) and attention_rows_supported(q) \
            and ATTENTION_HEADS:   # (interpreted: the CPU check of this path, parity/test_triton_interpreter.py)
        # q read in place, heads folded inside the kernel, output in the o projection's layout
        return torch.ops.flashrt.attention_heads(q, k, v, additive_mask, scale, *(new or (None, None)))
    if new is not None:
        P = k.shape[2] - new[0].shape[2]
        k, v = torch.cat([k[:, :, :P], new[0]], dim=2), torch.cat([v[:, :, :P], new[1]], dim=2)
    if fold and groups > 1:
        if additive_mask is not None and additive_mask.shape[-2] == Tq:
            additive_mask = fold_mask(additive_mask, groups)
        qf = q.reshape(B, k.shape[1], groups * Tq, d)
        if fast and q.is_cuda and attention_rows_supported(qf):
            out = torch.ops.flashrt.attention_rows(qf, k, v, additive_mask, scale).view(B, H, Tq, d)
        else:
            out = _sdpa(qf, k, v, additive_mask, scale).view(B, H, Tq, d)
        return out.transpose(1, 2).reshape(B, Tq, H * d)
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return _sdpa(q, k, v, additive_mask, scale).transpose(1, 2).reshape(B, Tq, H * d)


def _sdpa(q, k, v, mask, scale):
    if q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    if mask is not None:
        scores = scores + mask
    return torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)


def fold_mask(mask: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, 1, Tq, Tk] -> [B, 1, groups * Tq, Tk] (row g * Tq + i is row i): once per chunk, not per call."""
    B, _, Tq, Tk = mask.shape
    return mask.expand(B, groups, Tq, Tk).reshape(B, 1, groups * Tq, Tk)


def aligned_rows(mask: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """The same mask, its rows starting every `multiple` elements (a padded buffer, sliced back). SDPA's
    memory-efficient kernel needs that alignment and otherwise pads the mask again on every call (and
    inductor inserts the same copy): done once per chunk instead."""
    return F.pad(mask, (0, -mask.shape[-1] % multiple))[..., :mask.shape[-1]]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [B, Tq, Tk] (True = may attend) -> additive [B, 1, Tq, Tk]. Python scalars only: no host
    tensor is copied to the device, so this can be captured in a CUDA graph."""
    return torch.where(allowed[:, None], 0.0, MASK_VALUE).to(dtype)


def block_mask(pad: torch.Tensor, ar: torch.Tensor) -> torch.Tensor:
    """big_vision's prefix-LM rule: token i attends to valid token j when cumsum(ar)[j] <= cumsum(ar)[i].
    pad bool [B, T], ar int [B, T] -> bool [B, T, T]."""
    cum = torch.cumsum(ar, dim=1)
    return (cum[:, None, :] <= cum[:, :, None]) & (pad[:, None, :] & pad[:, :, None])


def sinusoidal_time_embedding(t: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """openpi's sine-cosine embedding of scalar times t [B] -> [B, dim], computed in float64 then float32
    (what LeRobot does on CPU and CUDA)."""
    if dim % 2:
        raise ValueError(f"time embedding width {dim} must be even")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    x = (1.0 / period * 2 * math.pi)[None, :] * t[:, None]
    return torch.cat([torch.sin(x), torch.cos(x)], dim=1).to(torch.float32)


def euler_times(num_steps: int) -> list[float]:
    """The flow-matching integration times, t = 1 -> 0 in num_steps forward-Euler steps."""
    dt = -1.0 / num_steps
    return [1.0 + i * dt for i in range(num_steps)]


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def fit_state_dict(model: torch.nn.Module, converted: dict[str, torch.Tensor], label: str) -> dict[str, torch.Tensor]:
    """`converted` must fill every tensor of `model` with the right shape and nothing else; else a
    KeyError naming the misfit (the loader turns it into PolicyDirError)."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(converted)), sorted(set(converted) - set(own))
    misshapen = sorted(n for n in set(own) & set(converted) if tuple(converted[n].shape) != tuple(own[n].shape))
    if missing or unexpected:
        raise KeyError(f"checkpoint does not fit this {label} network: missing {missing[:6]}"
                       f"{'...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
                       f"{'...' if len(unexpected) > 6 else ''}")
    if misshapen:
        name = misshapen[0]
        raise KeyError(f"tensor {name}: checkpoint shape {tuple(converted[name].shape)}, network expects "
                       f"{tuple(own[name].shape)} (wrong variant or dims?)")
    return converted


def parameter_bytes(*modules: torch.nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Bytes of the weights a forward reads: parameters, and quantised weights with their scales
    (QuantLinear's wq / wscale buffers)."""
    params = sum(p.numel() * p.element_size() for m in modules for n, p in m.named_parameters()
                 if not any(s in n for s in skip))
    quant = sum(b.numel() * b.element_size() for m in modules for n, b in m.named_buffers()
                if n.endswith(("wq", "wscale")) or (n.endswith("bias") and ".wq" not in n and _quant_bias(m, n)))
    return params + quant


def _quant_bias(module: torch.nn.Module, name: str) -> bool:
    """A QuantLinear keeps its bias as a buffer: count it as the parameter it was."""
    owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
    return hasattr(owner, "wq")
