"""Replay of a host serving a LeRobot policy (the tiny π0.5 fixture, config/lerobot_pi05.yaml: two
cameras, a 7-joint arm): a bag with two rgb8 240x320 cameras, /joint_states and a /flashrt/task
message, replayed with `flashrt-ros replay --step` twice — bit-identical chunks, equal to
`--offline` (the LerobotEngine fed directly, built by flashrt_ros.engines.make_engine) — each chunk
7 joints wide, with the bag's task as its subtask (a LeRobot policy has no planner: the task is
the subtask).

The bag is written with make_fixture_bag's writer helpers (no ROS needed to make it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flashrt_ros.host.params import load_config
from flashrt_ros.tools import replay
from flashrt_ros.tools.make_fixture_bag import (BAG_EPOCH_NS, FixtureSpec, _Bag, _header, _image_msg, _qos,
                                                _typestore)
from flashrt_ros.tools.replay_outputs import compare, read_outputs

from replay_helpers import replay_args

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "config" / "lerobot_pi05.yaml"
CHECKPOINT = Path(__file__).parent / "fixtures" / "lerobot_pi05_tiny"
TASK = "put the red cube in the bowl"
DURATION_S, RATE_HZ = 2.5, 10.0
FIRST_FRAME_S = 0.05          # the task (at the bag's start) comes before the first observation
# the example file's settings a CPU test and the offline reference need: the tiny fixture on CPU in
# fp32, the task from the bag, and overlap 'replace' (the offline reference implements only that)
OVERRIDES = {"checkpoint": str(CHECKPOINT), "device": "cpu", "dtype": "float32", "task": "",
             "overlap_policy": "replace", "camera_timeout_s": "1.0", "joint_state_timeout_s": "1.0"}


def _params():
    return load_config([str(PARAMS)], {}, list(OVERRIDES.items()))


def make_arm_bag(path: Path) -> Path:
    """MCAP: both cameras (seeded random rgb8 240x320, one stamp per observation), 7-joint
    /joint_states at RATE_HZ from FIRST_FRAME_S, the task before them."""
    config = _params()
    store = _typestore()
    T = store.types
    bag = _Bag(store)
    raw = FixtureSpec(transport="raw", encoding="rgb8")
    cams = [(c.name, "/" + c.topic.lstrip("/")) for c in config.cameras]
    for _, topic in cams:
        bag.topic(topic, "sensor_msgs/msg/Image", _qos(reliable=False))
    bag.topic("/joint_states", "sensor_msgs/msg/JointState")
    bag.topic("/flashrt/task", "std_msgs/msg/String")
    rng = np.random.default_rng(5)
    lo, hi = np.asarray(config.joint_lower_limits), np.asarray(config.joint_upper_limits)
    q0 = (lo + hi) / 2
    bag.add("/flashrt/task", BAG_EPOCH_NS, T["std_msgs/msg/String"](data=TASK))
    for k in range(int(round(DURATION_S * RATE_HZ))):
        t_ns = BAG_EPOCH_NS + int(round((FIRST_FRAME_S + k / RATE_HZ) * 1e9))
        q = q0 + 0.1 * (hi - lo) * np.sin(0.5 * k + np.arange(len(lo)))
        bag.add("/joint_states", t_ns + 1_000_000, T["sensor_msgs/msg/JointState"](
            header=_header(store, t_ns), name=list(config.joint_names), position=q.astype(np.float64),
            velocity=np.zeros(0, np.float64), effort=np.zeros(0, np.float64)))
        for i, (_, topic) in enumerate(cams):
            image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            bag.add(topic, t_ns + (4 + i) * 1_000_000, _image_msg(store, raw, image, t_ns))
    bag.write(path, "mcap")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("replay_lerobot")
    bag = make_arm_bag(d / "arm_bag")
    sets = [a for k, v in OVERRIDES.items() for a in ("--set", f"{k}={v}")]
    out = {}
    for name, mode in (("step_a", "--step"), ("step_b", "--step"), ("offline", "--offline")):
        # replay_args adds device=cpu and no checkpoint ("" = keep the params file's)
        args = replay_args(bag, d / name, "", mode, "--params-file", str(PARAMS), *sets)
        assert replay.main(args) == 0, f"replay {name} failed"
        out[name] = read_outputs(d / name)
    return out


def _key(outputs):
    return [(c.stamp_ns, c.chunk_seq, c.episode_id, c.subtask, c.subtask_version) for c in outputs.chunks]


def _assert_same(a, b):
    assert _key(a) == _key(b)
    for x, y in zip(a.chunks, b.chunks):
        np.testing.assert_array_equal(x.positions, y.positions)   # bit for bit
    assert [(s.text, s.version, s.source, s.stamp_ns) for s in a.subtasks] == \
           [(s.text, s.version, s.source, s.stamp_ns) for s in b.subtasks]


def test_two_step_replays_of_a_lerobot_host_are_bit_identical(runs):
    a, b = runs["step_a"], runs["step_b"]
    # one chunk per observation
    assert len(a.chunks) == int(round(DURATION_S * RATE_HZ))
    _assert_same(a, b)
    assert compare(a.chunks, b.chunks, 0.0).identical


def test_step_replay_equals_the_lerobot_engine_fed_directly(runs):
    _assert_same(runs["step_a"], runs["offline"])


def test_chunks_have_seven_joints_and_the_task_as_subtask(runs):
    config = _params()
    lo, hi = np.asarray(config.joint_lower_limits, np.float32), np.asarray(config.joint_upper_limits, np.float32)
    chunks = runs["step_a"].chunks
    for c in chunks:
        assert c.positions.shape == (50, 7) and tuple(c.joint_names) == tuple(config.joint_names)
        assert np.all(np.isfinite(c.positions)) and np.all(c.positions >= lo) and np.all(c.positions <= hi)
        assert c.subtask == TASK
    stamps = [c.stamp_ns for c in chunks]
    assert len(set(stamps)) == len(stamps) and min(stamps) >= BAG_EPOCH_NS
    # the policy sees the images: chunks differ from one observation to the next
    assert not np.array_equal(chunks[0].positions, chunks[1].positions)
    assert [s.text for s in runs["step_a"].subtasks] == [TASK]


def test_step_replay_with_the_task_in_the_params_file(tmp_path):
    # The host publishes the task as the subtask when it is configured and again when the episode
    # starts, before the replay's subscription has matched: the replay must not wait for a message a
    # latched (depth 1) subscription cannot receive, and nothing may be published before the
    # subtask's publisher exists. Same bag; its task message repeats the same text.
    bag = make_arm_bag(tmp_path / "arm_bag")
    sets = [a for k, v in {**OVERRIDES, "task": TASK}.items() for a in ("--set", f"{k}={v}")]
    args = replay_args(bag, tmp_path / "out", "", "--step", "--params-file", str(PARAMS), *sets)
    assert replay.main(args) == 0
    out = read_outputs(tmp_path / "out")
    assert len(out.chunks) == int(round(DURATION_S * RATE_HZ))
    assert all(c.subtask == TASK for c in out.chunks)
    assert out.subtasks and out.subtasks[-1].text == TASK
