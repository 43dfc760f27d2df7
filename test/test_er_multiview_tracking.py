"""er_perception on the MuJoCo ALOHA 2 scene (aloha_sim_node): multi-view correspondence of the
red cube across the four cameras, continuous tracking on a topic, and annotated images saved
headless (by the node and by `bimanual-vla er-query`)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from perception_testing import node_process, spin_until

CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")
TRACK_RATE_HZ = 2.0


@pytest.mark.slow
def test_correspondence_tracking_and_saved_images(ros_context, tmp_path):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from bimanual_core.config import load_embodiment, load_stack
    from bimanual_core.ros_conversions import (RELIABLE_QOS, SENSOR_QOS, image_to_numpy,
                                               time_to_sec)
    from bimanual_vla.msg import ErTracking, SimObjectArray
    from bimanual_vla.srv import ErCorrespond

    emb, interfaces = load_embodiment("aloha2"), load_stack().interfaces
    node = Node("er_multiview_test", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    segmentation = {c: {} for c in CAMERAS}      # camera -> stamp (s) -> ids
    image_stamps, tracked, objects = set(), [], []

    def keep_segmentation(camera, msg):
        frames = segmentation[camera]
        frames[time_to_sec(msg.header.stamp)] = image_to_numpy(msg)
        while len(frames) > 20:
            frames.pop(min(frames))

    for camera in CAMERAS:
        node.create_subscription(Image, emb.camera(camera).segmentation_topic,
                                 lambda m, c=camera: keep_segmentation(c, m), SENSOR_QOS)
    node.create_subscription(Image, emb.camera("cam_high").image_topic,
                             lambda m: image_stamps.add(time_to_sec(m.header.stamp)), SENSOR_QOS)
    node.create_subscription(ErTracking, interfaces["er_tracking_topic"], tracked.append,
                             RELIABLE_QOS)
    node.create_subscription(SimObjectArray, emb.simulation["objects_topic"], objects.append,
                             RELIABLE_QOS)
    client = node.create_client(ErCorrespond, interfaces["er_correspond_service"])

    def call(**fields):
        future = client.call_async(ErCorrespond.Request(**fields))
        assert spin_until(executor, future.done, timeout_s=15)
        return future.result()

    saved = tmp_path / "annotated"
    er_params = {"track_queries": "['red cube']", "track_rate_hz": TRACK_RATE_HZ,
                 "save_annotated_dir": str(saved)}
    with node_process("aloha_sim_node", {}, tmp_path / "sim.log"), \
            node_process("er_perception_node", er_params, tmp_path / "er.log"):
        assert spin_until(executor, lambda: client.service_is_ready() and objects
                          and all(segmentation.values()) and len(tracked) >= 2, timeout_s=90)
        red = next(o.segmentation_id for o in objects[-1].objects if o.label == "red cube")
        by_query = call(camera="cam_high", query="the red cube")
        by_point = call(camera="cam_high", y=by_query.source.y, x=by_query.source.x,
                        target_cameras=["cam_low"])
        unknown = call(camera="cam_high", query="red cube", target_cameras=["cam_x"])
        cli_png = tmp_path / "cli.png"
        cli = subprocess.run([str(Path(sys.executable).parent / "bimanual-vla"), "er-query",
                              "--type", "points", "--query", "red cube", "--camera", "cam_low",
                              "--save", str(cli_png)], capture_output=True, text=True, timeout=60)
        bad = subprocess.run([str(Path(sys.executable).parent / "bimanual-vla"), "er-query",
                              "--query", "red cube", "--camera", "cam_x"],
                             capture_output=True, text=True, timeout=60)
        no_depth = call(camera="cam_high", y=1.0, x=1.0)     # the corner sees nothing
        # Tracking: count messages over a few seconds of wall time, after taking in the ones
        # queued while the test was not spinning.
        spin_until(executor, lambda: False, timeout_s=1.0)
        start = len(tracked)
        t0 = node.get_clock().now().nanoseconds
        spin_until(executor, lambda: False, timeout_s=4.0)
        rate = (len(tracked) - start) / ((node.get_clock().now().nanoseconds - t0) * 1e-9)

    assert by_query.success, by_query.message
    assert by_query.camera == "cam_high" and by_query.source.label == "red cube"
    assert list(by_query.target_cameras) == list(CAMERAS[1:])
    stamp = time_to_sec(by_query.header.stamp)
    cube = next(o for o in objects[-1].objects if o.label == "red cube").pose.position
    world = by_query.source.position_3d
    assert np.linalg.norm([world.x - cube.x, world.y - cube.y, world.z - cube.z]) < 0.04
    for camera, point, visible, reason in zip(by_query.target_cameras, by_query.points,
                                              by_query.visible, by_query.reasons):
        assert visible and reason == "", (camera, reason)
        seg = segmentation[camera][min(segmentation[camera], key=lambda s: abs(s - stamp))]
        h, w = seg.shape
        assert seg[int(point.y * h / 1000), int(point.x * w / 1000)] == red, camera
    assert by_point.success and list(by_point.visible) == [True]
    assert by_point.points[0].y == pytest.approx(by_query.points[0].y)
    assert not unknown.success and "unknown target camera 'cam_x'" in unknown.message
    assert not no_depth.success and "no depth return at [1, 1]" in no_depth.message

    # Tracking: roughly the rate (the cameras run at 10 Hz), image stamps, the cube in the box.
    assert 0.4 * TRACK_RATE_HZ <= rate <= 1.5 * TRACK_RATE_HZ, rate
    for msg in tracked[-3:]:
        assert msg.camera == "cam_high" and list(msg.queries) == ["red cube"]
        assert time_to_sec(msg.header.stamp) in image_stamps
        (box,) = msg.boxes
        assert box.label == "red cube" and box.has_position_3d
        assert np.linalg.norm([box.position_3d.x - cube.x, box.position_3d.y - cube.y]) < 0.01
        seg = segmentation["cam_high"].get(time_to_sec(msg.header.stamp))
        if seg is not None:
            v, u = np.nonzero(seg == red)
            ymin, xmin, ymax, xmax = box.box_2d
            assert ymin <= v.mean() * 1000 / 240 <= ymax and xmin <= u.mean() * 1000 / 320 <= xmax

    # The CLI: Gemini ER JSON on stdout, the annotated image saved; a refusal exits 1.
    assert cli.returncode == 0, cli.stderr
    answer = json.loads(cli.stdout)
    (pointed,) = answer["points"]
    assert answer["camera"] == "cam_low" and pointed["label"] == "red cube"
    seg = segmentation["cam_low"].get(answer["stamp_ns"] * 1e-9)
    seg = seg if seg is not None else next(reversed(segmentation["cam_low"].values()))
    y, x = pointed["point"]
    assert seg[int(y * 240 / 1000), int(x * 320 / 1000)] == red
    with PILImage.open(cli_png) as png:
        assert png.size == (320, 240)
    assert bad.returncode == 1 and "unknown camera 'cam_x'" in json.loads(bad.stdout)["message"]

    # Headless: every tracked frame's annotated image as a PNG named by stamp and query.
    files = sorted(saved.glob("*_red-cube.png"))
    assert len(files) >= len(tracked) - 1 and files
    names = {f.name for f in files}
    last = tracked[-1].header.stamp
    assert f"{last.sec * 10**9 + last.nanosec}_red-cube.png" in names
    with PILImage.open(files[-1]) as png:
        assert png.size == (320, 240) and png.mode == "RGB"
    node.destroy_node()
