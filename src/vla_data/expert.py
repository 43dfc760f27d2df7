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

`TakeoverSettings` records corrections instead (DAgger's idea, with the expert taking over as in
HG-DAgger): a learned checkpoint drives until a handover time, then the expert re-plans from the
state the policy reached and finishes. The policy's frames stay in the episode as context
(`expert_from` marks where the expert's begin); training learns actions only from the expert's.

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
class TakeoverSettings(ExpertSettings):
    """Corrections on the learned policy's own states (DAgger-style, as HG-DAgger's expert
    takes over): `checkpoint` drives each scene until a handover time drawn uniformly from
    `handover_s` (with `on_done`, also until it says done and the success judge, settle_s
    later, finds the task undone); then the expert re-plans from wherever the robot is and
    finishes."""
    checkpoint: str = ""
    handover_s: tuple[float, float] = (3.0, 15.0)
    on_done: bool = False
    time_limit_s: float = 40.0        # the whole episode: the policy's part and the expert's

    def __post_init__(self):
        super().__post_init__()
        low, high = self.handover_s
        if not self.checkpoint or not 0 < low <= high < self.time_limit_s:
            raise ValueError(f"a takeover needs a checkpoint and 0 < handover min <= max < the "
                             f"time limit {self.time_limit_s} s, got {self.checkpoint!r}, "
                             f"{self.handover_s}")


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
        self.sim.reset(seed)
        return self._demonstrate(seed, object_snapshot(self.sim), _Frames(self.cameras))

    def _demonstrate(self, seed: int, before: dict, frames: _Frames):
        """The expert plans from wherever the robot is now and executes to the end, appending to
        `frames` (which may hold the steps of a policy it takes over from); judged against the
        scene as it was at the start (`before`)."""
        from bimanual_core.instructions import parse_instruction
        from instruction_server.success import judge
        from vla_backbone_node.policy import PolicyError, PolicyObservation
        from vla_data.lerobot import Episode

        sim, policy = self.sim, self.policy
        instruction = sim.instruction
        policy.reset(instruction, sim.task)
        expert_from = len(frames.states)
        dt = self.embodiment.control_period
        replan = max(1, int(round(self.settings.replan_s / dt)))
        settle_steps = int(round(self.settings.hold_s / dt))
        noise = ActionNoise(len(self.embodiment.joint_names), self.embodiment.gripper_indices,
                            self.settings.action_noise, self.settings.noise_time_s, dt,
                            np.random.default_rng([seed, 1]))
        latest: dict[str, np.ndarray] = {}
        chunk, done_at, refused = None, None, None
        for step in range(expert_from, int(self.settings.time_limit_s / dt)):
            if step % self.camera_every == 0 or not latest:
                latest = self.render()
            q = sim.joint_positions()
            if (step - expert_from) % replan == 0 and done_at is None:
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
            frames.add(q, row, sim.task_object_positions(), latest)
            sim.step(row + noise())
            if done_at is not None and offset >= len(chunk) + settle_steps:
                break
        policy.stop()
        if refused:
            return None, refused                # no episode to keep, even with keep_failures
        if len(frames.states) == expert_from:
            return None, "no time was left for the expert"
        verdict = judge(parse_instruction(instruction, sim.task), before, object_snapshot(sim),
                        self.criteria)
        episode = Episode(task=instruction, states=np.array(frames.states),
                          actions=np.array(frames.actions), images=frames.images,
                          success=verdict.success, environment_state=np.array(frames.targets),
                          expert_from=expert_from)
        return episode, None if verdict.success else verdict.reason


class _Frames:
    """The rows of an episode being recorded: joints, command, object positions, images."""

    def __init__(self, cameras: tuple[str, ...]):
        self.states, self.actions, self.targets = [], [], []
        self.images: dict[str, list[np.ndarray]] = {c: [] for c in cameras}

    def add(self, state: np.ndarray, action: np.ndarray, targets: np.ndarray,
            images: dict[str, np.ndarray]) -> None:
        self.states.append(np.array(state))
        self.actions.append(np.array(action))
        self.targets.append(targets)
        for c, frames in self.images.items():
            frames.append(images[c])         # the same array object: no copy per frame


class _Takeover(_Expert):
    """The learned policy drives, the expert takes over and finishes. Plain demonstrations only
    show the expert's own states; a policy that drifts (e.g. closes its gripper beside the
    object) reaches states no demonstration labels. Here the expert labels exactly those, with
    the way to success from them; with `on_done`, also a policy that declares done too early
    (its gripper closed on nothing, the object never lifted), from where it stopped. An episode
    is kept only where there is something to correct: not when the policy already holds the
    object at the handover (the expert's fresh plan would open the gripper) or ended the
    episode before it."""

    def __init__(self, settings: TakeoverSettings):
        from vla_model.policy import LearnedPolicy
        from vla_model.rollout import Rollout, RolloutSettings

        super().__init__(settings)
        learned = LearnedPolicy(self.embodiment, settings.checkpoint, device="cpu", threads=1)
        self.rollout = Rollout(learned, RolloutSettings(
            task=settings.task, embodiment=settings.embodiment,
            time_limit_s=settings.time_limit_s), sim=self.sim)
        missing = set(self.cameras) - set(self.rollout.cameras)
        if missing:
            raise ValueError(f"the checkpoint does not see cameras {sorted(missing)}: record "
                             f"only its cameras ({', '.join(self.rollout.cameras)})")

    def run(self, seed: int):
        sim = self.sim
        handover = float(np.random.default_rng([seed, 3]).uniform(*self.settings.handover_s))
        frames, before = _Frames(self.cameras), {}

        def visit(joints, images, command):
            if not frames.states:          # the scene as reset, before anything moved
                before.update(object_snapshot(sim))
            frames.add(joints, command, sim.task_object_positions(), images)

        result = self.rollout.run(seed, visit, handover_s=handover)
        handed_over = ("handed_over", "judged") if self.settings.on_done else ("handed_over",)
        if result.cause not in handed_over:
            return None, f"the policy ended the episode before the handover: {result.reason}"
        if sim.grasped_by(sim.scene.objects[0].name):
            return None, (f"the policy holds the object at the handover "
                          f"({result.sim_duration_s:.1f} s)")
        return self._demonstrate(seed, before, frames)


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
    kind = {ViewSettings: _Viewer, TakeoverSettings: _Takeover}.get(type(settings), _Expert)
    _WORKER = kind(settings)


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
            outcome = f"FAILED: {failure}" if failure else "ok"
            say(f"[record] {n}/{len(todo)} seed {s}: {outcome} "
                f"({frames} frames) | kept {kept}, {rate * 60:.1f} episodes/min, "
                f"eta {(len(todo) - n) / rate:.0f} s")
    return {"dataset": str(out), "episodes_kept": kept, "episodes_total": writer.num_episodes,
            "frames_total": writer.num_frames, "failures": failed,
            "seconds": round(time.monotonic() - t0, 1)}
