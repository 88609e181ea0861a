"""Model sizes as data: one frozen `ModelConfig`, named presets, `ModelConfig.from_name`.

`reference` is the embedded default (trained on the tabletop world on CPU, shipped in
weights/reference). `pi0_like` has the same architecture at π0-like sizes (action expert ~300M
parameters, H = 50, K = 10, 224 x 224 cameras) with seeded weights, for GPU benchmarks only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# The words of the tabletop world (task texts, subtask texts). Order fixes the token ids.
WORLD_VOCABULARY = ("visit", "then", "go", "to", "done", "red", "green", "blue", "yellow")
WORLD_SUBTASKS = ("go to red", "go to green", "go to blue", "go to yellow", "done")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "reference"
    # observation
    image_size: int = 96
    n_cameras: int = 1
    patch_size: int = 16
    state_dim: int = 2
    text_len: int = 4  # subtask tokens fed to the actor
    task_len: int = 8  # task tokens fed to the planner
    vocabulary: tuple[str, ...] = WORLD_VOCABULARY
    subtasks: tuple[str, ...] = WORLD_SUBTASKS
    # vision encoder (shared design, separate weights in actor and planner)
    vision_width: int = 64
    vision_layers: int = 1
    vision_heads: int = 4
    # prefix encoder: image tokens + text tokens + state token, run once per chunk
    prefix_width: int = 96
    prefix_layers: int = 2
    prefix_heads: int = 4
    # action expert: H action tokens, self-attention + cross-attention to the prefix
    expert_width: int = 96
    expert_layers: int = 2
    expert_heads: int = 4
    mlp_ratio: int = 4
    # planner: vision encoder + task text + readout token
    planner_layers: int = 2
    # action chunk
    horizon: int = 16
    action_dim: int = 2
    num_steps: int = 10  # Euler steps of flow matching
    chunk_dt: float = 0.05  # seconds between consecutive actions of a chunk

    @property
    def patches_per_camera(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def prefix_len(self) -> int:
        return self.n_cameras * self.patches_per_camera + self.text_len + 1  # + state token

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary) + 2  # pad, unk

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads in ((self.vision_width, self.vision_heads), (self.prefix_width, self.prefix_heads),
                             (self.expert_width, self.expert_heads)):
            if width % heads:
                raise ValueError(f"width {width} is not divisible by heads {heads}")

    @classmethod
    def from_name(cls, name: str) -> "ModelConfig":
        if name not in PRESETS:
            raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
        return PRESETS[name]

    def to_json_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**data)


PRESETS: dict[str, ModelConfig] = {
    "reference": ModelConfig(),
    # π0 (openpi): SigLIP So400m vision, Gemma-2B prefix, Gemma-300M action expert, H = 50, K = 10.
    # Here: the same layout with a shallower prefix so the whole model stays ~1B parameters; the
    # action expert (width 1024, 16 layers, cross-attention to the 2048-wide prefix) is ~300M.
    "pi0_like": ModelConfig(
        name="pi0_like",
        image_size=224,
        n_cameras=3,
        patch_size=14,
        text_len=16,
        task_len=32,
        vision_width=1152,
        vision_layers=12,
        vision_heads=16,
        prefix_width=2048,
        prefix_layers=8,
        prefix_heads=16,
        expert_width=1024,
        expert_layers=16,
        expert_heads=8,
        planner_layers=8,
        horizon=50,
        num_steps=10,
        chunk_dt=0.02,  # 50 Hz control, as on π0's robots
    ),
}
PRESETS["pi0_like_1view"] = dataclasses.replace(PRESETS["pi0_like"], name="pi0_like_1view", n_cameras=1)
# The hierarchy for the interference benchmark: the π0-like actor beside a planner
# the size of a ~2.5B VLM (48 blocks of width 2048 over three 224 x 224 views).
PRESETS["pi0_like_heavy_planner"] = dataclasses.replace(PRESETS["pi0_like"], name="pi0_like_heavy_planner",
                                                        planner_layers=48)
