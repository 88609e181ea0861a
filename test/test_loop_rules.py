"""The host's rules without ROS, on a simulated clock: the PolicyLoop with the shipped reference
engine (real model, CPU), inputs put in by hand, cycles run by the test, outputs collected.

Each safety rule of the loop: limits on what is commanded, what a stop is, what an interrupt does
to a chunk in flight, when the overlap state is forgotten, skewed stamps, late chunks, faults.
"""
import threading

import numpy as np
import pytest

from flashrt_ros.host.limits import chunk_velocities, hermite, rate_limit, stop_duration
from flashrt_ros.host.loop import PolicyLoop
from flashrt_ros.host.params import load_config
from flashrt_ros.sim import JOINT_NAMES, TabletopWorld

TASK = "visit red, then blue, then green"


class Clock:
    def __init__(self):
        self.ns = 1_000_000_000_000

    @property
    def s(self) -> float:
        return self.ns / 1e9

    def advance(self, seconds: float) -> None:
        self.ns += int(round(seconds * 1e9))


class Collected:
    def __init__(self):
        self.events = []

    def publish_chunk(self, chunk, ready_ns):
        self.events.append(("chunk", chunk))

    def publish_stop(self, stop):
        self.events.append(("stop", stop))

    def publish_subtask(self, state, stamp_ns):
        self.events.append(("subtask", state))

    def of(self, kind):
        return [e for k, e in self.events if k == kind]


class Rig:
    """A loop on a simulated clock, its world, and helpers to feed it and run its cycles."""

    def __init__(self, **params):
        values = {"device": "cpu", "task": TASK, "actor_hz": 10.0, "camera_timeout_s": 0.4,
                  "joint_state_timeout_s": 0.4, **params}
        config = load_config([], {}, [(k, str(v).lower() if isinstance(v, bool) else
                                       ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
                                      for k, v in values.items()])
        self.clock = Clock()
        self.loop = PolicyLoop(config)
        self.out = Collected()
        self.loop.outputs = self.out
        self.loop.now_ns = lambda: self.clock.ns
        self.loop.monotonic = lambda: self.clock.s
        self.loop.configure("test", dispatch=False)
        self.loop.set_active("actor", True)
        self.loop.set_active("planner", True)
        self.world = TabletopWorld()
        self.world.reset(3)
        assert self.loop.start()[0]
        self.feed()
        for piece in self.loop.scheduler.tasks["planner"].pieces:
            piece()
        assert self.loop.engine.subtask.version > 0

    def feed(self, camera=True, joints=True, stamp_offset_s=0.0, position=None):
        stamp = self.clock.ns - int(stamp_offset_s * 1e9)
        if camera:
            for cam in self.loop.config.cameras:
                self.loop.put_frame(cam.name, self.world.render(), "rgb8", stamp, self.clock.s)
        if joints:
            q = self.world.position if position is None else np.asarray(position, np.float32)
            self.loop.put_joints(dict(zip(self.loop.config.joint_names, np.asarray(q, np.float32).tolist())),
                                 stamp, self.clock.s)

    def cycle(self):
        """One actor period: time moves on, fresh inputs, one cycle. Returns what it published."""
        before = len(self.out.events)
        self.loop._actor_cycle()
        return self.out.events[before:]

    def moving(self):
        """Inputs fresh and one chunk issued: a trajectory of ours is executing."""
        events = self.cycle()
        assert [k for k, _ in events] == ["chunk"], events
        return events[0][1]


def test_points_move_no_faster_than_max_velocity_from_the_measured_state():
    rig = Rig(max_velocity=[0.02, 0.02])
    q0 = rig.world.position.copy()
    chunk = rig.moving()
    dt, vmax = chunk.dt, 0.02
    steps = np.abs(np.diff(np.vstack([q0[None], chunk.positions]), axis=0))
    assert steps.max() <= vmax * dt * (1 + 1e-5), steps.max()
    traj = chunk.trajectory
    np.testing.assert_allclose(traj.velocities, chunk_velocities(q0, chunk.positions, dt)[-len(traj.times):],
                               atol=1e-6)             # consistent with the positions
    assert np.abs(traj.velocities).max() <= vmax + 1e-7
    # the unlimited engine would have moved much faster: the limit is what made the difference
    free = Rig()
    fast = free.moving()
    assert np.abs(np.diff(fast.positions, axis=0)).max() > 10 * vmax * dt


def test_a_stop_without_fresh_joint_states_is_empty():
    rig = Rig()
    rig.moving()
    rig.clock.advance(0.5)
    rig.feed(joints=False)          # the camera goes on, the joint states stopped 0.5 s ago
    events = rig.cycle()
    assert [k for k, _ in events] == ["stop"]
    stop = events[0][1]
    assert len(stop.times) == 0 and stop.positions.shape == (0, 2)     # the controller holds where it is
    assert "joint states are stale" in rig.loop.holding


def test_a_stop_with_fresh_joint_states_holds_at_the_measured_position_within_max_velocity():
    rig = Rig(max_velocity=[0.5, 0.5])
    chunk = rig.moving()
    rig.clock.advance(0.3)
    measured = chunk.positions[0] + np.float32(0.05)      # the arm is where the joint states say
    rig.feed(camera=False, position=measured)             # the camera stalled, joints are fresh
    rig.clock.advance(0.2)
    rig.feed(camera=False, position=measured)
    events = rig.cycle()
    assert [k for k, _ in events] == ["stop"]
    stop = events[0][1]
    np.testing.assert_allclose(stop.positions[0], measured)
    np.testing.assert_array_equal(stop.velocities, 0.0)
    # from where the last trajectory has the arm now, the controller's cubic stays within the limit
    t = (stop.stamp_ns - chunk.trajectory.stamp_ns) / 1e9
    from flashrt_ros.host.limits import sample_trajectory
    start = (rig.world.position, np.zeros(2))
    p0, v0 = sample_trajectory(t, chunk.trajectory.times, chunk.trajectory.positions, chunk.trajectory.velocities, start)
    _, vel = hermite(p0, np.clip(v0, -0.5, 0.5), measured.astype(np.float64), np.zeros(2), float(stop.times[0]),
                     np.linspace(0, 1, 2001)[:, None])
    assert np.abs(vel).max() <= 0.5 * (1 + 1e-6)
    assert stop.times[0] >= rig.loop.dt


def test_stop_duration_is_the_shortest_that_keeps_the_cubic_within_the_limit():
    vmax = np.array([0.5])
    T = stop_duration(np.array([0.0]), np.array([0.0]), np.array([0.3]), vmax, minimum=0.05)
    assert T == pytest.approx(1.5 * 0.3 / 0.5, rel=1e-3)       # a rest-to-rest cubic peaks at 1.5 x mean
    s = np.linspace(0, 1, 401)
    assert np.abs(hermite(0.0, 0.0, 0.3, 0.0, T, s)[1]).max() <= 0.5 * (1 + 1e-6)
    assert np.abs(hermite(0.0, 0.0, 0.3, 0.0, 0.9 * T, s)[1]).max() > 0.5


def test_rate_limit_keeps_every_step_and_the_first_from_q0_within_the_limit():
    rng = np.random.default_rng(0)
    q0 = np.array([0.5, 0.5])
    wild = rng.uniform(-1, 2, (50, 2))
    out = rate_limit(q0, wild, 0.05, np.array([0.2, 0.4]), np.zeros(2), np.ones(2))
    steps = np.abs(np.diff(np.vstack([q0[None], out]), axis=0))
    assert np.all(steps <= np.array([0.2, 0.4]) * 0.05 + 1e-6)
    assert out.min() >= 0 and out.max() <= 1


def test_interrupt_stops_at_once_and_the_chunk_in_flight_is_discarded():
    rig = Rig()
    rig.moving()
    inside, release = threading.Event(), threading.Event()
    act = rig.loop.engine.act

    def slow_act(*args):
        inside.set()
        release.wait(10)
        return act(*args)
    rig.loop.engine.act = slow_act
    rig.clock.advance(0.1)
    rig.feed()
    cycle = threading.Thread(target=rig.loop._actor_cycle)
    cycle.start()
    assert inside.wait(10)
    before = len(rig.out.events)
    rig.loop.interrupt("operator")              # returns while the inference is still running
    assert [k for k, _ in rig.out.events[before:]] == ["stop"]
    release.set()
    cycle.join(10)
    assert [k for k, _ in rig.out.events[before:]] == ["stop"]      # the late chunk never left
    assert rig.loop.discarded_chunks == 1


@pytest.mark.parametrize("event", ["hold", "interrupt", "fault", "reset", "new episode"])
def test_blend_forgets_the_previous_chunk_on(event):
    rig = Rig(overlap_policy="blend", blend_steps=4)
    rig.moving()
    assert rig.loop._last_chunk is not None
    if event == "hold":
        rig.clock.advance(0.5)
        rig.feed(joints=False)
        rig.cycle()
    elif event == "interrupt":
        rig.loop.interrupt("operator")
    elif event == "fault":
        rig.loop.callback_fault("test", RuntimeError("boom"))
    elif event == "reset":
        rig.loop.reset()
    else:
        rig.loop.stop()
        rig.loop.start()        # the next episode: the engine back to its start-up state, the planner released
        rig.feed()
        for piece in rig.loop.scheduler.tasks["planner"].pieces:
            piece()
    assert rig.loop._last_chunk is None
    # and the next chunk is the engine's own (nothing blended in from before)
    if event != "reset":
        rig.loop.start()
        rig.clock.advance(0.1)
        rig.feed()
        seq = rig.loop.chunk_seq + 1
        obs_q = rig.world.position.copy()
        chunk = rig.moving()
        plain = rig.loop.engine.act([rig.world.render()], ["rgb8"], obs_q, seq)
        expected = rate_limit(obs_q, plain.positions, chunk.dt, rig.loop._vmax, rig.loop._lower, rig.loop._upper)
        np.testing.assert_allclose(chunk.positions, expected, atol=1e-6)


@pytest.mark.parametrize("offset_s, side", [(1.5, "behind"), (-1.5, "ahead of")])
def test_a_stamp_too_far_from_the_host_clock_is_rejected_naming_the_camera_and_offset(offset_s, side):
    rig = Rig(max_stamp_skew_s=1.0)
    rejected = rig.loop.inputs.stats["top"].rejected
    rig.feed(joints=False, stamp_offset_s=offset_s)
    stats = rig.loop.inputs.stats["top"]
    assert stats.rejected == rejected + 1
    assert "camera 'top'" in stats.last_error and f"1.500 s {side} the host clock" in stats.last_error


def test_a_chunk_already_in_the_past_is_not_sent_and_warns():
    rig = Rig(max_stamp_skew_s=60.0)
    rig.feed(stamp_offset_s=20.0)                # older than the whole horizon
    events = rig.cycle()
    kinds = [k for k, _ in events]
    assert kinds == ["chunk"] and events[0][1].trajectory is None
    assert rig.loop.late_chunks == 1 and rig.loop.late.recent() and "already in the past" in rig.loop.late.message


def test_actions_in_the_past_are_dropped_and_times_stay_relative_to_the_observation():
    rig = Rig()
    rig.feed(stamp_offset_s=0.12)               # ready 0.12 s after the observation: 0.05 and 0.10 are past
    chunk = rig.moving()
    traj = chunk.trajectory
    assert traj.stamp_ns == chunk.stamp_ns == rig.clock.ns - 120_000_000
    np.testing.assert_allclose(traj.times[0], 3 * chunk.dt)
    # the chunk is limited from the measured state at its stamp; what is commanded is also reachable
    # from where the arm is when it takes over (here at rest at q0, 0.03 s before the first point)
    q0 = rig.world.position
    np.testing.assert_allclose(traj.positions, rate_limit(q0, chunk.positions[2:], chunk.dt, rig.loop._vmax,
                                                          rig.loop._lower, rig.loop._upper, first_dt=0.03),
                               atol=1e-7)
    assert not np.allclose(traj.positions, chunk.positions[2:])       # the second limit mattered here
    assert rig.loop.dropped_actions == 2


def test_stop_and_reset_publish_a_stop_while_moving():
    rig = Rig()
    rig.moving()
    before = len(rig.out.events)
    rig.loop.reset()
    assert [k for k, _ in rig.out.events[before:]] == ["stop"]
    rig.loop._run_pending()
    rig.loop.set_task(TASK)
    rig.loop._run_pending()
    for piece in rig.loop.scheduler.tasks["planner"].pieces:
        piece()
    rig.clock.advance(0.1)
    rig.feed()
    rig.moving()
    before = len(rig.out.events)
    rig.loop.stop()
    assert [k for k, _ in rig.out.events[before:]] == ["stop"]
    assert not rig.loop.running


def test_an_exception_in_a_callback_holds_reports_and_the_next_chunk_resumes():
    rig = Rig()
    rig.moving()
    before = len(rig.out.events)
    rig.loop.callback_fault("camera callback", ValueError("injected"))
    assert [k for k, _ in rig.out.events[before:]] == ["stop"]
    assert rig.loop.callback_error.recent() and "injected" in rig.loop.callback_error.message
    assert rig.loop.holding == "fault in camera callback"
    rig.clock.advance(0.1)
    rig.feed()
    rig.moving()
    assert rig.loop.holding is None


def test_joint_names_match_the_world():
    assert list(Rig().loop.config.joint_names) == list(JOINT_NAMES)


def test_a_moment_of_unsynced_cameras_skips_a_cycle_without_a_stop_but_a_lasting_one_holds(tmp_path):
    from flashrt_ros.tools.soak import _random_checkpoint
    ckpt = _random_checkpoint(2, tmp_path)
    rig = Rig(cameras=["a", "b"], checkpoint=str(ckpt), camera_timeout_s=0.4, max_stamp_skew_s=5.0)
    rig.moving()
    image = rig.world.render()

    def unsynced():
        """Both cameras fresh (just received), but b's frames are stamped 1.2 s late: a has no
        frame within the slop (0.05 s) of b's newest."""
        rig.loop.put_frame("b", image, "rgb8", rig.clock.ns - 1_200_000_000, rig.clock.s)
        rig.loop.put_frame("a", image, "rgb8", rig.clock.ns, rig.clock.s)
        rig.feed(camera=False)
    rig.clock.advance(0.1)
    unsynced()
    assert rig.cycle() == []                     # skipped: the running trajectory goes on
    assert rig.loop.unsynced_skips == 1 and rig.loop.holding is None
    for _ in range(4):                           # still mismatched 0.5 s later: now it holds
        rig.clock.advance(0.1)
        unsynced()
        events = rig.cycle()
    assert [k for k, _ in events] == ["stop"] and "out of sync" in rig.loop.holding


def test_forward_commands_stay_within_the_joint_limits_where_the_spline_overshoots():
    """A forward_command group gets the running trajectory sampled by the host: between two points
    within the limits, the cubic can pass beyond them (here below 0); nothing beyond leaves."""
    from flashrt_ros.host.limits import sample_trajectory
    from flashrt_ros.host.loop import TrajectoryOut
    rig = Rig()
    loop = rig.loop
    times = np.array([0.1, 0.2, 0.3])       # at the lower limit, still moving toward it, then back
    positions = np.array([[0.02, 0.5], [0.0, 0.5], [0.02, 0.5]], np.float32)
    velocities = np.array([[-0.2, 0.0], [-0.3, 0.0], [0.2, 0.0]], np.float32)
    loop._sent, loop._sent_from = TrajectoryOut(rig.clock.ns, times, positions, velocities), positions[0]
    ts = np.linspace(0.1, 0.3, 81)
    raw = np.array([sample_trajectory(t, times, positions, velocities, (positions[0], np.zeros(2)))[0] for t in ts])
    assert raw[:, 0].min() < -1e-4                       # the spline itself does overshoot
    sent = np.array([loop.command_at(rig.clock.ns + int(t * 1e9), 0.05) for t in ts])
    assert sent[:, 0].min() >= 0.0 and sent.max() <= 1.0
