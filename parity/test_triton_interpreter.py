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


@pytest.mark.parametrize("check", ["frames", "wo_linear", "attention"])
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


def check_attention() -> None:
    import torch

    from flashrt_ros.runtime import triton_kernels as tk
    g = torch.Generator().manual_seed(0)
    for R, Tk, d in ((400, 120, 64), (48, 200, 32), (20, 33, 16)):
        q, k, v = (torch.randn(1, 1, n, d, generator=g).bfloat16() for n in (R, Tk, Tk))
        mask = torch.where(torch.rand(1, 1, R, Tk, generator=g) < 0.3, -2.3819763e38, 0.0).bfloat16()
        mask[..., :5, :] = -2.3819763e38    # padded query rows: LeRobot's finite mask makes them an average
        out = tk.attention_rows(q, k, v, mask, d ** -0.5).float()
        ref = tk.attention_rows_reference(q, k, v, mask, d ** -0.5).float()
        rel = float((out - ref).norm() / ref.norm())
        assert torch.isfinite(out).all() and rel < 1e-2, (R, Tk, rel)


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1"
    {"frames": check_frames, "wo_linear": check_wo_linear, "attention": check_attention}[sys.argv[1]]()
    print("ok")
