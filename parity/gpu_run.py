"""Full-size parity and speed against LeRobot on one GPU, in one run (the device tool's H100).

    python -m parity.gpu_run --kind pi05 --out docs/benchmarks/lerobot-h100-pi05.json [--iters 30]

1. LeRobot builds the full-size policy (seeded, every parameter re-randomised), saves the directory.
2. Reference: LeRobot float32 on the GPU (TF32 off) -> actions. LeRobot in its bf16 mode (π0/π0.5:
   `dtype: bfloat16`, which keeps vision and norms in fp32; SmolVLA has no bf16 mode) -> actions.
3. flashrt_ros loads the same directory (no LeRobot on that side) in float32 and bfloat16 -> actions.
   Errors are reported against LeRobot fp32, next to LeRobot's own bf16 error: a bf16 tolerance is
   justified by what LeRobot's own bf16 path does.
4. Speed, 1-3 cameras, same GPU, same process: LeRobot `predict_action_chunk` (eager, its preferred
   dtype) vs flashrt_ros (one CUDA graph per chunk, bf16; and eager) p50/p99, and the weight-bandwidth
   floor; plus flashrt_ros' whole LerobotEngine.act() on 640x480 uint8 frames.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from flashrt_ros.models.lerobot import load_policy
from flashrt_ros.tools.bench import measure_bandwidth
from flashrt_ros.tools.bench_lerobot import bench_act, bench_network
from parity.gpu_fast import free
from parity.lerobot_reference import (CAMERAS, attach_feed, build, load, make_inputs, prepare_batch, run, save,
                                      timing)
from parity.make_fixture import write_tokenizer

EXTRA_CAMERA = "observation.images.right_wrist_0_rgb"


def errors(x: torch.Tensor, ref: torch.Tensor) -> dict:
    x, ref = x.double().cpu(), ref.double().cpu()
    return {"max_abs": float((x - ref).abs().max()), "mean_abs": float((x - ref).abs().mean()),
            "ref_max_abs": float(ref.abs().max()),
            "cos": float(torch.nn.functional.cosine_similarity(x.flatten(), ref.flatten(), dim=0))}


def images(inputs: dict) -> list[torch.Tensor]:
    return [inputs[f"image.{i}"] for i in range(sum(k.startswith("image.") for k in inputs))]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("pi0", "pi05", "smolvla"), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/flashrt-gpu-run"))
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--cameras", default="1,2,3")
    ap.add_argument("--size", default="full", choices=("tiny", "full"), help="tiny: a quick check of this script")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compile", action="store_true", help="also the opt-in compiled layers (π0/π0.5)")
    args = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    kind, t_start = args.kind, time.perf_counter()
    dev = args.device
    res: dict = {"kind": kind, "size": args.size,
                 "device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu", "torch": torch.__version__,
                 "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"), "iters": args.iters}

    def log(msg):  # every phase leaves its numbers on disk: a later crash loses nothing
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")

    # 1-2. LeRobot: build, save, reference in fp32
    built = build(kind, args.size, seed=0, device=dev, dtype="float32")
    res["params"] = sum(p.numel() for p in built[0].parameters())
    out = save(*built, args.work / kind)
    write_tokenizer(out, json.loads((out / "arch.json").read_text()).get("vlm", {}).get("vocab_size", 49280))
    inputs = make_inputs(kind, out, seed=0)
    ref32, strings = run(built[0], built[1], built[2], attach_feed(built[1]), inputs)
    log(f"LeRobot fp32 reference done ({res['params'] / 1e9:.2f} B params)")
    del built
    free()
    # flashrt fp32 (same directory)
    ours = load_policy(out, dev, "float32")
    a32 = ours.predict(images(inputs), inputs["state"], inputs["tokens"], inputs["token_mask"], inputs["noise"])
    res["parity"] = {"flashrt_fp32_vs_lerobot_fp32": errors(a32, ref32["actions"])}
    log(f"flashrt fp32 vs LeRobot fp32: {res['parity']['flashrt_fp32_vs_lerobot_fp32']}")
    del ours
    free()

    # LeRobot in its own reduced-precision mode (π0/π0.5 only), and its timing
    lerobot_dtype = "bfloat16" if kind != "smolvla" else "float32"
    loaded = load(kind, out, device=dev, dtype=lerobot_dtype if kind != "smolvla" else None)
    if kind != "smolvla":
        ref16, _ = run(loaded.policy, loaded.preprocessor, loaded.postprocessor, loaded.feed, inputs)
        res["parity"]["lerobot_bf16_vs_lerobot_fp32"] = errors(ref16["actions"], ref32["actions"])
        log(f"LeRobot bf16 vs fp32: {res['parity']['lerobot_bf16_vs_lerobot_fp32']}")
    res["lerobot_dtype"] = lerobot_dtype
    cams = [int(c) for c in args.cameras.split(",")]
    keys = [*CAMERAS, EXTRA_CAMERA]
    res["lerobot"] = []
    for n in cams:
        cam_inputs = dict(inputs)
        for i in range(n):
            cam_inputs.setdefault(f"image.{i}", inputs["image.0"].roll(i, dims=-1))
        for i in range(n, 3):
            cam_inputs.pop(f"image.{i}", None)
        cfg = loaded.policy.config
        visual = {k: v for k, v in cfg.input_features.items() if k.startswith("observation.images.")}
        proto = next(iter(visual.values()))
        cfg.input_features = {**{k: proto for k in keys[:n]},
                              **{k: v for k, v in cfg.input_features.items() if k not in visual}}
        r = int(inputs["token_mask"].sum(1).argmax())   # SmolVLA pads to the longest row: time a full one
        one = {k: v[r:r + 1] for k, v in cam_inputs.items()}
        batch = prepare_batch(loaded.preprocessor, loaded.feed, one, keys[:n])
        t = timing(loaded.policy, batch, one["noise"], iters=args.iters)
        res["lerobot"].append({"cameras": n, **t})
        log(f"LeRobot {lerobot_dtype} eager, {n} cam: p50 {t['p50_ms']:.1f} ms p99 {t['p99_ms']:.1f} ms")
    del loaded
    free()

    # flashrt bf16: parity, then speed
    ours = load_policy(out, dev, "bfloat16")
    a16 = ours.predict(images(inputs), inputs["state"], inputs["tokens"], inputs["token_mask"], inputs["noise"])
    res["parity"]["flashrt_bf16_vs_lerobot_fp32"] = errors(a16, ref32["actions"])
    if kind != "smolvla":
        res["parity"]["flashrt_bf16_vs_lerobot_bf16"] = errors(a16, ref16["actions"])
    log(f"flashrt bf16 vs LeRobot fp32: {res['parity']['flashrt_bf16_vs_lerobot_fp32']}")
    bandwidth = measure_bandwidth(torch.device(dev))
    res["bandwidth_GBps"] = bandwidth / 1e9
    res["flashrt"] = []
    for n in cams:
        r = bench_network(ours, n, args.iters, bandwidth)
        res["flashrt"].append(r)
        log(f"flashrt bf16 graph, {n} cam: p50 {r['graph']['p50_ms']:.2f} p99 {r['graph']['p99_ms']:.2f} ms, "
            f"eager p50 {r['eager']['p50_ms']:.1f} ms, floor {r['floor_ms']:.2f} ms")
    if args.compile:
        res["flashrt_compiled"] = []
        for n in cams:
            r = bench_network(ours, n, args.iters, bandwidth, compiled=True)
            res["flashrt_compiled"].append(r)
            log(f"flashrt bf16 compiled graph, {n} cam: p50 {r['graph']['p50_ms']:.2f} p99 {r['graph']['p99_ms']:.2f} "
                f"ms, cos vs plain {r['graph_vs_eager_cos']:.7f}, compiled in {r['compile_s']:.1f} s")
    del ours
    free()
    res["flashrt_act"] = bench_act(str(out), dev, "bfloat16", args.iters)
    log(f"flashrt act() {res['flashrt_act']}")
    if args.compile:
        res["flashrt_act_compiled"] = bench_act(str(out), dev, "bfloat16", args.iters, compiled=True)
        log(f"flashrt act() compiled {res['flashrt_act_compiled']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
