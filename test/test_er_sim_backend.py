"""The `sim` ER backend and query language on synthetic frames with exact ground truth."""
import numpy as np
import pytest

from er_perception.backends import make_backend
from er_perception.backends.base import CameraFrame, ErInputError, SceneObject
from er_perception.geometry import CameraPose, mask_box, project, to_er
from er_perception.language import match_labels, parse_motion
from perception_testing import Box, render

SCENE = [
    Box("red cube", 1, (-0.08, 0.50, 0.02), (0.02, 0.02, 0.02), yaw=0.4, rgb=(220, 30, 30)),
    Box("green cube", 2, (0.00, 0.62, 0.02), (0.02, 0.02, 0.02), rgb=(30, 180, 50)),
    Box("blue cube", 3, (-0.15, 0.62, 0.02), (0.02, 0.02, 0.02), rgb=(30, 60, 220)),
    Box("bowl", 4, (0.10, 0.50, 0.02), (0.06, 0.06, 0.02), rgb=(240, 130, 30)),
    Box("yellow cube", 5, (0.90, 0.50, 0.02), (0.02, 0.02, 0.02), rgb=(230, 200, 30)),  # off view
]
TRUTH = {b.label: np.array(b.centre) for b in SCENE}
CAMERA = ([0.0, 0.1, 0.6], [0.0, 0.55, 0.0])


@pytest.fixture(scope="module")
def frame():
    r = render(SCENE, *CAMERA)
    return CameraFrame(camera="cam_high", stamp_ns=5, rgb=r.rgb, K=r.K,
                       pose=CameraPose(r.position, r.rotation), depth=r.depth,
                       segmentation=r.segmentation,
                       objects=tuple(SceneObject(b.label, b.seg_id) for b in SCENE))


@pytest.fixture(scope="module")
def backend():
    return make_backend("sim")


def test_detect_returns_the_mask_box_and_3d(frame, backend):
    boxes = backend.detect(frame, "the red cube")
    assert [b.label for b in boxes] == ["red cube"] and boxes.message == ""
    assert boxes[0].box_2d == pytest.approx(mask_box(frame.segmentation == 1))
    assert np.linalg.norm(boxes[0].position_3d - TRUTH["red cube"]) < 0.007
    assert boxes[0].size_3d[2] == pytest.approx(0.04, abs=0.01)
    # The 3D centre projects inside the 2D box.
    u, v, _ = project(boxes[0].position_3d, frame.K, frame.pose)
    y, x = to_er(v[0], u[0], frame.width, frame.height)
    ymin, xmin, ymax, xmax = boxes[0].box_2d
    assert ymin < y < ymax and xmin < x < xmax


@pytest.mark.parametrize("query,labels", [
    ("red block", {"red cube"}),
    ("RED CUBE.", {"red cube"}),
    ("cubes", {"red cube", "green cube", "blue cube"}),       # the yellow one is not visible
    ("detect all cubes and the bowl", {"red cube", "green cube", "blue cube", "bowl"}),
    ("the orange dish", {"bowl"}),
])
def test_queries_are_matched_to_labels(frame, backend, query, labels):
    assert {b.label for b in backend.detect(frame, query)} == labels


def test_max_results_keeps_the_best(frame, backend):
    assert len(backend.detect(frame, "cube", max_results=2)) == 2
    assert len(backend.detect(frame, "cube", max_results=0)) == 3


def test_unknown_and_invisible_objects_give_an_empty_answer_with_a_reason(frame, backend):
    answer = backend.point(frame, "the purple elephant")
    assert answer == [] and "nothing matches" in answer.message and "red cube" in answer.message
    answer = backend.grasp(frame, "yellow cube")
    assert answer == [] and "not visible from cam_high" in answer.message


def test_point_lies_on_the_object_with_its_3d_centre(frame, backend):
    (p,) = backend.point(frame, "point to the green cube")
    row, col = int(p.y * frame.height / 1000), int(p.x * frame.width / 1000)
    assert frame.segmentation[row, col] == 2
    assert np.linalg.norm(p.position_3d - TRUTH["green cube"]) < 0.007


def test_grasp_of_a_yawed_cube(frame, backend):
    (g,) = backend.grasp(frame, "where to grasp the red cube")
    row, col = int(g.y * frame.height / 1000), int(g.x * frame.width / 1000)
    assert frame.segmentation[row, col] == 1
    # The camera looks nearly straight down with image x = world -x... so the image angle of a
    # cube face is the cube's yaw up to the mirror; the closing axis must follow a face.
    u, v, _ = project(np.array([TRUTH["red cube"], TRUTH["red cube"] +
                                [np.cos(0.4), np.sin(0.4), 0]]), frame.K, frame.pose)
    face = np.arctan2(v[1] - v[0], u[1] - u[0])
    err = min((g.angle - face) % (np.pi / 2), np.pi / 2 - (g.angle - face) % (np.pi / 2))
    assert err < np.radians(6)
    cube_px = 0.04 * frame.K[0, 0] / (CAMERA[0][2] - 0.04)
    assert g.width * frame.width / 1000 == pytest.approx(cube_px, rel=0.25)
    assert np.linalg.norm(g.position_3d - TRUTH["red cube"]) < 0.007


def test_trajectory_from_object_to_target_arcs_over(frame, backend):
    (traj,) = backend.trajectory(frame, "move the red cube into the bowl")
    assert traj.label == "red cube -> bowl" and len(traj.points) == 10
    start, end = traj.points[0], traj.points[-1]
    assert np.linalg.norm(start.position_3d - TRUTH["red cube"]) < 0.007
    assert np.linalg.norm(end.position_3d[:2] - TRUTH["bowl"][:2]) < 0.007
    # Bowl centre 0.02 + its half height 0.02 + the cube's half height 0.02: resting on top.
    assert end.position_3d[2] == pytest.approx(0.06, abs=0.01)
    heights = [p.position_3d[2] for p in traj.points]
    assert max(heights) > max(heights[0], heights[-1]) + 0.05
    # 2D points are the projections of the 3D ones; the start lies on the cube.
    row, col = int(start.y * frame.height / 1000), int(start.x * frame.width / 1000)
    assert frame.segmentation[row, col] == 1


def test_trajectory_without_depth_is_an_image_arc(frame, backend):
    flat = CameraFrame(frame.camera, frame.stamp_ns, frame.rgb, frame.K,
                       segmentation=frame.segmentation, objects=frame.objects)
    (traj,) = backend.trajectory(flat, "put the red cube in the bowl")
    assert all(p.position_3d is None for p in traj.points)
    ys = [p.y for p in traj.points]
    assert min(ys[1:-1]) < min(ys[0], ys[-1])            # bulges upwards in the image
    assert backend.detect(flat, "bowl")[0].position_3d is None


def test_trajectory_needs_an_object_and_a_target(frame, backend):
    assert "cannot read" in backend.trajectory(frame, "the red cube").message
    assert "nothing matches" in backend.trajectory(frame, "move the red cube to the moon").message


def test_bad_input_is_rejected(frame, backend):
    with pytest.raises(ErInputError, match="empty"):
        backend.detect(frame, "   ")
    with pytest.raises(ErInputError, match="max_results"):
        backend.detect(frame, "cube", max_results=-1)
    with pytest.raises(ErInputError, match="depth is"):
        CameraFrame("cam_high", 0, frame.rgb, frame.K, depth=np.zeros((2, 2)))
    with pytest.raises(ErInputError, match="uint8"):
        CameraFrame("cam_high", 0, frame.rgb.astype(float), frame.K)
    with pytest.raises(ErInputError, match="intrinsics"):
        CameraFrame("cam_high", 0, frame.rgb, np.full((3, 3), np.nan))
    no_truth = CameraFrame("cam_high", 0, frame.rgb, frame.K)
    assert "needs a segmentation" in backend.detect(no_truth, "cube").message
    with pytest.raises(ValueError,
                       match="unknown ER backend 'owl'; known: gemini, hf, learned, sim"):
        make_backend("owl")


@pytest.mark.parametrize("query,expected", [
    ("the red cube", ["red cube"]),
    ("where to grasp the red cube", ["red cube"]),
    ("red block", ["red cube"]),
    ("cube", ["red cube", "green cube"]),
    ("green cubes", ["green cube"]),
    ("the blue cube", []),                    # a colour the scene does not have
    ("a banana", []),
])
def test_match_labels(query, expected):
    matches = match_labels(query, ["red cube", "green cube", "bowl"])
    assert [label for label, _ in matches] == expected


def test_parse_motion():
    assert parse_motion("Move the red cube into the bowl.") == ("the red cube", "the bowl")
    assert parse_motion("put the red cube on top of the green cube") == ("the red cube",
                                                                          "the green cube")
    assert parse_motion("from the cube to the bowl") == ("the cube", "the bowl")
    assert parse_motion("the red cube") is None


def test_rviz_config_shows_the_er_topics():
    import yaml

    from bimanual_core.config import config_dir, load_embodiment
    from er_perception.node import ANNOTATED_IMAGE_TOPIC, MARKER_TOPIC

    rviz = yaml.safe_load((config_dir() / "er_perception.rviz").read_text())
    displays = rviz["Visualization Manager"]["Displays"]
    topics = {d["Class"].split("/")[-1]: [] for d in displays}
    for d in displays:
        topics[d["Class"].split("/")[-1]].append(d.get("Topic", {}).get("Value"))
    assert topics["MarkerArray"] == [MARKER_TOPIC]
    assert set(topics["Image"]) == {ANNOTATED_IMAGE_TOPIC,
                                    load_embodiment("aloha2").camera("cam_high").image_topic}
    assert rviz["Visualization Manager"]["Global Options"]["Fixed Frame"] == "world"
