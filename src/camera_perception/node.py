"""ROS 2 node `camera_perception`: synchronised observations from the robot's cameras and joints.

Subscribes every configured camera's colour image (SENSOR_QOS) and the joint states, and at
`publish_rate_hz` (on the node's clock, so sim time under `use_sim_time`) publishes one
bimanual_vla/Observation: the frames matched to one reference time (rgb8, resized), the joint
state closest to it in the embodiment's joint order, and a CameraHealth entry per configured
camera. A stale, missing or misencoded camera is reported and left out rather than blocking the
others. Per-camera rate and latency also go to /diagnostics once a second. The algorithm lives in
`camera_perception.sync` and `camera_perception.preprocess`; this module only adapts it to ROS.

Parameters:
  embodiment (str, "aloha2"): config/<embodiment>.yaml (cameras, joints, joint-state topic).
  cameras (str[], []): cameras to use; empty = all of the embodiment's.
  sync_slop_s (float, 0.05): frames within this of the reference time form one observation.
  stale_after_s (float, 0.5): a camera with no usable frame received for this long is left out.
  output_width, output_height (int, 224): resize of the published images; 0 and 0 keep the
    camera resolution.
  publish_rate_hz (float, 10.0): observation rate; a tick with no new frames publishes nothing.
"""
from __future__ import annotations

from functools import partial

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState

from bimanual_core.config import load_embodiment, load_stack
from bimanual_core.node_runner import run_node
from bimanual_core.ros_conversions import (RELIABLE_QOS, SENSOR_QOS, ImageEncodingError,
                                           image_to_numpy, numpy_to_image)
from bimanual_vla.msg import CameraHealth, Observation
from camera_perception.preprocess import (COLOUR_ENCODINGS, JointOrder, check_output_size,
                                          resize_rgb)
from camera_perception.sync import CameraStatus, CameraSynchronizer

DIAGNOSTICS_TOPIC = "/diagnostics"
DIAGNOSTICS_PERIOD_S = 1.0
WARN_THROTTLE_S = 5.0


def _stamp_ns(stamp) -> int:
    return Time.from_msg(stamp).nanoseconds


def _health_msg(status: CameraStatus) -> CameraHealth:
    return CameraHealth(name=status.name, ok=status.ok, rate_hz=status.rate_hz,
                        latency_ms=status.latency_ms, age_ms=status.age_ms, status=status.status)


class CameraPerception(Node):
    def __init__(self) -> None:
        super().__init__("camera_perception")
        self.declare_parameter("embodiment", "aloha2")
        self.declare_parameter("cameras", [], ParameterDescriptor(dynamic_typing=True))
        self.declare_parameter("sync_slop_s", 0.05)
        self.declare_parameter("stale_after_s", 0.5)
        self.declare_parameter("output_width", 224)
        self.declare_parameter("output_height", 224)
        self.declare_parameter("publish_rate_hz", 10.0)
        p = lambda name: self.get_parameter(name).value  # noqa: E731

        embodiment = load_embodiment(p("embodiment"))
        cameras = list(p("cameras") or embodiment.cameras)
        for name in cameras:
            embodiment.camera(name)          # raises with the known names
        self._size = (int(p("output_width")), int(p("output_height")))
        check_output_size(*self._size)
        rate = float(p("publish_rate_hz"))
        if not rate > 0:
            raise ValueError(f"publish_rate_hz must be > 0, got {rate}")
        self._sync = CameraSynchronizer(cameras, float(p("sync_slop_s")),
                                        float(p("stale_after_s")))
        self._joints = JointOrder(embodiment.joint_names)
        self._specs = {name: embodiment.camera(name) for name in cameras}

        for name, spec in self._specs.items():
            self.create_subscription(Image, spec.image_topic, partial(self._on_image, name),
                                     SENSOR_QOS)
        self.create_subscription(JointState, embodiment.driver["joint_states_topic"],
                                 self._on_joint_state, RELIABLE_QOS)
        topic = load_stack().interfaces["observation_topic"]
        # Reliable so that reliable and best-effort subscribers can both connect.
        self._obs_pub = self.create_publisher(Observation, topic, RELIABLE_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, RELIABLE_QOS)
        self.create_timer(1.0 / rate, self._publish_observation)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self.get_logger().info(
            f"synchronising {cameras} at {rate} Hz into {topic} "
            f"({'camera size' if self._size[0] == 0 else '%dx%d' % self._size})")

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_image(self, camera: str, msg: Image) -> None:
        now, stamp = self._now_ns(), _stamp_ns(msg.header.stamp)
        try:
            if msg.encoding not in COLOUR_ENCODINGS:
                raise ImageEncodingError(
                    f"{msg.encoding!r} is not one of {', '.join(COLOUR_ENCODINGS)}")
            rgb = resize_rgb(image_to_numpy(msg, want_rgb=True), *self._size)
        except (ImageEncodingError, ValueError) as exc:
            self._sync.add_bad_frame(camera, stamp, now, str(exc))
            self.get_logger().warning(f"{camera}: frame rejected: {exc}",
                                   throttle_duration_sec=WARN_THROTTLE_S)
            return
        self._sync.add_frame(camera, stamp, now, (rgb, msg.header.frame_id))

    def _on_joint_state(self, msg: JointState) -> None:
        now = self._now_ns()
        try:
            sample = self._joints.reorder(msg.name, msg.position, msg.velocity, msg.effort)
        except ValueError as exc:
            self.get_logger().warning(f"joint state rejected: {exc}",
                                   throttle_duration_sec=WARN_THROTTLE_S)
            return
        stamp = _stamp_ns(msg.header.stamp) or now     # unstamped drivers: use arrival time
        self._sync.add_joint_state(stamp, now, sample)

    def _publish_observation(self) -> None:
        synced = self._sync.synchronise(self._now_ns())
        if synced is None:
            return
        obs = Observation()
        obs.header.stamp = Time(nanoseconds=synced.stamp_ns).to_msg()
        for name, frame in synced.frames.items():
            rgb, frame_id = frame.data
            obs.camera_names.append(name)
            obs.images.append(numpy_to_image(rgb, "rgb8", Time(nanoseconds=frame.stamp_ns).to_msg(),
                                             frame_id or self._specs[name].frame_id))
        if synced.joint_state is None:
            self.get_logger().warning("no joint state near the observation time; publishing without",
                                   throttle_duration_sec=WARN_THROTTLE_S)
        else:
            sample = synced.joint_state.data
            js = obs.joint_state
            js.header.stamp = Time(nanoseconds=synced.joint_state.stamp_ns).to_msg()
            js.name = list(self._joints.names)
            js.position, js.velocity, js.effort = (sample.position.tolist(),
                                                   sample.velocity.tolist(), sample.effort.tolist())
        obs.cameras = [_health_msg(s) for s in synced.health]
        self._obs_pub.publish(obs)

    def _publish_diagnostics(self) -> None:
        now = self._now_ns()
        array = DiagnosticArray()
        array.header.stamp = Time(nanoseconds=now).to_msg()
        for status in self._sync.health(now):
            level = (DiagnosticStatus.OK if status.ok else
                     DiagnosticStatus.WARN if status.status in ("stale", "unsynchronised") else
                     DiagnosticStatus.ERROR)
            array.status.append(DiagnosticStatus(
                level=level, name=f"{self.get_name()}: {status.name}", hardware_id=status.name,
                message=status.status,
                values=[KeyValue(key="rate_hz", value=f"{status.rate_hz:.2f}"),
                        KeyValue(key="latency_ms", value=f"{status.latency_ms:.2f}")]))
        self._diag_pub.publish(array)


def main(args=None) -> int:
    return run_node(CameraPerception, "camera_perception", args)


if __name__ == "__main__":
    raise SystemExit(main())
