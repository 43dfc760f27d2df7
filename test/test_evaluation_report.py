"""Evaluation maths and reports (no ROS): Wilson interval, failure causes, summary, writers."""
import json
import math

import pytest

from bimanual_core.evaluation import (FAILURE_CAUSES, EpisodeRecord, build_report,
                                      classify_failure, progress_line, render_markdown,
                                      summarise, wilson_interval, write_json, write_markdown)


@pytest.mark.parametrize("successes,n,low,high", [
    (5, 10, 0.2366, 0.7634),       # textbook values of the 95 % Wilson score interval
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),
    (45, 50, 0.7864, 0.9565),
])
def test_wilson_interval_matches_known_values(successes, n, low, high):
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)
    assert 0.0 <= lo <= successes / n <= hi <= 1.0


def test_wilson_interval_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)          # no episodes: nothing is known
    assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0
    narrow, wide = wilson_interval(40, 50), wilson_interval(4, 5)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]    # more episodes, tighter interval
    for bad in ((3, 2), (-1, 5), (0, -1)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


@pytest.mark.parametrize("kind,status,check,reason,max_rise,cause", [
    ("pick", "aborted", "policy", "time limit of 60 s exceeded", None, "time_limit"),
    ("pick", "aborted", "policy", "the backbone cannot do it: cannot find the red cube", None,
     "planning"),
    ("pick", "aborted", "policy", "the policy failed: no IK solution", None, "policy_failed"),
    ("pick", "aborted", "policy", "the robot's clock stopped (simulator or driver gone)", None,
     "stack"),
    ("pick", "aborted", "validation", "rejected: the instruction is empty", None, "rejected"),
    ("pick", "canceled", "policy", "canceled: the robot stopped", None, "canceled"),
    ("pick", "abandoned", "", "node vla_backbone exited with code 1", None, "stack"),
    ("pick", "aborted", "sim_state", "the red cube is 0.1 cm above where it started", 0.002,
     "grasp"),
    ("pick", "aborted", "sim_state", "the red cube is 0.1 cm above where it started", 0.12,
     "dropped"),
    ("place", "aborted", "sim_state", "the red cube is 9 cm from the centre of the bowl", 0.1,
     "placement"),
    ("handover", "aborted", "sim_state", "the red cube is 12 cm up, on the left arm's side", 0.12,
     "handover"),
    ("handover", "aborted", "sim_state", "the red cube is 0 cm up", 0.0, "grasp"),
    ("pick", "aborted", "sim_state", "no ground truth seen", None, "wrong_outcome"),
])
def test_failures_are_classified_by_cause(kind, status, check, reason, max_rise, cause):
    assert classify_failure(kind, status, check, reason, max_rise) == cause
    assert cause in FAILURE_CAUSES


def _record(i, success, cause="", wall=10.0, sim=5.0):
    return EpisodeRecord(index=i, seed=100 + i, success=success,
                         status="succeeded" if success else "aborted",
                         reason="the red cube | is up" if success else "time limit of 60 s exceeded",
                         success_check="sim_state" if success else "policy", cause=cause,
                         wall_duration_s=wall, sim_duration_s=sim, object_rise_m=0.15 if success
                         else 0.0, max_rise_m=0.15 if success else 0.0,
                         ground_truth_success=success if i != 3 else not success)


def test_summary_counts_rates_lengths_and_causes():
    records = [_record(0, True, wall=10.0, sim=4.0), _record(1, True, wall=12.0, sim=6.0),
               _record(2, False, "time_limit", wall=30.0, sim=60.0),
               _record(3, False, "grasp", wall=14.0, sim=8.0),
               _record(4, False, "time_limit", wall=20.0, sim=60.0)]
    s = summarise(records)
    assert (s["episodes"], s["successes"], s["success_rate"]) == (5, 2, 0.4)
    assert s["ci95"] == list(wilson_interval(2, 5))
    assert s["wall_duration_s"]["median"] == 14.0 and s["wall_duration_s"]["mean"] == 17.2
    assert s["sim_duration_s"]["median"] == 8.0
    assert s["failures_by_cause"] == {"time_limit": 2, "grasp": 1}
    assert list(s["failures_by_cause"]) == ["time_limit", "grasp"]    # most frequent first
    assert s["ground_truth_disagreements"] == 1
    empty = summarise([])
    assert empty["success_rate"] is None and empty["ci95"] == [0.0, 1.0]
    assert empty["wall_duration_s"]["median"] is None


def test_json_and_markdown_writers(tmp_path):
    records = [_record(0, True), _record(1, False, "time_limit"), _record(2, True)]
    report = build_report(records, policy="zero_shot", task="pick", embodiment="aloha2", seed=100,
                          episodes_requested=3, status="complete", wall_time_s=40.0,
                          machine={"cpu": "test cpu", "cpu_count": 2, "gpu": False,
                                   "platform": "Linux"})
    path = write_json(report, tmp_path / "deep" / "eval_zero_shot_pick.json")
    loaded = json.loads(path.read_text())
    for key in ("success_rate", "episodes", "ci95", "policy", "task", "embodiment", "seed",
                "records", "machine", "wall_time_s"):
        assert key in loaded
    assert loaded["episodes"] == 3 and math.isclose(loaded["success_rate"], 2 / 3)
    assert [r["seed"] for r in loaded["records"]] == [100, 101, 102]
    assert loaded["records"][1]["cause"] == "time_limit"

    md = write_markdown(report, tmp_path / "eval.md").read_text()
    assert md == render_markdown(report)
    assert "# Evaluation: zero_shot on pick" in md
    assert "66.7 % (2/3)" in md and "95 % CI (Wilson)" in md
    assert "| time_limit | 1 |" in md
    episode_rows = [line for line in md.splitlines() if line.startswith("| 1 | 101 |")]
    assert len(episode_rows) == 1 and "failure" in episode_rows[0]
    assert "the red cube \\| is up" in md                  # a pipe in a reason keeps the table
    # Every table row of the episodes section has the header's column count.
    table = md.split("## Episodes")[1].strip().splitlines()
    assert {line.replace("\\|", "").count("|") for line in table} == {9}


def test_progress_line_shows_the_running_rate():
    done = [_record(0, True), _record(1, False, "grasp")]
    line = progress_line(done[-1], done, total=10)
    assert line.startswith("[eval] 2/10 seed 101: FAILURE (grasp)")
    assert "1/2 = 50 %" in line
