"""ER results as RViz markers in the world frame (only results with a 3D position are drawn).

Boxes are translucent cubes with a wire frame, points spheres, trajectories line strips through
their waypoints, grasps an arrow coming down onto the object plus a bar between the fingertips;
every result has a text label. The array starts with DELETEALL, so each query replaces the last.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point as PointMsg
from geometry_msgs.msg import Vector3
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from er_perception.annotate import colour
from er_perception.backends.base import Box, CameraFrame, Grasp, Point, Trajectory
from er_perception.geometry import back_project, from_er

APPROACH_LENGTH_M = 0.12    # length of the grasp arrow above the object


def _rgba(label: str, alpha: float = 1.0) -> ColorRGBA:
    r, g, b = colour(label)
    return ColorRGBA(r=r / 255, g=g / 255, b=b / 255, a=alpha)


def _pt(p) -> PointMsg:
    return PointMsg(x=float(p[0]), y=float(p[1]), z=float(p[2]))


def _box_edges(centre: np.ndarray, size: np.ndarray) -> list[PointMsg]:
    corners = [centre + size / 2 * np.array([sx, sy, sz])
               for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    pairs = [(i, j) for i in range(8) for j in range(i + 1, 8) if bin(i ^ j).count("1") == 1]
    return [_pt(corners[k]) for pair in pairs for k in pair]


def grasp_fingertips(frame: CameraFrame, grasp: Grasp) -> tuple[np.ndarray, np.ndarray]:
    """World positions of the two fingertips: the image closing axis back-projected at the
    object's depth and levelled to its height (the grasp is top-down)."""
    centre = grasp.position_3d
    depth = ((centre - frame.pose.position) @ frame.pose.rotation)[2]
    v, u = from_er(grasp.y, grasp.x, frame.width, frame.height)
    half = grasp.width * frame.width / 1000 / 2
    du, dv = np.cos(grasp.angle) * half, np.sin(grasp.angle) * half
    tips = back_project([u - du, u + du], [v - dv, v + dv], [depth, depth], frame.K, frame.pose)
    tips[:, 2] = centre[2]
    return tips[0], tips[1]


class MarkerBuilder:
    def __init__(self, frame: CameraFrame, stamp: Time):
        self._frame, self._stamp = frame, stamp
        self.array = MarkerArray(markers=[Marker(action=Marker.DELETEALL)])

    def _add(self, ns: str, kind: int, label: str, alpha: float = 1.0, **fields) -> Marker:
        m = Marker(ns=ns, id=len(self.array.markers), type=kind, action=Marker.ADD,
                   color=_rgba(label, alpha), **fields)
        m.header.frame_id, m.header.stamp = self._frame.world_frame, self._stamp
        m.pose.orientation.w = 1.0
        self.array.markers.append(m)
        return m

    def _text(self, label: str, at: np.ndarray) -> None:
        m = self._add("labels", Marker.TEXT_VIEW_FACING, label, text=label,
                      scale=Vector3(z=0.025))
        m.pose.position = _pt(at + [0.0, 0.0, 0.04])

    def boxes(self, boxes: Sequence[Box]) -> None:
        for b in boxes:
            if b.position_3d is None:
                continue
            size = np.maximum(b.size_3d, 1e-3)
            cube = self._add("boxes", Marker.CUBE, b.label, 0.35,
                             scale=Vector3(x=size[0], y=size[1], z=size[2]))
            cube.pose.position = _pt(b.position_3d)
            self._add("boxes", Marker.LINE_LIST, b.label, scale=Vector3(x=0.002),
                      points=_box_edges(b.position_3d, size))
            self._text(b.label, b.position_3d + [0.0, 0.0, size[2] / 2])

    def points(self, points: Sequence[Point]) -> None:
        for p in points:
            if p.position_3d is None:
                continue
            sphere = self._add("points", Marker.SPHERE, p.label,
                               scale=Vector3(x=0.02, y=0.02, z=0.02))
            sphere.pose.position = _pt(p.position_3d)
            self._text(p.label, p.position_3d)

    def trajectories(self, trajectories: Sequence[Trajectory]) -> None:
        for t in trajectories:
            path = [p.position_3d for p in t.points if p.position_3d is not None]
            if len(path) < 2:
                continue
            self._add("trajectories", Marker.LINE_STRIP, t.label, scale=Vector3(x=0.006),
                      points=[_pt(p) for p in path])
            self._add("trajectories", Marker.SPHERE_LIST, t.label,
                      scale=Vector3(x=0.012, y=0.012, z=0.012), points=[_pt(p) for p in path])
            self._text(t.label, path[len(path) // 2])

    def grasps(self, grasps: Sequence[Grasp]) -> None:
        for g in grasps:
            if g.position_3d is None or self._frame.pose is None:
                continue
            top = g.position_3d + [0.0, 0.0, APPROACH_LENGTH_M]
            self._add("grasps", Marker.ARROW, g.label, scale=Vector3(x=0.008, y=0.016, z=0.02),
                      points=[_pt(top), _pt(g.position_3d)])
            self._add("grasps", Marker.LINE_LIST, g.label, scale=Vector3(x=0.006),
                      points=[_pt(p) for p in grasp_fingertips(self._frame, g)])
            self._text(g.label, top)
