"""One place that turns host parameters into an engine: the built-in planner + actor (engines/builtin.py)
or a LeRobot policy as the actor (engines/lerobot.py). The ROS host and the offline replay both use it."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np


def engine_factory(model: str) -> tuple[Callable[..., Any], dict]:
    """(class, extra keyword names it takes beyond the common ones) for the `model` parameter."""
    if model.startswith("lerobot_"):
        from flashrt_ros.engines.lerobot import LerobotEngine
        return LerobotEngine, {"tokenizer", "weights", "prompt_tokens"}
    from flashrt_ros.engines.builtin import Engine
    return Engine, set()


def compile_actor(value, device: str) -> bool | None:
    """The host's `compile` ('auto' | 'true' | 'false', or a bool) as an engine's compile_actor:
    None = the engine's own default (LeRobot: its fast path on a GPU); 'auto' for the built-in
    engine: on a GPU."""
    if isinstance(value, bool):
        return value
    value = str(value).strip().lower()
    if value == "auto":
        return None
    return value == "true"


def make_engine(config, factory: Callable[..., Any] | None = None, limits=None):
    """The engine for a HostConfig. `factory` (tests) replaces the class and gets the common
    arguments. `limits`: ([A, 2] joint limits, [A] max velocity) in the policy's units (the host's
    JointMap.policy_limits; default: the config's, when the units are the same)."""
    cls, extra = (factory, set()) if factory is not None else engine_factory(config.model)
    if limits is None:
        limits = (config.joint_limits, np.asarray(config.max_velocity, np.float32))
    limits, vmax = limits
    kwargs = dict(checkpoint=config.checkpoint or None, preset=config.preset, device=config.device,
                  seed=config.seed, joint_limits=limits, max_velocity=vmax, planner_pieces=config.planner_pieces,
                  dtype=config.dtype, compile_actor=compile_actor(config.compile, config.device))
    if "tokenizer" in extra:
        kwargs["tokenizer"] = config.tokenizer or None
    if "weights" in extra and hasattr(config, "weights"):   # LeRobot: bf16 | fp8 | int8 (host parameter `weights`)
        kwargs["weights"] = config.weights
    if "prompt_tokens" in extra and hasattr(config, "prompt_tokens"):
        kwargs["prompt_tokens"] = config.prompt_tokens
    if getattr(config, "overlap_policy", "") == "rtc":
        from flashrt_ros.models.rtc import RtcSettings
        kwargs["rtc"] = RtcSettings(config.rtc_schedule, config.rtc_execution_horizon, config.rtc_max_guidance_weight,
                                    config.rtc_jacobian)
        kwargs["rtc_mode"] = config.rtc_mode
    return cls(**kwargs)
