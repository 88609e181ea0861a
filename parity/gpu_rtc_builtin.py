"""What real-time chunking costs the built-in engine on the GPU: the plain chunk graph vs the RTC
graphs (guided identity, guided vjp, trained hard prefix), one process, one GPU, each an engine of
its own on the same preset (seeded weights: speed does not depend on the values).

    python -m parity.gpu_rtc_builtin --out rtc-builtin-h200.json [--preset pi0_like_1view] [--iters 100]

Timed: the whole act() (camera frame in, joint positions out), host-visible and synchronised, and
the graph replay alone; ratios to the plain graph of the same engine.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from flashrt_ros.engines.builtin import Engine
from flashrt_ros.models.rtc import RtcSettings
from flashrt_ros.tools.bench import _pct, _time

MODES = {"identity": ("guided", "identity"), "vjp": ("guided", "vjp"), "trained": ("trained", "identity")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="pi0_like_1view")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--delay", type=int, default=4)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
               "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__, "preset": args.preset,
               "dtype": args.dtype, "delay": args.delay, "modes": {}}
    rng = np.random.default_rng(0)
    for name, (mode, jacobian) in MODES.items():
        torch.manual_seed(0)
        eng = Engine(preset=args.preset, device=args.device, dtype=args.dtype, seed=0,
                     rtc=RtcSettings(schedule="ONES", execution_horizon=10, max_guidance_weight=10.0,
                                     jacobian=jacobian), rtc_mode=mode)
        cfg = eng.config
        eng.set_task("visit red, then blue, then green")
        images = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(cfg.n_cameras)]
        enc = ["rgb8"] * cfg.n_cameras
        q = np.zeros(cfg.state_dim, np.float32)
        prefix = rng.normal(size=(cfg.horizon - 2, cfg.action_dim)).astype(np.float32)
        eng.act(images, enc, q, 1, prefix=prefix, delay=args.delay)
        row = {"plain_graph": _pct(_time(eng.actor_graph.replay, device, args.iters)),
               "rtc_graph": _pct(_time(eng.rtc_graph.replay, device, args.iters)),
               "plain_act": _pct(_time(lambda: eng.act(images, enc, q, 1), device, args.iters)),
               "rtc_act": _pct(_time(lambda: eng.act(images, enc, q, 1, prefix=prefix, delay=args.delay), device,
                                     args.iters))}
        row["graph_ratio_p50"] = row["rtc_graph"]["p50_ms"] / row["plain_graph"]["p50_ms"]
        row["act_ratio_p50"] = row["rtc_act"]["p50_ms"] / row["plain_act"]["p50_ms"]
        results["modes"][name] = row
        print(name, json.dumps({k: (v if isinstance(v, float) else v["p50_ms"]) for k, v in row.items()}), flush=True)
        del eng
        if device.type == "cuda":
            torch.cuda.empty_cache()
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
