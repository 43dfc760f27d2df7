"""The config files are the single source of truth; check they load and agree with each other."""
import numpy as np
import pytest

from bimanual_core.config import ConfigError, load_embodiment, load_stack
from bimanual_core.instructions import InstructionError, TaskSpec, parse_instruction


def test_aloha2_embodiment_contract():
    emb = load_embodiment("aloha2")
    assert emb.action_dim == 14
    assert emb.joint_names[:7] == ["left_waist", "left_shoulder", "left_elbow", "left_forearm_roll",
                                   "left_wrist_angle", "left_wrist_rotate", "left_gripper"]
    assert emb.gripper_indices == [6, 13]
    assert emb.control_rate_hz == 50.0
    assert set(emb.cameras) == {"cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"}
    assert np.all(emb.home >= emb.lower) and np.all(emb.home <= emb.upper)


def test_stack_nodes_have_installed_executables():
    import tomllib
    from bimanual_core.config import repo_root
    scripts = tomllib.loads((repo_root() / "pyproject.toml").read_text())["project"]["scripts"]
    stack = load_stack()
    for node in stack.nodes:
        assert node.executable in scripts, node.name
    assert stack.selected_nodes(sim=False) != stack.selected_nodes(sim=True)


def test_unknown_embodiment_is_a_clear_error():
    with pytest.raises(ConfigError, match="not found"):
        load_embodiment("no_such_robot")


@pytest.mark.parametrize("text,spec", [
    ("pick up the red cube", TaskSpec("pick", "red cube")),
    ("Please lift the blue cube with the left arm.", TaskSpec("pick", "blue cube", arm="left_arm")),
    ("put the red cube in the bowl", TaskSpec("place", "red cube", target="bowl")),
    ("hand the red cube over to the right arm", TaskSpec("handover", "red cube", target="right_arm")),
])
def test_instruction_parsing(text, spec):
    assert parse_instruction(text) == spec


@pytest.mark.parametrize("text,why", [("", "empty"), ("   ", "empty"), ("dance a jig", "cannot interpret"),
                                      ("pick up the cube" + "e" * 600, "limit"),
                                      ("pick up the red\x00cube", "control")])
def test_malformed_instructions_are_rejected(text, why):
    with pytest.raises(InstructionError, match=why):
        parse_instruction(text)


def test_task_hint_must_agree():
    with pytest.raises(InstructionError, match="pick task, not place"):
        parse_instruction("pick up the red cube", task_hint="place")
