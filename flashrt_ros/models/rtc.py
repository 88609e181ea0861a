"""Real-time chunking (RTC), guided: the next chunk is denoised with the unexecuted rest of the
previous one as a soft prefix (Black, Galliker, Levine, arXiv 2506.07339, "ΠGDM" guidance).

While the arm executes chunk k, chunk k+1 is computed from a newer observation; its first `delay`
actions (d: the steps that pass before it can be executed) will never run, and the ones after
should continue what the arm is doing. At each denoise step the predicted clean chunk
x1 = x_t + remaining * v is pulled toward the prefix Y with per-action weights W (1 over the first
d actions, decaying to 0 at the execution horizon):

    correction = J^T ((Y - x1) * W)      J = d x1 / d x_t: a vector-Jacobian product through the
                                          action expert ("vjp"), or the identity ("identity")
    v <- v + sign(step) * min(max_weight, (1 - tau) / (tau * r^2)) * correction,
    r^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2),  tau = how far the step is from noise (0) to data (1)

LeRobot 0.6.1 (lerobot/policies/rtc/modeling_rtc.py) computes v before x_t requires grad, so its
correction is the identity case; "identity" reproduces it (parity), "vjp" is the paper's ΠGDM.
Everything here is torch ops on static shapes: it is captured into the CUDA graph with the rest.
No ROS, no engine: the models call it inside their denoise loops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

SCHEDULES = ("LINEAR", "EXP", "ONES", "ZEROS")
JACOBIANS = ("vjp", "identity")


@dataclass(frozen=True)
class RtcSettings:
    schedule: str = "LINEAR"          # how the prefix weights decay after the first d actions
    execution_horizon: int = 10       # actions after which the prefix has no weight
    max_guidance_weight: float = 10.0
    jacobian: str = "vjp"             # "vjp": ΠGDM through the action expert; "identity": LeRobot 0.6.1's

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"RTC schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.jacobian not in JACOBIANS:
            raise ValueError(f"RTC jacobian {self.jacobian!r}: expected one of {', '.join(JACOBIANS)}")
        if self.execution_horizon < 1 or not self.max_guidance_weight > 0:
            raise ValueError("RTC needs execution_horizon >= 1 and max_guidance_weight > 0")


def prefix_weights(schedule: str, delay: int, execution_horizon: int, horizon: int) -> torch.Tensor:
    """[horizon] float32: 1 over the first `delay` actions, then decaying (LINEAR, EXP) or held
    (ONES) or 0 (ZEROS) up to `execution_horizon`, 0 after; LeRobot's get_prefix_weights exactly."""
    end = min(int(execution_horizon), int(horizon))
    start = min(int(delay), end)
    w = torch.zeros(horizon, dtype=torch.float32)
    if schedule == "ZEROS":
        w[:start] = 1.0
        return w
    if schedule == "ONES":
        w[:end] = 1.0
        return w
    steps = end - start
    if steps > 0:
        ramp = torch.linspace(1, 0, steps + 2, dtype=torch.float32)[1:-1]
        if schedule == "EXP":
            ramp = ramp * torch.expm1(ramp).div(math.e - 1)
        w[start:end] = ramp
    w[:start] = 1.0
    return w


def guidance_weight(tau: float, max_weight: float) -> float:
    """min(max_weight, (1 - tau) / (tau r^2)), tau in [0, 1) from noise to data (inf at tau = 0)."""
    if tau <= 0.0:
        return float(max_weight)
    r2 = (1 - tau) ** 2 / (tau ** 2 + (1 - tau) ** 2)
    return float(min(max_weight, (1 - tau) / (tau * r2)))


def guided_velocity(velocity: Callable[[torch.Tensor], torch.Tensor], x_t: torch.Tensor, *, remaining: float,
                    tau: float, prefix: torch.Tensor, weights: torch.Tensor, max_weight: float,
                    jacobian: str = "vjp") -> torch.Tensor:
    """One denoise step's velocity with the prefix guidance.

    velocity: x_t -> v (the action expert at this step); remaining: signed flow time left to the
    data end (x1 = x_t + remaining * v; its sign is the step's); tau: progress from noise (0) to
    data (1); prefix, weights: broadcastable to x_t ([B, H, A] and [1, H, 1]); the weight is 0
    where there is no prefix (no guidance at all when every weight is 0)."""
    if jacobian == "vjp":
        x = x_t.detach().requires_grad_(True)
        with torch.enable_grad():
            v = velocity(x)
            x1 = x + remaining * v
            correction = torch.autograd.grad(x1, x, ((prefix - x1) * weights).detach())[0]
        v = v.detach()
    else:
        v = velocity(x_t)
        correction = (prefix - (x_t + remaining * v)) * weights
    w = guidance_weight(tau, max_weight)
    return v + math.copysign(w, remaining) * correction


@dataclass(frozen=True)
class Guidance:
    """What one guided chunk needs inside the model's denoise loop (static shapes: a captured graph
    reads `prefix` and `weights` from static buffers). prefix: [B, H, A] in the model's normalised,
    padded action space (zeros past the real prefix and in the padded action dims, as LeRobot pads
    prev_chunk_left_over); weights: [1, H, 1] (prefix_weights), applied to every action dim."""
    prefix: torch.Tensor
    weights: torch.Tensor
    max_weight: float
    jacobian: str = "vjp"


def euler_guided(velocity: Callable[[int, torch.Tensor], torch.Tensor], x_t: torch.Tensor, num_steps: int,
                 guidance: Guidance) -> torch.Tensor:
    """LeRobot's euler_integrate (time 1 -> 0, dt = -1/num_steps, x <- x + dt * v) with every step's
    velocity guided: tau = 1 - time, x1 = x_t - time * v (remaining = -time). velocity(step, x_t) -> v."""
    dt = -1.0 / num_steps
    for step in range(num_steps):
        time = 1.0 + step * dt
        v_t = guided_velocity(lambda x, step=step: velocity(step, x), x_t, remaining=-time, tau=1.0 - time,
                              prefix=guidance.prefix, weights=guidance.weights, max_weight=guidance.max_weight,
                              jacobian=guidance.jacobian)
        x_t = x_t + dt * v_t
    return x_t
