"""The `sim` ER backend: answers from the simulator's ground-truth segmentation (no ROS imports).

Queries are matched to the labels of the simulated objects (`er_perception.language`); each
matched object's mask gives real boxes, points, grasps and, with depth, 3D positions, so the rest
of the stack (planner, markers, clients) sees exactly what a learned backend would return, with
perfect perception. An object that is occluded or out of view is not returned.
"""
from __future__ import annotations

import numpy as np

from er_perception.backends.base import (Answer, Box, CameraFrame, ErBackend, Grasp, Point,
                                         SceneObject, Trajectory, limit, motion_path,
                                         normalise_query, not_a_motion)
from er_perception.geometry import (ER_SCALE, MaskGrasp, mask_box, mask_centroid, mask_grasp,
                                    mask_position_3d, to_er)
from er_perception.language import match_labels, parse_motion


class _Seen:
    """A matched object as seen in one frame: its mask and (lazily) its 3D estimate."""

    def __init__(self, obj: SceneObject, score: float, mask: np.ndarray, frame: CameraFrame):
        self.obj, self.score, self.mask, self._frame = obj, score, mask, frame
        self._3d: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def label(self) -> str:
        return self.obj.label

    def centre_px(self) -> tuple[float, float]:
        return mask_centroid(self.mask)

    def position_3d(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(centre, extents) in the world, or None without depth and pose."""
        if self._3d is None and self._frame.has_3d:
            self._3d = mask_position_3d(self.mask, self._frame.depth, self._frame.K,
                                        self._frame.pose)
        return self._3d

    def centre_3d(self) -> np.ndarray | None:
        estimate = self.position_3d()
        return None if estimate is None else estimate[0]


class SimBackend(ErBackend):
    """Ground-truth ER for simulation.

    Args:
      min_pixels: masks smaller than this are treated as not visible (slivers at the border).
      trajectory_points: points per trajectory, start and end included.
      arc_height_m: how far trajectories rise above the straight line between start and end.
    """

    name = "sim"

    def __init__(self, min_pixels: int = 10, trajectory_points: int = 10,
                 arc_height_m: float = 0.10):
        if min_pixels < 1 or trajectory_points < 2 or not arc_height_m >= 0:
            raise ValueError("min_pixels >= 1, trajectory_points >= 2 and arc_height_m >= 0")
        self.min_pixels = min_pixels
        self.trajectory_points = trajectory_points
        self.arc_height_m = arc_height_m

    # -- matching --------------------------------------------------------------------------------
    def _find(self, frame: CameraFrame, query: str) -> tuple[list[_Seen], str]:
        """Visible objects the query refers to, best first, or [] and the reason."""
        query = normalise_query(query)
        if frame.segmentation is None or not frame.objects:
            lacking = "no segmentation" if frame.segmentation is None else "no objects"
            return [], (f"the sim backend needs a segmentation image and the simulator's objects; "
                        f"{frame.camera} has {lacking}")
        labels = [o.label for o in frame.objects]
        matches = match_labels(query, labels)
        if not matches:
            return [], f"nothing matches {query!r}; known objects: {', '.join(sorted(set(labels)))}"
        seen = []
        for label, score in matches:
            for obj in frame.objects:
                if obj.label != label:
                    continue
                mask = frame.segmentation == obj.segmentation_id
                if int(mask.sum()) >= self.min_pixels:
                    seen.append(_Seen(obj, score, mask, frame))
        if not seen:
            names = ", ".join(label for label, _ in matches)
            return [], f"{names} not visible from {frame.camera}"
        seen.sort(key=lambda s: (-s.score, -int(s.mask.sum())))
        return seen, ""

    # -- queries ---------------------------------------------------------------------------------
    def detect(self, frame: CameraFrame, query: str, max_results: int = 0) -> Answer[Box]:
        seen, message = self._find(frame, query)
        boxes = []
        for s in limit(seen, max_results):
            centre, size = s.position_3d() or (None, None)
            boxes.append(Box(s.label, mask_box(s.mask), s.score, centre, size))
        return Answer(boxes, message)

    def point(self, frame: CameraFrame, query: str, max_results: int = 0) -> Answer[Point]:
        seen, message = self._find(frame, query)
        points = []
        for s in limit(seen, max_results):
            y, x = to_er(*s.centre_px(), frame.width, frame.height)
            points.append(Point(s.label, y, x, s.score, s.centre_3d()))
        return Answer(points, message)

    def grasp(self, frame: CameraFrame, query: str, max_results: int = 0) -> Answer[Grasp]:
        seen, message = self._find(frame, query)
        grasps = []
        for s in limit(seen, max_results):
            g: MaskGrasp = mask_grasp(s.mask)
            y, x = to_er(g.v, g.u, frame.width, frame.height)
            grasps.append(Grasp(s.label, y, x, g.angle, g.width * ER_SCALE / frame.width, s.score,
                                s.centre_3d()))
        return Answer(grasps, message)

    def trajectory(self, frame: CameraFrame, query: str,
                   max_results: int = 0) -> Answer[Trajectory]:
        parts = parse_motion(normalise_query(query))
        if parts is None:
            return not_a_motion(query)
        (sources, why_src), (targets, why_dst) = (self._find(frame, p) for p in parts)
        if not sources or not targets:
            return Answer(message=why_src or why_dst)
        paths = [self._path(frame, s, t) for s in sources for t in targets
                 if s.obj.segmentation_id != t.obj.segmentation_id]
        return Answer(limit(paths, max_results), "" if paths else "the object is its own target")

    def _path(self, frame: CameraFrame, source: _Seen, target: _Seen) -> Trajectory:
        """Start at the object's centre, end where that centre would be resting on top of the
        target, arcing up in between (in 3D when there is depth, else in the image)."""
        start = end = None
        src3, dst3 = source.position_3d(), target.position_3d()
        if src3 is not None and dst3 is not None:
            start = src3[0]
            end = dst3[0] + np.array([0.0, 0.0, dst3[1][2] / 2 + src3[1][2] / 2])
        # No depth: an arc in the image, bulging upwards by a third of the span.
        return motion_path(frame, f"{source.label} -> {target.label}",
                           source.score * target.score, source.centre_px(), target.centre_px(),
                           start, end, self.trajectory_points, self.arc_height_m, bulge=1 / 3)
