"""camera_perception node across processes, on sim time: four cameras at different rates, one
misencoded and then stopped; observations must keep flowing with the others and say why."""
import numpy as np
import pytest

from perception_testing import node_process, spin_until

CAMERA_RATES = {"cam_high": 30.0, "cam_low": 20.0, "cam_left_wrist": 10.0, "cam_right_wrist": 15.0}
COLOURS = {"cam_high": (255, 0, 0), "cam_low": (0, 255, 0), "cam_left_wrist": (0, 0, 255),
           "cam_right_wrist": (255, 255, 0)}
SIM_T0 = 100.0


@pytest.mark.slow
def test_observation_from_four_cameras_with_one_bad_then_stopped(ros_context, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image, JointState

    from bimanual_core.config import load_embodiment, load_stack
    from bimanual_core.ros_conversions import (RELIABLE_QOS, SENSOR_QOS, image_to_numpy,
                                               numpy_to_image, sec_to_time)
    from bimanual_vla.msg import Observation

    emb = load_embodiment("aloha2")
    node = Node("camera_test_driver", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    clock_pub = node.create_publisher(Clock, "/clock", 10)
    image_pubs = {c: node.create_publisher(Image, emb.camera(c).image_topic, SENSOR_QOS)
                  for c in CAMERA_RATES}
    joint_pub = node.create_publisher(JointState, emb.driver["joint_states_topic"], RELIABLE_QOS)
    observations = []
    node.create_subscription(Observation, load_stack().interfaces["observation_topic"],
                             observations.append, RELIABLE_QOS)
    diagnostics = []
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, RELIABLE_QOS)

    # Simulated time runs at wall speed from SIM_T0; the driver publishes on it.
    start = node.get_clock().now().nanoseconds * 1e-9
    sim_now = lambda: SIM_T0 + node.get_clock().now().nanoseconds * 1e-9 - start  # noqa: E731
    next_due = {name: 0.0 for name in [*CAMERA_RATES, "joints", "clock"]}
    reversed_names = emb.joint_names[::-1]

    def right_wrist_encoding(t):          # mono8 for 1 s, rgb8 until 2 s, then nothing
        return "mono8" if t < 1.0 else "rgb8" if t < 2.0 else None

    def publish_due():
        now = sim_now()
        t = now - SIM_T0
        stamp = sec_to_time(now)
        if now >= next_due["clock"]:
            clock_pub.publish(Clock(clock=stamp))
            next_due["clock"] = now + 0.005
        if now >= next_due["joints"]:
            js = JointState(name=reversed_names, position=[float(i) for i in range(14)][::-1])
            js.header.stamp = stamp
            joint_pub.publish(js)
            next_due["joints"] = now + 0.02
        for cam, rate in CAMERA_RATES.items():
            if now < next_due[cam]:
                continue
            next_due[cam] = now + 1.0 / rate
            encoding = right_wrist_encoding(t) if cam == "cam_right_wrist" else "rgb8"
            if encoding is None:
                continue
            rgb = np.zeros((120, 160, 3), np.uint8)
            rgb[:] = COLOURS[cam]
            if cam == "cam_low":                                  # a BGR camera
                msg = numpy_to_image(np.ascontiguousarray(rgb[..., ::-1]), "bgr8", stamp, cam)
            elif encoding == "mono8":
                msg = numpy_to_image(rgb[..., 0].copy(), "mono8", stamp, cam)
            else:
                msg = numpy_to_image(rgb, "rgb8", stamp, cam)
            image_pubs[cam].publish(msg)

    def obs_at(t0, t1):
        return [o for o in observations
                if t0 <= o.header.stamp.sec + o.header.stamp.nanosec * 1e-9 - SIM_T0 < t1]

    params = {"use_sim_time": True, "output_width": 64, "output_height": 48,
              "publish_rate_hz": 10.0, "sync_slop_s": 0.05, "stale_after_s": 0.5}
    with node_process("camera_perception_node", params, tmp_path / "camera_perception.log"):
        # Discovery can take a while: wait for the node's subscriptions before the clock starts.
        assert spin_until(executor, lambda: all(p.get_subscription_count() for p in
                                                image_pubs.values()), timeout_s=20)
        start = node.get_clock().now().nanoseconds * 1e-9
        spin_until(executor, lambda: sim_now() - SIM_T0 > 3.2, timeout_s=30, step=publish_due)

    assert len(observations) > 15, f"only {len(observations)} observations"
    stamps = [o.header.stamp.sec + o.header.stamp.nanosec * 1e-9 for o in observations]
    assert all(b > a for a, b in zip(stamps, stamps[1:])), "observations must move forward"
    assert stamps[0] >= SIM_T0, "stamps are in simulated time"

    def health(obs):
        return {h.name: h for h in obs.cameras}

    # While cam_right_wrist sends mono8 it is reported and left out.
    bad = obs_at(0.5, 0.9)
    assert bad and all("cam_right_wrist" not in o.camera_names for o in bad)
    assert health(bad[-1])["cam_right_wrist"].status.startswith("bad_encoding: 'mono8'")
    # With rgb8 frames all four cameras take part.
    full = [o for o in obs_at(1.3, 1.9) if len(o.camera_names) == 4]
    assert full, "no observation with all four cameras"
    # After it stops: three images, and the stopped camera is stale.
    last = obs_at(2.7, 3.3)[-1]
    assert list(last.camera_names) == ["cam_high", "cam_low", "cam_left_wrist"]
    h = health(last)
    assert [c.name for c in last.cameras] == list(emb.cameras)
    assert h["cam_right_wrist"].status == "stale" and not h["cam_right_wrist"].ok
    for cam in ("cam_high", "cam_low", "cam_left_wrist"):
        assert h[cam].ok and h[cam].status == "ok"
        assert h[cam].rate_hz == pytest.approx(CAMERA_RATES[cam], rel=0.3)
        # Receipt on the node's sim clock, which trails this test's: a frame can arrive before
        # the /clock message (every 5 ms) of its own stamp, so up to two clock steps below zero.
        assert -10 <= h[cam].latency_ms < 200
        assert abs(h[cam].age_ms) <= 50
    for cam, img in zip(last.camera_names, last.images):
        assert (img.width, img.height, img.encoding) == (64, 48, "rgb8")
        assert tuple(image_to_numpy(img)[10, 10]) == COLOURS[cam]   # bgr8 converted too
    assert list(last.joint_state.name) == emb.joint_names
    np.testing.assert_allclose(last.joint_state.position, np.arange(14.0))
    # /diagnostics carries the same per-camera rate and latency, once a second.
    report = {s.hardware_id: s for s in diagnostics[-1].status}
    assert set(report) == set(CAMERA_RATES)
    values = {kv.key: float(kv.value) for kv in report["cam_high"].values}
    assert values["rate_hz"] == pytest.approx(30.0, rel=0.3) and values["latency_ms"] < 200
    assert report["cam_right_wrist"].message == "stale"
    node.destroy_node()
