"""Frames of a demonstration from the messages of a running stack (no ROS; `vla_data.recorder`
feeds it).

The robot moves by the action decoder's commands, one per control period, so each command is one
frame: the command (action), the latest measured joint positions (state) and every camera's
latest image (a camera slower than the control rate repeats its image, which is what the policy
saw). "Latest" is by the time each message was sent (its DDS source timestamp, one host clock),
not by the order a busy subscriber happens to process them in: frames are assembled when the
episode ends. Joint states and trajectory commands may name their joints in any order; frames
are in the embodiment's action order.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np

from camera_perception.preprocess import JointOrder
from vla_data.lerobot import Episode

JOINT_STATE = "joint state"


class FrameBuffer:
    """Timestamped joint states, images and commands; frames of the commands sent between
    `start` and `stop` (thread-safe: messages arrive on an executor thread)."""

    def __init__(self, joint_names: Sequence[str], cameras: Sequence[str],
                 image_size: tuple[int, int]):
        self._joints = JointOrder(joint_names)
        self.cameras = list(cameras)
        if JOINT_STATE in self.cameras:
            raise ValueError(f"a camera cannot be called {JOINT_STATE!r}")
        self.image_shape = (int(image_size[0]), int(image_size[1]), 3)
        self._lock = threading.Lock()
        # Per stream (joint state, each camera): stamps and values; only the latest when idle.
        self._stamps: dict[str, list[int]] = {k: [] for k in [JOINT_STATE, *self.cameras]}
        self._values: dict[str, list[Any]] = {k: [] for k in self._stamps}
        self._collecting = False
        self._window = (0, 0)            # commands sent in [start, stop] (ns) become frames
        self._source: str | None = None
        self._command_stamps: list[int] = []
        self._actions: list[np.ndarray] = []

    def _put(self, key: str, stamp_ns: int, value: Any) -> None:
        with self._lock:
            if self._collecting:
                self._stamps[key].append(stamp_ns)
                self._values[key].append(value)
            else:
                self._stamps[key], self._values[key] = [stamp_ns], [value]

    def set_joint_state(self, names: Sequence[str], positions: Sequence[float],
                        stamp_ns: int) -> None:
        """Measured positions sent at `stamp_ns`; ValueError when joints are missing or not
        finite."""
        self._put(JOINT_STATE, stamp_ns, self._joints.reorder(names, positions).position)

    def set_image(self, camera: str, rgb: np.ndarray, stamp_ns: int) -> None:
        """A camera's RGB image sent at `stamp_ns`; ValueError for an unknown camera or another
        size than the dataset's."""
        if camera not in self.cameras:
            raise ValueError(f"unknown camera {camera!r}; recording {self.cameras}")
        if rgb.shape != self.image_shape or rgb.dtype != np.uint8:
            raise ValueError(f"camera {camera} sent a {rgb.dtype} {rgb.shape} image; the dataset "
                             f"holds uint8 {self.image_shape}")
        self._put(camera, stamp_ns, rgb)

    def add_command(self, positions: Sequence[float], stamp_ns: int, names: Sequence[str] = (),
                    source: str = "") -> bool:
        """A command sent at `stamp_ns` (joints in `names` order, or in action order) from
        `source` (its topic); True when it is a frame of the episode. ValueError for a malformed
        command, which the driver refuses too, or for commands of a second source."""
        action = self._joints.reorder(list(names) or self._joints.names, positions).position
        with self._lock:
            start, stop = self._window
            if not (self._collecting and start <= stamp_ns <= stop):
                return False
            if self._source is None:
                self._source = source
            elif source != self._source:
                raise ValueError(f"commands arrive on both {self._source} and {source}; "
                                 "record a stack that uses one command interface")
            self._command_stamps.append(stamp_ns)
            self._actions.append(action)
        return True

    def missing(self) -> list[str]:
        """What a frame still needs: JOINT_STATE and/or camera names."""
        with self._lock:
            return [k for k, stamps in self._stamps.items() if not stamps]

    def start(self, now_ns: int) -> None:
        """Frames from commands sent from `now_ns` on; ValueError while a joint state or a
        camera's image is missing."""
        missing = self.missing()
        if missing:
            raise ValueError(f"cannot record a frame yet: nothing received from {missing}")
        with self._lock:
            for key in self._stamps:                     # what was latest before the start
                del self._stamps[key][:-1], self._values[key][:-1]
            self._command_stamps, self._actions, self._source = [], [], None
            self._window, self._collecting = (now_ns, 2 ** 63), True

    def stop(self, now_ns: int) -> None:
        """No frames from commands sent after `now_ns` (ones sent before may still arrive)."""
        with self._lock:
            self._window = (self._window[0], now_ns)

    def drained(self) -> bool:
        """A joint state sent after the stop has arrived, so the messages before it have too."""
        with self._lock:
            stamps = self._stamps[JOINT_STATE]
            return bool(stamps) and stamps[-1] > self._window[1]

    def __len__(self) -> int:
        with self._lock:
            return len(self._actions)

    def episode(self, task: str, success: bool) -> Episode:
        """The frames of the commands sent between start and stop, as an Episode (DatasetError
        when there are none); collecting ends."""
        with self._lock:
            self._collecting = False
            at = np.asarray(self._command_stamps, np.int64)

            def latest(key: str) -> list[Any]:
                """Per command, the value of `key` sent last before it (or the first one)."""
                index = np.searchsorted(np.asarray(self._stamps[key], np.int64), at, "right") - 1
                return [self._values[key][i] for i in np.maximum(index, 0)]

            return Episode(task=task, states=np.array(latest(JOINT_STATE)),
                           actions=np.array(self._actions),
                           images={c: latest(c) for c in self.cameras}, success=success)
