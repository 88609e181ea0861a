"""The subtask hand-off: the planner's output slot is the actor's input, with no copy between them.

Two slots of token ids live in the BufferSet. The actor graph reads the *active* slot through a
device-side index; a writer (the planner graph, or a coaching/operator write from the host) fills
the *inactive* slot and `commit()` flips the index. Ordering that makes a torn read impossible:

  writer stream:  wait(released) -> write inactive slot -> record(written)
  actor stream:   wait(written)  -> flip active + bump version (one kernel) -> record(released)

`released` is recorded after the flip, so every actor replay enqueued before the flip (still
reading the old slot) has finished before the next writer may overwrite that slot. On CPU there
are no streams; a lock around writes and the actor's read gives the same guarantee.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from .buffers import BufferSet

SLOTS = "subtask.slots"      # int64 [2, text_len]
# int64 [2]: (index of the slot the actor reads, version bumped by every commit). One buffer so
# that a commit changes both with ONE kernel: a replay enqueued by another host thread lands
# before or after it, never between an index flip and its version bump.
STATE = "subtask.state"


@dataclass(frozen=True)
class SubtaskState:
    version: int
    text: str
    source: str


class SubtaskChannel:
    """Owns the slots. Writers hold `lock` from their write to their commit (or abandon)."""

    def __init__(self, buffers: BufferSet, text_len: int, actor_stream=None):
        self.buffers = buffers
        self.text_len = text_len
        buffers.declare(SLOTS, (2, text_len), torch.int64)
        buffers.declare(STATE, (2,), torch.int64)
        # commit: state' = state * (-1, 1) + (1, 1) = (1 - active, version + 1)
        self._flip_scale = torch.tensor([-1, 1], dtype=torch.int64, device=buffers.device)
        self._flip_shift = torch.tensor([1, 1], dtype=torch.int64, device=buffers.device)
        self.on_gpu = buffers.device.type == "cuda"
        self.actor_stream = actor_stream
        if self.on_gpu:
            self._written = torch.cuda.Event()
            self._released = torch.cuda.Event()
            self._released.record(torch.cuda.current_stream(buffers.device))
        self.lock = threading.RLock()
        self._active = 0  # host mirror of the active index: only commit() changes either
        self._state = SubtaskState(0, "", "none")

    # --- inside graphs ---------------------------------------------------------------------
    def read_in_graph(self, bufs: BufferSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Actor graph: (token ids [1, text_len], version [1]) of the active slot, gathered on
        the device. On CPU the gather holds the lock so that it never straddles a commit."""
        with self.lock:
            state = bufs[STATE].clone()
            return bufs[SLOTS].index_select(0, state[:1]), state[1:]

    def write_in_graph(self, bufs: BufferSet, tokens: torch.Tensor) -> None:
        """Planner graph: write [text_len] token ids into the inactive slot (1 - active)."""
        inactive = 1 - bufs[STATE][:1]
        bufs[SLOTS].index_copy_(0, inactive, tokens.reshape(1, -1).to(torch.int64))

    # --- host side (callers hold `lock` from writer_wait to commit) ---------------------------
    @property
    def state(self) -> SubtaskState:
        return self._state

    def writer_wait(self, stream=None) -> None:
        """Before a writer touches the inactive slot: the actor has let go of it."""
        if self.on_gpu:
            (stream or torch.cuda.current_stream()).wait_event(self._released)

    def write_tokens(self, tokens: np.ndarray, stream=None) -> None:
        """Host write (coaching / operator): token ids into the inactive slot."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if tokens.shape[0] != self.text_len:
            raise ValueError(f"subtask needs {self.text_len} token ids, got {tokens.shape[0]}")
        self.writer_wait(stream)
        slot = self.buffers[SLOTS][1 - self._active]
        src = torch.from_numpy(tokens)
        if self.on_gpu:
            with torch.cuda.stream(stream or torch.cuda.current_stream()):
                slot.copy_(src.pin_memory(), non_blocking=True)
        else:
            slot.copy_(src)

    def commit(self, text: str, source: str, stream=None) -> SubtaskState:
        """Publish what the writer put in the inactive slot as the new subtask."""
        if self.on_gpu:
            actor = self.actor_stream or torch.cuda.current_stream()
            self._written.record(stream or torch.cuda.current_stream())
            actor.wait_event(self._written)
            with torch.cuda.stream(actor):
                self._flip()
            self._released.record(actor)
        else:
            self._flip()
        self._active = 1 - self._active
        self._state = SubtaskState(self._state.version + 1, text, source)
        return self._state

    def publish(self, tokens: np.ndarray, text: str, source: str, stream=None) -> SubtaskState:
        """Write + commit in one step, for host writers (coach, operator, reset)."""
        with self.lock:
            self.write_tokens(tokens, stream)
            return self.commit(text, source, stream)

    def reset_host_state(self) -> None:
        """After the channel's buffers were restored to their initial bytes (a capsule), bring the
        host mirror back in line: slot 0 active, version 0. Call under `lock`."""
        active, version = self.buffers[STATE].tolist()
        self._active = active
        self._state = SubtaskState(version, "", "none")

    def _flip(self) -> None:
        state = self.buffers[STATE]
        torch.addcmul(self._flip_shift, state, self._flip_scale, out=state)
