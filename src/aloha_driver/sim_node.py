"""ROS 2 node `aloha_sim`: the MuJoCo ALOHA 2 behind the interfaces a real ros2_control stack has.

The physics loop runs in its own thread and is the clock: per control period it steps the
simulation with the held command and publishes /clock and joint states; every 1/camera_rate_hz
of simulated time it renders the cameras and publishes images, camera info, depth,
segmentation, optical-frame poses and the ground-truth object list, all stamped with the same
sim time. Rendering pauses simulated time, so control stays correct in sim time however slow the
cameras are. The node itself runs on wall time (it owns /clock); everything it publishes carries
sim time, which stays monotonic across resets.

Parameters (defaults from config/<embodiment>.yaml `simulation:`):
  embodiment (str, "aloha2")         embodiment config to load
  task (str, "pick")                 task of config/tasks.yaml: pick, place, handover
  seed (int >= 0, 0)                 object layout seed. /sim/reset re-samples the scene with the
                                     seed last set here since the previous reset (an evaluation
                                     sets it, then resets), otherwise with the current seed + 1
  camera_rate_hz (float)             camera frames (and ground-truth objects) per simulated second
  image_width, image_height (int)    render size of every camera
  real_time_factor (float)           upper bound on sim speed; 0 = as fast as possible
  cameras (str[], all configured)    cameras to render; [] for none
  publish_depth (bool)               also /<cam>/depth/image_raw (32FC1, metres, +inf = nothing)
  publish_segmentation (bool)        also /<cam>/segmentation (16UC1 object ids, 0 = none)
"""
from __future__ import annotations

import threading
import time

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from aloha_driver.commands import CommandError, HeldCommand
from aloha_driver.sim import AlohaSim
from bimanual_core.config import load_embodiment
from bimanual_core.node_runner import run_node
from bimanual_core.ros_conversions import (RELIABLE_QOS, SENSOR_QOS, duration_to_sec,
                                           numpy_to_image, sec_to_time)
from bimanual_vla.msg import SimObject, SimObjectArray

RESET_SERVICE = "/sim/reset"
CLOCK_TOPIC = "/clock"
WORLD_FRAME = "world"
REJECT_LOG_PERIOD_S = 2.0


def _camera_info(k: np.ndarray, width: int, height: int, header) -> CameraInfo:
    """Pinhole camera info of an undistorted simulated camera."""
    info = CameraInfo(header=header, width=width, height=height, distortion_model="plumb_bob")
    info.d = [0.0] * 5
    info.k = k.flatten().tolist()
    info.r = np.eye(3).flatten().tolist()
    info.p = np.hstack([k, np.zeros((3, 1))]).flatten().tolist()
    return info


def _pose(position, quaternion_wxyz, pose) -> None:
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in position)
    o = pose.orientation
    o.w, o.x, o.y, o.z = (float(v) for v in quaternion_wxyz)


class AlohaSimNode(Node):
    """Steps, renders and publishes the simulated ALOHA 2; takes position/trajectory commands."""

    def __init__(self, **kwargs):
        super().__init__("aloha_sim", **kwargs)
        if self.get_parameter("use_sim_time").value:
            self.get_logger().warning("use_sim_time ignored: this node publishes /clock itself")
            self.set_parameters([Parameter("use_sim_time", value=False)])
        self.embodiment = load_embodiment(self.declare_parameter("embodiment", "aloha2").value)
        sim_cfg = self.embodiment.simulation
        task = self.declare_parameter("task", "pick").value
        seed = self.declare_parameter("seed", 0).value
        self.camera_rate = float(self.declare_parameter(
            "camera_rate_hz", float(sim_cfg.get("camera_rate_hz", 10.0))).value)
        width = self.declare_parameter("image_width", int(sim_cfg.get("image_width", 320))).value
        height = self.declare_parameter("image_height",
                                        int(sim_cfg.get("image_height", 240))).value
        self.real_time_factor = float(self.declare_parameter(
            "real_time_factor", float(sim_cfg.get("real_time_factor", 1.0))).value)
        cameras = list(self.declare_parameter(
            "cameras", list(self.embodiment.cameras),
            ParameterDescriptor(type=ParameterType.PARAMETER_STRING_ARRAY)).value)
        depth = self.declare_parameter("publish_depth",
                                       bool(sim_cfg.get("publish_depth", True))).value
        segmentation = self.declare_parameter(
            "publish_segmentation", bool(sim_cfg.get("publish_segmentation", True))).value
        self._validate(cameras)

        self.sim = AlohaSim(self.embodiment, task=task, seed=seed, width=width, height=height)
        self.sim.publish_depth, self.sim.publish_segmentation = depth, segmentation
        self.cameras = [self.embodiment.camera(c) for c in cameras]
        self._sim_lock = threading.Lock()       # the simulation: physics thread vs reset service
        self._command_lock = threading.Lock()   # the held command: subscriptions vs physics
        self._command = HeldCommand(self.embodiment.joint_names, self.embodiment.home)
        self._time_offset = 0.0                 # published time = offset + sim time since reset
        self._next_seed: int | None = None      # set through the `seed` parameter, used by reset
        self._stop = threading.Event()
        self.failed = False

        self._clock_pub = self.create_publisher(Clock, CLOCK_TOPIC, RELIABLE_QOS)
        self._joint_pub = self.create_publisher(
            JointState, self.embodiment.driver["joint_states_topic"], RELIABLE_QOS)
        self._objects_pub = self.create_publisher(
            SimObjectArray, sim_cfg.get("objects_topic", "/sim/objects"), RELIABLE_QOS)
        self._camera_pubs = {
            cam.name: dict(
                rgb=self.create_publisher(Image, cam.image_topic, SENSOR_QOS),
                info=self.create_publisher(CameraInfo, cam.info_topic, SENSOR_QOS),
                depth=self.create_publisher(Image, cam.depth_topic, SENSOR_QOS) if depth else None,
                segmentation=self.create_publisher(Image, cam.segmentation_topic, SENSOR_QOS)
                if segmentation else None,
                pose=self.create_publisher(PoseStamped, cam.pose_topic, SENSOR_QOS))
            for cam in self.cameras}

        commands = MutuallyExclusiveCallbackGroup()
        driver = self.embodiment.driver
        self.create_subscription(Float64MultiArray, driver["forward_position_topic"],
                                 self._on_position, RELIABLE_QOS, callback_group=commands)
        self.create_subscription(JointTrajectory, driver["joint_trajectory_topic"],
                                 self._on_trajectory, RELIABLE_QOS, callback_group=commands)
        # Reset waits for the physics thread to finish its step: its own group, so commands flow.
        self.create_service(Trigger, RESET_SERVICE, self._on_reset,
                            callback_group=MutuallyExclusiveCallbackGroup())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._thread = threading.Thread(target=self._run, name="aloha_sim_physics", daemon=True)
        self.get_logger().info(
            f"task {task!r} seed {seed}: {len(self.cameras)} cameras {width}x{height} at "
            f"{self.camera_rate:g} Hz sim, real-time factor {self.real_time_factor:g}")

    def _validate(self, cameras: list[str]) -> None:
        if not 0.0 < self.camera_rate <= self.embodiment.control_rate_hz:
            raise ValueError(f"camera_rate_hz must be in (0, {self.embodiment.control_rate_hz}], "
                             f"got {self.camera_rate}")
        if self.real_time_factor < 0 or not np.isfinite(self.real_time_factor):
            raise ValueError(f"real_time_factor must be >= 0, got {self.real_time_factor}")
        unknown = [c for c in cameras if c not in self.embodiment.cameras]
        if unknown:
            raise ValueError(f"unknown cameras {unknown}; known: {list(self.embodiment.cameras)}")

    # ------------------------------------------------------------------ commands

    def _reject(self, what: str, exc: Exception) -> None:
        self.get_logger().warning(f"rejected {what}: {exc}; holding the last valid target",
                                  throttle_duration_sec=REJECT_LOG_PERIOD_S)

    def _on_position(self, msg: Float64MultiArray) -> None:
        try:
            with self._command_lock:
                self._command.set_position(msg.data)
        except CommandError as exc:
            self._reject("forward position command", exc)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            times = [duration_to_sec(p.time_from_start) for p in msg.points]
            with self._command_lock:
                self._command.set_trajectory(list(msg.joint_names), times,
                                             [list(p.positions) for p in msg.points],
                                             now=self.sim.time)
        except CommandError as exc:
            self._reject("joint trajectory", exc)

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """A new `seed` is remembered for the next reset; only `seed` can change at run time."""
        for param in params:
            if param.name != "seed":
                return SetParametersResult(
                    successful=False, reason=f"{param.name} cannot change while the node runs")
            if param.type_ != Parameter.Type.INTEGER or param.value < 0:
                return SetParametersResult(
                    successful=False, reason=f"seed must be an integer >= 0, got {param.value!r}")
        if params:
            with self._sim_lock:
                self._next_seed = int(params[-1].value)
        return SetParametersResult(successful=True)

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        with self._sim_lock:
            self._time_offset += self.sim.time
            seed = self.sim.seed + 1 if self._next_seed is None else self._next_seed
            self._next_seed = None
            self.sim.reset(seed)
            with self._command_lock:
                self._command.reset(self.embodiment.home)
            seed = self.sim.seed
        response.success, response.message = True, f"reset to seed {seed}"
        self.get_logger().info(response.message)
        return response

    # ------------------------------------------------------------------ physics thread

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the physics loop; it closes the renderer from its own thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a dead physics loop must not leave a silent node behind
            if self.context.ok() and not self._stop.is_set():
                self.failed = True
                self.get_logger().fatal(f"simulation stopped: {exc!r}")
                rclpy.try_shutdown(context=self.context)
        finally:
            self.sim.close()

    def _loop(self) -> None:
        period = self.sim.control_period
        frame_period = 1.0 / self.camera_rate
        next_frame = frame_period
        anchor_wall, anchor_sim = time.monotonic(), self._time_offset
        while not self._stop.is_set() and self.context.ok():
            with self._sim_lock:
                with self._command_lock:
                    target = self._command.target(self.sim.time)
                self.sim.step(target)
                now = self._time_offset + self.sim.time
                joints = (self.sim.joint_positions(), self.sim.joint_velocities(),
                          self.sim.joint_efforts())
                frames = None
                if now >= next_frame - 1e-9:
                    frames = self._render()
                    next_frame += frame_period
            stamp = sec_to_time(now)
            self._clock_pub.publish(Clock(clock=stamp))
            self._publish_joints(stamp, *joints)
            if frames is not None:
                self._publish_frames(stamp, *frames)
            if self.real_time_factor > 0:
                # Pace sim time to wall time; time lost rendering is not made up (no bursts).
                lag = anchor_wall + (now - anchor_sim) / self.real_time_factor - time.monotonic()
                if lag > 0:
                    time.sleep(lag)
                elif lag < -period:
                    anchor_wall, anchor_sim = time.monotonic(), now

    def _render(self):
        """Everything the cameras and the ground-truth topic need, copied under the sim lock."""
        images = {}
        for cam in self.cameras:
            out = self.sim.render(cam.name)
            out["k"] = self.sim.camera_intrinsics(cam.name)
            out["pose"] = self.sim.camera_pose(cam.name)
            images[cam.name] = out
        return images, self.sim.objects()

    def _publish_joints(self, stamp, position, velocity, effort) -> None:
        msg = JointState(name=self.embodiment.joint_names, position=position.tolist(),
                         velocity=velocity.tolist(), effort=effort.tolist())
        msg.header.stamp = stamp
        self._joint_pub.publish(msg)

    def _publish_frames(self, stamp, images: dict, objects: list[dict]) -> None:
        for cam in self.cameras:
            out, pubs = images[cam.name], self._camera_pubs[cam.name]
            rgb = numpy_to_image(out["rgb"], "rgb8", stamp, cam.frame_id)
            pubs["rgb"].publish(rgb)
            pubs["info"].publish(_camera_info(out["k"], self.sim.width, self.sim.height,
                                              rgb.header))
            if pubs["depth"] is not None:
                pubs["depth"].publish(numpy_to_image(out["depth"], "32FC1", stamp, cam.frame_id))
            if pubs["segmentation"] is not None:
                pubs["segmentation"].publish(
                    numpy_to_image(out["segmentation"], "16UC1", stamp, cam.frame_id))
            pose = PoseStamped()
            pose.header.stamp, pose.header.frame_id = stamp, WORLD_FRAME
            _pose(*out["pose"], pose.pose)
            pubs["pose"].publish(pose)
        array = SimObjectArray()
        array.header.stamp, array.header.frame_id = stamp, WORLD_FRAME
        for obj in objects:
            item = SimObject(name=obj["name"], label=obj["label"],
                             segmentation_id=int(obj["segmentation_id"]))
            _pose(obj["position"], obj["quaternion"], item.pose)
            item.size.x, item.size.y, item.size.z = (float(v) for v in obj["size"])
            array.objects.append(item)
        self._objects_pub.publish(array)


def main(args=None) -> int:
    return run_node(AlohaSimNode, "aloha_sim", args, threads=2,
                    before_spin=lambda node: node.start(), after_spin=lambda node: node.stop(),
                    exit_code=lambda node: 1 if node.failed else 0)


if __name__ == "__main__":
    raise SystemExit(main())
