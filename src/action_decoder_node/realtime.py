"""A periodic loop on absolute monotonic deadlines, for a control tick that must neither drift nor
jitter. No ROS: the decoder node runs it in a thread of its own on the wall clock, where an
rclpy timer's callback would wait for the executor (its wake-up latency, the other callbacks and
the GIL they hold).

Tick k is due at anchor + k * period, in integer nanoseconds, so no error accumulates. The loop
sleeps until ``spin_margin_s`` before a deadline (sleeps wake up late by tens of microseconds,
more under load) and spin-waits the rest. A tick later than one whole period has skipped
deadlines: they count as missed, as ``controller.LoopStats`` counts the gap they leave
(the whole periods of the gap, less one), and the schedule re-anchors at that tick instead of firing the
skipped ticks in a burst.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

DEFAULT_SPIN_MARGIN_S = 0.0005


class PeriodicLoop:
    """Calls ``tick()`` once per period, the first one period after ``run()`` starts, until
    ``stop()``. ``run()`` blocks: give it a thread.

    ``clock_ns`` and ``sleep`` are for tests (a fake clock); by default the monotonic clock and a
    wait that ``stop()`` cuts short.
    """

    def __init__(self, tick: Callable[[], None], period_s: float,
                 spin_margin_s: float = DEFAULT_SPIN_MARGIN_S,
                 clock_ns: Callable[[], int] = time.monotonic_ns,
                 sleep: Callable[[float], object] | None = None):
        if not period_s > 0:
            raise ValueError(f"period {period_s} s must be > 0")
        if not 0 <= spin_margin_s < period_s:
            raise ValueError(f"spin margin {spin_margin_s} s must be >= 0 and below the period")
        self._tick = tick
        self.period_ns = round(period_s * 1e9)
        self.spin_margin_ns = round(spin_margin_s * 1e9)
        self._clock = clock_ns
        self._stopped = threading.Event()
        self._sleep = sleep or self._stopped.wait
        self.ticks = 0
        self.missed = 0          # deadlines skipped by late ticks

    def stop(self) -> None:
        """End ``run()`` before its next tick; safe from any thread, ``tick()`` included."""
        self._stopped.set()

    def run(self) -> None:
        period = self.period_ns
        deadline = self._clock() + period
        while self._wait_until(deadline):
            now = self._clock()
            late = now - deadline
            if late > period:
                self.missed += round(late / period)
                deadline = now
            self.ticks += 1
            self._tick()
            deadline += period

    def _wait_until(self, deadline: int) -> bool:
        """Sleep, then spin, until ``deadline``; False as soon as the loop is stopped."""
        wake = deadline - self.spin_margin_ns
        while (remaining := wake - self._clock()) > 0:
            if self._stopped.is_set():
                return False
            self._sleep(remaining * 1e-9)
        while self._clock() < deadline:
            pass
        return not self._stopped.is_set()


def set_thread_fifo_priority(priority: int) -> None:
    """Schedule the calling thread SCHED_FIFO at ``priority`` (1..99), and the process's other
    Python threads and Fast DDS threads (named ``dds.*``) one level below it; threads started
    later inherit their creator's policy.

    The Python threads because of the GIL: the control thread must take it back after every
    sleep, and a thread holding it at normal scheduling can be preempted by any busy process on
    a loaded CPU, stalling the control thread for a scheduler time slice (priority inversion;
    measured on 2 loaded cores: 20 missed ticks in 90 s, 1 once the others were raised). The DDS
    threads because a publish shares their locks. One level below, none preempts the control
    thread. Native worker threads (BLAS pools) hold no GIL and keep normal scheduling: raised,
    their busy-waiting would starve the machine. On Linux pid 0 names the calling thread, not
    the process. Raises PermissionError without CAP_SYS_NICE or an RLIMIT_RTPRIO allowance."""
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    others = os.sched_param(max(priority - 1, os.sched_get_priority_min(os.SCHED_FIFO)))
    me = threading.get_native_id()
    for tid in _lock_sharing_threads() - {me}:
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, others)
        except ProcessLookupError:     # the thread ended meanwhile
            pass


def _lock_sharing_threads() -> set[int]:
    """Thread ids of this process's Python threads and Fast DDS threads."""
    tids = {t.native_id for t in threading.enumerate() if t.native_id is not None}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm:
                if comm.read().startswith("dds."):
                    tids.add(int(tid))
        except FileNotFoundError:      # the thread ended meanwhile
            pass
    return tids
