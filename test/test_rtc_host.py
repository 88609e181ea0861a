"""overlap_policy 'rtc' in the host's rules (simulated clock, the reference engine on CPU): the
delay d is measured, the prefix handed to the engine is the trajectory the arm is executing
(sampled at the new chunk's action times, policy units), and the new chunk continues it where
`replace` jumps. Over DDS: the host's trajectories continue one another."""
import numpy as np
import pytest

from flashrt_ros.host.limits import sample_trajectory
from flashrt_ros.host.status import DelayEstimate
from test_loop_rules import Rig


def test_the_delay_estimate_is_a_high_percentile_in_steps_after_warm_up():
    d = DelayEstimate(window=10, percentile=95, skip=2)
    assert d.steps(0.05, 49) == 0
    for latency in (5.0, 5.0, 0.06, 0.07, 0.08, 0.12):     # the first two are warm-up
        d.add(latency)
    assert 0.11 < d.seconds() <= 0.12 and d.steps(0.05, 49) == 3
    assert d.steps(0.01, 5) == 5                            # never beyond the limit
    d.restart()
    d.add(9.0)
    assert d.seconds() <= 0.12                              # a new episode's warm-up is skipped too


def delayed_rig(policy: str, delay_s: float, **params):
    """A Rig whose every chunk is ready `delay_s` after its observation (the clock moves during
    inference), capturing what the loop hands the engine."""
    rig = Rig(overlap_policy=policy, **params)
    engine = rig.loop.engine
    calls = []
    act = engine.act

    def slow_act(*args, **kwargs):
        calls.append(kwargs)
        result = act(*args, **kwargs)
        rig.clock.advance(delay_s)
        return result
    engine.act = slow_act
    return rig, calls


def run_chunks(rig, n: int, period: float = 0.1):
    chunks = []
    for _ in range(n):
        rig.feed()
        events = rig.cycle()
        chunks += [e for k, e in events if k == "chunk"]
        rig.clock.advance(period)
    return chunks


def boundary_jumps(chunks) -> np.ndarray:
    """Per boundary: |first commanded point of the new trajectory - where the previous one had
    the arm at that time| (max over joints)."""
    jumps = []
    for prev, new in zip(chunks, chunks[1:]):
        a, b = prev.trajectory, new.trajectory
        if a is None or b is None:
            continue
        t = (b.stamp_ns - a.stamp_ns) / 1e9 + b.times[0]
        at = sample_trajectory(t, a.times, a.positions, a.velocities, (a.positions[0], np.zeros(2)))[0]
        jumps.append(np.abs(b.positions[0] - at).max())
    return np.array(jumps)


@pytest.mark.parametrize("mode", ["guided", "trained"])
def test_rtc_hands_the_engine_the_executing_trajectory_and_continues_it(mode):
    # max_velocity well above the policy's speeds: the limits must not be what smooths the boundary
    rig, calls = delayed_rig("rtc", 0.15, rtc_mode=mode, max_velocity=[5.0, 5.0])
    chunks = run_chunks(rig, 8)
    assert len(chunks) == 8
    assert calls[0]["prefix"] is None                         # nothing executing yet
    prefixed = [c for c in calls if c.get("prefix") is not None]
    assert len(prefixed) == 7 and rig.loop.rtc_prefixes == 7
    # the prefix is the previous trajectory at the new chunk's row times (policy units = ROS here)
    prev, call = chunks[-2].trajectory, calls[-1]
    stamp = chunks[-1].stamp_ns
    t = (stamp - prev.stamp_ns) / 1e9 + rig.loop.dt * np.arange(1, len(call["prefix"]) + 1)
    assert t[-1] <= prev.times[-1] + 1e-9 and t[-1] + rig.loop.dt > prev.times[-1]   # as long as it lasts
    within = t >= prev.times[0]              # (before its first point the arm interpolates from its state)
    expected = [sample_trajectory(x, prev.times, prev.positions, prev.velocities, (prev.positions[0], np.zeros(2)))[0]
                for x in t[within]]
    np.testing.assert_allclose(call["prefix"][within], np.array(expected), atol=1e-5)
    assert calls[-1]["delay"] == 3                            # 0.15 s at dt 0.05, measured
    assert chunks[-1].delay_steps == 3
    if mode == "trained":
        return      # its first d actions are the prefix (test_rtc_engine.py); its boundaries: docs/benchmarks/rtc.md
    # and the new chunks continue the executing ones where replace jumps
    replace = run_chunks(delayed_rig("replace", 0.15, max_velocity=[5.0, 5.0])[0], 8)
    rtc_jump, replace_jump = np.median(boundary_jumps(chunks)), np.median(boundary_jumps(replace))
    assert rtc_jump < 0.5 * replace_jump, (rtc_jump, replace_jump)


def _jumps_over_dds(policy: str, seconds: float = 4.0) -> np.ndarray:
    """The robot (host_harness: it moves, following the trajectories as JTC does) against a host
    with `policy`: per new trajectory, how far its first point is from where the previous one had
    the arm at that time."""
    import time

    from host_harness import InProcessHost, Robot, host_config, stamp_to_ns, trajectory_times, wait_for
    robot = Robot()
    host = InProcessHost(host_config(overlap_policy=policy, task=robot.world.task_text, actor_hz=10.0))
    try:
        t0 = time.monotonic()
        assert wait_for(lambda: len(robot.since("trajectories", t0)) >= 3, 20.0)
        time.sleep(seconds)
        trajs = [m for m in robot.since("trajectories", t0) if len(m.points) > 1]
        assert host.loop.rtc_prefixes > 0 if policy == "rtc" else host.loop.rtc_prefixes == 0
    finally:
        host.close()
        robot.close()
    jumps = []
    for a, b in zip(trajs, trajs[1:]):
        ta, tb = trajectory_times(a), trajectory_times(b)
        pa = np.array([p.positions for p in a.points])
        va = np.array([p.velocities for p in a.points])
        t = (stamp_to_ns(b.header.stamp) - stamp_to_ns(a.header.stamp)) / 1e9 + tb[0]
        if ta[0] <= t <= ta[-1]:
            at = sample_trajectory(t, ta, pa, va, (pa[0], np.zeros(2)))[0]
            jumps.append(np.abs(np.array(b.points[0].positions) - at).max())
    return np.array(jumps)


def test_over_dds_rtc_trajectories_continue_what_the_robot_executes():
    rtc, replace = _jumps_over_dds("rtc"), _jumps_over_dds("replace")
    assert len(rtc) >= 10 and len(replace) >= 10
    assert np.median(rtc) < 0.5 * np.median(replace), (np.median(rtc), np.median(replace))
