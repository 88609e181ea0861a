"""Real-time chunking in the built-in engine (CPU): a prefix changes the chunk the way its mode
says (the first d actions follow it), no prefix is the plain chunk bit for bit, and the actor's
per-token flow time is the per-chunk time bit for bit when it is uniform."""
import os

import numpy as np
import pytest
import torch

from flashrt_ros.engines.builtin import Engine
from flashrt_ros.models.checkpoint import REFERENCE_WEIGHTS, load_checkpoint
from flashrt_ros.models.rtc import RtcSettings
from flashrt_ros.sim import TabletopWorld

CKPT = os.environ.get("FLASHRT_TEST_CKPT")
LIMITS = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
VMAX = np.array([5.0, 5.0], np.float32)   # loose: the comparison is of what the model makes


def make(**kwargs):
    return Engine(checkpoint=CKPT, device="cpu", joint_limits=LIMITS, max_velocity=VMAX, **kwargs)


@pytest.fixture(scope="module")
def scene():
    world = TabletopWorld()
    obs = world.reset(123)
    return world, obs


def ready(engine, scene):
    world, obs = scene
    engine.reset()
    engine.set_task(world.task_text)
    engine.plan([obs.images["top"]], ["rgb8"])
    return [obs.images["top"]], ["rgb8"], obs.joint_positions


def another_way(q, rows):
    """A prefix the plain chunk does not follow: a line away from where the policy goes."""
    return (q + np.linspace(0.01, 0.01 * rows, rows)[:, None] * np.array([[-1.0, 1.0]])).astype(np.float32)


@pytest.mark.parametrize("mode", ["guided", "trained"])
def test_no_prefix_is_the_plain_chunk_bit_for_bit(scene, mode):
    plain, rtc = make(), make(rtc=RtcSettings(), rtc_mode=mode)
    a = plain.act(*ready(plain, scene), chunk_seq=7)
    b = rtc.act(*ready(rtc, scene), chunk_seq=7)
    assert a.positions.tobytes() == b.positions.tobytes()
    assert a.velocities.tobytes() == b.velocities.tobytes()
    assert rtc.actor_graph.replays == 1 and rtc.rtc_graph.replays == 0   # (+1 at capture on CPU: eager)


@pytest.mark.parametrize("delay", [3, 6])
def test_trained_mode_keeps_the_first_d_actions_of_the_prefix(scene, delay):
    engine = make(rtc=RtcSettings(), rtc_mode="trained")
    inputs = ready(engine, scene)
    prefix = another_way(inputs[2], 12)
    plain = engine.act(*inputs, chunk_seq=3)
    chunk = engine.act(*inputs, chunk_seq=3, prefix=prefix, delay=delay)
    np.testing.assert_allclose(chunk.positions[:delay], prefix[:delay], atol=1e-5)
    # the plain chunk was far from it: the prefix made the difference
    assert np.abs(plain.positions[:delay] - prefix[:delay]).max() > 0.02


@pytest.mark.parametrize("jacobian, ratio", [("identity", 0.15), ("vjp", 0.9)])
def test_guided_mode_pulls_the_first_d_actions_to_the_prefix(scene, jacobian, ratio):
    """identity (LeRobot 0.6.1's guidance): the first d actions land within 15% of the plain chunk's
    distance to the prefix. vjp (ΠGDM): weaker on this model, whose predicted clean chunk hardly
    depends on x_t (J = dx1/dx_t is small), but still strictly closer (measured: ~0.7)."""
    engine = make(rtc=RtcSettings(jacobian=jacobian), rtc_mode="guided")
    inputs = ready(engine, scene)
    prefix = another_way(inputs[2], 12)
    d = 4
    plain = engine.act(*inputs, chunk_seq=3)
    chunk = engine.act(*inputs, chunk_seq=3, prefix=prefix, delay=d)
    far = np.abs(plain.positions[:d] - prefix[:d]).max()
    near = np.abs(chunk.positions[:d] - prefix[:d]).max()
    assert far > 0.02
    assert near < ratio * far, (near, far)
    # and past the execution horizon the prefix has no weight: the chunk is the policy's again
    assert np.abs(chunk.positions[-1] - plain.positions[-1]).max() < 0.5 * far


def test_bad_prefix_or_delay_is_refused(scene):
    engine = make(rtc=RtcSettings(), rtc_mode="guided")
    inputs = ready(engine, scene)
    H = engine.config.horizon
    for prefix, delay, match in [(np.zeros((H + 1, 2), np.float32), 0, "P <= "),
                                 (np.zeros((3, 3), np.float32), 0, r"\[P, 2\]"),
                                 (np.full((3, 2), np.nan, np.float32), 0, "not finite"),
                                 (np.zeros((3, 2), np.float32), -1, "delay")]:
        with pytest.raises(ValueError, match=match):
            engine.act(*inputs, prefix=prefix, delay=delay)


@pytest.fixture(scope="module")
def actor():
    _, actor, _ = load_checkpoint(CKPT or REFERENCE_WEIGHTS)
    return actor


@pytest.mark.parametrize("batch", [1, 3])
def test_per_token_time_is_the_per_chunk_time_bit_for_bit_when_uniform(actor, batch):
    c = actor.config
    g = torch.Generator().manual_seed(batch)
    prefix = torch.randn(batch, c.prefix_len, c.prefix_width, generator=g)
    x = torch.randn(batch, c.horizon, c.action_dim, generator=g)
    with torch.inference_mode():
        condition = actor.condition(prefix)
        for t in (0.0, 0.37, 0.9):
            per_chunk = torch.full((batch,), t)
            per_token = per_chunk[:, None].expand(batch, c.horizon)
            assert torch.equal(actor.velocity_from(condition, x, per_chunk),
                               actor.velocity_from(condition, x, per_token))
        # trained-mode denoising with no clean token is the plain denoise loop, bit for bit
        none = torch.zeros(1, c.horizon, 1)
        assert torch.equal(actor.denoise(prefix, x),
                           actor.denoise_rtc(prefix, x, torch.zeros_like(x), none, "trained"))
        # and a clean token does change the chunk (the time per token is used)
        one = none.clone()
        one[0, :2] = 1.0
        assert not torch.equal(actor.denoise(prefix, x)[:, 2:],
                               actor.denoise_rtc(prefix, x, torch.zeros_like(x), one, "trained")[:, 2:])


def test_an_engine_built_without_rtc_has_no_rtc_graph_and_refuses_a_prefix(scene):
    engine = make()
    assert engine.rtc_graph is None
    inputs = ready(engine, scene)
    with pytest.raises(ValueError, match="built without rtc"):
        engine.act(*inputs, chunk_seq=1, prefix=another_way(inputs[2], 4), delay=2)
