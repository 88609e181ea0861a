"""flashrt-ros bench: side-by-side timings of the mechanism, on whatever device this machine has.

    flashrt-ros bench [--presets reference,pi0_like] [--device auto] [--out docs/benchmarks]

Rows (compare within a row only; every row names device, date and command):
  1. actor chunk latency: CUDA-graph replay vs eager PyTorch of the same model on the same
     buffers (p50/p99), the whole act() (preprocess + H2D + replay + postprocess + D2H), and the
     memory-bandwidth floor: (encoder weights + K x expert weights) bytes / measured bandwidth;
     allocations during 100 act() calls.
  2. actor latency alone vs with the planner running: naive (planner graph on a low-priority
     stream from its own thread) vs the MultiRateScheduler (planner cut into pieces).
  3. subtask hand-off commit, capsule snapshot/restore of 1 MB and 100 MB.
On CPU the "graph" is the same function run eagerly: the ratio there is ~1 by construction.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from flashrt_ros.engines.builtin import Engine
from flashrt_ros.runtime import BufferSet, CapsuleStore, MultiRateScheduler, Task


# --- timing helpers ------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, iters: int, warmup: int = 5) -> np.ndarray:
    """Host-visible seconds per call (synchronised), the latency a robot sees."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out[i] = time.perf_counter() - t0
    return out


def _pct(a) -> dict:
    a = np.asarray(a, dtype=np.float64) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "n": int(a.size)}


def measure_bandwidth(device) -> float:
    """Bytes/s of a large copy, counting bytes read plus bytes written."""
    n = (1 << 30) if device.type == "cuda" else (1 << 27)
    src = torch.empty(n, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    t = _time(lambda: dst.copy_(src), device, iters=10 if device.type == "cuda" else 5, warmup=2)
    return 2 * n / float(np.median(t))


# --- 1. actor latency ----------------------------------------------------------------------------
def _inputs(engine: Engine, rng: np.random.Generator):
    c = engine.config
    images = [rng.integers(0, 256, (c.image_size, c.image_size, 3), dtype=np.uint8) for _ in range(c.n_cameras)]
    return images, ["rgb8"] * c.n_cameras, rng.uniform(0.2, 0.8, c.state_dim).astype(np.float32)


def weight_floor_bytes(engine: Engine) -> tuple[int, int, int]:
    """(bytes read once per chunk, bytes read per denoise step, K). Cross-attention K/V
    projections of the prefix run once per chunk (condition cache), the rest of the expert per step."""
    once = per_step = 0
    for name, p in engine.actor.named_parameters():
        nbytes = p.numel() * p.element_size()
        expert = name.startswith(("expert_blocks", "action_in", "action_out", "action_position", "time_embedding",
                                  "expert_norm", "state_to_expert"))
        if expert and "cross_attention.key_value" not in name and "state_to_expert" not in name:
            per_step += nbytes
        else:
            once += nbytes
    return once, per_step, engine.config.num_steps


def bench_actor(engine: Engine, iters: int, bandwidth: float) -> dict:
    rng = np.random.default_rng(0)
    images, enc, q = _inputs(engine, rng)
    dev = engine.device
    engine.coach(engine.config.subtasks[0], source="operator")
    engine.act(images, enc, q)  # inputs into the buffers

    def graph():
        engine.actor_graph.replay()

    def eager():
        with torch.inference_mode(), (torch.cuda.stream(engine.actor_stream) if engine.actor_stream else _Null()):
            engine._actor_fn(engine.buffers)

    t_graph = _time(graph, dev, iters)
    t_eager = _time(eager, dev, iters)
    t_act = _time(lambda: engine.act(images, enc, q, chunk_seq=1), dev, iters)
    allocs = None
    if dev.type == "cuda":
        before = torch.cuda.memory_stats(dev)["allocation.all.allocated"]
        for i in range(100):
            engine.act(images, enc, q, chunk_seq=i)
        allocs = torch.cuda.memory_stats(dev)["allocation.all.allocated"] - before
    # equivalence gate: the graph computes what eager computes
    engine.act(images, enc, q, chunk_seq=3)
    graph_out = engine.buffers.read("actor.actions")
    eager()
    _sync(dev)
    eager_out = engine.buffers.read("actor.actions")
    cos = float(np.dot(graph_out.ravel(), eager_out.ravel()) /
                (np.linalg.norm(graph_out) * np.linalg.norm(eager_out) + 1e-30))
    once, per_step, k = weight_floor_bytes(engine)
    floor_s = (once + k * per_step) / bandwidth
    params = sum(p.numel() for p in engine.actor.parameters())
    expert = sum(p.numel() for n, p in engine.actor.named_parameters() if n.startswith("expert_blocks"))
    return {
        "graph": _pct(t_graph), "eager": _pct(t_eager), "act_end_to_end": _pct(t_act),
        "graph_speedup_p50": float(np.median(t_eager) / np.median(t_graph)),
        "graph_vs_eager_cosine": cos, "graph_vs_eager_max_abs": float(np.abs(graph_out - eager_out).max()),
        "floor_ms": floor_s * 1e3, "graph_over_floor": float(np.median(t_graph) / floor_s),
        "actor_params_M": params / 1e6, "expert_block_params_M": expert / 1e6,
        "weight_bytes_once_MB": once / 1e6, "weight_bytes_per_step_MB": per_step / 1e6, "K": k,
        "allocations_in_100_act_calls": allocs,
    }


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


# --- 2. actor with the planner running -----------------------------------------------------------
def actor_replay(engine, lat: list) -> None:
    """One actor chunk graph replay, synchronised: its latency (s) appended to `lat`."""
    t0 = time.perf_counter()
    engine.actor_graph.replay()
    engine.actor_graph.synchronize()
    lat.append(time.perf_counter() - t0)


def beside(fn, period: float, run) -> None:
    """`run()` while another thread calls `fn([])` every `period` seconds (0: back to back)."""
    stop = threading.Event()
    th = threading.Thread(target=periodic, args=(fn, [], period, float("inf")), kwargs={"until": stop.is_set})
    th.start()
    try:
        run()
    finally:
        stop.set()
        th.join()


def periodic(fn, lat: list, period: float, stop_at: float, until=lambda: False) -> None:
    """`fn(lat)` every `period` seconds (on a fixed grid) until `stop_at` or `until()`."""
    nxt = time.perf_counter()
    while nxt < stop_at and not until():
        fn(lat)
        nxt += period
        time.sleep(max(0.0, nxt - time.perf_counter()))


def bench_interference(engine: Engine, seconds: float, actor_hz: float, planner_hz: float,
                       green_sms: int = 96) -> dict:
    rng = np.random.default_rng(1)
    images, enc, q = _inputs(engine, rng)
    engine.set_task(_any_task(engine))
    dev = engine.device
    engine.act(images, enc, q)
    period = 1.0 / actor_hz

    def actor_once(lat):
        actor_replay(engine, lat)

    def periodic_actor(lat, stop_at):
        periodic(actor_once, lat, period, stop_at)

    # planner cost on its own (all pieces back to back)
    def planner_all():
        for g in engine.planner_graphs:
            g.replay()
        engine.planner_graphs[-1].synchronize()
    t_planner = _time(planner_all, dev, 20, warmup=3)

    alone: list[float] = []
    periodic_actor(alone, time.perf_counter() + seconds)

    def naive(planner_period, stream=None):
        def planner_once(_):
            for g in engine.planner_graphs:  # whole planner enqueued at once
                g.replay(stream)
            (stream.synchronize() if stream is not None else engine.planner_graphs[-1].synchronize())
        lat: list[float] = []
        beside(planner_once, planner_period, lambda: periodic_actor(lat, time.perf_counter() + seconds))
        return lat

    naive_rate = naive(1.0 / planner_hz)
    naive_busy = naive(0.0)  # planner back to back: the worst case
    green = {}
    if dev.type == "cuda":  # SM partitioning: the planner confined to part of the GPU
        stream, note = _green_stream(dev, green_sms)
        green = {"planner_sms": green_sms, "note": note}
        if stream is not None:
            try:
                green["actor_with_planner_green_back_to_back"] = _pct(naive(0.0, stream))
            except Exception as exc:  # beta API: record what happened instead of hiding it
                green["note"] = f"replay on the green-context stream failed: {type(exc).__name__}: {exc}"

    sched_lat: list[float] = []
    planner_runs = []
    pieces = engine.planner_pieces(lambda: (images, enc), planner_runs.append)
    sched = MultiRateScheduler([
        Task("actor", [lambda: actor_once(sched_lat)], period=period, deadline=period),
        Task("planner", pieces, period=1.0 / planner_hz, deadline=1.0 / planner_hz),
    ])
    sched.start()
    time.sleep(seconds)
    sched.stop()
    s = sched.summary()
    alone_p99 = _pct(alone)["p99_ms"]
    return {
        "actor_hz": actor_hz, "planner_hz": planner_hz, "planner_pieces": len(engine.planner_graphs),
        "planner_alone": _pct(t_planner),
        "actor_alone": _pct(alone),
        "actor_with_planner_naive": _pct(naive_rate),
        "actor_with_planner_naive_back_to_back": _pct(naive_busy),
        "actor_with_planner_scheduler": _pct(sched_lat),
        "scheduler_actor_release_to_done": {k: s["actor"][k] for k in ("latency_p50_s", "latency_p99_s",
                                                                       "deadline_misses", "completed", "rate_hz")},
        "scheduler_planner": {k: s["planner"][k] for k in ("completed", "rate_hz", "deadline_misses", "faults")},
        "p99_ratio_naive": _pct(naive_rate)["p99_ms"] / alone_p99,
        "p99_ratio_naive_back_to_back": _pct(naive_busy)["p99_ms"] / alone_p99,
        "p99_ratio_scheduler": _pct(sched_lat)["p99_ms"] / alone_p99,
        "green_context": green,
    }


def _green_stream(device, num_sms: int):
    """A stream whose kernels run on `num_sms` SMs only (CUDA green context), or (None, why not)."""
    try:
        from torch.cuda.green_contexts import GreenContext
        ctx = GreenContext.create(num_sms=num_sms, device_id=device.index or 0)
    except Exception as exc:
        return None, f"GreenContext.create failed: {type(exc).__name__}: {exc}"
    if not hasattr(ctx, "Stream"):
        return None, f"torch {torch.__version__}: GreenContext has no Stream()"
    _green_stream.keep = ctx  # the context must outlive its stream
    return ctx.Stream(), f"planner on a {num_sms}-SM green context"



def _any_task(engine: Engine) -> str:
    words = [w for w in engine.config.vocabulary if w not in ("visit", "then", "go", "to", "done")][:3]
    return "visit " + ", then ".join(words)


# --- 3. hand-off and capsules --------------------------------------------------------------------
def _gate_chunk(engine: Engine) -> np.ndarray:
    """Normalised actions for fixed inputs (same on every engine of one preset and seed)."""
    images, enc, q = _inputs(engine, np.random.default_rng(42))
    engine.coach(engine.config.subtasks[0], source="operator")
    engine.act(images, enc, q, chunk_seq=11)
    return engine.buffers.read("actor.actions").astype(np.float64)


def bench_state(engine: Engine, iters: int) -> dict:
    dev = engine.device
    text = engine.config.subtasks[0]
    out = {"coach_commit": _pct(_time(lambda: engine.coach(text, "operator"), dev, iters))}
    for mb in (1, 100):
        bufs = BufferSet(dev)
        bufs.declare("state", (mb * (1 << 20) // 4,), torch.float32)
        bufs["state"].normal_()
        store = CapsuleStore(bufs)
        store.snapshot("s")
        n = iters if mb == 1 else max(10, iters // 10)
        out[f"capsule_{mb}MB_snapshot"] = _pct(_time(lambda: store.snapshot("s"), dev, n))
        out[f"capsule_{mb}MB_restore"] = _pct(_time(lambda: store.restore("s"), dev, n))
        bufs["state"].zero_()
        store.restore("s")
        _sync(dev)
        out[f"capsule_{mb}MB_restore_byte_exact"] = store.matches("s")
    return out


# --- report --------------------------------------------------------------------------------------
def machine(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads, torch {torch.__version__}"


def to_markdown(res: dict) -> str:
    m = [f"# flashrt-ros bench — {res['machine']}", "",
         f"- date: {res['date']}", f"- command: `{res['command']}`",
         f"- measured copy bandwidth (read+write): {res['bandwidth_GBps']:.0f} GB/s", ""]
    m += ["## Actor chunk latency (ms; compare within a row)", "",
          "| preset | dtype | params (M) | graph p50 / p99 | eager p50 / p99 | graph speed-up | act() p50 / p99 "
          "| bandwidth floor | graph / floor | graph≡eager cos | allocs in 100 act() |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["presets"].items():
        a = r["actor"]
        m.append(f"| {name} | {r['dtype']} | {a['actor_params_M']:.1f} | {a['graph']['p50_ms']:.3f} / "
                 f"{a['graph']['p99_ms']:.3f} | {a['eager']['p50_ms']:.3f} / {a['eager']['p99_ms']:.3f} | "
                 f"{a['graph_speedup_p50']:.2f}x | {a['act_end_to_end']['p50_ms']:.3f} / "
                 f"{a['act_end_to_end']['p99_ms']:.3f} | {a['floor_ms']:.3f} | {a['graph_over_floor']:.2f}x | "
                 f"{a['graph_vs_eager_cosine']:.6f} | {a['allocations_in_100_act_calls']} |")
        if "cosine_vs_plain" in a:
            m.append(f"| ↳ gate: {name} vs plain graph | | | | | | | | | cos {a['cosine_vs_plain']:.6f}, "
                     f"max abs {a['max_abs_vs_plain']:.2e} | |")
    m += ["", "## Actor latency with the planner running (ms)", "",
          "| preset | actor Hz / planner Hz | planner alone p50 | pieces | actor alone p50 / p99 | naive p50 / p99 "
          "(x alone p99) | naive, planner back-to-back p50 / p99 (x) | scheduler p50 / p99 (x) | scheduler misses |",
          "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["presets"].items():
        i = r.get("interference")
        if not i:
            continue
        f = lambda k: f"{i[k]['p50_ms']:.3f} / {i[k]['p99_ms']:.3f}"  # noqa: E731
        m.append(f"| {name} | {i['actor_hz']:g} / {i['planner_hz']:g} | {i['planner_alone']['p50_ms']:.2f} | "
                 f"{i['planner_pieces']} | {f('actor_alone')} | {f('actor_with_planner_naive')} "
                 f"({i['p99_ratio_naive']:.1f}x) | {f('actor_with_planner_naive_back_to_back')} "
                 f"({i['p99_ratio_naive_back_to_back']:.1f}x) | {f('actor_with_planner_scheduler')} "
                 f"({i['p99_ratio_scheduler']:.1f}x) | {i['scheduler_actor_release_to_done']['deadline_misses']} |")
    m += ["", "## Hand-off and capsules (ms)", "", "| preset | coach commit p50 / p99 | 1 MB snapshot / restore p50 "
          "| 100 MB snapshot / restore p50 | restore byte-exact |", "|---|---|---|---|---|"]
    for name, r in res["presets"].items():
        s = r.get("state")
        if not s:
            continue
        m.append(f"| {name} | {s['coach_commit']['p50_ms']:.3f} / {s['coach_commit']['p99_ms']:.3f} | "
                 f"{s['capsule_1MB_snapshot']['p50_ms']:.3f} / {s['capsule_1MB_restore']['p50_ms']:.3f} | "
                 f"{s['capsule_100MB_snapshot']['p50_ms']:.3f} / {s['capsule_100MB_restore']['p50_ms']:.3f} | "
                 f"{s['capsule_1MB_restore_byte_exact'] and s['capsule_100MB_restore_byte_exact']} |")
    for name, r in res["presets"].items():
        g = (r.get("interference") or {}).get("green_context") or {}
        if g:
            row = g.get("actor_with_planner_green_back_to_back")
            got = f"actor p50 / p99 {row['p50_ms']:.3f} / {row['p99_ms']:.3f} ms" if row else "not measured"
            m.append(f"\n- {name}, SM partition ({g['note']}): {got}")
    return "\n".join(m) + "\n"


def write_results(out: Path, stem: str, res: dict, md: str) -> None:
    """<stem>.json and <stem>.md under `out` (created); the markdown is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / f"{stem}.md").write_text(md)
    print(md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="flashrt-ros bench", description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="reference,pi0_like")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each interference run")
    ap.add_argument("--actor-hz", type=float, default=50.0)
    ap.add_argument("--planner-hz", type=float, default=5.0)
    ap.add_argument("--planner-pieces", type=int, default=0, help="0: one piece per planner block + 1")
    ap.add_argument("--interference-presets", default="all", help="presets to run the interference rows for")
    ap.add_argument("--compile-presets", default="", help="presets to also time with torch.compile before capture")
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    args = ap.parse_args(argv)
    from flashrt_ros.runtime import resolve_device
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    bandwidth = measure_bandwidth(device)
    res = {"machine": machine(device), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "flashrt-ros bench " + " ".join(argv if argv is not None else sys.argv[1:]),
           "bandwidth_GBps": bandwidth / 1e9, "presets": {}}
    from flashrt_ros.models.config import ModelConfig
    interfere = args.interference_presets.split(",")
    for preset in [p for p in args.presets.split(",") if p]:
        dtype = "bfloat16" if device.type == "cuda" and preset != "reference" else "float32"
        cfg = ModelConfig.from_name(preset)
        pieces = args.planner_pieces or cfg.planner_layers + 1
        variants = [False] + ([True] if preset in args.compile_presets.split(",") else [])
        plain_chunk = None
        for compiled in variants:
            name = preset + ("+compile" if compiled else "")
            t0 = time.perf_counter()
            engine = Engine(preset=preset, device=str(device), dtype=dtype, planner_pieces=pieces,
                            compile_actor=compiled)
            setup_s = time.perf_counter() - t0
            print(f"[bench] {name}: built + captured in {setup_s:.1f} s", flush=True)
            r = {"dtype": dtype, "setup_s": setup_s, "actor": bench_actor(engine, args.iters, bandwidth)}
            print(f"[bench] {name}: actor {json.dumps(r['actor']['graph'])}", flush=True)
            chunk = _gate_chunk(engine)
            if plain_chunk is None:
                plain_chunk = chunk
            else:  # equivalence gate of the fast path against the plain graph path
                r["actor"]["cosine_vs_plain"] = float(np.dot(chunk.ravel(), plain_chunk.ravel()) / (
                    np.linalg.norm(chunk) * np.linalg.norm(plain_chunk) + 1e-30))
                r["actor"]["max_abs_vs_plain"] = float(np.abs(chunk - plain_chunk).max())
            if not compiled and ("all" in interfere or preset in interfere):
                r["interference"] = bench_interference(engine, args.seconds, args.actor_hz, args.planner_hz)
            if not compiled:
                r["state"] = bench_state(engine, args.iters)
            res["presets"][name] = r
            del engine
            if device.type == "cuda":
                torch.cuda.empty_cache()
    write_results(Path(args.out), f"bench-{args.tag or device.type}", res, to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
