"""Does the action expert's layer step get faster when its weights are already in L2? (issue 14)

The expert's GEMMs (50 rows) are latency bound: a 5 MB weight takes cuBLAS 5.3 µs, 1.3 µs at the
H200's bandwidth. The device memory is idle most of a layer step (attention, norms, launches). This
measures, as CUDA-graph replays over 18 distinct layers' weights (cold, as in a chunk):

- each GEMM cold vs warm (the same weight every call: in L2) vs cold with an L2 prefetch issued ahead;
- a proxy layer step (qkv GEMM, attention over the prefix K/V, o, gate_up, down) with prefetch schedules:
  none; each op's weight prefetched one / two ops ahead; at each layer's start its o / gate_up / down and
  the next layer's qkv + K/V.

The prefetch is `cp.async.bulk.prefetch.L2` (Hopper's bulk copy engine, fire and forget): a one-warp
program issues it and exits; the bytes arrive while the next kernels run.

    python -m parity.gpu_l2_bench --out $OUT/l2.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from parity.gpu_layer_bench import L, expert_mask, graph_us

_k = {}


def kernels():
    if _k:
        return _k
    import triton
    import triton.language as tl

    @triton.jit
    def bulk(ptr, n_bytes, sink, CHUNK: tl.constexpr, PER: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid * (CHUNK * PER) + tl.arange(0, PER).to(tl.int64) * CHUNK
        size = tl.minimum(n_bytes - offs, CHUNK)
        size = tl.where(size > 0, size, 0).to(tl.int32)
        r = tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
            "=r,l,r", [ptr + tl.where(size > 0, offs, 0), size], dtype=tl.int32, is_pure=False, pack=1)
        tl.store(sink + pid * PER + tl.arange(0, PER), r)

    @triton.jit
    def lines(ptr, n_bytes, sink, PER: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid * (128 * PER) + tl.arange(0, PER).to(tl.int64) * 128
        ok = offs < n_bytes
        r = tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.s32 p, $2, 0; @p prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0; }",
            "=r,l,r", [ptr + tl.where(ok, offs, 0), ok.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)
        tl.store(sink + pid * PER + tl.arange(0, PER), r)

    _k.update(bulk=bulk, lines=lines)
    return _k


SINK = {}


def prefetch(t: torch.Tensor, how: str = "bulk", chunk: int = 65536, per: int = 32) -> None:
    """Issue an L2 prefetch of t's bytes (contiguous); returns at once."""
    k = kernels()
    b = t.view(-1).view(torch.uint8)
    n = b.numel()
    if how == "bulk":
        progs = -(-n // (chunk * per))
        sink = SINK.setdefault(("b", t.device), torch.zeros(1 << 16, dtype=torch.int32, device=t.device))
        k["bulk"][(progs,)](b, n, sink, CHUNK=chunk, PER=per, num_warps=1)
    else:
        per = 1024
        progs = -(-n // (128 * per))
        sink = SINK.setdefault(("l", t.device), torch.zeros(1 << 20, dtype=torch.int32, device=t.device))
        k["lines"][(progs,)](b, n, sink, PER=per, num_warps=4)


def bench(out: Path) -> None:
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    res = {"device": props.name, "sms": props.multi_processor_count, "l2_mb": props.L2_cache_size / 2**20,
           "torch": torch.__version__}
    import triton
    res["triton"] = triton.__version__
    M = 50
    shapes = {"qkv": (2560, 1024), "o": (1024, 2048), "gate_up": (8192, 1024), "down": (1024, 4096)}
    g = torch.Generator(device=dev).manual_seed(0)
    W = {n: torch.randn(L, N, K, device=dev, generator=g).bfloat16() * K ** -0.5 for n, (N, K) in shapes.items()}
    X = {n: torch.randn(M, K, device=dev, generator=g).bfloat16() for n, (N, K) in shapes.items()}
    ref = {n: F.linear(X[n].float(), W[n][3].float()) for n in shapes}

    # 0. the prefetch computes nothing: check both variants run and leave the GEMM's result alone
    for how in ("bulk", "lines"):
        try:
            prefetch(W["qkv"][3], how)
            y = F.linear(X["qkv"], W["qkv"][3])
            torch.cuda.synchronize()
            res[f"prefetch_{how}_ok"] = float((y.float() - ref["qkv"]).norm() / ref["qkv"].norm())
        except Exception as e:  # noqa: BLE001
            res[f"prefetch_{how}_ok"] = repr(e)[:400]
    print(json.dumps({k: v for k, v in res.items()}), flush=True)

    gem = res.setdefault("gemm", {})
    for n in shapes:
        w, x = W[n], X[n]
        row = {"cold": graph_us(lambda: [F.linear(x, w[i]) for i in range(L)], L),
               "warm": graph_us(lambda: [F.linear(x, w[0]) for i in range(L)], L)}
        for how in ("bulk", "lines"):
            if not isinstance(res[f"prefetch_{how}_ok"], float):
                continue

            def ahead(d, how=how):
                def fn():
                    for j in range(d):
                        prefetch(w[j], how)
                    for i in range(L):
                        if i + d < L:
                            prefetch(w[i + d], how)
                        F.linear(x, w[i])
                return fn
            for d in (0, 1, 2):
                row[f"{how}_ahead{d}"] = graph_us(ahead(d), L)
            row[f"{how}_alone"] = graph_us(lambda how=how: [prefetch(w[i], how) for i in range(L)], L)
        gem[n] = row
        print(n, " ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)

    # the proxy layer step: qkv, attention over the prefix K/V (cold, per layer), o, gate_up, down
    from flashrt_ros.runtime import triton_kernels as tk
    H, D, P, T = 8, 256, 456, 50
    Tk = P + T
    kc = torch.randn(L, 1, 1, Tk, D, device=dev, generator=g).bfloat16()
    vc = torch.randn(L, 1, 1, Tk, D, device=dev, generator=g).bfloat16()
    mask = expert_mask(T, P, H, True, dev)
    xs = torch.randn(M, 1024, device=dev, generator=g).bfloat16()
    hs = torch.randn(M, 4096, device=dev, generator=g).bfloat16()

    def layer(i, pf=None):
        ops = []
        if pf:
            pf(i, 0)
        qkv = F.linear(xs, W["qkv"][i])
        q = qkv[:, :H * D].view(1, T, H, D).transpose(1, 2)
        if pf:
            pf(i, 1)
        a = tk.attention_heads(q, kc[i], vc[i], mask, D ** -0.5)
        if pf:
            pf(i, 2)
        F.linear(a.reshape(M, H * D), W["o"][i])
        if pf:
            pf(i, 3)
        F.linear(xs, W["gate_up"][i])
        if pf:
            pf(i, 4)
        F.linear(hs, W["down"][i])
        return ops

    order = [("qkv", None), ("kv", None), ("o", None), ("gate_up", None), ("down", None)]

    def tensors(i, op):
        if i >= L:
            return []
        return [kc[i], vc[i]] if op == "kv" else [W[op][i]]

    def sched(dist, how):
        def pf(i, k):
            j = k + dist
            for t in tensors(i + j // 5, order[j % 5][0]):
                prefetch(t, how)
        return pf

    def layer_start(how):
        def pf(i, k):
            if k == 0:
                for op in ("o", "gate_up", "down"):
                    prefetch(W[op][i], how)
                for t in tensors(i + 1, "qkv") + tensors(i + 1, "kv"):
                    prefetch(t, how)
        return pf

    tk.attention_heads(xs.new_zeros(1, H, T, D), kc[0], vc[0], mask, D ** -0.5)   # tune outside the graph
    lay = res.setdefault("layer", {})
    lay["none"] = graph_us(lambda: [layer(i) for i in range(L)], L)
    lay["warm"] = graph_us(lambda: [layer(0) for i in range(L)], L)
    for how in ("bulk", "lines"):
        if not isinstance(res[f"prefetch_{how}_ok"], float):
            continue
        for dist in (1, 2, 3):
            lay[f"{how}_ahead{dist}"] = graph_us(lambda d=dist, how=how: [layer(i, sched(d, how)) for i in range(L)], L)
        lay[f"{how}_layer_start"] = graph_us(lambda how=how: [layer(i, layer_start(how)) for i in range(L)], L)
    print("layer", " ".join(f"{k} {v:.2f}" for k, v in lay.items()), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    bench(a.out)


if __name__ == "__main__":
    main()
