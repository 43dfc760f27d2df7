"""ROS 2 node `real_driver` for the real bi-arm Franka: the stack's commands -> franka_ros2.

Each arm runs franka_ros2 in its own namespace (config `real_driver.namespaces`, e.g. /left):
ros2_control at 1 kHz with a joint_trajectory_controller, the joint_state_broadcaster and the
franka_gripper node. The bridge sends each arm one trajectory_msgs/JointTrajectory per accepted
stack command on <ns>/joint_trajectory_controller/joint_trajectory, with that arm's joint names
(arm prefix included, `real_driver.joint_map`): a position command becomes one point
time_from_start_s ahead (one control period), a stack trajectory is split per arm with its
times kept; the controller interpolates between points at 1 kHz. The Franka Hand takes goals,
not a stream: when an arm's normalised gripper command falls below close_below the bridge sends
one franka_msgs Grasp goal (<ns>/franka_gripper/grasp), when it rises above open_above one Move
goal to open_width (<ns>/franka_gripper/move); never a goal per tick, and a goal still running
when the next is sent is canceled first (franka_gripper then stops the hand): one goal per hand.
Both arms' joint states and both hands' finger joints (normalised) are merged into the stack's
joint states. Nothing is sent before every joint's state has been heard, nor while a state
topic is older than state_timeout_s.

franka_msgs is imported only here, when this bridge is chosen; without it the node exits with
code 2 and says which package is missing.

Parameters (defaults from config/<embodiment>.yaml `real_driver:`):
  embodiment (str, "franka_duo")  the embodiment; its real_driver.interface must be franka_ros2
  time_from_start_s (float)       how far ahead a position command's single point lies
  state_timeout_s (float)         joint states older than this stop commands
"""
from __future__ import annotations

import numpy as np
from rclpy.action import ActionClient
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from aloha_driver.bridge_node import RobotBridge, import_robot_interface
from aloha_driver.real_driver import FrankaContract, GripperLatch
from bimanual_core.config import ConfigError
from bimanual_core.node_runner import run_node
from bimanual_core.ros_conversions import RELIABLE_QOS, sec_to_duration

FRANKA_ORIGIN = "frankaemika/franka_ros2, franka_msgs"


class FrankaBridge(RobotBridge):
    """The stack's driver contract on one side, two franka_ros2 arms and hands on the other."""

    def __init__(self, **kwargs):
        self.Grasp, self.Move = import_robot_interface("franka_msgs", "action", ["Grasp", "Move"],
                                                       FRANKA_ORIGIN)
        super().__init__("real_driver", "franka_duo", **kwargs)
        c: FrankaContract = self.contract
        self.time_from_start_s = float(self.declare_parameter(
            "time_from_start_s", c.time_from_start_s).value)
        if not self.time_from_start_s > 0:
            raise ConfigError(f"time_from_start_s must be > 0, got {self.time_from_start_s}")
        self._traj_pubs = {arm: self.create_publisher(JointTrajectory, a.trajectory_topic,
                                                      RELIABLE_QOS)
                           for arm, a in c.arms.items()}
        self._grasp = {arm: ActionClient(self, self.Grasp, a.grasp_action)
                       for arm, a in c.arms.items()}
        self._move = {arm: ActionClient(self, self.Move, a.move_action)
                      for arm, a in c.arms.items()}
        self._latches = {arm: GripperLatch(c.gripper.close_below, c.gripper.open_above)
                         for arm in c.arms}
        self.gripper_goals_sent = 0
        # arm -> the goal not finished yet: its send future until accepted, then its handle
        self._in_flight: dict[str, object] = {}
        # A stack trajectory's gripper values are applied when their time comes.
        self.create_timer(self.embodiment.control_period, self._follow_gripper)
        self.get_logger().info(
            "franka_ros2 bridge for " + ", ".join(
                f"{arm}: {a.trajectory_topic}, {a.grasp_action}" for arm, a in c.arms.items()))

    def load_contract(self, embodiment):
        return FrankaContract.from_embodiment(embodiment)

    def _publish_arm(self, arm: str, times, rows) -> None:
        a = self.contract.arms[arm]
        msg = JointTrajectory(joint_names=list(a.real_joints))   # stamp 0: start on receipt
        msg.points = [JointTrajectoryPoint(positions=[float(v) for v in row],
                                           time_from_start=sec_to_duration(float(t)))
                      for t, row in zip(times, rows)]
        self._traj_pubs[arm].publish(msg)

    def send_target(self, target: np.ndarray) -> None:
        for arm, a in self.contract.arms.items():
            self._publish_arm(arm, [self.time_from_start_s], [target[list(a.arm_indices)]])
        self._update_grippers(target)
        self.commands_sent += 1

    def on_trajectory(self, names, times, rows, held_at_receipt) -> None:
        c: FrankaContract = self.contract
        for arm in c.arms:
            if len(rows) == 0:              # the controller's stop: an empty trajectory
                self._traj_pubs[arm].publish(JointTrajectory(
                    joint_names=list(c.arms[arm].real_joints)))
                continue
            arm_rows = c.arm_trajectory(arm, names, rows, held_at_receipt)
            if arm_rows is not None:
                self._publish_arm(arm, times, arm_rows)
        self.commands_sent += 1
        self._follow_gripper()

    def _follow_gripper(self) -> None:
        if self.held is None or not self.held.following:
            return
        if self.refusal() is not None:
            self.held.reset(self.held.target(self.now()))
            return
        self._update_grippers(self.held.target(self.now()))

    def _update_grippers(self, target: np.ndarray) -> None:
        c: FrankaContract = self.contract
        g = c.gripper
        for arm, a in c.arms.items():
            action = self._latches[arm].update(float(target[a.gripper_index]))
            if action is None:
                continue
            client = self._grasp[arm] if action == "grasp" else self._move[arm]
            if not client.server_is_ready():
                self._latches[arm].state = None     # try again with the next command
                self.log_throttled(f"gripper_{arm}", f"{arm}: gripper action server "
                                   f"{a.grasp_action if action == 'grasp' else a.move_action} "
                                   "is not available", "error")
                continue
            previous = self._in_flight.pop(arm, None)
            if previous is not None:            # one goal per hand: the newer intent wins
                self._cancel(previous)
            if action == "grasp":
                goal = self.Grasp.Goal(width=g.grasp_width, speed=g.speed, force=g.force)
                goal.epsilon.inner, goal.epsilon.outer = g.epsilon_inner, g.epsilon_outer
            else:
                goal = self.Move.Goal(width=g.open_width, speed=g.speed)
            sent = client.send_goal_async(goal)
            self._in_flight[arm] = sent
            sent.add_done_callback(
                lambda f, arm=arm, action=action: self._goal_sent(arm, action, f))
            self.gripper_goals_sent += 1

    @staticmethod
    def _cancel(pending) -> None:
        """Cancel a goal, also one whose acceptance has not arrived yet (then once it does)."""
        if hasattr(pending, "cancel_goal_async"):
            pending.cancel_goal_async()
            return

        def when_accepted(future):
            handle = future.result()
            if handle is not None and handle.accepted:
                handle.cancel_goal_async()
        pending.add_done_callback(when_accepted)

    def _goal_sent(self, arm: str, action: str, future) -> None:
        handle = future.result()
        if handle is None or not handle.accepted:
            self.get_logger().error(f"{arm}: gripper {action} goal rejected")
            return
        if self._in_flight.get(arm) is future:
            self._in_flight[arm] = handle
        handle.get_result_async().add_done_callback(
            lambda f: self._goal_done(arm, action, handle, f.result()))

    def _goal_done(self, arm: str, action: str, handle, response) -> None:
        if self._in_flight.get(arm) is handle:
            del self._in_flight[arm]
        result = response.result
        if not result.success:
            # A grasp that closes on nothing fails by design; the policy sees it in the state.
            self.get_logger().info(f"{arm}: gripper {action} did not succeed: {result.error}")


def main(args=None) -> int:
    return run_node(FrankaBridge, "real_driver", args=args)


if __name__ == "__main__":
    raise SystemExit(main())
