"""What the real-robot bridges share as ROS nodes: the stack's side of the contract.

A bridge subscribes to the stack's command topics (`driver:` in the embodiment file: position
commands, std_msgs/Float64MultiArray in the embodiment's order, and joint trajectories,
trajectory_msgs/JointTrajectory, both accepted whichever the decoder uses), merges the robot's
joint states into the stack's sensor_msgs/JointState (embodiment order, grippers normalised) and
refuses to command until every joint's state has been heard, and whenever a state topic falls
silent for `state_timeout_s`. Subclasses (`xs_sdk_bridge`, `franka_bridge`) turn accepted
commands into the robot's messages. The conversions live in `real_driver` (no ROS).

QoS: robot joint states are read best effort (matches both reliable publishers such as xs_sdk
and best-effort ones such as franka_gripper's SensorDataQoS); commands and the merged state are
reliable, as in simulation.
"""
from __future__ import annotations

import importlib
import time

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from aloha_driver.commands import CommandError, HeldCommand
from aloha_driver.real_driver import StateMerger
from bimanual_core.config import ConfigError, load_embodiment
from bimanual_core.ros_conversions import RELIABLE_QOS, SENSOR_QOS, duration_to_sec, time_to_sec

LOG_PERIOD_S = 2.0


class MissingInterfaceError(ConfigError):
    """The robot's ROS 2 message package is not installed in this environment."""


def import_robot_interface(package: str, module: str, names: list[str], origin: str):
    """`from <package>.<module> import <names>`, only when the bridge for that robot is chosen,
    with an error that names the missing package instead of a bare ImportError."""
    try:
        mod = importlib.import_module(f"{package}.{module}")
        return [getattr(mod, n) for n in names]
    except (ImportError, AttributeError) as exc:
        raise MissingInterfaceError(
            f"this bridge needs the ROS 2 package {package!r} ({origin}), which is not "
            f"importable here ({exc}); build it in a workspace and source its setup file before "
            "starting the stack") from None


class RobotBridge(Node):
    """Base of the real-robot bridge nodes (see the module docstring).

    Parameters:
      embodiment (str)                  config/<embodiment>.yaml; its `real_driver` is the contract
      state_timeout_s (float, config)   joint states older than this stop commands
    """

    def __init__(self, name: str, default_embodiment: str, **kwargs):
        super().__init__(name, **kwargs)
        self.embodiment = load_embodiment(
            self.declare_parameter("embodiment", default_embodiment).value)
        self.contract = self.load_contract(self.embodiment)
        self.state_timeout_s = float(self.declare_parameter(
            "state_timeout_s", self.contract.state_timeout_s).value)
        if not self.state_timeout_s > 0:
            raise ConfigError(f"state_timeout_s must be > 0, got {self.state_timeout_s}")
        emb = self.embodiment
        self.merger = StateMerger(emb.action_dim, self.contract.state_sources(), emb.joint_names)
        self.held: HeldCommand | None = None        # created from the state at the first command
        self.commands_sent = self.commands_refused = 0
        self._last_log: dict[str, float] = {}
        self._was_ready = False
        self._state_pub = self.create_publisher(JointState, emb.driver["joint_states_topic"],
                                                RELIABLE_QOS)
        for topic in self.merger.topics:
            self.create_subscription(JointState, topic,
                                     lambda msg, t=topic: self._on_robot_state(t, msg), SENSOR_QOS)
        self.create_subscription(Float64MultiArray, emb.driver["forward_position_topic"],
                                 self._on_position, RELIABLE_QOS)
        self.create_subscription(JointTrajectory, emb.driver["joint_trajectory_topic"],
                                 self._on_trajectory, RELIABLE_QOS)

    # --- for subclasses -------------------------------------------------------------------------
    def load_contract(self, embodiment):
        raise NotImplementedError

    def send_target(self, target: np.ndarray) -> None:
        """Command the robot to `target` (embodiment order, grippers normalised) now."""
        raise NotImplementedError

    def on_trajectory(self, names: list[str], times: np.ndarray, rows: np.ndarray,
                      held_at_receipt: np.ndarray) -> None:
        """A stack trajectory was accepted (HeldCommand `self.held` follows it too); no points
        (`rows` empty) means stop and hold."""

    # --- shared ---------------------------------------------------------------------------------
    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def log_throttled(self, key: str, text: str, level: str = "warning") -> None:
        t = time.monotonic()
        if t - self._last_log.get(key, -1e9) >= LOG_PERIOD_S:
            self._last_log[key] = t
            # one call site per severity: rclpy refuses a call site whose severity changes
            if level == "error":
                self.get_logger().error(text)
            else:
                self.get_logger().warning(text)

    def refusal(self) -> str | None:
        """None while the robot may be commanded, else why not."""
        return self.merger.refusal(self.now(), self.state_timeout_s)

    def _accept(self) -> bool:
        reason = self.refusal()
        if reason is not None:
            self.commands_refused += 1
            self.log_throttled(f"refused: {reason}", f"command refused: {reason}")
            return False
        if self.held is None:
            self.held = HeldCommand(self.embodiment.joint_names, self.merger.position.copy())
        return True

    def _on_robot_state(self, topic: str, msg: JointState) -> None:
        if not self.merger.update(topic, msg.name, msg.position, msg.velocity, msg.effort,
                                  self.now()):
            return
        if not self.merger.complete:
            return
        if not self._was_ready:
            self._was_ready = True
            self.get_logger().info("joint states of every joint heard; commands accepted")
        out = JointState(name=self.embodiment.joint_names,
                         position=self.merger.position.tolist(),
                         velocity=self.merger.velocity.tolist(),
                         effort=self.merger.effort.tolist())
        out.header.stamp = msg.header.stamp if time_to_sec(msg.header.stamp) > 0 \
            else self.get_clock().now().to_msg()
        self._state_pub.publish(out)

    def _on_position(self, msg: Float64MultiArray) -> None:
        if not self._accept():
            return
        try:
            self.held.set_position(msg.data)
        except CommandError as exc:
            self.log_throttled("bad_position", f"position command rejected: {exc}")
            return
        self.send_target(self.held.target(self.now()))

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        if not self._accept():
            return
        now = self.now()
        held = self.held.target(now)
        times = [duration_to_sec(p.time_from_start) for p in msg.points]
        rows = [list(p.positions) for p in msg.points]
        try:
            self.held.set_trajectory(list(msg.joint_names), times, rows, now)
        except CommandError as exc:
            self.log_throttled("bad_trajectory", f"trajectory rejected: {exc}")
            return
        self.on_trajectory(list(msg.joint_names), np.asarray(times, dtype=float),
                           np.asarray(rows, dtype=float).reshape(len(rows), -1), held)
