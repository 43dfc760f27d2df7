"""ROS 2 node `instruction_server`: the /execute_instruction action server.

A goal is a natural-language instruction, atomic ("pick up the red cube") or long ("put the red
cube in the bowl, then hand the blue cube over to the right arm"). The server
1. screens it for safety before anything moves (agent.safety: a local rule set plus the
   planner's own judgment); a refusal ends the goal with success=false, refused=true and why;
2. plans it as atomic steps (agent: the `planner` parameter or the goal's), or runs the goal's
   code-as-policy program in a sandbox to get the steps; a plan the policies cannot execute is
   refused with the reason before anything moves;
3. executes each step: starts an episode on the backbone with the step's atomic instruction, lets
   the decoder execute the backbone's chunks (its safety layer sees every motion), streams
   feedback (step index/count/text, attempt, phase, progress, what the robot is doing), then
   judges the step: from the simulator's ground truth when the simulator runs, else from ER
   queries on the cameras (3D boxes before and after), else from the policy's report; a failed
   step is retried up to `step_retries` times;
4. judges the end state (every step's goal must still hold) and says which check decided.

Goals are accepted and then aborted with a reason when malformed, because a plain goal rejection
carries no reason to the client. One instruction executes at a time; cancelling stops the robot
and holds it in place, at any step.

Parameters:
  embodiment (str, "aloha2"): config/<embodiment>.yaml.
  default_time_limit_s (float, 60): limit when a goal gives 0, for the whole goal; sim time.
  max_time_limit_s (float, 600): goals asking for more are refused.
  service_timeout_s (float, 30): wall-clock limit for each call to the backbone or decoder.
  service_resend_s (float, 2): a call with no reply yet is sent again this often (wall clock).
  settle_s (float, 1.5): time the policy's last chunk is given to finish before success is judged.
  clock_stall_timeout_s (float, 15): wall-clock time without the ROS clock advancing (the simulator
    or robot is gone) before the goal aborts.
  planner (str, "rule"): "rule" (no model), "transformers" (a local LM) or "gemini"; a goal may
    name another. Options of planner <p> are the `<p>.<option>` parameters, e.g.
    transformers.model_path, transformers.gguf_file, transformers.max_new_tokens,
    transformers.judge_threshold (the scored safety judgment's threshold), gemini.model,
    gemini.base_url, gemini.timeout_s, gemini.retries (API key from GOOGLE_API_KEY/GEMINI_API_KEY).
  step_retries (int, 1): retries of a failed step (a goal may ask for another count).
  planner_safety (bool, true): the planner's own judgment joins the rule screen (false: rules
    only; see bench/safety.py for what each backend's judgment adds).
  program_time_limit_s (float, 2): wall-clock budget of a code-as-policy program's run.
  success_check (str, "auto"): how steps are judged: "auto" (the simulator's ground truth when it
    publishes it, else ER, else the policy's report), "sim_state", "er" (3D boxes from ER queries
    on the cameras, also in simulation) or "policy".
  er_timeout_s (float, 10): wall-clock limit of one ER query.
"""
from __future__ import annotations

import math
import threading
import time
import uuid

import numpy as np
import rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from std_srvs.srv import Trigger

from agent.executor import StepOutcome, execute_plan
from agent.llm import PLANNERS, make_planner
from agent.plan import Plan, PlanError, Step
from agent.program import run_program
from agent.safety import screen
from bimanual_core.config import load_embodiment, load_stack
from bimanual_core.node_runner import run_node
from bimanual_core.instructions import InstructionError, parse_instruction, validate_instruction
from bimanual_core.ros_conversions import RELIABLE_QOS, time_to_sec
from bimanual_vla.action import ExecuteInstruction
from bimanual_vla.msg import PolicyStatus, SimObjectArray
from bimanual_vla.srv import ErQuery, StartEpisode
from instruction_server.success import (ObjectState, judge, judge_all, load_success_criteria,
                                        object_states, spec_labels)


class InstructionServer(Node):
    def __init__(self) -> None:
        # Planner options are whatever `<planner>.<option>` overrides the launch gives.
        super().__init__("instruction_server",
                         automatically_declare_parameters_from_overrides=True)
        for name, default in (("embodiment", "aloha2"), ("default_time_limit_s", 60.0),
                              ("max_time_limit_s", 600.0), ("service_timeout_s", 30.0),
                              ("service_resend_s", 2.0), ("settle_s", 1.5),
                              ("clock_stall_timeout_s", 15.0), ("planner", "rule"),
                              ("step_retries", 1), ("program_time_limit_s", 2.0),
                              ("success_check", "auto"), ("er_timeout_s", 10.0),
                              ("planner_safety", True)):
            if not self.has_parameter(name):          # given: declared from the override
                self.declare_parameter(name, default)
        p = lambda name: self.get_parameter(name).value  # noqa: E731
        self._default_limit = float(p("default_time_limit_s"))
        self._max_limit = float(p("max_time_limit_s"))
        self._service_timeout = float(p("service_timeout_s"))
        self._service_resend = float(p("service_resend_s"))
        self._settle = float(p("settle_s"))
        self._clock_stall_timeout = float(p("clock_stall_timeout_s"))
        for name in ("default_time_limit_s", "max_time_limit_s", "service_timeout_s",
                     "service_resend_s", "program_time_limit_s", "er_timeout_s"):
            if not float(p(name)) > 0:
                raise ValueError(f"parameter {name} must be > 0")
        self._planner_name = str(p("planner"))
        if self._planner_name not in PLANNERS:
            raise ValueError(f"parameter planner must be one of {', '.join(PLANNERS)}, "
                             f"got {self._planner_name!r}")
        self._retries = int(p("step_retries"))
        if self._retries < 0:
            raise ValueError(f"parameter step_retries must be >= 0, got {self._retries}")
        self._program_limit = float(p("program_time_limit_s"))
        self._check_mode = str(p("success_check"))
        if self._check_mode not in ("auto", "sim_state", "er", "policy"):
            raise ValueError("parameter success_check must be auto, sim_state, er or policy, got "
                             f"{self._check_mode!r}")
        self._er_timeout = float(p("er_timeout_s"))
        self._planner_safety = bool(p("planner_safety"))
        self._planners: dict[str, object] = {}

        embodiment = load_embodiment(p("embodiment"))
        # ER queries of the success check: the ER node's default camera ("") first, then each.
        self._cameras = [""] + list(embodiment.cameras)
        names = load_stack().interfaces
        self._criteria = load_success_criteria()
        group = ReentrantCallbackGroup()
        self._start_episode = self.create_client(StartEpisode, names["start_episode_service"],
                                                 callback_group=group)
        self._stop_episode = self.create_client(Trigger, names["stop_episode_service"],
                                                callback_group=group)
        self._decoder_start = self.create_client(Trigger, names["decoder_start_service"],
                                                 callback_group=group)
        self._decoder_hold = self.create_client(Trigger, names["decoder_hold_service"],
                                                callback_group=group)
        self._er = self.create_client(ErQuery, names["er_query_service"], callback_group=group)
        self._status: PolicyStatus | None = None
        self._objects: dict[str, ObjectState] | None = None
        self.create_subscription(PolicyStatus, names["policy_status_topic"], self._on_status,
                                 RELIABLE_QOS, callback_group=group)
        objects_topic = embodiment.simulation.get("objects_topic")
        if objects_topic:
            self.create_subscription(SimObjectArray, objects_topic, self._on_objects,
                                     RELIABLE_QOS, callback_group=group)
        self._busy = threading.Lock()
        self._server = ActionServer(
            self, ExecuteInstruction, names["execute_instruction_action"],
            execute_callback=self._execute, goal_callback=lambda _: GoalResponse.ACCEPT,
            cancel_callback=lambda _: CancelResponse.ACCEPT, callback_group=group)
        self.get_logger().info(f"serving {names['execute_instruction_action']}")

    # --- inputs -------------------------------------------------------------------------------
    def _on_status(self, msg: PolicyStatus) -> None:
        self._status = msg

    def _on_objects(self, msg: SimObjectArray) -> None:
        self._objects = object_states(msg.objects)

    # --- helpers ------------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _call(self, client, request, what: str, timeout: float | None = None):
        """Call a service and wait (this runs in an executor thread); raise with a reason.

        The request is sent again every `service_resend_s` until a reply comes: Fast DDS drops a
        reply whose reader it has not matched yet (a known discovery race on busy machines), and
        the first of the replies is taken. A repeat is harmless: hold and stop are idempotent,
        StartEpisode carries a request_id the backbone answers once, and a repeated decoder start
        only drops the queued chunks and carries on, rate-limited, from the last command."""
        timeout = self._service_timeout if timeout is None else timeout
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f"{what}: service {client.srv_name} is not available")
        futures = [client.call_async(request)]
        start = time.monotonic()
        try:
            while not any(f.done() for f in futures):
                elapsed = time.monotonic() - start
                if elapsed > timeout:
                    raise RuntimeError(f"{what}: no answer from {client.srv_name} within "
                                       f"{timeout:.0f} s")
                if elapsed > len(futures) * self._service_resend:
                    futures.append(client.call_async(request))
                time.sleep(0.005)
            return next(f for f in futures if f.done()).result()
        finally:
            for future in futures:
                if not future.done():
                    client.remove_pending_request(future)

    def _halt(self) -> None:
        """Stop the robot where it is and end the backbone's episode (best effort)."""
        for client, what in ((self._decoder_hold, "hold"), (self._stop_episode, "stop episode")):
            try:
                response = self._call(client, Trigger.Request(), what)
                if not response.success:
                    self.get_logger().warning(f"{what}: {response.message}")
            except RuntimeError as exc:
                self.get_logger().error(str(exc))

    def _time_limit(self, requested: float) -> float:
        if not math.isfinite(requested) or requested < 0:
            raise InstructionError(f"time_limit_s must be a finite number >= 0, got {requested}")
        if requested > self._max_limit:
            raise InstructionError(
                f"time_limit_s {requested:.0f} exceeds the server's maximum of {self._max_limit:.0f}")
        return requested or self._default_limit

    # --- planning -----------------------------------------------------------------------------
    def _planner(self, name: str):
        """The planner called `name` (created on first use with its `<name>.<option>`
        parameters); ValueError when it cannot be made (unknown, model missing, no API key)."""
        name = name or self._planner_name
        if name not in self._planners:
            options = {k: v.value for k, v in self.get_parameters_by_prefix(name).items()}
            self._planners[name] = make_planner(name, **options)
        return self._planners[name]

    def _er_query(self, label: str) -> ErQuery.Response | None:
        """A 3D box query for `label`, camera after camera (the default first) until one sees it
        with 3D (an arm may hide it from one); None when none sees it. Raises RuntimeError when
        ER does not answer: "not seen" and "not asked" must not look alike."""
        if not self._er.wait_for_service(timeout_sec=min(2.0, self._er_timeout)):
            raise RuntimeError(f"ER query: service {self._er.srv_name} is not available")
        for camera in self._cameras:
            request = ErQuery.Request(query_type=ErQuery.Request.BOXES, query=label,
                                      camera=camera, max_results=1, with_3d=True)
            answer = self._call(self._er, request, "ER query", timeout=self._er_timeout)
            if answer.success and answer.boxes and answer.boxes[0].has_position_3d:
                return answer
        return None

    def _locate(self, label: str) -> list[float] | None:
        """Where `label` is (world frame, m) by ER: the code-as-policy programs' detect(). An
        unanswered query fails the plan rather than reading as "not there"."""
        try:
            answer = self._er_query(label)
        except RuntimeError as exc:
            raise PlanError(f"cannot look for the {label}: {exc}") from None
        box = answer.boxes[0] if answer else None
        if box is None or not box.has_position_3d:
            return None
        return [box.position_3d.x, box.position_3d.y, box.position_3d.z]

    def _er_snapshot(self, labels: list[str]) -> dict[str, ObjectState] | None:
        """The objects `labels` as ER sees them (3D boxes); None when one is not seen."""
        states = {}
        for label in labels:
            try:
                answer = self._er_query(label)
            except RuntimeError as exc:
                self.get_logger().warning(str(exc))
                return None
            box = answer.boxes[0] if answer else None
            if box is None or not box.has_position_3d:
                return None
            p, size = box.position_3d, box.size_3d
            states[label] = ObjectState(label, np.array([p.x, p.y, p.z]),
                                        np.array([size.x, size.y, size.z]))
        return states

    def _snapshot(self, plan: Plan) -> tuple[dict[str, ObjectState] | None, str]:
        """The scene now, and whence: the simulator's ground truth, else ER, else nothing."""
        mode = self._check_mode
        if mode in ("auto", "sim_state") and self._objects is not None:
            return dict(self._objects), "sim_state"
        if mode in ("auto", "er"):
            labels = sorted({label for step in plan.steps for label in spec_labels(step.spec)})
            states = self._er_snapshot(labels)
            if states is not None:
                return states, "er"
        return None, "policy"

    # --- the goal -----------------------------------------------------------------------------
    def _execute(self, goal_handle) -> ExecuteInstruction.Result:
        t_wall0 = time.monotonic()
        context = {"plan": None, "planner": "", "succeeded": 0}

        def finish(success: bool, reason: str, check: str, canceled: bool = False,
                   refused: bool = False):
            plan = context["plan"]
            result = ExecuteInstruction.Result(
                success=success, reason=reason, success_check=check,
                duration_s=time.monotonic() - t_wall0, refused=refused,
                steps=[s.instruction for s in plan.steps] if plan else [],
                steps_succeeded=context["succeeded"],
                planner=plan.planner if plan else context["planner"])
            if canceled:
                goal_handle.canceled()
            elif success:
                goal_handle.succeed()
            else:
                goal_handle.abort()
            # One call site per severity: rclpy refuses a call site that changes severity.
            if success:
                self.get_logger().info(f"'{goal_handle.request.instruction}' succeeded: {reason}")
            else:
                self.get_logger().warning(f"'{goal_handle.request.instruction}' failed: {reason}")
            return result

        if not self._busy.acquire(blocking=False):
            return finish(False, "rejected: another instruction is executing", "validation")
        try:
            return self._run(goal_handle, finish, context)
        finally:
            self._busy.release()

    def _run(self, goal_handle, finish, context):
        goal = goal_handle.request
        t0 = self._now()
        feedback = ExecuteInstruction.Feedback()
        last_sent = {"what": None, "at": 0.0}

        def report(phase: str, progress: float, description: str) -> None:
            """Send feedback when something changed, and at least once a second."""
            what = (phase, round(progress, 2), description, feedback.step_index, feedback.attempt)
            if what == last_sent["what"] and time.monotonic() - last_sent["at"] < 1.0:
                return
            last_sent.update(what=what, at=time.monotonic())
            feedback.phase, feedback.progress, feedback.description = phase, progress, description
            feedback.elapsed_s = self._now() - t0
            goal_handle.publish_feedback(feedback)

        # 1. Validation and the safety screen: nothing has moved yet.
        try:
            validate_instruction(goal.instruction)
            if goal.task:        # a task hint: the instruction must be that atomic task
                parse_instruction(goal.instruction, goal.task)
            limit = self._time_limit(goal.time_limit_s)
            retries = self._retries if goal.step_retries < 0 else int(goal.step_retries)
            planner = self._planner(goal.planner)
        except (InstructionError, ValueError) as exc:
            return finish(False, f"rejected: {exc}", "validation")
        context["planner"] = planner.name
        report("screening", 0.0, "checking the instruction is safe")
        verdict = screen(goal.instruction, planner.judge if self._planner_safety else None,
                         planner.name)
        if verdict.refused:
            return finish(False, f"refused as unsafe ({verdict.decided_by}): {verdict.reason}",
                          "safety", refused=True)

        # 2. The plan: the planner's, or the goal's program run in the sandbox.
        try:
            if goal.program:
                plan = run_program(goal.program, self._locate, goal.instruction,
                                   planner="program", time_limit_s=self._program_limit)
            else:
                plan = planner.plan(goal.instruction, locate=self._locate)
        except PlanError as exc:
            return finish(False, f"rejected: {exc}", "validation")
        context["plan"] = plan
        feedback.step_count = len(plan.steps)
        first = plan.steps[0].spec
        report("screening", 0.0, f"understood: {len(plan.steps)} step(s), first: "
                                 f"{first.kind} the {first.object}")
        initial, _ = self._snapshot(plan)

        # 3. The steps, each checked and retried; 4. the end state.
        def on_attempt(index: int, attempt: int, previous: StepOutcome | None) -> None:
            feedback.step_index, feedback.attempt = index, attempt
            feedback.step = plan.steps[index].instruction
            if previous is not None:
                feedback.last_step_result = ("succeeded" if previous.success
                                             else f"failed: {previous.reason}")
                feedback.last_step_check = previous.check

        def run_step(step: Step, index: int, attempt: int) -> StepOutcome:
            outcome = self._run_step(goal_handle, step, plan, goal.policy, t0, limit, report)
            context["succeeded"] = index + 1 if outcome.success else index
            return outcome

        def final_check(plan: Plan) -> StepOutcome | None:
            final, check = self._snapshot(plan)
            if initial is None or final is None:
                return None
            verdict = judge_all([s.spec for s in plan.steps], initial, final, self._criteria)
            return StepOutcome("succeeded" if verdict.success else "failed", verdict.reason, check)

        outcome = execute_plan(plan, run_step, retries, final_check, on_attempt)
        self._halt()
        return finish(outcome.success, outcome.reason, outcome.check,
                      canceled=outcome.status == "canceled")

    def _run_step(self, goal_handle, step: Step, plan: Plan, policy: str, t0: float,
                  limit: float, report) -> StepOutcome:
        """One attempt at one atomic step: backbone episode, decoder, wait, judge."""
        spec = step.spec
        initial, _ = self._snapshot(plan)
        t_step = self._now()
        report("planning", 0.0, f"planning how to {spec.kind} the {spec.object}")
        try:
            started = self._call(self._start_episode,
                                 StartEpisode.Request(instruction=step.instruction,
                                                      task=spec.kind, policy=policy,
                                                      request_id=uuid.uuid4().hex),
                                 "start episode")
            if not started.success:
                return StepOutcome("failed", f"the backbone cannot do it: {started.message}",
                                   "policy")
            run = self._call(self._decoder_start, Trigger.Request(), "start decoder")
            if not run.success:
                self._halt()
                return StepOutcome("failed", f"the decoder did not start: {run.message}", "policy")
        except RuntimeError as exc:
            self._halt()
            return StepOutcome("stack", str(exc), "policy")

        status, done_at = None, None
        last_clock, last_clock_wall = self._now(), time.monotonic()
        while rclpy.ok():
            now = self._now()
            if now != last_clock:
                last_clock, last_clock_wall = now, time.monotonic()
            elif time.monotonic() - last_clock_wall > self._clock_stall_timeout:
                self._halt()
                return StepOutcome("stack", "the robot's clock stopped (simulator or driver gone)",
                                   "policy")
            if goal_handle.is_cancel_requested:
                self._halt()
                return StepOutcome("canceled", "canceled: the robot stopped and holds its position",
                                   "policy")
            if now - t0 > limit:
                self._halt()
                return StepOutcome("time_limit", f"time limit of {limit:.0f} s exceeded", "policy")
            status = self._status
            fresh = status is not None and time_to_sec(status.header.stamp) >= t_step
            if fresh and status.instruction == step.instruction:
                if status.failed:
                    self._halt()
                    return StepOutcome("failed", f"the policy failed: {status.message}", "policy")
                report("executing", float(status.progress), status.description)
                if status.done:
                    done_at = now if done_at is None else done_at
                    if now - done_at >= self._settle:
                        break
            time.sleep(0.05)

        report("verifying", 1.0, "checking the outcome")
        self._halt()        # the arms hold still while the outcome is judged
        final, check = self._snapshot(plan)
        if initial is not None and final is not None:
            verdict = judge(spec, initial, final, self._criteria)
            return StepOutcome("succeeded" if verdict.success else "failed", verdict.reason, check)
        done = bool(status and status.done)
        return StepOutcome("succeeded" if done else "failed",
                           "the policy reports its plan complete (no ground truth)", "policy")


def main(args=None) -> int:
    # Several threads: a goal's execute callback waits while service answers and status arrive.
    return run_node(InstructionServer, "instruction_server", args, threads=4)


if __name__ == "__main__":
    raise SystemExit(main())
