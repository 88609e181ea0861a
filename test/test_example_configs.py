"""The example configs for real arms start the host, as a robot team would run them: `flashrt-ros
host --params-file config/<example>.yaml --set checkpoint=...` (the real entry point, a separate
process), first `--print-config`, then a short run on a LeRobot fixture of the example's
dimensions, with every camera, joint-state topic and controller of the file over DDS: each
controller gets commands with only its joints, within the file's limits (ROS units).

The fixtures: the tiny π0.5 one re-dimensioned (config.json features and the normaliser statistics
cut or extended; the model itself takes max_state_dim / max_action_dim, so its weights stay).
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from flashrt_ros.host.joints import JointMap
from flashrt_ros.host.params import load_config
from flashrt_ros.ros.conversions import image_to_msg, joint_state_to_msg
from host_harness import jpeg_msg, wait_for

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "test" / "fixtures" / "lerobot_pi05_tiny"


def resized_fixture(tmp_path: Path, state_dim: int, action_dim: int) -> Path:
    """The tiny π0.5 fixture with `state_dim` values of state and `action_dim` of action."""
    out = tmp_path / f"pi05_s{state_dim}_a{action_dim}"
    shutil.copytree(TINY, out)
    dims = {"observation.state": state_dim, "action": action_dim}

    def resize_features(features: dict) -> None:
        for key, dim in dims.items():
            if key in features:
                features[key]["shape"] = [dim]

    config = json.loads((out / "config.json").read_text())
    resize_features(config["input_features"])
    resize_features(config["output_features"])
    (out / "config.json").write_text(json.dumps(config))
    for name in ("policy_preprocessor.json", "policy_postprocessor.json"):
        pipeline = json.loads((out / name).read_text())
        for step in pipeline["steps"]:
            resize_features(step.get("config", {}).get("features", {}))
        (out / name).write_text(json.dumps(pipeline))
    from safetensors.numpy import load_file, save_file
    for stats in out.glob("*normalizer_processor.safetensors"):
        tensors = load_file(stats)
        for key, value in list(tensors.items()):
            feature = key.rsplit(".", 1)[0]
            if feature in dims and value.shape[0] > 1:
                tensors[key] = np.resize(value, dims[feature]).astype(value.dtype)   # cut, or repeat
        save_file(tensors, stats)
    return out


EXAMPLES = {   # file: (state_dim, action_dim) of the policy it describes
    "so101.yaml": (6, 6),
    "arm7_gripper.yaml": (9, 8),
}


def host_command(example: str, fixture: Path) -> list[str]:
    return [sys.executable, "-m", "flashrt_ros.cli", "host", "--params-file", str(REPO / "config" / example),
            "--set", "model=lerobot_pi05", "--set", f"checkpoint={fixture}", "--set", "device=cpu",
            "--set", "dtype=float32", "--set", "actor_hz=5", "--set", "camera_timeout_s=2",
            "--set", "joint_state_timeout_s=2"]


class Rig:
    """The example robot's drivers: its cameras and joint-state topics (each topic the joints the
    example lists for it: split evenly when several), and its controllers' topics listened to."""

    def __init__(self, config):
        self.config = config
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.node = n = rclpy.create_node("example_robot", context=self.context)
        measured = JointMap(config).measured
        lo = dict(zip(config.joint_names, config.joint_lower_limits))
        hi = dict(zip(config.joint_names, config.joint_upper_limits))
        self.position = {j: (lo[j] + hi[j]) / 2 if j in lo else 0.01 for j in measured}
        topics = list(config.joint_state_topics)
        share = np.array_split(np.array(measured), len(topics))
        self.joint_pubs = [(n.create_publisher(JointState, t, 10), list(s)) for t, s in zip(topics, share)]
        self.camera_pubs = [(n.create_publisher(CompressedImage if c.compressed else Image, c.topic, 10), c.compressed)
                            for c in config.cameras]
        self.received = {c.name: [] for c in config.controllers}
        self._subs = [n.create_subscription(JointTrajectory if c.type == "joint_trajectory" else Float64MultiArray,
                                            c.topic, lambda m, k=c.name: self.received[k].append(m), 50)
                      for c in config.controllers]
        self.image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
        self._timer = n.create_timer(0.05, self.tick)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(n)

    def tick(self):
        stamp = self.node.get_clock().now().nanoseconds
        for pub, compressed in self.camera_pubs:
            pub.publish(jpeg_msg(self.image, stamp) if compressed else image_to_msg(self.image, "rgb8", stamp))
        for pub, joints in self.joint_pubs:
            pub.publish(joint_state_to_msg(joints, [self.position[j] for j in joints], stamp))

    def spin_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)
            if predicate():
                return True
        return False

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_an_example_config_starts_the_host_and_drives_every_controller(example, tmp_path):
    fixture = resized_fixture(tmp_path, *EXAMPLES[example])
    command = host_command(example, fixture)
    printed = subprocess.run([*command, "--print-config"], capture_output=True, text=True, timeout=120,
                             env=os.environ)
    assert printed.returncode == 0, printed.stderr
    assert f"checkpoint: '{fixture}'  # command line" in printed.stdout
    assert "controller.arm_controller.topic" in printed.stdout

    config = load_config([REPO / "config" / example], env={}, cli=[("checkpoint", str(fixture)),
                                                                    ("model", "lerobot_pi05")])
    rig = Rig(config)
    host = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        every = lambda: all(len(v) >= 2 for v in rig.received.values())      # noqa: E731
        ok = rig.spin_until(every, 90.0)
        assert ok, f"controllers without commands: {[k for k, v in rig.received.items() if len(v) < 2]}"
        lo = dict(zip(config.joint_names, config.joint_lower_limits))
        hi = dict(zip(config.joint_names, config.joint_upper_limits))
        for group in config.controllers:
            msgs = rig.received[group.name]
            if group.type == "joint_trajectory":
                assert all(list(m.joint_names) == list(group.joints) for m in msgs)
                values = np.array([p.positions for m in msgs for p in m.points])
            else:
                values = np.array([m.data for m in msgs])
            assert values.shape[1] == len(group.joints)
            for k, j in enumerate(group.joints):
                assert np.all(values[:, k] >= lo[j] - 1e-6) and np.all(values[:, k] <= hi[j] + 1e-6), j
    finally:
        host.terminate()
        output, _ = host.communicate(timeout=30)
        rig.close()
    assert host.returncode == 0, output
    assert "episode 1 ended: shutdown" in output      # SIGTERM ends the episode (a stop goes out)
