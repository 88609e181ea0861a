"""Named static buffers: the closed set of every input, output and piece of state.

A graph captured over these tensors reads and writes their storage directly, so a buffer is
allocated once and never re-bound while a graph uses it. Host data enters through a pinned
staging tensor (allocated once per buffer) and an async copy on the caller's stream.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch


class BufferError(RuntimeError):
    """A buffer is missing, mismatched or was re-bound under a captured graph."""


class BufferSet:
    """Owns named tensors on one device. Names are the only way in; there is no second copy."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._tensors: dict[str, torch.Tensor] = {}
        self._staging: dict[str, tuple[torch.Tensor, torch.cuda.Event | None]] = {}
        self._blocks: dict[tuple, list] = {}   # write_many's staging blocks, one per set of names
        # Bumped whenever a tensor is bound or re-bound; graphs compare it before replay.
        self.generation = 0

    # --- declaration -------------------------------------------------------------------------
    def declare(self, name: str, shape: Iterable[int], dtype: torch.dtype, fill: float = 0) -> torch.Tensor:
        if name in self._tensors:
            raise BufferError(f"buffer {name!r} is already declared")
        t = torch.full(tuple(shape), fill, dtype=dtype, device=self.device)
        return self._bind(name, t)

    def adopt(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Bind an existing tensor (e.g. a module's parameter-free buffer) under a name."""
        if tensor.device != self.device:
            raise BufferError(f"buffer {name!r} is on {tensor.device}, this set is on {self.device}")
        if not tensor.is_contiguous():
            raise BufferError(f"buffer {name!r} must be contiguous")
        return self._bind(name, tensor)

    def rebind(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Replace a buffer's storage. Graphs captured over the old storage refuse to replay."""
        self._require(name)
        del self._tensors[name]
        self._staging.pop(name, None)
        return self.adopt(name, tensor)

    def _bind(self, name: str, t: torch.Tensor) -> torch.Tensor:
        self._tensors[name] = t
        self.generation += 1
        return t

    # --- access ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._require(name)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def names(self) -> list[str]:
        return list(self._tensors)

    def nbytes(self, names: Iterable[str] | None = None) -> int:
        return sum(self._require(n).nbytes for n in (names if names is not None else self._tensors))

    def fingerprint(self, names: Iterable[str]) -> dict[str, tuple[int, tuple[int, ...], torch.dtype]]:
        return {n: (t.data_ptr(), tuple(t.shape), t.dtype) for n in names for t in [self._require(n)]}

    def _require(self, name: str) -> torch.Tensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise BufferError(f"no buffer named {name!r}; declared: {sorted(self._tensors)}") from None

    # --- host <-> device ---------------------------------------------------------------------
    def write(self, name: str, value: np.ndarray | torch.Tensor, stream: torch.cuda.Stream | None = None) -> None:
        """Copy host or device data into the bound tensor. Shape must match exactly."""
        dst = self._require(name)
        src = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
        if tuple(src.shape) != tuple(dst.shape):
            raise BufferError(f"buffer {name!r} has shape {tuple(dst.shape)}, got {tuple(src.shape)}")
        if src.dtype != dst.dtype:
            if src.is_floating_point() != dst.is_floating_point():
                raise BufferError(f"buffer {name!r} has dtype {dst.dtype}, got {src.dtype}")
            src = src.to(dst.dtype)
        if dst.device.type == "cpu" or src.device.type != "cpu":
            dst.copy_(src)
            return
        staging, done = self._staging_for(name)
        if done is not None:
            done.synchronize()  # the previous async copy out of this staging tensor has finished
        staging.copy_(src)
        stream = stream or torch.cuda.current_stream(dst.device)
        with torch.cuda.stream(stream):
            dst.copy_(staging, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        self._staging[name] = (staging, event)

    def prepare_many(self, names: Iterable[str]) -> None:
        """Allocate write_many's staging block for these names now (start-up), not at the first write."""
        self._block(tuple(names))

    def write_many(self, values: dict[str, np.ndarray | torch.Tensor], stream: torch.cuda.Stream | None = None) -> None:
        """Host data into several buffers through ONE pinned staging block and ONE host-to-device copy,
        then a device copy into each buffer, all on `stream` (write() costs a staging copy, an async copy
        and an event per buffer). The same checks as write(). On the CPU: write() each."""
        if self.device.type == "cpu":
            for name, value in values.items():
                self.write(name, value)
            return
        host, dev, offsets, done = self._block(tuple(values))
        if done[0] is not None:
            done[0].synchronize()   # the previous copy out of this block has finished
        host_np = host.numpy()
        for (name, value), off in zip(values.items(), offsets):
            dst = self._tensors[name]
            src = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value)
            if tuple(src.shape) != tuple(dst.shape):
                raise BufferError(f"buffer {name!r} has shape {tuple(dst.shape)}, got {tuple(src.shape)}")
            want = _numpy_dtype(dst.dtype)
            if src.dtype != want and np.issubdtype(src.dtype, np.floating) != np.issubdtype(want, np.floating):
                raise BufferError(f"buffer {name!r} has dtype {dst.dtype}, got {src.dtype}")
            host_np[off:off + dst.nbytes].view(want).reshape(dst.shape)[...] = src
        stream = stream or torch.cuda.current_stream(self.device)
        with torch.cuda.stream(stream):
            dev.copy_(host, non_blocking=True)
            for name, off in zip(values, offsets):
                dst = self._tensors[name]
                dst.view(-1).copy_(dev[off:off + dst.nbytes].view(dst.dtype))
            if done[0] is None:
                done[0] = torch.cuda.Event()
            done[0].record(stream)

    def _block(self, names: tuple[str, ...]) -> list:
        sizes = tuple(self._require(n).nbytes for n in names)
        block = self._blocks.get(names)
        if block is None or block[4] != sizes:   # (re)made when a buffer was re-bound to another size
            offsets, total = [], 0
            for n in sizes:
                offsets.append(total)
                total += -(-n // 16) * 16          # 16-byte aligned: every dtype's view is valid
            pin = self.device.type == "cuda"
            block = self._blocks[names] = [torch.empty(total, dtype=torch.uint8, pin_memory=pin),
                                           torch.empty(total, dtype=torch.uint8, device=self.device), offsets,
                                           [None], sizes]
        return block[:4]

    def read(self, name: str) -> np.ndarray:
        """A host copy of the buffer (synchronises with the device)."""
        return self._require(name).detach().to("cpu", copy=True).numpy()

    def _staging_for(self, name: str) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        if name not in self._staging:
            t = self._tensors[name]
            self._staging[name] = (torch.empty(t.shape, dtype=t.dtype, pin_memory=True), None)
        return self._staging[name]


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype
