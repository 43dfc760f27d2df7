"""`bimanual-vla record`: frames from the stack's messages, and a recorded episode read back.

The fast tests check the frame assembly (plain Python) and the recorder's subscriptions with
messages sent over DDS by a test node; the slow one records a pick episode from the stack the
command brings up itself and reads it back with the dataset loader.
"""
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from bimanual_core.client import StackClient
from bimanual_core.config import load_embodiment, load_tasks
from bimanual_core.eval_runner import StackFailure
from bimanual_core.ros_conversions import RELIABLE_QOS, SENSOR_QOS, numpy_to_image
from vla_data.collection import DEMO_SEED_BASE, image_size
from vla_data.frames import JOINT_STATE, FrameBuffer
from vla_data.lerobot import DatasetError, LeRobotDataset
from vla_data.recorder import StackRecorder

EMB = load_embodiment("aloha2")
NAMES = EMB.joint_names
CAMERAS = list(EMB.cameras)
SIZE = image_size(EMB)
RECORD_TIMEOUT_S = 240.0


def _image(value: int) -> np.ndarray:
    return np.full((*SIZE, 3), value, np.uint8)


def _pose(offset: float) -> np.ndarray:
    return EMB.home + offset


def _filled() -> FrameBuffer:
    """A buffer that has had a joint state (home + 0) at t=10 and every camera at t=5."""
    frames = FrameBuffer(NAMES, CAMERAS, SIZE)
    assert frames.missing() == [JOINT_STATE, *CAMERAS]
    frames.set_joint_state(NAMES, _pose(0.0), 10)
    for i, cam in enumerate(CAMERAS):
        frames.set_image(cam, _image(i), 5)
    assert frames.missing() == []
    return frames


# ---------------------------------------------------------------- frame assembly (no ROS)

def test_each_command_becomes_a_frame_with_what_was_latest_when_it_was_sent():
    frames = _filled()
    frames.set_joint_state(NAMES, _pose(0.1), 15)            # replaces the state at t=10
    assert not frames.add_command(_pose(9.0), 18)            # before the start: no frame
    frames.start(20)
    frames.add_command(_pose(1.0), 30)
    # Arrival order is not send order: this state was sent before the command above.
    frames.set_joint_state(NAMES[::-1], _pose(0.2)[::-1], 25)
    frames.set_image("cam_high", _image(200), 35)
    frames.add_command(_pose(2.0)[::-1], 40, names=NAMES[::-1])
    frames.set_joint_state(NAMES, _pose(0.3), 45)
    frames.add_command(_pose(3.0), 50)
    frames.stop(60)
    assert not frames.add_command(_pose(9.0), 61)            # sent after the stop
    assert not frames.drained()
    frames.set_joint_state(NAMES, _pose(0.4), 70)
    assert frames.drained() and len(frames) == 3

    episode = frames.episode("pick up the red cube", success=True)
    np.testing.assert_allclose(episode.actions, [_pose(1.0), _pose(2.0), _pose(3.0)], atol=1e-6)
    np.testing.assert_allclose(episode.states, [_pose(0.2), _pose(0.2), _pose(0.3)], atol=1e-6)
    assert [f[0, 0, 0] for f in episode.images["cam_high"]] == [0, 200, 200]
    assert [f[0, 0, 0] for f in episode.images["cam_low"]] == [1, 1, 1]   # repeated
    assert episode.images["cam_low"][0] is episode.images["cam_low"][2]   # not copied
    assert episode.success and episode.task == "pick up the red cube"


def test_frames_need_every_input_and_refuse_malformed_messages():
    frames = FrameBuffer(NAMES, CAMERAS, SIZE)
    with pytest.raises(ValueError, match="nothing received from"):
        frames.start(0)
    frames = _filled()
    with pytest.raises(ValueError, match="lacks configured joints"):
        frames.set_joint_state(NAMES[:-1], _pose(0.0)[:-1], 11)
    with pytest.raises(ValueError, match="non-finite"):
        frames.add_command(np.full(len(NAMES), np.nan), 12)
    with pytest.raises(ValueError, match="positions"):
        frames.add_command(_pose(0.0)[:5], 12)
    with pytest.raises(ValueError, match="dataset holds"):
        frames.set_image("cam_high", np.zeros((10, 10, 3), np.uint8), 12)
    with pytest.raises(ValueError, match="unknown camera"):
        frames.set_image("cam_top", _image(0), 12)
    frames.start(20)
    assert frames.add_command(_pose(1.0), 21, source="/position")
    with pytest.raises(ValueError, match="both /position and /trajectory"):
        frames.add_command(_pose(1.0), 22, source="/trajectory")
    assert len(frames) == 1
    frames.start(30)                                         # a new episode starts empty
    frames.stop(40)
    with pytest.raises(DatasetError, match="non-empty"):
        frames.episode("pick up the red cube", success=False)


# ---------------------------------------------------------------- the recorder over DDS

class _FakeStack:
    """Publishes what the simulator and the decoder publish, from a test node."""

    def __init__(self, context):
        self.node = Node("fake_stack", context=context)
        drv = EMB.driver
        self.joints = self.node.create_publisher(JointState, drv["joint_states_topic"],
                                                 RELIABLE_QOS)
        self.position = self.node.create_publisher(Float64MultiArray,
                                                   drv["forward_position_topic"], RELIABLE_QOS)
        self.trajectory = self.node.create_publisher(JointTrajectory,
                                                     drv["joint_trajectory_topic"], RELIABLE_QOS)
        self.cameras = {c.name: self.node.create_publisher(Image, c.image_topic, SENSOR_QOS)
                        for c in EMB.cameras.values()}

    def wait_matched(self, timeout: float = 10.0) -> None:
        pubs = [self.joints, self.position, self.trajectory, *self.cameras.values()]
        deadline = time.monotonic() + timeout
        while any(p.get_subscription_count() == 0 for p in pubs):
            assert time.monotonic() < deadline, "the recorder's subscriptions never matched"
            time.sleep(0.02)

    def state(self, q: np.ndarray, reverse: bool = True) -> None:
        order = slice(None, None, -1) if reverse else slice(None)
        self.joints.publish(JointState(name=NAMES[order], position=q[order].tolist()))

    def images(self, value: int) -> None:
        for pub in self.cameras.values():
            pub.publish(numpy_to_image(_image(value), "rgb8"))


def _until(predicate, timeout: float = 5.0, step=lambda: None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        step()
        time.sleep(0.02)


def test_recorder_turns_stack_messages_into_frames_for_both_command_interfaces(
        ros_context, ros_domain):
    fake = _FakeStack(ros_context)
    with StackClient("aloha2", domain_id=ros_domain) as client:
        recorder = StackRecorder(client, EMB, camera_timeout_s=0.5)
        fake.wait_matched()
        fake.state(_pose(0.0))
        _until(lambda: recorder.frames.missing() == CAMERAS)
        with pytest.raises(StackFailure, match="/cam_high/image_raw.*within"):
            with recorder:
                pass
        _until(lambda: not recorder.frames.missing(), step=lambda: fake.images(7))

        # forward_position: the command in action order, the state reordered by name
        with recorder:
            fake.position.publish(Float64MultiArray(data=_pose(1.0).tolist()))
            fake.state(_pose(0.1))
            fake.position.publish(Float64MultiArray(data=_pose(2.0).tolist()))
            _until(lambda: len(recorder.frames) == 2)
        episode = recorder.frames.episode("pick up the red cube", success=True)
        np.testing.assert_allclose(episode.actions, [_pose(1.0), _pose(2.0)], atol=1e-6)
        np.testing.assert_allclose(episode.states, [_pose(0.0), _pose(0.1)], atol=1e-6)
        assert all(f.shape == (*SIZE, 3) and f[0, 0, 0] == 7 for f in episode.images["cam_low"])

        # joint_trajectory: the first point, joints named in another order
        with recorder:
            for k in (3.0, 4.0):
                points = [JointTrajectoryPoint(positions=_pose(k)[::-1].tolist()),
                          JointTrajectoryPoint(positions=_pose(9.0).tolist())]
                fake.trajectory.publish(JointTrajectory(joint_names=NAMES[::-1], points=points))
            fake.trajectory.publish(JointTrajectory(joint_names=NAMES))   # no points: no frame
            _until(lambda: len(recorder.frames) == 2)
        episode = recorder.frames.episode("pick up the red cube", success=False)
        np.testing.assert_allclose(episode.actions, [_pose(3.0), _pose(4.0)], atol=1e-6)
        assert len(episode.images["cam_high"]) == 2 and not episode.success
    fake.node.destroy_node()


# ---------------------------------------------------------------- end to end

def _record(*args: str) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-m", "bimanual_core.cli", "record", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(RECORD_TIMEOUT_S, proc.kill)    # a hung run fails, not blocks
    watchdog.start()
    try:
        output = proc.communicate()[0]
        return proc.returncode, output
    finally:
        watchdog.cancel()


@pytest.mark.slow
def test_record_writes_a_pick_episode_that_the_loader_reads_back(ros_domain, tmp_path):
    out = tmp_path / "demos"
    code, output = _record("--task", "pick", "--episodes", "1", "--out", str(out),
                           "--log-dir", str(tmp_path / "logs"))
    assert code == 0, output
    assert f"[record] 1/1 seed {DEMO_SEED_BASE}: SUCCESS" in output, output
    assert "Traceback" not in output, output

    ds = LeRobotDataset(out)
    assert len(ds) == 1 and ds.success(0) and ds.fps == EMB.control_rate_hz
    assert ds.task(0) == load_tasks()["tasks"]["pick"]["instruction"]
    assert ds.joint_names == NAMES and ds.cameras == CAMERAS
    table = ds.episode_table(0)
    states, actions = table["observation.state"], table["action"]
    assert states.shape == actions.shape and states.shape[1] == 14 and len(states) > 100
    np.testing.assert_allclose(table["timestamp"], np.arange(len(states)) / 50.0, atol=1e-5)
    assert table["next.success"][-1] and not table["next.success"][:-1].any()
    for cam in CAMERAS:
        assert ds.frames(0, cam).shape == (len(states), *SIZE, 3)
    high = ds.frames(0, "cam_high").astype(np.int16)
    assert np.abs(high[-1] - high[0]).mean() > 1.0                  # the scene changed

    assert np.ptp(actions, axis=0).max() > 0.3                      # the arm was commanded
    arm = [i for i, j in enumerate(EMB.joints) if j.kind == "arm"]

    def follow_error(lag: int) -> float:
        return float(np.abs(states[lag:, arm] - actions[:len(actions) - lag, arm]).mean())
    # The arm follows its commands within a few control periods, far closer than 0.5 s later.
    assert follow_error(3) < 0.01 and follow_error(3) < 0.25 * follow_error(25), \
        (follow_error(3), follow_error(25))

    # No stack is started for seeds already tried (resume), and a dataset is never overwritten.
    code, output = _record("--episodes", "1", "--out", str(out), "--resume")
    assert code == 0 and "0 episodes" in output and "holds 1 episodes" in output, output
    code, output = _record("--episodes", "1", "--out", str(out))
    assert code == 2 and "already holds a dataset" in output, output
