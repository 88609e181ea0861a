"""SigLIP vision transformer (PaliGemma's vision tower; SmolVLM's vision model is the same network).

Parameter names mirror Hugging Face's, so checkpoint keys map by prefix only. Full attention, no
pooling head (PaliGemma and SmolVLM use the patch tokens).
"""
from __future__ import annotations

import torch
from torch import nn

from .common import attention, gelu_tanh


class VisionAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.scale = self.head_dim ** -0.5
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    @torch.no_grad()
    def fuse(self) -> None:
        """One [q; k; v] matmul with its bias instead of three (load time: the same dot products, one
        GEMM launch per layer instead of three; the checkpoint's names load before it)."""
        lin = (self.q_proj, self.k_proj, self.v_proj)
        w = torch.cat([p.weight for p in lin])
        self.qkv_proj = nn.Linear(w.shape[1], w.shape[0], device=w.device, dtype=w.dtype)
        self.qkv_proj.weight.copy_(w)
        self.qkv_proj.bias.copy_(torch.cat([p.bias for p in lin]))
        del self.q_proj, self.k_proj, self.v_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        if "qkv_proj" in self._modules:   # fused (VisionTransformer.fuse, at the networks' finalize)
            q, k, v = self.qkv_proj(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (p(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
                       for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(attention(q, k, v, None, self.scale))


class VisionMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_tanh(self.fc1(x)))


class VisionLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(hidden, eps=eps)
        self.self_attn = VisionAttention(hidden, heads)
        self.layer_norm2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = VisionMLP(hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEmbeddings(nn.Module):
    def __init__(self, hidden: int, patch: int, image_size: int):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, hidden, kernel_size=patch, stride=patch)
        self.num_patches = (image_size // patch) ** 2
        self.position_embedding = nn.Embedding(self.num_patches, hidden)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        return x + self.position_embedding.weight[None]


class Encoder(nn.Module):
    def __init__(self, hidden: int, layers: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(hidden, heads, intermediate, eps) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class VisionTransformer(nn.Module):
    """pixels [N, 3, R, R] in [-1, 1] -> patch features [N, (R / patch)^2, hidden]."""

    def __init__(self, hidden: int, layers: int, heads: int, intermediate: int, patch: int, image_size: int,
                 eps: float = 1e-6):
        super().__init__()
        self.image_size = image_size
        self.embeddings = VisionEmbeddings(hidden, patch, image_size)
        self.encoder = Encoder(hidden, layers, heads, intermediate, eps)
        self.post_layernorm = nn.LayerNorm(hidden, eps=eps)

    def fuse(self) -> "VisionTransformer":
        """Every layer's q/k/v projections as one (VisionAttention.fuse); after the checkpoint is loaded."""
        for layer in self.encoder.layers:
            if "qkv_proj" not in layer.self_attn._modules:
                layer.self_attn.fuse()
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"vision tower takes {self.image_size}x{self.image_size} images, "
                             f"got {tuple(pixels.shape[-2:])}")
        return self.post_layernorm(self.encoder(self.embeddings(pixels)))
