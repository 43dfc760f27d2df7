"""Closed-loop evaluation through the ROS 2 stack: the engine of `bimanual-vla evaluate`.

The stack is brought up once, as separate processes. Each episode then chooses its scene (the
simulator's `seed` parameter, then /sim/reset), sends the task's instruction from
config/tasks.yaml over /execute_instruction exactly as a user would, and records the result.
Success is the instruction server's verdict from the simulator's state; the evaluator also judges
each episode itself from /sim/objects and reports any disagreement. Benchmarks call
`run_evaluation()` directly; `simulated_stack` and `EpisodeRunner` also drive the demonstration
recorder (`vla_data.recorder`).
"""
from __future__ import annotations

import os
import random
import re
import sys
import threading
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import numpy as np
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger

from aloha_driver.sim_node import RESET_SERVICE
from bimanual_core.bringup import StackProcesses, node_launch_specs, with_backbone_policy
from bimanual_core.client import StackClient, wait_until
from bimanual_core.config import load_embodiment, load_stack, load_tasks, repo_root
from bimanual_core.evaluation import (EpisodeRecord, build_report, classify_failure,
                                      machine_description, progress_line, write_json,
                                      write_markdown)
from bimanual_core.instructions import TASK_KINDS, TaskSpec, parse_instruction
from bimanual_core.ros_conversions import RELIABLE_QOS, time_to_sec
from bimanual_vla.msg import DecoderMetrics, SimObjectArray
from bimanual_vla.srv import ErQuery
from instruction_server.success import (ObjectState, judge, judge_all, load_success_criteria,
                                        object_states)

SIM_NODE = "aloha_sim"          # the simulator's node name in config/stack.yaml
SCENE_SETTLE_S = 0.5            # sim time after a reset before the new scene counts as observed
SERVICE_TIMEOUT_S = 20.0
DECODER_IDLE_TIMEOUT_S = 10.0
# How agent.executor words a failed step of a multi-step plan, before the step's own reason.
_STEP_PREFIX = re.compile(r"^step \d+ of \d+ \('.*?'\) failed(?: after \d+ attempts)?: ")
PERCEPTION_READY_TIMEOUT_S = 20.0


class StackFailure(RuntimeError):
    """The stack, not the policy, failed: a node died or a service of the stack did not answer."""


def ros_domain() -> int:
    """This run's ROS domain: $ROS_DOMAIN_ID, or a random one so that parallel runs stay apart."""
    return int(os.environ.get("ROS_DOMAIN_ID") or random.randint(1, 100))


@contextmanager
def simulated_stack(embodiment: str, task: str, seed: int,
                    overrides: dict[str, dict[str, Any]] | None, log_dir: Path, domain: int,
                    ready_timeout_s: float) -> Iterator[tuple[StackClient, StackProcesses]]:
    """The simulated stack on scene (`task`, `seed`), one process per node on ROS `domain`, and
    a client of it; StackFailure when it does not come up. The nodes stop on exit."""
    node_overrides = {node: dict(params) for node, params in (overrides or {}).items()}
    node_overrides.setdefault(SIM_NODE, {}).update(task=task, seed=seed)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    procs = StackProcesses(node_launch_specs(embodiment=embodiment, sim=True,
                                             overrides=node_overrides), log_dir, env=env)
    procs.start()
    try:
        with StackClient(embodiment, domain_id=domain) as client:
            failure = procs.wait_until_ready(client.wait_ready, ready_timeout_s)
            if failure:
                raise StackFailure(failure)
            yield client, procs
    finally:
        procs.stop()


def echo_to(echo: TextIO | None) -> Callable[[str], None]:
    """A progress printer to `echo` (None: silent)."""
    return (lambda text: print(text, file=echo, flush=True)) if echo else (lambda text: None)


def task_instruction(task: str, episodes: int, seed: int) -> str:
    """The instruction of simulated `task`, after checking the run's arguments (ValueError)."""
    tasks = load_tasks()["tasks"]
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(tasks)}")
    if episodes < 1 or seed < 0:
        raise ValueError(f"need episodes >= 1 and seed >= 0, got {episodes} and {seed}")
    return tasks[task]["instruction"]


def default_output(policy: str, task: str, embodiment: str | None = None) -> Path:
    """bench/results/eval_<policy>_<task>.json for the stack's default embodiment (ALOHA 2),
    eval_<policy>_<task>_<embodiment>.json for another (the Markdown report goes beside it)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", policy)
    suffix = "" if embodiment in (None, load_stack().embodiment) else "_" + re.sub(
        r"[^A-Za-z0-9_.-]+", "_", embodiment)
    return repo_root() / "bench" / "results" / f"eval_{safe}_{task}{suffix}.json"


def task_steps(task: str) -> list[TaskSpec]:
    """The atomic steps of simulated `task` as the rule planner reads its instruction; a task
    listing `steps` in config/tasks.yaml must read as exactly those (ValueError otherwise)."""
    from agent.plan import PlanError, RulePlanner
    cfg = load_tasks()["tasks"][task]
    try:
        plan = RulePlanner().plan(cfg["instruction"])
    except PlanError as exc:
        raise ValueError(f"task {task}: {exc}") from None
    listed = cfg.get("steps")
    if listed is not None and [s.instruction for s in plan.steps] != list(listed):
        raise ValueError(f"task {task}: the instruction reads as "
                         f"{[s.instruction for s in plan.steps]}, not the listed steps {listed}")
    if listed is None:          # an atomic task: exactly as the server reads it with the hint
        return [parse_instruction(cfg["instruction"], task if task in TASK_KINDS else "")]
    return [s.spec for s in plan.steps]


class _SceneWatch:
    """Ground truth and decoder state seen by the evaluator, per episode (thread-safe)."""

    def __init__(self, client: StackClient, objects_topic: str, metrics_topic: str, label: str):
        self.label = label
        self._lock = threading.Lock()
        self._first: dict[str, ObjectState] | None = None
        self._last: dict[str, ObjectState] | None = None
        self._last_stamp = -1.0
        self._max_z = -np.inf
        self.decoder_state: str | None = None
        client.node.create_subscription(SimObjectArray, objects_topic, self._on_objects,
                                        RELIABLE_QOS)
        client.node.create_subscription(DecoderMetrics, metrics_topic, self._on_metrics,
                                        RELIABLE_QOS)

    def _on_objects(self, msg: SimObjectArray) -> None:
        snap = object_states(msg.objects)
        with self._lock:
            self._last, self._last_stamp = snap, time_to_sec(msg.header.stamp)
            if self._first is None:
                self._first = snap
            if self.label in snap:
                self._max_z = max(self._max_z, float(snap[self.label].position[2]))

    def _on_metrics(self, msg: DecoderMetrics) -> None:
        self.decoder_state = msg.state

    def last_stamp(self) -> float:
        with self._lock:
            return self._last_stamp

    def begin(self) -> None:
        """The episode starts from the latest snapshot."""
        with self._lock:
            self._first = self._last
            self._max_z = (float(self._last[self.label].position[2])
                           if self._last and self.label in self._last else -np.inf)

    def snapshots(self):
        with self._lock:
            return self._first, self._last, self._max_z


class EpisodeRunner:
    """Runs one episode at a time on a stack that is up: choose the scene, instruct, record."""

    def __init__(self, client: StackClient, embodiment: str, task: str, policy: str,
                 time_limit_s: float, dead_node: Callable[[], str | None],
                 say: Callable[[str], None]):
        self.client, self.task, self.policy = client, task, policy
        self.time_limit_s, self.dead_node, self.say = time_limit_s, dead_node, say
        self.instruction = load_tasks()["tasks"][task]["instruction"]
        # A multi-step task's steps as the rule planner reads them (the server plans the same
        # text); the evaluator judges every step's goal at the end, and follows the first object.
        self.specs = task_steps(task)
        self.spec = self.specs[0]
        self.criteria = load_success_criteria()
        self.min_rise = float(self.criteria.get(self.spec.kind, {}).get("min_height", 0.05))
        names = load_stack().interfaces
        emb = load_embodiment(embodiment)
        self.watch = _SceneWatch(client, emb.simulation.get("objects_topic", "/sim/objects"),
                                 names["decoder_metrics_topic"], self.spec.object)
        self._set_params = client.node.create_client(SetParameters,
                                                     f"/{SIM_NODE}/set_parameters")
        self._reset = client.node.create_client(Trigger, RESET_SERVICE)
        self._er = client.node.create_client(ErQuery, names["er_query_service"])

    def wait_perception(self) -> bool:
        """Until embodied reasoning finds the task's object: a stack whose perception has not
        heard the simulator yet would fail the first episode for a reason that is not the
        policy's. False after PERCEPTION_READY_TIMEOUT_S (the episodes then show why)."""
        request = ErQuery.Request(query_type=ErQuery.Request.BOXES, query=self.spec.object,
                                  max_results=1)
        deadline = time.monotonic() + PERCEPTION_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._er.wait_for_service(timeout_sec=1.0):
                answer = self.client.call(self._er, request, SERVICE_TIMEOUT_S)
                if answer is not None and answer.success and answer.boxes:
                    return True
            time.sleep(0.2)
        return False

    def reset_scene(self, seed: int) -> None:
        """Re-sample the simulated scene with `seed` and wait until the stack sees it."""
        crashed = self.dead_node()
        if crashed:
            raise StackFailure(crashed)
        # A decoder still holding the last pose would drag the reset robot back to it.
        if not wait_until(lambda: self.watch.decoder_state in (None, "idle"), DECODER_IDLE_TIMEOUT_S,
                          period=0.02):
            self.say(f"[eval] warning: the decoder is still {self.watch.decoder_state} "
                     f"{DECODER_IDLE_TIMEOUT_S:.0f} s after the last episode; resetting anyway")
        for service in (self._set_params, self._reset):
            if not service.wait_for_service(timeout_sec=SERVICE_TIMEOUT_S):
                raise StackFailure(f"service {service.srv_name} is not available")
        request = SetParameters.Request(
            parameters=[Parameter("seed", value=seed).to_parameter_msg()])
        answer = self.client.call(self._set_params, request, SERVICE_TIMEOUT_S)
        if answer is None or not answer.results[0].successful:
            raise StackFailure(f"the simulator refused seed {seed}: "
                               f"{answer.results[0].reason if answer else 'no answer'}")
        answer = self.client.call(self._reset, Trigger.Request(), SERVICE_TIMEOUT_S)
        if answer is None or not answer.success or not answer.message.endswith(f"seed {seed}"):
            raise StackFailure("the scene reset failed: "
                               f"{answer.message if answer else 'no answer'}")
        fresh_after = (self.client.sim_time or 0.0) + SCENE_SETTLE_S
        if not wait_until(lambda: self.watch.last_stamp() >= fresh_after, SERVICE_TIMEOUT_S,
                          period=0.02):
            raise StackFailure(self.dead_node() or "no ground truth from the simulator after "
                               "the scene reset")

    def run(self, index: int, seed: int,
            during: AbstractContextManager = nullcontext()) -> EpisodeRecord:
        """One episode on scene `seed`; StackFailure when the stack (not the policy) failed.
        `during` is entered just before the instruction is sent and left at its result."""
        self.reset_scene(seed)
        spec, client = self.spec, self.client
        self.watch.begin()
        with during:
            sim0, wall0 = client.sim_time, time.monotonic()
            hint = self.task if self.task in TASK_KINDS else ""     # a scene, not a task kind
            outcome = client.execute(self.instruction, task=hint, policy=self.policy,
                                     time_limit_s=self.time_limit_s, give_up=self.dead_node)
            wall, sim1 = time.monotonic() - wall0, client.sim_time
        crashed = self.dead_node()
        if crashed or outcome.status == "abandoned":     # the outcome may be the crash's doing
            raise StackFailure(crashed or outcome.reason)
        time.sleep(0.2)          # the last ground truth of the episode arrives
        first, last, max_z = self.watch.snapshots()
        record = EpisodeRecord(
            index=index, seed=seed, success=outcome.success, status=outcome.status,
            reason=outcome.reason, success_check=outcome.success_check, cause="",
            wall_duration_s=wall,
            sim_duration_s=None if sim0 is None or sim1 is None else sim1 - sim0,
            sim_start_s=sim0, sim_end_s=sim1)
        if first and last and spec.object in first and spec.object in last:
            z0 = float(first[spec.object].position[2])
            record.object_rise_m = float(last[spec.object].position[2]) - z0
            record.max_rise_m = max_z - z0
        if first and last and outcome.success_check == "sim_state":
            record.ground_truth_success = (
                judge(spec, first, last, self.criteria).success if len(self.specs) == 1
                else judge_all(self.specs, first, last, self.criteria).success)
        if not outcome.success:
            failed = self.specs[min(outcome.steps_succeeded, len(self.specs) - 1)]
            reason = _STEP_PREFIX.sub("", outcome.reason)   # the failed step's own reason
            record.cause = classify_failure(failed.kind, outcome.status, outcome.success_check,
                                            reason, record.max_rise_m, self.min_rise)
        return record


def run_evaluation(policy: str = "zero_shot", task: str = "pick", episodes: int = 10,
                   seed: int = 0, embodiment: str | None = None,
                   overrides: dict[str, dict[str, Any]] | None = None, *,
                   out: str | os.PathLike | None = None, time_limit_s: float = 0.0,
                   log_dir: str | os.PathLike | None = None, ready_timeout_s: float = 120.0,
                   echo: TextIO | None = sys.stdout) -> dict[str, Any]:
    """Run `episodes` closed-loop episodes of simulated `task` with `policy`; return the report.

    Episode i uses scene seed `seed + i`. `overrides` maps node -> {parameter: value} on top of
    config/stack.yaml (e.g. {"action_decoder": {"blend": "naive"}}). `time_limit_s` 0 leaves
    the instruction server's default. With `out` (a .json path) the report is written there and
    as Markdown beside it. Progress goes to `echo` (None: silent).

    The report holds the summary of `evaluation.summarise` (success_rate, ci95, durations,
    failures_by_cause), the run's settings, `machine`, `wall_time_s`, per-episode `records`, and
    `status`: "complete"; "interrupted" (Ctrl-C / SIGTERM: what was done is kept); or
    "stack_failed" (a node died or the scene could not be reset: `stack_failure` says which,
    with its log tail); "error" (a bug: the report is written, then the exception propagates).
    Episode failures never stop the run.
    """
    say = echo_to(echo)
    instruction = task_instruction(task, episodes, seed)
    embodiment = embodiment or load_stack().embodiment
    registered, stack_overrides = with_backbone_policy(overrides, policy)   # ConfigError if unknown

    started_at = datetime.now(timezone.utc)
    log_dir = Path(log_dir or repo_root() / "runs" / f"eval-{started_at:%Y%m%d-%H%M%S}")
    domain = ros_domain()
    records: list[EpisodeRecord] = []
    status, failure = "complete", None
    t_start = time.monotonic()

    say(f"[eval] {policy} on {task} ({instruction!r}): {episodes} episodes from seed {seed}, "
        f"ROS domain {domain}, logs in {log_dir}")
    try:
        with simulated_stack(embodiment, task, seed, stack_overrides, log_dir, domain,
                             ready_timeout_s) as (client, procs):
            runner = EpisodeRunner(client, embodiment, task, registered, time_limit_s,
                                   procs.failure, say)
            if not runner.wait_perception():
                say(f"[eval] warning: perception does not find the {runner.spec.object} yet")
            say(f"[eval] stack ready after {time.monotonic() - t_start:.1f} s")
            for i in range(episodes):
                records.append(runner.run(i, seed + i))
                say(progress_line(records[-1], records, episodes))
    except KeyboardInterrupt:
        status = "interrupted"
        say(f"\n[eval] interrupted after {len(records)} episodes")
    except StackFailure as exc:
        status, failure = "stack_failed", str(exc)
        say(f"[eval] stopped: {failure}")
    except BaseException as exc:     # a bug: keep what was measured, then let it surface
        status, failure = "error", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        report = build_report(
            records, policy=policy, task=task, embodiment=embodiment, instruction=instruction,
            seed=seed, episodes_requested=episodes, time_limit_s=time_limit_s,
            overrides=overrides or {}, status=status, stack_failure=failure,
            started_at=started_at.isoformat(timespec="seconds"),
            wall_time_s=time.monotonic() - t_start, machine=machine_description(),
            log_dir=str(log_dir))
        if out is not None:
            json_path = write_json(report, out)
            md_path = write_markdown(report, Path(out).with_suffix(".md"))
            say(f"[eval] wrote {json_path} and {md_path}")
    return report
