"""Multi-view correspondence without ROS: a point seen by one camera, found in another."""
import numpy as np
import pytest

from er_perception.geometry import (CameraPose, GeometryError, correspond, deproject_er,
                                    mask_centroid, to_er)
from perception_testing import Box, render

CUBE = Box("red cube", 1, (0.0, 0.5, 0.02), (0.02, 0.02, 0.02), yaw=0.3, rgb=(220, 30, 30))
HIGH = ([0.0, -0.25, 0.7], [0.0, 0.55, 0.0])       # camera A: in front, looking down the table
SIDE = ([0.6, 0.5, 0.3], [0.0, 0.5, 0.02])          # camera B: from the right, low


def pose(r):
    return CameraPose(r.position, r.rotation)


def er_of(mask):
    v, u = mask_centroid(mask)
    return to_er(v, u, mask.shape[1], mask.shape[0])


def test_point_transferred_to_another_camera_and_back():
    a, b = render([CUBE], *HIGH), render([CUBE], *SIDE)
    y, x = er_of(a.segmentation == 1)
    world = deproject_er(y, x, a.depth, a.K, pose(a))
    assert np.all(np.abs(world - CUBE.centre) <= 0.021)             # on the cube's surface
    c = correspond(world, b.K, pose(b), 320, 240, b.depth)
    assert c.visible and c.reason == "" and c.depth > 0
    row, col = int(c.y * 240 / 1000), int(c.x * 320 / 1000)
    assert b.segmentation[row, col] == 1
    # Back from B with B's depth: the same world point within the depth tolerance.
    again = deproject_er(c.y, c.x, b.depth, b.K, pose(b))
    assert np.linalg.norm(again - world) < 0.01
    # And into A again: the starting pixel.
    back = correspond(again, a.K, pose(a), 320, 240, a.depth)
    assert back.visible and abs(back.y - y) < 6 and abs(back.x - x) < 6


def test_occluded_point_is_not_visible():
    wall = Box("wall", 2, (0.3, 0.5, 0.1), (0.02, 0.1, 0.1), rgb=(30, 30, 200))
    a, b = render([CUBE, wall], *HIGH), render([CUBE, wall], *SIDE)
    assert not np.any(b.segmentation == 1), "the wall hides the cube from B"
    world = deproject_er(*er_of(a.segmentation == 1), a.depth, a.K, pose(a))
    c = correspond(world, b.K, pose(b), 320, 240, b.depth)
    assert not c.visible and c.reason.startswith("occluded")
    assert b.segmentation[int(c.y * 240 / 1000), int(c.x * 320 / 1000)] == 2
    # Without B's depth occlusion cannot be checked: geometry alone says it is in view.
    assert correspond(world, b.K, pose(b), 320, 240).visible


def test_outside_and_behind():
    b = render([CUBE], *SIDE)
    far_left = correspond([0.0, 3.0, 0.0], b.K, pose(b), 320, 240, b.depth)
    assert not far_left.visible and far_left.reason == "outside the image"
    behind = correspond([1.5, 0.5, 0.3], b.K, pose(b), 320, 240, b.depth)
    assert not behind.visible and behind.reason == "behind the camera" and behind.depth < 0


def test_bad_input():
    a = render([CUBE], *HIGH)
    sky = np.full_like(a.depth, np.inf)
    with pytest.raises(GeometryError, match="no depth return"):
        deproject_er(500, 500, sky, a.K, pose(a))
    with pytest.raises(GeometryError, match="0..1000"):
        deproject_er(1200, 500, a.depth, a.K, pose(a))
    with pytest.raises(GeometryError, match="tolerance"):
        correspond([0, 0.5, 0], a.K, pose(a), 320, 240, a.depth, tolerance_m=0)
