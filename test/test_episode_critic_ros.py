"""The critic beside the actor, over real DDS, on a robot that moves (host_harness.Robot follows
the host's trajectories as joint_trajectory_controller does): the critic ends the episode, a stop
goes out and the arm halts, the recording holds the end reason and the value trace; the next
episode starts after flashrt/reset_done from the start-up capsule, no graph captured again; a
critic that raises never stops the actor. (Time limit, faults, operator ends, reset_mode 'auto':
test_episode_ros.py.)
"""
import time

import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from rosbags.highlevel import AnyReader

from flashrt_ros.runtime.graph import StaticGraph
from host_harness import (InProcessHost, Robot, arm_halts_after, host_config, moving_since, states_of, wait_for,
                          wait_state)

pytestmark = pytest.mark.timeout(180)

ENDED = ["stop_infer", "record", "await_reset"]
PATIENCE = 6


# --- a host with the critic, waiting for flashrt/reset_done between episodes -------------------------
@pytest.fixture(scope="module")
def critic_host(tmp_path_factory):
    # value_threshold 1.0: every reading is "below", so the critic ends an episode after exactly
    # value_patience readings: the mechanism, deterministic (the critic's judgement is measured by
    # `flashrt-ros evaluate --critic`, docs/benchmarks/critic.md)
    record = tmp_path_factory.mktemp("episodes")
    h = InProcessHost(host_config(actor_hz=10.0, planner_hz=4.0, critic="reference", critic_hz=4.0,
                                  value_threshold=1.0, value_patience=PATIENCE, record_dir=str(record)))
    h.record_dir = record
    yield h
    h.close()


@pytest.fixture(scope="module")
def robot(critic_host):
    r = Robot(seed=5)
    r.wait_for_subscribers()
    yield r
    r.close()


def test_the_critic_ends_the_episode_the_arm_halts_and_the_bag_holds_the_reason_and_values(critic_host, robot):
    loop = critic_host.loop
    t0 = time.monotonic()
    assert robot.call("start").success
    episode = loop.episode_id
    robot.send("task", robot.world.task_text)
    wait_state(robot, episode, "running")
    moving_since(robot, t0)
    wait_state(robot, episode, "await_reset", "critic")
    seen = [s for _, s, _ in states_of(robot, episode)]
    assert seen[seen.index("stop_infer"):] == ENDED, seen
    arm_halts_after(robot, t0)
    values = [v for v in robot.since("values", t0) if v.episode_id == episode]
    assert len(values) == PATIENCE and all(0.0 <= v.value < 1.0 for v in values)
    assert [v.below for v in values] == list(range(1, PATIENCE + 1)) and values[-1].patience == PATIENCE
    stamps = [v.header.stamp.sec * 10**9 + v.header.stamp.nanosec for v in values]
    assert stamps == sorted(set(stamps))      # each reading of a newer observation
    chunks = len(robot.rx.chunks)
    cycles = loop.scheduler.stats["actor"].completed
    assert wait_for(lambda: loop.scheduler.stats["actor"].completed >= cycles + 5, 10.0)
    assert len(robot.rx.chunks) == chunks, "a chunk left after the episode ended"
    assert "awaiting flashrt/reset_done" in robot.call("ready").message
    # the bag: closed with the end reason and the value trace; the readings are in it too
    critic_host.host.recorder.drain()
    bag = next(critic_host.record_dir.glob(f"run_*/episode_{episode:04d}"))
    meta = (bag / "metadata.yaml").read_text()
    assert "end_reason: critic" in meta and "value_trace:" in meta
    with AnyReader([bag]) as reader:
        topics = [c.topic for c, _, _ in reader.messages()]
    assert topics.count("/flashrt/value") == len(values)
    assert "/flashrt/episode_state" in topics


def test_reset_done_restores_the_start_up_state_without_recapture_and_starts_the_next_episode(critic_host, robot):
    loop = critic_host.loop
    if loop.episode_state != "await_reset":
        assert robot.call("start").success
        robot.send("task", robot.world.task_text)
        wait_state(robot, loop.episode_id, "await_reset", "critic")
    ended = loop.episode_id
    captures = StaticGraph.captures
    replays = loop.engine.actor_graph.replays
    t1 = time.monotonic()
    reply = robot.call("reset_done")
    assert reply.success, reply.message
    wait_state(robot, ended, "reset")
    wait_state(robot, ended + 1, "running")
    assert loop.episode_id == ended + 1
    moving_since(robot, t1)
    assert loop.engine.actor_graph.replays > replays
    assert StaticGraph.captures == captures, "a graph was captured again between episodes"
    assert not robot.call("reset_done").success      # not awaiting a reset now


def test_a_critic_that_raises_never_stops_the_actor(critic_host, robot):
    loop = critic_host.loop
    graph = loop.critic.graph

    def boom():
        raise RuntimeError("critic exploded (injected)")
    graph.replay = boom
    try:
        t0 = time.monotonic()
        if loop.episode_state != "running":
            robot.call("start")
        robot.send("task", robot.world.task_text)
        assert wait_for(lambda: (d := robot.diagnostic("critic", t0)) is not None and d[0] == DiagnosticStatus.ERROR,
                        20.0)
        assert "critic exploded" in robot.diagnostic("critic", t0)[1]
        t1 = time.monotonic()
        assert wait_for(lambda: len(robot.since("chunks", t1)) >= 10, 20.0), "the actor stopped with the critic"
        assert loop.running and loop.end_reason == ""
    finally:
        del graph.replay
    wait_state(robot, loop.episode_id, "await_reset", "critic")   # the critic back: it ends the episode again


