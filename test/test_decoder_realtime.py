"""The decoder's control loop (realtime.PeriodicLoop): deadlines, drift, missed ticks and stop on a
fake clock, then once on the real clock."""
import threading
import time

import numpy as np
import pytest

from action_decoder_node.controller import LoopStats
from action_decoder_node.realtime import PeriodicLoop

MS = 1_000_000      # ns


class FakeClock:
    """Monotonic nanoseconds that advance only when read (by `step` ns, the cost of a spin-wait
    iteration) or slept on (by the time asked plus `oversleep`)."""

    def __init__(self, start=10**12, step=1_000, oversleep=0):
        self.t, self.step, self.oversleep = start, step, oversleep
        self.sleeps = []

    def __call__(self):
        self.t += self.step
        return self.t

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.t += round(seconds * 1e9) + self.oversleep


def run_loop(clock, n_ticks, period_s=0.02, spin_margin_s=0.0005, work=None):
    """Run the loop on `clock` until n_ticks; returns the clock's time at each tick and the loop.
    `work(i)` returns how many ns tick i takes."""
    times = []

    def tick():
        times.append(clock.t)
        clock.t += work(len(times) - 1) if work else 0
        if len(times) == n_ticks:
            loop.stop()
    loop = PeriodicLoop(tick, period_s, spin_margin_s, clock_ns=clock, sleep=clock.sleep)
    start = clock.t
    loop.run()
    return np.array(times) - start, loop


def test_ticks_fire_at_their_deadlines_without_drift():
    # Wake-ups 0.3 ms late (within the 0.5 ms spin margin) and ticks that take 7 ms: tick k
    # still starts just after start + (k + 1) * period, with no error accumulating over 10 000.
    clock = FakeClock(oversleep=3 * MS // 10)
    times, loop = run_loop(clock, 10_000, work=lambda i: 7 * MS)
    due = 20 * MS * np.arange(1, 10_001)
    assert np.all(times >= due) and np.all(times - due <= 5 * clock.step)
    assert loop.ticks == 10_000 and loop.missed == 0
    # It slept until the margin before each deadline and spun the rest.
    assert max(clock.sleeps) == pytest.approx(0.0195, abs=1e-5)


def test_oversleeping_past_the_margin_makes_ticks_late_but_not_drift():
    clock = FakeClock(oversleep=2 * MS)              # every sleep 1.5 ms past the deadline
    times, loop = run_loop(clock, 500)
    late = times - 20 * MS * np.arange(1, 501)
    assert np.all((late >= 1.5 * MS) & (late <= 1.5 * MS + 5 * clock.step))
    assert loop.missed == 0


def test_no_spin_margin_sleeps_up_to_the_deadline():
    clock = FakeClock()
    times, loop = run_loop(clock, 5, spin_margin_s=0.0)
    assert np.all(times - 20 * MS * np.arange(1, 6) <= 5 * clock.step)
    assert all(s > 0.0199 for s in clock.sleeps[1:])


def test_a_late_tick_counts_the_skipped_deadlines_as_loop_stats_does_and_re_anchors():
    # Tick 3 (index 2) overruns by 65 ms: deadlines at 80, 100 and 120 ms pass while it runs.
    clock = FakeClock()
    times, loop = run_loop(clock, 8, work=lambda i: 65 * MS if i == 2 else 0)
    ms = times / MS
    assert ms[:3] == pytest.approx([20, 40, 60], abs=0.01)
    # The next tick runs at once (125 ms, 65 ms after its 60 ms predecessor started: 3 deadlines
    # were due since, 2 of them skipped), then every 20 ms from there: no burst of catch-up ticks.
    assert ms[3] == pytest.approx(125, abs=0.01)
    assert np.diff(ms[3:]) == pytest.approx(20, abs=0.01)
    assert loop.missed == 2
    stats = LoopStats(0.02)
    assert sum(stats.tick(t * 1e-9) for t in times) == loop.missed


def test_a_tick_late_by_less_than_a_period_keeps_the_schedule():
    clock = FakeClock()
    times, loop = run_loop(clock, 5, work=lambda i: 30 * MS if i == 1 else 0)
    ms = times / MS
    # Tick 2 ends at 70 ms, 10 ms past the 60 ms deadline: tick 3 runs then, tick 4 on time.
    assert ms == pytest.approx([20, 40, 70, 80, 100], abs=0.01)
    assert loop.missed == 0


def test_stop_from_another_thread_ends_a_sleeping_loop_at_once():
    loop = PeriodicLoop(lambda: None, 10.0)          # the first tick is 10 s away
    thread = threading.Thread(target=loop.run)
    thread.start()
    time.sleep(0.05)
    stopped = time.monotonic()
    loop.stop()
    thread.join(timeout=2.0)
    assert not thread.is_alive() and time.monotonic() - stopped < 0.5
    assert loop.ticks == 0


def test_bad_periods_and_margins_are_refused():
    for period, margin in ((0.0, 0.0), (-0.02, 0.0), (0.02, -0.001), (0.02, 0.02)):
        with pytest.raises(ValueError):
            PeriodicLoop(lambda: None, period, margin)


def test_real_clock_50_hz_for_two_seconds():
    """On the real clock: periods are sane (no timing target here; the benchmark measures)."""
    stamps = []

    def tick():
        stamps.append(time.monotonic_ns())
        if len(stamps) == 101:
            loop.stop()
    loop = PeriodicLoop(tick, 0.02)
    started = time.monotonic_ns()
    thread = threading.Thread(target=loop.run)
    thread.start()
    thread.join(timeout=10.0)
    assert not thread.is_alive()
    periods = np.diff(stamps) / 1e6
    first = (stamps[0] - started) / 1e6
    print(f"\n50 Hz on the real clock: first tick after {first:.3f} ms; period mean "
          f"{periods.mean():.4f} ms, |period - 20 ms| p99 "
          f"{np.quantile(np.abs(periods - 20), 0.99):.3f} ms, max {periods.max():.3f} ms; "
          f"missed {loop.missed}")
    assert len(periods) == 100 and loop.ticks == 101
    # Absolute deadlines: last tick - first tick is 100 periods whatever the jitter in between,
    # unless a tick came more than a period late (the machine stalled) and the loop re-anchored.
    assert periods.mean() == pytest.approx(20.0, rel=0.01) or loop.missed > 0
    assert periods.min() > 0
