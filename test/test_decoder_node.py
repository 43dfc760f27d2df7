"""The action_decoder node as its own process, on simulated time this test publishes (/clock) or
on the wall clock, against a fake backbone service, fake /joint_states and a driver-side command
subscriber."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from bimanual_vla.msg import DecoderMetrics
from bimanual_vla.srv import GetActionChunk
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from bimanual_core.config import load_embodiment, load_stack
from bimanual_core.ros_conversions import (RELIABLE_QOS, duration_to_sec, sec_to_duration,
                                           sec_to_time, time_to_sec)

# Each test runs the decoder as a process on the wall clock or on a /clock this test drives, on a
# 2-core machine shared with the test's own executor: a scheduling stall of a few hundred ms (seen
# in CI: 45 of 100 wall-clock ticks in 2 s once, a tick answered after 3 s once) fails a test whose
# code is right, so a failure is tried again twice. A real regression fails all three tries; the
# timing figures themselves are measured by bench/decoder.py.
pytestmark = pytest.mark.flaky(reruns=2)

EMB = load_embodiment("aloha2")
NAMES = load_stack().interfaces
DT = EMB.control_period
EXECUTABLE = Path(sys.executable).with_name("action_decoder_node")


def trajectory(t, t0):
    """What the fake backbone predicts: a slow wave from home on the shoulders and elbows."""
    q = EMB.home.copy()
    wave = 0.15 * np.sin(np.pi * (t - t0))
    for name in ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow"):
        q[EMB.joint_names.index(name)] += wave
    return q


class FakeWorld(Node):
    """Clock, joint states, backbone and driver around the decoder under test."""

    def __init__(self, context, command_interface="forward_position"):
        super().__init__("fake_world", context=context)
        self.t = 1.0                                     # sim time, advanced by step()
        self.wall_clock = False                          # the decoder runs on the wall clock
        self.t0 = 1.0                                    # when the predicted motion begins
        self.mode = "ok"                                 # ok | nan
        self.requests = []
        self.commands = []                               # (sim time, positions)
        self.trajectories = []
        self.metrics = None
        self.cond = threading.Condition()
        self.clock_pub = self.create_publisher(Clock, "/clock", RELIABLE_QOS)
        self.joint_pub = self.create_publisher(JointState, EMB.driver["joint_states_topic"],
                                               RELIABLE_QOS)
        self.estop_pub = self.create_publisher(Bool, NAMES["estop_topic"], RELIABLE_QOS)
        if command_interface == "forward_position":
            self.create_subscription(Float64MultiArray, EMB.driver["forward_position_topic"],
                                     self._on_command, RELIABLE_QOS)
        else:
            self.create_subscription(JointTrajectory, EMB.driver["joint_trajectory_topic"],
                                     self._on_trajectory, RELIABLE_QOS)
        self.create_subscription(DecoderMetrics, NAMES["decoder_metrics_topic"], self._on_metrics,
                                 RELIABLE_QOS)
        self.start_client = self.create_client(Trigger, NAMES["decoder_start_service"])
        self.hold_client = self.create_client(Trigger, NAMES["decoder_hold_service"])
        self.estop_client = self.create_client(SetBool, "/action_decoder/estop")
        self.backbone = None
        self.proc = None                                 # the decoder process
        self.backbone_up()

    def backbone_up(self):
        self.backbone = self.create_service(GetActionChunk, NAMES["get_chunk_service"],
                                            self._on_request)

    def backbone_down(self):
        self.destroy_service(self.backbone)

    def now(self):
        """The decoder's time: the sim time stepped here, or the wall clock."""
        return time.time() if self.wall_clock else self.t

    def _on_request(self, request, response):
        t_obs = self.now()
        self.requests.append((t_obs, request.request_id, time_to_sec(request.execute_from),
                              request.conditioning_steps, len(request.conditioning)))
        actions = np.array([self.target(t_obs + h * DT) for h in range(EMB.chunk_horizon)])
        if self.mode == "nan":
            actions[5, 3] = np.nan
        chunk = response.chunk
        chunk.header.stamp = sec_to_time(t_obs)
        chunk.joint_names = EMB.joint_names
        chunk.horizon = EMB.chunk_horizon
        chunk.control_period = sec_to_duration(DT)
        chunk.actions = actions.ravel().tolist()
        chunk.request_id = request.request_id
        response.success = True
        return response

    def target(self, t):
        return trajectory(t, self.t0)

    def start_decoder(self):
        """Start the decoder; retried while it has no joint state yet (discovery can be slow)."""
        deadline = time.monotonic() + 10.0
        while True:
            self.t0 = self.now()
            response = self.call(self.start_client, Trigger.Request())
            if response.success or "joint state" not in response.message \
                    or time.monotonic() > deadline:
                return response
            self.step(1, expect_commands=False)
            time.sleep(0.02)

    def _on_command(self, msg):
        with self.cond:
            self.commands.append((self.now(), np.array(msg.data)))
            self.cond.notify_all()

    def _on_trajectory(self, msg):
        with self.cond:
            self.trajectories.append((self.now(), msg))
            self.commands.append((self.now(), np.array(msg.points[0].positions)))
            self.cond.notify_all()

    def _on_metrics(self, msg):
        self.metrics = msg

    def step(self, n=1, expect_commands=True):
        """Advance sim time n ticks; with expect_commands wait for the decoder's command each tick.

        Returns the number of ticks for which no command came (within 3 s of wall time).
        """
        missing = 0
        for _ in range(n):
            assert self.proc.poll() is None, "the decoder process died"
            with self.cond:
                count = len(self.commands)
                self.t = round(self.t + DT, 9)
                self.clock_pub.publish(Clock(clock=sec_to_time(self.t)))
                # Reversed order: the decoder must reorder by name.
                self.joint_pub.publish(JointState(name=EMB.joint_names[::-1],
                                                  position=EMB.home[::-1].tolist()))
                if expect_commands:
                    if not self.cond.wait_for(lambda: len(self.commands) > count, timeout=3.0):
                        missing += 1
                else:
                    self.cond.wait(timeout=0.01)         # ~2x real time: no ticks coalesce
        return missing

    def call(self, client, request):
        assert client.wait_for_service(timeout_sec=10.0), f"{client.srv_name} not available"
        future = client.call_async(request)
        deadline = time.monotonic() + 5.0
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert future.done(), f"{client.srv_name} did not answer"
        return future.result()

    def wait_metrics(self, predicate, max_ticks=150, expect_commands=True):
        """Step until the latest metrics satisfy predicate."""
        for _ in range(max_ticks):
            if self.metrics is not None and predicate(self.metrics):
                return self.metrics
            assert self.step(1, expect_commands) == 0
        raise AssertionError(f"metrics never satisfied the condition; last: {self.metrics}")


@pytest.fixture
def world_factory(ros_context, tmp_path):
    """Start the decoder process with the given parameters and a FakeWorld beside it."""
    started = []
    log_path = tmp_path / "action_decoder.log"

    def start(command_interface="forward_position", use_sim_time=True, **params):
        world = FakeWorld(ros_context, command_interface)
        world.wall_clock = not use_sim_time
        executor = MultiThreadedExecutor(num_threads=3, context=ros_context)
        executor.add_node(world)
        threading.Thread(target=executor.spin, daemon=True).start()
        args = [str(EXECUTABLE), "--ros-args", "-p", f"use_sim_time:={str(use_sim_time).lower()}",
                "-p", f"command_interface:={command_interface}"]
        for key, value in params.items():
            args += ["-p", f"{key}:={value}"]
        log = log_path.open("w")
        proc = subprocess.Popen(args, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
        world.proc = proc
        started.append((proc, executor, world))
        command_topic = EMB.driver[f"{command_interface}_topic"]
        deadline = time.monotonic() + 15.0
        while not ((world.wall_clock or world.count_subscribers("/clock"))
                   and world.start_client.service_is_ready()
                   and world.count_subscribers(EMB.driver["joint_states_topic"])
                   and world.count_subscribers(NAMES["estop_topic"])
                   and world.count_publishers(command_topic)
                   and world.count_publishers(NAMES["decoder_metrics_topic"])):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the decoder did not come up"
            world.step(1, expect_commands=False)
            time.sleep(0.02)
        world.step(5, expect_commands=False)             # it has a joint state and the clock
        return world, proc

    yield start
    for proc, executor, world in started:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=10) == 0, \
                f"the decoder did not exit cleanly on SIGINT:\n{log_path.read_text()}"
        finally:
            if proc.poll() is None:
                proc.kill()
            executor.shutdown()
            world.destroy_node()


def assert_motion_within_limits(commands, previous_velocity):
    positions = np.array([c for _, c in commands])
    velocity = np.diff(positions, axis=0) / DT
    acceleration = np.diff(np.vstack([previous_velocity, velocity]), axis=0) / DT
    assert np.all(np.abs(velocity) <= EMB.max_velocity + 1e-6)
    assert np.all(np.abs(acceleration) <= EMB.max_acceleration + 1e-3)


@pytest.mark.slow
def test_decoder_follows_chunks_survives_a_dead_backbone_and_latches_the_estop(world_factory):
    world, proc = world_factory(watchdog_timeout_s=0.5, request_timeout_s=0.5)

    # Idle: nothing is published, the driver holds.
    world.step(10, expect_commands=False)
    time.sleep(0.3)                                  # let the decoder finish those ticks
    assert world.commands == []

    # Executing at 50 Hz: one command per 20 ms of sim time, following the chunks.
    assert world.start_decoder().success
    assert world.step(150) == 0
    executed = world.commands[-120:]
    assert len(world.commands) == 150
    for t, command in executed:
        assert command == pytest.approx(world.target(t), abs=1e-6)
    assert len(world.requests) >= 3
    assert all(k > 0 and n == 14 * k for _, _, _, k, n in world.requests[1:])   # rtc conditioning
    assert all(ef >= t for t, _, ef, _, _ in world.requests)

    # A NaN chunk is rejected with its reason; the queue keeps the robot moving meanwhile.
    world.mode = "nan"
    n_requests = len(world.requests)
    while len(world.requests) == n_requests:
        assert world.step(1) == 0
    world.mode = "ok"
    metrics = world.wait_metrics(lambda m: m.chunks_rejected >= 1)
    assert "non-finite" in metrics.last_rejection and metrics.state == "executing"
    assert world.step(25) == 0

    # The backbone dies: the queue drains, the decoder brakes within the limits and holds.
    world.backbone_down()
    before = len(world.commands)
    velocity = (world.commands[-1][1] - world.commands[-2][1]) / DT
    assert world.step(125) == 0
    silent = world.commands[before - 1:]
    assert_motion_within_limits(silent, velocity)
    assert silent[-1][1] == pytest.approx(silent[-20][1])          # at rest, held
    metrics = world.wait_metrics(lambda m: m.state == "holding")
    assert metrics.stalls > 0

    # It comes back: the decoder resumes by itself and follows the chunks again.
    world.backbone_up()
    world.wait_metrics(lambda m: m.state == "executing", max_ticks=400)
    assert world.step(75) == 0
    t, command = world.commands[-1]
    assert command == pytest.approx(world.target(t), abs=1e-6)

    # E-stop (topic): brakes from the next tick on and stays latched.
    world.estop_pub.publish(Bool(data=True))
    world.wait_metrics(lambda m: m.state == "estopped", max_ticks=50)
    before = len(world.commands)
    assert world.step(30) == 0
    stopping = world.commands[before - 2:]
    v = [np.abs(b[1] - a[1]).max() / DT for a, b in zip(stopping, stopping[1:])]
    assert all(v1 <= max(v0 - EMB.max_acceleration.min() * DT, 0.0) + 1e-6
               for v0, v1 in zip(v[1:], v[2:]))                 # braking at every tick
    assert stopping[-1][1] == pytest.approx(stopping[-2][1])
    assert not world.call(world.start_client, Trigger.Request()).success
    assert world.step(10) == 0
    assert world.metrics.state == "estopped" and world.metrics.estops == 1

    # Released by the topic: at rest already, so the decoder goes idle (the driver holds) until
    # started again; the service engages and releases too.
    world.estop_pub.publish(Bool(data=False))
    world.wait_metrics(lambda m: m.state == "idle", max_ticks=50, expect_commands=False)
    assert world.call(world.estop_client, SetBool.Request(data=True)).success
    world.wait_metrics(lambda m: m.state == "estopped", max_ticks=50)
    assert world.call(world.estop_client, SetBool.Request(data=False)).success
    assert world.call(world.start_client, Trigger.Request()).success
    world.wait_metrics(lambda m: m.state == "executing", max_ticks=50)
    assert world.call(world.hold_client, Trigger.Request()).success
    metrics = world.wait_metrics(lambda m: m.state == "idle", max_ticks=50, expect_commands=False)
    assert metrics.estops == 2 and metrics.missed_ticks <= 0.02 * metrics.ticks
    assert metrics.loop_period_mean_ms == pytest.approx(20.0, abs=1.0)


@pytest.mark.slow
def test_joint_trajectory_interface_publishes_one_point_per_tick(world_factory):
    world, proc = world_factory(command_interface="joint_trajectory")
    assert world.start_decoder().success
    assert world.step(60) == 0
    t, msg = world.trajectories[-1]
    assert list(msg.joint_names) == EMB.joint_names and len(msg.points) == 1
    assert duration_to_sec(msg.points[0].time_from_start) == pytest.approx(DT)
    assert np.array(msg.points[0].positions) == pytest.approx(world.target(t), abs=1e-6)


@pytest.mark.slow
def test_dry_run_publishes_metrics_but_no_commands(world_factory):
    world, proc = world_factory(dry_run="true")
    assert world.start_decoder().success
    metrics = world.wait_metrics(lambda m: m.state == "executing" and m.chunks_received >= 2,
                                 expect_commands=False)
    assert world.commands == [] and metrics.ticks > 0


def test_bad_parameters_are_refused_with_the_reason(ros_context):
    from action_decoder_node.node import ActionDecoderNode
    for name, value, match in (("blend", "bogus", "blend"), ("output_rate_hz", -1.0, "> 0"),
                               ("command_interface", "velocity", "command_interface"),
                               ("realtime_priority", 100, "realtime_priority"),
                               ("spin_margin_s", 0.02, "spin_margin_s")):
        with pytest.raises(ValueError, match=match):
            ActionDecoderNode(context=ros_context, parameter_overrides=[Parameter(name,
                                                                                  value=value)])


HEARTBEAT_PROCESS = """
import rclpy
from std_msgs.msg import Empty
from bimanual_core.config import load_stack
from bimanual_core.ros_conversions import liveliness_qos
names = load_stack().interfaces
rclpy.init()
node = rclpy.create_node("backbone_heartbeat")
node.create_publisher(Empty, names["backbone_heartbeat_topic"],
                      liveliness_qos(float(names["backbone_liveliness_lease_s"])))
rclpy.spin(node)
"""


@pytest.mark.slow
def test_killed_backbone_process_makes_the_decoder_brake_at_once(world_factory, tmp_path):
    world, proc = world_factory(watchdog_timeout_s=5.0)   # the watchdog alone would wait 5 s
    heart = subprocess.Popen([sys.executable, "-c", HEARTBEAT_PROCESS], env=os.environ.copy())
    try:
        log_path = tmp_path / "action_decoder.log"
        deadline = time.monotonic() + 20.0                 # discovery, on a loaded machine
        while "backbone heartbeat alive" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        assert world.start_decoder().success
        assert world.step(50) == 0
        assert world.metrics.state == "executing"
        velocity = (world.commands[-1][1] - world.commands[-2][1]) / DT
        before = len(world.commands)
        world.backbone_down()                              # the process dies with its service
        heart.kill()                                       # SIGKILL: no goodbye on the wire
        killed = time.monotonic()
        while world.metrics.state != "holding" and time.monotonic() - killed < 2.0:
            world.step(1)
            time.sleep(DT)      # sim time no faster than the wall clock the DDS lease runs on
        assert world.metrics.state == "holding", "the decoder never noticed the dead backbone"
        assert time.monotonic() - killed < 1.0
        # Well before the queue (about 1 s of actions) or the 5 s watchdog would have run out:
        assert len(world.commands) - before < 25
        assert world.step(25) == 0
        assert_motion_within_limits(world.commands[before - 1:], velocity)
        assert world.commands[-1][1] == pytest.approx(world.commands[-2][1])    # at rest
    finally:
        heart.kill()
        heart.wait()


def fifo_permitted() -> bool:
    """Whether a process here may put a thread in SCHED_FIFO (tried in a child, not in pytest)."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def fifo_threads(pid: int) -> dict[int, int]:
    """SCHED_FIFO threads of process `pid`: their priority by thread id."""
    tids = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if os.sched_getscheduler(int(tid)) == os.SCHED_FIFO:
                tids[int(tid)] = os.sched_getparam(int(tid)).sched_priority
        except ProcessLookupError:                   # a thread that just ended
            pass
    return tids


@pytest.mark.slow
def test_wall_clock_commands_come_from_a_control_thread_at_50_hz(world_factory, tmp_path):
    world, proc = world_factory(use_sim_time=False, realtime_priority=10)
    log_path = tmp_path / "action_decoder.log"
    # The control thread alone at the priority asked, the threads that share its GIL (the main
    # thread, which spins the executor, among them) one below; where real-time scheduling is not
    # permitted, one warning says so.
    permitted = fifo_permitted()
    settled = (lambda: sorted(fifo_threads(proc.pid).values())[-2:] == [9, 10]
               and fifo_threads(proc.pid).get(proc.pid) == 9) if permitted else \
        (lambda: "realtime_priority 10 not permitted" in log_path.read_text())
    deadline = time.monotonic() + 5.0
    while not ("ticked by a control thread on the wall clock" in log_path.read_text()
               and settled()):
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.05)
    if not permitted:
        assert fifo_threads(proc.pid) == {}
        assert log_path.read_text().count("not permitted") == 1

    assert world.start_decoder().success             # no /clock from here on: wall time only
    time.sleep(1.0)                                  # the first chunks arrive
    with world.cond:
        first, m0 = len(world.commands), world.metrics
    time.sleep(2.0)
    with world.cond:
        window, m1 = world.commands[first:], world.metrics
    # 50 Hz by the decoder's own tick count between two metrics messages (published once a
    # second, stamped on its clock), and every tick's command received here, when this
    # (unprivileged, maybe loaded) process gets to it.
    rate = (m1.ticks - m0.ticks) / (time_to_sec(m1.header.stamp) - time_to_sec(m0.header.stamp))
    assert rate == pytest.approx(1 / DT, rel=0.02)
    with world.cond:
        assert world.cond.wait_for(lambda: len(world.commands) - first >= 0.95 * 2.0 / DT,
                                   timeout=5.0), len(world.commands) - first
    times = np.array([t for t, _ in window])
    assert np.diff(times).mean() == pytest.approx(DT, rel=0.25)    # as received here
    # It follows the chunks stamped on the wall clock (none rejected as in the past): each
    # command is the wave at its tick, which this process receives up to a few loaded ms later.
    for t, command in window:
        assert any(command == pytest.approx(world.target(t - delay), abs=0.02)
                   for delay in np.arange(0.0, 0.1, 0.002)), (t, command, world.target(t))
    metrics = world.metrics
    assert metrics.state == "executing" and metrics.chunks_received >= 2
    assert metrics.chunks_rejected == 0 and metrics.missed_ticks <= 0.02 * metrics.ticks
    assert metrics.loop_period_mean_ms == pytest.approx(20.0, abs=0.5)
