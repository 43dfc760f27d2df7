"""Latest synchronised frame per camera from separately published streams (no ROS imports).

A camera's colour image, depth, segmentation and pose arrive as separate messages with the same
stamp. A query must look at parts that belong together: `FrameStore.latest(camera)` returns the
newest colour image for which every other stream this camera publishes has a message with the
same stamp (within `STAMP_TOLERANCE_NS`); camera info changes rarely and is taken as the latest.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

STREAMS = ("rgb", "depth", "segmentation", "pose")
STAMP_TOLERANCE_NS = 1_000_000


@dataclass
class MatchedParts:
    """The parts of one frame; `missing` names the streams this camera has but not at `stamp_ns`."""

    stamp_ns: int
    parts: dict[str, Any]
    info: Any
    missing: list[str] = field(default_factory=list)


class FrameStore:
    """Thread-safe: subscriptions add while a query thread reads."""

    def __init__(self, cameras: Sequence[str], depth: int = 5):
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._buffers = {c: {s: deque(maxlen=depth) for s in STREAMS} for c in cameras}
        self._info: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def cameras(self) -> list[str]:
        return list(self._buffers)

    def add(self, camera: str, stream: str, stamp_ns: int, payload: Any) -> None:
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}; known: {STREAMS}")
        with self._lock:
            self._buffers[camera][stream].append((stamp_ns, payload))

    def set_info(self, camera: str, payload: Any) -> None:
        with self._lock:
            self._info[camera] = payload

    def latest(self, camera: str) -> MatchedParts | None:
        """Newest complete frame; if none is complete, the newest colour image with the parts
        that match it (the caller decides whether what is missing matters). None until a colour
        image and camera info have arrived."""
        with self._lock:
            return self._latest(camera)

    def _latest(self, camera: str) -> MatchedParts | None:
        buffers = self._buffers[camera]
        if not buffers["rgb"] or camera not in self._info:
            return None
        present = [s for s in STREAMS if s != "rgb" and buffers[s]]
        fallback = None
        for stamp, rgb in reversed(buffers["rgb"]):
            parts = {"rgb": rgb}
            for stream in present:
                match = min(buffers[stream], key=lambda item: abs(item[0] - stamp))
                if abs(match[0] - stamp) <= STAMP_TOLERANCE_NS:
                    parts[stream] = match[1]
            missing = [s for s in present if s not in parts]
            result = MatchedParts(stamp, parts, self._info[camera], missing)
            if not missing:
                return result
            fallback = fallback or result
        return fallback
