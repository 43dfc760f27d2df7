"""vla_backbone `inject_delay_s`: the emulated remote-backbone latency shows up in the service
round trip (what the decoder measures as backbone latency), not in the policy's inference time."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perception_testing import fake_observation, node_process, serve_fake_er, spin_until

DELAY_S = 0.4


@pytest.mark.slow
def test_injected_delay_holds_back_every_chunk_answer(ros_context, tmp_path):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from bimanual_core.config import load_embodiment, load_stack
    from bimanual_core.ros_conversions import RELIABLE_QOS, time_to_sec
    from bimanual_vla.msg import Observation
    from bimanual_vla.srv import GetActionChunk, StartEpisode

    emb = load_embodiment("aloha2")
    names = load_stack().interfaces
    node = Node("backbone_delay_test", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)

    serve_fake_er(node, names["er_query_service"], {"red cube": (-0.08, 0.52, 0.02)})
    obs_pub = node.create_publisher(Observation, names["observation_topic"], RELIABLE_QOS)
    start = node.create_client(StartEpisode, names["start_episode_service"])
    get_chunk = node.create_client(GetActionChunk, names["get_chunk_service"])

    def observation(stamp_s):
        return fake_observation(emb, stamp_s)

    def call(client, request, step=None):
        sent = time.monotonic()
        future = client.call_async(request)
        assert spin_until(executor, future.done, timeout_s=15, step=step)
        return future.result(), time.monotonic() - sent

    params = {"use_sim_time": False, "inject_delay_s": DELAY_S}
    with node_process("vla_backbone_node", params, tmp_path / "backbone.log"):
        for client in (start, get_chunk):
            assert spin_until(executor, client.service_is_ready, timeout_s=30)
        obs_pub.publish(observation(100.0))
        assert spin_until(executor, lambda: call(start, StartEpisode.Request(
            instruction="pick up the red cube", task="pick"))[0].success, timeout_s=10)

        # While an answer is held back, a newer observation is published; the next answer is
        # computed from it, and every answer takes at least the injected delay.
        published = []

        def publish_newer():
            if not published:
                published.append(True)
                obs_pub.publish(observation(200.0))
        first, first_rtt = call(get_chunk, GetActionChunk.Request(request_id=1), publish_newer)
        second, second_rtt = call(get_chunk, GetActionChunk.Request(request_id=2))
        assert first.success and second.success, (first.message, second.message)
        assert time_to_sec(second.chunk.header.stamp) == pytest.approx(200.0)
        for reply, rtt in ((first, first_rtt), (second, second_rtt)):
            assert DELAY_S <= rtt < DELAY_S + 1.0, rtt
            assert reply.chunk.inference_ms < 1e3 * DELAY_S    # the delay is not inference
    node.destroy_node()


def test_negative_delay_is_refused(ros_domain, tmp_path):
    """A negative inject_delay_s stops the node at start-up with the reason in its log."""
    exe = Path(sys.executable).parent / "vla_backbone_node"
    log = tmp_path / "backbone.log"
    with open(log, "w") as out:
        code = subprocess.run([str(exe), "--ros-args", "-p", "inject_delay_s:=-0.1"],
                              stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ),
                              timeout=60).returncode
    assert code != 0
    assert "inject_delay_s must be >= 0" in log.read_text()
