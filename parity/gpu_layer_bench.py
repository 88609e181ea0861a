"""One action-expert layer step of π0.5 / π0 on the GPU and its pieces, every candidate side by side
(issue 14, item 1): each timed as CUDA-graph replays over 18 distinct layers' tensors (the weights and
K/V do not stay in L2 between calls, as in a chunk), median of replays, µs per call.

    python -m parity.gpu_layer_bench --out $OUT/layer.json [--quick]

- attention: attention_heads over launch configurations (rows per program, keys per step, key slices,
  warps, stages) vs round 3's attention_rows on the folded copy + the transpose copy, and SDPA's
  backends on the folded rows; each output checked against its reference.
- GEMMs (M = 50 rows): cuBLAS vs rows_linear (fused_expert.py) over its configurations.
- the layer step: compiled per layer (round 3), + the heads kernel, + all 18 layers as one graph, +
  rows_linear; per layer step, with a kernel table of the best.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

L = 18


def graph_us(fn, calls: int, reps: int = 15) -> float:
    """fn() makes `calls` calls of the thing timed; captured once, replayed; median µs per call."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3 / calls)
    del g
    return sorted(ts)[len(ts) // 2]


def recorder(rows: dict, ref: torch.Tensor, L: int):
    """rec(label, fn, check=None): fn timed as a CUDA graph (graph_us over L layers) into rows[label], with
    check()'s relative error against ref; a variant that fails is recorded with its error, not fatal."""
    def rec(label, fn, check=None):
        try:
            t = graph_us(fn, L)
            err = None if check is None else float((check().float() - ref).norm() / ref.norm())
            rows[label] = {"us": t, "rel_err": err}
        except Exception as e:  # noqa: BLE001
            rows[label] = {"error": repr(e)[:300]}
    return rec


def expert_mask(T: int, P: int, G: int, pi05: bool, dev) -> torch.Tensor:
    from flashrt_ros.models.lerobot.common import additive_mask, aligned_rows, block_mask, fold_mask
    pad = torch.ones(1, P, dtype=torch.bool, device=dev)
    pad[:, P - 20:] = False   # padded language tokens
    ar = torch.zeros(1, T, dtype=torch.int64, device=dev)
    ar[:, 0] = 1
    if not pi05:
        ar[:, 1] = 1
    allowed = torch.cat([pad[:, None, :].expand(1, T, P), block_mask(torch.ones(1, T, dtype=torch.bool, device=dev), ar)],
                        dim=2)
    return aligned_rows(fold_mask(additive_mask(allowed, torch.bfloat16), G))


def bench_attention(res: dict, quick: bool, dev) -> None:
    from flashrt_ros.runtime import triton_kernels as tk
    from torch.nn.attention import SDPBackend, sdpa_kernel
    H, D, P = 8, 256, 456
    out = res.setdefault("attention", {})
    for name, T, pi05 in (("pi05", 50, True), ("pi0", 51, False)):
        Tk = P + T
        g = torch.Generator(device=dev).manual_seed(0)
        qkv = torch.randn(1, T, (H + 2) * D, device=dev, generator=g).bfloat16()
        q = qkv[..., :H * D].view(1, T, H, D).transpose(1, 2)                  # strided, as in the layer
        kc = torch.randn(L, 1, 1, Tk, D, device=dev, generator=g).bfloat16()
        vc = torch.randn(L, 1, 1, Tk, D, device=dev, generator=g).bfloat16()
        mask = expert_mask(T, P, H, pi05, dev)
        scale = D ** -0.5
        ref = tk.attention_heads_reference(q, kc[0], vc[0], mask, scale).float()
        rows = {}

        rec = recorder(rows, ref, L)

        # round 3: fold copy of q, attention_rows (its tuned split), transpose copy
        def r3():
            for i in range(L):
                qf = q.reshape(1, 1, H * T, D)
                tk.attention_rows(qf, kc[i], vc[i], mask, scale).view(1, H, T, D).transpose(1, 2).reshape(1, T, H * D)
        r3()
        rec("round3_rows+copies", r3, lambda: tk.attention_rows(q.reshape(1, 1, H * T, D), kc[0], vc[0], mask, scale)
            .view(1, H, T, D).transpose(1, 2).reshape(1, T, H * D))
        qf = q.reshape(1, 1, H * T, D)
        for backend in ("EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "FLASH_ATTENTION"):
            def sd(backend=backend):
                with sdpa_kernel(getattr(SDPBackend, backend)):
                    for i in range(L):
                        F.scaled_dot_product_attention(qf, kc[i], vc[i], attn_mask=None if backend == "FLASH_ATTENTION"
                                                       else mask, scale=scale)
            rec(f"sdpa_{backend.lower()}" + ("_nomask" if backend == "FLASH_ATTENTION" else ""), sd)
        cfgs = []
        for bm, splits in ((16, (1, 2, 4, 6, 8, 12)), (32, (1, 2, 4, 6, 8)), (64, (1, 2, 4, 8))):
            for bn, sp in itertools.product((32, 64), splits[::2] if quick else splits):
                for w in ((4,) if bm == 16 else (4, 8)):
                    cfgs.append(tk.AttnConfig(bm, bn, sp, w, 2))
        if name == "pi0":   # the π0 shape: only the best few of π0.5's
            best = sorted((r for r in out["pi05"]["configs"].items() if "us" in r[1]), key=lambda kv: kv[1]["us"])[:6]
            cfgs = [tk.AttnConfig(*json.loads(k)) for k, _ in best]
        t0 = time.perf_counter()
        for c in cfgs:
            def fn(c=c):
                for i in range(L):
                    tk.attention_heads(q, kc[i], vc[i], mask, scale, config=c)
            rec(json.dumps(list(c)), fn, lambda c=c: tk.attention_heads(q, kc[0], vc[0], mask, scale, config=c))
        if name == "pi05":   # stages for the best 4
            best = sorted((kv for kv in rows.items() if kv[0].startswith("[") and "us" in kv[1]),
                          key=lambda kv: kv[1]["us"])[:4]
            for k, _ in best:
                c0 = tk.AttnConfig(*json.loads(k))
                for st in ((3,) if quick else (1, 3)):
                    c = c0._replace(stages=st)
                    def fn(c=c):
                        for i in range(L):
                            tk.attention_heads(q, kc[i], vc[i], mask, scale, config=c)
                    rec(json.dumps(list(c)), fn, lambda c=c: tk.attention_heads(q, kc[0], vc[0], mask, scale, config=c))
        sweep_s = time.perf_counter() - t0
        cf = {k: v for k, v in rows.items() if k.startswith("[")}
        other = {k: v for k, v in rows.items() if not k.startswith("[")}
        best = sorted((kv for kv in cf.items() if "us" in kv[1]), key=lambda kv: kv[1]["us"])[:8]
        out[name] = {"T": T, "Tk": Tk, "rows": H * T, "others": other, "configs": cf, "best": best, "sweep_s": sweep_s}
        print(f"attention {name}: " + " | ".join(f"{k} {v.get('us', float('nan')):.2f}" for k, v in other.items()),
              flush=True)
        print(f"  best: " + " | ".join(f"{k} {v['us']:.2f} (err {v['rel_err']:.1e})" for k, v in best), flush=True)


def bench_gemms(res: dict, quick: bool, dev) -> None:
    from flashrt_ros.runtime import fused_expert as fx
    out = res.setdefault("gemm", {})
    M = 50
    for name, N, K in (("qkv", 2560, 1024), ("o", 1024, 2048), ("gate_up", 8192, 1024), ("down", 1024, 4096)):
        g = torch.Generator(device=dev).manual_seed(1)
        ws = torch.randn(L, N, K, device=dev, generator=g).bfloat16() * K ** -0.5
        x = torch.randn(M, K, device=dev, generator=g).bfloat16()
        x64 = torch.zeros(64, K, device=dev).bfloat16()
        x64[:M] = x
        res_ = torch.randn(M, N, device=dev, generator=g).bfloat16()
        ref = F.linear(x.float(), ws[0].float())
        rows = {}

        rec = recorder(rows, ref, L)
        rec("cublas", lambda: [F.linear(x, ws[i]) for i in range(L)], lambda: F.linear(x, ws[0]))
        rec("cublas_m64", lambda: [F.linear(x64, ws[i]) for i in range(L)])
        rec("cublas+residual", lambda: [F.linear(x, ws[i]) + res_ for i in range(L)])
        rec("floor_us", lambda: [ws[i].view(-1)[:8].sum() for i in range(L)])   # launch-only reference
        cfgs = [fx.Config(bn, sp, 128, 4, 3) for bn, sp in itertools.product((32, 64, 128), (1, 2, 4, 8))]
        if quick:
            cfgs = cfgs[::3]
        for c in cfgs:
            rec(json.dumps(list(c)), lambda c=c: [fx.rows_linear(x, ws[i], config=c) for i in range(L)],
                lambda c=c: fx.rows_linear(x, ws[0], config=c))
        best = sorted((kv for kv in rows.items() if kv[0].startswith("[") and "us" in kv[1]),
                      key=lambda kv: kv[1]["us"])[:3]
        for k, _ in best:
            c0 = fx.Config(*json.loads(k))
            for bk, st in ((64, 4), (128, 4), (64, 6)):
                c = c0._replace(bk=bk, stages=st)
                if json.dumps(list(c)) in rows:
                    continue
                rec(json.dumps(list(c)), lambda c=c: [fx.rows_linear(x, ws[i], config=c) for i in range(L)],
                    lambda c=c: fx.rows_linear(x, ws[0], config=c))
        best = sorted((kv for kv in rows.items() if kv[0].startswith("[") and "us" in kv[1]),
                      key=lambda kv: kv[1]["us"])[:5]
        if best:   # the best with the residual epilogue
            c = fx.Config(*json.loads(best[0][0]))
            rec("best+residual_epilogue", lambda: [fx.rows_linear(x, ws[i], res_, config=c) for i in range(L)])
            if name == "down":   # the MLP's gelu_tanh(gate) * up formed in the GEMM's A load vs its own kernel
                gu = torch.randn(M, 2 * K, device=dev, generator=g).bfloat16()
                ref_g = fx.rows_linear_reference(gu, ws[0], res_, None, glu=True).float()

                def glu_plain():
                    for i in range(L):
                        a, b = gu.chunk(2, dim=-1)
                        F.linear(F.gelu(a, approximate="tanh") * b, ws[i])
                rec("cublas+gelu_mul_kernel", glu_plain)
                rec("best+glu_prologue+residual", lambda: [fx.rows_linear(gu, ws[i], res_, config=c, glu=True)
                                                           for i in range(L)])
                o = fx.rows_linear(gu, ws[0], res_, config=c, glu=True).float()
                rows["best+glu_prologue+residual"]["rel_err"] = float((o - ref_g).norm() / (ref_g - res_.float()).norm())
        out[name] = {"N": N, "K": K, "M": M, "weight_MB": N * K * 2 / 1e6, "rows": rows, "best": best}
        print(f"gemm {name}: cublas {rows['cublas'].get('us', float('nan')):.2f} m64 "
              f"{rows['cublas_m64'].get('us', float('nan')):.2f} | best " +
              " | ".join(f"{k} {v['us']:.2f} (err {v['rel_err']:.1e})" for k, v in best), flush=True)


def bench_layers(res: dict, dev, variants) -> None:
    """Per layer-step time of the whole expert (18 layers, one denoise step) for each variant."""
    import torch._dynamo
    from flashrt_ros.models.lerobot import common, pi0
    from flashrt_ros.models.lerobot.common import rope_cos_sin
    from flashrt_ros.runtime import triton_kernels as tk
    from parity.gpu_fused import kernel_table
    out = res.setdefault("layers", {})
    H, D, W, Fd, P = 8, 256, 1024, 4096, 456
    for name, pi05 in (("pi05", True), ("pi0", False)):
        T = 50 if pi05 else 51
        vs = variants if pi05 else [variants[0], variants[-1]]
        g = torch.Generator(device=dev).manual_seed(2)

        def r(*shape, scale=1.0):
            return (torch.randn(*shape, device=dev, generator=g) * scale).bfloat16()
        ws = [pi0.GemmaWeights(r((H + 2) * D, W, scale=W ** -0.5), r(W, H * D, scale=(H * D) ** -0.5),
                               r(2 * Fd, W, scale=W ** -0.5), r(W, Fd, scale=Fd ** -0.5),
                               None if pi05 else 1 + 0.1 * torch.randn(W, device=dev, generator=g),
                               None if pi05 else 1 + 0.1 * torch.randn(W, device=dev, generator=g))
              for _ in range(L)]
        kc = r(L, 1, 1, P + T, D)
        vc = r(L, 1, 1, P + T, D)
        mask = expert_mask(T, P, H, pi05, dev)
        cos, sin = rope_cos_sin(torch.arange(P, P + T, device=dev)[None], D, 10000.0)
        ada = (1 + 0.1 * torch.randn(L, 2, 3 * W, device=dev, generator=g)) if pi05 else None
        x0 = r(1, T, W)
        rows = {}
        outs = {}
        small = tk.ATTN_SMALL_R
        saved = common.ATTENTION_HEADS, pi0.ROWS_GEMM
        for label, heads, stack, rowsg in vs:
            common.ATTENTION_HEADS, pi0.ROWS_GEMM = heads, rowsg
            tk.ATTN_SMALL_R = small if heads else []   # round 3: its own candidates only
            tk._attn_tuned.clear()
            torch._dynamo.reset()
            try:
                t0 = time.perf_counter()
                if stack:
                    f = torch.compile(pi0.expert_stack, dynamic=False, fullgraph=True)

                    def fn():
                        return f(x0, ws, kc, vc, mask, cos, sin, ada, True)
                else:
                    f = torch.compile(pi0.expert_layer, dynamic=False, fullgraph=True)

                    def fn():
                        x = x0
                        for i in range(L):
                            x = f(x, ws[i], kc[i], vc[i], mask, cos, sin, None if ada is None else ada[i], True)
                        return x
                with torch.inference_mode():
                    o = fn()
                    torch.cuda.synchronize()
                    compile_s = time.perf_counter() - t0
                    t = graph_us(fn, L)
                    rows[label] = {"us_per_layer_step": t, "compile_s": compile_s}
                    outs[label] = o.float()
                    if label == vs[-1][0] or label == vs[0][0]:
                        gr = torch.cuda.CUDAGraph()
                        fn()
                        torch.cuda.synchronize()
                        with torch.cuda.graph(gr):
                            fn()
                        rows[label]["profile"] = kernel_table(gr.replay, dev, top=20)
                        del gr
                print(f"layers {name} {label}: {t:.2f} µs per layer step (compile {compile_s:.1f} s)", flush=True)
            except Exception:
                import traceback
                rows[label] = {"error": traceback.format_exc()[-1500:]}
                print(rows[label]["error"], flush=True)
        base = outs.get(vs[0][0])
        if base is not None:
            for k, o in outs.items():
                rows[k]["cos_vs_first"] = float(F.cosine_similarity(o.flatten().double(), base.flatten().double(), dim=0))
        from flashrt_ros.runtime import fused_expert as fx
        rows["rows_tuned"] = {" ".join(map(str, k)): (list(v) if v else "cublas") for k, v in fx._rows_tuned.items()}
        rows["attention_tuned"] = {" ".join(map(str, k)): list(v) for k, v in tk._attn_tuned.items()}
        out[name] = rows
        tk.ATTN_SMALL_R = small
        common.ATTENTION_HEADS, pi0.ROWS_GEMM = saved


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="fewer configurations (round 4's run)")
    ap.add_argument("--parts", default="attention,gemm,layers")
    args = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
                 "device": torch.cuda.get_device_name(dev)}
    import triton
    res["triton"] = triton.__version__
    t0 = time.perf_counter()

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    parts = args.parts.split(",")
    with torch.inference_mode():
        if "attention" in parts:
            bench_attention(res, args.quick, dev)
            save()
            print(f"[{time.perf_counter() - t0:.0f}s] attention done", flush=True)
        if "gemm" in parts:
            bench_gemms(res, args.quick, dev)
            save()
            print(f"[{time.perf_counter() - t0:.0f}s] gemm done", flush=True)
    from flashrt_ros.runtime import fused_expert as fx
    from flashrt_ros.runtime import triton_kernels as tk
    if "attention" in res:   # the tuners' candidates for the layer runs: the sweep's best
        tk.ATTN_SMALL_R = [tk.AttnConfig(*json.loads(k)) for k, _ in res["attention"]["pi05"]["best"][:3]] + \
            [tk.AttnConfig(*json.loads(k)) for k, _ in res["attention"]["pi0"]["best"][:2]]
    if "gemm" in res:
        seen = []
        for r in res["gemm"].values():
            for k, _ in r["best"][:2]:
                c = fx.Config(*json.loads(k))
                if c not in seen:
                    seen.append(c)
        fx.ROWS_CANDIDATES = seen
    res["candidates"] = {"attention": [list(c) for c in tk.ATTN_SMALL_R], "rows": [list(c) for c in fx.ROWS_CANDIDATES]}
    if "layers" in parts:
        bench_layers(res, dev, [("round3: per layer, rows kernel + copies", False, False, False),
                                ("per layer, heads kernel", True, False, False),
                                ("stack, heads kernel, rows_linear", True, True, True)])
        save()
        print(f"[{time.perf_counter() - t0:.0f}s] layers done", flush=True)
    res["total_s"] = time.perf_counter() - t0
    save()


if __name__ == "__main__":
    main()
