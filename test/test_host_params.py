"""Host configuration and message conversions, without DDS: precedence CLI > env > params file,
errors that name the parameter and what is allowed, and one validating conversion per message type.
"""
import io
from pathlib import Path

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String

from flashrt_ros.msg import Subtask
from flashrt_ros.ros.conversions import (InputError, action_chunk_msg, image_from_compressed,
                                           image_from_msg, image_to_msg, joint_positions_from_msg,
                                           joint_trajectory_msg, stamp_to_ns, subtask_msg, text_from_msg)
from flashrt_ros.host.inputs import Frame, LatestInputs, Observation, Stale
from flashrt_ros.host.params import ConfigError, load_config, parse_host_args, read_params_file

REPO = Path(__file__).resolve().parents[1]


# --- parameters ----------------------------------------------------------------------------------
def write(tmp_path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_the_shipped_params_file_loads_and_matches_the_defaults():
    shipped = load_config([REPO / "config" / "flashrt.yaml"], env={})
    assert shipped == load_config([], env={})
    assert shipped.cameras[0].topic == "camera/top/image_raw" and not shipped.cameras[0].compressed


def test_the_lerobot_example_params_file_loads_for_a_real_lerobot_directory():
    fixture = REPO / "test" / "fixtures" / "lerobot_pi05_tiny"
    cfg = load_config([REPO / "config" / "lerobot_pi05.yaml"], env={}, cli=[("checkpoint", str(fixture))])
    assert (cfg.model, cfg.dtype, len(cfg.joint_names), [c.name for c in cfg.cameras]) == \
        ("lerobot_pi05", "bfloat16", 7, ["base", "wrist"])
    assert cfg.cameras[1].compressed and cfg.chunk_dt == 0.02
    with pytest.raises(ConfigError, match="is not a directory"):   # the file's placeholder path
        load_config([REPO / "config" / "lerobot_pi05.yaml"], env={})


def test_command_line_beats_environment_beats_params_file(tmp_path):
    f = write(tmp_path, "/**:\n  ros__parameters:\n    actor_hz: 5.0\n    planner_hz: 1.0\n    seed: 3\n")
    env = {"FLASHRT_ACTOR_HZ": "20", "FLASHRT_PLANNER_HZ": "4", "UNRELATED": "x"}
    cfg = load_config([f], env=env, cli=[("actor_hz", "50")])
    assert (cfg.actor_hz, cfg.planner_hz, cfg.seed) == (50.0, 4.0, 3)
    assert cfg.sources["actor_hz"] == "command line"
    assert cfg.sources["planner_hz"] == "environment FLASHRT_PLANNER_HZ"
    assert cfg.sources["seed"].startswith("params file")


def test_ros_style_arguments_form_the_file_and_command_line_layers(tmp_path):
    f = write(tmp_path, "/arm/flashrt_actor:\n  ros__parameters:\n    actor_hz: 5\n    camera:\n      top:\n"
                        "        transport: compressed\n")
    args = parse_host_args(["--set", "planner_hz=3", "--ros-args", "--params-file", str(f), "-p", "seed:=7",
                            "-p", "use_sim_time:=true", "-r", "__ns:=/arm"], env={"FLASHRT_SEED": "1"})
    cfg = args.config
    assert (cfg.actor_hz, cfg.planner_hz, cfg.seed) == (5.0, 3.0, 7)
    assert cfg.cameras[0].compressed and cfg.cameras[0].topic == "camera/top/image_raw/compressed"
    assert args.ros_args[:1] == ["--ros-args"] and "__ns:=/arm" in args.ros_args


def test_cameras_lists_and_per_camera_parameters_from_the_environment():
    cfg = load_config([], env={"FLASHRT_CAMERAS": "[top, wrist]", "FLASHRT_CAMERA__WRIST__TOPIC": "/wrist/jpeg",
                               "FLASHRT_CAMERA__WRIST__TRANSPORT": "compressed"})
    assert [(c.name, c.topic, c.compressed) for c in cfg.cameras] == [
        ("top", "camera/top/image_raw", False), ("wrist", "/wrist/jpeg", True)]


@pytest.mark.parametrize("cli, message", [
    ([("actor_hz", "0")], "'actor_hz' = 0.0 (from command line) is not allowed: expected (0, 1000] Hz"),
    ([("actor_hz", "fast")], "'actor_hz' = 'fast' (from command line) is not a number"),
    ([("planner_hz", "-1")], "'planner_hz' = -1.0"),
    ([("device", "tpu")], "'device' = 'tpu' (from command line) is not allowed: expected 'auto', 'cpu'"),
    ([("overlap_policy", "average")], "expected one of 'replace', 'blend'"),
    ([("cpu_threads", "-1")], "'cpu_threads' = -1 (from command line) is not allowed"),
    ([("dtype", "fp8")], "'dtype' = 'fp8' (from command line) is not allowed: expected one of 'float32'"),
    ([("camera_timeout_s", "0")], "'camera_timeout_s' = 0.0"),
    ([("seed", "1.5")], "'seed' = '1.5' (from command line) is not an integer"),
    ([("autostart", "maybe")], "is not a boolean"),
    ([("joint_upper_limits", "1.0")], "'joint_upper_limits' has 1 values"),
    ([("joint_lower_limits", "2,0"), ("joint_upper_limits", "1,1")], "joint_lower_limits 2 > joint_upper_limits 1"),
    ([("max_velocity", "0.5,0")], "max_velocity 0 must be > 0"),
    ([("joint_names", "a,a")], "distinct"),
    ([("cameras", "")], "'cameras'"),
    ([("camera.side.topic", "/x")], "names camera 'side', which is not in 'cameras'"),
    ([("camera.top.transport", "theora")], "'camera.top.transport' = 'theora'"),
    ([("camera.top.fps", "30")], "unknown parameter 'camera.top.fps'"),
    ([("actor_rate", "10")], "unknown parameter 'actor_rate' (from command line); known:"),
    ([("task", "x" * 1025)], "at most 1024 bytes"),
    ([("checkpoint", "/no/such/dir")], "'checkpoint' = '/no/such/dir' (from command line) is not a directory"),
])
def test_bad_parameters_are_refused_naming_the_parameter_and_the_allowed_range(cli, message):
    with pytest.raises(ConfigError) as err:
        load_config([], env={}, cli=cli)
    assert message in str(err.value)


def test_bad_values_from_the_environment_and_the_file_name_their_source(tmp_path):
    with pytest.raises(ConfigError, match="from environment FLASHRT_ACTOR_HZ"):
        load_config([], env={"FLASHRT_ACTOR_HZ": "0"})
    f = write(tmp_path, "/**:\n  ros__parameters:\n    actor_hz: -3\n")
    with pytest.raises(ConfigError, match=r"from params file .*params.yaml"):
        load_config([f], env={})


@pytest.mark.parametrize("text, message", [
    ("actor_hz: [1, 2\n", "not valid YAML"),
    ("actor_hz: 10\n", "no 'ros__parameters' block"),
])
def test_broken_params_files_are_refused_clearly(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        read_params_file(write(tmp_path, text))
    with pytest.raises(ConfigError, match="cannot read params file"):
        read_params_file(tmp_path / "missing.yaml")


def test_host_main_reports_a_bad_parameter_and_exits_2(capsys):
    from flashrt_ros.ros.host import main
    assert main(["--set", "actor_hz=0"]) == 2
    assert "'actor_hz' = 0.0" in capsys.readouterr().err
    assert main(["--bogus"]) == 2


# --- conversions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding, channels", [("rgb8", 3), ("bgr8", 3), ("rgba8", 4), ("bgra8", 4), ("mono8", 1)])
def test_images_of_every_supported_encoding_convert_with_row_padding(encoding, channels):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (5, 7, channels), dtype=np.uint8)
    padded = np.zeros((5, 7 * channels + 3), np.uint8)    # step > width * channels
    padded[:, : 7 * channels] = pixels.reshape(5, -1)
    msg = Image(height=5, width=7, encoding=encoding, step=7 * channels + 3, data=padded.tobytes())
    image, enc = image_from_msg(msg)
    assert enc == encoding and image.shape == (5, 7, channels)
    np.testing.assert_array_equal(image, pixels)


@pytest.mark.parametrize("fields, message", [
    (dict(encoding="yuv422"), "unsupported image encoding 'yuv422'"),
    (dict(step=5), "step 5 is smaller than width x channels = 4 x 3 = 12"),
    (dict(data=bytes(10)), "truncated image data: 10 bytes, expected step x height = 12 x 3 = 36"),
    (dict(data=bytes(40)), "oversized image data"),
    (dict(height=0, width=0, step=0, data=b""), "empty image (0x0)"),
])
def test_malformed_images_raise_a_clear_error(fields, message):
    msg = image_to_msg(np.zeros((3, 4, 3), np.uint8))
    for k, v in fields.items():
        setattr(msg, k, v)
    with pytest.raises(InputError) as err:
        image_from_msg(msg)
    assert message in str(err.value)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_images_decode_to_rgb(fmt):
    from PIL import Image as PILImage
    pixels = np.zeros((16, 24, 3), np.uint8)
    pixels[:, :12] = (200, 30, 30)
    buf = io.BytesIO()
    PILImage.fromarray(pixels).save(buf, format=fmt.upper(), quality=95)
    image, enc = image_from_compressed(CompressedImage(format=fmt, data=buf.getvalue()))
    assert enc == "rgb8" and image.shape == (16, 24, 3)
    if fmt == "png":
        np.testing.assert_array_equal(image, pixels)
    else:   # lossy, and chroma is subsampled across the edge: compare the flat regions
        np.testing.assert_allclose(image[:, :8].reshape(-1, 3).mean(0), (200, 30, 30), atol=4)
        np.testing.assert_allclose(image[:, 16:].reshape(-1, 3).mean(0), (0, 0, 0), atol=4)


@pytest.mark.parametrize("fmt, data, message", [
    ("jpeg", b"\xff\xd8\xff" + bytes(20), "cannot decode compressed image"),
    ("theora", b"abc", "unsupported compressed image format 'theora'"),
    ("png", b"", "empty compressed image"),
])
def test_bad_compressed_images_raise(fmt, data, message):
    with pytest.raises(InputError, match=message):
        image_from_compressed(CompressedImage(format=fmt, data=data))


def test_joint_states_are_matched_by_name_in_any_order_extra_joints_ignored():
    msg = JointState(name=["wrist", "joint_y", "joint_x"], position=[float("nan"), 0.25, 0.75])
    np.testing.assert_array_equal(joint_positions_from_msg(msg, ["joint_x", "joint_y"]), [0.75, 0.25])


@pytest.mark.parametrize("names, positions, message", [
    (["joint_x", "joint_y"], [float("nan"), 0.1], "not finite for ['joint_x']"),
    (["joint_x", "joint_y"], [0.1, float("-inf")], "not finite for ['joint_y']"),
    (["a", "b"], [0.1, 0.2], "lacks configured joints ['joint_x', 'joint_y']"),
    (["joint_x", "joint_y"], [0.1], "2 names but 1 positions"),
    (["joint_x", "joint_x", "joint_y"], [0.1, 0.1, 0.1], "names a joint twice"),
])
def test_bad_joint_states_raise(names, positions, message):
    with pytest.raises(InputError) as err:
        joint_positions_from_msg(JointState(name=names, position=positions), ["joint_x", "joint_y"])
    assert message in str(err.value)


@pytest.mark.parametrize("text, message", [("", "empty"), ("  \n", "empty"), ("é" * 513, "1026 bytes")])
def test_texts_are_refused_when_empty_or_over_1_kib(text, message):
    with pytest.raises(InputError, match=message):
        text_from_msg(String(data=text), "coaching text")
    assert text_from_msg(String(data=" go to red "), "coaching text") == "go to red"


def test_trajectory_message_keeps_times_relative_to_its_stamp_with_positions_and_velocities():
    from flashrt_ros.host.loop import TrajectoryOut
    stamp = 10_000_000_000
    positions = np.linspace(0, 1, 12, dtype=np.float32).reshape(6, 2)
    velocities = np.full((6, 2), 0.1, np.float32)
    times = 0.05 * np.arange(3, 9)
    msg = joint_trajectory_msg(TrajectoryOut(stamp, times, positions, velocities), ["a", "b"])
    assert stamp_to_ns(msg.header.stamp) == stamp and len(msg.points) == 6
    first = msg.points[0]
    assert first.time_from_start.nanosec == 150_000_000
    np.testing.assert_allclose(first.positions, positions[0])
    np.testing.assert_allclose(first.velocities, 0.1)
    empty = np.zeros((0, 2), np.float32)
    hold = joint_trajectory_msg(TrajectoryOut(stamp, np.zeros(0), empty, empty, "stale"), ["a", "b"])
    assert hold.points == [] and list(hold.joint_names) == ["a", "b"]      # the controller holds


def test_nan_cannot_leave_through_the_output_conversions():
    from flashrt_ros.host.loop import TrajectoryOut
    bad = np.array([[0.1, np.nan]], np.float32)
    with pytest.raises(ValueError, match="NaN"):
        joint_trajectory_msg(TrajectoryOut(0, np.array([0.05]), bad, np.zeros_like(bad)), ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        joint_trajectory_msg(TrajectoryOut(0, np.array([0.05]), np.zeros_like(bad), bad), ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        action_chunk_msg(bad, joint_names=["a", "b"], stamp_ns=0, dt=0.05, chunk_seq=1, episode_id=1,
                         subtask="go to red", subtask_version=1, observation_to_ready=0.02, inference_time=0.01)


def test_subtask_message_sources():
    msg = subtask_msg("go to red", 3, "coach", 5)
    assert (msg.text, msg.version, msg.source) == ("go to red", 3, Subtask.SOURCE_COACH)
    with pytest.raises(ValueError, match="unknown subtask source"):
        subtask_msg("go to red", 3, "robot", 5)


# --- camera sync and staleness -------------------------------------------------------------------
def frame(stamp_s: float, received: float) -> Frame:
    return Frame(np.zeros((2, 2, 3), np.uint8), "rgb8", int(stamp_s * 1e9), received)


def test_cameras_sync_latest_within_slop():
    inputs = LatestInputs(["left", "right"], slop_s=0.02, camera_timeout_s=1.0, joint_timeout_s=1.0,
                          joint_names=["x", "y"])
    inputs.put_joints({"x": 0.0, "y": 0.0}, int(1.05e9), 10.0)
    for t in (1.00, 1.033, 1.066):
        inputs.put_frame("left", frame(t, 10.0))
    for t in (1.01, 1.05):
        inputs.put_frame("right", frame(t, 10.0))
    obs = inputs.observation(10.1)
    assert isinstance(obs, Observation)
    # reference: the oldest camera's newest frame (right @1.05); left's newest within slop is 1.066
    assert obs.stamp_ns == int(1.066e9)
    inputs.put_frame("right", frame(1.30, 10.0))      # right jumps ahead: left has nothing near 1.30
    inputs.put_frame("left", frame(1.20, 10.0))
    stale = inputs.observation(10.1)
    assert isinstance(stale, Stale) and "out of sync" in stale.reason


def test_inputs_go_stale_by_time_since_the_last_valid_message():
    inputs = LatestInputs(["top"], slop_s=0.05, camera_timeout_s=0.5, joint_timeout_s=0.3, joint_names=["x", "y"])
    assert "no image" in inputs.observation(0.0).reason
    inputs.put_frame("top", frame(1.0, 10.0))
    assert "no joint state yet for ['x', 'y'] (joint_state_topics ['joint_states']: nothing received)" in \
        inputs.observation(10.0).reason
    inputs.put_joints({"x": 0.0, "y": 0.0}, int(1e9), 10.0)
    assert isinstance(inputs.observation(10.2), Observation)
    assert "joint states are stale" in inputs.observation(10.4).reason
    assert "camera 'top' is stale" in inputs.observation(10.6).reason


def test_help_lists_every_parameter(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_host_args(["--help"], env={})
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: flashrt-ros host" in out and "actor_hz (float, default 10.0)" in out
    assert "camera.<name>.transport" in out


# --- overlap policy ------------------------------------------------------------------------------
def test_blend_cross_fades_from_the_previous_chunk_over_blend_steps():
    from flashrt_ros.host.loop import PolicyLoop
    loop = PolicyLoop(load_config([], env={}, cli=[("overlap_policy", "blend"), ("blend_steps", "3")]))
    loop.dt = 0.1
    H = 8
    old = np.zeros((H, 2), np.float32)
    new = np.ones((H, 2), np.float32)
    loop._last_chunk = (0, 0.1, old, np.zeros_like(old))
    stamp = int(0.2e9)                      # the new chunk starts two steps into the old one
    positions, velocities = loop._blend(stamp, stamp, new, np.zeros_like(new))
    np.testing.assert_allclose(positions[:4, 0], [0.25, 0.5, 0.75, 1.0])   # 3 blended steps, then the new chunk
    np.testing.assert_allclose(positions[4:], 1.0)
    loop._last_chunk = None
    same, _ = loop._blend(stamp, stamp, new, np.zeros_like(new))
    np.testing.assert_array_equal(same, new)                                 # nothing to blend from


def test_compile_is_auto_true_or_false_and_weights_apply_to_lerobot_models_only():
    from flashrt_ros.engines.factory import compile_actor
    assert load_config([], {}, []).compile == "auto"
    assert load_config([], {}, [("compile", "True")]).compile == "true"    # a YAML boolean reads as a string
    assert [compile_actor(v, "cpu") for v in ("auto", "true", "false")] == [None, True, False]
    with pytest.raises(ConfigError, match="'compile' = 'maybe'"):
        load_config([], {}, [("compile", "maybe")])
    with pytest.raises(ConfigError, match="'weights' = 'int8'.*LeRobot models only"):
        load_config([], {}, [("weights", "int8")])
    with pytest.raises(ConfigError, match="'weights' = 'int4'"):
        load_config([], {}, [("weights", "int4")])
    assert load_config([], {}, []).prompt_tokens == 0                      # auto
    with pytest.raises(ConfigError, match="'prompt_tokens' = 64.*LeRobot models only"):
        load_config([], {}, [("prompt_tokens", "64")])
    with pytest.raises(ConfigError, match="'prompt_tokens'"):
        load_config([], {}, [("prompt_tokens", "-3")])


def test_episode_and_critic_parameters_are_checked():
    cfg = load_config([], {}, [("critic", "reference"), ("episode_timeout_s", "30"), ("reset_mode", "auto")])
    assert (cfg.critic, cfg.episode_timeout_s, cfg.reset_mode) == ("reference", 30.0, "auto")
    for name, value, why in (("critic", "/no/such/critic", "neither 'reference' nor a directory"),
                             ("value_threshold", "1.5", r"\[0, 1\]"), ("value_patience", "0", r"\[1, "),
                             ("reset_mode", "later", "'service', 'auto'"), ("advantage", "high", "finite number")):
        with pytest.raises(ConfigError, match=why):
            load_config([], {}, [(name, value)])
