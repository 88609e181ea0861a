"""Triton kernels for the LeRobot networks' hot paths, each beside its torch reference.

- ``frames_to_images``: uint8 camera frames (rgb8/bgr8/rgba8/bgra8/mono8, any size, packed rows)
  -> the model's float32 image input [n, 3, R, R] in [-1, 1], resized with padding (LeRobot's
  resize-with-pad: aspect kept, bilinear without antialias, black bars centred (π0/π0.5) or
  left/top (SmolVLA)). The geometry of each frame is READ FROM DEVICE BUFFERS, so the kernel is
  captured once in the chunk's CUDA graph and serves any frame size afterwards.
- ``wo_linear``: y = x @ dequant(w)^T (+ bias) with a weight-only quantised w (int8 or FP8 E4M3,
  one float32 scale per output channel): the weight is read once in its 1-byte form and widened
  in registers; small-M calls (the action expert: 50 rows) split K across programs.
- ``attention_rows``: softmax(q k^T * scale + mask) v for grouped-query heads folded into rows
  (common.attention's GPU layout) as one kernel, many small row blocks (the action expert's 400
  rows over the prefix K/V filled only 7 CTAs of SDPA's kernel), the keys split across programs; the
  last program of a row block to finish merges the slices in a fixed order (one launch, deterministic).
  ``attention_heads`` is the same kernel in the layers' own layouts: q through its strides, the output
  in [B, Tq, H * d], optionally the last keys from this step's own K/V in place (opt-in, round 4).

Each has a torch reference (``*_reference``): the CPU path and the oracle the kernels are tested
against (test/test_triton_kernels.py on a GPU; parity/test_triton_interpreter.py runs the kernels
themselves on the CPU through Triton's interpreter, where Triton is installed). Triton is imported
lazily: this module imports without it, and ``triton_error()`` says why a fast path cannot run.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

_triton = None
_triton_error: str | None = None
_kernels: dict[str, object] = {}


def triton_error(device: torch.device | None = None) -> str | None:
    """None when the Triton kernels can run on `device` (a CUDA device, or anything under Triton's
    CPU interpreter), else the reason."""
    global _triton, _triton_error
    if _triton is None and _triton_error is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
            _triton = triton
        except Exception as e:  # ImportError, or a broken install
            _triton_error = f"triton is not importable ({type(e).__name__}: {e})"
    if _triton_error is not None:
        return _triton_error
    if device is not None and torch.device(device).type != "cuda" and not interpreted():
        return f"the Triton kernels run on CUDA devices (or under TRITON_INTERPRET=1), not on {device}"
    return None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def fastest(candidates, run, best=None, best_t: float = float("inf")):
    """The tuners' rule: the fastest of `candidates` for run(c), each timed as CUDA-graph replays (median)
    after one call that compiles and warms it, starting from (best, best_t); a candidate that fails to
    compile or launch (e.g. more shared memory than this GPU has) is not a candidate here. GPU only,
    outside graph capture."""
    import triton.testing
    for c in candidates:
        try:
            run(c)
            t = triton.testing.do_bench_cudagraph(lambda: run(c), rep=20, return_mode="median")
        except Exception:  # noqa: BLE001  e.g. OutOfResources (shared memory): not a candidate
            continue
        if t < best_t:
            best, best_t = c, t
    return best


def _require(device) -> None:
    err = triton_error(device)
    if err is not None:
        raise RuntimeError(err)


# ------------------------------------------------------------------------------------------ frames
ENCODING_CODES = {"rgb8": 0, "bgr8": 1, "rgba8": 2, "bgra8": 3, "mono8": 4}
ENCODING_CHANNELS = {0: 3, 1: 3, 2: 4, 3: 4, 4: 1}
GEOMETRY_FIELDS = 8   # height, width, encoding, resized height, resized width, top, left, clamp


class FrameGeometry(NamedTuple):
    height: int
    width: int
    encoding: int
    resized_h: int
    resized_w: int
    top: int
    left: int
    clamp: int
    scale_y: float     # float32 height / resized_h, as torch's bilinear computes it
    scale_x: float


def frame_geometry(height: int, width: int, encoding: str, size: int, centred: bool,
                   clamp: bool) -> FrameGeometry:
    """Where a height x width frame lands in the size x size model input (LeRobot's resize-with-pad:
    ratio = max(w / size, h / size), resized to int(h / ratio) x int(w / ratio), bars centred or on the
    left/top). An image already size x size is copied as it is (scale 1: bilinear is the identity)."""
    import numpy as np
    if (height, width) == (size, size):
        rh, rw = size, size
    else:
        ratio = max(width / size, height / size)
        rh, rw = int(height / ratio), int(width / ratio)
    top, left = ((size - rh) // 2, (size - rw) // 2) if centred else (max(0, size - rh), max(0, size - rw))
    sy, sx = float(np.float32(height) / np.float32(rh)), float(np.float32(width) / np.float32(rw))
    return FrameGeometry(height, width, ENCODING_CODES[encoding], rh, rw, top, left, int(clamp), sy, sx)


def frames_to_images_reference(frames: torch.Tensor, geometry: list[FrameGeometry], size: int,
                               out: torch.Tensor) -> torch.Tensor:
    """frames uint8 [n, capacity] (frame i packed from byte 0) -> out float32 [n, 3, size, size], in
    LeRobot's order: x / 255, bilinear resize (F.interpolate, align_corners=False, no antialias),
    clamp to [0, 1] where LeRobot clamps (π0/π0.5), zero bars, x * 2 - 1."""
    for i, g in enumerate(geometry):
        c = ENCODING_CHANNELS[g.encoding]
        pixels = frames[i, : g.height * g.width * c].view(g.height, g.width, c)
        order = {0: [0, 1, 2], 1: [2, 1, 0], 2: [0, 1, 2], 3: [2, 1, 0], 4: [0, 0, 0]}[g.encoding]
        img = (pixels[..., order].permute(2, 0, 1).to(torch.float32) / 255.0)[None]
        if (g.resized_h, g.resized_w) != (g.height, g.width):
            img = F.interpolate(img, size=(g.resized_h, g.resized_w), mode="bilinear", align_corners=False)
            if g.clamp:
                img = img.clamp(0.0, 1.0)
        img = F.pad(img, (g.left, size - g.resized_w - g.left, g.top, size - g.resized_h - g.top), value=0.0)
        out[i].copy_(img[0] * 2.0 - 1.0)
    return out


def frames_to_images(frames: torch.Tensor, geometry: torch.Tensor, scales: torch.Tensor, out: torch.Tensor,
                     block: int = 256) -> torch.Tensor:
    """The kernel: frames uint8 [n, capacity], geometry int32 [n, 8] and scales float32 [n, 2] (device
    buffers holding FrameGeometry's fields) -> out float32 [n, 3, R, R] (contiguous). One launch for
    all cameras; nothing about the frames is a Python value, so a captured graph serves any size."""
    _require(frames.device)
    n, R = out.shape[0], out.shape[-1]
    kernel = _build()["frames"]
    grid = ((R * R + block - 1) // block, n)
    kernel[grid](frames, frames.stride(0), geometry, scales, out, R, BLOCK=block)
    return out


# ------------------------------------------------------------------------------ quantised weights
class QuantWeight(NamedTuple):
    """A weight-only quantised [N, K] matrix: w ~= q * scale[:, None]. q is int8 or float8_e4m3fn."""
    q: torch.Tensor
    scale: torch.Tensor     # float32 [N]


QUANT_KINDS = ("int8", "fp8")
_QMAX = {"int8": 127.0, "fp8": 448.0}


def quantize(w: torch.Tensor, kind: str) -> QuantWeight:
    """Per output channel (row), symmetric, no calibration data: scale = max|row| / qmax."""
    if kind not in QUANT_KINDS:
        raise ValueError(f"weights {kind!r}: expected one of bf16, {', '.join(QUANT_KINDS)}")
    w32 = w.detach().float()
    amax = w32.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / _QMAX[kind], torch.ones_like(amax))
    x = w32 / scale[:, None]
    q = x.round().clamp(-127, 127).to(torch.int8) if kind == "int8" else x.clamp(-448, 448).to(torch.float8_e4m3fn)
    return QuantWeight(q, scale.contiguous())


def dequantize(w: QuantWeight, dtype: torch.dtype) -> torch.Tensor:
    return (w.q.float() * w.scale[:, None]).to(dtype)


def wo_linear_reference(x: torch.Tensor, w: QuantWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(x @ q^T) * scale (+ bias) in float32, cast to x's dtype: the kernel's math (q's values are exact
    in bf16 and float32, the sum is float32, the scale an epilogue)."""
    y = F.linear(x.float(), w.q.float()) * w.scale
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _wo_config(M: int, N: int, K: int, sms: int) -> tuple[int, int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, warps, stages): small M (the expert) reads the weight once
    with K split over enough programs to keep every SM streaming; large M (the prefix) plain tiles."""
    if M <= 64:
        bm, bn, bk, warps, stages = (16 if M <= 16 else 32 if M <= 32 else 64), 64, 128, 4, 4
    else:
        bm, bn, bk, warps, stages = 128, 128, 64, 8, 3
    tiles = -(-M // bm) * -(-N // bn)
    split = 1
    while tiles * split < 2 * sms and K // (bk * split * 2) >= 2:
        split *= 2
    return bm, bn, bk, split, warps, stages


_sm_count: dict[int, int] = {}


def wo_linear(x: torch.Tensor, w: QuantWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel: x [..., K] (bf16/fp16/fp32) @ the quantised [N, K] weight -> [..., N] in x's dtype."""
    _require(x.device)
    shape, K = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M, N = x2.shape[0], w.q.shape[0]
    dev = x.device.index if x.is_cuda else -1
    if dev not in _sm_count:
        _sm_count[dev] = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 132
    bm, bn, bk, split, warps, stages = _wo_config(M, N, K, _sm_count[dev])
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    k = _build()
    has_bias = bias is not None
    b = bias if has_bias else w.scale
    grid = ((M + bm - 1) // bm, (N + bn - 1) // bn, split)
    if split == 1:
        k["wo"][grid](x2, w.q, w.scale, b, y, y, M, N, K, x2.stride(0), w.q.stride(0), y.stride(0),
                      HAS_BIAS=has_bias, SPLIT=1, BM=bm, BN=bn, BK=bk, F32DOT=interpreted(),
                      num_warps=warps, num_stages=stages)
        return y.view(*shape, N)
    part = torch.empty(split, M, N, dtype=torch.float32, device=x.device)
    k["wo"][grid](x2, w.q, w.scale, b, y, part, M, N, K, x2.stride(0), w.q.stride(0), y.stride(0),
                  HAS_BIAS=has_bias, SPLIT=split, BM=bm, BN=bn, BK=bk, F32DOT=interpreted(),
                  num_warps=warps, num_stages=stages)
    total = M * N
    k["wo_reduce"][((total + 1023) // 1024,)](part, w.scale, b, y, M * N, N, HAS_BIAS=has_bias, SPLIT=split,
                                              BLOCK=1024)
    return y.view(*shape, N)


# -------------------------------------------------------------------------------------- attention
def attention_rows_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                             scale: float) -> torch.Tensor:
    """q [B, Hkv, R, d] (grouped heads folded into rows), k/v [B, Hkv, Tk, d], additive mask [B, 1, R, Tk]
    -> [B, Hkv, R, d]: scores and softmax in float32, probabilities cast to v's dtype."""
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if mask is not None:
        s = s + mask.float()
    return torch.matmul(torch.softmax(s, dim=-1).to(v.dtype).float(), v.float()).to(q.dtype)


def attention_rows_supported(q: torch.Tensor) -> bool:
    d = q.shape[-1]
    return d >= 16 and d & (d - 1) == 0 and d <= 256 and q.dtype in (torch.bfloat16, torch.float16, torch.float32)


class AttnConfig(NamedTuple):
    bm: int        # query rows per program
    bn: int        # keys per inner step
    split: int     # key slices over programs (merged by the last one to finish)
    warps: int = 4
    stages: int = 2


def attention_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   scale: float, split: int | None = None, config: AttnConfig | None = None) -> torch.Tensor:
    """The kernel (same contract as attention_rows_reference): programs over (block of rows, K/V head,
    slice of the keys), each an online softmax over its keys (flash-attention's recurrence, float32
    statistics). Few rows over a few hundred keys otherwise leave most SMs idle. With more than one
    slice, each program writes its partial (accumulator, max, sum) and counts itself in on its row
    block's counter; the LAST to arrive merges all slices in slice order (flash-decoding's merge, the
    same order whichever program is last: deterministic) and re-zeroes the counter. One launch.

    split: key slices (None: the tuned configuration for this shape on a GPU, outside graph capture --
    the fastest of attention_configs() timed as CUDA-graph replays -- else the default heuristic);
    config: the whole launch configuration (benchmarks, tests)."""
    B, H, R, d = q.shape
    o = torch.empty(B, H, R, d, dtype=q.dtype, device=q.device)
    _attention(q, k, v, mask, scale, o, 1, R, (o.stride(0), o.stride(1), o.stride(2)), split, config)
    return o


def attention_heads_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                              scale: float, k_new: torch.Tensor | None = None,
                              v_new: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, H, Tq, d] (any strides), k/v [B, Hkv, Tk, d], additive mask [B, 1, G * Tq, Tk] (folded, see
    common.fold_mask) or [B, 1, Tq, Tk] -> [B, Tq, H * d]: attention_rows_reference on the folded rows.
    k_new / v_new [B, Hkv, Tn, d]: the last Tn keys / values instead of k's and v's (the action expert's
    own K/V of this step, not written to the caches)."""
    if k_new is not None:
        P = k.shape[2] - k_new.shape[2]
        k, v = torch.cat([k[:, :, :P], k_new], dim=2), torch.cat([v[:, :, :P], v_new], dim=2)
    B, H, Tq, d = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    if mask is not None and mask.shape[-2] == Tq and G > 1:
        mask = mask.expand(B, G, Tq, mask.shape[-1]).reshape(B, 1, G * Tq, mask.shape[-1])
    out = attention_rows_reference(q.reshape(B, Hkv, G * Tq, d), k, v, mask, scale)
    return out.view(B, H, Tq, d).transpose(1, 2).reshape(B, Tq, H * d)


def attention_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                    scale: float, split: int | None = None, config: AttnConfig | None = None,
                    k_new: torch.Tensor | None = None, v_new: torch.Tensor | None = None) -> torch.Tensor:
    """attention_rows with the layouts of the layers around it (attention_heads_reference's contract):
    q read in place from any [B, H, Tq, d] strides (e.g. the RoPE'd columns of the qkv projection, no fold
    copy), the G query heads of each K/V head folded into rows inside the kernel, the output written
    straight in the o projection's row layout [B, Tq, H * d] (no transpose copy), and with k_new / v_new
    the last keys read from them in place (no cache write)."""
    B, H, Tq, d = q.shape
    G = H // k.shape[1]
    o = torch.empty(B, Tq, H * d, dtype=q.dtype, device=q.device)
    _attention(q, k, v, mask, scale, o, G, Tq, (o.stride(0), d, o.stride(1)), split, config, k_new, v_new)
    return o


def _attention(q, k, v, mask, scale, o, G: int, T: int, o_strides, split, config, k_new=None, v_new=None) -> None:
    """Launch for attention_rows / attention_heads: q [B, Hkv * G, T, d] strided, rows r = g * T + t of
    K/V head h are query head h * G + g at token t; o_strides (batch, query head, token). k_new / v_new
    [B, Hkv, Tn, d] (strided): the last Tn keys come from them instead of the caches."""
    _require(q.device)
    if not attention_rows_supported(q):
        raise ValueError(f"attention_rows: head_dim {q.shape[-1]} / dtype {q.dtype} not supported")
    B, d = q.shape[0], q.shape[-1]
    Hkv = k.shape[1]
    R = G * T
    Tk = k.shape[2]
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        k, v = k.contiguous(), v.contiguous()
    new = k_new is not None
    if new:
        if k_new.stride(-1) != 1 or v_new.stride(-1) != 1:
            k_new, v_new = k_new.contiguous(), v_new.contiguous()
        P = Tk - k_new.shape[2]
        kn, vn, ns = k_new, v_new, (*k_new.stride()[:3], *v_new.stride()[:3])
    else:
        P, kn, vn, ns = Tk, k, v, (0, 0, 0, 0, 0, 0)
    has_mask = mask is not None
    m = mask if has_mask else q
    if has_mask:   # folded rows (g * T + t) or one row per token shared by the G heads
        ms = (mask.stride(0), T * mask.stride(2) if mask.shape[-2] == R else 0, mask.stride(2), mask.stride(3))
    else:
        ms = (0, 0, 0, 0)
    kern = _build()["attn"]
    pdl = pdl_enabled(q.device)

    def run(c: AttnConfig) -> None:
        row_blocks = -(-R // c.bm)
        key_blocks = -(-Tk // c.bn)
        k_per = -(-key_blocks // max(1, min(c.split, key_blocks))) * c.bn   # keys per slice, whole key blocks
        n_split = -(-Tk // k_per)                                          # no empty slices
        if n_split > 1:
            acc = torch.empty(B, Hkv, n_split, R, d, dtype=torch.float32, device=q.device)
            stats = torch.empty(B, Hkv, n_split, R, 2, dtype=torch.float32, device=q.device)
            lock = _counters(q.device, row_blocks * Hkv * B)
        else:
            acc = stats = lock = o
        kern[(row_blocks, Hkv * n_split, B)](
            q, k, v, m, o, acc, stats, lock, q.stride(0), q.stride(1), q.stride(2), *k.stride()[:3],
            *v.stride()[:3], *ms, *o_strides, R, T, Tk, k_per, float(scale), Hkv, G, kn, vn, P, *ns,
            SPLIT=n_split, HAS_MASK=has_mask, D=d, BM=c.bm, BN=c.bn, DC=min(d, 64), F32DOT=interpreted(),
            NEW=new, PDL=pdl, num_warps=c.warps, num_stages=c.stages, **({"launch_pdl": True} if pdl else {}))

    if config is None:
        # attention_heads' calls (G > 1 or k_new) also time ATTN_SMALL_R; attention_rows' keep round 3's
        cands = attention_configs(R, Tk, d, B * Hkv, _sms(q.device), extra=G > 1 or new)
        if split is not None:
            config = cands[0]._replace(split=split)
        else:
            key = (B, Hkv, G, T, Tk, d, q.dtype, has_mask, new)
            config = _attn_tuned.get(key)
            if config is None:
                config = cands[0]
                if ATTN_TUNE and q.is_cuda and not interpreted():
                    if not torch.cuda.is_current_stream_capturing():
                        config = fastest(cands, run, config)
                _attn_tuned[key] = config   # under capture: the default, kept (graph == later eager calls)
    run(config)


# Programmatic dependent launch (Hopper and later, not the interpreter) for the attention kernel: it is
# launched while the kernel before it drains and waits for it in its first instruction (griddepcontrol),
# hiding the launch gap; inductor's own kernels do the same with common.INDUCTOR_OPTIONS
# {"triton.enable_pdl": True}. Opt-in until a whole chunk shows it faster (docs/benchmarks/fast-h200.md)
PDL = False


def pdl_enabled(device: torch.device) -> bool:
    return PDL and device.type == "cuda" and not interpreted() and torch.cuda.get_device_capability(device)[0] >= 9


ATTN_TUNE = True                   # on a GPU: time attention_splits() once per shape (outside capture)
_attn_tuned: dict[tuple, AttnConfig] = {}
_attn_locks: dict[tuple, torch.Tensor] = {}


def _attn_blocks(R: int, d: int) -> tuple[int, int]:
    return (16 if R <= 1024 else 64), (64 if d <= 128 else 32)


def _sms(device: torch.device) -> int:
    dev = device.index if device.type == "cuda" else -1
    if dev not in _sm_count:
        _sm_count[dev] = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" \
            else 132
    return _sm_count[dev]


def attention_splits(R: int, Tk: int, d: int, heads: int, sms: int, bm: int | None = None,
                     bn: int | None = None) -> list[int]:
    """Key-slice counts worth timing for this shape, the default first: enough programs for two per SM
    (at most one key block each), then 1/2 and 1/4 of that, and 1 (no merge)."""
    dbm, dbn = _attn_blocks(R, d)
    bm, bn = bm or dbm, bn or dbn
    blocks = -(-R // bm) * heads
    key_blocks = -(-Tk // bn)
    full = max(1, min(key_blocks, -(-2 * sms // blocks)))
    out = []
    for c in (full, -(-full // 2), -(-full // 4), 1):
        if c not in out:
            out.append(c)
    return out


# Launch configurations timed besides the defaults for attention_heads' few-row calls (the action expert's
# 400 folded rows): the fastest in the round-4 sweep on an H200 (docs/benchmarks/fast-h200.md round 4:
# 9.96 / 10.26 / 10.35 µs vs 15.28 for round 3's attention_rows + copies). A candidate that does not
# fit (round 4's first k_new kernel, two loads per tile: 305 KB of shared memory) is skipped by the tuner.
ATTN_SMALL_R: list[AttnConfig] = [AttnConfig(16, 64, 4, 4, 3), AttnConfig(16, 64, 4, 4, 2),
                                  AttnConfig(16, 32, 4, 4, 3)]


def attention_configs(R: int, Tk: int, d: int, heads: int, sms: int, extra: bool = True) -> list[AttnConfig]:
    """Launch configurations the tuner times for this shape, the default first (extra: with ATTN_SMALL_R;
    a candidate that does not fit the GPU, e.g. in shared memory, is skipped by the tuner)."""
    bm, bn = _attn_blocks(R, d)
    warps = 4 if bm == 16 else 8
    out = [AttnConfig(bm, bn, s, warps, 2) for s in attention_splits(R, Tk, d, heads, sms)]
    if R <= 1024 and extra:
        out += [c for c in ATTN_SMALL_R if c not in out]
    return out


def zeroed_counters(pool: dict, device: torch.device, n: int, minimum: int) -> torch.Tensor:
    """From `pool`, per device and stream: at least n zeroed int32 counters for a kernel's last-arriving
    program step (the attention's key-slice merge, split-K's fixup; each launch leaves them zero again)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream)
    t = pool.get(key)
    if t is None or t.numel() < n:
        t = pool[key] = torch.zeros(max(n, minimum), dtype=torch.int32, device=device)
    return t


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """The key slices' merge counters."""
    return zeroed_counters(_attn_locks, device, n, 1024)


# ------------------------------------------------------------------------------------ the kernels
def _build() -> dict:
    if _kernels:
        return _kernels
    import triton
    import triton.language as tl

    @triton.jit
    def frames_kernel(frames, frame_stride, geometry, scales, out, R, BLOCK: tl.constexpr):
        cam = tl.program_id(1)
        pix = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = pix < R * R
        oy = pix // R
        ox = pix - oy * R
        g = geometry + cam * 8
        h = tl.load(g)
        w = tl.load(g + 1)
        enc = tl.load(g + 2)
        rh = tl.load(g + 3)
        rw = tl.load(g + 4)
        top = tl.load(g + 5)
        left = tl.load(g + 6)
        clamp = tl.load(g + 7)
        sy = tl.load(scales + cam * 2)
        sx = tl.load(scales + cam * 2 + 1)
        iy = oy - top
        ix = ox - left
        inside = valid & (iy >= 0) & (iy < rh) & (ix >= 0) & (ix < rw)
        # torch's bilinear source index (align_corners=False): max(scale * (o + 0.5) - 0.5, 0)
        fy = tl.maximum(sy * (iy.to(tl.float32) + 0.5) - 0.5, 0.0)
        fx = tl.maximum(sx * (ix.to(tl.float32) + 0.5) - 0.5, 0.0)
        y0 = tl.minimum(fy.to(tl.int32), h - 1)
        x0 = tl.minimum(fx.to(tl.int32), w - 1)
        ly = tl.minimum(tl.maximum(fy - y0.to(tl.float32), 0.0), 1.0)
        lx = tl.minimum(tl.maximum(fx - x0.to(tl.float32), 0.0), 1.0)
        y1 = y0 + (y0 < h - 1).to(tl.int32)
        x1 = x0 + (x0 < w - 1).to(tl.int32)
        ch = tl.where(enc == 4, 1, tl.where(enc >= 2, 4, 3))
        swap = (enc == 1) | (enc == 3)
        row = w * ch
        base = frames + cam.to(tl.int64) * frame_stride
        r0 = base + y0.to(tl.int64) * row
        r1 = base + y1.to(tl.int64) * row
        for c in tl.static_range(3):
            kb = tl.where(enc == 4, 0, tl.where(swap, 2 - c, c))
            a = tl.load(r0 + x0 * ch + kb, mask=inside, other=0).to(tl.float32) / 255.0
            b = tl.load(r0 + x1 * ch + kb, mask=inside, other=0).to(tl.float32) / 255.0
            e = tl.load(r1 + x0 * ch + kb, mask=inside, other=0).to(tl.float32) / 255.0
            f = tl.load(r1 + x1 * ch + kb, mask=inside, other=0).to(tl.float32) / 255.0
            val = (1.0 - ly) * ((1.0 - lx) * a + lx * b) + ly * ((1.0 - lx) * e + lx * f)
            val = tl.where(clamp != 0, tl.minimum(tl.maximum(val, 0.0), 1.0), val)
            val = tl.where(inside, val, 0.0)
            tl.store(out + cam * 3 * R * R + c * R * R + pix, val * 2.0 - 1.0, mask=valid)

    @triton.jit
    def wo_kernel(x, wq, scale, bias, y, part, M, N, K, sxm, swn, sym, HAS_BIAS: tl.constexpr,
                  SPLIT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, F32DOT: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        pid_k = tl.program_id(2)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        k_per = tl.cdiv(tl.cdiv(K, SPLIT), BK) * BK
        k_lo = pid_k * k_per
        k_hi = tl.minimum(k_lo + k_per, K)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BK):
            rk = k0 + tl.arange(0, BK)
            kmask = rk < k_hi
            a = tl.load(x + rm[:, None] * sxm + rk[None, :], mask=(rm[:, None] < M) & kmask[None, :], other=0.0)
            b = tl.load(wq + rn[None, :] * swn + rk[:, None], mask=(rn[None, :] < N) & kmask[:, None], other=0.0)
            if F32DOT:   # Triton's CPU interpreter gets bf16 dots wrong: the same products in float32
                acc += tl.dot(a.to(tl.float32), b.to(tl.float32))
            else:
                acc += tl.dot(a, b.to(a.dtype))
        if SPLIT == 1:
            s = tl.load(scale + rn, mask=rn < N, other=0.0)
            out = acc * s[None, :]
            if HAS_BIAS:
                out += tl.load(bias + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
            tl.store(y + rm[:, None] * sym + rn[None, :], out.to(y.dtype.element_ty),
                     mask=(rm[:, None] < M) & (rn[None, :] < N))
        else:
            dst = part + pid_k * M * N + rm[:, None] * N + rn[None, :]
            tl.store(dst, acc, mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit
    def wo_reduce(part, scale, bias, y, total, N, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < total
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in tl.static_range(SPLIT):
            acc += tl.load(part + s * total + i, mask=m, other=0.0)
        n = i % N
        out = acc * tl.load(scale + n, mask=m, other=0.0)
        if HAS_BIAS:
            out += tl.load(bias + n, mask=m, other=0.0).to(tl.float32)
        tl.store(y + i, out.to(y.dtype.element_ty), mask=m)

    @triton.jit
    def attn_kernel(q, k, v, mask, o, acc_out, stats, lock, sqb, sqh, sqt, skb, skh, skn, svb, svh, svn,
                    smb, smg, smm, smn, sob, soh, sot, R, T, Tk, k_per, scale, H, G,
                    kn, vn, P, snb, snh, snt, swb, swh, swt, SPLIT: tl.constexpr,
                    HAS_MASK: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                    DC: tl.constexpr, F32DOT: tl.constexpr, NEW: tl.constexpr, PDL: tl.constexpr):
        # row r of K/V head h = query head h * G + g at token t (r = g * T + t); q, mask and o are read /
        # written through their own strides, so neither the fold nor the output transpose is a copy
        if PDL:   # launched early (programmatic dependent launch): wait here until the kernel before is done
            tl.extra.cuda.gdc_wait()
        pid_m = tl.program_id(0)
        hs = tl.program_id(1)
        b = tl.program_id(2)
        h = hs // SPLIT
        sl = hs - h * SPLIT
        rows = pid_m * BM + tl.arange(0, BM)
        grp = rows // T
        tok = rows - grp * T
        qh = h * G + grp
        dc = tl.arange(0, D)
        rmask = rows < R
        qt = tl.load(q + b * sqb + qh[:, None] * sqh + tok[:, None] * sqt + dc[None, :], mask=rmask[:, None],
                     other=0.0)
        m_i = tl.full((BM,), float("-inf"), tl.float32)
        l_i = tl.zeros((BM,), tl.float32)
        acc = tl.zeros((BM, D), tl.float32)
        k_lo = sl * k_per
        k_hi = tl.minimum(k_lo + k_per, Tk)
        for n0 in range(k_lo, k_hi, BN):
            cols = n0 + tl.arange(0, BN)
            cmask = cols < k_hi
            if NEW:   # keys >= P: this step's own K/V (kn, vn), read in place; below P: the cache. One load
                # through per-column pointers (two loads would double the pipelined tiles in shared memory)
                old = cols < P
                cn = tl.maximum(cols - P, 0)
                kt = tl.load(tl.where(old[None, :], k + b * skb + h * skh + cols[None, :] * skn + dc[:, None],
                                      kn + b * snb + h * snh + cn[None, :] * snt + dc[:, None]),
                             mask=cmask[None, :], other=0.0)
            else:
                kt = tl.load(k + b * skb + h * skh + cols[None, :] * skn + dc[:, None], mask=cmask[None, :],
                             other=0.0)
            if F32DOT:   # Triton's CPU interpreter gets bf16 dots wrong: the same products in float32
                s = tl.dot(qt.to(tl.float32), kt.to(tl.float32))
            else:
                s = tl.dot(qt, kt)
            s = s * scale
            if HAS_MASK:
                am = tl.load(mask + b * smb + grp[:, None] * smg + tok[:, None] * smm + cols[None, :] * smn,
                             mask=rmask[:, None] & cmask[None, :], other=0.0)
                s += am.to(tl.float32)
            s = tl.where(cmask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            if NEW:
                vt = tl.load(tl.where(old[:, None], v + b * svb + h * svh + cols[:, None] * svn + dc[None, :],
                                      vn + b * swb + h * swh + cn[:, None] * swt + dc[None, :]),
                             mask=cmask[:, None], other=0.0)
            else:
                vt = tl.load(v + b * svb + h * svh + cols[:, None] * svn + dc[None, :], mask=cmask[:, None],
                             other=0.0)
            if F32DOT:
                acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype).to(tl.float32), vt.to(tl.float32))
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
            m_i = m_new
        orow = o + b * sob + qh * soh + tok * sot
        if SPLIT == 1:
            tl.store(orow[:, None] + dc[None, :], (acc / l_i[:, None]).to(
                o.dtype.element_ty), mask=rmask[:, None])
        else:
            base = ((b * H + h) * SPLIT + sl).to(tl.int64) * R
            tl.store(acc_out + (base + rows[:, None]) * D + dc[None, :], acc, mask=rmask[:, None])
            tl.store(stats + (base + rows) * 2, m_i, mask=rmask)
            tl.store(stats + (base + rows) * 2 + 1, l_i, mask=rmask)
            # the last program of this row block to arrive merges every slice, in slice order
            tl.debug_barrier()
            blk = (b * H + h) * tl.num_programs(0) + pid_m
            arrived = tl.atomic_add(lock + blk, 1, sem="acq_rel")
            tl.debug_barrier()
            if arrived == SPLIT - 1:
                head = (b * H + h) * SPLIT
                m = tl.full((BM,), float("-inf"), tl.float32)
                for s_ in tl.static_range(SPLIT):
                    sb = (head + s_).to(tl.int64) * R
                    m = tl.maximum(m, tl.load(stats + (sb + rows) * 2, mask=rmask, other=float("-inf"),
                                              cache_modifier=".cg"))
                norm = tl.zeros((BM,), tl.float32)
                for s_ in tl.static_range(SPLIT):
                    sb = (head + s_).to(tl.int64) * R
                    m_s = tl.load(stats + (sb + rows) * 2, mask=rmask, other=float("-inf"), cache_modifier=".cg")
                    w_s = tl.where(m_s == float("-inf"), 0.0, tl.exp(m_s - m))
                    norm += w_s * tl.load(stats + (sb + rows) * 2 + 1, mask=rmask, other=0.0, cache_modifier=".cg")
                cc = tl.arange(0, DC)
                for c0 in tl.static_range(0, D, DC):   # column chunks: a BM x DC tile in registers, not BM x D
                    total = tl.zeros((BM, DC), tl.float32)
                    for s_ in tl.static_range(SPLIT):
                        sb = (head + s_).to(tl.int64) * R
                        m_s = tl.load(stats + (sb + rows) * 2, mask=rmask, other=float("-inf"), cache_modifier=".cg")
                        w_s = tl.where(m_s == float("-inf"), 0.0, tl.exp(m_s - m))
                        total += w_s[:, None] * tl.load(acc_out + (sb + rows[:, None]) * D + c0 + cc[None, :],
                                                        mask=rmask[:, None], other=0.0, cache_modifier=".cg")
                    tl.store(orow[:, None] + c0 + cc[None, :],
                             (total / norm[:, None]).to(o.dtype.element_ty), mask=rmask[:, None])
                tl.atomic_xchg(lock + blk, 0)

    _kernels.update(frames=frames_kernel, wo=wo_kernel, wo_reduce=wo_reduce, attn=attn_kernel)
    return _kernels


# --------------------------------------------------------------------------- as torch operators
# Registered as custom ops so that torch.compile treats each kernel as one opaque call (with a shape-only
# fake for tracing) and a CUDA graph captures it like any other launch.
@torch.library.custom_op("flashrt::wo_linear", mutates_args=())
def _wo_linear_op(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                  bias: Optional[torch.Tensor]) -> torch.Tensor:
    return wo_linear(x, QuantWeight(q, scale), bias)


@_wo_linear_op.register_fake
def _wo_linear_fake(x, q, scale, bias):
    return x.new_empty(*x.shape[:-1], q.shape[0])


@torch.library.custom_op("flashrt::attention_rows", mutates_args=())
def _attention_rows_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                       scale: float) -> torch.Tensor:
    return attention_rows(q, k, v, mask, scale)


@_attention_rows_op.register_fake
def _attention_rows_fake(q, k, v, mask, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.custom_op("flashrt::attention_heads", mutates_args=())
def _attention_heads_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                        scale: float, k_new: Optional[torch.Tensor] = None,
                        v_new: Optional[torch.Tensor] = None) -> torch.Tensor:
    return attention_heads(q, k, v, mask, scale, k_new=k_new, v_new=v_new)


@_attention_heads_op.register_fake
def _attention_heads_fake(q, k, v, mask, scale, k_new=None, v_new=None):
    B, H, Tq, d = q.shape
    return q.new_empty(B, Tq, H * d)
