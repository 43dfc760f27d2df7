"""er_perception node across processes: synthetic camera streams and ground truth in, ErQuery
answers, markers and the annotated image out."""
import numpy as np
import pytest

from er_perception.geometry import mask_box
from perception_testing import Box, node_process, render, spin_until

SCENE = [
    Box("red cube", 1, (-0.08, 0.50, 0.02), (0.02, 0.02, 0.02), yaw=0.4, rgb=(220, 30, 30)),
    Box("green cube", 2, (0.02, 0.62, 0.02), (0.02, 0.02, 0.02), rgb=(30, 180, 50)),
    Box("bowl", 3, (0.10, 0.48, 0.02), (0.06, 0.06, 0.02), rgb=(240, 130, 30)),
]
TRUTH = {b.label: np.array(b.centre) for b in SCENE}


@pytest.mark.slow
def test_er_queries_over_ros(ros_context, tmp_path):
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, Image
    from visualization_msgs.msg import Marker, MarkerArray

    from bimanual_core.config import load_embodiment, load_stack
    from bimanual_core.ros_conversions import (LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS,
                                               image_to_numpy, numpy_to_image)
    from bimanual_vla.msg import SimObject, SimObjectArray
    from bimanual_vla.srv import ErQuery

    emb = load_embodiment("aloha2")
    cam = emb.camera("cam_high")
    r = render(SCENE, [0.0, -0.25, 0.7], [0.0, 0.55, 0.0])
    node = Node("er_test_driver", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    pubs = {"rgb": node.create_publisher(Image, cam.image_topic, SENSOR_QOS),
            "depth": node.create_publisher(Image, cam.depth_topic, SENSOR_QOS),
            "seg": node.create_publisher(Image, cam.segmentation_topic, SENSOR_QOS),
            "info": node.create_publisher(CameraInfo, cam.info_topic, SENSOR_QOS),
            "pose": node.create_publisher(PoseStamped, "/cam_high/pose", SENSOR_QOS),
            "objects": node.create_publisher(SimObjectArray, emb.simulation["objects_topic"],
                                             RELIABLE_QOS)}
    markers, annotated = [], []
    node.create_subscription(MarkerArray, "/er_perception/markers", markers.append, LATCHED_QOS)
    node.create_subscription(Image, "/er_perception/annotated_image", annotated.append,
                             LATCHED_QOS)
    client = node.create_client(ErQuery, load_stack().interfaces["er_query_service"])
    published_stamps = []
    last_publish = [0.0]

    def publish_frame():
        now = node.get_clock().now()
        if now.nanoseconds * 1e-9 - last_publish[0] < 0.2:
            return
        last_publish[0] = now.nanoseconds * 1e-9
        stamp = now.to_msg()
        published_stamps.append(now.nanoseconds)
        pubs["rgb"].publish(numpy_to_image(r.rgb, "rgb8", stamp, cam.frame_id))
        pubs["depth"].publish(numpy_to_image(r.depth, "32FC1", stamp, cam.frame_id))
        pubs["seg"].publish(numpy_to_image(r.segmentation, "16UC1", stamp, cam.frame_id))
        info = CameraInfo(width=320, height=240, k=r.K.ravel().tolist())
        info.header.stamp, info.header.frame_id = stamp, cam.frame_id
        pubs["info"].publish(info)
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, "world"
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = r.position
        (pose.pose.orientation.w, pose.pose.orientation.x, pose.pose.orientation.y,
         pose.pose.orientation.z) = r.quat_wxyz
        pubs["pose"].publish(pose)
        objects = SimObjectArray(objects=[SimObject(name=b.label.replace(" ", "_"), label=b.label,
                                                    segmentation_id=b.seg_id) for b in SCENE])
        objects.header.stamp = stamp
        pubs["objects"].publish(objects)

    def call(query_type, query, camera="", with_3d=True, max_results=0, step=publish_frame):
        future = client.call_async(ErQuery.Request(query_type=query_type, query=query,
                                                   camera=camera, with_3d=with_3d,
                                                   max_results=max_results))
        assert spin_until(executor, future.done, timeout_s=10, step=step)
        return future.result()

    Q = ErQuery.Request
    with node_process("er_perception_node", {}, tmp_path / "er_perception.log"):
        assert spin_until(executor, lambda: client.service_is_ready(), timeout_s=20)
        # Before any frame: a clear refusal.
        early = call(Q.BOXES, "the red cube", step=None)
        assert not early.success and "no frame from cam_high yet" in early.message
        assert spin_until(executor, lambda: call(Q.BOXES, "red cube").success, timeout_s=20,
                          step=publish_frame)

        boxes = call(Q.BOXES, "the red cube")
        points = call(Q.POINTS, "point at the green cube", with_3d=False)
        grasps = call(Q.GRASPS, "where to grasp the red cube")
        cubes = call(Q.BOXES, "cubes", max_results=1)
        traj = call(Q.TRAJECTORY, "move the red cube into the bowl")
        assert spin_until(executor, lambda: markers and annotated and any(
            m.type == Marker.LINE_STRIP for m in markers[-1].markers), timeout_s=10,
            step=publish_frame), (len(markers), len(annotated),
                                  [m.type for m in markers[-1].markers] if markers else None)
        traj_markers, traj_image = markers[-1].markers, annotated[-1]
        unknown = call(Q.POINTS, "the purple elephant")
        # An empty answer clears the previous markers.
        assert spin_until(executor, lambda: len(markers[-1].markers) == 1, timeout_s=5)
        failures = {"camera": call(Q.BOXES, "cube", camera="cam_x"),
                    "no_frame": call(Q.BOXES, "cube", camera="cam_low"),
                    "empty": call(Q.BOXES, "  "),
                    "type": call(9, "cube")}

    assert boxes.success and boxes.message == ""
    assert boxes.camera == "cam_high" and (boxes.image_width, boxes.image_height) == (320, 240)
    assert boxes.header.frame_id == "world"
    stamp_ns = boxes.header.stamp.sec * 10**9 + boxes.header.stamp.nanosec
    assert stamp_ns in published_stamps
    (box,) = boxes.boxes
    assert box.label == "red cube" and box.has_position_3d
    np.testing.assert_allclose(box.box_2d, mask_box(r.segmentation == 1))
    got = np.array([box.position_3d.x, box.position_3d.y, box.position_3d.z])
    assert np.linalg.norm(got - TRUTH["red cube"]) < 0.007
    assert box.size_3d.z == pytest.approx(0.04, abs=0.01)
    assert boxes.latency_ms > 0

    (point,) = points.points
    assert point.label == "green cube" and not point.has_position_3d
    assert r.segmentation[int(point.y * 240 / 1000), int(point.x * 320 / 1000)] == 2

    (grasp,) = grasps.grasps
    assert grasp.has_position_3d and -np.pi / 2 < grasp.angle <= np.pi / 2 and grasp.width > 0
    assert len(cubes.boxes) == 1

    (trajectory,) = traj.trajectories
    assert trajectory.label == "red cube -> bowl" and len(trajectory.points) >= 3
    start = trajectory.points[0].position_3d
    assert np.linalg.norm(np.array([start.x, start.y, start.z]) - TRUTH["red cube"]) < 0.007

    assert unknown.success and not unknown.points and "nothing matches" in unknown.message
    for key, reason in (("camera", "unknown camera 'cam_x'"), ("no_frame", "no frame from cam_low"),
                        ("empty", "the query is empty"), ("type", "unknown query_type 9")):
        assert not failures[key].success and reason in failures[key].message, key

    # The trajectory is drawn as a line strip in the world frame, replacing earlier markers.
    assert traj_markers[0].action == Marker.DELETEALL
    strips = [m for m in traj_markers if m.type == Marker.LINE_STRIP]
    assert len(strips) == 1 and strips[0].header.frame_id == "world"
    assert len(strips[0].points) == len(trajectory.points)
    assert markers[-1].markers[0].action == Marker.DELETEALL
    image = traj_image
    assert (image.width, image.height, image.encoding) == (320, 240, "rgb8")
    assert image.header.frame_id == cam.frame_id
    assert np.any(image_to_numpy(image) != r.rgb), "the answer is drawn on the image"
    node.destroy_node()
