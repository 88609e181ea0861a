"""The critic graph beside the actor: one captured graph over the engine's own BufferSet.

    critic = CriticGraph(engine, load_critic(REFERENCE_CRITIC))
    value = critic.evaluate(episode_time_s=4.2)        # after an actor cycle: the observation it acted on

It reads the actor's observation buffers in place, no copy: "actor.images" (preprocessed, [-1, 1]),
"actor.state" (the joint state the actor got), the subtask hand-off's active slot (the subtask the
actor read) and "planner.task" (the task's token ids); it writes "critic.value". Its only own input
is "critic.time" (seconds since the episode started, written before each replay).

Where it runs: on the host's dispatcher thread, as the scheduler's "critic" task, between actor
releases (models/critic.py is small; a larger critic is cut into pieces by the same earliest-deadline
rule the planner uses, which starts a piece only when it cannot push the actor past its deadline).
On a GPU the graph replays on its own, lowest-priority stream and the piece waits for it before it
returns, so no actor write to the observation buffers can overlap its read: the dispatcher runs one
piece at a time. On the CPU it is the same function, eagerly.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from flashrt_ros.models.critic import Critic
from flashrt_ros.runtime import StaticGraph
from flashrt_ros.runtime.handoff import SLOTS, STATE

from .base import _on


class CriticError(ValueError):
    """A critic that does not fit the engine beside it (named by field), refused at configure."""


class CriticGraph:
    def __init__(self, engine, critic: Critic, dtype: torch.dtype | None = None):
        b = self.buffers = engine.buffers
        c = critic.config
        problems = []
        for name, want in (("actor.images", (1, c.n_cameras, 3, c.image_size, c.image_size)),
                           ("actor.state", (1, c.state_dim)), ("planner.task", (1, c.task_len)),
                           (SLOTS, (2, c.text_len))):
            if name not in b:
                problems.append(f"the engine has no buffer {name!r} (the critic reads it)")
            elif tuple(b[name].shape) != want:
                problems.append(f"buffer {name!r} is {tuple(b[name].shape)}, the critic {c.name!r} takes {want}")
        model_config = getattr(engine, "config", None)
        vocabulary = getattr(model_config, "vocabulary", None)
        if vocabulary is not None and tuple(vocabulary) != tuple(c.vocabulary):
            problems.append("the critic's vocabulary is not the policy's (its token ids would mean other words)")
        if problems:
            raise CriticError(f"critic {c.name!r} does not fit this policy: " + "; ".join(problems))
        self.engine = engine
        self.config = c
        self.device = b.device
        self.dtype = dtype or getattr(engine, "dtype", torch.float32)
        self.critic = critic.to(self.device, self.dtype).eval().requires_grad_(False)
        on_gpu = self.device.type == "cuda"
        # lowest priority: the actor's stream (priority -3) always wins the SMs it asks for
        self.stream = torch.cuda.Stream(self.device, priority=0) if on_gpu else None
        b.declare("critic.time", (1,), torch.float32)
        b.declare("critic.value", (1,), torch.float32)
        self._time_host = torch.zeros(1, dtype=torch.float32, pin_memory=on_gpu)
        self._value_host = torch.zeros(1, dtype=torch.float32, pin_memory=on_gpu)
        self.graph = StaticGraph("critic", self._fn, b,
                                 reads=["actor.images", "actor.state", "planner.task", SLOTS, STATE, "critic.time"],
                                 writes=["critic.value"], stream=self.stream).capture()
        self.last_latency_s = float("nan")

    def _fn(self, b) -> None:
        state = b[STATE]
        subtask = b[SLOTS].index_select(0, state[:1])      # the active slot, as the actor reads it
        dt = self.dtype
        logit = self.critic(b["actor.images"].to(dt), b["actor.state"].to(dt), b["planner.task"], subtask,
                            b["critic.time"].to(dt))
        b["critic.value"].copy_(torch.sigmoid(logit.float()))

    def evaluate(self, episode_time_s: float) -> float:
        """The value of the observation in the actor's buffers now (replay + one D2H copy)."""
        t0 = time.perf_counter()
        self._time_host[0] = float(episode_time_s)
        self.buffers.write("critic.time", self._time_host, stream=self.stream)
        self.graph.replay()
        with _on(self.stream):
            self._value_host.copy_(self.buffers["critic.value"], non_blocking=self.stream is not None)
        if self.stream is not None:
            self.stream.synchronize()
        self.last_latency_s = time.perf_counter() - t0
        value = float(self._value_host[0])
        if not np.isfinite(value):
            raise FloatingPointError(f"the critic produced {value}")
        return value
