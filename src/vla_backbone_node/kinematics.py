"""Per-arm forward and inverse kinematics on the MuJoCo robot model (no ROS imports).

The zero-shot planner turns Cartesian grasp waypoints into joint targets with these. An arm's
joints, limits and home pose come from the embodiment config, its end effector is the model site
named by `arms.<arm>.end_effector_site`, so nothing about the robot is hard-coded here. IK is
damped least squares on `mujoco.mj_jacSite`, with joint limits enforced and a null-space bias
toward the home pose so that, of the many solutions, one near the robot's natural posture is found;
for a redundant arm (the Franka's 7 joints) a tracked path biases toward its previous sample instead
(`posture`), so the arm does not drift along its null space between samples.

Frames: a gripper site's x axis points along the approach direction (out of the palm between the
fingertips) and its y axis along the fingers' closing direction.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import mujoco
import numpy as np

from bimanual_core.config import Embodiment


# A solve that has not cut its error by a fifth in this many iterations is in a local minimum
# (or the target is out of reach): give up on that start early.
STALL_WINDOW = 20
STALL_PROGRESS = 0.8


class KinematicsError(ValueError):
    """The model does not hold what the embodiment names, or a target is malformed."""


@dataclass(frozen=True)
class Pose:
    """A site pose in the world frame."""

    position: np.ndarray   # (3,) metres
    rotation: np.ndarray   # (3, 3), columns are the site's x, y, z axes


@dataclass(frozen=True)
class IkResult:
    q: np.ndarray              # (n,) arm joint angles, inside the limits
    position_error: float      # metres
    orientation_error: float   # radians (0 when only the position was asked for)
    iterations: int
    success: bool


def grasp_rotation(approach, closing) -> np.ndarray:
    """Site orientation with x axis `approach` and y axis `closing` (orthogonalised to it)."""
    x = np.asarray(approach, dtype=float)
    y = np.asarray(closing, dtype=float)
    if x.shape != (3,) or y.shape != (3,) or not np.all(np.isfinite(np.concatenate([x, y]))):
        raise KinematicsError("approach and closing directions must be finite 3-vectors")
    nx = np.linalg.norm(x)
    if nx < 1e-9:
        raise KinematicsError("the approach direction is zero")
    x = x / nx
    y = y - x * (x @ y)
    ny = np.linalg.norm(y)
    if ny < 1e-6:
        raise KinematicsError("the closing direction is parallel to the approach direction")
    y = y / ny
    return np.column_stack([x, y, np.cross(x, y)])


def top_down_rotation(yaw: float) -> np.ndarray:
    """Gripper pointing straight down, fingers closing along the world direction at `yaw` rad."""
    return grasp_rotation((0.0, 0.0, -1.0), (np.cos(yaw), np.sin(yaw), 0.0))


def rotation_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-frame rotation vector that turns `current` into `target` (angle = its norm)."""
    q_cur, q_tgt, q_err = np.empty(4), np.empty(4), np.empty(4)
    mujoco.mju_mat2Quat(q_cur, np.ascontiguousarray(current).ravel())
    mujoco.mju_mat2Quat(q_tgt, np.ascontiguousarray(target).ravel())
    q_inv = np.empty(4)
    mujoco.mju_negQuat(q_inv, q_cur)
    mujoco.mju_mulQuat(q_err, q_tgt, q_inv)
    if q_err[0] < 0:            # shortest way round
        q_err = -q_err
    vel = np.empty(3)
    mujoco.mju_quat2Vel(vel, q_err, 1.0)
    return vel


def joint_addresses(model: mujoco.MjModel, names) -> tuple[np.ndarray, np.ndarray]:
    """qpos and dof addresses of the model's joints with these names."""
    ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in names]
    missing = [n for n, i in zip(names, ids) if i < 0]
    if missing:
        raise KinematicsError(f"the robot model has no joints named {missing}")
    return model.jnt_qposadr[ids].copy(), model.jnt_dofadr[ids].copy()


class ArmKinematics:
    """Kinematics of one arm of `embodiment` on `model`.

    Holds its own MjData, so it never disturbs a simulation; one instance is not thread-safe.
    """

    def __init__(self, model: mujoco.MjModel, embodiment: Embodiment, arm: str, *,
                 joint_qpos=None, joint_dof=None, damping: float = 0.005,
                 posture_gain: float = 0.05, max_step: float = 0.25,
                 orientation_weight: float = 1.0):
        """`joint_qpos`/`joint_dof`: the arm joints' qpos and dof addresses in the model, in the
        embodiment's order; by default the model's joints named like the embodiment's."""
        if arm not in embodiment.arms:
            raise KinematicsError(f"unknown arm {arm!r}; known: {sorted(embodiment.arms)}")
        self.arm = arm
        self.model = model
        self.data = mujoco.MjData(model)
        self.indices = embodiment.arm_indices(arm)   # positions in the action vector
        self.joint_names = [embodiment.joint_names[i] for i in self.indices]
        if joint_qpos is None or joint_dof is None:
            joint_qpos, joint_dof = joint_addresses(model, self.joint_names)
        self._qadr = np.asarray(joint_qpos, dtype=int)
        self._dadr = np.asarray(joint_dof, dtype=int)
        if self._qadr.shape != (len(self.indices),) or self._dadr.shape != self._qadr.shape:
            raise KinematicsError(f"{arm} has {len(self.indices)} joints; got "
                                  f"{self._qadr.size} qpos and {self._dadr.size} dof addresses")
        site = embodiment.arms[arm]["end_effector_site"]
        self._site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, site)
        if self._site < 0:
            raise KinematicsError(f"the robot model has no site named {site!r}")
        self.lower = embodiment.lower[self.indices].copy()
        self.upper = embodiment.upper[self.indices].copy()
        self.home = embodiment.home[self.indices].copy()
        # Joints that turn all the way round wrap instead of stopping at +-pi, so the solver is
        # never trapped against a limit that is not a real one.
        self._wraps = (self.upper - self.lower) >= 2 * np.pi - 1e-3
        self.damping = damping
        self.posture_gain = posture_gain
        self.max_step = max_step
        self.orientation_weight = orientation_weight
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self._set(self.home)
        first_joint = int(np.flatnonzero(model.jnt_dofadr == self._dadr[0])[0])
        self.base_position = self.data.xanchor[first_joint].copy()
        self._first_axis = self.data.xaxis[first_joint].copy()
        self._home_reach = self._pose().position - self.base_position
        self.tip_reach = self._reach_beyond_site()

    def _reach_beyond_site(self) -> float:
        """How far the hand's geometry reaches past the site along the approach (x) axis."""
        m, d = self.model, self.data
        site_body = m.site_bodyid[self._site]
        in_hand = np.zeros(m.nbody, dtype=bool)
        for b in range(m.nbody):
            a = b
            while a > 0 and a != site_body:
                a = m.body_parentid[a]
            in_hand[b] = a == site_body
        approach = d.site_xmat[self._site].reshape(3, 3)[:, 0]
        signs = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T
        reach = 0.0
        for g in np.flatnonzero(in_hand[m.geom_bodyid]):
            centre, half = m.geom_aabb[g, :3], m.geom_aabb[g, 3:]
            corners = d.geom_xpos[g] + (centre + signs * half) @ d.geom_xmat[g].reshape(3, 3).T
            reach = max(reach, float(np.max((corners - d.site_xpos[self._site]) @ approach)))
        return reach

    @property
    def dof(self) -> int:
        return len(self.indices)

    def _set(self, q: np.ndarray) -> None:
        self.data.qpos[self._qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)

    def _check_q(self, q) -> np.ndarray:
        q = np.asarray(q, dtype=float)
        if q.shape != (self.dof,):
            raise KinematicsError(f"expected {self.dof} joint angles for {self.arm}, got {q.shape}")
        if not np.all(np.isfinite(q)):
            raise KinematicsError(f"joint angles for {self.arm} contain NaN or inf")
        return q

    def _pose(self) -> Pose:
        return Pose(self.data.site_xpos[self._site].copy(),
                    self.data.site_xmat[self._site].reshape(3, 3).copy())

    def forward(self, q) -> Pose:
        """World pose of the end-effector site for arm joint angles `q`."""
        self._set(self._check_q(q))
        return self._pose()

    def _jacobian(self) -> np.ndarray:
        """(6, n) Jacobian of the site at the current configuration: linear rows, then angular."""
        mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self._site)
        return np.vstack([self._jacp[:, self._dadr], self._jacr[:, self._dadr]])

    def solve(self, position, rotation=None, seed=None, *, max_iterations: int = 200,
              position_tolerance: float = 5e-4, orientation_tolerance: float = np.radians(0.3),
              restarts: int = 10, solutions: int = 1, rng_seed: int = 0,
              posture=None) -> IkResult:
        """Joint angles that put the site at `position` (and `rotation`, when given).

        Starts from `seed`, then from the home posture turned toward the target, then from
        random configurations, until `solutions` starts have converged; returns the converged
        solution nearest `seed` (default: home), else the closest miss (`success` False). With
        `solutions` > 1 a solution on another branch (e.g. a flipped wrist) is not taken just
        because the solver reached it first. Angles of joints that turn all the way round are
        given nearest `seed`.

        `posture` is the configuration the redundant (null-space) motion is pulled toward
        (default: home). A path tracked sample by sample passes the previous sample, so that a
        redundant arm (7-DoF) stays on its course instead of drifting toward home between them.
        """
        target_p = np.asarray(position, dtype=float)
        if target_p.shape != (3,) or not np.all(np.isfinite(target_p)):
            raise KinematicsError(f"target position must be 3 finite numbers, got {position!r}")
        target_r = None
        if rotation is not None:
            target_r = np.asarray(rotation, dtype=float)
            if target_r.shape != (3, 3) or not np.all(np.isfinite(target_r)):
                raise KinematicsError("target rotation must be a finite 3x3 matrix")
            if not np.allclose(target_r.T @ target_r, np.eye(3), atol=1e-6):
                raise KinematicsError("target rotation is not orthonormal")
        reference = self.home if seed is None else self._check_q(seed)
        rest = self.home if posture is None else self._check_q(posture)
        found, best = [], None
        for start in self._seeds(seed, target_p, restarts, rng_seed):
            res = self._solve_from(start, target_p, target_r, max_iterations,
                                   position_tolerance, orientation_tolerance, rest)
            if res.success:
                found.append(replace(res, q=self._nearest_turn(res.q, reference)))
                if len(found) >= solutions:
                    break
            elif best is None or (res.position_error + 0.1 * res.orientation_error
                                  < best.position_error + 0.1 * best.orientation_error):
                best = res
        if found:
            return min(found, key=lambda r: float(np.sum(np.abs(r.q - reference))))
        return IkResult(self._nearest_turn(best.q, reference), best.position_error,
                        best.orientation_error, best.iterations, best.success)

    def _nearest_turn(self, q: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Of the equivalent angles (q +- 2 pi) of wrapping joints, those nearest `reference`."""
        q = q.copy()
        for j in np.flatnonzero(self._wraps):
            options = q[j] + 2 * np.pi * np.array([-1.0, 0.0, 1.0])
            options = np.clip(options[(options >= self.lower[j] - 1e-3)
                                      & (options <= self.upper[j] + 1e-3)],
                              self.lower[j], self.upper[j])
            q[j] = options[np.argmin(np.abs(options - reference[j]))]
        return q

    def _seeds(self, seed, target: np.ndarray, restarts: int, rng_seed: int):
        """Starting configurations for `solve`, best first, generated as needed."""
        if seed is not None:
            yield self._check_q(seed)
        facing = self.home.copy()
        facing[0] += self._heading(target)
        # Reach the point first with the posture bias free to act (3 constraints only), so that
        # the wrist starts on the branch nearest the home posture before the orientation is set.
        yield self._solve_from(facing, target, None, 100, 1e-3, np.inf).q
        yield facing
        # Random starts: anywhere within the limits, joints that turn all the way round within
        # a half turn of zero, the first joint roughly facing the target.
        rng = np.random.default_rng(rng_seed)
        low = np.where(self._wraps, -np.pi / 2, self.lower)
        high = np.where(self._wraps, np.pi / 2, self.upper)
        for _ in range(restarts):
            s = rng.uniform(low, high)
            s[0] = facing[0] + rng.normal(0.0, 0.3)
            yield s

    def _heading(self, target: np.ndarray) -> float:
        """First-joint rotation that turns the home pose's reach toward `target`."""
        axis = self._first_axis
        a = self._home_reach - axis * (axis @ self._home_reach)
        b = (target - self.base_position) - axis * (axis @ (target - self.base_position))
        if np.linalg.norm(a) < 1e-6 or np.linalg.norm(b) < 1e-6:
            return 0.0
        return float(np.arctan2(axis @ np.cross(a, b), a @ b))

    def _limit(self, q: np.ndarray) -> np.ndarray:
        wrapped = np.where(self._wraps, (q + np.pi) % (2 * np.pi) - np.pi, q)
        return np.clip(wrapped, self.lower, self.upper)

    def _solve_from(self, seed, target_p, target_r, max_iterations, pos_tol, rot_tol,
                    rest=None) -> IkResult:
        q = self._limit(np.array(seed, dtype=float))
        rows = 6 if target_r is not None else 3
        w = np.ones(6)
        w[3:] = self.orientation_weight
        it = 0
        checkpoint = np.inf     # error STALL_WINDOW iterations ago
        while True:
            self._set(q)
            pose = self._pose()
            e = np.zeros(6)
            e[:3] = target_p - pose.position
            if target_r is not None:
                e[3:] = rotation_error(pose.rotation, target_r)
            err_p, err_r = float(np.linalg.norm(e[:3])), float(np.linalg.norm(e[3:]))
            converged = err_p < pos_tol and err_r < rot_tol
            if it % STALL_WINDOW == 0:
                stalled = err_p + err_r > STALL_PROGRESS * checkpoint
                checkpoint = err_p + err_r
            if converged or it == max_iterations or stalled:
                return IkResult(q, err_p, err_r, it, converged)
            it += 1
            J = (self._jacobian() * w[:, None])[:rows]
            U, sv, Vt = np.linalg.svd(J, full_matrices=False)
            dq = Vt.T @ ((sv / (sv ** 2 + self.damping ** 2)) * (U.T @ (e * w)[:rows]))
            # Posture bias projected onto the exact null space, so it never pulls off target.
            posture = self.posture_gain * ((self.home if rest is None else rest) - q)
            rank_rows = Vt[sv > 1e-3 * sv[0]]
            dq += posture - rank_rows.T @ (rank_rows @ posture)
            step = np.max(np.abs(dq))
            if step > self.max_step:
                dq *= self.max_step / step
            q = self._limit(q + dq)


def robot_kinematics(embodiment: Embodiment) -> dict[str, ArmKinematics]:
    """Kinematics of every arm on the simulated robot's model (`aloha_driver.scene`).

    That model keeps gym-aloha's joint names, so the joints are located through the driver's
    JointMap rather than by the embodiment's names.
    """
    from aloha_driver.scene import JointMap, build_robot_model
    model = build_robot_model(embodiment)
    joint_map = JointMap.from_model(model, embodiment)
    slot = {int(i): k for k, i in enumerate(joint_map.arm_index)}
    arms = {}
    for arm in embodiment.arms:
        sel = [slot[i] for i in embodiment.arm_indices(arm)]
        arms[arm] = ArmKinematics(model, embodiment, arm, joint_qpos=joint_map.arm_qpos[sel],
                                  joint_dof=joint_map.arm_dof[sel])
    return arms
