"""Real-time chunking (guided): flashrt_ros computes what LeRobot 0.6.1's own RTC computes.

For π0, π0.5 and SmolVLA (tiny, every parameter re-randomised: parity/lerobot_reference.py), LeRobot's
policy runs predict_action_chunk with its RTCProcessor (RTCConfig(enabled=True, schedule, execution
horizon, max guidance weight)) and the RTC kwargs LeRobot routes through sample_actions to
euler_integrate: inference_delay, prev_chunk_left_over (normalised, [B, P, 7], as LeRobot keeps the
previous chunk before its postprocessor; LeRobot pads it to [B, 50, 32] with zeros and weighs every
action dim, padding included), execution_horizon. Ours (models/rtc.py, jacobian "identity": LeRobot
0.6.1 computes v_t before x_t requires grad, so its correction is the weighted error itself) gets
the same prefix, padded the same way, prefix_weights(schedule, d, min(h, P), 50), the same noise.
fp32 on the CPU: max |diff| <= 1e-4 (measured: below, ~1e-6).

jacobian "vjp" (the paper's ΠGDM) has no LeRobot implementation: its reference is the paper's
equation written out here (PaperGuidance: autograd through LeRobot's own denoise step, x1 = x_t -
t v(x_t), correction = J^T ((Y - x1) W)), run inside LeRobot's own euler_integrate.

Run: make parity PARITY_ARGS="-k rtc -s"
"""
from __future__ import annotations

import itertools

import pytest
import torch

from flashrt_ros.models.lerobot import load_policy
from flashrt_ros.models.rtc import Guidance, guidance_weight, prefix_weights
from lerobot.configs import RTCAttentionSchedule
from lerobot.policies.rtc.configuration_rtc import RTCConfig
from lerobot.policies.rtc.modeling_rtc import RTCProcessor
from parity.lerobot_reference import build, load, make_inputs, prepare_batch, reference, save

ATOL = 1e-4
CHUNK, MAX_ACTION, ACTION = 50, 32, 7
MAX_WEIGHT = 10.0
# Measured 2026-12-01 (max |ours - reference|, normalised actions, fp32, CPU; printed with -s):
#   identity vs LeRobot's RTCProcessor, over the CASES below: π0 <= 1.4e-6, π0.5 <= 8.3e-7,
#   SmolVLA <= 1.3e-6 (guided vs plain: 4.3 to 6.0, so the guidance is far from vacuous)
#   vjp vs PaperGuidance (ΠGDM through LeRobot's network): π0 9.5e-7, π0.5 9.5e-7, SmolVLA 1.6e-6
#   vjp vs identity: π0 0.57, π0.5 0.98, SmolVLA 0.53; one delay step off: 0.15 to 0.29


class PaperGuidance(RTCProcessor):
    """ΠGDM as the paper writes it (Black, Galliker, Levine 2025, arXiv 2506.07339, eq. 2-5), in
    LeRobot's time convention (t: 1 = noise -> 0 = data, tau = 1 - t): x1 = x_t - t v(x_t);
    v <- v - min(w_max, (1 - tau) / (tau r^2)) J^T ((Y - x1) W), J = dx1/dx_t through the denoiser,
    r^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2). Y: the prefix zero-padded to x_t's shape, W: LeRobot's
    get_prefix_weights. A plain eager loop: LeRobot's euler_integrate calls this every step."""

    def denoise_step(self, x_t, prev_chunk_left_over, inference_delay, time, original_denoise_step_partial,
                     execution_horizon=None):
        B, T, A = x_t.shape
        prev = torch.zeros(B, T, A)
        P, Ap = prev_chunk_left_over.shape[1:]
        prev[:, :P, :Ap] = prev_chunk_left_over
        h = min(execution_horizon or self.rtc_config.execution_horizon, P)
        weights = self.get_prefix_weights(inference_delay, h, T)[None, :, None]
        x = x_t.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            v = original_denoise_step_partial(x)
            x1 = x - time * v
            correction = torch.autograd.grad(x1, x, ((prev - x1) * weights).detach())[0]
        tau, w_max = 1.0 - time, self.rtc_config.max_guidance_weight
        if tau == 0:
            w = w_max
        else:
            r2 = (1 - tau) ** 2 / (tau ** 2 + (1 - tau) ** 2)
            w = min(w_max, (1 - tau) / (tau * r2))
        return v.detach() - w * correction


@pytest.fixture(scope="module", params=["pi0", "pi05", "smolvla"])
def case(request, tmp_path_factory):
    kind = request.param
    out = save(*build(kind, "tiny", seed=0), tmp_path_factory.mktemp(f"rtc_{kind}"))
    inputs = make_inputs(kind, out, seed=0)
    ref, _ = reference(kind, out, inputs)
    return kind, inputs, ref, load(kind, out), load_policy(out)


def leftover(ref, P: int, seed: int = 1) -> torch.Tensor:
    """A normalised previous chunk's left-over [B, P, 7]: this chunk's plain actions shifted by 3 rows
    and disturbed, so the guidance has something to pull toward."""
    g = torch.Generator().manual_seed(seed)
    base = ref["model.actions"][:, 3:3 + P]
    return base + 0.5 * torch.randn(base.shape, generator=g)


def lerobot_rtc(case, schedule: str, delay: int, prev: torch.Tensor, horizon: int,
                processor: type[RTCProcessor] = RTCProcessor) -> torch.Tensor:
    """LeRobot's predict_action_chunk with RTC on, the kwargs routed as LeRobot routes them."""
    kind, inputs, ref, loaded, _ = case
    policy = loaded.policy
    policy.config.rtc_config = RTCConfig(enabled=True, prefix_attention_schedule=RTCAttentionSchedule[schedule],
                                         max_guidance_weight=MAX_WEIGHT, execution_horizon=horizon)
    policy.init_rtc_processor()
    if processor is not RTCProcessor:
        policy.rtc_processor = policy.model.rtc_processor = processor(policy.config.rtc_config)
    try:
        batch = prepare_batch(loaded.preprocessor, loaded.feed, inputs, list(policy.config.image_features))
        with torch.no_grad():
            return policy.predict_action_chunk(batch, noise=ref["noise"], inference_delay=delay,
                                               prev_chunk_left_over=prev, execution_horizon=horizon)
    finally:
        policy.config.rtc_config = None
        policy.init_rtc_processor()


def ours_rtc(case, schedule: str, delay: int, prev: torch.Tensor, horizon: int, jacobian: str) -> torch.Tensor:
    kind, _, ref, _, policy = case
    B, P = prev.shape[:2]
    padded = torch.zeros(B, CHUNK, MAX_ACTION)
    padded[:, :P, :prev.shape[2]] = prev
    weights = prefix_weights(schedule, delay, min(horizon, P), CHUNK)[None, :, None]
    net = policy.model
    images = net.prepare_images([ref[f"image.{i}"] for i in range(sum(k.startswith("image.") for k in ref))])
    state = ref["model.state"] if "model.state" in ref else torch.zeros(B, MAX_ACTION)
    with torch.no_grad():
        out = net(images, ref["model.img_masks"], ref["tokens"], ref["token_mask"], state, ref["noise"],
                  guidance=Guidance(padded, weights, MAX_WEIGHT, jacobian))
    return out[..., :ACTION]


def plain(case) -> torch.Tensor:
    return case[2]["model.actions"]


# (kind, schedule, delay, prefix rows P, execution horizon): every schedule on π0.5, delay 0 and > 0 on
# each model, P < horizon (LeRobot clips the horizon to P) and P < the chunk (row padding).
CASES = [
    ("pi05", "LINEAR", 0, 30, 10), ("pi05", "LINEAR", 4, 30, 10), ("pi05", "EXP", 4, 30, 12),
    ("pi05", "ONES", 3, 30, 10), ("pi05", "ZEROS", 5, 30, 10),
    ("pi0", "LINEAR", 0, 25, 10), ("pi0", "EXP", 3, 8, 12), ("pi0", "ONES", 6, 8, 10),
    ("smolvla", "LINEAR", 0, 25, 10), ("smolvla", "ZEROS", 3, 25, 10), ("smolvla", "EXP", 4, 50, 20),
]


def test_identity_guidance_matches_lerobot_rtc(case):
    """Every case of this model (CASES), one after the other."""
    kind = case[0]
    cases = [c[1:] for c in CASES if c[0] == kind]
    assert cases
    for schedule, delay, P, horizon in cases:
        prev = leftover(case[2], P)
        ref = lerobot_rtc(case, schedule, delay, prev, horizon)
        ours = ours_rtc(case, schedule, delay, prev, horizon, "identity")
        diff = float((ours - ref).abs().max())
        moved = float((ref - plain(case)).abs().max())
        print(f"\nRTC identity {kind} {schedule} d={delay} P={P} h={horizon}: max |ours - LeRobot| {diff:.2e} "
              f"(guided vs plain {moved:.3f})")
        assert moved > 1e-2, f"{schedule} d={delay}: the guidance changed nothing: the comparison would be vacuous"
        assert diff <= ATOL, f"{schedule} d={delay} P={P} h={horizon}: {diff:.2e}"


def test_the_comparison_can_fail(case):
    """One delay step off, or the prefix one row off: far beyond the tolerance."""
    kind = case[0]
    prev = leftover(case[2], 25)
    ref = lerobot_rtc(case, "LINEAR", 3, prev, 10)
    off_delay = float((ours_rtc(case, "LINEAR", 4, prev, 10, "identity") - ref).abs().max())
    off_row = float((ours_rtc(case, "LINEAR", 3, prev[:, 1:], 10, "identity") - ref).abs().max())
    print(f"\nRTC {kind}: delay 4 instead of 3 -> {off_delay:.3f}; prefix one row early -> {off_row:.3f}")
    assert off_delay > 100 * ATOL and off_row > 100 * ATOL


def test_vjp_matches_the_paper_through_lerobots_network_and_differs_from_identity(case):
    kind = case[0]
    prev = leftover(case[2], 30)
    ref = lerobot_rtc(case, "LINEAR", 4, prev, 12, processor=PaperGuidance)
    ours = ours_rtc(case, "LINEAR", 4, prev, 12, "vjp")
    identity = ours_rtc(case, "LINEAR", 4, prev, 12, "identity")
    diff = float((ours - ref).abs().max())
    apart = float((ours - identity).abs().max())
    print(f"\nRTC vjp {kind}: max |ours - paper reference| {diff:.2e}; |vjp - identity| {apart:.3f}")
    assert diff <= ATOL
    assert apart > 100 * ATOL, "vjp and identity agree: the Jacobian made no difference"


@pytest.mark.parametrize("schedule", ["LINEAR", "EXP", "ONES", "ZEROS"])
def test_prefix_weights_are_lerobots(schedule):
    lerobot = RTCProcessor(RTCConfig(prefix_attention_schedule=RTCAttentionSchedule[schedule]))
    checked = 0
    for d, h, H in itertools.product(range(0, 14), [1, 2, 5, 10, 12, 49, 50, 60], [1, 5, 10, 12, 50]):
        theirs = lerobot.get_prefix_weights(d, h, H)
        mine = prefix_weights(schedule, d, h, H)
        assert mine.shape == theirs.shape == (H,), (d, h, H)
        assert torch.equal(mine, theirs.float()), (schedule, d, h, H, mine, theirs)
        checked += 1
    assert checked == 14 * 8 * 5


def test_guidance_weight_is_lerobots():
    for step in range(10):
        time = 1.0 + step * -0.1
        tau = 1 - time
        t = torch.as_tensor(tau)
        inv_r2 = ((1 - t) ** 2 + t ** 2) / (1 - t) ** 2
        c = torch.nan_to_num((1 - t) / t, posinf=MAX_WEIGHT)
        theirs = float(torch.minimum(torch.nan_to_num(c * inv_r2, posinf=MAX_WEIGHT), torch.as_tensor(MAX_WEIGHT)))
        assert guidance_weight(tau, MAX_WEIGHT) == pytest.approx(theirs, rel=1e-6), step


def test_prefix_normalisation_inverts_lerobots_postprocessor(case):
    """The engine normalises the prefix (action units) with the checkpoint's action normaliser: the
    exact inverse of what LeRobot's own postprocessor does to the model's output."""
    kind, _, ref, loaded, policy = case
    units = loaded.postprocessor(ref["model.actions"].clone())
    back = policy.post["action"].normalize(units)
    diff = float((back - ref["model.actions"]).abs().max())
    print(f"\n{kind}: normalise(LeRobot postprocessor(a)) vs a: {diff:.2e}")
    assert diff <= 1e-5
