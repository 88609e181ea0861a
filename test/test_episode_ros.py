"""The episode state machine over real DDS, on a robot that moves (host_harness.Robot follows the
host's trajectories as joint_trajectory_controller does): an episode ends by time, by a fault or by
the operator; a stop goes out; with reset_mode 'auto' the next episode starts at once (not after an
operator's stop, which waits for flashrt/reset_done). (The critic: test_episode_critic_ros.py.)

States are read from flashrt/episode_state (latched), by episode id.
"""
import time

import numpy as np
import pytest
import torch

from flashrt_ros.sim import TabletopWorld
from host_harness import InProcessHost, Robot, host_config, is_stop, states_of, wait_for, wait_state

pytestmark = pytest.mark.timeout(180)



# --- a host without a critic: time limit, faults, operator, reset_mode auto ---------------------------
ROBOT2_SEED = 7


@pytest.fixture(scope="module")
def auto_host():
    # the task in the configuration: every episode has it from its start (auto resets come fast)
    h = InProcessHost(host_config(actor_hz=10.0, planner_hz=4.0, episode_timeout_s=2.0, end_on_fault=True,
                                  reset_mode="auto", task=TabletopWorld(seed=ROBOT2_SEED).task_text))
    yield h
    h.close()


@pytest.fixture(scope="module")
def robot2(auto_host):
    r = Robot(seed=ROBOT2_SEED)
    r.wait_for_subscribers()
    yield r
    r.close()


def test_the_time_limit_ends_the_episode_and_auto_reset_starts_the_next(auto_host, robot2):
    loop = auto_host.loop
    robot2.call("stop")                                # whatever runs ends (operator): await the reset
    assert robot2.call("reset_done").success
    episode = loop.episode_id
    wait_state(robot2, episode, "await_reset", "timeout")
    started_at = wait_state(robot2, episode, "start")
    ended_at = wait_state(robot2, episode, "stop_infer")
    assert 1.9 <= ended_at - started_at <= 4.0, ended_at - started_at   # 2 s, give or take a cycle and DDS
    assert len([c for t, c in robot2.rx.chunks if started_at <= t <= ended_at]) >= 3
    _, _, v = robot2.motion_since(started_at)
    assert np.abs(v).max() > 0.05, "the arm never moved in the episode"
    assert wait_for(lambda: loop.episode_id > episode and loop.running, 10.0)   # the next one, by itself
    assert wait_for(lambda: any(c.episode_id > episode for c in robot2.since("chunks", ended_at)), 20.0)


def test_a_fault_ends_the_episode_with_end_on_fault(auto_host, robot2):
    loop = auto_host.loop
    bias = loop.engine.actor.action_out.bias
    saved = bias.detach().clone()
    t0 = time.monotonic()
    if not loop.running:
        robot2.call("start")
    episode = loop.episode_id
    with torch.no_grad():
        bias.fill_(float("nan"))
    try:
        def fault_ends():
            return [m for _, m in list(robot2.rx.episode_states) if m.episode_id >= episode and m.end_reason == "fault"]
        assert wait_for(fault_ends, 20.0), states_of(robot2, episode)
        ended = fault_ends()[0]
        wait_state(robot2, ended.episode_id, "await_reset", "fault")
        assert "NaN" in ended.detail
        assert wait_for(lambda: any(is_stop(t, robot2) for t in robot2.since("trajectories", t0)), 10.0)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    for chunk in robot2.since("chunks", t0):
        assert np.all(np.isfinite(chunk.actions))


def test_an_operator_stop_waits_for_reset_done_even_in_auto_mode(auto_host, robot2):
    loop = auto_host.loop
    if not loop.running:
        robot2.call("start")
    assert wait_for(lambda: loop.running, 10.0)
    episode = loop.episode_id
    assert robot2.call("stop").success
    wait_state(robot2, episode, "await_reset", "operator")
    cycles = loop.scheduler.stats["actor"].completed
    assert wait_for(lambda: loop.scheduler.stats["actor"].completed >= cycles + 5, 10.0)
    assert loop.episode_id == episode and loop.episode_state == "await_reset"
    assert robot2.call("reset_done").success
    assert wait_for(lambda: loop.running and loop.episode_id == episode + 1, 10.0)
