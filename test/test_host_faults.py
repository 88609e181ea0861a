"""The host under bad input and faults, over real DDS: stale cameras and joint states make it hold
and resume, malformed messages are refused with a diagnostic while it keeps serving, a planner
exception leaves the actor on the last good subtask, NaN from the model never leaves the node,
and lifecycle deactivation stops issuing chunks without losing state.
"""
import array
import time

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from sensor_msgs.msg import JointState

from flashrt_ros.ros.conversions import image_to_msg, joint_state_to_msg
from host_harness import InProcessHost, Robot, fresh_episode, host_config, is_stop, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def host():
    h = InProcessHost(host_config(actor_hz=10.0, planner_hz=4.0))
    yield h
    h.close()


@pytest.fixture(scope="module")
def robot(host):
    r = Robot(seed=5)
    r.wait_for_subscribers()
    yield r
    r.close()


@pytest.fixture
def episode(host, robot):
    return fresh_episode(robot)


def trajectories_flow(robot) -> bool:
    """A stop is owed only while a trajectory of ours may be running: tests of stops start from
    trajectories flowing (on a 2-core machine the host can stall for seconds, and a chunk answered
    too late sends no trajectory)."""
    t0 = time.monotonic()
    return wait_for(lambda: any(not is_stop(t, robot) for t in robot.since("trajectories", t0)), 30.0)


def chunks_stop_and_a_stop_is_published(robot, t0, host):
    """A stop arrives, and then no chunk while the host's dispatcher runs 5 more jobs (actor
    cycles, or planner runs while the actor is deactivated)."""
    assert wait_for(lambda: any(is_stop(t, robot) for t in robot.since("trajectories", t0)), 10.0), "no stop published"
    stats = host.loop.scheduler.stats

    def jobs():
        return stats["actor"].completed + stats["planner"].completed
    chunks, done = len(robot.rx.chunks), jobs()
    assert wait_for(lambda: jobs() >= done + 5, 10.0), "the dispatcher stopped"
    return len(robot.rx.chunks) == chunks


@pytest.mark.parametrize("source", ["camera", "joints"])
def test_stale_input_stops_chunks_publishes_a_stop_and_fresh_input_resumes(host, robot, episode, source):
    assert trajectories_flow(robot)
    stale_events = host.loop.stale_events
    t0 = time.monotonic()
    if source == "camera":
        robot.publish_camera = False
    else:
        robot.publish_joints = False
    assert chunks_stop_and_a_stop_is_published(robot, t0, host)
    stop = [t for t in robot.since("trajectories", t0) if is_stop(t, robot)][0]
    if source == "joints":
        assert stop.points == []        # the arm's state is unknown: the controller holds where it is
    else:                               # at a position the joint states reported (the arm moves)
        _, positions, _ = robot.motion_since(t0 - 1.0)
        assert np.min(np.abs(positions - np.asarray(stop.points[0].positions)).max(axis=1)) < 1e-6
    assert host.loop.stale_events == stale_events + 1
    # the next /diagnostics after the hold reports it (wait for one: publication is periodic)
    t1 = time.monotonic()
    assert wait_for(lambda: (robot.diagnostic("inputs", t1) or (None,))[0] == DiagnosticStatus.WARN, 5.0)
    level, message, values = robot.diagnostic("inputs", t1)
    assert level == DiagnosticStatus.WARN and "stale" in message and "stale" in values["stale"]
    robot.publish_camera = robot.publish_joints = True
    t2 = time.monotonic()
    assert wait_for(lambda: len(robot.since("chunks", t2)) >= 2), "no chunks after fresh input"


def _image(**fields):
    msg = image_to_msg(np.zeros((8, 8, 3), np.uint8), "rgb8")
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


@pytest.mark.parametrize("bad, why", [
    (_image(encoding="yuv422"), "unsupported image encoding"),
    (_image(step=20), "step 20 is smaller"),
    (_image(data=array.array("B", bytes(100))), "truncated"),
    (_image(height=0, width=0, step=0, data=array.array("B")), "empty image"),
    (_image(encoding="16UC1"), "unsupported image encoding"),
])
def test_malformed_images_are_refused_with_a_diagnostic_and_the_host_keeps_serving(host, robot, episode, bad, why):
    rejected = host.loop.inputs.stats["top"].rejected
    t0 = time.monotonic()
    for _ in range(3):
        robot.image_pub.publish(bad)
        time.sleep(0.02)
    assert wait_for(lambda: host.loop.inputs.stats["top"].rejected > rejected)
    assert why in host.loop.inputs.stats["top"].last_error
    assert wait_for(lambda: (d := robot.diagnostic("inputs", t0)) is not None and d[0] == DiagnosticStatus.WARN
                    and why in d[1])
    t1 = time.monotonic()
    assert wait_for(lambda: len(robot.since("chunks", t1)) >= 2)


@pytest.mark.parametrize("names, positions, why", [
    (["joint_x", "joint_y"], [float("nan"), 0.5], "not finite"),
    (["joint_x", "joint_y"], [0.5, float("inf")], "not finite"),
    (["joint_x", "joint_y"], [0.5], "2 names but 1 positions"),
])
def test_bad_joint_states_are_refused_with_a_diagnostic(host, robot, episode, names, positions, why):
    stats = host.loop.inputs.stats["joint_states"]
    rejected = stats.rejected
    msg = JointState(name=names, position=positions)
    msg.header.stamp = robot.node.get_clock().now().to_msg()
    robot.joint_pub.publish(msg)
    assert wait_for(lambda: stats.rejected > rejected)
    assert why in stats.last_error
    t1 = time.monotonic()
    assert wait_for(lambda: len(robot.since("chunks", t1)) >= 2)        # good states keep it going
    assert all(np.all(np.isfinite(c.actions)) for c in robot.since("chunks", t1))


def test_a_joint_state_with_some_joints_updates_those_and_the_missing_one_goes_stale_by_name(host, robot, episode):
    """Joint states merge by name (arm and gripper drivers publish apart): a message with only
    joint_x keeps joint_x fresh; joint_y, no longer published, goes stale and the host holds
    saying which joint; a message naming none of the host's joints is not an error."""
    robot.publish_joints = False
    t0 = time.monotonic()
    deadline = t0 + 3.0
    while time.monotonic() < deadline and not (host.loop.holding or "").startswith("joint states are stale"):
        for names, positions in ((["joint_x"], [float(robot.world.position[0])]), (["shoulder"], [0.1])):
            msg = JointState(name=names, position=positions)
            msg.header.stamp = robot.node.get_clock().now().to_msg()
            robot.joint_pub.publish(msg)
        time.sleep(0.05)
    assert host.loop.holding == ("joint states are stale: ['joint_y'] from joint_states, last "
                                 f"{host.loop.holding.split('last ')[1].split(' s ago')[0]} s ago "
                                 "(joint_state_timeout_s 0.4)"), host.loop.holding
    assert host.loop.inputs.stats["joint_states"].last_error == "" or \
        "shoulder" not in host.loop.inputs.stats["joint_states"].last_error
    robot.publish_joints = True
    t1 = time.monotonic()
    assert wait_for(lambda: len(robot.since("chunks", t1)) >= 2)


def test_extra_joints_in_any_order_are_accepted(host, robot, episode):
    robot.publish_joints = False
    received = host.loop.inputs.stats["joint_states"].received
    x, y = robot.world.position
    msg = joint_state_to_msg(["gripper", "joint_y", "wrist", "joint_x"], [0.0, y, 1.0, x])
    robot.joint_pub.publish(msg)
    assert wait_for(lambda: host.loop.inputs.stats["joint_states"].received > received)
    np.testing.assert_allclose(host.loop.inputs.joints().positions, [x, y], atol=1e-6)
    robot.publish_joints = True


def test_a_planner_exception_keeps_the_actor_on_the_last_good_subtask_and_reports_error(host, robot, episode):
    engine = host.loop.engine
    good = engine.subtask
    graph = engine.planner_graphs[-1]

    def boom():
        raise RuntimeError("planner exploded (injected)")
    graph.replay = boom
    try:
        t0 = time.monotonic()
        assert wait_for(lambda: (d := robot.diagnostic("planner", t0)) is not None and d[0] == DiagnosticStatus.ERROR)
        assert "planner exploded" in robot.diagnostic("planner", t0)[1]
        t1 = time.monotonic()
        assert wait_for(lambda: len(robot.since("chunks", t1)) >= 3)
        assert all(c.subtask == good.text and c.subtask_version == good.version for c in robot.since("chunks", t1))
    finally:
        del graph.replay
    t2 = time.monotonic()
    assert wait_for(lambda: (d := robot.diagnostic("planner", t2)) is not None and d[0] == DiagnosticStatus.OK)


def test_nan_from_the_model_never_leaves_the_node(host, robot, episode):
    assert trajectories_flow(robot)
    bias = host.loop.engine.actor.action_out.bias
    saved = bias.detach().clone()
    rejected = host.loop.rejected_chunks
    t0 = time.monotonic()
    with torch.no_grad():
        bias.fill_(float("nan"))        # the captured graph's own storage
    try:
        assert wait_for(lambda: host.loop.rejected_chunks >= rejected + 2)
        assert wait_for(lambda: (d := robot.diagnostic("actor", t0)) is not None and d[0] == DiagnosticStatus.ERROR
                        and "NaN" in d[1])
        assert any(is_stop(t, robot) for t in robot.since("trajectories", t0))
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    for chunk in robot.since("chunks", t0):
        assert np.all(np.isfinite(chunk.actions))
    for traj in robot.since("trajectories", t0):
        assert all(np.all(np.isfinite(p.positions)) and np.all(np.isfinite(p.velocities)) for p in traj.points)
    t1 = time.monotonic()
    assert wait_for(lambda: len(robot.since("chunks", t1)) >= 2)       # recovers once the model is finite


def _change_state(robot, node: str, transition: int) -> bool:
    client = robot.node.create_client(ChangeState, f"/{node}/change_state")
    try:
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(ChangeState.Request(transition=Transition(id=transition)))
        assert wait_for(future.done, 20.0)
        return future.result().success
    finally:
        robot.node.destroy_client(client)


def test_deactivate_stops_chunks_without_losing_state_and_activate_resumes(host, robot, episode):
    subtask, episode_id = host.loop.engine.subtask, host.loop.episode_id
    t0 = time.monotonic()
    assert _change_state(robot, "flashrt_actor", Transition.TRANSITION_DEACTIVATE)
    assert chunks_stop_and_a_stop_is_published(robot, t0, host)
    ready = robot.call("ready")
    assert not ready.success and "actor inactive" in ready.message
    assert _change_state(robot, "flashrt_actor", Transition.TRANSITION_ACTIVATE)
    t1 = time.monotonic()
    assert wait_for(lambda: len(robot.since("chunks", t1)) >= 2)
    chunk = robot.since("chunks", t1)[-1]
    assert chunk.episode_id == episode_id and chunk.subtask_version >= subtask.version
    assert robot.call("ready").success
