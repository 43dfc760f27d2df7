"""Demonstrations at scale: the zero-shot planner as a scripted expert in MuJoCo (no ROS).

Each episode draws a scene from its seed (object poses, distractor colours, from
config/tasks.yaml), plans with the zero-shot ER policy on ground-truth object boxes (what the ER
`sim` backend reports), executes the plan at the control rate and renders the cameras at their
configured rate, exactly the observations the ROS stack would publish. Frames are recorded at the
control rate: the measured joints before each step, the command sent in that step, and each
camera's latest image, plus the positions of the task's objects, the one the instruction acts on
first, then e.g. the bowl a place puts it in (`observation.environment_state`, which training
uses to teach the model where they are). The
simulator judges success with the same rule as the instruction server.

Scenes come from `vla_data.collection.DEMO_SEED_BASE` on, apart from the evaluation's seeds.

`generate_views` writes the other half of co-training data: pointing views. Gemini Robotics trains
its VLA on embodied-reasoning data besides actions; here that is "where is the object the
instruction names", learned from many more object layouts than demonstrations can show. A
demonstration shows one layout in hundreds of frames; a view set shows thousands of layouts in a
few frames each (measured on frozen EfficientNet features: a probe localises the cube to 2.3 cm
from 100 layouts, 1.3 cm from 1300). Each view episode is one scene (seeds from VIEW_SEED_BASE)
whose arms stand, frame by frame, at joint states drawn from demonstrations; it is marked as not a
successful demonstration, so training never learns actions from it.
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np

from vla_data.collection import (DEMO_SEED_BASE, SeedLog, embodiment_writer,
                                 task_object_state_names)

SETTLE_S = 0.5            # default sim time recorded after the plan ends: the final state is seen
VIEW_SEED_BASE = 200_000  # pointing-view scenes: apart from demonstrations and evaluation


@dataclass(frozen=True)
class ExpertSettings:
    task: str = "pick"
    embodiment: str = "aloha2"
    cameras: tuple[str, ...] = ()     # empty: all of the embodiment's cameras
    replan_s: float = 0.2             # how often the expert is queried, as the backbone would be
    time_limit_s: float = 20.0        # sim seconds before an episode is cut off as failed
    action_noise: float = 0.0         # rad: std of the smooth offset added to executed arm joints
    noise_time_s: float = 0.5         # correlation time of that offset (Ornstein-Uhlenbeck)
    hold_s: float = SETTLE_S          # sim time recorded after the plan ends (the arm holds still)

    def __post_init__(self):
        if self.action_noise < 0 or not self.noise_time_s > 0 or self.hold_s < 0:
            raise ValueError(f"action_noise and hold_s must be >= 0 and noise_time_s > 0, got "
                             f"{self.action_noise}, {self.hold_s}, {self.noise_time_s}")


class ActionNoise:
    """DART-style recovery data: a smooth random offset on the executed arm joints.

    The recorded action stays the expert's clean target, so the states the noise visits are
    labelled with the way back to the plan, which is what a learned policy needs when its own
    errors put it off the demonstrated path. The offset is an Ornstein-Uhlenbeck process (std
    `sigma`, correlation time `tau`): per-step white noise on a position-controlled arm would be
    filtered out by the joints before it moved them; grippers are left alone (a noisy gripper
    drops the object, which no label could undo).
    """

    def __init__(self, dim: int, skip: list[int], sigma: float, tau: float, dt: float,
                 rng: np.random.Generator):
        self.mask = np.ones(dim)
        self.mask[skip] = 0.0
        self.sigma, self.rng = float(sigma), rng
        self.decay = float(np.exp(-dt / tau))
        self.kick = self.sigma * float(np.sqrt(1.0 - self.decay ** 2))
        self.offset = np.zeros(dim)

    def __call__(self) -> np.ndarray:
        """The next offset (D,), zero on skipped joints."""
        if self.sigma > 0:
            self.offset = self.decay * self.offset + self.kick * self.rng.standard_normal(
                len(self.offset))
        return self.offset * self.mask


@dataclass(frozen=True)
class ViewSettings:
    task: str = "pick"
    embodiment: str = "aloha2"
    cameras: tuple[str, ...] = ()     # empty: all of the embodiment's cameras
    views_per_scene: int = 8          # frames per scene; the first has the arms at home
    poses_from: str | None = None     # a dataset whose observation.state gives the arm poses


class _Collector:
    """One simulator, reused across the episodes of one worker process."""

    def __init__(self, settings):
        from aloha_driver.sim import AlohaSim
        from bimanual_core.config import load_embodiment

        self.settings = settings
        self.embodiment = load_embodiment(settings.embodiment)
        self.sim = AlohaSim(self.embodiment, settings.task, seed=DEMO_SEED_BASE)
        self.cameras = settings.cameras or tuple(self.embodiment.cameras)

    def render(self) -> dict[str, np.ndarray]:
        return {c: self.sim.render(c, depth=False, segmentation=False)["rgb"]
                for c in self.cameras}

    def close(self) -> None:
        self.sim.close()


class _Viewer(_Collector):
    """Pointing views: a scene, arms at demonstrated poses, the target object's position."""

    def __init__(self, settings: ViewSettings):
        super().__init__(settings)
        poses = [self.embodiment.home]
        if settings.poses_from:
            from vla_data.lerobot import LeRobotDataset
            data = LeRobotDataset(settings.poses_from)
            poses = [data.episode_table(i)["observation.state"] for i in range(len(data))]
        self.poses = np.concatenate([np.atleast_2d(p) for p in poses])

    def run(self, seed: int):
        from vla_data.lerobot import Episode

        sim = self.sim
        sim.reset(seed)
        rng = np.random.default_rng(seed)
        states, targets, images = [], [], {c: [] for c in self.cameras}
        for k in range(self.settings.views_per_scene):
            q = self.embodiment.home if k == 0 else self.poses[rng.integers(len(self.poses))]
            sim.set_joint_positions(q)
            states.append(sim.joint_positions())
            targets.append(sim.task_object_positions())
            for c, frame in self.render().items():
                images[c].append(frame)
        return Episode(task=sim.instruction, states=states, actions=states, images=images,
                       success=False, environment_state=np.array(targets)), None


class _Expert(_Collector):
    """The zero-shot planner on ground-truth objects, executing in the simulator."""

    def __init__(self, settings: ExpertSettings):
        from instruction_server.success import load_success_criteria
        from vla_backbone_node.zero_shot import ZeroShotPolicy

        super().__init__(settings)
        self.criteria = load_success_criteria()
        rate = float(self.embodiment.simulation.get("camera_rate_hz", 10.0))
        self.camera_every = max(1, int(round(self.embodiment.control_rate_hz / rate)))

        self.policy = ZeroShotPolicy(self.embodiment, ground_truth_locate(self.sim))

    def run(self, seed: int):
        """One episode on scene `seed` -> (Episode, why it failed or None); (None, why) when the
        planner cannot plan the scene at all."""
        from bimanual_core.instructions import parse_instruction
        from instruction_server.success import judge
        from vla_backbone_node.policy import PolicyError, PolicyObservation
        from vla_data.lerobot import Episode

        sim, policy = self.sim, self.policy
        sim.reset(seed)
        instruction = sim.instruction
        policy.reset(instruction, sim.task)
        before = object_snapshot(sim)
        dt = self.embodiment.control_period
        replan = max(1, int(round(self.settings.replan_s / dt)))
        max_steps = int(self.settings.time_limit_s / dt)
        settle_steps = int(round(self.settings.hold_s / dt))
        noise = ActionNoise(len(self.embodiment.joint_names), self.embodiment.gripper_indices,
                            self.settings.action_noise, self.settings.noise_time_s, dt,
                            np.random.default_rng([seed, 1]))
        states, actions, targets, images = [], [], [], {c: [] for c in self.cameras}
        latest: dict[str, np.ndarray] = {}
        chunk, done_at, refused = None, None, None
        for step in range(max_steps):
            if step % self.camera_every == 0:
                latest = self.render()
            q = sim.joint_positions()
            if step % replan == 0 and done_at is None:
                try:
                    chunk = policy.infer(PolicyObservation(sim.time, q, instruction=instruction))
                except PolicyError as exc:     # a scene the planner cannot solve: a failed episode
                    refused = f"the expert could not plan: {exc}"
                    break
                offset = 0
                if policy.status().done:
                    done_at = step
            row = chunk[min(offset, len(chunk) - 1)]
            offset += 1
            states.append(q)
            actions.append(row)
            targets.append(sim.task_object_positions())
            for c in self.cameras:
                images[c].append(latest[c])      # the same array object: no copy per frame
            sim.step(row + noise())
            if done_at is not None and offset >= len(chunk) + settle_steps:
                break
        if refused:
            policy.stop()
            return None, refused                # no episode to keep, even with keep_failures
        verdict = judge(parse_instruction(instruction, sim.task), before, object_snapshot(sim),
                        self.criteria)
        policy.stop()
        episode = Episode(task=instruction, states=np.array(states), actions=np.array(actions),
                          images=images, success=verdict.success,
                          environment_state=np.array(targets))
        return episode, None if verdict.success else verdict.reason


def ground_truth_locate(sim) -> Callable:
    """A zero-shot `locate(label)` that reads the simulator's objects (the ER `sim` backend)."""
    from vla_backbone_node.zero_shot import ObjectLocation

    def locate(label: str):
        for o in sim.objects():
            if o["label"] == label:
                return ObjectLocation(o["position"], None, o["size"])
        return None
    return locate


def object_snapshot(sim) -> dict:
    """The simulator's objects as the success judge reads them (label -> ObjectState)."""
    from instruction_server.success import ObjectState
    return {o["label"]: ObjectState(o["label"], o["position"], o["size"]) for o in sim.objects()}


_WORKER: _Collector | None = None


def _worker_init(settings: ExpertSettings | ViewSettings) -> None:
    global _WORKER
    os.environ.setdefault("MUJOCO_GL", "egl")
    _WORKER = _Viewer(settings) if isinstance(settings, ViewSettings) else _Expert(settings)


def _worker_run(seed: int):
    return seed, *_WORKER.run(seed)


def generate(out: str | Path, settings: ExpertSettings, episodes: int, seed: int = DEMO_SEED_BASE,
             workers: int = 1, keep_failures: bool = False, resume: bool = False,
             say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
             ) -> dict:
    """Write `episodes` expert demonstrations (seeds `seed`, `seed + 1`, ...) to a LeRobot v3
    dataset at `out`; with `resume`, append and skip seeds already recorded there."""
    return _collect(out, settings, "meta/expert_seeds.txt", episodes, seed, workers,
                    keep_failures, resume, say)


def generate_views(out: str | Path, settings: ViewSettings, scenes: int,
                   seed: int = VIEW_SEED_BASE, workers: int = 1, resume: bool = False,
                   say: Callable[[str], None] = lambda line: print(line, file=sys.stderr,
                                                                   flush=True)) -> dict:
    """Write `scenes` pointing-view episodes (seeds `seed`, ...) to a LeRobot v3 dataset."""
    return _collect(out, settings, "meta/view_seeds.txt", scenes, seed, workers, False, resume,
                    say)


def _collect(out, settings, seed_log: str, episodes: int, seed: int, workers: int,
             keep_failures: bool, resume: bool, say: Callable[[str], None]) -> dict:
    from bimanual_core.config import load_embodiment

    os.environ.setdefault("MUJOCO_GL", "egl")
    writer = embodiment_writer(out, load_embodiment(settings.embodiment), resume,
                               settings.cameras, task_object_state_names(settings.task))
    seeds = SeedLog(out, seed_log, resume)
    todo = seeds.todo(seed, episodes)
    t0, kept, failed = time.monotonic(), 0, []
    ctx = get_context("spawn")          # a fresh interpreter per worker: its own EGL context
    with ProcessPoolExecutor(max(1, workers), mp_context=ctx, initializer=_worker_init,
                             initargs=(settings,)) as pool:
        for n, (s, episode, failure) in enumerate(pool.map(_worker_run, todo), 1):
            if episode is not None and (failure is None or keep_failures):
                writer.add_episode(episode)
                kept += 1
            if failure is not None:
                failed.append((s, failure))
            seeds.add(s)
            rate = n / (time.monotonic() - t0)
            frames = len(episode) if episode is not None else 0
            say(f"[record] {n}/{len(todo)} seed {s}: {'FAILED' if failure else 'ok'} "
                f"({frames} frames) | kept {kept}, {rate * 60:.1f} episodes/min, "
                f"eta {(len(todo) - n) / rate:.0f} s")
    return {"dataset": str(out), "episodes_kept": kept, "episodes_total": writer.num_episodes,
            "frames_total": writer.num_frames, "failures": failed,
            "seconds": round(time.monotonic() - t0, 1)}
