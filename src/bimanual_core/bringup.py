"""Bring the stack up as separate processes, from `config/stack.yaml`.

This is the equivalent of `launch/full_stack.launch.py` for machines without launch_ros; both take
their node list and parameters from `node_launch_specs()`, so they cannot drift. No ROS imports.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

import yaml

from bimanual_core.config import (StackConfig, load_embodiment, load_stack, resolve_checkpoint,
                                  runtime_environment)


@dataclass(frozen=True)
class LaunchSpec:
    """One node process: what runs, as which node, with which parameters."""

    name: str
    executable: str
    module: str | None           # "package.module:function"; None when only `ros2 run` knows it
    parameters: dict[str, Any]


def _script_targets() -> dict[str, str]:
    """Executable name -> entry point, from the installed distribution's console scripts."""
    from importlib.metadata import entry_points
    return {ep.name: ep.value for ep in entry_points(group="console_scripts")}


def node_launch_specs(stack: StackConfig | None = None, embodiment: str | None = None,
                      sim: bool = True, overrides: dict[str, dict[str, Any]] | None = None
                      ) -> list[LaunchSpec]:
    """The processes of the stack, with their final parameters.

    Every node gets `embodiment` and `use_sim_time` (sim time when the simulator runs) unless its
    own entry sets them; `overrides` maps node name -> parameters that win over the config.
    Without the simulator, nodes marked `real:<interface>` run only for the embodiment whose
    real_driver.interface that is (the bridge to its robot).
    """
    stack = stack or load_stack()
    targets = _script_targets()
    overrides = overrides or {}
    specs = []
    interface = None if sim else (load_embodiment(embodiment or stack.embodiment).real_driver
                                  or {}).get("interface")
    for node in stack.selected_nodes(sim=sim, real_interface=interface):
        params: dict[str, Any] = {"embodiment": embodiment or stack.embodiment,
                                  "use_sim_time": bool(sim and stack.use_sim_time)}
        params.update(node.parameters)
        params.update(overrides.get(node.name, {}))
        specs.append(LaunchSpec(node.name, node.executable, targets.get(node.executable), params))
    return specs


def backbone_policy(policy: str) -> tuple[str, dict[str, Any]]:
    """A policy as users name it -> (registered policy, parameters of the backbone node).

    Registered names (zero_shot, learned, remote) pass through; anything else is a checkpoint:
    a directory, or a model shipped in models/ (`default`), served by the learned policy.
    """
    from vla_backbone_node.policy import available_policies
    if policy in available_policies():
        return policy, {"policy": policy}
    return "learned", {"policy": "learned", "checkpoint": resolve_checkpoint(policy)}


def with_backbone_policy(overrides: dict[str, dict[str, Any]] | None, policy: str
                         ) -> tuple[str, dict[str, dict[str, Any]]]:
    """`overrides` plus the backbone parameters that select `policy`; and its registered name."""
    name, params = backbone_policy(policy)
    merged = {node: dict(p) for node, p in (overrides or {}).items()}
    merged.setdefault("vla_backbone", {}).update(params)
    return name, merged


def ros_args(spec: LaunchSpec, params_file: Path) -> list[str]:
    return ["--ros-args", "-r", f"__node:={spec.name}", "--params-file", str(params_file)]


def write_params_file(spec: LaunchSpec, directory: Path) -> Path:
    path = directory / f"{spec.name}.params.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": spec.parameters}}))
    return path


class StackProcesses:
    """Start each node as its own process; stop them all (SIGINT, then SIGTERM, then SIGKILL)."""

    def __init__(self, specs: list[LaunchSpec], log_dir: Path, env: dict[str, str] | None = None,
                 echo: TextIO | None = None):
        self.specs = specs
        self.log_dir = Path(log_dir)
        self.env = dict(os.environ if env is None else env)
        runtime_environment(self.env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.echo = echo
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            if spec.module is None:
                raise RuntimeError(f"executable {spec.executable!r} of node {spec.name!r} is not "
                                   "installed in this Python environment; run `make setup`")
            module, func = spec.module.split(":")
            params = write_params_file(spec, self.log_dir)
            cmd = [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())",
                   *ros_args(spec, params)]
            log = open(self.log_dir / f"{spec.name}.log", "wb")
            self.procs[spec.name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                     env=self.env, start_new_session=True)
            log.close()
            if self.echo:
                print(f"[up] started {spec.name} (pid {self.procs[spec.name].pid}), "
                      f"log {self.log_dir / (spec.name + '.log')}", file=self.echo)

    def dead(self) -> dict[str, int]:
        """Nodes that exited, with their exit codes."""
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def wait_until_ready(self, is_ready: Callable[[float], bool], timeout: float) -> str | None:
        """Poll `is_ready(1.0)` until it holds; None when ready, else why not (a node died, with
        its log tail, or the timeout)."""
        deadline = time.monotonic() + timeout
        while not is_ready(1.0):
            failure = self.failure()
            if failure:
                return failure
            if time.monotonic() > deadline:
                return f"the stack was not ready within {timeout:.0f} s"
        return None

    def failure(self) -> str | None:
        """None while every node runs; else which exited, with the last lines of their logs."""
        return "\n".join(f"node {name} exited with code {code}; last lines of its log:\n"
                          f"{self.log_tail(name)}" for name, code in self.dead().items()) or None

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            alive = [p for p in self.procs.values() if p.poll() is None]
            if not alive:
                break
            for p in alive:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            for p in alive:
                try:
                    p.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        return {n: p.returncode for n, p in self.procs.items()}

    def __enter__(self) -> "StackProcesses":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
