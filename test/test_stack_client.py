"""StackClient against a real rclpy action server in this process: a goal whose answer is lost
(as when the server's response writer has not matched the client yet) is resent with the same id,
and the first send, accepted by the server, is the goal the client follows to its result."""
import threading

import pytest
from rclpy.action import ActionServer, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.task import Future

from bimanual_core import client as client_module
from bimanual_core.client import StackClient
from bimanual_core.config import load_stack
from bimanual_vla.action import ExecuteInstruction


class InstructionServerDouble:
    """An /execute_instruction server that counts the goals it executes."""

    def __init__(self, context, accept: bool = True):
        self.node = Node("instruction_server_double", context=context)
        self.executed: list[str] = []
        self.requests = 0

        def on_goal(_goal):
            self.requests += 1
            return GoalResponse.ACCEPT if accept else GoalResponse.REJECT

        def execute(handle):
            self.executed.append(handle.request.instruction)
            handle.succeed()
            return ExecuteInstruction.Result(success=True, reason=f"did {handle.request.instruction}")

        self.server = ActionServer(self.node, ExecuteInstruction,
                                   load_stack().interfaces["execute_instruction_action"], execute,
                                   goal_callback=on_goal, callback_group=ReentrantCallbackGroup())
        self.executor = MultiThreadedExecutor(num_threads=2, context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self):
        self.executor.shutdown(timeout_sec=1.0)
        self.server.destroy()
        self.node.destroy_node()


def lose_first_goal_answer(client: StackClient):
    """The first goal request reaches the server; its answer never reaches the caller."""
    send = client._action.send_goal_async
    calls = []

    def send_goal_async(*args, **kwargs):
        calls.append(kwargs.get("goal_uuid"))
        future = send(*args, **kwargs)
        return Future() if len(calls) == 1 else future
    client._action.send_goal_async = send_goal_async
    return calls


@pytest.fixture
def server_and_client(ros_context, ros_domain, monkeypatch):
    monkeypatch.setattr(client_module, "GOAL_RESPONSE_WAIT_S", 1.0)
    servers = []
    with StackClient(domain_id=ros_domain) as client:
        yield (lambda accept=True: servers.append(InstructionServerDouble(ros_context, accept))
               or servers[-1]), client
        for server in servers:
            server.close()


def test_a_lost_goal_answer_is_resent_and_the_accepted_goal_followed_once(server_and_client):
    make_server, client = server_and_client
    server = make_server()
    assert client.wait_ready(30.0, need_observation=False)
    sends = lose_first_goal_answer(client)
    outcome = client.execute("wave", server_timeout=20.0)
    assert outcome.accepted and outcome.success and outcome.reason == "did wave", outcome
    assert len(sends) == 2 and sends[0] == sends[1]          # resent under the same goal id
    assert server.executed == ["wave"]                       # the goal ran once, not twice


def test_a_rejected_goal_is_reported_as_rejected(server_and_client):
    make_server, client = server_and_client
    server = make_server(accept=False)
    assert client.wait_ready(30.0, need_observation=False)
    outcome = client.execute("wave", server_timeout=20.0)
    assert not outcome.accepted and outcome.status == "rejected", outcome
    # >= 1: right after discovery the first answer can itself be lost, and the goal resent.
    assert server.requests >= 1 and server.executed == []
