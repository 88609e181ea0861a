"""Transformer pieces shared by the actor and the planner. Static shapes, no masks, no caches.

Pre-LayerNorm blocks; attention through `scaled_dot_product_attention` (fused on GPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention; queries from `x`, keys/values from `context` (itself when None)."""

    def __init__(self, width: int, heads: int, context_width: int | None = None):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(context_width or width, 2 * width)
        self.out = nn.Linear(width, width)

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, heads, L, d] of a context; computed once when the context is fixed."""
        b, n, _ = context.shape
        kv = self.key_value(context).view(b, n, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        return kv[0], kv[1]

    def attend(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q = self.query(x).view(b, n, self.heads, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, keys, values)
        return self.out(y.transpose(1, 2).reshape(b, n, w))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.attend(x, *self.project_context(x if context is None else context))


class MLP(nn.Sequential):
    def __init__(self, width: int, ratio: int):
        super().__init__(nn.Linear(width, ratio * width), nn.GELU(approximate="tanh"), nn.Linear(ratio * width, width))


class Block(nn.Module):
    """Self-attention (+ cross-attention to a fixed context when `context_width` is set) + MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, context_width: int | None = None):
        super().__init__()
        self.self_norm = nn.LayerNorm(width)
        self.self_attention = Attention(width, heads)
        self.cross_norm = nn.LayerNorm(width) if context_width else None
        self.cross_attention = Attention(width, heads, context_width) if context_width else None
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, x: torch.Tensor, context_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.self_attention(self.self_norm(x))
        if self.cross_attention is not None:
            x = x + self.cross_attention.attend(self.cross_norm(x), *context_kv)
        return x + self.mlp(self.mlp_norm(x))


class VisionEncoder(nn.Module):
    """ViT-style: non-overlapping patches -> linear embedding + learned positions -> transformer.

    Why patches (not a conv stem): it is the SigLIP layout π0 uses, so the same module scales to the
    pi0_like preset unchanged; in the tabletop image a target disc (~10 px across) falls in 1-4
    16 x 16 patches and the linear patch embedding sees its exact pixels, which is enough to recover
    sub-patch positions. Cameras share weights and are told apart by a learned camera embedding.
    """

    def __init__(self, image_size: int, patch_size: int, n_cameras: int, width: int, layers: int, heads: int,
                 mlp_ratio: int):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        grid = image_size // patch_size
        # fixed 2D sin/cos positions give geometry from step one (localisation is the actor's job);
        # the learned part refines them
        self.register_buffer("fixed_position", sincos_2d_positions(grid, width)[None, None], persistent=False)
        self.position = nn.Parameter(torch.zeros(1, 1, grid * grid, width))
        self.camera = nn.Parameter(torch.randn(1, n_cameras, 1, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, images: torch.Tensor, film: torch.Tensor | None = None) -> torch.Tensor:
        """images [B, n_cam, 3, S, S] in [-1, 1] -> tokens [B, n_cam * patches, width].

        `film` [B, 2 * width] (scale, shift) conditions the patch embeddings on text before the
        transformer, as RT-1's FiLM-EfficientNet does with its instruction."""
        b, n_cam = images.shape[:2]
        x = self.patch_embedding(images.flatten(0, 1))  # [B*n_cam, W, S/p, S/p]
        x = x.flatten(2).transpose(1, 2).unflatten(0, (b, n_cam))  # [B, n_cam, patches, W]
        if film is not None:
            scale, shift = film[:, None, None].chunk(2, dim=-1)
            x = x * (1 + scale) + shift
        x = (x + self.fixed_position + self.position + self.camera).flatten(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def sincos_2d_positions(grid: int, width: int) -> torch.Tensor:
    """[grid * grid, width] row-major patch positions: sin/cos of x in one half, of y in the other."""
    quarter = width // 4
    frequencies = torch.pi * torch.logspace(0, math.log10(grid), quarter)  # 1/2 .. grid/2 cycles
    coords = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for c in (x.flatten(), y.flatten()):
        angles = c[:, None] * frequencies[None, :]
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, dim=1)
    return torch.nn.functional.pad(table, (0, width - table.shape[1]))


class TimeEmbedding(nn.Module):
    """Flow time t [B] in [0, 1] -> [B, width]: sin/cos features (1 to 100 cycles over [0, 1]) -> MLP.

    The frequencies are a buffer so the denoise loop allocates nothing new per step.
    """

    def __init__(self, width: int, features: int = 64):
        super().__init__()
        self.register_buffer("frequencies", torch.logspace(0, 2, features // 2), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(features, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = (2 * math.pi) * t[:, None] * self.frequencies[None, :]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))
