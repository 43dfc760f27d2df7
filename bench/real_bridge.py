"""Real-robot bridges: what they add between the stack and the robot, on the wire.

Starts each bridge as its own process (as `up --real` does) against a fake robot on the real
topic names, with the test stand-ins of interbotix_xs_msgs / franka_msgs (same definitions; run
`make test` once to build them). Measures, for the xs_sdk bridge (ALOHA 2) and the franka_ros2
bridge: the latency from a stack position command (50 Hz) to the robot command it becomes, how
many arrive, and for xs_sdk the rate and interval jitter of a sampled joint trajectory. Writes
bench/results/real_bridge.json.

    python bench/real_bridge.py [--seconds 10]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test"))
RESULTS = ROOT / "bench" / "results" / "real_bridge.json"
STEP = 1e-3          # the left arm's first joint carries the command's sequence number


def _stats_ms(values) -> dict:
    a = np.asarray(values) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3),
            "max_ms": round(float(a.max()), 3)} if len(a) else {}


def measure(executable: str, embodiment: str, seconds: float, env: dict) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from aloha_driver.real_driver import load_contract
    from bimanual_core.config import load_embodiment
    from bimanual_core.ros_conversions import RELIABLE_QOS, sec_to_duration
    emb = load_embodiment(embodiment)
    contract = load_contract(emb)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(env["ROS_DOMAIN_ID"]))
    node = Node("bench_fake_robot", context=ctx)
    received: list[tuple[float, float]] = []        # (arrival, first left joint value)
    if executable == "xs_sdk_bridge_node":
        from interbotix_xs_msgs.msg import JointGroupCommand
        from interbotix_xs_msgs.srv import RobotInfo

        def robot_info(request, response):          # the followers confirm their arm group
            response.joint_names = list(contract.group_joints)
            return response
        for a in contract.arms.values():
            node.create_service(RobotInfo, a.robot_info_service, robot_info)
        topic = contract.arms["left_arm"].group_topic
        node.create_subscription(JointGroupCommand, topic,
                                 lambda m: received.append((time.perf_counter(), m.cmd[0])),
                                 RELIABLE_QOS)
    else:
        topic = contract.arms["left_arm"].trajectory_topic
        node.create_subscription(
            JointTrajectory, topic,
            lambda m: received.append((time.perf_counter(), m.points[0].positions[0])),
            RELIABLE_QOS)
    state_pubs = {s.topic: node.create_publisher(JointState, s.topic, RELIABLE_QOS)
                  for s in contract.state_sources()}
    sources = contract.state_sources()
    cmd_pub = node.create_publisher(Float64MultiArray, emb.driver["forward_position_topic"],
                                    RELIABLE_QOS)
    traj_pub = node.create_publisher(JointTrajectory, emb.driver["joint_trajectory_topic"],
                                     RELIABLE_QOS)

    def publish_states():
        for s in sources:
            names = list(s.entries)
            pos = [emb.home[i] if scale is None else scale.to_robot(emb.home[i])
                   for i, scale in s.entries.values()]
            state_pubs[s.topic].publish(JointState(name=names, position=pos))

    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)

    def spin(duration, every=None, period=0.02):
        end, nxt = time.perf_counter() + duration, 0.0
        while time.perf_counter() < end:
            if every and time.perf_counter() >= nxt:
                nxt = time.perf_counter() + period
                every()
            executor.spin_once(timeout_sec=0.001)

    proc = subprocess.Popen([str(Path(sys.executable).parent / executable), "--ros-args", "-p",
                             f"embodiment:={embodiment}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.perf_counter() + 30.0
        while cmd_pub.get_subscription_count() == 0 and time.perf_counter() < deadline:
            spin(0.1, publish_states)
        spin(2.0, publish_states)                    # the bridge hears every joint (and checks)
        sent: dict[int, float] = {}
        target = emb.home.copy()
        seq = [0]

        def command():
            publish_states()
            seq[0] += 1
            target[0] = seq[0] * STEP
            sent[seq[0]] = time.perf_counter()
            cmd_pub.publish(Float64MultiArray(data=target.tolist()))

        received.clear()
        spin(seconds, command, period=emb.control_period)
        spin(0.5, publish_states)
        latencies = [t - sent[k] for t, v in received
                     if (k := int(round(v / STEP))) in sent]
        result = {"commands_sent": len(sent), "robot_commands_received": len(latencies),
                  "latency": _stats_ms(latencies), "robot_topic": topic}
        if executable == "xs_sdk_bridge_node":
            received.clear()
            goal = emb.home.copy()
            goal[0] += 0.5
            traj_pub.publish(JointTrajectory(joint_names=emb.joint_names, points=[
                JointTrajectoryPoint(positions=goal.tolist(),
                                     time_from_start=sec_to_duration(seconds))]))
            spin(seconds, publish_states)
            times = np.array([t for t, _ in received])
            intervals = np.diff(times)
            result["trajectory_sampling"] = {
                "rate_hz": round(float(len(intervals) / (times[-1] - times[0])), 2)
                if len(times) > 1 else 0.0,
                "interval": _stats_ms(intervals)}
        return result
    finally:
        proc.terminate()
        proc.wait(10)
        node.destroy_node()
        rclpy.shutdown(context=ctx)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    import pytest  # noqa: F401  (robot_interfaces_testing reports a missing build through it)
    from robot_interfaces_testing import interface_environment, load_test_interfaces

    from bimanual_core.config import runtime_environment
    load_test_interfaces()
    env = dict(os.environ)
    runtime_environment(env)
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(60, 100)))
    env.update(interface_environment(env))
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE",
                                           "FASTDDS_DEFAULT_PROFILES_FILE")})
    report = {"seconds": args.seconds, "machine": {"cpus": os.cpu_count(),
                                                   "platform": platform.platform(),
                                                   "load_1min": os.getloadavg()[0]}}
    for executable, embodiment in (("xs_sdk_bridge_node", "aloha2"),
                                   ("franka_bridge_node", "franka_duo")):
        report[executable] = measure(executable, embodiment, args.seconds, env)
        print(executable, json.dumps(report[executable]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
