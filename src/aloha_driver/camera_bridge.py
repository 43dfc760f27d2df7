"""ROS 2 node `real_cameras`: the robot's compressed camera streams -> the stack's camera topics.

Real ALOHA 2 and Franka rigs stream RealSense colour images through image_transport's
`compressed` plugin (sensor_msgs/CompressedImage, JPEG). The stack's perception reads
sensor_msgs/Image + CameraInfo on the topics of `cameras:` in the embodiment file, as the
simulator publishes them. Rather than teach every consumer (camera_perception, er_perception,
the recorder) a second input, this node decodes each stream once, off the control path, and
republishes it there: `cameras:` stays the one contract the stack reads, and
`real_driver.cameras` says where each camera comes from on the robot. Images are rgb8 with the
camera's own stamp and the stack's frame id; the camera's latest CameraInfo goes out beside each
image with the same stamp. Frames beyond camera_max_rate_hz per camera are dropped before
decoding (the RealSense runs at 60 fps; the observation is built at 10 Hz).

Parameters (defaults from config/<embodiment>.yaml `real_driver:`):
  embodiment (str, "aloha2")        the embodiment
  camera_max_rate_hz (float)        frames decoded per camera and second, at most
"""
from __future__ import annotations

import time

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from aloha_driver.real_driver import ImageDecodeError, camera_sources, decode_compressed
from bimanual_core.config import ConfigError, load_embodiment
from bimanual_core.node_runner import run_node
from bimanual_core.ros_conversions import SENSOR_QOS, numpy_to_image

LOG_PERIOD_S = 5.0


class CameraBridge(Node):
    def __init__(self, **kwargs):
        super().__init__("real_cameras", **kwargs)
        self.embodiment = load_embodiment(self.declare_parameter("embodiment", "aloha2").value)
        sources, rate = camera_sources(self.embodiment)
        rate = float(self.declare_parameter("camera_max_rate_hz", rate).value)
        if not rate > 0:
            raise ConfigError(f"camera_max_rate_hz must be > 0, got {rate}")
        self.min_interval_s = 1.0 / rate
        self.frames = {s.camera: 0 for s in sources}
        self._last_frame: dict[str, float] = {}
        self._info: dict[str, CameraInfo] = {}
        self._last_log = 0.0
        for s in sources:
            cam = self.embodiment.camera(s.camera)
            image_pub = self.create_publisher(Image, cam.image_topic, SENSOR_QOS)
            info_pub = self.create_publisher(CameraInfo, cam.info_topic, SENSOR_QOS)
            self.create_subscription(
                CompressedImage, s.compressed_topic,
                lambda msg, c=s.camera, ip=image_pub, fp=info_pub, f=cam.frame_id:
                    self._on_image(c, msg, ip, fp, f), SENSOR_QOS)
            self.create_subscription(CameraInfo, s.info_topic,
                                     lambda msg, c=s.camera: self._info.__setitem__(c, msg),
                                     SENSOR_QOS)
        self.get_logger().info(", ".join(f"{s.compressed_topic} -> "
                                         f"{self.embodiment.camera(s.camera).image_topic}"
                                         for s in sources) + f" (at most {rate:g} Hz each)")

    def _on_image(self, camera: str, msg: CompressedImage, image_pub, info_pub,
                  frame_id: str) -> None:
        now = time.monotonic()
        if now - self._last_frame.get(camera, -1e9) < self.min_interval_s:
            return
        self._last_frame[camera] = now
        try:
            rgb = decode_compressed(msg.format, msg.data)
        except ImageDecodeError as exc:
            if now - self._last_log > LOG_PERIOD_S:
                self._last_log = now
                self.get_logger().warning(f"{camera}: {exc}")
            return
        image_pub.publish(numpy_to_image(rgb, "rgb8", msg.header.stamp, frame_id))
        info = self._info.get(camera)
        if info is not None:
            info.header.stamp, info.header.frame_id = msg.header.stamp, frame_id
            info_pub.publish(info)
        self.frames[camera] += 1


def main(args=None) -> int:
    return run_node(CameraBridge, "real_cameras", args=args)


if __name__ == "__main__":
    raise SystemExit(main())
