"""An actor timer faster than the cameras answers each observation once: it does not re-draw a new
chunk (new noise, same inputs) for a frame it already acted on."""
import time

import pytest

from host_harness import InProcessHost, Robot, fresh_episode, host_config, stamp_to_ns, wait_for

pytestmark = pytest.mark.timeout(120)


def test_each_observation_gets_one_chunk_when_the_timer_outruns_the_camera():
    host = InProcessHost(host_config(actor_hz=20.0, planner_hz=4.0))
    robot = Robot(seed=5, rate=4.0)   # a 4 Hz camera under a 20 Hz actor timer
    try:
        robot.wait_for_subscribers()
        fresh_episode(robot)
        t0 = time.monotonic()
        assert wait_for(lambda: len(robot.since("chunks", t0)) >= 6, 20.0)
        chunks = robot.since("chunks", t0)
        answered = [(stamp_to_ns(c.header.stamp), c.subtask_version) for c in chunks]
        assert len(answered) == len(set(answered)), "an observation was answered twice with the same subtask"
        assert host.loop.repeated_observations > 0   # the timer did fire in between
    finally:
        robot.close()
        host.close()
