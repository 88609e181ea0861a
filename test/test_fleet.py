"""Fleet replay on a local Ray with 2 workers: 4 fixture bags replayed as a fleet give exactly the
outputs of 4 one-at-a-time replays; a corrupt fifth bag fails alone (exit 2, its reason in the
merged report, the other four intact); a second run skips the bags already done."""
import json
import shutil

import numpy as np
import pytest

from flashrt_ros.tools import replay
from flashrt_ros.tools.fleet import bag_names, find_bags
from flashrt_ros.tools.replay_outputs import read_outputs
from replay_helpers import ROBOT, checkpoint, make_bag, replay_args

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    bags = root / "bags"
    for i, seed in enumerate((3, 5, 8, 13)):
        make_bag(bags / f"robot{i // 2}", f"episode_{seed}", ROBOT, seed=seed, duration_s=2.0, interrupts=(),
                 coach=((1.0, "go to yellow", 0.5),))
    corrupt = bags / "robot1" / "episode_broken"
    shutil.copytree(bags / "robot0" / "episode_3", corrupt)
    for f in corrupt.glob("*.mcap"):
        data = f.read_bytes()
        f.write_bytes(data[:64] + b"\x00garbage" * 64)       # the header survives, the records do not
    ckpt = checkpoint(root)
    return root, bags, ckpt


def fleet_args(bags, out, ckpt, *extra):
    args = replay_args(bags, out, ckpt, "--workers", "2", *extra)
    return [a for a in args if a != "--quiet"]


def test_a_fleet_gives_the_outputs_of_one_at_a_time_and_a_corrupt_bag_fails_alone(fleet, capsys):
    root, bags, ckpt = fleet
    found = find_bags([bags])
    assert [p.name for p in found] == ["episode_3", "episode_5", "episode_13", "episode_8", "episode_broken"]
    assert bag_names(found) == ["episode_3", "episode_5", "episode_13", "episode_8", "episode_broken"]

    alone = root / "alone"
    for bag in found[:4]:
        assert replay.main(replay_args(bag, alone / bag.name, ckpt)) == 0

    out = root / "fleet_out"
    assert replay.main(fleet_args(bags, out, ckpt)) == 2          # the corrupt bag
    report = (out / "fleet_report.md").read_text()
    assert "## Failed" in report and "`episode_broken`" in report
    failed_line = next(line for line in report.splitlines() if line.startswith("- `episode_broken`"))
    assert "episode_broken" in failed_line and len(failed_line) > 40, failed_line
    assert (out / "fleet.png").is_file()

    for bag in found[:4]:
        ours, ref = read_outputs(out / bag.name), read_outputs(alone / bag.name)
        assert len(ours.chunks) == len(ref.chunks) > 5
        for a, b in zip(ours.chunks, ref.chunks):
            assert (a.chunk_seq, a.stamp_ns, a.subtask, a.subtask_version) == \
                (b.chunk_seq, b.stamp_ns, b.subtask, b.subtask_version)
            np.testing.assert_array_equal(a.positions, b.positions)
        assert [(s.stamp_ns, s.text, s.version) for s in ours.subtasks] == \
            [(s.stamp_ns, s.text, s.version) for s in ref.subtasks]
        assert [(t.stamp_ns, t.times_ns.tolist()) for t in ours.trajectories] == \
            [(t.stamp_ns, t.times_ns.tolist()) for t in ref.trajectories]
        summary = json.loads((out / bag.name / "summary.json").read_text())
        assert summary["chunks"] == len(ref.chunks) and summary["exit_code"] == 0
        assert f"[`{bag.name}`]({bag.name}/report.md)" in report

    # against the one-at-a-time outputs as references: a new key (not "done"), every bag identical
    capsys.readouterr()
    assert replay.main(fleet_args(bags, out, ckpt, "--compare", str(alone))) == 2
    assert "(0 already done)" in capsys.readouterr().out
    for bag in found[:4]:
        compare = json.loads((out / bag.name / "summary.json").read_text())["compare"]
        assert compare["identical"] and compare["max_diff"] == 0.0


def test_a_second_run_skips_bags_already_done_unless_forced(fleet, capsys):
    root, bags, ckpt = fleet
    out = root / "again"
    only_good = [str(p) for p in find_bags([bags])[:2]]
    args = replay_args(only_good[0], out, ckpt, "--workers", "2")
    args = [only_good[1]] + args
    assert replay.main(args) == 0
    capsys.readouterr()
    assert replay.main(args) == 0
    assert "(2 already done)" in capsys.readouterr().out
    assert replay.main(args + ["--force"]) == 0
    assert "(0 already done)" in capsys.readouterr().out


def test_asking_for_gpus_a_cluster_lacks_is_a_clear_error(fleet, capsys):
    root, bags, ckpt = fleet
    bag = str(find_bags([bags])[0])
    assert replay.main(replay_args(bag, root / "gpu", ckpt, "--workers", "1", "--gpus-per-bag", "1")) == 2
    assert "--gpus-per-bag 1, but the Ray cluster has 0 GPU(s)" in capsys.readouterr().err
