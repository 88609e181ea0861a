"""actor_trigger 'observation': one chunk per new complete observation (lock-step simulation and
bag replay), over real DDS; the timer no longer drives the actor."""
import time

import pytest

from host_harness import InProcessHost, Robot, host_config, stamp_to_ns, wait_for

pytestmark = pytest.mark.timeout(120)


def test_one_chunk_per_complete_observation():
    host = InProcessHost(host_config(actor_trigger="observation", actor_hz=20.0, camera_timeout_s=2.0,
                                     joint_state_timeout_s=2.0))
    robot = Robot(seed=4, rate=4.0)        # 4 observations per second, image and joints share a stamp
    try:
        robot.wait_for_subscribers()
        robot.send("task", robot.world.task_text)
        assert wait_for(lambda: len(robot.rx.chunks) >= 2, 15.0)
        t0 = time.monotonic()
        time.sleep(2.0)
        chunks = robot.since("chunks", t0)
        stamps = [stamp_to_ns(c.header.stamp) for c in chunks]
        assert 6 <= len(chunks) <= 10                      # ~4 Hz, not the 20 Hz deadline rate
        assert len(set(stamps)) == len(stamps)             # never twice for one observation
        assert set(stamps) <= set(robot.image_stamps)
        robot.publish_camera = robot.publish_joints = False   # no new observation: no chunk
        time.sleep(0.4)
        t1 = time.monotonic()
        time.sleep(0.8)
        assert robot.since("chunks", t1) == []
        robot.publish_joints = True                        # joints alone do not complete an observation
        time.sleep(0.6)
        assert robot.since("chunks", t1) == []
    finally:
        robot.close()
        host.close()
