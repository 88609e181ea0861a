"""Execution-state capsules: snapshot / restore / fork of named static buffers.

Because every piece of state lives in a named buffer, a capsule of those buffers *is* the
execution state at a boundary. Restore copies bytes back into the same storage, so captured
graphs stay valid: an episode reset or an undo costs a few device copies, never a recapture.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from .buffers import BufferError, BufferSet


@dataclass
class Capsule:
    names: tuple[str, ...]
    tensors: dict[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


class CapsuleStore:
    def __init__(self, buffers: BufferSet):
        self.buffers = buffers
        self._capsules: dict[str, Capsule] = {}

    def snapshot(self, name: str, names: Iterable[str] | None = None, to_host: bool = False) -> Capsule:
        """Copy the named buffers (all by default). On the device unless `to_host` (pinned)."""
        names = tuple(names if names is not None else self.buffers.names())
        tensors = {}
        for n in names:
            src = self.buffers[n]
            if to_host and src.device.type == "cuda":
                dst = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
                dst.copy_(src, non_blocking=True)
            else:
                dst = src.clone()
            tensors[n] = dst
        capsule = Capsule(names, tensors)
        self._capsules[name] = capsule
        return capsule

    def restore(self, name: str) -> Capsule:
        """Copy a capsule back into the live buffers, in place (graphs keep their pointers)."""
        capsule = self.get(name)
        for n, saved in capsule.tensors.items():
            live = self.buffers[n]
            if live.shape != saved.shape or live.dtype != saved.dtype:
                raise BufferError(f"capsule {name!r}: buffer {n!r} is now {tuple(live.shape)} {live.dtype}, "
                                  f"the capsule holds {tuple(saved.shape)} {saved.dtype}")
            live.copy_(saved, non_blocking=True)
        return capsule

    def fork(self, src: str, dst: str) -> Capsule:
        """An independent copy of a capsule under a new name (e.g. to try another subtask)."""
        capsule = self.get(src)
        forked = Capsule(capsule.names, {n: t.clone() for n, t in capsule.tensors.items()})
        self._capsules[dst] = forked
        return forked

    def matches(self, name: str) -> bool:
        """True when the live buffers hold exactly the capsule's bytes."""
        capsule = self.get(name)
        return all(torch.equal(_bytes(self.buffers[n]), _bytes(t)) for n, t in capsule.tensors.items())

    def get(self, name: str) -> Capsule:
        try:
            return self._capsules[name]
        except KeyError:
            raise BufferError(f"no capsule named {name!r}; have {sorted(self._capsules)}") from None

    def drop(self, name: str) -> None:
        self._capsules.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._capsules


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor (NaN-safe comparison: equal bytes, not equal values)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).cpu()
