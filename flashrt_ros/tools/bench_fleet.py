"""Fleet replay wall time against the worker count, in one run: N fixture bags (the reference world,
flashrt_ros/tools/make_fixture_bag.py, seeds 1..N), replayed as a fleet with each worker count in
turn (`flashrt-ros replay DIR --workers W`, a fresh output folder each, so nothing is skipped).

    python -m flashrt_ros.tools.bench_fleet --bags 8 --workers 1 2 --out /tmp/bench_fleet --json docs/benchmarks/fleet.json

Each fleet run is a separate process, timed from start to exit; Ray's own start-up (ray.init in
that process) is read from the merged report and given separately.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path


def make_bags(directory: Path, n: int, duration_s: float) -> list[Path]:
    from .make_fixture_bag import FIXTURES, make_fixture_bag
    spec = dataclasses.replace(FIXTURES["robot"], duration_s=duration_s)
    bags = []
    for seed in range(1, n + 1):
        path = directory / f"bag_{seed:02d}"
        if not (path / "metadata.yaml").is_file():
            make_fixture_bag(path, dataclasses.replace(spec, seed=seed))
        bags.append(path)
    return bags


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--bags", type=int, default=8)
    p.add_argument("--duration", type=float, default=4.0, help="seconds of robot data per bag")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default="/tmp/bench_fleet")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    out = Path(args.out)
    bags_dir = out / "bags"
    make_bags(bags_dir, args.bags, args.duration)
    rows = []
    for w in args.workers:
        run_dir = out / f"workers_{w}_{time.strftime('%H%M%S')}"
        cmd = [sys.executable, "-m", "flashrt_ros.cli", "replay", str(bags_dir), "--workers", str(w),
               "--out", str(run_dir), "--quiet", "--threads", "1", "--set", "device=cpu"]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.monotonic() - t0
        report = (run_dir / "fleet_report.md").read_text() if (run_dir / "fleet_report.md").is_file() else ""
        ray_s = re.search(r"started in ([0-9.]+) s", report)
        per_bag = [json.loads((d / "summary.json").read_text())["wall_s"] for d in sorted(run_dir.glob("bag_*"))
                   if (d / "summary.json").is_file()]
        rows.append({"workers": w, "exit_code": proc.returncode, "wall_s": wall,
                     "ray_start_s": float(ray_s.group(1)) if ray_s else None,
                     "bag_wall_s_mean": sum(per_bag) / len(per_bag) if per_bag else None, "bags": len(per_bag)})
        print(f"workers {w}: exit {proc.returncode}, wall {wall:.1f} s, Ray start-up "
              f"{rows[-1]['ray_start_s']} s, {len(per_bag)} bags, mean per-bag replay "
              f"{rows[-1]['bag_wall_s_mean']:.1f} s", flush=True)
    base = rows[0]["wall_s"]
    for r in rows:
        r["speedup_vs_first"] = base / r["wall_s"]
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
              "cpus": __import__("os").cpu_count(), "bags": args.bags, "duration_s": args.duration,
              "command": " ".join(["python -m flashrt_ros.tools.bench_fleet", *(argv or sys.argv[1:])]), "runs": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
