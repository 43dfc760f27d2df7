"""The interface every backbone policy implements, and the registry that builds them (no ROS).

A policy turns the latest observation (+ the decoder's not-yet-executed actions) into a chunk of
absolute joint targets at the embodiment's control rate: row h is the target for
`observation.stamp + h * control_period`. The zero-shot ER planner, a learned VLA and a client of
a remote policy server all sit behind this one interface, so the ROS node never knows which runs.
"""
from __future__ import annotations

import abc
import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from bimanual_core.config import Embodiment

# PolicyStatus.phase values.
PHASES = ("idle", "planning", "executing", "done", "failed")


class PolicyError(RuntimeError):
    """The policy cannot do what was asked (bad instruction, object not found, unreachable...)."""


class ObservationError(PolicyError, ValueError):
    """An observation or conditioning input is malformed (wrong shape, NaN, bad image)."""


@dataclass(frozen=True)
class PolicyObservation:
    """What a policy sees at one instant."""

    stamp: float                    # s, the time the observation was taken (ROS/sim clock)
    joint_positions: np.ndarray     # (D,) in the embodiment's action order
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> RGB uint8 (H, W, 3)
    instruction: str = ""


@dataclass(frozen=True)
class PolicyState:
    """What the policy is doing, for PolicyStatus (phase is one of PHASES)."""

    phase: str = "idle"
    progress: float = 0.0           # 0..1 through the current plan or episode
    description: str = ""
    done: bool = False
    failed: bool = False
    message: str = ""

    def __post_init__(self):
        if self.phase not in PHASES:
            raise ValueError(f"unknown policy phase {self.phase!r}; known: {', '.join(PHASES)}")


class Policy(abc.ABC):
    """Base class: subclasses set `name` and implement reset / infer / status."""

    name: str = ""

    def __init__(self, embodiment: Embodiment, horizon: int | None = None):
        horizon = embodiment.chunk_horizon if horizon is None else int(horizon)
        if horizon < 1:
            raise ValueError(f"the chunk horizon must be >= 1, got {horizon}")
        self.embodiment = embodiment
        self.horizon = horizon

    @abc.abstractmethod
    def reset(self, instruction: str, task: str = "") -> None:
        """Start an episode for `instruction`; raise PolicyError saying why it cannot."""

    @abc.abstractmethod
    def infer(self, observation: PolicyObservation,
              conditioning: np.ndarray | None = None) -> np.ndarray:
        """(H, D) absolute joint targets, row 0 for `observation.stamp`.

        `conditioning` holds the (K, D) actions of the running chunk not executed yet (for
        real-time chunking); policies that cannot use it ignore it.
        """

    @abc.abstractmethod
    def stop(self) -> None:
        """End the current episode (if any); status() is idle afterwards."""

    @abc.abstractmethod
    def status(self) -> PolicyState:
        """The current state, cheap to call."""

    def close(self) -> None:
        """Release resources (connections, models). The default has none."""

    # Input checks shared by all policies, so that every policy rejects the same bad inputs.

    def check_observation(self, obs: PolicyObservation) -> PolicyObservation:
        """Return `obs` with a float joint vector; raise ObservationError naming the problem."""
        if not isinstance(obs, PolicyObservation):
            raise ObservationError(f"expected a PolicyObservation, got {type(obs).__name__}")
        if not math.isfinite(obs.stamp):
            raise ObservationError(f"observation stamp is not finite: {obs.stamp}")
        q = np.asarray(obs.joint_positions, dtype=float)
        if q.shape != (self.embodiment.action_dim,):
            raise ObservationError(f"joint_positions has shape {q.shape}, expected "
                                   f"({self.embodiment.action_dim},)")
        if not np.all(np.isfinite(q)):
            raise ObservationError("joint_positions contains NaN or inf")
        for camera, image in obs.images.items():
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                    and image.shape[2] == 3):
                raise ObservationError(f"image {camera!r} must be RGB uint8 (H, W, 3), got "
                                       f"{getattr(image, 'dtype', type(image))} "
                                       f"{getattr(image, 'shape', '')}")
        return PolicyObservation(obs.stamp, q, obs.images, obs.instruction)

    def check_inputs(self, observation: PolicyObservation, conditioning, running: bool
                     ) -> tuple[PolicyObservation, np.ndarray | None]:
        """check_observation + check_conditioning for `infer`, which needs a running episode."""
        obs = self.check_observation(observation)
        checked = self.check_conditioning(conditioning)
        if not running:
            raise PolicyError("no episode is running: reset the policy with an instruction first")
        return obs, checked

    def check_conditioning(self, conditioning) -> np.ndarray | None:
        """None, or a finite (K, D) array."""
        if conditioning is None:
            return None
        c = np.asarray(conditioning, dtype=float)
        if c.ndim != 2 or c.shape[1] != self.embodiment.action_dim:
            raise ObservationError(f"conditioning has shape {c.shape}, expected "
                                   f"(K, {self.embodiment.action_dim})")
        if not np.all(np.isfinite(c)):
            raise ObservationError("conditioning contains NaN or inf")
        return c


# ----------------------------------------------------------------------------- registry

PolicyFactory = Callable[..., Policy]

# Built-in policies by "module:attribute", imported only when asked for, so that a heavy
# dependency of one policy (a model runtime, a client library) never loads for another.
_BUILTIN: dict[str, str] = {
    "zero_shot": "vla_backbone_node.zero_shot:ZeroShotPolicy",
    "learned": "vla_model.policy:LearnedPolicy",
    "remote": "vla_backbone_node.remote:RemotePolicy",
}
_REGISTERED: dict[str, PolicyFactory] = {}


def register_policy(name: str, factory: PolicyFactory) -> None:
    """Make `make_policy(name, ...)` call `factory(embodiment, **deps)`."""
    if not name or not callable(factory):
        raise ValueError("register_policy needs a name and a callable factory")
    _REGISTERED[name] = factory


def available_policies() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def make_policy(name: str, embodiment: Embodiment, **deps: Any) -> Policy:
    """Build the policy registered as `name`.

    `deps` are passed to its factory: `horizon` (every policy) and the policy's own
    collaborators (the zero-shot policy's `locate`, a remote policy's address, ...).
    """
    factory = _REGISTERED.get(name)
    if factory is None:
        target = _BUILTIN.get(name)
        if target is None:
            raise PolicyError(
                f"unknown policy {name!r}; available: {', '.join(available_policies())}")
        module, attr = target.split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(embodiment, **deps)
