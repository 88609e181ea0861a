"""The LeRobot fast path on a GPU (CI has none: these skip there; they ran on the device tool's H200,
docs/benchmarks/fast-h200.md): each Triton kernel against its torch reference on fresh random
inputs; the engine's chunk graph (frames resized inside it) equal to its own function run eagerly, bit
for bit, and act() allocating no device memory, with frames of changing sizes; the quantised engines'
start-up gate."""
import sys

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")

from pathlib import Path  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
D = 7


@pytest.mark.parametrize("centred", [True, False])
def test_the_frame_kernel_is_leRobots_resize_with_pad(centred):
    from flashrt_ros.runtime import triton_kernels as tk
    rng = np.random.default_rng(1)
    R = 224
    sizes = [(480, 640, "rgb8"), (200, 300, "bgr8"), (224, 224, "rgba8"), (97, 531, "bgra8"), (640, 360, "mono8")]
    cap = max(h * w * 4 for h, w, _ in sizes)
    frames = torch.zeros(len(sizes), cap, dtype=torch.uint8, device="cuda")
    geo = []
    for i, (h, w, enc) in enumerate(sizes):
        c = tk.ENCODING_CHANNELS[tk.ENCODING_CODES[enc]]
        frames[i, : h * w * c] = torch.from_numpy(rng.integers(0, 256, h * w * c, dtype=np.uint8)).cuda()
        geo.append(tk.frame_geometry(h, w, enc, R, centred, centred))
    out = torch.full((len(sizes), 3, R, R), float("nan"), device="cuda")   # every pixel must be written
    tk.frames_to_images(frames, torch.tensor([g[:8] for g in geo], dtype=torch.int32, device="cuda"),
                        torch.tensor([g[8:] for g in geo], dtype=torch.float32, device="cuda"), out)
    ref = tk.frames_to_images_reference(frames.cpu(), geo, R, torch.empty(len(sizes), 3, R, R))
    assert torch.isfinite(out).all()
    assert (out.cpu() - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("M,N,K", [(1, 256, 512), (50, 2560, 1024), (51, 1024, 4096), (300, 4096, 2048)])
def test_the_weight_only_linear_is_its_reference(kind, M, N, K):
    from flashrt_ros.runtime import triton_kernels as tk
    g = torch.Generator(device="cuda").manual_seed(M * N + K)
    x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
    w = torch.randn(N, K, device="cuda", generator=g) / K ** 0.5
    bias = torch.randn(N, device="cuda", generator=g).bfloat16()
    qw = tk.quantize(w, kind)
    y = tk.wo_linear(x, qw, bias).float()
    ref = tk.wo_linear_reference(x, qw, bias).float()
    assert torch.isfinite(y).all()
    assert float((y - ref).norm() / ref.norm()) < 4e-3        # bf16 output rounding, float32 sums
    deq = torch.nn.functional.linear(x.float(), tk.dequantize(qw, torch.float32)) + bias.float()
    assert float((ref - deq).norm() / deq.norm()) < 4e-3


@pytest.mark.parametrize("R,Tk,d", [(400, 356, 256), (408, 357, 256), (2448, 306, 256), (96, 70, 64)])
def test_the_row_attention_kernel_is_its_reference(R, Tk, d):
    # every key split (the tuned one included), merged by the last program: within 1e-2, the same bits twice,
    # the merge counters left zero
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from parity import test_triton_interpreter
    test_triton_interpreter.check_attention("cuda", [(R, Tk, d)])


def _frames(rng, sizes):
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_graph_equals_eager_and_act_allocates_nothing_with_frames_of_any_size(kind):
    from flashrt_ros.engines.lerobot import LerobotEngine
    from flashrt_ros.runtime import triton_kernels as tk
    e = LerobotEngine(FIXTURES / f"lerobot_{kind}_tiny", device="cuda", compile_actor=False)
    e.set_task("pick up the red cube")
    rng = np.random.default_rng(0)
    q = rng.uniform(-0.3, 0.3, D).astype(np.float32)
    for sizes in ([(480, 640), (480, 640)], [(240, 320), (300, 200)]):
        images = _frames(rng, sizes)
        e.act(images, ["rgb8", "bgr8"], q, chunk_seq=3)
        graph_out = e.buffers.read("actor.actions")
        graph_images = e.buffers.read("actor.images")
        with torch.inference_mode(), torch.cuda.stream(e.actor_stream):
            e._actor_fn(e.buffers)
        torch.cuda.synchronize()
        assert np.array_equal(e.buffers.read("actor.actions"), graph_out)     # the graph is its function
        geo = [tk.frame_geometry(h, w, enc, e.config.image_size, True, True)
               for (h, w), enc in zip(sizes, ["rgb8", "bgr8"])]
        ref = tk.frames_to_images_reference(e.buffers["actor.frames"].cpu(), geo, e.config.image_size,
                                            torch.empty(2, 3, e.config.image_size, e.config.image_size))
        assert np.abs(graph_images[0] - ref.numpy()).max() <= 1e-5           # this call's frames, resized in it
    images = _frames(rng, [(480, 640), (480, 640)])
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    for i in range(100):
        e.act(images, ["rgb8", "rgb8"], q, chunk_seq=i)
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == before


def test_the_fast_path_is_the_gpu_default_and_passed_its_gate():
    from flashrt_ros.engines.lerobot import COMPILE_MIN_COS, LerobotEngine
    e = LerobotEngine(FIXTURES / "lerobot_pi05_tiny", device="cuda", dtype="bfloat16")
    assert e.gates["compile"]["kernels"] and e.gates["compile"]["cos"] >= COMPILE_MIN_COS
    rng = np.random.default_rng(2)
    chunk = e.act(_frames(rng, [(480, 640), (480, 640)]), ["rgb8", "rgb8"], np.zeros(D, np.float32))
    assert not chunk.nonfinite and float(np.abs(chunk.positions).max()) > 0.01


def test_int8_weights_pass_their_gate_on_the_gpu_and_act_allocates_nothing():
    from flashrt_ros.engines.lerobot import LerobotEngine
    e = LerobotEngine(FIXTURES / "lerobot_pi05_tiny", device="cuda", dtype="bfloat16", weights="int8")
    g = e.gates["weights"]
    assert g["quantised"]["cos"] >= 0.999 and g["error_ratio"] <= 2.0
    rng = np.random.default_rng(3)
    images = _frames(rng, [(480, 640), (480, 640)])
    e.set_task("pick up the red cube")
    e.act(images, ["rgb8", "rgb8"], np.zeros(D, np.float32), chunk_seq=0)
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    for i in range(20):
        e.act(images, ["rgb8", "rgb8"], np.zeros(D, np.float32), chunk_seq=i)
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == before


# --- the fused expert layer-step kernels (runtime/fused_expert.py, models/lerobot/fused.py) -----------
FULL_EXPERT = (1024, 8, 1, 256, 4096, 300)   # π0 / π0.5's Gemma 300M expert: width, heads, kv heads, head_dim,
TINY_EXPERT = (64, 8, 1, 32, 128, 30)        # mlp, prefix keys; the tiny fixtures' expert


def _interpreter_checks():
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from parity import test_triton_interpreter
    return test_triton_interpreter


@pytest.mark.parametrize("dims", [TINY_EXPERT, FULL_EXPERT], ids=["tiny", "full"])
def test_each_fused_kernel_is_its_torch_reference(dims):
    # the checks parity/test_triton_interpreter.py runs under Triton's interpreter, here compiled: float32
    # within 1e-4, bf16 within 1e-2; split-K 1 / 2 / 4 (the counters left zero); B = 1 and 2
    _interpreter_checks().check_fused_kernels("cuda", dims)


@pytest.mark.parametrize("dims", [TINY_EXPERT, FULL_EXPERT], ids=["tiny", "full"])
def test_the_fused_expert_layer_is_the_plain_layer(dims):
    # vs the plain expert_layer: float32 within 5e-3 (TF32 attention), bf16 at most 2x the plain bf16
    # layer's own error vs float32, π0.5 (adaRMS) and π0 (RMSNorm)
    _interpreter_checks().check_fused_layer("cuda", dims)


def test_the_few_rows_gemm_is_its_reference():
    # rows_linear (opt-in pi0.ROWS_GEMM; slower than cuBLAS on an H200, round 4): split-K 1 / 2 / 4 reduced
    # by the last program, residual and gate epilogue, gelu * up prologue; float32 within 1e-4, bf16 1e-2;
    # the same bits twice; counters left zero
    _interpreter_checks().check_rows_linear("cuda")


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
@pytest.mark.parametrize("path", ["fast", "round3", "fused"])
def test_the_fast_and_fused_engines_pass_their_gate_graph_equals_eager_and_act_allocates_nothing(kind, path,
                                                                                                 monkeypatch):
    # fast: the GPU default (compiled layers, attention_heads: no copies, no K/V cache writes; the expert's
    # layers of a step as one compiled graph); round3: the row attention on the folded copy of q with the K/V
    # cache writes, one compiled graph per layer; fused: fused_expert=True
    from flashrt_ros.engines.lerobot import COMPILE_MIN_COS, LerobotEngine
    from flashrt_ros.models.lerobot import common, pi0
    if path == "round3":
        monkeypatch.setattr(common, "ATTENTION_HEADS", False)
        monkeypatch.setattr(pi0, "STACK_DEFAULT", False)
    fused = path == "fused"
    e = LerobotEngine(FIXTURES / f"lerobot_{kind}_tiny", device="cuda", dtype="bfloat16", fused_expert=fused)
    g = e.gates["compile"]
    assert g["kernels"] and g["fused_expert"] == fused and g["cos"] >= COMPILE_MIN_COS, g
    _graph_is_its_function_and_act_allocates_nothing(e, seed=4)


def _graph_is_its_function_and_act_allocates_nothing(e, seed: int) -> None:
    """A chunk through act() (frames of two sizes and encodings) equals the graph's function run eagerly,
    bit for bit, is a real chunk, and 50 more act() allocate no device memory."""
    e.set_task("pick up the red cube")
    rng = np.random.default_rng(seed)
    q = rng.uniform(-0.3, 0.3, D).astype(np.float32)
    images = _frames(rng, [(480, 640), (300, 200)])
    e.act(images, ["rgb8", "bgr8"], q, chunk_seq=1)
    graph_out = e.buffers.read("actor.actions")
    with torch.inference_mode(), torch.cuda.stream(e.actor_stream):
        e._actor_fn(e.buffers)
    torch.cuda.synchronize()
    assert np.array_equal(e.buffers.read("actor.actions"), graph_out)     # the graph is its function
    assert float(np.abs(graph_out).max()) > 0.01
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    for i in range(50):
        e.act(images, ["rgb8", "bgr8"], q, chunk_seq=i)
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == before


# --- SmolVLA's fast path (SmolVLA.compile_layers: compiled layer functions + the Triton row attention) ------
def test_smolvla_fast_path_is_the_gpu_default_graph_equals_eager_and_act_allocates_nothing(tmp_path):
    from flashrt_ros.engines.lerobot import COMPILE_MIN_COS, LerobotEngine
    from smolvla_tiny import write_smolvla_tiny
    e = LerobotEngine(write_smolvla_tiny(tmp_path / "smolvla"), device="cuda", dtype="bfloat16")
    g = e.gates["compile"]
    assert g["kernels"] and not g["fused_expert"] and g["cos"] >= COMPILE_MIN_COS, g
    assert e.policy.model._fast and e.policy.model._kernels
    _graph_is_its_function_and_act_allocates_nothing(e, seed=5)


def test_smolvla_full_size_fast_path_matches_the_plain_network():
    # SmolVLM2-500M's dims (16 VLM layers, 15 heads on 5 K/V heads, head_dim 64: folded rows through the
    # Triton kernel), default init, bf16, 2 cameras: the engine's gate (cos >= 0.9999) on the real shapes
    from flashrt_ros.engines.lerobot import COMPILE_MIN_COS
    from flashrt_ros.models.lerobot.smolvla import SMOLVLM2_500M, SmolVLA
    torch.manual_seed(0)
    with torch.device("cuda"):
        net = SmolVLA({"num_vlm_layers": 16, "resize_imgs_with_padding": [512, 512]}, SMOLVLM2_500M)
    net.finalize("cuda", torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(1)
    L = 48
    mask = torch.zeros(1, L, dtype=torch.bool, device="cuda")
    mask[:, :20] = True
    inputs = [torch.rand(1, 2, 3, 512, 512, generator=g, device="cuda") * 2 - 1,
              torch.ones(1, 2, dtype=torch.bool, device="cuda"),
              torch.randint(3, 49000, (1, L), generator=g, device="cuda") * mask, mask,
              torch.randn(1, 32, generator=g, device="cuda") * 0.5,
              torch.randn(1, 50, 32, generator=g, device="cuda")]
    with torch.inference_mode():
        plain = net(*inputs).double()
        net.compile_layers(kernels=True)
        fast = net(*inputs).double()
    cos = float(torch.nn.functional.cosine_similarity(plain.flatten(), fast.flatten(), dim=0))
    assert torch.isfinite(fast).all() and cos >= COMPILE_MIN_COS, cos
