"""The row attention kernel on what SmolVLA's fast path gives it (SmolVLA.compile_layers(kernels=True)),
under Triton's interpreter on the CPU: 15 query heads on 5 K/V heads folded into rows (G = 3, head_dim
64), K/V as strided views of one layer cache, masks folded and row-aligned once per chunk (common.fold_mask,
aligned_rows) -- the expert's self-attention (prefix + own keys), its cross-attention (prefix keys) and the
VLM's prefix. parity/test_triton_interpreter.py checks the kernel with one K/V head; the GPU runs the
whole network (test/test_lerobot_gpu.py::test_smolvla_*). Child process: TRITON_INTERPRET=1 must not leak."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_row_attention_on_smolvlas_grouped_heads_under_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "parity.test_smolvla_interpreter"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.count("ok") == 3, proc.stdout + proc.stderr


def check() -> None:
    import torch

    from flashrt_ros.models.lerobot.common import additive_mask, aligned_rows, fold_mask
    from flashrt_ros.runtime import triton_kernels as tk
    g = torch.Generator().manual_seed(0)
    for T, P, own in ((50, 113, True), (50, 113, False), (113, 113, False)):   # self, cross, VLM prefix
        Tk = P + (T if own else 0)
        cache = torch.randn(2, 3, 1, 5, Tk + 7, 64, generator=g).bfloat16()
        k, v = cache[0, 1, :, :, :Tk], cache[1, 1, :, :, :Tk]
        q = torch.randn(1, 15, T, 64, generator=g).bfloat16()
        allowed = torch.rand(1, T, Tk, generator=g) < 0.8
        allowed[:, :3] = False   # fully masked rows: LeRobot's finite mask value makes them an average
        mask = aligned_rows(fold_mask(additive_mask(allowed, torch.bfloat16), 3))
        qf = q.reshape(1, 5, 3 * T, 64)
        ref = tk.attention_rows_reference(qf, k, v, mask, 64 ** -0.5).float()
        for split in (None, 1, 2, 3):
            out = tk.attention_rows(qf, k, v, mask, 64 ** -0.5, split=split).float()
            rel = float((out - ref).norm() / ref.norm())
            assert torch.isfinite(out).all() and rel < 1e-2, (T, Tk, split, rel)
        print(f"ok rows {3 * T} keys {Tk} rel {rel:.2e}", flush=True)


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1"
    check()
