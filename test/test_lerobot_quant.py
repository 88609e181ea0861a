"""Weight-only quantised LeRobot networks (`weights: int8 | fp8`) behind their start-up gate, on the CPU
(the quantised product is the kernel's torch reference there): the per-channel quantisation error is
bounded; the gate measures the quantised network against the float32 one and the bf16 one on seeded
probes; int8 on the tiny π0.5 passes and serves chunks close to the plain engine's; FP8 on the tiny π0
fails the gate and start-up stops naming the numbers (no silent fallback); the weight-bandwidth floor
counts the 1-byte weights."""
from pathlib import Path

import numpy as np
import pytest
import torch

from flashrt_ros.engines.lerobot import LerobotEngine
from flashrt_ros.models.lerobot import load_policy
from flashrt_ros.models.lerobot.quant import QuantLinear, quantize_network
from flashrt_ros.runtime import triton_kernels as tk

FIXTURES = Path(__file__).parent / "fixtures"
D = 7


@pytest.mark.parametrize("kind,qmax", [("int8", 127), ("fp8", 448)])
def test_per_channel_quantisation_is_bounded_and_the_reference_product_is_the_dequantised_one(kind, qmax):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g) * torch.linspace(0.1, 3.0, 64)[:, None]   # rows of different scales
    qw = tk.quantize(w, kind)
    assert qw.q.dtype == (torch.int8 if kind == "int8" else torch.float8_e4m3fn) and qw.scale.shape == (64,)
    assert torch.allclose(qw.scale, w.abs().amax(1) / qmax)
    err = (tk.dequantize(qw, torch.float32) - w).abs()
    step = qw.scale[:, None] * (0.5 if kind == "int8" else 32.0)   # int8: half a step; e4m3: half of 2^6 steps at the top
    assert bool((err <= step + 1e-6).all())
    x = torch.randn(5, 96, generator=g)
    np.testing.assert_allclose(tk.wo_linear_reference(x, qw).numpy(),
                               torch.nn.functional.linear(x, tk.dequantize(qw, torch.float32)).numpy(), atol=1e-4)


def test_int8_passes_the_gate_and_serves_chunks_close_to_the_plain_engine():
    ckpt = FIXTURES / "lerobot_pi05_tiny"
    plain, quant = LerobotEngine(ckpt, device="cpu"), LerobotEngine(ckpt, device="cpu", weights="int8")
    g = quant.gates["weights"]
    assert g["quantised"]["cos"] >= 0.999 and g["error_ratio"] <= 2.0 and g["layers"] > 0
    assert g["bf16"]["mean_abs"] > 0 and g["quantised"]["mean_abs"] > 0     # measured, not assumed
    assert quant.notes[0].startswith("weights: int8")
    assert any(isinstance(m, QuantLinear) for m in quant.policy.model.expert.modules())
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(2)]
    q = rng.uniform(-0.3, 0.3, D).astype(np.float32)
    chunks = []
    for e in (plain, quant):
        e.set_task("pick up the red cube")
        chunks.append(e.act(images, ["rgb8", "rgb8"], q, chunk_seq=2).positions)
    diff = np.abs(chunks[1] - chunks[0])
    assert 0 < diff.max() < 0.05 * max(1.0, float(np.abs(chunks[0]).max()))


def test_fp8_that_fails_the_gate_stops_start_up_with_the_numbers():
    with pytest.raises(RuntimeError, match=r"weights: fp8 refused by the start-up gate: .*cosine 0\.99\d+ \(needs >= 0\.999\)"):
        LerobotEngine(FIXTURES / "lerobot_pi0_tiny", device="cpu", weights="fp8")


def test_an_unknown_weights_mode_is_refused():
    with pytest.raises(ValueError, match="weights 'int4'"):
        LerobotEngine(FIXTURES / "lerobot_pi05_tiny", device="cpu", weights="int4")


def test_the_floor_counts_the_quantised_bytes():
    p = load_policy(FIXTURES / "lerobot_pi05_tiny", "cpu", "float32")
    once, step = p.model.weight_bytes()
    quantize_network(p.model, "int8")
    once_q, step_q = p.model.weight_bytes()
    assert step_q < 0.5 * step and once_q < 0.5 * once    # float32 -> 1 byte + a scale per row (edges unchanged)
