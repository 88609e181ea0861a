"""LeRobot's input/output transforms as named steps: normalisation from the processor statistics,
images resized with padding, π0.5's state-in-the-prompt, tokenisation.

Each mirrors one LeRobot processor step (named in its docstring) and is checked against it in
parity/. Pure torch/numpy; the tokenizer is the `tokenizers` library reading the checkpoint's
tokenizer.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MODES = ("IDENTITY", "MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10")


class Normalizer:
    """LeRobot's NormalizerProcessorStep / UnnormalizerProcessorStep for one feature (state or action).

    stats: {"mean": [D], "std": [D], "min": ..., "q01": ...}; mode one of MODES."""

    def __init__(self, key: str, mode: str, stats: dict[str, torch.Tensor], eps: float = 1e-8):
        if mode not in MODES:
            raise ValueError(f"{key}: unsupported normalisation mode {mode!r} (known: {', '.join(MODES)})")
        need = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"),
                "QUANTILE10": ("q10", "q90"), "IDENTITY": ()}[mode]
        missing = [s for s in need if s not in stats]
        if missing:
            raise ValueError(f"{key}: {mode} normalisation needs statistics {missing}, the checkpoint has "
                             f"{sorted(stats)}")
        self.key, self.mode, self.eps = key, mode, float(eps)
        self.stats = {k: v.to(torch.float32) for k, v in stats.items()}
        self._np = None   # normalize_np's constants, made at its first call

    def _lo_span(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo_name, hi_name = {"MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"),
                            "QUANTILE10": ("q10", "q90")}[self.mode]
        lo = self.stats[lo_name].to(like.device)
        span = self.stats[hi_name].to(like.device) - lo
        return lo, torch.where(span == 0, torch.tensor(self.eps, device=like.device), span)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.mode == "IDENTITY":
            return x
        if self.mode == "MEAN_STD":
            return (x - self.stats["mean"].to(x.device)) / (self.stats["std"].to(x.device) + self.eps)
        lo, span = self._lo_span(x)
        if self.mode == "MIN_MAX":
            return 2 * (x - lo) / span - 1
        return 2.0 * (x - lo) / span - 1.0

    def normalize_np(self, x: np.ndarray) -> np.ndarray:
        """normalize() on a float32 numpy vector, bit for bit (the same float32 operations in the same
        order, the constant terms computed once by torch): no torch dispatch on the per-chunk path."""
        if self._np is None:
            probe = torch.zeros_like(self._any())
            if self.mode == "MEAN_STD":
                self._np = (self.stats["mean"].numpy(), (self.stats["std"] + self.eps).numpy())
            elif self.mode != "IDENTITY":
                self._np = tuple(t.numpy() for t in self._lo_span(probe))
            else:
                self._np = ()
        x = np.asarray(x, dtype=np.float32)
        if self.mode == "IDENTITY":
            return x.copy()
        if self.mode == "MEAN_STD":
            mean, denom = self._np
            return (x - mean) / denom
        lo, span = self._np
        return np.float32(2) * (x - lo) / span - np.float32(1)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.mode == "IDENTITY":
            return x
        if self.mode == "MEAN_STD":
            return x * self.stats["std"].to(x.device) + self.stats["mean"].to(x.device)
        lo, span = self._lo_span(x)
        if self.mode == "MIN_MAX":
            return (x + 1) / 2 * span + lo
        return (x + 1.0) * span / 2.0 + lo

    def affine(self, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, offset) with transform(x) = x * scale + offset, for fused kernels. Float32, [D]."""
        probe = torch.stack([torch.zeros_like(self._any()), torch.ones_like(self._any())])
        y = self.unnormalize(probe) if inverse else self.normalize(probe)
        return y[1] - y[0], y[0]

    def _any(self) -> torch.Tensor:
        return next(iter(self.stats.values()))


def read_normalizers(policy_dir: Path) -> tuple[dict[str, Normalizer], dict[str, Normalizer]]:
    """The (pre, post) normalisers from policy_preprocessor.json / policy_postprocessor.json and their
    .safetensors statistics, keyed by feature ("observation.state", "action")."""
    from safetensors.torch import load_file

    def read(filename: str, registry: str) -> dict[str, Normalizer]:
        path = policy_dir / filename
        if not path.is_file():
            raise FileNotFoundError(f"{policy_dir}: no {filename} (a LeRobot policy directory has the processor "
                                    f"files next to config.json)")
        pipeline = json.loads(path.read_text())
        out: dict[str, Normalizer] = {}
        for step in pipeline.get("steps", []):
            if step.get("registry_name") != registry:
                continue
            cfg = step.get("config", {})
            flat = load_file(str(policy_dir / step["state_file"])) if step.get("state_file") else {}
            stats: dict[str, dict[str, torch.Tensor]] = {}
            for flat_key, t in flat.items():
                key, stat = flat_key.rsplit(".", 1)
                stats.setdefault(key, {})[stat] = t
            norm_map = cfg.get("norm_map", {})
            for key, feat in cfg.get("features", {}).items():
                mode = norm_map.get(feat["type"], "IDENTITY")
                if feat["type"] in ("STATE", "ACTION") and key in stats:
                    out[key] = Normalizer(key, mode, stats[key], cfg.get("eps", 1e-8))
                elif feat["type"] in ("STATE", "ACTION"):
                    out[key] = Normalizer(key, "IDENTITY", {})
        return out

    return (read("policy_preprocessor.json", "normalizer_processor"),
            read("policy_postprocessor.json", "unnormalizer_processor"))


def resize_with_pad_centered(images: torch.Tensor, size: int) -> torch.Tensor:
    """openpi's resize_with_pad_torch for float images in [0, 1]: [N, 3, H, W] -> [N, 3, size, size],
    aspect kept, bilinear, clamped to [0, 1], black bars centred."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    ratio = max(w / size, h / size)
    rh, rw = int(h / ratio), int(w / ratio)
    out = F.interpolate(images, size=(rh, rw), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    top, left = (size - rh) // 2, (size - rw) // 2
    return F.pad(out, (left, size - rw - left, top, size - rh - top), mode="constant", value=0.0)


def pi05_prompt(task: str, normalized_state: np.ndarray) -> str:
    """π0.5's prompt (LeRobot Pi05PrepareStateTokenizerProcessorStep): the normalised state, in [-1, 1],
    discretised into 256 bins and written as numbers after the task."""
    bins = np.digitize(np.asarray(normalized_state), bins=np.linspace(-1, 1, 256 + 1)[:-1]) - 1
    cleaned = task.strip().replace("_", " ").replace("\n", " ")
    return f"Task: {cleaned}, State: {' '.join(map(str, bins.reshape(-1)))};\nAction: "


def newline_prompt(task: str) -> str:
    """π0 and SmolVLA end the task with a newline (LeRobot's Pi0NewLineProcessor / SmolVLANewLineProcessor)."""
    return task if task.endswith("\n") else task + "\n"


class PromptTokenizer:
    """A Hugging Face tokenizer.json read with the `tokenizers` library, padded right to max_length
    (LeRobot's TokenizerProcessorStep: padding="max_length", truncation)."""

    def __init__(self, path: Path, max_length: int):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_length = int(max_length)
        self.pad_id = self._pad_id(path)

    @staticmethod
    def _pad_id(path: Path) -> int:
        cfg_path = path.parent / "tokenizer_config.json"
        if cfg_path.is_file():
            pad = json.loads(cfg_path.read_text()).get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            if pad is not None:
                from tokenizers import Tokenizer
                tid = Tokenizer.from_file(str(path)).token_to_id(pad)
                if tid is not None:
                    return int(tid)
        return 0

    def encode(self, text: str) -> list[int]:
        """The token ids of `text`, neither truncated nor padded."""
        return self.tokenizer.encode(text).ids

    def pad(self, ids: list[int], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """ids truncated / padded right to `length` (default max_length): (tokens int64, mask bool)."""
        length = self.max_length if length is None else int(length)
        ids = ids[:length]
        tokens = np.full(length, self.pad_id, dtype=np.int64)
        mask = np.zeros(length, dtype=bool)
        tokens[: len(ids)] = ids
        mask[: len(ids)] = True
        return tokens, mask

    def __call__(self, text: str, length: int | None = None, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """pad(encode(text), length); strict: a text longer than `length` tokens is an error (ValueError),
        not truncated."""
        ids = self.encode(text)
        if strict and length is not None and len(ids) > int(length):
            raise ValueError(f"the prompt is {len(ids)} tokens, more than the {int(length)} the graph holds")
        return self.pad(ids, length)
