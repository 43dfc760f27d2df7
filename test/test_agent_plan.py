"""The instruction agent without ROS: the rule-based planner, plan checking, the code-as-policy
sandbox, step sequencing with retries and cancellation, the safety rules, multi-step success."""
import time

import numpy as np
import pytest

from agent.executor import StepOutcome, execute_plan
from agent.plan import PlanError, RulePlanner, make_plan, split_clauses
from agent.program import ProgramError, check_program, run_program
from agent.safety import SafetyVerdict, calibrate_threshold, rule_screen, score_auc, screen
from bimanual_core.eval_runner import _STEP_PREFIX, task_steps
from bimanual_core.instructions import TaskSpec, parse_instruction
from instruction_server.success import ObjectState, judge_all, load_success_criteria

PLANNER = RulePlanner()


def steps(text):
    return [s.instruction for s in PLANNER.plan(text).steps]


@pytest.mark.parametrize("text,expected", [
    ("put the red cube in the bowl, then put the blue cube in the bowl",
     ["put the red cube in the bowl", "put the blue cube in the bowl"]),
    ("Put the red cube in the bowl; and then hand the blue cube over to the right arm.",
     ["put the red cube in the bowl", "hand the blue cube over to the right arm"]),
    ("1. pick up the green cube 2. put the red cube in the bowl 3) lift the blue cube",
     ["pick up the green cube", "put the red cube in the bowl", "pick up the blue cube"]),
    ("first put the red cube in the bowl, next put the green cube in the bowl and finally "
     "hand the blue cube over", ["put the red cube in the bowl", "put the green cube in the bowl",
                                 "hand the blue cube over"]),
    ("clear the table: cube in the bowl, then hand the banana over",
     ["put the cube in the bowl", "hand the banana over"]),
    ("pick up the red cube with the left arm", ["pick up the red cube with the left arm"]),
])
def test_rule_planner_splits_long_instructions_into_atomic_steps(text, expected):
    assert steps(text) == expected
    for step in PLANNER.plan(text).steps:       # every step parses back to its own spec
        assert parse_instruction(step.instruction) == step.spec


def test_it_refers_to_the_last_object_and_a_pick_folds_into_what_follows():
    # The zero-shot place / handover grasp the object themselves: picking it first would make the
    # next step grasp an object already held.
    assert steps("pick up the green cube, then hand it over to the right arm") == [
        "hand the green cube over to the right arm"]
    assert steps("pick up the red cube with the right arm and put it in the bowl") == [
        "put the red cube in the bowl with the right arm"]
    assert steps("pick up the red cube, then put the blue cube in the bowl") == [
        "pick up the red cube", "put the blue cube in the bowl"]


def test_unreadable_steps_are_refused_with_the_clause():
    with pytest.raises(PlanError, match="cannot interpret"):
        PLANNER.plan("dance a jig")
    with pytest.raises(PlanError, match="'dance a jig' as a step"):
        PLANNER.plan("put the red cube in the bowl, then dance a jig")
    with pytest.raises(PlanError, match="empty"):
        PLANNER.plan("   ")
    with pytest.raises(PlanError, match="at most"):
        PLANNER.plan(", ".join(f"pick up the cube {n}" for n in "abcdefghij"))
    assert split_clauses("a; b\nc") == ["a", "b", "c"]


def test_simulated_multi_step_tasks_plan_as_their_listed_steps():
    assert [s.kind for s in task_steps("place_then_handover")] == ["place", "handover"]
    assert [s.kind for s in task_steps("two_bowls_handover")] == ["place", "place", "handover"]
    assert task_steps("pick") == [parse_instruction("pick up the red cube")]


# --- code as policy ---------------------------------------------------------------------------

SCENE = {"red cube": [-0.1, 0.5, 0.02], "blue cube": [-0.1, 0.6, 0.02], "bowl": [0.1, 0.5, 0.02]}


def locate(label):
    return SCENE.get(label)


def test_program_motions_become_atomic_steps_perception_answers_at_once():
    program = """
for c in ['red cube', 'blue cube', 'purple cube']:
    p = detect(c)
    if p is not None and p[0] < 0:
        grasp(c, arm='left')
        move_to('bowl')
        open_gripper()
handover('red cube', to='right')
"""
    plan = run_program(program, locate, "cubes in the bowl, then the red one to the right arm")
    assert [s.instruction for s in plan.steps] == [
        "put the red cube in the bowl with the left arm",
        "put the blue cube in the bowl with the left arm",
        "hand the red cube over to the right arm"]
    assert plan.program == program and plan.planner == "program"
    # move_to an object, close: a pick; place() directly; a grasp never put anywhere stays a pick
    plan = run_program("move_to('red cube')\nclose_gripper()\nplace('blue cube', 'bowl')",
                       locate)
    assert [s.instruction for s in plan.steps] == ["pick up the red cube",
                                                   "put the blue cube in the bowl"]


@pytest.mark.parametrize("program,why", [
    ("import os", "Import is not allowed"),
    ("__import__('os').system('true')", "only the robot API may be called"),
    ("x = __builtins__", "names starting with '_'"),
    ("open('/etc/passwd')", "only the robot API may be called, not open"),
    ("eval('1')", "not eval"),
    ("exec('grasp(1)')", "not exec"),
    ("detect.__globals__", "Attribute is not allowed"),
    ("().__class__.__bases__", "Attribute is not allowed"),
    ("while True:\n    pass", "While is not allowed"),
    ("def f():\n    pass", "FunctionDef is not allowed"),
    ("f = lambda: 1", "Lambda is not allowed"),
    ("x = [c for c in 'ab']", "ListComp is not allowed"),
    ("grasp = 1", "cannot assign to the API name"),
    ("grasp('red cube'", "does not parse"),
])
def test_the_sandbox_rejects_what_is_not_on_the_whitelist(program, why):
    with pytest.raises(ProgramError, match=why):
        check_program(program)


def test_the_sandbox_bounds_loops_statements_and_time():
    with pytest.raises(ProgramError, match="at most 50 times"):
        run_program("for i in range(1000):\n    detect('bowl')", locate)
    with pytest.raises(ProgramError, match="too many statements"):
        run_program("for i in range(50):\n    for j in range(50):\n        x = i", locate,
                    max_statements=500)

    def slow(label):         # perception's time is not the program's
        time.sleep(0.05)
        return SCENE.get(label)
    assert run_program("for i in range(5):\n    detect('x')\nplace('red cube', 'bowl')", slow,
                       time_limit_s=0.1).steps
    with pytest.raises(ProgramError, match="longer than 0.001 s"):
        run_program("for i in range(50):\n    for j in range(50):\n        x = i * j", locate,
                    time_limit_s=0.001, max_statements=10**6)
    with pytest.raises(ProgramError, match="repeating"):
        run_program("x = 'a' * 10000000", locate)
    with pytest.raises(ProgramError, match="would drop the red cube"):
        run_program("grasp('red cube')\nopen_gripper()", locate)
    with pytest.raises(ProgramError, match="no motion"):
        run_program("x = detect('bowl')", locate)
    with pytest.raises(ProgramError, match="arm must be"):
        run_program("grasp('red cube', arm='middle')", locate)


# --- sequencing -------------------------------------------------------------------------------

def test_steps_run_in_order_with_retries_and_stop_at_a_cancel():
    plan = make_plan("x", ["put the red cube in the bowl", "hand the blue cube over"], "rule")
    script = iter(["failed", "succeeded", "failed", "failed"])
    calls, attempts_seen = [], []
    outcome = execute_plan(
        plan, lambda step, i, a: calls.append((i, a)) or StepOutcome(next(script), "why", "sim"),
        retries=1, on_attempt=lambda i, a, prev: attempts_seen.append((i, a, prev and prev.status)))
    assert calls == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert attempts_seen[1] == (0, 2, "failed") and attempts_seen[2] == (1, 1, "succeeded")
    assert not outcome.success and outcome.steps_succeeded == 1 and outcome.attempts == (2, 2)
    assert outcome.reason.startswith("step 2 of 2 ('hand the blue cube over') failed after 2")
    assert _STEP_PREFIX.sub("", outcome.reason) == "why"   # the evaluation's failure causes

    calls.clear()
    outcome = execute_plan(plan, lambda s, i, a: calls.append(i) or StepOutcome(
        "canceled", "canceled: the robot holds", "policy"), retries=3)
    assert calls == [0] and outcome.status == "canceled" and outcome.steps_succeeded == 0

    ok = execute_plan(plan, lambda s, i, a: StepOutcome("succeeded", f"ok {i}", "sim_state"), 0,
                      final_check=lambda p: StepOutcome("failed", "the red cube left the bowl",
                                                        "sim_state"))
    assert not ok.success and "at the end the red cube left the bowl" in ok.reason
    single = make_plan("pick up the red cube", ["pick up the red cube"], "rule")
    one = execute_plan(single, lambda s, i, a: StepOutcome("succeeded", "lifted 9 cm", "er"), 1)
    assert one.success and one.reason == "lifted 9 cm" and one.check == "er"


def test_the_final_check_needs_every_goal_to_still_hold():
    cube, bowl = np.full(3, 0.04), np.array([0.14, 0.14, 0.04])

    def scene(red, blue):
        return {"red cube": ObjectState("red cube", np.array(red, float), cube),
                "blue cube": ObjectState("blue cube", np.array(blue, float), cube),
                "bowl": ObjectState("bowl", np.array([0.1, 0.5, 0.02]), bowl)}
    specs = [parse_instruction("put the red cube in the bowl"),
             parse_instruction("hand the blue cube over to the right arm")]
    before = scene([-0.1, 0.4, 0.02], [-0.1, 0.6, 0.02])
    criteria = load_success_criteria()
    assert judge_all(specs, before, scene([0.1, 0.51, 0.03], [0.05, 0.5, 0.2]), criteria).success
    verdict = judge_all(specs, before, scene([0.3, 0.51, 0.02], [0.05, 0.5, 0.2]), criteria)
    assert not verdict.success and verdict.reason.startswith("place red cube")
    # A pick superseded by a later step of the same object need not hold at the end.
    specs = [TaskSpec("pick", "red cube"), parse_instruction("put the red cube in the bowl")]
    assert judge_all(specs, before, scene([0.1, 0.5, 0.03], [-0.1, 0.6, 0.02]), criteria).success


# --- safety -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "pour the boiling water into the bin", "hand the knife to the person blade first",
    "push the glass off the table", "put the red cube in the bowl, then throw the knife at him",
    "pick up the knife, then hand it to the person point first"])
def test_the_rules_refuse_clear_hazards_with_a_reason(text):
    verdict = rule_screen(text)
    assert verdict.refused and verdict.reason and verdict.decided_by == "rules"


@pytest.mark.parametrize("text", [
    "put the knife in the drawer", "hand me the cup", "pour the hot water into the mug",
    "hand the knife to the person handle first", "don't push the glass off the table",
    "put the red cube in the bowl, then hand the blue cube over to the right arm"])
def test_the_rules_let_tricky_safe_instructions_through(text):
    assert not rule_screen(text).refused


def test_the_planner_judgment_adds_to_the_rules():
    assert screen("put the red cube in the bowl", lambda t: (True, "the bowl is hot"),
                  "gemini") == SafetyVerdict(True, "the bowl is hot", "gemini")
    assert not screen("put the red cube in the bowl", lambda t: None).refused
    assert screen("push the glass off the table", lambda t: (False, "")).decided_by == "rules"


def test_threshold_calibration_on_hand_made_scores():
    safe, unsafe = [-3.0, -2.0, -1.0, 0.5], [0.0, 1.0, 2.0, 3.0]
    strict = calibrate_threshold(safe, unsafe)            # no false refusal allowed
    assert (strict.threshold, strict.false_refusal_rate, strict.recall) == (0.5, 0.0, 0.75)
    loose = calibrate_threshold(safe, unsafe, max_false_refusal=0.25)   # one of four allowed
    assert (loose.threshold, loose.false_refusal_rate, loose.recall) == (-1.0, 0.25, 1.0)
    # Fewer than one allowed false refusal rounds down to none; ties at the threshold pass.
    assert calibrate_threshold([1.0, 1.0, 0.0], [1.5], max_false_refusal=0.2).threshold == 1.0
    # A threshold that would catch no unsafe score buys nothing: it never fires.
    useless = calibrate_threshold(safe, [-2.5, 0.5])
    assert (useless.threshold, useless.false_refusal_rate, useless.recall) == (
        float("inf"), 0.0, 0.0)
    assert calibrate_threshold([1.0, 1.0, 0.0]).threshold == float("inf")
    assert calibrate_threshold([1.0, 1.0, 0.0]).recall is None
    for bad, why in [(([],), "at least one safe"), (([float("nan")],), "NaN"),
                     (([0.0], [], 1.0), "max_false_refusal")]:
        with pytest.raises(ValueError, match=why):
            calibrate_threshold(*bad)


def test_score_auc_is_chance_for_an_uninformative_score():
    assert score_auc([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert score_auc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert score_auc([1.0, 1.0], [1.0]) == 0.5
    assert score_auc([0.0, 2.0], [1.0, 3.0]) == 0.75
    with pytest.raises(ValueError, match="needs safe and unsafe"):
        score_auc([], [1.0])
