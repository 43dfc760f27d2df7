"""The bi-arm Franka (franka_duo): its MuJoCo scene, commands, 7-DoF IK, zero-shot tasks in
simulation, the sim node's topics, and the embodiment reaching the launch file and evaluations."""
import mujoco
import numpy as np
import pytest

from aloha_driver.scene import HOME_KEY, JointMap, build_robot_model, build_scene
from aloha_driver.sim import AlohaSim
from bimanual_core.config import load_embodiment
from vla_backbone_node.kinematics import robot_kinematics, rotation_error, top_down_rotation
from vla_backbone_node.zero_shot import ZeroShotPolicy

EMB = load_embodiment("franka_duo")
ALOHA = load_embodiment("aloha2")


@pytest.fixture(scope="module")
def arms():
    return robot_kinematics(EMB)


@pytest.fixture(scope="module")
def sim():
    with AlohaSim(EMB, task="pick", seed=0) as s:
        yield s


def test_embodiment_is_two_seven_dof_arms_with_grippers():
    assert EMB.action_dim == 16
    for arm, first in (("left_arm", 0), ("right_arm", 8)):
        assert EMB.arm_indices(arm) == list(range(first, first + 7))     # left arm first
        assert EMB.gripper_index(arm) == first + 7
    assert set(EMB.cameras) == {"cam_high", "cam_left_wrist", "cam_right_wrist"}
    for name, cam in EMB.cameras.items():        # the same topics as ALOHA's cameras
        assert cam.image_topic == ALOHA.camera(name).image_topic
    assert EMB.driver == ALOHA.driver and EMB.real_driver["interface"] == "franka_ros2"


def test_scene_has_the_franka_joints_actuators_cameras_and_sites():
    scene = build_scene("pick", 0, EMB)
    model = scene.model
    jm = scene.joint_map
    for i in jm.arm_index:                        # config joint = model joint, FR3 limits
        joint = model.joint(EMB.joint_names[i])
        np.testing.assert_allclose(joint.range, [EMB.lower[i], EMB.upper[i]])
        np.testing.assert_allclose(model.actuator_ctrlrange[jm.arm_actuator[list(jm.arm_index)
                                                                            .index(i)]],
                                   [EMB.lower[i], EMB.upper[i]])
    assert model.nu == 18                         # 7 joints + 2 finger servos per arm
    assert sorted(np.concatenate([jm.arm_actuator, jm.finger_actuator.ravel()])) == list(
        range(18))
    assert (jm.finger_closed, jm.finger_open) == (0.0, pytest.approx(0.04))   # 8 cm opening
    assert scene.camera_names == tuple(EMB.cameras)
    assert model.ncam == 3
    for arm, names in EMB.arms.items():
        for site in (names["base_frame"], names["end_effector_site"]):
            assert mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, site) >= 0
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, model.key(HOME_KEY).id)
    mujoco.mj_forward(model, data)
    for arm, names in EMB.arms.items():
        np.testing.assert_allclose(data.site(names["base_frame"]).xpos,
                                   EMB.simulation["arm_bases"][arm]["pos"], atol=1e-9)
        # Home: the hand points down, the grasp site between the finger pads.
        site = data.site(names["end_effector_site"])
        assert site.xmat.reshape(3, 3)[2, 0] < -0.99
        side = arm.split("_")[0]
        pads = [data.body(f"{side}_{f}").xpos for f in ("left_finger", "right_finger")]
        assert np.linalg.norm(np.cross(site.xpos - np.mean(pads, axis=0),
                                       site.xmat.reshape(3, 3)[:, 0])) < 1e-6


def test_bad_robot_model_settings_are_refused_clearly():
    from dataclasses import replace

    from aloha_driver.scene import SceneError
    unknown = replace(EMB, simulation={**EMB.simulation, "robot_model": "ur5e"})
    with pytest.raises(SceneError, match="unknown simulation.robot_model 'ur5e'"):
        build_scene("pick", 0, unknown)
    no_bases = replace(EMB, simulation={**EMB.simulation, "arm_bases": {}})
    with pytest.raises(SceneError, match="arm_bases has no left_arm"):
        build_robot_model(no_bases)


def test_robot_model_joint_map_matches_the_scene():
    robot = build_robot_model(EMB)
    assert robot.ncam == 0 and robot.nu == 18
    jm = JointMap.from_model(robot, EMB)
    qpos = np.zeros(robot.nq)
    q = EMB.home.copy()
    q[EMB.gripper_indices] = [0.25, 0.75]
    jm.action_to_qpos(q, qpos)
    np.testing.assert_allclose(jm.qpos_to_action(qpos), q)
    np.testing.assert_allclose(qpos[jm.finger_qpos], [[0.01, 0.01], [0.03, 0.03]])  # parallel


def test_commands_move_the_simulated_franka(sim):
    sim.reset(0)
    np.testing.assert_allclose(sim.joint_positions(), EMB.home, atol=1e-9)
    target = EMB.home.copy()
    moved = [EMB.joint_names.index(n) for n in ("left_fr3_joint1", "right_fr3_joint4")]
    target[moved] += [0.4, 0.3]
    target[EMB.gripper_index("left_arm")] = 0.0
    for _ in range(100):                                   # 2 s
        sim.step(target)
    got = sim.joint_positions()
    np.testing.assert_allclose(got, target, atol=0.01)
    # Gravity is compensated: the arms hold a pose without sagging.
    for _ in range(50):
        sim.step(target)
    np.testing.assert_allclose(sim.joint_positions(), got, atol=2e-3)
    # Beyond the limits: clipped to the FR3 limits, not passed on.
    beyond = target.copy()
    beyond[EMB.joint_names.index("left_fr3_joint4")] = 0.5
    sim.step(beyond)
    assert sim.command[EMB.joint_names.index("left_fr3_joint4")] == EMB.upper[3]


def test_cameras_render_depth_and_segmentation(sim):
    sim.reset(1)
    for cam in sim.camera_names:
        frame = sim.render(cam, depth=True, segmentation=True)
        assert frame["rgb"].shape == (sim.height, sim.width, 3) and frame["rgb"].std() > 10
        assert np.isfinite(frame["depth"]).any()
    seen = set(np.unique(sim.render("cam_high", segmentation=True)["segmentation"]))
    assert {o.segmentation_id for o in sim.scene.objects} <= seen   # every object in view


# ----------------------------------------------------------------------------- 7-DoF IK

@pytest.mark.parametrize("arm", ["left_arm", "right_arm"])
def test_ik_reaches_random_poses_within_limits(arms, arm):
    kin = arms[arm]
    assert kin.dof == 7
    rng = np.random.default_rng(5)
    for _ in range(40):
        q = np.clip(kin.home + rng.uniform(-0.8, 0.8, 7), kin.lower, kin.upper)
        target = kin.forward(q)
        res = kin.solve(target.position, target.rotation)
        assert res.success, q.round(2)
        assert np.all(res.q >= kin.lower) and np.all(res.q <= kin.upper)
        got = kin.forward(res.q)
        assert np.linalg.norm(got.position - target.position) < 1e-3
        assert np.linalg.norm(rotation_error(got.rotation, target.rotation)) < np.radians(0.5)


@pytest.mark.parametrize("arm,sign", [("left_arm", -1.0), ("right_arm", 1.0)])
def test_top_down_grasps_over_the_task_area(arms, arm, sign):
    """The arm's half of the task area of config/tasks.yaml (the planner uses the nearer arm)
    and 5 cm beyond the middle, fingers closing at any yaw."""
    kin = arms[arm]
    rng = np.random.default_rng(9)
    for _ in range(40):
        p = np.array([sign * rng.uniform(-0.05, 0.2), rng.uniform(0.38, 0.65),
                      rng.uniform(0.02, 0.2)])
        # A parallel gripper closes the same at yaw and yaw + pi (the planner tries both).
        yaw = rng.uniform(-np.pi, np.pi)
        results = [kin.solve(p, top_down_rotation(yaw + k * np.pi), restarts=2, solutions=3)
                   for k in (0, 1)]
        assert any(r.success for r in results), p
        for res in results:
            assert np.all(res.q >= kin.lower) and np.all(res.q <= kin.upper)


def test_tracked_paths_stay_on_their_null_space_branch(arms):
    """A straight 10 cm descent solved sample by sample, each seeded with and its redundant motion
    pulled toward the previous sample (as the zero-shot planner's straight moves do): small, even
    joint steps, the hand on the line, no drift toward home between samples."""
    kin = arms["left_arm"]
    rot = top_down_rotation(0.4)
    start = kin.solve([-0.3, 0.62, 0.14], rot, restarts=2, solutions=3)
    assert start.success
    q, steps = start.q, []
    for z in np.linspace(0.14, 0.04, 26)[1:]:
        res = kin.solve([-0.3, 0.62, z], rot, q, restarts=2, position_tolerance=1e-5,
                        orientation_tolerance=1e-4, posture=q)
        assert res.success, z
        assert np.all(res.q >= kin.lower) and np.all(res.q <= kin.upper)
        steps.append(np.abs(res.q - q).max())
        q = res.q
    assert max(steps) < 0.05, max(steps)
    np.testing.assert_allclose(kin.forward(q).position, [-0.3, 0.62, 0.04], atol=1e-4)


def test_zero_shot_plans_a_pick_with_the_franka_hand(arms):
    from vla_backbone_node.policy import PolicyObservation
    from vla_backbone_node.zero_shot import ObjectLocation
    cube = ObjectLocation(np.array([0.1, 0.45, 0.02]), 0.3, np.full(3, 0.04))
    policy = ZeroShotPolicy(EMB, {"red cube": cube}.get, kinematics=arms)
    policy.reset("pick up the red cube")
    assert "right arm" in policy.status().description            # the nearer arm
    chunk = policy.infer(PolicyObservation(0.0, EMB.home))
    assert chunk.shape == (EMB.chunk_horizon, 16)
    plan = policy._plan
    assert np.all(plan >= EMB.lower - 1e-9) and np.all(plan <= EMB.upper + 1e-9)
    vel = np.diff(plan, axis=0) / EMB.control_period
    assert np.all(np.abs(vel) <= EMB.max_velocity * 1.01)
    grip = plan[:, EMB.gripper_index("right_arm")]
    closing = int(np.argmax(grip < 1.0))
    kin = arms["right_arm"]
    at = kin.forward(plan[closing, kin.indices])
    np.testing.assert_allclose(at.position[:2], cube.position[:2], atol=0.003)
    assert at.rotation[2, 0] < -0.99                              # top-down


# ----------------------------------------------------------------------------- in simulation

@pytest.mark.slow
@pytest.mark.parametrize("task,seeds,needed", [("pick", 5, 5), ("place", 3, 3),
                                               ("handover", 3, 3)])
def test_zero_shot_tasks_succeed_in_mujoco(arms, task, seeds, needed):
    from test_backbone_zero_shot import rollout
    policy = ZeroShotPolicy(EMB, lambda label: None, kinematics=arms)
    verdicts = []
    with AlohaSim(EMB, task=task, seed=0) as s:
        for seed in range(seeds):
            s.reset(seed)
            verdicts.append(rollout(s, policy)[2])
    print(task, [v.reason for v in verdicts])
    assert sum(v.success for v in verdicts) >= needed, [v.reason for v in verdicts]


@pytest.mark.slow
def test_sim_node_publishes_the_contract_topics_for_franka(ros_domain, ros_context, tmp_path):
    from bimanual_core.ros_conversions import image_to_numpy, time_to_sec
    from perception_testing import node_process
    from test_sim_node import Probe
    with node_process("aloha_sim_node", {"embodiment": "franka_duo"},
                      tmp_path / "aloha_sim.log"):
        probe = Probe(ros_context, emb=EMB, camera="cam_left_wrist")
        try:
            probe.spin_until(lambda: len(probe.joints) > 20 and probe.images and probe.infos
                             and probe.depth and probe.segmentation and probe.objects,
                             "joint states, wrist images, depth, segmentation and objects")
            state = probe.joints[-1]
            assert list(state.name) == EMB.joint_names and len(state.effort) == 16
            np.testing.assert_allclose(state.position, EMB.home, atol=0.02)
            assert probe.clock == sorted(probe.clock)
            assert probe.images[-1].header.frame_id == EMB.camera("cam_left_wrist").frame_id
            assert image_to_numpy(probe.images[-1]).std() > 10
            assert probe.segmentation[-1].encoding == "16UC1"
            assert "red_cube" in [o.name for o in probe.objects[-1].objects]
            stamps = [time_to_sec(j.header.stamp) for j in probe.joints]
            assert np.median(np.diff(stamps)) == pytest.approx(EMB.control_period)
            target = EMB.home.copy()
            joint = EMB.joint_names.index("left_fr3_joint1")
            target[joint] += 0.3
            probe.spin_until(lambda: abs(probe.position("left_fr3_joint1") - target[joint]) < 0.02,
                             "left_fr3_joint1 to reach the commanded position",
                             on_tick=lambda: probe.send_position(target))
        finally:
            probe.close()


def test_evaluation_results_are_named_after_a_non_default_embodiment():
    from bimanual_core.eval_runner import default_output
    assert default_output("zero_shot", "pick").name == "eval_zero_shot_pick.json"
    assert default_output("zero_shot", "pick", "aloha2").name == "eval_zero_shot_pick.json"
    assert (default_output("zero_shot", "pick", "franka_duo").name
            == "eval_zero_shot_pick_franka_duo.json")
