"""The cloud backbone: serve any Policy over the openpi websocket protocol, and a Policy that
queries such a server (no ROS).

The backbone can run on another machine (a GPU box, a pi0 / pi0.5 server) while the rest of the
stack runs next to the robot. The wire format is openpi's (`openpi_client.websocket_client_policy`
and openpi's `serve_policy.py`), so openpi's client can drive our server and `RemotePolicy` can use
an openpi server as the backbone:

  on connect   server -> client: msgpack-numpy metadata dict (binary frame)
  per request  client -> server: msgpack-numpy dict (binary frame)
               server -> client: msgpack-numpy reply dict, or a text frame with the error
  observation  {"state": (D,) float, "images": {camera: (3, H, W) uint8 (or (H, W, 3))},
                "prompt": str, + ours: "task": str, "stamp": float s, "conditioning": (K, D)}
  reply        {"actions": (H, D) float32, "server_timing": {"infer_ms": float}, + ours:
                "status": {phase, progress, done, failed, message, description}}

Our server also understands {"reset": true, "prompt", "task"}, {"stop": true} and
{"get_status": true} (replies {"status": ...}); its metadata carries "protocol": PROTOCOL, which
is how `RemotePolicy` knows it may send them. With an openpi server it only sends observations
(the prompt rides along with each) and keeps the episode state itself.

Errors are text frames, as openpi sends them: a PolicyError's message (the connection stays open,
the client may go on), or the traceback of an unexpected exception (the connection is closed).
"""
from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Callable, TypeVar

import numpy as np
from openpi_client import msgpack_numpy
from websockets.exceptions import ConnectionClosed, InvalidURI, WebSocketException
from websockets.frames import CloseCode
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import ServerConnection, serve
from websockets.uri import parse_uri

from bimanual_core.config import Embodiment
from vla_backbone_node.policy import (ObservationError, Policy, PolicyError, PolicyObservation,
                                      PolicyState)

PROTOCOL = "bimanual_vla/1"
DEFAULT_PORT = 8000
LATENCY_WINDOW = 1000          # queries kept for the running percentiles

log = logging.getLogger(__name__)
T = TypeVar("T")


def status_from_dict(data: Any) -> PolicyState:
    """The server's status dict -> PolicyState; PolicyError when it is not one."""
    if not isinstance(data, dict):
        raise PolicyError(f"the server's status is not a dict: {data!r}")
    try:
        return PolicyState(phase=str(data["phase"]), progress=float(data.get("progress", 0.0)),
                           description=str(data.get("description", "")),
                           done=bool(data.get("done", False)),
                           failed=bool(data.get("failed", False)),
                           message=str(data.get("message", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"the server's status is malformed: {exc}") from None


def image_hwc(camera: str, image: Any) -> np.ndarray:
    """An openpi image, (3, H, W) or (H, W, 3) uint8, as the (H, W, 3) array policies take."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3):
        raise ObservationError(f"image {camera!r} must be a uint8 array (3, H, W) or (H, W, 3), "
                               f"got {getattr(image, 'dtype', type(image).__name__)} "
                               f"{getattr(image, 'shape', '')}")
    if image.shape[2] == 3:
        return image
    if image.shape[0] == 3:
        return np.ascontiguousarray(image.transpose(1, 2, 0))
    raise ObservationError(f"image {camera!r} has shape {image.shape}: neither (3, H, W) "
                           "nor (H, W, 3)")


def observation_from_request(request: dict, now: float) -> tuple[PolicyObservation, Any]:
    """An observation request -> (PolicyObservation, conditioning or None).

    The stamp is the client's, else `now` (a client such as openpi's sends none)."""
    if "state" not in request:
        raise ObservationError("the observation has no 'state' (the joint positions); keys: "
                               f"{sorted(map(str, request))}")
    images = request.get("images", {})
    if not isinstance(images, dict):
        raise ObservationError(f"'images' must map camera names to images, got "
                               f"{type(images).__name__}")
    try:
        state = np.asarray(request["state"], dtype=float)
        stamp = float(request.get("stamp", now))
    except (TypeError, ValueError) as exc:
        raise ObservationError(f"'state' and 'stamp' must be numeric: {exc}") from None
    prompt = request.get("prompt") or request.get("instruction") or ""
    observation = PolicyObservation(stamp, state, {str(name): image_hwc(str(name), image)
                                                   for name, image in images.items()},
                                    str(prompt))
    return observation, request.get("conditioning")


def observation_to_request(obs: PolicyObservation, prompt: str, task: str,
                           conditioning: np.ndarray | None) -> dict[str, Any]:
    """The openpi observation dict (CHW images) with our extra keys."""
    message = {"state": np.asarray(obs.joint_positions, dtype=float),
               "images": {name: image.transpose(2, 0, 1) for name, image in obs.images.items()},
               "prompt": prompt, "task": task, "stamp": float(obs.stamp)}
    if conditioning is not None:
        message["conditioning"] = conditioning
    return message


# ----------------------------------------------------------------------------- server

class PolicyServer:
    """Serves one Policy to any number of clients, one request at a time (policies are not
    thread-safe); a request whose prompt differs from the running episode's starts a new one."""

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = DEFAULT_PORT):
        self.policy = policy
        emb = policy.embodiment
        self.metadata = {"protocol": PROTOCOL, "policy": policy.name, "embodiment": emb.name,
                         "action_dim": emb.action_dim, "horizon": policy.horizon,
                         "joint_names": emb.joint_names, "control_period": emb.control_period}
        self._lock = threading.Lock()       # one policy call at a time, and guards _prompt
        self._prompt: str | None = None     # the running episode's instruction
        self._server = serve(self._serve_connection, host, port, compression=None,
                             max_size=None)
        self._started = False
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the one the OS chose when constructed with port 0)."""
        return self._server.socket.getsockname()[1]

    def serve_forever(self) -> None:
        """Accept connections until stop() (from another thread) or KeyboardInterrupt."""
        self._started = True
        self._server.serve_forever()

    def start_in_thread(self) -> "PolicyServer":
        self._started = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name=f"policy-server-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close the connections, wait for their handlers to finish."""
        if self._started:
            self._server.shutdown()
        else:                              # shutdown() would wait for serve_forever forever
            self._server.socket.close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "PolicyServer":
        return self.start_in_thread()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ requests

    def handle(self, request: Any) -> dict[str, Any]:
        """One decoded request -> its reply; PolicyError (ObservationError) saying why not."""
        if not isinstance(request, dict):
            raise ObservationError(f"a request must be a dict, got {type(request).__name__}")
        with self._lock:
            if request.get("reset"):
                self._reset(str(request.get("prompt", "")), str(request.get("task", "")))
            elif request.get("stop"):
                self._prompt = None
                self.policy.stop()
            elif not request.get("get_status"):
                return self._infer(request)
            return {"status": asdict(self.policy.status())}

    def _reset(self, prompt: str, task: str) -> None:
        self._prompt = None
        self.policy.reset(prompt, task)
        self._prompt = prompt

    def _infer(self, request: dict) -> dict[str, Any]:
        obs, conditioning = observation_from_request(request, time.monotonic())
        obs = self.policy.check_observation(obs)
        conditioning = self.policy.check_conditioning(conditioning)
        if obs.instruction and obs.instruction != self._prompt:
            self._reset(obs.instruction, str(request.get("task", "")))
        start = time.perf_counter()
        actions = np.asarray(self.policy.infer(obs, conditioning), dtype=np.float32)
        infer_ms = (time.perf_counter() - start) * 1e3
        if (actions.ndim != 2 or actions.shape[1] != self.policy.embodiment.action_dim
                or not np.all(np.isfinite(actions))):
            raise PolicyError(f"policy {self.policy.name} returned an invalid chunk (shape "
                              f"{actions.shape}, finite: {bool(np.all(np.isfinite(actions)))})")
        return {"actions": actions, "server_timing": {"infer_ms": infer_ms},
                "status": asdict(self.policy.status())}

    def _serve_connection(self, ws: ServerConnection) -> None:
        try:
            ws.send(msgpack_numpy.packb(self.metadata))
            for message in ws:
                try:
                    if not isinstance(message, bytes):
                        raise ObservationError("requests must be binary msgpack-numpy frames, "
                                               "got a text frame")
                    try:
                        request = msgpack_numpy.unpackb(message)
                    except Exception as exc:   # msgpack raises several types for bad data
                        raise ObservationError(f"the request is not msgpack-numpy data: "
                                               f"{exc}") from None
                    reply = msgpack_numpy.packb(self.handle(request))
                except PolicyError as exc:     # the client's or the policy's refusal: go on
                    log.info("request refused: %s", exc)
                    ws.send(str(exc))
                    continue
                except Exception:              # a bug: tell the client, then hang up (openpi)
                    log.exception("policy server: request failed")
                    ws.send(traceback.format_exc())
                    ws.close(CloseCode.INTERNAL_ERROR, "internal server error")
                    return
                ws.send(reply)
        except ConnectionClosed:               # the client left (or timed out and reconnects)
            pass


# ----------------------------------------------------------------------------- client

@dataclass(frozen=True)
class Latency:
    """One query's latency, ms."""

    inference_ms: float   # the server's time in policy.infer (NaN when the server does not say)
    network_ms: float     # total - inference: transport, (de)serialisation, waiting on the server
    total_ms: float       # the whole query as this side sees it (a reconnect and retries included)


class RemotePolicy(Policy):
    """A policy served elsewhere: each call is a request to a PolicyServer or an openpi server.

    Every request gets `timeout_s` (connecting included); a failed or late attempt closes the
    connection (a late reply must not answer the next request) and is retried on a new one, at
    most `retries` times, before PolicyError. The connection is opened on first use, so a node
    can start before its server.
    """

    name = "remote"

    def __init__(self, embodiment: Embodiment, uri: str = "", timeout_s: float = 1.0,
                 retries: int = 2, horizon: int | None = None):
        super().__init__(embodiment, horizon)
        if not uri:
            raise ValueError("the remote policy needs the server's uri, e.g. ws://localhost:8000")
        try:
            parse_uri(uri)
        except InvalidURI as exc:
            raise ValueError(f"bad policy server uri {uri!r}: {exc}") from None
        timeout_s, retries = float(timeout_s), int(retries)
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"the remote policy's timeout_s must be > 0, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"the remote policy's retries must be >= 0, got {retries}")
        self.uri, self.timeout_s, self.retries = uri, timeout_s, retries
        self.server_metadata: dict[str, Any] = {}
        self.last_latency: Latency | None = None
        self.failures = 0                   # requests that failed after all their attempts
        self.last_error = ""                # why the last request failed ("" if it did not)
        self._latencies: deque[Latency] = deque(maxlen=LATENCY_WINDOW)
        self._ws: ClientConnection | None = None
        self._instruction = ""
        self._task = ""
        self._state = PolicyState()

    @property
    def native(self) -> bool:
        """The server is a PolicyServer (not an openpi server): it has episodes and a status."""
        return self.server_metadata.get("protocol") == PROTOCOL

    # ------------------------------------------------------------------ Policy API

    def reset(self, instruction: str, task: str = "") -> None:
        self._instruction, self._task = instruction, task
        self._attempt("a connection", lambda ws, deadline: None)   # learn what the server is
        if self.native:
            self._state = status_from_dict(self._call(
                {"reset": True, "prompt": instruction, "task": task}, "the reset").get("status"))
        else:
            self._state = PolicyState(
                phase="planning",
                description=f"{self.server_metadata.get('policy', 'remote policy')} at {self.uri}")

    def infer(self, observation: PolicyObservation,
              conditioning: np.ndarray | None = None) -> np.ndarray:
        obs, conditioning = self.check_inputs(observation, conditioning, bool(self._instruction))
        start = time.perf_counter()
        reply = self._call(observation_to_request(obs, self._instruction, self._task,
                                                  conditioning), "the inference request")
        total_ms = (time.perf_counter() - start) * 1e3
        try:
            actions = np.asarray(reply.get("actions"), dtype=float)
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"the policy server at {self.uri} sent no usable 'actions': "
                              f"{exc}") from None
        if (actions.ndim != 2 or actions.shape[1] != self.embodiment.action_dim
                or len(actions) == 0 or not np.all(np.isfinite(actions))):
            raise PolicyError(f"the policy server at {self.uri} sent an invalid chunk (shape "
                              f"{actions.shape}; expected (H, {self.embodiment.action_dim}), "
                              "finite)")
        timing = reply.get("server_timing")
        inference_ms = float(timing.get("infer_ms", math.nan)) if isinstance(timing, dict) \
            else math.nan
        self.last_latency = Latency(inference_ms, total_ms - inference_ms, total_ms)
        self._latencies.append(self.last_latency)
        if self.native:
            self._state = status_from_dict(reply.get("status"))
        else:
            self._state = PolicyState(phase="executing", description=self._state.description)
        return actions[:self.horizon]

    def stop(self) -> None:
        """End the episode here and on the server; an unreachable server is logged, not raised
        (stopping must always work on this side)."""
        self._instruction = self._task = ""
        self._state = PolicyState()
        if self.native:
            try:
                self._call({"stop": True}, "the stop")
            except PolicyError as exc:
                log.warning("%s", exc)

    def status(self) -> PolicyState:
        return self._state

    def close(self) -> None:
        self._disconnect()

    # ------------------------------------------------------------------ metrics

    def latency_stats(self) -> dict[str, float]:
        """p50 / p99 of the inference, network and total latency over the last queries (ms),
        with the number of queries they cover and of failed requests."""
        stats: dict[str, float] = {"count": len(self._latencies), "failures": self.failures}
        for kind in ("inference", "network", "total"):
            values = [getattr(lat, f"{kind}_ms") for lat in self._latencies]
            values = [v for v in values if math.isfinite(v)]
            p50, p99 = np.percentile(values, [50, 99]) if values else (math.nan, math.nan)
            stats[f"{kind}_p50_ms"], stats[f"{kind}_p99_ms"] = float(p50), float(p99)
        return stats

    # ------------------------------------------------------------------ transport

    def _call(self, message: dict[str, Any], what: str) -> dict[str, Any]:
        """Send one request, return the decoded reply; the server's error text -> PolicyError."""
        payload = msgpack_numpy.packb(message)

        def exchange(ws: ClientConnection, deadline: float):
            ws.send(payload)
            return ws.recv(timeout=max(0.0, deadline - time.monotonic()))

        reply = self._attempt(what, exchange)
        if isinstance(reply, str):
            if self.native and not message.get("get_status"):
                self._refresh_status()     # e.g. the plan failed: status says so
            raise PolicyError(f"remote policy: {reply.strip()}")
        try:
            data = msgpack_numpy.unpackb(reply)
        except Exception as exc:   # msgpack raises several types for bad data
            raise PolicyError(f"the policy server at {self.uri} sent undecodable data: "
                              f"{exc}") from None
        if not isinstance(data, dict):
            raise PolicyError(f"the policy server at {self.uri} sent a {type(data).__name__}, "
                              "not a dict")
        return data

    def _refresh_status(self) -> None:
        try:
            self._state = status_from_dict(self._call({"get_status": True},
                                                      "the status query").get("status"))
        except PolicyError as exc:
            log.warning("could not refresh the remote policy's status: %s", exc)

    def _attempt(self, what: str, exchange: Callable[[ClientConnection, float], T]) -> T:
        """Run `exchange(connection, deadline)`, reconnecting and retrying on transport errors."""
        attempts = 1 + self.retries
        for _ in range(attempts):
            deadline = time.monotonic() + self.timeout_s
            try:
                if self._ws is None:
                    self._ws = self._connect(deadline)
                result = exchange(self._ws, deadline)
                self.last_error = ""
                return result
            except (OSError, WebSocketException) as exc:   # TimeoutError is an OSError
                self._disconnect()
                error = exc
        self.failures += 1
        reason = "timed out" if isinstance(error, TimeoutError) else \
            f"{type(error).__name__}: {error}"
        self.last_error = (f"the policy server at {self.uri} is unreachable: {what} failed "
                           f"{attempts} times ({self.timeout_s:g} s each; last: {reason})")
        raise PolicyError(self.last_error)

    def _connect(self, deadline: float) -> ClientConnection:
        """Open a connection and read the server's metadata; PolicyError if it cannot serve us."""
        # legacy=True: a plain long-lived connection (websockets >= 17 would otherwise want a
        # `with` block or offer its own reconnecting iterator).
        ws = connect(self.uri, open_timeout=max(1e-3, deadline - time.monotonic()),
                     compression=None, max_size=None, proxy=None, legacy=True)
        try:
            raw = ws.recv(timeout=max(0.0, deadline - time.monotonic()))
            try:
                metadata = msgpack_numpy.unpackb(raw) if isinstance(raw, bytes) else raw
            except Exception:   # msgpack raises several types for bad data
                metadata = raw
            if not isinstance(metadata, dict):
                raise PolicyError(f"{self.uri} is not a policy server: its first message is "
                                  f"{str(metadata)[:200]!r}")
            for key, ours in (("embodiment", self.embodiment.name),
                              ("action_dim", self.embodiment.action_dim)):
                if key in metadata and metadata[key] != ours:
                    raise PolicyError(f"the policy server at {self.uri} serves {key} "
                                      f"{metadata[key]!r}, this robot needs {ours!r}")
        except BaseException:
            ws.close()
            raise
        self.server_metadata = metadata
        return ws

    def _disconnect(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
