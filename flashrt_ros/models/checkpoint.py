"""Checkpoints: a directory with config.json, actor.safetensors, planner.safetensors.

Loading checks every tensor against the module the config builds; any difference is a
`CheckpointError` that names the tensor and both shapes (never a silent partial load).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .actor import Actor
from .config import ModelConfig
from .planner import Planner

CONFIG_FILE = "config.json"
ACTOR_FILE = "actor.safetensors"
PLANNER_FILE = "planner.safetensors"
REFERENCE_WEIGHTS = Path(__file__).resolve().parent / "weights" / "reference"


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(directory, actor: Actor, planner: Planner, extra: dict | None = None) -> Path:
    """Write the config (plus `extra`, e.g. training provenance) and both models' tensors."""
    if actor.config != planner.config:
        raise CheckpointError("actor and planner were built from different configs")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"model": actor.config.to_json_dict(), **({"training": extra} if extra else {})}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    for module, name in ((actor, ACTOR_FILE), (planner, PLANNER_FILE)):
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
        save_file(tensors, str(directory / name))
    return directory


def load_config(directory) -> ModelConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"no {CONFIG_FILE} in checkpoint directory {Path(directory)}")
    try:
        return ModelConfig.from_json_dict(json.loads(path.read_text())["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: invalid model config: {error}") from error


def load_into(module: torch.nn.Module, path: Path) -> None:
    """Copy the tensors of `path` into `module`, refusing any missing, unexpected or mis-shaped one."""
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint file {path}")
    tensors = load_file(str(path))
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path.name}: tensors missing {missing}, unexpected {unexpected}")
    for name, tensor in tensors.items():
        want = expected[name]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise CheckpointError(
                f"{path.name}: tensor {name!r} has shape {tuple(tensor.shape)} {tensor.dtype}, "
                f"the config expects {tuple(want.shape)} {want.dtype}")
    module.load_state_dict(tensors, strict=True)


def load_checkpoint(directory=REFERENCE_WEIGHTS, device="cpu") -> tuple[ModelConfig, Actor, Planner]:
    """(config, actor, planner) from a checkpoint directory, in eval mode on `device`."""
    directory = Path(directory)
    config = load_config(directory)
    actor, planner = Actor(config), Planner(config)
    load_into(actor, directory / ACTOR_FILE)
    load_into(planner, directory / PLANNER_FILE)
    return config, actor.to(device).eval(), planner.to(device).eval()
