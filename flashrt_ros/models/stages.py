"""Cutting the planner into stages, so a scheduler can run the actor between them.

Stage 0 embeds images + task text into the hidden sequence, middle stages run groups of
transformer blocks, the last stage runs the remaining blocks and the readout head. Each stage is a
pure function of static shapes, so each can be captured as its own graph over a hidden buffer.
"""
from __future__ import annotations

from typing import Callable

import torch

from .planner import Planner


def planner_hidden_shape(planner: Planner, batch: int) -> tuple[int, int, int]:
    c = planner.config
    tokens = 1 + c.n_cameras * c.patches_per_camera + c.task_len  # readout + image + task tokens
    return (batch, tokens, c.prefix_width)


def _embed(planner: Planner, images: torch.Tensor, task_tokens: torch.Tensor) -> torch.Tensor:
    return planner.embed(images, task_tokens)


def _run_blocks(planner: Planner, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    for block in planner.blocks[lo:hi]:
        x = block(x)
    return x


def planner_stages(planner: Planner, pieces: int) -> list[Callable]:
    """`pieces` callables whose composition equals `planner.forward`.

    pieces == 1: one stage (images, task_tokens) -> logits. Otherwise stage 0 takes
    (images, task_tokens) and returns hidden; later stages take hidden; the last returns logits.
    """
    n_blocks = len(planner.blocks)
    if not 1 <= pieces <= n_blocks + 1:
        raise ValueError(f"the planner can be cut into 1..{n_blocks + 1} pieces, not {pieces}")
    if pieces == 1:
        return [lambda inputs: planner(*inputs)]
    # blocks spread over the pieces after the embedding stage
    bounds = [round(i * n_blocks / (pieces - 1)) for i in range(pieces)]
    stages: list[Callable] = [lambda inputs: _embed(planner, *inputs)]
    for i in range(pieces - 1):
        lo, hi = bounds[i], bounds[i + 1]
        if i < pieces - 2:
            stages.append(lambda x, lo=lo, hi=hi: _run_blocks(planner, x, lo, hi))
        else:
            stages.append(lambda x, lo=lo, hi=hi: planner.classify(_run_blocks(planner, x, lo, hi)))
    return stages
