"""The subtask hand-off: what the planner wrote is byte-for-byte what the actor reads, with a
version that says which write it was, and no read ever mixes two writes."""
import threading

import numpy as np
import torch

from flashrt_ros.runtime import BufferSet, StaticGraph, SubtaskChannel

L = 16


def make_pair(device="cpu", text_len=L, actor_stream=None, planner_stream=None):
    """A channel with a planner graph writing `planner.tokens` into it and an actor graph copying
    what it read (tokens, version) out. Also used by the GPU test across two CUDA streams."""
    bufs = BufferSet(device)
    ch = SubtaskChannel(bufs, text_len, actor_stream=actor_stream)
    bufs.declare("planner.tokens", (text_len,), torch.int64)   # what the planner computed
    bufs.declare("actor.seen", (1, text_len), torch.int64)     # what the actor read
    bufs.declare("actor.version", (1,), torch.int64)

    def planner(b):
        ch.write_in_graph(b, b["planner.tokens"])

    def actor(b):
        tokens, version = ch.read_in_graph(b)
        b["actor.seen"].copy_(tokens)
        b["actor.version"].copy_(version)

    pg = StaticGraph("planner", planner, bufs, ["planner.tokens", "subtask.state"], ["subtask.slots"],
                     stream=planner_stream)
    ag = StaticGraph("actor", actor, bufs, ["subtask.slots", "subtask.state"],
                     ["actor.seen", "actor.version"], stream=actor_stream)
    return bufs, ch, pg.capture(), ag.capture()


def pattern(i):
    return (np.arange(L, dtype=np.int64) + 1) * 1000 + i


def test_actor_reads_exactly_the_committed_planner_output():
    bufs, ch, pg, ag = make_pair()
    for i in range(1, 6):
        with ch.lock:
            bufs.write("planner.tokens", pattern(i))
            ch.writer_wait()
            pg.replay()
            state = ch.commit(f"subtask {i}", "planner")
        ag.replay()
        assert bufs.read("actor.seen")[0].tobytes() == pattern(i).tobytes()
        assert bufs.read("actor.version")[0] == state.version
    assert ch.state.text == "subtask 5" and ch.state.source == "planner"


def test_uncommitted_write_is_invisible_to_the_actor():
    bufs, ch, pg, ag = make_pair()
    ch.publish(pattern(1), "first", "operator")
    bufs.write("planner.tokens", pattern(2))
    pg.replay()  # written to the inactive slot, never committed
    ag.replay()
    assert bufs.read("actor.seen")[0].tobytes() == pattern(1).tobytes()


def test_coaching_write_lands_in_the_same_buffer_the_actor_reads():
    bufs, ch, pg, ag = make_pair()
    slots_ptr = bufs["subtask.slots"].data_ptr()
    ch.publish(pattern(7), "go to green", "coach")
    ag.replay()  # same captured actor graph, no recapture
    assert bufs["subtask.slots"].data_ptr() == slots_ptr
    assert bufs.read("actor.seen")[0].tobytes() == pattern(7).tobytes()
    assert ch.state.source == "coach"


def test_interleaved_writes_and_reads_from_two_threads_never_tear():
    bufs, ch, pg, ag = make_pair()
    writes = 3000
    errors: list[str] = []
    done = threading.Event()

    def planner_thread():
        for i in range(1, writes + 1):
            with ch.lock:
                bufs.write("planner.tokens", pattern(i))
                ch.writer_wait()
                pg.replay()
                ch.commit(str(i), "planner")
        done.set()

    def actor_thread():
        last = 0
        reads = 0
        while not done.is_set() or reads < 10:
            ag.replay()
            seen = bufs.read("actor.seen")[0]
            version = int(bufs.read("actor.version")[0])
            reads += 1
            if version == 0:
                continue
            if seen.tobytes() != pattern(version).tobytes():
                errors.append(f"read {reads}: version {version} but tokens {seen[:3]}...")
                return
            if version < last:
                errors.append(f"version went back from {last} to {version}")
                return
            last = version

    threads = [threading.Thread(target=planner_thread), threading.Thread(target=actor_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    ag.replay()
    assert bufs.read("actor.seen")[0].tobytes() == pattern(writes).tobytes()
