"""What every engine shares: the chunk a host gets back, the checks on its inputs, and ChunkIO
(noise in, postprocess + one pinned D2H copy out) around the actor graph."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flashrt_ros.runtime import BufferSet
from flashrt_ros.runtime.kernels import Postprocessor

MAX_TEXT_BYTES = 1024
COMPILE_MIN_COS = 0.9999   # a fast path's start-up equivalence gate against the plain path


class FastPathRefused(RuntimeError):
    """A fast path (compiled layers, fused kernels) failed its start-up gate against the plain path."""


def compile_gate(plain: torch.Tensor, fast: torch.Tensor, what: str, min_cos: float | None = None) -> dict:
    """The fast path's start-up gate: cosine of its output against the plain path's on the same seeded
    probe must reach min_cos (default COMPILE_MIN_COS). Returns the numbers, or raises FastPathRefused
    with them: a refused fast path stops start-up, it never falls back to the plain path silently (or
    loudly). `compile: false` runs the plain path on purpose."""
    plain, fast = plain.double().flatten(), fast.double().flatten()
    cos = float(torch.nn.functional.cosine_similarity(plain, fast, dim=0))
    gate = {"cos": cos, "max_abs": float((plain - fast).abs().max())}
    need = COMPILE_MIN_COS if min_cos is None else min_cos
    if not cos >= need:
        raise FastPathRefused(f"{what} refused by its start-up gate: cosine {cos:.6f} vs the plain path < {need} "
                              f"(max |diff| {gate['max_abs']:.3g}). Start with `compile: false` to run the plain "
                              f"path, and report this")
    return gate


@dataclass(frozen=True)
class ChunkResult:
    chunk_seq: int
    positions: np.ndarray      # [H, D] float32 joint units, clamped to the joint limits
    velocities: np.ndarray     # [H, D] float32, clamped to the velocity limits
    dt: float                  # seconds between actions; positions[i] is for obs time + (i+1)*dt
    subtask_version: int       # the subtask the actor graph actually read (from the device)
    subtask_text: str
    nonfinite: bool            # the model produced NaN/inf: never publish this chunk
    latency_s: float           # inputs in -> chunk on the host


def check_text(text: str, what: str) -> None:
    """Task and coaching text: non-empty, at most MAX_TEXT_BYTES of UTF-8."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what} is empty")
    if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
        raise ValueError(f"{what} is {len(text.encode('utf-8'))} bytes, over the {MAX_TEXT_BYTES}-byte limit")


def check_joints(joint_positions, state_dim: int) -> np.ndarray:
    """The joint state as float32 [state_dim], or a ValueError naming what is wrong."""
    q = np.asarray(joint_positions, dtype=np.float32).reshape(-1)
    if q.shape != (state_dim,):
        raise ValueError(f"joint state has {q.shape[0]} values, the policy takes {state_dim}")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"joint state is not finite: {q.tolist()}")
    return q


def action_start(state: np.ndarray, action_origin, action_dim: int) -> np.ndarray:
    """Where the commanded joints are, in action units: the chunk's velocities start from it.
    `action_origin` when the state is not the action's joints (state_joints != joint_names)."""
    if action_origin is not None:
        q0 = np.asarray(action_origin, dtype=np.float32).reshape(-1)
        if q0.shape != (action_dim,) or not np.all(np.isfinite(q0)):
            raise ValueError(f"action origin must be {action_dim} finite values, got {q0.tolist()}")
        return q0
    if state.shape != (action_dim,):
        raise ValueError(f"the state has {state.shape[0]} values and the actions {action_dim}: pass "
                         f"action_origin (where the commanded joints are)")
    return state


class ChunkIO:
    """What every engine does around its actor graph. Before the replay (inputs(), written by the engine
    with its own inputs in one copy): the flow-matching noise for "actor.noise", drawn on the CPU from
    (seed, chunk_seq) so a chunk is the same on every device and in every replay, and the joint state the
    velocities start from for "actor.q0". Inside the graph, at its
    end (in_graph): the postprocess kernel on "actor.actions" and the copies of positions, velocities, the
    non-finite flag and the subtask version the graph read into pinned host memory, so after the replay
    only a stream synchronisation is left (collect)."""

    def __init__(self, buffers: BufferSet, postprocess: Postprocessor, seed: int):
        self.buffers, self.postprocess, self.seed = buffers, postprocess, int(seed)
        on_gpu = buffers.device.type == "cuda"
        D = buffers["actor.actions"].shape[-1]
        buffers.declare("actor.q0", (D,), torch.float32)
        self._host_version = torch.empty(1, dtype=torch.int64, pin_memory=on_gpu)
        self._noise_gen = torch.Generator()
        self._noise_host = torch.empty(tuple(buffers["actor.noise"].shape), dtype=torch.float32)

    def inputs(self, chunk_seq: int, q0: np.ndarray) -> dict[str, np.ndarray]:
        """The noise of (seed, chunk_seq) and q0 (where the commanded joints are, [action_dim]), for the
        engine's one BufferSet.write_many of the chunk's inputs."""
        self._noise_gen.manual_seed(self.seed * 1_000_003 + int(chunk_seq))
        torch.randn(self._noise_host.shape, generator=self._noise_gen, out=self._noise_host)
        return {"actor.noise": self._noise_host.numpy(), "actor.q0": q0}

    def in_graph(self, b: BufferSet) -> None:
        """The last step of an actor graph: postprocess and queue the results' copies to the host."""
        self.postprocess.launch_to_host(b["actor.actions"][0], b["actor.q0"])
        if b.device.type == "cuda":
            self.postprocess.d2h(self._host_version, b["actor.subtask_version"])

    def collect(self, stream) -> tuple[np.ndarray, np.ndarray, bool, int]:
        """(positions, velocities, nonfinite, subtask version read by the graph) on the host, once the
        replay on `stream` has finished."""
        if stream is not None:
            stream.synchronize()
        host = self.postprocess.host_result()
        version = self._host_version if self.buffers.device.type == "cuda" else self.buffers["actor.subtask_version"]
        return host.positions, host.velocities, host.nonfinite != 0, int(version[0])


class _NullContext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _on(stream):
    return torch.cuda.stream(stream) if stream is not None else _NullContext()
