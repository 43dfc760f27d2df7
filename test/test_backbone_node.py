"""vla_backbone node across processes: a fake ER service and observation stream in this process,
episodes and action chunks served by the node process."""
import numpy as np
import pytest

from perception_testing import fake_observation, node_process, serve_fake_er, spin_until

CUBE = (-0.08, 0.52, 0.02)


def test_joint_state_is_reordered_by_name_and_checked():
    from vla_backbone_node.node import ObservationRejected, joint_vector
    expected = ["a", "b", "c"]
    np.testing.assert_array_equal(joint_vector(["c", "x", "a", "b"], [3, 9, 1, 2], expected),
                                  [1, 2, 3])
    np.testing.assert_array_equal(joint_vector([], [1, 2, 3], expected), [1, 2, 3])
    for names, positions, match in [(["a", "b"], [1, 2], "lacks joints"),
                                    (["a", "b", "c"], [1, 2], "3 names but 2 positions"),
                                    ([], [1, 2], "2 unnamed positions"),
                                    (["a", "b", "c"], [1, np.nan, 3], "NaN")]:
        with pytest.raises(ObservationRejected, match=match):
            joint_vector(names, positions, expected)


@pytest.mark.slow
def test_backbone_serves_chunks_stamped_with_the_observation(ros_context, tmp_path):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from std_srvs.srv import Trigger

    from bimanual_core.config import load_embodiment, load_stack
    from bimanual_core.ros_conversions import LATCHED_QOS, RELIABLE_QOS, time_to_sec
    from bimanual_vla.msg import ActionChunk, Observation, PolicyStatus
    from bimanual_vla.srv import ErQuery, GetActionChunk, StartEpisode

    emb = load_embodiment("aloha2")
    names = load_stack().interfaces
    node = Node("backbone_test_driver", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)

    er_queries = []
    serve_fake_er(node, names["er_query_service"], {"red cube": CUBE}, er_queries)
    obs_pub = node.create_publisher(Observation, names["observation_topic"], RELIABLE_QOS)
    chunks, statuses = [], []
    node.create_subscription(ActionChunk, names["action_chunk_topic"], chunks.append,
                             RELIABLE_QOS)
    node.create_subscription(PolicyStatus, names["policy_status_topic"], statuses.append,
                             LATCHED_QOS)
    start = node.create_client(StartEpisode, names["start_episode_service"])
    stop = node.create_client(Trigger, names["stop_episode_service"])
    get_chunk = node.create_client(GetActionChunk, names["get_chunk_service"])

    def observation(stamp_s):
        """Joint state deliberately in reverse order: the node must reorder it by name."""
        return fake_observation(emb, stamp_s, reverse_joints=True)

    def call(client, request):
        future = client.call_async(request)
        assert spin_until(executor, future.done, timeout_s=15)
        return future.result()

    with node_process("vla_backbone_node", {"use_sim_time": False}, tmp_path / "backbone.log"):
        for client in (start, stop, get_chunk):
            assert spin_until(executor, client.service_is_ready, timeout_s=30)

        # Before any observation: no episode can start, no chunk is served.
        reply = call(start, StartEpisode.Request(instruction="pick up the red cube"))
        assert not reply.success and "no observation" in reply.message
        reply = call(get_chunk, GetActionChunk.Request(request_id=1))
        assert not reply.success and "no episode" in reply.message

        # One distinctive observation; the node keeps it as the latest valid one.
        stamp = 1234.56
        obs_pub.publish(observation(stamp))
        spin_until(executor, lambda: False, timeout_s=0.5)
        broken = observation(stamp + 1.0)
        broken.joint_state.position[3] = float("nan")
        obs_pub.publish(broken)
        spin_until(executor, lambda: False, timeout_s=0.3)

        reply = call(start, StartEpisode.Request(instruction="do a backflip"))
        assert not reply.success and "cannot interpret" in reply.message
        reply = call(start, StartEpisode.Request(instruction="pick up the green banana"))
        assert not reply.success and "green banana not visible" in reply.message
        reply = call(start, StartEpisode.Request(instruction="pick up the red cube",
                                                 task="pick", request_id="episode-1"))
        assert reply.success, reply.message
        assert (ErQuery.Request.BOXES, "red cube", True) in er_queries
        # A re-sent request (its reply lost) gets the same answer without a second reset.
        queries_before = len(er_queries)
        again = call(start, StartEpisode.Request(instruction="pick up the red cube",
                                                 task="pick", request_id="episode-1"))
        assert (again.success, again.message) == (reply.success, reply.message)
        assert len(er_queries) == queries_before

        reply = call(get_chunk, GetActionChunk.Request(request_id=42))
        assert reply.success, reply.message
        chunk = reply.chunk
        assert time_to_sec(chunk.header.stamp) == pytest.approx(stamp, abs=1e-6)
        assert chunk.horizon == emb.chunk_horizon == 50
        assert list(chunk.joint_names) == emb.joint_names
        assert chunk.request_id == 42 and chunk.policy_name == "zero_shot"
        assert time_to_sec(chunk.control_period) == pytest.approx(0.02)
        actions = np.array(chunk.actions).reshape(50, 14)
        np.testing.assert_allclose(actions[0], emb.home, atol=1e-9)   # reordered joint state
        assert chunk.inference_ms > 0

        # Conditioning of the wrong size is refused; the right size is accepted.
        bad = GetActionChunk.Request(request_id=43, conditioning=[0.0] * 10,
                                     conditioning_steps=1)
        assert "conditioning" in call(get_chunk, bad).message
        good = GetActionChunk.Request(request_id=44, conditioning=actions[:5].ravel().tolist(),
                                      conditioning_steps=5)
        assert call(get_chunk, good).success

        assert spin_until(executor, lambda: {c.request_id for c in chunks} >= {42, 44},
                          timeout_s=5)
        assert spin_until(executor, lambda: statuses and statuses[-1].phase == "executing",
                          timeout_s=5)
        status = statuses[-1]
        assert status.policy_name == "zero_shot" and status.instruction == "pick up the red cube"
        assert "red cube" in status.description

        assert call(stop, Trigger.Request()).success
        reply = call(get_chunk, GetActionChunk.Request(request_id=45))
        assert not reply.success and "no episode" in reply.message
        assert spin_until(executor, lambda: statuses[-1].phase == "idle", timeout_s=5)
    node.destroy_node()
