"""The action expert's layer step as the fused Triton kernels of runtime/fused_expert.py.

fused_expert_layer has pi0.expert_layer's signature and contract (the plain function is its reference
and the start-up gate's): Pi0.compile_layers(fused=True) swaps it in for the expert while the prefix and
SigLIP layers stay torch.compile'd. Six launches per layer and step instead of ~13 (compiled) or ~50
(eager). Where it cannot run it hands over to expert_layer: autograd on (RTC's vector-Jacobian
product) or quantised weights (their own GEMM).
"""
from __future__ import annotations

import torch

from flashrt_ros.runtime import fused_expert as fx
from flashrt_ros.runtime import triton_kernels as tk

from .common import fold_mask
from .pi0 import GemmaWeights, expert_layer


def shift_tables(net) -> tuple[torch.Tensor, torch.Tensor]:
    """π0.5's adaRMS shifts through each expert layer's qkv and gate_up weights, per denoise step:
    float32 [L, K, N_qkv] and [L, K, 2F] (the fused norm adds them in the GEMM's epilogue)."""
    qkv, gu = [], []
    for i, layer in enumerate(net.expert):
        w = layer.weights()
        qkv.append(torch.stack([fx.shift_projection(net.ada_layers[i, 0, k], w.qkv) for k in range(net.num_steps)]))
        gu.append(torch.stack([fx.shift_projection(net.ada_layers[i, 1, k], w.gate_up) for k in range(net.num_steps)]))
    return torch.stack(qkv), torch.stack(gu)


def fused_expert_layer(x, w: GemmaWeights, k_cache, v_cache, mask, cos, sin, ada: torch.Tensor | None,
                       fast: bool = True, shift: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """shift (π0.5): adaRMS's shifts through the qkv and gate_up weights for this layer and step, float32
    (fused_expert.shift_projection; Pi0.compile_layers(fused=True) keeps them as load-time tables); None:
    computed here from ada."""
    if torch.is_grad_enabled() or not isinstance(w.qkv, torch.Tensor) or not isinstance(w.down, torch.Tensor):
        return expert_layer(x, w, k_cache, v_cache, mask, cos, sin, ada, fast)
    B, S, W = x.shape
    Hkv, T, D = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    H = w.qkv.shape[0] // D - 2 * Hkv
    G = H // Hkv
    x2 = x.reshape(B * S, W)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    is_ada = ada is not None
    q = torch.empty(B, H, S, D, dtype=x.dtype, device=x.device)
    sq, sg = shift if (is_ada and shift is not None) else (None, None)
    fx.norm_qkv_rope(x2, S, ada[0] if is_ada else w.norm1, is_ada, w.qkv, cos, sin, q, k_cache, v_cache, T - S, sq)
    if mask is not None and mask.shape[-2] == S and G > 1:
        mask = fold_mask(mask, G)
    o = tk.attention_rows(q.view(B, Hkv, G * S, D), k_cache, v_cache, mask, D ** -0.5)   # [B, Hkv, G*S, D]
    x2 = fx.gemm_residual(o, (o.stride(0), D, S * D), D, S, w.o, x2, ada[0, 2 * W:] if is_ada else None, "o")
    h = fx.norm_gate_up(x2, ada[1] if is_ada else w.norm2, is_ada, w.gate_up, sg)
    x2 = fx.gemm_residual(h, (S * h.shape[1], h.shape[1], 0), h.shape[1], S, w.down, x2,
                          ada[1, 2 * W:] if is_ada else None, "down")
    return x2.view(B, S, W)
