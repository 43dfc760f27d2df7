"""Run one node as a process: the same start-up, spin and shutdown for every node of the stack.

rclpy.init installs SIGINT/SIGTERM handlers that shut the context down, which ends `spin`; the
node is then destroyed and the process exits 0. A node that cannot start because of a bad
parameter or configuration (ValueError, ConfigError) logs one FATAL line with the reason, no
traceback, and exits 2. A signal can shut the context down while a callback is running; rclpy
then raises from inside that callback (e.g. "Unable to convert call argument" from a publish on
the dead context, or from taking a message on a subscription being torn down). Such an error
after shutdown has begun is the shutdown itself, not a failure. rclpy shuts the context down from
its own signal-handling thread, so the error can surface a moment before `rclpy.ok()` turns
false: an error is re-raised only if the context is still up after SHUTDOWN_GRACE_S.
"""
from __future__ import annotations

import time
from typing import Callable, TypeVar

import rclpy
from rclpy.executors import (ExternalShutdownException, MultiThreadedExecutor,
                             SingleThreadedExecutor)
from rclpy.node import Node

N = TypeVar("N", bound=Node)
EXIT_BAD_CONFIGURATION = 2
SHUTDOWN_GRACE_S = 1.0


def _shutting_down(grace_s: float | None = None) -> bool:
    """Whether the context is shut down, or goes down within `grace_s` (SHUTDOWN_GRACE_S)."""
    deadline = time.monotonic() + (SHUTDOWN_GRACE_S if grace_s is None else grace_s)
    while rclpy.ok() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not rclpy.ok()


def run_node(make_node: Callable[[], N], name: str, args=None, threads: int = 1,
             before_spin: Callable[[N], None] | None = None,
             after_spin: Callable[[N], None] | None = None,
             exit_code: Callable[[N], int] | None = None) -> int:
    """Create the node, spin it until shutdown, clean up.

    threads: 1 for nodes whose callbacks never block (a multi-threaded executor busy-spins on
      sim-time timers); more where a callback waits on another callback (nested service calls).
    before_spin / after_spin: start and stop work the node owns (e.g. the simulator's thread).
    exit_code: the process's exit status after a normal shutdown (default 0).
    """
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = make_node()
        except ValueError as exc:          # ConfigError is a ValueError
            rclpy.logging.get_logger(name).fatal(f"cannot start: {exc}")
            return EXIT_BAD_CONFIGURATION
        executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 \
            else SingleThreadedExecutor()
        executor.add_node(node)
        if before_spin:
            before_spin(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if not _shutting_down():
            raise
    finally:
        if node is not None:
            if after_spin:
                after_spin(node)
            node.destroy_node()
        rclpy.try_shutdown()
    return exit_code(node) if exit_code and node is not None else 0
