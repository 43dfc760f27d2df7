"""Success is judged from object poses with the thresholds of config/tasks.yaml."""
import numpy as np

from bimanual_core.instructions import parse_instruction
from instruction_server.success import ObjectState, judge, load_success_criteria

CRITERIA = load_success_criteria()
CUBE = np.array([0.04, 0.04, 0.04])


def scene(**positions):
    sizes = {"bowl": np.array([0.14, 0.14, 0.04])}
    return {label.replace("_", " "): ObjectState(label.replace("_", " "), np.array(p, float),
                                                 sizes.get(label, CUBE))
            for label, p in positions.items()}


def test_pick_needs_the_named_object_lifted():
    before = scene(red_cube=[0, 0.5, 0.02], blue_cube=[0.1, 0.5, 0.02])
    lifted = scene(red_cube=[0, 0.5, 0.13], blue_cube=[0.1, 0.5, 0.02])
    wrong = scene(red_cube=[0, 0.5, 0.02], blue_cube=[0.1, 0.5, 0.13])
    spec = parse_instruction("pick up the red cube")
    assert judge(spec, before, lifted, CRITERIA).success
    verdict = judge(spec, before, wrong, CRITERIA)
    assert not verdict.success and "0.0 cm" in verdict.reason


def test_pick_of_an_absent_object_fails_with_reason():
    before = scene(red_cube=[0, 0.5, 0.02])
    verdict = judge(parse_instruction("pick up the purple cube"), before, before, CRITERIA)
    assert not verdict.success and "no single 'purple cube'" in verdict.reason


def test_place_needs_the_object_inside_the_container():
    before = scene(red_cube=[-0.1, 0.5, 0.02], bowl=[0.1, 0.5, 0.0])
    inside = scene(red_cube=[0.11, 0.51, 0.03], bowl=[0.1, 0.5, 0.0])
    beside = scene(red_cube=[0.25, 0.5, 0.02], bowl=[0.1, 0.5, 0.0])
    above = scene(red_cube=[0.1, 0.5, 0.30], bowl=[0.1, 0.5, 0.0])
    spec = parse_instruction("put the red cube in the bowl")
    verdict = judge(spec, before, inside, CRITERIA)
    assert verdict.success is True        # a Python bool, as ExecuteInstruction.Result needs
    assert not judge(spec, before, beside, CRITERIA).success
    assert not judge(spec, before, above, CRITERIA).success


def test_handover_needs_the_object_up_on_the_receiving_side():
    before = scene(red_cube=[-0.1, 0.5, 0.02])
    handed = scene(red_cube=[0.05, 0.5, 0.2])
    kept = scene(red_cube=[-0.05, 0.5, 0.2])
    spec = parse_instruction("hand the red cube over to the right arm")
    assert judge(spec, before, handed, CRITERIA).success is True
    assert not judge(spec, before, kept, CRITERIA).success


def test_object_states_from_sim_object_messages():
    from bimanual_vla.msg import SimObject
    from instruction_server.success import object_states
    cube = SimObject(name="red_cube", label="red cube")
    cube.pose.position.x, cube.pose.position.y, cube.pose.position.z = 0.1, 0.5, 0.02
    cube.size.x = cube.size.y = cube.size.z = 0.04
    states = object_states([cube])
    assert list(states) == ["red cube"]
    assert states["red cube"].position.tolist() == [0.1, 0.5, 0.02]
    assert states["red cube"].size.tolist() == [0.04, 0.04, 0.04]
