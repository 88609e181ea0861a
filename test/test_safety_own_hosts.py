"""Safety rules that need a host of their own, over real DDS with the moving test robot: the
velocity limit applied to every point and to the arm, and a host whose launcher dies."""
import subprocess
import sys
import time

import numpy as np
import pytest

from host_harness import InProcessHost, Robot, fresh_episode, host_config, is_stop, wait_for

pytestmark = pytest.mark.timeout(180)


def test_max_velocity_limits_every_point_and_the_arm(tmp_path):
    slow = 0.02
    h = InProcessHost(host_config(actor_hz=10.0, planner_hz=4.0, max_velocity=[slow, slow]))
    r = Robot(seed=5)
    try:
        r.wait_for_subscribers()
        t0 = fresh_episode(r)
        assert wait_for(lambda: len(r.since("trajectories", t0)) >= 15, 20.0)
        dt = h.loop.dt
        for traj in r.since("trajectories", t0):
            if is_stop(traj, r) or len(traj.points) < 2:
                continue
            p = np.array([pt.positions for pt in traj.points])
            v = np.array([pt.velocities for pt in traj.points])
            assert np.abs(np.diff(p, axis=0)).max() <= slow * dt * (1 + 1e-4)
            assert np.abs(v).max() <= slow * (1 + 1e-6)
        # the arm itself: over any half second or more, no further than the limit allows (plus one
        # step: inside a segment the controller's cubic can run ahead of the points briefly)
        times, positions, _ = r.motion_since(t0)
        for i in range(len(times)):
            for j in range(i + 1, len(times)):
                window = times[j] - times[i]
                if window >= 0.5:
                    assert np.abs(positions[j] - positions[i]).max() <= slow * (window + dt) + 1e-6
        assert np.abs(positions[-1] - positions[0]).max() > 0.2 * slow * (times[-1] - times[0])   # it did move
    finally:
        r.close()
        h.close()


def test_a_host_whose_launcher_dies_publishes_a_stop_and_exits(tmp_path):
    """`ros2 launch` killed with SIGKILL leaves its children running: the host must notice."""
    host_cmd = [sys.executable, "-m", "flashrt_ros.cli", "host", "--set", "device=cpu", "--set", "task=visit red"]
    launcher = subprocess.Popen([sys.executable, "-c",
                                 "import subprocess, sys, time\n"
                                 f"p = subprocess.Popen({host_cmd!r})\n"
                                 "print(p.pid, flush=True)\n"
                                 "time.sleep(600)\n"], stdout=subprocess.PIPE, text=True)
    r = Robot(seed=5)
    host_pid = int(launcher.stdout.readline())
    try:
        assert wait_for(lambda: (d := r.diagnostic("host")) is not None and d[2].get("ready") == "true", 60.0)
        t0 = time.monotonic()
        launcher.kill()                          # SIGKILL: the launcher cannot pass anything on
        launcher.wait(10)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and _alive(host_pid):
            time.sleep(0.1)
        assert not _alive(host_pid), "the host kept running after its launcher died"
        assert any(is_stop(m, r) for m in r.since("trajectories", t0)), "no stop published"
    finally:
        if _alive(host_pid):
            subprocess.run(["kill", "-9", str(host_pid)])
        r.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
