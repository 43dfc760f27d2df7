"""The interface every embodied-reasoning backend implements (no ROS imports).

A backend answers open-vocabulary questions about one camera frame: boxes, points, trajectories
and top-down grasps, in Gemini Robotics-ER conventions (points [y, x], boxes
[ymin, xmin, ymax, xmax], normalised to 0..1000; see `er_perception.geometry`). The `sim` backend
answers from the simulator's ground-truth segmentation; learned backends (OWLv2, Grounding DINO, a
fine-tuned model, the Gemini API) implement the same four methods, so the node and every client
stay the same whichever backend runs.

Results carry a 3D position in the world frame when the frame has depth and a camera pose. A
query a backend cannot answer (an object it does not see, a phrasing it does not understand) is
not an error: it returns an empty `Answer` whose `message` says why. Malformed input (an empty
query, an image of the wrong shape) raises `ErInputError`.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Iterable, TypeVar

import numpy as np

from er_perception.geometry import CameraPose, GeometryError, check_intrinsics, project, to_er

MAX_QUERY_CHARS = 500


class ErInputError(ValueError):
    """A frame or query no backend can work with; the message says what is wrong."""


@dataclass(frozen=True)
class SceneObject:
    """Ground truth for one object in simulation: its label and segmentation id."""

    label: str
    segmentation_id: int
    name: str = ""


@dataclass(frozen=True)
class CameraFrame:
    """One camera's synchronised data: what a backend looks at."""

    camera: str
    stamp_ns: int
    rgb: np.ndarray                          # (H, W, 3) uint8
    K: np.ndarray                            # (3, 3) intrinsics, OpenCV pixel convention
    pose: CameraPose | None = None           # optical frame in the world; None: no 3D
    depth: np.ndarray | None = None          # (H, W) z-depth, metres; 0 / NaN = no return
    segmentation: np.ndarray | None = None   # (H, W) integer object ids; 0 = background
    objects: tuple[SceneObject, ...] = ()    # labels of the segmentation ids (simulation only)
    world_frame: str = "world"               # frame of `pose` and of every 3D result

    def __post_init__(self) -> None:
        if not (isinstance(self.rgb, np.ndarray) and self.rgb.ndim == 3
                and self.rgb.shape[2] == 3 and self.rgb.dtype == np.uint8 and self.rgb.size):
            raise ErInputError(f"{self.camera}: rgb must be an (H, W, 3) uint8 array, got "
                               f"{getattr(self.rgb, 'dtype', type(self.rgb))} "
                               f"{getattr(self.rgb, 'shape', '')}")
        try:
            object.__setattr__(self, "K", check_intrinsics(self.K))
        except GeometryError as exc:
            raise ErInputError(f"{self.camera}: {exc}") from None
        for name in ("depth", "segmentation"):
            image = getattr(self, name)
            if image is not None and image.shape != self.rgb.shape[:2]:
                raise ErInputError(f"{self.camera}: {name} is {image.shape}, the image is "
                                   f"{self.rgb.shape[:2]}")

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def has_3d(self) -> bool:
        return self.depth is not None and self.pose is not None


@dataclass
class Point:
    label: str
    y: float                                  # 0..1000, top to bottom
    x: float                                  # 0..1000, left to right
    score: float = 1.0
    position_3d: np.ndarray | None = None     # world frame: what the point designates


@dataclass
class Box:
    label: str
    box_2d: tuple[float, float, float, float]  # ymin, xmin, ymax, xmax in 0..1000
    score: float = 1.0
    position_3d: np.ndarray | None = None      # world frame, centre of the object
    size_3d: np.ndarray | None = None          # axis-aligned extents in the world frame


@dataclass
class Trajectory:
    label: str
    points: list[Point] = field(default_factory=list)   # start, waypoints, end
    score: float = 1.0


@dataclass
class Grasp:
    label: str
    y: float
    x: float
    angle: float            # closing axis, radians from the image x axis towards image y (down)
    width: float            # opening, 0..1000 of the image width
    score: float = 1.0
    position_3d: np.ndarray | None = None


T = TypeVar("T")


class Answer(list, Generic[T]):
    """A backend's results, best first, with a message that explains an empty or partial answer."""

    def __init__(self, items: Iterable[T] = (), message: str = ""):
        super().__init__(items)
        self.message = message


def normalise_query(query: str) -> str:
    """Reject queries no backend should see; return the stripped text."""
    if not isinstance(query, str) or not query.strip():
        raise ErInputError("the query is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise ErInputError(f"the query is {len(query)} characters long; the limit is "
                           f"{MAX_QUERY_CHARS}")
    if any(ord(c) < 32 and c not in "\t\n" for c in query):
        raise ErInputError("the query contains control characters")
    return " ".join(query.split())


def limit(items: list[T], max_results: int) -> list[T]:
    """The first `max_results` items (0 = all)."""
    if max_results < 0 or not math.isfinite(max_results):
        raise ErInputError(f"max_results must be >= 0, got {max_results}")
    return items[:max_results] if max_results else items


def not_a_motion(query: str) -> Answer:
    """The answer to a trajectory query that does not name both an object and a target."""
    return Answer(message=f"cannot read {query!r} as a motion; ask e.g. "
                          "'move the red cube into the bowl'")


def motion_path(frame: CameraFrame, label: str, score: float, start_px, end_px,
                start_3d: np.ndarray | None = None, end_3d: np.ndarray | None = None,
                n: int = 10, lift_m: float = 0.0, bulge: float = 0.0) -> Trajectory:
    """`n` points from start to end. With both world ends (the frame has depth and pose): in the
    world, rising `lift_m` at the middle (a parabola), projected into the image; otherwise in the
    image between the pixel (v, u) ends, bulging upwards by `bulge` times the span (a quadratic
    Bezier curve). Zero lift and bulge give a straight line."""
    s = np.linspace(0.0, 1.0, n)
    if start_3d is not None and end_3d is not None:
        lift = lift_m * 4 * s * (1 - s)
        world = start_3d + np.outer(s, end_3d - start_3d) + np.outer(lift, [0.0, 0.0, 1.0])
        u, v, _ = project(world, frame.K, frame.pose)
        points = [Point(label, *to_er(vi, ui, frame.width, frame.height), score, p)
                  for ui, vi, p in zip(u, v, world)]
        return Trajectory(label, points, score)
    a, b = np.asarray(start_px, dtype=float), np.asarray(end_px, dtype=float)
    control = (a + b) / 2 - np.array([bulge * np.linalg.norm(b - a), 0.0])
    pts = np.outer((1 - s) ** 2, a) + np.outer(2 * s * (1 - s), control) + np.outer(s ** 2, b)
    points = [Point(label, *to_er(v, u, frame.width, frame.height), score) for v, u in pts]
    return Trajectory(label, points, score)


class ErBackend(ABC):
    """Embodied-reasoning queries on one frame. Implementations must be safe to call repeatedly
    from one thread; they may keep a model loaded between calls."""

    name: ClassVar[str]

    @abstractmethod
    def detect(self, frame: CameraFrame, query: str, max_results: int = 0) -> Answer[Box]:
        """Boxes of the objects the query describes ("the red cube", "all cubes")."""

    @abstractmethod
    def point(self, frame: CameraFrame, query: str, max_results: int = 0) -> Answer[Point]:
        """Points on the objects or parts the query describes ("the handle of the mug")."""

    @abstractmethod
    def trajectory(self, frame: CameraFrame, query: str,
                   max_results: int = 0) -> Answer[Trajectory]:
        """Paths for a motion ("move the red cube into the bowl"): start at the object, end at
        the target, waypoints in between."""

    @abstractmethod
    def grasp(self, frame: CameraFrame, query: str, max_results: int = 0) -> Answer[Grasp]:
        """Top-down grasps of the objects the query describes ("where to grasp the red cube")."""
