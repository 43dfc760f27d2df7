"""Run a plan step by step: execute, check, retry, stop on cancel (no ROS imports).

The instruction server supplies how one attempt at a step is executed and judged (`run_step`:
backbone + decoder, then the simulator's state or ER), and how the end state is judged
(`final_check`: every step's goal must still hold at the end, e.g. the first cube is still in the
bowl after the second was put there). This module decides the order, the retries and what the
goal's result says.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from agent.plan import Plan, Step

# Outcomes of one attempt. Only "failed" (the policy or the check said no) is retried: a cancel,
# an exceeded time limit or a broken stack ends the goal at once.
RETRYABLE = "failed"
STOPPING = ("canceled", "time_limit", "stack")


@dataclass(frozen=True)
class StepOutcome:
    status: str            # "succeeded", "failed", "canceled", "time_limit", "stack"
    reason: str
    check: str             # what decided: "sim_state", "er", "policy"

    @property
    def success(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class PlanOutcome:
    success: bool
    status: str            # "succeeded", or the status of the step attempt that ended the goal
    reason: str
    check: str
    steps_succeeded: int
    attempts: tuple[int, ...]   # attempts made per step reached


RunStep = Callable[[Step, int, int], StepOutcome]          # (step, index, attempt) -> outcome
FinalCheck = Callable[[Plan], "StepOutcome | None"]        # None: no final check available
OnAttempt = Callable[[int, int, "StepOutcome | None"], None]  # (index, attempt, previous outcome)


def execute_plan(plan: Plan, run_step: RunStep, retries: int,
                 final_check: FinalCheck | None = None,
                 on_attempt: OnAttempt | None = None) -> PlanOutcome:
    """Each step in turn, each retried up to `retries` times after a failed attempt."""
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    attempts: list[int] = []
    previous: StepOutcome | None = None
    many = len(plan.steps) > 1
    for index, step in enumerate(plan.steps):
        attempts.append(0)
        for attempt in range(1, retries + 2):
            attempts[-1] = attempt
            if on_attempt:
                on_attempt(index, attempt, previous)
            outcome = run_step(step, index, attempt)
            previous = outcome
            if outcome.success or outcome.status in STOPPING:
                break
        if not outcome.success:
            label = f"step {index + 1} of {len(plan.steps)} ('{step.instruction}')" if many else ""
            tries = f" after {attempt} attempts" if attempt > 1 else ""
            reason = f"{label} failed{tries}: {outcome.reason}" if label else (
                f"{outcome.reason}{' (' + tries.strip() + ')' if tries else ''}")
            return PlanOutcome(False, outcome.status, reason, outcome.check, index,
                               tuple(attempts))
    done = len(plan.steps)
    final = final_check(plan) if (final_check and many) else None
    if final is not None and not final.success:
        return PlanOutcome(False, "failed", f"every step succeeded, but at the end {final.reason}",
                           final.check, done, tuple(attempts))
    reason = previous.reason if not many else (
        f"all {done} steps succeeded" + (f"; at the end {final.reason}" if final else ""))
    return PlanOutcome(True, "succeeded", reason, final.check if final else previous.check, done,
                       tuple(attempts))
