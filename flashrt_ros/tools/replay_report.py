"""The replay report: `DIR/report.md` and its PNG plots, readable at a glance.

- actions.png: per joint, the replayed chunks (thin lines, one per chunk, over the times their
  actions are for) against the recorded joint states, and the recorded commands when the bag has
  them; coaching, interrupt, task and service events as vertical lines.
- subtasks.png: the subtask each chunk was conditioned on over time, with the same events.
- latency.png: chunk inference time histogram with the actor's deadline (1 / actor_hz).
The Markdown states what was skipped or missing, deadline misses, and the comparison if any.
"""
from __future__ import annotations

import json

from pathlib import Path

import numpy as np

from . import boundaries
from .replay_inputs import ReplayInputs
from .replay_outputs import Comparison, Outputs

EVENT_STYLE = {"task": ("tab:purple", "task"), "coach": ("tab:green", "coach"),
               "interrupt": ("tab:red", "interrupt"), "service": ("tab:blue", "service")}


def _s(ns: int | float, t0: int) -> float:
    return (ns - t0) / 1e9


def _ms(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x * 1e3:.1f} ms"


def latency_stats(outputs: Outputs, deadline_s: float) -> dict:
    lat = np.array([c.inference_time for c in outputs.chunks], np.float64)
    misses = [c for c in outputs.chunks if c.inference_time > deadline_s]
    pct = (lambda q: float(np.percentile(lat, q))) if lat.size else (lambda q: float("nan"))
    return {"p50": pct(50), "p99": pct(99), "max": pct(100), "misses": misses, "deadline": deadline_s}


def _plot_events(ax, inputs: ReplayInputs, t0: int) -> None:
    for e in inputs.events():
        color, _ = EVENT_STYLE[e.kind]
        ax.axvline(_s(e.log_ns, t0), color=color, lw=1.0, ls="--", alpha=0.8)


def plot_actions(path: Path, inputs: ReplayInputs, outputs: Outputs, t0: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = inputs.joint_names
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 2.6 * len(names)), sharex=True, squeeze=False)
    js = inputs.joint_states
    for j, (name, ax) in enumerate(zip(names, axes[:, 0])):
        for k, traces in enumerate(inputs.commands.values()):
            for i, tr in enumerate(traces):
                ax.plot(_s(tr.times_ns, t0), tr.positions[:, j], color="0.6", lw=0.6,
                        label="recorded commands" if i == 0 and k == 0 else None)
        for i, c in enumerate(outputs.chunks):
            times = c.stamp_ns + np.round((np.arange(len(c.positions)) + 1) * c.dt * 1e9)
            ax.plot(_s(times, t0), c.positions[:, j], color="tab:orange", lw=0.7, alpha=0.6,
                    label="replayed chunks" if i == 0 else None)
        if outputs.chunks:
            first = np.array([[_s(c.stamp_ns + c.dt * 1e9, t0), c.positions[0, j]] for c in outputs.chunks])
            ax.plot(first[:, 0], first[:, 1], ".", color="tab:red", ms=3, label="first action of each chunk")
        if js.times_ns.size:
            ax.plot(_s(js.times_ns, t0), js.positions[:, j], color="black", lw=1.4, label="recorded joint state")
        _plot_events(ax, inputs, t0)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("bag time (s)")
    fig.suptitle("actions vs recorded joint states (dashed: task purple, coach green, interrupt red, service blue)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_subtasks(path: Path, inputs: ReplayInputs, outputs: Outputs, t0: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    texts = sorted({c.subtask for c in outputs.chunks} | {s.text for s in outputs.subtasks})
    row = {t: i for i, t in enumerate(texts)}
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.45 * max(1, len(texts))))
    if outputs.chunks:
        xs = [_s(c.stamp_ns, t0) for c in outputs.chunks]
        ax.scatter(xs, [row[c.subtask] for c in outputs.chunks], s=10, color="tab:orange", label="chunk's subtask")
    for s in outputs.subtasks:
        ax.plot(_s(s.stamp_ns, t0), row[s.text], marker="D", ms=6, ls="none",
                color="tab:green" if s.source == "coach" else "tab:blue")
    end = _s(inputs.end_ns, t0)
    for e in inputs.events():
        color, label = EVENT_STYLE[e.kind]
        x = _s(e.log_ns, t0)
        ax.axvline(x, color=color, lw=1.0, ls="--")
        ax.text(x, len(texts) - 0.4, f" {e.name or label}: {e.text[:24]}" if e.text else f" {e.name or label}",
                rotation=90, fontsize=7, va="top", color=color)
    ax.set_yticks(range(len(texts)), texts)
    ax.set_ylim(-0.6, max(1, len(texts)) - 0.4)
    ax.set_xlim(0, max(end, 1e-3))
    ax.set_xlabel("bag time (s)  (diamonds: subtask written: blue planner, green coach)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_latency(path: Path, outputs: Outputs, deadline_s: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = np.array([c.inference_time for c in outputs.chunks]) * 1e3
    fig, ax = plt.subplots(figsize=(6, 3))
    if lat.size:
        ax.hist(lat, bins=min(40, max(5, lat.size // 3)), color="tab:orange")
    ax.axvline(deadline_s * 1e3, color="tab:red", ls="--", label=f"deadline {deadline_s * 1e3:.0f} ms")
    ax.set_xlabel("chunk inference time (ms)")
    ax.set_ylabel("chunks")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def skipped_lines(inputs: ReplayInputs) -> list[str]:
    """Everything the replay did not send, or could not find, one line each."""
    lines = []
    for what, topic in inputs.missing.items():
        lines.append(f"**missing**: {what}: topic `{topic}` is not in the bag")
    for (topic, reason), n in sorted(inputs.skipped().items()):
        lines.append(f"skipped {n} message(s) on `{topic}`: {reason}")
    t0 = inputs.start_ns
    for cam, gaps in inputs.dropped_frames.items():
        total = sum(n for _, n in gaps)
        where = ", ".join(f"{n} at {_s(s, t0):.2f} s" for s, n in gaps[:6]) + (" ..." if len(gaps) > 6 else "")
        period = inputs.camera_period_ns.get(cam, 0) / 1e9
        lines.append(f"dropped frames: camera `{cam}`: ~{total} frame(s) missing in {len(gaps)} gap(s) "
                     f"(period {period * 1e3:.0f} ms): {where}")
    for topic, (typ, n) in sorted(inputs.unknown_topics.items()):
        lines.append(f"unknown topic `{topic}` ({typ}, {n} messages): not used")
    lines += [f"note: {n}" for n in inputs.notes]
    return lines


def write_report(out_dir: Path, inputs: ReplayInputs, outputs: Outputs, run: dict,
                 comparison: Comparison | None = None) -> Path:
    """report.md + actions.png, subtasks.png, latency.png in `out_dir`. `run` describes the run:
    mode, policy, host, deadline_s, wall_s, rejected (host-side rejections), holds."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = inputs.start_ns
    deadline = float(run.get("deadline_s", 0.1))
    lat = latency_stats(outputs, deadline)
    plots = []
    if not inputs.missing or outputs.chunks:
        plot_actions(out_dir / "actions.png", inputs, outputs, t0)
        plot_subtasks(out_dir / "subtasks.png", inputs, outputs, t0)
        plot_latency(out_dir / "latency.png", outputs, deadline)
        plots = ["actions.png", "subtasks.png", "latency.png"]
        joint_names = outputs.chunks[0].joint_names if outputs.chunks else ()
        if boundaries.plot(out_dir / "boundaries.png", outputs.trajectories, t0, joint_names=joint_names):
            plots.append("boundaries.png")

    stops = sum(1 for t in outputs.trajectories if t.is_stop)
    n_obs = inputs.observations
    verdict = (f"{len(outputs.chunks)} chunks from {n_obs} observations · {len(outputs.subtasks)} subtask "
               f"changes · latency p50 {_ms(lat['p50'])}, p99 {_ms(lat['p99'])} · "
               f"{len(lat['misses'])} deadline misses")
    if comparison is not None:
        verdict += " · compare: " + ("identical" if comparison.identical else
                                     "within tolerance" if comparison.ok else "**DIVERGED**")
    dur = (inputs.end_ns - inputs.start_ns) / 1e9 if inputs.end_ns > inputs.start_ns else 0.0
    lines = [f"# Replay report: `{Path(inputs.path).name}`", "", verdict, "",
             "## Run", "",
             "| | |", "|---|---|",
             f"| bag | `{inputs.path}` ({inputs.storage}, {dur:.1f} s, "
             f"{sum(n for _, n in inputs.topics.values())} messages on {len(inputs.topics)} topics) |",
             f"| mode | {run.get('mode', '?')} |",
             f"| policy | {run.get('policy', '?')} |",
             f"| host | {run.get('host', '?')} |",
             f"| inputs sent | {len(inputs.sent)} of {len(inputs.inputs)}: "
             + ", ".join(f"{k} {inputs.count(k)}" for k in ("camera", "joint_states", "task", "coach", "interrupt",
                                                             "service") if inputs.count(k, sent=False)) + " |",
             f"| outputs | `outputs.mcap`: {len(outputs.chunks)} chunks, {len(outputs.trajectories)} trajectories "
             f"({stops} stops), {len(outputs.subtasks)} subtasks |",
             f"| wall time | {run.get('wall_s', float('nan')):.1f} s |", ""]
    lines += ["## Skipped, missing, unknown", ""]
    skipped = skipped_lines(inputs)
    lines += [f"- {s}" for s in skipped] if skipped else ["- nothing: every input message was sent"]
    for what, n in sorted(run.get("rejected", {}).items()):
        lines.append(f"- the host rejected {n} {what} message(s)")
    lines.append("")
    lines += ["## Subtask timeline", "", "| bag time | event |", "|---:|---|"]
    timeline = [(e.log_ns, f"{e.kind}" + (f" `{e.name}`" if e.name else "") + (f": {e.text!r}" if e.text else ""))
                for e in inputs.events()]
    timeline += [(s.stamp_ns, f"subtask v{s.version} {s.text!r} ({s.source})") for s in outputs.subtasks]
    timeline += [(t.stamp_ns, "stop sent to the controller") for t in outputs.trajectories if t.is_stop]
    for t, what in sorted(timeline, key=lambda x: x[0]):
        lines.append(f"| {_s(t, t0):.3f} s | {what} |")
    lines.append("")
    smooth = boundaries.figures(outputs.trajectories)
    lines += ["## Chunk boundaries", ""]
    if smooth["boundaries"]:
        def row(name, key, unit):
            f = smooth[key]
            return f"| {name} ({unit}) | {f['p50']:.4g} | {f['p95']:.4g} | {f['max']:.4g} |"
        lines += [f"Where a new chunk's trajectory took over ({smooth['boundaries']} takeovers; "
                  f"overlap_policy `{run.get('overlap_policy', '?')}`): the jump beyond what the previous chunk had "
                  f"planned, and the jerk of the executed commands around it (`boundaries.png`: the largest).", "",
                  "| | p50 | p95 | max |", "|---|---:|---:|---:|",
                  row("position jump", "position_jump", "joint units"),
                  row("velocity jump", "velocity_jump", "units/s"),
                  row("jerk RMS", "jerk_rms", "units/s^3"), ""]
    else:
        lines += ["No chunk took over from another.", ""]
    lines += ["## Latency and deadline misses", "",
              f"Actor deadline {deadline * 1e3:.0f} ms (1 / actor_hz). Inference latency p50 {_ms(lat['p50'])}, "
              f"p99 {_ms(lat['p99'])}, max {_ms(lat['max'])}; {len(lat['misses'])} of {len(outputs.chunks)} chunks "
              f"missed the deadline."]
    for c in lat["misses"][:10]:
        lines.append(f"- chunk {c.chunk_seq} at {_s(c.stamp_ns, t0):.3f} s: {_ms(c.inference_time)}")
    if len(lat["misses"]) > 10:
        lines.append(f"- ... {len(lat['misses']) - 10} more")
    holds = run.get("holds", [])
    if holds:
        lines += ["", f"Observations without a chunk: {len(holds)} (" + "; ".join(
            f"{n}x {why}" for why, n in _counts(holds)) + ")"]
    lines.append("")
    if comparison is not None:
        lines += comparison_lines(comparison, t0, run.get("compare_ref", "")) + [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p[:-4]}]({p})" for p in plots] + [""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def write_summary(out_dir: Path, inputs: ReplayInputs, outputs: Outputs, run: dict,
                  comparison: Comparison | None, exit_code: int, key: str = "") -> dict:
    """summary.json: the figures of one replay that a fleet report merges (one row per bag)."""
    lat = latency_stats(outputs, float(run.get("deadline_s", 0.1)))
    compare = None
    if comparison is not None:
        compare = {"ok": comparison.ok, "identical": comparison.identical,
                   "max_diff": float(np.max(comparison.max_diff)) if comparison.max_diff.size else 0.0,
                   "first_divergence": comparison.first_divergence,
                   "unmatched": len(comparison.only_ours) + len(comparison.only_ref)}
    summary = {
        "bag": str(inputs.path), "exit_code": exit_code, "key": key, "mode": run.get("mode", ""),
        "observations": inputs.observations, "chunks": len(outputs.chunks),
        "subtask_changes": len(outputs.subtasks), "stops": sum(1 for t in outputs.trajectories if t.is_stop),
        "latency_p50_ms": lat["p50"] * 1e3, "latency_p99_ms": lat["p99"] * 1e3,
        "deadline_misses": len(lat["misses"]),
        "skipped": int(sum(inputs.skipped().values())), "missing": dict(inputs.missing),
        "unknown_topics": len(inputs.unknown_topics),
        "dropped_frames": int(sum(n for gaps in inputs.dropped_frames.values() for _, n in gaps)),
        "rejected": dict(run.get("rejected", {})), "compare": compare, "wall_s": run.get("wall_s", float("nan")),
        "boundaries": boundaries.figures(outputs.trajectories),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


def _counts(items: list[str]) -> list[tuple[str, int]]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return sorted(out.items(), key=lambda kv: -kv[1])


def comparison_lines(c: Comparison, t0: int, ref: str = "") -> list[str]:
    verdict = ("identical" if c.identical else "within tolerance" if c.ok else "DIVERGED")
    lines = ["## Comparison" + (f" with `{ref}`" if ref else ""), "",
             f"**{verdict}** (tolerance {c.tolerance:g}): {c.matched} chunks paired by observation stamp, "
             f"{len(c.only_ours)} only in this run, {len(c.only_ref)} only in the reference, "
             f"{c.subtask_mismatches} with another subtask.", "",
             "| joint | max abs diff | mean abs diff |", "|---|---:|---:|"]
    names = c.joint_names or tuple(str(i) for i in range(len(c.max_diff)))
    lines += [f"| {n} | {m:.3g} | {a:.3g} |" for n, m, a in zip(names, c.max_diff, c.mean_diff)]
    if c.first_divergence_ns is not None:
        lines += ["", f"First divergence at {_s(c.first_divergence_ns, t0):.3f} s bag time: {c.first_divergence}."]
    return lines
