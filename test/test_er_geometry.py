"""ER geometry without ROS: projection round trips, ER normalisation, masks -> boxes, 3D, grasps."""
import numpy as np
import pytest

from er_perception.geometry import (CameraPose, GeometryError, back_project, from_er, mask_box,
                                    mask_centroid, mask_grasp, mask_position_3d, project,
                                    quat_wxyz_to_matrix, to_er)
from perception_testing import Box, look_at, quat_wxyz_from_matrix, render

K = np.array([[300.0, 0, 159.5], [0, 300.0, 119.5], [0, 0, 1]])


def oblique_pose():
    position = np.array([0.1, -0.3, 0.7])
    rotation = look_at(position, [0, 0.5, 0])
    return CameraPose.from_quat_wxyz(position, quat_wxyz_from_matrix(rotation))


def test_quaternion_matches_rotation():
    R = look_at([0.1, -0.3, 0.7], [0, 0.5, 0])
    np.testing.assert_allclose(quat_wxyz_to_matrix(quat_wxyz_from_matrix(R)), R, atol=1e-12)
    np.testing.assert_allclose(quat_wxyz_to_matrix([2, 0, 0, 0]), np.eye(3))   # normalised
    with pytest.raises(GeometryError, match="not a quaternion"):
        quat_wxyz_to_matrix([0, 0, 0, 0])
    with pytest.raises(GeometryError):
        CameraPose.from_quat_wxyz([0, 0, np.nan], [1, 0, 0, 0])


def test_back_projection_round_trip():
    pose = oblique_pose()
    rng = np.random.default_rng(0)
    points = rng.uniform([-0.3, 0.2, 0.0], [0.3, 0.8, 0.2], size=(200, 3))
    u, v, z = project(points, K, pose)
    assert np.all(z > 0)
    np.testing.assert_allclose(back_project(u, v, z, K, pose), points, atol=1e-9)


def test_depth_is_z_depth_not_ray_length():
    """Back-projecting a rendered table through its z-depth lands every pixel on z = 0."""
    r = render([], position=[0.0, -0.3, 0.7], target=[0.0, 0.5, 0.0])
    pose = CameraPose(r.position, r.rotation)
    v, u = np.nonzero(r.depth > 0)
    world = back_project(u, v, r.depth[v, u], r.K, pose)
    assert np.abs(world[:, 2]).max() < 1e-4
    # The image corner rays are longer than their z-depth: a ray-length depth would miss by cm.
    assert r.depth[0, 0] < np.linalg.norm(world[0] - r.position) - 0.05


def test_er_normalisation():
    assert to_er(0, 0, 320, 240) == pytest.approx((0.5 * 1000 / 240, 0.5 * 1000 / 320))
    assert to_er(119.5, 159.5, 320, 240) == pytest.approx((500.0, 500.0))
    assert from_er(*to_er(37, 201, 320, 240), 320, 240) == pytest.approx((37, 201))


def test_mask_box_in_er_convention():
    mask = np.zeros((240, 320), bool)
    mask[24:48, 80:160] = True
    assert mask_box(mask) == pytest.approx((100.0, 250.0, 200.0, 500.0))
    assert mask_box(np.ones((240, 320), bool)) == pytest.approx((0, 0, 1000, 1000))
    with pytest.raises(GeometryError, match="empty"):
        mask_box(np.zeros((4, 4), bool))


def test_centroid_stays_on_the_object():
    ring = np.zeros((100, 100), bool)
    yy, xx = np.mgrid[:100, :100]
    ring[(np.hypot(yy - 50, xx - 50) < 30) & (np.hypot(yy - 50, xx - 50) > 20)] = True
    v, u = mask_centroid(ring)
    assert ring[int(round(v)), int(round(u))]
    square = np.zeros((100, 100), bool)
    square[10:20, 30:50] = True
    assert mask_centroid(square) == pytest.approx((14.5, 39.5))


def rotated_rect_mask(length, width, angle, shape=(240, 320), centre=(120, 160)):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    dx, dy = xx - centre[1], yy - centre[0]
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = -dx * np.sin(angle) + dy * np.cos(angle)
    return (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)


def axis_error(a, b):
    d = (a - b) % np.pi
    return min(d, np.pi - d)


@pytest.mark.parametrize("angle_deg", [0, 25, 60, 90, 135])
def test_grasp_closes_across_an_elongated_mask(angle_deg):
    angle = np.radians(angle_deg)
    g = mask_grasp(rotated_rect_mask(80, 14, angle))
    assert axis_error(g.angle, angle + np.pi / 2) < np.radians(3)
    assert -np.pi / 2 < g.angle <= np.pi / 2
    assert g.width == pytest.approx(15, abs=3)
    assert (g.v, g.u) == pytest.approx((120, 160), abs=0.6)


@pytest.mark.parametrize("angle_deg", [0, 20, 40])
def test_grasp_of_a_square_follows_its_faces(angle_deg):
    """A square's principal axes are arbitrary; the grasp must still align with a face."""
    angle = np.radians(angle_deg)
    g = mask_grasp(rotated_rect_mask(40, 40, angle))
    assert min(axis_error(g.angle, angle), axis_error(g.angle, angle + np.pi / 2)) < np.radians(4)
    assert g.width == pytest.approx(41, abs=3)


@pytest.mark.parametrize("camera", [([0.0, -0.3, 0.75], [0, 0.5, 0]),     # cam_high-like
                                    ([0.0, 0.47, 0.6], [0.0, 0.5, 0.0]),    # almost top-down
                                    ([0.15, 0.3, 0.3], [0.0, 0.5, 0.0])])   # wrist-like
@pytest.mark.parametrize("half,yaw,lift", [
    ((0.02, 0.02, 0.02), 0.3, 0.0),       # a cube on the table
    ((0.05, 0.01, 0.01), -0.5, 0.0),      # a bar lying flat
    ((0.07, 0.07, 0.02), 0.0, 0.0),       # wide and flat, like a bowl
    ((0.02, 0.02, 0.02), 0.2, 0.10),      # a cube held 10 cm above the table
])
def test_object_centre_and_extents_from_mask_and_depth(camera, half, yaw, lift):
    centre = np.array([0.05, 0.52, half[2] + lift])
    r = render([Box("obj", 7, tuple(centre), half, yaw)], *camera)
    mask = r.segmentation == 7
    est, extents = mask_position_3d(mask, r.depth, r.K, CameraPose(r.position, r.rotation))
    assert np.linalg.norm(est - centre) < 0.007
    assert extents[2] == pytest.approx(2 * half[2], abs=0.01)
    # The plain median of the visible surface would be biased towards the camera.
    v, u = np.nonzero(mask)
    median = np.median(back_project(u, v, r.depth[v, u], r.K, CameraPose(r.position, r.rotation)),
                       axis=0)
    assert np.linalg.norm(est - centre) < np.linalg.norm(median - centre)


def test_position_3d_needs_valid_depth():
    mask = np.ones((4, 4), bool)
    with pytest.raises(GeometryError, match="no valid depth"):
        mask_position_3d(mask, np.zeros((4, 4)), K, oblique_pose())
    with pytest.raises(GeometryError, match="intrinsics"):
        back_project([1], [1], [1], np.eye(3) * 0, oblique_pose())
