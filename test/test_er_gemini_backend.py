"""The gemini ER backend against a local server speaking the Gemini REST API: the requests it
sends (model, key, image, ER prompt), the replies it reads (recorded by hand in
test/data/gemini_er/), failures (malformed replies, HTTP errors, timeouts, retries) and the ER node
answering over ROS with it."""
import base64
import io
import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from er_perception.backends import make_backend
from er_perception.backends.base import CameraFrame, ErInputError
from er_perception.backends.gemini import DEFAULT_MODEL, parse_answer
from er_perception.geometry import CameraPose, from_er
from gemini_replay import KEY, ReplayServer, api_key, error, reply_file  # noqa: F401 (fixture)
from perception_testing import Box, node_process, render, spin_until

DATA = Path(__file__).parent / "data" / "gemini_er"
SCENE = [
    Box("red cube", 1, (-0.08, 0.50, 0.02), (0.02, 0.02, 0.02), yaw=0.4, rgb=(220, 30, 30)),
    Box("green cube", 2, (0.02, 0.62, 0.02), (0.02, 0.02, 0.02), rgb=(30, 180, 50)),
    Box("bowl", 3, (0.10, 0.48, 0.02), (0.06, 0.06, 0.02), rgb=(240, 130, 30)),
]
TRUTH = {b.label: np.array(b.centre) for b in SCENE}
RENDER = render(SCENE, [0.0, -0.25, 0.7], [0.0, 0.55, 0.0])


def reply(name: str) -> tuple[int, dict, float]:
    return reply_file(DATA / name)


@contextmanager
def backend(*replies, **options):
    with ReplayServer(*replies) as server:
        yield make_backend("gemini", base_url=server.url, **options), server


def frame(with_3d: bool = True) -> CameraFrame:
    r = RENDER
    return CameraFrame("cam_high", 1, r.rgb, r.K, CameraPose(r.position, r.rotation) if with_3d
                       else None, r.depth if with_3d else None)


def test_points_request_and_answer(api_key):
    with backend(reply("points.json")) as (gemini, server):
        answer = gemini.point(frame(), "  the cubes ")
    (request,) = server.requests
    assert request["path"] == f"/v1beta/models/{DEFAULT_MODEL}:generateContent"
    assert request["headers"]["x-goog-api-key"] == KEY
    image_part, text_part = request["body"]["contents"][0]["parts"]
    assert image_part["inlineData"]["mime_type"] == "image/jpeg"
    jpeg = base64.urlsafe_b64decode(image_part["inlineData"]["data"])      # as google-genai sends
    sent = np.asarray(Image.open(io.BytesIO(jpeg)))
    assert sent.shape == RENDER.rgb.shape
    assert np.abs(sent.astype(int) - RENDER.rgb).mean() < 3          # the frame, JPEG-compressed
    assert text_part["text"].startswith("Point to the cubes.")
    assert ('[{"point": <point>, "label": <label1>}, ...]. The points are in [y, x] format '
            'normalized to 0-1000.') in text_part["text"]
    assert request["body"]["generationConfig"] == {"temperature": 0.5,
                                                   "thinkingConfig": {"thinking_budget": 0}}

    assert answer.message == ""
    assert [(p.label, p.y, p.x, p.score) for p in answer] == [
        ("red cube", 515, 449, 1.0), ("green cube", 452, 512, 1.0)]     # as listed: best first
    # 3D: the surface seen at the point, on the cube (its top is 4 cm high, its centre 2 cm).
    red = answer[0].position_3d
    assert np.linalg.norm(red[:2] - TRUTH["red cube"][:2]) < 0.02 and 0.0 < red[2] < 0.045


def test_boxes_fenced_reply_and_3d(api_key):
    with backend(reply("boxes_fenced.json"), reply("boxes_fenced.json"),
                 model="gemini-robotics-er-x", temperature=0.0, thinking_budget=-1) as (gemini,
                                                                                       server):
        boxes = gemini.detect(frame(), "red cube and bowl", max_results=5)
        grasps = gemini.grasp(frame(with_3d=False), "where to grasp the red cube", max_results=1)
    assert server.requests[0]["path"] == "/v1beta/models/gemini-robotics-er-x:generateContent"
    assert server.requests[0]["body"]["generationConfig"] == {
        "temperature": 0.0, "thinkingConfig": {"thinking_budget": -1}}
    prompt = server.prompt(0)
    assert prompt.startswith("Return bounding boxes as a JSON array with labels.")
    assert "Limit to 5 objects. Include only the objects that match: red cube and bowl." in prompt
    assert '[{"box_2d": [ymin, xmin, ymax, xmax], "label": <label for the object>}]' in prompt
    assert "normalized to 0-1000" in prompt

    assert boxes.message == ""
    assert [(b.label, b.box_2d) for b in boxes] == [("red cube", (488, 431, 542, 466)),
                                                     ("orange bowl", (479, 525, 575, 609))]
    # What stands in each box above the table: the object's centre and size, as the sim
    # backend measures a segmentation mask.
    for box, truth in zip(boxes, ("red cube", "bowl")):
        assert np.linalg.norm(box.position_3d - TRUTH[truth]) < 0.008, (box.label,
                                                                        box.position_3d)
        assert box.size_3d[2] == pytest.approx(0.04, abs=0.005)
    assert boxes[1].size_3d[:2] == pytest.approx([0.12, 0.12], abs=0.01)

    # No depth: a grasp at the box centre, across its short side (the red cube's box is taller
    # than wide in pixels: 54 x 240/1000 = 13 px high, 35 x 320/1000 = 11 px wide).
    (grasp,) = grasps
    assert (grasp.label, grasp.y, grasp.x, grasp.angle) == ("red cube", 515, 448.5, 0.0)
    assert grasp.width == pytest.approx(35) and grasp.position_3d is None


def test_grasp_with_depth_follows_the_object(api_key):
    with backend(reply("boxes_fenced.json")) as (gemini, _):
        red, bowl = gemini.grasp(frame(), "red cube and bowl")
    v, u = from_er(red.y, red.x, RENDER.rgb.shape[1], RENDER.rgb.shape[0])
    assert RENDER.segmentation[round(v), round(u)] == 1                   # on the cube
    assert np.linalg.norm(red.position_3d - TRUTH["red cube"]) < 0.008
    assert -np.pi / 2 < red.angle <= np.pi / 2 and red.angle != 0.0     # the cube is turned
    assert 0 < red.width < 40 and bowl.label == "orange bowl"


def test_trajectory_is_ordered_by_label(api_key):
    recorded = reply("trajectory.json")
    shuffled = json.loads(json.dumps(recorded[1]))
    part = shuffled["candidates"][0]["content"]["parts"][0]
    part["text"] = json.dumps(json.loads(part["text"])[::-1])
    with backend(recorded, (200, shuffled, 0.0), trajectory_points=10) as (gemini, server):
        path = gemini.trajectory(frame(), "move the red cube into the bowl")
        reversed_path = gemini.trajectory(frame(), "move the red cube into the bowl")
    assert server.prompt(0).startswith(
        "Place a point on the red cube, then 9 points for the trajectory of this motion: move "
        "the red cube into the bowl. The points should be labeled by order of the trajectory, "
        "from '0' (start point) to '9' (final point).")
    for answer in (path, reversed_path):
        (t,) = answer
        assert t.label == "red cube -> bowl" and len(t.points) == 10
        assert (t.points[0].y, t.points[0].x) == (515, 449)
        assert (t.points[-1].y, t.points[-1].x) == (522, 566)
        assert np.linalg.norm(t.points[0].position_3d[:2] - TRUTH["red cube"][:2]) < 0.02


def test_malformed_and_empty_replies_give_empty_answers(api_key):
    blocked = (200, {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}, 0.0)
    with backend(reply("malformed.json"), reply("empty.json"), blocked) as (gemini, _):
        malformed = gemini.point(frame(), "the cubes")
        empty = gemini.detect(frame(), "the purple elephant")
        refused = gemini.trajectory(frame(), "move the red cube into the bowl")
    assert list(malformed) == [] and malformed.message.startswith("gemini: the reply is not JSON")
    assert list(empty) == [] and empty.message == "gemini: found nothing in cam_high"
    assert list(refused) == [] and refused.message == (
        "gemini: the reply has no text (blocked: PROHIBITED_CONTENT)")


def test_bad_queries_send_nothing(api_key):
    with backend() as (gemini, server):
        for query, max_results in (("  ", 0), ("the red cube", -1), ("x" * 501, 0)):
            with pytest.raises(ErInputError):
                gemini.detect(frame(), query, max_results)
    assert server.requests == []


def test_parse_answer_validates_items():
    items, problems = parse_answer(
        '{"points": [{"point": [100, 1020], "label": "a"}, {"point": [NaN, 3], "label": "b"}, '
        '{"point": [1, 2, 3]}, {"point": [5, 1500]}, {"point": [7, 8]}, "c"]}', "point", 2)
    assert items == [("a", (100.0, 1000.0)), ("", (7.0, 8.0))]         # clamped; label optional
    assert len(problems) == 4
    assert "item 1: 'point' [nan, 3] is not within 0..1000" in problems
    assert "item 2: 'point' must be 2 numbers" in problems[1]
    assert problems[2].startswith("item 3") and problems[3].startswith("item 5: no 'point'")
    boxes, problems = parse_answer('[{"box_2d": [500, 10, 400, 20], "label": "x"}]', "box_2d", 4)
    assert boxes == [] and "min < max" in problems[0]


def test_partly_bad_reply_keeps_the_good_items(api_key):
    bad = json.loads((DATA / "points.json").read_text())
    bad["candidates"][0]["content"]["parts"][0]["text"] = (
        '[{"point": [515, 449], "label": "red cube"}, {"point": [452], "label": "green cube"}]')
    with backend((200, bad, 0.0)) as (gemini, _):
        answer = gemini.point(frame(), "the cubes")
    assert [p.label for p in answer] == ["red cube"]
    assert answer.message.startswith("gemini: dropped 1 of 2 items: item 1: 'point' must be 2")


def test_http_errors(api_key):
    with backend(error(500, "INTERNAL", "An internal error has occurred."), reply("points.json"),
                 error(503, "UNAVAILABLE", "The model is overloaded."),
                 error(503, "UNAVAILABLE", "The model is overloaded."),
                 error(400, "INVALID_ARGUMENT", "Unable to process input image.")) as (gemini,
                                                                                      server):
        retried = gemini.point(frame(), "the cubes")
        assert len(server.requests) == 2 and retried.message == "" and len(retried) == 2
        overloaded = gemini.point(frame(), "the cubes")
        assert len(server.requests) == 4
        refused = gemini.point(frame(), "the cubes")
        assert len(server.requests) == 5                                   # 4xx: no retry
    assert list(overloaded) == [] and overloaded.message == (
        "gemini: HTTP 503 UNAVAILABLE: The model is overloaded. (2 attempts)")
    assert list(refused) == [] and refused.message.startswith(
        "gemini: HTTP 400 INVALID_ARGUMENT: Unable to process input image.")


def test_timeouts(api_key):
    slow = (*reply("points.json")[:2], 3.0)
    with backend(slow, timeout_s=0.5, retries=0) as (gemini, server):
        start = time.monotonic()
        answer = gemini.point(frame(), "the cubes")
        elapsed = time.monotonic() - start
    assert list(answer) == [] and answer.message == "gemini: no answer within 0.5 s (1 attempt)"
    assert 0.45 < elapsed < 1.5, elapsed
    assert len(server.requests) == 1
    # A timeout is retried: the second attempt answers.
    with backend(slow, reply("points.json"), timeout_s=0.5) as (gemini, server):
        answer = gemini.point(frame(), "the cubes")
    assert len(answer) == 2 and len(server.requests) == 2


def test_unreachable_server(api_key):
    with ReplayServer() as server:
        url = server.url
    gemini = make_backend("gemini", base_url=url, retries=0, timeout_s=2.0)
    answer = gemini.detect(frame(), "the red cube")
    assert list(answer) == [] and answer.message.startswith(f"gemini: cannot reach {url}")


def test_configuration_errors(monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="GOOGLE_API_KEY or GEMINI_API_KEY"):
        make_backend("gemini")
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    for bad in ({"timeout_s": 0}, {"retries": -1}, {"thinking_budget": -2},
                {"temperature": 3.0}, {"trajectory_points": 1}, {"model": ""}):
        with pytest.raises(ValueError, match="gemini backend"):
            make_backend("gemini", **bad)


def test_er_node_answers_with_gemini(ros_context, tmp_path, api_key):
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, Image as ImageMsg

    from bimanual_core.config import load_embodiment, load_stack
    from bimanual_core.ros_conversions import SENSOR_QOS, numpy_to_image
    from bimanual_vla.srv import ErQuery

    cam = load_embodiment("aloha2").camera("cam_high")
    r = RENDER
    node = Node("gemini_test_driver", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    pubs = {"rgb": node.create_publisher(ImageMsg, cam.image_topic, SENSOR_QOS),
            "depth": node.create_publisher(ImageMsg, cam.depth_topic, SENSOR_QOS),
            "info": node.create_publisher(CameraInfo, cam.info_topic, SENSOR_QOS),
            "pose": node.create_publisher(PoseStamped, cam.pose_topic, SENSOR_QOS)}
    client = node.create_client(ErQuery, load_stack().interfaces["er_query_service"])
    last_publish = [0]

    def publish_frame():                                  # 10 Hz
        now = node.get_clock().now()
        if now.nanoseconds - last_publish[0] < 100_000_000:
            return
        last_publish[0] = now.nanoseconds
        stamp = now.to_msg()
        pubs["rgb"].publish(numpy_to_image(r.rgb, "rgb8", stamp, cam.frame_id))
        pubs["depth"].publish(numpy_to_image(r.depth, "32FC1", stamp, cam.frame_id))
        info = CameraInfo(width=320, height=240, k=r.K.ravel().tolist())
        info.header.stamp, info.header.frame_id = stamp, cam.frame_id
        pubs["info"].publish(info)
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, "world"
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = r.position
        q = pose.pose.orientation
        q.w, q.x, q.y, q.z = r.quat_wxyz
        pubs["pose"].publish(pose)

    with ReplayServer(reply("boxes_fenced.json"), reply("malformed.json")) as server, \
            node_process("er_perception_node",
                         {"backend": "gemini", "gemini.base_url": server.url,
                          "gemini.timeout_s": 5.0, "gemini.model": "gemini-robotics-er-test"},
                         tmp_path / "er_perception.log"):
        assert spin_until(executor, client.service_is_ready, timeout_s=20)

        def call(query_type, query):
            future = client.call_async(ErQuery.Request(query_type=query_type, query=query,
                                                       with_3d=True))
            assert spin_until(executor, future.done, timeout_s=15, step=publish_frame)
            return future.result()

        boxes = call(ErQuery.Request.BOXES, "the red cube and the bowl")
        malformed = call(ErQuery.Request.POINTS, "the cubes")
    node.destroy_node()

    assert server.requests[0]["path"] == "/v1beta/models/gemini-robotics-er-test:generateContent"
    assert server.requests[0]["headers"]["x-goog-api-key"] == KEY
    assert "the red cube and the bowl" in server.prompt(0)
    assert boxes.success and boxes.message == "", boxes.message
    assert (boxes.image_width, boxes.image_height) == (320, 240)
    red, bowl = boxes.boxes
    assert (red.label, list(red.box_2d)) == ("red cube", [488, 431, 542, 466])
    assert bowl.label == "orange bowl" and red.has_position_3d
    got = np.array([red.position_3d.x, red.position_3d.y, red.position_3d.z])
    assert np.linalg.norm(got - TRUTH["red cube"]) < 0.008
    assert malformed.success and not malformed.points
    assert malformed.message.startswith("gemini: the reply is not JSON")
