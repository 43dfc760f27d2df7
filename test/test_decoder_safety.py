"""SafetyLimiter: chunk validation, and property tests that no command ever breaks a limit."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from action_decoder_node.safety import SafetyLimiter
from bimanual_core.config import load_embodiment

EMB = load_embodiment("aloha2")
DT = EMB.control_period
LIMITER = SafetyLimiter.from_embodiment(EMB, DT)
TOL = 1e-9


def assert_within_limits(limiter, previous, command):
    """Position, velocity and acceleration of ``command`` against the previous command."""
    x = command.position
    v = (x - previous.position) / limiter.dt
    acc = (v - previous.velocity) / limiter.dt
    assert np.all(x >= limiter.lower - TOL) and np.all(x <= limiter.upper + TOL)
    assert np.all(np.abs(v) <= limiter.max_velocity * (1 + TOL) + TOL)
    assert np.all(np.abs(acc) <= limiter.max_acceleration * (1 + 1e-6) + 1e-6)
    assert np.allclose(command.velocity, v)


def test_validate_chunk_reasons():
    ok = np.tile(EMB.home, (50, 1))
    assert LIMITER.validate_chunk(ok) is None
    nan = ok.copy()
    nan[3, 2] = np.nan
    reason = LIMITER.validate_chunk(nan)
    assert "non-finite" in reason and "left_elbow" in reason
    assert "shape" in LIMITER.validate_chunk(ok[:, :13])
    assert "shape" in LIMITER.validate_chunk(np.zeros((0, 14)))
    far = ok.copy()
    far[0, 1] = EMB.upper[1] + 1.0
    assert "far outside" in LIMITER.validate_chunk(far)
    near = ok.copy()
    near[0, 1] = EMB.upper[1] + 0.01                  # slightly outside: clamped, not rejected
    assert LIMITER.validate_chunk(near) is None


def test_smooth_targets_pass_unchanged():
    t = np.arange(0.0, 4.0, DT)
    arm = np.array([j.kind == "arm" for j in EMB.joints])
    wave = 0.15 * (1 - np.cos(2 * np.pi * 0.5 * t))[:, None] * arm     # starts at rest
    state = LIMITER.initial_state(EMB.home)
    for target in EMB.home + wave:
        state = LIMITER.limit(target, state)
        assert not state.clamped
        assert state.position == pytest.approx(target, abs=1e-12)


def test_step_target_is_reached_without_overshoot():
    state = LIMITER.initial_state(EMB.home)
    target = EMB.home.copy()
    target[0] += 1.0
    positions = []
    for _ in range(60):
        previous, state = state, LIMITER.limit(target, state)
        assert_within_limits(LIMITER, previous, state)
        positions.append(state.position[0])
    assert max(positions) <= target[0] + TOL
    assert positions[-1] == pytest.approx(target[0]) and state.at_rest


def test_brake_stops_at_the_acceleration_limit():
    state = LIMITER.initial_state(EMB.home)
    target = EMB.home + np.where([j.kind == "arm" for j in EMB.joints], 1.0, -0.5)
    for _ in range(12):                                # get moving
        state = LIMITER.limit(target, state)
    speed = np.abs(state.velocity).max()
    assert speed > 2.0
    ticks = 0
    while not state.at_rest:
        previous, state = state, LIMITER.brake(state)
        assert_within_limits(LIMITER, previous, state)
        assert np.all(np.abs(state.velocity) <= np.abs(previous.velocity) + TOL)
        ticks += 1
    assert ticks == int(np.ceil(speed / (EMB.max_acceleration[0] * DT) - 1e-9))
    held = state.position
    assert LIMITER.brake(state).position == pytest.approx(held)


def test_initial_state_is_clipped_into_the_limits():
    outside = EMB.home.copy()
    outside[6] = -0.01                                 # a gripper reading just below closed
    assert LIMITER.initial_state(outside).position[6] == 0.0
    with pytest.raises(ValueError, match="finite"):
        LIMITER.initial_state(np.full(14, np.nan))


# ---- properties over random and adversarial target sequences -----------------------------
def _scale(u):
    """Map values in [-1, 2] onto each joint's range: far outside it at both ends."""
    return EMB.lower + (np.asarray(u) * 1.5 - 0.25) * (EMB.upper - EMB.lower)


targets = st.lists(st.floats(-1.0, 2.0), min_size=14, max_size=14).map(_scale)
adversarial = st.sampled_from(["random", "jump", "oscillate", "brake"])


@settings(max_examples=150, deadline=None)
@given(start=st.lists(st.floats(0.0, 1.0), min_size=14, max_size=14),
       sequence=st.lists(st.tuples(adversarial, targets), min_size=1, max_size=60),
       dt=st.sampled_from([0.02, 0.001, 0.05]))
def test_no_command_ever_breaks_a_limit(start, sequence, dt):
    limiter = SafetyLimiter.from_embodiment(EMB, dt)
    state = limiter.initial_state(EMB.lower + np.asarray(start) * (EMB.upper - EMB.lower))
    for i, (kind, target) in enumerate(sequence):
        if kind == "jump":                             # to the far end of the range and beyond
            target = np.where(state.position > (EMB.lower + EMB.upper) / 2, EMB.lower - 5.0,
                              EMB.upper + 5.0)
        elif kind == "oscillate":                      # bang-bang between the limits
            target = np.where(i % 2, EMB.upper + 1.0, EMB.lower - 1.0)
        for _ in range(5):
            previous = state
            state = limiter.brake(state) if kind == "brake" else limiter.limit(target, state)
            assert_within_limits(limiter, previous, state)


@settings(max_examples=100, deadline=None)
@given(start=st.lists(st.floats(0.0, 1.0), min_size=14, max_size=14),
       drive=st.lists(targets, min_size=1, max_size=20))
def test_braking_always_comes_to_rest_inside_the_limits(start, drive):
    state = LIMITER.initial_state(EMB.lower + np.asarray(start) * (EMB.upper - EMB.lower))
    for target in drive:
        state = LIMITER.limit(target, state)
    max_ticks = int(np.ceil(np.max(EMB.max_velocity / (EMB.max_acceleration * DT)))) + 1
    for _ in range(max_ticks):
        previous, state = state, LIMITER.brake(state)
        assert_within_limits(LIMITER, previous, state)
    assert state.at_rest
