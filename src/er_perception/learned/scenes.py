"""Simulator scenes for the `learned` ER backend: renders with ground-truth masks (no ROS).

One MuJoCo model of the ALOHA 2 scene holds a fixed set of object slots (cubes, bowls, plates,
bars); each scene puts a random subset of them on the table in random colours (config/tasks.yaml
`colours`) and parks the rest out of view, so thousands of scenes cost one model compile. Colour
x object combinations can be held out of a split: training scenes never show them, test scenes
ask about them, which measures whether the model composes colour and object.

Queries are written from phrase templates; a split names its templates, so some phrasings are
held out too. Labels are "<colour> <noun>", as the simulator labels its objects.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import mujoco
import numpy as np

from aloha_driver.scene import sample_layout
from aloha_driver.sim import AlohaSim
from bimanual_core.config import load_embodiment, load_tasks
from er_perception.backends.base import CameraFrame, SceneObject
from er_perception.geometry import CameraPose

# Object kinds: noun -> tasks.yaml object entry (shape and size); `slots` copies in one model.
OBJECT_KINDS = {
    "cube": dict(shape="box", half_size=[0.02, 0.02, 0.02], slots=3),
    "bowl": dict(shape="bowl", radius=0.055, height=0.04, slots=2),
    "plate": dict(shape="bowl", radius=0.06, height=0.012, slots=2),
    "bar": dict(shape="box", half_size=[0.05, 0.012, 0.012], slots=2),
}
# Where objects go (world, m): the table area the arms reach and cam_high sees.
TABLE_X, TABLE_Y = (-0.22, 0.22), (0.36, 0.68)
PARKED_Y = 5.0            # slots not in a scene wait here, far outside every camera's view
MIN_OBJECTS, MAX_OBJECTS = 3, 6
# Colour x object pairs test scenes ask about and training scenes never show.
HELD_OUT_PAIRS = (("green", "cube"), ("yellow", "bowl"), ("purple", "plate"), ("orange", "bar"),
                  ("blue", "plate"))
# Phrase templates ({c} colour, {n} noun). Training and held-out-phrasing test queries use
# disjoint sets.
TRAIN_TEMPLATES = ("the {c} {n}", "{c} {n}", "point to the {c} {n}", "find the {c} {n}",
                   "where is the {c} {n}", "locate the {c} {n}", "the {n} that is {c}",
                   "pick up the {c} {n}")
HELD_OUT_TEMPLATES = ("can you show me where the {c} {n} is", "grasp the {n} which is {c}",
                      "detect the {c} {n} in the image", "{c} {n} please",
                      "the {c} {n} on the table")


def scene_tasks(colours: dict[str, list[float]]) -> dict:
    """A tasks.yaml-style definition of the ER scene: every slot an object of its own."""
    objects = []
    for noun, kind in OBJECT_KINDS.items():
        entry = {k: v for k, v in kind.items() if k != "slots"}
        for i in range(kind["slots"]):
            objects.append(dict(entry, name=f"{noun}_{i}", label=noun, colour=next(iter(colours)),
                                mass=0.05, x=list(TABLE_X), y=list(TABLE_Y), yaw=[-np.pi, np.pi]))
    return {"colours": colours, "tasks": {"er": {"instruction": "", "objects": objects}}}


@dataclass
class Scene:
    """One rendered scene: the frame (with its segmentation and labelled objects) and, per
    object, its colour and noun."""

    frame: CameraFrame
    attributes: dict[int, tuple[str, str]] = field(default_factory=dict)  # seg id -> (c, n)

    def mask(self, segmentation_id: int) -> np.ndarray:
        return self.frame.segmentation == segmentation_id


def frame_from_sim(sim: AlohaSim, camera: str, stamp_ns: int = 0) -> CameraFrame:
    """The simulator's view from `camera` as a CameraFrame with depth, pose and ground truth."""
    r = sim.render(camera, depth=True, segmentation=True)
    position, quat = sim.camera_pose(camera)
    objects = tuple(SceneObject(o["label"], o["segmentation_id"], o["name"])
                    for o in sim.objects())
    return CameraFrame(camera, stamp_ns, r["rgb"], sim.camera_intrinsics(camera),
                       CameraPose.from_quat_wxyz(position, quat), r["depth"], r["segmentation"],
                       objects)


def all_pairs(colours) -> list[tuple[str, str]]:
    return list(itertools.product(colours, OBJECT_KINDS))


class SceneGenerator:
    """Renders random ER scenes from `camera`; `split` "train" never shows HELD_OUT_PAIRS,
    "test" may show every pair (and always one held-out pair when `held_out` is not empty).

    Objects in one scene have distinct colour x noun pairs, so "the <colour> <noun>" names one
    object; colours and nouns repeat across objects, so a query needs both to be answered.
    """

    def __init__(self, split: str = "train", camera: str = "cam_high", embodiment: str = "aloha2",
                 held_out=HELD_OUT_PAIRS, min_objects: int = MIN_OBJECTS,
                 max_objects: int = MAX_OBJECTS):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if not 1 <= min_objects <= max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        self.split, self.camera = split, camera
        self.colours = dict(load_tasks()["colours"])
        unknown = [p for p in held_out if p not in all_pairs(self.colours)]
        if unknown:
            raise ValueError(f"held-out pairs {unknown} are not colour x noun pairs")
        self.held_out = tuple(tuple(p) for p in held_out)
        self.pairs = [p for p in all_pairs(self.colours)
                      if split == "test" or p not in self.held_out]
        self.min_objects, self.max_objects = min_objects, max_objects
        robot = load_embodiment(embodiment)
        robot.camera(camera)                     # raises, naming the known cameras
        self.sim = AlohaSim(robot, task="er", tasks=scene_tasks(self.colours))
        self._slots = {noun: [o for o in self.sim.scene.objects if o.name.startswith(noun + "_")]
                       for noun in OBJECT_KINDS}
        self._specs = {s.name: s for s in self.sim.scene.object_specs}

    def close(self) -> None:
        self.sim.close()

    def __enter__(self) -> SceneGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _choose(self, rng: np.random.Generator) -> list[tuple[str, str]]:
        """Distinct colour x noun pairs for one scene, within the slots of each noun."""
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        chosen: list[tuple[str, str]] = []
        if self.split == "test" and self.held_out:
            chosen.append(self.held_out[int(rng.integers(len(self.held_out)))])
        for i in rng.permutation(len(self.pairs)):
            pair = self.pairs[i]
            used = sum(1 for _, noun in chosen if noun == pair[1])
            if len(chosen) < n and pair not in chosen and used < len(self._slots[pair[1]]):
                chosen.append(pair)
        return chosen

    def render(self, seed: int) -> Scene:
        """The scene of `seed` (the same seed gives the same scene)."""
        rng = np.random.default_rng(seed)
        chosen = self._choose(rng)
        slots = {noun: list(objs) for noun, objs in self._slots.items()}
        placed = [(slots[noun].pop(0), colour, noun) for colour, noun in chosen]
        specs = [replace(self._specs[obj.name], colours=(colour,)) for obj, colour, _ in placed]
        layout = sample_layout(specs, list(self.colours), rng)
        model, data = self.sim.model, self.sim.data
        scene_objects = self.sim.scene.objects
        for k, obj in enumerate(scene_objects):        # park every slot, then place the chosen
            data.qpos[obj.qpos_adr:obj.qpos_adr + 7] = [0.3 * k, PARKED_Y, 0.05, 1, 0, 0, 0]
        attributes, labels = {}, {}
        for (obj, colour, noun), (pos, yaw, _) in zip(placed, layout):
            data.qpos[obj.qpos_adr:obj.qpos_adr + 3] = pos
            data.qpos[obj.qpos_adr + 3:obj.qpos_adr + 7] = [np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
            model.geom_rgba[list(obj.geom_ids)] = self.colours[colour]
            attributes[obj.segmentation_id] = (colour, noun)
            labels[obj.name] = f"{colour} {noun}"
        self.sim.scene.objects = [replace(o, label=labels.get(o.name, "")) for o in scene_objects]
        mujoco.mj_forward(model, data)
        frame = frame_from_sim(self.sim, self.camera, stamp_ns=seed)
        visible = tuple(o for o in frame.objects if o.segmentation_id in attributes)
        frame = replace(frame, objects=visible)
        return Scene(frame, attributes)
