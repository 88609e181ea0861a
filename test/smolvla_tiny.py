"""A tiny SmolVLA policy directory for the main suite, written without LeRobot.

test/fixtures/lerobot_smolvla_tiny_config holds what a LeRobot 0.6.1 save of parity's tiny SmolVLA
(parity/lerobot_reference.py ARCH["smolvla"]["tiny"], vocabulary cut to 1024) has besides its weights:
config.json, the processor files and their statistics, vlm/config.json (the SmolVLM dims). The weights
(seeded, ~7 MB in float32, so not committed) are written here under LeRobot's tensor names, and a small
word-level tokenizer.json (the π0 fixture's) is copied beside them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"
CONFIG_DIR = FIXTURES / "lerobot_smolvla_tiny_config"

# ours -> LeRobot's names (SmolVLA.map_key inverted)
_INVERSE = (("vision.", "vlm_with_expert.vlm.model.vision_model."),
            ("connector.", "vlm_with_expert.vlm.model.connector.modality_projection.proj."),
            ("embed.", "vlm_with_expert.vlm.model.text_model.embed_tokens."),
            ("vlm.", "vlm_with_expert.vlm.model.text_model.layers."),
            ("expert_norm.", "vlm_with_expert.lm_expert.norm."),
            ("expert.", "vlm_with_expert.lm_expert.layers."))


def lerobot_name(name: str) -> str:
    return next((new + name[len(old):] for old, new in _INVERSE if name.startswith(old)), name)


def write_smolvla_tiny(out: Path, seed: int = 0, **config) -> Path:
    """The tiny SmolVLA directory at `out`; `config` overrides config.json fields (e.g. attention_mode)."""
    import json

    from safetensors.torch import save_file

    from flashrt_ros.models.lerobot.loader import build_network, read_config
    shutil.copytree(CONFIG_DIR, out, dirs_exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURES / "lerobot_pi0_tiny" / f, out / f)
    if config:
        cfg = json.loads((out / "config.json").read_text())
        cfg.update(config)
        (out / "config.json").write_text(json.dumps(cfg, indent=4))
    net = build_network(out, read_config(out))
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in net.named_parameters():
        if p.ndim >= 2:   # matrices N(0, 1/fan_in); norm scales around 1, other vectors around 0
            v = torch.randn(p.shape, generator=g) / (p.shape[-1] if name.endswith("embed.weight") else p[0].numel()) ** 0.5
        else:
            v = 0.1 * torch.randn(p.shape, generator=g) + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
        sd[lerobot_name(name)] = v.contiguous()
    save_file(sd, str(out / "model.safetensors"))
    return out
