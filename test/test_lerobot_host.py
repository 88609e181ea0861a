"""The host serving a LeRobot policy (the tiny π0.5 and π0 fixtures) over real DDS: two cameras and
a 7-joint arm in, chunks of 7 joints within the limits out; the task and then the coached text on
/flashrt/subtask and in the chunks; a NaN joint state never reaches the policy (the host holds,
reports it and recovers); parameters that do not fit the policy directory stop start-up.

One host (LeRobotEngine on CPU) and one arm node at a time; each test starts a fresh episode.
"""
import time
from pathlib import Path

import numpy as np

from flashrt_ros.host.limits import rate_limit
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import Image

from flashrt_ros.msg import Subtask
from flashrt_ros.ros.conversions import image_to_msg, joint_state_to_msg
from flashrt_ros.host.params import ConfigError
from flashrt_ros.host.loop import PolicyLoop
from host_harness import (InProcessHost, Robot, fresh_episode, host_config, is_stop, stamp_to_ns, trajectory_times,
                          wait_for)
from test_host_faults import chunks_stop_and_a_stop_is_published

pytestmark = pytest.mark.timeout(180)

FIXTURES = Path(__file__).parent / "fixtures"
TASK = "pick up the red cube"
JOINTS = [f"arm_joint_{i}" for i in range(1, 8)]
LOWER = np.array([-1.0, -1.2, -0.9, -1.5, -1.1, -1.3, -0.8], np.float32)
UPPER = np.array([1.1, 0.9, 1.2, 0.8, 1.4, 1.0, 0.7], np.float32)
VMAX = np.array([1.5, 1.2, 1.0, 1.8, 1.1, 1.3, 0.9], np.float32)
Q = np.array([0.3, -0.2, 0.1, 0.0, 0.25, -0.35, 0.15], np.float32)
NAN_Q = np.where(np.arange(7) == 3, np.nan, Q).astype(np.float32)
BASE_TOPIC, WRIST_TOPIC = "/camera/base/image_raw", "/camera/wrist/image_raw"


def lerobot_config(kind: str = "pi05", **overrides):
    """A 2-camera, 7-joint arm served by the tiny LeRobot policy of `kind`."""
    values = dict(model=f"lerobot_{kind}", checkpoint=str(FIXTURES / f"lerobot_{kind}_tiny"), cameras=["base", "wrist"],
                  joint_names=JOINTS, joint_lower_limits=LOWER.tolist(), joint_upper_limits=UPPER.tolist(),
                  max_velocity=VMAX.tolist(), actor_hz=5.0, task=TASK,
                  # a chunk takes ~0.2 s on CPU beside the DDS traffic: room for a slow CI machine
                  camera_timeout_s=1.0, joint_state_timeout_s=1.0)
    values.update(overrides)
    for camera, topic in (("base", BASE_TOPIC), ("wrist", WRIST_TOPIC)):
        if camera in values["cameras"]:
            values[f"camera.{camera}.topic"] = topic
    return host_config(**values)


def pattern(height: int, width: int, phase: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x + phase) % 256, (y * 2) % 256, ((x + y) // 3 + phase) % 256], axis=-1).astype(np.uint8)


class Arm(Robot):
    """Robot (host_harness) with the arm's inputs: two rgb8 cameras (fixed 240x320 patterns) and
    7-joint /joint_states at `rate` Hz, all with one stamp; `joints` is what the next tick sends."""

    def __init__(self, rate: float = 10.0):
        self.joints = Q.copy()
        self.base_image, self.wrist_image = pattern(240, 320, 0), pattern(240, 320, 97)
        super().__init__(rate=rate, camera_topic=BASE_TOPIC)
        self.wrist_pub = self.node.create_publisher(Image, WRIST_TOPIC, 10)

    def tick(self) -> None:
        if not hasattr(self, "wrist_pub"):     # the timer may fire before __init__ is done
            return
        stamp = self.now_ns()
        if self.publish_camera:
            self.image_stamps.append(stamp)
            self.image_pub.publish(image_to_msg(self.base_image, "rgb8", stamp))
            self.wrist_pub.publish(image_to_msg(self.wrist_image, "rgb8", stamp))
        if self.publish_joints:
            self.joint_pub.publish(joint_state_to_msg(JOINTS, self.joints, stamp))

    def wait_for_subscribers(self, timeout: float = 10.0) -> None:
        super().wait_for_subscribers(timeout)
        assert wait_for(lambda: self.wrist_pub.get_subscription_count() > 0
                        and self.joint_pub.get_subscription_count() > 0, timeout)


@pytest.fixture(scope="module")
def host(request):
    """The π0.5 host; `@pytest.mark.parametrize("host", ["pi0"], indirect=True)` for the π0 one
    (pytest closes one before it opens the other)."""
    h = InProcessHost(lerobot_config(getattr(request, "param", "pi05")))
    yield h
    h.close()


@pytest.fixture(scope="module")
def arm(host):
    a = Arm()
    a.wait_for_subscribers()
    yield a
    a.close()


@pytest.fixture
def episode(host, arm):
    arm.joints = Q.copy()
    return fresh_episode(arm, TASK)


def chunk_actions(chunk) -> np.ndarray:
    return np.asarray(chunk.actions, np.float32).reshape(chunk.horizon, chunk.action_dim)


# --- chunks -----------------------------------------------------------------------------------------
def test_chunks_carry_seven_joints_and_the_horizon_within_the_limits(host, arm, episode):
    t0 = time.monotonic()
    assert wait_for(lambda: len(arm.since("chunks", t0)) >= 3 and len(arm.since("trajectories", t0)) >= 3, 30.0)
    engine = host.loop.engine
    assert type(engine).__name__ == "LerobotEngine" and engine.policy.kind == "pi05"
    for chunk in arm.since("chunks", t0):
        assert (chunk.horizon, chunk.action_dim, list(chunk.joint_names)) == (50, 7, JOINTS)
        actions = chunk_actions(chunk)
        assert np.all(np.isfinite(actions)) and np.all(actions >= LOWER) and np.all(actions <= UPPER)
        assert stamp_to_ns(chunk.header.stamp) in arm.image_stamps
        assert chunk.subtask == TASK and chunk.subtask_version >= 1
    # the tiny policy's raw chunks leave these limits: the clamp is doing the work, not the policy
    assert any(np.any(np.isclose(chunk_actions(c), LOWER) | np.isclose(chunk_actions(c), UPPER))
               for c in arm.since("chunks", t0))
    for traj in arm.since("trajectories", t0):
        if is_stop(traj, arm):
            continue
        assert list(traj.joint_names) == JOINTS and 0 < len(traj.points) <= 50
        assert np.allclose(np.diff(trajectory_times(traj)), engine.config.chunk_dt, atol=1e-6)
        for p in traj.points:
            assert np.all(np.abs(p.velocities) <= VMAX + 1e-6)
            assert np.all(np.asarray(p.positions) >= LOWER - 1e-6) and np.all(np.asarray(p.positions) <= UPPER + 1e-6)


def test_a_chunk_is_the_engine_chunk_for_the_arms_observation(host, arm, episode):
    """What leaves the node is what the engine computes for the observation it received."""
    t0 = time.monotonic()
    assert wait_for(lambda: len(arm.since("chunks", t0)) >= 2, 30.0)
    arm.call("stop")                       # the engine is ours until the next start
    chunk = arm.since("chunks", t0)[-1]
    engine = host.loop.engine
    with host.loop._engine_lock:
        expected = engine.act([arm.base_image, arm.wrist_image], ["rgb8", "rgb8"], Q, chunk.chunk_seq)
    assert expected.subtask_version == chunk.subtask_version
    # within the joint limits and no faster than max_velocity from the arm's state (host/limits.py)
    limited = rate_limit(Q, expected.positions, engine.config.chunk_dt, VMAX, LOWER, UPPER)
    np.testing.assert_allclose(chunk_actions(chunk), limited, rtol=0, atol=1e-6)


# --- task and coaching ------------------------------------------------------------------------------
def test_the_subtask_topic_carries_the_task(host, arm, episode):
    assert wait_for(lambda: any(s.text == TASK for s in arm.since("subtasks", episode)), 5.0), \
        f"/flashrt/subtask carried {[(s.text, s.version) for s in arm.since('subtasks', 0.0)]}, not the task"
    task = [s for s in arm.since("subtasks", episode) if s.text == TASK][-1]
    assert task.version == host.loop.engine.subtask.version


def test_coaching_replaces_the_subtask_on_the_topic_and_in_the_next_chunks(host, arm, episode):
    t0 = time.monotonic()
    assert wait_for(lambda: len(arm.since("chunks", t0)) >= 1, 30.0)
    before = arm.since("chunks", t0)[-1]
    assert before.subtask == TASK
    arm.send("coach", "open the top drawer")
    assert wait_for(lambda: any(s.source == Subtask.SOURCE_COACH for s in arm.since("subtasks", t0)), 10.0)
    coached = [s for s in arm.since("subtasks", t0) if s.source == Subtask.SOURCE_COACH][-1]
    assert coached.text == "open the top drawer" and coached.version > before.subtask_version
    t1 = time.monotonic()
    assert wait_for(lambda: len(arm.since("chunks", t1)) >= 3, 30.0)
    after = arm.since("chunks", t1)[1:]      # one chunk may have been in flight when coaching arrived
    assert all(c.subtask == "open the top drawer" and c.subtask_version == coached.version for c in after)


def test_bad_coaching_text_is_refused_and_the_host_keeps_serving(host, arm, episode):
    subtask, rejected = host.loop.engine.subtask, host.loop.rejected_texts
    arm.send("coach", "x" * 1100)
    assert wait_for(lambda: host.loop.rejected_texts > rejected, 10.0)
    assert "1024-byte" in host.loop.last_rejected_text and host.loop.engine.subtask == subtask
    t1 = time.monotonic()
    assert wait_for(lambda: len(arm.since("chunks", t1)) >= 2, 30.0)
    assert arm.since("chunks", t1)[-1].subtask == TASK


# --- faults -----------------------------------------------------------------------------------------
def test_a_nan_joint_state_makes_the_host_hold_and_report_then_it_recovers(host, arm, episode):
    loop = host.loop
    stats = loop.inputs.stats["joint_states"]
    rejected, actor_faults = stats.rejected, loop.actor_faults
    t0 = time.monotonic()
    arm.joints = NAN_Q.copy()              # every /joint_states from now on has a NaN
    assert chunks_stop_and_a_stop_is_published(arm, t0, host)
    assert stats.rejected > rejected and "not finite" in stats.last_error and "arm_joint_4" in stats.last_error
    assert loop.actor_faults == actor_faults          # refused at the input: the policy never saw it
    assert "joint states are stale" in (loop.holding or "")
    stop = [t for t in arm.since("trajectories", t0) if is_stop(t, arm)][0]
    assert stop.points == []          # no valid joint state: the controller holds where the arm is
    t1 = time.monotonic()
    assert wait_for(lambda: (d := arm.diagnostic("inputs", t1)) is not None and d[0] == DiagnosticStatus.WARN
                    and "not finite" in d[1], 10.0)
    assert wait_for(lambda: (d := arm.diagnostic("actor", t1)) is not None and d[0] == DiagnosticStatus.WARN
                    and "holding" in d[1], 10.0)
    for chunk in arm.since("chunks", t0):
        assert np.all(np.isfinite(chunk.actions))
    arm.joints = Q.copy()
    t2 = time.monotonic()
    assert wait_for(lambda: len(arm.since("chunks", t2)) >= 2, 30.0), "no chunks after good joint states"
    assert loop.holding is None


# --- π0 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["pi0"], indirect=True)
def test_the_pi0_policy_is_served(host, arm, episode):
    assert host.loop.engine.policy.kind == "pi0"
    t0 = time.monotonic()
    assert wait_for(lambda: len(arm.since("chunks", t0)) >= 3, 30.0)
    for chunk in arm.since("chunks", t0):
        assert (chunk.horizon, chunk.action_dim, list(chunk.joint_names)) == (50, 7, JOINTS)
        actions = chunk_actions(chunk)
        assert np.all(actions >= LOWER) and np.all(actions <= UPPER) and chunk.subtask == TASK
    arm.send("coach", "go home")
    t1 = time.monotonic()
    assert wait_for(lambda: len([c for c in arm.since("chunks", t1) if c.subtask == "go home"]) >= 2, 30.0)


# --- parameters that do not fit the policy ----------------------------------------------------------
@pytest.mark.parametrize("overrides, why", [
    ({"model": "lerobot_pi0", "checkpoint": str(FIXTURES / "lerobot_pi05_tiny")},
     r"'model' = 'lerobot_pi0'.*config.json is a 'pi05' policy"),
    ({"model": "lerobot_pi05", "checkpoint": str(FIXTURES / "lerobot_pi0_tiny")},
     r"'model' = 'lerobot_pi05'.*config.json is a 'pi0' policy"),
    ({"model": "lerobot_pi05", "checkpoint": ""}, r"'model' = 'lerobot_pi05'.*needs 'checkpoint'"),
    ({"model": "lerobot_pi05", "checkpoint": str(FIXTURES / "no_such_policy")}, r"'checkpoint'.*is not a directory"),
    ({"model": "lerobot_pi05", "checkpoint": str(FIXTURES / "lerobot_pi05_tiny"),
      "tokenizer": str(FIXTURES / "no_such_tokenizer.json")}, r"'tokenizer'.*is not a file"),
])
def test_parameters_that_do_not_fit_the_policy_directory_are_a_config_error(overrides, why):
    with pytest.raises(ConfigError, match=why):
        host_config(**overrides)


@pytest.mark.parametrize("overrides, error, why", [
    ({"cameras": ["base"]}, ConfigError, r"'cameras' lists 1 camera\(s\) \['base'\], the model takes 2"),
    # the engine refuses the limits' shape before the loop's own 'joint_names' ConfigError is reached
    ({"joint_names": JOINTS[:6], "joint_lower_limits": LOWER[:6].tolist(), "joint_upper_limits": UPPER[:6].tolist(),
      "max_velocity": VMAX[:6].tolist()}, ValueError,
     r"joint_limits must be \[7, 2\] and max_velocity \[7\], got \(6, 2\)"),
    ({"horizon": 51}, ConfigError, r"'horizon' = 51 is not allowed: the model's chunks have 50 actions"),
], ids=["1 camera", "6 joints", "horizon 51"])
def test_a_host_that_does_not_fit_the_policy_fails_to_configure_naming_the_mismatch(overrides, error, why):
    loop = PolicyLoop(lerobot_config(**overrides))
    with pytest.raises(error, match=why):
        loop.configure("actor")
    assert loop.engine is None and loop.configure_error.startswith(error.__name__)
