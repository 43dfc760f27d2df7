"""Joint-space safety limits for the commands the decoder sends: position, velocity, acceleration.

Every command the limiter returns satisfies, per joint and against the previous command,
``lower <= x <= upper``, ``|x - x_prev| / dt <= max_velocity`` and
``|v - v_prev| / dt <= max_acceleration``. Position limits are kept with a braking bound: a
command never moves so fast that braking at the acceleration limit could not stop it inside the
limits (x + v|v| / 2a stays within them), so the three limits can always be met together.

"Stop" (hold, watchdog, e-stop) means braking at the acceleration limit: the velocity falls by
``max_acceleration * dt`` per period until it is zero, so a joint moving at v stops after
v / max_acceleration seconds and v^2 / (2 max_acceleration) radians (ALOHA at full speed: 0.21 s,
0.33 rad); from below ``max_acceleration * dt`` (0.3 rad/s) it stops within one period. No
command ever moves further than this braking allows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLAMP_TOLERANCE = 1e-9        # a command further than this from its target counts as clamped


@dataclass(frozen=True)
class MotionState:
    """The last command: position, velocity, the target it tracked (None after braking)."""
    position: np.ndarray
    velocity: np.ndarray
    target: np.ndarray | None = None
    clamped: bool = False           # the limiter had to change the target to produce this

    @property
    def at_rest(self) -> bool:
        return not np.any(self.velocity)


class SafetyLimiter:
    """Position, velocity and acceleration limits for commands sent every ``dt`` seconds.

    ``position_margin`` (fraction of each joint's range) is how far outside the limits a chunk's
    target may lie before the chunk is rejected rather than clamped.
    """

    def __init__(self, lower, upper, max_velocity, max_acceleration, dt: float,
                 position_margin: float = 0.05, joint_names: list[str] | None = None):
        self.lower = np.asarray(lower, dtype=float)
        self.upper = np.asarray(upper, dtype=float)
        self.max_velocity = np.asarray(max_velocity, dtype=float)
        self.max_acceleration = np.asarray(max_acceleration, dtype=float)
        shapes = {a.shape for a in
                  (self.lower, self.upper, self.max_velocity, self.max_acceleration)}
        if len(shapes) != 1 or self.lower.ndim != 1:
            raise ValueError(f"limit vectors must be 1-D and of one length, got shapes {shapes}")
        if np.any(self.lower >= self.upper) or np.any(self.max_velocity <= 0) \
                or np.any(self.max_acceleration <= 0) or not dt > 0 or position_margin < 0:
            raise ValueError("limits need lower < upper, positive velocity, acceleration and dt, "
                             "and position_margin >= 0")
        self.dt = float(dt)
        self.dim = self.lower.size
        self.joint_names = list(joint_names) if joint_names else [f"joint {i}" for i in
                                                                  range(self.dim)]
        margin = position_margin * (self.upper - self.lower)
        self._reject_below, self._reject_above = self.lower - margin, self.upper + margin
        self._dv = self.max_acceleration * self.dt      # velocity change allowed per period

    @classmethod
    def from_embodiment(cls, embodiment, dt: float, position_margin: float = 0.05):
        return cls(embodiment.lower, embodiment.upper, embodiment.max_velocity,
                   embodiment.max_acceleration, dt, position_margin, embodiment.joint_names)

    def validate_chunk(self, actions) -> str | None:
        """Why a chunk of targets (H, D) must not be executed, or None when it may be."""
        try:
            actions = np.asarray(actions, dtype=float)
        except (TypeError, ValueError) as exc:
            return f"actions are not numeric: {exc}"
        if actions.ndim != 2 or actions.shape[1] != self.dim or actions.shape[0] == 0:
            return f"actions have shape {actions.shape}, expected (H >= 1, {self.dim})"
        bad = ~np.isfinite(actions)
        if np.any(bad):
            h, d = np.argwhere(bad)[0]
            return (f"{int(bad.sum())} non-finite targets (first: action {h}, "
                    f"{self.joint_names[d]} = {actions[h, d]})")
        out = (actions < self._reject_below) | (actions > self._reject_above)
        if np.any(out):
            h, d = np.argwhere(out)[0]
            return (f"{int(out.sum())} targets far outside the position limits (first: action {h}, "
                    f"{self.joint_names[d]} = {actions[h, d]:.3f} outside "
                    f"[{self.lower[d]:.3f}, {self.upper[d]:.3f}])")
        return None

    def initial_state(self, position) -> MotionState:
        """A command at rest at the measured position (clipped into the limits)."""
        position = np.asarray(position, dtype=float)
        if position.shape != (self.dim,) or not np.all(np.isfinite(position)):
            raise ValueError(f"initial position must be {self.dim} finite values")
        return MotionState(np.clip(position, self.lower, self.upper), np.zeros(self.dim))

    def _position_bounds(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Velocities from x after which braking still stops inside the limits.

        From x + v dt + v^2 / 2a <= upper (and the mirror for lower): the continuous braking
        distance v^2 / 2a bounds the discrete one, and braking keeps the bound true.
        """
        a, dv = self.max_acceleration, self._dv
        v_up = -dv + np.sqrt(np.maximum(dv * dv + 2.0 * a * (self.upper - x), 0.0))
        v_down = dv - np.sqrt(np.maximum(dv * dv + 2.0 * a * (x - self.lower), 0.0))
        return v_down, v_up

    def _step(self, desired_v: np.ndarray, state: MotionState) -> tuple[np.ndarray, np.ndarray]:
        """Position and velocity after applying the velocity, acceleration and braking bounds."""
        x, v = state.position, state.velocity
        v_down, v_up = self._position_bounds(x)
        low = np.maximum.reduce([v - self._dv, -self.max_velocity, v_down])
        high = np.minimum.reduce([v + self._dv, self.max_velocity, v_up])
        braking = np.sign(v) * np.maximum(np.abs(v) - self._dv, 0.0)   # always feasible
        v_new = np.where(low <= high, np.clip(desired_v, low, high), braking)
        x_new = np.clip(x + v_new * self.dt, self.lower, self.upper)
        return x_new, (x_new - x) / self.dt

    def limit(self, target, state: MotionState) -> MotionState:
        """The command closest to ``target`` that keeps every limit, from the last command.

        The target is clamped into the position limits, then the velocity is chosen so that a
        smooth target is tracked exactly while a gap to it (after a jump, or on resuming from a
        hold) closes at the acceleration limit without overshoot: relative to the target's own
        velocity w, the approach speed is at most the one that can still brake to the target.
        """
        target = np.asarray(target, dtype=float)
        if target.shape != (self.dim,) or not np.all(np.isfinite(target)):
            raise ValueError(f"target must be {self.dim} finite values, got {target!r}")
        raw = target
        target = np.clip(target, self.lower, self.upper)
        if state.target is None:
            w = np.zeros(self.dim)
        else:
            w = np.clip((target - state.target) / self.dt, -self.max_velocity, self.max_velocity)
        gap = target - state.position - w * self.dt
        dv, a = self._dv, self.max_acceleration
        closing = -dv + np.sqrt(dv * dv + 2.0 * a * np.abs(gap))      # <= |gap| / dt
        desired_v = w + np.sign(gap) * closing
        x, v = self._step(desired_v, state)
        return MotionState(x, v, target, bool(np.any(np.abs(x - raw) > CLAMP_TOLERANCE)))

    def brake(self, state: MotionState) -> MotionState:
        """Decelerate at the acceleration limit toward rest; at rest, hold the position."""
        v = state.velocity
        desired_v = np.sign(v) * np.maximum(np.abs(v) - self._dv, 0.0)
        x, v = self._step(desired_v, state)
        return MotionState(x, v)
