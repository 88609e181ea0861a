"""The actor: observation -> a chunk of future actions, π0-style flow matching.

    prefix  = encode(images, state, subtask_tokens)   # once per chunk: the condition cache
    actions = denoise(prefix, noise)                   # K Euler steps of the action expert

Flow convention (rectified flow, time runs noise -> data): x_t = t * actions + (1 - t) * noise,
the expert predicts the velocity u = actions - noise, and denoising integrates
x_{t + 1/K} = x_t + u(x_t, t) / K from t = 0 (pure noise) to t = 1. (π0 writes the same flow with
t reversed.) Actions are normalised: joint units = a * action_std + action_mean (buffers).

`denoise` is a static Python loop over buffers and fixed shapes (no .item(), no data-dependent
branches) so the whole chunk can be captured as one CUDA graph.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import Block, TimeEmbedding, VisionEncoder
from .rtc import guided_velocity


class Actor(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = self.config = config
        # prefix encoder
        self.vision = VisionEncoder(c.image_size, c.patch_size, c.n_cameras, c.vision_width, c.vision_layers,
                                    c.vision_heads, c.mlp_ratio)
        self.vision_to_prefix = nn.Linear(c.vision_width, c.prefix_width)
        self.text_embedding = nn.Embedding(c.vocab_size, c.prefix_width)
        # FiLM of the patch embeddings by the subtask text (as RT-1 conditions its image encoder on
        # the instruction): each patch can tell locally whether it shows the named target, so
        # finding it needs one attention hop instead of a text -> state -> image chain
        self.text_to_film = nn.Linear(c.prefix_width, 2 * c.vision_width)
        nn.init.zeros_(self.text_to_film.weight), nn.init.zeros_(self.text_to_film.bias)
        self.state_to_prefix = nn.Linear(c.state_dim, c.prefix_width)
        self.text_state_position = nn.Parameter(torch.randn(1, c.text_len + 1, c.prefix_width) * 0.02)
        self.prefix_blocks = nn.ModuleList(Block(c.prefix_width, c.prefix_heads, c.mlp_ratio)
                                           for _ in range(c.prefix_layers))
        self.prefix_norm = nn.LayerNorm(c.prefix_width)
        # action expert
        self.action_in = nn.Linear(c.action_dim, c.expert_width)
        self.action_position = nn.Parameter(torch.randn(1, c.horizon, c.expert_width) * 0.02)
        self.time_embedding = TimeEmbedding(c.expert_width)
        # the encoded state token (last prefix token) added to every action token: actions are
        # absolute positions that start at the current state, so give the expert a direct path to it
        self.state_to_expert = nn.Linear(c.prefix_width, c.expert_width)
        self.expert_blocks = nn.ModuleList(Block(c.expert_width, c.expert_heads, c.mlp_ratio, c.prefix_width)
                                           for _ in range(c.expert_layers))
        self.expert_norm = nn.LayerNorm(c.expert_width)
        self.action_out = nn.Linear(c.expert_width, c.action_dim)
        # normalisation statistics, set by training and saved with the weights
        self.register_buffer("state_mean", torch.zeros(c.state_dim))
        self.register_buffer("state_std", torch.ones(c.state_dim))
        self.register_buffer("action_mean", torch.zeros(c.action_dim))
        self.register_buffer("action_std", torch.ones(c.action_dim))
        self.register_buffer("step_times", torch.arange(c.num_steps, dtype=torch.float32) / c.num_steps,
                             persistent=False)

    # --- prefix: encoded once per chunk ------------------------------------------------------
    def encode(self, images: torch.Tensor, state: torch.Tensor, subtask_tokens: torch.Tensor) -> torch.Tensor:
        """images [B, n_cam, 3, S, S] in [-1, 1], state [B, state_dim] joint units, tokens [B, text_len]
        -> prefix [B, prefix_len, prefix_width]; the state token is last."""
        text = self.text_embedding(subtask_tokens)
        image_tokens = self.vision_to_prefix(self.vision(images, self.text_to_film(text.mean(dim=1))))
        state_token = self.state_to_prefix((state - self.state_mean) / self.state_std)[:, None]
        text_state = torch.cat([text, state_token], dim=1) + self.text_state_position
        x = torch.cat([image_tokens, text_state], dim=1)
        for block in self.prefix_blocks:
            x = block(x)
        return self.prefix_norm(x)

    # --- action expert -----------------------------------------------------------------------
    def condition(self, prefix: torch.Tensor):
        """What every denoise step reads from the prefix: per-block keys/values, the state feature."""
        context = [block.cross_attention.project_context(prefix) for block in self.expert_blocks]
        return context, self.state_to_expert(prefix[:, -1:])

    def velocity_from(self, condition, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted velocity [B, H, action_dim] at noisy actions x_t and flow time t: [B] (one time
        per chunk) or [B, H] (one per action token: training-time RTC gives the clean prefix
        tokens time 1). A [B, H] time that is uniform gives the [B] result bit for bit."""
        if t.dim() == 1:
            time = self.time_embedding(t)[:, None]
        else:  # per token, one [B] embedding per column: the same matmul shapes as the [B] path
            time = torch.stack([self.time_embedding(t[:, i]) for i in range(t.shape[1])], dim=1)
        return self.velocity_embedded(condition, x_t, time)

    def velocity_embedded(self, condition, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """velocity_from with the time already embedded: [B, 1, W] (per chunk) or [B, H, W]."""
        context, state_feature = condition
        x = self.action_in(x_t) + self.action_position + state_feature + time
        for block, kv in zip(self.expert_blocks, context):
            x = block(x, kv)
        return self.action_out(self.expert_norm(x))

    def velocity(self, prefix: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.velocity_from(self.condition(prefix), x_t, t)

    def denoise(self, prefix: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """K Euler steps from noise [B, H, action_dim] (t = 0) to normalised actions (t = 1)."""
        condition = self.condition(prefix)  # keys/values projected once per chunk, not per step
        x = noise
        step = 1.0 / self.config.num_steps
        for k in range(self.config.num_steps):  # static loop: unrolled into one graph
            x = x + step * self.velocity_from(condition, x, self.step_times[k].expand(x.shape[0]))
        return x

    def denoise_rtc(self, prefix: torch.Tensor, noise: torch.Tensor, actions_prefix: torch.Tensor,
                    weights: torch.Tensor, mode: str, settings=None) -> torch.Tensor:
        """The denoise loop with the previous chunk's rest as a prefix (real-time chunking).

        actions_prefix [B, H, action_dim] normalised, row i aligned with the new chunk's row i;
        weights [1, H, 1]. mode "guided": every step's velocity is guided toward the prefix by
        `weights` (flashrt_ros.models.rtc.guided_velocity with `settings`: ΠGDM or identity
        jacobian, tau = t, remaining = 1 - t). mode "trained" (hard prefix, for weights trained
        with training-time RTC): the tokens with weight 1 are the clean prefix at flow time 1 at
        every step (per-token time), the rest is denoised as usual; the result carries the prefix.
        Static loop, static shapes: captured as one graph like `denoise`."""
        condition = self.condition(prefix)
        K = self.config.num_steps
        step = 1.0 / K
        x = noise.clone()
        if mode == "trained":
            keep = weights >= 0.5                              # [1, H, 1]: the clean prefix tokens
            # per-token time with two values, t_k and 1: two [B] embeddings and a select per step
            # (the per-chunk embedding's matmul shapes: bit-exact with `denoise` where no token is kept)
            clean = self.time_embedding(torch.ones_like(self.step_times[:1]).expand(x.shape[0]))[:, None]
            for k in range(K):
                x = torch.where(keep, actions_prefix, x)
                noisy = self.time_embedding(self.step_times[k].expand(x.shape[0]))[:, None]
                x = x + step * self.velocity_embedded(condition, x, torch.where(keep, clean, noisy))
            return torch.where(keep, actions_prefix, x)
        if mode != "guided":
            raise ValueError(f"RTC mode {mode!r}: expected 'guided' or 'trained'")
        for k in range(K):
            t_k = self.step_times[k].expand(x.shape[0])
            tau = k / K
            v = guided_velocity(lambda x_t: self.velocity_from(condition, x_t, t_k), x, remaining=1.0 - tau,
                                tau=tau, prefix=actions_prefix, weights=weights,
                                max_weight=settings.max_guidance_weight, jacobian=settings.jacobian)
            x = x + step * v
        return x

    def forward(self, images, state, subtask_tokens, noise) -> torch.Tensor:
        return self.denoise(self.encode(images, state, subtask_tokens), noise)

    def to_joint_units(self, actions_norm: torch.Tensor) -> torch.Tensor:
        return actions_norm * self.action_std + self.action_mean

    def normalise_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean) / self.action_std
