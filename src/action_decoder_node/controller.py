"""The decoder's state machine, without ROS: chunks in, one safe command per control tick out.

States:
- ``idle``: not started, or a requested hold is complete; no command is published and the
  driver holds the robot at the last command. ``start`` begins from the measured joints.
- ``executing``: each tick follows the chunk queue through the safety limiter and asks the
  backbone for the next chunk in time. With no action available it brakes (a stall); after
  ``watchdog_timeout_s`` without one it goes to ``holding`` and keeps asking for chunks.
- ``holding``: brakes to a stop at the acceleration limit. A hold the watchdog entered keeps
  commanding the stop position and resumes by itself as soon as a chunk covers the present; a
  requested hold (service, e-stop release) goes ``idle`` once at rest and waits for ``start``.
- ``estopped``: brakes and holds like ``holding``, ignores chunks and start requests, and stays
  so until the e-stop is released.

All times are seconds on the node's clock (simulated time under use_sim_time).
"""
from __future__ import annotations

import enum
import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .safety import MotionState, SafetyLimiter
from .scheduler import ChunkError, ChunkScheduler, LatencyEstimator

PERIOD_TOLERANCE_S = 1e-6


class DecoderState(str, enum.Enum):
    IDLE = "idle"
    EXECUTING = "executing"
    HOLDING = "holding"
    ESTOPPED = "estopped"


@dataclass(frozen=True)
class Chunk:
    """An action chunk as received: ``actions`` is H x D row-major (ActionChunk.actions)."""
    stamp: float
    joint_names: list[str]
    control_period: float
    horizon: int
    actions: np.ndarray
    request_id: int = 0


@dataclass(frozen=True)
class ChunkRequest:
    """A request to send: the new chunk should start at execute_from; conditioning is K x D."""
    request_id: int
    sent_at: float
    execute_from: float
    conditioning: np.ndarray


@dataclass(frozen=True)
class TickOutput:
    command: MotionState | None = None     # None: publish nothing
    request: ChunkRequest | None = None    # send this request now
    expired_request: int | None = None     # this request timed out; drop its pending call


@dataclass
class Counters:
    ticks: int = 0
    missed_ticks: int = 0
    stalls: int = 0
    chunks_received: int = 0
    chunks_rejected: int = 0
    request_failures: int = 0              # errors and timeouts
    blends: int = 0
    limit_clamps: int = 0
    estops: int = 0
    last_rejection: str = ""


JITTER_BIN_MS = 0.25       # width of the jitter histogram's bins
JITTER_BINS = 80           # 0 .. 20 ms; the last bin holds everything from 19.75 ms up


@dataclass
class LoopStats:
    """Tick periods on the node clock: mean and p99 of |period - nominal| over the last window,
    a cumulative histogram of |period - nominal| since start (so a long run's p99 is exact to a
    bin, whatever the window), and missed ticks."""
    nominal: float
    window: int = 500
    periods: deque = field(default_factory=deque)
    last_tick: float | None = None
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(JITTER_BINS, dtype=np.int64))

    def tick(self, now: float) -> int:
        """Record a tick; returns how many ticks were missed before it: the whole periods of
        the gap from the previous tick that passed without one. A tick late by less than a
        period misses nothing (the deadline loop keeps its schedule, the next tick is on time),
        as ``realtime.PeriodicLoop`` counts."""
        missed = 0
        if self.last_tick is not None:
            period = now - self.last_tick
            self.periods.append(period)
            while len(self.periods) > self.window:
                self.periods.popleft()
            missed = max(int(period / self.nominal + 1e-3) - 1, 0)
            deviation_ms = 1e3 * abs(period - self.nominal)
            self.histogram[min(int(deviation_ms / JITTER_BIN_MS), JITTER_BINS - 1)] += 1
        self.last_tick = now
        return missed

    @property
    def mean_ms(self) -> float:
        return 1e3 * float(np.mean(self.periods)) if self.periods else 0.0

    @property
    def jitter_p99_ms(self) -> float:
        if not self.periods:
            return 0.0
        deviation = np.abs(np.fromiter(self.periods, float) - self.nominal)
        return 1e3 * float(np.quantile(deviation, 0.99))


def histogram_quantile_ms(counts, quantile: float, bin_ms: float = JITTER_BIN_MS) -> float | None:
    """Upper edge of the bin that holds `quantile` of a jitter histogram (an upper bound of the
    quantile); None for an empty histogram."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() == 0:
        return None
    return bin_ms * float(np.searchsorted(np.cumsum(counts), quantile * counts.sum()) + 1)


class DecoderCore:
    """Owns the chunk queue, the limiter and the state; the ROS node only moves messages."""

    def __init__(self, limiter: SafetyLimiter, scheduler: ChunkScheduler, joint_names: list[str],
                 output_period: float, watchdog_timeout_s: float, request_timeout_s: float,
                 conditioning_steps: int = 0, latency: LatencyEstimator | None = None,
                 logger=None):
        if len(joint_names) != limiter.dim or scheduler.action_dim != limiter.dim:
            raise ValueError("joint names, limiter and scheduler disagree on the action dimension")
        if not (output_period > 0 and watchdog_timeout_s > 0 and request_timeout_s > 0):
            raise ValueError("output period, watchdog and request timeouts must be positive")
        self.limiter = limiter
        self.scheduler = scheduler
        self.joint_names = list(joint_names)
        self.output_period = output_period
        self.watchdog_timeout = watchdog_timeout_s
        self.request_timeout = request_timeout_s
        self.conditioning_steps = conditioning_steps
        self.latency = latency or LatencyEstimator()
        self.log = logger or logging.getLogger("action_decoder")
        self.counters = Counters()
        self.loop = LoopStats(output_period)
        self.state = DecoderState.IDLE
        self.command: MotionState | None = None
        self._hold_resumes = False         # a watchdog hold: resume when chunks come back
        self._last_valid = 0.0             # last time an action was available (or start)
        self._had_actions = False          # a chunk arrived since start (stalls count after it)
        self._next_id = 1
        self._pending: ChunkRequest | None = None
        self._last_failure = ""             # log a failure when its reason changes, not each time

    # ---- commands from outside ------------------------------------------------------------
    def start(self, now: float, joint_positions: np.ndarray | None) -> tuple[bool, str]:
        """Begin executing chunks from the measured position (or, if moving, the last command)."""
        if self.state is DecoderState.ESTOPPED:
            return False, "e-stop engaged: release it before starting"
        if self.command is None or self.state is DecoderState.IDLE:
            if joint_positions is None:
                return False, "no joint state received yet"
            self.command = self.limiter.initial_state(joint_positions)
        self.scheduler.clear()
        self._last_valid = now
        self._had_actions = False
        self._set_state(DecoderState.EXECUTING, "start")
        return True, "executing"

    def hold(self) -> tuple[bool, str]:
        """Brake to a stop, then go idle (the driver holds); chunks are ignored until the next
        start."""
        if self.state is DecoderState.ESTOPPED:
            return False, "e-stop engaged"
        if self.command is None:
            return True, "idle: the driver holds the last command"
        self.scheduler.clear()
        self._hold_resumes = False
        self._set_state(DecoderState.HOLDING, "hold requested")
        return True, "holding"

    def set_estop(self, engaged: bool) -> tuple[bool, str]:
        """Engage (latched) or release the e-stop. Release leaves the decoder holding."""
        if engaged:
            if self.state is not DecoderState.ESTOPPED:
                self.counters.estops += 1
                self.scheduler.clear()
                self._set_state(DecoderState.ESTOPPED, "e-stop engaged")
            return True, "e-stop engaged"
        if self.state is DecoderState.ESTOPPED:
            self._hold_resumes = False
            self._set_state(DecoderState.HOLDING if self.command is not None else DecoderState.IDLE,
                            "e-stop released")
            return True, "e-stop released; call start to execute again"
        return True, "e-stop was not engaged"

    # ---- the control tick -----------------------------------------------------------------
    def tick(self, now: float) -> TickOutput:
        c = self.counters
        c.ticks += 1
        c.missed_ticks += self.loop.tick(now)
        expired = self._check_timeout(now)
        if self.state is DecoderState.IDLE or self.command is None:
            return TickOutput(expired_request=expired)
        target = None
        if self._wants_chunks:
            target = self.scheduler.action_at(now)
            if target is not None:
                self._last_valid = now
                self._had_actions = True
                if self.state is DecoderState.HOLDING:
                    self._set_state(DecoderState.EXECUTING, "chunks are back")
            elif self.state is DecoderState.EXECUTING:
                c.stalls += self._had_actions
                if now - self._last_valid >= self.watchdog_timeout:
                    self._hold_resumes = True
                    self._set_state(DecoderState.HOLDING, f"watchdog: no action for "
                                    f"{now - self._last_valid:.2f} s")
        if target is not None:
            self.command = self.limiter.limit(target, self.command)
            c.limit_clamps += self.command.clamped
        else:
            self.command = self.limiter.brake(self.command)
        output = TickOutput(self.command, self._maybe_request(now), expired)
        if self.state is DecoderState.HOLDING and not self._hold_resumes and self.command.at_rest:
            # A requested hold is complete: the driver holds the last command (ros2_control and
            # xs_sdk both do), and the next start begins from the measured joints, so a robot
            # moved meanwhile (a simulator reset, a person) is never dragged back.
            self.command = None
            self._set_state(DecoderState.IDLE, "hold complete: at rest")
        return output

    @property
    def _wants_chunks(self) -> bool:
        return self.state is DecoderState.EXECUTING or (
            self.state is DecoderState.HOLDING and self._hold_resumes)

    def _maybe_request(self, now: float) -> ChunkRequest | None:
        if not self._wants_chunks or not self.scheduler.should_request(now, self.latency.estimate):
            return None
        request = ChunkRequest(self._next_id, now, now + self.latency.estimate,
                               self.scheduler.conditioning(now, self.conditioning_steps))
        self._next_id += 1
        self._pending = request
        self.scheduler.request_sent(now)
        return request

    def _check_timeout(self, now: float) -> int | None:
        p = self._pending
        if p is None or now - p.sent_at <= self.request_timeout:
            return None
        self.on_request_failed(now, p.request_id, f"no answer within {self.request_timeout:.2f} s")
        return p.request_id

    # ---- answers from the backbone --------------------------------------------------------
    def _finish(self, now: float, request_id: int) -> ChunkRequest | None:
        p = self._pending
        if p is None or p.request_id != request_id:
            return None
        self._pending = None
        self.scheduler.request_finished()
        self.latency.add(now - p.sent_at)
        return p

    def on_request_failed(self, now: float, request_id: int, reason: str) -> None:
        p = self._pending
        if p is None or p.request_id != request_id:
            return
        self._pending = None
        self.scheduler.request_finished()
        self.counters.request_failures += 1
        if reason != self._last_failure:
            self.log.warning(f"chunk request {request_id} failed: {reason}")
        self._last_failure = reason

    def backbone_lost(self, why: str) -> None:
        """The backbone process is gone (liveliness lost): brake now instead of running out the
        queue it planned, and resume by itself when chunks come back (as a watchdog hold)."""
        if self.state is DecoderState.EXECUTING:
            self.scheduler.clear()
            self._hold_resumes = True
            self._set_state(DecoderState.HOLDING, f"backbone lost: {why}")

    def on_chunk(self, now: float, chunk: Chunk, request_id: int) -> str | None:
        """Take the answer to ``request_id``; returns why the chunk was rejected, or None."""
        request = self._finish(now, request_id)
        if not self._wants_chunks:
            return None                    # holding or stopped: the answer is no longer wanted
        self.counters.chunks_received += 1
        reason = self._chunk_problem(chunk, request_id)
        if reason is None:
            actions = chunk.actions.reshape(chunk.horizon, -1)
            try:
                info = self.scheduler.add_chunk(chunk.stamp, actions, now,
                                                request.execute_from if request else None)
            except ChunkError as exc:
                reason = str(exc)
            else:
                self.counters.blends += info.overlap_s > 0
                self._last_failure = ""
                return None
        self.counters.chunks_rejected += 1
        if reason != self.counters.last_rejection:
            self.log.warning(f"rejected chunk (request {request_id}): {reason}")
        self.counters.last_rejection = reason
        return reason

    def _chunk_problem(self, chunk: Chunk, request_id: int) -> str | None:
        if chunk.request_id not in (0, request_id):
            return f"chunk answers request {chunk.request_id}, expected {request_id}"
        if list(chunk.joint_names) != self.joint_names:
            return f"joint_names {list(chunk.joint_names)} differ from {self.joint_names}"
        if abs(chunk.control_period - self.scheduler.dt) > PERIOD_TOLERANCE_S:
            return (f"control_period {chunk.control_period:.4f} s, expected "
                    f"{self.scheduler.dt:.4f} s")
        d = len(self.joint_names)
        if chunk.horizon < 1 or chunk.actions.size != chunk.horizon * d:
            return f"{chunk.actions.size} actions for horizon {chunk.horizon} x {d} joints"
        return self.limiter.validate_chunk(chunk.actions.reshape(chunk.horizon, d))

    # ---- reporting ------------------------------------------------------------------------
    def queue_depth(self, now: float) -> int:
        return self.scheduler.remaining_steps(now)

    def _set_state(self, state: DecoderState, why: str) -> None:
        if state is self.state:
            return
        message = f"{self.state.value} -> {state.value}: {why}"
        if why.startswith(("watchdog", "e-stop engaged")):
            self.log.warning(message)
        else:
            self.log.info(message)       # rclpy wants one severity per logging call site
        self.state = state
