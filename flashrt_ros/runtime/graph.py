"""Graphs captured once over static buffers and replayed.

On a GPU the function is captured into a torch CUDA graph and `replay()` launches it in one call
on the graph's own stream. On CPU the same function runs eagerly, so every path is testable in CI.
A graph knows which buffers it reads and writes; replaying after one of them was re-bound is an
error (a CUDA graph would silently keep using the old storage).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .buffers import BufferError, BufferSet


class GraphError(RuntimeError):
    """Replay before capture, or a graph whose buffers changed under it."""


class StaticGraph:
    captures = 0        # graphs captured in this process (a reset must not add any)

    def __init__(
        self,
        name: str,
        fn: Callable[[BufferSet], None],
        buffers: BufferSet,
        reads: Sequence[str],
        writes: Sequence[str],
        stream: "torch.cuda.Stream | None" = None,
        pool=None,
        grad: bool = False,
    ):
        self.name = name
        self.fn = fn
        self.buffers = buffers
        self.reads = tuple(reads)
        self.writes = tuple(writes)
        missing = [n for n in (*self.reads, *self.writes) if n not in buffers]
        if missing:
            raise BufferError(f"graph {name!r} names buffers that do not exist: {missing}")
        self.on_gpu = buffers.device.type == "cuda"
        self.stream = stream if stream is not None or not self.on_gpu else torch.cuda.Stream(buffers.device)
        self._pool = pool
        # grad: the function differentiates inside (torch.enable_grad, autograd.grad; e.g. RTC's ΠGDM
        # guidance): captured and replayed under no_grad instead of inference_mode, where autograd
        # records nothing. Its backward kernels are captured into the same CUDA graph.
        self.grad = bool(grad)
        self._cuda_graph: "torch.cuda.CUDAGraph | None" = None
        self._fingerprint: dict | None = None
        self._generation = -1
        self.replays = 0

    @property
    def captured(self) -> bool:
        return self._fingerprint is not None

    def capture(self, warmup: int = 2) -> "StaticGraph":
        names = (*self.reads, *self.writes)
        with self._mode():
            if not self.on_gpu:
                self.fn(self.buffers)  # one eager run proves the function works over these buffers
            else:
                # Warm up on the capture stream (cuBLAS handles, autotuning), then capture.
                self.stream.wait_stream(torch.cuda.current_stream(self.buffers.device))
                with torch.cuda.stream(self.stream):
                    for _ in range(warmup):
                        self.fn(self.buffers)
                self.stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool, stream=self.stream):
                    self.fn(self.buffers)
                self._cuda_graph = graph
        self._fingerprint = self.buffers.fingerprint(names)
        self._generation = self.buffers.generation
        StaticGraph.captures += 1
        return self

    def replay(self, stream: "torch.cuda.Stream | None" = None) -> None:
        """Launch the graph on its own stream (or `stream`, e.g. one of an SM partition)."""
        if self._fingerprint is None:
            raise GraphError(f"graph {self.name!r} replayed before capture()")
        if self.buffers.generation != self._generation:
            self._check_buffers()
        if self._cuda_graph is not None:
            with torch.cuda.stream(stream or self.stream):
                self._cuda_graph.replay()
        else:
            with self._mode():
                self.fn(self.buffers)
        self.replays += 1

    def _mode(self):
        return torch.no_grad() if self.grad else torch.inference_mode()

    def synchronize(self) -> None:
        if self.on_gpu:
            self.stream.synchronize()

    def _check_buffers(self) -> None:
        names = (*self.reads, *self.writes)
        missing = [n for n in names if n not in self.buffers]
        if missing:
            raise GraphError(f"graph {self.name!r}: buffers {missing} no longer exist; recapture")
        now = self.buffers.fingerprint(names)
        changed = [n for n in names if now[n] != self._fingerprint[n]]
        if changed:
            raise GraphError(f"graph {self.name!r}: buffers {changed} were re-bound since capture; recapture")
        self._generation = self.buffers.generation


class GraphChain:
    """Captured graphs replayed one after the other on one stream, as one unit: replay() is all of them,
    in order. A caller with host work that only the later graphs need replays the first ones itself
    (`graphs[0].replay()`), does that work while the device runs them, then replays the rest
    (e.g. an engine's camera encoder, then the chunk: LerobotEngine.act). `replays` counts the last
    graph's replays: whole chunks."""

    def __init__(self, name: str, *graphs: StaticGraph):
        if not graphs:
            raise ValueError("a graph chain needs at least one graph")
        self.name, self.graphs = name, tuple(graphs)

    @property
    def replays(self) -> int:
        return self.graphs[-1].replays

    @property
    def captured(self) -> bool:
        return all(g.captured for g in self.graphs)

    def replay(self, stream: "torch.cuda.Stream | None" = None) -> None:
        for g in self.graphs:
            g.replay(stream)

    def synchronize(self) -> None:
        for g in self.graphs:
            g.synchronize()
