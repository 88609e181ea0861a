"""Shared by the replay tests: small fixture bags made at test time, a checkpoint, running the CLI.

The bags come from the reference world driven by the scripted expert
(flashrt_ros.tools.make_fixture_bag), shortened to keep each test file well under 90 s on 2 cores.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from flashrt_ros.tools.make_fixture_bag import FIXTURES, FixtureSpec, make_fixture_bag

# 4 s at 10 Hz: coaching at 1 s, an interrupt at 2.5 s lifted by /flashrt/start at 3 s, 3 frames
# dropped, one frame logged after its successor.
ROBOT = dataclasses.replace(FIXTURES["robot"], duration_s=4.0, coach=((1.0, "go to yellow", 1.0),),
                            interrupts=((2.5, 3.0),), dropped_frames=(8, 9, 10), out_of_order_frames=(20,))
# sqlite3, jpeg, resolution alternating 128 / 80 px
COMPRESSED = dataclasses.replace(FIXTURES["compressed"], duration_s=3.0, coach=((1.0, "go to red", 0.5),),
                                 interrupts=((2.0, 2.4),), out_of_order_frames=(12,))
MISSING_CAMERA = FIXTURES["missing_camera"]


def checkpoint(tmp_dir: Path) -> str:
    """FLASHRT_TEST_CKPT, else the shipped reference weights if they load, else seeded weights of
    the reference preset (determinism does not need a trained policy)."""
    env = os.environ.get("FLASHRT_TEST_CKPT", "")
    if env:
        return env
    from flashrt_ros.models.checkpoint import REFERENCE_WEIGHTS, CheckpointError, load_checkpoint, save_checkpoint
    try:
        load_checkpoint(REFERENCE_WEIGHTS)
        return ""
    except CheckpointError:       # not shipped (yet), or from another version of the models
        pass
    import torch

    from flashrt_ros.models.actor import Actor
    from flashrt_ros.models.config import ModelConfig
    from flashrt_ros.models.planner import Planner
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("reference")
    return str(save_checkpoint(tmp_dir / "seeded_reference", Actor(cfg), Planner(cfg)))


def make_bag(directory: Path, name: str, spec: FixtureSpec, **changes) -> Path:
    if changes:
        spec = dataclasses.replace(spec, **changes)
    return make_fixture_bag(directory / name, spec).path


def replay_args(bag: Path, out: Path, ckpt: str, *extra: str) -> list[str]:
    # one torch thread: the reference model is tiny, and 2 threads on 2 busy cores are ~10x slower
    args = [str(bag), "--out", str(out), "--quiet", "--threads", "1", "--set", "device=cpu"]
    if ckpt:
        args += ["--set", f"checkpoint={ckpt}"]
    return args + list(extra)
