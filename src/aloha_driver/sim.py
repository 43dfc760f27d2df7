"""AlohaSim: the ALOHA 2 MuJoCo simulation behind the 14-D, 50 Hz joint-position contract.

No ROS here; the ROS node (`sim_node`) and tests drive this class directly. One `step` is one
control period: the command is held for the physics substeps in between, as a position-controlled
robot holds its last target. Joint values use the embodiment's action convention (arm joints in
radians, grippers normalised 0 = closed .. 1 = open, left arm first).
"""
from __future__ import annotations

import mujoco
import numpy as np

from aloha_driver.render import CameraRenderer
from aloha_driver.scene import HOME_KEY, SceneModel, build_scene
from bimanual_core.config import Embodiment

# MuJoCo camera frame (x right, y up, z backward) -> optical frame (x right, y down, z forward).
_MUJOCO_TO_OPTICAL = np.diag([1.0, -1.0, -1.0])


class AlohaSim:
    """The simulated robot, its task objects and its four cameras."""

    def __init__(self, embodiment: Embodiment, task: str = "pick", seed: int = 0,
                 width: int | None = None, height: int | None = None,
                 tasks: dict | None = None):
        """`tasks`: task definitions in the layout of config/tasks.yaml (default: that file),
        for scenes the project does not run as tasks (e.g. ER training renders)."""
        sim_cfg = embodiment.simulation
        self.embodiment = embodiment
        self.width = int(width or sim_cfg.get("image_width", 320))
        self.height = int(height or sim_cfg.get("image_height", 240))
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        self.publish_depth = bool(sim_cfg.get("publish_depth", True))
        self.publish_segmentation = bool(sim_cfg.get("publish_segmentation", True))
        self.scene: SceneModel = build_scene(task, seed, embodiment, tasks)
        self.model: mujoco.MjModel = self.scene.model
        self.control_period = embodiment.control_period
        substeps = self.control_period / self.model.opt.timestep
        if abs(substeps - round(substeps)) > 1e-6 or round(substeps) < 1:
            raise ValueError(f"control period {self.control_period} s is not a whole number of "
                             f"physics steps of {self.model.opt.timestep} s")
        self.substeps = int(round(substeps))
        vis = self.model.vis.global_
        vis.offwidth, vis.offheight = max(vis.offwidth, self.width), max(vis.offheight, self.height)
        self.data = mujoco.MjData(self.model)
        self._finger_bodies = _finger_bodies(self.model, self.scene.joint_map.finger_qpos)
        self._renderer: CameraRenderer | None = None
        self._command = np.empty(embodiment.action_dim)
        self.reset(seed)

    # ------------------------------------------------------------------ state

    @property
    def seed(self) -> int:
        return self.scene.seed

    @property
    def task(self) -> str:
        return self.scene.task

    @property
    def instruction(self) -> str:
        return self.scene.instruction

    @property
    def time(self) -> float:
        """Simulated seconds since the last reset."""
        return float(self.data.time)

    @property
    def camera_names(self) -> tuple[str, ...]:
        return self.scene.camera_names

    @property
    def command(self) -> np.ndarray:
        """The held 14-D position target (after clipping)."""
        return self._command.copy()

    def reset(self, seed: int | None = None) -> None:
        """Home pose, time 0, objects re-sampled from `seed` (None: the next seed)."""
        self.scene.resample(self.seed + 1 if seed is None else int(seed))
        mujoco.mj_resetDataKeyframe(self.model, self.data, self.model.key(HOME_KEY).id)
        self._command[:] = self.embodiment.home
        mujoco.mj_forward(self.model, self.data)

    def step(self, command: np.ndarray) -> None:
        """Hold `command` (14-D position target) for one control period.

        Raises ValueError on a wrong shape or non-finite values; values beyond the joint limits
        are clipped to them.
        """
        cmd = np.asarray(command, dtype=float)
        if cmd.shape != (self.embodiment.action_dim,):
            raise ValueError(f"command has shape {cmd.shape}, expected "
                             f"({self.embodiment.action_dim},)")
        if not np.all(np.isfinite(cmd)):
            raise ValueError(f"command has non-finite values at indices "
                             f"{np.flatnonzero(~np.isfinite(cmd)).tolist()}")
        np.clip(cmd, self.embodiment.lower, self.embodiment.upper, out=self._command)
        self.scene.joint_map.action_to_ctrl(self._command, self.data.ctrl)
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        # mj_step leaves positions of bodies, sites and cameras one substep behind qpos.
        mujoco.mj_forward(self.model, self.data)

    def joint_positions(self) -> np.ndarray:
        return self.scene.joint_map.qpos_to_action(self.data.qpos)

    def joint_velocities(self) -> np.ndarray:
        return self.scene.joint_map.qvel_to_action(self.data.qvel)

    def joint_efforts(self) -> np.ndarray:
        return self.scene.joint_map.actuator_force_to_action(self.data.actuator_force)

    # ------------------------------------------------------------------ objects

    def objects(self) -> list[dict]:
        """Ground truth of the task objects, world frame."""
        out = []
        for obj in self.scene.objects:
            q = self.data.qpos[obj.qpos_adr:obj.qpos_adr + 7]
            out.append(dict(name=obj.name, label=obj.label, position=q[:3].copy(),
                            quaternion=q[3:].copy(), size=obj.size.copy(),
                            segmentation_id=obj.segmentation_id))
        return out

    def target_position(self) -> np.ndarray:
        """World position of the object the task's instruction acts on (its first object)."""
        return self.object_position(self.scene.objects[0].name)

    def task_object_positions(self) -> np.ndarray:
        """(3 K,) world positions of the task's K objects (not its distractors), the instruction's
        object first, then e.g. the container a place puts it in: what the point head learns."""
        return np.concatenate([self.object_position(obj.name) for obj, spec in
                               zip(self.scene.objects, self.scene.object_specs)
                               if not spec.is_distractor])

    def set_joint_positions(self, positions: np.ndarray) -> None:
        """Place the arms at `positions` (14-D) kinematically, without simulating: for rendering
        views of a scene with the arms elsewhere. The held command follows."""
        self.scene.joint_map.action_to_qpos(np.asarray(positions, float), self.data.qpos)
        self._command[:] = positions
        mujoco.mj_forward(self.model, self.data)

    def object_position(self, name_or_label: str) -> np.ndarray:
        obj = self.scene.object(name_or_label)
        return self.data.qpos[obj.qpos_adr:obj.qpos_adr + 3].copy()

    def grasped_by(self, name_or_label: str) -> list[int]:
        """Indices (in gripper order, left arm first) of the grippers whose two fingers both
        touch the object now: a grasp, told apart from a gripper closed beside it."""
        body = self.scene.object(name_or_label).body_id
        touching = set()
        for c in self.data.contact[:self.data.ncon]:
            b1, b2 = self.model.geom_bodyid[c.geom1], self.model.geom_bodyid[c.geom2]
            if body in (b1, b2):
                touching.add(int(b2 if b1 == body else b1))
        return [g for g, fingers in enumerate(self._finger_bodies)
                if all(touching & bodies for bodies in fingers)]

    # ------------------------------------------------------------------ cameras

    def _camera_id(self, camera: str) -> int:
        cid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cid < 0:
            raise ValueError(f"unknown camera {camera!r}; known: {list(self.camera_names)}")
        return cid

    def render(self, camera: str, depth: bool | None = None,
               segmentation: bool | None = None) -> dict[str, np.ndarray]:
        """rgb (H,W,3) uint8, depth (H,W) float32 metres, segmentation (H,W) uint16 object ids.

        Depth and segmentation default to the embodiment's `publish_depth` /
        `publish_segmentation`; each costs render time. The renderer is created on first use,
        in the calling thread, which must also be the one that calls `close`.
        """
        cid = self._camera_id(camera)
        if self._renderer is None:
            self._renderer = CameraRenderer(self.model, self.width, self.height,
                                            self.scene.geom_segmentation)
        return self._renderer.render(
            self.data, cid, depth=self.publish_depth if depth is None else depth,
            segmentation=self.publish_segmentation if segmentation is None else segmentation)

    def camera_intrinsics(self, camera: str) -> np.ndarray:
        """Pinhole K (3x3) for the render size; pixel centres at integer coordinates (ROS)."""
        fovy = np.deg2rad(self.model.cam_fovy[self._camera_id(camera)])
        f = 0.5 * self.height / np.tan(fovy / 2)
        return np.array([[f, 0.0, (self.width - 1) / 2],
                         [0.0, f, (self.height - 1) / 2],
                         [0.0, 0.0, 1.0]])

    def camera_pose(self, camera: str) -> tuple[np.ndarray, np.ndarray]:
        """World position and orientation (wxyz) of the camera's optical frame (OpenCV axes)."""
        cid = self._camera_id(camera)
        rot = self.data.cam_xmat[cid].reshape(3, 3) @ _MUJOCO_TO_OPTICAL
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, rot.flatten())
        return self.data.cam_xpos[cid].copy(), quat

    def close(self) -> None:
        """Free the renderer (from the thread that rendered)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> AlohaSim:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _finger_bodies(model: mujoco.MjModel, finger_qpos: np.ndarray) -> list[list[set[int]]]:
    """Per gripper, per finger: the finger joint's body and every body below it (its pads)."""
    below: dict[int, set[int]] = {}
    for body in range(model.nbody):
        above = body
        while above > 0:
            below.setdefault(above, set()).add(body)
            above = int(model.body_parentid[above])
    joint_at = {int(adr): j for j, adr in enumerate(model.jnt_qposadr)}
    return [[below[int(model.jnt_bodyid[joint_at[int(adr)]])] for adr in pair]
            for pair in finger_qpos]
