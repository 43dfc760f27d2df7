"""The cloud backbone over real localhost websockets: PolicyServer serving a policy, RemotePolicy
and openpi's own client querying it, timeouts, retries, reconnects, bad requests, `bimanual-vla
serve`, and the backbone node in remote mode."""
import os
import re
import signal
import socket
import threading
import time

import numpy as np
import pytest
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from bimanual_core.config import load_embodiment
from vla_backbone_node import policy as policy_module
from vla_backbone_node.kinematics import robot_kinematics
from vla_backbone_node.policy import (Policy, PolicyError, PolicyObservation, PolicyState,
                                      make_policy, register_policy)
from vla_backbone_node.remote import PROTOCOL, PolicyServer, RemotePolicy
from vla_backbone_node.zero_shot import ObjectLocation, ZeroShotPolicy

EMB = load_embodiment("aloha2")
H, D = EMB.chunk_horizon, EMB.action_dim
SCENE = {"red cube": ObjectLocation(np.array([-0.08, 0.52, 0.02]), None, np.full(3, 0.04))}
PICK = "pick up the red cube"
F32 = 1e-6     # actions cross the wire as float32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uri(port: int) -> str:
    return f"ws://127.0.0.1:{port}"


def scripted_chunk(obs: PolicyObservation) -> np.ndarray:
    """A chunk that depends on the observation, so that a stale reply would show."""
    return np.tile(obs.joint_positions, (H, 1)) + 1e-3 * obs.stamp + 1e-4 * np.arange(H)[:, None]


class Scripted(Policy):
    """Answers scripted_chunk after `delay` s; the instruction "crash" makes infer raise a bug."""

    name = "scripted"

    def __init__(self, embodiment=EMB, delay: float = 0.0, horizon=None):
        super().__init__(embodiment, horizon)
        self.delay = delay
        self.resets: list[tuple[str, str]] = []
        self.seen: list[tuple[PolicyObservation, np.ndarray | None]] = []
        self._state = PolicyState()

    def reset(self, instruction, task=""):
        self.resets.append((instruction, task))
        self._state = PolicyState("planning", description=f"ready to {instruction}")

    def infer(self, observation, conditioning=None):
        if self.resets[-1][0] == "crash":
            raise RuntimeError("boom")
        self.seen.append((observation, conditioning))
        time.sleep(self.delay)
        self._state = PolicyState("executing", progress=0.5, description="scripting")
        return scripted_chunk(observation)

    def stop(self):
        self._state = PolicyState()

    def status(self):
        return self._state


@pytest.fixture(scope="module")
def kinematics():
    return robot_kinematics(EMB)


def zero_shot(kinematics) -> ZeroShotPolicy:
    return ZeroShotPolicy(EMB, SCENE.get, kinematics=kinematics)


def test_remote_chunks_equal_the_local_policy(kinematics):
    local = zero_shot(kinematics)
    local.reset(PICK, "pick")
    image = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    with PolicyServer(zero_shot(kinematics), port=0) as server:
        remote = make_policy("remote", EMB, uri=uri(server.port), timeout_s=20.0, retries=0)
        assert isinstance(remote, RemotePolicy) and remote.status().phase == "idle"
        remote.reset(PICK, "pick")
        assert remote.server_metadata["protocol"] == PROTOCOL and remote.native
        assert remote.status() == local.status()      # the server's status, "planning"
        for stamp in (100.0, 100.5, 103.0):
            obs = PolicyObservation(stamp, EMB.home, {"cam_high": image})
            chunk = remote.infer(obs, conditioning=np.tile(EMB.home, (5, 1)))
            assert chunk.shape == (H, D)
            np.testing.assert_allclose(chunk, local.infer(obs), atol=F32)
            assert remote.status() == local.status()
        assert remote.status().phase == "executing" and "red cube" in remote.status().description

        last = remote.last_latency
        assert 0 < last.inference_ms < last.total_ms
        assert last.network_ms == pytest.approx(last.total_ms - last.inference_ms)
        stats = remote.latency_stats()
        assert stats["count"] == 3 and stats["failures"] == 0
        for kind in ("inference", "network", "total"):
            assert 0 < stats[f"{kind}_p50_ms"] <= stats[f"{kind}_p99_ms"]

        remote.stop()
        assert remote.status().phase == "idle" and server.policy.status().phase == "idle"
        with pytest.raises(PolicyError, match="no episode"):
            remote.infer(PolicyObservation(104.0, EMB.home))
        # The server's refusals come back as PolicyError, and its status (failed) with them.
        with pytest.raises(PolicyError, match="remote policy: cannot interpret"):
            remote.reset("do a backflip")
        assert remote.status().failed and "cannot interpret" in remote.status().message
        remote.close()


def test_images_stamp_and_conditioning_cross_the_wire():
    policy = Scripted()
    image = np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    conditioning = np.linspace(0, 1, 3 * D).reshape(3, D)
    with PolicyServer(policy, port=0) as server:
        remote = RemotePolicy(EMB, uri(server.port), timeout_s=5.0)
        remote.reset("wave", "greet")
        obs = PolicyObservation(12.5, EMB.home, {"cam_high": image, "cam_low": image[::2]})
        np.testing.assert_allclose(remote.infer(obs, conditioning), scripted_chunk(obs), atol=F32)
        seen, seen_conditioning = policy.seen[-1]
        assert policy.resets == [("wave", "greet")] and seen.instruction == "wave"
        assert seen.stamp == 12.5
        np.testing.assert_array_equal(seen.images["cam_high"], image)   # CHW on the wire
        np.testing.assert_array_equal(seen.images["cam_low"], image[::2])
        np.testing.assert_array_equal(seen_conditioning, conditioning)
        remote.close()


def test_openpi_client_gets_actions(kinematics):
    local = zero_shot(kinematics)
    local.reset(PICK)
    with PolicyServer(zero_shot(kinematics), port=0) as server:
        client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
        meta = client.get_server_metadata()
        assert (meta["embodiment"], meta["action_dim"], meta["horizon"], meta["policy"]) == \
            ("aloha2", D, H, "zero_shot")
        obs = {"state": EMB.home.astype(np.float32), "prompt": PICK,
               "images": {cam: np.zeros((3, 224, 224), np.uint8) for cam in EMB.cameras}}
        result = client.infer(obs)
        assert result["actions"].dtype == np.float32 and result["actions"].shape == (H, D)
        np.testing.assert_allclose(result["actions"], local.infer(PolicyObservation(0, EMB.home)),
                                   atol=F32)
        assert result["server_timing"]["infer_ms"] > 0
        assert result["status"]["phase"] == "executing"
        # openpi's client raises on the error text; its connection still serves.
        with pytest.raises(RuntimeError, match=r"joint_positions has shape \(3,\)"):
            client.infer({"state": np.zeros(3), "prompt": PICK})
        assert client.infer(obs)["actions"].shape == (H, D)


def test_malformed_requests_get_clear_errors_and_the_server_keeps_serving():
    home = EMB.home
    pack = msgpack_numpy.packb
    cases = [
        (b"\xc1", "not msgpack-numpy data"),
        ("hello", "binary msgpack-numpy frames"),
        (pack([1, 2]), "must be a dict, got list"),
        (pack({"images": {}}), "no 'state'"),
        (pack({"state": np.zeros(13)}), r"joint_positions has shape \(13,\), expected \(14,\)"),
        (pack({"state": np.full(D, np.nan)}), "NaN"),
        (pack({"state": home, "images": [1]}), "'images' must map camera names"),
        (pack({"state": home, "images": {"cam_high": np.zeros((2, 4, 4), np.uint8)}}),
         r"'cam_high' has shape \(2, 4, 4\): neither"),
        (pack({"state": home, "images": {"cam_low": np.zeros((3, 4, 4), np.float32)}}),
         "'cam_low' must be a uint8 array"),
        (pack({"state": home, "conditioning": np.zeros((2, 5))}), r"conditioning has shape"),
    ]
    policy = Scripted()
    with PolicyServer(policy, port=0) as server:
        with connect(uri(server.port), proxy=None) as ws:
            assert msgpack_numpy.unpackb(ws.recv(timeout=5))["protocol"] == PROTOCOL
            for payload, match in cases:
                ws.send(payload)
                reply = ws.recv(timeout=5)
                assert isinstance(reply, str) and re.search(match, reply), (match, reply)
            ws.send(pack({"state": home, "prompt": "wave", "stamp": 1.0}))
            reply = msgpack_numpy.unpackb(ws.recv(timeout=5))
            np.testing.assert_allclose(reply["actions"], scripted_chunk(
                PolicyObservation(1.0, home)), atol=F32)
            # A bug in the policy: the traceback, then the connection closes (as openpi does).
            ws.send(pack({"state": home, "prompt": "crash"}))
            reply = ws.recv(timeout=5)
            assert isinstance(reply, str) and "RuntimeError: boom" in reply
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
        remote = RemotePolicy(EMB, uri(server.port), timeout_s=5.0)   # new connections work
        remote.reset("wave")
        assert remote.infer(PolicyObservation(2.0, home)).shape == (H, D)
        remote.close()


def test_timeout_fails_after_the_retries_and_late_replies_are_not_mistaken():
    policy = Scripted(delay=0.6)
    with PolicyServer(policy, port=0) as server:
        remote = RemotePolicy(EMB, uri(server.port), timeout_s=0.2, retries=2)
        remote.reset("wave")
        start = time.monotonic()
        with pytest.raises(PolicyError, match=r"unreachable: the inference request failed 3 "
                                              r"times \(0.2 s each; last: timed out\)"):
            remote.infer(PolicyObservation(1.0, EMB.home))
        assert 0.55 < time.monotonic() - start < 2.0
        assert remote.latency_stats()["failures"] == 1 and "timed out" in remote.last_error
        assert remote.latency_stats()["count"] == 0
        # With time enough it works again, and answers this observation, not an earlier one.
        remote.timeout_s = 10.0
        obs = PolicyObservation(7.0, EMB.home)
        np.testing.assert_allclose(remote.infer(obs), scripted_chunk(obs), atol=F32)
        assert remote.last_error == "" and remote.last_latency.inference_ms >= 600
        remote.close()


def test_unreachable_server_then_restarts_and_the_client_reconnects():
    port = free_port()
    remote = RemotePolicy(EMB, uri(port), timeout_s=2.0, retries=1)
    start = time.monotonic()
    with pytest.raises(PolicyError, match=r"unreachable: a connection failed 2 times.*refused"):
        remote.reset("wave")
    assert time.monotonic() - start < 1.0              # refused at once, not timed out
    obs = PolicyObservation(3.0, EMB.home)
    with PolicyServer(Scripted(), port=port):
        remote.reset("wave")
        np.testing.assert_allclose(remote.infer(obs), scripted_chunk(obs), atol=F32)
    with pytest.raises(PolicyError, match="unreachable"):
        remote.infer(obs)
    restarted = Scripted()
    with PolicyServer(restarted, port=port):
        np.testing.assert_allclose(remote.infer(obs), scripted_chunk(obs), atol=F32)
        assert restarted.resets == [("wave", "")]       # the prompt restarted the episode there
        assert remote.status().phase == "executing"
    restarted = Scripted()
    with PolicyServer(restarted, port=port):           # the old connection is dead: one retry
        np.testing.assert_allclose(remote.infer(obs), scripted_chunk(obs), atol=F32)
    remote.close()


def test_bad_remote_parameters_are_refused():
    for kwargs, match in [({}, "needs the server's uri"), ({"uri": "http://x"}, "bad policy"),
                          ({"uri": "ws://x", "timeout_s": 0}, "timeout_s must be > 0"),
                          ({"uri": "ws://x", "retries": -1}, "retries must be >= 0")]:
        with pytest.raises(ValueError, match=match):
            RemotePolicy(EMB, **kwargs)


def test_cli_serve_serves_until_ctrl_c(monkeypatch, capsys, tmp_path):
    from bimanual_core.cli import main
    monkeypatch.setattr(policy_module, "_REGISTERED", {})
    register_policy("scripted", Scripted)
    assert main(["serve", "--policy", "nope"]) == 2
    assert main(["serve", "--policy", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown policy 'nope'" in err and "no config.json" in err

    port, answers = free_port(), []

    def client():
        try:
            remote = RemotePolicy(EMB, uri(port), timeout_s=2.0, retries=0)
            deadline = time.monotonic() + 20
            while True:
                try:
                    remote.reset("wave")
                    break
                except PolicyError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            answers.append(remote.infer(PolicyObservation(1.0, EMB.home)))
            remote.close()
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=client)
    thread.start()
    try:
        code = main(["serve", "--policy", "scripted", "--host", "127.0.0.1",
                     "--port", str(port)])
    finally:
        thread.join()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"policy 'scripted' for aloha2 on ws://127.0.0.1:{port}" in out
    assert "shutting down" in out
    assert len(answers) == 1 and answers[0].shape == (H, D)
    with pytest.raises(ConnectionRefusedError):            # and the port is closed again
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.slow
def test_backbone_node_in_remote_mode(ros_context, tmp_path, kinematics):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from bimanual_core.config import load_stack
    from bimanual_core.ros_conversions import LATCHED_QOS, RELIABLE_QOS, time_to_sec
    from bimanual_vla.msg import Observation, PolicyStatus
    from bimanual_vla.srv import GetActionChunk, StartEpisode
    from perception_testing import fake_observation, node_process, spin_until

    names = load_stack().interfaces
    node = Node("remote_backbone_test", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    obs_pub = node.create_publisher(Observation, names["observation_topic"], RELIABLE_QOS)
    statuses, diagnostics = [], []
    node.create_subscription(PolicyStatus, names["policy_status_topic"], statuses.append,
                             LATCHED_QOS)
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, RELIABLE_QOS)
    start = node.create_client(StartEpisode, names["start_episode_service"])
    get_chunk = node.create_client(GetActionChunk, names["get_chunk_service"])

    def call(client, request):
        future = client.call_async(request)
        assert spin_until(executor, future.done, timeout_s=30)
        return future.result()

    local = zero_shot(kinematics)
    local.reset(PICK, "pick")
    stamp = 321.0
    with PolicyServer(zero_shot(kinematics), port=0) as server, \
            node_process("vla_backbone_node", {"use_sim_time": False, "policy": "remote",
                                               "remote_uri": uri(server.port),
                                               "remote_timeout_s": 20.0},
                         tmp_path / "backbone.log"):
        for client in (start, get_chunk):
            assert spin_until(executor, client.service_is_ready, timeout_s=30)
        obs_pub.publish(fake_observation(EMB, stamp))
        spin_until(executor, lambda: False, timeout_s=0.5)
        reply = call(start, StartEpisode.Request(instruction=PICK, task="pick"))
        assert reply.success, reply.message
        assert reply.message == "ready to pick up the red cube with the left arm"   # the server's
        reply = call(get_chunk, GetActionChunk.Request(request_id=7))
        assert reply.success, reply.message
        chunk = reply.chunk
        assert chunk.policy_name == "remote" and time_to_sec(chunk.header.stamp) == stamp
        np.testing.assert_allclose(np.array(chunk.actions).reshape(H, D),
                                   local.infer(PolicyObservation(stamp, EMB.home)), atol=F32)
        assert spin_until(executor, lambda: statuses and statuses[-1].phase == "executing",
                          timeout_s=5)
        assert statuses[-1].policy_name == "remote"

        assert spin_until(executor, lambda: diagnostics, timeout_s=5)
        status = diagnostics[-1].status[0]
        values = {kv.key: kv.value for kv in status.values}
        assert status.name == "vla_backbone: remote policy" and status.message == "ok"
        assert values["uri"] == uri(server.port) and values["server_policy"] == "zero_shot"
        assert values["count"] == "1" and values["failures"] == "0"
        assert 0 < float(values["last_inference_ms"]) < float(values["last_total_ms"])
        assert float(values["total_p50_ms"]) == pytest.approx(float(values["last_total_ms"]),
                                                              abs=0.01)
    node.destroy_node()
