"""The built-in engine's opt-in compiled actor is kept only behind its equivalence gate: on seeded
probe inputs the compiled actor's chunk must match the plain actor's (cosine >= COMPILE_MIN_COS),
else the plain actor runs and a note says so. CPU (inductor's C++ backend), the shipped reference
policy."""
import numpy as np
import pytest

from flashrt_ros.engines import builtin
from flashrt_ros.engines.builtin import Engine


@pytest.fixture(scope="module")
def scene():
    from flashrt_ros.sim import TabletopWorld
    world = TabletopWorld()
    return world, world.reset(3)


def _chunk(engine, scene):
    world, obs = scene
    engine.set_task(world.task_text)
    engine.plan([obs.images["top"]], ["rgb8"])
    return engine.act([obs.images["top"]], ["rgb8"], obs.joint_positions, chunk_seq=5)


def test_the_compiled_actor_passes_its_gate_and_gives_the_plain_chunk(scene):
    plain, fast = Engine(device="cpu"), Engine(device="cpu", compile_actor=True)
    assert plain.notes == [] and plain.gates == {}
    assert fast.gates["compile"]["cos"] >= builtin.COMPILE_MIN_COS
    assert fast.notes[0].startswith("compile: actor compiled") and fast._actor_call is not fast.actor
    a, b = _chunk(plain, scene), _chunk(fast, scene)
    np.testing.assert_allclose(b.positions, a.positions, rtol=0, atol=1e-4)
    assert float(np.abs(a.positions).max()) > 0.05          # a real chunk, not zeros


def test_a_compiled_actor_below_the_gate_is_refused_and_the_plain_actor_runs(scene, monkeypatch):
    monkeypatch.setattr(builtin, "COMPILE_MIN_COS", 1.5)     # no cosine reaches it: the gate must refuse
    fast = Engine(device="cpu", compile_actor=True)
    assert fast.notes[0].startswith("compile: refused") and fast._actor_call is fast.actor
