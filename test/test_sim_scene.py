"""The MuJoCo ALOHA 2 scene and AlohaSim: layout, cameras, control and grasp stability (no ROS)."""
import itertools

import mujoco
import numpy as np
import pytest

from aloha_driver.render import CameraRenderer, RenderError
from aloha_driver.scene import (FINGER_FRICTION, FINGER_KP, HOME_KEY, MIN_OBJECT_SEPARATION,
                                SceneError, build_robot_model, build_scene)
from aloha_driver.sim import AlohaSim
from bimanual_core.config import load_embodiment

TASKS = ("pick", "place", "handover")


@pytest.fixture(scope="module")
def emb():
    return load_embodiment("aloha2")


@pytest.fixture(scope="module")
def sim(emb):
    with AlohaSim(emb, task="pick", seed=0) as s:
        yield s


def _rotation(quat_wxyz) -> np.ndarray:
    mat = np.empty(9)
    mujoco.mju_quat2Mat(mat, np.asarray(quat_wxyz, dtype=float))
    return mat.reshape(3, 3)


def _layout(scene):
    key = scene.model.key(HOME_KEY).qpos
    return {o.name: key[o.qpos_adr:o.qpos_adr + 7].copy() for o in scene.objects}


# ----------------------------------------------------------------------------- scene

@pytest.mark.parametrize("task", TASKS)
def test_scene_has_task_objects_cameras_and_sites(emb, task):
    scene = build_scene(task, seed=3, embodiment=emb)
    model = scene.model
    names = [o.name for o in scene.objects]
    assert "red_cube" in names and (task != "place" or "bowl" in names)
    assert [o.segmentation_id for o in scene.objects] == list(range(1, len(names) + 1))
    for obj in scene.objects:
        assert model.body(obj.name).jntnum == 1      # a free body under the object's name
        assert np.all(scene.geom_segmentation[list(obj.geom_ids)] == obj.segmentation_id)
        if obj.name.startswith("distractor_"):
            assert obj.label.endswith(" cube") and obj.label.split()[0] in scene.colours
    assert np.count_nonzero(scene.geom_segmentation) == sum(len(o.geom_ids) for o in scene.objects)
    distractor_labels = [o.label for o in scene.objects if o.name.startswith("distractor_")]
    assert len(set(distractor_labels)) == len(distractor_labels)
    assert set(scene.camera_names) == set(emb.cameras)
    for cam in emb.cameras:
        assert mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam) >= 0
    for arm in emb.arms.values():
        for site in (arm["base_frame"], arm["end_effector_site"]):
            assert mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, site) >= 0
    assert model.vis.global_.offwidth >= emb.simulation["image_width"]


def test_scene_layout_is_seeded_and_objects_are_apart(emb):
    first, again = build_scene("pick", 5, emb), build_scene("pick", 5, emb)
    other = build_scene("pick", 6, emb)
    layout = _layout(first)
    assert all(np.array_equal(layout[k], v) for k, v in _layout(again).items())
    assert not np.allclose(layout["red_cube"], _layout(other)["red_cube"])
    spec = {o.name: o for o in first.object_specs}
    for seed in range(20):
        first.resample(seed)
        pos = {k: v[:2] for k, v in _layout(first).items()}
        for a, b in itertools.combinations(pos, 2):
            assert np.linalg.norm(pos[a] - pos[b]) >= MIN_OBJECT_SEPARATION
        cube = pos["red_cube"]
        assert spec["red_cube"].x[0] <= cube[0] <= spec["red_cube"].x[1]
        assert spec["red_cube"].y[0] <= cube[1] <= spec["red_cube"].y[1]


def test_scene_rejects_unknown_task(emb):
    with pytest.raises(SceneError, match="unknown task"):
        build_scene("juggle", 0, emb)


def test_robot_model_matches_scene_arms(emb):
    robot, scene = build_robot_model(emb), build_scene("pick", 0, emb).model
    assert robot.nbody < scene.nbody and robot.nu == scene.nu and robot.ncam == 0
    robot_data, scene_data = mujoco.MjData(robot), mujoco.MjData(scene)
    mujoco.mj_resetDataKeyframe(robot, robot_data, robot.key(HOME_KEY).id)
    mujoco.mj_resetDataKeyframe(scene, scene_data, scene.key(HOME_KEY).id)
    mujoco.mj_forward(robot, robot_data)
    mujoco.mj_forward(scene, scene_data)
    for arm in emb.arms.values():
        for site in (arm["base_frame"], arm["end_effector_site"]):
            np.testing.assert_allclose(robot_data.site(site).xpos, scene_data.site(site).xpos)
    np.testing.assert_allclose(robot_data.site("left_base_link").xpos, [-0.469, 0.5, 0.0])
    np.testing.assert_allclose(robot_data.site("right_base_link").xpos, [0.469, 0.5, 0.0])


def test_grasp_site_is_between_fingertips_and_points_along_approach(emb):
    model = build_robot_model(emb)
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, model.key(HOME_KEY).id)
    mujoco.mj_forward(model, data)
    for arm, prefix in (("left_arm", "vx300s_left"), ("right_arm", "vx300s_right")):
        site = data.site(emb.arms[arm]["end_effector_site"])
        fingers = [data.body(f"{prefix}/{f}_link").xpos for f in ("left_finger", "right_finger")]
        wrist = data.body(f"{prefix}/wrist_link").xpos
        approach = site.xmat.reshape(3, 3)[:, 0]
        # Beyond the finger bases, along the approach axis, centred between the two fingers.
        assert np.dot(site.xpos - np.mean(fingers, axis=0), approach) > 0.03
        assert np.dot(site.xpos - wrist, approach) > 0.15
        np.testing.assert_allclose(np.cross(site.xpos - wrist, approach), 0, atol=1e-6)


# ----------------------------------------------------------------------------- cameras

def _ray_box_depth(origin, rays, center, quat, size):
    """Distance along rays (whose optical z is 1) to an oriented box; NaN where they miss."""
    rot = _rotation(quat)
    o, d = (origin - center) @ rot, rays @ rot
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-size / 2 - o) / d, (size / 2 - o) / d
    near = np.nanmax(np.minimum(t1, t2), axis=1)
    far = np.nanmin(np.maximum(t1, t2), axis=1)
    return np.where((far >= near) & (far > 0), near, np.nan)


@pytest.mark.parametrize("camera", ["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"])
def test_camera_sees_red_cube_with_consistent_depth_and_geometry(sim, camera):
    sim.reset(0)
    out = sim.render(camera, depth=True, segmentation=True)
    h, w = sim.height, sim.width
    assert out["rgb"].shape == (h, w, 3) and out["rgb"].dtype == np.uint8
    assert out["depth"].shape == (h, w) and out["depth"].dtype == np.float32
    assert out["segmentation"].shape == (h, w) and out["segmentation"].dtype == np.uint16
    assert out["rgb"].std() > 20                         # not a blank frame
    cube = next(o for o in sim.objects() if o["name"] == "red_cube")
    mask = out["segmentation"] == cube["segmentation_id"]
    assert mask.sum() > 20, f"red cube not visible in {camera}"
    r, g, b = out["rgb"][mask].astype(float).mean(axis=0)
    assert r > 150 and g < 80 and b < 80                 # its pixels are red

    k = sim.camera_intrinsics(camera)
    position, quat = sim.camera_pose(camera)
    rot = _rotation(quat)                                # optical frame: z forward, y down
    in_camera = rot.T @ (cube["position"] - position)
    assert in_camera[2] > 0
    u, v, _ = k @ in_camera / in_camera[2]
    assert mask[int(round(v)), int(round(u))], "projected cube centre outside its mask"

    rows, cols = np.nonzero(mask)
    rays = np.linalg.solve(k, np.stack([cols, rows, np.ones_like(cols)]).astype(float)).T @ rot.T
    expected = _ray_box_depth(position, rays, cube["position"], cube["quaternion"], cube["size"])
    hit = np.isfinite(expected)
    assert hit.mean() > 0.9
    np.testing.assert_allclose(out["depth"][rows, cols][hit], expected[hit], atol=0.003)


def test_wrist_camera_rides_on_the_gripper(sim, emb):
    sim.reset(0)
    before, _ = sim.camera_pose("cam_left_wrist")
    fixed, _ = sim.camera_pose("cam_high")
    cmd = emb.home.copy()
    cmd[emb.joint_names.index("left_waist")] += 0.4
    for _ in range(50):
        sim.step(cmd)
    assert np.linalg.norm(sim.camera_pose("cam_left_wrist")[0] - before) > 0.05
    np.testing.assert_allclose(sim.camera_pose("cam_high")[0], fixed)


def test_render_rejects_unknown_camera(sim):
    with pytest.raises(ValueError, match="unknown camera"):
        sim.render("cam_top")


def test_renderer_checks_size_and_use_after_close(emb):
    scene = build_scene("handover", 0, emb)
    data = mujoco.MjData(scene.model)
    mujoco.mj_forward(scene.model, data)
    with pytest.raises(RenderError, match="offscreen buffer"):
        CameraRenderer(scene.model, 10000, 48)
    renderer = CameraRenderer(scene.model, 64, 48, scene.geom_segmentation)
    assert renderer.render(data, 0, depth=False, segmentation=False)["rgb"].shape == (48, 64, 3)
    renderer.close()
    with pytest.raises(RenderError, match="after close"):
        renderer.render(data, 0)


# ----------------------------------------------------------------------------- control

def test_step_advances_one_control_period_and_validates(sim, emb):
    sim.reset(0)
    sim.step(emb.home)
    assert sim.time == pytest.approx(emb.control_period)
    assert sim.substeps == 10
    for bad in (np.zeros(13), np.full(14, np.nan)):
        with pytest.raises(ValueError):
            sim.step(bad)
    assert sim.time == pytest.approx(emb.control_period)
    beyond = emb.home.copy()
    beyond[0] = 10.0
    sim.step(beyond)
    assert sim.command[0] == pytest.approx(emb.upper[0])


def test_reset_without_seed_moves_to_next_layout(emb):
    with AlohaSim(emb, "pick", seed=4) as s:
        first = s.object_position("red cube")
        s.step(emb.home)
        s.reset()
        assert s.seed == 5 and s.time == 0.0
        assert not np.allclose(s.object_position("red_cube"), first)
        np.testing.assert_allclose(s.joint_positions(), emb.home, atol=1e-9)


@pytest.mark.parametrize("joint", ["left_waist", "left_elbow", "right_shoulder",
                                   "right_wrist_rotate"])
def test_commanded_joint_move_is_reached_within_one_second(sim, emb, joint):
    sim.reset(0)
    i = emb.joint_names.index(joint)
    cmd = emb.home.copy()
    cmd[i] += 0.3
    for _ in range(int(1.0 / emb.control_period)):
        sim.step(cmd)
    assert sim.joint_positions()[i] == pytest.approx(cmd[i], abs=0.02)
    assert abs(sim.joint_velocities()[i]) < 0.05


def test_grippers_close_and_open(sim, emb):
    sim.reset(0)
    grippers = emb.gripper_indices
    np.testing.assert_allclose(sim.joint_positions()[grippers], 1.0, atol=1e-6)
    cmd = emb.home.copy()
    cmd[grippers] = 0.0
    for _ in range(25):
        sim.step(cmd)
    assert np.all(sim.joint_positions()[grippers] < 0.05)
    assert np.all(sim.joint_efforts()[grippers] < 0)     # squeezing: closing force
    cmd[grippers] = 1.0
    for _ in range(25):
        sim.step(cmd)
    assert np.all(sim.joint_positions()[grippers] > 0.95)


# ----------------------------------------------------------------------------- grasping

def _solve_ik(sim, arm, target_pos, target_rot, q_start, iterations=200):
    """Damped least squares on the arm's six joints for the grasp site's pose."""
    emb, model = sim.embodiment, sim.model
    data = mujoco.MjData(model)
    data.qpos[:] = sim.data.qpos
    joint_map = sim.scene.joint_map
    cols = [list(joint_map.arm_index).index(i) for i in emb.arm_indices(arm)]
    qadr, dadr = joint_map.arm_qpos[cols], joint_map.arm_dof[cols]
    lower, upper = emb.lower[emb.arm_indices(arm)], emb.upper[emb.arm_indices(arm)]
    site = model.site(emb.arms[arm]["end_effector_site"]).id
    target_quat = np.empty(4)
    mujoco.mju_mat2Quat(target_quat, target_rot.flatten())
    jacp, jacr = np.zeros((3, model.nv)), np.zeros((3, model.nv))
    quat, inverse, delta, rot_err = np.empty(4), np.empty(4), np.empty(4), np.empty(3)
    data.qpos[qadr] = q_start
    for _ in range(iterations):
        mujoco.mj_kinematics(model, data)
        mujoco.mj_comPos(model, data)
        pos_err = target_pos - data.site_xpos[site]
        mujoco.mju_mat2Quat(quat, data.site_xmat[site])
        mujoco.mju_negQuat(inverse, quat)
        mujoco.mju_mulQuat(delta, target_quat, inverse)
        mujoco.mju_quat2Vel(rot_err, delta, 1.0)
        if np.linalg.norm(pos_err) < 1e-4 and np.linalg.norm(rot_err) < 1e-3:
            break
        mujoco.mj_jacSite(model, data, jacp, jacr, site)
        jac = np.vstack([jacp[:, dadr], jacr[:, dadr]])
        step = jac.T @ np.linalg.solve(jac @ jac.T + 0.05 ** 2 * np.eye(6),
                                       np.concatenate([pos_err, rot_err]))
        step *= min(1.0, 0.2 / (np.linalg.norm(step) + 1e-12))
        data.qpos[qadr] = np.clip(data.qpos[qadr] + step, lower, upper)
    assert np.linalg.norm(pos_err) < 1e-3, "IK did not converge"
    return data.qpos[qadr].copy()


def _scripted_top_down_grasp(sim, lift=0.10, hold_s=2.0):
    """Pick the red cube with the arm on its side; return (height gained, cube-to-site distance)."""
    emb = sim.embodiment
    cube = next(o for o in sim.objects() if o["name"] == "red_cube")
    p, q = cube["position"], cube["quaternion"]
    arm = "left_arm" if p[0] < 0 else "right_arm"
    joints, gripper = emb.arm_indices(arm), emb.gripper_index(arm)
    # Approach straight down, fingers closing across a pair of faces, least wrist rotation.
    natural = np.pi / 2 if arm == "left_arm" else -np.pi / 2
    yaw = 2 * np.arctan2(q[3], q[0])
    closing = natural + np.angle(np.exp(4j * (yaw - natural))) / 4
    x_axis, y_axis = np.array([0.0, 0.0, -1.0]), np.array([np.cos(closing), np.sin(closing), 0.0])
    rot = np.column_stack([x_axis, y_axis, np.cross(x_axis, y_axis)])
    cmd = sim.command
    q_home = cmd[joints].copy()
    q_above = _solve_ik(sim, arm, p + [0, 0, 0.10], rot, q_home)
    q_grasp = _solve_ik(sim, arm, p + [0, 0, 0.01], rot, q_above)
    q_lift = _solve_ik(sim, arm, p + [0, 0, 0.01 + lift], rot, q_grasp)

    def move(q_to, grip_to, duration):
        q_from, grip_from = cmd[joints].copy(), cmd[gripper]
        steps = int(round(duration / sim.control_period))
        for k in range(1, steps + 1):
            s = k / steps
            cmd[joints] = q_from + s * (q_to - q_from)
            cmd[gripper] = grip_from + s * (grip_to - grip_from)
            sim.step(cmd)

    move(q_above, 1.0, 1.0)
    move(q_grasp, 1.0, 1.0)
    move(q_grasp, 0.0, 0.5)
    move(q_grasp, 0.0, 0.3)
    move(q_lift, 0.0, 1.0)
    move(q_lift, 0.0, hold_s)
    site = sim.data.site(emb.arms[arm]["end_effector_site"]).xpos
    end = sim.object_position("red_cube")
    return end[2] - p[2], np.linalg.norm(end - site)


def test_grasp_stability_fix_is_in_the_model(emb):
    model = build_scene("pick", 0, emb).model
    fingers = [a for a in range(model.nu) if model.actuator(a).name.endswith("_finger")]
    assert len(fingers) == 4
    for a in fingers:
        assert model.actuator_gainprm[a, 0] == FINGER_KP == -model.actuator_biasprm[a, 1]
    pads = [g for g in range(model.ngeom) if model.geom(g).name.endswith("_gripper_finger")]
    assert len(pads) == 4 and np.all(model.geom_friction[pads] == FINGER_FRICTION)


def test_scripted_grasp_lifts_and_holds_the_cube(emb):
    """Grasp stability: picked at 16 seeded poses, lifted 10 cm, the cube stays in hand for 2 s."""
    seeds = range(16)
    held = 0
    with AlohaSim(emb, "pick", 0) as s:
        for seed in seeds:
            s.reset(seed)
            gained, distance = _scripted_top_down_grasp(s)
            held += gained > 0.095 and distance < 0.02
    assert held >= len(seeds) - 1, f"only {held}/{len(seeds)} grasps held"
