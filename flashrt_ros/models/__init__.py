"""Planner and actor nn.Modules (static shapes), presets, tokenizer, safetensors checkpoints."""

from .actor import Actor
from .checkpoint import (REFERENCE_WEIGHTS, CheckpointError, load_checkpoint, load_config, save_checkpoint)
from .config import PRESETS, WORLD_SUBTASKS, WORLD_VOCABULARY, ModelConfig
from .planner import Planner
from .policy import EagerPolicy, images_to_model
from .tokenizer import PAD_ID, UNK_ID, WordTokenizer
