"""Zero-shot control from embodied reasoning: locate, grasp by IK, timed joint plan (no ROS).

The Gemini Robotics paper's zero-shot mode has the ER model write code against perception and
control APIs. Here that code is fixed: the instruction is parsed (pick / place / handover), the
objects are located through an injected `locate(label)` (the node wires it to the ER service,
tests to ground truth), and a grasp plan is built from inverse kinematics: above the object,
straight down, close, straight up, then carry or hand over. Moves are minimum-jerk inside the
embodiment's velocity and acceleration limits, sampled at the control rate.

The whole plan is one (T, D) array of joint targets on a timeline that starts at the stamp of the
first observation `infer` sees; `infer` returns the rows from that observation's time on, so a
chunk lines up with the moment its observation was taken whatever the inference delay.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from bimanual_core.config import Embodiment
from bimanual_core.instructions import InstructionError, TaskSpec, parse_instruction
from vla_backbone_node.kinematics import ArmKinematics, grasp_rotation, robot_kinematics
from vla_backbone_node.policy import Policy, PolicyError, PolicyObservation, PolicyState
from vla_backbone_node.trajectory import (limit_ratio, min_jerk, min_jerk_duration,
                                          sample_min_jerk, steps_for)

GRIPPER_OPEN = 1.0
GRIPPER_CLOSED = 0.0
DOWN = np.array([0.0, 0.0, -1.0])
UP = np.array([0.0, 0.0, 1.0])


@dataclass(frozen=True)
class ObjectLocation:
    """Where an object is, in the world frame, as embodied reasoning reports it."""

    position: np.ndarray             # (3,) centre of the object, m
    yaw: float | None = None         # rad about z of a face normal (boxes), when known
    size: np.ndarray | None = None   # (3,) full extents, m, when known


Locate = Callable[[str], "ObjectLocation | None"]


@dataclass(frozen=True)
class ZeroShotConfig:
    """Geometry and pacing of the plans (metres, seconds, radians)."""

    pregrasp_distance: float = 0.10      # back along the approach before descending
    lift_height: float = 0.15
    table_height: float = 0.0
    fingertip_clearance: float = 0.006   # fingertips above the table at the grasp
    default_object_size: float = 0.04    # when ER gives no size
    tilts: tuple[float, ...] = (0.0, math.radians(20), math.radians(40), math.radians(55))
    speed_scale: float = 0.5             # fraction of the joint velocity/acceleration limits
    cartesian_speed: float = 0.15        # m/s peak on straight-line moves
    cartesian_acceleration: float = 0.6  # m/s^2
    min_move_time: float = 0.5
    gripper_time: float = 0.4            # to open or close
    settle_time: float = 0.3             # after closing, before moving
    final_hold: float = 0.5
    place_clearance: float = 0.08        # above the release height before lowering
    release_drop: float = 0.015          # object bottom above the container rim when released
    handover_height: float = 0.22        # object centre height where the arms meet
    handover_approach: float = 0.10      # receiving arm's approach (and withdrawal) distance
    handover_depth: float = 0.005        # receiving site beyond the object centre, toward itself
    handover_retreat: float = 0.05       # the giver rises this much after letting go
    relocalise_threshold: float = 0.01   # re-plan the descent if the object moved more than this
    max_joint_jump: float = 0.3          # rad between samples of a straight-line move
    ik_solutions: int = 3                # IK solutions compared per key pose (nearest wins)
    ik_restarts: int = 2                 # random restarts per key pose, after the usual seeds


@dataclass(frozen=True)
class Step:
    """A named stretch of the plan, rows [start, end)."""

    name: str
    description: str
    start: int
    end: int


@dataclass(frozen=True)
class ArmPose:
    """A site pose and the arm configuration that reaches it."""

    position: np.ndarray
    rotation: np.ndarray
    q: np.ndarray


@dataclass(frozen=True)
class Grasp:
    arm: str
    pregrasp: ArmPose
    grasp: ArmPose
    lift: ArmPose
    object_offset: np.ndarray   # object centre in the site frame while held


@dataclass(frozen=True)
class Keyposes:
    """Everything IK decided for one task; the plan is timed from these."""

    spec: TaskSpec
    grasp: Grasp
    place_above: ArmPose | None = None
    place_release: ArmPose | None = None
    receiver: str | None = None
    present: ArmPose | None = None
    present_retreat: ArmPose | None = None
    receive_approach: ArmPose | None = None
    receive: ArmPose | None = None


def _arm_word(arm: str) -> str:
    return arm.replace("_", " ")


class PlanBuilder:
    """Appends timed segments to a joint plan sampled every control period."""

    def __init__(self, embodiment: Embodiment, rows: np.ndarray, steps: list[Step],
                 speed_scale: float):
        self.embodiment = embodiment
        self.dt = embodiment.control_period
        self.rows = [np.asarray(r, dtype=float) for r in rows]
        self.steps = list(steps)
        self.max_velocity = embodiment.max_velocity * speed_scale
        self.max_acceleration = embodiment.max_acceleration * speed_scale

    @property
    def q(self) -> np.ndarray:
        return self.rows[-1].copy()

    def _append(self, rows: np.ndarray, name: str, description: str) -> None:
        start = len(self.rows)
        self.rows.extend(rows)
        self.steps.append(Step(name, description, start, len(self.rows)))

    def move(self, target: np.ndarray, name: str, description: str,
             min_duration: float = 0.0) -> None:
        """Minimum-jerk joint-space move to `target`, as fast as the limits allow."""
        start = self.q
        duration = min_jerk_duration(target - start, self.max_velocity, self.max_acceleration,
                                     min_duration)
        self._append(sample_min_jerk(start, target, steps_for(duration, self.dt)), name,
                     description)

    def hold(self, duration: float, name: str, description: str) -> None:
        self._append(np.repeat(self.q[None], steps_for(duration, self.dt), axis=0), name,
                     description)

    def path(self, make_rows: Callable[[int], np.ndarray], steps: int, name: str,
             description: str) -> None:
        """Append `make_rows(n)` (n samples ending at rest), stretched until inside the limits."""
        for _ in range(8):
            rows = make_rows(steps)
            ratio = limit_ratio(self.rows[-1], rows, self.dt, self.max_velocity,
                                self.max_acceleration)
            if ratio <= 1.0:
                self._append(rows, name, description)
                return
            steps = int(math.ceil(steps * ratio * 1.05))
        raise PolicyError(f"cannot time the move '{description}' inside the joint limits")


class ZeroShotPolicy(Policy):
    """Pick, place and handover by ER localisation + IK, without any training."""

    name = "zero_shot"

    def __init__(self, embodiment: Embodiment, locate: Locate,
                 kinematics: dict[str, ArmKinematics] | None = None, horizon: int | None = None,
                 config: ZeroShotConfig | None = None):
        super().__init__(embodiment, horizon)
        if not callable(locate):
            raise TypeError("locate must be a callable label -> ObjectLocation | None")
        self.locate = locate
        self.kinematics = kinematics if kinematics is not None else robot_kinematics(embodiment)
        missing = set(embodiment.arms) - set(self.kinematics)
        if missing:
            raise ValueError(f"no kinematics for arms {sorted(missing)}")
        self.config = config or ZeroShotConfig()
        self._keyposes: Keyposes | None = None
        self._plan: np.ndarray | None = None
        self._steps: list[Step] = []
        self._t0 = 0.0
        self._relocalised = False
        self._state = PolicyState()

    # ------------------------------------------------------------------ Policy API

    def reset(self, instruction: str, task: str = "") -> None:
        self.stop()
        try:
            spec = parse_instruction(instruction, task)
            keyposes = self._prepare(spec, {})
        except (InstructionError, PolicyError) as exc:
            self._state = PolicyState(phase="failed", failed=True, message=str(exc))
            raise PolicyError(str(exc)) from None
        self._keyposes = keyposes
        self._state = PolicyState(phase="planning", description=self._summary(keyposes))

    def stop(self) -> None:
        self._keyposes = None
        self._plan = None
        self._steps = []
        self._relocalised = False
        self._state = PolicyState()

    def status(self) -> PolicyState:
        return self._state

    def infer(self, observation: PolicyObservation,
              conditioning: np.ndarray | None = None) -> np.ndarray:
        # An open-loop plan does not need the conditioning; it is only checked.
        obs, _ = self.check_inputs(observation, conditioning, self._keyposes is not None)
        if self._plan is None:
            self._t0 = obs.stamp
            try:
                self._plan, self._steps = self._compose(
                    PlanBuilder(self.embodiment, obs.joint_positions[None], [],
                                self.config.speed_scale), self._keyposes)
            except PolicyError as exc:
                self._state = PolicyState(phase="failed", failed=True, message=str(exc))
                raise
        index = max(0, int(round((obs.stamp - self._t0) / self.embodiment.control_period)))
        self._maybe_relocalise(index)
        plan = self._plan
        rows = plan[min(index, len(plan) - 1): index + self.horizon]
        chunk = np.vstack([rows, np.repeat(rows[-1:], self.horizon - len(rows), axis=0)])
        self._update_state(index)
        return chunk

    # ------------------------------------------------------------------ state

    def _summary(self, k: Keyposes) -> str:
        obj, arm = k.spec.object, _arm_word(k.grasp.arm)
        if k.spec.kind == "place":
            return f"ready to put the {obj} in the {k.spec.target} with the {arm}"
        if k.spec.kind == "handover":
            return f"ready to hand the {obj} from the {arm} to the {_arm_word(k.receiver)}"
        return f"ready to pick up the {obj} with the {arm}"

    def _update_state(self, index: int) -> None:
        last = len(self._plan) - 1
        done = index + self.horizon > last
        step = next((s for s in self._steps if index < s.end), self._steps[-1])
        progress = 1.0 if done else index / max(last, 1)
        self._state = PolicyState(phase="done" if done else "executing", progress=progress,
                                  description=step.description, done=done)

    # ------------------------------------------------------------------ perception

    def _find(self, label: str) -> ObjectLocation:
        try:
            loc = self.locate(label)
        except Exception as exc:   # the locate backend (ER service, ...) failed: say so
            raise PolicyError(f"could not locate the {label}: {exc}") from exc
        if loc is None:
            raise PolicyError(f"cannot find the {label} in the scene")
        pos = np.asarray(loc.position, dtype=float)
        if pos.shape != (3,) or not np.all(np.isfinite(pos)):
            raise PolicyError(f"the location of the {label} is not a finite 3D point: {pos}")
        size = None if loc.size is None else np.asarray(loc.size, dtype=float)
        if size is not None and (size.shape != (3,) or not np.all(np.isfinite(size))
                                 or np.any(size <= 0)):
            size = None
        yaw = loc.yaw if loc.yaw is not None and math.isfinite(loc.yaw) else None
        return ObjectLocation(pos, yaw, size)

    def _maybe_relocalise(self, index: int) -> None:
        """Once, just before the descent is sent: re-plan the grasp if the object moved."""
        if self._relocalised:
            return
        descent = next(s for s in self._steps if s.name == "descend")
        if index + self.horizon <= descent.start:
            return
        self._relocalised = True
        k = self._keyposes
        try:
            loc = self._find(k.spec.object)
        except PolicyError:
            return          # not visible now (e.g. under the gripper): keep the plan
        held = k.grasp.grasp
        centre = held.position + held.rotation @ k.grasp.object_offset
        if np.linalg.norm(loc.position - centre) <= self.config.relocalise_threshold:
            return
        keep = self._plan[:descent.start]
        steps = [s for s in self._steps if s.end <= descent.start]
        try:
            keyposes = self._prepare(replace(k.spec, arm=k.grasp.arm), {k.spec.object: loc})
            plan, new_steps = self._compose(
                PlanBuilder(self.embodiment, keep, steps, self.config.speed_scale), keyposes)
        except PolicyError:
            return          # the new place is out of reach: carry on with the old plan
        self._keyposes, self._plan, self._steps = keyposes, plan, new_steps

    # ------------------------------------------------------------------ IK keyposes

    def _nearest_arm(self, position: np.ndarray, exclude: str | None = None) -> str:
        arms = [a for a in self.embodiment.arms if a != exclude]
        return min(arms, key=lambda a: np.linalg.norm(
            (position - self.kinematics[a].base_position)[:2]))

    def _prepare(self, spec: TaskSpec, known: dict[str, ObjectLocation]) -> Keyposes:
        """Locate what the task needs and solve IK for its key poses (PolicyError if not)."""
        obj = known.get(spec.object) or self._find(spec.object)
        if spec.kind == "handover":
            if len(self.embodiment.arms) < 2:
                raise PolicyError("a handover needs two arms")
            receiver = spec.target
            giver = spec.arm or (self._nearest_arm(obj.position, exclude=receiver))
            receiver = receiver or next(a for a in self.embodiment.arms if a != giver)
            if receiver not in self.embodiment.arms or giver == receiver:
                raise PolicyError(f"cannot hand over from the {_arm_word(giver)} to the "
                                  f"{_arm_word(receiver)}")
            grasp = self._plan_grasp(giver, spec.object, obj)
            return self._plan_handover(spec, grasp, receiver)
        arm = spec.arm or self._nearest_arm(obj.position)
        grasp = self._plan_grasp(arm, spec.object, obj)
        if spec.kind == "place":
            container = known.get(spec.target) or self._find(spec.target)
            above, release = self._plan_release(grasp, obj, container, spec)
            return Keyposes(spec, grasp, place_above=above, place_release=release)
        return Keyposes(spec, grasp)

    def _solve(self, arm: str, position, rotation, seed=None) -> ArmPose | None:
        res = self.kinematics[arm].solve(position, rotation, seed,
                                         restarts=self.config.ik_restarts,
                                         solutions=self.config.ik_solutions)
        return ArmPose(np.asarray(position, float), rotation, res.q) if res.success else None

    def _orientations(self, arm: str, position: np.ndarray, closing_yaws,
                      tilts: tuple[float, ...] | None = None) -> list[list[np.ndarray]]:
        """Grasp rotations grouped by tilt, upright first. The approach tilts away from the arm's
        base about the closing axis, so the fingers stay parallel to the faces they close on."""
        outward = position - self.kinematics[arm].base_position
        groups = []
        for tilt in self.config.tilts if tilts is None else tilts:
            group = []
            for yaw in closing_yaws:
                closing = np.array([math.cos(yaw), math.sin(yaw), 0.0])
                side = np.cross(UP, closing)
                if side @ outward < 0:
                    side = -side
                group.append(grasp_rotation(math.cos(tilt) * DOWN + math.sin(tilt) * side,
                                            closing))
            groups.append(group)
        return groups

    def _choose(self, arm: str, groups: list[list[np.ndarray]],
                sites_for: Callable[[np.ndarray], list[np.ndarray]],
                seed: np.ndarray) -> list[ArmPose] | None:
        """IK of the sites `sites_for(R)` in turn (each seeded from the previous), for the
        rotations of the first group where all are reachable; of those, the one whose first
        configuration is nearest `seed` (the least motion to get there)."""
        for group in groups:
            best, best_cost = None, math.inf
            for rotation in group:
                poses, q = [], seed
                for site in sites_for(rotation):
                    pose = self._solve(arm, site, rotation, q)
                    if pose is None:
                        break
                    poses.append(pose)
                    q = pose.q
                else:
                    cost = float(np.sum(np.abs(poses[0].q - seed)))
                    if cost < best_cost:
                        best, best_cost = poses, cost
            if best is not None:
                return best
        return None

    def _plan_grasp(self, arm: str, label: str, obj: ObjectLocation) -> Grasp:
        """Pre-grasp back along the approach, grasp at the object's centre height (fingertips
        kept off the table), lift straight up."""
        cfg = self.config
        kin = self.kinematics[arm]
        if obj.yaw is not None:
            yaws = [obj.yaw + k * math.pi / 2 for k in range(4)]
        else:   # unknown orientation: close across the line from the arm's base
            heading = math.atan2(*(obj.position - kin.base_position)[1::-1])
            yaws = [heading + math.pi / 2, heading - math.pi / 2, heading, heading + math.pi]

        def grasp_point(rotation: np.ndarray) -> np.ndarray:
            tip_drop = kin.tip_reach * -rotation[2, 0]        # approach . down
            z = max(obj.position[2], cfg.table_height + cfg.fingertip_clearance + tip_drop)
            return np.array([obj.position[0], obj.position[1], z])

        def sites(rotation: np.ndarray) -> list[np.ndarray]:
            at = grasp_point(rotation)
            return [at - cfg.pregrasp_distance * rotation[:, 0], at, at + cfg.lift_height * UP]

        poses = self._choose(arm, self._orientations(arm, obj.position, yaws), sites, kin.home)
        if poses is None:
            raise PolicyError(f"the {label} at {np.round(obj.position, 3).tolist()} is out of "
                              f"reach of the {_arm_word(arm)}")
        pre, grip, lift = poses
        return Grasp(arm, pre, grip, lift, grip.rotation.T @ (obj.position - grip.position))

    def _held_yaws(self, grasp: Grasp) -> list[float]:
        """Closing-axis yaws that keep the held object's orientation, then turned by 90 deg."""
        closing = grasp.grasp.rotation[:, 1]
        yaw = math.atan2(closing[1], closing[0])
        return [yaw, yaw + math.pi, yaw + math.pi / 2, yaw - math.pi / 2]

    def _plan_release(self, grasp: Grasp, obj: ObjectLocation, container: ObjectLocation,
                      spec: TaskSpec) -> tuple[ArmPose, ArmPose]:
        cfg = self.config
        obj_h = obj.size[2] if obj.size is not None else cfg.default_object_size
        cont_h = container.size[2] if container.size is not None else cfg.default_object_size
        centre = container.position.copy()
        centre[2] += cont_h / 2 + cfg.release_drop + obj_h / 2
        poses = self._choose(
            grasp.arm, self._orientations(grasp.arm, centre, self._held_yaws(grasp)),
            lambda r: [centre - r @ grasp.object_offset + cfg.place_clearance * UP,
                       centre - r @ grasp.object_offset], grasp.lift.q)
        if poses is None:
            raise PolicyError(f"the {spec.target} is out of reach of the {_arm_word(grasp.arm)}")
        return poses[0], poses[1]

    def _plan_handover(self, spec: TaskSpec, grasp: Grasp, receiver: str) -> Keyposes:
        """The giver holds the object upright between the arms, its fingers across the
        receiver's approach; the receiver comes in level and closes vertically between them."""
        cfg = self.config
        giver_base = self.kinematics[grasp.arm].base_position
        receiver_base = self.kinematics[receiver].base_position
        meet = (giver_base + receiver_base) / 2
        meet[2] = cfg.handover_height
        toward_giver = giver_base - receiver_base
        toward_giver[2] = 0.0
        toward_giver /= np.linalg.norm(toward_giver)
        across = math.atan2(toward_giver[0], -toward_giver[1])   # yaw of UP x toward_giver
        # Upright only: the receiver's fingers need the object's top and bottom free.
        upright = self._orientations(grasp.arm, meet, [across, across + math.pi], tilts=(0.0,))
        present = self._choose(
            grasp.arm, upright, lambda r: [meet - r @ grasp.object_offset,
                                           meet - r @ grasp.object_offset
                                           + cfg.handover_retreat * UP], grasp.lift.q)
        if present is None:
            raise PolicyError(f"the {_arm_word(grasp.arm)} cannot present the {spec.object} "
                              "for a handover")
        rotation = grasp_rotation(toward_giver, UP)
        at = meet - cfg.handover_depth * toward_giver
        receive = self._choose(
            receiver, [[rotation]], lambda r: [at - cfg.handover_approach * toward_giver, at],
            self.kinematics[receiver].home)
        if receive is None:
            raise PolicyError(f"the {_arm_word(receiver)} cannot reach the handover point")
        return Keyposes(spec, grasp, receiver=receiver, present=present[0],
                        present_retreat=present[1], receive_approach=receive[0],
                        receive=receive[1])

    # ------------------------------------------------------------------ timing

    def _with(self, q: np.ndarray, arm: str, pose: ArmPose | None = None,
              gripper: float | None = None) -> np.ndarray:
        q = q.copy()
        if pose is not None:
            q[self.kinematics[arm].indices] = pose.q
        if gripper is not None:
            q[self.embodiment.gripper_index(arm)] = gripper
        return q

    def _straight(self, b: PlanBuilder, arm: str, target: ArmPose, name: str,
                  description: str) -> None:
        """Straight-line site motion to `target` (minimum-jerk along the line, IK per sample)."""
        cfg = self.config
        kin = self.kinematics[arm]
        start_q = b.q
        start = kin.forward(start_q[kin.indices]).position
        distance = float(np.linalg.norm(target.position - start))
        duration = min_jerk_duration([distance], [cfg.cartesian_speed],
                                     [cfg.cartesian_acceleration], cfg.min_move_time)

        def rows(n: int) -> np.ndarray:
            out = np.repeat(start_q[None], n, axis=0)
            q = start_q[kin.indices]
            for i, s in enumerate(min_jerk(np.arange(1, n + 1) / n)):
                res = kin.solve(start + s * (target.position - start), target.rotation, q,
                                restarts=2, position_tolerance=1e-5,
                                orientation_tolerance=1e-4, posture=q)
                if not res.success or np.max(np.abs(res.q - q)) > cfg.max_joint_jump:
                    raise PolicyError(f"the straight move '{description}' leaves the "
                                      f"{_arm_word(arm)}'s reach")
                q = res.q
                out[i, kin.indices] = q
            return out

        b.path(rows, steps_for(duration, b.dt), name, description)

    def _compose(self, b: PlanBuilder, k: Keyposes) -> tuple[np.ndarray, list[Step]]:
        cfg = self.config
        g, obj = k.grasp, k.spec.object
        arm, hand = g.arm, _arm_word(g.arm)
        b.move(self._with(b.q, arm, g.pregrasp, GRIPPER_OPEN), "approach",
               f"moving the {hand} above the {obj}", cfg.min_move_time)
        self._straight(b, arm, g.grasp, "descend", f"descending to grasp the {obj}")
        closing = f"closing the {hand} gripper on the {obj}"
        b.move(self._with(b.q, arm, gripper=GRIPPER_CLOSED), "grasp", closing, cfg.gripper_time)
        b.hold(cfg.settle_time, "grasp", closing)
        self._straight(b, arm, g.lift, "lift", f"lifting the {obj}")
        final = f"holding the {obj} up"
        if k.spec.kind == "place":
            target = k.spec.target
            b.move(self._with(b.q, arm, k.place_above), "carry",
                   f"carrying the {obj} above the {target}", cfg.min_move_time)
            self._straight(b, arm, k.place_release, "lower",
                           f"lowering the {obj} into the {target}")
            b.move(self._with(b.q, arm, gripper=GRIPPER_OPEN), "release",
                   f"releasing the {obj}", cfg.gripper_time)
            self._straight(b, arm, k.place_above, "retreat", f"retreating from the {target}")
            final = f"done: the {obj} is in the {target}"
        elif k.spec.kind == "handover":
            receiver = _arm_word(k.receiver)
            q = self._with(b.q, arm, k.present)
            b.move(self._with(q, k.receiver, k.receive_approach, GRIPPER_OPEN), "present",
                   f"presenting the {obj} to the {receiver}", cfg.min_move_time)
            self._straight(b, k.receiver, k.receive, "reach",
                           f"the {receiver} reaching for the {obj}")
            closing = f"the {receiver} closing on the {obj}"
            b.move(self._with(b.q, k.receiver, gripper=GRIPPER_CLOSED), "regrasp", closing,
                   cfg.gripper_time)
            b.hold(cfg.settle_time, "regrasp", closing)
            b.move(self._with(b.q, arm, gripper=GRIPPER_OPEN), "release",
                   f"the {hand} releasing the {obj}", cfg.gripper_time)
            self._straight(b, arm, k.present_retreat, "retreat", f"the {hand} moving away")
            self._straight(b, k.receiver, k.receive_approach, "take",
                           f"the {receiver} taking the {obj}")
            final = f"the {receiver} holding the {obj}"
        b.hold(cfg.final_hold, "hold", final)
        return np.array(b.rows), b.steps

