"""Minimum-jerk timing of joint paths inside velocity and acceleration limits (no ROS imports).

A minimum-jerk segment s(tau) = 10 tau^3 - 15 tau^4 + 6 tau^5 starts and ends at rest with zero
acceleration, so segments chain without jerks at the joins; its peak speed is 1.875 and its peak
acceleration 10/sqrt(3) times the average ones, which gives the shortest duration that keeps every
joint inside its limits in closed form.
"""
from __future__ import annotations

import math

import numpy as np

PEAK_VELOCITY = 1.875                  # max ds/dtau of the minimum-jerk profile
PEAK_ACCELERATION = 10.0 / math.sqrt(3.0)   # max d2s/dtau2


def min_jerk(tau) -> np.ndarray:
    """The minimum-jerk profile s(tau), tau clipped to [0, 1]."""
    t = np.clip(np.asarray(tau, dtype=float), 0.0, 1.0)
    return t ** 3 * (10.0 + t * (-15.0 + 6.0 * t))


def min_jerk_duration(delta, max_velocity, max_acceleration, min_duration: float = 0.0) -> float:
    """Shortest duration of a minimum-jerk move by `delta` within the per-joint limits."""
    d = np.abs(np.asarray(delta, dtype=float))
    v = np.asarray(max_velocity, dtype=float)
    a = np.asarray(max_acceleration, dtype=float)
    if np.any(v <= 0) or np.any(a <= 0):
        raise ValueError("velocity and acceleration limits must be positive")
    if d.size == 0:
        return float(min_duration)
    return float(max(min_duration, np.max(PEAK_VELOCITY * d / v),
                     np.max(np.sqrt(PEAK_ACCELERATION * d / a))))


def steps_for(duration: float, dt: float) -> int:
    """Number of control periods covering `duration` (at least one)."""
    return max(1, int(math.ceil(duration / dt - 1e-9)))


def sample_min_jerk(start, end, steps: int) -> np.ndarray:
    """(steps, D) points of a minimum-jerk move, at tau = 1/steps .. 1 (the start excluded)."""
    start = np.asarray(start, dtype=float)
    end = np.asarray(end, dtype=float)
    s = min_jerk(np.arange(1, steps + 1) / steps)
    return start + s[:, None] * (end - start)


def limit_ratio(previous, rows, dt: float, max_velocity, max_acceleration) -> float:
    """How far `rows` (following `previous`, which was at rest) exceed the limits.

    Returns max over joints and samples of |v| / v_max and sqrt(|a| / a_max): above 1 the path is
    too fast, and stretching its duration by this factor brings it back inside.
    """
    path = np.vstack([previous, previous, rows, rows[-1:]])
    vel = np.diff(path, axis=0) / dt
    acc = np.diff(vel, axis=0) / dt
    return float(max(np.max(np.abs(vel) / max_velocity),
                     math.sqrt(np.max(np.abs(acc) / max_acceleration))))
