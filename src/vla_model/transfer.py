"""Cross-embodiment transfer: a checkpoint trained on one robot, re-headed for another (no ROS).

What a BimanualVLAModel learns splits in two. Seeing (vision projections, keypoints, camera and
grid embeddings), reading the instruction, the transformer encoder/decoder, the progress and
point heads work in the hidden width and world coordinates: nothing in them depends on how many
joints the robot has or what they mean. Only the layers that read or write joint vectors do:
the joint-state and conditioning input projections, the action output layer (and the flow
head's noisy-action input), plus the per-joint normalisation statistics. `adapt_to_embodiment`
keeps the first group exactly and re-creates the second at the new action_dim, freshly
initialised: the old rows are not copied, because an ALOHA waist and a Franka joint 1 share no
units or range. Fine-tuning on the new robot's demonstrations then trains the new layers (and
refines the kept ones).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from bimanual_core.config import Embodiment
from vla_model.modeling import BimanualVLAModel

# Tensors (by name prefix) whose shape or meaning depends on the robot's joints.
EMBODIMENT_SPECIFIC = ("state_proj.", "cond_proj.", "action_out.", "noisy_action_in.",
                       "state_mean", "state_std", "action_mean", "action_std")


@dataclass
class TransferReport:
    """Which tensors came from the source checkpoint and which were re-initialised."""
    source: str
    target: str
    kept: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.source} -> {self.target}: kept {len(self.kept)} tensors, re-initialised "
                f"{len(self.reinitialised)} ({', '.join(self.reinitialised)})")

    def as_dict(self) -> dict:
        return dict(source=self.source, target=self.target, kept=self.kept,
                    reinitialised=self.reinitialised)


def is_embodiment_specific(name: str) -> bool:
    return name.startswith(EMBODIMENT_SPECIFIC)


def needs_transfer(model: BimanualVLAModel, embodiment: Embodiment) -> bool:
    """True when the checkpoint's joints are not the embodiment's."""
    cfg = model.config
    return cfg.action_dim != embodiment.action_dim or bool(
        cfg.joint_names and cfg.joint_names != embodiment.joint_names)


def adapt_to_embodiment(model: BimanualVLAModel, embodiment: Embodiment,
                        seed: int = 0) -> tuple[BimanualVLAModel, TransferReport]:
    """A new model for `embodiment` holding every embodiment-independent tensor of `model`.

    The config keeps the source's architecture (cameras, encoders, widths, chunking); only
    action_dim, joint_names, embodiment and control rate change. The embodiment-specific layers
    are initialised as a new model's would be (seeded), and the normalisation statistics start
    neutral (0 / 1) until training sets them from the new demonstrations.
    """
    cfg = model.config
    missing = [c for c in cfg.cameras if c not in embodiment.cameras]
    if missing:
        raise ValueError(f"the checkpoint reads cameras {missing} that {embodiment.name} does not "
                         f"have ({', '.join(embodiment.cameras)})")
    new_cfg = copy.deepcopy(cfg)
    new_cfg.action_dim = embodiment.action_dim
    new_cfg.joint_names = list(embodiment.joint_names)
    new_cfg.embodiment = embodiment.name
    new_cfg.control_rate_hz = float(embodiment.control_rate_hz)
    torch.manual_seed(seed)
    target = BimanualVLAModel(new_cfg)
    source_state = model.state_dict()
    report = TransferReport(source=f"{cfg.embodiment} ({cfg.action_dim} joints)",
                            target=f"{embodiment.name} ({embodiment.action_dim} joints)")
    merged = target.state_dict()
    for name, tensor in merged.items():
        old = source_state.get(name)
        if old is not None and not is_embodiment_specific(name):
            if old.shape != tensor.shape:
                raise ValueError(f"{name}: the source has shape {tuple(old.shape)}, the new "
                                 f"model {tuple(tensor.shape)} though it is not joint-specific")
            merged[name] = old.clone()
            report.kept.append(name)
        else:
            report.reinitialised.append(name)
    return _loaded(target, merged, model), report


def adapt_point_objects(model: BimanualVLAModel, objects: int) -> BimanualVLAModel:
    """`model` with a point head that locates `objects` task objects (widened: a pick checkpoint
    fine-tuned on place data that also records the bowl; or narrowed). Every other tensor is
    kept; the rows of the objects both heads locate (the instruction's object first) keep their
    weights and normalisation, new rows start as a new model's (their statistics come from the
    data)."""
    cfg = model.config
    if not cfg.point_head:
        raise ValueError("the checkpoint has no point head to widen")
    new_cfg = copy.deepcopy(cfg)
    new_cfg.point_objects = objects
    target = BimanualVLAModel(new_cfg)
    kept = min(cfg.point_dim, new_cfg.point_dim)
    merged = target.state_dict()
    for name, tensor in model.state_dict().items():
        if name.startswith("point_") and tensor.shape != merged[name].shape:
            merged[name][:kept] = tensor[:kept]
        else:
            merged[name] = tensor.clone()
    return _loaded(target, merged, model)


def _loaded(target: BimanualVLAModel, state: dict, source: BimanualVLAModel) -> BimanualVLAModel:
    """`target` holding `state`, in `source`'s dtype, its vision frozen if the config says so."""
    target.load_state_dict(state)
    target.to(next(source.parameters()).dtype)
    if target.config.freeze_vision:
        target.vision.requires_grad_(False)
    return target
