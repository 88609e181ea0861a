"""`flashrt-ros soak` against a LeRobot π0.5 host (the tiny fixture, CPU), as parity/gpu_ros.py runs it on the
GPU with the full-size policy: two 640x480 cameras, a 7-joint arm (--joints 7) whose joint states go out with
each camera frame and its stamp (--joints-with-cameras), so every ActionChunk's stamp is a camera stamp and
camera stamp -> ActionChunk is measured exactly; the host's act() time comes back in the same chunks.
"""
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_pi05_tiny"


def test_camera_stamp_to_action_chunk_with_the_lerobot_host(tmp_path):
    from flashrt_ros.tools import soak
    argv = ["--seconds", "8", "--warmup", "1", "--actor-hz", "4", "--cameras", "2", "--joints", "7",
            "--joints-with-cameras", "--startup-timeout", "60", "--out", str(tmp_path), "--tag", "lerobot",
            "--set", "model=lerobot_pi05", "--set", f"checkpoint={FIXTURE}", "--set", "device=cpu",
            "--set", "dtype=float32", "--set", "camera_timeout_s=1.0", "--set", "joint_state_timeout_s=1.0"]
    assert soak.main(argv) == 0
    res = json.loads((tmp_path / "soak-lerobot.json").read_text())
    chunk, ready, act = res["obs_to_chunk"], res["chunk_observation_to_ready"], res["chunk_inference_time"]
    assert res["joints"] == 7 and res["trajectories"] > 0 and chunk["n"] > 0, res
    assert res["chunk_stamp_is_camera_stamp"] == chunk["n"], "a chunk's stamp was not a camera stamp"
    # act() is inside stamp -> ready, which is inside stamp -> received
    assert 0 < act["p50_ms"] <= ready["p50_ms"] <= chunk["p50_ms"], (act, ready, chunk)
    # the host's own share before act(): the observation's last input received -> act() starts, inside
    # stamp -> ready (it leaves out the stamp -> reception transit and act() itself)
    waited = res["input_to_act"]
    assert waited["p50_ms"] is not None and 0 <= waited["p50_ms"] < ready["p50_ms"], (waited, ready)
