"""ROS 2 node `instruction_server`: the /execute_instruction action server.

A goal is a natural-language instruction. The server screens it (an instruction the stack cannot
execute is answered with success=false and the reason, before anything moves), starts an episode
on the backbone, lets the decoder execute the backbone's chunks, streams feedback (phase, progress,
what the robot is doing), and judges success from the simulator's ground truth when the simulator
runs (otherwise from the policy's report, and the result says which check decided).

Goals are accepted and then aborted with a reason when malformed, because a plain goal rejection
carries no reason to the client. One instruction executes at a time; cancelling stops the robot and
holds it in place.

Parameters:
  embodiment (str, "aloha2"): config/<embodiment>.yaml.
  default_time_limit_s (float, 60): limit when a goal gives 0; in the node's (sim) time.
  max_time_limit_s (float, 600): goals asking for more are refused.
  service_timeout_s (float, 30): wall-clock limit for each call to the backbone or decoder.
  service_resend_s (float, 2): a call with no reply yet is sent again this often (wall clock).
  settle_s (float, 1.5): time the policy's last chunk is given to finish before success is judged.
  clock_stall_timeout_s (float, 15): wall-clock time without the ROS clock advancing (the simulator
    or robot is gone) before the goal aborts.
"""
from __future__ import annotations

import math
import threading
import time
import uuid

import rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from std_srvs.srv import Trigger

from bimanual_core.config import load_embodiment, load_stack
from bimanual_core.node_runner import run_node
from bimanual_core.instructions import InstructionError, parse_instruction
from bimanual_core.ros_conversions import RELIABLE_QOS, time_to_sec
from bimanual_vla.action import ExecuteInstruction
from bimanual_vla.msg import PolicyStatus, SimObjectArray
from bimanual_vla.srv import StartEpisode
from instruction_server.success import (ObjectState, Verdict, judge, load_success_criteria,
                                        object_states)


class InstructionServer(Node):
    def __init__(self) -> None:
        super().__init__("instruction_server")
        self.declare_parameter("embodiment", "aloha2")
        self.declare_parameter("default_time_limit_s", 60.0)
        self.declare_parameter("max_time_limit_s", 600.0)
        self.declare_parameter("service_timeout_s", 30.0)
        self.declare_parameter("service_resend_s", 2.0)
        self.declare_parameter("settle_s", 1.5)
        self.declare_parameter("clock_stall_timeout_s", 15.0)
        p = lambda name: self.get_parameter(name).value  # noqa: E731
        self._default_limit = float(p("default_time_limit_s"))
        self._max_limit = float(p("max_time_limit_s"))
        self._service_timeout = float(p("service_timeout_s"))
        self._service_resend = float(p("service_resend_s"))
        self._settle = float(p("settle_s"))
        self._clock_stall_timeout = float(p("clock_stall_timeout_s"))
        for name in ("default_time_limit_s", "max_time_limit_s", "service_timeout_s",
                     "service_resend_s"):
            if not float(p(name)) > 0:
                raise ValueError(f"parameter {name} must be > 0")

        embodiment = load_embodiment(p("embodiment"))
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

    def _call(self, client, request, what: str):
        """Call a service and wait (this runs in an executor thread); raise with a reason.

        The request is sent again every `service_resend_s` until a reply comes: Fast DDS drops a
        reply whose reader it has not matched yet (a known discovery race on busy machines), and
        the first of the replies is taken. A repeat is harmless: hold and stop are idempotent,
        StartEpisode carries a request_id the backbone answers once, and a repeated decoder start
        only drops the queued chunks and carries on, rate-limited, from the last command."""
        if not client.wait_for_service(timeout_sec=self._service_timeout):
            raise RuntimeError(f"{what}: service {client.srv_name} is not available")
        futures = [client.call_async(request)]
        start = time.monotonic()
        try:
            while not any(f.done() for f in futures):
                elapsed = time.monotonic() - start
                if elapsed > self._service_timeout:
                    raise RuntimeError(f"{what}: no answer from {client.srv_name} within "
                                       f"{self._service_timeout:.0f} s")
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

    # --- the goal -----------------------------------------------------------------------------
    def _execute(self, goal_handle) -> ExecuteInstruction.Result:
        t_wall0 = time.monotonic()

        def finish(success: bool, reason: str, check: str, canceled: bool = False):
            result = ExecuteInstruction.Result(success=success, reason=reason, success_check=check,
                                               duration_s=time.monotonic() - t_wall0)
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
            return self._run(goal_handle, finish)
        finally:
            self._busy.release()

    def _run(self, goal_handle, finish):
        goal = goal_handle.request
        t0 = self._now()
        feedback = ExecuteInstruction.Feedback()
        last_sent = {"what": None, "at": 0.0}

        def report(phase: str, progress: float, description: str) -> None:
            """Send feedback when something changed, and at least once a second."""
            what = (phase, round(progress, 2), description)
            if what == last_sent["what"] and time.monotonic() - last_sent["at"] < 1.0:
                return
            last_sent.update(what=what, at=time.monotonic())
            feedback.phase, feedback.progress, feedback.description = phase, progress, description
            feedback.elapsed_s = self._now() - t0
            goal_handle.publish_feedback(feedback)

        try:
            spec = parse_instruction(goal.instruction, goal.task)
            limit = self._time_limit(goal.time_limit_s)
        except InstructionError as exc:
            return finish(False, f"rejected: {exc}", "validation")
        report("screening", 0.0, f"understood: {spec.kind} the {spec.object}")
        initial = dict(self._objects) if self._objects is not None else None

        report("planning", 0.0, f"planning how to {spec.kind} the {spec.object}")
        try:
            started = self._call(self._start_episode,
                                 StartEpisode.Request(instruction=goal.instruction, task=spec.kind,
                                                      policy=goal.policy,
                                                      request_id=uuid.uuid4().hex),
                                 "start episode")
            if not started.success:
                return finish(False, f"the backbone cannot do it: {started.message}", "policy")
            run = self._call(self._decoder_start, Trigger.Request(), "start decoder")
            if not run.success:
                self._halt()
                return finish(False, f"the decoder did not start: {run.message}", "policy")
        except RuntimeError as exc:
            self._halt()
            return finish(False, str(exc), "policy")

        status, done_at = None, None
        last_clock, last_clock_wall = self._now(), time.monotonic()
        while rclpy.ok():
            now = self._now()
            if now != last_clock:
                last_clock, last_clock_wall = now, time.monotonic()
            elif time.monotonic() - last_clock_wall > self._clock_stall_timeout:
                self._halt()
                return finish(False, "the robot's clock stopped (simulator or driver gone)", "policy")
            if goal_handle.is_cancel_requested:
                self._halt()
                return finish(False, "canceled: the robot stopped and holds its position", "policy",
                              canceled=True)
            if now - t0 > limit:
                self._halt()
                return finish(False, f"time limit of {limit:.0f} s exceeded", "policy")
            status = self._status
            fresh = status is not None and time_to_sec(status.header.stamp) >= t0
            if fresh and status.instruction == goal.instruction:
                if status.failed:
                    self._halt()
                    return finish(False, f"the policy failed: {status.message}", "policy")
                report("executing", float(status.progress), status.description)
                if status.done:
                    done_at = now if done_at is None else done_at
                    if now - done_at >= self._settle:
                        break
            time.sleep(0.05)

        report("verifying", 1.0, "checking the outcome")
        if initial is not None and self._objects is not None:
            verdict, check = judge(spec, initial, self._objects, self._criteria), "sim_state"
        else:
            verdict, check = Verdict(bool(status and status.done),
                                     "the policy reports its plan complete (no ground truth)"), "policy"
        self._halt()
        return finish(verdict.success, verdict.reason, check)


def main(args=None) -> int:
    # Several threads: a goal's execute callback waits while service answers and status arrive.
    return run_node(InstructionServer, "instruction_server", args, threads=4)


if __name__ == "__main__":
    raise SystemExit(main())
