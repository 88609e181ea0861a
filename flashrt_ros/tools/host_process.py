"""What the ROS benchmarks share: the host as its own process (started, and always stopped), the
other side of it (`RigNode`: a node that publishes inputs from a thread), the reference world's
render at a camera's resolution, percentiles, and where a number was measured.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from flashrt_ros.sim import TabletopWorld

HOST_CMD = [sys.executable, "-m", "flashrt_ros.cli", "host"]


class RigNode:
    """A node in a context of its own, spun in one thread while `_publish` (the subclass's) runs in
    another; start() publishes the task (latched, as an operator would) and starts both; close()
    stops and joins them and shuts the context down."""

    def __init__(self, name: str):
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.task_pub = self.node.create_publisher(String, "/flashrt/task", latched)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._spin, daemon=True),
                         threading.Thread(target=self._publish, daemon=True)]

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def _publish(self) -> None:
        raise NotImplementedError

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


def world_image(size: tuple[int, int], seed: int = 11) -> tuple[TabletopWorld, np.ndarray]:
    """The reference world (reset to `seed`) and its render resized by pixel repetition to w x h."""
    world = TabletopWorld()
    world.reset(seed)
    w, h = size
    img = world.render()
    ys = np.arange(h) * img.shape[0] // h
    xs = np.arange(w) * img.shape[1] // w
    return world, np.ascontiguousarray(img[ys][:, xs])


def start_host(sets: list[str], host_cmd: str | None = None, stderr=subprocess.PIPE) -> subprocess.Popen:
    """`flashrt-ros host --set ...` (or `host_cmd`, a shell-quoted command) in a process group of
    its own, so that stop_host reaches wrappers (scripts/run_in_env.sh) and what they start. Call
    it from the thread that stays alive (the main one): the host gets SIGTERM when that one dies."""
    cmd = shlex.split(host_cmd) if host_cmd else list(HOST_CMD)
    for s in sets:
        cmd += ["--set", s]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=os.environ.copy(),
                            start_new_session=True, preexec_fn=_sigterm_when_parent_dies)


def _sigterm_when_parent_dies() -> None:
    """In the child: SIGTERM (a clean stop) when the thread that started it dies, even by SIGKILL."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_host(host: subprocess.Popen, timeouts: tuple[float, float] = (20.0, 5.0)) -> int:
    """SIGINT (the host publishes a stop and closes its recording), then SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGINT, timeouts[0]), (signal.SIGTERM, timeouts[1]), (signal.SIGKILL, 5.0)):
        if host.poll() is not None:
            break
        try:
            os.killpg(host.pid, sig)
        except ProcessLookupError:
            break
        try:
            host.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:       # anything the host left in its group (a wrapper's children)
        os.killpg(host.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return host.wait()


def pct(a) -> dict:
    """p50 / p99 / max (ms) of `a` (ms) and its size."""
    a = np.asarray(a, dtype=np.float64)
    if not a.size:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "n": 0}
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "n": int(a.size)}


def machine() -> dict:
    """Where and when: platform, cores, load average at the time of the call, UTC date."""
    return {"machine": f"{platform.machine()} {platform.processor()}".strip(),
            "platform": platform.platform(), "nproc": os.cpu_count(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write_results(out: str, stem: str, res: dict, md: str) -> None:
    """`<out>/<stem>.json` and `<out>/<stem>.md`, and the markdown on stdout."""
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (path / f"{stem}.md").write_text(md)
    print(md)
