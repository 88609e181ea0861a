"""Smoothness where a new chunk takes over, from the trajectories a host published (a replay's
outputs.mcap): the figures `flashrt-ros evaluate` gives for the simulated world, here from the
commands alone.

The executed command is each trajectory's points up to the first point of the next one (the
controller replaces a trajectory when the next arrives). At each takeover:
- position jump: max over joints of |the new trajectory's first point - the previous trajectory at
  that time| (linear between its points: the motion the old chunk itself had planned is not a jump);
- velocity jump: the same for the velocity (finite differences of the points);
- jerk: the RMS third difference of the executed commands (per chunk_dt^3) over the 4 samples
  whose stencil holds the takeover.
Stops (no points, or one) are not chunks: a takeover by a stop is not a chunk boundary.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Takeover:
    time_ns: int               # the new trajectory's first point
    position_jump: float
    velocity_jump: float
    jerk_rms: float


def _chunks(trajectories) -> list:
    return [t for t in trajectories if len(t.times_ns) > 1]


def _velocity(times_s: np.ndarray, positions: np.ndarray, t: float) -> np.ndarray:
    i = int(np.clip(np.searchsorted(times_s, t, side="right") - 1, 0, len(times_s) - 2))
    return (positions[i + 1] - positions[i]) / (times_s[i + 1] - times_s[i])


def executed(trajectories) -> tuple[np.ndarray, np.ndarray]:
    """(times ns [N], positions [N, D]) of the executed commands: each chunk's points before the
    next chunk's first point."""
    chunks = _chunks(trajectories)
    times, points = [], []
    for a, b in zip(chunks, chunks[1:] + [None]):
        keep = a.times_ns < b.times_ns[0] if b is not None else np.ones(len(a.times_ns), bool)
        times.append(a.times_ns[keep])
        points.append(a.positions[keep])
    if not times:
        return np.zeros(0, np.int64), np.zeros((0, 0))
    return np.concatenate(times), np.concatenate(points)


def takeovers(trajectories) -> list[Takeover]:
    chunks = _chunks(trajectories)
    t_exec, p_exec = executed(trajectories)
    out = []
    for a, b in zip(chunks, chunks[1:]):
        ta, tb = a.times_ns / 1e9, b.times_ns / 1e9
        t = tb[0]
        if not ta[0] <= t <= ta[-1]:
            continue                 # the old chunk had nothing planned there (ended, or not begun)
        old = np.array([np.interp(t, ta, a.positions[:, j]) for j in range(a.positions.shape[1])])
        position_jump = float(np.abs(b.positions[0] - old).max())
        velocity_jump = float(np.abs(_velocity(tb, b.positions, t) - _velocity(ta, a.positions, t)).max())
        k = int(np.searchsorted(t_exec, b.times_ns[0]))
        window = p_exec[max(0, k - 2): k + 3]
        dt = np.median(np.diff(tb)) if len(tb) > 1 else 1.0
        jerk = np.diff(window, n=3, axis=0) / dt ** 3 if len(window) >= 4 else np.zeros((0, 1))
        jerk_rms = float(np.sqrt(np.mean(jerk ** 2))) if jerk.size else float("nan")
        out.append(Takeover(int(b.times_ns[0]), position_jump, velocity_jump, jerk_rms))
    return out


def figures(trajectories) -> dict:
    """p50 / p95 / max of each figure over the takeovers, and their count."""
    ts = takeovers(trajectories)

    def stats(values):
        v = np.asarray([x for x in values if x == x], np.float64)
        return {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "max": float(v.max())} \
            if v.size else {"p50": None, "p95": None, "max": None}
    return {"boundaries": len(ts), "position_jump": stats([t.position_jump for t in ts]),
            "velocity_jump": stats([t.velocity_jump for t in ts]), "jerk_rms": stats([t.jerk_rms for t in ts])}


def plot(path: Path, trajectories, t0_ns: int, n: int = 4, joint_names=()) -> bool:
    """The executed commands around the `n` largest position jumps (each chunk's own plan dashed
    past the takeover). False when there is no boundary to show."""
    ts = sorted(takeovers(trajectories), key=lambda t: -t.position_jump)[:n]
    if not ts:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    chunks = _chunks(trajectories)
    t_exec, p_exec = executed(trajectories)
    fig, axes = plt.subplots(1, len(ts), figsize=(3.6 * len(ts), 3.0), squeeze=False)
    for ax, take in zip(axes[0], ts):
        lo, hi = take.time_ns - 400_000_000, take.time_ns + 400_000_000
        sel = (t_exec >= lo) & (t_exec <= hi)
        for j in range(p_exec.shape[1]):
            label = joint_names[j] if j < len(joint_names) else f"joint {j}"
            ax.plot((t_exec[sel] - t0_ns) / 1e9, p_exec[sel, j], "o-", ms=3, label=label)
        for c in chunks:                     # the plans around it, dashed
            m = (c.times_ns >= lo) & (c.times_ns <= hi)
            for j in range(c.positions.shape[1]):
                ax.plot((c.times_ns[m] - t0_ns) / 1e9, c.positions[m, j], "--", color="0.6", lw=0.8)
        ax.axvline((take.time_ns - t0_ns) / 1e9, color="k", lw=0.8)
        ax.set_title(f"jump {take.position_jump:.3g} at {(take.time_ns - t0_ns) / 1e9:.2f} s", fontsize=9)
        ax.set_xlabel("bag time (s)")
    axes[0][0].set_ylabel("executed command")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
