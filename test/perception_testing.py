"""Test helpers for camera perception and ER: node processes and a synthetic camera scene.

The synthetic scene ray-casts oriented boxes on a table (z = 0) through a pinhole camera, giving
rgb, z-depth, segmentation, K and the optical-frame pose with exact ground truth, so perception
can be tested without the simulator.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE_RGB = (120, 110, 100)


@contextlib.contextmanager
def node_process(executable: str, parameters: dict, log_path: Path):
    """Run an installed node executable with parameters; SIGINT it afterwards and check it exits 0.

    The child inherits ROS_DOMAIN_ID from the `ros_domain` fixture.
    """
    exe = Path(sys.executable).parent / executable
    args = [str(exe), "--ros-args"]
    for name, value in parameters.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["-p", f"{name}:={text}"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    assert proc.returncode == 0, f"{executable} exited {proc.returncode}:\n{log_path.read_text()}"


def spin_until(executor, predicate, timeout_s: float, step=None) -> bool:
    """Spin until `predicate()` holds; `step()` runs every iteration (e.g. to publish)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if step is not None:
            step()
        executor.spin_once(timeout_sec=0.005)
        if predicate():
            return True
    return False


def fake_observation(embodiment, stamp_s: float, reverse_joints: bool = False):
    """A minimal bimanual_vla/Observation: one small black cam_high image, the home pose.

    `reverse_joints` sends the joint state in reverse order (a node must reorder it by name)."""
    from bimanual_core.ros_conversions import numpy_to_image, sec_to_time
    from bimanual_vla.msg import Observation
    msg = Observation()
    msg.header.stamp = sec_to_time(stamp_s)
    msg.camera_names = ["cam_high"]
    msg.images = [numpy_to_image(np.zeros((24, 32, 3), np.uint8), "rgb8")]
    order = slice(None, None, -1) if reverse_joints else slice(None)
    msg.joint_state.name = embodiment.joint_names[order]
    msg.joint_state.position = embodiment.home[order].tolist()
    return msg


def serve_fake_er(node, service: str, objects: dict[str, tuple[float, float, float]],
                  queries: list | None = None):
    """An ErQuery service on `node` that knows `objects` (label -> 3D centre of a 4 cm cube):
    a BOXES query for one of them gets its box, anything else is "not visible". Each request
    is appended to `queries` as (query_type, query, with_3d)."""
    from geometry_msgs.msg import Point, Vector3
    from bimanual_vla.msg import ErBox
    from bimanual_vla.srv import ErQuery

    def answer(request, response):
        if queries is not None:
            queries.append((request.query_type, request.query, request.with_3d))
        response.success = True
        centre = objects.get(request.query)
        if centre is not None and request.query_type == ErQuery.Request.BOXES:
            x, y, z = centre
            response.boxes = [ErBox(label=request.query, score=1.0, box_2d=[400., 450., 460., 520.],
                                    has_position_3d=True, position_3d=Point(x=x, y=y, z=z),
                                    size_3d=Vector3(x=0.04, y=0.04, z=0.04))]
        else:
            response.message = f"{request.query} not visible from cam_high"
        return response
    return node.create_service(ErQuery, service, answer)


def quat_wxyz_from_matrix(R: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (w, x, y, z)."""
    w = np.sqrt(max(0.0, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    x = np.copysign(np.sqrt(max(0.0, 1 + R[0, 0] - R[1, 1] - R[2, 2])) / 2, R[2, 1] - R[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1 - R[0, 0] + R[1, 1] - R[2, 2])) / 2, R[0, 2] - R[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1 - R[0, 0] - R[1, 1] + R[2, 2])) / 2, R[1, 0] - R[0, 1])
    return np.array([w, x, y, z])


def look_at(position, target) -> np.ndarray:
    """Optical-frame rotation (x right, y down, z forward) of a camera at `position` facing
    `target`, with image 'up' towards world +z (or +y when looking straight down)."""
    z = np.asarray(target, float) - np.asarray(position, float)
    z /= np.linalg.norm(z)
    up = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.99 else np.array([0.0, 1.0, 0.0])
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.column_stack([x, y, z])


@dataclass
class Box:
    label: str
    seg_id: int
    centre: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float = 0.0
    rgb: tuple[int, int, int] = (200, 30, 30)

    @property
    def rotation(self) -> np.ndarray:
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


@dataclass
class Render:
    rgb: np.ndarray
    depth: np.ndarray
    segmentation: np.ndarray
    K: np.ndarray
    position: np.ndarray
    rotation: np.ndarray

    @property
    def quat_wxyz(self) -> np.ndarray:
        return quat_wxyz_from_matrix(self.rotation)


def render(boxes: list[Box], position, target, width=320, height=240, fovy_deg=60.0) -> Render:
    """Ray-cast the boxes and the table plane; depth is z-depth along the optical axis (metres)."""
    f = height / 2 / np.tan(np.radians(fovy_deg) / 2)
    K = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])
    R = look_at(position, target)
    o = np.asarray(position, float)
    u, v = np.meshgrid(np.arange(width, dtype=float), np.arange(height, dtype=float))
    rays_cam = np.stack([(u - K[0, 2]) / f, (v - K[1, 2]) / f, np.ones_like(u)], axis=-1)
    rays = rays_cam @ R.T                     # world directions scaled so that t = z-depth
    depth = np.full((height, width), np.inf)
    seg = np.zeros((height, width), np.uint16)
    rgb = np.zeros((height, width, 3), np.uint8)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_table = -o[2] / rays[..., 2]
    table = (t_table > 0) & np.isfinite(t_table)
    depth[table] = t_table[table]
    rgb[table] = TABLE_RGB
    for box in boxes:
        Rb = box.rotation
        ob = (o - np.asarray(box.centre)) @ Rb            # ray origin in the box frame
        db = rays @ Rb
        half = np.asarray(box.half)
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-half - ob) / db
            t2 = (half - ob) / db
        t_near = np.nanmax(np.minimum(t1, t2), axis=-1)
        t_far = np.nanmin(np.maximum(t1, t2), axis=-1)
        hit = (t_near <= t_far) & (t_near > 0) & (t_near < depth)
        depth[hit] = t_near[hit]
        seg[hit] = box.seg_id
        rgb[hit] = box.rgb
    depth[~np.isfinite(depth)] = 0.0
    return Render(rgb, depth.astype(np.float32), seg, K, o, R)
