"""Bring up the whole bimanual_vla stack (ROS 2 with launch_ros).

    ros2 launch bimanual_vla full_stack.launch.py                      # ALOHA 2 in MuJoCo
    ros2 launch bimanual_vla full_stack.launch.py sim:=false           # real robot driver
    ros2 launch bimanual_vla full_stack.launch.py task:=place seed:=3

The node list and every parameter come from config/stack.yaml through the same function that
`bimanual-vla up` uses on machines without launch_ros, so the two cannot drift.
"""
from launch import LaunchDescription
import os

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from bimanual_core.bringup import node_launch_specs
from bimanual_core.config import runtime_environment


def _nodes(context):
    value = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    sim = value("sim").lower() in ("1", "true", "yes")
    overrides = {"aloha_sim": {"task": value("task"), "seed": int(value("seed"))}}
    specs = node_launch_specs(embodiment=value("embodiment"), sim=sim, overrides=overrides)
    return [Node(package="bimanual_vla", executable=spec.executable, name=spec.name,
                 parameters=[spec.parameters], output="screen", emulate_tty=True)
            for spec in specs]


def generate_launch_description():
    env: dict[str, str] = dict(os.environ)
    runtime_environment(env)
    keep_set = [SetEnvironmentVariable(k, env[k]) for k in
                ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE", "MUJOCO_GL")]
    return LaunchDescription(keep_set + [
        DeclareLaunchArgument("embodiment", default_value="aloha2",
                              description="config/<embodiment>.yaml to run"),
        DeclareLaunchArgument("sim", default_value="true",
                              description="run the MuJoCo simulation instead of the robot"),
        DeclareLaunchArgument("task", default_value="pick", description="simulation task scene"),
        DeclareLaunchArgument("seed", default_value="0", description="simulation scene seed"),
        OpaqueFunction(function=_nodes),
    ])
