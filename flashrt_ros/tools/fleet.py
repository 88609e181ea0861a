"""Replay a fleet's bags in parallel on Ray, one merged report.

    flashrt-ros replay ~/bags/ --workers 4 --out runs/v2 --compare runs/v1
    flashrt-ros replay ~/bags/ --ray-address ray://head:10001 --gpus-per-bag 0.25 --out runs/v2

Each bag is one `flashrt-ros replay` (lock-step by default) as a Ray task: its own host process,
its own ROS_DOMAIN_ID (flashrt_ros/tools/domains.py), its own folder `OUT/<bag name>/`. So each
bag's outputs are exactly what replaying it alone gives, whatever the worker count or order.
A bag that cannot be read fails alone (its reason in the report); the others are kept. A bag whose
outputs already exist for the same bag, checkpoint and parameters (a content hash, `fleet.json`)
is not replayed again, unless `--force`. `OUT/fleet_report.md` (+ plots) merges every bag's
`summary.json`.

Exit status: 2 if a bag failed (unreadable, corrupt, a crash), else 1 if one diverged from its
`--compare` reference beyond `--tolerance`, else 3 if one had nothing to replay, else 0.
Ray is an optional extra (`pip install .[fleet]`); a single bag never needs it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

EXIT_OK, EXIT_DIVERGED, EXIT_ERROR, EXIT_NOTHING = 0, 1, 2, 3
BAG_SUFFIXES = (".mcap", ".db3")


# --- which bags --------------------------------------------------------------------------------------
def is_fleet(args) -> bool:
    """Several bags, a directory holding bags (not itself a bag, nor a bag's storage files without
    its metadata: the single-bag path explains those), or --workers."""
    if len(args.bag) > 1 or args.workers is not None or args.ray_address:
        return True
    path = Path(args.bag[0])
    if not path.is_dir() or _is_bag(path) or any(p.suffix in BAG_SUFFIXES for p in path.iterdir()):
        return False
    try:
        return bool(find_bags([path]))
    except ValueError:
        return False


def _is_bag(path: Path) -> bool:
    if path.is_file():
        return path.suffix in BAG_SUFFIXES
    return (path / "metadata.yaml").is_file()


def find_bags(paths) -> list[Path]:
    """The bags named, and those found under a directory that is not itself a bag (a bag is a
    rosbag2 directory, with its metadata.yaml, or a lone .mcap/.db3 file), each once, sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ValueError(f"{raw}: no such file or directory")
        if _is_bag(path):
            found.append(path.resolve())
            continue
        bag_dirs = sorted({m.parent for m in path.rglob("metadata.yaml")})
        loose = sorted(p for p in path.rglob("*") if p.suffix in BAG_SUFFIXES
                       and not any(d in p.parents for d in bag_dirs))
        found += [p.resolve() for p in bag_dirs + loose]
    bags = sorted(dict.fromkeys(found))
    if not bags:
        raise ValueError(f"no bags in {', '.join(map(str, paths))}")
    return bags


def bag_names(bags: list[Path]) -> list[str]:
    """A folder name per bag: its own name, with parent folders added where two are alike."""
    names = [b.stem if b.is_file() else b.name for b in bags]
    depth = 1
    while len(set(names)) < len(names) and depth < 8:
        depth += 1
        names = ["__".join((*b.parts[-depth:-1], b.stem if b.is_file() else b.name)) for b in bags]
    return names


# --- one bag, as a Ray task ---------------------------------------------------------------------------
def per_bag_argv(args, bag: Path, out: Path, compare: Path | None) -> list[str]:
    """The single-bag `flashrt-ros replay` command line for `bag`, from the fleet's arguments."""
    argv = [str(bag), "--out", str(out), "--quiet", "--tolerance", repr(args.tolerance)]
    for f in args.params_file:
        argv += ["--params-file", str(Path(f).resolve())]
    for item in args.set:
        argv += ["--set", item]
    if args.rate is not None:
        argv += ["--rate", repr(args.rate)]
    elif args.offline:
        argv.append("--offline")
    for item in args.camera:
        argv += ["--camera", item]
    for flag, value in (("--joint-states", args.joint_states), ("--task-topic", args.task_topic),
                        ("--coach-topic", args.coach_topic), ("--interrupt-topic", args.interrupt_topic),
                        ("--task", args.task)):
        if value is not None:
            argv += [flag, value]
    for topic in args.command_topic or ():
        argv += ["--command-topic", topic]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    if compare is not None:
        argv += ["--compare", str(compare)]
    return argv


def replay_bag(argv: list[str]) -> dict:
    """Run one replay in its own process with a ROS_DOMAIN_ID of its own (the Ray task's body)."""
    from flashrt_ros.tools.domains import claim_domain_id
    domain, lock = claim_domain_id()
    t0 = time.monotonic()
    try:
        # its own domain, and discovery kept on this machine: on a cluster, two nodes' replays
        # with the same domain id must not meet over the network (Humble: ROS_LOCALHOST_ONLY)
        env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
        if os.environ.get("ROS_DISTRO") == "humble":
            env["ROS_LOCALHOST_ONLY"] = "1"
        env["PYTHONSAFEPATH"] = "1"      # `python -m` must not import a source tree in the cwd
        # (Ray puts the driver's cwd first on its workers' sys.path; the replay must be the
        # installed flashrt_ros, with its generated messages)
        command = [shutil.which("flashrt-ros") or "", "replay"] if shutil.which("flashrt-ros") else \
            [sys.executable, "-m", "flashrt_ros.cli", "replay"]
        proc = subprocess.run([*command, *argv], env=env, capture_output=True, text=True)
    finally:
        lock.close()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("flashrt-ros replay:")]
    reason = errors[-1][len("flashrt-ros replay:"):].strip() if errors else (
        proc.stderr.strip().splitlines()[-1] if proc.returncode not in (0, 1) and proc.stderr.strip() else "")
    return {"returncode": proc.returncode, "reason": reason, "wall_s": time.monotonic() - t0, "domain": domain}


# --- the content key ------------------------------------------------------------------------------------
def _hash_tree(h, path: Path) -> None:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent if path.is_file() else path)).encode())
        h.update(f.read_bytes())


def run_key(argv: list[str], bag: Path, checkpoint: str) -> str:
    """sha256 of what decides a bag's outputs: the bag's files (names, sizes, mtimes), the
    checkpoint's bytes, the params files' bytes, the --compare reference (its outputs' size and
    mtime) and the rest of the command line but --out."""
    h = hashlib.sha256()
    files = [bag] if bag.is_file() else sorted(p for p in bag.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    if checkpoint:
        _hash_tree(h, Path(checkpoint).expanduser())
    else:
        from flashrt_ros.models.checkpoint import REFERENCE_WEIGHTS
        _hash_tree(h, Path(REFERENCE_WEIGHTS))
    it = iter(argv[1:])
    for a in it:
        if a == "--out":
            next(it, None)
            continue
        h.update(a.encode() + b"\0")
        if a == "--params-file":
            h.update(Path(next(it)).read_bytes())
        elif a == "--compare":          # the reference: its outputs as they are now
            ref = Path(next(it))
            ref = ref / "outputs.mcap" if ref.is_dir() else ref
            st = ref.stat()
            h.update(f"{ref}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _checkpoint(args) -> str:
    from flashrt_ros.host.params import load_config
    from .replay import _pairs
    return load_config(args.params_file, os.environ, _pairs(args.set, "--set")).checkpoint


# --- the fleet ------------------------------------------------------------------------------------------
@dataclass
class BagRun:
    bag: Path
    name: str
    out: Path
    argv: list[str]
    key: str
    returncode: int | None = None
    reason: str = ""
    wall_s: float = float("nan")
    skipped: bool = False
    summary: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.returncode not in (EXIT_OK, EXIT_DIVERGED, EXIT_NOTHING)

    def divergence(self) -> float:
        c = self.summary.get("compare") or {}
        return float(c.get("max_diff", 0.0)) if c else 0.0


def _done_before(run: BagRun) -> bool:
    """Its outputs exist for the same key, from a run that did not fail."""
    try:
        record = json.loads((run.out / "fleet.json").read_text())
    except (OSError, ValueError):
        return False
    return (record.get("key") == run.key and record.get("returncode") in (EXIT_OK, EXIT_DIVERGED)
            and (run.out / "outputs.mcap").is_file() and (run.out / "summary.json").is_file())


def run_fleet(args, bags: list[Path]) -> int:
    try:
        import ray
    except ImportError:
        raise ValueError("replaying several bags needs Ray: pip install 'flashrt_ros[fleet]' (or pip install ray)") \
            from None
    out_root = Path(args.out or "replay_fleet").resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    compare_root = Path(args.compare).resolve() if args.compare else None
    checkpoint = _checkpoint(args)
    runs = []
    for bag, name in zip(bags, bag_names(bags)):
        out = out_root / name
        ref = compare_root / name if compare_root is not None else None
        argv = per_bag_argv(args, bag, out, ref if ref is not None and ref.exists() else None)
        runs.append(BagRun(bag, name, out, argv, run_key(argv, bag, checkpoint)))
    todo = [r for r in runs if args.force or not _done_before(r)]
    for r in runs:
        if r not in todo:
            r.skipped, r.returncode = True, json.loads((r.out / "fleet.json").read_text())["returncode"]

    workers = args.workers or os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    t0 = time.monotonic()
    ray_start_s = 0.0
    if todo:
        t_ray = time.monotonic()
        if args.ray_address:
            ray.init(address=args.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, num_gpus=None if args.gpus_per_bag else 0, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        ray_start_s = time.monotonic() - t_ray
        try:
            gpus = ray.cluster_resources().get("GPU", 0)
            if args.gpus_per_bag and gpus < args.gpus_per_bag:     # its tasks would wait forever
                raise ValueError(f"--gpus-per-bag {args.gpus_per_bag:g}, but the Ray cluster has {gpus:g} GPU(s)")
            _run_tasks(ray, todo, workers, args, len(runs), quiet=args.quiet)
        finally:
            ray.shutdown()
    for r in runs:
        try:
            r.summary = json.loads((r.out / "summary.json").read_text())
        except (OSError, ValueError):
            r.summary = {}
    report = write_fleet_report(out_root, runs, args, workers=workers, ray_start_s=ray_start_s,
                                wall_s=time.monotonic() - t0, compare_root=compare_root)
    failed = [r for r in runs if r.failed]
    diverged = [r for r in runs if r.returncode == EXIT_DIVERGED]
    nothing = [r for r in runs if r.returncode == EXIT_NOTHING]
    print(f"fleet: {len(runs)} bags ({sum(r.skipped for r in runs)} already done), {len(failed)} failed, "
          f"{len(diverged)} diverged, {len(nothing)} with nothing to replay; report {report}")
    for r in failed:
        print(f"fleet: {r.name}: failed: {r.reason or f'exit code {r.returncode}'}", file=sys.stderr)
    return EXIT_ERROR if failed else EXIT_DIVERGED if diverged else EXIT_NOTHING if nothing else EXIT_OK


def _run_tasks(ray, todo: list[BagRun], workers: int, args, total: int, quiet: bool) -> None:
    task = ray.remote(replay_bag).options(num_cpus=1, num_gpus=args.gpus_per_bag or 0, max_retries=0)
    pending, queue, done = {}, list(todo), total - len(todo)
    t0 = time.monotonic()
    while queue or pending:
        while queue and len(pending) < workers:
            r = queue.pop(0)
            r.out.mkdir(parents=True, exist_ok=True)
            pending[task.remote(r.argv)] = r
        ready, _ = ray.wait(list(pending), num_returns=1)
        r = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except Exception as exc:          # the task itself died (a worker lost): this bag fails alone
            result = {"returncode": -1, "reason": f"Ray task failed: {type(exc).__name__}: {exc}",
                      "wall_s": float("nan")}
        r.returncode, r.reason, r.wall_s = result["returncode"], result["reason"], result["wall_s"]
        (r.out / "fleet.json").write_text(json.dumps({"key": r.key, "returncode": r.returncode,
                                                      "reason": r.reason, "bag": str(r.bag)}, indent=1))
        done += 1
        if not quiet:
            failed = sum(1 for x in todo if x.returncode is not None and x.failed)
            bar = "#" * int(20 * done / total)
            sys.stderr.write(f"fleet [{bar:<20}] {done}/{total} bags | {failed} failed | "
                             f"{time.monotonic() - t0:.1f} s | {r.name}: exit {r.returncode}\n")
            sys.stderr.flush()


# --- the merged report ----------------------------------------------------------------------------------
def _f(x, fmt="{:.1f}") -> str:
    try:
        return "n/a" if x is None or x != x else fmt.format(x)
    except (TypeError, ValueError):
        return str(x)


def write_fleet_report(out_root: Path, runs: list[BagRun], args, *, workers: int, ray_start_s: float,
                       wall_s: float, compare_root: Path | None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in runs if not r.failed]
    order = sorted(runs, key=lambda r: (not r.failed, -r.divergence(), r.name))
    totals = {k: sum(int(r.summary.get(k, 0) or 0) for r in ok)
              for k in ("chunks", "subtask_changes", "deadline_misses", "skipped", "unknown_topics", "dropped_frames")}
    lines = [f"# Fleet replay: {len(runs)} bags", "",
             f"{len(ok) - sum(r.returncode == EXIT_NOTHING for r in ok)} replayed, "
             f"{sum(r.failed for r in runs)} failed, {sum(r.returncode == EXIT_DIVERGED for r in runs)} diverged "
             f"beyond {args.tolerance:g}, {sum(r.returncode == EXIT_NOTHING for r in runs)} with nothing to replay, "
             f"{sum(r.skipped for r in runs)} already done (same bag, checkpoint and parameters). "
             f"{workers} worker(s) on Ray "
             f"({'cluster ' + args.ray_address if args.ray_address else 'local'}, started in {ray_start_s:.1f} s); "
             f"wall time {wall_s:.1f} s." + (f" Compared with `{compare_root}`." if compare_root else ""), "",
             "## Totals", "",
             "| chunks | subtask changes | deadline misses | skipped inputs | dropped frames | unknown topics |",
             "|---:|---:|---:|---:|---:|---:|",
             f"| {totals['chunks']} | {totals['subtask_changes']} | {totals['deadline_misses']} | {totals['skipped']} | "
             f"{totals['dropped_frames']} | {totals['unknown_topics']} |", ""]
    failed = [r for r in order if r.failed]
    if failed:
        lines += ["## Failed", ""] + [f"- `{r.name}` (`{r.bag}`): {r.reason or f'exit code {r.returncode}'}"
                                      for r in failed] + [""]
    lines += ["## Bags (largest divergence first)", "",
              "| bag | exit | chunks | subtask changes | latency p50 / p99 ms | deadline misses | skipped / dropped "
              "/ unknown | missing | boundary jump p95 | max divergence | first divergence | wall s |",
              "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|"]
    for r in order:
        if r.failed:
            continue
        s, c = r.summary, r.summary.get("compare") or {}
        missing = ", ".join(f"{k}: {v}" for k, v in (s.get("missing") or {}).items())
        lines.append(
            f"| [`{r.name}`]({r.name}/report.md) | {r.returncode}{' (done before)' if r.skipped else ''} | "
            f"{s.get('chunks', 0)} | {s.get('subtask_changes', 0)} | {_f(s.get('latency_p50_ms'))} / "
            f"{_f(s.get('latency_p99_ms'))} | {s.get('deadline_misses', 0)} | {s.get('skipped', 0)} / "
            f"{s.get('dropped_frames', 0)} / {s.get('unknown_topics', 0)} | {missing} | "
            f"{_f(((s.get('boundaries') or {}).get('position_jump') or {}).get('p95'), '{:.3g}')} | "
            f"{_f(c.get('max_diff'), '{:.3g}') if c else 'no reference'} | {c.get('first_divergence', '') if c else ''} | "
            f"{_f(s.get('wall_s'))} |")
    lines.append("")
    plotted = [r for r in order if not r.failed and r.summary]
    if plotted:
        fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(plotted) + 1.5), sharey=True)
        y = range(len(plotted))
        axes[0].barh(y, [max(r.divergence(), 1e-12) for r in plotted], color="tab:red")
        for k, r in enumerate(plotted):
            c = r.summary.get("compare")
            if not c or c.get("identical"):
                axes[0].text(1.5e-12, k, "no reference" if not c else "identical", va="center", fontsize=8)
        axes[0].set_xscale("log")
        axes[0].set_xlabel("max action divergence from the reference (joint units)")
        if args.tolerance > 0:
            axes[0].axvline(args.tolerance, color="k", ls="--", lw=1, label=f"tolerance {args.tolerance:g}")
            axes[0].legend(loc="lower right")
        axes[1].barh(y, [r.summary.get("latency_p99_ms") or 0 for r in plotted], color="tab:blue", label="p99")
        axes[1].barh(y, [r.summary.get("latency_p50_ms") or 0 for r in plotted], color="tab:cyan", label="p50")
        axes[1].set_xlabel("inference latency (ms)")
        axes[1].legend(loc="lower right")
        axes[0].set_yticks(list(y), [r.name for r in plotted])
        axes[0].invert_yaxis()
        fig.tight_layout()
        fig.savefig(out_root / "fleet.png", dpi=90)
        plt.close(fig)
        lines += ["## Plot", "", "![divergence and latency per bag](fleet.png)", ""]
    path = out_root / "fleet_report.md"
    path.write_text("\n".join(lines))
    return path
