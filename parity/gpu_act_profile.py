"""Where the time of LerobotEngine.act() goes beside its chunk graph, on the GPU.

    python -m parity.gpu_act_profile --out $OUT/act-profile.json [--kinds pi05,pi0] [--iters 200]

The tiny fixture policies (or --full: full-size seeded ones), bf16, the engine's defaults, two 640x480
rgb8 frames. Rows: act() and the chunk graph's replay alone (p50,
synchronised); then act()'s steps run one by one as act() runs them, each timed on the host, with a
device synchronisation after each (so a step's time includes the device work it queued): the frames,
the camera graph, normalise the state, (π0.5) the prompt, the noise, their one write, the rest of the chunk
graph (its last kernels: the postprocess and the D2H copies), the collect. In act() itself the host steps
between the camera graph and the rest run while the device runs the camera graph.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "test" / "fixtures"


def profile(kind: str, iters: int, checkpoint: Path | None = None, prompt_tokens: int = 0) -> dict:
    from flashrt_ros.engines.base import action_start, check_joints
    from flashrt_ros.engines.lerobot import LerobotEngine
    from flashrt_ros.tools.bench import _pct, _time
    e = LerobotEngine(checkpoint or FIXTURES / f"lerobot_{kind}_tiny", device="cuda", dtype="bfloat16",
                      prompt_tokens=prompt_tokens)
    e.set_task("pick up the red cube")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(2)]
    enc = ["rgb8", "rgb8"]
    q = rng.uniform(-0.3, 0.3, e.config.state_dim).astype(np.float32)
    seq = iter(range(10**9))
    dev = e.device
    out = {"kind": kind, "checkpoint": "full size, seeded" if checkpoint else "tiny fixture", "notes": e.notes,
           "prompt_tokens": e.prompt_tokens,
           "act": _pct(_time(lambda: e.act(images, enc, q, next(seq)), dev, iters)),
           "replay": _pct(_time(e.actor_graph.replay, dev, iters))}
    print(json.dumps({k: out[k] for k in ("kind", "prompt_tokens", "act", "replay")}), flush=True)
    p, s = e.policy, e.actor_stream
    steps: dict[str, list[float]] = {}

    def step(name, fn):
        t = time.perf_counter()
        r = fn()
        torch.cuda.synchronize(dev)
        steps.setdefault(name, []).append(time.perf_counter() - t)
        return r

    for i in range(iters):
        qq = step("check joints", lambda: check_joints(q, p.state_dim))
        q0 = action_start(qq, None, e.config.action_dim)
        step("frames (copy, H2D, geometry)", lambda: e._write_frames(images, enc, s))
        step("camera graph (frames -> image features)", e.vision_graph.replay)
        state = step("normalise state", lambda: p.normalize_state_np(qq))
        e._state_host[0, : state.shape[0]] = state
        inputs = {"actor.state": e._state_host}
        if not e.prompt_in_channel:
            tok = step("prompt + tokenize", lambda: p.tokenize(p.prompt(e._subtask.text, state), e.prompt_tokens))
            inputs["actor.prompt"] = np.concatenate([tok[0], tok[1].astype(np.int64)])[None]
        inputs.update(step("noise", lambda: e.chunk_io.inputs(i, q0)))
        step("write inputs (one copy)", lambda: e.buffers.write_many(inputs, stream=s))
        step("chunk graph after the cameras (incl. postprocess + D2H)", e.actor_graph.graphs[-1].replay)
        step("collect", lambda: e.chunk_io.collect(s))
    out["steps_p50_ms"] = {k: float(np.median(v) * 1e3) for k, v in steps.items()}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--kinds", default="pi05,pi0")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--full", action="store_true", help="full-size seeded policies (parity.gpu_fast.write_full), "
                                                        "two cameras, instead of the tiny fixtures")
    ap.add_argument("--prompt-tokens", type=int, default=0, help="the engine's prompt_tokens (0: auto)")
    args = ap.parse_args(argv)
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": torch.cuda.get_device_name(0),
           "torch": torch.__version__, "profiles": []}
    for kind in args.kinds.split(","):
        ckpt = None
        if args.full:
            from parity.gpu_fast import write_full
            from parity.gpu_rtc import no_init
            one = write_full(kind, Path(f"/tmp/flashrt-act/{kind}/cam1"), 1)
            ckpt = write_full(kind, Path(f"/tmp/flashrt-act/{kind}/cam2"), 2, weights_from=one)
            with no_init():
                r = profile(kind, args.iters, ckpt, args.prompt_tokens)
        else:
            r = profile(kind, args.iters, prompt_tokens=args.prompt_tokens)
        res["profiles"].append(r)
        print(json.dumps(r, indent=1), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
