"""Real-time chunking (guided) in the LeRobot engine, on the tiny π0 and π0.5 fixtures, CPU (eager):
the prefix is not ignored (the first d actions of a guided chunk land near it, the plain chunk's do
not), a chunk without a prefix is bit-identical to the plain engine's, the guided chunk is the eager
model's guided chunk after the engine's normalisation and padding, vjp and identity differ, and bad
input is refused. Parity with LeRobot's own RTC is in parity/test_parity_rtc.py."""
import numpy as np
import pytest
import torch

from flashrt_ros.engines.lerobot import LerobotEngine
from flashrt_ros.models.lerobot import load_policy
from flashrt_ros.models.rtc import Guidance, RtcSettings, prefix_weights
from test_lerobot_engine import ENCODINGS, IMAGES, Q, SEED, TASK, WIDE, WIDE_VMAX, policy_dir

D, H = 7, 50
DELAY = 4


def engine_for(kind: str, rtc: RtcSettings | None) -> LerobotEngine:
    e = LerobotEngine(checkpoint=policy_dir(kind), device="cpu", seed=SEED, joint_limits=WIDE,
                      max_velocity=WIDE_VMAX, rtc=rtc)
    e.set_task(TASK)
    return e


@pytest.fixture(scope="module", params=["pi0", "pi05"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def plain(kind):
    return engine_for(kind, None)


def a_prefix(plain: LerobotEngine, rows: int = 20) -> np.ndarray:
    """The previous chunk's left-over, as the host would pass it: another chunk (other noise) moved by
    0.4 in every joint, so it is far from what this chunk would be on its own."""
    return (plain.act(IMAGES, ENCODINGS, Q, chunk_seq=11).positions[:rows] + 0.4).astype(np.float32)


@pytest.mark.parametrize("schedule", ["ONES", "LINEAR"])
@pytest.mark.parametrize("jacobian", ["identity", "vjp"])
def test_the_first_actions_follow_the_prefix(kind, plain, schedule, jacobian):
    """max guidance weight 100: over the first d actions the guided chunk is at least 10x closer to the
    prefix than the plain chunk. Measured (mean |chunk - prefix| over the first 4 actions, action units,
    printed with -s): π0 plain 1.28, guided 0.017 (identity) / 0.037 (vjp); π0.5 plain 4.57, guided
    0.026 / 0.081; both schedules."""
    engine = engine_for(kind, RtcSettings(schedule, execution_horizon=10, max_guidance_weight=100.0,
                                          jacobian=jacobian))
    prefix = a_prefix(plain)
    base = plain.act(IMAGES, ENCODINGS, Q, chunk_seq=3).positions
    guided = engine.act(IMAGES, ENCODINGS, Q, chunk_seq=3, prefix=prefix, delay=DELAY).positions
    far = float(np.abs(base[:DELAY] - prefix[:DELAY]).mean())
    near = float(np.abs(guided[:DELAY] - prefix[:DELAY]).mean())
    after = float(np.abs(guided[12:] - base[12:]).mean())   # past the horizon: only the flow's coupling
    print(f"\n{kind} {schedule} {jacobian}: first {DELAY} actions, mean |chunk - prefix|: plain {far:.3f}, "
          f"guided {near:.3f}; rows 12+ moved by {after:.3f}")
    assert far > 0.3
    assert near < far / 10


@pytest.mark.parametrize("jacobian", ["identity", "vjp"])
def test_without_a_prefix_the_chunk_is_bit_identical_to_the_plain_engine(kind, plain, jacobian):
    engine = engine_for(kind, RtcSettings("LINEAR", jacobian=jacobian))
    for seq in (3, 4):
        want = plain.act(IMAGES, ENCODINGS, Q, chunk_seq=seq)
        for got in (engine.act(IMAGES, ENCODINGS, Q, chunk_seq=seq),
                    engine.act(IMAGES, ENCODINGS, Q, chunk_seq=seq, prefix=np.zeros((0, D), np.float32), delay=2)):
            assert np.array_equal(got.positions, want.positions) and np.array_equal(got.velocities, want.velocities)
    # and a guided chunk in between leaves nothing behind
    engine.act(IMAGES, ENCODINGS, Q, chunk_seq=3, prefix=a_prefix(plain), delay=2)
    assert np.array_equal(engine.act(IMAGES, ENCODINGS, Q, chunk_seq=3).positions,
                          plain.act(IMAGES, ENCODINGS, Q, chunk_seq=3).positions)


def eager_guided(kind: str, prefix: np.ndarray, delay: int, rtc: RtcSettings, chunk_seq: int) -> np.ndarray:
    """The model's guided chunk computed by hand: the prompt, tokens and noise as the engine makes them,
    the prefix normalised with the checkpoint's action statistics and zero-padded to [1, 50, 32]."""
    policy = load_policy(policy_dir(kind), "cpu", "float32")
    state = torch.from_numpy(Q)[None]
    norm_state = policy.normalize_state(state)
    text = policy.prompt(TASK, norm_state[0].numpy()) if policy.kind == "pi05" else policy.prompt(TASK)
    ids, mask = policy.tokenize(text)
    A = int(policy.config["max_action_dim"])
    noise = torch.randn((1, H, A), generator=torch.Generator().manual_seed(SEED * 1_000_003 + chunk_seq))
    cams = [torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255.0 for im in IMAGES]
    padded = torch.zeros(1, H, A)
    padded[0, :len(prefix), :D] = policy.post["action"].normalize(torch.from_numpy(prefix))
    weights = prefix_weights(rtc.schedule, delay, min(rtc.execution_horizon, len(prefix)), H)[None, :, None]
    net = policy.model
    with torch.no_grad():
        out = net(net.prepare_images(cams), torch.ones(1, len(cams), dtype=torch.bool), torch.from_numpy(ids)[None],
                  torch.from_numpy(mask)[None], torch.nn.functional.pad(norm_state, (0, A - D)), noise,
                  guidance=Guidance(padded, weights, rtc.max_guidance_weight, rtc.jacobian))
    return policy.unnormalize_actions(out[..., :D])[0].numpy()


@pytest.mark.parametrize("jacobian", ["identity", "vjp"])
def test_the_guided_chunk_is_the_eager_guided_model(kind, plain, jacobian):
    rtc = RtcSettings("EXP", execution_horizon=12, max_guidance_weight=10.0, jacobian=jacobian)
    engine = engine_for(kind, rtc)
    prefix = a_prefix(plain, rows=15)
    got = engine.act(IMAGES, ENCODINGS, Q, chunk_seq=5, prefix=prefix, delay=3).positions
    want = eager_guided(kind, prefix, 3, rtc, 5)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert float(np.abs(want - plain.act(IMAGES, ENCODINGS, Q, chunk_seq=5).positions).max()) > 0.05


def test_vjp_and_identity_give_different_chunks(kind, plain):
    prefix = a_prefix(plain)
    chunks = {j: engine_for(kind, RtcSettings("LINEAR", jacobian=j)).act(IMAGES, ENCODINGS, Q, chunk_seq=3,
                                                                          prefix=prefix, delay=2).positions
              for j in ("identity", "vjp")}
    assert float(np.abs(chunks["vjp"] - chunks["identity"]).max()) > 1e-2


def test_bad_rtc_input_is_refused_and_the_engine_keeps_working(kind, plain):
    engine = engine_for(kind, RtcSettings("LINEAR", jacobian="identity"))
    good = a_prefix(plain)
    with pytest.raises(ValueError, match="without real-time chunking"):
        plain.act(IMAGES, ENCODINGS, Q, prefix=good, delay=1)
    for bad, delay, why in [(good[:, :5], 1, r"\[P, 7\]"), (np.zeros((H + 1, D), np.float32), 1, r"\[P, 7\]"),
                            (good[0], 1, r"\[P, 7\]"), (good, -1, "delay"), (good, 1.5, "delay"),
                            (np.full((3, D), np.nan, np.float32), 1, "non-finite")]:
        with pytest.raises(ValueError, match=why):
            engine.act(IMAGES, ENCODINGS, Q, prefix=bad, delay=delay)
    want = plain.act(IMAGES, ENCODINGS, Q, chunk_seq=3).positions
    assert np.array_equal(engine.act(IMAGES, ENCODINGS, Q, chunk_seq=3).positions, want)


def test_trained_mode_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="trained.*not available for LeRobot"):
        LerobotEngine(checkpoint=policy_dir("pi05"), device="cpu", rtc=RtcSettings(), rtc_mode="trained")
    with pytest.raises(ValueError, match="rtc_mode"):
        LerobotEngine(checkpoint=policy_dir("pi05"), device="cpu", rtc=RtcSettings(), rtc_mode="soft")
