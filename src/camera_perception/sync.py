"""Approximate-time synchronisation of N camera streams and the joint state (no ROS imports).

Cameras on a robot are not triggered together: each stream has its own rate and latency, and one
may stop. At every publish tick `CameraSynchronizer.synchronise(now)` picks the newest reference
time for which every healthy camera has a frame within `sync_slop_s`, takes each camera's closest
frame and the joint state closest to that time, and reports per-camera health. A camera that has
delivered nothing usable for `stale_after_s` is reported stale (missing, if it never sent a
frame) and left out, so one dead camera never blocks the observation. All times are integer
nanoseconds on the node's clock (sim time under `use_sim_time`), so stamps round-trip exactly.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

NS_PER_S = 1_000_000_000


def _ns(seconds: float) -> int:
    return int(round(seconds * NS_PER_S))


@dataclass(frozen=True)
class Frame:
    """One received sample: its header stamp, when it arrived, and the payload (image, joints)."""

    stamp_ns: int
    received_ns: int
    data: Any


@dataclass(frozen=True)
class CameraStatus:
    """Health of one configured camera at one tick (maps onto bimanual_vla/CameraHealth)."""

    name: str
    ok: bool
    status: str          # "ok", "stale", "missing", "unsynchronised", "bad_encoding: ..."
    rate_hz: float       # frames received per second over the rate window
    latency_ms: float    # receive time - header stamp of the last frame; NaN before any frame
    age_ms: float        # reference time - stamp of the frame used; NaN when left out


@dataclass(frozen=True)
class SyncedSet:
    """The frames that form one observation, matched to `stamp_ns`."""

    stamp_ns: int
    frames: dict[str, Frame]        # included cameras, in configured order
    joint_state: Frame | None       # closest joint state within the staleness limit, if any
    health: list[CameraStatus]      # one per configured camera, left-out ones included


class RateMeter:
    """Receive rate over a sliding window: (n - 1) / span of the arrivals still in the window."""

    def __init__(self, window_s: float):
        if not window_s > 0:
            raise ValueError(f"rate window must be positive, got {window_s}")
        self._window_ns = _ns(window_s)
        self._arrivals: deque[int] = deque()

    def tick(self, received_ns: int) -> None:
        self._arrivals.append(received_ns)
        self._trim(received_ns)

    def rate_hz(self, now_ns: int) -> float:
        self._trim(now_ns)
        if len(self._arrivals) < 2:
            return 0.0
        span = self._arrivals[-1] - self._arrivals[0]
        return (len(self._arrivals) - 1) * NS_PER_S / span if span > 0 else 0.0

    def _trim(self, now_ns: int) -> None:
        while self._arrivals and self._arrivals[0] < now_ns - self._window_ns:
            self._arrivals.popleft()


class _Stream:
    """Per-camera buffer of good frames plus what the health report needs."""

    def __init__(self, buffer_size: int, rate_window_s: float):
        self.frames: deque[Frame] = deque(maxlen=buffer_size)
        self.meter = RateMeter(rate_window_s)
        self.last_latency_ns: int | None = None
        self.last_received_ns: int | None = None       # any frame, usable or not
        self.last_good_received_ns: int | None = None
        self.bad_reason: str | None = None     # set by a rejected frame, cleared by a good one

    def received(self, stamp_ns: int, received_ns: int) -> None:
        self.meter.tick(received_ns)
        self.last_latency_ns = received_ns - stamp_ns
        self.last_received_ns = received_ns


class CameraSynchronizer:
    """Buffers frames per camera and joint states; forms synchronised sets on demand."""

    def __init__(self, cameras: Sequence[str], sync_slop_s: float, stale_after_s: float,
                 buffer_size: int = 16, rate_window_s: float = 2.0, joint_buffer_size: int = 200):
        if not cameras:
            raise ValueError("at least one camera is needed")
        if len(set(cameras)) != len(cameras):
            raise ValueError(f"duplicate camera names in {list(cameras)}")
        if not (sync_slop_s > 0 and math.isfinite(sync_slop_s)):
            raise ValueError(f"sync_slop_s must be a positive number, got {sync_slop_s}")
        if not (stale_after_s > 0 and math.isfinite(stale_after_s)):
            raise ValueError(f"stale_after_s must be a positive number, got {stale_after_s}")
        if buffer_size < 1 or joint_buffer_size < 1:
            raise ValueError("buffer sizes must be at least 1")
        self.cameras = list(cameras)
        self._slop_ns = _ns(sync_slop_s)
        self._stale_ns = _ns(stale_after_s)
        self._buffer_size, self._rate_window_s = buffer_size, rate_window_s
        self._joints: deque[Frame] = deque(maxlen=joint_buffer_size)
        self.reset()

    def reset(self) -> None:
        """Forget every buffered frame, measurement and the last reference time."""
        self._streams = {c: _Stream(self._buffer_size, self._rate_window_s) for c in self.cameras}
        self._joints.clear()
        self._last_stamp_ns = None

    def _stream(self, camera: str) -> _Stream:
        try:
            return self._streams[camera]
        except KeyError:
            raise ValueError(f"unknown camera {camera!r}; configured: {self.cameras}") from None

    def add_frame(self, camera: str, stamp_ns: int, received_ns: int, data: Any) -> None:
        stream = self._stream(camera)
        stream.received(stamp_ns, received_ns)
        stream.frames.append(Frame(stamp_ns, received_ns, data))
        stream.last_good_received_ns = received_ns
        stream.bad_reason = None

    def add_bad_frame(self, camera: str, stamp_ns: int, received_ns: int, reason: str) -> None:
        """Count a frame that could not be used (e.g. unsupported encoding) and remember why."""
        stream = self._stream(camera)
        stream.received(stamp_ns, received_ns)
        stream.bad_reason = reason

    def add_joint_state(self, stamp_ns: int, received_ns: int, data: Any) -> None:
        self._joints.append(Frame(stamp_ns, received_ns, data))

    def _healthy(self, now_ns: int) -> list[str]:
        return [c for c, s in self._streams.items()
                if s.frames and s.bad_reason is None
                and now_ns - s.last_good_received_ns <= self._stale_ns]

    def synchronise(self, now_ns: int) -> SyncedSet | None:
        """The newest set of frames not yet returned, or None when there is nothing new.

        Prefers the newest reference time at which every healthy camera matches within the slop.
        Only when no buffered time at all matches every healthy camera (a camera whose stamps are
        persistently off) does it fall back to the time matching the most cameras, leaving the
        others out as "unsynchronised".
        """
        if self._last_stamp_ns is not None and now_ns < self._last_stamp_ns - self._stale_ns:
            self.reset()    # the clock went back (simulation reset): drop the old timeline
        healthy = self._healthy(now_ns)
        if not healthy:
            return None
        candidates = sorted({f.stamp_ns for c in healthy for f in self._streams[c].frames},
                            reverse=True)
        best: tuple[int, dict[str, Frame]] | None = None
        full_match_exists = False
        for t in candidates:
            matched = self._match(healthy, t)
            if len(matched) == len(healthy):
                full_match_exists = True
                if self._is_new(t):
                    best = (t, matched)
                break
            if self._is_new(t) and (best is None or len(matched) > len(best[1])):
                best = (t, matched)
        if best is None or (full_match_exists and len(best[1]) < len(healthy)):
            return None
        stamp_ns, matched = best
        self._last_stamp_ns = stamp_ns
        frames = {c: matched[c] for c in self.cameras if c in matched}
        unsynced = set(healthy) - set(frames)
        return SyncedSet(stamp_ns=stamp_ns, frames=frames,
                         joint_state=self._closest_joint_state(stamp_ns),
                         health=self.health(now_ns, stamp_ns, frames, unsynced))

    def _is_new(self, stamp_ns: int) -> bool:
        return self._last_stamp_ns is None or stamp_ns > self._last_stamp_ns

    def _match(self, cameras: Iterable[str], t_ns: int) -> dict[str, Frame]:
        matched = {}
        for c in cameras:
            frame = min(self._streams[c].frames, key=lambda f: abs(f.stamp_ns - t_ns))
            if abs(frame.stamp_ns - t_ns) <= self._slop_ns:
                matched[c] = frame
        return matched

    def _closest_joint_state(self, t_ns: int) -> Frame | None:
        if not self._joints:
            return None
        frame = min(self._joints, key=lambda f: abs(f.stamp_ns - t_ns))
        return frame if abs(frame.stamp_ns - t_ns) <= self._stale_ns else None

    def health(self, now_ns: int, reference_ns: int | None = None,
               frames: dict[str, Frame] | None = None,
               unsynchronised: Iterable[str] = ()) -> list[CameraStatus]:
        """Per-camera status; `frames` are the ones used for the observation at `reference_ns`."""
        frames = frames or {}
        unsynchronised = set(unsynchronised)
        healthy = set(self._healthy(now_ns))
        report = []
        for name, s in self._streams.items():
            latency = s.last_latency_ns / 1e6 if s.last_latency_ns is not None else math.nan
            age = ((reference_ns - frames[name].stamp_ns) / 1e6
                   if name in frames and reference_ns is not None else math.nan)
            if s.last_received_ns is None:
                status = "missing"
            elif s.bad_reason is not None and now_ns - s.last_received_ns <= self._stale_ns:
                status = f"bad_encoding: {s.bad_reason}"
            elif name not in healthy:
                status = "stale"
            elif name in unsynchronised:
                status = "unsynchronised"
            else:
                status = "ok"
            report.append(CameraStatus(name=name, ok=status == "ok", status=status,
                                       rate_hz=s.meter.rate_hz(now_ns), latency_ms=latency,
                                       age_ms=age))
        return report
