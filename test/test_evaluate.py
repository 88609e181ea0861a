"""`flashrt-ros evaluate`: episodes of the reference world through the host's real loop with an
injected delay, written as JSON (a short run: a few episodes)."""
import json

import pytest

from flashrt_ros.tools import evaluate


def run(tmp_path, *args):
    out = tmp_path / "summary.json"
    assert evaluate.main(["--episodes", "2", *args, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_evaluate_writes_success_time_and_boundary_figures(tmp_path):
    s = run(tmp_path, "--delay-ms", "100", "--overlap-policy", "rtc", "--rtc-mode", "guided")
    assert s["episodes"] == 2 and 0.0 <= s["success_rate"] <= 1.0
    assert s["success_rate"] > 0 and s["mean_episode_time_s"] > 0
    b = s["boundary"]
    assert b["boundaries"] > 5
    for name in ("position_jump", "velocity_jump", "jerk_rms"):
        p = b[name]
        assert set(p) >= {"p50", "p95", "max", "n"} and 0 <= p["p50"] <= p["p95"] <= p["max"]
    assert b["episode_jerk_rms_mean"] > 0
    for key in ("command", "machine", "date", "settings", "failed_seeds", "chunks", "wall_s"):
        assert key in s
    assert s["settings"]["overlap_policy"] == "rtc" and s["settings"]["delay_ms"] == 100
    # the delay was real: 100 ms = 2 control steps of every chunk were already in the past (dropped
    # by the loop), and the loop measured d = 2 from stamps and passed it with the prefix
    assert s["dropped_actions_per_chunk"] == pytest.approx(2.0)
    assert s["delay_steps"]["p50"] == 2 and s["delay_steps"]["max"] == 2
    assert s["rejected_trajectories"] == 0


def test_without_delay_nothing_is_dropped_and_replace_passes_no_prefix(tmp_path):
    s = run(tmp_path, "--overlap-policy", "replace")
    assert s["dropped_actions_per_chunk"] == 0.0
    assert s["delay_steps"]["n"] == 0          # replace: the engine got no prefix
    assert s["success_rate"] > 0


def test_delay_must_be_a_multiple_of_the_world_step(tmp_path):
    with pytest.raises(ValueError, match="multiple"):
        run(tmp_path, "--delay-ms", "70")


def test_evaluate_critic_ends_the_failing_episodes_early_and_not_the_clean_one(tmp_path):
    """Held-out seeds 1000000-1000002: a clean episode, a jammed joint and a wrong coaching (the
    injections of sim/failures.py). Each runs without the critic (what it would have done) and with
    the shipped critic; up to the critic's end both runs are the same episode."""
    s = run(tmp_path, "--critic", "--episodes", "3")
    kinds = [r["injection"].split(" at ")[0] for r in s["per_episode"]]
    assert kinds == ["clean", "jammed_joint", "wrong_coaching"]
    assert s["same_path_until_end"]
    clean, jammed, coached = s["per_episode"]
    assert clean["would_succeed"] and not clean["ended_by_critic"]
    for r in (jammed, coached):
        assert not r["would_succeed"] and r["time_without_s"] == pytest.approx(30.0)
        assert r["ended_by_critic"] and r["lead_s"] >= 2.0
    assert s["failing_ended_early_fraction"] == 1.0 and s["succeeding_ended"] == 0
    assert s["critic_ms"]["n"] > 0 and s["actor_inference_ms_with_critic"]["n"] > 0
