"""The whole simulated stack as separate processes for a test module, and what its tests read of
it (shared by the end-to-end tests of single and multi-step instructions)."""
import os
import time
from contextlib import contextmanager

from bimanual_core.bringup import StackProcesses, node_launch_specs
from bimanual_core.client import StackClient


def module_domain(offset: int = 0) -> int:
    """A ROS domain for a module-scoped stack, apart from the per-test ones of conftest."""
    return 101 - (os.getpid() + offset) % 40


@contextmanager
def running_stack(log_dir, overrides, domain: int):
    """(processes, client) of the stack with node `overrides`; every node must then shut down
    cleanly on SIGINT (no crash, no hang)."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    procs = StackProcesses(node_launch_specs(overrides=overrides), log_dir, env=env)
    procs.start()
    client = StackClient(record_camera=None, domain_id=domain)
    try:
        ready = client.wait_ready(120.0)
        assert ready and not procs.dead(), {n: procs.log_tail(n) for n in procs.procs}
        yield procs, client
    finally:
        client.close()
        codes = procs.stop()
    assert all(code in (0, -2) for code in codes.values()), codes


def reset_scene(client: StackClient) -> None:
    from std_srvs.srv import Trigger
    reset = client.node.create_client(Trigger, "/sim/reset")
    assert reset.wait_for_service(timeout_sec=10.0)
    response = client._wait(reset.call_async(Trigger.Request()), 20.0)
    assert response is not None and response.success, response
    client.node.destroy_client(reset)
    # Fresh frames of the new scene reach every node: wait for 1 s of sim time past the reset
    # (the simulator renders its cameras on sim time; a wall-clock sleep is too short under load).
    reset_at = client.sim_time or 0.0
    deadline = time.monotonic() + 30.0
    while (client.sim_time or 0.0) < reset_at + 1.0:
        assert time.monotonic() < deadline, "sim time stopped after the scene reset"
        time.sleep(0.05)


def object_positions(client: StackClient) -> dict:
    """label -> (x, y, z) from the simulator's latest ground truth."""
    deadline = time.monotonic() + 10.0
    while client.objects_last is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return {o.label: (o.pose.position.x, o.pose.position.y, o.pose.position.z)
            for o in client.objects_last.objects}


@contextmanager
def joint_states(client: StackClient):
    """The /joint_states positions received while inside, as a growing list of arrays."""
    import numpy as np
    from sensor_msgs.msg import JointState
    from bimanual_core.ros_conversions import RELIABLE_QOS
    states = []
    sub = client.node.create_subscription(JointState, "/joint_states",
                                          lambda m: states.append(np.array(m.position)),
                                          RELIABLE_QOS)
    try:
        yield states
    finally:
        client.node.destroy_subscription(sub)


def assert_robot_holds(states: list, settle_s: float = 1.0, span_s: float = 2.0) -> None:
    """After `settle_s`, the joints stay within 0.02 rad for `span_s` (the robot stopped)."""
    import numpy as np
    time.sleep(settle_s)
    start = len(states)
    time.sleep(span_s)
    held = np.array(states[start:])
    assert len(held) > 10
    assert np.abs(held - held[0]).max() < 0.02, "the robot kept moving after the cancel"
