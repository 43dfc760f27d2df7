"""Closed-loop evaluation results: episode records, their summary, and JSON / Markdown reports.

No ROS here: `bimanual_core.eval_runner` drives the stack and fills these records, and benchmarks
(bench/) summarise and write them the same way. The success rate comes with a 95 % Wilson score
interval, which stays inside [0, 1] and is honest at the small episode counts (20-50) run here,
where the normal approximation is not.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

Z_95 = 1.959963984540054   # two-sided 95 % quantile of the standard normal

# Why an episode failed. Successful episodes have the cause "".
FAILURE_CAUSES = {
    "rejected": "the instruction server refused the goal before anything moved",
    "planning": "the policy could not plan the task (object not found, unreachable, no IK)",
    "policy_failed": "the policy reported a failure while executing",
    "time_limit": "the episode ran out of time",
    "grasp": "the policy finished but the object never rose (missed or lost grasp)",
    "dropped": "the object was lifted but not held at the end",
    "placement": "the object was lifted but did not end inside the container",
    "handover": "the object was lifted but did not end held on the receiving arm's side",
    "wrong_outcome": "the policy finished but the scene does not satisfy the task",
    "canceled": "the goal was canceled",
    "stack": "the stack failed (a service, the clock or a node was missing)",
}

# Reason prefixes of instruction_server's results (src/instruction_server/node.py) when the
# policy, not the simulator's state, decided the failure.
_POLICY_REASON_CAUSES = (
    ("time limit of", "time_limit"),
    ("the backbone cannot do it", "planning"),
    ("the policy failed", "policy_failed"),
)
_LIFTED_CAUSE = {"pick": "dropped", "place": "placement", "handover": "handover"}


@dataclass
class EpisodeRecord:
    """One episode as the evaluation saw it."""

    index: int
    seed: int
    success: bool
    status: str                      # action status: succeeded, aborted, canceled, abandoned
    reason: str                      # the server's (or the evaluator's) explanation
    success_check: str               # what decided: sim_state, policy, validation
    cause: str                       # "" on success, else a key of FAILURE_CAUSES
    wall_duration_s: float           # goal sent -> result received, wall clock
    sim_duration_s: float | None     # the same span in simulated time (None without /clock)
    sim_start_s: float | None = None     # simulated time the goal was sent
    sim_end_s: float | None = None       # simulated time the result arrived
    object_rise_m: float | None = None   # target object's final height minus its initial height
    max_rise_m: float | None = None      # highest it rose during the episode
    ground_truth_success: bool | None = None  # the evaluator's own judgement from /sim/objects


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when there are no trials."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exactly 0 / 1 at the extremes, where rounding would otherwise leave 1e-17 / 0.99999...
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def classify_failure(kind: str, status: str, success_check: str, reason: str,
                     max_rise_m: float | None = None, min_rise_m: float = 0.05) -> str:
    """Failure cause (a FAILURE_CAUSES key) of an episode of task `kind`.

    Failures the policy reported are told apart by the server's reason; failures found in the
    simulator's state are told apart by how high the object ever rose (`max_rise_m`).
    """
    if status == "canceled":
        return "canceled"
    if status in ("abandoned", "unreachable", "rejected"):
        return "stack"
    if success_check == "validation":
        return "rejected"
    if success_check == "sim_state":
        if max_rise_m is None:
            return "wrong_outcome"
        if max_rise_m < min_rise_m:
            return "grasp"
        return _LIFTED_CAUSE.get(kind, "wrong_outcome")
    for prefix, cause in _POLICY_REASON_CAUSES:
        if reason.startswith(prefix):
            return cause
    return "stack"


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


def summarise(records: Iterable[EpisodeRecord]) -> dict[str, Any]:
    """Success rate, its 95 % Wilson interval, episode lengths and failures by cause."""
    records = list(records)
    n = len(records)
    successes = sum(r.success for r in records)
    causes: dict[str, int] = {}
    for r in records:
        if not r.success:
            causes[r.cause] = causes.get(r.cause, 0) + 1
    low, high = wilson_interval(successes, n)
    return {
        "episodes": n,
        "successes": successes,
        "success_rate": successes / n if n else None,
        "ci95": [low, high],
        "wall_duration_s": _stats([r.wall_duration_s for r in records]),
        "sim_duration_s": _stats([r.sim_duration_s for r in records
                                  if r.sim_duration_s is not None]),
        "failures_by_cause": dict(sorted(causes.items(), key=lambda kv: (-kv[1], kv[0]))),
        "ground_truth_disagreements": sum(1 for r in records if r.ground_truth_success is not None
                                          and r.ground_truth_success != r.success),
    }


def machine_description() -> dict[str, Any]:
    """What the numbers were measured on: results from different machines are not comparable."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for package in ("mujoco", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "gpu": os.path.exists("/dev/nvidia0"),
            "python": platform.python_version(), "packages": versions,
            "ros_distro": os.environ.get("ROS_DISTRO", "kilted")}


def build_report(records: list[EpisodeRecord], **meta: Any) -> dict[str, Any]:
    """The JSON document: `meta` (policy, task, seed, ...), the summary, then every episode."""
    return {**meta, **summarise(records), "records": [asdict(r) for r in records]}


def write_json(report: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return path


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _sec(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable page: summary table, failures by cause, one row per episode."""
    low, high = report["ci95"]
    wall, sim = report["wall_duration_s"], report["sim_duration_s"]
    title = f"# Evaluation: {report.get('policy', '?')} on {report.get('task', '?')}"
    lines = [title, "",
             "| | |", "|---|---|",
             f"| success rate | {_pct(report['success_rate'])} "
             f"({report['successes']}/{report['episodes']}) |",
             f"| 95 % CI (Wilson) | {_pct(low)} - {_pct(high)} |",
             f"| episode wall time, median / mean (s) | {_sec(wall['median'])} / "
             f"{_sec(wall['mean'])} |",
             f"| episode sim time, median / mean (s) | {_sec(sim['median'])} / "
             f"{_sec(sim['mean'])} |"]
    for key, name in (("embodiment", "embodiment"), ("instruction", "instruction"),
                      ("seed", "first seed"), ("episodes_requested", "episodes requested"),
                      ("status", "status"), ("wall_time_s", "whole run, wall time (s)"),
                      ("started_at", "started at (UTC)")):
        if key in report:
            value = _sec(report[key]) if key == "wall_time_s" else report[key]
            lines.append(f"| {name} | {_cell(value)} |")
    if report.get("overrides"):
        lines.append(f"| overrides | {_cell(json.dumps(report['overrides']))} |")
    if "machine" in report:
        m = report["machine"]
        lines.append(f"| machine | {_cell(m.get('cpu'))}, {m.get('cpu_count')} cores, "
                     f"{'GPU' if m.get('gpu') else 'no GPU'}, {_cell(m.get('platform'))} |")
    if report["failures_by_cause"]:
        lines += ["", "## Failures by cause", "", "| cause | episodes | meaning |", "|---|---|---|"]
        lines += [f"| {cause} | {count} | {FAILURE_CAUSES.get(cause, '')} |"
                  for cause, count in report["failures_by_cause"].items()]
    lines += ["", "## Episodes", "",
              "| # | seed | result | cause | wall (s) | sim (s) | rise (cm) | reason |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["records"]:
        rise = "-" if r["object_rise_m"] is None else f"{100 * r['object_rise_m']:.1f}"
        lines.append(f"| {r['index']} | {r['seed']} | {'success' if r['success'] else 'failure'} "
                     f"| {r['cause'] or '-'} | {_sec(r['wall_duration_s'])} "
                     f"| {_sec(r['sim_duration_s'])} | {rise} | {_cell(r['reason'])} |")
    return "\n".join(lines) + "\n"


def write_markdown(report: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(report))
    return path


def progress_line(record: EpisodeRecord, done: list[EpisodeRecord], total: int) -> str:
    """One line per episode with the running success rate and its interval."""
    s = summarise(done)
    low, high = s["ci95"]
    sim = "" if record.sim_duration_s is None else f" / {record.sim_duration_s:.1f} s sim"
    verdict = "SUCCESS" if record.success else f"FAILURE ({record.cause})"
    return (f"[eval] {len(done)}/{total} seed {record.seed}: {verdict} in "
            f"{record.wall_duration_s:.1f} s wall{sim}: {record.reason} | running "
            f"{s['successes']}/{s['episodes']} = {100 * s['success_rate']:.0f} % "
            f"[{100 * low:.0f}-{100 * high:.0f} %]")
