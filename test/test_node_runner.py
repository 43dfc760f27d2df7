"""run_node tells an error raised by a shutdown in progress from a real failure."""
import threading

import pytest
import rclpy

from bimanual_core import node_runner


def test_an_error_during_a_signal_shutdown_is_the_shutdown_and_a_live_context_is_a_failure(
        ros_domain):
    rclpy.init(domain_id=ros_domain)
    try:
        assert not node_runner._shutting_down(grace_s=0.2)           # still up: a real error
        # rclpy shuts the context down from its signal thread a moment after the error surfaces.
        threading.Timer(0.1, rclpy.try_shutdown).start()
        assert node_runner._shutting_down(grace_s=2.0)
    finally:
        rclpy.try_shutdown()


def test_a_node_that_raises_while_the_context_is_up_fails_the_process(ros_domain, monkeypatch):
    monkeypatch.setattr(node_runner, "SHUTDOWN_GRACE_S", 0.1)

    class Broken(rclpy.node.Node):
        def __init__(self):
            super().__init__("broken")
            self.create_timer(0.01, self.fail)

        def fail(self):
            raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        node_runner.run_node(Broken, "broken", args=["--ros-args", "-p", "x:=1"])
    assert not rclpy.ok()
