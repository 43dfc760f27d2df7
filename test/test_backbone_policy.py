"""The backbone policy interface: input checks every policy shares, and the registry."""
import numpy as np
import pytest

from bimanual_core.config import load_embodiment
from vla_backbone_node import policy as policy_module
from vla_backbone_node.policy import (ObservationError, Policy, PolicyError, PolicyObservation,
                                      PolicyState, available_policies, make_policy,
                                      register_policy)

EMB = load_embodiment("aloha2")


class HoldPolicy(Policy):
    """Repeats the observed joint positions: the smallest policy, for the interface tests."""

    name = "hold"

    def reset(self, instruction, task=""):
        self.instruction = instruction

    def infer(self, observation, conditioning=None):
        obs = self.check_observation(observation)
        self.check_conditioning(conditioning)
        return np.repeat(obs.joint_positions[None], self.horizon, axis=0)

    def stop(self):
        pass

    def status(self):
        return PolicyState()


def test_registry_builds_registered_and_builtin_policies(monkeypatch):
    monkeypatch.setattr(policy_module, "_REGISTERED", {})    # leave the registry as it was
    register_policy("hold", HoldPolicy)
    assert {"hold", "zero_shot"} <= set(available_policies())
    policy = make_policy("hold", EMB, horizon=7)
    chunk = policy.infer(PolicyObservation(1.0, EMB.home))
    assert chunk.shape == (7, EMB.action_dim)
    with pytest.raises(PolicyError, match="unknown policy 'nope'.*zero_shot"):
        make_policy("nope", EMB)
    zero_shot = make_policy("zero_shot", EMB, locate=lambda label: None)
    assert zero_shot.name == "zero_shot" and zero_shot.horizon == EMB.chunk_horizon


@pytest.mark.parametrize("obs,match", [
    (PolicyObservation(float("nan"), EMB.home), "stamp"),
    (PolicyObservation(0.0, np.zeros(13)), r"shape \(13,\)"),
    (PolicyObservation(0.0, np.full(14, np.nan)), "NaN"),
    (PolicyObservation(0.0, EMB.home, {"cam_high": np.zeros((4, 4), np.uint8)}), "cam_high"),
    (PolicyObservation(0.0, EMB.home, {"cam_low": np.zeros((4, 4, 3), np.float32)}), "cam_low"),
])
def test_malformed_observations_are_rejected(obs, match):
    with pytest.raises(ObservationError, match=match):
        HoldPolicy(EMB).infer(obs)


def test_conditioning_checks():
    policy = HoldPolicy(EMB)
    obs = PolicyObservation(0.0, EMB.home, {"cam_high": np.zeros((4, 4, 3), np.uint8)})
    assert policy.infer(obs, np.zeros((3, 14))).shape == (EMB.chunk_horizon, 14)
    with pytest.raises(ObservationError, match="conditioning"):
        policy.infer(obs, np.zeros((3, 7)))
    with pytest.raises(ObservationError, match="NaN"):
        policy.infer(obs, np.full((2, 14), np.nan))
    with pytest.raises(ValueError):
        HoldPolicy(EMB, horizon=0)
