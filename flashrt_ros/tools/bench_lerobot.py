"""flashrt-ros bench-lerobot: chunk latency of a LeRobot checkpoint on flashrt_ros.

    flashrt-ros bench-lerobot DIR [--device cuda] [--dtype bfloat16] [--cameras 1,2,3] [--iters 50] [--compile]

Per camera count, on the same static buffers: the whole chunk as one CUDA graph replay vs the same
network run eagerly (p50/p99), and the memory-bandwidth floor: (vision + projector + VLM weights,
read once) + num_steps x (action-expert weights) bytes / measured copy bandwidth. Plus the whole
LerobotEngine.act() (uint8 camera frames in, clamped joint positions out) at the checkpoint's own
camera count. On CPU the "graph" is the eager function: the ratio is ~1 by construction.

--compile (π0/π0.5): the fast path: the network's layers torch.compile'd (Pi0.compile_layers; on a GPU
with the Triton row attention) before the eager timing and the capture, so "eager" is the compiled network without a graph; graph_vs_eager_* then
compare the compiled graph with the plain, uncompiled eager output (the fast path's equivalence gate:
cosine >= 0.9999 in bf16), graph_equals_compiled_eager checks the capture itself, and compile_s is
the first compiled forward (compilation included). The act() row stays uncompiled (its engine loads
its own network).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from flashrt_ros.models.lerobot import LerobotPolicy, load_policy
from flashrt_ros.runtime import BufferSet, StaticGraph, resolve_device
from flashrt_ros.tools.bench import _pct, _sync, _time, measure_bandwidth


def network_inputs(policy: LerobotPolicy, n_cameras: int, seed: int = 0) -> dict[str, torch.Tensor]:
    return policy.probe_inputs(n_cameras, seed)


def bench_network(policy: LerobotPolicy, n_cameras: int, iters: int, bandwidth: float,
                  compiled: bool = False, plain_graph: bool = False) -> dict:
    dev = policy.device
    b = BufferSet(dev)
    for name, t in network_inputs(policy, n_cameras).items():
        b.declare(name, tuple(t.shape), t.dtype).copy_(t)
    b.declare("actions", tuple(b["noise"].shape), torch.float32)
    net = policy.model
    names = ["images", "img_masks", "tokens", "token_mask", "state", "noise"]
    if compiled and not hasattr(net, "compile_layers"):
        raise ValueError(f"--compile: the {policy.kind} network has no compiled path (π0/π0.5 only)")

    def fn(bufs):
        bufs["actions"].copy_(net(*(bufs[n] for n in names)))

    extra = {}
    with torch.inference_mode():
        if compiled:
            net.compile_layers(False)
            fn(b)
            plain_out = b["actions"].clone()   # the plain path: what the compiled one must equal
            if plain_graph:
                g = StaticGraph("bench_plain", fn, b, reads=names, writes=["actions"]).capture()
                extra["plain_graph"] = _pct(_time(g.replay, dev, iters=iters, warmup=3))
                del g
            net.compile_layers(kernels=dev.type == "cuda")   # the fast path: + the Triton attention kernel
            extra["compile_s"] = float(_time(lambda: fn(b), dev, iters=1, warmup=0)[0])
        t_eager = _time(lambda: fn(b), dev, iters=max(5, iters // 4), warmup=2)
        eager_out = b["actions"].clone()
        graph = StaticGraph("bench", fn, b, reads=names, writes=["actions"]).capture()
        t_graph = _time(graph.replay, dev, iters=iters, warmup=3)
        graph_out = b["actions"].clone()
    reference = plain_out if compiled else eager_out
    if compiled:
        extra["graph_equals_compiled_eager"] = bool(torch.equal(graph_out, eager_out))
    once, per_step = net.weight_bytes()
    floor_s = (once + net.num_steps * per_step) / bandwidth
    cos = float(torch.nn.functional.cosine_similarity(graph_out.flatten().double(), reference.flatten().double(),
                                                      dim=0))
    return {"cameras": n_cameras, "compiled": compiled, **extra, "eager": _pct(t_eager), "graph": _pct(t_graph),
            "graph_speedup_p50": float(np.median(t_eager) / np.median(t_graph)),
            "weights_once_MB": once / 1e6, "weights_per_step_MB": per_step / 1e6, "floor_ms": floor_s * 1e3,
            "graph_over_floor": float(np.median(t_graph) / floor_s), "graph_vs_eager_cos": cos,
            "graph_vs_eager_max_abs": float((graph_out - reference).abs().max()),
            "graph_equals_eager": bool(torch.equal(graph_out, reference))}


def bench_act(checkpoint: str, device: str, dtype: str, iters: int, compiled: bool | None = False,
              weights: str = "bf16") -> dict:
    """The whole act() (uint8 640x480 frames in, joint positions out) and, on the same engine, its chunk
    graph's replay alone, so act() - chunk is the cost around the graph."""
    from flashrt_ros.engines.lerobot import LerobotEngine
    engine = LerobotEngine(checkpoint, device=device, dtype=dtype, compile_actor=compiled, weights=weights)
    rng = np.random.default_rng(0)
    c = engine.config
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(c.n_cameras)]
    q = rng.uniform(-0.5, 0.5, c.state_dim).astype(np.float32)
    engine.set_task("pick up the red cube")
    seq = iter(range(10**9))
    t = _time(lambda: engine.act(images, ["rgb8"] * c.n_cameras, q, next(seq)), engine.device, iters=iters)
    t_chunk = _time(engine.actor_graph.replay, engine.device, iters=iters)
    allocs = None
    if engine.device.type == "cuda":
        before = torch.cuda.memory_stats(engine.device)["allocation.all.allocated"]
        for _ in range(20):
            engine.act(images, ["rgb8"] * c.n_cameras, q, next(seq))
        allocs = torch.cuda.memory_stats(engine.device)["allocation.all.allocated"] - before
    return {"cameras": c.n_cameras, "camera_size": "640x480 rgb8", "compiled": compiled, "weights": weights,
            "notes": engine.notes, "gates": engine.gates, "act": _pct(t), "chunk_graph": _pct(t_chunk),
            "act_minus_chunk_p50_ms": float(np.median(t) - np.median(t_chunk)) * 1e3,
            "device_allocations_in_20_acts": allocs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="flashrt-ros bench-lerobot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--cameras", default="1,2,3")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the network's layers before capture (π0/π0.5; see above)")
    ap.add_argument("--no-act", action="store_true", help="skip the end-to-end act() row")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    policy = load_policy(args.checkpoint, device, args.dtype)
    bandwidth = measure_bandwidth(device)
    res = {"checkpoint": str(args.checkpoint), "kind": policy.kind, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "dtype": args.dtype, "compile": args.compile, "bandwidth_GBps": bandwidth / 1e9, "network": []}
    for n in (int(x) for x in args.cameras.split(",")):
        r = bench_network(policy, n, args.iters, bandwidth, compiled=args.compile)
        res["network"].append(r)
        note = f" | compiled in {r['compile_s']:.1f} s" if args.compile else ""
        print(f"{policy.kind} {n} cam: graph p50 {r['graph']['p50_ms']:.2f} ms p99 {r['graph']['p99_ms']:.2f} | "
              f"eager p50 {r['eager']['p50_ms']:.2f} | x{r['graph_speedup_p50']:.1f} | floor {r['floor_ms']:.2f} ms "
              f"({r['graph_over_floor']:.1f}x over) | cos vs eager {r['graph_vs_eager_cos']:.6f}{note}", flush=True)
    del policy
    _sync(device)
    if not args.no_act:
        res["act"] = bench_act(args.checkpoint, str(device), args.dtype, args.iters)
        print(f"act() {res['act']['cameras']} cam 640x480: p50 {res['act']['act']['p50_ms']:.2f} ms "
              f"p99 {res['act']['act']['p99_ms']:.2f} ms", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
