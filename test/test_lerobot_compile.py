"""π0/π0.5's opt-in compiled layers (Pi0.compile_layers) give the plain network's actions, and each
layer kind is compiled once, not once per layer or denoise step.

The layers are functions of their weight tensors, so torch.compile's guards see shapes and dtypes,
never which layer it is: one graph serves every layer of a kind. Checked on the CPU with inductor (the
backend the GPU uses), on the tiny LeRobot fixtures (2 layers each, 10 denoise steps).
"""
from pathlib import Path

import pytest
import torch

from flashrt_ros.models.lerobot import load_policy
from flashrt_ros.models.lerobot.pi0 import expert_layer, prefix_layer
from flashrt_ros.models.lerobot.siglip import VisionLayer
from flashrt_ros.tools.bench_lerobot import bench_network, network_inputs

FIXTURES = Path(__file__).parent / "fixtures"
LAYER_KINDS = {"vlm": prefix_layer, "expert": expert_layer, "vision": VisionLayer.forward}


def compiled_graphs() -> dict[str, int]:
    """Graphs dynamo holds per layer function (one per input shape it has seen)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    return {kind: len(_debug_get_cache_entry_list(fn.__code__)) for kind, fn in LAYER_KINDS.items()}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    # imported here, not at collection: the host tests that run before keep a lean process
    import torch._dynamo
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", ["pi05", "pi0"])
def test_compiled_layers_give_the_plain_actions_with_one_graph_per_layer_kind(kind):
    policy = load_policy(FIXTURES / f"lerobot_{kind}_tiny", "cpu", "float32")
    net = policy.model
    assert len(net.expert) > 1 and len(net.vision.encoder.layers) > 1 and net.num_steps > 1
    inputs = list(network_inputs(policy, n_cameras=1).values())
    with torch.inference_mode():
        plain = net(*inputs)
        net.compile_layers()
        compiled = net(*inputs)
        again = net(*inputs)
        assert compiled_graphs() == {"vlm": 1, "expert": 1, "vision": 1}  # not one per layer or step
        net.compile_layers(False)
        restored = net(*inputs)
    assert (compiled - plain).abs().max() <= 1e-5
    assert torch.equal(again, compiled)
    assert torch.equal(restored, plain)
    assert compiled_graphs() == {"vlm": 1, "expert": 1, "vision": 1}  # the plain path compiles nothing


def test_a_new_camera_count_compiles_one_more_graph_per_kind_and_keeps_the_first():
    # guards only, so the quick aot_eager backend (no code generation) is enough here
    policy = load_policy(FIXTURES / "lerobot_pi05_tiny", "cpu", "float32")
    net = policy.model.compile_layers(backend="aot_eager")
    with torch.inference_mode():
        net(*network_inputs(policy, n_cameras=1).values())
        net(*network_inputs(policy, n_cameras=2).values())
        net(*network_inputs(policy, n_cameras=1).values())
    assert compiled_graphs() == {"vlm": 2, "expert": 2, "vision": 2}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="inductor's CUDA kernels in a captured graph need a GPU")
@pytest.mark.parametrize("kind", ["pi05", "pi0"])
def test_on_a_gpu_the_compiled_layers_capture_into_the_chunk_graph_and_match_the_plain_network(kind):
    # bench-lerobot --compile's own path: plain eager reference, compile, eager warm-up, capture, replay
    policy = load_policy(FIXTURES / f"lerobot_{kind}_tiny", "cuda", "bfloat16")
    r = bench_network(policy, n_cameras=1, iters=3, bandwidth=1e12, compiled=True)
    assert r["graph_equals_compiled_eager"]       # the capture replays what the compiled network computes
    assert r["graph_vs_eager_cos"] >= 0.9999      # ... which is the plain network's answer (bf16 gate)


def test_the_engine_keeps_the_compiled_path_only_behind_its_gate():
    """`compile: true` in the host: the engine compiles before capture, checks the compiled network
    against the plain one on seeded inputs, says so in its notes, and its chunks equal the plain
    engine's (fp32 CPU)."""
    _plain_and_fast_engines_give_the_same_chunk(FIXTURES / "lerobot_pi05_tiny")


def _plain_and_fast_engines_give_the_same_chunk(ckpt):
    """The engine with compile true (gate passed, its note) and the plain one: the same chunk (fp32 CPU).
    Returns the fast engine."""
    import numpy as np

    from flashrt_ros.engines.lerobot import LerobotEngine

    plain, fast = LerobotEngine(ckpt, device="cpu"), LerobotEngine(ckpt, device="cpu", compile_actor=True)
    assert plain.notes == [] and len(fast.notes) == 1 and fast.notes[0].startswith("compile: layers compiled")
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(2)]
    q = rng.normal(size=7).astype(np.float32)
    chunks = []
    for engine in (plain, fast):
        engine.set_task("pick up the red cube")
        chunks.append(engine.act(images, ["rgb8", "rgb8"], q, chunk_seq=3).positions)
    np.testing.assert_allclose(chunks[1], chunks[0], rtol=0, atol=1e-5)
    assert float(np.abs(chunks[0]).max()) > 0.1     # a real chunk, not zeros
    return fast


# --- SmolVLA's fast path (SmolVLA.compile_layers) ------------------------------------------------------
# The tiny SmolVLA (4 VLM layers, 4 expert layers interleaving cross- and self-attention, 2 SigLIP layers,
# grouped-query heads 4 on 2) written without LeRobot: test/smolvla_tiny.py.

def smolvla_graphs() -> dict[str, int]:
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from flashrt_ros.models.lerobot import smolvla
    kinds = {"vlm": smolvla.vlm_layer, "expert_self": smolvla.expert_self_layer,
             "expert_cross": smolvla.expert_cross_layer, "vision": VisionLayer.forward,
             "action_in": smolvla.action_in, "action_out": smolvla.action_out}
    return {kind: len(_debug_get_cache_entry_list(fn.__code__)) for kind, fn in kinds.items()}


def smolvla_policy(tmp_path, **config):
    from smolvla_tiny import write_smolvla_tiny
    return load_policy(write_smolvla_tiny(tmp_path / "smolvla", **config), "cpu", "float32")


def test_smolvla_compiled_layers_give_the_plain_actions_with_one_graph_per_layer_kind(tmp_path):
    policy = smolvla_policy(tmp_path)
    net = policy.model
    assert len(net.expert) > 2 and any(net.cross) and not all(net.cross) and net.num_steps > 1
    inputs = list(network_inputs(policy, n_cameras=2).values())
    with torch.inference_mode():
        plain = net(*inputs)
        net.compile_layers()
        compiled = net(*inputs)
        again = net(*inputs)
        assert smolvla_graphs() == {"vlm": 1, "expert_self": 1, "expert_cross": 1, "vision": 1, "action_in": 1, "action_out": 1}
        net.compile_layers(False)
        restored = net(*inputs)
    assert float(plain.abs().max()) > 0.1
    assert (compiled - plain).abs().max() <= 1e-5
    assert torch.equal(again, compiled)
    assert torch.equal(restored, plain)
    assert smolvla_graphs() == {"vlm": 1, "expert_self": 1, "expert_cross": 1, "vision": 1, "action_in": 1, "action_out": 1}


@pytest.mark.parametrize("layout", [{}, {"attention_mode": "self_attn"}, {"self_attn_every_n_layers": 3}])
def test_smolvla_layer_functions_with_heads_folded_into_rows_are_the_plain_network(tmp_path, layout):
    # the GPU's layout (grouped-query heads as rows, masks folded once per chunk) forced on the CPU; the
    # "eager" backend runs the layer functions as written: the same ops as the modules, the same numbers
    policy = smolvla_policy(tmp_path, **layout)
    net = policy.model
    inputs = list(network_inputs(policy, n_cameras=1, seed=3).values())
    with torch.inference_mode():
        plain = net(*inputs)
        net.compile_layers(backend="eager")
        net._fold = True
        folded = net(*inputs)
    assert net.text_dims.num_heads > net.text_dims.num_kv_heads   # there is something to fold
    assert (folded - plain).abs().max() <= 1e-6


def test_smolvla_fast_path_with_quantised_weights_and_no_fused_kernels(tmp_path):
    from flashrt_ros.models.lerobot.quant import quantize_network
    policy = smolvla_policy(tmp_path)
    net = policy.model
    inputs = list(network_inputs(policy, n_cameras=1).values())
    with pytest.raises(NotImplementedError, match="not for SmolVLA"):
        net.compile_layers(fused=True)
    quantize_network(net, "int8")   # QuantLinear weights: one matmul each, through quant.linear
    with torch.inference_mode():
        plain = net(*inputs)
        net.compile_layers(backend="eager")
        fast = net(*inputs)
    assert (fast - plain).abs().max() <= 1e-6


def test_the_engine_serves_smolvla_through_its_gated_fast_path(tmp_path):
    """compile: true with a SmolVLA checkpoint: the gate passes (note), the chunks equal the plain engine's."""
    from smolvla_tiny import write_smolvla_tiny

    fast = _plain_and_fast_engines_give_the_same_chunk(write_smolvla_tiny(tmp_path / "smolvla"))
    assert fast.gates["compile"]["cos"] >= 0.9999 and fast.policy.model._fast


def test_vision_qkv_projections_are_one_matmul_after_load_and_give_the_separate_ones(tmp_path):
    from smolvla_tiny import write_smolvla_tiny

    from flashrt_ros.models.lerobot.siglip import VisionAttention
    torch.manual_seed(0)
    att = VisionAttention(hidden=48, heads=4)
    for p in att.parameters():   # non-zero biases: a bias left out or misplaced shows
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 9, 48)
    with torch.no_grad():
        separate = att(x)
        att.fuse()
        fused = att(x)
    assert "q_proj" not in att._modules and att.qkv_proj.weight.shape == (144, 48)
    assert (fused - separate).abs().max() <= 1e-5 * separate.abs().max()
    for path in (FIXTURES / "lerobot_pi05_tiny", write_smolvla_tiny(tmp_path / "smolvla")):   # the loaders fuse
        net = load_policy(path, "cpu", "float32").model
        assert all("qkv_proj" in layer.self_attn._modules and "q_proj" not in layer.self_attn._modules
                   for layer in net.vision.encoder.layers)
