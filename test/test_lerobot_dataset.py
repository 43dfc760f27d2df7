"""LeRobotDataset v3 writer/reader: layout, round trip, resume, bad input; and the scripted expert."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from vla_data.lerobot import DatasetError, Episode, LeRobotDataset, LeRobotWriter

JOINTS = [f"j{i}" for i in range(3)]
CAMERAS = ["cam_a", "cam_b"]
SIZE = (48, 64)


def make_episode(steps=20, success=True, task="pick up the red cube", seed=0):
    rng = np.random.default_rng(seed)
    states = np.cumsum(rng.normal(0, 0.01, (steps, 3)), 0)
    frames = {c: [np.full((*SIZE, 3), 10 * i + 40 * k, np.uint8) for i in range(steps)]
              for k, c in enumerate(CAMERAS)}
    return Episode(task, states, states + 0.05, frames, success)


def writer(root, resume=False):
    return LeRobotWriter(root, 50.0, JOINTS, CAMERAS, SIZE, "test_robot", resume=resume)


def test_round_trip_layout_and_resume(tmp_path):
    root = tmp_path / "ds"
    w = writer(root)
    first = make_episode(20, seed=1)
    assert w.add_episode(first) == 0
    second = make_episode(15, success=False, task="other", seed=2)
    second.expert_from = 6              # a takeover: the expert acted from frame 6 on
    assert w.add_episode(second) == 1

    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 2
    assert info["total_frames"] == 35 and info["total_tasks"] == 2 and info["fps"] == 50.0
    assert info["features"]["observation.images.cam_a"]["dtype"] == "video"
    assert (root / "data/chunk-000/file-001.parquet").exists()
    assert (root / "videos/observation.images.cam_b/chunk-000/file-000.mp4").exists()
    rows = pq.read_table(root / "data/chunk-000/file-000.parquet").to_pydict()
    assert rows["frame_index"] == list(range(20)) and rows["index"][0] == 0
    assert rows["next.done"][-1] and rows["next.success"][-1] and not rows["next.done"][0]
    stats = json.loads((root / "meta" / "stats.json").read_text())
    assert stats["action"]["count"] == [35]
    assert np.asarray(stats["observation.images.cam_a"]["mean"]).shape == (3, 1, 1)

    data = LeRobotDataset(root)
    assert len(data) == 2 and data.cameras == CAMERAS and data.joint_names == JOINTS
    table = data.episode_table(0)
    np.testing.assert_allclose(table["observation.state"], first.states, atol=1e-6)
    np.testing.assert_allclose(table["action"], first.actions, atol=1e-6)
    np.testing.assert_allclose(table["timestamp"], np.arange(20) / 50.0, atol=1e-6)
    assert data.task(1) == "other" and data.success(0) and not data.success(1)
    assert (data.expert_from(0), data.expert_from(1)) == (0, 6)
    frames = data.frames(0, "cam_b")
    assert frames.shape == (20, *SIZE, 3)
    assert np.abs(frames.astype(int) - np.stack(first.images["cam_b"]).astype(int)).mean() < 3
    assert data.episode_table(1)["index"][0] == 20

    with pytest.raises(DatasetError, match="resume"):
        writer(root)
    again = writer(root, resume=True)
    assert again.add_episode(make_episode(5, seed=3)) == 2
    data = LeRobotDataset(root)
    assert len(data) == 3 and data.info["total_frames"] == 40
    assert data.tasks == {"pick up the red cube": 0, "other": 1}


def test_bad_episodes_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="NaN"):
        Episode("t", np.full((3, 3), np.nan), np.zeros((3, 3)), {})
    with pytest.raises(DatasetError, match="frames for"):
        Episode("t", np.zeros((3, 3)), np.zeros((3, 3)), {"cam_a": [np.zeros((*SIZE, 3))]})
    with pytest.raises(DatasetError, match="task"):
        Episode("", np.zeros((3, 3)), np.zeros((3, 3)), {})
    with pytest.raises(DatasetError, match="expert_from"):
        Episode("t", np.zeros((3, 3)), np.zeros((3, 3)), {}, expert_from=3)
    w = writer(tmp_path / "ds")
    with pytest.raises(DatasetError, match="cameras"):
        w.add_episode(Episode("t", np.zeros((2, 3)), np.zeros((2, 3)),
                              {"cam_a": [np.zeros((*SIZE, 3), np.uint8)] * 2}))
    with pytest.raises(DatasetError, match="not a LeRobotDataset"):
        LeRobotDataset(tmp_path / "nothing")


def test_environment_state_round_trip_and_checks(tmp_path):
    """observation.environment_state: declared, stored per frame, required once declared."""
    root = tmp_path / "ds"
    w = LeRobotWriter(root, 50.0, JOINTS, CAMERAS, SIZE, "test_robot",
                      environment_names=["target.x", "target.y", "target.z"])
    episode = make_episode(6)
    episode.environment_state = None
    with pytest.raises(DatasetError, match="environment state"):
        w.add_episode(episode)
    target = np.linspace(0, 1, 18).reshape(6, 3)
    w.add_episode(Episode("t", episode.states, episode.actions, episode.images, True,
                          environment_state=target))
    data = LeRobotDataset(root)
    assert data.environment_names == ["target.x", "target.y", "target.z"]
    np.testing.assert_allclose(data.episode_table(0)["observation.environment_state"], target,
                               atol=1e-6)
    assert json.loads((root / "meta/stats.json").read_text())[
        "observation.environment_state"]["count"] == [6]
    assert LeRobotDataset(root).environment_names and not writer(tmp_path / "plain").features(
        ).get("observation.environment_state")
    with pytest.raises(DatasetError, match="environment"):
        writer(root, resume=True)                   # appending without the declared state
    with pytest.raises(DatasetError, match="environment_state"):
        Episode("t", np.zeros((3, 3)), np.zeros((3, 3)), {},
                environment_state=np.full((3, 3), np.inf))


@pytest.mark.slow
def test_pointing_views_place_the_arms_and_label_the_target(tmp_path):
    """record-views: one scene per episode, the arms at the poses of a dataset, the task objects'
    true positions per frame (a place: the cube, then the bowl), never a successful
    demonstration."""
    from aloha_driver.sim import AlohaSim
    from bimanual_core.config import load_embodiment
    from vla_data.expert import ViewSettings, generate_views

    emb = load_embodiment("aloha2")
    poses = tmp_path / "poses"
    w = LeRobotWriter(poses, 50.0, emb.joint_names, ["cam_high"], (240, 320), "aloha2")
    reach = emb.home.copy()
    reach[1] += 0.5                                   # left shoulder forward
    w.add_episode(Episode("t", [reach] * 2, [reach] * 2,
                          {"cam_high": [np.zeros((240, 320, 3), np.uint8)] * 2}, True))
    settings = ViewSettings(task="place", cameras=("cam_high",), views_per_scene=3,
                            poses_from=str(poses))
    summary = generate_views(tmp_path / "views", settings, scenes=2, seed=200_000)
    assert summary["episodes_kept"] == 2
    data = LeRobotDataset(tmp_path / "views")
    assert data.environment_names == ["target.x", "target.y", "target.z",
                                      "bowl.x", "bowl.y", "bowl.z"]
    with AlohaSim(emb, "place") as sim:
        for i, seed in enumerate((200_000, 200_001)):
            sim.reset(seed)
            table = data.episode_table(i)
            assert not data.success(i) and len(table["observation.state"]) == 3
            located = np.concatenate([sim.target_position(), sim.object_position("bowl")])
            np.testing.assert_allclose(table["observation.environment_state"],
                                       np.tile(located, (3, 1)), atol=1e-5)
            np.testing.assert_allclose(table["observation.state"][0], emb.home, atol=1e-5)
            np.testing.assert_allclose(table["observation.state"][1], reach, atol=1e-5)
            frames = data.frames(i, "cam_high").astype(int)
            assert np.abs(frames[0] - frames[1]).mean() > 1.0       # the arm moved into view
    first = LeRobotDataset(tmp_path / "views").episode_table(0)["observation.environment_state"]
    second = LeRobotDataset(tmp_path / "views").episode_table(1)["observation.environment_state"]
    assert np.linalg.norm(first[0] - second[0]) > 0.01             # a new layout per scene


@pytest.mark.slow
def test_scripted_expert_records_a_successful_pick(tmp_path):
    """The zero-shot expert in MuJoCo picks the cube; the episode reads back as recorded."""
    from vla_data.expert import ExpertSettings, generate
    summary = generate(tmp_path / "demos", ExpertSettings(task="pick", cameras=("cam_high",)),
                       episodes=1, seed=100_000, workers=1)
    assert summary["episodes_kept"] == 1 and not summary["failures"]
    data = LeRobotDataset(tmp_path / "demos")
    table = data.episode_table(0)
    states, actions = table["observation.state"], table["action"]
    assert states.shape[1] == 14 and len(states) > 200 and data.success(0)
    assert np.ptp(actions[:, :6], axis=0).max() > 0.3          # the left arm moved
    arms = [i for i in range(14) if i not in (6, 13)]          # a held cube stops the gripper
    assert np.abs(states[-50:, arms] - actions[-50:, arms]).mean() < 0.02   # targets reached
    frames = data.frames(0, "cam_high")
    assert frames.shape == (len(states), 240, 320, 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1.0   # scene changed
    target = table["observation.environment_state"]               # the cube, tracked
    assert target[-1, 2] - target[0, 2] > 0.05


@pytest.mark.slow
def test_a_scene_the_expert_cannot_plan_is_a_failed_episode_not_a_crash(tmp_path):
    """franka_duo scene 100058: the planner cannot time the descent inside the joint limits. The
    run goes on: the seed is logged as failed and nothing is written for it."""
    from vla_data.expert import ExpertSettings, generate
    summary = generate(tmp_path / "demos", ExpertSettings(task="pick", embodiment="franka_duo",
                                                          cameras=("cam_high",)),
                       episodes=1, seed=100_058, workers=1)
    assert summary["episodes_kept"] == 0
    [(seed, reason)] = summary["failures"]
    assert seed == 100_058 and "could not plan" in reason
    assert (tmp_path / "demos" / "meta" / "expert_seeds.txt").read_text().split() == ["100058"]
