"""HeldCommand: the target the simulated position controllers hold (no ROS)."""
import numpy as np
import pytest

from aloha_driver.commands import CommandError, HeldCommand

NAMES = ["a", "b", "c"]


@pytest.fixture
def held():
    return HeldCommand(NAMES, np.zeros(3))


def test_position_command_is_held_and_bad_ones_keep_the_last(held):
    held.set_position([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(held.target(5.0), [1, 2, 3])
    with pytest.raises(CommandError, match="expected 3"):
        held.set_position([1.0, 2.0])
    with pytest.raises(CommandError, match="non-finite values for b"):
        held.set_position([0.0, np.nan, 0.0])
    np.testing.assert_array_equal(held.target(6.0), [1, 2, 3])


def test_trajectory_is_reordered_and_interpolated_from_receipt(held):
    held.set_position([1.0, 1.0, 1.0])
    held.set_trajectory(["c", "a"], [1.0, 3.0], [[3.0, 0.0], [5.0, 2.0]], now=10.0)
    np.testing.assert_allclose(held.target(10.0), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(held.target(10.5), [0.5, 1.0, 2.0])   # b, not named, is held
    np.testing.assert_allclose(held.target(12.0), [1.0, 1.0, 4.0])
    np.testing.assert_allclose(held.target(20.0), [2.0, 1.0, 5.0])   # last point stays held
    np.testing.assert_allclose(held.target(30.0), [2.0, 1.0, 5.0])


def test_trajectory_starting_at_zero_jumps_and_new_command_replaces_it(held):
    held.set_trajectory(NAMES, [0.0, 1.0], [[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]], now=0.0)
    np.testing.assert_allclose(held.target(0.0), [1, 1, 1])
    np.testing.assert_allclose(held.target(0.5), [2, 2, 2])
    held.set_position([9.0, 9.0, 9.0])
    np.testing.assert_allclose(held.target(0.7), [9, 9, 9])


def test_empty_trajectory_stops_where_the_target_is(held):
    held.set_trajectory(NAMES, [2.0], [[2.0, 2.0, 2.0]], now=0.0)
    held.set_trajectory(NAMES, [], [], now=1.0)
    np.testing.assert_allclose(held.target(5.0), [1, 1, 1])


@pytest.mark.parametrize("names, times, points, reason", [
    (["a", "x"], [1.0], [[0.0, 0.0]], "unknown joints"),
    (["a", "a"], [1.0], [[0.0, 0.0]], "twice"),
    (["a"], [1.0, 1.0], [[0.0], [1.0]], "strictly increasing"),
    (["a"], [-1.0], [[0.0]], ">= 0"),
    (["a", "b"], [1.0], [[0.0]], "needs 2 positions"),
    (["a", "b"], [1.0], [[0.0, np.inf]], "non-finite values for b"),
])
def test_bad_trajectory_is_rejected_whole(held, names, times, points, reason):
    held.set_position([4.0, 4.0, 4.0])
    with pytest.raises(CommandError, match=reason):
        held.set_trajectory(names, times, points, now=0.0)
    np.testing.assert_array_equal(held.target(2.0), [4, 4, 4])
