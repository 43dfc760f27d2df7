"""Demonstrations recorded from the running ROS 2 stack: the engine of `bimanual-vla record`.

The stack runs episodes exactly as `bimanual-vla evaluate` does (scene seed through the
simulator's `seed` parameter and /sim/reset, the task's instruction over /execute_instruction,
the instruction server's verdict as success), while `StackRecorder` listens to what the robot
got: from the goal being sent to its result, one frame per command of the action decoder (50 Hz
in sim time) with the latest /joint_states and camera images (`vla_data.frames`). Finished
episodes go to a LeRobotDataset v3 (`vla_data.lerobot`). The decoder commands the driver through
`driver.command_interface` of the embodiment (or its own override); the recorder listens on both
driver topics, taking a joint trajectory's first point as the command.

Recorded scenes start at seed `DEMO_SEED_BASE`, apart from the evaluation's seeds.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from rcl_interfaces.srv import GetParameters
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from bimanual_core.bringup import with_backbone_policy
from bimanual_core.client import StackClient
from bimanual_core.config import Embodiment, load_embodiment, load_stack, repo_root
from bimanual_core.eval_runner import (SERVICE_TIMEOUT_S, SIM_NODE, EpisodeRunner, StackFailure,
                                       echo_to, ros_domain, simulated_stack, task_instruction)
from bimanual_core.ros_conversions import SENSOR_QOS, ImageEncodingError, image_to_numpy
from vla_data.collection import DEMO_SEED_BASE, SeedLog, embodiment_writer, image_size
from vla_data.frames import FrameBuffer

CAMERA_TIMEOUT_S = 10.0        # every camera must have sent an image this soon (wall clock)
CLOCK_STALL_S = 10.0           # an attached stack without /clock this long is gone
DRAIN_TIMEOUT_S = 1.0          # after the result, for messages sent before it to arrive
SEEDS_FILE = "meta/recorded_seeds.txt"
WARN_THROTTLE_S = 5.0
# Commands and joint states: reliable, with room for a burst while the client is busy.
STREAM_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                        history=HistoryPolicy.KEEP_LAST)


class StackRecorder(AbstractContextManager):
    """Frames from a running stack, through the subscriptions of a StackClient's node.

    As a context manager it records one episode: entering waits (up to `camera_timeout_s`) until
    a joint state and every camera's image have arrived, then starts; leaving stops, and waits
    briefly for the messages sent before. Message times are DDS source timestamps, so the stack
    must run on this host (as the simulated one does).
    """

    def __init__(self, client: StackClient, embodiment: Embodiment,
                 camera_timeout_s: float = CAMERA_TIMEOUT_S):
        self.frames = FrameBuffer(embodiment.joint_names, list(embodiment.cameras),
                                  image_size(embodiment))
        self.camera_timeout_s = camera_timeout_s
        self._topics = {c.name: c.image_topic for c in embodiment.cameras.values()}
        self._logger = client.node.get_logger()
        driver, node = embodiment.driver, client.node
        node.create_subscription(JointState, driver["joint_states_topic"],
                                 self._on_joint_state, STREAM_QOS)
        node.create_subscription(Float64MultiArray, driver["forward_position_topic"],
                                 partial(self._on_position, driver["forward_position_topic"]),
                                 STREAM_QOS)
        node.create_subscription(JointTrajectory, driver["joint_trajectory_topic"],
                                 partial(self._on_trajectory, driver["joint_trajectory_topic"]),
                                 STREAM_QOS)
        for name, topic in self._topics.items():
            node.create_subscription(Image, topic, partial(self._on_image, name), SENSOR_QOS)

    def _ignore(self, what: str, exc: Exception) -> None:
        self._logger.warning(f"recorder: ignoring {what}: {exc}",
                             throttle_duration_sec=WARN_THROTTLE_S)

    def _on_joint_state(self, msg: JointState, info: MessageInfo) -> None:
        try:
            self.frames.set_joint_state(msg.name, msg.position, info["source_timestamp"])
        except ValueError as exc:
            self._ignore("a joint state", exc)

    def _on_image(self, camera: str, msg: Image, info: MessageInfo) -> None:
        try:
            self.frames.set_image(camera, image_to_numpy(msg, want_rgb=True),
                                  info["source_timestamp"])
        except (ValueError, ImageEncodingError) as exc:
            self._ignore(f"an image of {camera}", exc)

    def _on_position(self, topic: str, msg: Float64MultiArray, info: MessageInfo) -> None:
        try:
            self.frames.add_command(msg.data, info["source_timestamp"], source=topic)
        except ValueError as exc:
            self._ignore("a position command", exc)

    def _on_trajectory(self, topic: str, msg: JointTrajectory, info: MessageInfo) -> None:
        try:
            if not msg.points:
                raise ValueError("a trajectory without points holds, it commands no position")
            self.frames.add_command(msg.points[0].positions, info["source_timestamp"],
                                    msg.joint_names, source=topic)
        except ValueError as exc:
            self._ignore("a joint trajectory", exc)

    def __enter__(self) -> "StackRecorder":
        deadline = time.monotonic() + self.camera_timeout_s
        while self.frames.missing():
            if time.monotonic() > deadline:
                topics = [self._topics.get(m, m) for m in self.frames.missing()]
                raise StackFailure(f"recorder: nothing received on {', '.join(topics)} within "
                                   f"{self.camera_timeout_s:.0f} s; a frame needs all of them")
            time.sleep(0.02)
        self.frames.start(time.time_ns())       # the clock of DDS source timestamps
        return self

    def __exit__(self, *exc) -> None:
        self.frames.stop(time.time_ns())
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while not self.frames.drained() and time.monotonic() < deadline:
            time.sleep(0.01)


def _check_attached_task(client: StackClient, task: str) -> None:
    """An attached simulator must show `task`'s scene, or its instruction would not fit."""
    params = client.node.create_client(GetParameters, f"/{SIM_NODE}/get_parameters")
    if not params.wait_for_service(timeout_sec=SERVICE_TIMEOUT_S):
        raise StackFailure(f"no simulator ({SIM_NODE}) in the attached stack: recording needs the "
                           "simulated stack (`bimanual-vla up`) to reset scenes")
    answer = client.call(params, GetParameters.Request(names=["task"]), SERVICE_TIMEOUT_S)
    scene = answer.values[0].string_value if answer is not None and answer.values else None
    if scene != task:
        raise StackFailure(f"the attached simulator shows the {scene!r} scene, not {task!r}: "
                           f"start it with `bimanual-vla up --task {task}`")


def _clock_stall(client: StackClient) -> Callable[[], str | None]:
    """For an attached stack (whose processes are not ours to watch): why it seems gone, if so."""
    last = {"time": client.sim_time, "at": time.monotonic()}

    def stalled() -> str | None:
        if client.sim_time != last["time"]:
            last.update(time=client.sim_time, at=time.monotonic())
        elif time.monotonic() - last["at"] > CLOCK_STALL_S:
            return f"no /clock from the attached stack for {CLOCK_STALL_S:.0f} s"
        return None
    return stalled


@contextmanager
def _stack(attach: bool, embodiment: str, task: str, seed: int,
           overrides: dict[str, dict[str, Any]] | None, log_dir: Path, ready_timeout_s: float,
           ) -> Iterator[tuple[StackClient, Callable[[], str | None]]]:
    """(client, why the stack is dead or None): our own simulated stack, or the running one
    (whose nodes run as they were started: `overrides` are not applied)."""
    if not attach:
        with simulated_stack(embodiment, task, seed, overrides, log_dir, ros_domain(),
                             ready_timeout_s) as (client, procs):
            yield client, procs.failure
        return
    with StackClient(embodiment) as client:
        if not client.wait_ready(ready_timeout_s):
            raise StackFailure(f"no stack reachable within {ready_timeout_s:.0f} s on ROS domain "
                               f"{os.environ.get('ROS_DOMAIN_ID', '0')}; start one with "
                               f"`bimanual-vla up --task {task}`")
        _check_attached_task(client, task)
        yield client, _clock_stall(client)


def record(out: str | os.PathLike, task: str = "pick", episodes: int = 1,
           seed: int = DEMO_SEED_BASE, policy: str = "zero_shot", embodiment: str | None = None,
           overrides: dict[str, dict[str, Any]] | None = None, *, resume: bool = False,
           keep_failures: bool = False, attach: bool = False, time_limit_s: float = 0.0,
           log_dir: str | os.PathLike | None = None, ready_timeout_s: float = 120.0,
           echo: TextIO | None = sys.stdout) -> dict[str, Any]:
    """Record `episodes` episodes of `task` (scene seeds `seed`, `seed + 1`, ...) with `policy`
    into the LeRobotDataset at `out`, from a simulated stack brought up here or (`attach`) the
    one already running on this ROS domain.

    Failed episodes are dropped unless `keep_failures`. With `resume`, episodes are appended to
    `out` and seeds already tried there are skipped. Returns a summary: `status` ("complete",
    "interrupted", "stack_failed"), `failure`, `dataset`, `episodes_kept`, `episodes_total`,
    `frames_total`, `failures` [(seed, reason)], `seconds`. DatasetError before anything starts
    when `out` already holds a dataset and not `resume`, or one of another embodiment.
    """
    say = echo_to(echo)
    instruction = task_instruction(task, episodes, seed)
    if attach and overrides:
        raise ValueError("node overrides apply to a stack this command starts, not to an "
                         "attached one")
    embodiment = embodiment or load_stack().embodiment
    emb = load_embodiment(embodiment)
    registered, stack_overrides = with_backbone_policy(overrides, policy)   # ConfigError if unknown
    writer = embodiment_writer(out, emb, resume)
    seeds = SeedLog(out, SEEDS_FILE, resume)
    todo = seeds.todo(seed, episodes)
    log_dir = Path(log_dir or repo_root() / "runs" / f"record-{datetime.now():%Y%m%d-%H%M%S}")
    summary: dict[str, Any] = {"status": "complete", "failure": None, "dataset": str(out),
                               "episodes_kept": 0, "failures": []}
    t_start = time.monotonic()
    say(f"[record] {policy} on {task} ({instruction!r}): {len(todo)} episodes "
        f"of seeds {seed}-{seed + episodes - 1} into {out}"
        + (f" ({episodes - len(todo)} already tried there)" if len(todo) < episodes else "")
        + (", attached to the running stack" if attach else f", logs in {log_dir}"))
    try:
        if todo:
            with _stack(attach, embodiment, task, seed, stack_overrides, log_dir,
                        ready_timeout_s) as (client, dead_node):
                runner = EpisodeRunner(client, embodiment, task, registered, time_limit_s,
                                       dead_node, say)
                recorder = StackRecorder(client, emb)
                if attach:                  # it shows the scene it was left in
                    runner.reset_scene(todo[0])
                if not runner.wait_perception():
                    say(f"[record] warning: perception does not find the {runner.spec.object} yet")
                say(f"[record] stack ready after {time.monotonic() - t_start:.1f} s")
                t_episodes = time.monotonic()
                for n, s in enumerate(todo, 1):
                    result = runner.run(n - 1, s, during=recorder)
                    frames = len(recorder.frames)
                    keep = frames > 0 and (result.success or keep_failures)
                    if keep:
                        writer.add_episode(recorder.frames.episode(runner.instruction,
                                                                   result.success))
                        summary["episodes_kept"] += 1
                    if not result.success:
                        summary["failures"].append((s, result.reason))
                    seeds.add(s)
                    per_episode = (time.monotonic() - t_episodes) / n
                    sim_s = f"{result.sim_duration_s:.1f}" if result.sim_duration_s else "?"
                    say(f"[record] {n}/{len(todo)} seed {s}: "
                        f"{'SUCCESS' if result.success else 'FAILURE'}, {frames} frames "
                        f"({sim_s} s sim) {'kept' if keep else 'dropped'}: {result.reason} | "
                        f"kept {summary['episodes_kept']}, {60 / per_episode:.1f} episodes/min, "
                        f"eta {per_episode * (len(todo) - n):.0f} s")
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        say("\n[record] interrupted; the episodes written so far are kept")
    except StackFailure as exc:
        summary.update(status="stack_failed", failure=str(exc))
        say(f"[record] stopped: {exc}")
    summary.update(episodes_total=writer.num_episodes, frames_total=writer.num_frames,
                   seconds=round(time.monotonic() - t_start, 1))
    return summary

