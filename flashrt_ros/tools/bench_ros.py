"""flashrt-ros bench-ros: camera message -> action chunk message through the real ROS host.

    flashrt-ros bench-ros [--actor-hz 50] [--camera-hz 50] [--seconds 20] [--device auto]
                          [--image 640x480] [--out docs/benchmarks] [--tag cpu]

A camera node publishes rgb8 images of the reference world and joint states, stamped at
publication; the host runs as its own process (`flashrt-ros host`, as deployed: camera driver and
host are separate processes) and turns them into ActionChunks. For every chunk received: latency = arrival time -
header.stamp (the camera stamp it answers): DDS both ways + preprocess + inference + conversion.
Loop jitter: the spread of the intervals between chunk arrivals at the actor rate.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from flashrt_ros.msg import ActionChunk
from flashrt_ros.ros.conversions import image_to_msg, joint_state_to_msg, stamp_to_ns
from flashrt_ros.sim import JOINT_NAMES, TabletopWorld


class CameraRig:
    """Publishes camera + joint states at `hz` from a thread; records chunk arrivals."""

    def __init__(self, hz: float, size: tuple[int, int]):
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node("bench_camera", context=self.context)
        self.world = TabletopWorld()
        self.world.reset(11)
        w, h = size
        # the world's render, resized by pixel repetition to the camera resolution under test
        img = self.world.render()
        ys = (np.arange(h) * img.shape[0] // h)
        xs = (np.arange(w) * img.shape[1] // w)
        self.image = np.ascontiguousarray(img[ys][:, xs])
        self.image_pub = self.node.create_publisher(Image, "/camera/top/image_raw", 10)
        self.joint_pub = self.node.create_publisher(JointState, "/joint_states", 10)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.task_pub = self.node.create_publisher(String, "/flashrt/task", latched)
        self.arrivals: list[tuple[float, int]] = []   # (arrival ns, stamp ns)
        self.node.create_subscription(ActionChunk, "/flashrt/action_chunk", self._on_chunk, 50)
        self.period = 1.0 / hz
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._spin), threading.Thread(target=self._publish)]

    def _on_chunk(self, msg) -> None:
        self.arrivals.append((time.time_ns(), stamp_to_ns(msg.header.stamp)))

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def _publish(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            stamp = time.time_ns()
            self.image_pub.publish(image_to_msg(self.image, "rgb8", stamp))
            self.joint_pub.publish(joint_state_to_msg(JOINT_NAMES, self.world.position, stamp))
            nxt += self.period
            time.sleep(max(0.0, nxt - time.monotonic()))

    def start(self, task: str) -> None:
        self.task_pub.publish(String(data=task))
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def _pct(a) -> dict:
    a = np.asarray(a, dtype=np.float64)
    if not a.size:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "n": 0}
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "n": int(a.size)}


def run(actor_hz: float, camera_hz: float, seconds: float, device: str, size: tuple[int, int]) -> dict:
    host = subprocess.Popen(
        [sys.executable, "-m", "flashrt_ros.cli", "host", "--set", f"device={device}", "--set", f"actor_hz={actor_hz}",
         "--set", "planner_hz=2.0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    rig = None
    try:
        rig = CameraRig(camera_hz, size)
        rig.start(rig.world.task_text)
        deadline = time.monotonic() + 120
        while len(rig.arrivals) < 5:        # host up (graphs captured), discovery, first subtask
            if host.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the host produced no chunks: {host.stderr.read()[-2000:] if host.poll() else ''}")
            time.sleep(0.1)
        rig.arrivals.clear()
        time.sleep(seconds)
        arrivals = list(rig.arrivals)
    finally:
        if rig is not None:
            rig.close()
        host.send_signal(signal.SIGINT)
        try:
            host.wait(20)
        except subprocess.TimeoutExpired:
            host.kill()
    arrive = np.array([a for a, _ in arrivals], dtype=np.float64)
    latency_ms = (arrive - np.array([s for _, s in arrivals], dtype=np.float64)) / 1e6
    intervals_ms = np.diff(arrive) / 1e6
    period_ms = 1e3 / min(actor_hz, camera_hz)
    return {
        "actor_hz": actor_hz, "camera_hz": camera_hz, "image": f"{size[0]}x{size[1]} rgb8", "seconds": seconds,
        "chunks": len(arrivals), "chunk_rate_hz": len(arrivals) / seconds,
        "camera_to_chunk": _pct(latency_ms),
        "interval": _pct(intervals_ms),
        "jitter_std_ms": float(np.std(intervals_ms)) if intervals_ms.size else float("nan"),
        "jitter_p99_abs_dev_ms": float(np.percentile(np.abs(intervals_ms - period_ms), 99)) if intervals_ms.size
        else float("nan"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="flashrt-ros bench-ros", description=__doc__.split("\n")[0])
    ap.add_argument("--actor-hz", type=float, default=50.0)
    ap.add_argument("--camera-hz", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--image", default="640x480")
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    w, h = (int(x) for x in args.image.lower().split("x"))
    res = run(args.actor_hz, args.camera_hz, args.seconds, args.device, (w, h))
    res.update(machine=f"{platform.machine()} {platform.processor()}".strip(),
               date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               command="flashrt-ros bench-ros " + " ".join(argv if argv is not None else sys.argv[1:]))
    c, i = res["camera_to_chunk"], res["interval"]
    md = (f"# flashrt-ros bench-ros — {res['machine']}\n\n- date: {res['date']}\n- command: `{res['command']}`\n\n"
          "| actor Hz | camera Hz | image | chunks/s | camera → chunk p50 / p99 (ms) | chunk interval p50 / p99 (ms) "
          "| jitter std / p99 |dev| (ms) |\n|---|---|---|---|---|---|---|\n"
          f"| {res['actor_hz']:g} | {res['camera_hz']:g} | {res['image']} | {res['chunk_rate_hz']:.1f} | "
          f"{c['p50_ms']:.1f} / {c['p99_ms']:.1f} | {i['p50_ms']:.1f} / {i['p99_ms']:.1f} | "
          f"{res['jitter_std_ms']:.2f} / {res['jitter_p99_abs_dev_ms']:.2f} |\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or "cpu"
    (out / f"bench-ros-{tag}.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / f"bench-ros-{tag}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
