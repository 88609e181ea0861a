"""Static buffers and captured graphs: replay computes over bound storage, and refuses to run
over missing or re-bound buffers instead of silently using stale memory."""
import numpy as np
import pytest
import torch

from flashrt_ros.runtime import BufferError, BufferSet, GraphChain, GraphError, StaticGraph


def affine_graph(bufs):
    def fn(b):
        torch.add(b["x"] * 2.0, 1.0, out=b["y"])
    return StaticGraph("affine", fn, bufs, reads=["x"], writes=["y"])


def make_bufs():
    bufs = BufferSet("cpu")
    bufs.declare("x", (4,), torch.float32)
    bufs.declare("y", (4,), torch.float32)
    return bufs


def test_replay_reads_what_was_written_into_the_bound_buffer():
    bufs = make_bufs()
    g = affine_graph(bufs).capture()
    for k in range(3):
        x = np.arange(4, dtype=np.float32) + k
        bufs.write("x", x)
        g.replay()
        np.testing.assert_array_equal(bufs.read("y"), 2 * x + 1)
    assert g.replays == 3


def test_a_chain_replays_its_graphs_in_order_and_counts_whole_replays():
    # the second graph reads what the first wrote: out of order (or the first skipped) gives a stale z
    bufs = make_bufs()
    bufs.declare("z", (4,), torch.float32)
    first = affine_graph(bufs).capture()
    second = StaticGraph("square", lambda b: torch.mul(b["y"], b["y"], out=b["z"]), bufs, reads=["y"],
                         writes=["z"]).capture()
    chain = GraphChain("chain", first, second)
    assert chain.captured and chain.replays == second.replays
    before = (first.replays, second.replays)
    for k in range(3):
        x = np.arange(4, dtype=np.float32) - k
        bufs.write("x", x)
        chain.replay()
        np.testing.assert_array_equal(bufs.read("z"), (2 * x + 1) ** 2)
    assert (first.replays, second.replays) == (before[0] + 3, before[1] + 3) and chain.replays == before[1] + 3
    with pytest.raises(ValueError):
        GraphChain("empty")


def test_replay_before_capture_is_an_error():
    with pytest.raises(GraphError, match="before capture"):
        affine_graph(make_bufs()).replay()


def test_graph_over_a_missing_buffer_is_refused():
    bufs = make_bufs()
    with pytest.raises(BufferError, match="do not exist"):
        StaticGraph("bad", lambda b: None, bufs, reads=["x", "nope"], writes=["y"])


def test_replay_after_rebinding_a_buffer_is_an_error():
    bufs = make_bufs()
    g = affine_graph(bufs).capture()
    bufs.rebind("x", torch.zeros(4))
    with pytest.raises(GraphError, match="re-bound"):
        g.replay()


def test_write_with_wrong_shape_or_kind_is_rejected_and_leaves_buffer_intact():
    bufs = make_bufs()
    bufs.write("x", np.ones(4, np.float32))
    with pytest.raises(BufferError, match="shape"):
        bufs.write("x", np.ones(5, np.float32))
    bufs.declare("ids", (2,), torch.int64)
    with pytest.raises(BufferError, match="dtype"):
        bufs.write("ids", np.ones(2, np.float32))
    np.testing.assert_array_equal(bufs.read("x"), np.ones(4, np.float32))


def test_unknown_buffer_name_lists_the_declared_ones():
    with pytest.raises(BufferError, match=r"declared: \['x', 'y'\]"):
        make_bufs()["z"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU (CI has none)")
def test_cuda_graph_replay_equals_eager_and_allocates_nothing():
    bufs = BufferSet("cuda")
    bufs.declare("x", (1024,), torch.float32)
    bufs.declare("y", (1024,), torch.float32)
    g = affine_graph(bufs).capture()
    x = np.random.default_rng(0).standard_normal(1024).astype(np.float32)
    bufs.write("x", x, stream=g.stream)
    g.replay()
    g.synchronize()
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    for _ in range(100):
        g.replay()
    g.synchronize()
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == before
    np.testing.assert_allclose(bufs.read("y"), 2 * x + 1, rtol=1e-6)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the pinned block and its one copy need a GPU (CI has none)"))])
def test_write_many_fills_every_buffer_in_one_copy_and_refuses_what_write_refuses(device):
    """act()'s inputs (state, prompt ids, noise, q0) go in through one staging block: every buffer gets
    exactly its value, dtypes of different sizes side by side, again and again without allocating."""
    bufs = BufferSet(device)
    bufs.declare("state", (1, 5), torch.float32)
    bufs.declare("ids", (1, 7), torch.int64)
    bufs.declare("noise", (3, 4), torch.float32)
    names = ["state", "ids", "noise"]
    bufs.prepare_many(names)
    stream = torch.cuda.Stream() if device == "cuda" else None
    rng = np.random.default_rng(0)
    before = torch.cuda.memory_stats()["allocation.all.allocated"] if device == "cuda" else 0
    for _ in range(20):
        vals = {"state": rng.standard_normal((1, 5)).astype(np.float32),
                "ids": rng.integers(0, 2**40, (1, 7)), "noise": rng.standard_normal((3, 4)).astype(np.float32)}
        bufs.write_many(vals, stream=stream)
        if stream is not None:
            stream.synchronize()
        for n in names:
            assert np.array_equal(bufs.read(n), vals[n]), n
    if device == "cuda":
        assert torch.cuda.memory_stats()["allocation.all.allocated"] == before
    with pytest.raises(BufferError, match="shape"):
        bufs.write_many({"state": np.ones((1, 6), np.float32), "ids": vals["ids"], "noise": vals["noise"]})
    with pytest.raises(BufferError, match="dtype"):
        bufs.write_many({"state": vals["state"], "ids": np.ones((1, 7), np.float32), "noise": vals["noise"]})
