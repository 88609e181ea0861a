"""What may be commanded: position and velocity limits on a chunk, and how fast a stop may move.

Plain numpy, no ROS. The controller (ros2_control's joint_trajectory_controller) interpolates
positions + velocities as cubic Hermite segments, and before the first point it moves from the
state it had when the trajectory arrived. So the limits are applied to what the spline does:
- positions are clamped to the joint limits, then rate-limited: each point is at most
  max_velocity * dt from the one before, the first one from the joint state the chunk was
  computed from (measured at the observation's stamp, one dt before the first point); and the
  first point still ahead when the chunk is ready is reachable within the limit from where the
  arm is then (where the previous trajectory has it), so a new trajectory replacing the old one
  cannot make the arm jump;
- velocities are recomputed from those positions (central differences, as the engine's postprocess
  kernel does: a Catmull-Rom spline through the points, zero at the last point), so they are
  consistent with the positions and within the limit by construction;
- a stop that holds at a measured position gets a reach time long enough that the Hermite from
  the arm's current (position, velocity) to (target, 0) never exceeds max_velocity.
"""
from __future__ import annotations

import numpy as np

def rate_limit(q0: np.ndarray, positions: np.ndarray, dt: float, max_velocity: np.ndarray,
               lower: np.ndarray, upper: np.ndarray, first_dt: float | None = None) -> np.ndarray:
    """Positions [H, D] clamped to [lower, upper] and to at most max_velocity * dt per step,
    starting from q0, `first_dt` (default dt) before the first point. float32."""
    vmax = np.asarray(max_velocity, np.float64)
    wanted = np.clip(np.asarray(positions, np.float64), lower, upper)
    out = np.empty(wanted.shape, np.float32)
    prev = np.asarray(q0, np.float32).astype(np.float64)
    for i in range(wanted.shape[0]):
        step = vmax * (dt if i or first_dt is None else first_dt)
        x = np.clip(wanted[i], prev - step, prev + step).astype(np.float32)
        # the limit holds for the float32 values that are published, not only before rounding
        over = np.abs(x.astype(np.float64) - prev) > step
        if over.any():
            x[over] = np.nextafter(x[over], prev[over].astype(np.float32))
        out[i] = x
        prev = x.astype(np.float64)
    return out


def chunk_velocities(q0, positions, dt: float, max_velocity=None) -> np.ndarray:
    """Velocities for a chunk of positions `[H, D]`, point k due at `(k + 1) * dt` after the joint
    state `q0` it was computed from: v_k = clamp((p_{k+1} - p_{k-1}) / (2 dt), +-max_velocity) with
    p_{-1} = q0, 0 where that quotient is not finite, and v_{H-1} = 0 (float64 `[H, D]`)."""
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"positions must be [H, D], got shape {p.shape}")
    q0 = np.asarray(q0, dtype=np.float64).reshape(p.shape[1])
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt!r}")
    velocities = np.zeros_like(p)
    if len(p) >= 2:
        previous = np.concatenate([q0[None], p[:-2]])  # p_{k-1} for k = 0 .. H-2
        with np.errstate(invalid="ignore", over="ignore"):
            quotient = (p[1:] - previous) / (2.0 * dt)
        finite = np.isfinite(quotient)
        if max_velocity is not None:
            limit = np.asarray(max_velocity, dtype=np.float64)
            quotient = np.clip(quotient, -limit, limit)
        velocities[:-1] = np.where(finite, quotient, 0.0)
    return velocities



def hermite(p0, v0, p1, v1, duration: float, s):
    """Position and velocity of the cubic Hermite segment at fraction s in [0, 1] (broadcasts)."""
    s2, s3 = s * s, s * s * s
    h00, h10, h01, h11 = 2 * s3 - 3 * s2 + 1, s3 - 2 * s2 + s, -2 * s3 + 3 * s2, s3 - s2
    d00, d10, d01, d11 = 6 * s2 - 6 * s, 3 * s2 - 4 * s + 1, -6 * s2 + 6 * s, 3 * s2 - 2 * s
    pos = h00 * p0 + h10 * duration * v0 + h01 * p1 + h11 * duration * v1
    vel = (d00 * p0 + d01 * p1) / duration + d10 * v0 + d11 * v1
    return pos, vel


def sample_trajectory(t: float, times: np.ndarray, positions: np.ndarray, velocities: np.ndarray,
                      start: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(position, velocity) of a pos+vel trajectory at t seconds from its stamp, as the controller
    follows it: from `start` (its state when the trajectory arrived, at t = 0) to the first point,
    cubic between points, holding after the last."""
    if len(times) == 0:
        return np.asarray(start[0], np.float64), np.zeros_like(start[0], dtype=np.float64)
    if t >= times[-1]:
        return positions[-1].astype(np.float64), np.zeros(positions.shape[1])
    i = int(np.searchsorted(times, t, side="right"))
    if i == 0:
        t0, p0, v0 = 0.0, start[0], start[1]
    else:
        t0, p0, v0 = times[i - 1], positions[i - 1], velocities[i - 1]
    duration = max(times[i] - t0, 1e-9)
    s = min(max((t - t0) / duration, 0.0), 1.0)
    return hermite(np.asarray(p0, np.float64), np.asarray(v0, np.float64), positions[i].astype(np.float64),
                   velocities[i].astype(np.float64), duration, s)


def peak_speed(p0, v0, p1, v1, duration: float) -> np.ndarray:
    """The largest |velocity| on a cubic Hermite segment, exactly: the velocity is a quadratic
    a s^2 + b s + c in s, so its extremes are at the ends or at the vertex."""
    d = (np.asarray(p0, np.float64) - np.asarray(p1, np.float64)) / duration
    a, b, c = 6 * d + 3 * v0 + 3 * v1, -6 * d - 4 * v0 - 2 * v1, np.asarray(v0, np.float64)
    ends = np.maximum(np.abs(c), np.abs(a + b + c))
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.where(a != 0, -b / (2 * a), -1.0)
    inside = (vertex > 0) & (vertex < 1)
    at_vertex = np.abs(a * vertex * vertex + b * vertex + c)
    return np.where(inside, np.maximum(ends, at_vertex), ends)


def stop_duration(current: np.ndarray, velocity: np.ndarray, target: np.ndarray, max_velocity: np.ndarray,
                  minimum: float) -> float:
    """The shortest time (>= minimum) in which the Hermite from (current, velocity) to (target, 0)
    stays within max_velocity on every joint (a starting speed above the limit is itself clamped:
    the limit cannot be met at s = 0, so it is checked on the rest of the segment)."""
    p0 = np.asarray(current, np.float64)
    v0 = np.clip(np.asarray(velocity, np.float64), -np.asarray(max_velocity), np.asarray(max_velocity))
    p1 = np.asarray(target, np.float64)
    vmax = np.asarray(max_velocity, np.float64) * (1 + 1e-9)
    zero = np.zeros_like(p0)

    def ok(duration: float) -> bool:
        return bool(np.all(peak_speed(p0, v0, p1, zero, duration) <= vmax))

    if ok(minimum):
        return float(minimum)
    hi = max(minimum, 1.5 * float(np.max(np.abs(p1 - p0) / vmax))) * 2 + 1e-3
    while not ok(hi):
        hi *= 2
    lo = minimum
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return float(hi)
