"""LeRobot 0.6.1's own pi0, pi0.5 and SmolVLA as the reference side of the parity tests.

Owns: building a seeded policy directory exactly as a robot team would have it (config.json +
model.safetensors + the processor pipelines and their stats), and running it through LeRobot's own
code (from_pretrained, the pre/post-processor pipelines, predict_action_chunk) to produce the
reference outputs and intermediates. Nothing here reimplements LeRobot; the only departures are
named and kept in one place each:

- the tokenizer is never run (the PaliGemma/SmolVLM tokenizers live on the hub): the pipeline's
  TokenizerProcessorStep is handed `TokenFeed`, which records the prompt strings it receives and
  returns the caller's token ids. Every other step runs as saved.
- "tiny" pi0/pi0.5 shrink the dims LeRobot derives from variant names and hard-codes for SigLIP
  (`pi_dims`, applied at build and again at load, from arch.json). SmolVLA needs no patch: its
  VLM dims come from the config directory this module writes (`out_dir/vlm`).
- every parameter is re-randomised from a seeded generator (LeRobot's init leaves pi0.5's adaRMS
  projections, the Gemma norm scales and the SigLIP biases at zero, which would hide whole paths).

Import only inside the Python 3.12 venv (.venv-lerobot, scripts/lerobot_venv.sh). CLI:
    python -m parity.lerobot_reference --kind pi05 --size tiny --seed 0 --out DIR
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported

import argparse
import contextlib
import inspect
import io
import json
import math
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import lerobot
from lerobot.configs import FeatureType, PolicyFeature, PreTrainedConfig
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.pi0 import modeling_pi0
from lerobot.policies.pi0.configuration_pi0 import PI0Config
from lerobot.policies.pi05 import modeling_pi05
from lerobot.policies.pi05.configuration_pi05 import PI05Config
from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
from lerobot.policies.smolvla import smolvlm_with_expert
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from lerobot.processor import TokenizerProcessorStep
from lerobot.processor import tokenizer_processor
from lerobot.utils.constants import ACTION, OBS_STATE

KINDS = ("pi0", "pi05", "smolvla")
SIZES = ("tiny", "full")
POLICY_CLASSES = {"pi0": modeling_pi0.PI0Policy, "pi05": modeling_pi05.PI05Policy, "smolvla": SmolVLAPolicy}
CONFIG_CLASSES = {"pi0": PI0Config, "pi05": PI05Config, "smolvla": SmolVLAConfig}
MODELING = {"pi0": modeling_pi0, "pi05": modeling_pi05}

# The robot: two cameras (pi0 naming), a 7-dof arm. Shorter than max_state_dim/max_action_dim
# (32), so padding is exercised; camera frames are 4:3, so resize-with-pad is too.
CAMERAS = ("observation.images.base_0_rgb", "observation.images.left_wrist_0_rgb")
CAMERA_HW = (240, 320)
STATE_DIM = 7
ACTION_DIM = 7
CHUNK = 50
DENOISE_STEPS = 10
BATCH = 2
TASKS = ("pick up the red_cube", "open the top drawer\n")  # '_' and a trailing newline on purpose

# Architectures, as the HF config fields they end up in. "full" is what LeRobot builds from
# PI0Config's variant names (gemma_2b + SigLIP so400m + gemma_300m) and from
# SmolVLM2-500M-Video-Instruct's config; test_reference checks the pi "full" preset against a
# meta-device build. "tiny" keeps every code path: pi0's attention reshape hard-codes 8 heads,
# the expert is narrower than the VLM (so a swapped width fails), SmolVLA keeps fewer VLM layers
# than the VLM has (num_vlm_layers truncation) with self/cross attention interleaved.
_GEMMA_2B = dict(hidden_size=2048, num_hidden_layers=18, intermediate_size=16384, num_attention_heads=8,
                 num_key_value_heads=1, head_dim=256, vocab_size=257152, rms_norm_eps=1e-6, rope_theta=10000.0)
_GEMMA_300M = dict(_GEMMA_2B, hidden_size=1024, intermediate_size=4096)
_SO400M = dict(hidden_size=1152, num_hidden_layers=27, num_attention_heads=16, intermediate_size=4304,
               patch_size=14, image_size=224, projection_dim=2048)
_SMOLVLM_TEXT = dict(hidden_size=960, num_hidden_layers=32, intermediate_size=2560, num_attention_heads=15,
                     num_key_value_heads=5, head_dim=64, vocab_size=49280, rms_norm_eps=1e-5, rope_theta=100000.0)
_SMOLVLM_VISION = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       patch_size=16, image_size=512)
ARCH = {
    "pi": {
        "full": {"vlm": _GEMMA_2B, "expert": _GEMMA_300M, "vision": _SO400M},
        "tiny": {
            "vlm": dict(_GEMMA_2B, hidden_size=128, num_hidden_layers=2, intermediate_size=256, head_dim=32,
                        vocab_size=1024),
            "expert": dict(_GEMMA_2B, hidden_size=64, num_hidden_layers=2, intermediate_size=128, head_dim=32,
                           vocab_size=1024),
            "vision": dict(hidden_size=144, num_hidden_layers=2, num_attention_heads=2, intermediate_size=288,
                           patch_size=14, image_size=224, projection_dim=128),
        },
    },
    "smolvla": {
        "full": {"text": _SMOLVLM_TEXT, "vision": _SMOLVLM_VISION, "scale_factor": 4, "num_vlm_layers": 16},
        "tiny": {
            "text": dict(_SMOLVLM_TEXT, hidden_size=128, num_hidden_layers=6, intermediate_size=256,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32),
            "vision": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                           patch_size=16, image_size=256),
            "scale_factor": 4,
            "num_vlm_layers": 4,
        },
    },
}


def _family(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return "smolvla" if kind == "smolvla" else "pi"


# --- the tokenizer stand-in ------------------------------------------------------------------


class TokenFeed:
    """Stands in for the tokenizer inside LeRobot's TokenizerProcessorStep.

    Called exactly as the step calls a HF tokenizer; returns the ids set with `feed()` and keeps the
    prompt strings it was given (after LeRobot's newline / pi0.5 state-prompt steps) in `prompts`.
    """

    def __init__(self) -> None:
        self.tokens: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.prompts: list[str] | None = None

    def feed(self, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        if tokens.dtype != torch.int64 or mask.dtype != torch.bool or tokens.shape != mask.shape:
            raise ValueError("tokens must be int64 and token_mask bool, of one shape [B, L]")
        self.tokens, self.mask, self.prompts = tokens, mask, None

    def __call__(self, text, *, max_length, padding, return_tensors="pt", **_):
        if self.tokens is None:
            raise RuntimeError("TokenFeed.feed(tokens, mask) must be called before the preprocessor runs")
        text = [text] if isinstance(text, str) else list(text)
        if len(text) != self.tokens.shape[0]:
            raise ValueError(f"{len(text)} prompts for {self.tokens.shape[0]} token rows")
        if padding == "max_length" and self.tokens.shape[1] != max_length:
            raise ValueError(f"this pipeline pads to {max_length} tokens; got {self.tokens.shape[1]}")
        if padding == "longest" and not bool(self.mask[:, -1].any()):
            raise ValueError("this pipeline pads to the longest prompt: some row must fill all L tokens")
        self.prompts = text
        return {"input_ids": self.tokens.clone(), "attention_mask": self.mask.to(torch.int64)}


@contextlib.contextmanager
def _tokenizer_never_loaded():
    """While building, LeRobot's processor factories get a TokenFeed instead of a hub tokenizer."""
    original = tokenizer_processor.AutoTokenizer

    class _Offline:
        @staticmethod
        def from_pretrained(*_, **__):
            return TokenFeed()

    tokenizer_processor.AutoTokenizer = _Offline
    try:
        yield
    finally:
        tokenizer_processor.AutoTokenizer = original


def _tokenizer_step(preprocessor) -> TokenizerProcessorStep:
    steps = [s for s in preprocessor.steps if isinstance(s, TokenizerProcessorStep)]
    if len(steps) != 1:
        raise RuntimeError(f"expected one TokenizerProcessorStep, found {len(steps)}")
    return steps[0]


# --- the one monkeypatch: tiny pi0/pi0.5 dims ---------------------------------------------------


@contextlib.contextmanager
def pi_dims(arch: dict):
    """Make LeRobot's pi0/pi0.5 model code build `arch` (an ARCH["pi"] entry or arch.json).

    LeRobot takes Gemma dims from the variant name (`get_gemma_config`: gemma_2b -> VLM,
    gemma_300m -> expert) and hard-codes SigLIP's intermediate size and projector width in
    `PaliGemmaWithExpertModel.__init__`. This swaps those three names in both modeling modules and
    edits the HF configs LeRobot produced just before the HF models are constructed; everything
    else is LeRobot's code. Restored on exit.
    """
    patched = {}

    def gemma_config(variant: str):
        dims = {"gemma_2b": arch["vlm"], "gemma_300m": arch["expert"]}[variant]
        return modeling_pi0.GemmaConfig(
            width=dims["hidden_size"], depth=dims["num_hidden_layers"], mlp_dim=dims["intermediate_size"],
            num_heads=dims["num_attention_heads"], num_kv_heads=dims["num_key_value_heads"],
            head_dim=dims["head_dim"])

    def set_text(hf_config, dims):
        hf_config.vocab_size = dims["vocab_size"]
        hf_config.rms_norm_eps = dims["rms_norm_eps"]
        hf_config.rope_parameters = dict(hf_config.rope_parameters, rope_theta=dims["rope_theta"])

    for module in MODELING.values():
        vlm_cls, expert_cls = module.PaliGemmaForConditionalGenerationWithPiGemma, module.PiGemmaForCausalLM

        def vlm(config, _cls=vlm_cls):
            vision = config.vision_config
            for key, value in arch["vision"].items():
                setattr(vision, key, value)
            set_text(config.text_config, arch["vlm"])
            return _cls(config=config)

        def expert(config, _cls=expert_cls):
            set_text(config, arch["expert"])
            return _cls(config=config)

        patched[module] = (module.get_gemma_config, vlm_cls, expert_cls)
        module.get_gemma_config = gemma_config
        module.PaliGemmaForConditionalGenerationWithPiGemma = vlm
        module.PiGemmaForCausalLM = expert
    try:
        yield
    finally:
        for module, (get, vlm_cls, expert_cls) in patched.items():
            module.get_gemma_config = get
            module.PaliGemmaForConditionalGenerationWithPiGemma = vlm_cls
            module.PiGemmaForCausalLM = expert_cls


def _dims_context(kind: str, arch: dict):
    """pi_dims when `arch` is not what LeRobot builds unaided; a no-op for "full" and SmolVLA."""
    if _family(kind) == "pi" and arch_key(arch) != arch_key(ARCH["pi"]["full"]):
        return pi_dims(arch)
    return contextlib.nullcontext()


def arch_key(arch: dict) -> dict:
    """The part of an arch record (ARCH entry or arch.json) that decides the build; arch.json adds
    derived, informational fields."""
    keys = ("text", "vision", "scale_factor", "num_vlm_layers") if "text" in arch else ("vlm", "expert", "vision")
    return {k: arch[k] for k in keys}


# --- SmolVLM config directory ------------------------------------------------------------------

# SmolVLM2's tokenizer: 49152 base tokens, then 128 added ones at these ids. Only the special-token
# ids matter here (LeRobot reads fake_image_token_id / global_image_token_id); the base vocabulary
# is a byte-level stand-in with no merges, which never tokenizes for the policy (TokenFeed does).
_SMOLVLM_BASE_VOCAB = 49152
_SMOLVLM_ADDED = {
    "<global-img>": 49152,
    **{f"<row_{r}_col_{c}>": 49153 + (r - 1) * 6 + (c - 1) for r in range(1, 7) for c in range(1, 7)},
    "<fake_token_around_image>": 49189,
    "<image>": 49190,
    **{f"<|reserved_special_token_{i}|>": 49191 + i for i in range(88)},
    "<end_of_utterance>": 49279,
}
SMOLVLM_PAD_ID = 2  # <|im_end|>


def write_smolvlm(directory: Path, arch: dict) -> Path:
    """Write a SmolVLM2 config + processor directory (no weights) for `arch` (an ARCH["smolvla"] entry).

    SmolVLA reads it with AutoConfig/AutoProcessor.from_pretrained even with load_vlm_weights=False.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import (PreTrainedTokenizerFast, SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor,
                              SmolVLMVideoProcessor)

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": SMOLVLM_PAD_ID}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    while len(vocab) < _SMOLVLM_BASE_VOCAB:
        vocab[f"<unused_{len(vocab)}>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    for token, token_id in sorted(_SMOLVLM_ADDED.items(), key=lambda kv: kv[1]):
        backend.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        if backend.token_to_id(token) != token_id:
            raise AssertionError(f"{token} landed on id {backend.token_to_id(token)}, not {token_id}")
    text, vision = arch["text"], arch["vision"]
    if backend.get_vocab_size() != text["vocab_size"]:
        raise ValueError(f"the SmolVLM tokenizer has {backend.get_vocab_size()} ids, config says {text['vocab_size']}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
        pad_token="<|im_end|>", unk_token="<|endoftext|>",
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                              "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"})
    image_tokens = (vision["image_size"] // vision["patch_size"]) ** 2 // arch["scale_factor"] ** 2
    SmolVLMProcessor(
        SmolVLMImageProcessor(max_image_size={"longest_edge": vision["image_size"]},
                              size={"longest_edge": 4 * vision["image_size"]}),
        tokenizer, SmolVLMVideoProcessor(), image_seq_len=image_tokens,
    ).save_pretrained(directory)
    SmolVLMConfig(
        text_config=dict(model_type="llama", max_position_embeddings=8192, pad_token_id=SMOLVLM_PAD_ID,
                         tie_word_embeddings=False, **text),
        vision_config=dict(model_type="smolvlm_vision", **vision),
        scale_factor=arch["scale_factor"], image_token_id=_SMOLVLM_ADDED["<image>"],
        vocab_size=text["vocab_size"], tie_word_embeddings=False,
    ).save_pretrained(directory)
    return directory


# --- building ---------------------------------------------------------------------------------


def _config(kind: str, size: str, device: str, dtype: str, vlm_dir: Path | None) -> PreTrainedConfig:
    features = dict(
        input_features={
            **{key: PolicyFeature(FeatureType.VISUAL, (3, *CAMERA_HW)) for key in CAMERAS},
            OBS_STATE: PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
        },
        output_features={ACTION: PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        device=device,
    )
    if kind == "smolvla":
        if dtype != "float32":
            raise ValueError("LeRobot's SmolVLA has no dtype option (cast to bfloat16 it fails: float32 inputs meet bfloat16 weights)")
        arch = ARCH["smolvla"][size]
        side = arch["vision"]["image_size"]
        return SmolVLAConfig(vlm_model_name=str(vlm_dir), load_vlm_weights=False, chunk_size=CHUNK,
                             n_action_steps=CHUNK, num_steps=DENOISE_STEPS, num_vlm_layers=arch["num_vlm_layers"],
                             resize_imgs_with_padding=(side, side), **features)
    return CONFIG_CLASSES[kind](dtype=dtype, chunk_size=CHUNK, n_action_steps=CHUNK,
                                num_inference_steps=DENOISE_STEPS, **features)


def dataset_stats(seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Seeded per-dimension statistics for state and action, consistent across every normalisation
    mode LeRobot offers (MEAN_STD, MIN_MAX, QUANTILES, QUANTILE10); quantiles deliberately skewed."""
    gen = torch.Generator().manual_seed(seed + 1)
    stats = {}
    for key, dim in ((OBS_STATE, STATE_DIM), (ACTION, ACTION_DIM)):
        mean = torch.empty(dim).uniform_(-1.5, 1.5, generator=gen)
        std = torch.empty(dim).uniform_(0.2, 2.0, generator=gen)
        skew = torch.empty(dim).uniform_(0.8, 1.25, generator=gen)
        stats[key] = {
            "mean": mean, "std": std,
            "min": mean - 3.5 * std, "max": mean + 3.5 * std * skew,
            "q01": mean - 2.33 * std, "q99": mean + 2.33 * std * skew,
            "q10": mean - 1.28 * std, "q50": mean + 0.1 * std * skew, "q90": mean + 1.28 * std * skew,
            "count": torch.tensor([1000]),
        }
    return stats


def rerandomise(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter from a seeded CPU generator, keeping activations O(1).

    Matrices N(0, 1/fan_in); embedding tables N(0, 1/width) (Gemma and SmolVLA scale token
    embeddings by sqrt(width)); vectors N(c, 0.1^2) around their init centre c: 1 for scales LeRobot
    initialises at one (LayerNorm, Llama RMSNorm), else 0 (biases, Gemma's 1+w norms, adaRMS).
    """
    gen = torch.Generator().manual_seed(seed)
    seen = set()
    for _, sub in module.named_modules():
        for _, param in sub.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            shape = param.shape
            if param.ndim >= 2:
                fan_in = shape[-1] if isinstance(sub, torch.nn.Embedding) else math.prod(shape[1:])
                value = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
            else:
                centre = 1.0 if bool((param.detach() == 1).all()) else 0.0
                value = centre + 0.1 * torch.randn(shape, generator=gen)
            with torch.no_grad():
                param.copy_(value.to(param.dtype))


def build(kind: str, size: str, seed: int, device: str = "cpu", dtype: str = "float32"):
    """A seeded policy and its processors, as LeRobot's own factories make them.

    Returns (policy, preprocessor, postprocessor). For SmolVLA the VLM config directory is written
    to a temporary directory; `save` copies it next to the policy.
    """
    family = _family(kind)
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    vlm_dir = None
    if family == "smolvla":
        vlm_dir = write_smolvlm(Path(tempfile.mkdtemp(prefix="smolvlm-")), ARCH["smolvla"][size])
    config = _config(kind, size, device, dtype, vlm_dir)
    arch = ARCH[family][size]
    with _dims_context(kind, arch), contextlib.redirect_stdout(io.StringIO()):
        policy = POLICY_CLASSES[kind](config)
    if vlm_dir is not None:
        weakref.finalize(policy, shutil.rmtree, vlm_dir, True)
    rerandomise(policy, seed)
    policy.to(device)  # PI0Policy moves itself; SmolVLAPolicy leaves that to LeRobot's make_policy
    policy.eval()
    with _tokenizer_never_loaded():
        preprocessor, postprocessor = make_pre_post_processors(policy.config, dataset_stats=dataset_stats(seed))
    return policy, preprocessor, postprocessor


def describe_architecture(policy) -> dict:
    """The dims the built model really has, read off its HF configs (arch.json)."""
    kind = policy.name
    def text(cfg):
        return dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                    intermediate_size=cfg.intermediate_size, num_attention_heads=cfg.num_attention_heads,
                    num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, vocab_size=cfg.vocab_size,
                    rms_norm_eps=cfg.rms_norm_eps, rope_theta=float(cfg.rope_parameters["rope_theta"]))

    def vision(cfg):
        return dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                    num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
                    patch_size=cfg.patch_size, image_size=cfg.image_size)

    if _family(kind) == "pi":
        pwe = policy.model.paligemma_with_expert
        vlm_cfg = pwe.paligemma.config
        arch = {
            "kind": kind,
            "vlm": text(vlm_cfg.text_config),
            "expert": text(pwe.gemma_expert.config),
            "vision": dict(vision(vlm_cfg.vision_config), projection_dim=vlm_cfg.vision_config.projection_dim),
            "image_tokens_per_camera": (vlm_cfg.vision_config.image_size // vlm_cfg.vision_config.patch_size) ** 2,
            "adarms_expert": bool(getattr(pwe.gemma_expert.config, "use_adarms", False)),
            "image_resolution": list(policy.config.image_resolution),
        }
        return arch
    vwe = policy.model.vlm_with_expert
    vlm_cfg = vwe.config
    text_dims = text(vlm_cfg.text_config)
    text_dims["num_hidden_layers"] = vlm_cfg.text_config.num_hidden_layers  # the VLM's; num_vlm_layers used
    expert = text(vwe.lm_expert.config)
    expert["num_hidden_layers"] = len(vwe.lm_expert.layers)
    side = vlm_cfg.vision_config.image_size // vlm_cfg.vision_config.patch_size
    return {
        "kind": kind,
        "text": text_dims,
        "vision": vision(vlm_cfg.vision_config),
        "scale_factor": vlm_cfg.scale_factor,
        "num_vlm_layers": vwe.num_vlm_layers,
        "expert": expert,
        "self_attn_every_n_layers": vwe.self_attn_every_n_layers,
        "attention_mode": vwe.attention_mode,
        "image_tokens_per_camera": side * side // vlm_cfg.scale_factor ** 2,
        "connector_in": vlm_cfg.vision_config.hidden_size * vlm_cfg.scale_factor ** 2,
        "resize_imgs_with_padding": list(policy.config.resize_imgs_with_padding),
        # LeRobot's SmolVLA applies its own RoPE with this base, not the config's rope_theta.
        "rope_max_wavelength_used": inspect.signature(smolvlm_with_expert.apply_rope).parameters[
            "max_wavelength"].default,
    }


def save(policy, preprocessor, postprocessor, out_dir) -> Path:
    """The standard LeRobot policy directory, plus arch.json (and vlm/ for SmolVLA).

    SmolVLA: config.json's vlm_model_name (and the tokenizer step's tokenizer_name) are the
    absolute path of out_dir/vlm; `load` re-points them at <policy_dir>/vlm, so a moved copy works.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if policy.name == "smolvla":
        vlm_dir = out_dir / "vlm"
        source = Path(policy.config.vlm_model_name).resolve()
        if source != vlm_dir:
            shutil.rmtree(vlm_dir, ignore_errors=True)
            shutil.copytree(source, vlm_dir)
        policy.config.vlm_model_name = str(vlm_dir)
        _tokenizer_step(preprocessor).tokenizer_name = str(vlm_dir)
    policy.save_pretrained(out_dir)
    preprocessor.save_pretrained(out_dir)
    postprocessor.save_pretrained(out_dir)
    arch = describe_architecture(policy)
    arch["lerobot_version"] = lerobot.__version__
    (out_dir / "arch.json").write_text(json.dumps(arch, indent=2) + "\n")
    return out_dir


# --- loading and running ----------------------------------------------------------------------


def _check_loaded(policy, weights: Path, log: str) -> None:
    """LeRobot's from_pretrained only prints (pi0/pi0.5) or logs (SmolVLA, strict=False) a failed
    load and returns a freshly initialised model; refuse anything but an exact load."""
    live = policy.state_dict()
    with safe_open(str(weights), framework="pt") as stored:  # tensor by tensor: a full pi0 is 13 GB
        names = set(stored.keys())
        problems = [f"missing in file: {k}" for k in live if k not in names]
        problems += [f"not in model: {k}" for k in names if k not in live]
        problems += [f"differs: {k}" for k in names if k in live
                     and not torch.equal(live[k].cpu(), stored.get_tensor(k).to(live[k].dtype))]
    if problems:
        raise RuntimeError(f"LeRobot did not load {weights} exactly ({len(problems)} problems, e.g. "
                           f"{problems[:3]}); its output:\n{log}")


@dataclass
class Loaded:
    policy: Any
    preprocessor: Any
    postprocessor: Any
    feed: TokenFeed
    arch: dict = field(default_factory=dict)


def load(kind: str, policy_dir, device: str = "cpu", dtype: str | None = None) -> Loaded:
    """Load a policy directory with LeRobot's from_pretrained and make_pre_post_processors, as a
    user would; the tokenizer step gets a TokenFeed (override), the device step `device`."""
    policy_dir = Path(policy_dir).resolve()
    arch = json.loads((policy_dir / "arch.json").read_text())
    if arch["kind"] != kind:
        raise ValueError(f"{policy_dir} holds a {arch['kind']} policy, not {kind}")
    config = PreTrainedConfig.from_pretrained(policy_dir)
    config.device = device
    if kind == "smolvla":
        if dtype not in (None, "float32"):
            raise ValueError("LeRobot's SmolVLA has no dtype option: load it as saved (float32)")
        config.vlm_model_name = str(policy_dir / "vlm")
    elif dtype is not None:
        config.dtype = dtype
    log = io.StringIO()
    with _dims_context(kind, arch), contextlib.redirect_stdout(log):
        policy = POLICY_CLASSES[kind].from_pretrained(policy_dir, config=config)
    policy.to(device)
    _check_loaded(policy, policy_dir / "model.safetensors", log.getvalue())
    feed = TokenFeed()
    preprocessor, postprocessor = make_pre_post_processors(
        policy.config, pretrained_path=str(policy_dir),
        preprocessor_overrides={"tokenizer_processor": {"tokenizer": feed}, "device_processor": {"device": device}})
    return Loaded(policy, preprocessor, postprocessor, feed, arch)


def attach_feed(preprocessor) -> TokenFeed:
    """Give an in-memory preprocessor (from `build`) a fresh TokenFeed; returns it."""
    feed = TokenFeed()
    _tokenizer_step(preprocessor).input_tokenizer = feed
    return feed


def make_inputs(kind: str, policy_dir_or_policy, seed: int) -> dict[str, Any]:
    """Seeded raw inputs for a batch of 2 whose rows differ in every input.

    image.<i>: float32 [B,3,240,320] in [0,1] (config image order); state: float32 [B,7] raw robot
    units (row 1 has one value below q01 and one above q99 of the stats); tokens int64 [B,L] and
    token_mask bool [B,L], right-padded, rows of different lengths (L = the tokenizer step's
    max_length, or for SmolVLA's 'longest' padding the longest row); noise float32 [B,50,32];
    task: the two task strings.
    """
    if isinstance(policy_dir_or_policy, (str, Path)):
        config = PreTrainedConfig.from_pretrained(Path(policy_dir_or_policy))
        arch = json.loads((Path(policy_dir_or_policy) / "arch.json").read_text())
    else:
        config, arch = policy_dir_or_policy.config, describe_architecture(policy_dir_or_policy)
    gen = torch.Generator().manual_seed(seed + 2)
    stats = dataset_stats(seed)[OBS_STATE]
    inputs: dict[str, Any] = {}
    for i, _ in enumerate(config.image_features):
        inputs[f"image.{i}"] = torch.rand((BATCH, 3, *CAMERA_HW), generator=gen)
    state = stats["mean"] + 0.6 * stats["std"] * torch.randn((BATCH, STATE_DIM), generator=gen)
    state[1, 0] = stats["q01"][0] - 0.5 * stats["std"][0]
    state[1, 1] = stats["q99"][1] + 0.5 * stats["std"][1]
    inputs["state"] = state
    if kind == "smolvla":
        vocab, pad, first = min(arch["text"]["vocab_size"], _SMOLVLM_BASE_VOCAB), SMOLVLM_PAD_ID, None
        lengths = (9, 14)
        length = max(lengths)
    else:
        vocab, pad, first = arch["vlm"]["vocab_size"], 0, 2  # PaliGemma: pad 0, <bos> 2
        length = config.tokenizer_max_length
        lengths = (length // 4, length // 2)
    tokens = torch.randint(3, vocab, (BATCH, length), generator=gen)
    mask = torch.zeros((BATCH, length), dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    if first is not None:
        tokens[:, 0] = first
    inputs["tokens"] = torch.where(mask, tokens, torch.full_like(tokens, pad))
    inputs["token_mask"] = mask
    inputs["noise"] = torch.randn((BATCH, config.chunk_size, config.max_action_dim), generator=gen)
    inputs["task"] = list(TASKS)
    return inputs


@contextlib.contextmanager
def _recording_model_inputs(policy, record: dict):
    """Record what predict_action_chunk hands to the model's sample_actions (images after LeRobot's
    resize/pad/[-1,1], masks, padded state, noise), without changing the call."""
    model = policy.model
    had_attr = "sample_actions" in vars(model)
    original = model.sample_actions
    signature = inspect.signature(original)

    def recorder(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        record.update(bound.arguments)
        return original(*args, **kwargs)

    model.sample_actions = recorder
    try:
        yield
    finally:
        if had_attr:
            model.sample_actions = original
        else:
            del model.sample_actions


def prepare_batch(preprocessor, feed: TokenFeed, inputs: dict[str, Any], image_keys) -> dict[str, Any]:
    """Run the preprocessor pipeline on raw inputs (its tokenizer step reads `feed`)."""
    feed.feed(inputs["tokens"], inputs["token_mask"])
    batch = {key: inputs[f"image.{i}"] for i, key in enumerate(image_keys)}
    batch[OBS_STATE] = inputs["state"]
    batch["task"] = list(inputs["task"])
    return preprocessor(batch)


def run(policy, preprocessor, postprocessor, feed: TokenFeed, inputs: dict[str, Any]):
    """Raw inputs -> LeRobot preprocessor -> predict_action_chunk(noise=...) -> postprocessor.

    Returns (tensors, strings): tensors holds the inputs, the intermediates (`pre.state`: the
    normalised state out of the preprocessor; `model.images.<i>`, `model.img_masks` [B, cameras],
    `model.state` (pi0, SmolVLA: padded, as given to sample_actions), `model.actions`: normalised
    [B,50,7] before unnormalise) and `actions` [B,50,7]; strings holds `prompt` (what the
    tokenizer would have read), `task` and `image_keys`.
    """
    image_keys = list(policy.config.image_features)
    batch = prepare_batch(preprocessor, feed, inputs, image_keys)
    device = next(policy.parameters()).device
    noise = inputs["noise"].to(device)
    record: dict[str, Any] = {}
    with _recording_model_inputs(policy, record), torch.no_grad():
        model_actions = policy.predict_action_chunk(batch, noise=noise)
    if record.get("noise") is not noise:
        raise RuntimeError("predict_action_chunk did not pass the given noise to sample_actions")
    actions = postprocessor(model_actions)
    out = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    for i, image in enumerate(record["images"]):
        out[f"model.images.{i}"] = image
    out["model.img_masks"] = torch.stack(list(record["img_masks"]), dim=1)
    if "state" in record:
        out["model.state"] = record["state"]
    out["pre.state"] = batch[OBS_STATE]
    out["model.actions"] = model_actions
    out["actions"] = actions
    out = {k: v.detach().cpu().contiguous() for k, v in out.items()}
    strings = {"prompt": list(feed.prompts), "task": list(inputs["task"]), "image_keys": image_keys}
    return out, strings


def reference(kind: str, policy_dir, inputs: dict[str, Any], device: str = "cpu", dtype: str | None = None):
    """Load `policy_dir` with LeRobot as a user would and run `inputs` (see make_inputs) through it.

    Returns (tensors, strings) as `run`.
    """
    loaded = load(kind, policy_dir, device=device, dtype=dtype)
    return run(loaded.policy, loaded.preprocessor, loaded.postprocessor, loaded.feed, inputs)


def timing(policy, batch: dict[str, Any], noise: torch.Tensor, iters: int = 50, warmup: int = 5) -> dict:
    """Wall time of LeRobot's predict_action_chunk on an already preprocessed batch (`prepare_batch`),
    CUDA-synchronised; p50/p99/mean in ms over `iters` after `warmup` calls."""
    device = next(policy.parameters()).device
    noise = noise.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(warmup + iters):
            sync()
            start = time.perf_counter()
            policy.predict_action_chunk(dict(batch), noise=noise)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    t = torch.tensor(times, dtype=torch.float64)
    return {"iters": iters, "p50_ms": float(t.quantile(0.5)), "p99_ms": float(t.quantile(0.99)),
            "mean_ms": float(t.mean()), "device": str(device)}


def save_reference(policy_dir, tensors: dict[str, torch.Tensor], strings: dict, extra: dict | None = None) -> None:
    policy_dir = Path(policy_dir)
    save_file(tensors, str(policy_dir / "reference.safetensors"))
    (policy_dir / "reference.json").write_text(json.dumps({**strings, **(extra or {})}, indent=2) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--timing", type=int, default=0, metavar="ITERS",
                        help="also time predict_action_chunk over ITERS calls (after 5 warm-up calls)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    built = build(args.kind, args.size, args.seed, device=args.device, dtype=args.dtype)
    out_dir = save(*built, args.out)
    del built  # a full pi0 is 13 GB in float32: do not hold two
    inputs = make_inputs(args.kind, out_dir, args.seed)
    loaded = load(args.kind, out_dir, device=args.device, dtype=args.dtype)
    tensors, strings = run(loaded.policy, loaded.preprocessor, loaded.postprocessor, loaded.feed, inputs)
    extra = {"kind": args.kind, "size": args.size, "seed": args.seed, "device": args.device, "dtype": args.dtype,
             "lerobot_version": lerobot.__version__, "torch_version": torch.__version__}
    if args.timing:
        batch = prepare_batch(loaded.preprocessor, loaded.feed, inputs, strings["image_keys"])
        extra["timing"] = timing(loaded.policy, batch, inputs["noise"], iters=args.timing)
        print(json.dumps(extra["timing"]))
    save_reference(out_dir, tensors, strings, extra)
    print(f"{args.kind}/{args.size} seed {args.seed}: {out_dir} ({time.perf_counter() - start:.1f} s); "
          f"actions {tuple(tensors['actions'].shape)}")


if __name__ == "__main__":
    main()
