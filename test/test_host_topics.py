"""The host over real DDS: cameras and joint states in, action chunks and trajectories out; the
task, coaching, interrupt, the episode services, readiness, diagnostics and latency compensation.

One host (real Engine on CPU) and one robot node for the module; each test starts a fresh episode.
"""
import dataclasses
import gc
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus

from flashrt_ros.msg import Subtask
from flashrt_ros.sim import JOINT_NAMES
from host_harness import (InProcessHost, Robot, fresh_episode, host_config, is_stop, stamp_to_ns,
                          trajectory_times, wait_for)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def host():
    h = InProcessHost(host_config(actor_hz=10.0, planner_hz=4.0))
    yield h
    h.close()


@pytest.fixture(scope="module")
def robot(host):
    r = Robot(seed=3)
    r.wait_for_subscribers()
    yield r
    r.close()


@pytest.fixture
def episode(host, robot):
    return fresh_episode(robot)


def test_chunks_carry_the_observation_stamp_positions_and_velocities_within_limits(host, robot, episode):
    t0 = time.monotonic()
    assert wait_for(lambda: len(robot.since("chunks", t0)) >= 3 and len(robot.since("trajectories", t0)) >= 3)
    chunk = robot.since("chunks", t0)[-1]
    H, D = host.loop.engine.config.horizon, len(JOINT_NAMES)
    assert (chunk.horizon, chunk.action_dim, list(chunk.joint_names)) == (H, D, list(JOINT_NAMES))
    assert chunk.dt == pytest.approx(host.loop.engine.config.chunk_dt)
    actions = np.asarray(chunk.actions, np.float32).reshape(H, D)
    assert np.all(np.isfinite(actions)) and actions.min() >= 0.0 and actions.max() <= 1.0
    assert chunk.subtask.startswith("go to") and chunk.subtask_version >= 1
    assert chunk.episode_id == host.loop.episode_id and chunk.inference_time > 0 and chunk.observation_to_ready >= chunk.inference_time
    # header.stamp is the stamp of an observation the robot sent, not the publication time
    assert stamp_to_ns(chunk.header.stamp) in robot.image_stamps
    traj = robot.since("trajectories", t0)[-1]
    assert list(traj.joint_names) == list(JOINT_NAMES)
    assert stamp_to_ns(traj.header.stamp) in robot.image_stamps
    times = trajectory_times(traj)
    assert 0 < len(traj.points) <= H and np.allclose(np.diff(times), chunk.dt, atol=1e-6)
    for p in traj.points:
        assert len(p.positions) == D and len(p.velocities) == D      # positions AND velocities
        assert all(0.0 <= x <= 1.0 for x in p.positions)
        assert all(abs(v) <= 0.5 + 1e-6 for v in p.velocities)


def test_chunk_seq_increases_by_one_per_chunk(robot, episode):
    t0 = time.monotonic()
    assert wait_for(lambda: len(robot.since("chunks", t0)) >= 4)
    seqs = [c.chunk_seq for c in robot.since("chunks", t0)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_the_subtask_is_latched_for_late_subscribers(host, robot, episode):
    late = Robot(seed=3)   # a new participant subscribing after the subtask was published
    try:
        assert wait_for(lambda: late.last("subtasks") is not None, 10.0)
        msg = late.last("subtasks")
        current = host.loop.engine.subtask
        assert (msg.text, msg.version) == (current.text, current.version)
        assert msg.source == Subtask.SOURCE_PLANNER
    finally:
        late.close()


def test_coaching_replaces_the_subtask_before_the_next_chunk(host, robot, episode):
    t0 = time.monotonic()
    robot.send("coach", "go to yellow")
    assert wait_for(lambda: any(s.source == Subtask.SOURCE_COACH for s in robot.since("subtasks", t0)))
    coached = [s for s in robot.since("subtasks", t0) if s.source == Subtask.SOURCE_COACH][-1]
    assert coached.text == "go to yellow"
    t1 = time.monotonic()
    assert wait_for(lambda: len(robot.since("chunks", t1)) >= 3)
    # at most one chunk was already being computed when the coaching arrived
    after = robot.since("chunks", t1)[1:]
    assert all(c.subtask == "go to yellow" and c.subtask_version == coached.version for c in after)
    # the planner does not take over again while coaching holds (coach_hold_s 0: until the next task)
    time.sleep(0.6)
    assert host.loop.engine.subtask.version == coached.version


def test_a_new_task_hands_control_back_to_the_planner(host, robot, episode):
    robot.send("coach", "go to yellow")
    assert wait_for(lambda: host.loop.engine.subtask.source == "coach")
    t0 = time.monotonic()
    robot.send("task", robot.world.task_text)
    assert wait_for(lambda: any(s.source == Subtask.SOURCE_PLANNER for s in robot.since("subtasks", t0)))


def test_after_coach_hold_s_the_planner_takes_control_back(host, robot, episode):
    config = host.loop.config
    host.loop.config = dataclasses.replace(config, coach_hold_s=0.6)
    try:
        t0 = time.monotonic()
        robot.send("coach", "go to yellow")
        assert wait_for(lambda: any(s.source == Subtask.SOURCE_COACH for s in robot.since("subtasks", t0)))
        t1 = time.monotonic()
        assert wait_for(lambda: any(s.source == Subtask.SOURCE_PLANNER for s in robot.since("subtasks", t1)), 5.0)
        assert time.monotonic() - t1 >= 0.4     # not before the hold ran out
    finally:
        host.loop.config = config


@pytest.mark.parametrize("text, why", [("", "empty"), ("   ", "empty"), ("go " * 400, "1024-byte"),
                                       ("go to purple", "does not know")])
def test_bad_coaching_text_is_refused_and_the_host_keeps_serving(host, robot, episode, text, why):
    before = host.loop.engine.subtask
    rejected = host.loop.rejected_texts
    t0 = time.monotonic()
    robot.send("coach", text)
    assert wait_for(lambda: host.loop.rejected_texts > rejected)
    assert why in host.loop.last_rejected_text
    assert host.loop.engine.subtask == before
    assert wait_for(lambda: (d := robot.diagnostic("planner", t0)) is not None and d[0] == DiagnosticStatus.WARN
                    and "refused" in d[1])
    t1 = time.monotonic()
    assert wait_for(lambda: len(robot.since("chunks", t1)) >= 2)        # still issuing


def test_bad_task_text_is_refused(host, robot, episode):
    rejected = host.loop.rejected_texts
    robot.send("task", "visit " + "red " * 20)     # more words than the planner's task tokens
    assert wait_for(lambda: host.loop.rejected_texts > rejected)
    assert "task refused" in host.loop.last_rejected_text


def test_interrupt_stops_chunks_publishes_a_stop_and_start_resumes(host, robot, episode):
    t0 = time.monotonic()
    robot.send("interrupt", "operator pressed pause")
    assert wait_for(lambda: any(is_stop(t, robot) for t in robot.since("trajectories", t0)))
    stop = [t for t in robot.since("trajectories", t0) if is_stop(t, robot)][0]
    assert len(stop.points) == 1
    arrival = next(t for t, m in robot.rx.trajectories if m is stop)
    # the stop is after every chunk: a chunk in flight at the interrupt is discarded, not sent
    assert all(t <= arrival for t, _ in robot.rx.chunks if t >= t0)
    cycles, chunks = host.loop.scheduler.stats["actor"].completed, len(robot.rx.chunks)
    reach = stop.points[0].time_from_start.sec + stop.points[0].time_from_start.nanosec * 1e-9
    assert wait_for(lambda: host.loop.scheduler.stats["actor"].completed >= cycles + 5
                    and time.monotonic() > arrival + reach + 0.2, 10.0)
    assert len(robot.rx.chunks) == chunks and robot.since("trajectories", arrival + 1e-6) == []
    # the arm settled at the measured position the stop named, and stays there
    _, positions, velocities = robot.motion_since(arrival + reach + 0.1)
    np.testing.assert_allclose(positions[-1], stop.points[0].positions, atol=1e-6)
    assert np.abs(velocities).max() == 0.0
    ready = robot.call("ready")
    assert ready.success and "interrupted" in ready.message
    response = robot.call("start")
    assert response.success and "resumed" in response.message
    t2 = time.monotonic()
    assert wait_for(lambda: len(robot.since("chunks", t2)) >= 2)
    assert robot.since("chunks", t2)[-1].episode_id == host.loop.episode_id   # the same episode


def test_stop_ends_the_episode_and_start_begins_the_next(host, robot, episode):
    episode_id = host.loop.episode_id
    t0 = time.monotonic()
    response = robot.call("stop")
    assert response.success and f"episode {episode_id} stopped" in response.message
    assert wait_for(lambda: any(is_stop(t, robot) for t in robot.since("trajectories", t0)))
    chunks, cycles = len(robot.rx.chunks), host.loop.scheduler.stats["actor"].completed
    assert wait_for(lambda: host.loop.scheduler.stats["actor"].completed >= cycles + 5, 10.0)
    assert len(robot.rx.chunks) == chunks          # no chunk in 5 actor cycles after the stop
    assert robot.call("start").success
    t2 = time.monotonic()
    assert wait_for(lambda: len(robot.since("chunks", t2)) >= 1)
    assert robot.since("chunks", t2)[-1].episode_id == episode_id + 1


def test_reset_restores_the_initial_state_without_recapture(host, robot, episode):
    engine = host.loop.engine
    graph, planner_graphs = engine.actor_graph, list(engine.planner_graphs)
    robot.send("coach", "go to blue")
    assert wait_for(lambda: engine.subtask.source == "coach")
    episode_id = host.loop.episode_id
    t0 = time.monotonic()
    response = robot.call("reset")
    assert response.success and f"episode {episode_id + 1}" in response.message
    assert engine.actor_graph is graph and engine.planner_graphs == planner_graphs
    assert host.loop.task_text == ""      # the task is the next episode's to give
    assert wait_for(lambda: host.loop.waiting != "")   # no subtask: no chunks until a task arrives
    robot.send("task", robot.world.task_text)
    assert wait_for(lambda: any(s.source == Subtask.SOURCE_PLANNER and s.version == 1
                                for s in robot.since("subtasks", t0)))
    assert wait_for(lambda: any(c.episode_id == episode_id + 1 for c in robot.since("chunks", t0)))


def test_ready_service_and_diagnostics_report_rates_latency_and_readiness(host, robot, episode):
    ready = robot.call("ready")
    assert ready.success and ready.message.startswith("ready")
    time.sleep(1.5)
    t0 = time.monotonic()
    assert wait_for(lambda: robot.diagnostic("actor", t0) is not None)
    names = {s.name for s in robot.since("diagnostics", t0)[-1].status}
    assert names == {"flashrt: host", "flashrt: actor", "flashrt: planner", "flashrt: inputs"}
    level, _, host_values = robot.diagnostic("host", t0)
    assert level == DiagnosticStatus.OK and host_values["ready"] == "true"
    # the start-up heap (models, graphs, modules) is out of the collector's scans while serving, and
    # the pauses of start-up (loading the models) are reported apart from those while serving
    assert int(host_values["gc_frozen_objects"]) > 10_000 and gc.get_freeze_count() > 10_000
    assert float(host_values["gc_pause_startup_max_ms"]) > 0
    assert float(host_values["gc_pause_max_ms"]) >= 0
    level, message, actor = robot.diagnostic("actor", t0)
    assert level == DiagnosticStatus.OK, message
    # one chunk per new observation: the rate follows the slower of the actor timer (10 Hz) and the
    # camera the robot actually managed to publish (a loaded machine slows the test robot down)
    recent = [t for t in robot.image_stamps if t > robot.now_ns() - 2_000_000_000]
    camera_hz = len(recent) / 2.0
    assert camera_hz > 1.0
    assert float(actor["chunk_rate_hz"]) > 0.5 * min(10.0, camera_hz)
    for key in ("inference_time_p50_ms", "inference_time_p99_ms", "chunk_latency_p50_ms",
                "chunk_latency_p99_ms", "deadline_misses", "input_to_act_p50_ms", "input_to_act_p99_ms"):
        assert actor[key] not in ("", "nan"), key
    _, _, planner = robot.diagnostic("planner", t0)
    assert float(planner["rate_hz"]) > 1.0 and planner["subtask"].startswith("go to")
    _, _, inputs = robot.diagnostic("inputs", t0)
    assert float(inputs["top.age_ms"]) < 400 and int(inputs["joint_states.received"]) > 10


def test_actions_already_in_the_past_are_dropped(host, robot, episode):
    robot.stamp_offset_s = 0.3     # observations stamped 0.3 s ago (a slow camera pipeline)
    time.sleep(0.3)
    t0 = time.monotonic()
    assert wait_for(lambda: len(robot.since("trajectories", t0)) >= 3)
    H, dt = host.loop.engine.config.horizon, host.loop.engine.config.chunk_dt
    for traj, chunk in zip(robot.since("trajectories", t0)[1:], robot.since("chunks", t0)[1:]):
        times = trajectory_times(traj)
        assert times[0] > 0.3 - 1e-6                  # nothing scheduled before the chunk was ready
        assert len(traj.points) <= H - int(0.3 / dt)  # the first >= 6 actions were dropped
        assert chunk.horizon == H                     # the ActionChunk keeps the whole chunk
    robot.stamp_offset_s = 0.0
