"""Chunk-boundary figures from published trajectories (replay reports): a trajectory that
continues the previous plan has no jump, one offset by c jumps by c; stops are not boundaries."""
import numpy as np

from flashrt_ros.tools.boundaries import executed, figures, takeovers
from flashrt_ros.tools.replay_outputs import Trajectory

DT = 50_000_000


def ramp(start_ns: int, n: int, offset: float = 0.0, slope: float = 1.0) -> Trajectory:
    """Points at start + (i+1) dt on the line p(t) = slope * t (+ offset), two joints."""
    times = start_ns + DT * np.arange(1, n + 1)
    p = slope * times / 1e9 + offset
    return Trajectory(start_ns, times.astype(np.int64), np.stack([p, -p], axis=1))


def test_a_continuing_chunk_has_no_jump_and_an_offset_one_jumps_by_its_offset():
    smooth = [ramp(0, 10), ramp(2 * DT, 10), ramp(4 * DT, 10)]
    assert [t.position_jump for t in takeovers(smooth)] == [0.0, 0.0]
    assert max(t.velocity_jump for t in takeovers(smooth)) < 1e-9
    jumpy = [ramp(0, 10), ramp(2 * DT, 10, offset=0.03), ramp(4 * DT, 10)]
    jumps = [t.position_jump for t in takeovers(jumpy)]
    np.testing.assert_allclose(jumps, [0.03, 0.03], atol=1e-12)
    f = figures(jumpy)
    assert f["boundaries"] == 2 and abs(f["position_jump"]["max"] - 0.03) < 1e-12
    assert f["jerk_rms"]["p50"] > figures(smooth)["jerk_rms"]["p50"] + 1.0


def test_stops_are_not_boundaries_and_the_executed_command_switches_at_each_takeover():
    stop = Trajectory(3 * DT, np.array([4 * DT]), np.zeros((1, 2)))
    trajs = [ramp(0, 10), stop, ramp(2 * DT, 10, offset=0.5)]
    assert len(takeovers(trajs)) == 1
    t, p = executed(trajs)
    assert list(t[:3]) == [DT, 2 * DT, 3 * DT]          # the first plan until the next one's first point
    np.testing.assert_allclose(p[2, 0], 3 * DT / 1e9 + 0.5)
