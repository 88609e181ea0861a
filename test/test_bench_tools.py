"""The benchmark commands keep working (their numbers live in docs/benchmarks; this only checks
that each run produces its rows and the properties they rest on: graph == eager, byte-exact
capsule restore, chunks arriving through the ROS host)."""
import json

import pytest

pytestmark = pytest.mark.timeout(240)


def test_bench_writes_its_rows_and_the_graph_computes_what_eager_computes(tmp_path):
    from flashrt_ros.tools import bench
    assert bench.main(["--presets", "reference", "--device", "cpu", "--iters", "5", "--seconds", "0.5",
                       "--actor-hz", "20", "--out", str(tmp_path), "--tag", "t"]) == 0
    res = json.loads((tmp_path / "bench-t.json").read_text())
    r = res["presets"]["reference"]
    assert r["actor"]["graph_vs_eager_max_abs"] == 0.0
    assert r["state"]["capsule_1MB_restore_byte_exact"] and r["state"]["capsule_100MB_restore_byte_exact"]
    assert r["interference"]["scheduler_planner"]["completed"] >= 1
    assert "| reference |" in (tmp_path / "bench-t.md").read_text()


def test_bench_ros_measures_chunks_through_the_host(tmp_path):
    from flashrt_ros.tools import bench_ros
    assert bench_ros.main(["--seconds", "3", "--actor-hz", "10", "--camera-hz", "10", "--device", "cpu",
                           "--image", "160x120", "--out", str(tmp_path), "--tag", "t"]) == 0
    res = json.loads((tmp_path / "bench-ros-t.json").read_text())
    assert res["chunks"] >= 3 and 0 < res["camera_to_chunk"]["p50_ms"] < 5000


def test_bench_critic_writes_its_rows_and_the_scheduled_critic_reads(tmp_path):
    from flashrt_ros.tools import bench_critic
    assert bench_critic.main(["--device", "cpu", "--seconds", "1.0", "--actor-hz", "10", "--critic-hz", "4",
                              "--out", str(tmp_path), "--tag", "t"]) == 0
    r = json.loads((tmp_path / "critic-t.json").read_text())["result"]
    for row in ("actor_alone", "actor_with_critic_naive", "actor_with_critic_scheduler"):
        assert r[row]["n"] >= 8 and 0 < r[row]["p50_ms"] <= r[row]["p99_ms"]
    assert r["scheduler_critic"]["completed"] >= 3 and r["scheduler_critic"]["faults"] == 0
    lo, hi = r["critic_value_range"]
    assert 0.0 <= lo <= hi <= 1.0
    assert "scheduler (the host's way)" in (tmp_path / "critic-t.md").read_text()
