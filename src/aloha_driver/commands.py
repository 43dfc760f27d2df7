"""The position target the simulated ros2_control controllers hold, from either command interface.

No ROS here. `forward_position` sets a new held target at once (forward_command_controller);
`joint_trajectory` is followed point by point in (simulated) time with linear interpolation, from
the target held when it arrived (joint_trajectory_controller, without its spline modes). A bad
command is rejected as a whole with the reason, and the previous target stays.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class CommandError(ValueError):
    """A command the controllers refuse; the message says why."""


def _require_finite(values: np.ndarray, names: Sequence[str], what: str) -> np.ndarray:
    """`values` (columns in `names` order) unchanged, or a CommandError naming the bad joints."""
    bad = ~np.isfinite(values.reshape(-1, len(names)))
    if bad.any():
        joints = [names[c] for c in np.flatnonzero(bad.any(axis=0))]
        raise CommandError(f"{what} has non-finite values for {', '.join(joints)}")
    return values


class HeldCommand:
    """The latest valid target, or the active trajectory, in the embodiment's joint order."""

    def __init__(self, joint_names: Sequence[str], initial: np.ndarray):
        self.joint_names = list(joint_names)
        self._index = {name: i for i, name in enumerate(self.joint_names)}
        self._held = np.empty(len(self.joint_names))
        self._times: np.ndarray | None = None       # (K,) absolute sim times of the knots
        self._knots: np.ndarray | None = None       # (K, n) targets at those times
        self.reset(initial)

    @property
    def dim(self) -> int:
        return len(self.joint_names)

    @property
    def following(self) -> bool:
        """Whether a trajectory is still being followed (`target` ends it past its last point)."""
        return self._times is not None

    def reset(self, target: np.ndarray) -> None:
        """Hold `target`, dropping any trajectory."""
        target = np.asarray(target, dtype=float)
        if target.shape != (self.dim,):
            raise CommandError(f"target has {target.size} values, expected {self.dim}")
        self._held[:] = _require_finite(target, self.joint_names, "target")
        self._times = self._knots = None

    def set_position(self, values: Sequence[float]) -> None:
        """A forward-position command: all joints in order; replaces any trajectory."""
        values = np.asarray(values, dtype=float)
        if values.shape != (self.dim,):
            raise CommandError(f"position command has {values.size} values, expected {self.dim} "
                               f"({', '.join(self.joint_names)})")
        self.reset(_require_finite(values, self.joint_names, "position command"))

    def set_trajectory(self, joint_names: Sequence[str], times_from_start: Sequence[float],
                       positions: Sequence[Sequence[float]], now: float) -> None:
        """Follow `positions` (one row per point, columns in `joint_names` order) from `now`.

        Joints not named keep their held target. No points: stop and hold the current target.
        """
        start = self.target(now)
        if len(positions) == 0:
            self.reset(start)
            return
        unknown = [n for n in joint_names if n not in self._index]
        if unknown:
            raise CommandError(f"trajectory names unknown joints {unknown}; "
                               f"known: {self.joint_names}")
        if len(set(joint_names)) != len(joint_names):
            raise CommandError("trajectory names a joint twice")
        times = np.asarray(times_from_start, dtype=float)
        if times.shape != (len(positions),):
            raise CommandError(f"trajectory has {len(positions)} points but {times.size} times")
        if not np.all(np.isfinite(times)) or times[0] < 0 or np.any(np.diff(times) <= 0):
            raise CommandError("trajectory times_from_start must be finite, >= 0 and strictly "
                               "increasing")
        if any(len(p) != len(joint_names) for p in positions):
            raise CommandError(f"every trajectory point needs {len(joint_names)} positions")
        rows = _require_finite(np.asarray(positions, dtype=float), joint_names, "trajectory")
        cols = [self._index[n] for n in joint_names]
        knots = np.tile(start, (len(rows), 1))
        knots[:, cols] = rows
        if times[0] > 0:                    # start from the target held at receipt
            times = np.concatenate([[0.0], times])
            knots = np.vstack([start, knots])
        self._times, self._knots = now + times, knots
        self._held[:] = start

    def target(self, now: float) -> np.ndarray:
        """The target at sim time `now`; a finished trajectory leaves its last point held."""
        if self._times is None:
            return self._held.copy()
        times, knots = self._times, self._knots
        if now >= times[-1]:
            self.reset(knots[-1])
            return self._held.copy()
        if now <= times[0]:
            return knots[0].copy()
        k = int(np.searchsorted(times, now, side="right"))
        s = (now - times[k - 1]) / (times[k] - times[k - 1])
        return knots[k - 1] + s * (knots[k] - knots[k - 1])
