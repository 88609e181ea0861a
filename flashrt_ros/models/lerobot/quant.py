"""Weight-only quantised linears for the LeRobot networks: `weights: bf16 | fp8 | int8`.

    quantize_network(net, "fp8")     # after finalize(): every matrix of the vision encoder, the VLM
                                     # and the action expert becomes a QuantLinear

int8 or FP8 E4M3 with one float32 scale per output channel (symmetric, max |row| / qmax), no
calibration data; activations stay in the network's dtype. The small projections at the edges
(patch embedding, projector/connector, action in/out, time and state MLPs) and the embedding table
stay as they are. On a GPU the product is runtime.triton_kernels.wo_linear (the 1-byte weight read
once, widened in registers, the scale an epilogue); on the CPU its torch reference (the same math
in float32). Whether a quantised network may serve is decided by the engine's start-up gate against
the float32 network (engines/lerobot.py).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from flashrt_ros.runtime import triton_kernels as tk
from flashrt_ros.runtime.triton_kernels import QuantWeight

WEIGHT_MODES = ("bf16", "fp8", "int8")   # bf16: not quantised (the weights stay in the engine's dtype)
QUANT_MIN_COS = 0.999          # the start-up gate: cosine vs the float32 network on seeded probes
QUANT_MAX_ERROR_RATIO = 2.0    # ... and mean |error| at most this times the bf16 network's


class QuantLinear(nn.Module):
    """An nn.Linear whose weight is stored quantised. `.weight` is the QuantWeight (q, scale)."""

    def __init__(self, linear: nn.Linear, kind: str):
        super().__init__()
        qw = tk.quantize(linear.weight, kind)
        self.kind = kind
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("wq", qw.q)
        self.register_buffer("wscale", qw.scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    @property
    def weight(self) -> QuantWeight:
        return QuantWeight(self.wq, self.wscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights={self.kind}"


def linear(x: torch.Tensor, w: torch.Tensor | QuantWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear for a plain or a quantised weight (GPU: the Triton kernel as a torch op, so
    torch.compile and CUDA graphs see one opaque call; CPU: the reference)."""
    if not isinstance(w, QuantWeight):
        return F.linear(x, w, bias)
    if x.is_cuda:
        return torch.ops.flashrt.wo_linear(x, w.q, w.scale, bias)
    return tk.wo_linear_reference(x, w, bias)


def quantized_scopes(net: nn.Module) -> list[nn.Module]:
    """The parts of a network whose matrices are quantised: the vision encoder's layers, the VLM's and
    the action expert's."""
    return [net.vision.encoder, net.vlm, net.expert]


@torch.no_grad()
def quantize_network(net: nn.Module, kind: str) -> int:
    """Replace every nn.Linear in quantized_scopes(net) by a QuantLinear of `kind`; returns how many.
    Call after finalize() (a later .to(dtype) would widen FP8 buffers again)."""
    if kind not in WEIGHT_MODES:
        raise ValueError(f"weights {kind!r}: expected one of {', '.join(WEIGHT_MODES)}")
    if kind == "bf16":
        return 0
    count = 0
    for scope in quantized_scopes(net):
        for parent in list(scope.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, QuantLinear(child, kind))
                    count += 1
    if count == 0:
        raise ValueError("quantize_network: no linear layer found to quantise")
    return count


def fp8_supported(device: torch.device) -> str | None:
    """None when FP8 E4M3 weights can run on `device`, else why not (Triton converts E4M3 in registers
    on compute capability 8.9 and later: Ada, Hopper, Blackwell; Ampere and Orin: use int8)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None   # the CPU reference widens them in float32
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return (f"weights: fp8 needs compute capability 8.9+ (Ada/Hopper/Blackwell); {device} is {major}.{minor}: "
                f"use int8")
    return None


def quantize_with_gate(policy, kind: str, dtype: torch.dtype, n_cameras: int, seed: int = 0) -> dict:
    """Quantise a policy loaded in float32, measuring on its seeded probe inputs (policy.probe_inputs):
    the float32 network (TF32 off) is the reference; the network cast to bfloat16 gives the bf16 error
    (the tolerance every bf16 path here is held to); then the network is cast to `dtype`, quantised, and
    its error measured. Returns the numbers (see gate_passes); the network is left quantised."""
    net, dev = policy.model, policy.device
    if next(net.parameters()).dtype != torch.float32:
        raise ValueError("quantize_with_gate needs the policy loaded in float32 (its reference)")
    probe = [v.to(dev) for v in policy.probe_inputs(n_cameras, seed).values()]
    D = policy.action_dim
    t0 = time.perf_counter()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            ref = net(*probe)[..., :D].double().cpu()
            net.cast(torch.bfloat16)
            base = net(*probe)[..., :D].double().cpu()
            net.cast(dtype)
            count = quantize_network(net, kind)
            if dev.type == "cuda":
                torch.cuda.empty_cache()   # the float32 weights' blocks
            quant = net(*probe)[..., :D].double().cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32

    def stats(x):
        return {"cos": float(F.cosine_similarity(x.flatten(), ref.flatten(), dim=0)),
                "mean_abs": float((x - ref).abs().mean()), "max_abs": float((x - ref).abs().max())}
    g = {"weights": kind, "layers": count, "quantised": stats(quant), "bf16": stats(base),
         "ref_max_abs": float(ref.abs().max()), "seconds": time.perf_counter() - t0,
         "min_cos": QUANT_MIN_COS, "max_error_ratio": QUANT_MAX_ERROR_RATIO}
    g["error_ratio"] = g["quantised"]["mean_abs"] / max(g["bf16"]["mean_abs"], 1e-12)
    return g


def gate_passes(g: dict) -> bool:
    return g["quantised"]["cos"] >= QUANT_MIN_COS and g["error_ratio"] <= QUANT_MAX_ERROR_RATIO
