"""Draw ER results on the image they refer to (no ROS imports), for people watching the robot."""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from er_perception.backends.base import Box, Grasp, Point, Trajectory
from er_perception.geometry import ER_SCALE, from_er

_PALETTE = [(255, 64, 64), (64, 200, 255), (255, 200, 0), (160, 255, 80), (255, 96, 255),
            (255, 150, 50), (80, 255, 200), (200, 150, 255)]


def colour(label: str) -> tuple[int, int, int]:
    """A stable colour per label, the same in the image and in the RViz markers."""
    return _PALETTE[zlib.crc32(label.encode()) % len(_PALETTE)]


def annotate(rgb: np.ndarray, boxes: Sequence[Box] = (), points: Sequence[Point] = (),
             trajectories: Sequence[Trajectory] = (), grasps: Sequence[Grasp] = ()) -> np.ndarray:
    """A copy of `rgb` with boxes, points, trajectories and grasps drawn and labelled."""
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    h, w = rgb.shape[:2]
    r = max(2, round(min(h, w) / 80))

    def px(y, x):
        v, u = from_er(y, x, w, h)
        return u, v

    for b in boxes:
        ymin, xmin, ymax, xmax = b.box_2d
        draw.rectangle([xmin * w / ER_SCALE, ymin * h / ER_SCALE,
                        xmax * w / ER_SCALE - 1, ymax * h / ER_SCALE - 1],
                       outline=colour(b.label), width=2)
        draw.text((xmin * w / ER_SCALE + 2, max(0, ymin * h / ER_SCALE - 11)), b.label,
                  fill=colour(b.label))
    for p in points:
        u, v = px(p.y, p.x)
        draw.ellipse([u - r, v - r, u + r, v + r], outline=(255, 255, 255), fill=colour(p.label))
        draw.text((u + r + 2, v - r), p.label, fill=colour(p.label))
    for t in trajectories:
        path = [px(p.y, p.x) for p in t.points]
        draw.line(path, fill=colour(t.label), width=2)
        for u, v in path[1:-1]:
            draw.ellipse([u - 1, v - 1, u + 1, v + 1], fill=colour(t.label))
        if path:
            (u0, v0), (u1, v1) = path[0], path[-1]
            draw.ellipse([u0 - r, v0 - r, u0 + r, v0 + r], outline=colour(t.label), width=2)
            draw.rectangle([u1 - r, v1 - r, u1 + r, v1 + r], outline=colour(t.label), width=2)
            draw.text((u0 + r + 2, v0 + r), t.label, fill=colour(t.label))
    for g in grasps:
        u, v = px(g.y, g.x)
        half = g.width * w / ER_SCALE / 2
        du, dv = np.cos(g.angle) * half, np.sin(g.angle) * half
        tu, tv = -dv / 3, du / 3                                   # finger ticks, across the axis
        c = colour(g.label)
        draw.line([(u - du, v - dv), (u + du, v + dv)], fill=c, width=2)
        for s in (-1, 1):
            fu, fv = u + s * du, v + s * dv
            draw.line([(fu - tu, fv - tv), (fu + tu, fv + tv)], fill=c, width=3)
        draw.ellipse([u - 2, v - 2, u + 2, v + 2], fill=c)
        draw.text((u + half + 3, v), g.label, fill=c)
    return np.asarray(image)
