"""The value critic: cameras + joint state + task + subtask + episode time -> P(success).

A small torch module, its config as data (`CriticConfig`) and a directory format that a team can
fill with its own trained critic:

    my_critic/
      config.json          {"critic": {...CriticConfig fields...}, "training": {...provenance...}}
      critic.safetensors   the module's state_dict (safetensors)

`load_critic(dir)` checks every tensor against the module the config builds (a difference is a
`CheckpointError` naming the tensor), as the policy checkpoints do. The host runs it as a captured
graph beside the actor (engines/critic.py), reading the actor's observation buffers in place:
images [1, n_cam, 3, S, S] in [-1, 1] (the actor's preprocessing), the joint state [1, state_dim]
as measured (policy units), the active subtask's token ids [1, text_len] (the hand-off slot the
actor reads), the task's token ids [1, task_len] (the planner's task buffer) and the seconds since
the episode started [1]. So a critic's config must agree with the policy's: image_size, n_cameras,
state_dim, text_len, task_len and vocabulary (checked at configure, by name).

Output: one logit; `value = sigmoid(logit)` is read as the probability that the episode ends in
success within its time limit. The reference critic (weights/reference_critic) is trained on
rollouts of the shipped policy in the tabletop world with failures injected (flashrt_ros.tools.
train_critic); its planner-sized trunk starts from the shipped planner's weights.

Architecture: the planner's layout (a ViT over the cameras whose patch embeddings are FiLM-
conditioned on the task text, then a transformer over [readout, image tokens, task tokens]) plus
the subtask tokens and one token for (joint state, episode time). The readout is the value.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoint import CheckpointError, load_into
from .config import WORLD_VOCABULARY, ModelConfig
from .layers import Block, VisionEncoder

CRITIC_CONFIG_FILE = "config.json"
CRITIC_FILE = "critic.safetensors"
REFERENCE_CRITIC = Path(__file__).resolve().parent / "weights" / "reference_critic"
# The inputs a critic gets, in this order (see the module docstring for their layouts).
CRITIC_INPUTS = ("images", "state", "task_tokens", "subtask_tokens", "episode_time_s")


@dataclass(frozen=True)
class CriticConfig:
    name: str = "reference_critic"
    # inputs: must match the policy it sits beside (checked by name at configure)
    image_size: int = 96
    n_cameras: int = 1
    patch_size: int = 16
    state_dim: int = 2
    text_len: int = 4
    task_len: int = 8
    vocabulary: tuple[str, ...] = WORLD_VOCABULARY
    # sizes
    vision_width: int = 64
    vision_layers: int = 1
    vision_heads: int = 4
    width: int = 96
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    # the episode-time input is fed as seconds / time_scale_s (the reference critic: 5 s, a clean
    # episode's length, where the seconds that matter are; its training recipe sets it)
    time_scale_s: float = 30.0

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary) + 2  # pad, unk (WordTokenizer)

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"critic image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads in ((self.vision_width, self.vision_heads), (self.width, self.heads)):
            if width % heads:
                raise ValueError(f"critic width {width} is not divisible by heads {heads}")
        if not self.time_scale_s > 0:
            raise ValueError(f"critic time_scale_s must be > 0, got {self.time_scale_s}")

    @classmethod
    def for_policy(cls, policy: ModelConfig, **sizes) -> "CriticConfig":
        """A critic whose inputs match `policy` (and, by default, whose trunk is its planner's size)."""
        base = dict(image_size=policy.image_size, n_cameras=policy.n_cameras, patch_size=policy.patch_size,
                    state_dim=policy.state_dim, text_len=policy.text_len, task_len=policy.task_len,
                    vocabulary=tuple(policy.vocabulary), vision_width=policy.vision_width,
                    vision_layers=policy.vision_layers, vision_heads=policy.vision_heads,
                    width=policy.prefix_width, layers=policy.planner_layers, heads=policy.prefix_heads,
                    mlp_ratio=policy.mlp_ratio)
        base.update(sizes)
        return cls(**base)

    def mismatch(self, policy: ModelConfig) -> list[str]:
        """The input fields on which this critic and the policy disagree, as 'field: critic x, policy y'."""
        out = []
        for name in ("image_size", "n_cameras", "state_dim", "text_len", "task_len"):
            mine, theirs = getattr(self, name), getattr(policy, name)
            if mine != theirs:
                out.append(f"{name}: critic {mine}, policy {theirs}")
        if tuple(self.vocabulary) != tuple(policy.vocabulary):
            out.append("vocabulary: the critic's token ids are not the policy's")
        return out

    def to_json_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json_dict(cls, data: dict) -> "CriticConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown CriticConfig fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# Seeded critics for GPU benchmarks (no trained weights): ~100M parameters beside the π0-like actor.
CRITIC_PRESETS: dict[str, CriticConfig] = {
    "reference_critic": CriticConfig(),
    "critic_100m": CriticConfig(name="critic_100m", image_size=224, patch_size=14, text_len=16, task_len=32,
                                vision_width=768, vision_layers=9, vision_heads=12, width=768, layers=5,
                                heads=12),
}


class Critic(nn.Module):
    def __init__(self, config: CriticConfig):
        super().__init__()
        c = self.config = config
        self.vision = VisionEncoder(c.image_size, c.patch_size, c.n_cameras, c.vision_width, c.vision_layers,
                                    c.vision_heads, c.mlp_ratio)
        self.vision_to_prefix = nn.Linear(c.vision_width, c.width)
        self.text_embedding = nn.Embedding(c.vocab_size, c.width)
        self.text_to_film = nn.Linear(c.width, 2 * c.vision_width)
        nn.init.zeros_(self.text_to_film.weight), nn.init.zeros_(self.text_to_film.bias)
        self.readout = nn.Parameter(torch.randn(1, 1, c.width) * 0.02)
        self.text_position = nn.Parameter(torch.randn(1, c.task_len, c.width) * 0.02)      # the task's
        self.subtask_position = nn.Parameter(torch.randn(1, c.text_len, c.width) * 0.02)
        self.state_time = nn.Linear(c.state_dim + 1, c.width)
        self.blocks = nn.ModuleList(Block(c.width, c.heads, c.mlp_ratio) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, 1)
        self.register_buffer("state_mean", torch.zeros(c.state_dim))
        self.register_buffer("state_std", torch.ones(c.state_dim))

    def forward(self, images: torch.Tensor, state: torch.Tensor, task_tokens: torch.Tensor,
                subtask_tokens: torch.Tensor, episode_time_s: torch.Tensor) -> torch.Tensor:
        """images [B, n_cam, 3, S, S] in [-1, 1], state [B, state_dim], task_tokens [B, task_len],
        subtask_tokens [B, text_len], episode_time_s [B] -> logits [B] (value = sigmoid)."""
        b = images.shape[0]
        task = self.text_embedding(task_tokens) + self.text_position
        subtask = self.text_embedding(subtask_tokens) + self.subtask_position
        image_tokens = self.vision_to_prefix(self.vision(images, self.text_to_film(task.mean(dim=1))))
        s = (state - self.state_mean.to(state.dtype)) / self.state_std.to(state.dtype)
        t = (episode_time_s / self.config.time_scale_s).to(s.dtype)
        state_time = self.state_time(torch.cat([s, t.reshape(b, 1)], dim=-1))[:, None]
        x = torch.cat([self.readout.expand(b, -1, -1), image_tokens, task, subtask, state_time], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))[:, 0]

    def value(self, *inputs) -> torch.Tensor:
        return torch.sigmoid(self.forward(*inputs))

    def init_from_planner(self, planner: nn.Module) -> list[str]:
        """Start from a planner of the same trunk size (its weights already tell visited targets
        from the next one in task order): copies every tensor whose name and shape match; returns
        their names."""
        mine = self.state_dict()
        copied = []
        with torch.no_grad():
            for name, tensor in planner.state_dict().items():
                if name in mine and mine[name].shape == tensor.shape and not name.startswith("head."):
                    mine[name].copy_(tensor)
                    copied.append(name)
        return copied


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_critic(directory, critic: Critic, extra: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"critic": critic.config.to_json_dict(), **({"training": extra} if extra else {})}
    (directory / CRITIC_CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in critic.state_dict().items()}
    save_file(tensors, str(directory / CRITIC_FILE))
    return directory


def load_critic_config(directory) -> CriticConfig:
    path = Path(directory) / CRITIC_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"no {CRITIC_CONFIG_FILE} in critic directory {Path(directory)}")
    try:
        return CriticConfig.from_json_dict(json.loads(path.read_text())["critic"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: invalid critic config: {error}") from error


def load_critic(directory) -> Critic:
    """A critic directory (config.json + critic.safetensors) -> Critic in eval mode, on the CPU."""
    config = load_critic_config(directory)
    critic = Critic(config)
    load_into(critic, Path(directory) / CRITIC_FILE)
    for name, tensor in critic.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{Path(directory) / CRITIC_FILE}: tensor {name!r} is not finite")
    return critic.eval()


def seeded_critic(preset: str, seed: int = 0) -> Critic:
    """A preset critic with seeded weights (benchmarks): its head is scaled so values are not saturated."""
    if preset not in CRITIC_PRESETS:
        raise KeyError(f"unknown critic preset {preset!r}; known: {sorted(CRITIC_PRESETS)}")
    torch.manual_seed(seed)
    critic = Critic(CRITIC_PRESETS[preset])
    with torch.no_grad():
        critic.head.weight.mul_(1.0 / math.sqrt(critic.config.width))
    return critic.eval()
