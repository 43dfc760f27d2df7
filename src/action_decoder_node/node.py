"""ROS 2 node `action_decoder`: action chunks from the backbone -> a safe command stream.

The local half of the cloud-backbone + local-decoder split: it asks the backbone for chunks
early enough to hide its latency, merges them (``blend``), limits every command and publishes
one per control period in the driver's form. The algorithms live in ``scheduler``, ``safety``,
``controller`` and ``realtime`` (no ROS); this module only moves messages. States are described
in ``controller``.

The tick: under use_sim_time an rclpy timer on the node's clock, so it follows /clock. On the
wall clock a control thread of its own (``realtime.PeriodicLoop``: absolute monotonic deadlines,
sleep then spin) owns it, out of the executor's wake-up latency and its callbacks' way, with the
GIL's switch interval lowered and the start-up heap frozen out of garbage collection; it
publishes each command itself and hands chunk requests to the executor thread. One lock guards
the DecoderCore between the two threads.

Parameters, read once at start-up. Defaults as listed; a value under this node's ``parameters``
in config/stack.yaml replaces the default (the stack sets all but embodiment, command_interface
and output_rate_hz):
- ``embodiment`` (str, the stack's embodiment): joints, limits, control rate, driver topics.
- ``blend`` (str, "rtc"): naive | ensemble | weighted | rtc (see ``scheduler``).
- ``watchdog_timeout_s`` (float, 0.5): executing this long without an action -> brake and hold.
- ``dry_run`` (bool, false): compute everything and publish metrics, never publish commands.
- ``command_interface`` (str, driver.command_interface): "forward_position"
  (std_msgs/Float64MultiArray on driver.forward_position_topic) or "joint_trajectory"
  (trajectory_msgs/JointTrajectory on driver.joint_trajectory_topic, one point one period ahead).
- ``output_rate_hz`` (float, control_rate_hz): command rate; above the chunk rate the targets are
  interpolated linearly between actions.
- ``request_timeout_s`` (float, 2.0): a chunk request unanswered this long counts as failed.
- ``min_queue_s`` (float, 0.5): actions that should still be queued when a requested chunk
  arrives: the safety margin against latency spikes and the overlap the blend works over.
- ``realtime_priority`` (int, 0): wall clock only: SCHED_FIFO priority (1..99) of the control
  thread alone; 0 keeps normal scheduling. Without the right (CAP_SYS_NICE or an RLIMIT_RTPRIO
  allowance) one warning is logged and the thread runs normally.
- ``spin_margin_s`` (float, 0.0005): wall clock only: the control thread sleeps until this long
  before each deadline and spin-waits the rest; 0 sleeps all the way.

Interfaces (names from config/stack.yaml ``interfaces``): client ``get_chunk_service``; services
``decoder_start_service`` and ``decoder_hold_service`` (std_srvs/Trigger) and ``~/estop``
(std_srvs/SetBool); subscriptions to the driver's joint states and ``estop_topic``
(std_msgs/Bool, true engages, latched until false) and the backbone's heartbeat
(``backbone_heartbeat_topic``: when its DDS liveliness lapses, within
``backbone_liveliness_lease_s``, the backbone is gone and the decoder brakes to a hold at once
instead of running out the queue; it resumes when chunks come back); publishes ``decoder_metrics_topic``
(bimanual_vla/DecoderMetrics, 1 Hz and on state changes) and /diagnostics. The e-stop takes
effect at the next tick: from then on every command brakes at the acceleration limit (what
"stop" means is in ``safety``). Its subscription is reliable and volatile, so it matches any
reliable publisher, latched (transient local) or not.
"""
from __future__ import annotations

import gc
import os
import sys
import threading
import traceback
from collections import deque

import numpy as np
import rclpy
from bimanual_vla.msg import DecoderMetrics
from bimanual_vla.srv import GetActionChunk
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.event_handler import QoSLivelinessChangedInfo, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Empty, Float64MultiArray
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from bimanual_core.config import load_embodiment, load_stack
from bimanual_core.node_runner import run_node
from bimanual_core.ros_conversions import (RELIABLE_QOS, duration_to_sec, liveliness_qos,
                                           sec_to_duration, sec_to_time, time_to_sec)

from .controller import JITTER_BIN_MS, Chunk, DecoderCore, DecoderState, TickOutput
from .realtime import DEFAULT_SPIN_MARGIN_S, PeriodicLoop, set_thread_fifo_priority
from .safety import MotionState, SafetyLimiter
from .scheduler import DEFAULT_STRATEGY, STRATEGIES, ChunkScheduler

COMMAND_INTERFACES = ("forward_position", "joint_trajectory")
METRICS_PERIOD_S = 1.0
# A thread that wants the GIL waits up to this long for the holder to let it go (Python's default
# is 5 ms): the control thread waking for its deadline would wait out an executor callback.
CONTROL_SWITCH_INTERVAL_S = 0.0005


class ActionDecoderNode(Node):
    """Thin ROS adapter around DecoderCore; every core call happens under one lock."""

    def __init__(self, **kwargs):
        super().__init__("action_decoder", **kwargs)
        stack = load_stack()
        self._stack_params = stack.node("action_decoder").parameters
        emb_name = self._param("embodiment", stack.embodiment, "embodiment config name")
        self.embodiment = load_embodiment(emb_name)
        emb = self.embodiment
        blend = self._param("blend", DEFAULT_STRATEGY,
                            f"chunk merge strategy: {', '.join(STRATEGIES)}")
        watchdog = self._param("watchdog_timeout_s", 0.5,
                               "seconds without an action before braking to a hold")
        self.dry_run = self._param("dry_run", False,
                                   "compute and publish metrics, never publish commands")
        interface = self._param("command_interface", emb.driver["command_interface"],
                                f"driver command form: {', '.join(COMMAND_INTERFACES)}")
        rate = self._param("output_rate_hz", emb.control_rate_hz,
                           "command rate; interpolates between actions above the chunk rate")
        request_timeout = self._param("request_timeout_s", 2.0,
                                      "seconds before an unanswered chunk request counts as failed")
        min_queue = self._param("min_queue_s", 0.5,
                                "seconds of actions still queued when a requested chunk arrives")
        priority = self._param("realtime_priority", 0,
                               "wall clock: SCHED_FIFO priority 1..99 of the control thread; 0 off")
        spin_margin = self._param("spin_margin_s", DEFAULT_SPIN_MARGIN_S,
                                  "wall clock: seconds spin-waited before each tick's deadline")
        if blend not in STRATEGIES:
            raise ValueError(f"parameter blend={blend!r}: choose one of {STRATEGIES}")
        if interface not in COMMAND_INTERFACES:
            raise ValueError(f"parameter command_interface={interface!r}: choose one of "
                             f"{COMMAND_INTERFACES}")
        for name, value in (("watchdog_timeout_s", watchdog), ("output_rate_hz", rate),
                            ("request_timeout_s", request_timeout)):
            if not value > 0:
                raise ValueError(f"parameter {name}={value} must be > 0")
        if not min_queue >= 0:
            raise ValueError(f"parameter min_queue_s={min_queue} must be >= 0")
        max_priority = os.sched_get_priority_max(os.SCHED_FIFO)
        if not 0 <= priority <= max_priority:
            raise ValueError(f"parameter realtime_priority={priority} must be 0..{max_priority}")

        self.output_period = 1.0 / rate
        if not 0 <= spin_margin < self.output_period:
            raise ValueError(f"parameter spin_margin_s={spin_margin} must be >= 0 and below the "
                             f"output period ({self.output_period:g} s)")
        scheduler = ChunkScheduler(emb.action_dim, emb.control_period, blend, min_queue=min_queue)
        self.core = DecoderCore(
            SafetyLimiter.from_embodiment(emb, self.output_period), scheduler, emb.joint_names,
            self.output_period, watchdog, request_timeout,
            conditioning_steps=emb.chunk_horizon if blend == "rtc" else 0,
            logger=self.get_logger())
        self._joint_positions: np.ndarray | None = None
        self._joint_state_problem = "no joint state received yet"
        self._futures: dict[int, Future] = {}      # executor thread only
        self._published_state = self.core.state
        # The core (and _published_state) is shared by the executor thread and, on the wall
        # clock, the control thread. Metrics are published under it too: only on state changes
        # and at 1 Hz, and their order then follows the state's.
        self._lock = threading.Lock()
        self._outbox: deque[TickOutput] = deque()  # ticks' requests, sent by the executor thread
        self._control: PeriodicLoop | None = None
        self._control_thread: threading.Thread | None = None
        self.control_failed = False

        names = stack.interfaces
        self._interface = interface
        if interface == "forward_position":
            self._command_pub = self.create_publisher(
                Float64MultiArray, emb.driver["forward_position_topic"], RELIABLE_QOS)
        else:
            self._command_pub = self.create_publisher(
                JointTrajectory, emb.driver["joint_trajectory_topic"], RELIABLE_QOS)
        self._metrics_pub = self.create_publisher(DecoderMetrics, names["decoder_metrics_topic"],
                                                  RELIABLE_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_QOS)
        self._client = self.create_client(GetActionChunk, names["get_chunk_service"])
        self.create_subscription(JointState, emb.driver["joint_states_topic"], self._on_joint_state,
                                 RELIABLE_QOS)
        self.create_subscription(Bool, names["estop_topic"], self._on_estop_topic, RELIABLE_QOS)
        self.create_subscription(
            Empty, names["backbone_heartbeat_topic"], lambda _msg: None,
            liveliness_qos(float(names["backbone_liveliness_lease_s"])),
            event_callbacks=SubscriptionEventCallbacks(liveliness=self._on_backbone_liveliness))
        self.create_service(Trigger, names["decoder_start_service"], self._on_start)
        self.create_service(Trigger, names["decoder_hold_service"], self._on_hold)
        self.create_service(SetBool, "~/estop", self._on_estop_service)
        self.create_timer(METRICS_PERIOD_S, self._on_metrics_timer)
        if self.get_parameter("use_sim_time").value:
            # Timers run on the node's clock, so under use_sim_time they follow /clock.
            self.create_timer(self.output_period, self._on_tick)
            self._dispatch = self._send_outbox
            ticks = "ticked by a timer on sim time"
            if priority:
                self.get_logger().warning("realtime_priority applies to the wall-clock control "
                                          "thread only; ignored under use_sim_time")
        else:
            # Chunk requests leave from the executor thread: rcl_take_response, which the
            # executor calls on the same client, is not thread-safe, and rcl_send_request is
            # only safe beside thread-safe calls; rclpy's Client.call_async locks its table of
            # pending requests but not against that take. So the control thread queues the tick's
            # output and triggers a guard condition (safe from any thread); the request leaves
            # within the executor's wake-up time, which the latency estimate absorbs. Commands are
            # published from the control thread itself (rcl_publish is thread-safe).
            self._dispatch = self.create_guard_condition(self._send_outbox).trigger
            self._control = PeriodicLoop(self._on_tick, self.output_period, spin_margin)
            sys.setswitchinterval(CONTROL_SWITCH_INTERVAL_S)
            # A full garbage collection holds the GIL while it scans the whole heap: ~13 ms for
            # the ~34k objects start-up leaves (measured here), a stall of the control thread
            # whichever thread triggers it. Frozen, they are never scanned again.
            gc.collect()
            gc.freeze()
            self._control_thread = threading.Thread(
                target=self._run_control, args=(priority,), name="action_decoder_control",
                daemon=True)
            self._control_thread.start()
            ticks = "ticked by a control thread on the wall clock" + (
                f" (realtime_priority {priority})" if priority else "")
        self.get_logger().info(
            f"{emb.name}: {blend} blending, {rate:g} Hz {interface} commands"
            f"{' (dry run: none published)' if self.dry_run else ''}, {ticks}, chunks from "
            f"{names['get_chunk_service']}")

    def _param(self, name: str, default, description: str):
        """Declare a read-only parameter; config/stack.yaml's value, if any, is the default."""
        default = type(default)(self._stack_params.get(name, default))
        descriptor = ParameterDescriptor(description=description, read_only=True)
        return self.declare_parameter(name, default, descriptor).value

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ---- control loop ---------------------------------------------------------------------
    def _run_control(self, priority: int) -> None:
        """The control thread. Should a tick raise, the node shuts down (exit status 1) rather
        than live on without commands."""
        if priority:
            try:
                set_thread_fifo_priority(priority)
            except PermissionError as exc:
                self.get_logger().warning(f"realtime_priority {priority} not permitted ({exc}): "
                                          f"the control thread runs with normal scheduling")
        try:
            self._control.run()
        except Exception:
            if self.context.ok():          # not just publishing into a shut-down context
                self.get_logger().fatal(f"control thread failed:\n{traceback.format_exc()}")
                self.control_failed = True
                self.context.try_shutdown()

    def _on_tick(self) -> None:
        """One control period, in the timer's callback (sim time) or the control thread."""
        with self._lock:
            out = self.core.tick(self._now())
        if out.request is not None or out.expired_request is not None:
            self._outbox.append(out)
            self._dispatch()
        if out.command is not None and not self.dry_run:
            self._publish_command(out.command)
        with self._lock:
            self._publish_metrics_on_change()

    def _send_outbox(self) -> None:
        """Executor thread: drop expired calls and send the requests the ticks queued."""
        while self._outbox:
            out = self._outbox.popleft()
            self._handle_expired(out)
            if out.request is not None:
                self._send_request(out)

    def destroy_node(self) -> None:
        if self._control is not None:
            self._control.stop()
            self._control_thread.join(timeout=1.0)
        super().destroy_node()
        if self._control is not None:
            # Logged once the node is gone: its logger would try /rosout in a shut-down context.
            rclpy.logging.get_logger("action_decoder").info(
                f"control thread stopped: {self._control.ticks} ticks, {self._control.missed} "
                f"deadlines missed")

    def _publish_command(self, command: MotionState) -> None:
        if self._interface == "forward_position":
            self._command_pub.publish(Float64MultiArray(data=command.position.tolist()))
            return
        point = JointTrajectoryPoint(positions=command.position.tolist(),
                                     velocities=command.velocity.tolist(),
                                     time_from_start=sec_to_duration(self.output_period))
        # A zero stamp tells the trajectory controller to start the point on receipt.
        self._command_pub.publish(JointTrajectory(joint_names=self.embodiment.joint_names,
                                                  points=[point]))

    # ---- chunk requests -------------------------------------------------------------------
    def _send_request(self, out: TickOutput) -> None:
        request = out.request
        if not self._client.service_is_ready():
            self._request_failed(request.request_id, "backbone service not available",
                                 request.sent_at)
            return
        msg = GetActionChunk.Request(request_id=request.request_id,
                                     execute_from=sec_to_time(request.execute_from),
                                     conditioning=request.conditioning.ravel().tolist(),
                                     conditioning_steps=len(request.conditioning))
        future = self._client.call_async(msg)
        self._futures[request.request_id] = future
        future.add_done_callback(lambda f, rid=request.request_id: self._on_response(rid, f))

    def _handle_expired(self, out: TickOutput) -> None:
        future = self._futures.pop(out.expired_request, None) if out.expired_request else None
        if future is not None:
            self._client.remove_pending_request(future)

    def _on_response(self, request_id: int, future: Future) -> None:
        self._futures.pop(request_id, None)
        exc = future.exception()
        if exc is not None or future.result() is None:
            self._request_failed(request_id, f"call failed: {exc}")
            return
        response = future.result()
        if not response.success:
            self._request_failed(request_id, f"backbone says: {response.message or 'no reason'}")
            return
        msg = response.chunk
        chunk = Chunk(stamp=time_to_sec(msg.header.stamp), joint_names=list(msg.joint_names),
                      control_period=duration_to_sec(msg.control_period),
                      horizon=int(msg.horizon), actions=np.asarray(msg.actions, dtype=float),
                      request_id=int(msg.request_id))
        with self._lock:
            self.core.on_chunk(self._now(), chunk, request_id)
            self._publish_metrics_on_change()

    def _request_failed(self, request_id: int, reason: str, now: float | None = None) -> None:
        with self._lock:
            self.core.on_request_failed(self._now() if now is None else now, request_id, reason)

    # ---- inputs ---------------------------------------------------------------------------
    def _on_joint_state(self, msg: JointState) -> None:
        """Keep the latest positions in action order; the driver may order joints differently."""
        index = {name: i for i, name in enumerate(msg.name)}
        missing = [n for n in self.embodiment.joint_names if n not in index]
        problem = None
        if missing:
            problem = f"joint_states lacks {missing}"
        elif len(msg.position) != len(msg.name):
            problem = f"joint_states has {len(msg.name)} names but {len(msg.position)} positions"
        else:
            positions = np.array([msg.position[index[n]] for n in self.embodiment.joint_names])
            if not np.all(np.isfinite(positions)):
                problem = "joint_states holds non-finite positions"
        if problem is None:
            self._joint_positions, self._joint_state_problem = positions, ""
        elif problem != self._joint_state_problem:
            self.get_logger().warning(f"ignoring joint state: {problem}")
            self._joint_state_problem = problem

    def _on_start(self, request, response):
        positions = self._joint_positions
        with self._lock:
            ok, message = self.core.start(self._now(), positions)
            self._publish_metrics_on_change()
        if not ok and positions is None:
            message = self._joint_state_problem
        response.success, response.message = ok, message
        return response

    def _on_hold(self, request, response):
        with self._lock:
            response.success, response.message = self.core.hold()
            self._publish_metrics_on_change()
        return response

    def _set_estop(self, engaged: bool) -> tuple[bool, str]:
        with self._lock:
            result = self.core.set_estop(engaged)
            self._publish_metrics_on_change()
        return result

    def _on_backbone_liveliness(self, info: QoSLivelinessChangedInfo) -> None:
        if info.alive_count_change > 0:
            self.get_logger().info(f"backbone heartbeat alive ({info.alive_count} publisher(s))")
        if info.alive_count == 0 and info.alive_count_change < 0:
            with self._lock:
                self.core.backbone_lost("its heartbeat's DDS liveliness lapsed")
                self._publish_metrics_on_change()

    def _on_estop_topic(self, msg: Bool) -> None:
        self._set_estop(bool(msg.data))

    def _on_estop_service(self, request, response):
        response.success, response.message = self._set_estop(bool(request.data))
        return response

    # ---- reporting (_publish_metrics* want the lock held) ----------------------------------
    def _on_metrics_timer(self) -> None:
        with self._lock:
            self._publish_metrics()

    def _publish_metrics_on_change(self) -> None:
        if self.core.state is not self._published_state:
            self._publish_metrics()

    def _publish_metrics(self) -> None:
        now = self._now()
        core, c = self.core, self.core.counters
        self._published_state = core.state
        last_latency = core.latency.last
        msg = DecoderMetrics(
            state=core.state.value, loop_period_mean_ms=core.loop.mean_ms,
            loop_jitter_p99_ms=core.loop.jitter_p99_ms, jitter_histogram_bin_ms=JITTER_BIN_MS,
            jitter_histogram=core.loop.histogram.tolist(), ticks=c.ticks,
            missed_ticks=c.missed_ticks, stalls=c.stalls, queue_depth=core.queue_depth(now),
            backbone_latency_ms=1e3 * last_latency if last_latency is not None else 0.0,
            chunks_received=c.chunks_received, chunks_rejected=c.chunks_rejected,
            request_failures=c.request_failures, blends=c.blends,
            limit_clamps=c.limit_clamps, estops=c.estops, last_rejection=c.last_rejection)
        msg.header.stamp = sec_to_time(now)
        self._metrics_pub.publish(msg)
        self._diag_pub.publish(self._diagnostics(msg))

    def _diagnostics(self, m: DecoderMetrics) -> DiagnosticArray:
        if m.state == DecoderState.ESTOPPED.value:
            level, summary = DiagnosticStatus.ERROR, "e-stop engaged"
        elif m.state == DecoderState.HOLDING.value:
            level, summary = DiagnosticStatus.WARN, "holding"
        else:
            level, summary = DiagnosticStatus.OK, m.state
        fields = {
            "state": m.state, "loop_period_mean_ms": f"{m.loop_period_mean_ms:.3f}",
            "loop_jitter_p99_ms": f"{m.loop_jitter_p99_ms:.3f}", "ticks": m.ticks,
            "missed_ticks": m.missed_ticks, "stalls": m.stalls, "queue_depth": m.queue_depth,
            "backbone_latency_ms": f"{m.backbone_latency_ms:.1f}",
            "chunks_received": m.chunks_received, "chunks_rejected": m.chunks_rejected,
            "request_failures": m.request_failures, "blends": m.blends,
            "limit_clamps": m.limit_clamps, "estops": m.estops, "last_rejection": m.last_rejection,
            "dry_run": self.dry_run}
        status = DiagnosticStatus(level=level, name="action_decoder: control",
                                  message=summary, hardware_id=self.embodiment.name,
                                  values=[KeyValue(key=k, value=str(v)) for k, v in fields.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = m.header.stamp
        return array


def main(args=None) -> int:
    """Run the decoder until SIGINT/SIGTERM; exits 2 on bad parameters or configuration."""
    # No callback here blocks (chunk requests are asynchronous), so one thread serves them all.
    # A MultiThreadedExecutor with a sim-time timer busy-spins between a /clock step and the
    # worker picking the tick up (measured: ~1 CPU core at 50 Hz, ticks ~100 ms late on 2 cores);
    # single-threaded: a few percent. On the wall clock the control thread ticks outside it.
    return run_node(ActionDecoderNode, "action_decoder", args,
                    exit_code=lambda node: 1 if node.control_failed else 0)


if __name__ == "__main__":
    raise SystemExit(main())
