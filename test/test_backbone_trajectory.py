"""Minimum-jerk timing used by the zero-shot planner."""
import numpy as np
import pytest

from vla_backbone_node.trajectory import (limit_ratio, min_jerk, min_jerk_duration,
                                          sample_min_jerk, steps_for)


def test_min_jerk_profile():
    s = min_jerk(np.linspace(0.0, 1.0, 101))
    assert s[0] == 0.0 and s[-1] == 1.0 and np.isclose(s[50], 0.5)
    assert np.all(np.diff(s) >= 0)
    assert min_jerk(-1.0) == 0.0 and min_jerk(2.0) == 1.0


def test_duration_keeps_sampled_motion_inside_the_limits():
    dt = 0.02
    start, end = np.array([0.0, 1.0, -0.5]), np.array([1.5, 0.9, 0.5])
    vmax, amax = np.array([1.5, 1.5, 1.5]), np.array([7.5, 7.5, 7.5])
    duration = min_jerk_duration(end - start, vmax, amax)
    rows = sample_min_jerk(start, end, steps_for(duration, dt))
    np.testing.assert_allclose(rows[-1], end)
    assert limit_ratio(start, rows, dt, vmax, amax) <= 1.02     # finite differences, at the limit
    # Twice as fast breaks them, and the ratio says by how much to stretch.
    fast = sample_min_jerk(start, end, steps_for(duration / 2, dt))
    assert limit_ratio(start, fast, dt, vmax, amax) == pytest.approx(2.0, rel=0.1)


def test_duration_edge_cases():
    assert min_jerk_duration([0.0, 0.0], [1.0, 1.0], [1.0, 1.0], min_duration=0.3) == 0.3
    assert steps_for(0.0, 0.02) == 1 and steps_for(0.1, 0.02) == 5 and steps_for(0.101, 0.02) == 6
    with pytest.raises(ValueError):
        min_jerk_duration([1.0], [0.0], [1.0])
