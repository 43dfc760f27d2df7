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
    assert w.add_episode(make_episode(15, success=False, task="other", seed=2)) == 1

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
    w = writer(tmp_path / "ds")
    with pytest.raises(DatasetError, match="cameras"):
        w.add_episode(Episode("t", np.zeros((2, 3)), np.zeros((2, 3)),
                              {"cam_a": [np.zeros((*SIZE, 3), np.uint8)] * 2}))
    with pytest.raises(DatasetError, match="not a LeRobotDataset"):
        LeRobotDataset(tmp_path / "nothing")


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
