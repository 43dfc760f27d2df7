"""ROS 2 node `er_perception`: embodied-reasoning queries (boxes, points, trajectories, grasps).

Keeps the latest synchronised frame of every camera (colour, depth, segmentation, intrinsics and
optical-frame pose with matching stamps; SENSOR_QOS) and, in simulation, the ground-truth object
list, and answers bimanual_vla/ErQuery on `interfaces.er_query_service` with the configured
backend (`er_perception.backends`). Results use Gemini Robotics-ER conventions (0..1000, [y, x]);
with `with_3d` they carry world-frame positions. The response header holds the stamp of the image
answered from and the world frame (the frame of every position_3d, from the camera pose). Every answer is also drawn: a MarkerArray on
/er_perception/markers and an annotated copy of the image on /er_perception/annotated_image
(both latched, so RViz shows the last answer when it connects).

A query that cannot run (unknown camera or query type, no frame yet, empty query, unreadable
image) returns success=false and the reason. A query that runs but finds nothing (an object not in
view) returns success=true with empty results and the backend's explanation in `message`.

Parameters:
  embodiment (str, "aloha2"): config/<embodiment>.yaml (cameras and the simulator's topics).
  backend (str, "sim"): the ER backend; see er_perception.backends.BACKENDS.
  <backend>.<option>: the chosen backend's own settings, passed to it as keyword arguments
    (e.g. `hf.model_path`, `gemini.model`); each backend's docstring lists them. Options of
    other backends are ignored.
  default_camera (str, "cam_high"): camera used when a request leaves `camera` empty.
  frame_wait_s (float, 3.0): a query that arrives before the camera's first frame (just after
    bring-up) waits this long (wall clock) for it before failing with "no frame yet".
  correspond_tolerance_m (float, 0.02): multi-view correspondence counts a point as seen by a
    target camera when that camera's depth there agrees with the point's within this.
  track_queries (str[], []): continuous tracking, off when unset (rclpy refuses an empty list
    given as an override: it has no type): every 1/track_rate_hz these
    queries run on the newest frame of track_camera (a frame already answered is skipped) and
    the results go out on `interfaces.er_tracking_topic` (bimanual_vla/ErTracking, stamped with
    the image's stamp, with 3D when the frame has depth), drawn on
    /er_perception/tracking/markers and /er_perception/tracking/annotated_image.
  track_type (str, "boxes"): boxes or points.
  track_camera (str, ""): the tracked camera; empty = default_camera.
  track_rate_hz (float, 2.0): tracking rate (> 0, wall clock even under use_sim_time); at
    most the camera's frame rate in effect.
  save_annotated_dir (str, ""): when set, every annotated image (query answers and tracking) is
    also written there as PNG, named <stamp_ns>_<query>.png, for users without RViz.

Multi-view correspondence: bimanual_vla/ErCorrespond on `interfaces.er_correspond_service`
takes a point [y, x] in one camera (or a query the backend locates there), deprojects it with
that camera's depth and pose to the world and projects it into every other camera (their latest
frames; the scene is assumed still in between), saying where it lands and whether it is visible
there (in the image, in front, not occluded).
"""
from __future__ import annotations

import re
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
from geometry_msgs.msg import Point as PointMsg
from geometry_msgs.msg import PoseStamped, Vector3
from PIL import Image as PILImage
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image
from visualization_msgs.msg import MarkerArray

from bimanual_core.config import load_embodiment, load_stack
from bimanual_core.node_runner import run_node
from bimanual_core.ros_conversions import (LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS,
                                           ImageEncodingError, image_to_numpy, numpy_to_image)
from bimanual_vla.msg import ErBox, ErGrasp, ErPoint, ErTracking, ErTrajectory, SimObjectArray
from bimanual_vla.srv import ErCorrespond, ErQuery
from er_perception.annotate import annotate
from er_perception.backends import make_backend
from er_perception.backends.base import CameraFrame, ErInputError, SceneObject, normalise_query
from er_perception.frame_store import FrameStore, MatchedParts
from er_perception.geometry import CameraPose, GeometryError, correspond, deproject_er
from er_perception.markers import MarkerBuilder

MARKER_TOPIC = "/er_perception/markers"
ANNOTATED_IMAGE_TOPIC = "/er_perception/annotated_image"
TRACKING_MARKER_TOPIC = "/er_perception/tracking/markers"
TRACKING_IMAGE_TOPIC = "/er_perception/tracking/annotated_image"
TRACK_TYPES = {"boxes": ErQuery.Request.BOXES, "points": ErQuery.Request.POINTS}
# query_type -> (backend method, kind of result: a MarkerBuilder method and an annotate argument)
QUERY_METHODS = {ErQuery.Request.BOXES: ("detect", "boxes"),
                 ErQuery.Request.POINTS: ("point", "points"),
                 ErQuery.Request.TRAJECTORY: ("trajectory", "trajectories"),
                 ErQuery.Request.GRASPS: ("grasp", "grasps")}
DEPTH_SCALES = {"32FC1": 1.0, "16UC1": 1e-3, "mono16": 1e-3}    # to metres (REP 118: mm in 16 bit)
SEGMENTATION_ENCODINGS = ("16UC1", "mono16", "8UC1", "mono8", "32SC1")


def _stamp_ns(stamp) -> int:
    return Time.from_msg(stamp).nanoseconds


def _point_msg(p: np.ndarray | None) -> tuple[bool, PointMsg]:
    if p is None:
        return False, PointMsg()
    return True, PointMsg(x=float(p[0]), y=float(p[1]), z=float(p[2]))


def _er_point(p, with_3d: bool) -> ErPoint:
    has, pos = _point_msg(p.position_3d if with_3d else None)
    return ErPoint(label=p.label, score=float(p.score), y=float(p.y), x=float(p.x),
                   has_position_3d=has, position_3d=pos)


def _er_box(b, with_3d: bool) -> ErBox:
    has, pos = _point_msg(b.position_3d if with_3d else None)
    size = b.size_3d if has else np.zeros(3)
    return ErBox(label=b.label, score=float(b.score), box_2d=[float(v) for v in b.box_2d],
                 has_position_3d=has, position_3d=pos,
                 size_3d=Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2])))


def annotated_file_name(stamp_ns: int, query: str) -> str:
    """<stamp_ns>_<query with anything but letters and digits as '-'>.png (at most 80 chars)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", query).strip("-")[:80] or "query"
    return f"{stamp_ns}_{slug}.png"


class ErPerception(Node):
    def __init__(self) -> None:
        # Backend options are whatever `<backend>.<option>` overrides the launch gives.
        super().__init__("er_perception",
                         automatically_declare_parameters_from_overrides=True)
        for name, default in (("embodiment", "aloha2"), ("backend", "sim"),
                              ("default_camera", "cam_high"), ("frame_wait_s", 3.0),
                              ("correspond_tolerance_m", 0.02), ("track_type", "boxes"),
                              ("track_camera", ""), ("track_rate_hz", 2.0),
                              ("save_annotated_dir", "")):
            if not self.has_parameter(name):          # given: declared from the override
                self.declare_parameter(name, default)
        if not self.has_parameter("track_queries"):
            self.declare_parameter("track_queries", [], ParameterDescriptor(
                type=ParameterType.PARAMETER_STRING_ARRAY))
        p = lambda name: self.get_parameter(name).value  # noqa: E731
        self._frame_wait = float(p("frame_wait_s"))
        if not self._frame_wait >= 0:
            raise ValueError(f"parameter frame_wait_s must be >= 0, got {self._frame_wait}")
        self._tolerance = float(p("correspond_tolerance_m"))
        if not self._tolerance > 0:
            raise ValueError(f"parameter correspond_tolerance_m must be > 0, got {self._tolerance}")
        self._save_dir = Path(p("save_annotated_dir")) if p("save_annotated_dir") else None
        if self._save_dir is not None:
            self._save_dir.mkdir(parents=True, exist_ok=True)

        embodiment = load_embodiment(p("embodiment"))
        self._default_camera = str(p("default_camera"))
        embodiment.camera(self._default_camera)          # raises with the known names
        backend = str(p("backend"))
        options = {k: v.value for k, v in self.get_parameters_by_prefix(backend).items()}
        try:
            self._backend = make_backend(backend, **options)
        except TypeError as exc:        # an option the backend does not take
            raise ValueError(f"backend {backend!r}: {exc}") from None
        self._store = FrameStore(list(embodiment.cameras))
        # Backends are safe from one thread at a time; the services and tracking share it.
        self._backend_lock = threading.Lock()
        self._objects: tuple[SceneObject, ...] = ()

        for name, spec in embodiment.cameras.items():
            for stream, topic, kind in (("rgb", spec.image_topic, Image),
                                        ("depth", spec.depth_topic, Image),
                                        ("segmentation", spec.segmentation_topic, Image),
                                        ("pose", spec.pose_topic, PoseStamped)):
                self.create_subscription(kind, topic, partial(self._on_part, name, stream),
                                         SENSOR_QOS)
            self.create_subscription(CameraInfo, spec.info_topic,
                                     partial(self._store.set_info, name), SENSOR_QOS)
        objects_topic = embodiment.simulation.get("objects_topic")
        if objects_topic:
            self.create_subscription(SimObjectArray, objects_topic, self._on_objects,
                                     RELIABLE_QOS)
        self._marker_pub = self.create_publisher(MarkerArray, MARKER_TOPIC, LATCHED_QOS)
        self._image_pub = self.create_publisher(Image, ANNOTATED_IMAGE_TOPIC, LATCHED_QOS)
        service = load_stack().interfaces["er_query_service"]
        # Its own group: a query may wait for a first frame while the subscriptions deliver it.
        self.create_service(ErQuery, service, self._on_query,
                            callback_group=MutuallyExclusiveCallbackGroup())
        self.create_service(ErCorrespond, load_stack().interfaces["er_correspond_service"],
                            self._on_correspond, callback_group=MutuallyExclusiveCallbackGroup())
        self._setup_tracking([str(q) for q in (p("track_queries") or [])], str(p("track_type")),
                             str(p("track_camera")) or self._default_camera,
                             float(p("track_rate_hz")))
        self.get_logger().info(f"ER backend {self._backend.name!r} serving {service}")

    def _setup_tracking(self, queries: list[str], track_type: str, camera: str,
                        rate_hz: float) -> None:
        """Validate the track_* parameters; with queries, a timer in its own callback group (so
        that the services stay responsive while a slow backend tracks)."""
        self._track_queries = [normalise_query(q) for q in queries]
        if track_type not in TRACK_TYPES:
            raise ValueError(f"parameter track_type must be one of {', '.join(TRACK_TYPES)}, "
                             f"got {track_type!r}")
        if camera not in self._store.cameras:
            raise ValueError(f"parameter track_camera: unknown camera {camera!r}; known: "
                             f"{', '.join(self._store.cameras)}")
        if not (rate_hz > 0 and np.isfinite(rate_hz)):
            raise ValueError(f"parameter track_rate_hz must be > 0, got {rate_hz}")
        self._track_kind = QUERY_METHODS[TRACK_TYPES[track_type]]
        self._track_camera, self._track_last_stamp = camera, None
        if not self._track_queries:
            return
        self._track_pub = self.create_publisher(
            ErTracking, load_stack().interfaces["er_tracking_topic"], RELIABLE_QOS)
        self._track_marker_pub = self.create_publisher(MarkerArray, TRACKING_MARKER_TOPIC,
                                                       LATCHED_QOS)
        self._track_image_pub = self.create_publisher(Image, TRACKING_IMAGE_TOPIC, LATCHED_QOS)
        # Wall (steady) time: the rate is about compute, and a sim-time timer makes the
        # multi-threaded executor busy-spin (bimanual_core.node_runner).
        self.create_timer(1.0 / rate_hz, self._on_track,
                          callback_group=MutuallyExclusiveCallbackGroup(),
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(f"tracking {self._track_queries} ({track_type}) on {camera} at "
                               f"{rate_hz} Hz")

    def _on_part(self, camera: str, stream: str, msg) -> None:
        self._store.add(camera, stream, _stamp_ns(msg.header.stamp), msg)

    def _on_objects(self, msg: SimObjectArray) -> None:
        self._objects = tuple(SceneObject(o.label, o.segmentation_id, o.name)
                              for o in msg.objects)

    # -- frames ----------------------------------------------------------------------------------
    def _frame(self, camera: str, matched: MatchedParts) -> CameraFrame:
        """Convert a matched set of messages; raises ErInputError saying what is unusable."""
        parts = matched.parts
        try:
            rgb = image_to_numpy(parts["rgb"], want_rgb=True)
            depth = segmentation = None
            if "depth" in parts:
                msg = parts["depth"]
                if msg.encoding not in DEPTH_SCALES:
                    raise ImageEncodingError(f"depth encoding {msg.encoding!r} is not one of "
                                             f"{', '.join(DEPTH_SCALES)}")
                depth = image_to_numpy(msg).astype(np.float32) * DEPTH_SCALES[msg.encoding]
            if "segmentation" in parts:
                msg = parts["segmentation"]
                if msg.encoding not in SEGMENTATION_ENCODINGS:
                    raise ImageEncodingError(f"segmentation encoding {msg.encoding!r} is not one "
                                             f"of {', '.join(SEGMENTATION_ENCODINGS)}")
                segmentation = image_to_numpy(msg)
        except ImageEncodingError as exc:
            raise ErInputError(f"{camera}: {exc}") from None
        info = matched.info
        if info.width and (info.width, info.height) != (rgb.shape[1], rgb.shape[0]):
            raise ErInputError(f"{camera}: camera info is for {info.width}x{info.height}, the "
                               f"image is {rgb.shape[1]}x{rgb.shape[0]}")
        pose, world_frame = None, "world"
        if "pose" in parts:
            msg = parts["pose"]
            q, t = msg.pose.orientation, msg.pose.position
            try:
                pose = CameraPose.from_quat_wxyz([t.x, t.y, t.z], [q.w, q.x, q.y, q.z])
            except GeometryError as exc:
                raise ErInputError(f"{camera}: bad camera pose: {exc}") from None
            world_frame = msg.header.frame_id or world_frame
        return CameraFrame(camera=camera, stamp_ns=matched.stamp_ns, rgb=rgb,
                           K=np.asarray(info.k, dtype=float).reshape(3, 3), pose=pose,
                           depth=depth, segmentation=segmentation, objects=self._objects,
                           world_frame=world_frame)

    def _wait_frame(self, camera: str, wait_s: float | None = None) -> tuple[CameraFrame,
                                                                               MatchedParts]:
        """The camera's latest frame, waiting up to frame_wait_s for a first one."""
        if camera not in self._store.cameras:
            raise ErInputError(f"unknown camera {camera!r}; known: "
                               f"{', '.join(self._store.cameras)}")
        matched = self._store.latest(camera)
        deadline = time.monotonic() + (self._frame_wait if wait_s is None else wait_s)
        while matched is None and time.monotonic() < deadline:
            time.sleep(0.05)
            matched = self._store.latest(camera)
        if matched is None:
            raise ErInputError(f"no frame from {camera} yet (image and camera info needed)")
        return self._frame(camera, matched), matched

    # -- service ---------------------------------------------------------------------------------
    def _on_query(self, request: ErQuery.Request, response: ErQuery.Response) -> ErQuery.Response:
        start = time.perf_counter()
        response.camera = camera = request.camera or self._default_camera
        kind = QUERY_METHODS.get(request.query_type)
        try:
            if kind is None:
                raise ErInputError(
                    f"unknown query_type {request.query_type}; expected "
                    f"{', '.join(f'{k} ({v[1]})' for k, v in QUERY_METHODS.items())}")
            normalise_query(request.query)
            frame, matched = self._wait_frame(camera)
            with self._backend_lock:
                answer = getattr(self._backend, kind[0])(frame, request.query,
                                                         int(request.max_results))
        except (ErInputError, GeometryError) as exc:
            response.success, response.message = False, str(exc)
        else:
            self._fill(response, frame, matched, kind[1], answer, request.with_3d)
            self._publish_visuals(frame, matched, {kind[1]: answer}, request.query,
                                  self._marker_pub, self._image_pub)
        return self._finish(f"query {request.query_type} {request.query!r} on {camera}",
                            response, start)

    def _finish(self, what: str, response, start: float):
        """Set the response's latency and log its outcome."""
        response.latency_ms = (time.perf_counter() - start) * 1e3
        summary = (f"{what}: {'ok' if response.success else 'failed'}"
                   f"{': ' + response.message if response.message else ''} "
                   f"({response.latency_ms:.1f} ms)")
        # One call site per severity: rclpy refuses a call site that changes severity.
        if response.success:
            self.get_logger().info(summary)
        else:
            self.get_logger().warning(summary)
        return response

    def _fill(self, response: ErQuery.Response, frame: CameraFrame, matched: MatchedParts,
              results: str, answer, with_3d: bool) -> None:
        def located(p):
            return _point_msg(p if with_3d else None)

        def er_point(p) -> ErPoint:
            return _er_point(p, with_3d)

        response.success = True
        notes = [answer.message] if answer.message else []
        if matched.missing:
            notes.append(f"answered without {', '.join(matched.missing)} (no message at the "
                         "image's stamp)")
        if with_3d and not frame.has_3d:
            notes.append(f"no 3D: {frame.camera} has no depth or pose at this stamp")
        response.message = "; ".join(notes)
        response.header.stamp = Time(nanoseconds=frame.stamp_ns).to_msg()
        response.header.frame_id = frame.world_frame
        response.image_width, response.image_height = frame.width, frame.height
        if results == "boxes":
            response.boxes = [_er_box(b, with_3d) for b in answer]
        elif results == "points":
            response.points = [er_point(p) for p in answer]
        elif results == "trajectories":
            response.trajectories = [ErTrajectory(label=t.label, score=float(t.score),
                                                  points=[er_point(p) for p in t.points])
                                     for t in answer]
        else:
            for g in answer:
                has, pos = located(g.position_3d)
                response.grasps.append(ErGrasp(
                    label=g.label, score=float(g.score), y=float(g.y), x=float(g.x),
                    angle=float(g.angle), width=float(g.width), has_position_3d=has,
                    position_3d=pos))

    def _publish_visuals(self, frame: CameraFrame, matched: MatchedParts, results: dict,
                         query: str, marker_pub, image_pub) -> None:
        """Markers and the annotated image of `results` ({kind: answer}); saved as PNG too when
        save_annotated_dir is set."""
        stamp = Time(nanoseconds=frame.stamp_ns).to_msg()
        markers = MarkerBuilder(frame, stamp)
        for kind, answer in results.items():
            getattr(markers, kind)(answer)
        marker_pub.publish(markers.array)
        drawn = annotate(frame.rgb, **results)
        image_pub.publish(numpy_to_image(drawn, "rgb8", stamp,
                                         matched.parts["rgb"].header.frame_id))
        if self._save_dir is not None:
            path = self._save_dir / annotated_file_name(frame.stamp_ns, query)
            try:
                PILImage.fromarray(drawn).save(path)
            except OSError as exc:        # a full disk must not take the answers down
                self.get_logger().error(f"cannot save {path}: {exc}")

    # -- multi-view correspondence ---------------------------------------------------------------
    def _on_correspond(self, request: ErCorrespond.Request,
                       response: ErCorrespond.Response) -> ErCorrespond.Response:
        start = time.perf_counter()
        response.camera = camera = request.camera or self._default_camera
        try:
            frame, _ = self._wait_frame(camera)
            if not frame.has_3d:
                raise ErInputError(f"{camera} has no depth or pose at its latest stamp: the "
                                   "point cannot be placed in 3D")
            targets = list(request.target_cameras) or [c for c in self._store.cameras
                                                       if c != camera]
            for target in targets:
                if target not in self._store.cameras:
                    raise ErInputError(f"unknown target camera {target!r}; known: "
                                       f"{', '.join(self._store.cameras)}")
            if request.query.strip():
                with self._backend_lock:
                    found = self._backend.point(frame, request.query, 1)
                if not found:
                    raise ErInputError(f"{request.query!r} not found in {camera}"
                                       f"{': ' + found.message if found.message else ''}")
                label, y, x = found[0].label, found[0].y, found[0].x
            else:
                label, y, x = "", float(request.y), float(request.x)
            world = deproject_er(y, x, frame.depth, frame.K, frame.pose)
            notes = []
            for target in targets:
                try:
                    other, _ = self._wait_frame(target, wait_s=0.0)
                except ErInputError as exc:
                    notes.append(str(exc))
                    continue
                if other.pose is None:
                    notes.append(f"{target}: no camera pose")
                    continue
                c = correspond(world, other.K, other.pose, other.width, other.height,
                               other.depth, self._tolerance)
                response.target_cameras.append(target)
                response.points.append(ErPoint(
                    label=label, score=1.0, y=c.y, x=c.x, has_position_3d=True,
                    position_3d=_point_msg(world)[1]))
                response.visible.append(c.visible)
                response.reasons.append(c.reason)
        except (ErInputError, GeometryError) as exc:
            response.success, response.message = False, str(exc)
        else:
            response.success, response.message = True, "; ".join(notes)
            response.header.stamp = Time(nanoseconds=frame.stamp_ns).to_msg()
            response.header.frame_id = frame.world_frame
            response.source = ErPoint(label=label, score=1.0, y=y, x=x, has_position_3d=True,
                                      position_3d=_point_msg(world)[1])
        return self._finish(f"correspond {request.query or (request.y, request.x)!r} from "
                            f"{camera}", response, start)

    # -- continuous tracking ---------------------------------------------------------------------
    def _on_track(self) -> None:
        """Run the track queries on the newest frame not yet answered and publish the results."""
        start = time.perf_counter()
        matched = self._store.latest(self._track_camera)
        if matched is None or matched.stamp_ns == self._track_last_stamp:
            return
        self._track_last_stamp = matched.stamp_ns
        method, kind = self._track_kind
        try:
            frame = self._frame(self._track_camera, matched)
            with self._backend_lock:
                answers = [getattr(self._backend, method)(frame, q)
                           for q in self._track_queries]
        except (ErInputError, GeometryError) as exc:
            self.get_logger().warning(f"tracking on {self._track_camera}: {exc}",
                                      throttle_duration_sec=5.0)
            return
        results = [r for answer in answers for r in answer]
        msg = ErTracking(camera=self._track_camera, image_width=frame.width,
                         image_height=frame.height, queries=self._track_queries)
        msg.header.stamp = Time(nanoseconds=frame.stamp_ns).to_msg()
        msg.header.frame_id = frame.world_frame
        if kind == "boxes":
            msg.boxes = [_er_box(b, True) for b in results]
        else:
            msg.points = [_er_point(p, True) for p in results]
        msg.latency_ms = (time.perf_counter() - start) * 1e3
        self._track_pub.publish(msg)
        self._publish_visuals(frame, matched, {kind: results}, "+".join(self._track_queries),
                              self._track_marker_pub, self._track_image_pub)


def main(args=None) -> int:
    # Three threads: a query may wait for a camera's first frame while subscriptions deliver it,
    # and the tracking timer must not hold up either.
    return run_node(ErPerception, "er_perception", args, threads=3)


if __name__ == "__main__":
    raise SystemExit(main())
