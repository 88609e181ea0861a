"""The ROS path on the GPU (issue 14 item 6): camera message -> ActionChunk through the host, full-size
LeRobot π0.5 (bf16, the default fast path `compile: auto`), two 640x480 rgb8 cameras at 30 Hz.

    # here: stage the cp312 ROS wheels and this package (messages built for Python 3.12)
    scripts/stage_ros_device.sh
    # on the device (repository root; carry .ros312/carry):
    . scripts/ros_device_env.sh && python3 -m parity.gpu_ros --out $OUT --seconds 30 --warmup 5 \
        --runs default:timer,large_data:timer,large_data:observation
    # a run's own host parameters after a third colon: --runs default:observation:gc_freeze=false
    # the same rehearsed on a CPU with the tiny fixture:
    python3 -m parity.gpu_ros --out /tmp/gpu_ros --policy test/fixtures/lerobot_pi05_tiny --device cpu \
        --dtype float32 --actor-hz 5 --seconds 10

Each run is one `flashrt-ros soak` (flashrt_ros/tools/soak.py) in a process of its own: that process is the
robot (the camera driver: two 640x480 rgb8 cameras at 30 Hz, reliable, stamped at publication; a 7-joint
arm's /joint_states from a trajectory follower, published in the same tick with the same stamp, so the
chunk's stamp -- the newest of its inputs' -- is the camera stamp: soak --joints-with-cameras), and it
starts the host as a third process
(`python -m flashrt_ros.cli host --set ...`), which loads the policy, compiles and gates the fast path,
captures the chunk graph, and serves. Per ActionChunk received after --warmup, for --seconds: header
stamp (= the camera stamp it answers) -> arrival at the robot; the host's observation_to_ready and
inference_time (the engine's act() wall time) from the same message; chunk rate, holds, deadline misses.

A run is TRANSPORT:TRIGGER. TRANSPORT: `default` (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, as this
project runs everywhere: rmw_fastrtps then uses shared memory with 0.5 MB segments + UDP on localhost,
and ignores FASTDDS_BUILTIN_TRANSPORTS) or `large_data` (FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA with
ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET and ROS_STATIC_PEERS=127.0.0.1, all three processes: Fast DDS's
builtin LARGE_DATA transports, TCP + shared memory, UDP discovery; on a machine with a network this
discovers over multicast too: run it where that is harmless, e.g. inside `unshare -n`). TRIGGER: `timer` (the
deployed default: a chunk every 1/--actor-hz from the latest complete observation) or `observation`
(actor_trigger: observation, a chunk as each complete observation arrives).

The policy: --policy DIR, else (CUDA) parity.gpu_fast.write_full('pi05', ..., cameras=2): LeRobot π0.5's
full dims with seeded random weights (no checkpoints on the device), tokenizer and processor files from
the tiny fixture (a small word-level tokenizer: the prompt is as long as the task's words, not
PaliGemma's tokens; the prompt buffer is padded to the config's tokenizer_max_length either way).
First, per transport, a DDS probe (`--probe-seconds`, 0 = none): one process publishes two 640x480
rgb8 images at 30 Hz, another receives them: stamp -> arrival without the host, and a check that
discovery works on the machine at all (a transport whose probe received nothing is not soaked).
--budget-s: a run is not started when the time so far plus the longest run so far would pass it
(recorded as skipped), so one device call ends inside its limit with what it measured.
Out: <out>/ros-h200.json (every run's soak result, the host's start-up facts, machine), <out>/run.log
is the caller's tee, <out>/host-<run>.log the host's log.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASK = "pick up the red cube and put it in the bowl"


def host_sets(policy: Path, device: str, dtype: str, trigger: str) -> list[str]:
    """The host's parameters: config/lerobot_pi05.yaml's (model, dtype, compile, weights, chunk_dt,
    horizon, overlap) with this rig's cameras and arm (soak --cameras 2 --joints 7 adds those)."""
    return ["model=lerobot_pi05", f"checkpoint={policy}", f"device={device}", f"dtype={dtype}", "compile=auto",
            "weights=bf16", "chunk_dt=0.02", "horizon=50", "overlap_policy=blend", f"actor_trigger={trigger}"]


def transport_env(transport: str, domain: int) -> dict:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    if transport == "large_data":
        # rmw_fastrtps (Jazzy) ignores FASTDDS_BUILTIN_TRANSPORTS under ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST:
        # it then sets its own transports (shared memory with 0.5 MB segments + UDP). SUBNET keeps Fast DDS's
        # builtin ones; ROS_STATIC_PEERS=127.0.0.1 makes discovery work without multicast too.
        env.update(FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA", ROS_AUTOMATIC_DISCOVERY_RANGE="SUBNET",
                   ROS_STATIC_PEERS="127.0.0.1")
    elif transport == "default":
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    else:
        raise SystemExit(f"unknown transport {transport!r} (default | large_data)")
    return env


def probe_child(role: str, seconds: float) -> None:
    """--probe-child pub|sub: two 640x480 rgb8 cameras at 30 Hz (reliable, as soak's robot) for `seconds`;
    the subscriber prints one JSON line: images received, stamp -> arrival percentiles."""
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from flashrt_ros.ros.conversions import image_to_msg, ns_to_stamp, stamp_to_ns
    from flashrt_ros.tools.host_process import pct
    import numpy as np
    qos = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
    rclpy.init()
    node = rclpy.create_node(f"probe_{role}")
    topics = ["/probe/cam0", "/probe/cam1"]
    end = time.monotonic() + seconds
    if role == "pub":
        msg = image_to_msg(np.zeros((480, 640, 3), np.uint8), "rgb8")
        pubs = [node.create_publisher(Image, t, qos) for t in topics]
        nxt = time.monotonic()
        while time.monotonic() < end:
            msg.header.stamp = ns_to_stamp(time.time_ns())
            for p in pubs:
                p.publish(msg)
            nxt += 1 / 30
            time.sleep(max(0.0, nxt - time.monotonic()))
    else:
        lat: list[float] = []
        first: list[float] = []
        t0 = time.monotonic()

        def on_image(m):
            lat.append((time.time_ns() - stamp_to_ns(m.header.stamp)) / 1e6)
            if not first:
                first.append(time.monotonic() - t0)
        for t in topics:
            node.create_subscription(Image, t, on_image, qos)
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        # the first second is discovery: measured after it
        print(json.dumps({"received": len(lat), "first_image_after_s": first[0] if first else None,
                          "stamp_to_arrival": pct(lat[60:] if len(lat) > 120 else lat)}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def probe(transport: str, seconds: float, domain: int) -> dict:
    env = transport_env(transport, domain)
    me = [sys.executable, "-m", "parity.gpu_ros", "--out", "/tmp", "--probe-seconds", str(seconds)]
    sub = subprocess.Popen(me + ["--probe-child", "sub"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    pub = subprocess.Popen(me + ["--probe-child", "pub"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        out, err = sub.communicate(timeout=seconds + 30)
        pub.wait(timeout=30)
    except subprocess.TimeoutExpired:
        sub.kill(), pub.kill()
        return {"transport": transport, "error": "probe timed out"}
    try:
        return {"transport": transport, **json.loads(out.strip().splitlines()[-1])}
    except (ValueError, IndexError):
        return {"transport": transport, "error": f"probe exited {sub.returncode}", "stderr": err[-2000:]}


def run_one(name: str, args, policy: Path, domain: int, work: Path) -> dict:
    transport, trigger, *extra = name.split(":")   # extra: host parameters, "key=value+key=value"
    extra_sets = [kv for kv in "".join(extra).split("+") if kv]
    env = transport_env(transport, domain)
    if trigger not in ("timer", "observation"):
        raise SystemExit(f"unknown trigger {trigger!r} (timer | observation)")
    tag = name.replace(":", "-").replace("=", "_").replace("+", "-")
    host_log = args.out / f"host-{tag}.log"
    cmd = [sys.executable, "-m", "flashrt_ros.tools.soak", "--seconds", str(args.seconds), "--warmup",
           str(args.warmup), "--actor-hz", str(args.actor_hz), "--cameras", "2", "--joints", "7", "--joints-with-cameras",
           "--startup-timeout", str(args.startup_timeout), "--out", str(work), "--tag", tag,
           "--host-log", str(host_log)]
    for s in host_sets(policy, args.device, args.dtype, trigger) + extra_sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, text=True, capture_output=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"run": name, "error": f"soak exited {proc.returncode}", "stderr": proc.stderr[-4000:],
                "wall_s": wall}
    res = json.loads((work / f"soak-{tag}.json").read_text())
    log = host_log.read_text() if host_log.exists() else ""
    res.update(run=name, transport=transport, trigger=trigger, wall_s=wall,
               host_startup_lines=[ln for ln in log.splitlines() if any(k in ln for k in (
                   "compile", "frames:", "gate", "ready", "loaded", "graph", "captured", "heap", "ERROR", "WARN"))][:30])
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", default="default:timer,large_data:timer")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--actor-hz", type=float, default=30.0)
    ap.add_argument("--policy", type=Path, help="a LeRobot π0.5 directory with 2 cameras, 7 joints; default: "
                                                "written full size with seeded weights (CUDA)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--startup-timeout", type=float, default=150.0)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "flashrt-ros-gpu")
    ap.add_argument("--domain", type=int, default=int(os.environ.get("ROS_DOMAIN_ID", "42")))
    ap.add_argument("--probe-seconds", type=float, default=4.0)
    ap.add_argument("--budget-s", type=float, default=0.0, help="no run starts past this (0: no limit)")
    ap.add_argument("--probe-child", choices=("pub", "sub"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe_child:
        probe_child(args.probe_child, args.probe_seconds)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
                 "machine": platform.platform(), "nproc": os.cpu_count(), "argv": sys.argv[1:],
                 "seconds": args.seconds, "warmup_s": args.warmup, "actor_hz": args.actor_hz,
                 "camera": "2 x 640x480 rgb8 at 30 Hz, reliable", "runs": []}
    rev = Path(os.environ.get("FLASHRT_INSTALL", "/nonexistent")) / "REV"
    res["revision"] = rev.read_text().strip() if rev.exists() else None
    out_json = args.out / "ros-h200.json"

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)
        out_json.write_text(json.dumps(res, indent=2) + "\n")

    runs = [r for r in args.runs.split(",") if r]
    failed: set[str] = set()
    if args.probe_seconds > 0:
        res["probes"] = []
        for i, transport in enumerate(dict.fromkeys(r.split(":")[0] for r in runs)):
            p = probe(transport, args.probe_seconds, args.domain + 50 + i)
            res["probes"].append(p)
            if not p.get("received"):
                failed.add(transport)
            lat = p.get("stamp_to_arrival", {})
            log(f"probe {transport}: {p.get('received')} images, first after {p.get('first_image_after_s')} s, "
                f"stamp -> arrival p50 {lat.get('p50_ms', float('nan')):.2f} p99 {lat.get('p99_ms', float('nan')):.2f}"
                f" ms {p.get('error', '')} {p.get('stderr', '')}")

    import torch
    res["torch"] = torch.__version__
    if args.device.startswith("cuda"):
        res["device"] = torch.cuda.get_device_name(0)
    policy = args.policy
    if policy is None:
        from parity.gpu_fast import write_full
        policy = write_full("pi05", args.work / "pi05_2cam", 2)
        import gc
        gc.collect()
        torch.cuda.empty_cache()
    cfg = json.loads((Path(policy) / "config.json").read_text())
    res["policy"] = {"dir": str(policy), "type": cfg.get("type"),
                     "cameras": [k for k, v in cfg["input_features"].items() if v["type"] == "VISUAL"],
                     "chunk_size": cfg.get("chunk_size"), "num_inference_steps": cfg.get("num_inference_steps")}
    log(f"policy ready: {policy}")
    longest = 0.0
    for i, name in enumerate(runs):
        elapsed = time.perf_counter() - t0
        if name.split(":")[0] in failed or (args.budget_s and elapsed + longest > args.budget_s):
            why = "its transport's probe received nothing" if name.split(":")[0] in failed else \
                f"budget: {elapsed:.0f} s + the longest run {longest:.0f} s > {args.budget_s:g} s"
            res["runs"].append({"run": name, "skipped": why})
            log(f"{name}: skipped ({why})")
            continue
        r = run_one(name, args, Path(policy).resolve(), args.domain + i, args.work / "soak")
        longest = max(longest, r["wall_s"])
        res["runs"].append(r)
        if "error" in r:
            log(f"{name}: FAILED {r['error']}\n{r['stderr']}")
            continue
        c, a, d = r["obs_to_chunk"], r["chunk_inference_time"], r["chunk_observation_to_ready"]
        log(f"{name}: camera stamp -> ActionChunk p50 {c['p50_ms']:.1f} p99 {c['p99_ms']:.1f} max "
            f"{c.get('max_ms', float('nan')):.1f} ms (n {c['n']}) | stamp -> ready {d['p50_ms']:.1f} / "
            f"{d['p99_ms']:.1f} | act() {a['p50_ms']:.1f} / {a['p99_ms']:.1f} ms | {r['chunk_rate_hz']:.1f} "
            f"chunks/s | misses {r['deadline_misses']} holds {r['holds']} (fresh {r['holds_fresh']}) "
            f"stalls {len(r['stalls_fresh'])} | stamp = camera stamp {r['chunk_stamp_is_camera_stamp']}/{c['n']} "
            f"| run {r['wall_s']:.0f} s")
    log("done")
    return 0 if all("error" not in r and "skipped" not in r for r in res["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
