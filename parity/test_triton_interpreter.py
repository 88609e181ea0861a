"""The Triton kernels themselves (runtime/triton_kernels.py), run on the CPU by Triton's interpreter,
against their torch references: the frame kernel (both LeRobot paddings, every encoding, any size),
the weight-only int8/FP8 linear (with and without its split over K) and the row attention kernel
(keys split and merged, fully masked rows included). This venv has Triton (PyPI's torch for Python
3.12 brings it); the main venv does not, and a GPU runs the same checks in test/test_lerobot_gpu.py.

Each check runs in a child process with TRITON_INTERPRET=1 (the flag is read when a kernel is
defined, and must not leak into this process)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(check: str) -> str:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "parity.test_triton_interpreter", check], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("check", ["frames", "wo_linear", "attention", "rows_linear", "fused_kernels",
                                   "fused_layer", "fused_network", "fast_network"])
def test_the_triton_kernel_equals_its_torch_reference_under_the_interpreter(check):
    pytest.importorskip("triton")
    assert "ok" in _run(check)


# --------------------------------------------------------------------------- the child's checks
def check_frames() -> None:
    import numpy as np
    import torch

    from flashrt_ros.runtime import triton_kernels as tk
    rng = np.random.default_rng(0)
    R = 48
    sizes = [(60, 80, "rgb8"), (100, 50, "bgra8"), (48, 48, "mono8"), (31, 97, "bgr8"), (50, 40, "rgba8")]
    for centred in (True, False):
        cap = max(h * w * 4 for h, w, _ in sizes)
        frames = torch.zeros(len(sizes), cap, dtype=torch.uint8)
        geo = []
        for i, (h, w, enc) in enumerate(sizes):
            c = tk.ENCODING_CHANNELS[tk.ENCODING_CODES[enc]]
            frames[i, : h * w * c] = torch.from_numpy(rng.integers(0, 256, h * w * c, dtype=np.uint8))
            geo.append(tk.frame_geometry(h, w, enc, R, centred, centred))
        out = torch.full((len(sizes), 3, R, R), float("nan"))
        tk.frames_to_images(frames, torch.tensor([g[:8] for g in geo], dtype=torch.int32),
                            torch.tensor([g[8:] for g in geo], dtype=torch.float32), out)
        ref = tk.frames_to_images_reference(frames, geo, R, torch.empty(len(sizes), 3, R, R))
        err = float((out - ref).abs().max())
        assert torch.isfinite(out).all() and err <= 1e-5, (centred, err)


def check_wo_linear() -> None:
    import torch

    from flashrt_ros.runtime import triton_kernels as tk
    g = torch.Generator().manual_seed(0)
    for kind in ("int8", "fp8"):
        for M, N, K, dtype in ((50, 96, 1024, torch.bfloat16), (130, 64, 128, torch.float32), (3, 40, 512, torch.bfloat16)):
            x = torch.randn(M, K, generator=g).to(dtype)
            w = torch.randn(N, K, generator=g) / K ** 0.5
            bias = torch.randn(N, generator=g)
            qw = tk.quantize(w, kind)
            for b in (None, bias):
                y = tk.wo_linear(x, qw, b).float()
                ref = tk.wo_linear_reference(x, qw, b).float()
                rel = float((y - ref).norm() / ref.norm())
                # bf16: the interpreter's float32 -> bf16 cast is not round-to-nearest (up to one bf16 step
                # here; the GPU run of the same check: 4e-6); float32 output: the sums alone
                assert torch.isfinite(y).all() and rel < (1e-2 if dtype == torch.bfloat16 else 1e-5), (kind, M, rel)


def check_attention(device: str = "cpu", shapes=((400, 120, 64), (48, 200, 32), (20, 33, 16))) -> None:
    """The row attention vs its reference for 1, 2, 3 key slices and the default: the last program of a row
    block merges the slices (counters left zero); the same split twice gives the same bits."""
    import torch

    from flashrt_ros.runtime import triton_kernels as tk
    g = torch.Generator(device=device).manual_seed(0)
    for R, Tk, d in shapes:
        q, k, v = (torch.randn(1, 1, n, d, generator=g, device=device).bfloat16() for n in (R, Tk, Tk))
        mask = torch.where(torch.rand(1, 1, R, Tk, generator=g, device=device) < 0.3, -2.3819763e38,
                           0.0).bfloat16()
        mask[..., :5, :] = -2.3819763e38    # padded query rows: LeRobot's finite mask makes them an average
        ref = tk.attention_rows_reference(q, k, v, mask, d ** -0.5).float()
        for split in (None, 1, 2, 3):
            out = tk.attention_rows(q, k, v, mask, d ** -0.5, split=split)
            rel = float((out.float() - ref).norm() / ref.norm())
            assert torch.isfinite(out).all() and rel < 1e-2, (R, Tk, split, rel)
            again = tk.attention_rows(q, k, v, mask, d ** -0.5, split=split)
            assert torch.equal(out, again), (R, Tk, split, "not deterministic")
        assert all(int(t.abs().sum()) == 0 for t in tk._attn_locks.values()), "merge counters not reset"
    check_attention_heads(device, [(G, T, Tk, d, Hkv) for (R, Tk, d) in shapes
                                   for G, T, Hkv in ((4, R // 4, 1), (2, R // 4, 2))][:4])


def check_attention_heads(device: str = "cpu", shapes=((4, 30, 120, 64, 1), (3, 6, 33, 16, 2))) -> None:
    """attention_heads (q read through the qkv projection's strides, heads folded in the kernel, output in
    [B, Tq, H * d]) vs its reference: folded and per-token masks, batch 2, several launch configurations
    (rows per program, keys per step, key slices); the same bits twice; merge counters left zero."""
    import torch

    from flashrt_ros.runtime import triton_kernels as tk
    g = torch.Generator(device=device).manual_seed(1)
    for G, T, Tk, d, Hkv in shapes:   # Hkv > 1: SmolVLA's grouped heads
        B = 2
        H = G * Hkv
        qkv = torch.randn(B, T, (H + 2 * Hkv) * d, generator=g, device=device).bfloat16()
        q = qkv[..., :H * d].view(B, T, H, d).transpose(1, 2)          # strided, not contiguous
        k, v = (torch.randn(B, Hkv, Tk, d, generator=g, device=device).bfloat16() for _ in range(2))
        per_token = torch.where(torch.rand(B, 1, T, Tk, generator=g, device=device) < 0.3, -2.3819763e38,
                                0.0).bfloat16()
        per_token[..., :2, :] = -2.3819763e38   # fully masked rows: LeRobot's finite mask averages them
        folded = per_token.expand(B, G, T, Tk).reshape(B, 1, G * T, Tk)
        for mask in (per_token, folded, None):
            ref = tk.attention_heads_reference(q, k, v, mask, d ** -0.5).float()
            for c in (None, tk.AttnConfig(16, 32, 1), tk.AttnConfig(32, 64, 3, 8), tk.AttnConfig(64, 32, 2, 4, 3)):
                out = tk.attention_heads(q, k, v, mask, d ** -0.5, config=c)
                assert out.shape == (B, T, H * d)
                rel = float((out.float() - ref).norm() / ref.norm())
                assert torch.isfinite(out).all() and rel < 1e-2, (G, T, Tk, c, rel)
                assert torch.equal(out, tk.attention_heads(q, k, v, mask, d ** -0.5, config=c)), (c, "not deterministic")
        # the last Tn keys / values read in place from this step's own K/V (strided, as the qkv projection's
        # columns), not from the caches (whose slots there hold garbage)
        Tn = min(T, Tk - 1)
        kv = torch.randn(B, Tn, 2 * Hkv * d, generator=g, device=device).bfloat16()
        k_new = kv[..., :Hkv * d].view(B, Tn, Hkv, d).transpose(1, 2)
        v_new = kv[..., Hkv * d:].view(B, Tn, Hkv, d).transpose(1, 2)
        kg, vg = k.clone(), v.clone()
        kg[:, :, Tk - Tn:], vg[:, :, Tk - Tn:] = float("nan"), float("nan")
        ref = tk.attention_heads_reference(q, kg, vg, folded, d ** -0.5, k_new, v_new).float()
        assert torch.isfinite(ref).all()
        for c in (None, tk.AttnConfig(16, 32, 1), tk.AttnConfig(32, 64, 3, 8)):
            out = tk.attention_heads(q, kg, vg, folded, d ** -0.5, config=c, k_new=k_new, v_new=v_new)
            rel = float((out.float() - ref).norm() / ref.norm())
            assert torch.isfinite(out).all() and rel < 1e-2, (G, T, Tk, c, "new", rel)
        assert all(int(t.abs().sum()) == 0 for t in tk._attn_locks.values()), "merge counters not reset"


def check_rows_linear(device: str = "cpu") -> None:
    """fused_expert.rows_linear (the few-rows GEMM: split-K reduced by the last program in a fixed order,
    optional residual and gate epilogue) vs its reference, float32 and bf16, split 1 / 2 / 4; the same
    bits twice; counters left zero. Tolerances as check_fused_kernels'."""
    import torch

    from flashrt_ros.runtime import fused_expert as fx
    g = torch.Generator(device=device).manual_seed(2)
    gpu = device != "cpu"
    for dt, M, N, K in ((torch.float32, 50, 96, 256), (torch.bfloat16, 51, 160, 512), (torch.bfloat16, 9, 64, 128)):
        tol = (1e-4 if gpu else 1e-5) if dt == torch.float32 else (1e-2 if gpu else 3e-2)
        x = torch.randn(M, K, generator=g, device=device).to(dt)
        w = (torch.randn(N, K, generator=g, device=device) * K ** -0.5).to(dt)
        res = torch.randn(M, N, generator=g, device=device).to(dt)
        gate = 0.5 + 0.1 * torch.randn(N, generator=g, device=device)
        for c in (fx.Config(32, 1, 64), fx.Config(64, 2, 64), fx.Config(32, 4, 32, 4, 2)):
            for r_, g_ in ((None, None), (res, None), (res, gate)):
                y = fx.rows_linear(x, w, r_, g_, config=c)
                yr = fx.rows_linear_reference(x, w, r_, g_)
                base = r_ if r_ is not None else torch.zeros_like(y)
                rel = _rel(y.float() - base.float(), yr.float() - base.float())
                assert rel < tol, (dt, M, c, r_ is not None, g_ is not None, rel)
                assert torch.equal(y, fx.rows_linear(x, w, r_, g_, config=c)), (c, "not deterministic")
            # glu: the down projection reading [gate | up] and forming gelu_tanh(gate) * up as it loads
            gu = torch.randn(M, 2 * K, generator=g, device=device).to(dt)
            y = fx.rows_linear(gu, w, res, None, config=c, glu=True)
            yr = fx.rows_linear_reference(gu, w, res, None, glu=True)
            rel = _rel(y.float() - res.float(), yr.float() - res.float())
            assert rel < tol, (dt, M, c, "glu", rel)
    assert all(int(t.abs().sum()) == 0 for t in fx._locks.values()), "split-K counters not reset"


def _rel(out, ref) -> float:
    import torch
    assert torch.isfinite(out).all()
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def _layer_inputs(B: int, S: int, W: int, H: int, Hkv: int, D: int, Fd: int, P: int, ada: bool, g, dtype,
                  device="cpu"):
    """Random expert-layer inputs (pi0.GemmaWeights; caches [B, Hkv, P + S, D] with a filled prefix)."""
    import torch

    from flashrt_ros.models.lerobot.common import rope_cos_sin
    from flashrt_ros.models.lerobot.pi0 import GemmaWeights

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale)
    w = GemmaWeights(r((H + 2 * Hkv) * D, W, scale=W ** -0.5).to(dtype), r(W, H * D, scale=(H * D) ** -0.5).to(dtype),
                     r(2 * Fd, W, scale=W ** -0.5).to(dtype), r(W, Fd, scale=Fd ** -0.5).to(dtype),
                     None if ada else 1.0 + 0.1 * r(W), None if ada else 1.0 + 0.1 * r(W))
    mods = None
    if ada:
        mods = torch.cat([1.0 + 0.1 * r(2, W), 0.1 * r(2, W), 0.5 + 0.1 * r(2, W)], dim=1)   # [2, 3W]
    x = r(B, S, W).to(dtype)
    kc, vc = r(B, Hkv, P + S, D).to(dtype), r(B, Hkv, P + S, D).to(dtype)
    pos = 7 + torch.arange(S)[None].expand(B, S)
    cos, sin = rope_cos_sin(pos, D, 10000.0)
    allowed = torch.rand(B, S, P + S, generator=g) > 0.2
    allowed[..., -1] = True
    mask = torch.where(allowed[:, None], 0.0, -2.3819763e38).to(dtype)
    out = x, w, kc, vc, mask, cos, sin, mods
    if device == "cpu":
        return out
    return tuple(GemmaWeights(*(None if t is None else t.to(device) for t in v)) if isinstance(v, GemmaWeights)
                 else None if v is None else v.to(device) for v in out)


def check_fused_kernels(device: str = "cpu", dims=(64, 8, 1, 32, 128, 20)) -> None:
    """Each fused kernel vs its torch reference, with and without adaRMS, split-K 1 / 2 / 4, B = 1 and 2.
    float32: the same function to rounding (1e-5; on a GPU 1e-4: TF32 is off but the reduction orders
    differ); bf16: the interpreter's float32 -> bf16 casts truncate (measured: 0.31% per cast vs 0.17%
    rounding to nearest), and these kernels round 2-4 times as the plain path does: 3e-2 there; on a GPU
    (test/test_lerobot_gpu.py runs this same check) 1e-2."""
    import torch

    from flashrt_ros.runtime import fused_expert as fx
    g = torch.Generator().manual_seed(0)
    saved, tune = dict(fx.DEFAULTS), fx.TUNE
    fx.TUNE = False   # the configs below, not the tuner's
    W, H, Hkv, D, Fd, P = dims
    gpu = device != "cpu"
    try:
        for dt, B, S, ada in ((torch.float32, 1, 50, True), (torch.float32, 2, 9, False),
                              (torch.bfloat16, 1, 50, True), (torch.bfloat16, 2, 9, False)):
            tol = (1e-4 if gpu else 1e-5) if dt == torch.float32 else (1e-2 if gpu else 3e-2)
            x, w, kc, vc, mask, cos, sin, mods = _layer_inputs(B, S, W, H, Hkv, D, Fd, P, ada, g, dt, device)
            mod1 = mods[0] if ada else w.norm1
            x2 = x.reshape(B * S, -1)
            for bn in (16, 32):
                fx.DEFAULTS["qkv"] = fx.Config(bn, 1)
                q = torch.full((B, H, S, D), float("nan"), dtype=dt, device=device)
                k1, v1 = kc.clone(), vc.clone()
                fx.norm_qkv_rope(x2, S, mod1, ada, w.qkv, cos, sin, q, k1, v1, P)
                qr, k2, v2 = torch.empty_like(q), kc.clone(), vc.clone()
                fx.norm_qkv_rope_reference(x2, S, mod1, ada, w.qkv, cos, sin, qr, k2, v2, P)
                assert torch.equal(k1[:, :, :P], kc[:, :, :P]) and torch.equal(v1[:, :, :P], vc[:, :, :P])
                for a, b, what in ((q, qr, "q"), (k1, k2, "k"), (v1, v2, "v")):
                    assert _rel(a, b) < tol, (what, dt, B, bn, _rel(a, b))
                fx.DEFAULTS["gate_up"] = fx.Config(bn, 1)
                h = fx.norm_gate_up(x2, mods[1] if ada else w.norm2, ada, w.gate_up)
                hr = fx.norm_gate_up_reference(x2, mods[1] if ada else w.norm2, ada, w.gate_up)
                assert _rel(h, hr) < tol, ("gate_up", dt, B, bn, _rel(h, hr))
            o = torch.randn(B, Hkv, H // Hkv * S, D, generator=g).to(dt).to(device)
            a = torch.randn(B * S, Fd, generator=g).to(dt).to(device)
            gate = mods[0, 2 * W:] if ada else None
            for split in (1, 2, 4):
                fx.DEFAULTS["o"] = fx.DEFAULTS["down"] = fx.Config(16, split)
                y = fx.gemm_residual(o, (o.stride(0), D, S * D), D, S, w.o, x2, gate, "o")
                yr = fx.gemm_residual_reference(fx.folded_rows(o, S), w.o, x2, gate)
                assert _rel(y - x2, yr - x2) < tol, ("o", dt, B, split, _rel(y - x2, yr - x2))
                y = fx.gemm_residual(a, (S * Fd, Fd, 0), Fd, S, w.down, x2, gate, "down")
                yr = fx.gemm_residual_reference(a, w.down, x2, gate)
                assert _rel(y - x2, yr - x2) < tol, ("down", dt, B, split, _rel(y - x2, yr - x2))
            assert all(int(t.abs().sum()) == 0 for t in fx._locks.values()), "split-K counters not reset"
    finally:
        fx.DEFAULTS.update(saved)
        fx.TUNE = tune


def check_fused_layer(device: str = "cpu", dims=(64, 8, 1, 32, 128, 30)) -> None:
    """The fused expert layer (six launches) vs the plain expert_layer (its reference), π0.5 (adaRMS) and
    π0 (RMSNorm), with the K/V caches' suffix slots. float32: equal to rounding (1e-5). bf16: both against
    the float32 plain layer on the same (bf16-valued) inputs, the fused layer's error at most 2x the
    plain bf16 layer's (the interpreter's truncating casts included)."""
    import torch

    from flashrt_ros.models.lerobot.fused import fused_expert_layer
    from flashrt_ros.models.lerobot.pi0 import GemmaWeights, expert_layer
    g = torch.Generator().manual_seed(1)
    for ada, dt, S in ((True, torch.float32, 12), (False, torch.float32, 7), (True, torch.bfloat16, 50),
                       (False, torch.bfloat16, 51)):
        x, w, kc, vc, mask, cos, sin, mods = _layer_inputs(1, S, *dims, ada, g, dt, device)
        k1, v1, k2, v2 = kc.clone(), vc.clone(), kc.clone(), vc.clone()
        with torch.no_grad():
            ref = expert_layer(x, w, k1, v1, mask, cos, sin, mods)
            out = fused_expert_layer(x, w, k2, v2, mask, cos, sin, mods)
            if dt == torch.float32:
                errs = {what: _rel(a, b) for a, b, what in ((out - x, ref - x, "update"), (k2, k1, "k"),
                                                             (v2, v1, "v"))}
                print(ada, dt, errs)
                # on a GPU the attention kernel's float32 dots are TF32
                assert all(e < (5e-3 if device != "cpu" else 1e-5) for e in errs.values()), (ada, dt, errs)
                continue
            w32 = GemmaWeights(*(None if t is None else t.float() for t in w))
            k3, v3 = kc.float(), vc.float()
            truth = expert_layer(x.float(), w32, k3, v3, mask.float(), cos, sin, mods)
        fused_err, plain_err = _rel(out - x, truth - x.float()), _rel(ref - x, truth - x.float())
        print(ada, dt, "vs float32: fused", fused_err, "plain", plain_err, "k", _rel(k2, k3), _rel(k1, k3))
        if device == "cpu":   # the interpreter's truncating bf16 casts (see check_fused_kernels): a sanity bound
            assert fused_err < 5e-2 and _rel(k2, k3) < 3e-2, (ada, fused_err, plain_err)
        else:                 # on a GPU: at most 2x the plain bf16 layer's own error
            assert fused_err <= 2 * plain_err + 1e-3 and _rel(k2, k3) <= 2 * _rel(k1, k3) + 1e-3, (ada, fused_err,
                                                                                                  plain_err)


def check_fused_network() -> None:
    """The tiny π0.5 and π0 fixtures' whole chunk (float32) with the action expert's layers as the fused
    kernels vs the plain network: masks, positions, the caches' layout, batch, adaRMS tables."""
    import torch

    from flashrt_ros.models.lerobot import load_policy
    from flashrt_ros.models.lerobot.fused import fused_expert_layer, shift_tables
    fixtures = ROOT / "test" / "fixtures"
    for kind in ("pi05", "pi0"):
        policy = load_policy(fixtures / f"lerobot_{kind}_tiny", "cpu", "float32")
        net = policy.model
        net.num_steps = 2   # every step runs the same layers (the interpreter is slow); tables cover step 0, 1
        probe = policy.probe_inputs(2, 0)
        with torch.no_grad():
            plain = net(*probe.values())
            net._expert_layer = fused_expert_layer
            fused = net(*probe.values())
            rel = _rel(fused, plain)
            print(kind, "chunk rel", rel)
            assert rel < 1e-5, (kind, rel)
            if net.pi05:   # with compile_layers(fused=True)'s adaRMS shift tables (shift @ W^T per layer, step)
                net._fused, net._ada_shift = True, shift_tables(net)
                tabled = net(*probe.values())
                net._fused, net._ada_shift = False, None
                rel = _rel(tabled, plain)
                print(kind, "chunk rel, shift tables", rel)
                assert rel < 1e-5, (kind, rel)


def check_fast_network() -> None:
    """The tiny π0.5 and π0 fixtures' whole chunk (float32) on the fast path's kernels -- every attention
    through attention_heads (the expert's own K/V read in place, no cache write), the expert's layers of
    a step as expert_stack -- vs the plain network (the layer functions run uncompiled here)."""
    import torch

    from flashrt_ros.models.lerobot import load_policy
    from flashrt_ros.models.lerobot.pi0 import expert_stack
    fixtures = ROOT / "test" / "fixtures"
    for kind in ("pi05", "pi0"):
        policy = load_policy(fixtures / f"lerobot_{kind}_tiny", "cpu", "float32")
        net = policy.model
        net.num_steps = 2
        probe = policy.probe_inputs(2, 0)
        with torch.no_grad():
            plain = net(*probe.values())
            net._kernels = True   # the GPU's fold of grouped heads into rows: fold_mask'd masks
            for stack in (None, expert_stack):
                net._expert_stack = stack
                fast = net(*probe.values())
                rel = _rel(fast, plain)
                print(kind, "stack" if stack else "layers", "chunk rel", rel)
                assert rel < 1e-5, (kind, rel)
            net._kernels, net._expert_stack = False, None


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1"
    {"frames": check_frames, "wo_linear": check_wo_linear, "attention": check_attention,
     "rows_linear": check_rows_linear, "fast_network": check_fast_network,
     "fused_kernels": check_fused_kernels, "fused_layer": check_fused_layer,
     "fused_network": check_fused_network}[sys.argv[1]]()
    print("ok")
