"""flashrt-ros bench-critic: the actor's latency alone and with the value critic beside it.

    flashrt-ros bench-critic --preset pi0_like_1view --critic critic_100m --actor-hz 50 --critic-hz 10   # a GPU
    flashrt-ros bench-critic --preset reference --critic reference --actor-hz 10 --critic-hz 2 --device cpu

One engine and one critic graph over its buffers (engines/critic.py), as the host builds them. The
actor replays its graph every 1/actor_hz (replay + synchronise: the latency a robot sees), for
`--seconds`, in three set-ups, compared as ratios in one run:
  alone       the actor only;
  naive       the critic from its own thread at critic_hz on its own (low-priority) stream, no
              scheduling: what a second graph costs when nothing keeps them apart;
  scheduler   the host's way: actor and critic as MultiRateScheduler tasks on one dispatcher
              thread, earliest deadline first; a critic piece starts only when it cannot push the
              actor past its deadline (runtime/scheduler.py).
`--critic` is a preset of models/critic.py (seeded weights, e.g. critic_100m beside the π0-like
actor) or 'reference' / a critic directory (trained weights). Writes JSON and a markdown table.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import torch

from flashrt_ros.engines.builtin import Engine
from flashrt_ros.engines.critic import CriticGraph
from flashrt_ros.models.critic import CRITIC_PRESETS, REFERENCE_CRITIC, load_critic, parameter_count, seeded_critic
from flashrt_ros.runtime import MultiRateScheduler, Task, resolve_device

from .bench import _any_task, _inputs, _pct, _time, actor_replay, beside, machine, periodic, write_results


def _critic(name: str):
    if name in CRITIC_PRESETS and name != "reference_critic":
        return seeded_critic(name)
    return load_critic(REFERENCE_CRITIC if name == "reference" else Path(name))


def bench_critic(engine: Engine, critic: CriticGraph, seconds: float, actor_hz: float, critic_hz: float,
                 repeats: int = 1) -> dict:
    rng = np.random.default_rng(2)
    images, enc, q = _inputs(engine, rng)
    engine.set_task(_any_task(engine))
    engine.coach(engine.config.subtasks[0], source="operator")
    engine.act(images, enc, q)          # the observation buffers the critic reads
    dev = engine.device
    period = 1.0 / actor_hz

    def actor_once(lat):
        actor_replay(engine, lat)

    def periodic_actor(lat, stop_at):
        periodic(actor_once, lat, period, stop_at)

    values = []
    t_critic = _time(lambda: values.append(critic.evaluate(1.0)), dev, 30, warmup=3)
    t_actor = _time(lambda: actor_once([]), dev, 30, warmup=3)

    def naive_row(lat):
        beside(lambda _: critic.evaluate(1.0), 1.0 / critic_hz,
               lambda: periodic_actor(lat, time.perf_counter() + seconds))

    def scheduler_row(lat, readings):
        sched = MultiRateScheduler([
            Task("actor", [lambda: actor_once(lat)], period=period, deadline=period),
            Task("critic", [lambda: readings.append(critic.evaluate(1.0))], period=1.0 / critic_hz,
                 deadline=1.0 / critic_hz),
        ])
        sched.start()
        time.sleep(seconds)
        sched.stop()
        return sched.summary()

    alone: list[float] = []
    naive: list[float] = []
    scheduled: list[float] = []
    readings = []
    summaries = []
    for _ in range(repeats):      # the rows interleaved, so a change in the machine's load hits each alike
        periodic_actor(alone, time.perf_counter() + seconds)
        naive_row(naive)
        summaries.append(scheduler_row(scheduled, readings))
    s = {k: {m: sum(x[k][m] for x in summaries) for m in ("deadline_misses", "completed", "faults")}
         | {m: float(np.mean([x[k][m] for x in summaries])) for m in ("rate_hz", "latency_p50_s", "latency_p99_s")}
         for k in ("actor", "critic")}
    p99 = _pct(alone)["p99_ms"]
    return {
        "actor_hz": actor_hz, "critic_hz": critic_hz, "seconds": seconds, "repeats": repeats,
        "actor_params_M": sum(p.numel() for p in engine.actor.parameters()) / 1e6,
        "critic_params_M": parameter_count(critic.critic) / 1e6,
        "actor_chunk_alone": _pct(t_actor), "critic_alone": _pct(t_critic),
        "actor_alone": _pct(alone), "actor_with_critic_naive": _pct(naive),
        "actor_with_critic_scheduler": _pct(scheduled),
        "p99_ratio_naive": _pct(naive)["p99_ms"] / p99, "p99_ratio_scheduler": _pct(scheduled)["p99_ms"] / p99,
        "scheduler_actor": {k: s["actor"][k] for k in ("latency_p50_s", "latency_p99_s", "deadline_misses",
                                                       "completed", "rate_hz")},
        "scheduler_critic": {k: s["critic"][k] for k in ("completed", "rate_hz", "deadline_misses", "faults")},
        "critic_readings": len(readings), "critic_value_range": [float(min(values)), float(max(values))],
    }


def to_markdown(res: dict) -> str:
    r = res["result"]
    row = lambda name, p: f"| {name} | {p['p50_ms']:.3f} | {p['p99_ms']:.3f} | {p['max_ms']:.3f} | {p['n']} |"  # noqa: E731
    lines = [
        f"# Actor beside the critic: {res['preset']} + {res['critic']} ({r['critic_params_M']:.1f}M parameters)",
        "",
        f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`.",
        f"Actor {r['actor_hz']:g} Hz ({r['actor_params_M']:.1f}M parameters, {res['dtype']}), critic "
        f"{r['critic_hz']:g} Hz, {r['seconds']:g} s per row x {r['repeats']} (rows interleaved, pooled). "
        "Latency = one chunk graph replay + synchronise.",
        "",
        "| actor | p50 ms | p99 ms | max ms | n |", "|---|---|---|---|---|",
        row("alone", r["actor_alone"]), row("with the critic, naive (own thread and stream)", r["actor_with_critic_naive"]),
        row("with the critic, scheduler (the host's way)", r["actor_with_critic_scheduler"]),
        "",
        f"p99 ratio with the critic: scheduler **{r['p99_ratio_scheduler']:.3f}x**, naive {r['p99_ratio_naive']:.3f}x "
        f"(target <= 1.1x). Critic alone: {r['critic_alone']['p50_ms']:.3f} ms p50; "
        f"{r['scheduler_critic']['completed']} critic readings in the scheduler row at "
        f"{r['scheduler_critic']['rate_hz']:.2f} Hz, actor deadline misses {r['scheduler_actor']['deadline_misses']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="flashrt-ros bench-critic", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="reference")
    ap.add_argument("--critic", default="reference", help="critic preset (e.g. critic_100m), 'reference' or a directory")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="", help="'' = bfloat16 on a GPU for presets other than reference, else float32")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--actor-hz", type=float, default=50.0)
    ap.add_argument("--critic-hz", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=1, help="rows run this many times, interleaved, pooled")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" and args.preset != "reference" else "float32")
    engine = Engine(preset=args.preset, device=str(device), dtype=dtype)
    critic = CriticGraph(engine, _critic(args.critic))
    res = {"machine": machine(device), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "flashrt-ros bench-critic " + " ".join(argv if argv is not None else sys.argv[1:]),
           "preset": args.preset, "critic": args.critic, "dtype": dtype,
           "result": bench_critic(engine, critic, args.seconds, args.actor_hz, args.critic_hz, args.repeats)}
    write_results(Path(args.out), f"critic-{args.tag or f'{device.type}-{args.preset}'}", res, to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
