"""Camera geometry shared by ER backends (no ROS imports).

Conventions:
- Pixels: OpenCV / sensor_msgs CameraInfo, the centre of the top-left pixel is (u, v) = (0, 0);
  u grows right, v down. K is the 3x3 intrinsic matrix of that convention.
- Camera pose: the optical frame (x right, y down, z forward) in the world: p_world = R p_cam + t.
- Depth: z-depth, the coordinate along the optical axis (not the distance along the ray), metres;
  0 or non-finite means no return.
- ER (Gemini Robotics-ER): points [y, x] and boxes [ymin, xmin, ymax, xmax], normalised so that the
  image spans 0..1000 from its top/left edge to its bottom/right edge.
- World: z up (the table top is horizontal), which the 3D object estimate relies on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation
from scipy.spatial import ConvexHull, QhullError

ER_SCALE = 1000.0
# Robust range of a point set: ignore the extreme 2 % on each side (edge pixels, depth noise).
_RANGE_PERCENTILES = (2.0, 98.0)
# Masks whose principal axes differ less than this in spread are "round" (squares, discs): their
# principal axes are arbitrary, so the grasp axis comes from the minimum-area rectangle instead.
_ISOTROPY_RATIO = 1.3


class GeometryError(ValueError):
    """Input the geometry cannot work with (empty mask, bad intrinsics, no valid depth)."""


def quat_wxyz_to_matrix(q) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> 3x3 rotation matrix."""
    q = np.asarray(q, dtype=float)
    n = np.linalg.norm(q) if q.shape == (4,) else 0.0
    if not (np.isfinite(n) and n > 1e-9):
        raise GeometryError(f"not a quaternion: {q}")
    w, x, y, z = q / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


@dataclass(frozen=True)
class CameraPose:
    """Pose of a camera's optical frame in the world."""

    position: np.ndarray     # (3,)
    rotation: np.ndarray     # (3, 3), optical -> world

    @classmethod
    def from_quat_wxyz(cls, position, quat_wxyz) -> CameraPose:
        position = np.asarray(position, dtype=float)
        if position.shape != (3,) or not np.all(np.isfinite(position)):
            raise GeometryError(f"camera position must be 3 finite numbers, got {position}")
        return cls(position, quat_wxyz_to_matrix(quat_wxyz))


def check_intrinsics(K) -> np.ndarray:
    K = np.asarray(K, dtype=float)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise GeometryError(f"intrinsics must be a finite 3x3 matrix with fx, fy > 0, got {K}")
    return K


def to_er(v, u, width: int, height: int) -> tuple[float, float]:
    """Pixel (row v, column u) -> ER (y, x) in 0..1000."""
    return (float(v) + 0.5) * ER_SCALE / height, (float(u) + 0.5) * ER_SCALE / width


def from_er(y, x, width: int, height: int) -> tuple[float, float]:
    """ER (y, x) -> pixel (row v, column u), the inverse of `to_er`."""
    return float(y) * height / ER_SCALE - 0.5, float(x) * width / ER_SCALE - 0.5


def back_project(u, v, depth, K, pose: CameraPose) -> np.ndarray:
    """Pixels with their z-depth -> (N, 3) world points."""
    K = check_intrinsics(K)
    u, v, z = (np.asarray(a, dtype=float).ravel() for a in (u, v, depth))
    cam = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=1)
    return cam @ pose.rotation.T + pose.position


def project(points, K, pose: CameraPose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 3) world points -> pixel u, v and z-depth (negative z: behind the camera)."""
    K = check_intrinsics(K)
    cam = (np.atleast_2d(np.asarray(points, dtype=float)) - pose.position) @ pose.rotation
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return K[0, 0] * cam[:, 0] / z + K[0, 2], K[1, 1] * cam[:, 1] / z + K[1, 2], z


def _nonempty(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if mask.ndim != 2:
        raise GeometryError(f"a mask is 2-D, got shape {mask.shape}")
    v, u = np.nonzero(mask)
    if v.size == 0:
        raise GeometryError("empty mask")
    return v, u


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight box around a mask in ER convention [ymin, xmin, ymax, xmax] (pixel edges, 0..1000)."""
    v, u = _nonempty(mask)
    h, w = mask.shape
    return (v.min() * ER_SCALE / h, u.min() * ER_SCALE / w,
            (v.max() + 1) * ER_SCALE / h, (u.max() + 1) * ER_SCALE / w)


def mask_centroid(mask: np.ndarray) -> tuple[float, float]:
    """Centroid (v, u) of a mask; for shapes whose centroid falls outside (rings, L shapes), the
    nearest mask pixel, so that a point always lies on the object."""
    v, u = _nonempty(mask)
    cv, cu = v.mean(), u.mean()
    if mask[int(round(cv)), int(round(cu))]:
        return float(cv), float(cu)
    i = np.argmin((v - cv) ** 2 + (u - cu) ** 2)
    return float(v[i]), float(u[i])


def mask_position_3d(mask, depth, K, pose: CameraPose,
                     support_ring_px: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Centre and axis-aligned world extents of an object from its mask and the depth image.

    The camera sees only the near side of an object, so the median of its back-projected points
    lies on the surface, 1-2 cm from the centre of a 4 cm cube. Instead: the footprint (x, y) is
    the robust range of the visible points; the top is their highest point; the bottom is the
    lowest visible point or, when that is only the top (a view from straight above), the surface
    the object stands on, seen in a ring of pixels around the mask, if one lies within the
    object's horizontal thickness below; otherwise the object is taken to be as tall as it is
    thick (its range across the minor principal axis of the footprint).
    """
    v, u = _nonempty(mask)
    depth = np.asarray(depth, dtype=float)
    z = depth[v, u]
    valid = np.isfinite(z) & (z > 0)
    if not np.any(valid):
        raise GeometryError("no valid depth inside the mask")
    points = back_project(u[valid], v[valid], z[valid], K, pose)
    lo, hi = np.percentile(points, _RANGE_PERCENTILES, axis=0)
    xy = points[:, :2] - points[:, :2].mean(axis=0)
    thickness = 0.0
    if len(xy) >= 3:
        across = xy @ np.linalg.eigh(np.cov(xy.T))[1][:, 0]
        thickness = float(np.subtract(*np.percentile(across, _RANGE_PERCENTILES[::-1])))
    support = support_height(mask, depth, K, pose, hi[2], support_ring_px)
    if support is not None and lo[2] - thickness <= support:
        bottom = min(lo[2], support)
    else:
        bottom = min(lo[2], hi[2] - thickness)
    centre = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (bottom + hi[2]) / 2])
    return centre, np.array([hi[0] - lo[0], hi[1] - lo[1], hi[2] - bottom])


def support_height(mask, depth, K, pose: CameraPose, top: float, ring_px: int) -> float | None:
    """Median height of what surrounds the mask below the object's top (the table it stands
    on), or None when nothing valid surrounds it."""
    ring = binary_dilation(mask, iterations=ring_px) & ~mask
    v, u = np.nonzero(ring)
    z = depth[v, u]
    valid = np.isfinite(z) & (z > 0)
    if not np.any(valid):
        return None
    heights = back_project(u[valid], v[valid], z[valid], K, pose)[:, 2]
    below = heights[heights < top]
    return float(np.median(below)) if below.size else None


@dataclass(frozen=True)
class MaskGrasp:
    """A top-down grasp in pixels: where, the closing axis angle, and the opening."""

    v: float
    u: float
    angle: float     # radians in (-pi/2, pi/2], from the image x axis towards the image y axis
    width: float     # extent of the mask along the closing axis, pixels


def _wrap_axis(angle: float) -> float:
    """An axis has no direction: map an angle to (-pi/2, pi/2]."""
    angle = (angle + np.pi / 2) % np.pi - np.pi / 2
    return np.pi / 2 if np.isclose(angle, -np.pi / 2) else float(angle)


def _min_area_rect_short_axis(points: np.ndarray) -> float:
    """Direction (angle) of the short side of the minimum-area rectangle around 2-D points."""
    try:
        hull = points[ConvexHull(points).vertices]
    except QhullError:            # collinear pixels: a line, whose short side is across it
        d = points[-1] - points[0]
        return _wrap_axis(np.arctan2(d[1], d[0]) + np.pi / 2)
    edges = np.diff(np.vstack([hull, hull[:1]]), axis=0)
    best = None
    for a in np.unique(np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2)):
        c, s = np.cos(a), np.sin(a)
        p = hull @ np.array([[c, -s], [s, c]])           # coordinates along a and a + pi/2
        ext = p.max(axis=0) - p.min(axis=0)
        area = ext[0] * ext[1]
        if best is None or area < best[0] - 1e-9:
            best = (area, a if ext[0] <= ext[1] else a + np.pi / 2)
    return _wrap_axis(best[1])


def mask_grasp(mask: np.ndarray) -> MaskGrasp:
    """Top-down grasp of a mask: close across its narrow direction, at its centroid.

    The closing axis is the minor principal axis of the mask; for masks without a clear major axis
    (a square seen from above) it is the short side of the minimum-area rectangle, which follows
    the faces of a cube whatever its rotation.
    """
    v, u = _nonempty(mask)
    cv, cu = mask_centroid(mask)
    pts = np.column_stack([u, v]).astype(float)
    if len(pts) >= 3:
        evals, evecs = np.linalg.eigh(np.cov((pts - pts.mean(axis=0)).T))
    else:
        evals, evecs = np.array([0.0, 0.0]), np.eye(2)
    if evals[0] > 0 and evals[1] / evals[0] < _ISOTROPY_RATIO ** 2:
        angle = _min_area_rect_short_axis(pts)
    else:
        minor = evecs[:, 0]
        angle = _wrap_axis(np.arctan2(minor[1], minor[0]))
    axis = np.array([np.cos(angle), np.sin(angle)])
    across = pts @ axis
    return MaskGrasp(v=cv, u=cu, angle=angle, width=float(across.max() - across.min() + 1.0))


@dataclass(frozen=True)
class Correspondence:
    """Where a world point appears in a camera, and whether that camera actually sees it."""

    y: float                  # ER [y, x] in the target image (may lie outside 0..1000)
    x: float
    depth: float              # z-depth of the point in the target camera (negative: behind it)
    visible: bool             # inside the image, in front of the camera, not occluded
    reason: str = ""          # why not visible ("" when visible)


def deproject_er(y, x, depth, K, pose: CameraPose) -> np.ndarray:
    """ER point [y, x] (0..1000) in an image with its z-depth image -> the world point it shows.

    The depth is read at the nearest pixel; a point without a depth return there cannot be
    placed in 3D and raises GeometryError."""
    depth = np.asarray(depth, dtype=float)
    if depth.ndim != 2:
        raise GeometryError(f"a depth image is 2-D, got shape {depth.shape}")
    h, w = depth.shape
    if not (0 <= y <= ER_SCALE and 0 <= x <= ER_SCALE):
        raise GeometryError(f"ER point [y, x] must lie in 0..{ER_SCALE:.0f}, got [{y}, {x}]")
    v, u = from_er(y, x, w, h)
    row, col = min(max(int(round(v)), 0), h - 1), min(max(int(round(u)), 0), w - 1)
    z = depth[row, col]
    if not (np.isfinite(z) and z > 0):
        raise GeometryError(f"no depth return at [{y:.0f}, {x:.0f}] (pixel {col}, {row})")
    return back_project(u, v, z, K, pose)[0]


def correspond(point, K, pose: CameraPose, width: int, height: int, depth=None,
               tolerance_m: float = 0.02, window_px: int = 1) -> Correspondence:
    """Project a world point into a camera and say whether the camera sees it there.

    Visible means: in front of the camera, inside its image and, when the camera's depth image
    is given, not occluded: the depth at the projected pixel (or a neighbour within `window_px`,
    so that points on an object's silhouette are not lost to rounding) agrees with the point's
    z-depth within `tolerance_m`. A nearer surface there means occluded; only farther surfaces
    (or no return) mean the point is not on what the camera sees."""
    if not tolerance_m > 0:
        raise GeometryError(f"tolerance_m must be > 0, got {tolerance_m}")
    u, v, z = (float(a[0]) for a in project(np.asarray(point, dtype=float)[None], K, pose))
    if not z > 0:
        return Correspondence(float("nan"), float("nan"), z, False, "behind the camera")
    y, x = to_er(v, u, width, height)
    if not (-0.5 <= u < width - 0.5 and -0.5 <= v < height - 0.5):
        return Correspondence(y, x, z, False, "outside the image")
    if depth is None:
        return Correspondence(y, x, z, True)
    depth = np.asarray(depth, dtype=float)
    if depth.shape != (height, width):
        raise GeometryError(f"depth is {depth.shape}, the image is {(height, width)}")
    row, col = int(round(v)), int(round(u))
    seen = depth[max(row - window_px, 0):row + window_px + 1,
                 max(col - window_px, 0):col + window_px + 1]
    seen = seen[np.isfinite(seen) & (seen > 0)]
    if seen.size and np.any(np.abs(seen - z) <= tolerance_m):
        return Correspondence(y, x, z, True)
    if seen.size and np.min(seen) < z:
        return Correspondence(y, x, z, False, f"occluded: a surface at {np.min(seen):.3f} m is "
                                              f"in front of the point at {z:.3f} m")
    return Correspondence(y, x, z, False, f"the depth there ({depth[row, col]:.3f} m) does not "
                                          f"reach the point at {z:.3f} m")
