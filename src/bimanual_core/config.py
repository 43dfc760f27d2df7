"""Load the stack's configuration: `config/<embodiment>.yaml` and `config/stack.yaml`.

These files are the single source of truth for joint names, limits, cameras, topics and rates.
No ROS imports here, so the algorithms that need the embodiment stay testable without ROS.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PACKAGE_NAME = "bimanual_vla"
CONFIG_DIR_ENV = "BIMANUAL_VLA_CONFIG_DIR"


class ConfigError(ValueError):
    """A configuration file is missing or inconsistent."""


def config_dir() -> Path:
    """Where `config/` lives: $BIMANUAL_VLA_CONFIG_DIR, the source checkout, or the ament share."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override)
    checkout = Path(__file__).resolve().parents[2] / "config"
    if checkout.is_dir():
        return checkout
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE_NAME)) / "config"
    except (ImportError, LookupError) as exc:
        raise ConfigError(
            f"cannot find the {PACKAGE_NAME} config directory; set {CONFIG_DIR_ENV}") from exc


def runtime_environment(env: "dict[str, str] | os._Environ[str]") -> None:
    """Fill in the environment every process of the stack runs with (existing values win).

    Discovery stays on this host, Fast DDS uses the project's shared-memory transport profile
    (camera images drop frames with the default transports on a loaded machine), and MuJoCo
    renders headless.
    """
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(config_dir() / "fastdds_profile.xml"))
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", env["MUJOCO_GL"])


def repo_root() -> Path:
    """The directory holding config/ (the checkout root, or the ament share directory)."""
    return config_dir().parent


def resolve_checkpoint(name_or_path: str) -> str:
    """A model checkpoint directory: a path, or the name of one shipped in `models/`
    (`default` is the demo's learned policy)."""
    if not name_or_path:
        raise ConfigError("no checkpoint given (a directory, or a name in models/)")
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return str(path.resolve())
    shipped = repo_root() / "models" / name_or_path
    if (shipped / "config.json").is_file():
        return str(shipped)
    names = sorted(p.name for p in (repo_root() / "models").glob("*") if p.is_dir())
    raise ConfigError(f"no checkpoint {name_or_path!r}: not a directory with a config.json, nor "
                      f"a model in {repo_root() / 'models'} ({', '.join(names) or 'none'})")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open() as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a mapping")
    return data


@dataclass(frozen=True)
class JointSpec:
    name: str
    group: str
    kind: str            # "arm" or "gripper"
    lower: float
    upper: float
    velocity: float
    acceleration: float
    effort: float


@dataclass(frozen=True)
class CameraSpec:
    name: str
    image_topic: str
    info_topic: str
    frame_id: str
    sdk_name: str = ""

    @property
    def depth_topic(self) -> str:
        return f"/{self.name}/depth/image_raw"

    @property
    def segmentation_topic(self) -> str:
        return f"/{self.name}/segmentation"

    @property
    def pose_topic(self) -> str:
        """geometry_msgs/PoseStamped of the camera's optical frame in the world (simulation)."""
        return f"/{self.name}/pose"


@dataclass(frozen=True)
class Embodiment:
    """One robot's contract: action layout, limits, cameras, driver topics."""

    name: str
    control_rate_hz: float
    chunk_horizon: int
    joints: tuple[JointSpec, ...]
    home: np.ndarray
    arms: dict[str, dict[str, str]]
    cameras: dict[str, CameraSpec]
    driver: dict[str, Any]
    real_driver: dict[str, Any] = field(default_factory=dict)
    simulation: dict[str, Any] = field(default_factory=dict)

    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def action_dim(self) -> int:
        return len(self.joints)

    @property
    def control_period(self) -> float:
        return 1.0 / self.control_rate_hz

    @cached_property
    def lower(self) -> np.ndarray:
        return np.array([j.lower for j in self.joints])

    @cached_property
    def upper(self) -> np.ndarray:
        return np.array([j.upper for j in self.joints])

    @cached_property
    def max_velocity(self) -> np.ndarray:
        return np.array([j.velocity for j in self.joints])

    @cached_property
    def max_acceleration(self) -> np.ndarray:
        return np.array([j.acceleration for j in self.joints])

    @cached_property
    def gripper_indices(self) -> list[int]:
        return [i for i, j in enumerate(self.joints) if j.kind == "gripper"]

    def arm_indices(self, arm: str) -> list[int]:
        """Indices of an arm's joints (gripper excluded) in the action vector."""
        return [i for i, j in enumerate(self.joints) if j.group == arm and j.kind == "arm"]

    def gripper_index(self, arm: str) -> int:
        return self.joint_names.index(self.arms[arm]["gripper"])

    def camera(self, name: str) -> CameraSpec:
        try:
            return self.cameras[name]
        except KeyError:
            raise ConfigError(
                f"unknown camera {name!r} for {self.name}; known: {sorted(self.cameras)}") from None


def load_embodiment(name_or_path: str | os.PathLike = "aloha2") -> Embodiment:
    """Load `config/<name>.yaml` (or a YAML path) and check it is self-consistent."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = config_dir() / f"{name_or_path}.yaml"
    data = _read_yaml(path)
    try:
        joints = tuple(JointSpec(**j) for j in data["joints"])
        cameras = {n: CameraSpec(name=n, **c) for n, c in data["cameras"].items()}
        emb = Embodiment(
            name=data["name"],
            control_rate_hz=float(data["control_rate_hz"]),
            chunk_horizon=int(data["chunk_horizon"]),
            joints=joints,
            home=np.asarray(data["home"], dtype=float),
            arms=data["arms"],
            cameras=cameras,
            driver=data["driver"],
            real_driver=data.get("real_driver", {}),
            simulation=data.get("simulation", {}),
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: malformed embodiment description: {exc}") from exc
    if emb.home.shape != (emb.action_dim,):
        raise ConfigError(f"{path}: home has {emb.home.size} values, expected {emb.action_dim}")
    if np.any(emb.lower >= emb.upper):
        raise ConfigError(f"{path}: a joint has lower >= upper")
    if np.any(emb.home < emb.lower) or np.any(emb.home > emb.upper):
        raise ConfigError(f"{path}: home pose outside the joint limits")
    if len(set(emb.joint_names)) != emb.action_dim:
        raise ConfigError(f"{path}: duplicate joint names")
    return emb


def load_tasks(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """`config/tasks.yaml`: `colours` and `tasks` (scenes, instructions, success criteria)."""
    path = Path(path) if path else config_dir() / "tasks.yaml"
    data = _read_yaml(path)
    if "tasks" not in data or "colours" not in data:
        raise ConfigError(f"{path} must hold `colours` and `tasks`")
    return data


@dataclass(frozen=True)
class NodeSpec:
    name: str
    executable: str
    parameters: dict[str, Any]
    when: str = "always"       # "always", "sim" (only with the simulator), "real", or
                               # "real:<interface>" (the real robot whose real_driver.interface it is)


@dataclass(frozen=True)
class StackConfig:
    embodiment: str
    use_sim_time: bool
    interfaces: dict[str, str]
    nodes: tuple[NodeSpec, ...]

    def node(self, name: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.name == name:
                return spec
        raise ConfigError(f"no node named {name!r} in the stack config")

    def selected_nodes(self, sim: bool = True, real_interface: str | None = None) -> list[NodeSpec]:
        """The nodes to run: with the simulator, or with the real robot whose driver interface
        (the embodiment's real_driver.interface) is `real_interface`."""
        wanted = {"always", "sim"} if sim else {"always", "real", f"real:{real_interface}"}
        return [n for n in self.nodes if n.when in wanted]


def load_stack(path: str | os.PathLike | None = None) -> StackConfig:
    path = Path(path) if path else config_dir() / "stack.yaml"
    data = _read_yaml(path)
    try:
        nodes = tuple(NodeSpec(name=n["name"], executable=n["executable"],
                               parameters=dict(n.get("parameters") or {}),
                               when=n.get("when", "always")) for n in data["nodes"])
        return StackConfig(embodiment=data["embodiment"], use_sim_time=bool(data["use_sim_time"]),
                           interfaces=dict(data["interfaces"]), nodes=nodes)
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: malformed stack config: {exc}") from exc
