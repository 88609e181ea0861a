"""Capsules restore the exact bytes of the execution state, in place, so graphs stay valid."""
import numpy as np
import pytest
import torch

from flashrt_ros.runtime import BufferError, BufferSet, CapsuleStore, StaticGraph


def state_bufs():
    bufs = BufferSet("cpu")
    bufs.declare("h", (256,), torch.float32)
    bufs.declare("step", (1,), torch.int64)
    return bufs


def test_restore_is_byte_exact_including_nan_and_negative_zero():
    bufs = state_bufs()
    h = np.random.default_rng(1).standard_normal(256).astype(np.float32)
    h[3], h[7] = np.nan, -0.0
    bufs.write("h", h)
    store = CapsuleStore(bufs)
    store.snapshot("initial")
    bufs.write("h", np.zeros(256, np.float32))
    bufs.write("step", np.array([41]))
    assert not store.matches("initial")
    store.restore("initial")
    assert store.matches("initial")
    assert bufs.read("h").tobytes() == h.tobytes()
    assert bufs.read("step")[0] == 0


def test_restore_keeps_captured_graph_pointers_valid():
    bufs = state_bufs()
    def advance(b):
        b["h"].add_(1.0)
        b["step"].add_(1)
    g = StaticGraph("advance", advance, bufs, reads=["h", "step"], writes=["h", "step"]).capture()
    store = CapsuleStore(bufs)
    store.snapshot("s0")
    for _ in range(5):
        g.replay()
    store.restore("s0")
    g.replay()  # would raise if restore had re-bound storage
    assert bufs.read("step")[0] == 2  # capture ran once, then one replay after restore


def test_fork_is_independent_of_its_source():
    bufs = state_bufs()
    store = CapsuleStore(bufs)
    bufs.write("h", np.full(256, 3.0, np.float32))
    store.snapshot("a")
    forked = store.fork("a", "b")
    forked.tensors["h"].fill_(9.0)
    store.restore("a")
    assert bufs.read("h")[0] == 3.0
    store.restore("b")
    assert bufs.read("h")[0] == 9.0


def test_snapshot_of_a_subset_leaves_other_buffers_alone():
    bufs = state_bufs()
    store = CapsuleStore(bufs)
    store.snapshot("only_h", ["h"])
    bufs.write("h", np.ones(256, np.float32))
    bufs.write("step", np.array([5]))
    store.restore("only_h")
    assert bufs.read("h").sum() == 0 and bufs.read("step")[0] == 5


def test_unknown_capsule_and_changed_shape_are_clear_errors():
    bufs = state_bufs()
    store = CapsuleStore(bufs)
    with pytest.raises(BufferError, match="no capsule named 'x'"):
        store.restore("x")
    store.snapshot("s")
    bufs.rebind("h", torch.zeros(128))
    with pytest.raises(BufferError, match="is now"):
        store.restore("s")
