"""The eager policy: models + tokenizer + pre/post-processing as the `act` / `plan` callables of
`flashrt_ros.sim.run_episode`. CPU reference path (the GPU engine replaces it, same numbers).

Observations are duck-typed: `obs.images` (camera name -> (S, S, 3) uint8, in `camera_names`
order) and `obs.joint_positions` (state_dim,).
"""

from __future__ import annotations

import numpy as np
import torch

from .actor import Actor
from .checkpoint import REFERENCE_WEIGHTS, load_checkpoint
from .planner import Planner
from .tokenizer import WordTokenizer


def images_to_model(images: np.ndarray) -> torch.Tensor:
    """uint8 [..., n_cam, S, S, 3] -> float32 [..., n_cam, 3, S, S] in [-1, 1]."""
    x = torch.as_tensor(images).to(torch.float32)
    return (x / 127.5 - 1.0).movedim(-1, -3)


class EagerPolicy:
    def __init__(self, actor: Actor, planner: Planner, seed: int = 0, camera_names: tuple[str, ...] = ("top",)):
        self.actor, self.planner = actor.eval(), planner.eval()
        self.config = actor.config
        self.tokenizer = WordTokenizer(self.config.vocabulary)
        self.camera_names = camera_names
        self.generator = torch.Generator().manual_seed(seed)  # flow-matching noise: reproducible runs

    @classmethod
    def from_checkpoint(cls, directory=REFERENCE_WEIGHTS, seed: int = 0) -> "EagerPolicy":
        _, actor, planner = load_checkpoint(directory)
        return cls(actor, planner, seed=seed)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def _images(self, obs) -> torch.Tensor:
        return images_to_model(np.stack([obs.images[name] for name in self.camera_names]))[None]

    @torch.inference_mode()
    def act(self, obs, subtask_text: str) -> np.ndarray:
        return self.act_batch([obs], [subtask_text], [self.generator])[0]

    @torch.inference_mode()
    def plan(self, obs, task_text: str) -> str:
        return self.plan_batch([obs], [task_text])[0]

    @torch.inference_mode()
    def act_batch(self, observations, subtask_texts, generators) -> np.ndarray:
        """Several episodes' actor calls as one forward (data collection): each draws its noise from
        its own generator, so an episode's noise does not depend on its batch. [B, H, 2] float32."""
        c = self.config
        tokens = torch.stack([torch.from_numpy(self.tokenizer.encode(t, c.text_len)) for t in subtask_texts])
        state = torch.as_tensor(np.stack([np.asarray(o.joint_positions, dtype=np.float32) for o in observations]))
        noise = torch.cat([torch.randn(1, c.horizon, c.action_dim, generator=g) for g in generators])
        images = torch.cat([self._images(o) for o in observations])
        actions = self.actor(images, state, tokens, noise)
        return self.actor.to_joint_units(actions).numpy().astype(np.float32)

    @torch.inference_mode()
    def plan_batch(self, observations, task_texts) -> list[str]:
        tokens = torch.stack([torch.from_numpy(self.tokenizer.encode(t, self.config.task_len)) for t in task_texts])
        logits = self.planner(torch.cat([self._images(o) for o in observations]), tokens)
        return [self.config.subtasks[int(i)] for i in logits.argmax(-1)]
