"""Replay over DDS into the real host (in-process, its own rclpy context): lock-step replays are
deterministic and equal the Engine fed directly (the ROS path adds nothing and loses nothing),
for an MCAP bag with raw images and a sqlite3 bag with jpeg at changing resolutions; coaching,
interrupt and the start service reach the host; `--rate` runs the host on the bag's /clock."""
from __future__ import annotations

import numpy as np
import pytest

from flashrt_ros.tools import replay
from flashrt_ros.tools.make_fixture_bag import BAG_EPOCH_NS
from flashrt_ros.tools.replay_outputs import compare, read_outputs

from replay_helpers import COMPRESSED, ROBOT, checkpoint, make_bag, replay_args


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("replay_ros")
    return {"dir": d, "ckpt": checkpoint(d), "robot": make_bag(d, "robot", ROBOT),
            "compressed": make_bag(d, "compressed", COMPRESSED)}


def _run(env, bag: str, name: str, *extra: str):
    out = env["dir"] / name
    code = replay.main(replay_args(env[bag], out, env["ckpt"], "--set", "coach_hold_s=0.6", *extra))
    assert code == 0, f"replay {name} exited {code}"
    return read_outputs(out), out


def _assert_same_chunks(a, b):
    assert [(c.stamp_ns, c.chunk_seq, c.episode_id, c.subtask, c.subtask_version) for c in a.chunks] == \
           [(c.stamp_ns, c.chunk_seq, c.episode_id, c.subtask, c.subtask_version) for c in b.chunks]
    for x, y in zip(a.chunks, b.chunks):
        np.testing.assert_array_equal(x.positions, y.positions)   # bit for bit
    assert [(s.text, s.version, s.source, s.stamp_ns) for s in a.subtasks] == \
           [(s.text, s.version, s.source, s.stamp_ns) for s in b.subtasks]


@pytest.fixture(scope="module")
def robot_runs(env):
    return {name: _run(env, "robot", name, *flags)
            for name, flags in (("step_a", ("--step",)), ("step_b", ()), ("offline", ("--offline",)))}


def test_two_step_replays_give_identical_chunks(robot_runs):
    a, b = robot_runs["step_a"][0], robot_runs["step_b"][0]
    assert len(a.chunks) > 20
    _assert_same_chunks(a, b)
    assert compare(a.chunks, b.chunks, 0.0).identical


def test_step_replay_over_dds_equals_the_engine_fed_directly(robot_runs):
    _assert_same_chunks(robot_runs["step_a"][0], robot_runs["offline"][0])


def test_step_replay_sends_coaching_interrupt_and_start_to_the_host(robot_runs):
    outputs, out = robot_runs["step_a"]
    times = np.array([(c.stamp_ns - BAG_EPOCH_NS) / 1e9 for c in outputs.chunks])
    # one chunk per observation: the chunk stamps are distinct
    assert len(set(times.tolist())) == len(times)
    # coaching at 1.0 s becomes the subtask of the next chunk, held 0.6 s of bag time, then the
    # planner takes over again
    coached = [c for c, t in zip(outputs.chunks, times) if 1.0 < t < 1.6]
    assert coached and all(c.subtask == "go to yellow" for c in coached)
    coach = [s for s in outputs.subtasks if s.source == "coach"]
    assert [(s.text, (s.stamp_ns - BAG_EPOCH_NS) / 1e9) for s in coach] == [("go to yellow", 1.0)]
    # the interrupt at 2.5 s stops the chunks and a stop goes to the controller; /flashrt/start
    # at 3.0 s resumes them
    assert not [t for t in times if 2.5 <= t < 3.0] and times.max() > 3.0
    stops = [t for t in outputs.trajectories if t.is_stop]
    assert stops and min(abs((s.stamp_ns - BAG_EPOCH_NS) / 1e9 - 2.5) for s in stops) < 0.01
    report = (out / "report.md").read_text()
    assert "`--step`: lock-step over DDS" in report and "stop sent to the controller" in report


def test_step_replay_of_a_compressed_sqlite3_bag_equals_offline(env):
    step, _ = _run(env, "compressed", "compressed_step")
    offline, _ = _run(env, "compressed", "compressed_offline", "--offline")
    assert len(step.chunks) > 10
    _assert_same_chunks(step, offline)


def test_rate_replay_runs_the_host_on_the_bags_clock(env):
    outputs, out = _run(env, "robot", "rate", "--rate", "2.0")
    assert outputs.chunks, "no chunk in real-time replay"
    stamps = np.array([c.stamp_ns for c in outputs.chunks])
    # chunks answer observations of the bag (stamps in bag time, not wall time)
    assert stamps.min() >= BAG_EPOCH_NS and stamps.max() <= BAG_EPOCH_NS + int(ROBOT.duration_s * 1e9)
    # trajectories are stamped in the bag's time too (the host is on /clock)
    assert all(abs(t.stamp_ns - BAG_EPOCH_NS) < 10 * 10**9 for t in outputs.trajectories)
    assert "`--rate 2`" in (out / "report.md").read_text()


def test_lockstep_host_calls_the_engine_exactly_as_the_offline_reference(env, monkeypatch, tmp_path):
    """Observation trigger: every new complete observation runs the planner (first after the task
    and after /flashrt/start, then every planner_every observations) and then the actor, in the
    callback that completed it. The host's sequence of engine calls equals the offline one."""
    import flashrt_ros.engines.builtin as engine_module

    calls: list[tuple] = []

    class RecordingEngine(engine_module.Engine):
        def plan(self, images, encodings, allow_commit=True):
            calls.append(("plan", allow_commit))
            return super().plan(images, encodings, allow_commit)

        def act(self, images, encodings, joint_positions, chunk_seq=0):
            calls.append(("act", chunk_seq))
            return super().act(images, encodings, joint_positions, chunk_seq)

    monkeypatch.setattr(engine_module, "Engine", RecordingEngine)
    sequences = {}
    for mode in ("--step", "--offline"):
        calls.clear()
        args = replay_args(env["robot"], tmp_path / mode.strip("-"), env["ckpt"], mode, "--set", "planner_every=3",
                           "--set", "coach_hold_s=0.6")
        assert replay.main(args) == 0
        sequences[mode] = list(calls)
    assert sequences["--step"] == sequences["--offline"]
    seq = sequences["--step"]
    kinds = "".join("p" if c[0] == "plan" else "a" for c in seq)
    assert kinds.startswith("pa") and "pp" not in kinds           # a plan is always followed by its act
    # every 3 observations (the interrupt and the start service break the rhythm once)
    gaps = [len(run) for run in kinds.split("p")[1:]]
    assert gaps.count(3) >= len(gaps) - 3 and max(gaps) <= 8
    # during the coaching hold the planner runs but may not commit
    assert ("plan", False) in seq
