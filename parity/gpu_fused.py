"""The fast path's kernels on the GPU (issue 14, item 1): full-size π0.5 / π0, 1 camera, bf16, in ONE
process the plain graph (the reference) and the paths named by --paths, each one CUDA graph per chunk,
p50/p99; where the time goes (the prefix alone as its own graph; a torch.profiler kernel table of one
chunk replay per path); the chosen kernel configs. Paths: "fast" (the default: compiled layers + the
Triton row attention + the two below), "round3" (without them), "fast_heads" (+ the opt-in attention_heads: no copies around the attention, no
K/V cache writes), "fast_stack" (+ the expert's layers of a step as one compiled graph), "fast_pdl" and
"fast_tune" (+ programmatic dependent launch; + inductor's GEMM autotuning: settings()), "fused" (the
fused expert kernels, opt-in), "vision_split" (the fast path with SigLIP's q/k/v as three projections, as
before they became one matmul at load).

    python -m parity.gpu_fused --out $OUT/fused.json --kinds pi05,pi0 [--iters 30] [--profile pi05]
        [--paths plain,round3,fast,fast_heads,fast_stack,fast_pdl,fast_tune,fused,vision_split] [--prompt-tokens 200,128,96]

Policies: parity.gpu_fast.write_full (seeded random weights, full LeRobot dims).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from flashrt_ros.tools.bench import _pct, _time, measure_bandwidth


def kernel_table(fn, dev, top: int = 25) -> dict:
    """One call of fn (a graph replay) under torch.profiler: device time per kernel name, largest first."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize(dev)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(dev)
    rows = {}
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        r = rows.setdefault(e.name[:90], [0, 0.0])
        r[0] += 1
        r[1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    total = sum(v[1] for v in rows.values())
    best = sorted(rows.items(), key=lambda kv: -kv[1][1])[:top]
    return {"kernels": sum(v[0] for v in rows.values()), "device_us": total,
            "top": [{"name": k, "count": c, "us": t} for k, (c, t) in best]}


_DEFAULTS: dict = {}


@torch.no_grad()
def split_vision(net) -> list:
    """Each vision layer's fused q/k/v projection (siglip.VisionAttention.fuse) as three again, for the
    fused-vs-separate comparison; returns the fused modules for fuse_vision_back."""
    saved = []
    for layer in net.vision.encoder.layers:
        a = layer.self_attn
        qkv = a._modules.pop("qkv_proj")
        saved.append(qkv)
        for name, w, bias in zip(("q_proj", "k_proj", "v_proj"), qkv.weight.chunk(3), qkv.bias.chunk(3)):
            lin = torch.nn.Linear(w.shape[1], w.shape[0], device=w.device, dtype=w.dtype)
            lin.weight.copy_(w)
            lin.bias.copy_(bias)
            setattr(a, name, lin)
    return saved


def fuse_vision_back(net, saved: list) -> None:
    for layer, qkv in zip(net.vision.encoder.layers, saved):
        for name in ("q_proj", "k_proj", "v_proj"):
            delattr(layer.self_attn, name)
        layer.self_attn.qkv_proj = qkv


def settings(path: str) -> None:
    """The module switches for a path: "fast" = the defaults (since run 8: fast_stack); "round3" = the
    fast path as round 3 shipped it (neither of the next two); "fast_heads" = + common.ATTENTION_HEADS (attention_heads: q in place, output in the o projection's
    layout, the expert's own K/V read in place: no copies, no cache writes); "fast_stack" = + the expert's
    layers of a step as one compiled graph (pi0.STACK_DEFAULT); "fast_pdl" = fast_stack + programmatic
    dependent launch (inductor's kernels and the attention kernel launched while the kernel before them
    drains); "fast_tune" = fast_pdl + inductor's GEMM autotuning (Triton templates with fused epilogues vs
    cuBLAS, timed per shape) for the expert's few-row layers; anything else: the defaults."""
    from flashrt_ros.models.lerobot import common, pi0
    from flashrt_ros.runtime import triton_kernels as tk
    if not _DEFAULTS:
        _DEFAULTS.update(heads=common.ATTENTION_HEADS, stack=pi0.STACK_DEFAULT, pdl=tk.PDL,
                         options=dict(common.INDUCTOR_OPTIONS), expert=dict(common.EXPERT_OPTIONS))
    common.ATTENTION_HEADS, pi0.STACK_DEFAULT, tk.PDL = _DEFAULTS["heads"], _DEFAULTS["stack"], _DEFAULTS["pdl"]
    common.INDUCTOR_OPTIONS, common.EXPERT_OPTIONS = dict(_DEFAULTS["options"]), dict(_DEFAULTS["expert"])
    if path in ("round3", "fast_heads"):   # run 8 made heads and stack the defaults; these are without them
        pi0.STACK_DEFAULT = False
        common.ATTENTION_HEADS = path == "fast_heads"
    if path in ("fast_stack", "fast_pdl", "fast_tune"):
        common.ATTENTION_HEADS = pi0.STACK_DEFAULT = True
    if path in ("fast_pdl", "fast_tune"):
        tk.PDL = True
        common.INDUCTOR_OPTIONS = {**common.INDUCTOR_OPTIONS, "triton.enable_pdl": True}
    if path == "fast_tune":
        common.EXPERT_OPTIONS = {**common.EXPERT_OPTIONS, "max_autotune_gemm": True,
                                 "max_autotune_gemm_backends": "ATEN,TRITON"}
    tk._attn_tuned.clear()


def bench(policy, iters: int, bandwidth: float, profile: bool, paths=("plain", "round3", "fast"),
          tokens: int | None = None) -> dict:
    from flashrt_ros.runtime import BufferSet, StaticGraph
    from flashrt_ros.runtime import fused_expert as fx
    dev = policy.device
    net = policy.model
    b = BufferSet(dev)
    for name, t in policy.probe_inputs(1, 0, tokens=tokens).items():
        b.declare(name, tuple(t.shape), t.dtype).copy_(t)
    b.declare("actions", tuple(b["noise"].shape), torch.float32)
    b.declare("kv", (1,), torch.float32)
    names = ["images", "img_masks", "tokens", "token_mask", "state", "noise"]

    def fn(bufs):
        bufs["actions"].copy_(net(*(bufs[n] for n in names)))

    def prefix_fn(bufs):   # vision + projector + the VLM over the prefix: the part a chunk does once
        img = net.embed_images(bufs["images"])
        lang = net.embed(bufs["tokens"]) * net._embed_scale
        x = torch.cat([img, lang.to(img.dtype)], dim=1)
        pad = torch.cat([bufs["img_masks"][:, :, None].expand(1, 1, img.shape[1]).reshape(1, -1),
                         bufs["token_mask"]], dim=1)
        k, _ = net._encode_prefix(x, pad, net.chunk_size + (0 if net.pi05 else 1), True)
        bufs["kv"].copy_(k[-1, 0, 0, 0, :1].float())

    out: dict = {}
    results = {}
    with torch.inference_mode():
        for path in paths:
          split = split_vision(net) if path == "vision_split" else None
          try:
            settings(path)
            if path == "plain":
                net.compile_layers(False)
            else:
                t0 = time.perf_counter()
                net.compile_layers(kernels=True, fused=path == "fused")
                fn(b)
                torch.cuda.synchronize(dev)
                out[f"{path}_first_forward_s"] = time.perf_counter() - t0
            fn(b)
            eager = b["actions"].clone()
            g = StaticGraph(f"bench_{path}", fn, b, reads=names, writes=["actions"]).capture()
            t = _time(g.replay, dev, iters=iters, warmup=3)
            g.replay()
            torch.cuda.synchronize(dev)
            results[path] = b["actions"].clone()
            row = {"graph": _pct(t), "graph_equals_eager": bool(torch.equal(results[path], eager))}
            gp = StaticGraph(f"prefix_{path}", prefix_fn, b, reads=names, writes=["kv"]).capture()
            row["prefix_graph"] = _pct(_time(gp.replay, dev, iters=iters, warmup=3))
            row["denoise_ms_p50"] = row["graph"]["p50_ms"] - row["prefix_graph"]["p50_ms"]
            if profile:
                try:
                    row["profile"] = kernel_table(g.replay, dev)
                except Exception as e:  # noqa: BLE001
                    row["profile"] = {"error": repr(e)}
            del g, gp
            from flashrt_ros.runtime import triton_kernels as tk
            row["attention_configs"] = {" ".join(map(str, k)): list(v) for k, v in tk._attn_tuned.items()}
            out[path] = row
            print(f"  {path}: chunk p50 {row['graph']['p50_ms']:.2f} p99 {row['graph']['p99_ms']:.2f} ms | prefix "
                  f"{row['prefix_graph']['p50_ms']:.2f} | denoise {row['denoise_ms_p50']:.2f} ms | graph==eager "
                  f"{row['graph_equals_eager']}", flush=True)
          except Exception:
            import traceback
            out[path] = {"error": traceback.format_exc()}
            print(out[path]["error"], flush=True)
          if split is not None:
            fuse_vision_back(net, split)
        settings("fast")
    ref = results["plain"].flatten().double()
    for path in [p for p in paths if p in results and p != "plain"]:
        r = results[path].flatten().double()
        out[path]["cos_vs_plain"] = float(torch.nn.functional.cosine_similarity(r, ref, dim=0))
        out[path]["max_abs_vs_plain"] = float((r - ref).abs().max())
    once, per_step = net.weight_bytes()
    out["floor_ms"] = (once + net.num_steps * per_step) / bandwidth * 1e3
    out["denoise_floor_ms"] = net.num_steps * per_step / bandwidth * 1e3
    out["tuned_configs"] = {" ".join(map(str, k)): v._asdict() for k, v in fx._tuned.items()}
    from flashrt_ros.runtime import triton_kernels as tk
    out["rows_linear"] = {" ".join(map(str, k)): (list(v) if v else "cublas") for k, v in fx._rows_tuned.items()}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--kinds", default="pi05,pi0")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--profile", default="pi05")
    ap.add_argument("--paths", default="plain,round3,fast")
    ap.add_argument("--work", type=Path, default=Path("/tmp/flashrt-fused"))
    ap.add_argument("--prompt-tokens", default="", help="comma-separated prompt slot counts to time (the engine's "
                    "prompt_tokens); '' = the policy's tokenizer_max_length. Rows '<kind>@<n>'")
    args = ap.parse_args(argv)
    from flashrt_ros.models.lerobot import load_policy
    from parity.gpu_fast import free, write_full
    from parity.gpu_rtc import no_init
    torch.backends.cuda.matmul.allow_tf32 = False
    t0 = time.perf_counter()
    dev = torch.device("cuda")
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
                 "python": platform.python_version(), "device": torch.cuda.get_device_name(dev),
                 "iters": args.iters, "cameras": 1, "dtype": "bfloat16", "policies": {}}

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")

    try:
        import triton
        res["triton"] = triton.__version__
    except ImportError:
        pass
    bw = measure_bandwidth(dev)
    res["bandwidth_GBps"] = bw / 1e9
    log(f"copy bandwidth {bw / 1e9:.0f} GB/s")
    for kind in args.kinds.split(","):
        work = args.work / kind
        shutil.rmtree(work, ignore_errors=True)
        d = write_full(kind, work / "cam1", 1)
        log(f"{kind}: checkpoint written")
        with no_init():
            policy = load_policy(d, dev, "bfloat16")
        log(f"{kind}: loaded")
        for n in [int(x) for x in args.prompt_tokens.split(",") if x] or [None]:
          row = kind if n is None else f"{kind}@{n}"
          try:
            res["policies"][row] = bench(policy, args.iters, bw, kind in args.profile.split(","),
                                         tuple(args.paths.split(",")), tokens=n)
            res["policies"][row]["prompt_tokens"] = n or policy.max_length
          except Exception as e:   # recorded, not hidden; the next policy still runs
            import traceback
            res["policies"][row] = {"error": traceback.format_exc()}
          r = res["policies"][row]
          if "error" in r:
            log(f"{row}: ERROR {r['error'][-600:]}")
          else:
            log(f"{row}: " + " | ".join(f"{p} {r[p]['graph']['p50_ms']:.2f}/{r[p]['graph']['p99_ms']:.2f} ms"
                                         f" cos {r[p].get('cos_vs_plain', 1.0):.7f}" for p in args.paths.split(",")
                                         if "graph" in r.get(p, {})) + f" | floor {r['floor_ms']:.2f} | "
                f"{r['tuned_configs']} | rows {r['rows_linear']}")
        del policy
        free()
    log("done")


if __name__ == "__main__":
    main()
