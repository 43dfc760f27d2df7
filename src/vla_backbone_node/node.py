"""ROS 2 node `vla_backbone`: the backbone of the VLA, serving action chunks from a policy.

Keeps the latest observation, and on each GetActionChunk request runs the configured policy
(`vla_backbone_node.policy` registry: the zero-shot ER planner by default) on it. The chunk's
header.stamp is the stamp of the observation it was computed from, never the time it was computed,
so the action decoder can line it up with the robot's clock whatever the inference delay.

Interfaces (names from config/stack.yaml `interfaces`):
  sub  observation_topic      bimanual_vla/Observation (the latest valid one is kept)
  srv  start_episode_service  bimanual_vla/StartEpisode: reset the policy for an instruction
  srv  stop_episode_service   std_srvs/Trigger: end the episode
  srv  get_chunk_service      bimanual_vla/GetActionChunk: infer on the latest observation
  pub  action_chunk_topic     bimanual_vla/ActionChunk: every chunk served (for tools)
  pub  policy_status_topic    bimanual_vla/PolicyStatus: on every chunk and state change (latched)
  pub  /diagnostics           diagnostic_msgs/DiagnosticArray: the remote policy's latency
                              (inference, network, total: last, p50, p99) after every chunk request
  cli  er_query_service       bimanual_vla/ErQuery: where the zero-shot policy finds objects

Parameters:
  embodiment (str, "aloha2"): config/<embodiment>.yaml (joint order, chunk horizon, rate).
  policy (str, "zero_shot"): the policy to serve; a StartEpisode request may name another.
  chunk_horizon (int, the embodiment's chunk_horizon): H, rows per chunk (>= 1).
  er_timeout_s (float, 5.0): how long an ER query may take before the episode start fails.
  inject_delay_s (float, 0.0): seconds each GetActionChunk answer is held back after inference
    (>= 0), to emulate a remote backbone's network and inference latency in benchmarks. Slept on
    the node's clock (sim time under use_sim_time: the simulator runs slower than the wall clock
    while rendering, and the decoder measures latency on its clock), in the service callback's
    thread, so observations keep arriving meanwhile.
  remote_uri (str, ""): the policy server of the "remote" policy (`bimanual-vla serve`, or an
    openpi pi0 / pi0.5 server), e.g. ws://gpu-box:8000; needed when policy is "remote".
  remote_timeout_s (float, 1.0): per-request timeout of the remote policy (connecting included).
  remote_retries (int, 2): attempts after the first, each on a new connection, before a request
    to the remote policy fails.

Service callbacks that touch the policy share one mutually exclusive callback group (the policy
is not thread-safe); the ER client and the observation subscription have groups of their own, so
a StartEpisode that waits on the ER service inside the policy's reset does not block them.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from rclpy.node import Node
from std_msgs.msg import Empty, Header
from std_srvs.srv import Trigger

from bimanual_core.config import Embodiment, load_embodiment, load_stack, resolve_checkpoint
from bimanual_core.node_runner import run_node
from bimanual_core.ros_conversions import (LATCHED_QOS, RELIABLE_QOS, ImageEncodingError,
                                           image_to_numpy, liveliness_qos, sec_to_duration,
                                           time_to_sec)
from bimanual_vla.msg import ActionChunk, Observation, PolicyStatus
from bimanual_vla.srv import ErQuery, GetActionChunk, StartEpisode
from vla_backbone_node.policy import (Policy, PolicyError, PolicyObservation, available_policies,
                                      make_policy)
from vla_backbone_node.remote import RemotePolicy
from vla_backbone_node.zero_shot import ObjectLocation

WARN_THROTTLE_S = 5.0
# StartEpisode right after bring-up waits this long (wall clock) for a first observation.
OBSERVATION_WAIT_S = 3.0


class ObservationRejected(ValueError):
    """An Observation message the policy must not see; the message says why."""


def joint_vector(names, positions, expected: list[str]) -> np.ndarray:
    """Joint positions in `expected` order; unnamed positions must already be in that order."""
    positions = np.asarray(positions, dtype=float)
    if len(names) == 0:
        if positions.shape != (len(expected),):
            raise ObservationRejected(f"joint_state has {positions.size} unnamed positions, "
                                      f"expected {len(expected)}")
        out = positions
    else:
        if len(names) != positions.size:
            raise ObservationRejected(f"joint_state has {len(names)} names but "
                                      f"{positions.size} positions")
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in expected if n not in index]
        if missing:
            raise ObservationRejected(f"joint_state lacks joints {missing}")
        out = positions[[index[n] for n in expected]]
    if not np.all(np.isfinite(out)):
        raise ObservationRejected("joint_state contains NaN or inf")
    return out


class VlaBackbone(Node):
    def __init__(self) -> None:
        super().__init__("vla_backbone")
        self.declare_parameter("embodiment", "aloha2")
        self.embodiment: Embodiment = load_embodiment(self.get_parameter("embodiment").value)
        self.declare_parameter("policy", "zero_shot")
        self.declare_parameter("chunk_horizon", self.embodiment.chunk_horizon)
        self.declare_parameter("er_timeout_s", 5.0)
        self.declare_parameter("inject_delay_s", 0.0)
        self.declare_parameter("checkpoint", "")
        self.declare_parameter("device", "auto")
        self.declare_parameter("torch_threads", 0)
        self.declare_parameter("remote_uri", "")
        self.declare_parameter("remote_timeout_s", 1.0)
        self.declare_parameter("remote_retries", 2)
        self._horizon = int(self.get_parameter("chunk_horizon").value)
        self._er_timeout = float(self.get_parameter("er_timeout_s").value)
        self._inject_delay = float(self.get_parameter("inject_delay_s").value)
        if self._horizon < 1:
            raise ValueError(f"parameter chunk_horizon must be >= 1, got {self._horizon}")
        if not (math.isfinite(self._er_timeout) and self._er_timeout > 0):
            raise ValueError(f"parameter er_timeout_s must be > 0, got {self._er_timeout}")
        if not (math.isfinite(self._inject_delay) and self._inject_delay >= 0):
            raise ValueError(f"parameter inject_delay_s must be >= 0, got {self._inject_delay}")
        self.names = load_stack().interfaces

        policy_group = MutuallyExclusiveCallbackGroup()
        self._er_group = MutuallyExclusiveCallbackGroup()
        self._er = self.create_client(ErQuery, self.names["er_query_service"],
                                      callback_group=self._er_group)
        self._lock = threading.Lock()          # guards _latest (subscription vs services)
        self._latest: tuple[Observation, PolicyObservation] | None = None
        self._active = False
        self._instruction = ""
        # (request_id, success, message) of the last StartEpisode that carried an id: a re-sent
        # request (its first reply lost in DDS discovery) gets this answer, not a second reset.
        self._last_start: tuple[str, bool, str] | None = None
        self._policy = self._make_policy(str(self.get_parameter("policy").value))

        self.create_subscription(Observation, self.names["observation_topic"],
                                 self._on_observation, RELIABLE_QOS,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self._chunk_pub = self.create_publisher(ActionChunk, self.names["action_chunk_topic"],
                                                RELIABLE_QOS)
        # Never written to: DDS asserts its liveliness while this process runs, so the decoder
        # learns within the lease that the backbone died (see action_decoder_node).
        self._heartbeat = self.create_publisher(
            Empty, self.names["backbone_heartbeat_topic"],
            liveliness_qos(float(self.names["backbone_liveliness_lease_s"])))
        self._status_pub = self.create_publisher(PolicyStatus, self.names["policy_status_topic"],
                                                 LATCHED_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_QOS)
        self.create_service(StartEpisode, self.names["start_episode_service"], self._on_start,
                            callback_group=policy_group)
        self.create_service(Trigger, self.names["stop_episode_service"], self._on_stop,
                            callback_group=policy_group)
        self.create_service(GetActionChunk, self.names["get_chunk_service"], self._on_get_chunk,
                            callback_group=policy_group)
        self._publish_status()
        self.get_logger().info(f"serving policy {self._policy.name!r} (H={self._horizon}) on "
                               f"{self.names['get_chunk_service']}"
                               + (f", answers delayed {self._inject_delay:g} s"
                                  if self._inject_delay else ""))

    # ------------------------------------------------------------------ policy

    def _make_policy(self, name: str) -> Policy:
        """Build a registered policy; the zero-shot one gets the ER service as its eyes, the
        remote one its server."""
        deps = {"horizon": self._horizon}
        if name == "zero_shot":
            deps["locate"] = self._locate
        elif name == "learned":
            deps.update(checkpoint=resolve_checkpoint(str(self.get_parameter("checkpoint").value)),
                        device=str(self.get_parameter("device").value),
                        threads=int(self.get_parameter("torch_threads").value))
        elif name == "remote":
            deps.update(uri=str(self.get_parameter("remote_uri").value),
                        timeout_s=float(self.get_parameter("remote_timeout_s").value),
                        retries=int(self.get_parameter("remote_retries").value))
        return make_policy(name, self.embodiment, **deps)

    def _call_er(self, request: ErQuery.Request) -> ErQuery.Response:
        """Blocking ER call from a policy callback; the response arrives on the ER group."""
        if not self._er.wait_for_service(timeout_sec=min(1.0, self._er_timeout)):
            raise TimeoutError(f"the ER service {self.names['er_query_service']} is not available")
        done = threading.Event()
        future = self._er.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(self._er_timeout):
            self._er.remove_pending_request(future)
            raise TimeoutError(f"the ER service gave no answer within {self._er_timeout:.1f} s")
        return future.result()

    def _locate(self, label: str) -> ObjectLocation | None:
        """Where `label` is, from the ER service: a 3D box (centre + size), else a 3D point; from
        the default camera, else from each other camera in turn (an arm left above the table
        after an earlier step may hide the object from one camera)."""
        first_why = ""
        for camera in ["", *self.embodiment.cameras]:
            found, why = self._locate_in(label, camera)
            if found is not None:
                return found
            first_why = first_why or why
        if first_why:
            raise LookupError(first_why)
        return None

    def _locate_in(self, label: str, camera: str) -> tuple[ObjectLocation | None, str]:
        why = ""
        for query_type in (ErQuery.Request.BOXES, ErQuery.Request.POINTS):
            response = self._call_er(ErQuery.Request(query_type=query_type, query=label,
                                                     camera=camera, max_results=1, with_3d=True))
            if not response.success:
                return None, response.message or "the ER query failed"
            why = response.message or why
            for box in response.boxes:
                if box.has_position_3d:
                    p, s = box.position_3d, box.size_3d
                    size = np.array([s.x, s.y, s.z])
                    return ObjectLocation(np.array([p.x, p.y, p.z]),
                                          size=size if np.all(size > 0) else None), ""
            for point in response.points:
                if point.has_position_3d:
                    p = point.position_3d
                    return ObjectLocation(np.array([p.x, p.y, p.z])), ""
        return None, why

    # ------------------------------------------------------------------ observations

    def _convert(self, msg: Observation) -> PolicyObservation:
        if len(msg.camera_names) != len(msg.images):
            raise ObservationRejected(f"{len(msg.camera_names)} camera names for "
                                      f"{len(msg.images)} images")
        joints = joint_vector(list(msg.joint_state.name), msg.joint_state.position,
                              self.embodiment.joint_names)
        images = {}
        for name, image in zip(msg.camera_names, msg.images):
            try:
                images[name] = image_to_numpy(image, want_rgb=True)
            except ImageEncodingError as exc:   # the policy sees this camera as missing
                self.get_logger().warning(f"camera {name} left out of the observation: {exc}",
                                       throttle_duration_sec=WARN_THROTTLE_S)
        stamp = time_to_sec(msg.header.stamp)
        return PolicyObservation(stamp, joints, images, self._instruction)

    def _on_observation(self, msg: Observation) -> None:
        try:
            obs = self._convert(msg)
        except ObservationRejected as exc:
            self.get_logger().warning(f"observation rejected: {exc}",
                                   throttle_duration_sec=WARN_THROTTLE_S)
            return
        with self._lock:
            self._latest = (msg, obs)

    # ------------------------------------------------------------------ services

    def _publish_status(self) -> None:
        state = self._policy.status()
        self._status_pub.publish(PolicyStatus(
            header=Header(stamp=self.get_clock().now().to_msg()),
            instruction=self._instruction, policy_name=self._policy.name, phase=state.phase,
            progress=float(state.progress), description=state.description, done=state.done,
            failed=state.failed, message=state.message))

    def _on_start(self, request: StartEpisode.Request,
                  response: StartEpisode.Response) -> StartEpisode.Response:
        if request.request_id and self._last_start and self._last_start[0] == request.request_id:
            _, response.success, response.message = self._last_start
            return response
        response.success = False
        if request.policy and request.policy != self._policy.name:
            if request.policy not in available_policies():
                response.message = (f"unknown policy {request.policy!r}; available: "
                                    f"{', '.join(available_policies())}")
                return response
            try:
                policy = self._make_policy(request.policy)
            except Exception as exc:   # a policy that cannot be built must not stop the node
                response.message = f"cannot start policy {request.policy!r}: {exc}"
                self.get_logger().error(response.message)
                return response
            self._policy.close()
            self._policy = policy
        # Just after bring-up the first observation may still be on its way: wait a little.
        deadline = time.monotonic() + OBSERVATION_WAIT_S
        while True:
            with self._lock:
                have_observation = self._latest is not None
            if have_observation or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not have_observation:
            response.message = f"no observation received yet on {self.names['observation_topic']}"
        else:
            self._active = False
            self._instruction = request.instruction
            try:
                self._policy.reset(request.instruction, request.task)
                self._active = True
                response.success = True
                response.message = self._policy.status().description
            except PolicyError as exc:
                response.message = str(exc)
        # (rclpy ties a severity to each logging call site, hence two calls)
        if response.success:
            self.get_logger().info(f"start episode {request.instruction!r}: {response.message}")
        else:
            self.get_logger().warning(f"start episode {request.instruction!r} refused: "
                                      f"{response.message}")
        if request.request_id:
            self._last_start = (request.request_id, response.success, response.message)
        self._publish_status()
        return response

    def _on_stop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        was_active = self._active
        self._active = False
        self._policy.stop()
        self._publish_status()
        response.success = True
        response.message = "episode stopped" if was_active else "no episode was running"
        return response

    def _publish_remote_latency(self) -> None:
        """The remote policy's latency on /diagnostics (and the last one in the debug log)."""
        if not isinstance(self._policy, RemotePolicy):
            return
        policy, last = self._policy, self._policy.last_latency
        fields = {"uri": policy.uri, "server_policy": policy.server_metadata.get("policy", "")}
        if last is not None:
            self.get_logger().debug(f"remote latency: total {last.total_ms:.1f} ms = inference "
                                    f"{last.inference_ms:.1f} + network {last.network_ms:.1f}")
            fields.update({f"last_{k}": f"{v:.2f}" for k, v in asdict(last).items()})
        fields.update({k: v if isinstance(v, int) else f"{v:.2f}"
                       for k, v in policy.latency_stats().items()})
        status = DiagnosticStatus(
            level=DiagnosticStatus.WARN if policy.last_error else DiagnosticStatus.OK,
            name="vla_backbone: remote policy", hardware_id=policy.uri,
            message=policy.last_error or "ok",
            values=[KeyValue(key=k, value=str(v)) for k, v in fields.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)

    def _on_get_chunk(self, request: GetActionChunk.Request,
                      response: GetActionChunk.Response) -> GetActionChunk.Response:
        response = self._serve_chunk(request, response)
        self._publish_remote_latency()
        return response

    def _serve_chunk(self, request: GetActionChunk.Request,
                     response: GetActionChunk.Response) -> GetActionChunk.Response:
        response.success = False
        with self._lock:
            latest = self._latest
        if not self._active:
            response.message = "no episode is running: call start_episode first"
            return response
        if latest is None:
            response.message = f"no observation received yet on {self.names['observation_topic']}"
            return response
        msg, obs = latest
        dim = self.embodiment.action_dim
        steps = int(request.conditioning_steps)
        if len(request.conditioning) != steps * dim:
            response.message = (f"conditioning has {len(request.conditioning)} values, expected "
                                f"conditioning_steps x {dim} = {steps * dim}")
            return response
        conditioning = (np.asarray(request.conditioning, dtype=float).reshape(steps, dim)
                        if steps else None)
        start = time.perf_counter()
        try:
            actions = np.asarray(self._policy.infer(obs, conditioning), dtype=float)
        except PolicyError as exc:
            response.message = str(exc)
            self.get_logger().warning(f"inference failed: {exc}",
                                   throttle_duration_sec=WARN_THROTTLE_S)
            self._publish_status()
            return response
        elapsed_ms = (time.perf_counter() - start) * 1e3
        if actions.ndim != 2 or actions.shape[1] != dim or not np.all(np.isfinite(actions)):
            response.message = (f"policy {self._policy.name} returned an invalid chunk "
                                f"(shape {actions.shape}, finite: {np.all(np.isfinite(actions))})")
            self.get_logger().error(response.message)
            return response
        chunk = ActionChunk(
            header=Header(stamp=msg.header.stamp), joint_names=self.embodiment.joint_names,
            horizon=len(actions), control_period=sec_to_duration(self.embodiment.control_period),
            actions=actions.ravel().tolist(), request_id=request.request_id,
            policy_name=self._policy.name, inference_ms=elapsed_ms)
        if self._inject_delay > 0:    # emulated latency; the subscription has its own group
            self.get_clock().sleep_for(Duration(seconds=self._inject_delay), context=self.context)
        response.chunk = chunk
        response.success = True
        self._chunk_pub.publish(chunk)
        self._publish_status()
        return response

    def destroy_node(self) -> None:
        self._policy.close()
        super().destroy_node()


def main(args=None) -> int:
    # Several threads: StartEpisode waits on the ER service while its answer is delivered.
    return run_node(VlaBackbone, "vla_backbone", args, threads=4)


if __name__ == "__main__":
    raise SystemExit(main())
