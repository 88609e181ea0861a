"""Episode recordings: real MCAP rosbag2 bags that any rosbags reader decodes, intact after close,
an exception, Ctrl-C (SIGINT) and even SIGKILL of the writing process."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
from rosbags.highlevel import AnyReader  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from ruamel.yaml import YAML  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from flashrt_ros.msg import ActionChunk, Subtask  # noqa: E402
from flashrt_ros.ros.conversions import action_chunk_msg, image_to_msg, joint_state_to_msg, subtask_msg  # noqa: E402
from flashrt_ros.ros.conversions import seconds_to_duration  # noqa: E402
from flashrt_ros.host.recorder import EpisodeRecorder, RecorderError, bag_typestore  # noqa: E402

TOPICS = {
    "/camera/top/image_raw": Image,
    "/joint_states": JointState,
    "/flashrt/task": String,
    "/flashrt/action_chunk": ActionChunk,
    "/flashrt/subtask": Subtask,
    "/flashrt/joint_trajectory": JointTrajectory,
}


def read_bag(path: Path) -> list[tuple[str, int, object]]:
    """(topic, log time, decoded message) in bag order, with the project's typestore."""
    store = bag_typestore()
    with Reader(path) as reader:
        return [(c.topic, t, store.deserialize_cdr(raw, c.msgtype)) for c, t, raw in reader.messages()]


def episode_messages(n_steps: int = 12):
    """A small episode as (topic, message, stamp_ns), in the order a host would record it."""
    rng = np.random.default_rng(0)
    out = [("/flashrt/task", String(data="visit red, then blue, then green"), 1_000)]
    out.append(("/flashrt/subtask", subtask_msg("go to red", 1, "planner", 1_500), 1_500))
    for k in range(n_steps):
        stamp = 10_000_000 + k * 50_000_000
        out.append(("/camera/top/image_raw",
                    image_to_msg(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8), "rgb8", stamp, "camera_top"), stamp))
        out.append(("/joint_states", joint_state_to_msg(["joint_x", "joint_y"], rng.uniform(0, 1, 2), stamp), stamp + 1))
        if k % 2 == 0:
            positions = rng.uniform(0, 1, (16, 2)).astype(np.float32)
            out.append(("/flashrt/action_chunk", action_chunk_msg(
                positions, joint_names=["joint_x", "joint_y"], stamp_ns=stamp, dt=0.05, chunk_seq=k // 2 + 1,
                episode_id=3, subtask="go to red", subtask_version=1, observation_to_ready=0.01, inference_time=0.004), stamp + 2))
            trajectory = JointTrajectory(joint_names=["joint_x", "joint_y"])
            trajectory.points = [JointTrajectoryPoint(positions=p.astype(float).tolist(), velocities=[0.1, -0.1],
                                                      time_from_start=seconds_to_duration((i + 1) * 0.05))
                                 for i, p in enumerate(positions)]
            out.append(("/flashrt/joint_trajectory", trajectory, stamp + 3))
    out.append(("/flashrt/subtask", subtask_msg("go to yellow", 2, "coach", 700_000_000), 700_000_000))
    return out


def assert_same(recorded, original):
    """Decoded rosbags message == the rclpy message, field by field (CDR padding may differ)."""
    for name in original.get_fields_and_field_types():
        a, b = getattr(recorded, name), getattr(original, name)
        if hasattr(b, "get_fields_and_field_types"):
            assert_same(a, b)
        elif isinstance(b, list) and b and hasattr(b[0], "get_fields_and_field_types"):
            assert len(a) == len(b)
            for x, y in zip(a, b):
                assert_same(x, y)
        elif isinstance(a, np.ndarray) or not isinstance(b, (str, int, float, bool)):
            assert np.array_equal(np.asarray(a), np.asarray(b, dtype=np.asarray(a).dtype)), name
        elif isinstance(b, float):
            assert a == pytest.approx(b, rel=1e-6), name  # float32 fields hold float32 values
        else:
            assert a == b, name


def test_round_trip_every_message_decodes_with_equal_fields(tmp_path):
    messages = episode_messages()
    with EpisodeRecorder(tmp_path, 3, TOPICS, custom_data={"task": "visit red, then blue, then green"}) as rec:
        for topic, msg, stamp in messages:
            assert rec.write(topic, msg, stamp)
    assert rec.path == tmp_path / "episode_0003" and rec.closed

    recorded = read_bag(rec.path)
    assert [(t, s) for t, s, _ in recorded] == [(t, s) for t, _, s in messages]
    for (_, _, decoded), (_, original, _) in zip(recorded, messages):
        assert_same(decoded, original)

    # any rosbags reader: AnyReader builds its types from the definitions stored in the bag
    with AnyReader([rec.path]) as reader:
        assert reader.message_count == len(messages)
        chunks = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                  if c.msgtype == "flashrt_ros/msg/ActionChunk"]
    assert len(chunks) == 6 and chunks[0].horizon == 16 and chunks[-1].chunk_seq == 6
    with Reader(rec.path) as reader:
        assert {c.topic: c.msgcount for c in reader.connections}["/camera/top/image_raw"] == 12
    info = YAML(typ="safe").load((rec.path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["custom_data"] == {"episode_id": "3", "task": "visit red, then blue, then green"}


def test_downsampling_keeps_every_nth_input(tmp_path):
    rec = EpisodeRecorder(tmp_path, 1, TOPICS, downsample={"/camera/top/image_raw": 5, "/joint_states": 2})
    kept = [rec.write(t, m, s) for t, m, s in episode_messages(n_steps=12)]
    rec.close()
    recorded = read_bag(rec.path)
    images = [m for t, _, m in recorded if t == "/camera/top/image_raw"]
    joints = [m for t, _, m in recorded if t == "/joint_states"]
    assert [m.header.stamp.nanosec for m in images] == [10_000_000 + k * 50_000_000 for k in (0, 5, 10)]
    assert len(joints) == 6 and sum(1 for t, _, _ in recorded if t == "/flashrt/action_chunk") == 6
    assert kept.count(False) == 9 + 6
    assert rec.received["/camera/top/image_raw"] == 12 and rec.written["/camera/top/image_raw"] == 3


def test_log_times_stay_monotonic_and_bad_use_is_refused(tmp_path):
    with EpisodeRecorder(tmp_path, 2, {"/a": String}) as rec:
        rec.write("/a", String(data="late"), 2_000)
        rec.write("/a", String(data="early"), 1_000)  # recorded at 2_000, keeps its order
        with pytest.raises(RecorderError, match="not part of this recording"):
            rec.write("/b", String(data="x"), 3_000)
    assert [(s, m.data) for _, s, m in read_bag(rec.path)] == [(2_000, "late"), (2_000, "early")]
    with EpisodeRecorder(tmp_path, 3, {"/a": String}) as rec:  # a node on sim time before /clock
        rec.write("/a", String(data="before the clock"), 0)
        rec.write("/a", String(data="first stamp"), 5_000)
    assert [(s, m.data) for _, s, m in read_bag(rec.path)] == [(5_000, "before the clock"), (5_000, "first stamp")]
    with pytest.raises(RecorderError, match="exists already"):
        EpisodeRecorder(tmp_path, 2, {"/a": String})
    with pytest.raises(RecorderError, match="integer >= 1"):
        EpisodeRecorder(tmp_path, 5, {"/a": String}, downsample={"/a": 0})
    with pytest.raises(RecorderError, match="closed"):
        rec.write("/a", String(data="after close"), 3_000)


def test_an_exception_mid_episode_leaves_a_complete_bag(tmp_path):
    messages = episode_messages()
    with pytest.raises(RuntimeError, match="planner exploded"):
        with EpisodeRecorder(tmp_path, 4, TOPICS) as rec:
            for topic, msg, stamp in messages[:17]:
                rec.write(topic, msg, stamp)
            raise RuntimeError("planner exploded")
    assert len(read_bag(rec.path)) == 17  # unflushed messages too: close() ran on the way out


WRITER = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even when launched with SIGINT ignored
    from sensor_msgs.msg import JointState
    from flashrt_ros.msg import ActionChunk
    from flashrt_ros.host.recorder import EpisodeRecorder

    topics = {"/joint_states": JointState, "/flashrt/action_chunk": ActionChunk}
    with EpisodeRecorder(sys.argv[1], 7, topics) as rec:   # flushes after every ActionChunk
        i = 0
        while True:
            rec.write("/joint_states", JointState(name=["joint_x"], position=[float(i)]), 1000 + i)
            if i % 4 == 3:
                rec.write("/flashrt/action_chunk", ActionChunk(chunk_seq=i, horizon=1, actions=[float(i)]), 1000 + i)
                print("flushed", i + 1, flush=True)  # joint states 0..i are on disk
            i += 1
            time.sleep(0.001)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_writer_killed_mid_stream_leaves_a_readable_bag(tmp_path, sig):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    flushed = 0
    try:
        for line in proc.stdout:
            flushed = int(line.split()[1])
            if flushed >= 200:
                break
        proc.send_signal(sig)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert flushed >= 200
    recorded = read_bag(tmp_path / "episode_0007")
    joints = [m.position[0] for t, _, m in recorded if t == "/joint_states"]
    chunks = [m.chunk_seq for t, _, m in recorded if t == "/flashrt/action_chunk"]
    assert len(joints) >= flushed  # everything up to the last flush, and nothing torn
    assert joints == [float(i) for i in range(len(joints))]
    assert chunks == [i for i in range(3, len(joints), 4)][: len(chunks)] and len(chunks) >= flushed // 4
    with AnyReader([tmp_path / "episode_0007"]) as reader:
        # metadata.yaml follows each flush (a kill between the bag and it lags one flush: 5 messages)
        assert len(recorded) - 5 <= reader.message_count <= len(recorded)
    closed = (tmp_path / "episode_0007" / "metadata.yaml").read_text().startswith("rosbag2_bagfile_information:")
    assert closed == (sig == signal.SIGINT)  # Ctrl-C unwinds through close(); SIGKILL leaves the flushed bag


def test_the_async_recorder_drops_images_when_behind_and_never_anything_else(tmp_path):
    """Behind a bounded queue: with the writer stalled, images beyond the bound are dropped and
    counted; chunks, subtasks and text are all written once it catches up."""
    from flashrt_ros.host.recorder import AsyncRecorder
    rec = AsyncRecorder(max_droppable=4)
    topics = {"/camera/top/image_raw": Image, "/flashrt/subtask": Subtask, "/flashrt/action_chunk": ActionChunk}
    gate = threading.Event()
    real_handle = rec._handle

    def stalled(kind, payload):                  # the disk is slow: nothing is written until the gate opens
        gate.wait(10)
        real_handle(kind, payload)
    rec._handle = stalled
    rec.open(tmp_path, 1, topics)
    image = image_to_msg(np.zeros((8, 8, 3), np.uint8), "rgb8", 1_000, "cam")
    for k in range(20):
        rec.write("/camera/top/image_raw", image, 1_000 + k, droppable=True)
        rec.write("/flashrt/action_chunk", action_chunk_msg(
            np.zeros((4, 2), np.float32), joint_names=["a", "b"], stamp_ns=1_000 + k, dt=0.05, chunk_seq=k + 1,
            episode_id=1, subtask="go to red", subtask_version=1, observation_to_ready=0.01, inference_time=0.001), 1_000 + k)
    rec.write("/flashrt/subtask", subtask_msg("go to red", 1, "planner", 2_000), 2_000)
    assert rec.dropped == 16                    # 20 images, 4 waiting at most
    gate.set()
    rec.stop()
    assert rec.errors == 0, rec.last_error
    counts = {}
    with Reader(tmp_path / "episode_0001") as reader:
        for conn, _, _ in reader.messages():
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
    assert counts == {"/camera/top/image_raw": 4, "/flashrt/action_chunk": 20, "/flashrt/subtask": 1}


@pytest.mark.parametrize("cut", ["header only", "past the old end"])
def test_recover_cuts_a_record_a_kill_left_half_written_and_keeps_every_flush(tmp_path, cut):
    """SIGKILL while a chunk is written: the file holds the start of a record that never ended
    (observed: its 9-byte header over the previous tail). Readers refuse it; recover() cuts it off."""
    from flashrt_ros.host.recorder import recover
    rec = EpisodeRecorder(tmp_path, 3, {"/joint_states": JointState, "/flashrt/action_chunk": ActionChunk})
    for i in range(12):
        rec.write("/joint_states", JointState(name=["joint_x"], position=[float(i)]), 1000 + i)
        if i % 4 == 3:
            rec.write("/flashrt/action_chunk", ActionChunk(chunk_seq=i, horizon=1, actions=[float(i)]), 1000 + i)
    mcap = rec.mcap_path
    valid = mcap.read_bytes()                    # after the third flush: 12 joint states, 3 chunks
    tail_at = rec._writer.storage.tail_at
    chunk_header = b"\x06" + (5892).to_bytes(8, "little")
    broken = valid[:tail_at] + chunk_header + (b"" if cut == "header only" else bytes(4000))
    if cut == "header only":
        broken += valid[tail_at + len(chunk_header):]          # the rest of the old tail still there
    mcap.write_bytes(broken)
    with pytest.raises(Exception):
        read_bag(rec.path)
    assert recover(rec.path)                    # it changed the file
    messages = read_bag(rec.path)
    assert [t for t, _, _ in messages].count("/flashrt/action_chunk") == 3
    assert [t for t, _, _ in messages].count("/joint_states") == 12
    assert recover(rec.path) == []              # a complete file is left alone
