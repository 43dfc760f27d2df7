"""ROS 2 node `real_driver` for the real ALOHA 2: the stack's commands -> Interbotix xs_sdk.

Each follower arm runs xs_sdk under its robot name (config `real_driver.namespaces`, e.g.
/follower_left). Per accepted stack command the bridge publishes, for each arm, one
interbotix_xs_msgs/JointGroupCommand (group `real_driver.arm_group`, the 6 arm joints in the
group's order, radians) on <ns>/commands/joint_group and one JointSingleCommand for the gripper
motor (normalised 0..1 -> radians, `real_driver.gripper`) on <ns>/commands/joint_single, as
ALOHA 2's own software does, once each arm's xs_sdk has confirmed through its RobotInfo service
(<ns>/get_robot_info) that the group holds the configured joints in the configured order.
Position commands go out on arrival; a joint trajectory is
followed by sampling it every 1/command_rate_hz. Both arms' <ns>/joint_states are merged into
the stack's joint states (gripper from the finger joint, normalised). Nothing is sent before the
state of every joint has been heard, nor while an arm's state is older than state_timeout_s.

interbotix_xs_msgs is imported only here, when this bridge is chosen; without it the node exits
with code 2 and says which package is missing.

Parameters (defaults from config/<embodiment>.yaml `real_driver:`):
  embodiment (str, "aloha2")      the embodiment; its real_driver.interface must be xs_sdk
  command_rate_hz (float)         rate at which a joint trajectory is sampled and sent
  state_timeout_s (float)         joint states older than this stop commands
"""
from __future__ import annotations

import time

import numpy as np

from aloha_driver.bridge_node import RobotBridge, import_robot_interface
from aloha_driver.real_driver import XsSdkContract
from bimanual_core.config import ConfigError
from bimanual_core.node_runner import run_node
from bimanual_core.ros_conversions import RELIABLE_QOS

INTERBOTIX_ORIGIN = "Interbotix/interbotix_ros_core, interbotix_ros_xseries/interbotix_xs_msgs"
RESEND_S = 2.0


class XsSdkBridge(RobotBridge):
    """The stack's driver contract on one side, two xs_sdk followers on the other."""

    def __init__(self, **kwargs):
        self.JointGroupCommand, self.JointSingleCommand = import_robot_interface(
            "interbotix_xs_msgs", "msg", ["JointGroupCommand", "JointSingleCommand"],
            INTERBOTIX_ORIGIN)
        (self.RobotInfo,) = import_robot_interface("interbotix_xs_msgs", "srv", ["RobotInfo"],
                                                   INTERBOTIX_ORIGIN)
        super().__init__("real_driver", "aloha2", **kwargs)
        c: XsSdkContract = self.contract
        rate = float(self.declare_parameter("command_rate_hz", c.command_rate_hz).value)
        if not rate > 0:
            raise ConfigError(f"command_rate_hz must be > 0, got {rate}")
        self._group_pubs = {arm: self.create_publisher(self.JointGroupCommand, a.group_topic,
                                                       RELIABLE_QOS)
                            for arm, a in c.arms.items()}
        self._single_pubs = {arm: self.create_publisher(self.JointSingleCommand, a.single_topic,
                                                        RELIABLE_QOS)
                             for arm, a in c.arms.items()}
        self.create_timer(1.0 / rate, self._follow_trajectory)
        # Before commanding, each arm's xs_sdk must confirm the group's joints and their order.
        self._unverified = {arm: self.create_client(self.RobotInfo, a.robot_info_service)
                            for arm, a in c.arms.items() if a.robot_info_service}
        self._pending: dict[str, object] = {}
        self.contract_error: str | None = None
        if self._unverified:
            self.create_timer(0.5, self._verify_groups)
            self._verify_groups()
        self.get_logger().info(
            "xs_sdk bridge for " + ", ".join(f"{arm} at {a.namespace}" for arm, a in c.arms.items())
            + f"; group {c.group_name!r}, trajectories sampled at {rate:g} Hz")

    def load_contract(self, embodiment):
        return XsSdkContract.from_embodiment(embodiment)

    def refusal(self) -> str | None:
        if self.contract_error:
            return self.contract_error
        if self._unverified:
            return ("xs_sdk group not confirmed yet by " + ", ".join(
                self.contract.arms[a].robot_info_service for a in self._unverified))
        return super().refusal()

    def _verify_groups(self) -> None:
        """Ask each unconfirmed follower; a question unanswered for RESEND_S is asked again
        (DDS may drop a first reply)."""
        for arm, client in list(self._unverified.items()):
            pending = self._pending.get(arm)
            if pending is not None and time.monotonic() - pending[1] < RESEND_S:
                continue
            if not client.service_is_ready():
                continue
            request = self.RobotInfo.Request(cmd_type="group", name=self.contract.group_name)
            future = client.call_async(request)
            self._pending[arm] = (future, time.monotonic())
            future.add_done_callback(lambda f, arm=arm: self._on_group_info(arm, f))

    def _on_group_info(self, arm: str, future) -> None:
        if arm not in self._unverified:
            return                          # an earlier or later answer already settled it
        self._pending.pop(arm, None)
        response = future.result()
        if response is None:
            return                          # asked again by the timer
        mismatch = self.contract.group_mismatch(arm, response.joint_names)
        if mismatch:
            self.contract_error = f"not commanding: {mismatch}"
            self.get_logger().error(self.contract_error)
        self._unverified.pop(arm, None)
        if not mismatch:
            self.get_logger().info(f"{arm}: xs_sdk group {self.contract.group_name!r} confirmed "
                                   f"({', '.join(response.joint_names)}, mode {response.mode})")

    def send_target(self, target: np.ndarray) -> None:
        c: XsSdkContract = self.contract
        for arm, a in c.arms.items():
            group, gripper = c.arm_command(arm, target)
            self._group_pubs[arm].publish(self.JointGroupCommand(name=c.group_name, cmd=group))
            self._single_pubs[arm].publish(self.JointSingleCommand(name=a.gripper_joint,
                                                                   cmd=gripper))
        self.commands_sent += 1

    def on_trajectory(self, names, times, rows, held_at_receipt) -> None:
        if len(rows) == 0:                  # stop: hold where the command is now
            self.send_target(self.held.target(self.now()))

    def _follow_trajectory(self) -> None:
        if self.held is None or not self.held.following:
            return
        reason = self.refusal()
        if reason is not None:              # never finish a trajectory on a stale state
            self.held.reset(self.held.target(self.now()))
            self.log_throttled("refused", f"trajectory dropped: {reason}")
            return
        self.send_target(self.held.target(self.now()))


def main(args=None) -> int:
    return run_node(XsSdkBridge, "real_driver", args=args)


if __name__ == "__main__":
    raise SystemExit(main())
