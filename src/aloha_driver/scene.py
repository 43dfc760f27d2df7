"""The simulated scene: an embodiment's arms (`aloha_driver.robots`), its cameras, our task objects.

No ROS here. The arms come from the robot model the embodiment's `simulation.robot_model` names
(ALOHA 2: gym-aloha's vx300s, since ALOHA 2's own Menagerie model cannot be installed offline;
franka_duo: two Menagerie Pandas); everything else is shared: the table, the cameras under the
embodiment's (ALOHA 2) names, a grasp-point site per arm, and the objects of `config/tasks.yaml`.
The model's structure depends only on the task; a seed decides the object poses and the distractor
colours, so a reset re-samples them without recompiling (`resample`) and restores the keyframe
HOME_KEY.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import mujoco
import numpy as np

from aloha_driver.robots import (FINGER_FRICTION, FINGER_KP, RobotModel, SceneError,  # noqa: F401
                                 gym_aloha_assets, robot_model)
from bimanual_core.config import Embodiment, load_tasks

OBJECT_FRICTION = (1.0, 0.005, 0.0001)
OBJECT_CONDIM = 4            # torsional friction too, so a held cube does not spin out

# Cameras. World-fixed ones look at a target; a wrist one sits on its arm's hand, posed by the
# robot model. (position, look-at target, up vector, fovy in degrees).
FIXED_CAMERAS = {
    "cam_high": ((0.0, 0.25, 0.70), (0.0, 0.5, 0.0), (0.0, 0.0, 1.0), 60.0),   # overhead, front top
    "cam_low": ((0.0, 0.16, 0.07), (0.0, 0.55, 0.08), (0.0, 0.0, 1.0), 70.0),  # worm's-eye, front
}
WRIST_CAMERAS = {
    "cam_left_wrist": "left_arm",
    "cam_right_wrist": "right_arm",
}

CLIP_NEAR, CLIP_FAR = 0.005, 4.0
HOME_KEY = "home"             # keyframe: home pose, home command, the seed's object layout
MIN_OBJECT_SEPARATION = 0.06   # m between object centres in the table plane
SEPARATION_MARGIN = 0.01       # m of free space between footprints (bounding circles)
MAX_PLACEMENT_TRIES = 1000
BOWL_WALL_SEGMENTS = 16
BOWL_WALL_THICKNESS = 0.006
BOWL_BASE_THICKNESS = 0.006


# ----------------------------------------------------------------------------- joint mapping

@dataclass(frozen=True)
class JointMap:
    """Where the embodiment's action entries live in a model built here.

    Arm entries map one-to-one to a hinge joint and its position actuator. A gripper entry (0 =
    closed .. 1 = open) maps linearly to the two finger slides, which mirror each other (vx300s)
    or move in parallel (Panda) as the robot model's `finger_sign` says.
    """

    names: tuple[str, ...]
    arm_index: np.ndarray        # (A,) action indices of arm joints
    arm_qpos: np.ndarray         # (A,) qpos addresses
    arm_dof: np.ndarray          # (A,) dof addresses
    arm_actuator: np.ndarray     # (A,) actuator ids
    gripper_index: np.ndarray    # (G,) action indices of grippers
    finger_qpos: np.ndarray      # (G, 2) qpos addresses of (left, right) finger
    finger_dof: np.ndarray       # (G, 2)
    finger_actuator: np.ndarray  # (G, 2)
    finger_closed: float         # first finger's slide position at gripper 0
    finger_open: float           # at gripper 1
    finger_sign: np.ndarray      # (2,) slide of each finger per unit of its arm's opening

    @classmethod
    def from_model(cls, model: mujoco.MjModel, embodiment: Embodiment,
                   robot: RobotModel | None = None) -> JointMap:
        """Locate the joints through `robot` (default: the embodiment's robot model)."""
        robot = robot or robot_model(embodiment)
        arm_idx, arm_q, arm_d, arm_a, grip_idx, f_q, f_d, f_a = ([] for _ in range(8))
        act_of_joint = {int(model.actuator_trnid[a, 0]): a for a in range(model.nu)}

        def joint(name: str) -> int:
            jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
            if jid < 0:
                raise SceneError(f"the model has no joint {name!r}")
            if jid not in act_of_joint:
                raise SceneError(f"joint {name!r} has no actuator")
            return jid

        for i, spec in enumerate(embodiment.joints):
            if spec.kind == "gripper":
                fingers = [joint(f) for f in robot.finger_joints(spec.group)]
                grip_idx.append(i)
                f_q.append([model.jnt_qposadr[j] for j in fingers])
                f_d.append([model.jnt_dofadr[j] for j in fingers])
                f_a.append([act_of_joint[j] for j in fingers])
            else:
                jid = joint(robot.model_joint(spec.group, spec.name))
                arm_idx.append(i)
                arm_q.append(model.jnt_qposadr[jid])
                arm_d.append(model.jnt_dofadr[jid])
                arm_a.append(act_of_joint[jid])
        if not grip_idx:
            raise SceneError("the embodiment has no gripper")
        lo, hi = model.jnt_range[model.dof_jntid[f_d[0][0]]]
        ints = [np.asarray(v, dtype=int)
                for v in (arm_idx, arm_q, arm_d, arm_a, grip_idx, f_q, f_d, f_a)]
        return cls(tuple(embodiment.joint_names), *ints, float(lo), float(hi),
                   np.asarray(robot.finger_sign, dtype=float))

    @property
    def finger_span(self) -> float:
        return self.finger_open - self.finger_closed

    def gripper_to_finger(self, gripper: np.ndarray) -> np.ndarray:
        """(G,) normalised gripper values -> (G, 2) finger slide positions."""
        left = self.finger_closed + np.asarray(gripper, dtype=float) * self.finger_span
        return left[:, None] * self.finger_sign

    def action_to_ctrl(self, action: np.ndarray, ctrl: np.ndarray) -> None:
        """Write a 14-D position target into the model's actuator controls."""
        ctrl[self.arm_actuator] = action[self.arm_index]
        ctrl[self.finger_actuator] = self.gripper_to_finger(action[self.gripper_index])

    def action_to_qpos(self, action: np.ndarray, qpos: np.ndarray) -> None:
        """Write a 14-D joint configuration into a qpos vector (kinematics, initial state)."""
        qpos[self.arm_qpos] = action[self.arm_index]
        qpos[self.finger_qpos] = self.gripper_to_finger(action[self.gripper_index])

    def qpos_to_action(self, qpos: np.ndarray) -> np.ndarray:
        """Joint positions in action convention; a gripper is the mean of its fingers' openings."""
        out = np.empty(len(self.names))
        out[self.arm_index] = qpos[self.arm_qpos]
        fingers = qpos[self.finger_qpos] * self.finger_sign
        out[self.gripper_index] = (fingers.mean(axis=1) - self.finger_closed) / self.finger_span
        return out

    def qvel_to_action(self, qvel: np.ndarray) -> np.ndarray:
        """Joint velocities (rad/s; grippers in normalised units per second)."""
        out = np.empty(len(self.names))
        out[self.arm_index] = qvel[self.arm_dof]
        out[self.gripper_index] = (qvel[self.finger_dof] * self.finger_sign).mean(
            axis=1) / self.finger_span
        return out

    def actuator_force_to_action(self, force: np.ndarray) -> np.ndarray:
        """Actuator efforts (N m for arm joints; N of finger closing force, +opening)."""
        out = np.empty(len(self.names))
        out[self.arm_index] = force[self.arm_actuator]
        out[self.gripper_index] = (force[self.finger_actuator] * self.finger_sign).mean(axis=1)
        return out


# ----------------------------------------------------------------------------- objects

@dataclass(frozen=True)
class ObjectSpec:
    """One object to place: its geometry from tasks.yaml and where it may go."""

    name: str
    label: str
    shape: str                   # "box" or "bowl"
    size: np.ndarray             # (3,) full extents, m
    mass: float
    colours: tuple[str, ...]     # one colour, or the choices of a distractor
    x: tuple[float, float]
    y: tuple[float, float]
    yaw: tuple[float, float]
    is_distractor: bool = False

    @property
    def footprint_radius(self) -> float:
        if self.shape == "bowl":
            return float(self.size[0] / 2)
        return float(np.hypot(self.size[0], self.size[1]) / 2)


@dataclass(frozen=True)
class SceneObject:
    """A task object in a compiled scene (label and colour may change on `resample`)."""

    name: str
    label: str
    shape: str
    size: np.ndarray             # (3,) full extents, m
    rgba: np.ndarray
    segmentation_id: int         # > 0; the value of its pixels in segmentation images
    body_id: int
    qpos_adr: int                # its free joint: position (3) then quaternion wxyz (4)
    geom_ids: tuple[int, ...]


def _range(entry: dict, key: str, default: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in entry.get(key, default))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise SceneError(f"object {entry.get('name', '?')}: bad {key} range {entry.get(key)}")
    return lo, hi


def _object_size(entry: dict) -> np.ndarray:
    shape = entry.get("shape")
    if shape == "box":
        half = np.asarray(entry["half_size"], dtype=float)
        if half.shape != (3,) or np.any(half <= 0):
            raise SceneError(f"box {entry.get('name', '?')}: half_size must be 3 positive numbers")
        return 2 * half
    if shape == "bowl":
        radius, height = float(entry["radius"]), float(entry["height"])
        if radius <= BOWL_WALL_THICKNESS or height <= BOWL_BASE_THICKNESS:
            raise SceneError(f"bowl {entry.get('name', '?')} is too small")
        return np.array([2 * radius, 2 * radius, height])
    raise SceneError(f"object {entry.get('name', '?')}: unknown shape {shape!r} (box or bowl)")


def task_object_specs(task: str, tasks: dict[str, Any]) -> tuple[list[ObjectSpec], str]:
    """The objects and distractors of a task, and its instruction."""
    if task not in tasks["tasks"]:
        raise SceneError(f"unknown task {task!r}; known: {sorted(tasks['tasks'])}")
    cfg = tasks["tasks"][task]
    colours = tasks["colours"]
    specs = []
    try:
        for entry in cfg.get("objects", []):
            if entry["colour"] not in colours:
                raise SceneError(f"object {entry['name']}: unknown colour {entry['colour']!r}")
            specs.append(ObjectSpec(
                name=entry["name"], label=entry["label"], shape=entry["shape"],
                size=_object_size(entry), mass=float(entry["mass"]), colours=(entry["colour"],),
                x=_range(entry, "x", (0, 0)), y=_range(entry, "y", (0, 0)),
                yaw=_range(entry, "yaw", (0, 0))))
        dis = cfg.get("distractors") or {}
        count = int(dis.get("count", 0))
        choices = tuple(dis.get("colours", ()))
        if count > len(choices) or any(c not in colours for c in choices):
            raise SceneError(f"task {task}: {count} distractors need as many known distinct "
                             f"colours, got {list(choices)}")
        for i in range(count):
            specs.append(ObjectSpec(
                name=f"distractor_{i}", label="", shape=dis.get("shape", "box"),
                size=_object_size({**dis, "name": f"distractor_{i}"}),
                mass=float(dis.get("mass", 0.05)), colours=choices,
                x=_range(dis, "x", (0, 0)), y=_range(dis, "y", (0, 0)),
                yaw=_range(dis, "yaw", (-np.pi, np.pi)), is_distractor=True))
    except KeyError as exc:
        raise SceneError(f"task {task}: object entry lacks {exc}") from None
    if len({s.name for s in specs}) != len(specs):
        raise SceneError(f"task {task}: object names are not unique")
    return specs, str(cfg.get("instruction", ""))


def sample_layout(specs: list[ObjectSpec], colour_names: list[str], rng: np.random.Generator
                  ) -> list[tuple[np.ndarray, float, str]]:
    """(position, yaw, colour) per object: uniform in its ranges, footprints kept apart.

    Distractors draw distinct colours. Raises SceneError when the ranges leave no room.
    """
    free_colours = list(colour_names)
    placed: list[tuple[np.ndarray, float]] = []    # (xy, footprint radius)
    layout = []
    for spec in specs:
        for _ in range(MAX_PLACEMENT_TRIES):
            xy = np.array([rng.uniform(*spec.x), rng.uniform(*spec.y)])
            if all(np.linalg.norm(xy - p) >= max(MIN_OBJECT_SEPARATION,
                                                 r + spec.footprint_radius + SEPARATION_MARGIN)
                   for p, r in placed):
                break
        else:
            raise SceneError(f"no room for {spec.name} after {MAX_PLACEMENT_TRIES} tries; "
                             "widen its x/y ranges in tasks.yaml")
        placed.append((xy, spec.footprint_radius))
        yaw = float(rng.uniform(*spec.yaw))
        if spec.is_distractor:
            options = [c for c in spec.colours if c in free_colours]
            if not options:
                raise SceneError(f"no free colour left for {spec.name}")
            colour = options[int(rng.integers(len(options)))]
        else:
            colour = spec.colours[0]
        if colour in free_colours:
            free_colours.remove(colour)
        layout.append((np.array([xy[0], xy[1], spec.size[2] / 2]), yaw, colour))
    return layout


def _box_inertia(mass: float, size: np.ndarray) -> np.ndarray:
    x2, y2, z2 = np.asarray(size, dtype=float) ** 2
    return mass / 12.0 * np.array([y2 + z2, x2 + z2, x2 + y2])


def _add_object(spec: mujoco.MjSpec, obj: ObjectSpec) -> None:
    """A free body named after the object, centred on its bounding box, resting on z = 0."""
    body = spec.worldbody.add_body(name=obj.name, pos=[0, 0, obj.size[2] / 2])
    body.add_freejoint(name=f"{obj.name}_joint")
    body.explicitinertial = True
    body.mass = obj.mass
    body.inertia = _box_inertia(obj.mass, obj.size)
    contact = dict(condim=OBJECT_CONDIM, friction=list(OBJECT_FRICTION))
    if obj.shape == "box":
        body.add_geom(name=f"{obj.name}_geom", type=mujoco.mjtGeom.mjGEOM_BOX,
                      size=list(obj.size / 2), **contact)
        return
    # Bowl: a cylinder base and a ring of wall slabs (concave shapes must be built of convex parts).
    radius, height = obj.size[0] / 2, obj.size[2]
    body.add_geom(name=f"{obj.name}_base", type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                  size=[radius, BOWL_BASE_THICKNESS / 2, 0],
                  pos=[0, 0, -height / 2 + BOWL_BASE_THICKNESS / 2], **contact)
    half_chord = radius * np.tan(np.pi / BOWL_WALL_SEGMENTS)
    for k in range(BOWL_WALL_SEGMENTS):
        angle = 2 * np.pi * k / BOWL_WALL_SEGMENTS
        r = radius - BOWL_WALL_THICKNESS / 2
        body.add_geom(name=f"{obj.name}_wall_{k}", type=mujoco.mjtGeom.mjGEOM_BOX,
                      size=[BOWL_WALL_THICKNESS / 2, half_chord, height / 2],
                      pos=[r * np.cos(angle), r * np.sin(angle), 0],
                      quat=[np.cos(angle / 2), 0, 0, np.sin(angle / 2)], **contact)


# ----------------------------------------------------------------------------- cameras

def look_at_quat(pos, target, up) -> np.ndarray:
    """Quaternion (wxyz) of a MuJoCo camera at `pos` looking at `target` (camera -z forward)."""
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise SceneError("camera up vector is parallel to its viewing direction")
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    mat = np.column_stack([right, cam_up, -forward])
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, mat.flatten())
    return quat


def _add_camera(body: mujoco.MjsBody, name: str, pose) -> None:
    pos, target, up, fovy = pose
    body.add_camera(name=name, pos=list(pos), quat=list(look_at_quat(pos, target, up)), fovy=fovy)


# ----------------------------------------------------------------------------- building

def _arm_spec(embodiment: Embodiment) -> tuple[mujoco.MjSpec, RobotModel]:
    """The table and the embodiment's arms, plus per arm the grasp-point site and the base frame
    site named in the embodiment config."""
    robot = robot_model(embodiment)
    spec = robot.build(embodiment)
    pos, quat = robot.grasp_site
    for arm, names in embodiment.arms.items():
        spec.body(robot.base(arm)).add_site(name=names["base_frame"], size=[0.01, 0, 0])
        spec.body(robot.hand(arm)).add_site(
            name=names["end_effector_site"], pos=list(pos), quat=list(quat), size=[0.005, 0, 0],
            rgba=[0, 1, 0, 0], group=4)
    return spec, robot


def _compile_with_home(spec: mujoco.MjSpec, embodiment: Embodiment
                       ) -> tuple[mujoco.MjModel, JointMap]:
    """Compile with a keyframe HOME_KEY holding the embodiment's home pose and command.

    (The home pose cannot go into qpos0: MuJoCo measures hinge angles from qpos0.)
    """
    spec.add_key(name=HOME_KEY)
    model = spec.compile()
    joint_map = JointMap.from_model(model, embodiment)
    key = model.key(HOME_KEY)
    joint_map.action_to_qpos(embodiment.home, key.qpos)
    joint_map.action_to_ctrl(embodiment.home, key.ctrl)
    return model, joint_map


def build_robot_model(embodiment: Embodiment) -> mujoco.MjModel:
    """The two arms alone (no table, objects or cameras), in the scene's world placement.

    Same joint names, sites and qpos layout of the arms as `build_scene`'s model, and the same
    keyframe HOME_KEY; for kinematics and IK.
    """
    spec, _ = _arm_spec(embodiment)
    for name in ("table", "midair"):
        spec.delete(spec.body(name))
    return _compile_with_home(spec, embodiment)[0]


@dataclass
class SceneModel:
    """A compiled scene and what the simulator needs to know about it."""

    model: mujoco.MjModel
    task: str
    instruction: str
    seed: int
    embodiment: Embodiment
    joint_map: JointMap
    camera_names: tuple[str, ...]
    object_specs: tuple[ObjectSpec, ...]
    colours: dict[str, np.ndarray]
    objects: list[SceneObject]
    geom_segmentation: np.ndarray    # (ngeom,) uint16: object segmentation id of each geom, or 0

    def object(self, name_or_label: str) -> SceneObject:
        for obj in self.objects:
            if name_or_label in (obj.name, obj.label):
                return obj
        raise KeyError(f"no object named or labelled {name_or_label!r}; have "
                       f"{[o.name for o in self.objects]}")

    def resample(self, seed: int) -> None:
        """Draw the object poses and distractor colours of `seed` into the HOME_KEY keyframe."""
        rng = np.random.default_rng(seed)
        layout = sample_layout(list(self.object_specs), list(self.colours), rng)
        key_qpos = self.model.key(HOME_KEY).qpos
        objects = []
        for obj, spec, (pos, yaw, colour) in zip(self.objects, self.object_specs, layout,
                                                 strict=True):
            key_qpos[obj.qpos_adr:obj.qpos_adr + 3] = pos
            key_qpos[obj.qpos_adr + 3:obj.qpos_adr + 7] = [
                np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
            rgba = self.colours[colour]
            self.model.geom_rgba[list(obj.geom_ids)] = rgba
            label = f"{colour} cube" if spec.is_distractor else spec.label
            objects.append(replace(obj, label=label, rgba=rgba))
        self.objects = objects
        self.seed = seed


def build_scene(task: str, seed: int, embodiment: Embodiment,
                tasks: dict[str, Any] | None = None) -> SceneModel:
    """Compile the scene of `task` for `embodiment` with the object layout of `seed`."""
    tasks = tasks if tasks is not None else load_tasks()
    specs, instruction = task_object_specs(task, tasks)
    spec, robot = _arm_spec(embodiment)
    spec.visual.quality.shadowsize = 0
    spec.visual.quality.offsamples = 0
    # Clip planes as fractions of the model extent (~1.7 m): near ~8 mm so that the wrist cameras
    # see the fingers, far ~7 m so that depth keeps sub-millimetre precision over the table.
    spec.visual.map.znear = CLIP_NEAR
    spec.visual.map.zfar = CLIP_FAR
    for light in spec.lights:
        light.castshadow = False
    sim_cfg = embodiment.simulation
    spec.visual.global_.offwidth = max(int(sim_cfg.get("image_width", 640)), 640)
    spec.visual.global_.offheight = max(int(sim_cfg.get("image_height", 480)), 480)

    for name in embodiment.cameras:
        if name in FIXED_CAMERAS:
            _add_camera(spec.worldbody, name, FIXED_CAMERAS[name])
        elif WRIST_CAMERAS.get(name) in embodiment.arms:
            _add_camera(spec.body(robot.hand(WRIST_CAMERAS[name])), name, robot.wrist_camera)
        else:
            raise SceneError(f"camera {name!r} of {embodiment.name} has no place in this scene")
    for obj in specs:
        _add_object(spec, obj)
    model, joint_map = _compile_with_home(spec, embodiment)
    seg = np.zeros(model.ngeom, dtype=np.uint16)
    objects = []
    for i, obj in enumerate(specs):
        body = model.body(obj.name)
        geoms = tuple(int(g) for g in np.flatnonzero(model.geom_bodyid == body.id))
        seg[list(geoms)] = i + 1
        objects.append(SceneObject(obj.name, obj.label, obj.shape, obj.size, np.zeros(4), i + 1,
                                   body.id, int(model.jnt_qposadr[body.jntadr[0]]), geoms))
    colours = {k: np.asarray(v, dtype=float) for k, v in tasks["colours"].items()}
    scene = SceneModel(model=model, task=task, instruction=instruction, seed=seed,
                       embodiment=embodiment, joint_map=joint_map,
                       camera_names=tuple(embodiment.cameras), object_specs=tuple(specs),
                       colours=colours, objects=objects, geom_segmentation=seg)
    scene.resample(seed)
    return scene
