"""The planner: camera images + task text -> logits over the subtask texts.

Same vision encoder design as the actor (its own weights); image tokens, task tokens and a
learned readout token go through a small transformer; the readout token is classified. In the
tabletop world the answer is visible: visited targets are drawn hollow, so the next subtask is the
first filled target in task order (or "done").
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import Block, VisionEncoder
from .tokenizer import WordTokenizer


class Planner(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = self.config = config
        self.vision = VisionEncoder(c.image_size, c.patch_size, c.n_cameras, c.vision_width, c.vision_layers,
                                    c.vision_heads, c.mlp_ratio)
        self.vision_to_prefix = nn.Linear(c.vision_width, c.prefix_width)
        self.text_embedding = nn.Embedding(c.vocab_size, c.prefix_width)
        # FiLM of the patch embeddings by the task text (positions included, so the order is in
        # it): each patch can tell locally where its colour stands in the task
        self.text_to_film = nn.Linear(c.prefix_width, 2 * c.vision_width)
        nn.init.zeros_(self.text_to_film.weight), nn.init.zeros_(self.text_to_film.bias)
        self.readout = nn.Parameter(torch.randn(1, 1, c.prefix_width) * 0.02)
        self.text_position = nn.Parameter(torch.randn(1, c.task_len, c.prefix_width) * 0.02)
        self.blocks = nn.ModuleList(Block(c.prefix_width, c.prefix_heads, c.mlp_ratio)
                                    for _ in range(c.planner_layers))
        self.norm = nn.LayerNorm(c.prefix_width)
        self.head = nn.Linear(c.prefix_width, len(c.subtasks))
        # token ids of each subtask text: the planner's argmax row is the actor's subtask input
        tokenizer = WordTokenizer(c.vocabulary)
        table = torch.stack([torch.from_numpy(tokenizer.encode(s, c.text_len)) for s in c.subtasks])
        self.register_buffer("subtask_table", table)

    def embed(self, images: torch.Tensor, task_tokens: torch.Tensor) -> torch.Tensor:
        """The hidden sequence [B, 1 + image tokens + task_len, prefix_width]: readout, images, text."""
        b = images.shape[0]
        text = self.text_embedding(task_tokens) + self.text_position
        image_tokens = self.vision_to_prefix(self.vision(images, self.text_to_film(text.mean(dim=1))))
        return torch.cat([self.readout.expand(b, -1, -1), image_tokens, text], dim=1)

    def classify(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from the readout token of the final hidden sequence."""
        return self.head(self.norm(hidden[:, 0]))

    def forward(self, images: torch.Tensor, task_tokens: torch.Tensor) -> torch.Tensor:
        """images [B, n_cam, 3, S, S] in [-1, 1], task_tokens [B, task_len] -> logits [B, n_subtasks]."""
        x = self.embed(images, task_tokens)
        for block in self.blocks:
            x = block(x)
        return self.classify(x)
