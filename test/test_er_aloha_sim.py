"""The sim ER backend on real MuJoCo renders of the ALOHA 2 scene: 3D within 1 cm of the truth."""
import numpy as np
import pytest

from aloha_driver.sim import AlohaSim
from bimanual_core.config import load_embodiment
from er_perception.backends import make_backend
from er_perception.backends.base import CameraFrame, SceneObject
from er_perception.geometry import CameraPose


def frame_from(sim: AlohaSim, camera: str) -> CameraFrame:
    r = sim.render(camera)
    position, quat = sim.camera_pose(camera)
    objects = tuple(SceneObject(o["label"], o["segmentation_id"], o["name"]) for o in sim.objects())
    return CameraFrame(camera, 0, r["rgb"], sim.camera_intrinsics(camera),
                       CameraPose.from_quat_wxyz(position, quat), r["depth"], r["segmentation"],
                       objects)


@pytest.mark.parametrize("seed", [0, 1])
def test_red_cube_and_bowl_located_in_3d_from_cam_high(seed):
    backend = make_backend("sim")
    with AlohaSim(load_embodiment("aloha2"), task="place", seed=seed) as sim:
        frame = frame_from(sim, "cam_high")
        (point,) = backend.point(frame, "the red cube")
        assert np.linalg.norm(point.position_3d - sim.object_position("red cube")) < 0.01
        (bowl,) = backend.detect(frame, "bowl")
        assert np.linalg.norm(bowl.position_3d - sim.object_position("bowl")) < 0.01
        truth = next(o for o in sim.objects() if o["label"] == "bowl")
        np.testing.assert_allclose(bowl.size_3d, truth["size"], atol=0.015)
        (grasp,) = backend.grasp(frame, "where to grasp the red cube")
        row = int(grasp.y * frame.height / 1000)
        col = int(grasp.x * frame.width / 1000)
        red_id = next(o.segmentation_id for o in frame.objects if o.label == "red cube")
        assert frame.segmentation[row, col] == red_id
        (path,) = backend.trajectory(frame, "put the red cube in the bowl")
        end = path.points[-1].position_3d
        assert np.linalg.norm(end[:2] - sim.object_position("bowl")[:2]) < 0.01
