"""The aloha_sim node as its own process: clock, joint states, cameras, commands, reset."""
import math
import signal
import time

import numpy as np
import pytest
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from bimanual_core.config import load_embodiment
from bimanual_core.ros_conversions import (RELIABLE_QOS, SENSOR_QOS, image_to_numpy,
                                           sec_to_duration, time_to_sec)
from bimanual_vla.msg import SimObjectArray
from perception_testing import node_process

pytestmark = pytest.mark.slow
EMB = load_embodiment("aloha2")
TIMEOUT_S = 30.0


@pytest.fixture
def sim_process(ros_domain, tmp_path):
    """The node on the test's domain; stopped with SIGINT, on which it must exit 0."""
    log = tmp_path / "aloha_sim.log"
    with node_process("aloha_sim_node", {}, log) as proc:
        yield proc, log


class Probe:
    """A node in the test process recording what the simulator of `emb` publishes."""

    def __init__(self, context, emb=EMB, camera="cam_high"):
        self.emb = emb
        self.node = Node("sim_probe", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        (self.clock, self.joints, self.images, self.infos, self.depth, self.segmentation,
         self.objects) = ([] for _ in range(7))
        sub = self.node.create_subscription
        sub(Clock, "/clock", lambda m: self.clock.append(time_to_sec(m.clock)), RELIABLE_QOS)
        sub(JointState, emb.driver["joint_states_topic"], self.joints.append, RELIABLE_QOS)
        cam = emb.camera(camera)
        sub(Image, cam.image_topic, self.images.append, SENSOR_QOS)
        sub(CameraInfo, cam.info_topic, self.infos.append, SENSOR_QOS)
        sub(Image, cam.depth_topic, self.depth.append, SENSOR_QOS)
        sub(Image, cam.segmentation_topic, self.segmentation.append, SENSOR_QOS)
        sub(SimObjectArray, emb.simulation["objects_topic"], self.objects.append, RELIABLE_QOS)
        self.position_pub = self.node.create_publisher(
            Float64MultiArray, emb.driver["forward_position_topic"], RELIABLE_QOS)
        self.trajectory_pub = self.node.create_publisher(
            JointTrajectory, emb.driver["joint_trajectory_topic"], RELIABLE_QOS)

    def spin_until(self, predicate, what, timeout=TIMEOUT_S, on_tick=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if on_tick is not None:
                on_tick()
            self.executor.spin_once(timeout_sec=0.05)
            if predicate():
                return
        pytest.fail(f"timed out waiting for {what}")

    def spin_for_sim(self, seconds):
        """Spin until `seconds` of simulated time have passed."""
        start = time_to_sec(self.joints[-1].header.stamp)
        self.spin_until(lambda: time_to_sec(self.joints[-1].header.stamp) >= start + seconds,
                        f"{seconds} s of sim time")

    def position(self, joint):
        return self.joints[-1].position[self.emb.joint_names.index(joint)]

    def send_position(self, values):
        self.position_pub.publish(Float64MultiArray(data=[float(v) for v in values]))

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture
def probe(ros_context):
    p = Probe(ros_context)
    yield p
    p.close()


def test_node_publishes_clock_joints_cameras_and_obeys_position_commands(sim_process, probe):
    proc, log = sim_process
    probe.spin_until(lambda: len(probe.joints) > 60 and probe.images and probe.infos
                     and probe.depth and probe.objects, "joint states, images and objects")
    assert probe.clock == sorted(probe.clock) and probe.clock[-1] > probe.clock[0]
    state = probe.joints[-1]
    assert list(state.name) == EMB.joint_names
    assert len(state.position) == len(state.velocity) == len(state.effort) == 14
    np.testing.assert_allclose(state.position, EMB.home, atol=0.02)
    stamps = np.array([time_to_sec(j.header.stamp) for j in probe.joints])
    assert np.median(np.diff(stamps)) == pytest.approx(EMB.control_period)   # 50 Hz sim time

    # Image and CameraInfo are separate best-effort topics: pair a frame with its info by
    # stamp, since the newest image's info may still be in flight (or dropped).
    def paired_images():
        info_stamps = {time_to_sec(i.header.stamp) for i in probe.infos}
        return [i for i in probe.images if time_to_sec(i.header.stamp) in info_stamps]
    probe.spin_until(paired_images, "a camera frame and its CameraInfo with the same stamp")
    image = paired_images()[-1]
    assert image.encoding == "rgb8" and (image.width, image.height) == (320, 240)
    assert image.header.frame_id == EMB.camera("cam_high").frame_id
    assert image_to_numpy(image).std() > 20
    info = next(i for i in probe.infos if i.header.stamp == image.header.stamp)
    assert (info.width, info.height, info.distortion_model) == (320, 240, "plumb_bob")
    k = np.array(info.k).reshape(3, 3)
    assert k[0, 0] > 0 and k[0, 2] == pytest.approx((320 - 1) / 2)
    frame_times = np.array([time_to_sec(i.header.stamp) for i in probe.images])
    frames = frame_times * EMB.simulation["camera_rate_hz"]        # every 1/rate of sim time
    np.testing.assert_allclose(frames, np.round(frames), atol=1e-6)
    assert probe.depth[-1].encoding == "32FC1"
    assert "red_cube" in [o.name for o in probe.objects[-1].objects]

    target = EMB.home.copy()
    target[EMB.joint_names.index("left_waist")] += 0.3
    probe.spin_until(lambda: abs(probe.position("left_waist") - target[0]) < 0.02,
                     "left_waist to reach the commanded position",
                     on_tick=lambda: probe.send_position(target))
    bad = target.copy()
    bad[0] = math.nan
    for _ in range(5):
        probe.send_position(bad)
        probe.send_position(target[:7])          # wrong size: rejected too
        probe.spin_for_sim(0.1)
    probe.spin_for_sim(0.5)
    assert probe.position("left_waist") == pytest.approx(target[0], abs=0.02)

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0
    output = log.read_text()
    assert "rejected forward position command" in output and "non-finite" in output
    assert "Traceback" not in output and "EGLError" not in output


def test_node_follows_trajectories_and_resets(sim_process, probe):
    probe.spin_until(lambda: len(probe.joints) > 5, "joint states")
    client = probe.node.create_client(Trigger, "/sim/reset")
    assert client.wait_for_service(timeout_sec=TIMEOUT_S)

    goal = EMB.home[EMB.joint_names.index("right_elbow")] - 0.3
    trajectory = JointTrajectory(joint_names=["right_elbow"], points=[
        JointTrajectoryPoint(positions=[goal], time_from_start=sec_to_duration(0.5))])
    probe.trajectory_pub.publish(trajectory)
    probe.spin_until(lambda: abs(probe.position("right_elbow") - goal) < 0.02,
                     "right_elbow to follow the trajectory",
                     on_tick=lambda: None if probe.position("right_elbow") < EMB.home[9] - 0.01
                     else probe.trajectory_pub.publish(trajectory))
    assert probe.position("left_waist") == pytest.approx(EMB.home[0], abs=0.02)

    before_reset = time_to_sec(probe.joints[-1].header.stamp)
    future = client.call_async(Trigger.Request())
    probe.spin_until(future.done, "the reset service")
    assert future.result().success and "seed 1" in future.result().message
    probe.spin_for_sim(0.2)
    np.testing.assert_allclose(probe.joints[-1].position, EMB.home, atol=0.02)
    assert time_to_sec(probe.joints[-1].header.stamp) > before_reset    # the clock never rewinds
    assert probe.clock == sorted(probe.clock)

    # An evaluation picks the next scene: set `seed`, then reset; a plain reset goes on from there.
    params = probe.node.create_client(SetParameters, "/aloha_sim/set_parameters")
    assert params.wait_for_service(timeout_sec=TIMEOUT_S)
    for value, accepted in ((-1, False), (7, True)):
        future = params.call_async(SetParameters.Request(
            parameters=[Parameter("seed", value=value).to_parameter_msg()]))
        probe.spin_until(future.done, "the set_parameters service")
        assert future.result().results[0].successful is accepted
    for expected in ("seed 7", "seed 8"):
        future = client.call_async(Trigger.Request())
        probe.spin_until(future.done, "the reset service")
        assert expected in future.result().message
