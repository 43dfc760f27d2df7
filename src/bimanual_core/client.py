"""A client of a running stack: sends instructions, watches the scene, records a camera.

Used by `bimanual-vla instruct`, `bimanual-vla demo` and the end-to-end tests, so that all three
talk to the stack exactly as a user's program would: over the /execute_instruction action and the
published topics.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np
import rclpy
from action_msgs.msg import GoalStatusArray
from rclpy.action import ActionClient
from rclpy.action.client import ClientGoalHandle
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_action_status_default
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from unique_identifier_msgs.msg import UUID

from bimanual_core.config import load_embodiment, load_stack
from bimanual_core.ros_conversions import (RELIABLE_QOS, SENSOR_QOS, image_to_numpy,
                                           time_to_sec)
from bimanual_vla.action import ExecuteInstruction
from bimanual_vla.msg import Observation, SimObjectArray

# A goal response can be lost when the server answers before its response writer has matched
# this client's reader (discovery still running on a loaded machine: Fast DDS waits 100 ms for
# the match, then drops the answer). A goal unanswered this long is sent again with the same id.
GOAL_RESPONSE_WAIT_S = 5.0
STATUS_WAIT_S = 2.0      # how long a resend's refusal waits for the first send in the status


@dataclass
class InstructionOutcome:
    accepted: bool
    success: bool
    reason: str
    duration_s: float
    success_check: str
    status: str          # "succeeded", "aborted", "canceled", "rejected", "unreachable", "abandoned"
    refused: bool = False              # the server's safety screen refused the instruction
    steps: tuple[str, ...] = ()        # the atomic steps the server planned
    steps_succeeded: int = 0
    planner: str = ""


class StackClient:
    """Owns an rclpy context + node spun in a background thread."""

    def __init__(self, embodiment: str = "aloha2", record_camera: str | None = None,
                 domain_id: int | None = None):
        self.context = rclpy.Context()
        kwargs = {"domain_id": domain_id} if domain_id is not None else {}
        rclpy.init(context=self.context, **kwargs)
        self.node = Node("bimanual_vla_client", context=self.context)
        names = load_stack().interfaces
        emb = load_embodiment(embodiment)
        self._action = ActionClient(self.node, ExecuteInstruction, names["execute_instruction_action"])
        self._listed_goals: set[bytes] = set()       # goal ids the server's status has shown
        self.node.create_subscription(
            GoalStatusArray, names["execute_instruction_action"] + "/_action/status",
            self._on_goal_status, qos_profile_action_status_default)
        self.frames: list[np.ndarray] = []
        self.objects_first: SimObjectArray | None = None
        self.objects_last: SimObjectArray | None = None
        self.sim_time: float | None = None
        self.observations = 0
        self._lock = threading.Lock()
        self.node.create_subscription(Clock, "/clock", self._on_clock, SENSOR_QOS)
        self.node.create_subscription(Observation, names["observation_topic"],
                                      self._on_observation, SENSOR_QOS)
        if emb.simulation.get("objects_topic"):
            self.node.create_subscription(SimObjectArray, emb.simulation["objects_topic"],
                                          self._on_objects, RELIABLE_QOS)
        if record_camera:
            self.node.create_subscription(Image, emb.camera(record_camera).image_topic,
                                          self._on_image, SENSOR_QOS)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def _on_clock(self, msg: Clock) -> None:
        self.sim_time = time_to_sec(msg.clock)

    def _on_goal_status(self, msg: GoalStatusArray) -> None:
        with self._lock:
            self._listed_goals.update(bytes(s.goal_info.goal_id.uuid) for s in msg.status_list)

    def _on_observation(self, _msg: Observation) -> None:
        self.observations += 1

    def _on_objects(self, msg: SimObjectArray) -> None:
        with self._lock:
            if self.objects_first is None:
                self.objects_first = msg
            self.objects_last = msg

    def _on_image(self, msg: Image) -> None:
        frame = image_to_numpy(msg, want_rgb=True)
        with self._lock:
            self.frames.append(frame)

    def wait_ready(self, timeout: float, need_observation: bool = True) -> bool:
        """True once the action server is up and (optionally) observations flow."""
        deadline = time.monotonic() + timeout
        if not self._action.wait_for_server(timeout_sec=timeout):
            return False
        while need_observation and self.observations == 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def execute(self, instruction: str, task: str = "", policy: str = "", time_limit_s: float = 0.0,
                on_feedback: Callable[[ExecuteInstruction.Feedback], None] | None = None,
                server_timeout: float = 30.0, cancel_after_s: float | None = None,
                give_up: Callable[[], str | None] | None = None, planner: str = "",
                program: str = "", step_retries: int = -1) -> InstructionOutcome:
        """Send one goal and wait for its result. Ctrl-C cancels the goal before re-raising.
        `planner`, `program` and `step_retries` as in ExecuteInstruction.action ("" / -1: the
        server's).

        `give_up` is polled while waiting: when it returns a reason (e.g. a node of the stack
        died, so no result may ever come), the goal is canceled and the outcome is "abandoned".
        """
        if not self._action.wait_for_server(timeout_sec=server_timeout):
            return InstructionOutcome(False, False, "no /execute_instruction server is running "
                                      "(start the stack with `bimanual-vla up`)", 0.0, "",
                                      "unreachable")
        goal = ExecuteInstruction.Goal(instruction=instruction, task=task, policy=policy,
                                       time_limit_s=float(time_limit_s), planner=planner,
                                       program=program, step_retries=int(step_retries))
        feedback_cb = (lambda fb: on_feedback(fb.feedback)) if on_feedback else None
        handle = self._send_goal(goal, feedback_cb, server_timeout)
        if handle is None:
            return InstructionOutcome(False, False, f"the server did not answer the goal in "
                                      f"{server_timeout:g} s", 0.0, "", "unreachable")
        if not handle.accepted:
            return InstructionOutcome(False, False, "the server rejected the goal", 0.0, "",
                                      "rejected")
        result_future = handle.get_result_async()
        started = time.monotonic()
        try:
            while not result_future.done():
                if cancel_after_s is not None and time.monotonic() - started > cancel_after_s:
                    self._wait(handle.cancel_goal_async(), 10.0)
                    cancel_after_s = None
                why = give_up() if give_up is not None else None
                if why:
                    self._wait(handle.cancel_goal_async(), 2.0)
                    return InstructionOutcome(True, False, why, time.monotonic() - started, "",
                                              "abandoned")
                time.sleep(0.02)
        except KeyboardInterrupt:
            self._wait(handle.cancel_goal_async(), 5.0)
            self._wait(result_future, 10.0)
            raise
        wrapped = result_future.result()
        status = {4: "succeeded", 5: "canceled", 6: "aborted"}.get(wrapped.status, str(wrapped.status))
        r = wrapped.result
        return InstructionOutcome(True, r.success, r.reason, r.duration_s, r.success_check, status,
                                  r.refused, tuple(r.steps), r.steps_succeeded, r.planner)

    def _send_goal(self, goal, feedback_cb, timeout: float) -> ClientGoalHandle | None:
        """Send `goal` until the server answers (None after `timeout`). Resends keep the goal id:
        a server that already accepted it (its answer lost) refuses the copy, and its status
        topic then lists the id, which makes the first send the accepted one."""
        goal_id = UUID(uuid=list(uuid.uuid4().bytes))
        deadline = time.monotonic() + timeout
        resent = False
        while (left := deadline - time.monotonic()) > 0:
            sent = self._action.send_goal_async(goal, feedback_callback=feedback_cb,
                                                goal_uuid=goal_id)
            handle = self._wait(sent, min(GOAL_RESPONSE_WAIT_S, left))
            if handle is None:
                resent = True
                continue
            if handle.accepted or not resent:
                return handle
            if self._wait_listed(bytes(goal_id.uuid), STATUS_WAIT_S):
                accepted = ExecuteInstruction.Impl.SendGoalService.Response(accepted=True)
                return ClientGoalHandle(self._action, goal_id, accepted)
            return handle
        return None

    def _wait_listed(self, goal_id: bytes, timeout: float) -> bool:
        def listed():
            with self._lock:
                return goal_id in self._listed_goals
        return wait_until(listed, timeout)

    def call(self, service_client, request, timeout: float):
        """Call a service through this client's node; the response, or None after `timeout`."""
        return self._wait(service_client.call_async(request), timeout)

    @staticmethod
    def _wait(future, timeout: float):
        return future.result() if wait_until(future.done, timeout) else None

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)

    def __enter__(self) -> "StackClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_until(predicate: Callable[[], bool], timeout: float, period: float = 0.01) -> bool:
    """Poll `predicate` every `period` s until it holds (True) or `timeout` s pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(period)
    return True


def format_feedback(fb: ExecuteInstruction.Feedback) -> str:
    step = (f"step {fb.step_index + 1}/{fb.step_count}"
            + (f" (try {fb.attempt})" if fb.attempt > 1 else "") + " ") if fb.step_count > 1 else ""
    return (f"[{fb.elapsed_s:6.1f} s] {step}{fb.phase:<10} {fb.progress * 100:5.1f} %  "
            f"{fb.description}")
