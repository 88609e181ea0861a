"""flashrt-ros bench-lerobot: chunk latency of a LeRobot checkpoint on flashrt_ros.

    flashrt-ros bench-lerobot DIR [--device cuda] [--dtype bfloat16] [--cameras 1,2,3] [--iters 50]

Per camera count, on the same static buffers: the whole chunk as one CUDA graph replay vs the same
network run eagerly (p50/p99), and the memory-bandwidth floor: (vision + projector + VLM weights,
read once) + num_steps x (action-expert weights) bytes / measured copy bandwidth. Plus the whole
LerobotEngine.act() (uint8 camera frames in, clamped joint positions out) at the checkpoint's own
camera count. On CPU the "graph" is the eager function: the ratio is ~1 by construction.
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
    g = torch.Generator().manual_seed(seed)
    cfg, R, L = policy.config, policy.model.image_size, policy.max_length
    tokens = torch.randint(3, 1000, (1, L), generator=g)
    mask = torch.zeros(1, L, dtype=torch.bool)
    mask[:, : max(1, L // 2)] = True
    return {
        "images": torch.rand(1, n_cameras, 3, R, R, generator=g) * 2 - 1,
        "img_masks": torch.ones(1, n_cameras, dtype=torch.bool),
        "tokens": torch.where(mask, tokens, torch.zeros_like(tokens)),
        "token_mask": mask,
        "state": torch.randn(1, int(cfg["max_state_dim"]), generator=g) * 0.5,
        "noise": torch.randn(1, policy.chunk_size, int(cfg["max_action_dim"]), generator=g),
    }


def bench_network(policy: LerobotPolicy, n_cameras: int, iters: int, bandwidth: float) -> dict:
    dev = policy.device
    b = BufferSet(dev)
    for name, t in network_inputs(policy, n_cameras).items():
        b.declare(name, tuple(t.shape), t.dtype).copy_(t)
    b.declare("actions", tuple(b["noise"].shape), torch.float32)
    net = policy.model
    names = ["images", "img_masks", "tokens", "token_mask", "state", "noise"]

    def fn(bufs):
        bufs["actions"].copy_(net(*(bufs[n] for n in names)))

    with torch.inference_mode():
        t_eager = _time(lambda: fn(b), dev, iters=max(5, iters // 4), warmup=2)
        eager_out = b["actions"].clone()
        graph = StaticGraph("bench", fn, b, reads=names, writes=["actions"]).capture()
        t_graph = _time(graph.replay, dev, iters=iters, warmup=3)
        graph_out = b["actions"].clone()
    once, per_step = net.weight_bytes()
    floor_s = (once + net.num_steps * per_step) / bandwidth
    cos = float(torch.nn.functional.cosine_similarity(graph_out.flatten().double(), eager_out.flatten().double(),
                                                      dim=0))
    return {"cameras": n_cameras, "eager": _pct(t_eager), "graph": _pct(t_graph),
            "graph_speedup_p50": float(np.median(t_eager) / np.median(t_graph)),
            "weights_once_MB": once / 1e6, "weights_per_step_MB": per_step / 1e6, "floor_ms": floor_s * 1e3,
            "graph_over_floor": float(np.median(t_graph) / floor_s), "graph_vs_eager_cos": cos,
            "graph_equals_eager": bool(torch.equal(graph_out, eager_out))}


def bench_act(checkpoint: str, device: str, dtype: str, iters: int) -> dict:
    from flashrt_ros.lerobot_engine import LerobotEngine
    engine = LerobotEngine(checkpoint, device=device, dtype=dtype)
    rng = np.random.default_rng(0)
    c = engine.config
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(c.n_cameras)]
    q = rng.uniform(-0.5, 0.5, c.state_dim).astype(np.float32)
    engine.set_task("pick up the red cube")
    seq = iter(range(10**9))
    t = _time(lambda: engine.act(images, ["rgb8"] * c.n_cameras, q, next(seq)), engine.device, iters=iters)
    return {"cameras": c.n_cameras, "camera_size": "640x480 rgb8", "act": _pct(t)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="flashrt-ros bench-lerobot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--cameras", default="1,2,3")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--no-act", action="store_true", help="skip the end-to-end act() row")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    policy = load_policy(args.checkpoint, device, args.dtype)
    bandwidth = measure_bandwidth(device)
    res = {"checkpoint": str(args.checkpoint), "kind": policy.kind, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "dtype": args.dtype, "bandwidth_GBps": bandwidth / 1e9, "network": []}
    for n in (int(x) for x in args.cameras.split(",")):
        r = bench_network(policy, n, args.iters, bandwidth)
        res["network"].append(r)
        print(f"{policy.kind} {n} cam: graph p50 {r['graph']['p50_ms']:.2f} ms p99 {r['graph']['p99_ms']:.2f} | "
              f"eager p50 {r['eager']['p50_ms']:.2f} | x{r['graph_speedup_p50']:.1f} | floor {r['floor_ms']:.2f} ms "
              f"({r['graph_over_floor']:.1f}x over)", flush=True)
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
