"""The fast path on the GPU (issue 14): π0 / π0.5 / SmolVLA at full size, 1-3 cameras, bf16 / fp8 / int8
weights, one process, one GPU (the device tool's H200).

    python -m parity.gpu_fast --out $OUT/fast-h200.json --kinds pi05,pi0 --weights bf16,fp8,int8 [--iters 50]

No LeRobot on the device: each policy directory is written from the tiny fixture's processor files
and config with the arch dropped (LeRobot's full dims) and seeded random weights (parity/gpu_rtc.py's
write_full_pi05, generalised), saved in bfloat16. SmolVLA needs a LeRobot-saved tiny directory carried
along (--smolvla-fixture), its dims replaced by SmolVLM2-500M's defaults in the same way.

Per policy and weights mode: the network is loaded (float32 for fp8/int8: the quantisation gate's
reference, quant.quantize_with_gate, whose numbers are recorded whether it passes or not), then per
camera count bench_lerobot.bench_network: the plain network's graph (the reference path), the fast
path (compile_layers with the Triton kernels; SmolVLA has no compiled path: its plain graph) eager and
as one CUDA graph, p50/p99, its cosine vs the plain path, the weight-bandwidth floor. Then the whole
LerobotEngine.act() with two 640x480 rgb8 frames (the engine's defaults: fast path) beside the same
engine's chunk replay, and the device allocations of 20 act() calls.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from flashrt_ros.tools.bench import measure_bandwidth

FIXTURES = Path(__file__).resolve().parents[1] / "test" / "fixtures"


def write_full(kind: str, out: Path, cameras: int, weights_from: Path | None = None, seed: int = 0,
               smolvla_fixture: Path | None = None) -> Path:
    """A full-size policy directory with `cameras` cameras. The first written holds the seeded weights;
    later ones (other camera counts) link to its model.safetensors."""
    from safetensors.torch import save_file

    from flashrt_ros.models.lerobot.loader import build_network
    src = smolvla_fixture if kind == "smolvla" else FIXTURES / f"lerobot_{kind}_tiny"
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name in ("arch.json", "model.safetensors") or f.is_dir():
            continue
        shutil.copy(f, out / f.name)
    cfg = json.loads((out / "config.json").read_text())
    if kind == "smolvla":   # the tiny save's dims -> SmolVLA's defaults (SmolVLM2-500M, 16 VLM layers, 512 px)
        cfg.pop("vlm_model_name", None)
        cfg.update(num_vlm_layers=16, num_expert_layers=-1, expert_width_multiplier=0.75,
                   resize_imgs_with_padding=[512, 512])
        for f in ("tokenizer.json", "tokenizer_config.json"):   # a small word-level one (no hub here)
            shutil.copy(FIXTURES / "lerobot_pi0_tiny" / f, out / f)
    cams = [k for k, v in cfg["input_features"].items() if v["type"] == "VISUAL"]
    proto = cfg["input_features"][cams[0]]
    for k in cams:
        del cfg["input_features"][k]
    names = ["observation.images.base_0_rgb", "observation.images.left_wrist_0_rgb",
             "observation.images.right_wrist_0_rgb"]
    cfg["input_features"] = {**{names[i]: proto for i in range(cameras)}, **cfg["input_features"]}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if weights_from is not None:
        os.symlink(weights_from / "model.safetensors", out / "model.safetensors")
        return out
    from parity.gpu_rtc import no_init, seeded_weights
    with torch.device("cuda"), no_init():
        net = build_network(out, cfg)
    sd = seeded_weights(net, seed, ("layernorm.weight", "norm.weight") if kind == "smolvla" else ())
    del net
    if kind == "smolvla":   # SmolVLA's loader reads LeRobot's names: smolvla.map_key, inverted
        inverse = (("vision.", "vlm_with_expert.vlm.model.vision_model."),
                   ("connector.", "vlm_with_expert.vlm.model.connector.modality_projection.proj."),
                   ("embed.", "vlm_with_expert.vlm.model.text_model.embed_tokens."),
                   ("vlm.", "vlm_with_expert.vlm.model.text_model.layers."),
                   ("expert_norm.", "vlm_with_expert.lm_expert.norm."),
                   ("expert.", "vlm_with_expert.lm_expert.layers."))
        sd = {next((new + k[len(old):] for old, new in inverse if k.startswith(old)), k): v for k, v in sd.items()}
    save_file(sd, str(out / "model.safetensors"))
    return out


def free():
    gc.collect()
    torch.cuda.empty_cache()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--kinds", default="pi05,pi0")
    ap.add_argument("--weights", default="bf16,fp8,int8")
    ap.add_argument("--cameras", default="1,2,3")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--act-weights", default="bf16", help="weights modes of the act() rows")
    ap.add_argument("--work", type=Path, default=Path("/tmp/flashrt-fast"))
    ap.add_argument("--smolvla-fixture", type=Path)
    ap.add_argument("--kernels", action="store_true", help="first: kernel micro-benchmarks (wo_linear, attention)")
    args = ap.parse_args(argv)
    from flashrt_ros.models.lerobot import load_policy
    from flashrt_ros.models.lerobot.quant import gate_passes, quantize_with_gate
    from flashrt_ros.tools.bench_lerobot import bench_act, bench_network
    from parity.gpu_rtc import no_init
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t0 = time.perf_counter()
    dev = torch.device("cuda")
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
                 "python": platform.python_version(), "device": torch.cuda.get_device_name(dev),
                 "iters": args.iters, "policies": {}}

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")

    bandwidth = measure_bandwidth(dev)
    res["bandwidth_GBps"] = bandwidth / 1e9
    log(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    if args.kernels:
        res["kernels"] = kernel_bench(dev)
        log(f"kernels {json.dumps(res['kernels'])}")
    cams = [int(c) for c in args.cameras.split(",")]
    for kind in args.kinds.split(","):
        work = args.work / kind
        shutil.rmtree(work, ignore_errors=True)
        dirs = {1: write_full(kind, work / "cam1", 1, smolvla_fixture=args.smolvla_fixture)}
        for n in (2, 3):
            dirs[n] = write_full(kind, work / f"cam{n}", n, weights_from=dirs[1],
                                 smolvla_fixture=args.smolvla_fixture)
        rows = res["policies"][kind] = {"networks": [], "act": []}
        log(f"{kind}: checkpoints written")
        for w in args.weights.split(","):
            with no_init():
                policy = load_policy(dirs[1], dev, "float32" if w != "bf16" else "bfloat16")
            entry = {"weights": w, "params": sum(p.numel() for p in policy.model.parameters())}
            if w != "bf16":
                g = quantize_with_gate(policy, w, torch.bfloat16, 1)
                entry["gate"] = {**g, "passes": bool(gate_passes(g))}
                log(f"{kind} {w}: gate {entry['gate']}")
            compiled = hasattr(policy.model, "compile_layers")
            entry["cameras"] = []
            for n in cams:
                r = bench_network(policy, n, args.iters, bandwidth, compiled=compiled, plain_graph=compiled)
                entry["cameras"].append(r)
                plain = r.get("plain_graph", {}).get("p50_ms", float("nan"))
                log(f"{kind} {w} {n} cam: fast graph p50 {r['graph']['p50_ms']:.2f} p99 {r['graph']['p99_ms']:.2f} ms"
                    f" | plain graph {plain:.2f} | eager {r['eager']['p50_ms']:.1f} | floor {r['floor_ms']:.2f} ms "
                    f"({r['graph_over_floor']:.1f}x) | cos vs plain {r['graph_vs_eager_cos']:.6f}")
            rows["networks"].append(entry)
            del policy
            free()
        for w in [w for w in args.act_weights.split(",") if w]:
            try:
                with no_init():
                    a = bench_act(str(dirs[2]), "cuda", "bfloat16", args.iters, compiled=None, weights=w)
            except RuntimeError as err:   # a refused gate: recorded, not hidden
                a = {"weights": w, "refused": str(err)}
            rows["act"].append(a)
            log(f"{kind} act() 2x640x480 {w}: {json.dumps({k: a.get(k) for k in ('act', 'chunk_graph', 'act_minus_chunk_p50_ms', 'device_allocations_in_20_acts', 'refused', 'notes')})}")
            free()
    log(f"done, peak GPU memory {torch.cuda.max_memory_allocated(dev) / 1e9:.1f} GB")


def kernel_bench(dev) -> dict:
    """The expert's and the VLM's GEMM shapes: bf16 F.linear vs wo_linear int8/fp8; attention of 400
    folded rows over ~350 keys (head_dim 256): SDPA vs the row kernel. Median of CUDA-event timings."""
    import torch.nn.functional as F
    import triton.testing

    from flashrt_ros.runtime import triton_kernels as tk
    out = {}
    shapes = {"expert_qkv": (50, 2560, 1024), "expert_o": (50, 1024, 2048), "expert_gate_up": (50, 8192, 1024),
              "expert_down": (50, 1024, 4096), "vlm_gate_up": (310, 32768, 2048), "vlm_down": (310, 2048, 16384)}
    for name, (M, N, K) in shapes.items():
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        w = torch.randn(N, K, device=dev) / K ** 0.5
        row = {"bytes_bf16": N * K * 2}
        wb = w.to(torch.bfloat16)
        row["bf16_us"] = triton.testing.do_bench(lambda: F.linear(x, wb), return_mode="median") * 1e3
        for kind in ("int8", "fp8"):
            qw = tk.quantize(w, kind)
            y = tk.wo_linear(x, qw)
            ref = tk.wo_linear_reference(x, qw)
            row[f"{kind}_rel_err"] = float((y.float() - ref.float()).norm() / ref.float().norm())
            row[f"{kind}_us"] = triton.testing.do_bench(lambda: tk.wo_linear(x, qw), return_mode="median") * 1e3
        out[name] = row
    for R, Tk in ((400, 356), (408, 357), (2448, 306)):
        q = torch.randn(1, 1, R, 256, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, 1, Tk, 256, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, 1, Tk, 256, device=dev, dtype=torch.bfloat16)
        m = torch.zeros(1, 1, R, Tk, device=dev, dtype=torch.bfloat16)
        m[..., -20:] = -2.3819763e38
        sd = triton.testing.do_bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.0625),
                                     return_mode="median") * 1e3
        kr = triton.testing.do_bench(lambda: tk.attention_rows(q, k, v, m, 0.0625), return_mode="median") * 1e3
        ref = tk.attention_rows_reference(q, k, v, m, 0.0625).float()
        err = float((tk.attention_rows(q, k, v, m, 0.0625).float() - ref).norm() / ref.norm())
        out[f"attention_{R}x{Tk}"] = {"sdpa_us": sd, "rows_kernel_us": kr, "rel_err": err}
    return out


if __name__ == "__main__":
    main()
