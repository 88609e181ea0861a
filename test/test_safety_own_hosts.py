"""Safety rules that need a host of their own, over real DDS with the moving test robot: the
velocity limit applied to every point and to the arm, and a host whose launcher dies."""
import subprocess
import sys
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus

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


@pytest.mark.parametrize("event", ["interrupt", "stale joints", "reset", "stop and start", "callback fault"])
def test_blend_never_blends_across_a_stop(event):
    """overlap_policy 'blend': after a hold, interrupt, fault, reset or a new episode the first
    chunk is the policy's own, not a cross-fade toward the plan from before the stop."""
    h = InProcessHost(host_config(actor_hz=10.0, planner_hz=4.0, overlap_policy="blend"))
    r = Robot(seed=5)
    loop = h.loop
    try:
        r.wait_for_subscribers()
        t0 = fresh_episode(r)
        assert wait_for(lambda: sum(b for _, b in loop.blended) >= 2, 20.0), "chunks never blended"
        t1 = time.monotonic()
        if event == "interrupt":
            r.send("interrupt", "operator")
        elif event == "stale joints":
            r.publish_joints = False
        elif event == "reset":
            assert r.call("reset").success
        elif event == "stop and start":
            assert r.call("stop").success
        else:
            put_joints = loop.put_joints
            fired = []

            def faulty(*args):
                if not fired:
                    fired.append(1)
                    raise RuntimeError("injected")
                return put_joints(*args)
            loop.put_joints = faulty
        assert wait_for(lambda: any(is_stop(t, r) for t in r.since("trajectories", t1)), 10.0), "no stop"
        r.publish_joints = True
        if event in ("interrupt", "stop and start"):
            assert r.call("start").success
        if event == "reset":
            r.send("task", r.world.task_text)         # a reset clears the task
        t2 = time.monotonic()
        assert wait_for(lambda: len(r.since("chunks", t2)) >= 3, 20.0), "no chunks after the stop"
        first = min(c.chunk_seq for c in r.since("chunks", t2))
        log = dict(loop.blended)
        assert log[first] is False                     # nothing from before the stop blended in
        assert any(log[c.chunk_seq] for c in r.since("chunks", t2) if c.chunk_seq > first)   # blending goes on
    finally:
        r.close()
        h.close()


def test_a_chunk_wholly_in_the_past_is_reported_not_dropped_silently():
    h = InProcessHost(host_config(actor_hz=10.0, planner_hz=4.0, max_stamp_skew_s=5.0))
    r = Robot(seed=5)
    try:
        r.wait_for_subscribers()
        fresh_episode(r)
        horizon_s = h.loop.horizon * h.loop.dt
        r.stamp_offset_s = horizon_s + 0.2          # every action of every chunk is already past
        t0 = time.monotonic()
        assert wait_for(lambda: h.loop.late_chunks >= 2, 10.0)
        assert wait_for(lambda: (d := r.diagnostic("actor", t0)) is not None and d[0] == DiagnosticStatus.WARN
                        and "already in the past" in d[1], 10.0)
        r.stamp_offset_s = 0.0
    finally:
        r.close()
        h.close()
