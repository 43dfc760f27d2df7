"""Conversions between ROS messages and numpy, and the QoS profiles the stack uses.

cv_bridge is not installable from PyPI, and its conversions for the encodings used here are plain
buffer views; these helpers do the same with numpy and reject encodings they do not know with a
clear error instead of guessing.
"""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration, Time
from rclpy.duration import Duration as RclpyDuration
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, LivelinessPolicy, QoSProfile,
                       ReliabilityPolicy, qos_profile_sensor_data)
from sensor_msgs.msg import Image

# encoding -> (dtype, channels)
_ENCODINGS = {
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1), "8UC1": (np.uint8, 1), "8UC3": (np.uint8, 3),
    "mono16": (np.uint16, 1), "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1), "32SC1": (np.int32, 1),
}

# Cameras: best effort, keep only the newest frames (a late frame is worth less than a new one).
SENSOR_QOS = qos_profile_sensor_data
# Commands, joint state, chunks: every message matters.
RELIABLE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                          history=HistoryPolicy.KEEP_LAST)
# Slow-changing state a late joiner must still get (e.g. ground-truth object list, status).
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)




def liveliness_qos(lease_s: float) -> QoSProfile:
    """A heartbeat: DDS asserts the writer's liveliness automatically, and a reader learns within
    about `lease_s` that the writing process is gone (killed, network dropped), long before
    discovery notices. Offered and requested leases must match (offered <= requested)."""
    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      history=HistoryPolicy.KEEP_LAST, liveliness=LivelinessPolicy.AUTOMATIC,
                      liveliness_lease_duration=RclpyDuration(seconds=lease_s))


class ImageEncodingError(ValueError):
    """An image message whose encoding or size this stack cannot interpret."""


def image_to_numpy(msg: Image, want_rgb: bool = False) -> np.ndarray:
    """View an Image as an (H, W) or (H, W, C) array; `want_rgb` converts colour images to RGB."""
    if msg.encoding not in _ENCODINGS:
        raise ImageEncodingError(
            f"unsupported image encoding {msg.encoding!r}; supported: {sorted(_ENCODINGS)}")
    dtype, channels = _ENCODINGS[msg.encoding]
    itemsize = np.dtype(dtype).itemsize
    if msg.step < msg.width * channels * itemsize:
        raise ImageEncodingError(f"image step {msg.step} too small for {msg.width} x {msg.encoding}")
    if len(msg.data) < msg.step * msg.height:
        raise ImageEncodingError(
            f"image data has {len(msg.data)} bytes, expected {msg.step * msg.height}")
    buf = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray, memoryview))
                        else msg.data, dtype=np.uint8, count=msg.step * msg.height)
    rows = buf.reshape(msg.height, msg.step)[:, : msg.width * channels * itemsize]
    dt = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    arr = rows.copy().view(dt).astype(dtype, copy=False)
    arr = arr.reshape(msg.height, msg.width, channels) if channels > 1 else arr.reshape(
        msg.height, msg.width)
    if want_rgb:
        if msg.encoding in ("bgr8", "bgra8"):
            arr = arr[..., 2::-1] if msg.encoding == "bgra8" else arr[..., ::-1]
        elif msg.encoding == "rgba8":
            arr = arr[..., :3]
        elif channels == 1:
            raise ImageEncodingError(f"expected a colour image, got {msg.encoding}")
        arr = np.ascontiguousarray(arr)
    return arr


def numpy_to_image(arr: np.ndarray, encoding: str, stamp: Time | None = None,
                   frame_id: str = "") -> Image:
    """Wrap an array as an Image; the dtype and channel count must match the encoding."""
    if encoding not in _ENCODINGS:
        raise ImageEncodingError(f"unsupported image encoding {encoding!r}")
    dtype, channels = _ENCODINGS[encoding]
    arr = np.ascontiguousarray(arr)
    if arr.dtype != dtype or (arr.shape[2] if arr.ndim == 3 else 1) != channels:
        raise ImageEncodingError(
            f"array {arr.dtype} {arr.shape} does not match encoding {encoding}")
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.strides[0])
    msg.data = arr.tobytes()
    return msg


def time_to_sec(t: Time) -> float:
    return t.sec + t.nanosec * 1e-9


def sec_to_time(seconds: float) -> Time:
    ns = int(round(seconds * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def duration_to_sec(d: Duration) -> float:
    return d.sec + d.nanosec * 1e-9


def sec_to_duration(seconds: float) -> Duration:
    ns = int(round(seconds * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
