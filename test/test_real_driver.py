"""The real robots' contracts in config/ against the robots' own joint names and units, and the
bridge logic (gripper units, state merging, refusal before state, gripper goals). No ROS."""
import io
import math

import numpy as np
import pytest
from PIL import Image as PILImage

from aloha_driver.real_driver import (FrankaContract, GripperLatch, ImageDecodeError,
                                      LinearScale, StateMerger, XsSdkContract, camera_sources,
                                      decode_compressed, join_topic, load_contract)
from bimanual_core.bringup import node_launch_specs
from bimanual_core.config import ConfigError, load_embodiment

ALOHA = load_embodiment("aloha2")
FRANKA = load_embodiment("franka_duo")

# The joints the real robots publish (Interbotix vx300s description as xs_sdk reports it; the
# franka_description FR3 with an arm prefix, and the Franka Hand's finger joints).
VX300S_JOINTS = {"waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate",
                 "gripper", "left_finger", "right_finger"}
VX300S_ARM_GROUP = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate"]


def fr3_joints(prefix):
    return {f"{prefix}fr3_joint{k}" for k in range(1, 8)} | {
        f"{prefix}fr3_finger_joint{k}" for k in (1, 2)}


def with_real_driver(emb, **changes):
    """A copy of `emb` whose real_driver section has `changes` applied."""
    import dataclasses
    return dataclasses.replace(emb, real_driver={**emb.real_driver, **changes})


def test_every_aloha_joint_maps_to_a_real_xs_sdk_joint():
    c = load_contract(ALOHA)
    assert isinstance(c, XsSdkContract)
    assert list(c.group_joints) == VX300S_ARM_GROUP and c.group_name == "arm"
    for name, real in ALOHA.real_driver["joint_map"].items():
        assert real in VX300S_JOINTS, f"{name} -> {real}: no such vx300s joint"
    assert c.gripper_state_joint in VX300S_JOINTS
    assert {a.namespace for a in c.arms.values()} == {"/follower_left", "/follower_right"}
    left = c.arms["left_arm"]
    assert left.group_topic == "/follower_left/commands/joint_group"
    assert left.single_topic == "/follower_left/commands/joint_single"
    assert left.state_topic == "/follower_left/joint_states"
    assert left.gripper_joint == "gripper"
    # the group order is the robot's, each arm's entries are that arm's embodiment joints
    assert [ALOHA.joint_names[i] for i in left.group_indices] == [
        f"left_{j}" for j in VX300S_ARM_GROUP]


def test_every_franka_joint_maps_to_a_real_franka_ros2_joint():
    c = load_contract(FRANKA)
    assert isinstance(c, FrankaContract)
    for arm, prefix, ns in (("left_arm", "left_", "/left"), ("right_arm", "right_", "/right")):
        a = c.arms[arm]
        real = set(a.real_joints) | {a.gripper_state_joint}
        assert real <= fr3_joints(prefix), real - fr3_joints(prefix)
        assert len(a.real_joints) == 7
        assert a.trajectory_topic == f"{ns}/joint_trajectory_controller/joint_trajectory"
        assert a.grasp_action == f"{ns}/franka_gripper/grasp"
        assert a.move_action == f"{ns}/franka_gripper/move"
    # the hand opens 0 .. 0.08 m; each finger joint reports half of it
    assert c.gripper.open_width == pytest.approx(2 * c.gripper_state.open)
    if "gripper_width_m" in FRANKA.arms["left_arm"]:
        assert FRANKA.arms["left_arm"]["gripper_width_m"] == pytest.approx(
            [2 * c.gripper_state.closed, 2 * c.gripper_state.open])


def test_xs_sdk_group_check_names_the_difference():
    c = load_contract(ALOHA)
    assert c.arms["left_arm"].robot_info_service == "/follower_left/get_robot_info"
    assert c.group_mismatch("left_arm", VX300S_ARM_GROUP) is None
    swapped = [VX300S_ARM_GROUP[1], VX300S_ARM_GROUP[0], *VX300S_ARM_GROUP[2:]]
    assert "/follower_left" in c.group_mismatch("left_arm", swapped)
    assert c.group_mismatch("right_arm", VX300S_ARM_GROUP[:5]) is not None


def test_aloha_gripper_units_are_aloha_2s():
    c = load_contract(ALOHA)
    target = ALOHA.home.copy()
    target[ALOHA.gripper_index("right_arm")] = 0.0
    group, gripper = c.arm_command("right_arm", target)
    assert group == pytest.approx(ALOHA.home[ALOHA.arm_indices("right_arm")])
    assert gripper == pytest.approx(0.6197)               # FOLLOWER_GRIPPER_JOINT_CLOSE
    target[ALOHA.gripper_index("right_arm")] = 1.0
    assert c.arm_command("right_arm", target)[1] == pytest.approx(1.6214)   # ..._OPEN
    assert c.gripper_state.to_normalised(0.0579) == pytest.approx(1.0)
    assert c.gripper_state.to_normalised(0.0440) == pytest.approx(0.0)


def test_linear_scale_round_trip_and_bad_values():
    s = LinearScale(0.6197, 1.6214)
    for v in (0.0, 0.3, 1.0):
        assert s.to_normalised(s.to_robot(v)) == pytest.approx(v)
    assert s.rate_to_normalised(s.span) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        LinearScale(1.0, 1.0)
    with pytest.raises(ConfigError):
        LinearScale(0.0, math.nan)


def test_contract_errors_name_what_is_wrong():
    jm = dict(ALOHA.real_driver["joint_map"])
    del jm["right_elbow"]
    with pytest.raises(ConfigError, match="right_elbow"):
        load_contract(with_real_driver(ALOHA, joint_map=jm))
    jm = dict(ALOHA.real_driver["joint_map"], left_elbow="elbow_shadow")
    with pytest.raises(ConfigError, match="exactly once"):
        load_contract(with_real_driver(ALOHA, joint_map=jm))
    jm = dict(FRANKA.real_driver["joint_map"], left_fr3_joint2="left_fr3_joint1")
    with pytest.raises(ConfigError, match="same real joint"):
        load_contract(with_real_driver(FRANKA, joint_map=jm))
    with pytest.raises(ConfigError, match="not 'franka_ros2'"):
        FrankaContract.from_embodiment(ALOHA)
    with pytest.raises(ConfigError, match="unknown real_driver.interface"):
        load_contract(with_real_driver(ALOHA, interface="ros2_control_somewhere"))
    # the robot's state on the topic the bridge publishes would feed the merged state back
    with pytest.raises(ConfigError, match="namespaced"):
        load_contract(with_real_driver(FRANKA, namespaces={"left_arm": "/", "right_arm": "/r"},
                                       arm_joint_states_topic="joint_states"))
    with pytest.raises(ConfigError, match="close_below"):
        load_contract(with_real_driver(FRANKA, gripper={**FRANKA.real_driver["gripper"],
                                                        "close_below": 0.8}))


def _aloha_state(arm_values, finger):
    names = VX300S_ARM_GROUP + ["gripper", "left_finger", "right_finger"]
    return names, list(arm_values) + [1.0, finger, -finger]


def test_merger_refuses_until_every_joint_is_heard_and_while_stale():
    c = load_contract(ALOHA)
    m = StateMerger(ALOHA.action_dim, c.state_sources(), ALOHA.joint_names)
    assert "no joint state yet" in m.refusal(0.0, 0.5)
    names, pos = _aloha_state([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 0.0579)
    assert m.update("/follower_left/joint_states", names, pos, [0.0] * 9, [0.0] * 9, 1.0) == 7
    reason = m.refusal(1.0, 0.5)
    assert "right_waist" in reason and "left_waist" not in reason
    names, pos = _aloha_state([-0.1, -0.2, -0.3, -0.4, -0.5, -0.6], 0.0440)
    m.update("/follower_right/joint_states", names, pos, [0.0] * 8 + [0.0139], [0.0] * 9, 1.1)
    assert m.refusal(1.2, 0.5) is None
    assert m.position == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0,
                                        -0.1, -0.2, -0.3, -0.4, -0.5, -0.6, 0.0])
    assert "/follower_left/joint_states" in m.refusal(1.55, 0.5)      # left silent 0.55 s


def test_merger_reads_joints_by_name_in_any_order():
    c = load_contract(FRANKA)
    m = StateMerger(FRANKA.action_dim, c.state_sources(), FRANKA.joint_names)
    a = c.arms["right_arm"]
    names = list(reversed(a.real_joints))
    m.update(a.arm_state_topic, names, [7.0, 6, 5, 4, 3, 2, 1], [], [], 0.0)
    m.update(a.gripper_state_topic, ["right_fr3_finger_joint1", "right_fr3_finger_joint2"],
             [0.01, 0.01], [], [], 0.0)
    idx = FRANKA.arm_indices("right_arm")
    assert m.position[idx] == pytest.approx([1, 2, 3, 4, 5, 6, 7])
    assert m.position[FRANKA.gripper_index("right_arm")] == pytest.approx(0.25)   # 2 cm of 8


def test_gripper_latch_sends_one_goal_per_crossing():
    latch = GripperLatch(0.3, 0.7)
    commands = [1.0, 1.0, 0.5, 0.2, 0.1, 0.1, 0.5, 0.69, 0.71, 0.9, 0.2]
    assert [latch.update(v) for v in commands] == [
        "open", None, None, "grasp", None, None, None, None, "open", None, "grasp"]


def test_franka_trajectory_split_keeps_unnamed_joints_held():
    c = load_contract(FRANKA)
    held = FRANKA.home.copy()
    names = ["left_fr3_joint2", "left_gripper"]
    rows = np.array([[0.1, 0.0], [0.2, 1.0]])
    left = c.arm_trajectory("left_arm", names, rows, held)
    assert left.shape == (2, 7)
    assert left[:, 1] == pytest.approx([0.1, 0.2])
    assert left[:, 0] == pytest.approx([held[0]] * 2)
    assert c.arm_trajectory("right_arm", names, rows, held) is None


def test_camera_sources_cover_every_stack_camera():
    for emb in (ALOHA, FRANKA):
        sources, rate = camera_sources(emb)
        assert [s.camera for s in sources] == list(emb.cameras) and rate > 0
        for s in sources:
            assert s.compressed_topic.endswith("/color/image_rect_raw/compressed")
    sources, _ = camera_sources(ALOHA)
    assert {s.compressed_topic.split("/")[1] for s in sources} == {
        "camera_high", "camera_low", "camera_wrist_left", "camera_wrist_right"}


def test_decode_compressed_jpeg_and_refuse_depth():
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (200, 30, 30)
    rgb[:, 32:] = (20, 40, 220)
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="JPEG", quality=95)
    out = decode_compressed("rgb8; jpeg compressed bgr8", buf.getvalue())
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 4
    with pytest.raises(ImageDecodeError):
        decode_compressed("16UC1; compressedDepth png", buf.getvalue())
    with pytest.raises(ImageDecodeError):
        decode_compressed("jpeg", b"not an image")


def test_join_topic():
    assert join_topic("/follower_left", "joint_states") == "/follower_left/joint_states"
    assert join_topic("/", "joint_states") == "/joint_states"
    assert join_topic("/left", "/abs/topic") == "/abs/topic"


@pytest.mark.parametrize("embodiment,bridge", [("aloha2", "xs_sdk_bridge_node"),
                                               ("franka_duo", "franka_bridge_node")])
def test_real_bring_up_starts_the_bridge_of_the_embodiments_interface(embodiment, bridge):
    specs = {s.name: s for s in node_launch_specs(embodiment=embodiment, sim=False)}
    assert specs["real_driver"].executable == bridge
    assert specs["real_cameras"].executable == "camera_bridge_node"
    assert "aloha_sim" not in specs
    assert all(s.parameters["use_sim_time"] is False for s in specs.values())
    assert all(s.parameters["embodiment"] == embodiment for s in specs.values())
    sim = {s.name for s in node_launch_specs(embodiment=embodiment, sim=True)}
    assert "real_driver" not in sim and "real_cameras" not in sim


def test_a_robot_with_the_ros2_control_topics_needs_no_bridge(tmp_path):
    """`real_driver.interface: ros2_control`: the robot serves the `driver:` topics itself."""
    import yaml
    from bimanual_core.config import config_dir
    data = yaml.safe_load((config_dir() / "aloha2.yaml").read_text())
    data["real_driver"]["interface"] = "ros2_control"
    path = tmp_path / "aloha2_ros2_control.yaml"
    path.write_text(yaml.safe_dump(data))
    names = {s.name for s in node_launch_specs(embodiment=str(path), sim=False)}
    assert "real_driver" not in names and "aloha_sim" not in names
    assert {"real_cameras", "action_decoder", "camera_perception"} <= names
