"""DecoderCore without ROS: states, watchdog, e-stop latch, chunk rejection, request timeouts."""
import numpy as np
import pytest

from action_decoder_node.controller import (JITTER_BIN_MS, Chunk, DecoderCore, DecoderState,
                                           LoopStats, histogram_quantile_ms)
from action_decoder_node.safety import SafetyLimiter
from action_decoder_node.scheduler import ChunkScheduler
from bimanual_core.config import load_embodiment

EMB = load_embodiment("aloha2")
DT = EMB.control_period


def make_core(output_period=DT, strategy="rtc", watchdog=0.5):
    return DecoderCore(SafetyLimiter.from_embodiment(EMB, output_period),
                       ChunkScheduler(EMB.action_dim, DT, strategy), EMB.joint_names,
                       output_period, watchdog_timeout_s=watchdog, request_timeout_s=1.0,
                       conditioning_steps=EMB.chunk_horizon if strategy == "rtc" else 0)


def trajectory(t):
    """Slow wave on the left shoulder around home."""
    q = np.tile(EMB.home, (np.size(t), 1))
    q[:, 1] += 0.1 * np.sin(2 * np.pi * 0.5 * np.atleast_1d(t))
    return q


def chunk_for(t_obs, request_id, changes=None):
    """The chunk a perfect backbone returns for an observation at t_obs; ``changes`` spoil it."""
    fields = dict(stamp=t_obs, joint_names=EMB.joint_names, control_period=DT, horizon=50,
                  actions=trajectory(t_obs + np.arange(50) * DT).ravel(), request_id=request_id)
    fields.update(changes or {})
    return Chunk(**fields)


def run(core, t0, seconds, backbone=True, latency=0.1):
    """Tick at the output rate; a backbone answers each request after ``latency``."""
    commands, pending = [], []
    for k in range(int(round(seconds / core.output_period))):
        t = t0 + k * core.output_period
        for item in [p for p in pending if p[0] <= t + 1e-9]:
            pending.remove(item)
            core.on_chunk(t, chunk_for(item[1], item[2]), item[2])
        out = core.tick(t)
        if out.request is not None and backbone:
            pending.append((t + latency, t, out.request.request_id))
        commands.append((t, out.command))
    return commands


def test_start_needs_a_joint_state_and_then_follows_chunks():
    core = make_core()
    assert core.start(0.0, None) == (False, "no joint state received yet")
    assert core.tick(0.0).command is None                     # idle: publish nothing
    assert core.start(0.0, EMB.home)[0] and core.state is DecoderState.EXECUTING
    first = core.tick(0.02)
    assert first.request is not None and first.request.conditioning.shape == (0, 14)
    assert first.request.execute_from > 0.02
    commands = run(core, 0.04, 3.0)
    t, last = commands[-1]
    assert last.position == pytest.approx(trajectory(t)[0], abs=1e-9)
    assert core.counters.stalls == 0 and core.counters.chunks_received >= 3
    assert core.counters.blends >= 2


def test_rtc_requests_carry_the_unexecuted_actions():
    core = make_core()
    core.start(0.0, EMB.home)
    run(core, 0.0, 1.0)
    request = None
    t = 1.0
    while request is None:
        request = core.tick(t).request
        t += DT
    assert request.conditioning.shape[1] == 14 and len(request.conditioning) > 10
    assert request.conditioning[0] == pytest.approx(core.scheduler.action_at(request.sent_at),
                                                    abs=0.01)


def test_watchdog_brakes_to_a_hold_and_resumes_when_chunks_return():
    core = make_core(watchdog=0.5)
    core.start(0.0, EMB.home)
    run(core, 0.0, 2.0)
    moving = core.command
    silent = run(core, 2.0, 2.0, backbone=False)
    assert core.state is DecoderState.HOLDING and core.counters.stalls > 0
    limiter = core.limiter
    previous = moving
    for _, command in silent:
        acc = ((command.position - previous.position) / DT - previous.velocity) / DT
        assert np.all(np.abs(acc) <= limiter.max_acceleration + 1e-6)
        previous = command
    assert silent[-1][1].at_rest
    # The last request sent into the silence times out first (request_timeout_s = 1 s).
    run(core, 4.0, 1.2)
    assert core.state is DecoderState.EXECUTING


def test_estop_latches_until_released():
    core = make_core()
    core.start(0.0, EMB.home)
    run(core, 0.0, 1.0)
    assert core.set_estop(True)[0] and core.state is DecoderState.ESTOPPED
    assert core.start(1.0, EMB.home) == (False, "e-stop engaged: release it before starting")
    commands = run(core, 1.0, 1.0)                            # chunks keep coming: ignored
    assert core.state is DecoderState.ESTOPPED and commands[-1][1].at_rest
    held = commands[-1][1].position
    assert core.set_estop(True)[0] and core.counters.estops == 1
    core.set_estop(False)
    assert core.state is DecoderState.HOLDING
    # Released at rest: one more hold command at the braked position, then idle (the driver
    # holds); nothing moves until the next start.
    published = [out for _, out in run(core, 2.0, 0.5) if out is not None]
    assert published and all(out.position == pytest.approx(held) for out in published)
    assert core.state is DecoderState.IDLE
    assert core.start(2.5, EMB.home)[0] and core.state is DecoderState.EXECUTING


def test_hold_brakes_and_ignores_chunks():
    core = make_core()
    core.start(0.0, EMB.home)
    run(core, 0.0, 1.0)
    assert core.hold() == (True, "holding")
    commands = [out for _, out in run(core, 1.0, 1.0) if out is not None]
    assert commands[-1].at_rest
    assert core.state is DecoderState.IDLE      # at rest: the driver holds the last command


@pytest.mark.parametrize("changes,reason", [
    ({"actions": np.full(50 * 14, np.nan)}, "non-finite"),
    ({"joint_names": list(reversed(EMB.joint_names))}, "joint_names"),
    ({"control_period": 0.01}, "control_period"),
    ({"horizon": 49}, "horizon"),
    ({"request_id": 99}, "request 99"),
    ({"stamp": -5.0}, "entirely in the past"),
])
def test_bad_chunks_are_rejected_with_a_reason(changes, reason):
    core = make_core()
    core.start(0.0, EMB.home)
    request = core.tick(0.0).request
    assert reason in core.on_chunk(0.1, chunk_for(0.0, request.request_id, changes),
                                   request.request_id)
    assert core.counters.chunks_rejected == 1 and reason in core.counters.last_rejection
    assert core.scheduler.empty and not core.scheduler.in_flight


def test_unanswered_requests_time_out_and_are_retried():
    core = make_core()
    core.start(0.0, EMB.home)
    first = core.tick(0.0).request
    outputs = [core.tick(k * DT) for k in range(1, 60)]
    expired_at = [o.expired_request for o in outputs].index(first.request_id)
    assert core.counters.request_failures == 1
    assert (expired_at + 1) * DT > 1.0                        # request_timeout_s
    assert any(o.request is not None for o in outputs[expired_at:])


def test_output_above_the_chunk_rate_interpolates():
    core = make_core(output_period=0.001)                     # 1 kHz, chunks at 50 Hz
    core.start(0.0, EMB.home)
    commands = run(core, 0.0, 1.5)
    times = np.array([t for t, _ in commands if t > 1.0])
    positions = np.array([c.position for t, c in commands if t > 1.0])
    assert positions == pytest.approx(trajectory(times), abs=1e-4)
    # Straight between actions; at each action the velocity changes, which the acceleration
    # limit spreads over a few 1 ms ticks.
    bends = np.abs(np.diff(positions[:, 1], 2)) > 1e-9
    assert len(positions) == 499 and bends.mean() < 0.25


def test_loop_stats_count_missed_ticks_and_jitter():
    stats = LoopStats(0.02)
    missed = [stats.tick(t) for t in (0.0, 0.02, 0.04, 0.10, 0.121)]
    assert missed == [0, 0, 0, 2, 0]
    assert stats.jitter_p99_ms == pytest.approx(40.0, rel=0.05)
    assert stats.mean_ms == pytest.approx(30.25)


def test_a_tick_late_by_less_than_a_period_is_late_not_missed():
    stats = LoopStats(0.02)
    # The third tick is 16 ms late (a 36 ms gap), the fourth on time: no period passed empty.
    missed = [stats.tick(t) for t in (0.0, 0.02, 0.056, 0.06, 0.08)]
    assert missed == [0, 0, 0, 0, 0]
    assert stats.tick(0.121) == 1          # 41 ms: the 100 ms period had no tick


def test_the_jitter_histogram_gives_the_whole_run_p99_whatever_the_window():
    stats = LoopStats(0.02, window=10)
    t = 0.0
    for i in range(1, 1001):
        t += 0.02 + (0.005 if i % 50 == 0 else 0.0001)     # 2 % of ticks 5 ms late
        stats.tick(t)
    assert stats.histogram.sum() == 999
    assert histogram_quantile_ms(stats.histogram, 0.97) == JITTER_BIN_MS      # 0.1 ms bin
    assert 4.9 <= histogram_quantile_ms(stats.histogram, 0.99) <= 5.0 + JITTER_BIN_MS
    assert histogram_quantile_ms([0, 0], 0.99) is None


def test_lost_backbone_brakes_at_once_and_resumes_with_chunks():
    core = make_core()
    core.start(0.0, EMB.home)
    moving = run(core, 0.0, 1.0)
    assert core.state is DecoderState.EXECUTING and not moving[-1][1].at_rest
    core.backbone_lost("liveliness lapsed")
    assert core.state is DecoderState.HOLDING and core.queue_depth(1.0) == 0
    braking = run(core, 1.0, 1.0, backbone=False)       # the dead backbone answers nothing
    speeds = [np.abs(out.velocity).max() for _, out in braking]
    assert all(b <= a + 1e-9 for a, b in zip(speeds, speeds[1:]))   # never speeds up again
    assert braking[-1][1].at_rest and core.state is DecoderState.HOLDING
    run(core, 2.0, 1.0)                                  # a backbone answers again
    assert core.state is DecoderState.EXECUTING


def test_lost_backbone_is_ignored_unless_executing():
    core = make_core()
    core.backbone_lost("liveliness lapsed")
    assert core.state is DecoderState.IDLE
