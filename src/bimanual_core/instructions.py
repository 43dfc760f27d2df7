"""Turn an atomic natural-language instruction into a task specification.

Both the zero-shot policy (what to grasp, where to put it) and the instruction server's success
check (which object must have moved) read instructions through this one parser. Unknown phrasings
are rejected with a reason rather than guessed. Multi-step instructions belong to the planner.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MAX_INSTRUCTION_CHARS = 500
TASK_KINDS = ("pick", "place", "handover")


class InstructionError(ValueError):
    """The instruction cannot be executed as given; the message says why."""


@dataclass(frozen=True)
class TaskSpec:
    kind: str                 # one of TASK_KINDS
    object: str               # label of the object to manipulate, e.g. "red cube"
    target: str | None = None  # place: label of the destination ("bowl"); handover: receiving arm
    arm: str | None = None    # arm that grasps first, when the instruction names one


_ARM = r"(?:with|using)\s+the\s+(?P<arm>left|right)\s+(?:arm|hand|gripper)"
_OBJ = r"(?:the\s+|a\s+|an\s+)?(?P<object>[a-z][a-z ]*?)"
_PATTERNS = [
    ("handover", re.compile(
        rf"^(?:hand|pass|give|transfer)\s+(?:over\s+)?{_OBJ}\s+(?:over\s+)?(?:to\s+the\s+(?P<target>left|right)\s+(?:arm|hand|gripper)|over)$")),
    ("handover", re.compile(rf"^hand\s*over\s+{_OBJ}(?:\s+to\s+the\s+(?P<target>left|right)\s+(?:arm|hand|gripper))?$")),
    ("place", re.compile(
        rf"^(?:put|place|drop|move)\s+{_OBJ}\s+(?:in|into|inside|on|onto|on top of)\s+(?:the\s+)?(?P<target>[a-z][a-z ]*?)(?:\s+{_ARM})?$")),
    ("pick", re.compile(rf"^(?:pick\s+up|pick|lift|grab|grasp|raise)\s+{_OBJ}(?:\s+up)?(?:\s+{_ARM})?$")),
]


def normalise(text: str) -> str:
    text = text.strip().lower()
    text = re.sub(r"[.!?]+$", "", text)
    text = re.sub(r"^(?:please\s+|can you\s+|could you\s+)", "", text)
    return re.sub(r"\s+", " ", text).strip()


def validate_instruction(text: str) -> str:
    """Reject instructions no policy should see; return the normalised text."""
    if not isinstance(text, str) or not text.strip():
        raise InstructionError("the instruction is empty")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InstructionError(
            f"the instruction is {len(text)} characters long; the limit is {MAX_INSTRUCTION_CHARS}")
    if any(ord(c) < 32 and c not in "\t\n" for c in text):
        raise InstructionError("the instruction contains control characters")
    return normalise(text)


def parse_instruction(text: str, task_hint: str = "") -> TaskSpec:
    """Parse an atomic instruction; `task_hint` (e.g. "pick") must agree with the phrasing."""
    norm = validate_instruction(text)
    if task_hint and task_hint not in TASK_KINDS:
        raise InstructionError(f"unknown task {task_hint!r}; known tasks: {', '.join(TASK_KINDS)}")
    for kind, pattern in _PATTERNS:
        m = pattern.match(norm)
        if not m:
            continue
        if task_hint and task_hint != kind:
            raise InstructionError(f"the instruction reads as a {kind} task, not {task_hint}")
        groups = m.groupdict()
        arm = f"{groups['arm']}_arm" if groups.get("arm") else None
        target = groups.get("target")
        if kind == "handover":
            target = f"{target}_arm" if target else None
        return TaskSpec(kind=kind, object=groups["object"].strip(), target=target, arm=arm)
    raise InstructionError(
        f"cannot interpret {text!r}: supported forms are 'pick up the <object>', "
        "'put the <object> in the <container>' and 'hand the <object> over to the <left|right> arm'")
