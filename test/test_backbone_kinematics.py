"""Arm kinematics of the backbone's zero-shot planner: FK against the simulator, IK accuracy,
limits, bad input."""
import numpy as np
import pytest

from bimanual_core.config import load_embodiment
from vla_backbone_node.kinematics import (ArmKinematics, KinematicsError, grasp_rotation,
                                          joint_addresses, robot_kinematics, rotation_error,
                                          top_down_rotation)

EMB = load_embodiment("aloha2")


@pytest.fixture(scope="module")
def arms():
    return robot_kinematics(EMB)


def test_forward_kinematics_matches_the_simulator(arms):
    import mujoco

    from aloha_driver.sim import AlohaSim
    rng = np.random.default_rng(3)
    with AlohaSim(EMB, task="pick", seed=0) as sim:
        q = EMB.home.copy()
        for arm in EMB.arms:
            q[arms[arm].indices] += rng.uniform(-0.5, 0.5, arms[arm].dof)
        sim.scene.joint_map.action_to_qpos(q, sim.data.qpos)
        mujoco.mj_forward(sim.model, sim.data)
        for arm, kin in arms.items():
            site = sim.model.site(EMB.arms[arm]["end_effector_site"]).id
            pose = kin.forward(q[kin.indices])
            np.testing.assert_allclose(pose.position, sim.data.site_xpos[site], atol=1e-9)
            np.testing.assert_allclose(pose.rotation, sim.data.site_xmat[site].reshape(3, 3),
                                       atol=1e-9)


def test_arm_geometry(arms):
    left, right = arms["left_arm"], arms["right_arm"]
    np.testing.assert_allclose(left.base_position[:2], [-0.469, 0.5], atol=1e-6)
    np.testing.assert_allclose(right.base_position[:2], [0.469, 0.5], atol=1e-6)
    assert 0.01 < left.tip_reach < 0.05          # fingertips a few cm past the grasp site
    # Home: both grippers in front of their arms, pointing away from the base.
    assert left.forward(left.home).rotation[0, 0] > 0.9
    assert right.forward(right.home).rotation[0, 0] < -0.9


@pytest.mark.parametrize("arm", ["left_arm", "right_arm"])
def test_random_reachable_poses_are_solved(arms, arm):
    """Targets made by FK of random configurations around the working posture."""
    kin = arms[arm]
    rng = np.random.default_rng(7)
    worst_p = worst_r = 0.0
    for _ in range(60):
        q = np.clip(kin.home + rng.uniform(-1.0, 1.0, kin.dof), kin.lower, kin.upper)
        target = kin.forward(q)
        res = kin.solve(target.position, target.rotation)
        assert res.success, f"no solution for q={q.round(2)}"
        assert np.all(res.q >= kin.lower) and np.all(res.q <= kin.upper)
        got = kin.forward(res.q)
        worst_p = max(worst_p, np.linalg.norm(got.position - target.position))
        worst_r = max(worst_r, np.linalg.norm(rotation_error(got.rotation, target.rotation)))
    assert worst_p < 0.005 and np.degrees(worst_r) < 3.0, (worst_p, np.degrees(worst_r))


@pytest.mark.parametrize("arm,sign", [("left_arm", -1.0), ("right_arm", 1.0)])
def test_top_down_grasps_over_the_arms_half_of_the_table(arms, arm, sign):
    kin = arms[arm]
    rng = np.random.default_rng(11)
    for _ in range(30):
        p = np.array([sign * rng.uniform(0.0, 0.2), rng.uniform(0.38, 0.65),
                      rng.uniform(0.03, 0.2)])
        rot = top_down_rotation(rng.uniform(-np.pi, np.pi))
        res = kin.solve(p, rot)
        assert res.success, p
        got = kin.forward(res.q)
        assert np.linalg.norm(got.position - p) < 0.005
        assert np.degrees(np.linalg.norm(rotation_error(got.rotation, rot))) < 3.0


def test_position_only_and_unreachable_targets(arms):
    kin = arms["left_arm"]
    res = kin.solve([-0.2, 0.45, 0.15])
    assert res.success and np.linalg.norm(kin.forward(res.q).position - [-0.2, 0.45, 0.15]) < 1e-3
    far = kin.solve([1.5, 0.5, 0.1], top_down_rotation(0.0))
    assert not far.success and far.position_error > 0.3
    assert np.all(far.q >= kin.lower) and np.all(far.q <= kin.upper)


def test_grasp_rotation_frames():
    r = top_down_rotation(np.pi / 2)
    np.testing.assert_allclose(r[:, 0], [0, 0, -1], atol=1e-12)     # approach: down
    np.testing.assert_allclose(r[:, 1], [0, 1, 0], atol=1e-12)      # fingers close along y
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(r), 1.0)
    np.testing.assert_allclose(grasp_rotation([1, 0, 0], [1, 1, 0])[:, 1], [0, 1, 0], atol=1e-12)


def test_bad_input_is_rejected_with_a_reason(arms):
    kin = arms["left_arm"]
    with pytest.raises(KinematicsError, match="finite"):
        kin.solve([np.nan, 0.5, 0.1])
    with pytest.raises(KinematicsError, match="orthonormal"):
        kin.solve([-0.2, 0.5, 0.1], np.eye(3) * 2)
    with pytest.raises(KinematicsError, match="6 joint angles"):
        kin.forward(np.zeros(5))
    with pytest.raises(KinematicsError, match="NaN"):
        kin.forward(np.full(6, np.nan))
    with pytest.raises(KinematicsError, match="parallel"):
        grasp_rotation([0, 0, 1], [0, 0, 2])
    with pytest.raises(KinematicsError, match="no joints named"):
        joint_addresses(kin.model, ["left_waist"])     # the sim model keeps gym-aloha's names
    with pytest.raises(KinematicsError, match="unknown arm"):
        ArmKinematics(kin.model, EMB, "third_arm")
