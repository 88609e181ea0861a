"""`flashrt-ros demo`, shortened: the closed loop over ROS 2 (world node in the demo process, the host
as its own process, real DDS) succeeds as the in-process loop does, coaching and interrupt work,
and the recordings and the plot are written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("rclpy")
from flashrt_ros.models.checkpoint import REFERENCE_WEIGHTS  # noqa: E402

pytestmark = pytest.mark.skipif(not (REFERENCE_WEIGHTS / "config.json").exists(),
                                reason="the reference weights are not trained yet")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, "-m", "flashrt_ros.cli", "demo", "--episodes", "2", "--speed", "4",
                           "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=280)  # ~20 s on a quiet 2-core machine
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout, json.loads((out / "summary.json").read_text())


def test_closed_loop_over_ros_succeeds_like_the_in_process_loop(demo):
    _, stdout, summary = demo
    assert summary["mode"] == "lockstep" and summary["episodes"] == 2
    # lock-step time: the world waits for the host, so its speed on this machine does not matter
    assert summary["success_in_process"] >= 1
    assert summary["success_ros"] == summary["success_in_process"], stdout
    # One answer per 0.1 s of world time (the actor period of run_episode): the world waits for
    # the host, so a host that stalls (the world then free-runs) shows up as too few answers.
    assert 9.5 <= summary["actor_answers_per_world_s"] <= 12.5, stdout
    assert summary["inference_latency_ms"]["chunks"] > 0
    assert "success" in stdout and "in-process" in stdout


def test_coaching_sends_the_robot_to_the_coached_colour_and_the_task_resumes(demo):
    _, stdout, summary = demo
    coaching = next(e for e in summary["episodes_detail"] if e["kind"] == "coaching")
    notes = coaching["notes"]
    assert notes["colour"] not in coaching["task"]  # a target the planner would never choose
    assert notes["reached"], stdout
    assert notes["subtask_confirmed"]  # /flashrt/subtask carried the coached text, source COACH
    assert coaching["success"], stdout  # the task re-sent: the planner took over again


def test_interrupt_stops_the_robot_until_start(demo):
    _, stdout, summary = demo
    interrupt = next(e for e in summary["episodes_detail"] if e["kind"] == "interrupt")
    notes = interrupt["notes"]
    assert notes["stopped_after"] <= 0.5 and notes["held_still"] >= 0.4, notes
    assert notes["drift_after_stop"] == 0.0
    assert notes["resumed"] and interrupt["success"], stdout


def test_recordings_and_plot_are_written(demo):
    out, _, summary = demo
    recordings = summary["recordings"]
    assert recordings["bags"] == 4 and recordings["unreadable"] == []  # one per episode
    assert (out / "trajectories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
