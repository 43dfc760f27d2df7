"""`bimanual-vla er-query`: ask the running stack's er_perception node one question from a shell,
print the answer as JSON in Gemini Robotics-ER format and save the annotated image (for users
without RViz). Exit 0 answered, 1 the node refused the query, 2 no node reachable."""
from __future__ import annotations

import argparse
import json
import sys
import time

QUERY_TYPES = ("boxes", "points", "trajectory", "grasps")


def add_query_command(sub) -> None:
    p = sub.add_parser("er-query", help="one ER query to the running stack (JSON answer, "
                                        "annotated image)")
    p.add_argument("--type", choices=QUERY_TYPES, default="boxes")
    p.add_argument("--query", required=True, help='e.g. "red cube"')
    p.add_argument("--camera", default="", help="camera name (default: the node's default)")
    p.add_argument("--max-results", type=int, default=0, help="0 = no limit")
    p.add_argument("--no-3d", action="store_true", help="leave out world-frame positions")
    p.add_argument("--save", default=None, metavar="PNG", help="save the annotated image here")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the node")
    p.set_defaults(func=cmd_er_query)


def _xyz(has: bool, p) -> list[float] | None:
    return [p.x, p.y, p.z] if has else None


def response_to_er(response) -> dict:
    """An ErQuery response as Gemini Robotics-ER JSON: {"point": [y, x]} / {"box_2d": [...]},
    0..1000, with the label (and the world position when there is one)."""
    def point(p) -> dict:
        return {"point": [round(p.y, 1), round(p.x, 1)], "label": p.label,
                "position_3d": _xyz(p.has_position_3d, p.position_3d)}
    return {
        "success": response.success, "message": response.message, "camera": response.camera,
        "stamp_ns": response.header.stamp.sec * 10**9 + response.header.stamp.nanosec,
        "frame_id": response.header.frame_id,
        "image_size": [response.image_width, response.image_height],
        "boxes": [{"box_2d": [round(v, 1) for v in b.box_2d], "label": b.label,
                   "position_3d": _xyz(b.has_position_3d, b.position_3d)}
                  for b in response.boxes],
        "points": [point(p) for p in response.points],
        "trajectories": [{"label": t.label, "points": [point(p)["point"] for p in t.points]}
                         for t in response.trajectories],
        "grasps": [dict(point(g), angle=g.angle, width=g.width) for g in response.grasps],
        "latency_ms": round(response.latency_ms, 1)}


def cmd_er_query(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from bimanual_core.config import load_stack
    from bimanual_core.ros_conversions import LATCHED_QOS, image_to_numpy
    from bimanual_vla.srv import ErQuery
    from er_perception.node import ANNOTATED_IMAGE_TOPIC

    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("er_query_cli", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    images = []
    node.create_subscription(Image, ANNOTATED_IMAGE_TOPIC, images.append, LATCHED_QOS)
    service = load_stack().interfaces["er_query_service"]
    client = node.create_client(ErQuery, service)

    def spin_until(done, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        return done()

    try:
        if not spin_until(client.service_is_ready, args.timeout):
            print(f"no ER node answers {service} (is the stack up?)", file=sys.stderr)
            return 2
        request = ErQuery.Request(query_type=QUERY_TYPES.index(args.type), query=args.query,
                                  camera=args.camera, max_results=max(args.max_results, 0),
                                  with_3d=not args.no_3d)
        future = client.call_async(request)
        if not spin_until(future.done, args.timeout):
            print(f"{service} did not answer in {args.timeout} s", file=sys.stderr)
            return 2
        response = future.result()
        print(json.dumps(response_to_er(response), indent=1))
        if not response.success:
            return 1
        if args.save:
            stamp = response.header.stamp
            if not spin_until(lambda: any(m.header.stamp == stamp for m in images), args.timeout):
                print("the annotated image did not arrive", file=sys.stderr)
                return 1
            from PIL import Image as PILImage
            drawn = next(m for m in images if m.header.stamp == stamp)
            PILImage.fromarray(image_to_numpy(drawn, want_rgb=True)).save(args.save)
            print(f"annotated image: {args.save}", file=sys.stderr)
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
