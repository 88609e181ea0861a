"""Fused Triton kernels for the π0 / π0.5 action expert's layer step (issue 14, item 1).

The plain expert layer (models/lerobot/pi0.py expert_layer) at 50 tokens is ~13 kernels (compiled) to
~50 (eager) per layer and denoise step: norms, four cuBLAS GEMMs, RoPE, the K/V writes, copies for the
attention layout, gelu * up, the gated residuals. Here it is six launches, each GEMM streaming its
weight once with the elementwise work in its prologue / epilogue:

    1. norm_pair(qkv):   RMSNorm or adaRMS -> [q; k; v] GEMM -> RoPE -> q in the folded layout, k and v
                         straight into the K/V caches. The norm costs no pass of its own: the GEMM
                         reads the raw rows (times the norm's per-column scale, 1 + w or 1 + scale),
                         sums their squares in the same K loop and scales by 1 / rms at the end
                         ((x * rstd * m) W^T = rstd * ((x * m) W^T)); adaRMS's shift enters as the
                         vector shift W^T, per layer and step a load-time table (Pi0.compile_layers)
    2. attention_rows:   (triton_kernels.py: keys split over programs, merged by the last one)
    3. gemm_residual(o): attention out (read in its folded layout, no copy) @ o^T, + x (* adaRMS gate)
    4. norm_pair(gelu):  norm (as in 1) -> [gate; up] GEMM -> gelu_tanh(gate) * up
    5. gemm_residual(down): act @ down^T, + x (* gate)

Each GEMM is "few rows, wide weight": the rows (50 or 51) are one 64-row tile, the programs split the
weight's output columns (and, for o / down, K: split-K whose LAST program to finish sums the partials
in a fixed order -- deterministic -- and runs the epilogue; a per-tile counter it resets to zero).

rows_linear (gemm_kernel on plain rows, optional residual / gate epilogue, optional gelu_tanh(gate) * up
formed in the A load) is the same GEMM for the fast path's expert (pi0.ROWS_GEMM, off: on an H200 it
did not beat cuBLAS at 50 rows, docs/benchmarks/fast-h200.md round 4).

Every kernel has a torch reference (``*_reference``) built from the plain path's own functions; the
whole layer's reference is pi0.expert_layer itself. On the CPU (CI) nothing here runs: the plain path
does. parity/test_triton_interpreter.py runs the kernels on the CPU under Triton's interpreter,
test/test_lerobot_gpu.py on a GPU.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .triton_kernels import _require, fastest, interpreted, zeroed_counters

RMS_EPS = 1e-6
_kernels: dict[str, object] = {}
_locks: dict[tuple, torch.Tensor] = {}


class Config(NamedTuple):
    bn: int        # output columns per program (per half for the paired kernels)
    split: int     # K split over programs (gemm_residual only)
    bk: int = 128
    warps: int = 4
    stages: int = 3


# defaults (M <= 64 rows); tune() may replace them per shape on a GPU
DEFAULTS = {"qkv": Config(16, 1), "o": Config(16, 2), "gate_up": Config(32, 1), "down": Config(16, 2),
            "rows": Config(64, 4, 128, 4, 3)}
CANDIDATES = {"qkv": [Config(16, 1), Config(32, 1), Config(16, 1, 64, 4, 4), Config(32, 1, 64, 4, 4)],
              "o": [Config(16, 1), Config(16, 2)],
              "gate_up": [Config(16, 1), Config(32, 1), Config(32, 1, 64, 4, 4), Config(64, 1, 64, 4, 3)],
              "down": [Config(16, 2), Config(16, 4)]}
_tuned: dict[tuple, Config] = {}
TUNE = True   # on a GPU, outside graph capture: time CANDIDATES once per shape (CUDA-graph replays)


def _bm(M: int) -> int:
    return 16 if M <= 16 else 32 if M <= 32 else 64


def _lock(device: torch.device, n: int) -> torch.Tensor:
    """Split-K's last-program fixup counters."""
    return zeroed_counters(_locks, device, n, 4096)


def _pick(name: str, key: tuple, run) -> Config:
    """The config for this kernel and shape: tuned on a GPU (fastest of CANDIDATES, timed as CUDA-graph
    replays) the first time it is seen outside graph capture, else DEFAULTS."""
    k = (name, *key)
    cfg = _tuned.get(k)
    if cfg is not None:
        return cfg
    if not TUNE or interpreted() or not torch.cuda.is_available():
        return DEFAULTS[name]
    if torch.cuda.is_current_stream_capturing():   # first seen under capture: the default, kept (graph == eager)
        _tuned[k] = DEFAULTS[name]
        return DEFAULTS[name]
    best = fastest(CANDIDATES[name], run, DEFAULTS[name])
    _tuned[k] = best
    return best


# ------------------------------------------------------------------------------- references
def _rms(x: torch.Tensor) -> torch.Tensor:
    var = torch.mean(torch.square(x.float()), dim=-1, keepdim=True)
    return x * torch.rsqrt(var + RMS_EPS)


def normed(x: torch.Tensor, mod: torch.Tensor, ada: bool) -> torch.Tensor:
    """pi0.rms_norm (mod = 1 + w) or pi0._modulate's first output (mod = [1 + scale, shift, gate])."""
    W = x.shape[-1]
    if ada:
        return (_rms(x) * mod[:W] + mod[W:2 * W]).to(x.dtype)
    return (_rms(x) * mod).to(x.dtype)


def shift_projection(mod: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """adaRMS's shift through the GEMM: shift @ w^T in float32 [N] (mod = [1 + scale, shift, gate]).
    Pi0.compile_layers(fused=True) keeps these per layer and step as load-time tables; without one the
    launchers compute it here (one more pass over w: tests, and callers without the tables)."""
    W = w.shape[1]
    return F.linear(mod[W:2 * W].float(), w.float()).contiguous()


def norm_qkv_rope_reference(x: torch.Tensor, S: int, mod: torch.Tensor, ada: bool, w: torch.Tensor,
                            cos: torch.Tensor, sin: torch.Tensor, q_out: torch.Tensor, k_cache: torch.Tensor,
                            v_cache: torch.Tensor, start: int) -> torch.Tensor:
    """x [M = B * S, W] -> q_out [B, H, S, D] (RoPE'd), k/v_cache[:, :, start:start + S] (k RoPE'd): the
    plain path's _qkv (pi0.py) on the normed rows."""
    from flashrt_ros.models.lerobot.common import apply_rope
    B, H, _, D = q_out.shape
    Hkv = k_cache.shape[1]
    qkv = F.linear(normed(x, mod, ada), w).view(B, S, H + 2 * Hkv, D).transpose(1, 2)
    q, k, v = qkv.split([H, Hkv, Hkv], dim=1)
    q_out.copy_(apply_rope(q, cos, sin))
    k_cache[:, :, start:start + S] = apply_rope(k, cos, sin)
    v_cache[:, :, start:start + S] = v
    return q_out


def norm_gate_up_reference(x: torch.Tensor, mod: torch.Tensor, ada: bool, w: torch.Tensor) -> torch.Tensor:
    """x [M, W] -> gelu_tanh(gate) * up [M, F]: the plain path's _mlp up to the down projection."""
    gate, up = F.linear(normed(x, mod, ada), w).chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh") * up


def folded_rows(o: torch.Tensor, S: int) -> torch.Tensor:
    """The attention output [B, Hkv, G * S, D] (query heads folded into rows) -> [B * S, H * D]."""
    B, Hkv, GS, D = o.shape
    return o.reshape(B, Hkv * (GS // S), S, D).transpose(1, 2).reshape(B * S, -1)


def gemm_residual_reference(a: torch.Tensor, w: torch.Tensor, res: torch.Tensor,
                            gate: torch.Tensor | None) -> torch.Tensor:
    """res + (a @ w^T) [* gate]: the plain path's residual (a: [M, K] rows, see folded_rows)."""
    out = F.linear(a, w)
    return res + out if gate is None else res + out * gate.to(res.dtype)


# ------------------------------------------------------------------------------------ launchers
def _pair_launch(x: torch.Tensor, mod: torch.Tensor, ada: bool, w: torch.Tensor, shift: torch.Tensor | None):
    """What both pair_kernel launchers need: the kernel, its row block for x's rows, and the modulation row
    it reads second (adaRMS: the shift projection, precomputed or made here; RMSNorm: mod again)."""
    _require(x.device)
    if ada and shift is None:
        shift = shift_projection(mod, w)
    return _build()["pair"], _bm(x.shape[0]), shift if ada else mod


def norm_qkv_rope(x: torch.Tensor, S: int, mod: torch.Tensor, ada: bool, w: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, q_out: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  start: int, shift: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel for norm_qkv_rope_reference (x [M, W] contiguous rows, w [(H + 2 Hkv) * D, W]). shift:
    adaRMS's shift_projection(mod, w) when precomputed (else computed here)."""
    kern, bm, shp = _pair_launch(x, mod, ada, w, shift)
    M, W = x.shape
    B, H, _, D = q_out.shape
    Hkv = k_cache.shape[1]
    half = D // 2

    def run(c: Config):
        per = -(-half // c.bn)
        grid = ((H + 2 * Hkv) * per, -(-M // bm))
        kern[grid](x, x.stride(0), mod, shp, w, w.stride(0), q_out, q_out.stride(0), q_out.stride(1), q_out.stride(2),
                   k_cache, k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                   v_cache, v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
                   cos, sin, cos.stride(0), cos.stride(1), M, W, S, start, per, D, half, half, RMS_EPS,
                   EPI=0, ADA=ada, H=H, HKV=Hkv, BM=bm, BN=c.bn, BK=min(c.bk, _p2(W)), F32DOT=_f32dot(x),
                   num_warps=c.warps, num_stages=c.stages)
    cfg = _pick("qkv", (M, w.shape[0], W, x.dtype), run)
    run(cfg)
    return q_out


def norm_gate_up(x: torch.Tensor, mod: torch.Tensor, ada: bool, w: torch.Tensor,
                 shift: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel for norm_gate_up_reference (w [2 F, W]: gate rows then up rows) -> [M, F]. shift: as in
    norm_qkv_rope."""
    kern, bm, shp = _pair_launch(x, mod, ada, w, shift)
    M, W = x.shape
    Fd = w.shape[0] // 2
    out = torch.empty(M, Fd, dtype=x.dtype, device=x.device)

    def run(c: Config):
        per = -(-Fd // c.bn)
        kern[(per, -(-M // bm))](x, x.stride(0), mod, shp, w, w.stride(0), out, out.stride(0), 0, 0,
                                 out, 0, 0, 0, out, 0, 0, 0, x, x, 0, 0,
                                 M, W, 1, 0, per, 0, Fd, Fd, RMS_EPS,
                                 EPI=1, ADA=ada, H=1, HKV=1, BM=bm, BN=c.bn, BK=min(c.bk, _p2(W)),
                                 F32DOT=_f32dot(x), num_warps=c.warps, num_stages=c.stages)
    cfg = _pick("gate_up", (M, w.shape[0], W, x.dtype), run)
    run(cfg)
    return out


def gemm_residual(a: torch.Tensor, a_strides: tuple[int, int, int], head: int, S: int, w: torch.Tensor,
                  res: torch.Tensor, gate: torch.Tensor | None, name: str) -> torch.Tensor:
    """res [M, N] + (A @ w^T) [* gate (float32 [N], rounded to res's dtype)] -> a new [M, N]. A's element
    (m, k), m = b * S + t: a[b * sb + t * st + (k // head) * sh + k % head] -- plain rows (head = K,
    sh = 0) or the attention output in its folded layout (head = head_dim, sh = S * head_dim)."""
    _require(res.device)
    M, N = res.shape
    K = w.shape[1]
    out = torch.empty_like(res)
    kern = _build()["gemm"]
    bm = _bm(M)
    has_gate = gate is not None
    g = gate if has_gate else res

    def run(c: Config):
        gm, gn = -(-M // bm), -(-N // c.bn)
        split = c.split
        bk = min(c.bk, _p2(head))
        while split > 1 and K // split < bk:
            split //= 2
        part = torch.empty(split, M, N, dtype=torch.float32, device=res.device) if split > 1 else out
        lock = _lock(res.device, gm * gn) if split > 1 else out
        kern[(gn, gm, split)](a, *a_strides, w, w.stride(0), res, res.stride(0), g, out, out.stride(0), part, lock,
                              M, N, K, S, head, HAS_GATE=has_gate, SPLIT=split, HAS_RES=True, GLU=False, BM=bm, BN=c.bn, BK=bk,
                              F32DOT=_f32dot(res), num_warps=c.warps, num_stages=c.stages)
    cfg = _pick(name, (M, N, K, res.dtype), run)
    run(cfg)
    return out


def rows_linear_reference(x: torch.Tensor, w: torch.Tensor, res: torch.Tensor | None = None,
                          gate: torch.Tensor | None = None, glu: bool = False) -> torch.Tensor:
    """x [M, K] @ w^T, then (+ res [M, N]) with the gate as gemm_residual_reference. glu: x = [gate | up]
    [M, 2K], A = gelu_tanh(gate) * up (the plain path's _mlp)."""
    if glu:
        g, up = x.chunk(2, dim=-1)
        x = F.gelu(g, approximate="tanh") * up
    if res is None:
        return F.linear(x, w)
    return gemm_residual_reference(x, w, res, gate)


def rows_linear(x: torch.Tensor, w: torch.Tensor, res: torch.Tensor | None = None, gate: torch.Tensor | None = None,
                config: Config | None = None, glu: bool = False) -> torch.Tensor:
    """The few-rows GEMM (gemm_kernel on plain rows x [M, K] contiguous): x @ w^T [+ res (* gate)], split-K
    reduced by the last program in a fixed order (deterministic). glu: x is [M, 2K] = [gate | up] and the
    GEMM's A is gelu_tanh(gate) * up, formed as it is loaded (the MLP's down projection). config: the
    launch (benchmarks, tests); None: DEFAULTS' "rows"."""
    _require(x.device)
    M, K = x.shape
    if glu:
        K //= 2
    N = w.shape[0]
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    kern = _build()["gemm"]
    bm = _bm(M)
    c = config or DEFAULTS["rows"]
    has_res, has_gate = res is not None, gate is not None
    r = res if has_res else out
    g = gate if has_gate else out
    gm, gn = -(-M // bm), -(-N // c.bn)
    bk = min(c.bk, _p2(K))
    split = c.split
    while split > 1 and K // split < bk:
        split //= 2
    part = torch.empty(split, M, N, dtype=torch.float32, device=x.device) if split > 1 else out
    lock = _lock(x.device, gm * gn) if split > 1 else out
    kern[(gn, gm, split)](x, 0, x.stride(0), 0, w, w.stride(0), r, r.stride(0), g, out, out.stride(0), part, lock,
                          M, N, K, M, K, HAS_GATE=has_gate, SPLIT=split, HAS_RES=has_res, GLU=glu, BM=bm, BN=c.bn,
                          BK=bk,
                          F32DOT=_f32dot(x), num_warps=c.warps, num_stages=c.stages)
    return out


# rows_linear's tuner: per shape, cuBLAS or the fastest of these (timed as CUDA-graph replays, outside capture)
ROWS_CANDIDATES: list[Config] = [Config(64, 4, 128, 4, 3), Config(128, 2, 128, 4, 3)]
_rows_tuned: dict[tuple, Config | None] = {}


def _rows_choice(x: torch.Tensor, w: torch.Tensor) -> Config | None:
    """None: cuBLAS. Tuned once per shape on a GPU outside graph capture; first seen under capture (or no
    tuning): cuBLAS, kept (graph == later eager calls)."""
    key = (x.shape[0], w.shape[0], w.shape[1], x.dtype)
    if key in _rows_tuned:
        return _rows_tuned[key]
    best = None
    if TUNE and x.is_cuda and not interpreted() and not torch.cuda.is_current_stream_capturing():
        import triton.testing
        cublas_t = triton.testing.do_bench_cudagraph(lambda: F.linear(x, w), rep=20, return_mode="median")
        best = fastest(ROWS_CANDIDATES, lambda c: rows_linear(x, w, config=c), None, cublas_t)
    _rows_tuned[key] = best
    return best


@torch.library.custom_op("flashrt::rows_linear", mutates_args=())
def _rows_linear_op(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ w^T for few rows: the tuned choice between cuBLAS and rows_linear (one opaque call for
    torch.compile and the CUDA graph)."""
    x2 = x.reshape(-1, x.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    c = _rows_choice(x2, w)
    out = F.linear(x2, w) if c is None else rows_linear(x2, w, config=c)
    return out.view(*x.shape[:-1], w.shape[0])


@_rows_linear_op.register_fake
def _rows_linear_fake(x, w):
    return x.new_empty(*x.shape[:-1], w.shape[0])


def _f32dot(x: torch.Tensor) -> bool:
    return interpreted() or x.dtype == torch.float32


def _p2(n: int) -> int:
    """The largest power of two dividing n (<= 128): K blocks that never straddle a head."""
    p = 1
    while n % (2 * p) == 0 and p < 128:
        p *= 2
    return max(p, 16)


# ------------------------------------------------------------------------------------ the kernels
def _build() -> dict:
    if _kernels:
        return _kernels
    import triton
    import triton.language as tl

    @triton.jit
    def pair_kernel(x, sxm, mod, shp, w, swn, q, sqb, sqh, sqt, kc, skb, skh, skt, vc, svb, svh, svt,
                    cos, sin, scb, sct, M, K, S, start, PER, GROUP, OFF, NCOL, eps,
                    EPI: tl.constexpr, ADA: tl.constexpr, H: tl.constexpr, HKV: tl.constexpr, BM: tl.constexpr,
                    BN: tl.constexpr, BK: tl.constexpr, F32DOT: tl.constexpr):
        """Normed rows x two column sets of w: [j, j + BN) and [j + OFF, ...) in group g.
        EPI 0: q/k/v with RoPE (group = head, OFF = D / 2); EPI 1: gelu_tanh(gate) * up (OFF = F).
        One pass over x: the GEMM runs on x * m (m = mod[:K]: 1 + w, or adaRMS's 1 + scale) while the same
        tiles' squares are summed; the epilogue scales by rstd and (adaRMS) adds shift @ w^T (shp)."""
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        grp = pid_n // PER
        j = (pid_n - grp * PER) * BN + tl.arange(0, BN)
        jm = j < NCOL
        col_lo = grp * GROUP + j
        col_hi = col_lo + OFF
        rows = pid_m * BM + tl.arange(0, BM)
        rmask = rows < M
        ss = tl.zeros((BM,), tl.float32)
        acc_lo = tl.zeros((BM, BN), tl.float32)
        acc_hi = tl.zeros((BM, BN), tl.float32)
        for k0 in range(0, K, BK):
            kk = k0 + tl.arange(0, BK)
            km = kk < K
            xf = tl.load(x + rows[:, None] * sxm + kk[None, :], mask=rmask[:, None] & km[None, :],
                         other=0.0).to(tl.float32)
            ss += tl.sum(xf * xf, 1)
            a = (xf * tl.load(mod + kk, mask=km, other=0.0)[None, :]).to(x.dtype.element_ty)
            wm = km[:, None] & jm[None, :]
            wl = tl.load(w + col_lo[None, :] * swn + kk[:, None], mask=wm, other=0.0)
            wh = tl.load(w + col_hi[None, :] * swn + kk[:, None], mask=wm, other=0.0)
            if F32DOT:   # float32 inputs (no TF32), and under the CPU interpreter (its bf16 dot is wrong)
                acc_lo += tl.dot(a.to(tl.float32), wl.to(tl.float32), input_precision="ieee")
                acc_hi += tl.dot(a.to(tl.float32), wh.to(tl.float32), input_precision="ieee")
            else:
                acc_lo += tl.dot(a, wl)
                acc_hi += tl.dot(a, wh)
        rstd = 1.0 / tl.sqrt(ss / K + eps)
        acc_lo = acc_lo * rstd[:, None]
        acc_hi = acc_hi * rstd[:, None]
        if ADA:
            acc_lo += tl.load(shp + col_lo, mask=jm, other=0.0)[None, :]
            acc_hi += tl.load(shp + col_hi, mask=jm, other=0.0)[None, :]
        dt = x.dtype.element_ty
        lo = acc_lo.to(dt).to(tl.float32)    # the plain path rounds the GEMM's output to the dtype
        hi = acc_hi.to(dt).to(tl.float32)
        om = rmask[:, None] & jm[None, :]
        if EPI == 1:
            # gelu_tanh(g) = 0.5 g (1 + tanh(u)), tanh(u) = 1 - 2 / (exp(2u) + 1)
            u = 0.7978845608028654 * (lo + 0.044715 * lo * lo * lo)
            t = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)
            g = (0.5 * lo * (1.0 + t)).to(dt).to(tl.float32)
            tl.store(q + rows[:, None] * sqb + j[None, :], (g * hi).to(dt), mask=om)
        else:
            b = rows // S
            t = rows - b * S
            if grp < H + HKV:   # q and k heads: RoPE (rotate_half pairs column c with c + D / 2)
                cp = cos + b[:, None] * scb + t[:, None] * sct + j[None, :]
                sp = sin + b[:, None] * scb + t[:, None] * sct + j[None, :]
                c_lo = tl.load(cp, mask=om, other=0.0).to(dt).to(tl.float32)
                c_hi = tl.load(cp + OFF, mask=om, other=0.0).to(dt).to(tl.float32)
                s_lo = tl.load(sp, mask=om, other=0.0).to(dt).to(tl.float32)
                s_hi = tl.load(sp + OFF, mask=om, other=0.0).to(dt).to(tl.float32)
                r_lo = lo * c_lo - hi * s_lo
                r_hi = hi * c_hi + lo * s_hi
                lo = r_lo
                hi = r_hi
            if grp < H:
                dst = q + b[:, None] * sqb + grp * sqh + t[:, None] * sqt + j[None, :]
            elif grp < H + HKV:
                dst = kc + b[:, None] * skb + (grp - H) * skh + (start + t[:, None]) * skt + j[None, :]
            else:
                dst = vc + b[:, None] * svb + (grp - H - HKV) * svh + (start + t[:, None]) * svt + j[None, :]
            tl.store(dst, lo.to(dt), mask=om)
            tl.store(dst + OFF, hi.to(dt), mask=om)

    @triton.jit
    def gemm_kernel(a, sab, sat, sah, w, swn, res, srm, gate, out, som, part, lock, M, N, K, S, HEAD,
                    HAS_GATE: tl.constexpr, SPLIT: tl.constexpr, HAS_RES: tl.constexpr, GLU: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                    BK: tl.constexpr, F32DOT: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_k = tl.program_id(2)
        rows = pid_m * BM + tl.arange(0, BM)
        cols = pid_n * BN + tl.arange(0, BN)
        rmask = rows < M
        cmask = cols < N
        b = rows // S
        t = rows - b * S
        a_row = b * sab + t * sat
        k_per = tl.cdiv(tl.cdiv(K, SPLIT), BK) * BK
        k_lo = pid_k * k_per
        k_hi = tl.minimum(k_lo + k_per, K)
        acc = tl.zeros((BM, BN), tl.float32)
        for k0 in range(k_lo, k_hi, BK):
            kk = k0 + tl.arange(0, BK)
            km = kk < k_hi
            hd = kk // HEAD
            at = tl.load(a + a_row[:, None] + (hd * sah + kk - hd * HEAD)[None, :],
                         mask=rmask[:, None] & km[None, :], other=0.0)
            if GLU:   # A = gelu_tanh(gate) * up from the [gate | up] rows (up K columns later): no pass of its own
                up = tl.load(a + a_row[:, None] + (K + kk)[None, :], mask=rmask[:, None] & km[None, :],
                             other=0.0).to(tl.float32)
                gf = at.to(tl.float32)
                u = 0.7978845608028654 * (gf + 0.044715 * gf * gf * gf)
                th = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)
                at = ((0.5 * gf * (1.0 + th)).to(at.dtype).to(tl.float32) * up).to(at.dtype)
            wt = tl.load(w + cols[None, :] * swn + kk[:, None], mask=km[:, None] & cmask[None, :], other=0.0)
            if F32DOT:
                acc += tl.dot(at.to(tl.float32), wt.to(tl.float32), input_precision="ieee")
            else:
                acc += tl.dot(at, wt)
        om = rmask[:, None] & cmask[None, :]
        dt = res.dtype.element_ty
        if SPLIT == 1:
            y = acc.to(dt).to(tl.float32)
            if HAS_GATE:
                y = y * tl.load(gate + cols, mask=cmask, other=0.0).to(dt).to(tl.float32)[None, :]
            if HAS_RES:
                y += tl.load(res + rows[:, None] * srm + cols[None, :], mask=om, other=0.0).to(tl.float32)
            tl.store(out + rows[:, None] * som + cols[None, :], y.to(dt), mask=om)
        else:
            # split-K: partials to `part`; the last program of this tile to arrive sums them in a fixed
            # order (deterministic) and runs the epilogue, then re-zeroes the tile's counter
            pp = part + rows[:, None] * N + cols[None, :]
            tl.store(pp + pid_k * M * N, acc, mask=om)
            tl.debug_barrier()
            tile = pid_m * tl.num_programs(0) + pid_n
            arrived = tl.atomic_add(lock + tile, 1, sem="acq_rel")
            tl.debug_barrier()
            if arrived == SPLIT - 1:
                tot = tl.zeros((BM, BN), tl.float32)
                for s in tl.static_range(SPLIT):
                    tot += tl.load(pp + s * M * N, mask=om, other=0.0, cache_modifier=".cg")
                y = tot.to(dt).to(tl.float32)
                if HAS_GATE:
                    y = y * tl.load(gate + cols, mask=cmask, other=0.0).to(dt).to(tl.float32)[None, :]
                if HAS_RES:
                    y += tl.load(res + rows[:, None] * srm + cols[None, :], mask=om, other=0.0).to(tl.float32)
                tl.store(out + rows[:, None] * som + cols[None, :], y.to(dt), mask=om)
                tl.atomic_xchg(lock + tile, 0)

    _kernels.update(pair=pair_kernel, gemm=gemm_kernel)
    return _kernels
