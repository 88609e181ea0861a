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

--lerobot (issue 14 item 5): then, per kind and camera count, LeRobot 0.6.1's own policy class
(PI05Policy / PI0Policy / SmolVLAPolicy) loads the same directory (from_pretrained, an exact load
checked tensor by tensor) with its saved pre/post-processors, and its eager `predict_action_chunk` is
timed in this process (p50/p99, CUDA-synchronised, after 5 warm-up calls; the preprocessed batch
reused, as parity/gpu_run.py does): π0/π0.5 in LeRobot's `dtype: bfloat16` (its bf16 mode keeps vision
and norms in float32), SmolVLA in float32 (its config has no dtype option). Row `lerobot_eager` per kind,
with the ratio to the fast graph's p50 (bf16) of the same run. The directories are LeRobot's layout
(LeRobot's tensor names; with --lerobot also the tensors only LeRobot reads: the lm_heads, the VLM's
final norm; SmolVLA's vlm/ config + processor directory). LeRobot is not on the device: carry its
wheels (docs: /work/notes/issue14-smolvla-lerobot.md) and put them first on PYTHONPATH.

CPU rehearsal of the script (tiny fixtures, no GPU): --device cpu --size tiny.
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


SMOLVLA_CONFIG = FIXTURES / "lerobot_smolvla_tiny_config"   # a LeRobot save of a tiny SmolVLA, without weights
CAMERA_NAMES = ["observation.images.base_0_rgb", "observation.images.left_wrist_0_rgb",
                "observation.images.right_wrist_0_rgb"]
# ours -> LeRobot's tensor names (the networks' map_key inverted); LeRobot prefixes every name with "model."
LEROBOT_NAMES = {
    "pi": (("vision.", "paligemma_with_expert.paligemma.model.vision_tower.vision_model."),
           ("projector.", "paligemma_with_expert.paligemma.model.multi_modal_projector.linear."),
           ("embed.", "paligemma_with_expert.paligemma.model.language_model.embed_tokens."),
           ("vlm.", "paligemma_with_expert.paligemma.model.language_model.layers."),
           ("expert_norm.", "paligemma_with_expert.gemma_expert.model.norm."),
           ("expert.", "paligemma_with_expert.gemma_expert.model.layers.")),
    "smolvla": (("vision.", "vlm_with_expert.vlm.model.vision_model."),
                ("connector.", "vlm_with_expert.vlm.model.connector.modality_projection.proj."),
                ("embed.", "vlm_with_expert.vlm.model.text_model.embed_tokens."),
                ("vlm.", "vlm_with_expert.vlm.model.text_model.layers."),
                ("expert_norm.", "vlm_with_expert.lm_expert.norm."),
                ("expert.", "vlm_with_expert.lm_expert.layers.")),
}


def lerobot_state_dict(kind: str, sd: dict, net, seed: int, extras: bool) -> dict:
    """Our state dict -> LeRobot's names. extras: also the tensors LeRobot's model has and ours does not
    read (seeded): π0/π0.5 the PaliGemma lm_head (tied to the embedding: its copy), the expert's lm_head,
    the VLM's final norm; SmolVLA the VLM's lm_head and final norm. LeRobot's exact-load check needs them."""
    table = LEROBOT_NAMES["smolvla" if kind == "smolvla" else "pi"]
    out = {"model." + next((new + k[len(old):] for old, new in table if k.startswith(old)), k): v for k, v in sd.items()}
    if not extras:
        return out
    g = torch.Generator().manual_seed(seed + 7)
    dtype = next(iter(sd.values())).dtype

    def rand(*shape, scale=None):
        return (torch.randn(shape, generator=g) * (scale if scale is not None else shape[-1] ** -0.5)).to(dtype)
    if kind == "smolvla":
        vocab, width = net.embed.weight.shape
        out["model.vlm_with_expert.vlm.lm_head.weight"] = rand(vocab, width)
        out["model.vlm_with_expert.vlm.model.text_model.norm.weight"] = (1 + rand(width, scale=0.1)).to(dtype)
    else:
        pg = "model.paligemma_with_expert."
        vocab, width = net.embed.weight.shape
        out[pg + "paligemma.lm_head.weight"] = out[pg + "paligemma.model.language_model.embed_tokens.weight"].clone()
        out[pg + "paligemma.model.language_model.norm.weight"] = rand(width, scale=0.1)
        out[pg + "gemma_expert.lm_head.weight"] = rand(vocab, net.expert_dims.width)
    return out


def cpu_seeded_weights(net, seed: int, unit_norms: tuple[str, ...] = ()) -> dict:
    """parity.gpu_rtc.seeded_weights' distribution from a CPU generator (the --device cpu rehearsal)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in net.named_parameters():
        if p.ndim >= 2:
            fan_in = p.shape[-1] if name.endswith("embed.weight") else p[0].numel()
            v = torch.randn(p.shape, generator=g) / fan_in ** 0.5
        else:
            v = 0.1 * torch.randn(p.shape, generator=g)
            if name.endswith(("layer_norm1.weight", "layer_norm2.weight", "post_layernorm.weight")) or (
                    unit_norms and name.endswith(unit_norms) and "layer_norm" not in name):
                v += 1.0
        sd[name] = v.to(torch.bfloat16)
    return sd


def write_full(kind: str, out: Path, cameras: int, weights_from: Path | None = None, seed: int = 0,
               smolvla_fixture: Path | None = None, size: str = "full", lerobot: bool = False,
               device: str = "cuda") -> Path:
    """A policy directory with `cameras` cameras, LeRobot's layout and tensor names. The first written
    holds the seeded weights; later ones (other camera counts) link to its model.safetensors.
    size "full": LeRobot's default dims (π0/π0.5: PaliGemma 2B + Gemma 300M; SmolVLA: SmolVLM2-500M, 16
    VLM layers, 512 px), seeded weights (bf16). size "tiny": the test fixtures' dims (π0/π0.5: the
    LeRobot-saved fixture's arch.json; SmolVLA: parity's tiny dims), seeded, for a CPU rehearsal.
    lerobot: also what LeRobot's own loader needs (lerobot_state_dict's extras; SmolVLA's vlm/ config
    and processor directory, parity.lerobot_reference.write_smolvlm: needs transformers)."""
    from safetensors.torch import save_file

    from flashrt_ros.models.lerobot.loader import build_network
    src = (smolvla_fixture or SMOLVLA_CONFIG) if kind == "smolvla" else FIXTURES / f"lerobot_{kind}_tiny"
    tiny_pi = size == "tiny" and kind != "smolvla"   # the fixture's dims (its arch.json), new seeded weights
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_dir() or f.name == "model.safetensors" or (f.name == "arch.json" and not tiny_pi):
            continue
        shutil.copy(f, out / f.name)
    cfg = json.loads((out / "config.json").read_text())
    if kind == "smolvla":
        cfg.pop("vlm_model_name", None)
        if size == "full":   # the tiny save's dims -> SmolVLA's defaults (SmolVLM2-500M, 16 VLM layers, 512 px)
            cfg.update(num_vlm_layers=16, num_expert_layers=-1, expert_width_multiplier=0.75,
                       resize_imgs_with_padding=[512, 512])
        else:
            cfg["vlm_model_name"] = "vlm"   # the tiny dims, read by our loader (and LeRobot's, with --lerobot)
        for f in ("tokenizer.json", "tokenizer_config.json"):   # a small word-level one (no hub here)
            shutil.copy(FIXTURES / "lerobot_pi0_tiny" / f, out / f)
        if lerobot:   # LeRobot's SmolVLA reads its VLM config and processor from a directory
            from parity.lerobot_reference import ARCH, write_smolvlm
            write_smolvlm(out / "vlm", ARCH["smolvla"][size])
        elif size == "tiny":
            shutil.copytree(SMOLVLA_CONFIG / "vlm", out / "vlm", dirs_exist_ok=True)
    cams = [k for k, v in cfg["input_features"].items() if v["type"] == "VISUAL"]
    proto = cfg["input_features"][cams[0]]
    for k in cams:
        del cfg["input_features"][k]
    cfg["input_features"] = {**{CAMERA_NAMES[i]: proto for i in range(cameras)}, **cfg["input_features"]}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if weights_from is not None:
        os.symlink(weights_from / "model.safetensors", out / "model.safetensors")
        return out
    from parity.gpu_rtc import no_init, seeded_weights
    unit = ("layernorm.weight", "norm.weight") if kind == "smolvla" else ()
    with torch.device(device), no_init():
        net = build_network(out, cfg)
    sd = seeded_weights(net, seed, unit) if device == "cuda" else cpu_seeded_weights(net, seed, unit)
    sd = lerobot_state_dict(kind, sd, net, seed, extras=lerobot)
    del net
    save_file(sd, str(out / "model.safetensors"))
    return out


def lerobot_load(kind: str, policy_dir: Path, device: str, dtype: str | None):
    """parity.lerobot_reference.load for these directories (no arch.json for full size: LeRobot's own
    dims): LeRobot's from_pretrained (built on `device`), the exact-load check, the saved processors
    with the tokenizer step fed token ids (TokenFeed) and the device step on `device`."""
    import contextlib
    import io

    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors

    from parity import lerobot_reference as ref
    arch_file = policy_dir / "arch.json"
    arch = json.loads(arch_file.read_text()) if arch_file.is_file() else ref.ARCH[ref._family(kind)]["full"]
    config = PreTrainedConfig.from_pretrained(policy_dir)
    config.device = device
    if kind == "smolvla":
        config.vlm_model_name = str(policy_dir / "vlm")
    elif dtype is not None:
        config.dtype = dtype
    log = io.StringIO()
    try:   # built on the device: HF's weight init of 4 B parameters on the CPU takes minutes
        with ref._dims_context(kind, arch), contextlib.redirect_stdout(log), torch.device(device):
            policy = ref.POLICY_CLASSES[kind].from_pretrained(policy_dir, config=config)
    except Exception as err:   # then as a user would: built on the CPU, moved by LeRobot
        print(f"LeRobot {kind}: built on {device} failed ({type(err).__name__}: {err}); building on the CPU",
              flush=True)
        log = io.StringIO()
        free()
        with ref._dims_context(kind, arch), contextlib.redirect_stdout(log):
            policy = ref.POLICY_CLASSES[kind].from_pretrained(policy_dir, config=config)
    policy.to(device)
    ref._check_loaded(policy, policy_dir / "model.safetensors", log.getvalue())
    feed = ref.TokenFeed()
    pre, post = make_pre_post_processors(
        policy.config, pretrained_path=str(policy_dir),
        preprocessor_overrides={"tokenizer_processor": {"tokenizer": feed}, "device_processor": {"device": device}})
    return ref.Loaded(policy, pre, post, feed, arch)


def lerobot_rows(kind: str, policy_dir: Path, cams: list[int], iters: int, device: str, log) -> list[dict]:
    """LeRobot's eager predict_action_chunk per camera count (parity/gpu_run.py's timing loop)."""
    from parity import lerobot_reference as ref
    dtype = None if kind == "smolvla" else "bfloat16"
    t0 = time.perf_counter()
    loaded = lerobot_load(kind, policy_dir, device, dtype)
    load_s = time.perf_counter() - t0
    inputs = ref.make_inputs(kind, loaded.policy, seed=0)
    cfg = loaded.policy.config
    visual = {k: v for k, v in cfg.input_features.items() if k.startswith("observation.images.")}
    proto, others = next(iter(visual.values())), {k: v for k, v in cfg.input_features.items() if k not in visual}
    rows = []
    r = int(inputs["token_mask"].sum(1).argmax())   # SmolVLA pads to the longest row: time a full one
    for n in cams:
        cam_inputs = {k: v for k, v in inputs.items() if not k.startswith("image.")}
        for i in range(n):
            cam_inputs[f"image.{i}"] = inputs["image.0"].roll(i, dims=-1)
        cfg.input_features = {**{k: proto for k in CAMERA_NAMES[:n]}, **others}
        one = {k: v[r:r + 1] for k, v in cam_inputs.items()}
        batch = ref.prepare_batch(loaded.preprocessor, loaded.feed, one, CAMERA_NAMES[:n])
        t = ref.timing(loaded.policy, batch, one["noise"], iters=iters)
        with torch.no_grad():
            actions = loaded.policy.predict_action_chunk(dict(batch), noise=one["noise"].to(device))
        rows.append({"cameras": n, "dtype": dtype or "float32", "load_s": load_s, **t,
                     "actions_finite": bool(torch.isfinite(actions).all()),
                     "actions_max_abs": float(actions.abs().max())})
        log(f"{kind} LeRobot eager predict_action_chunk ({dtype or 'float32'}), {n} cam: p50 {t['p50_ms']:.1f} "
            f"p99 {t['p99_ms']:.1f} ms")
    del loaded
    return rows


def free():
    gc.collect()
    if torch.cuda.is_available():
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
    ap.add_argument("--lerobot", action="store_true",
                    help="also LeRobot 0.6.1's eager predict_action_chunk per kind and camera count (row lerobot_eager)")
    ap.add_argument("--lerobot-iters", type=int, default=20)
    ap.add_argument("--device", default="cuda", help="cpu: a rehearsal of this script (float32, use --size tiny)")
    ap.add_argument("--size", default="full", choices=("full", "tiny"))
    args = ap.parse_args(argv)
    from flashrt_ros.models.lerobot import load_policy
    from flashrt_ros.models.lerobot.quant import gate_passes, quantize_with_gate
    from flashrt_ros.tools.bench_lerobot import bench_act, bench_network
    from parity.gpu_rtc import no_init
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t0 = time.perf_counter()
    dev = torch.device(args.device)
    on_gpu = dev.type == "cuda"
    dtype = "bfloat16" if on_gpu else "float32"
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
                 "python": platform.python_version(), "device": torch.cuda.get_device_name(dev) if on_gpu else "cpu",
                 "size": args.size, "dtype": dtype, "iters": args.iters, "policies": {}}
    if args.lerobot:
        import lerobot
        import transformers
        res["lerobot"] = {"lerobot": lerobot.__version__, "transformers": transformers.__version__,
                          "iters": args.lerobot_iters}

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
        opts = dict(smolvla_fixture=args.smolvla_fixture, size=args.size, lerobot=args.lerobot, device=args.device)
        dirs = {1: write_full(kind, work / "cam1", 1, **opts)}
        for n in (2, 3):
            dirs[n] = write_full(kind, work / f"cam{n}", n, weights_from=dirs[1], **opts)
        rows = res["policies"][kind] = {"networks": [], "act": []}
        log(f"{kind}: checkpoints written")
        for w in args.weights.split(","):
            with no_init():
                policy = load_policy(dirs[1], dev, "float32" if w != "bf16" else dtype)
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
                    a = bench_act(str(dirs[2]), args.device, dtype, args.iters, compiled=None, weights=w)
            except RuntimeError as err:   # a refused gate: recorded, not hidden
                a = {"weights": w, "refused": str(err)}
            rows["act"].append(a)
            log(f"{kind} act() 2x640x480 {w}: {json.dumps({k: a.get(k) for k in ('act', 'chunk_graph', 'act_minus_chunk_p50_ms', 'device_allocations_in_20_acts', 'refused', 'notes')})}")
            free()
        if args.lerobot:
            try:
                rows["lerobot_eager"] = lerobot_rows(kind, dirs[max(cams)], cams, args.lerobot_iters, args.device, log)
            except Exception as err:   # recorded, not hidden; the other kinds still run
                import traceback
                rows["lerobot_eager"] = [{"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}]
                log(f"{kind} LeRobot eager FAILED: {type(err).__name__}: {err}")
            fast = {r["cameras"]: r["graph"]["p50_ms"] for e in rows["networks"] if e["weights"] == "bf16"
                    for r in e["cameras"]}
            for row in rows["lerobot_eager"]:
                if row.get("cameras") in fast:
                    row["fast_graph_p50_ms"] = fast[row["cameras"]]
                    row["ratio_lerobot_over_fast_graph_p50"] = row["p50_ms"] / fast[row["cameras"]]
                    log(f"{kind} {row['cameras']} cam: LeRobot eager {row['p50_ms']:.1f} ms / fast graph "
                        f"{fast[row['cameras']]:.2f} ms = {row['ratio_lerobot_over_fast_graph_p50']:.1f}x")
            free()
    peak = f"{torch.cuda.max_memory_allocated(dev) / 1e9:.1f} GB" if on_gpu else "n/a (cpu)"
    log(f"done, peak GPU memory {peak}")


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
