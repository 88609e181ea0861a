"""The package as a robot gets it: package.xml, the colcon install, the messages over DDS, the CLI.

Runs against the installed package (install/flashrt_ros, see scripts/env.sh), not the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

ACTION_CHUNK_FIELDS = {
    "header": "std_msgs/Header",
    "chunk_seq": "uint64",
    "episode_id": "uint32",
    "subtask": "string",
    "subtask_version": "uint64",
    "dt": "float",
    "horizon": "uint32",
    "action_dim": "uint32",
    "joint_names": "sequence<string>",
    "actions": "sequence<float>",
    "velocities": "sequence<float>",
    "observation_to_ready": "float",
    "inference_time": "float",
    "delay_steps": "uint32",
}
SUBTASK_FIELDS = {
    "stamp": "builtin_interfaces/Time",
    "text": "string",
    "version": "uint64",
    "source": "uint8",
}


def _share_dir() -> Path:
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("flashrt_ros"))


def _install_prefix() -> Path:
    from ament_index_python.packages import get_package_prefix

    return Path(get_package_prefix("flashrt_ros"))


def _sample_chunk(horizon: int = 50, action_dim: int = 2):
    from flashrt_ros.msg import ActionChunk

    msg = ActionChunk()
    msg.header.stamp.sec = 1_700_000_000
    msg.header.stamp.nanosec = 123_456_789
    msg.header.frame_id = ""
    msg.chunk_seq = 2**40 + 7
    msg.episode_id = 3
    msg.subtask = "go to red"
    msg.subtask_version = 11
    msg.dt = 0.05
    msg.horizon = horizon
    msg.action_dim = action_dim
    msg.joint_names = ["joint_x", "joint_y"]
    actions = np.random.default_rng(0).uniform(0.0, 1.0, (horizon, action_dim)).astype(np.float32)
    msg.actions = actions.ravel().tolist()
    msg.velocities = (-actions).ravel().tolist()
    msg.observation_to_ready = 0.0321
    msg.inference_time = 0.0123
    msg.delay_steps = 7
    return msg, actions


def _assert_chunk_equal(received, sent, actions: np.ndarray) -> None:
    assert received.header.stamp.sec == sent.header.stamp.sec
    assert received.header.stamp.nanosec == sent.header.stamp.nanosec
    for field in ("chunk_seq", "episode_id", "subtask", "subtask_version", "horizon", "action_dim"):
        assert getattr(received, field) == getattr(sent, field), field
    assert list(received.joint_names) == list(sent.joint_names)
    assert np.float32(received.dt) == np.float32(sent.dt)
    assert np.float32(received.inference_time) == np.float32(sent.inference_time)
    assert received.delay_steps == sent.delay_steps
    assert np.float32(received.observation_to_ready) == np.float32(sent.observation_to_ready)
    np.testing.assert_array_equal(np.asarray(received.velocities, np.float32).reshape(actions.shape), -actions)
    got = np.asarray(received.actions, dtype=np.float32).reshape(received.horizon, received.action_dim)
    np.testing.assert_array_equal(got, actions)


def test_package_xml_declares_the_ros_package_and_its_dependencies():
    from catkin_pkg.package import parse_package

    pkg = parse_package(str(REPO / "package.xml"))
    pkg.validate()
    assert pkg.name == "flashrt_ros"
    assert pkg.package_format == 3
    assert pkg.get_build_type() == "ament_cmake"
    assert [str(lic) for lic in pkg.licenses] == ["Apache-2.0"]
    assert "rosidl_interface_packages" in [group.name for group in pkg.member_of_groups]
    buildtool = {dep.name for dep in pkg.buildtool_depends}
    assert {"ament_cmake", "rosidl_default_generators"} <= buildtool
    exec_deps = {dep.name for dep in pkg.exec_depends}
    assert {
        "rosidl_default_runtime", "rclpy", "std_msgs", "sensor_msgs", "trajectory_msgs",
        "std_srvs", "diagnostic_msgs", "lifecycle_msgs", "builtin_interfaces", "python3-numpy",
    } <= exec_deps
    assert {"std_msgs", "builtin_interfaces"} <= {dep.name for dep in pkg.build_depends}


def test_tests_import_the_installed_package_not_the_source_tree():
    import flashrt_ros

    package_dir = Path(flashrt_ros.__file__).parent
    assert package_dir.parent.name == "site-packages", package_dir
    assert _install_prefix() in package_dir.parents, (package_dir, _install_prefix())


def test_installed_package_has_the_generated_messages_with_their_fields():
    from flashrt_ros.msg import ActionChunk, Subtask

    assert ActionChunk.get_fields_and_field_types() == ACTION_CHUNK_FIELDS
    assert Subtask.get_fields_and_field_types() == SUBTASK_FIELDS
    assert (Subtask.SOURCE_PLANNER, Subtask.SOURCE_COACH, Subtask.SOURCE_OPERATOR) == (0, 1, 2)


def test_action_chunk_crosses_dds_between_two_nodes(ros):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from flashrt_ros.msg import ActionChunk

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    received = []
    listener = ros.node("chunk_listener")
    listener.create_subscription(ActionChunk, "/flashrt_test/chunks", received.append, qos)
    talker = ros.node("chunk_talker")
    publisher = talker.create_publisher(ActionChunk, "/flashrt_test/chunks", qos)
    ros.spin(listener, talker)

    assert ros.wait_for(lambda: publisher.get_subscription_count() >= 1), "subscriber never matched"
    sent, actions = _sample_chunk()
    publisher.publish(sent)
    assert ros.wait_for(lambda: len(received) >= 1), "no ActionChunk received"
    _assert_chunk_equal(received[0], sent, actions)


def test_action_chunk_crosses_dds_between_two_processes(ros):
    """A second process (the robot's world or host node) publishes; this one receives."""
    from flashrt_ros.msg import ActionChunk

    received = []
    listener = ros.node("chunk_listener_xproc")
    listener.create_subscription(ActionChunk, "/flashrt_test/xproc_chunks", received.append, 10)
    ros.spin(listener)

    publisher_code = textwrap.dedent(
        """
        import sys, time
        import rclpy
        sys.path.insert(0, sys.argv[1])
        from test_package import _sample_chunk
        from flashrt_ros.msg import ActionChunk

        rclpy.init(args=[])
        node = rclpy.create_node("chunk_talker_xproc")
        pub = node.create_publisher(ActionChunk, "/flashrt_test/xproc_chunks", 10)
        msg, _ = _sample_chunk()
        deadline = time.monotonic() + 20.0
        while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        for _ in range(5):  # a few times: the subscriber may still be completing discovery
            pub.publish(msg)
            time.sleep(0.1)
        node.destroy_node()
        rclpy.shutdown()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", publisher_code, str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert ros.wait_for(lambda: len(received) >= 1, timeout=5.0), "no ActionChunk from the other process"
    sent, actions = _sample_chunk()
    _assert_chunk_equal(received[0], sent, actions)


def test_install_space_has_share_dirs_and_executables():
    share = _share_dir()
    for sub in ("launch", "config", "kernels"):
        assert (share / sub).is_dir(), share / sub
    assert (share / "package.xml").is_file()
    assert (share / "msg" / "ActionChunk.msg").is_file()
    for exe in ("flashrt_host", "flashrt_world"):
        path = _install_prefix() / "lib" / "flashrt_ros" / exe
        assert path.is_file() and os.access(path, os.X_OK), path


def test_installed_executables_start_with_the_python_they_were_built_for():
    """CMakeLists.txt writes the build's Python into the shebang: not `/usr/bin/env python3`, which
    runs whatever python3 is first on PATH (on a robot, maybe one without rclpy or torch)."""
    prefix = _install_prefix()
    for installed, source in ((prefix / "lib" / "flashrt_ros" / "flashrt_host", "scripts/flashrt_host"),
                              (prefix / "lib" / "flashrt_ros" / "flashrt_world", "scripts/flashrt_world"),
                              (prefix / "bin" / "flashrt-ros", "scripts/flashrt-ros")):
        first, _, body = installed.read_text().partition("\n")
        interpreter = first.removeprefix("#!")
        assert first.startswith("#!/") and " " not in interpreter, (installed, first)
        assert os.path.samefile(interpreter, sys.executable), (installed, first, sys.executable)
        assert body == (REPO / source).read_text().partition("\n")[2], installed
        assert (REPO / source).read_text().startswith("#!/usr/bin/env python3\n"), source


def test_launch_file_has_a_remap_argument_for_every_host_topic():
    """The launch file cannot be run here (launch/launch_ros are not on PyPI; launch/README.md says
    how it was checked): its TOPICS table is read as data and compared with the host's topics."""
    import ast

    from flashrt_ros.host.params import SPECS, TRAJECTORY_TOPIC
    from flashrt_ros.ros.actor_node import ACTION_CHUNK_TOPIC, INTERRUPT_TOPIC
    from flashrt_ros.ros.planner_node import COACH_TOPIC, SUBTASK_TOPIC, TASK_TOPIC

    source = (_share_dir() / "launch" / "flashrt.launch.py").read_text()
    tree = ast.parse(source)
    table = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "TOPICS" for t in node.targets))
    remapped = {topic for _, topic, _ in table}
    host_topics = {*SPECS["joint_state_topics"].default, TASK_TOPIC, COACH_TOPIC, INTERRUPT_TOPIC,
                   TRAJECTORY_TOPIC, ACTION_CHUNK_TOPIC, SUBTASK_TOPIC}
    assert remapped == host_topics
    assert len({name for name, _, _ in table}) == len(table)
    # Two nodes in one process: a `__node` remap would give both the same name. The params file
    # goes to the host (which refuses a missing one), not to launch_ros (which skips it).
    node_calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
                  and getattr(node.func, "id", None) == "Node"]
    assert len(node_calls) == 1
    keywords = {k.arg for k in node_calls[0].keywords}
    assert "name" not in keywords and "parameters" not in keywords, keywords
    assert {"remappings", "respawn", "respawn_delay", "namespace"} <= keywords
    assert '"--params-file"' in source and '"autostart=false"' in source


def test_console_script_help_lists_the_subcommands():
    exe = shutil.which("flashrt-ros")
    assert exe is not None, "flashrt-ros not on PATH (install/flashrt_ros/bin)"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in ("demo", "host", "world", "replay", "bench", "train"):
        assert f"  {name}" in proc.stdout


def test_cli_reports_a_missing_tool_module_with_exit_code_2(monkeypatch, capsys):
    from flashrt_ros import cli

    monkeypatch.setitem(cli.SUBCOMMANDS, "ghost", ("flashrt_ros.tools._no_such_tool", "test only"))
    assert cli.main(["ghost", "--flag"]) == 2
    assert "not available" in capsys.readouterr().err
    assert cli.main(["no-such-command"]) == 2


def test_cli_passes_arguments_through_to_the_tool(monkeypatch, tmp_path):
    from flashrt_ros import cli

    tool = tmp_path / "flashrt_fake_tool.py"
    tool.write_text("seen = []\ndef main(argv):\n    seen.append(argv)\n    return 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "fake", ("flashrt_fake_tool", "test only"))
    assert cli.main(["fake", "--ros-args", "-p", "x:=1"]) == 7
    import flashrt_fake_tool

    assert flashrt_fake_tool.seen == [["--ros-args", "-p", "x:=1"]]


def test_pip_install_ships_code_kernels_and_console_entry(tmp_path):
    """setup.py (for pip users) installs every module, the kernel sources and `flashrt-ros`."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "package.xml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    for name in ("flashrt_ros", "kernels", "launch", "config", "resource"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    target = tmp_path / "target"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-compile", "--no-input", "--disable-pip-version-check", "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    source_modules = {p.relative_to(REPO) for p in (REPO / "flashrt_ros").rglob("*.py")
                      if "__pycache__" not in p.parts}
    installed_modules = {p.relative_to(target) for p in (target / "flashrt_ros").rglob("*.py")}
    assert source_modules - installed_modules == set(), "modules setup.py does not ship"
    for cu in (REPO / "kernels").glob("*.cu"):
        assert (target / "flashrt_ros" / "kernels" / cu.name).is_file(), cu.name
    for weights in (REPO / "flashrt_ros" / "models" / "weights").rglob("*"):
        if weights.suffix in (".safetensors", ".json"):
            assert (target / weights.relative_to(REPO)).is_file(), weights
    assert (target / "bin" / "flashrt-ros").is_file()
