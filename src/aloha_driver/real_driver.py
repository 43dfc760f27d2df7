"""The real robots' driver contracts and the bridge logic between them and the stack. No ROS here.

The stack speaks one contract for every embodiment (`driver:` in config/<embodiment>.yaml:
position commands or a joint trajectory in the embodiment's joint order, grippers normalised
0 = closed .. 1 = open, one merged /joint_states). Real robots speak their own: the ALOHA 2
followers run Interbotix's xs_sdk (a JointGroupCommand for the arm group, a JointSingleCommand
for the gripper motor in radians, joint states per arm), the bi-arm Franka runs franka_ros2
(one joint_trajectory_controller per arm, franka_gripper Grasp / Move actions, finger joints in
metres). `real_driver:` in the embodiment file describes that contract; this module reads it,
checks it against the embodiment (every joint maps to a real one), and does the conversions the
bridge nodes need, so the nodes only move messages.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bimanual_core.config import ConfigError, Embodiment

INTERFACES = ("xs_sdk", "franka_ros2")


def join_topic(namespace: str, relative: str) -> str:
    """`/follower_left` + `commands/joint_group` -> `/follower_left/commands/joint_group`."""
    if relative.startswith("/"):
        return relative
    return f"{namespace.rstrip('/')}/{relative}" if namespace.strip("/") else f"/{relative}"


@dataclass(frozen=True)
class LinearScale:
    """The stack's normalised gripper (0 closed, 1 open) <-> a robot unit (radians, metres)."""

    closed: float
    open: float

    def __post_init__(self):
        if not (math.isfinite(self.closed) and math.isfinite(self.open)) or self.closed == self.open:
            raise ConfigError(f"gripper scale needs two different finite values, got "
                              f"closed={self.closed}, open={self.open}")

    @property
    def span(self) -> float:
        return self.open - self.closed

    def to_robot(self, normalised: float) -> float:
        return self.closed + float(normalised) * self.span

    def to_normalised(self, raw: float) -> float:
        return (float(raw) - self.closed) / self.span

    def rate_to_normalised(self, raw_rate: float) -> float:
        """A velocity (or any difference) in robot units -> normalised units."""
        return float(raw_rate) / self.span


def _read(emb: Embodiment, interface: str, *keys: str) -> tuple[dict, dict[str, str], dict[str, str]]:
    """The real_driver section (checked to be `interface`'s and to hold `keys` and a gripper),
    its joint map and its namespace per arm."""
    rd = emb.real_driver or {}
    if rd.get("interface") != interface:
        raise ConfigError(f"{emb.name}: real_driver.interface is {rd.get('interface')!r}, not "
                          f"{interface!r}; the {interface} bridge cannot drive this embodiment")
    missing = [k for k in (*keys, "gripper") if k not in rd]
    if missing:
        raise ConfigError(f"{emb.name}: real_driver lacks {', '.join(missing)}")
    return rd, _joint_map(rd, emb), _namespaces(rd, emb)


def _number(rd: dict, emb: Embodiment, key: str, positive: bool = True) -> float:
    try:
        value = float(rd[key])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{emb.name}: real_driver.{key} must be a number") from None
    if not math.isfinite(value) or (positive and value <= 0):
        raise ConfigError(f"{emb.name}: real_driver.{key} must be finite"
                          f"{' and > 0' if positive else ''}, got {value}")
    return value


def _joint_map(rd: dict, emb: Embodiment) -> dict[str, str]:
    """The embodiment joint -> real joint map; every embodiment joint must be in it."""
    jm = rd.get("joint_map")
    if not isinstance(jm, dict):
        raise ConfigError(f"{emb.name}: real_driver.joint_map must map every joint to a real one")
    missing = [n for n in emb.joint_names if n not in jm]
    unknown = [n for n in jm if n not in emb.joint_names]
    if missing or unknown:
        raise ConfigError(f"{emb.name}: real_driver.joint_map "
                          + (f"misses {missing}" if missing else "")
                          + ("; " if missing and unknown else "")
                          + (f"names joints the embodiment lacks: {unknown}" if unknown else ""))
    jm = {k: str(v) for k, v in jm.items()}
    for arm in emb.arms:
        real = [jm[j.name] for j in emb.joints if j.group == arm]
        if len(set(real)) != len(real):
            raise ConfigError(f"{emb.name}: real_driver.joint_map maps two of {arm}'s joints to "
                              f"the same real joint ({real})")
    return jm


def _namespaces(rd: dict, emb: Embodiment) -> dict[str, str]:
    ns = rd.get("namespaces") or {}
    missing = [a for a in emb.arms if a not in ns]
    if missing:
        raise ConfigError(f"{emb.name}: real_driver.namespaces lacks {missing}")
    return {arm: str(ns[arm]) for arm in emb.arms}


@dataclass(frozen=True)
class StateSource:
    """Which entries of one robot JointState topic fill which embodiment joints."""

    topic: str
    # real joint name -> (embodiment index, scale for grippers or None for arm joints)
    entries: dict[str, tuple[int, LinearScale | None]]


@dataclass(frozen=True)
class XsSdkArm:
    arm: str
    namespace: str
    state_topic: str
    group_topic: str
    single_topic: str
    group_indices: tuple[int, ...]   # embodiment indices in the arm group's joint order
    gripper_index: int
    gripper_joint: str               # the xs_sdk joint the gripper command goes to
    robot_info_service: str | None   # RobotInfo service to check the group against, or None


@dataclass(frozen=True)
class XsSdkContract:
    """ALOHA 2 through Interbotix xs_sdk, read from `real_driver:` (interface xs_sdk)."""

    embodiment: Embodiment
    arms: dict[str, XsSdkArm]
    group_name: str
    group_joints: tuple[str, ...]
    gripper_command: LinearScale
    gripper_state: LinearScale
    gripper_state_joint: str
    command_rate_hz: float
    state_timeout_s: float

    @classmethod
    def from_embodiment(cls, emb: Embodiment) -> "XsSdkContract":
        rd, jm, namespaces = _read(emb, "xs_sdk", "joint_states_topic", "joint_group_topic",
                                   "joint_single_topic", "arm_group", "arm_group_joints")
        group_joints = tuple(str(j) for j in rd["arm_group_joints"])
        g = rd["gripper"]
        try:
            command = LinearScale(float(g["command_closed"]), float(g["command_open"]))
            state = LinearScale(float(g["state_closed"]), float(g["state_open"]))
            state_joint = str(g["state_joint"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{emb.name}: real_driver.gripper needs command_closed, "
                              f"command_open, state_joint, state_closed, state_open ({exc})") from None
        arms = {}
        for arm, ns in namespaces.items():
            by_real = {jm[emb.joint_names[i]]: i for i in emb.arm_indices(arm)}
            if sorted(by_real) != sorted(group_joints) or len(by_real) != len(emb.arm_indices(arm)):
                raise ConfigError(
                    f"{emb.name}: {arm}'s joints map to {sorted(by_real)}, but the xs_sdk group "
                    f"{rd['arm_group']!r} has {list(group_joints)} (each exactly once)")
            gi = emb.gripper_index(arm)
            arms[arm] = XsSdkArm(
                arm=arm, namespace=ns,
                state_topic=join_topic(ns, rd["joint_states_topic"]),
                group_topic=join_topic(ns, rd["joint_group_topic"]),
                single_topic=join_topic(ns, rd["joint_single_topic"]),
                group_indices=tuple(by_real[j] for j in group_joints),
                gripper_index=gi, gripper_joint=jm[emb.joint_names[gi]],
                robot_info_service=join_topic(ns, rd["robot_info_service"])
                if rd.get("robot_info_service") else None)
        contract = cls(embodiment=emb, arms=arms, group_name=str(rd["arm_group"]),
                       group_joints=group_joints, gripper_command=command, gripper_state=state,
                       gripper_state_joint=state_joint,
                       command_rate_hz=_number(rd, emb, "command_rate_hz"),
                       state_timeout_s=_number(rd, emb, "state_timeout_s"))
        _check_no_loop(emb, contract.state_sources())
        return contract

    def arm_command(self, arm: str, target: np.ndarray) -> tuple[list[float], float]:
        """The arm group's positions (group order, radians) and the gripper motor command (rad)
        for a target in the embodiment's order."""
        a = self.arms[arm]
        return ([float(target[i]) for i in a.group_indices],
                self.gripper_command.to_robot(target[a.gripper_index]))

    def group_mismatch(self, arm: str, reported_joints: Sequence[str]) -> str | None:
        """None when the arm's xs_sdk reports the group's joints in the configured order (the
        order JointGroupCommand.cmd is read in); else what differs."""
        if list(reported_joints) == list(self.group_joints):
            return None
        return (f"{self.arms[arm].namespace}'s xs_sdk group {self.group_name!r} has joints "
                f"{list(reported_joints)}, but real_driver.arm_group_joints says "
                f"{list(self.group_joints)}")

    def state_sources(self) -> list[StateSource]:
        """Each follower's joint_states: arm joints by name, the gripper from the finger joint."""
        sources = []
        for a in self.arms.values():
            entries: dict[str, tuple[int, LinearScale | None]] = {
                name: (i, None) for name, i in zip(self.group_joints, a.group_indices)}
            entries[self.gripper_state_joint] = (a.gripper_index, self.gripper_state)
            sources.append(StateSource(a.state_topic, entries))
        return sources


@dataclass(frozen=True)
class FrankaArm:
    arm: str
    namespace: str
    trajectory_topic: str
    arm_state_topic: str
    gripper_state_topic: str
    grasp_action: str
    move_action: str
    arm_indices: tuple[int, ...]     # embodiment indices of the arm joints, embodiment order
    real_joints: tuple[str, ...]     # the controller's joint names, same order
    gripper_index: int
    gripper_state_joint: str         # the finger joint read back


@dataclass(frozen=True)
class FrankaGripperGoals:
    close_below: float
    open_above: float
    open_width: float
    grasp_width: float
    epsilon_inner: float
    epsilon_outer: float
    speed: float
    force: float


@dataclass(frozen=True)
class FrankaContract:
    """The bi-arm Franka through franka_ros2, read from `real_driver:` (interface franka_ros2)."""

    embodiment: Embodiment
    arms: dict[str, FrankaArm]
    gripper_state: LinearScale
    gripper: FrankaGripperGoals
    time_from_start_s: float
    state_timeout_s: float

    @classmethod
    def from_embodiment(cls, emb: Embodiment) -> "FrankaContract":
        rd, jm, namespaces = _read(emb, "franka_ros2", "trajectory_topic",
                                   "arm_joint_states_topic", "gripper_namespace",
                                   "gripper_joint_states_topic")
        g = rd["gripper"]
        try:
            state = LinearScale(float(g["state_closed"]), float(g["state_open"]))
            goals = FrankaGripperGoals(
                close_below=float(g["close_below"]), open_above=float(g["open_above"]),
                open_width=float(g["open_width"]), grasp_width=float(g["grasp_width"]),
                epsilon_inner=float(g["grasp_epsilon_inner"]),
                epsilon_outer=float(g["grasp_epsilon_outer"]),
                speed=float(g["speed"]), force=float(g["force"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{emb.name}: real_driver.gripper is incomplete ({exc})") from None
        if not 0.0 <= goals.close_below < goals.open_above <= 1.0:
            raise ConfigError(f"{emb.name}: real_driver.gripper needs 0 <= close_below < "
                              f"open_above <= 1, got {goals.close_below}, {goals.open_above}")
        arms = {}
        for arm, ns in namespaces.items():
            idx = tuple(emb.arm_indices(arm))
            gi = emb.gripper_index(arm)
            gripper_ns = join_topic(ns, rd["gripper_namespace"])
            arms[arm] = FrankaArm(
                arm=arm, namespace=ns,
                trajectory_topic=join_topic(ns, rd["trajectory_topic"]),
                arm_state_topic=join_topic(ns, rd["arm_joint_states_topic"]),
                gripper_state_topic=join_topic(ns, rd["gripper_joint_states_topic"]),
                grasp_action=f"{gripper_ns}/grasp", move_action=f"{gripper_ns}/move",
                arm_indices=idx, real_joints=tuple(jm[emb.joint_names[i]] for i in idx),
                gripper_index=gi, gripper_state_joint=jm[emb.joint_names[gi]])
        contract = cls(embodiment=emb, arms=arms, gripper_state=state, gripper=goals,
                       time_from_start_s=_number(rd, emb, "time_from_start_s"),
                       state_timeout_s=_number(rd, emb, "state_timeout_s"))
        _check_no_loop(emb, contract.state_sources())
        return contract

    def state_sources(self) -> list[StateSource]:
        """Each arm's joint_state_broadcaster and each hand's franka_gripper joint states."""
        by_topic: dict[str, dict[str, tuple[int, LinearScale | None]]] = {}
        for a in self.arms.values():
            by_topic.setdefault(a.arm_state_topic, {}).update(
                {name: (i, None) for name, i in zip(a.real_joints, a.arm_indices)})
            by_topic.setdefault(a.gripper_state_topic, {})[a.gripper_state_joint] = (
                a.gripper_index, self.gripper_state)
        return [StateSource(t, e) for t, e in by_topic.items()]

    def arm_trajectory(self, arm: str, names: Sequence[str], rows: np.ndarray,
                       held: np.ndarray) -> np.ndarray | None:
        """One arm's positions (points x arm joints, controller order) from stack trajectory rows
        over embodiment joints `names`; joints of the arm it does not name keep `held`. None when
        the trajectory names none of the arm's joints."""
        a = self.arms[arm]
        col = {n: c for c, n in enumerate(names)}
        emb_names = self.embodiment.joint_names
        if not any(emb_names[i] in col for i in a.arm_indices):
            return None
        out = np.tile(np.asarray(held, dtype=float)[list(a.arm_indices)], (len(rows), 1))
        for k, i in enumerate(a.arm_indices):
            if emb_names[i] in col:
                out[:, k] = rows[:, col[emb_names[i]]]
        return out


def _check_no_loop(emb: Embodiment, sources: Iterable[StateSource]) -> None:
    """The bridge publishes driver.joint_states_topic; reading the robot there would feed it back."""
    ours = emb.driver.get("joint_states_topic")
    for s in sources:
        if s.topic == ours:
            raise ConfigError(f"{emb.name}: the robot's joint states topic {s.topic} is the one the "
                              "bridge publishes the merged state on; run the robot namespaced")


def load_contract(emb: Embodiment) -> XsSdkContract | FrankaContract:
    """The contract of the embodiment's real driver, by `real_driver.interface`."""
    interface = (emb.real_driver or {}).get("interface")
    if interface == "xs_sdk":
        return XsSdkContract.from_embodiment(emb)
    if interface == "franka_ros2":
        return FrankaContract.from_embodiment(emb)
    raise ConfigError(f"{emb.name}: unknown real_driver.interface {interface!r}; "
                      f"known: {', '.join(INTERFACES)}")


@dataclass
class StateMerger:
    """Merges the robot's joint state topics into one state in the embodiment's order.

    Grippers are converted to the normalised unit (position, velocity); efforts pass through.
    The merged state is `ready` once every joint has been heard and while every topic is fresh;
    until then `refusal` says why the bridge must not command.
    """

    dim: int
    sources: list[StateSource]
    joint_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.position = np.full(self.dim, np.nan)
        self.velocity = np.zeros(self.dim)
        self.effort = np.zeros(self.dim)
        self._seen = np.zeros(self.dim, dtype=bool)
        self._by_topic = {s.topic: s for s in self.sources}
        self.last_heard: dict[str, float] = {}
        covered = {i for s in self.sources for i, _ in s.entries.values()}
        if covered != set(range(self.dim)):
            raise ConfigError(f"the robot's joint states leave joints {sorted(set(range(self.dim)) - covered)} "
                              "of the embodiment unfilled")

    @property
    def topics(self) -> list[str]:
        return list(self._by_topic)

    def update(self, topic: str, names: Sequence[str], position: Sequence[float],
               velocity: Sequence[float], effort: Sequence[float], now: float) -> int:
        """Take one JointState from `topic`; returns how many embodiment joints it filled."""
        source = self._by_topic[topic]
        filled = 0
        for k, name in enumerate(names):
            entry = source.entries.get(name)
            if entry is None or k >= len(position) or not math.isfinite(position[k]):
                continue
            i, scale = entry
            p = float(position[k])
            v = float(velocity[k]) if k < len(velocity) else 0.0
            self.position[i] = scale.to_normalised(p) if scale else p
            self.velocity[i] = scale.rate_to_normalised(v) if scale else v
            self.effort[i] = float(effort[k]) if k < len(effort) else 0.0
            self._seen[i] = True
            filled += 1
        if filled:
            self.last_heard[topic] = now
        return filled

    @property
    def complete(self) -> bool:
        return bool(self._seen.all())

    def refusal(self, now: float, timeout_s: float) -> str | None:
        """None when commands may go to the robot; else the reason they may not."""
        if not self.complete:
            missing = [self.joint_names[i] if self.joint_names else str(i)
                       for i in np.flatnonzero(~self._seen)]
            return f"no joint state yet for {', '.join(missing)}"
        stale = [t for t in self.topics if now - self.last_heard.get(t, -math.inf) > timeout_s]
        if stale:
            return f"joint states older than {timeout_s} s on {', '.join(stale)}"
        return None


class GripperLatch:
    """Turns a stream of normalised gripper commands into discrete goals with hysteresis: "grasp"
    when the command falls below `close_below`, "open" when it rises above `open_above`, nothing
    while it stays on one side (the Franka Hand takes goals, not a position stream)."""

    def __init__(self, close_below: float, open_above: float):
        self.close_below, self.open_above = close_below, open_above
        self.state: str | None = None      # the last goal sent: None, "grasp" or "open"

    def update(self, command: float) -> str | None:
        if command < self.close_below and self.state != "grasp":
            self.state = "grasp"
            return "grasp"
        if command > self.open_above and self.state != "open":
            self.state = "open"
            return "open"
        return None


@dataclass(frozen=True)
class CameraSource:
    """One robot camera stream (sensor_msgs/CompressedImage + CameraInfo) -> a stack camera."""

    camera: str
    compressed_topic: str
    info_topic: str


def camera_sources(emb: Embodiment) -> tuple[list[CameraSource], float]:
    """The robot's compressed camera streams for the embodiment's cameras, and the decode rate cap.

    Every camera of the stack must have a source: a camera the robot lacks would leave the
    observation waiting for it."""
    rd = emb.real_driver or {}
    cams = rd.get("cameras") or {}
    missing = [c for c in emb.cameras if c not in cams]
    unknown = [c for c in cams if c not in emb.cameras]
    if missing or unknown:
        raise ConfigError(f"{emb.name}: real_driver.cameras must name a stream for each of "
                          f"{sorted(emb.cameras)} (missing {missing}, unknown {unknown})")
    try:
        sources = [CameraSource(c, str(cams[c]["compressed_topic"]), str(cams[c]["info_topic"]))
                   for c in emb.cameras]
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{emb.name}: real_driver.cameras entries need compressed_topic and "
                          f"info_topic ({exc})") from None
    return sources, _number(rd, emb, "camera_max_rate_hz")


class ImageDecodeError(ValueError):
    """A compressed image this bridge cannot decode (a depth stream, corrupt data)."""


def decode_compressed(fmt: str, data: bytes) -> np.ndarray:
    """A sensor_msgs/CompressedImage colour payload (JPEG or PNG, as image_transport's
    `compressed` plugin writes it, e.g. "rgb8; jpeg compressed bgr8") -> (H, W, 3) uint8 RGB."""
    import io

    from PIL import Image as PILImage
    if "compresseddepth" in fmt.lower().replace(" ", ""):
        raise ImageDecodeError(f"depth stream format {fmt!r} is not a colour image")
    try:
        with PILImage.open(io.BytesIO(bytes(data))) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:                      # PIL raises many types for bad data
        raise ImageDecodeError(f"cannot decode compressed image ({fmt!r}): {exc}") from None
