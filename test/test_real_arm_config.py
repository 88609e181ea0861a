"""A real arm's configuration, without DDS: params-file blocks by node name (a shared robot YAML),
controller groups, joint units and their round trips, state != action joints, joint states merged
by name from several sources (each joint stale on its own), FLASHRT_* overrides reported."""
from pathlib import Path

import numpy as np
import pytest
from sensor_msgs.msg import JointState

from flashrt_ros.host.inputs import LatestInputs, Stale
from flashrt_ros.host.joints import JointMap
from flashrt_ros.host.params import (ConfigError, environment_report, load_config, node_matches,
                                     parse_host_args)
from flashrt_ros.ros.conversions import InputError, joint_values_from_msg

DEG = 0.017453292519943295


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "robot.yaml"
    path.write_text(text)
    return path


# --- params files: the blocks for this host, as rcl picks them ----------------------------------------
SHARED = """\
controller_manager:
  ros__parameters:
    update_rate: 500
arm_controller:
  ros__parameters:
    joints: [a, b]
    interface_name: position
/**:
  ros__parameters:
    actor_hz: 5.0
    seed: 1
flashrt_actor:
  ros__parameters:
    seed: 4
/robot2/flashrt_actor:
  ros__parameters:
    seed: 9
"""


def test_a_shared_robot_yaml_applies_only_the_hosts_blocks(tmp_path):
    f = write(tmp_path, SHARED)
    cfg = load_config([f], env={})       # controller_manager's update_rate would be "unknown parameter"
    assert (cfg.actor_hz, cfg.seed) == (5.0, 4)      # /** then the node's own block, in file order
    assert parse_host_args(["--params-file", str(f), "--ros-args", "-r", "__ns:=/robot2"], env={}).config.seed == 9
    assert parse_host_args(["--params-file", str(f), "--ros-args", "-r", "__ns:=/robot3"], env={}).config.seed == 1


def test_a_params_file_with_no_block_for_the_host_is_refused_naming_the_blocks(tmp_path):
    f = write(tmp_path, "controller_manager:\n  ros__parameters:\n    update_rate: 500\n")
    with pytest.raises(ConfigError, match=r"no block for this host's nodes .*'/controller_manager'"):
        load_config([f], env={})
    with pytest.raises(ConfigError, match="cannot read params file '/nowhere/robot.yaml'"):
        load_config(["/nowhere/robot.yaml"], env={})


def test_nested_namespace_keys_and_wildcards_match_as_in_rcl(tmp_path):
    f = write(tmp_path, "arm:\n  flashrt_actor:\n    ros__parameters:\n      seed: 3\n"
                        "/**/flashrt_planner:\n  ros__parameters:\n    planner_hz: 4.0\n")
    cfg = parse_host_args(["--params-file", str(f), "--ros-args", "-r", "__ns:=/arm"], env={}).config
    assert (cfg.seed, cfg.planner_hz) == (3, 4.0)
    assert node_matches("/**", "/a/b/n") and node_matches("/*/n", "/a/n") and not node_matches("/*/n", "/a/b/n")
    assert node_matches("n", "/n") and not node_matches("n", "/a/n") and node_matches("/**/n", "/n")
    assert node_matches("/a/fl*", "/a/flashrt_actor") and not node_matches("/a", "/a/flashrt_actor")


def test_another_nodes_command_line_parameter_is_not_ours():
    args = parse_host_args(["--ros-args", "-p", "other_node:seed:=7", "-p", "flashrt_actor:seed:=5"], env={})
    assert args.config.seed == 5


def test_environment_overrides_are_reported():
    env = {"FLASHRT_ACTOR_HZ": "20", "FLASHRT_SEED": "3", "FLASHRT_KERNELS_DIR": "/k", "FLASHRT_ACTORHZ": "5"}
    cfg = load_config([], env=env, cli=[("seed", "4")])
    assert environment_report(cfg, env) == [
        ("warning", "FLASHRT_ACTORHZ names no host parameter: ignored (a typo? `flashrt-ros host --help` lists them)"),
        ("info", "FLASHRT_ACTOR_HZ='20' sets parameter 'actor_hz'"),
        ("info", "FLASHRT_SEED='3' is overridden by the command line")]


# --- controllers -----------------------------------------------------------------------------------
ARM = ["j1", "j2", "j3"]
ARM_AND_GRIPPER = [("joint_names", ARM + ["finger"]), ("joint_lower_limits", [-3, -3, -3, 0]),
                   ("joint_upper_limits", [3, 3, 3, 0.04]), ("max_velocity", [1, 1, 1, 0.1])]


def groups(*extra):
    return load_config([], env={}, cli=[*ARM_AND_GRIPPER, *extra]).controllers


def test_controller_groups_split_the_commanded_joints():
    arm, gripper = groups(("controllers", "[arm_controller, gripper_controller]"),
                          ("controller.arm_controller.joints", "[j3, j1, j2]"),
                          ("controller.gripper_controller.joints", "[finger]"),
                          ("controller.gripper_controller.type", "forward_command"))
    assert (arm.topic, arm.type, arm.joints) == ("arm_controller/joint_trajectory", "joint_trajectory", ("j3", "j1", "j2"))
    assert (gripper.topic, gripper.type) == ("gripper_controller/commands", "forward_command")
    (default,) = groups()                          # no controllers: today's single trajectory
    assert (default.topic, default.joints) == ("flashrt/joint_trajectory", tuple(ARM + ["finger"]))


@pytest.mark.parametrize("extra, message", [
    ([("controllers", "[arm]"), ("controller.arm.joints", "[j1, j2, j3]")],
     r"joints \['finger'\] of 'joint_names' are in no controller"),
    ([("controllers", "[arm, g]"), ("controller.arm.joints", "[j1, j2, j3, finger]"), ("controller.g.joints", "[finger]")],
     "joint 'finger' is in controllers 'arm' and 'g'"),
    ([("controllers", "[arm]"), ("controller.arm.joints", "[j1, j2, j3, finger, wrist]")],
     "names 'wrist', which is not in 'joint_names'"),
    ([("controllers", "[arm]")], "controller 'arm' has no 'controller.arm.joints'"),
    ([("controllers", "[arm]"), ("controller.arm.joints", "[j1, j2, j3, finger]"), ("controller.arm.type", "effort")],
     "'controller.arm.type' = 'effort' .* expected one of 'joint_trajectory', 'forward_command'"),
    ([("controllers", "[a, b]"), ("controller.a.joints", "[j1, j2, j3]"), ("controller.b.joints", "[finger]"),
      ("controller.b.topic", "a/joint_trajectory")], "also controller 'a''s topic"),
    ([("controller.arm.joints", "[j1]")], "names controller 'arm', which is not in 'controllers'"),
    ([("controller.arm.gains", "1")], "controller parameters are controller.<name>.joints"),
])
def test_bad_controller_groups_are_refused_by_name(extra, message):
    with pytest.raises(ConfigError, match=message):
        groups(*extra)


# --- units and state != action ------------------------------------------------------------------------
def so100():
    joints = ["pan", "lift", "elbow", "flex", "roll", "gripper"]
    return load_config([], env={}, cli=[
        ("joint_names", joints), ("joint_lower_limits", [-3.0] * 5 + [0.0]), ("joint_upper_limits", [3.0] * 5 + [1.5]),
        ("max_velocity", [2.0] * 5 + [1.0]),
        *[(f"joint.{j}.scale", DEG) for j in joints[:5]],
        ("joint.gripper.scale", "0.015"), ("joint.gripper.offset", "0.0")])


def test_units_round_trip_to_float32_precision_both_ways():
    jm = JointMap(so100())
    rng = np.random.default_rng(0)
    policy = np.concatenate([rng.uniform(-180, 180, (50, 5)), rng.uniform(0, 100, (50, 1))], axis=1).astype(np.float32)
    ros = jm.actions_to_ros(policy)
    np.testing.assert_allclose(ros[:, :5], policy[:, :5].astype(np.float64) * DEG, rtol=2e-7)
    back = jm.actions_to_policy(ros)
    assert np.all(np.abs(back - policy) <= 2 * np.spacing(np.abs(policy).astype(np.float32)))
    measured = ros[7]
    assert np.all(np.abs(jm.state(measured) - policy[7]) <= 2 * np.spacing(np.abs(policy[7])))
    assert np.all(np.abs(jm.state_to_ros(jm.state(measured)) - measured) <= 2 * np.spacing(np.abs(measured)))


def test_limits_reach_the_engine_in_policy_units_and_a_negative_scale_swaps_them():
    cfg = load_config([], env={}, cli=[("joint.joint_x.scale", "-2.0"), ("joint.joint_x.offset", "1.0"),
                                       ("joint.joint_y.scale", str(DEG))])
    limits, vmax = JointMap(cfg).policy_limits(cfg.joint_lower_limits, cfg.joint_upper_limits, cfg.max_velocity)
    np.testing.assert_allclose(limits, [[0.0, 0.5], [0.0, 1.0 / DEG]], rtol=1e-6)   # ROS [0, 1] each
    np.testing.assert_allclose(vmax, [0.25, 0.5 / DEG], rtol=1e-6)


@pytest.mark.parametrize("extra, message", [
    ([("joint.joint_x.scale", "0")], "'joint.joint_x.scale' = 0.0 .* must be a finite, non-zero number"),
    ([("joint.wrist.scale", "2")], "names joint 'wrist', which is not in 'joint_names' or 'state_joints'"),
    ([("joint.joint_x.offset", "nan")], "'joint.joint_x.offset' = nan .* must be finite"),
])
def test_bad_units_are_refused_by_name(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], env={}, cli=extra)


def test_state_and_action_joints_are_separate():
    cfg = load_config([], env={}, cli=[("state_joints", "[joint_x, joint_y, gripper_width]"),
                                       ("joint.gripper_width.scale", "0.001")])
    jm = JointMap(cfg)
    assert jm.measured == ["joint_x", "joint_y", "gripper_width"]
    measured = np.array([0.25, 0.5, 0.04], np.float32)
    np.testing.assert_allclose(jm.state(measured), [0.25, 0.5, 40.0], rtol=1e-6)
    np.testing.assert_array_equal(jm.commanded(measured), [0.25, 0.5])


# --- joint states merged by name ----------------------------------------------------------------------
def test_joint_states_from_two_sources_merge_and_each_joint_goes_stale_on_its_own():
    inputs = LatestInputs(["top"], 0.05, 0.5, 0.5, joint_names=["j1", "j2", "finger"],
                          joint_sources=["arm/joint_states", "gripper/joint_states"])
    arm = joint_values_from_msg(JointState(name=["j2", "j1", "other"], position=[2.0, 1.0, 9.0]),
                                inputs.joint_names)
    assert arm == {"j1": 1.0, "j2": 2.0}                     # extra joints ignored
    inputs.put_joints(arm, int(1e9), 10.0, "arm/joint_states", ("j2", "j1", "other"))
    assert inputs.joints() is None
    missing = inputs.joints_problem(10.0)
    assert "no joint state yet for ['finger']" in missing and "'arm/joint_states': ['j2', 'j1', 'other']" in missing
    inputs.put_joints({"finger": 0.02}, int(1e9), 10.1, "gripper/joint_states")
    joints = inputs.joints()
    np.testing.assert_array_equal(joints.positions, np.float32([1.0, 2.0, 0.02]))
    assert inputs.joints_problem(10.5) is None
    inputs.put_joints(arm, int(2e9), 10.6, "arm/joint_states")          # the gripper driver stops
    why = inputs.joints_problem(10.7)
    assert why == ("joint states are stale: ['finger'] from gripper/joint_states, last 0.60 s ago "
                   "(joint_state_timeout_s 0.5)")


def test_a_joint_state_with_nan_for_a_wanted_joint_is_refused_whole():
    with pytest.raises(InputError, match=r"not finite for \['j1'\]"):
        joint_values_from_msg(JointState(name=["j1", "j2"], position=[float("nan"), 1.0]), ["j1", "j2"])
    assert joint_values_from_msg(JointState(name=["x"], position=[float("nan")]), ["j1"]) == {}   # not ours
    with pytest.raises(InputError, match="2 names but 1 positions"):
        joint_values_from_msg(JointState(name=["j1", "j2"], position=[1.0]), ["j1"])


# --- the loop: the engine in policy units, the arm in ROS units (the real LeRobot engine) -------------
FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_pi05_tiny"
ARM6 = [f"arm_joint_{i}" for i in range(1, 7)]


class _Collected:
    def __init__(self):
        self.chunks = []

    def publish_chunk(self, chunk, ready_ns):
        self.chunks.append(chunk)

    def publish_stop(self, stop):
        pass

    def publish_subtask(self, state, stamp_ns):
        pass


def _loop_chunk(cli, measured: dict):
    """One chunk of a PolicyLoop (simulated clock) fed `measured` (ROS units), and the loop."""
    from flashrt_ros.host.loop import PolicyLoop
    config = load_config([], env={}, cli=[
        ("model", "lerobot_pi05"), ("checkpoint", str(FIXTURE)), ("device", "cpu"), ("cameras", "[base, wrist]"),
        ("task", "pick up the red cube"), ("joint_names", ARM6 + ["gripper"]),
        ("joint_lower_limits", [-10.0] * 6 + [0.0]), ("joint_upper_limits", [10.0] * 6 + [1.0]),
        ("max_velocity", [1e4] * 7), *cli])
    now = [10**12]
    loop = PolicyLoop(config)
    loop.outputs = out = _Collected()
    loop.now_ns = lambda: now[0]
    loop.monotonic = lambda: now[0] / 1e9
    loop.configure("test", dispatch=False)
    loop.set_active("actor", True)
    loop.set_active("planner", True)
    assert loop.start()[0]
    images = [pattern_image(0), pattern_image(97)]
    for name, image in zip(("base", "wrist"), images):
        loop.put_frame(name, image, "rgb8", now[0], now[0] / 1e9)
    loop.put_joints(measured, now[0], now[0] / 1e9)
    loop._run_pending()
    loop._actor_cycle()
    assert len(out.chunks) == 1, loop.holding or loop.waiting
    return out.chunks[0], loop, images


def pattern_image(phase: int) -> np.ndarray:
    y, x = np.mgrid[0:240, 0:320]
    return np.stack([(x + phase) % 256, (y * 2) % 256, ((x + y) // 3 + phase) % 256], axis=-1).astype(np.uint8)


def _reference(loop, images, state, action_origin=None):
    """The same engine class fed the policy-unit state directly: what the chunk must be."""
    from flashrt_ros.engines.factory import make_engine
    cfg = loop.config
    engine = make_engine(cfg, limits=loop.joints.policy_limits(cfg.joint_lower_limits, cfg.joint_upper_limits,
                                                               cfg.max_velocity))
    engine.set_task(cfg.task)
    kwargs = {} if action_origin is None else {"action_origin": np.float32(action_origin)}
    return engine.act(images, ["rgb8", "rgb8"], np.float32(state), 1, **kwargs).positions


ARM_ROS = [0.2, -0.3, 0.4, 0.1, -0.2, 0.3]


def test_the_engine_sees_degrees_and_0_100_and_the_arm_gets_radians_and_metres():
    units = [*[(f"joint.{j}.scale", DEG) for j in ARM6], ("joint.gripper.scale", "0.0004")]
    measured = {**dict(zip(ARM6, ARM_ROS)), "gripper": 0.02}
    chunk, loop, images = _loop_chunk(units, measured)
    state = [*(np.float64(ARM_ROS) / DEG), 0.02 / 0.0004]               # degrees, and 50 (half open)
    policy = _reference(loop, images, state)
    expected = loop.joints.actions_to_ros(policy)
    np.testing.assert_array_equal(chunk.positions, np.clip(expected, [-10] * 6 + [0], [10] * 6 + [1]))
    # without the conversion the engine would have seen radians: a different chunk
    plain, _, _ = _loop_chunk([], measured)
    assert not np.allclose(plain.positions, chunk.positions, atol=1e-3)


def test_the_state_can_hold_other_joints_than_the_actions():
    cli = [("state_joints", ARM6 + ["gripper_width"]), ("joint.gripper_width.scale", "0.001")]
    measured = {**dict(zip(ARM6, ARM_ROS)), "gripper": 0.9, "gripper_width": 0.035}
    chunk, loop, images = _loop_chunk(cli, measured)
    policy = _reference(loop, images, [*ARM_ROS, 35.0], action_origin=[*ARM_ROS, 0.9])
    np.testing.assert_array_equal(chunk.positions, np.clip(policy, [-10] * 6 + [0], [10] * 6 + [1]))
    wrong = _reference(loop, images, [*ARM_ROS, 0.9], action_origin=[*ARM_ROS, 0.9])   # the commanded gripper
    assert not np.allclose(np.clip(wrong, [-10] * 6 + [0], [10] * 6 + [1]), chunk.positions, atol=1e-4)
