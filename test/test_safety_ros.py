"""Each safety rule of the host, over real DDS, on a robot that moves: the test robot follows the
host's trajectories with joint_trajectory_controller semantics (flashrt_ros.sim.follower), so a
stop that sends the arm somewhere, a limit that is not applied, or a chunk that leaves after an
interrupt shows up in where the arm goes.

"No chunk came" is counted in actor cycles the host ran (its scheduler's counter), not in sleeps.
"""
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus

from host_harness import InProcessHost, Robot, fresh_episode, host_config, is_stop, stamp_to_ns, wait_for

pytestmark = pytest.mark.timeout(180)

VMAX = 0.5          # the host's max_velocity (both joints) in this module


@pytest.fixture(scope="module")
def host():
    h = InProcessHost(host_config(actor_hz=10.0, planner_hz=4.0, max_velocity=[VMAX, VMAX]))
    yield h
    h.close()


@pytest.fixture(scope="module")
def robot(host):
    r = Robot(seed=5)
    r.wait_for_subscribers()
    yield r
    r.close()


@pytest.fixture
def moving(host, robot):
    """A fresh episode with the arm moving under the host's trajectories."""
    t0 = fresh_episode(robot)
    assert wait_for(lambda: _speed(robot, t0) > 0.05, 20.0), "the arm never moved"
    return t0


def _speed(robot, t0) -> float:
    _, _, v = robot.motion_since(t0)
    return float(np.abs(v).max()) if len(v) else 0.0


def _stops_after(robot, t0):
    return [t for t in robot.since("trajectories", t0) if is_stop(t, robot)]


def _after_cycles(host, n: int) -> None:
    """Until the host's actor has run n more cycles."""
    stats = host.loop.scheduler.stats["actor"]
    done = stats.completed
    assert wait_for(lambda: stats.completed >= done + n, 20.0), "the actor stopped cycling"


def test_stale_joint_states_on_a_moving_arm_give_an_empty_stop_and_the_arm_holds_where_it_is(host, robot, moving):
    t0 = time.monotonic()
    robot.publish_joints = False                 # the driver hiccups while the arm moves
    assert wait_for(lambda: _stops_after(robot, t0), 10.0), "no stop published"
    stop = _stops_after(robot, t0)[0]
    assert stop.points == []                     # not a point at a position measured long ago
    arrival = next(t for t, m in robot.rx.trajectories if m is stop)
    chunks = host.loop.chunks.count
    _after_cycles(host, 5)
    assert host.loop.chunks.count == chunks      # no chunk while the joint states are stale
    times, positions, velocities = robot.motion_since(arrival + 0.01)
    assert len(times) > 5
    assert np.abs(velocities).max() == 0.0       # the controller holds where the arm was
    assert np.ptp(positions, axis=0).max() == 0.0
    robot.publish_joints = True
    t1 = time.monotonic()
    assert wait_for(lambda: len(robot.since("chunks", t1)) >= 2), "no chunks after fresh joint states"


def test_a_stale_camera_stops_at_the_measured_position_no_faster_than_max_velocity(host, robot, moving):
    t0 = time.monotonic()
    robot.publish_camera = False                 # joint states stay fresh
    assert wait_for(lambda: _stops_after(robot, t0), 10.0), "no stop published"
    stop = _stops_after(robot, t0)[0]
    assert len(stop.points) == 1 and not any(stop.points[0].velocities)
    target = np.asarray(stop.points[0].positions)
    # the measured position: one of the joint states the robot published just before the stop
    times, positions, _ = robot.motion_since(t0 - 1.0)
    assert np.min(np.abs(positions - target).max(axis=1)) < 1e-6
    arrival = next(t for t, m in robot.rx.trajectories if m is stop)
    reach = stop.points[0].time_from_start.sec + stop.points[0].time_from_start.nanosec * 1e-9
    assert wait_for(lambda: time.monotonic() > arrival + reach + 0.2, reach + 5.0)
    times, positions, velocities = robot.motion_since(arrival)
    assert np.abs(velocities).max() <= VMAX * (1 + 1e-6)
    np.testing.assert_allclose(positions[-1], target, atol=1e-6)   # it went to the measured position, no further
    robot.publish_camera = True


def test_interrupt_stops_at_once_without_waiting_for_the_inference_in_flight(host, robot, moving):
    engine = host.loop.engine
    act = engine.act
    entered = []

    def slow_act(*args):                          # an inference that takes 2 s
        entered.append(time.monotonic())
        time.sleep(2.0)
        return act(*args)
    engine.act = slow_act
    try:
        assert wait_for(lambda: entered, 5.0)
        time.sleep(0.1)
        discarded = host.loop.discarded_chunks
        chunks = len(robot.rx.chunks)
        t0 = time.monotonic()
        robot.send("interrupt", "operator")
        assert wait_for(lambda: _stops_after(robot, t0), 1.5), "no stop while the inference was running"
        arrival = next(t for t, m in robot.rx.trajectories if is_stop(m, robot) and t >= t0)
        assert arrival - entered[0] < 2.0          # before the inference in flight could have ended
        assert wait_for(lambda: host.loop.discarded_chunks > discarded, 5.0)
        assert len(robot.rx.chunks) == chunks      # its chunk never left
    finally:
        engine.act = act
    assert robot.call("start").success
    t1 = time.monotonic()
    assert wait_for(lambda: len(robot.since("chunks", t1)) >= 2), "no chunks after start"


@pytest.mark.parametrize("service", ["reset", "stop"])
def test_reset_and_stop_publish_a_stop_while_the_arm_moves(host, robot, moving, service):
    t0 = time.monotonic()
    assert robot.call(service).success
    assert wait_for(lambda: _stops_after(robot, t0), 5.0), f"/flashrt/{service} published no stop"
    stop = _stops_after(robot, t0)[0]
    arrival = next(t for t, m in robot.rx.trajectories if m is stop)
    reach = (stop.points[0].time_from_start.sec + stop.points[0].time_from_start.nanosec * 1e-9) if stop.points else 0
    assert wait_for(lambda: time.monotonic() > arrival + reach + 0.3, reach + 5.0)
    _, _, velocities = robot.motion_since(arrival + reach + 0.1)
    assert np.abs(velocities).max() == 0.0       # the arm came to rest


def test_an_exception_in_a_callback_is_reported_the_host_holds_and_keeps_serving(host, robot, moving):
    loop = host.loop
    put_joints = loop.put_joints
    raised = []

    def faulty(*args):
        if not raised:
            raised.append(True)
            raise RuntimeError("injected fault")
        return put_joints(*args)
    loop.put_joints = faulty
    t0 = time.monotonic()
    try:
        assert wait_for(lambda: raised, 5.0)
        assert wait_for(lambda: _stops_after(robot, t0), 5.0), "no stop after the fault"
        assert wait_for(lambda: (d := robot.diagnostic("host", t0)) is not None and d[0] == DiagnosticStatus.ERROR
                        and "injected fault" in d[1], 10.0)
        t1 = time.monotonic()
        assert wait_for(lambda: len(robot.since("chunks", t1)) >= 2), "the host did not keep serving"
        assert host.host._spin_thread.is_alive()
    finally:
        loop.put_joints = put_joints


def test_skewed_stamps_are_rejected_naming_the_camera_and_the_offset(host, robot, moving):
    t0 = time.monotonic()
    robot.stamp_offset_s = 2.5                   # the camera's clock is 2.5 s behind the host's
    try:
        assert wait_for(lambda: (d := robot.diagnostic("inputs", t0)) is not None and d[0] == DiagnosticStatus.WARN
                        and "camera 'top'" in d[1] and "s behind the host clock" in d[1], 10.0)
        assert wait_for(lambda: _stops_after(robot, t0), 5.0)       # nothing fresh: the host holds
    finally:
        robot.stamp_offset_s = 0.0
