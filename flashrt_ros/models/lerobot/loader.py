"""A LeRobot policy directory -> our network + its transforms.

    policy = load_policy("/path/to/pi05_checkpoint", device="cuda", dtype="bfloat16")
    actions = policy.predict([cam0, cam1], state, tokens, token_mask, noise)   # eager, for checks

The directory is what LeRobot's `save_pretrained` writes: config.json, model.safetensors,
policy_preprocessor.json / policy_postprocessor.json and their statistics, plus (for serving) the
tokenizer's tokenizer.json. LeRobot itself is never imported.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .pi0 import GEMMA_VARIANTS, GemmaDims, Pi0, VisionDims
from .processing import Normalizer, PromptTokenizer, newline_prompt, pi05_prompt, read_normalizers

KINDS = ("pi0", "pi05", "smolvla")
STATE_KEY, ACTION_KEY = "observation.state", "action"


class PolicyDirError(ValueError):
    """The directory is not a LeRobot policy we can run; the message says what is wrong."""


@dataclass
class LerobotPolicy:
    path: Path
    kind: str
    config: dict
    model: torch.nn.Module
    camera_keys: list[str]
    state_dim: int
    action_dim: int
    pre: dict[str, Normalizer]
    post: dict[str, Normalizer]
    tokenizer: PromptTokenizer | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def chunk_size(self) -> int:
        return int(self.config["chunk_size"])

    @property
    def n_action_steps(self) -> int:
        return int(self.config.get("n_action_steps", self.chunk_size))

    @property
    def max_length(self) -> int:
        return int(self.config.get("tokenizer_max_length", 48))

    # --- transforms (host side, numpy/torch) --------------------------------------------------------
    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        return self.pre[STATE_KEY].normalize(state) if STATE_KEY in self.pre else state.float()

    def normalize_state_np(self, state: np.ndarray) -> np.ndarray:
        """normalize_state on a float32 numpy vector [D], bit for bit (Normalizer.normalize_np)."""
        return self.pre[STATE_KEY].normalize_np(state) if STATE_KEY in self.pre else np.asarray(state, np.float32)

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.post[ACTION_KEY].unnormalize(actions) if ACTION_KEY in self.post else actions.float()

    def prompt(self, task: str, normalized_state: np.ndarray | None = None) -> str:
        if self.kind == "pi05":
            if normalized_state is None:
                raise ValueError("π0.5 puts the state in the prompt: pass the normalised state")
            return pi05_prompt(task, normalized_state)
        return newline_prompt(task)

    def tokenize(self, text: str, length: int | None = None, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, mask) padded right to `length` (default: the policy's tokenizer_max_length) and
        truncated there, as LeRobot's tokenizer step does; strict: longer is a ValueError instead."""
        return self._tokenizer()(text, length, strict)

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` is, before any truncation."""
        return len(self._tokenizer().encode(text))

    def _tokenizer(self):
        if self.tokenizer is None:
            raise PolicyDirError(f"{self.path}: no tokenizer.json (copy the policy's tokenizer.json — PaliGemma's for "
                                 f"π0/π0.5, SmolVLM2's for SmolVLA — into the directory, or set `tokenizer`)")
        return self.tokenizer

    def probe_inputs(self, n_cameras: int, seed: int = 0, tokens: int | None = None) -> dict[str, torch.Tensor]:
        """Seeded network inputs of the right shapes (CPU tensors, batch 1): for benchmarks and the
        start-up equivalence gate of a fast path. Images in [-1, 1], half the prompt valid; `tokens`
        prompt slots (default: tokenizer_max_length)."""
        g = torch.Generator().manual_seed(seed)
        R, L = self.model.image_size, (self.max_length if tokens is None else int(tokens))
        tokens = torch.randint(3, 1000, (1, L), generator=g)
        mask = torch.zeros(1, L, dtype=torch.bool)
        mask[:, : max(1, L // 2)] = True
        return {
            "images": torch.rand(1, n_cameras, 3, R, R, generator=g) * 2 - 1,
            "img_masks": torch.ones(1, n_cameras, dtype=torch.bool),
            "tokens": torch.where(mask, tokens, torch.zeros_like(tokens)),
            "token_mask": mask,
            "state": torch.randn(1, int(self.config["max_state_dim"]), generator=g) * 0.5,
            "noise": torch.randn(1, self.chunk_size, int(self.config["max_action_dim"]), generator=g),
        }

    # --- eager reference path -----------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: list[torch.Tensor], state: torch.Tensor, tokens: torch.Tensor,
                token_mask: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Raw cameras [B, 3, H, W] in [0, 1], raw state [B, state_dim], token ids/mask [B, L],
        noise [B, chunk, max_action_dim] -> unnormalised actions [B, chunk, action_dim] (eager)."""
        dev = self.device
        imgs = self.model.prepare_images([im.to(dev) for im in images])
        B = imgs.shape[0]
        masks = torch.ones(B, imgs.shape[1], dtype=torch.bool, device=dev)
        s = self.normalize_state(state.to(dev))
        s = torch.nn.functional.pad(s, (0, int(self.config["max_state_dim"]) - s.shape[-1]))
        out = self.model(imgs, masks, tokens.to(dev), token_mask.to(dev), s, noise.to(dev))
        return self.unnormalize_actions(out[..., : self.action_dim])


def read_config(path: Path) -> dict:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise PolicyDirError(f"{path}: no config.json (expected a LeRobot policy directory)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as err:
        raise PolicyDirError(f"{cfg_path}: not readable JSON ({err})") from None
    kind = cfg.get("type") if isinstance(cfg, dict) else None
    if kind not in KINDS:
        raise PolicyDirError(f"{path}: policy type {kind!r} is not supported (supported: {', '.join(KINDS)})")
    missing = [k for k in ("chunk_size", "max_state_dim", "max_action_dim") if not isinstance(cfg.get(k), int)]
    if missing:
        raise PolicyDirError(f"{cfg_path}: missing or non-integer {missing}")
    return cfg


def build_network(path: Path, cfg: dict) -> torch.nn.Module:
    """The empty network for this config. A reduced-size test model carries its dims in arch.json
    (LeRobot's config.json names only the variants)."""
    arch = json.loads((path / "arch.json").read_text()) if (path / "arch.json").is_file() else {}
    kind = cfg["type"]
    if kind in ("pi0", "pi05"):
        def gemma(which: str, variant_key: str) -> GemmaDims:
            if which in arch:  # Hugging Face config field names, as parity/ writes them
                a = arch[which]
                return GemmaDims(width=a["hidden_size"], depth=a["num_hidden_layers"], mlp_dim=a["intermediate_size"],
                                 num_heads=a["num_attention_heads"], num_kv_heads=a["num_key_value_heads"],
                                 head_dim=a["head_dim"])
            variant = cfg.get(variant_key)
            if variant not in GEMMA_VARIANTS:
                raise PolicyDirError(f"{path}: unknown {variant_key} {variant!r}")
            return GEMMA_VARIANTS[variant]
        v = arch.get("vision")
        vision = VisionDims(hidden=v["hidden_size"], layers=v["num_hidden_layers"], heads=v["num_attention_heads"],
                            intermediate=v["intermediate_size"], patch=v["patch_size"]) if v else VisionDims()
        res = cfg.get("image_resolution", [224, 224])
        return Pi0(gemma("vlm", "paligemma_variant"), gemma("expert", "action_expert_variant"), vision,
                   pi05=kind == "pi05", image_size=int(res[0]), chunk_size=int(cfg["chunk_size"]),
                   max_state_dim=int(cfg["max_state_dim"]), max_action_dim=int(cfg["max_action_dim"]),
                   num_steps=int(cfg.get("num_inference_steps", 10)), min_period=float(cfg.get("min_period", 4e-3)),
                   max_period=float(cfg.get("max_period", 4.0)),
                   vocab_size=int(arch.get("vlm", {}).get("vocab_size", 257152)))
    from .smolvla import SMOLVLM2_500M, SmolVLA
    vlm_name = cfg.get("vlm_model_name", "")
    vlm_dir = Path(vlm_name) if Path(vlm_name).is_absolute() else path / vlm_name
    if vlm_name and (vlm_dir / "config.json").is_file():
        vlm = json.loads((vlm_dir / "config.json").read_text())
    else:
        vlm = SMOLVLM2_500M
    return SmolVLA(cfg, vlm)


def load_policy(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                tokenizer: str | Path | None = None) -> LerobotPolicy:
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_dir():
        raise PolicyDirError(f"{path}: not a directory")
    cfg = read_config(path)
    device = torch.device(device)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise PolicyDirError(f"{path}: no model.safetensors")
    net = build_network(path, cfg)
    try:
        tensors = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error type for a truncated/corrupt file
        raise PolicyDirError(f"{weights}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    try:
        net.load_state_dict(net.convert_state_dict(tensors), strict=True)
    except KeyError as e:
        raise PolicyDirError(f"{path}: {e.args[0]}") from None
    del tensors
    net.finalize(device, dtype)
    feats = cfg.get("input_features", {})
    cameras = [k for k, f in feats.items() if f.get("type") == "VISUAL"]
    if not cameras:
        raise PolicyDirError(f"{path}: config.json lists no camera (VISUAL) input features")
    state_dim = int(feats.get(STATE_KEY, {}).get("shape", [cfg["max_state_dim"]])[0])
    action_dim = int(cfg.get("output_features", {}).get(ACTION_KEY, {}).get("shape", [cfg["max_action_dim"]])[0])
    try:
        pre, post = read_normalizers(path)
    except (OSError, ValueError, KeyError) as err:
        raise PolicyDirError(f"{path}: processor files: {type(err).__name__}: {err}") from None
    tok_path = Path(tokenizer) if tokenizer is not None else path / "tokenizer.json"
    tok = PromptTokenizer(tok_path, int(cfg.get("tokenizer_max_length", 48))) if tok_path.is_file() else None
    if tokenizer is not None and tok is None:
        raise PolicyDirError(f"tokenizer {tok_path} not found")
    return LerobotPolicy(path=path, kind=cfg["type"], config=cfg, model=net, camera_keys=cameras,
                         state_dim=state_dim, action_dim=action_dim, pre=pre, post=post, tokenizer=tok,
                         device=device)
