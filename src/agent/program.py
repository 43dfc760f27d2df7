"""Code-as-policy: a short program against a small robot API, run in a sandbox (no ROS imports).

The Gemini Robotics paper drives the robot zero-shot by having the ER model write code against
perception and control APIs. Here a planner may answer with such a program. It is parsed with
`ast` and only a whitelist runs: calls of the API functions below, literals, names, arithmetic and
comparisons, `if`, `for` over a literal/list/range (bounded), assignments, `pass`. Imports,
attributes (so no dunders), `while`, function or class definitions, lambdas, comprehensions,
`exec`/`eval`/`open` and every other builtin are rejected before anything runs. The checked tree
is then evaluated node by node by a small interpreter (never exec/eval), so nothing but the API
and a few pure functions (len, range, abs, min, max, round) is reachable, within a budget of
statements and of wall-clock time (perception calls excluded).

The API (`RobotApi`):
  detect(label) -> [x, y, z] or None       where the object is (world frame, m), by ER
  point(label) -> [y, x] or None           the object's image point (ER convention, 0..1000)
  grasp(label, arm=None)                   pick the object up (arm: "left" / "right")
  move_to(label)                           carry what is held above `label` (a container)
  place(label, container)                  put the object in the container
  open_gripper() / close_gripper()         release what is held (above the container moved to)
                                           / grasp (after the gripper was moved to an object)
  handover(label, to="right")              hand the object over to the other arm
  say(text)                                a note in the plan's feedback

Motions are not executed while the program runs: each becomes an atomic step (grasp -> "pick up",
move_to + open_gripper -> "put ... in ...", ...), and the steps are executed afterwards by the
policies through the backbone and the decoder, so the decoder's safety layer sees every motion.
Perception calls are answered at once through the injected `locate` (the ER service).
"""
from __future__ import annotations

import ast
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from bimanual_core.instructions import TaskSpec
from agent.plan import Plan, PlanError, make_plan

MAX_PROGRAM_CHARS = 4000
MAX_LOOP_ITERATIONS = 50


class ProgramError(PlanError):
    """The program is not allowed, or failed while running; the message says why."""


API_FUNCTIONS = ("detect", "point", "grasp", "move_to", "place", "open_gripper", "close_gripper",
                 "handover", "say")
_PURE_BUILTINS = {"len": len, "range": range, "abs": abs, "min": min, "max": max, "round": round}

_ALLOWED_NODES = (
    ast.Module, ast.Expr, ast.Assign, ast.AugAssign, ast.If, ast.For, ast.Pass, ast.Break,
    ast.Continue, ast.Call, ast.Name, ast.Load, ast.Store, ast.Constant, ast.List, ast.Tuple,
    ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.IfExp, ast.Subscript, ast.keyword,
    ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, ast.Add, ast.Sub, ast.Mult, ast.Div,
    ast.FloorDiv, ast.Mod, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot,
    ast.In, ast.NotIn,
)


def check_program(source: str) -> ast.Module:
    """Parse and check `source` against the whitelist (ProgramError with the line and why)."""
    if not isinstance(source, str) or not source.strip():
        raise ProgramError("the program is empty")
    if len(source) > MAX_PROGRAM_CHARS:
        raise ProgramError(f"the program is {len(source)} characters; the limit is "
                           f"{MAX_PROGRAM_CHARS}")
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as exc:
        raise ProgramError(f"the program does not parse: {exc.msg} (line {exc.lineno})") from None
    callable_names = set(API_FUNCTIONS) | set(_PURE_BUILTINS)
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if not isinstance(node, _ALLOWED_NODES):
            raise ProgramError(f"{where}: {type(node).__name__} is not allowed in a robot program "
                               "(no imports, attributes, while loops, definitions or lambdas)")
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            raise ProgramError(f"{where}: names starting with '_' are not allowed ({node.id})")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in callable_names:
                name = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__
                raise ProgramError(f"{where}: only the robot API may be called, not {name} "
                                   f"(API: {', '.join(API_FUNCTIONS)})")
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.For)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name) and name.id in callable_names:
                        raise ProgramError(f"{where}: cannot assign to the API name {name.id}")
        if isinstance(node, ast.Constant) and isinstance(node.value, (bytes, complex)):
            raise ProgramError(f"{where}: {type(node.value).__name__} literals are not allowed")
    return tree


Locate = Callable[[str], "Sequence[float] | None"]
Point = Callable[[str], "Sequence[float] | None"]


@dataclass
class RobotApi:
    """What a program may do; motions are recorded as atomic steps in order."""

    locate: Locate
    image_point: Point | None = None
    specs: list[TaskSpec] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _held: tuple[str, str | None] | None = None     # (label, arm) grasped and not yet placed
    _above: str | None = None                       # container the held object was moved over
    _near: tuple[str, str | None] | None = None     # object the open gripper was moved to

    @staticmethod
    def _label(value: Any, what: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ProgramError(f"{what} must be an object label (text), got {value!r}")
        return " ".join(value.lower().replace("the ", " ").split())

    @staticmethod
    def _arm(value: Any) -> str | None:
        if value is None:
            return None
        arm = str(value).lower().replace(" arm", "").replace("_arm", "").strip()
        if arm not in ("left", "right"):
            raise ProgramError(f"arm must be 'left' or 'right', got {value!r}")
        return f"{arm}_arm"

    def detect(self, label):
        found = self.locate(self._label(label, "detect()"))
        return None if found is None else [float(v) for v in found]

    def point(self, label):
        if self.image_point is None:
            raise ProgramError("point() needs a camera; none is available here")
        found = self.image_point(self._label(label, "point()"))
        return None if found is None else [float(v) for v in found]

    def _flush_held(self) -> None:
        if self._held is not None:          # grasped and never put anywhere: a pick
            self.specs.append(TaskSpec("pick", self._held[0], None, self._held[1]))
            self._held, self._above = None, None

    def grasp(self, label, arm=None):
        self._flush_held()
        self._held = (self._label(label, "grasp()"), self._arm(arm))
        self._above, self._near = None, None

    def move_to(self, label):
        label = self._label(label, "move_to()")
        if self._held is None:
            self._near = (label, None)      # the open gripper goes to an object: close_gripper next
        else:
            self._above = label

    def close_gripper(self):
        if self._near is None:
            raise ProgramError("close_gripper() needs move_to(<object>) first, with nothing held")
        self.grasp(self._near[0])

    def open_gripper(self):
        if self._held is None:
            return                          # nothing held: opening changes nothing
        if self._above is None:
            raise ProgramError(f"open_gripper() would drop the {self._held[0]}: "
                               "move_to(<container>) first")
        self.specs.append(TaskSpec("place", self._held[0], self._above, self._held[1]))
        self._held, self._above = None, None

    def place(self, label, container):
        label, container = self._label(label, "place()"), self._label(container, "place()")
        arm = self._held[1] if self._held and self._held[0] == label else None
        if self._held and self._held[0] == label:
            self._held, self._above = None, None
        self._flush_held()
        self.specs.append(TaskSpec("place", label, container, arm))

    def handover(self, label, to="right"):
        label = self._label(label, "handover()")
        if self._held and self._held[0] == label:
            self._held, self._above = None, None
        self._flush_held()
        self.specs.append(TaskSpec("handover", label, self._arm(to)))

    def say(self, text):
        self.notes.append(str(text)[:200])

    def finish(self) -> list[TaskSpec]:
        self._flush_held()
        return list(self.specs)


class _Budget:
    """Counts executed statements and the program's own time (API calls, which wait for
    perception, do not count); raises past the limits."""

    def __init__(self, max_statements: int, time_limit_s: float):
        self.left, self.limit = max_statements, time_limit_s
        self.deadline = time.monotonic() + time_limit_s

    def tick(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ProgramError("the program ran too many statements")
        if time.monotonic() > self.deadline:
            raise ProgramError(f"the program ran longer than {self.limit:g} s")


class _Interpreter:
    """Evaluates the checked tree directly (no exec/eval), so nothing outside it is reachable."""

    def __init__(self, api: RobotApi, budget: _Budget):
        self.budget = budget
        self.functions = {name: getattr(api, name) for name in API_FUNCTIONS} | _PURE_BUILTINS
        self.variables: dict[str, Any] = {}

    def run(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.budget.tick()
            self.statement(stmt)

    def statement(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Expr):
            self.expr(node.value)
        elif isinstance(node, ast.Assign):
            value = self.expr(node.value)
            for target in node.targets:
                self.assign(target, value)
        elif isinstance(node, ast.AugAssign):
            name = node.target
            if not isinstance(name, ast.Name):
                raise ProgramError(f"line {node.lineno}: only names can be updated")
            self.variables[name.id] = self.binop(node.op, self.expr(name), self.expr(node.value))
        elif isinstance(node, ast.If):
            self.run(node.body if self.expr(node.test) else node.orelse)
        elif isinstance(node, ast.For):
            items = list(self.iterable(self.expr(node.iter), node.lineno))
            for item in items:
                self.assign(node.target, item)
                try:
                    self.run(node.body)
                except _Break:
                    break
                except _Continue:
                    continue
            else:
                self.run(node.orelse)
        elif isinstance(node, ast.Break):
            raise _Break
        elif isinstance(node, ast.Continue):
            raise _Continue
        elif not isinstance(node, ast.Pass):
            raise ProgramError(f"line {node.lineno}: {type(node).__name__} is not allowed")

    @staticmethod
    def iterable(value: Any, line: int):
        if isinstance(value, (list, tuple, range, str)):
            if len(value) > MAX_LOOP_ITERATIONS:
                raise ProgramError(f"line {line}: a loop may run at most {MAX_LOOP_ITERATIONS} "
                                   "times")
            return value
        raise ProgramError(f"line {line}: can only loop over a list, tuple, range or text")

    def assign(self, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.variables[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = list(value)
            if len(values) != len(target.elts):
                raise ProgramError(f"line {target.lineno}: cannot unpack {len(values)} values into "
                                   f"{len(target.elts)} names")
            for t, v in zip(target.elts, values):
                self.assign(t, v)
        else:
            raise ProgramError(f"line {target.lineno}: cannot assign to that")

    def expr(self, node: ast.expr) -> Any:
        self.budget.tick()
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in self.variables:
                return self.variables[node.id]
            if node.id in ("True", "False", "None"):
                return {"True": True, "False": False, "None": None}[node.id]
            raise ProgramError(f"line {node.lineno}: {node.id} is not defined")
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.expr(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Call):
            args = [self.expr(a) for a in node.args]
            kwargs = {k.arg: self.expr(k.value) for k in node.keywords if k.arg}
            if len(kwargs) != len(node.keywords):
                raise ProgramError(f"line {node.lineno}: **arguments are not allowed")
            started = time.monotonic()
            try:
                return self.functions[node.func.id](*args, **kwargs)
            except TypeError as exc:
                raise ProgramError(f"line {node.lineno}: {node.func.id}(): {exc}") from None
            finally:    # waiting for perception is not the program's time
                if node.func.id in API_FUNCTIONS:
                    self.budget.deadline += time.monotonic() - started
        if isinstance(node, ast.BoolOp):
            value = None
            for v in node.values:
                value = self.expr(v)
                if isinstance(node.op, ast.And) != bool(value):
                    return value
            return value
        if isinstance(node, ast.UnaryOp):
            value = self.expr(node.operand)
            return {ast.Not: lambda v: not v, ast.USub: lambda v: -v,
                    ast.UAdd: lambda v: +v}[type(node.op)](value)
        if isinstance(node, ast.BinOp):
            return self.binop(node.op, self.expr(node.left), self.expr(node.right))
        if isinstance(node, ast.Compare):
            left = self.expr(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                right = self.expr(right_node)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.expr(node.body) if self.expr(node.test) else self.expr(node.orelse)
        if isinstance(node, ast.Subscript):
            try:
                return self.expr(node.value)[self.expr(node.slice)]
            except (IndexError, KeyError, TypeError) as exc:
                raise ProgramError(f"line {node.lineno}: bad index: {exc}") from None
        raise ProgramError(f"line {node.lineno}: {type(node).__name__} is not allowed")

    @staticmethod
    def binop(op: ast.operator, left: Any, right: Any) -> Any:
        if isinstance(op, ast.Mult) and (isinstance(left, (str, list, tuple))
                                         or isinstance(right, (str, list, tuple))):
            raise ProgramError("repeating text or lists with * is not allowed")
        try:
            return _BINOPS[type(op)](left, right)
        except (TypeError, ZeroDivisionError) as exc:
            raise ProgramError(f"arithmetic failed: {exc}") from None


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b,
           ast.Mod: lambda a, b: a % b}
_COMPARE = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b,
            ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b,
            ast.GtE: lambda a, b: a >= b, ast.Is: lambda a, b: a is b,
            ast.IsNot: lambda a, b: a is not b, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b}


def run_program(source: str, locate: Locate, instruction: str = "", *,
                image_point: Point | None = None, planner: str = "program",
                max_statements: int = 2000, time_limit_s: float = 2.0) -> Plan:
    """Check and run `source`; the motions it asked for, as a Plan (ProgramError if not)."""
    tree = check_program(source)
    api = RobotApi(locate, image_point)
    try:
        _Interpreter(api, _Budget(max_statements, time_limit_s)).run(tree.body)
    except (_Break, _Continue):
        raise ProgramError("break/continue outside a loop") from None
    except RecursionError:
        raise ProgramError("the program nests too deeply") from None
    specs = api.finish()
    if not specs:
        raise ProgramError("the program asked for no motion")
    return make_plan(instruction or source, specs, planner, program=source)
