"""The trajectory follower: joint_trajectory_controller semantics (numpy, no ROS), and the velocity
rule for position-only chunks."""

import numpy as np
import pytest

from flashrt_ros.sim.follower import TrajectoryFollower, chunk_velocities

DT = 0.1


def ramp(n=4, start=0.0, step=0.1):
    """Points along joint 0 (joint 1 fixed at 0.5), due at DT, 2 DT, ..."""
    times = DT * np.arange(1, n + 1)
    positions = np.stack([start + step * np.arange(1, n + 1), np.full(n, 0.5)], axis=1)
    return times, positions


def test_points_at_stamp_plus_time_from_start_then_hold_the_last():
    f = TrajectoryFollower(2, [0.0, 0.5])
    times, positions = ramp()
    f.command(10.0, times, positions, now=10.0)
    for t, p in zip(times, positions):
        np.testing.assert_array_equal(f.sample(10.0 + t)[0], p)
    position, velocity = f.sample(10.0 + times[-1] + 1.0)  # after the last point: hold it, at rest
    np.testing.assert_array_equal(position, positions[-1])
    np.testing.assert_array_equal(velocity, [0.0, 0.0])


def test_zero_stamp_means_start_now():
    f = TrajectoryFollower(2, [0.0, 0.5])
    times, positions = ramp()
    f.command(0.0, times, positions, now=7.0)
    np.testing.assert_array_equal(f.sample(7.0 + DT)[0], positions[0])
    np.testing.assert_array_equal(f.sample(7.0 + 3 * DT)[0], positions[2])


def test_a_new_trajectory_replaces_the_old_one_outright():
    f = TrajectoryFollower(2, [0.0, 0.5])
    times, positions = ramp()
    f.command(1.0, times, positions, now=1.0)
    f.advance(1.0 + DT)
    other = np.array([[0.9, 0.9], [0.8, 0.8]])
    f.command(1.0 + DT, [DT, 2 * DT], other, now=1.0 + DT)
    # the old trajectory's later points (0.3, 0.4 on joint 0) are gone: only the new points count
    np.testing.assert_allclose(f.sample(1.0 + 2 * DT)[0], other[0], atol=1e-9)
    np.testing.assert_allclose(f.sample(1.0 + 3 * DT)[0], other[1], atol=1e-9)
    np.testing.assert_allclose(f.sample(1.0 + 4 * DT)[0], other[1], atol=1e-9)  # and it holds the new end
    np.testing.assert_allclose(f.trajectory.positions, other)


def test_a_trajectory_that_already_ended_is_rejected_and_the_previous_motion_continues():
    f = TrajectoryFollower(2, [0.0, 0.5])
    times, positions = ramp()
    f.command(1.0, times, positions, now=1.0)
    before = [f.sample(1.0 + k * DT / 2) for k in range(10)]
    with pytest.raises(ValueError, match="before now"):  # last point at 2.0 + 4 DT = 2.4 < now 3.0
        f.command(2.0, times, positions + 0.3, now=3.0)
    with pytest.raises(ValueError, match="before now"):  # last point exactly now: rejected too
        f.command(3.0 - times[-1], times, positions + 0.3, now=3.0)
    after = [f.sample(1.0 + k * DT / 2) for k in range(10)]
    for (p0, v0), (p1, v1) in zip(before, after):
        np.testing.assert_array_equal(p0, p1)
        np.testing.assert_array_equal(v0, v1)


def test_a_zero_stamp_is_never_late():
    f = TrajectoryFollower(2, [0.0, 0.5])
    f.command(0.0, [0.0], [[0.3, 0.3]], now=3.0)  # due now: JTC accepts it, the setpoint steps there
    np.testing.assert_array_equal(f.sample(3.0)[0], [0.3, 0.3])
    np.testing.assert_array_equal(f.sample(4.0)[0], [0.3, 0.3])


def test_empty_trajectory_holds_the_current_setpoint():
    f = TrajectoryFollower(2, [0.0, 0.5])
    times, positions = ramp()
    f.command(0.0, times, positions, now=0.0)
    here = f.advance(0.25)
    assert 0.2 < here[0] < 0.3 and f.velocity[0] > 0  # moving
    f.command(0.0, [], np.zeros((0, 2)), now=0.25)
    assert f.trajectory is None
    np.testing.assert_array_equal(f.velocity, [0.0, 0.0])
    for t in (0.25, 0.3, 0.5, 10.0):
        position, velocity = f.sample(t)
        np.testing.assert_array_equal(position, here)
        np.testing.assert_array_equal(velocity, [0.0, 0.0])


def test_cubic_through_the_points_with_the_given_velocities():
    f = TrajectoryFollower(2, [0.0, 0.0])
    times = np.array([0.1, 0.3, 0.4])
    positions = np.array([[0.1, 0.0], [0.4, 0.2], [0.2, 0.2]])
    velocities = np.array([[1.0, 0.5], [-2.0, 0.0], [0.0, 0.0]])
    f.command(5.0, times, positions, velocities, now=5.0)
    for t, p, v in zip(times[:-1], positions, velocities):  # exactly each point, at its time
        position, velocity = f.sample(5.0 + t)
        np.testing.assert_array_equal(position, p)
        np.testing.assert_allclose(velocity, v, atol=1e-12)
    np.testing.assert_array_equal(f.sample(5.0 + times[-1])[0], positions[-1])
    # between points it is the cubic Hermite: continuous position and velocity, the velocity the
    # derivative of the position, and the segment not a straight line
    eps = 1e-6
    for t in np.linspace(5.1 + 1e-3, 5.4 - 1e-3, 23):
        numeric = (f.sample(t + eps)[0] - f.sample(t - eps)[0]) / (2 * eps)
        np.testing.assert_allclose(f.sample(t)[1], numeric, atol=1e-5)
    mid = f.sample(5.2)[0]
    hermite = 0.5 * (positions[0] + positions[1]) + 0.125 * 0.2 * (velocities[0] - velocities[1])
    np.testing.assert_allclose(mid, hermite, atol=1e-12)
    assert not np.allclose(mid, 0.5 * (positions[0] + positions[1]))


def test_linear_between_points_without_velocities():
    f = TrajectoryFollower(2, [0.0, 0.0])
    times = np.array([0.1, 0.3, 0.4])
    positions = np.array([[0.1, 0.0], [0.4, 0.2], [0.2, 0.2]])
    f.command(5.0, times, positions, now=5.0)
    for s in (0.0, 0.25, 0.5, 0.9):
        position, velocity = f.sample(5.1 + s * 0.2)
        np.testing.assert_allclose(position, positions[0] + s * (positions[1] - positions[0]), atol=1e-12)
        np.testing.assert_allclose(velocity, (positions[1] - positions[0]) / 0.2, atol=1e-12)
    # the velocity jumps at a point (as joint_trajectory_controller does with positions only)
    np.testing.assert_allclose(f.sample(5.3 - 1e-9)[1], [1.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(f.sample(5.3)[1], [-2.0, 0.0], atol=1e-6)


def test_before_the_first_point_it_moves_from_the_state_at_arrival():
    f = TrajectoryFollower(2, [0.0, 0.0])
    f.command(0.0, [1.0, 2.0], [[1.0, 0.0], [2.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]], now=0.0)
    f.advance(0.5)  # mid-way to the first point: moving
    start_p, start_v = f.position.copy(), f.velocity.copy()
    assert start_v[0] > 0.5
    target = np.array([[0.0, 1.0], [0.0, 1.0]])
    f.command(0.5, [0.5, 1.0], target, [[0.0, 0.0], [0.0, 0.0]], now=0.5)
    position, velocity = f.sample(0.5)  # continuous: the state it had when the message arrived
    np.testing.assert_array_equal(position, start_p)
    np.testing.assert_allclose(velocity, start_v)
    eps = 1e-7  # and it leaves with that velocity (no jump), reaching the first point on time
    np.testing.assert_allclose((f.sample(0.5 + eps)[0] - start_p) / eps, start_v, atol=1e-5)
    np.testing.assert_array_equal(f.sample(1.0)[0], target[0])
    # without velocities the way to the first point is a straight line from that state
    g = TrajectoryFollower(2, [0.2, 0.2])
    g.command(0.0, [1.0], [[0.6, 0.2]], now=3.0)
    np.testing.assert_allclose(g.sample(3.5)[0], [0.4, 0.2], atol=1e-12)


def test_a_start_in_the_past_is_sampled_in_the_segment_containing_the_time():
    f = TrajectoryFollower(2, [0.9, 0.9])  # far from the trajectory: no blend from here
    times, positions = ramp(n=5)
    f.command(1.0, times, positions, now=1.25)  # points due 1.1 .. 1.5; now is between the 2nd and 3rd
    position, _ = f.sample(1.25)
    np.testing.assert_allclose(position, 0.5 * (positions[1] + positions[2]), atol=1e-12)  # a step
    np.testing.assert_allclose(f.sample(1.3)[0], positions[2], atol=1e-9)
    np.testing.assert_allclose(f.advance(1.35), 0.5 * (positions[2] + positions[3]), atol=1e-12)


def test_max_velocity_limits_each_advance():
    f = TrajectoryFollower(2, [0.0, 0.0], max_velocity=[0.5, 2.0], time=0.0)
    f.command(0.0, [0.1], [[1.0, 1.0]], now=0.0)  # asks for 10 m/s
    np.testing.assert_allclose(f.advance(0.1), [0.05, 0.2], atol=1e-12)
    np.testing.assert_allclose(f.velocity, [0.5, 2.0], atol=1e-12)
    np.testing.assert_allclose(f.advance(0.3), [0.15, 0.6], atol=1e-12)  # from where it was, not the setpoint
    for k in range(4, 40):
        f.advance(k * 0.1)
    np.testing.assert_allclose(f.position, [1.0, 1.0], atol=1e-12)  # and then it holds the goal
    np.testing.assert_allclose(f.velocity, [0.0, 0.0], atol=1e-12)


def test_bad_trajectories_are_refused():
    f = TrajectoryFollower(2, [0.0, 0.0])
    with pytest.raises(ValueError):
        f.command(0.0, [0.1, 0.1], [[0, 0], [1, 1]], now=0.0)  # times not increasing
    with pytest.raises(ValueError):
        f.command(0.0, [0.1], [[np.nan, 0]], now=0.0)
    with pytest.raises(ValueError):
        f.command(0.0, [0.1], [[0, 0, 0]], now=0.0)
    with pytest.raises(ValueError):
        f.command(0.0, [0.1, 0.2], [[0, 0], [1, 1]], [[0, 0]], now=0.0)
    assert f.trajectory is None


def test_chunk_velocities_central_differences_from_the_joint_state():
    q0 = np.array([0.0, 1.0])
    positions = np.array([[0.1, 1.0], [0.3, 1.0], [0.6, 0.9], [0.6, 0.9]])
    v = chunk_velocities(q0, positions, 0.05)
    expected = np.array([[(0.3 - 0.0) / 0.1, 0.0], [(0.6 - 0.1) / 0.1, -1.0], [(0.6 - 0.3) / 0.1, -1.0], [0, 0]])
    np.testing.assert_allclose(v, expected, atol=1e-12)
    clamped = chunk_velocities(q0, positions, 0.05, max_velocity=[4.0, 0.5])
    np.testing.assert_allclose(clamped, np.clip(expected, [-4.0, -0.5], [4.0, 0.5]), atol=1e-12)
    np.testing.assert_array_equal(chunk_velocities(q0, positions[:1], 0.05), [[0.0, 0.0]])  # one point: at rest
    bad = positions.copy()
    bad[1, 0] = np.inf
    assert np.isfinite(chunk_velocities(q0, bad, 0.05, max_velocity=[4.0, 4.0])).all()


def test_chunk_velocities_match_the_postprocess_kernel_reference():
    torch = pytest.importorskip("torch")
    from flashrt_ros.runtime.kernels import postprocess_reference
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(10, 3)).astype(np.float32)
    q0 = rng.uniform(-1, 1, size=3).astype(np.float32)
    limits = np.array([[-10.0, 10.0]] * 3, np.float32)
    vmax = np.array([5.0, 20.0, 100.0], np.float32)
    out = postprocess_reference(actions, q0, np.zeros(3), np.ones(3), limits, vmax, 0.05)
    ours = chunk_velocities(q0, out.positions.numpy(), 0.05, vmax)
    np.testing.assert_allclose(ours, out.velocities.numpy(), rtol=1e-5, atol=1e-5)
    assert torch.is_tensor(out.velocities)
