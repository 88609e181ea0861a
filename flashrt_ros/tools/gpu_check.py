"""Check and time the edge kernels on a GPU: ``python -m flashrt_ros.tools.gpu_check --out FILE``.

1. Compiles kernels/preprocess.cu and kernels/postprocess.cu (cupy, NVRTC).
2. Checks them against the torch references on fresh random inputs (max abs diff; the output
   is poisoned with NaN first, so an unwritten element fails).
3. Times them against the same steps in torch ops on the same GPU, side by side in one run:
   preprocess for 1 and 3 cameras of 640x480 rgb8 -> 224x224, and postprocess of a 50 x 14
   chunk. Protocol: warm-up first, CUDA events around each call
   (eager) or each replay of a CUDA graph of 10 calls (device time without launch gaps),
   medians and p99 over many calls, inputs rotated among 4 sets; host-to-host rows use the
   wall clock with a synchronize per call. Bandwidth is compared with a 1 GiB device-to-device
   copy measured in the same run (bytes read + written).
Writes a Markdown report to ``--out``; the exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from flashrt_ros.runtime import kernels as K

S = 224
GRAPH_CALLS = 10
TOL_PRE, TOL_POST = 1e-5, 1e-6


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def time_events(fn, iters: int, warmup: int) -> list[float]:
    """Per-call device-side time (ms) with CUDA events on the current stream."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fn(i)
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def time_graph(fn, iters: int, warmup: int) -> list[float]:
    """Per-call time (ms) from replays of a CUDA graph holding GRAPH_CALLS calls."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(GRAPH_CALLS):
            fn(i)
    for _ in range(warmup):
        graph.replay()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        graph.replay()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / GRAPH_CALLS for s, e in zip(starts, ends)]


def time_wall(fn, iters: int, warmup: int) -> list[float]:
    """Per-call wall-clock time (ms), synchronizing after each call (host in, host out)."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    out = []
    for i in range(iters):
        t0 = time.perf_counter()
        fn(i)
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def copy_bandwidth(n_bytes: int = 1 << 30, iters: int = 20) -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written."""
    src = torch.rand(n_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    times = time_events(lambda i: dst.copy_(src), iters, 3)
    del src, dst
    return 2 * n_bytes / (statistics.median(times) * 1e-3)


# --------------------------------------------------------------------------- correctness
def check_preprocess(rng) -> tuple[float, bool, int]:
    cases, worst, written = 0, 0.0, True
    for trial in range(4):
        encodings = list(K.ENCODINGS)
        rng.shuffle(encodings)
        n = len(encodings)
        pre = K.Preprocessor(S, n, "cuda")
        assert pre.backend == "cupy"
        images, hosts = [], []
        for i, enc in enumerate(encodings):
            h, w = int(rng.integers(1, 1100)), int(rng.integers(1, 1100))
            img = rng.integers(0, 256, (h, w, K.ENCODINGS[enc].channels), dtype=np.uint8)
            hosts.append(img)
            c, pad = img.shape[2], int(rng.integers(1, 64))
            kind = (i + trial) % 3
            if kind == 0:
                images.append(img)
            elif kind == 1:  # host, padded rows (a ROS message's step)
                buf = np.zeros((h, w * c + pad), np.uint8)
                buf[:, : w * c] = img.reshape(h, -1)
                images.append(K.image_from_buffer(buf.tobytes(), h, w, w * c + pad, enc))
            else:  # device, padded rows
                buf = torch.zeros((h, w * c + pad), dtype=torch.uint8, device="cuda")
                buf[:, : w * c] = torch.from_numpy(img.reshape(h, -1)).cuda()
                images.append(buf[:, : w * c].view(h, w, c))
        out = torch.full((n, 3, S, S), float("nan"), device="cuda")
        pre(images, encodings, out)
        got = out.cpu()
        written &= bool(torch.isfinite(got).all())
        for i, (img, enc) in enumerate(zip(hosts, encodings)):
            worst = max(worst, (got[i] - K.preprocess_reference(img, enc, S)).abs().max().item())
            cases += 1
    return worst, written, cases


def check_postprocess(rng) -> tuple[float, float, bool, int]:
    worst_p = worst_v = 0.0
    counts_ok, cases = True, 0
    for horizon, dim in [(50, 7), (50, 14), (1, 3), (128, 32), (37, 40)]:
        mean, std = rng.normal(size=dim), rng.uniform(0.1, 2.0, dim)
        lo = rng.uniform(-3, 0, dim)
        limits = np.stack([lo, lo + rng.uniform(0.5, 4, dim)], 1)
        vmax = rng.uniform(0.5, 5.0, dim)
        dt = float(rng.uniform(0.01, 0.1))
        post = K.Postprocessor(mean, std, limits, vmax, dt, horizon, "cuda")
        actions = rng.normal(size=(horizon, dim)).astype(np.float32) * 2
        actions.reshape(-1)[rng.choice(horizon * dim, size=min(5, horizon * dim), replace=False)] = np.nan
        q0 = rng.normal(size=dim).astype(np.float32)
        got = post(torch.from_numpy(actions).cuda(), q0)
        ref = K.postprocess_reference(actions, q0, mean, std, limits, vmax, dt)
        worst_p = max(worst_p, float(np.abs(got.positions - ref.positions.numpy()).max()))
        worst_v = max(worst_v, float(np.abs(got.velocities - ref.velocities.numpy()).max()))
        counts_ok &= got.nonfinite == int(ref.nonfinite.item()) and np.isfinite(got.positions).all()
        cases += 1
    return worst_p, worst_v, counts_ok, cases


# --------------------------------------------------------------------------- timing
def _stats(times: list[float]) -> tuple[float, float]:
    return statistics.median(times) * 1e3, _pct(times, 0.99) * 1e3  # microseconds


def torch_steps(images, out: torch.Tensor) -> None:
    """The baseline: the same steps for rgb8 images in plain torch ops, written to be quick
    (no channel swap needed for rgb8; one in-place normalisation for all cameras)."""
    for c, img in enumerate(images):
        x = img.permute(2, 0, 1)[None].float()
        y = torch.nn.functional.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=False)
        out[c].copy_(y[0])
    out.mul_(2 / 255).sub_(1)


def time_preprocess(n_cam: int, rng, iters: int, warmup: int, bandwidth: float) -> list[dict]:
    sets = [[rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(n_cam)] for _ in range(4)]
    dev_sets = [[torch.from_numpy(img).cuda() for img in s] for s in sets]
    encodings = ["rgb8"] * n_cam
    pre = K.Preprocessor(S, n_cam, "cuda")
    out = torch.empty(n_cam, 3, S, S, device="cuda")
    check = torch.empty_like(out)
    pre(dev_sets[0], encodings, out)
    torch_steps(dev_sets[0], check)
    baseline_diff = (out - check).abs().max().item()  # the baseline computes the same thing

    def fused(i):
        pre(dev_sets[i % 4], encodings, out)

    def torch_ops(i):
        torch_steps(dev_sets[i % 4], out)

    def fused_host(i):
        pre(sets[i % 4], encodings, out)

    def torch_host(i):
        torch_steps([torch.from_numpy(img).to("cuda", non_blocking=True) for img in sets[i % 4]], out)

    nominal = n_cam * (480 * 640 * 3 + 3 * S * S * 4)  # each input byte read once, output written once
    rows = []
    for label, timer, f_fused, f_torch in [
        ("device images, same buffers, eager calls", time_events, lambda i: fused(0), lambda i: torch_ops(0)),
        ("device images, new buffers each call, eager", time_events, fused, torch_ops),
        # A graph bakes its arguments: one input set (4 x 3 images fit in L2 anyway).
        ("device images, CUDA graph replay", time_graph, lambda i: fused(0), lambda i: torch_ops(0)),
        ("host images (H2D incl.), wall clock", time_wall, fused_host, torch_host),
    ]:
        case = f"preprocess {n_cam} cam, {label}"
        try:
            a, b = _stats(timer(f_fused, iters, warmup)), _stats(timer(f_torch, iters, warmup))
        except Exception as e:  # report, don't hide: e.g. a capture that fails
            rows.append(dict(case=case, error=f"{type(e).__name__}: {e}"))
            continue
        row = dict(case=case, fused=a, torch=b, baseline_diff=baseline_diff)
        if timer is not time_wall:  # bytes/s only where the time is the device's
            row["rate"] = nominal / (a[0] * 1e-6)
            row["frac"] = row["rate"] / bandwidth
        rows.append(row)
    return rows


def time_postprocess(rng, iters: int, warmup: int) -> list[dict]:
    horizon, dim = 50, 14
    mean, std = rng.normal(size=dim), rng.uniform(0.1, 2.0, dim)
    limits = np.stack([-np.ones(dim) * 2, np.ones(dim) * 2], 1)
    vmax = np.full(dim, 3.0)
    post = K.Postprocessor(mean, std, limits, vmax, 0.05, horizon, "cuda")
    actions = [torch.from_numpy(rng.normal(size=(horizon, dim)).astype(np.float32)).cuda() for _ in range(4)]
    q0_host = rng.normal(size=dim).astype(np.float32)
    q0 = torch.from_numpy(q0_host).cuda()
    jm, js, jl, jv = (torch.as_tensor(x, dtype=torch.float32, device="cuda") for x in (mean, std, limits, vmax))

    def fused(i):
        post.launch(actions[i % 4], q0)

    def torch_ops(i):
        K.postprocess_reference(actions[i % 4], q0, jm, js, jl, jv, 0.05)

    def fused_host(i):
        post(actions[i % 4], q0_host)

    def torch_host(i):
        r = K.postprocess_reference(actions[i % 4], torch.from_numpy(q0_host).cuda(), jm, js, jl, jv, 0.05)
        r.positions.cpu(), r.velocities.cpu(), int(r.nonfinite.item())

    rows = []
    for label, timer, f_fused, f_torch in [
        ("eager calls", time_events, fused, torch_ops),
        ("CUDA graph replay", time_graph, lambda i: fused(0), lambda i: torch_ops(0)),
        ("to host arrays, wall clock", time_wall, fused_host, torch_host),
    ]:
        try:
            a, b = _stats(timer(f_fused, iters, warmup)), _stats(timer(f_torch, iters, warmup))
            rows.append(dict(case=f"postprocess 50x14, {label}", fused=a, torch=b))
        except Exception as e:
            rows.append(dict(case=f"postprocess 50x14, {label}", error=f"{type(e).__name__}: {e}"))
    return rows


# --------------------------------------------------------------------------- report
def profile_calls(n_cam: int = 1, calls: int = 2000) -> str:
    """Where the host time of an eager call goes (cProfile), for whoever tunes the call path."""
    import cProfile
    import io
    import pstats

    rng = np.random.default_rng()
    pre = K.Preprocessor(S, n_cam, "cuda")
    images = [torch.from_numpy(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).cuda() for _ in range(n_cam)]
    host = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(n_cam)]
    out = torch.empty(n_cam, 3, S, S, device="cuda")
    post = K.Postprocessor(np.zeros(14), np.ones(14), [[-1, 1]] * 14, np.ones(14), 0.05, 50, "cuda")
    actions = torch.randn(50, 14, device="cuda")
    q0 = np.zeros(14, np.float32)
    report = io.StringIO()
    for name, fn in [("preprocess, device images", lambda: pre(images, ["rgb8"] * n_cam, out)),
                     ("preprocess, host images", lambda: pre(host, ["rgb8"] * n_cam, out)),
                     ("postprocess to host", lambda: post(actions, q0))]:
        fn()
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            fn()
        prof.disable()
        torch.cuda.synchronize()
        report.write(f"\n=== {name}: {calls} calls ===\n")
        pstats.Stats(prof, stream=report).sort_stats("tottime").print_stats(12)
    return report.getvalue()


def render(meta: dict, checks: list[tuple], rows: list[dict]) -> str:
    lines = [
        "# Edge kernels: fused cupy kernels vs the same steps in torch ops",
        "",
        f"- machine: {meta['device']} ({meta['sms']} SMs), driver CUDA {meta['cuda']}, host {meta['host']}",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- software: torch {meta['torch']}, cupy {meta['cupy']}, numpy {np.__version__}, Python {platform.python_version()}",
        f"- copy bandwidth (1 GiB device-to-device, read + written, median of 20): {meta['bandwidth'] / 1e12:.2f} TB/s",
        "",
        "## Correctness (fresh random inputs; outputs poisoned with NaN before each run)",
        "",
        "| kernel | cases | max abs diff vs reference | tolerance | result |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, cases, diff, tol, ok in checks:
        lines.append(f"| {name} | {cases} | {diff:.3g} | {tol:g} | {'pass' if ok else 'FAIL'} |")
    lines += [
        "",
        "## Timing (microseconds per call; compare within a row)",
        "",
        f"Protocol: {meta['warmup']} warm-up calls, then {meta['iters']} timed calls; CUDA events around each "
        f"call (eager) or each replay of a graph of {GRAPH_CALLS} calls (per call = replay / {GRAPH_CALLS}); "
        "wall-clock rows synchronize after each call. Inputs rotate among 4 sets (graph rows: one set). "
        "Preprocess: 640x480 rgb8 -> 224x224, bytes counted = each input byte once + the float32 output "
        "once; the torch baseline is permute + float + interpolate + copy per camera, then one in-place "
        f"normalisation (max abs diff from the kernel: {meta['baseline_diff']:.2g}). Postprocess: the "
        "torch baseline is postprocess_reference on the GPU.",
        "",
        "| case | fused kernel p50 / p99 | torch ops p50 / p99 | speed-up (p50) | fused bytes/s | of copy bandwidth |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | error: {r['error']} | | | | |")
            continue
        (fm, fp), (tm, tp) = r["fused"], r["torch"]
        rate = f"{r['rate'] / 1e9:.0f} GB/s" if "rate" in r else ""
        frac = f"{100 * r['frac']:.1f}%" if "frac" in r else ""
        lines.append(f"| {r['case']} | {fm:.1f} / {fp:.1f} | {tm:.1f} / {tp:.1f} | {tm / fm:.1f}x | {rate} | {frac} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="Markdown report to write")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA GPU", file=sys.stderr)
        return 2
    cupy = K._cupy()
    if cupy is None:
        print(f"gpu_check: cupy is not available ({K._cupy_error})", file=sys.stderr)
        return 2
    rng = np.random.default_rng()  # fresh inputs on every run
    props = torch.cuda.get_device_properties(0)
    t0 = time.perf_counter()
    K.Preprocessor(S, 1, "cuda"), K.Postprocessor([0], [1], [[-1, 1]], [1], 0.1, 2, "cuda")
    compile_s = time.perf_counter() - t0
    bandwidth = copy_bandwidth()
    meta = dict(
        device=props.name, sms=props.multi_processor_count, cuda=torch.version.cuda, host=platform.node(),
        date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        command="python -m flashrt_ros.tools.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:]),
        torch=torch.__version__, cupy=cupy.__version__, bandwidth=bandwidth,
        iters=args.iters, warmup=args.warmup,
    )
    pre_diff, written, pre_cases = check_preprocess(rng)
    pos_diff, vel_diff, counts_ok, post_cases = check_postprocess(rng)
    checks = [
        ("preprocess (all encodings, sizes 1..1099, padded rows, host + device inputs)", pre_cases,
         pre_diff, TOL_PRE, pre_diff <= TOL_PRE and written),
        ("postprocess positions (NaN inserted; count matches)", post_cases, pos_diff, TOL_POST,
         pos_diff <= TOL_POST and counts_ok),
        ("postprocess velocities", post_cases, vel_diff, TOL_POST * 100, vel_diff <= TOL_POST * 100),
    ]
    rows = []
    for n_cam in (1, 3):
        rows += time_preprocess(n_cam, rng, args.iters, args.warmup, bandwidth)
    rows += time_postprocess(rng, args.iters, args.warmup)
    meta["baseline_diff"] = max((r.get("baseline_diff", 0.0) for r in rows), default=0.0)
    print(profile_calls(), file=sys.stderr)
    report = render(meta, checks, rows)
    report += f"\nKernel compile + load at start-up (NVRTC, both kernels, may hit cupy's disk cache): {compile_s:.2f} s\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)
    return 0 if all(c[-1] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
