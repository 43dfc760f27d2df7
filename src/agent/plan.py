"""Plans of atomic steps, and the rule-based planner that needs no model (no ROS imports).

A long instruction ("put the red cube in the bowl, then hand the blue cube over") becomes a `Plan`:
a sequence of atomic instructions that the policies understand (pick / place / handover, the forms
of `bimanual_core.instructions`). Every planner (rules, a local language model, Gemini) ends in
`make_plan`, so every plan is checked the same way: each step must parse as an atomic instruction,
and a pick followed by a place or handover of the same object is folded into that step (the
zero-shot policy's place and handover grasp the object themselves; a second grasp of an object
already held would drop it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from bimanual_core.instructions import (InstructionError, TaskSpec, normalise, parse_instruction,
                                        validate_instruction)

MAX_STEPS = 8


class PlanError(ValueError):
    """No executable plan for the instruction; the message says why."""


@dataclass(frozen=True)
class Step:
    """One atomic instruction of a plan and how it reads."""

    instruction: str     # canonical text, as sent to the backbone ("put the red cube in the bowl")
    spec: TaskSpec


@dataclass(frozen=True)
class Plan:
    instruction: str           # what the user asked
    steps: tuple[Step, ...]
    planner: str               # which planner made it
    program: str = ""          # the code-as-policy program the steps came from, if any


def render(spec: TaskSpec) -> str:
    """The canonical atomic instruction of `spec` (parses back to the same spec)."""
    arm = f" with the {spec.arm.replace('_', ' ')}" if spec.arm else ""
    if spec.kind == "pick":
        return f"pick up the {spec.object}{arm}"
    if spec.kind == "place":
        return f"put the {spec.object} in the {spec.target}{arm}"
    if spec.kind == "handover":
        to = f" to the {spec.target.replace('_', ' ')}" if spec.target else ""
        return f"hand the {spec.object} over{to}"
    raise PlanError(f"unknown step kind {spec.kind!r}")


def step_from_spec(spec: TaskSpec) -> Step:
    text = render(spec)
    if spec.kind == "handover" and spec.arm:
        # The atomic grammar has no giving arm for handovers; the giver is the other arm.
        spec = TaskSpec(spec.kind, spec.object, spec.target, None)
    return Step(text, spec)


def make_plan(instruction: str, clauses: list[str] | list[TaskSpec], planner: str,
              program: str = "") -> Plan:
    """Check and fold the steps a planner proposed (texts or specs) into a Plan (PlanError)."""
    if not clauses:
        raise PlanError("the plan has no steps")
    specs = []
    for i, clause in enumerate(clauses):
        if isinstance(clause, TaskSpec):
            specs.append(clause)
            continue
        try:
            specs.append(parse_instruction(str(clause)))
        except InstructionError as exc:
            raise PlanError(f"step {i + 1} ({clause!r}) is not an atomic instruction the robot "
                            f"can do: {exc}") from None
    folded: list[TaskSpec] = []
    for spec in specs:
        prev = folded[-1] if folded else None
        if (prev is not None and prev.kind == "pick" and spec.kind in ("place", "handover")
                and prev.object == spec.object):
            # "pick up X, then put it in Y": the place grasps X itself, with the arm asked for.
            arm = spec.arm or prev.arm
            folded[-1] = TaskSpec(spec.kind, spec.object, spec.target, arm)
        else:
            folded.append(spec)
    if len(folded) > MAX_STEPS:
        raise PlanError(f"the plan has {len(folded)} steps; at most {MAX_STEPS} are allowed")
    return Plan(instruction, tuple(step_from_spec(s) for s in folded), planner, program)


# --- the rule-based planner -------------------------------------------------------------------

_NUMBERED = re.compile(r"(?:^|\s)(?:\(?\d+[.)]|step\s+\d+\s*:)\s+")
_SEPARATORS = re.compile(
    r"\s*(?:;|\n|,?\s*and\s+then\s+|,?\s*(?:and\s+)?after\s+that,?\s+|,?\s*then\s+|"
    r",?\s*(?:and\s+)?finally,?\s+|,?\s*next,?\s+|,\s*and\s+|,\s*)\s*")
_LEADING = re.compile(r"^(?:first(?:ly)?|then|next|finally|and|after that|lastly|now)\s*,?\s+")
_VERBS = ("pick", "lift", "grab", "grasp", "raise", "put", "place", "drop", "move", "hand", "pass",
          "give", "transfer")
_AND_VERB = re.compile(rf"\s+and\s+(?=(?:{'|'.join(_VERBS)})\b)")
_PRONOUN = re.compile(r"\b(?:it|them|that|this one)\b")
_ELLIPTIC_PLACE = re.compile(r"^(?:the\s+)?(?P<object>[a-z][a-z ]*?)\s+(?:in|into|on|onto)\s+"
                             r"(?:the\s+)?(?P<target>[a-z][a-z ]*)$")


def split_clauses(instruction: str) -> list[str]:
    """The clauses of a long instruction, in order (numbered lists, ';', ',', 'then', ...)."""
    text = validate_instruction(instruction.replace("\n", " ; ") if isinstance(instruction, str)
                                else instruction)
    head, colon, tail = text.partition(":")
    if colon and tail.strip() and not re.search(r"step\s+\d+\s*$", head):
        text = tail                     # "clear the table: a, then b" -> the part after the title
    text = _NUMBERED.sub(" ; ", " " + text)
    parts = []
    for part in _SEPARATORS.split(text):
        for sub in _AND_VERB.split(part):
            sub = _LEADING.sub("", normalise(sub)).strip(" ,.")
            if sub:
                parts.append(sub)
    return parts


class RulePlanner:
    """Splits the instruction into clauses, resolves 'it' to the last object named, and reads each
    clause as an atomic instruction; an elliptic clause ("the cube in the bowl") reads as a place.
    It has no judgment of its own on safety (`judge` returns None)."""

    name = "rule"

    def plan(self, instruction: str, locate=None) -> Plan:
        """The plan of `instruction` (PlanError); `locate` is unused (no programs here)."""
        try:
            clauses = split_clauses(instruction)
        except InstructionError as exc:
            raise PlanError(str(exc)) from None
        specs: list[TaskSpec] = []
        for clause in clauses:
            if specs and _PRONOUN.search(clause):
                clause = _PRONOUN.sub(f"the {specs[-1].object}", clause)
                clause = re.sub(r"\bthe the\b", "the", clause)
            try:
                specs.append(parse_instruction(clause))
            except InstructionError as exc:
                m = _ELLIPTIC_PLACE.match(clause)
                if m is None and len(clauses) == 1:
                    raise PlanError(str(exc)) from None     # one clause: the parser's own words
                if m is None:
                    raise PlanError(f"cannot read {clause!r} as a step: {exc}") from None
                specs.append(TaskSpec("place", m["object"].strip(), m["target"].strip()))
        return make_plan(instruction, specs, self.name)

    def judge(self, instruction: str) -> tuple[bool, str] | None:
        return None
