"""GPU checks of the engine's CUDA path (CI has no GPU: these skip there, and run on the device
machine through `flashrt-ros bench`'s companion command in docs/benchmarks/README.md)."""
import threading

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


@pytest.fixture(scope="module")
def scene():
    from flashrt_ros.sim import TabletopWorld
    world = TabletopWorld()
    obs = world.reset(7)
    return world, obs


def _engine(device, **kw):
    import os
    from flashrt_ros.engines.builtin import Engine
    return Engine(checkpoint=os.environ.get("FLASHRT_TEST_CKPT"), device=device, joint_limits=np.array([[0, 1], [0, 1]], np.float32),
                  max_velocity=np.array([0.5, 0.5], np.float32), **kw)


def test_cuda_graph_chunk_equals_the_cpu_chunk(scene):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    world, obs = scene
    chunks = []
    for device in ("cpu", "cuda"):
        e = _engine(device)
        e.set_task(world.task_text)
        e.plan([obs.images["top"]], ["rgb8"])
        chunks.append(e.act([obs.images["top"]], ["rgb8"], obs.joint_positions, chunk_seq=0))
    cpu, gpu = chunks
    assert cpu.subtask_text == gpu.subtask_text
    np.testing.assert_allclose(gpu.positions, cpu.positions, atol=1e-3)
    np.testing.assert_allclose(gpu.velocities, cpu.velocities, atol=2e-2)


def test_graph_replay_equals_eager_on_the_gpu_and_allocates_nothing(scene):
    world, obs = scene
    e = _engine("cuda")
    e.set_task(world.task_text)
    e.plan([obs.images["top"]], ["rgb8"])
    e.act([obs.images["top"]], ["rgb8"], obs.joint_positions, chunk_seq=3)
    graph_out = e.buffers.read("actor.actions")
    with torch.inference_mode(), torch.cuda.stream(e.actor_stream):
        e._actor_fn(e.buffers)
    torch.cuda.synchronize()
    eager_out = e.buffers.read("actor.actions")
    np.testing.assert_allclose(graph_out, eager_out, atol=1e-5)
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    for i in range(100):
        e.act([obs.images["top"]], ["rgb8"], obs.joint_positions, chunk_seq=i)
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == before


def test_coaching_reaches_the_next_gpu_chunk(scene):
    world, obs = scene
    e = _engine("cuda")
    e.set_task(world.task_text)
    e.plan([obs.images["top"]], ["rgb8"])
    state = e.coach("go to yellow")
    chunk = e.act([obs.images["top"]], ["rgb8"], obs.joint_positions)
    assert chunk.subtask_version == state.version and chunk.subtask_text == "go to yellow"


def test_handoff_never_tears_across_gpu_streams():
    from test_handoff import make_pair
    L = 64
    actor_stream, planner_stream = torch.cuda.Stream(priority=-1), torch.cuda.Stream()
    bufs, ch, pg, ag = make_pair("cuda", L, actor_stream, planner_stream)
    pattern = lambda i: (np.arange(L, dtype=np.int64) + 1) * 100000 + i  # noqa: E731
    writes, errors, done = 3000, [], threading.Event()

    def planner_thread():
        for i in range(1, writes + 1):
            with ch.lock:
                ch.writer_wait(planner_stream)
                bufs.write("planner.tokens", pattern(i), stream=planner_stream)
                pg.replay()
                ch.commit(str(i), "planner", stream=planner_stream)
        done.set()

    def actor_thread():
        last = 0
        while not done.is_set():
            ag.replay()
            ag.synchronize()
            seen, v = bufs.read("actor.seen")[0], int(bufs.read("actor.version")[0])
            if v and seen.tobytes() != pattern(v).tobytes():
                errors.append(f"torn read at version {v}")
                return
            if v < last:
                errors.append("version went backwards")
                return
            last = v
    ts = [threading.Thread(target=planner_thread), threading.Thread(target=actor_thread)]
    [t.start() for t in ts]
    [t.join(120) for t in ts]
    assert not errors, errors
    ag.replay()
    ag.synchronize()
    assert bufs.read("actor.seen")[0].tobytes() == pattern(writes).tobytes()


def test_critic_graph_on_the_gpu_equals_the_cpu_critic_and_allocates_nothing(scene):
    """The critic's CUDA graph reads the actor's buffers in place: its value equals the CPU
    critic's on the same observation, replays allocate nothing, and the actor's chunk is the same
    with the critic beside it."""
    from flashrt_ros.engines.critic import CriticGraph
    from flashrt_ros.models.critic import Critic, CriticConfig
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    world, obs = scene
    values, chunks = [], []
    for device in ("cpu", "cuda"):
        e = _engine(device)
        e.set_task(world.task_text)
        e.plan([obs.images["top"]], ["rgb8"])
        before_critic = e.act([obs.images["top"]], ["rgb8"], obs.joint_positions, chunk_seq=5)
        torch.manual_seed(0)
        c = Critic(CriticConfig.for_policy(e.config))      # the planner's trunk: values are not saturated
        c.init_from_planner(e.planner)
        critic = CriticGraph(e, c)
        chunks.append((before_critic, e.act([obs.images["top"]], ["rgb8"], obs.joint_positions, chunk_seq=5)))
        values.append(critic.evaluate(1.5))
    assert abs(values[0] - values[1]) < 1e-4, values
    for before_critic, with_critic in chunks:
        np.testing.assert_array_equal(before_critic.positions, with_critic.positions)
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    for i in range(50):
        critic.evaluate(0.1 * i)
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == before
