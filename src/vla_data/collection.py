"""What every demonstration collector shares (no ROS): scene seeds and the dataset writer.

Demonstration scenes use seeds from `DEMO_SEED_BASE` on, so they never overlap the evaluation's
seeds (0, 1, 2, ... by default). A collector logs every seed it tried in the dataset, so that
`--resume` skips them, failures included.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from bimanual_core.config import Embodiment
from vla_data.lerobot import LeRobotWriter

DEMO_SEED_BASE = 100_000
TARGET_STATE_NAMES = ("target.x", "target.y", "target.z")   # observation.environment_state


def task_object_state_names(task: str) -> tuple[str, ...]:
    """`observation.environment_state`'s names for `AlohaSim.task_object_positions`: the
    instruction's object as `target.*`, each further task object (a place's bowl) by its name."""
    from aloha_driver.scene import task_object_specs
    from bimanual_core.config import load_tasks
    specs, _ = task_object_specs(task, load_tasks())
    names = [s.name for s in specs if not s.is_distractor][1:]
    return TARGET_STATE_NAMES + tuple(f"{name}.{axis}" for name in names for axis in "xyz")


def image_size(embodiment: Embodiment) -> tuple[int, int]:
    """(height, width) of the simulated cameras' images."""
    sim = embodiment.simulation
    return int(sim.get("image_height", 240)), int(sim.get("image_width", 320))


def embodiment_writer(out: str | Path, embodiment: Embodiment, resume: bool,
                      cameras: Sequence[str] = (),
                      environment_names: Sequence[str] = ()) -> LeRobotWriter:
    """A LeRobot writer at the embodiment's control rate, joints and camera images."""
    return LeRobotWriter(out, embodiment.control_rate_hz, embodiment.joint_names,
                         list(cameras or embodiment.cameras), image_size(embodiment),
                         robot_type=embodiment.name, resume=resume,
                         environment_names=environment_names)


class SeedLog:
    """The scene seeds already tried in a dataset (`<out>/<name>`, one per line)."""

    def __init__(self, out: str | Path, name: str, resume: bool):
        self.path = Path(out) / name
        self.tried = ({int(s) for s in self.path.read_text().split()}
                      if resume and self.path.exists() else set())

    def todo(self, seed: int, episodes: int) -> list[int]:
        """Seeds `seed` .. `seed + episodes - 1` not tried yet."""
        return [s for s in range(seed, seed + episodes) if s not in self.tried]

    def add(self, seed: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(f"{seed}\n")
        self.tried.add(seed)
