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
import sys
import time

import numpy as np
from sensor_msgs.msg import Image, JointState

from flashrt_ros.msg import ActionChunk
from flashrt_ros.ros.conversions import image_to_msg, joint_state_to_msg, stamp_to_ns
from flashrt_ros.sim import JOINT_NAMES

from .host_process import (RigNode, machine, pct as _pct, start_host, stop_host, world_image,
                           write_results)


class CameraRig(RigNode):
    """Publishes camera + joint states at `hz` from a thread; records chunk arrivals."""

    def __init__(self, hz: float, size: tuple[int, int]):
        super().__init__("bench_camera")
        # the world's render, resized by pixel repetition to the camera resolution under test
        self.world, self.image = world_image(size)
        self.image_pub = self.node.create_publisher(Image, "/camera/top/image_raw", 10)
        self.joint_pub = self.node.create_publisher(JointState, "/joint_states", 10)
        self.arrivals: list[tuple[float, int]] = []   # (arrival ns, stamp ns)
        self.node.create_subscription(ActionChunk, "/flashrt/action_chunk", self._on_chunk, 50)
        self.period = 1.0 / hz

    def _on_chunk(self, msg) -> None:
        self.arrivals.append((time.time_ns(), stamp_to_ns(msg.header.stamp)))

    def _publish(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            stamp = time.time_ns()
            self.image_pub.publish(image_to_msg(self.image, "rgb8", stamp))
            self.joint_pub.publish(joint_state_to_msg(JOINT_NAMES, self.world.position, stamp))
            nxt += self.period
            time.sleep(max(0.0, nxt - time.monotonic()))


def run(actor_hz: float, camera_hz: float, seconds: float, device: str, size: tuple[int, int]) -> dict:
    host = start_host([f"device={device}", f"actor_hz={actor_hz}", "planner_hz=2.0"])
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
        stop_host(host)
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
    where = machine()
    res.update(machine=where["machine"], date=where["date"],
               command="flashrt-ros bench-ros " + " ".join(argv if argv is not None else sys.argv[1:]))
    c, i = res["camera_to_chunk"], res["interval"]
    md = (f"# flashrt-ros bench-ros — {res['machine']}\n\n- date: {res['date']}\n- command: `{res['command']}`\n\n"
          "| actor Hz | camera Hz | image | chunks/s | camera → chunk p50 / p99 (ms) | chunk interval p50 / p99 (ms) "
          "| jitter std / p99 |dev| (ms) |\n|---|---|---|---|---|---|---|\n"
          f"| {res['actor_hz']:g} | {res['camera_hz']:g} | {res['image']} | {res['chunk_rate_hz']:.1f} | "
          f"{c['p50_ms']:.1f} / {c['p99_ms']:.1f} | {i['p50_ms']:.1f} / {i['p99_ms']:.1f} | "
          f"{res['jitter_std_ms']:.2f} / {res['jitter_p99_abs_dev_ms']:.2f} |\n")
    write_results(args.out, f"bench-ros-{args.tag or 'cpu'}", res, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
