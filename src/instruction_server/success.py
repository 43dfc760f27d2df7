"""Judge whether an atomic task succeeded from object states (no ROS imports): the simulator's
ground truth, or 3D boxes from embodied reasoning on a real robot.

The thresholds come from config/tasks.yaml (`success` of the task of the same kind), so the demo,
the tests and the evaluation judge alike. The verdict is made from object poses, never from the
policy's own claim.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
from bimanual_core.config import load_tasks
from bimanual_core.instructions import TaskSpec


@dataclass(frozen=True)
class ObjectState:
    label: str
    position: np.ndarray   # world frame, metres
    size: np.ndarray       # full extents, metres


def object_states(objects: Iterable[Any]) -> dict[str, ObjectState]:
    """label -> state, from bimanual_vla/SimObject messages (read by attribute, no ROS import)."""
    return {o.label: ObjectState(o.label,
                                 np.array([o.pose.position.x, o.pose.position.y, o.pose.position.z]),
                                 np.array([o.size.x, o.size.y, o.size.z]))
            for o in objects}


@dataclass(frozen=True)
class Verdict:
    success: bool
    reason: str


def load_success_criteria(path=None) -> dict[str, dict[str, Any]]:
    """Task kind -> its `success` block from config/tasks.yaml."""
    return {kind: task["success"] for kind, task in load_tasks(path)["tasks"].items()}


def _find(objects: Mapping[str, ObjectState], label: str) -> ObjectState | None:
    if label in objects:
        return objects[label]
    words = set(label.split())
    matches = [o for name, o in objects.items() if words <= set(name.split())]
    return matches[0] if len(matches) == 1 else None


def judge(spec: TaskSpec, initial: Mapping[str, ObjectState], final: Mapping[str, ObjectState],
          criteria: Mapping[str, Mapping[str, Any]]) -> Verdict:
    """Did the task described by `spec` happen between the two snapshots (label -> state)?"""
    obj0, obj1 = _find(initial, spec.object), _find(final, spec.object)
    if obj0 is None or obj1 is None:
        return Verdict(False, f"there is no single '{spec.object}' in the scene "
                              f"(objects: {', '.join(sorted(final)) or 'none'})")
    rule = criteria.get(spec.kind, {})
    rise = float(obj1.position[2] - obj0.position[2])
    if spec.kind == "pick":
        need = float(rule.get("min_height", 0.05))
        ok = bool(rise >= need)
        return Verdict(ok, f"the {obj1.label} is {rise * 100:.1f} cm above where it started "
                           f"({'>=' if ok else '<'} {need * 100:.0f} cm)")
    if spec.kind == "place":
        container = _find(final, spec.target or "")
        if container is None:
            return Verdict(False, f"there is no single '{spec.target}' in the scene")
        offset = float(np.linalg.norm(obj1.position[:2] - container.position[:2]))
        radius = float(container.size[0]) / 2.0
        resting = obj1.position[2] <= container.position[2] + container.size[2] + obj1.size[2]
        ok = bool(offset <= radius and resting)   # a plain bool: the result message needs one
        return Verdict(ok, f"the {obj1.label} is {offset * 100:.1f} cm from the centre of the "
                           f"{container.label} (radius {radius * 100:.1f} cm)"
                           + ("" if resting else ", above it rather than in it"))
    if spec.kind == "handover":
        need = float(rule.get("min_height", 0.05))
        receiver = spec.target or "right_arm"
        on_side = obj1.position[0] > 0 if receiver == "right_arm" else obj1.position[0] < 0
        ok = bool(rise >= need and on_side)
        side = "right" if obj1.position[0] > 0 else "left"
        return Verdict(ok, f"the {obj1.label} is {rise * 100:.1f} cm up, on the {side} arm's side "
                           f"(wanted: held by the {receiver.replace('_', ' ')})")
    return Verdict(False, f"no success check for task kind {spec.kind!r}")


def spec_labels(spec: TaskSpec) -> list[str]:
    """The object labels a task's check needs (the object, and a place's container)."""
    return [spec.object] + ([spec.target] if spec.kind == "place" and spec.target else [])


def judge_all(specs: Iterable[TaskSpec], initial: Mapping[str, ObjectState],
              final: Mapping[str, ObjectState],
              criteria: Mapping[str, Mapping[str, Any]]) -> Verdict:
    """Does every task of a multi-step plan still hold between the first and the last snapshot
    (e.g. the first cube is still in the bowl after the second one was put there)? A pick that a
    later step of the same object superseded is not required to hold at the end."""
    specs = list(specs)
    last_of = {s.object: i for i, s in enumerate(specs)}
    failures, passed = [], 0
    for i, spec in enumerate(specs):
        if last_of[spec.object] != i:
            continue
        verdict = judge(spec, initial, final, criteria)
        if verdict.success:
            passed += 1
        else:
            failures.append(f"{spec.kind} {spec.object}: {verdict.reason}")
    if failures:
        return Verdict(False, "; ".join(failures))
    return Verdict(True, f"all {passed} goals hold in the final scene")
