"""A compiled fast path is kept only behind its equivalence gate: on seeded probe inputs its chunk must
match the plain path's (cosine >= COMPILE_MIN_COS), else start-up stops with FastPathRefused naming the
numbers (no fallback, silent or loud). CPU (inductor's C++ backend): the built-in engine on the shipped
reference policy, the LeRobot engine on the tiny π0.5 fixture."""
from pathlib import Path

import numpy as np
import pytest

from flashrt_ros.engines import builtin
from flashrt_ros.engines.base import FastPathRefused
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


def test_a_compiled_actor_below_the_gate_stops_start_up_with_the_numbers(scene, monkeypatch):
    monkeypatch.setattr(builtin, "COMPILE_MIN_COS", 1.5)     # no cosine reaches it: the gate must refuse
    with pytest.raises(FastPathRefused, match=r"compiled actor refused by its start-up gate: cosine [01]\.\d+ .*< 1\.5"
                                             r".*compile: false"):
        Engine(device="cpu", compile_actor=True)


def test_a_lerobot_fast_path_below_the_gate_stops_start_up_with_the_numbers(monkeypatch):
    from flashrt_ros.engines import lerobot
    ckpt = Path(__file__).parent / "fixtures" / "lerobot_pi05_tiny"
    monkeypatch.setattr(lerobot, "COMPILE_MIN_COS", 1.5)
    with pytest.raises(FastPathRefused, match=r"compiled fast path refused by its start-up gate: cosine [01]\.\d+ .*< 1\.5"):
        lerobot.LerobotEngine(ckpt, device="cpu", compile_actor=True)


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "cpu"}, "run on a GPU with bf16 weights, not on cpu"),
    ({"device": "cpu", "weights": "int8"}, "not on cpu with weights int8"),
])
def test_fused_expert_the_engine_cannot_run_is_refused_not_ignored(kwargs, message):
    from flashrt_ros.engines.lerobot import LerobotEngine
    with pytest.raises(ValueError, match=f"fused_expert: .*{message}"):
        LerobotEngine(Path(__file__).parent / "fixtures" / "lerobot_pi05_tiny", fused_expert=True, **kwargs)
