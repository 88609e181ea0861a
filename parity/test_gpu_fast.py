"""parity/gpu_fast.py's policy directories are LeRobot's own: LeRobot 0.6.1 loads them exactly.

- full size (what the H200 run writes, issue 14 item 5): the tensors write_full(..., lerobot=True) saves
  are, name for name and shape for shape, LeRobot's π0 / π0.5 / SmolVLA model's state dict (both built
  on the meta device: no 4 B parameters here);
- tiny (the script's CPU rehearsal): LeRobot's from_pretrained + the exact-load check (lerobot_load) on
  the directory, and flashrt_ros' loader on the same directory.
"""
from pathlib import Path

import pytest
import torch

from parity import gpu_fast
from parity import lerobot_reference as ref


@pytest.mark.parametrize("kind", ref.KINDS)
def test_the_full_size_directory_has_exactly_lerobots_tensors(kind, tmp_path, monkeypatch):
    saved = {}
    monkeypatch.setattr(gpu_fast, "cpu_seeded_weights", lambda net, seed, unit=(): {
        n: torch.empty(p.shape, dtype=torch.bfloat16, device="meta") for n, p in net.named_parameters()})
    monkeypatch.setattr("safetensors.torch.save_file", lambda sd, path: saved.update(sd))
    d = gpu_fast.write_full(kind, tmp_path / kind, 2, size="full", lerobot=True, device="meta")
    from lerobot.configs import PreTrainedConfig
    cfg = PreTrainedConfig.from_pretrained(d)
    cfg.device = "cpu"
    if kind == "smolvla":
        cfg.vlm_model_name = str(d / "vlm")
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)   # PI0Policy moves itself
    with torch.device("meta"):
        policy = ref.POLICY_CLASSES[kind](cfg)
    live = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in saved.items()}
    assert sorted(set(live) - set(ours)) == [] and sorted(set(ours) - set(live)) == []
    assert {k: s for k, s in ours.items() if live[k] != s} == {}
    params = sum(torch.Size(s).numel() for s in live.values())
    assert params > (4e9 if kind != "smolvla" else 4e8)   # full size, not a tiny build


@pytest.mark.parametrize("kind", ref.KINDS)
def test_lerobot_loads_the_tiny_directory_exactly(kind, tmp_path):
    from flashrt_ros.models.lerobot import load_policy
    d = gpu_fast.write_full(kind, tmp_path / kind, 2, size="tiny", lerobot=True, device="cpu")
    loaded = gpu_fast.lerobot_load(kind, d, "cpu", None if kind == "smolvla" else "float32")   # raises if inexact
    assert list(loaded.policy.config.image_features) == gpu_fast.CAMERA_NAMES[:2]
    ours = load_policy(d, "cpu", "float32")
    assert ours.camera_keys == gpu_fast.CAMERA_NAMES[:2]
