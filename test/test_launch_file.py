"""launch/full_stack.launch.py and `bimanual-vla up` must start the same nodes with the same
parameters. launch/launch_ros are not installable on this machine (no ROS apt repository), so the
launch file runs here against minimal stand-ins for the few classes it uses; with ROS 2 installed
the real modules are used instead.
"""
import importlib.util
import sys
import types

import pytest

from bimanual_core.bringup import node_launch_specs
from bimanual_core.config import repo_root


class _Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _stand_in_modules():
    launch = types.ModuleType("launch")
    launch.LaunchDescription = lambda entities: list(entities)
    actions = types.ModuleType("launch.actions")
    actions.DeclareLaunchArgument = type("DeclareLaunchArgument", (_Recorder,), {})
    actions.OpaqueFunction = type("OpaqueFunction", (_Recorder,), {})
    actions.SetEnvironmentVariable = type("SetEnvironmentVariable", (_Recorder,), {})
    substitutions = types.ModuleType("launch.substitutions")

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    substitutions.LaunchConfiguration = LaunchConfiguration
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = type("Node", (_Recorder,), {})
    return {"launch": launch, "launch.actions": actions, "launch.substitutions": substitutions,
            "launch_ros": launch_ros, "launch_ros.actions": ros_actions}


@pytest.fixture
def launch_module(monkeypatch):
    if importlib.util.find_spec("launch_ros") is None:
        for name, module in _stand_in_modules().items():
            monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location(
        "full_stack_launch", repo_root() / "launch" / "full_stack.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nodes(launch_module, **arguments):
    entities = launch_module.generate_launch_description()
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities
                if type(e).__name__ == "DeclareLaunchArgument"}
    opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    assert len(opaque) == 1
    return opaque[0].kwargs["function"]({**declared, **arguments})


def test_launch_file_starts_what_bimanual_vla_up_starts(launch_module):
    nodes = _nodes(launch_module)
    expected = node_launch_specs(overrides={"aloha_sim": {"task": "pick", "seed": 0}})
    assert [n.kwargs["name"] for n in nodes] == [s.name for s in expected]
    for node, spec in zip(nodes, expected):
        assert node.kwargs["package"] == "bimanual_vla"
        assert node.kwargs["executable"] == spec.executable
        assert node.kwargs["parameters"] == [spec.parameters]


def test_launch_arguments_reach_the_nodes(launch_module):
    nodes = {n.kwargs["name"]: n.kwargs["parameters"][0]
             for n in _nodes(launch_module, task="place", seed="4")}
    assert nodes["aloha_sim"]["task"] == "place" and nodes["aloha_sim"]["seed"] == 4
    assert all(p["use_sim_time"] for name, p in nodes.items() if name != "aloha_sim")
    real = {n.kwargs["name"] for n in _nodes(launch_module, sim="false")}
    assert "aloha_sim" not in real and "vla_backbone" in real


def test_embodiment_argument_reaches_every_node(launch_module):
    """`embodiment:=franka_duo` runs the same stack on the bi-arm Franka."""
    nodes = _nodes(launch_module, embodiment="franka_duo")
    expected = node_launch_specs(embodiment="franka_duo",
                                 overrides={"aloha_sim": {"task": "pick", "seed": 0}})
    assert [n.kwargs["parameters"] for n in nodes] == [[s.parameters] for s in expected]
    assert {n.kwargs["parameters"][0]["embodiment"] for n in nodes} == {"franka_duo"}


@pytest.mark.parametrize("embodiment,bridge", [("aloha2", "xs_sdk_bridge_node"),
                                               ("franka_duo", "franka_bridge_node")])
def test_sim_false_starts_the_bridge_of_the_embodiments_real_driver(launch_module, embodiment,
                                                                    bridge):
    """`sim:=false`: the real robot's bridge (config `real_driver.interface`) and camera bridge."""
    nodes = {n.kwargs["name"]: n.kwargs for n in _nodes(launch_module, sim="false",
                                                         embodiment=embodiment)}
    assert nodes["real_driver"]["executable"] == bridge
    assert nodes["real_cameras"]["executable"] == "camera_bridge_node"
    assert "aloha_sim" not in nodes
