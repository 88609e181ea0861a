"""Replay, the bag side: real MCAP and sqlite3 bags from the reference world are read as a robot
team's bags would be (flaws included), everything skipped is stated, broken bags give a clear
error and exit code 2, and `--compare` gates on a tolerance. Runs the CLI with `--offline` (the
Engine fed directly); the DDS path is tested in test_replay_ros.py."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_typestore

from flashrt_ros.host.params import load_config
from flashrt_ros.tools import replay
from flashrt_ros.tools.bags import Bag, BagError
from flashrt_ros.tools.make_fixture_bag import BAG_EPOCH_NS, COMMAND_TOPIC, UNKNOWN_TOPIC
from flashrt_ros.tools.replay_inputs import scan, topic_map
from flashrt_ros.tools.replay_outputs import Chunk, compare, read_outputs
from flashrt_ros.tools.replay_report import skipped_lines

from replay_helpers import COMPRESSED, MISSING_CAMERA, ROBOT, checkpoint, make_bag, replay_args


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    d = tmp_path_factory.mktemp("bags")
    return {"robot": make_bag(d, "robot", ROBOT), "compressed": make_bag(d, "compressed", COMPRESSED),
            "missing_camera": make_bag(d, "missing_camera", MISSING_CAMERA), "ckpt": checkpoint(d)}


@pytest.fixture(scope="module")
def offline_run(bags, tmp_path_factory):
    out = tmp_path_factory.mktemp("offline") / "run"
    assert replay.main(replay_args(bags["robot"], out, bags["ckpt"], "--offline")) == 0
    return out


def _config(bags):
    return load_config([], {}, [("device", "cpu")] + ([("checkpoint", bags["ckpt"])] if bags["ckpt"] else []))


def test_fixture_bags_are_rosbag2_bags_in_mcap_and_sqlite3(bags):
    for name, storage, camera_type in (("robot", "mcap", "sensor_msgs/msg/Image"),
                                       ("compressed", "sqlite3", "sensor_msgs/msg/CompressedImage")):
        assert f"storage_identifier: {storage}" in (bags[name] / "metadata.yaml").read_text()
        with Reader(bags[name]) as reader:          # rosbags' own reader, not ours
            types = {c.topic: c.msgtype for c in reader.connections}
        cam = "/camera/top/image_raw" + ("/compressed" if name == "compressed" else "")
        assert types[cam] == camera_type
        assert {"/joint_states", "/flashrt/task", "/flashrt/coach", "/flashrt/interrupt",
                "/flashrt/start/_service_event", COMMAND_TOPIC, UNKNOWN_TOPIC} <= set(types)


def test_joint_states_padded_as_dds_writes_them_are_read(bags):
    """ros2 bag record stores what Fast-DDS serialised: a JointState padded 8 bytes past its end,
    which rosbags' strict deserializer refuses. Replay reads it."""
    with Bag(bags["robot"]) as bag:
        topic, _, raw = next(bag.messages(["/joint_states"]))
        with pytest.raises(SerdeError, match="size mismatch"):
            get_typestore(Stores.ROS2_JAZZY).deserialize_cdr(raw, "sensor_msgs/msg/JointState")
        msg = bag.decode("sensor_msgs/msg/JointState", raw)
    assert list(msg.name) == ["gripper", "joint_y", "joint_x"] and len(msg.position) == 3


def test_scan_finds_the_flaws_and_what_to_skip(bags):
    with Bag(bags["robot"]) as bag:
        inputs = scan(bag, topic_map(_config(bags), bag), _config(bags))
    skipped = inputs.skipped()
    assert skipped[("/camera/top/image_raw", "out-of-order stamp")] == 1
    # the start request was recorded by client and server: called once
    assert skipped[("/flashrt/start/_service_event", "same request seen by client and server")] == 1
    assert inputs.count("service") == 1
    gaps = inputs.dropped_frames["top"]
    assert gaps[0][1] == 3                           # frames 8, 9, 10
    assert set(inputs.unknown_topics) == {"/rosout", UNKNOWN_TOPIC}
    assert list(inputs.commands) == [COMMAND_TOPIC] and len(inputs.commands[COMMAND_TOPIC]) > 10
    stamps = [i.stamp_ns for i in inputs.sent if i.kind == "camera"]
    assert stamps == sorted(stamps)                  # what is sent never goes back in time
    assert [e.kind for e in inputs.events()] == ["task", "coach", "interrupt", "service"]
    assert inputs.joint_states.positions.shape == (ROBOT_STEPS, 2)   # matched by name, gripper ignored


ROBOT_STEPS = int(round(ROBOT.duration_s / 0.05))


def test_report_states_what_was_skipped_and_has_plots(offline_run):
    report = (offline_run / "report.md").read_text()
    for text in ("out-of-order stamp", "dropped frames: camera `top`: ~", "unknown topic `/acme/gripper_status`",
                 "unknown topic `/rosout`", "coach: 'go to yellow'", "interrupt: 'operator stop'",
                 "service `start`", "deadline", "![actions](actions.png)"):
        assert text in report, text
    for png in ("actions.png", "subtasks.png", "latency.png"):
        assert (offline_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    outputs = read_outputs(offline_run / "outputs.mcap")
    assert len(outputs.chunks) > 20
    assert {s.source for s in outputs.subtasks} == {"planner", "coach"}
    # no chunk answers an observation of the interrupt (2.5 s until /flashrt/start at 3.0 s)
    times = [(c.stamp_ns - BAG_EPOCH_NS) / 1e9 for c in outputs.chunks]
    assert not [t for t in times if 2.5 <= t < 3.0] and max(times) > 3.0


def test_compressed_sqlite3_bag_with_changing_resolution_replays(bags, tmp_path):
    out = tmp_path / "compressed"
    assert replay.main(replay_args(bags["compressed"], out, bags["ckpt"], "--offline")) == 0
    outputs = read_outputs(out)
    assert len(outputs.chunks) > 10
    assert "camera 'top'" not in (out / "report.md").read_text()  # nothing missing


def test_missing_camera_is_reported_and_a_mapping_fixes_it(bags, tmp_path, capsys):
    out = tmp_path / "missing"
    assert replay.main(replay_args(bags["missing_camera"], out, bags["ckpt"], "--offline")) == replay.EXIT_NOTHING
    err = capsys.readouterr().err
    assert "camera 'top': /camera/top/image_raw is not in the bag" in err
    assert "/camera/wrist/image_raw (Image)" in err and "--camera NAME=TOPIC" in err
    assert "**missing**: camera 'top': topic `/camera/top/image_raw` is not in the bag" in \
        (out / "report.md").read_text()
    mapped = tmp_path / "mapped"
    assert replay.main(replay_args(bags["missing_camera"], mapped, bags["ckpt"], "--offline",
                                   "--camera", "top=/camera/wrist/image_raw")) == 0
    assert read_outputs(mapped).chunks
    params = tmp_path / "robot.yaml"        # the robot's own params file names the camera topic
    params.write_text("/**:\n  ros__parameters:\n    camera:\n      top:\n        topic: camera/wrist/image_raw\n")
    from_file = tmp_path / "from_params_file"
    assert replay.main(replay_args(bags["missing_camera"], from_file, bags["ckpt"], "--offline",
                                   "--params-file", str(params))) == 0
    assert len(read_outputs(from_file).chunks) == len(read_outputs(mapped).chunks)


def _assert_clean_error(capsys, code, *phrases):
    assert code == replay.EXIT_ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("flashrt-ros replay: ")
    for p in phrases:
        assert p in err, err


def test_truncated_mcap_bag_gives_a_clear_error(bags, tmp_path, capsys):
    bag = tmp_path / "truncated"
    shutil.copytree(bags["robot"], bag)
    mcap = bag / "robot.mcap"
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])     # the recording was killed
    code = replay.main(replay_args(bag, tmp_path / "out", bags["ckpt"], "--offline"))
    _assert_clean_error(capsys, code, "cannot read bag", "truncated", "mcap recover")


def test_corrupt_mcap_index_gives_a_clear_error(bags, tmp_path, capsys):
    bag = tmp_path / "corrupt"
    shutil.copytree(bags["robot"], bag)
    mcap = bag / "robot.mcap"
    data = bytearray(mcap.read_bytes())
    summary_start = int.from_bytes(data[-37 + 9:-37 + 17], "little")   # from the MCAP footer
    data[summary_start:summary_start + 64] = b"\xff" * 64                 # a damaged block in the index
    mcap.write_bytes(bytes(data))
    code = replay.main(replay_args(bag, tmp_path / "out", bags["ckpt"], "--offline"))
    _assert_clean_error(capsys, code, "cannot read bag")


def test_a_malformed_message_is_skipped_and_reported(bags, tmp_path):
    bag = tmp_path / "one_bad_message"
    shutil.copytree(bags["robot"], bag)
    mcap = bag / "robot.mcap"
    data = bytearray(mcap.read_bytes())
    at = data.index(b"\x08\x00\x00\x00gripper\x00")          # the first JointState's first name
    data[at:at + 4] = b"\xff\xff\xff\xff"                      # its length now says 4 GiB
    mcap.write_bytes(bytes(data))
    with Bag(bag) as b:
        inputs = scan(b, topic_map(_config(bags), b), _config(bags))
    lines = skipped_lines(inputs)     # the report's list
    assert any(line.startswith("skipped 1 message(s) on `/joint_states`: malformed message: malformed "
                               "sensor_msgs/msg/JointState") for line in lines), lines
    assert inputs.count("joint_states") == ROBOT_STEPS - 1      # the rest is sent


def test_corrupt_sqlite3_bag_gives_a_clear_error(bags, tmp_path, capsys):
    bag = tmp_path / "corrupt_db"
    shutil.copytree(bags["compressed"], bag)
    db = next(bag.glob("*.db3"))
    data = bytearray(db.read_bytes())
    data[:100] = b"not a database" * 7 + bytes(2)
    db.write_bytes(bytes(data))
    code = replay.main(replay_args(bag, tmp_path / "out", bags["ckpt"], "--offline"))
    _assert_clean_error(capsys, code, "cannot read bag")


def test_not_a_bag_and_missing_bag_give_clear_errors(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    _assert_clean_error(capsys, replay.main([str(tmp_path / "notes.txt"), "--offline"]), "is not a rosbag2 bag")
    _assert_clean_error(capsys, replay.main([str(tmp_path / "nowhere"), "--offline"]), "does not exist")
    (tmp_path / "empty").mkdir()
    _assert_clean_error(capsys, replay.main([str(tmp_path / "empty"), "--offline"]), "not a rosbag2 bag")


def test_compare_passes_on_the_same_run_and_fails_past_the_tolerance(bags, offline_run, tmp_path, capsys):
    ref = str(offline_run / "outputs.mcap")
    same = tmp_path / "same"
    assert replay.main(replay_args(bags["robot"], same, bags["ckpt"], "--offline", "--compare", ref)) == 0
    assert "**identical**" in (same / "report.md").read_text()
    other = tmp_path / "other_seed"   # another noise seed: every chunk differs
    code = replay.main(replay_args(bags["robot"], other, bags["ckpt"], "--offline", "--set", "seed=1",
                                   "--compare", ref))
    assert code == replay.EXIT_DIVERGED
    assert "first divergence: actions differ by" in capsys.readouterr().err
    report = (other / "report.md").read_text()
    assert "**DIVERGED**" in report and "| joint_x |" in report and "First divergence at " in report


def test_compare_pairs_chunks_by_stamp_and_names_the_first_divergence():
    def chunk(stamp, value, subtask="go to red"):
        return Chunk(1, 1, stamp, subtask, 1, 0.05, np.full((4, 2), value, np.float32), ("joint_x", "joint_y"))
    ref = [chunk(10, 0.0), chunk(20, 0.0), chunk(30, 0.0)]
    assert compare(ref, ref, 0.0).identical
    near = compare([chunk(10, 1e-7), chunk(20, 0.0), chunk(30, 0.0)], ref, 1e-6)
    assert near.ok and not near.identical and near.max_diff[0] == pytest.approx(1e-7, rel=1e-3)
    late = compare([chunk(10, 0.0), chunk(20, 0.5), chunk(30, 0.0), chunk(40, 0.0)], ref, 1e-3)
    assert not late.ok and late.first_divergence_ns == 20 and late.only_ours == [40]
    assert late.max_diff.tolist() == [0.5, 0.5] and late.mean_diff[0] == pytest.approx(0.5 / 3)
    other = compare([chunk(10, 0.0, "go to blue"), chunk(20, 0.0), chunk(30, 0.0)], ref, 1.0)
    assert other.first_divergence_ns == 10 and "subtask" in other.first_divergence
    missing = compare(ref[:2], ref, 1.0)
    assert missing.only_ref == [30] and missing.first_divergence_ns == 30


def test_bad_arguments_are_clear(bags, tmp_path, capsys):
    code = replay.main(replay_args(bags["robot"], tmp_path / "o", bags["ckpt"], "--offline", "--camera",
                                   "wrist=/x"))
    _assert_clean_error(capsys, code, "--camera names camera(s) ['wrist']")
    code = replay.main(replay_args(bags["robot"], tmp_path / "o", bags["ckpt"], "--offline", "--set",
                                   "actor_hz=-1"))
    _assert_clean_error(capsys, code, "actor_hz")
    with pytest.raises(BagError):
        Bag(tmp_path / "nothing_here")
