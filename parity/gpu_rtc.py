"""Real-time chunking on the GPU: the plain chunk graph vs the guided RTC graphs (vjp, identity) vs the
guided network run eagerly, π0.5, one process, one GPU (the device tool's H200).

    python -m parity.gpu_rtc --out docs/benchmarks/rtc-h200.json [--iters 100] [--checkpoint DIR]

No LeRobot on the device: without --checkpoint, a full-size π0.5 policy directory is written from the
tiny fixture's processor files and config (arch.json dropped, so the dims are LeRobot's: PaliGemma
gemma_2b + SigLIP so400m/14 + gemma_300m expert, 224 px, chunk 50, 10 steps, tokenizer_max_length
200) with seeded random weights (matrices N(0, 1/fan_in), vectors N(c, 0.01), as
parity/lerobot_reference.rerandomise), saved in bfloat16, one camera. Speed does not depend on the
values; the parity of the same code against LeRobot is parity/test_parity_rtc.py (CPU, fp32).

One LerobotEngine (bf16, rtc vjp) holds the plain graph and the vjp graph; the identity graph is
captured on the same buffers (engine.capture_rtc_graph). All timings: host-visible, synchronised,
after one act() with a prefix filled every buffer. Eager = the graph's own function run without the
graph (StaticGraph.fn: no_grad for vjp, inference_mode otherwise). Plus the whole act() (640x480 rgb8
camera in, joint positions out) without and with a prefix.
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

from flashrt_ros.models.rtc import Guidance, RtcSettings
from flashrt_ros.tools.bench import _pct, _sync, _time

FIXTURE = Path(__file__).resolve().parents[1] / "test" / "fixtures" / "lerobot_pi05_tiny"


def write_full_pi05(out: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    from flashrt_ros.models.lerobot.loader import build_network
    out.mkdir(parents=True, exist_ok=True)
    for f in FIXTURE.iterdir():
        if f.name not in ("arch.json", "model.safetensors"):
            shutil.copy(f, out / f.name)
    cfg = json.loads((out / "config.json").read_text())
    cams = [k for k, v in cfg["input_features"].items() if v["type"] == "VISUAL"]
    for k in cams[1:]:
        del cfg["input_features"][k]
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    with torch.device("cuda"):
        net = build_network(out, cfg)
    sd = seeded_weights(net, seed)
    del net
    save_file(sd, str(out / "model.safetensors"))
    return out


def seeded_weights(net, seed: int, unit_norms: tuple[str, ...] = ()) -> dict:
    """bf16 CPU tensors for every parameter of `net` (on the GPU): matrices N(0, 1/fan_in), vectors
    0.1 N(0, 1), norm weights around 1 (SigLIP's, and names ending in `unit_norms` that are not a
    layer_norm: SmolVLA's RMS norms)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    sd = {}
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim >= 2:
                fan_in = p.shape[-1] if name.endswith("embed.weight") else int(np.prod(p.shape[1:]))
                v = torch.randn(p.shape, generator=g, device="cuda") / fan_in ** 0.5
            else:
                v = 0.1 * torch.randn(p.shape, generator=g, device="cuda")
                if name.endswith(("layer_norm1.weight", "layer_norm2.weight", "post_layernorm.weight")):
                    v += 1.0
                if unit_norms and name.endswith(unit_norms) and "layer_norm" not in name:
                    v += 1.0
            sd[name] = v.to(torch.bfloat16).cpu()
    return sd


def no_init():
    """Skip nn.Linear / nn.Embedding's random init while a network is built for a checkpoint that
    overwrites every tensor (4 B parameters initialised on the CPU take a minute); restored after."""
    saved = torch.nn.Linear.reset_parameters, torch.nn.Embedding.reset_parameters

    class Ctx:
        def __enter__(self):
            torch.nn.Linear.reset_parameters = lambda self: None
            torch.nn.Embedding.reset_parameters = lambda self: None

        def __exit__(self, *exc):
            torch.nn.Linear.reset_parameters, torch.nn.Embedding.reset_parameters = saved
    return Ctx()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, help="an existing policy directory (default: write a full π0.5)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/flashrt-rtc"))
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--eager-iters", type=int, default=30)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--profile", type=Path, help="also write a per-op GPU time table of one eager chunk each "
                                                 "(plain, identity, vjp) here")
    args = ap.parse_args(argv)
    from flashrt_ros.engines.lerobot import LerobotEngine
    t0 = time.perf_counter()
    dev = torch.device(args.device)
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
                 "python": platform.python_version(),
                 "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "dtype": args.dtype,
                 "iters": args.iters, "eager_iters": args.eager_iters}

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")

    ckpt = args.checkpoint or write_full_pi05(args.work / "pi05_full")
    res["checkpoint"] = "full-size π0.5, seeded random weights" if args.checkpoint is None else str(ckpt)
    log(f"checkpoint {ckpt}")
    settings = {j: RtcSettings("LINEAR", execution_horizon=10, max_guidance_weight=10.0, jacobian=j)
                for j in ("identity", "vjp")}
    res["rtc"] = {"schedule": "LINEAR", "execution_horizon": 10, "max_guidance_weight": 10.0, "delay": 4,
                  "prefix_rows": 40}
    with no_init():
        engine = LerobotEngine(ckpt, device=str(dev), dtype=args.dtype, rtc=settings["identity"])
    res["params"] = sum(p.numel() for p in engine.policy.model.parameters())
    log(f"engine ready ({res['params'] / 1e9:.2f} B params), notes {engine.notes}")
    graphs = {"plain": engine.actor_graph, "identity": engine.rtc_graph}
    try:   # the vjp graph: autograd captured; a failure is reported, and the eager rows still run
        t_cap = time.perf_counter()
        graphs["vjp"] = engine.capture_rtc_graph(settings["vjp"])
        res["vjp_capture_s"] = time.perf_counter() - t_cap
        engine.rtc, engine.rtc_graph = settings["vjp"], graphs["vjp"]   # act() below: vjp
    except Exception as err:
        res["vjp_capture_error"] = f"{type(err).__name__}: {err}"
        log(f"vjp capture failed: {res['vjp_capture_error']}")
    c = engine.config
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(c.n_cameras)]
    q = rng.uniform(-0.5, 0.5, c.state_dim).astype(np.float32)
    engine.set_task("pick up the red cube")
    enc = ["rgb8"] * c.n_cameras
    base = engine.act(images, enc, q, chunk_seq=1)
    prefix = (base.positions[:40] + 0.5).astype(np.float32)
    guided = engine.act(images, enc, q, chunk_seq=1, prefix=prefix, delay=4)
    res["act_check"] = {"plain_nonfinite": base.nonfinite, "guided_nonfinite": guided.nonfinite,
                        "first4_plain_vs_prefix": float(np.abs(base.positions[:4] - prefix[:4]).mean()),
                        "first4_guided_vs_prefix": float(np.abs(guided.positions[:4] - prefix[:4]).mean())}
    log(f"act check {res['act_check']}")

    b = engine.buffers
    out = {}
    res["graph"], res["eager"] = {}, {}
    for name, g in graphs.items():
        g.replay()
        _sync(dev)
        out[name] = b["actor.actions"].clone()
        t = _time(g.replay, dev, iters=args.iters, warmup=5)
        res["graph"][name] = _pct(t)
        log(f"graph {name}: {res['graph'][name]}")
    def guidance(j):
        return Guidance(b["actor.rtc_prefix"], b["actor.rtc_weights"], 10.0, j)
    eagers = {"plain": lambda: engine._actor_fn(b), "identity": lambda: engine._actor_fn(b, guidance("identity")),
              "vjp": lambda: engine._actor_fn(b, guidance("vjp"))}
    for name, fn in eagers.items():
        def eager(fn=fn, name=name):
            with torch.no_grad() if name == "vjp" else torch.inference_mode():
                fn()
        eager()
        _sync(dev)
        if name in out:
            res.setdefault("graph_vs_eager_max_abs", {})[name] = float((b["actor.actions"] - out[name]).abs().max())
        t = _time(eager, dev, iters=args.eager_iters, warmup=2)
        res["eager"][name] = _pct(t)
        log(f"eager {name}: {res['eager'][name]}")
    if args.profile and dev.type == "cuda":
        from torch.profiler import ProfilerActivity, profile
        tables = []
        for name in ("plain", "vjp"):
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                with torch.no_grad() if name == "vjp" else torch.inference_mode():
                    eagers[name]()
                _sync(dev)
            ka = prof.key_averages()
            total = sum(e.self_device_time_total for e in ka) / 1e3
            res.setdefault("profile_gpu_ms", {})[name] = total
            tables.append(f"== eager {name}: GPU kernel time {total:.1f} ms\n"
                          + ka.table(sort_by="self_device_time_total", row_limit=25))
        args.profile.write_text("\n\n".join(tables) + "\n")
        log(f"profile: GPU kernel time per eager chunk {res['profile_gpu_ms']}")
    p50 = res["graph"]["plain"]["p50_ms"]
    p99 = res["graph"]["plain"]["p99_ms"]
    res["ratio_to_plain_graph"] = {
        f"{kind}_{name}": {"p50": res[kind][name]["p50_ms"] / p50, "p99": res[kind][name]["p99_ms"] / p99}
        for kind in ("graph", "eager") for name in res[kind]}
    if "vjp" in out:
        res["vjp_vs_identity_max_abs"] = float((out["vjp"] - out["identity"]).abs().max())
    seq = iter(range(10, 10**9))
    res["act"] = {
        "plain": _pct(_time(lambda: engine.act(images, enc, q, next(seq)), dev, iters=args.iters)),
        f"guided_{engine.rtc.jacobian}": _pct(_time(lambda: engine.act(images, enc, q, next(seq), prefix=prefix, delay=4), dev,
                                 iters=args.iters)),
    }
    log(f"act {res['act']}")
    if dev.type == "cuda":
        res["max_memory_allocated_GB"] = torch.cuda.max_memory_allocated(dev) / 1e9
    log(f"ratios {json.dumps(res['ratio_to_plain_graph'])}")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
