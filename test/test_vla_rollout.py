"""Recovery data and closed-loop rollouts without ROS: the expert's action noise (DART), the
in-process rollout (simulator + decoder core + policy), and the learned policy holding once done."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from bimanual_core.config import load_embodiment
from test_backbone_policy import HoldPolicy
from vla_backbone_node.policy import PolicyState
from vla_data.expert import ActionNoise, ExpertSettings

EMB = load_embodiment("aloha2")


def test_action_noise_is_smooth_has_its_std_and_spares_the_grippers():
    dt, tau, sigma = EMB.control_period, 0.5, 0.03
    noise = ActionNoise(14, EMB.gripper_indices, sigma, tau, dt, np.random.default_rng(0))
    x = np.array([noise() for _ in range(20000)])
    assert np.all(x[:, EMB.gripper_indices] == 0.0)
    arms = [i for i in range(14) if i not in EMB.gripper_indices]
    std = x[1000:, arms].std()
    assert 0.7 * sigma < std < 1.3 * sigma, std
    a = x[1000:, arms[0]]
    lag1 = np.corrcoef(a[:-1], a[1:])[0, 1]            # exp(-dt / tau) = 0.96
    assert lag1 > 0.9, lag1
    off = ActionNoise(14, EMB.gripper_indices, 0.0, tau, dt, np.random.default_rng(0))
    assert not np.any([off() for _ in range(10)])


def test_expert_settings_refuse_bad_noise():
    with pytest.raises(ValueError, match="action_noise"):
        ExpertSettings(action_noise=-0.1)
    with pytest.raises(ValueError, match="noise_time_s"):
        ExpertSettings(noise_time_s=0.0)


@pytest.mark.slow
def test_noisy_expert_moves_off_the_plan_but_records_the_clean_plan(tmp_path):
    """Same scene with and without noise: identical recorded actions (the expert's plan), states
    that differ by about the noise, and a longer hold recorded after the plan."""
    from vla_data.expert import generate
    from vla_data.lerobot import LeRobotDataset
    tables = {}
    for name, noise, hold in (("clean", 0.0, 0.5), ("noisy", 0.03, 1.5)):
        summary = generate(tmp_path / name, ExpertSettings(cameras=("cam_high",),
                                                           action_noise=noise, hold_s=hold),
                           episodes=1, seed=100_000, workers=1)
        assert summary["episodes_kept"] == 1, summary
        tables[name] = LeRobotDataset(tmp_path / name).episode_table(0)
    clean, noisy = tables["clean"], tables["noisy"]
    assert len(noisy["action"]) == len(clean["action"]) + 50        # 1 s more of holding
    np.testing.assert_allclose(noisy["action"][:len(clean["action"])], clean["action"])
    arms = [i for i in range(14) if i not in EMB.gripper_indices]
    gap = np.abs(noisy["observation.state"][:len(clean["action"]), arms]
                 - clean["observation.state"][:, arms]).mean()
    assert 0.005 < gap < 0.1, gap


@pytest.mark.slow
def test_rollout_of_the_zero_shot_expert_picks_the_cube():
    """The rollout's plumbing (decoder core, latency, camera rate, judge) with a policy known to
    pick: the zero-shot planner on ground truth."""
    from vla_backbone_node.zero_shot import ZeroShotPolicy
    from vla_data.expert import ground_truth_locate
    from vla_model.rollout import Rollout, RolloutSettings
    rollout = Rollout.__new__(Rollout)          # the locate callable needs the rollout's sim
    policy = ZeroShotPolicy(EMB, lambda label: ground_truth_locate(rollout.sim)(label))
    Rollout.__init__(rollout, policy, RolloutSettings(time_limit_s=20.0))
    steps = []
    try:
        result = rollout.run(3, visit=lambda q, images, command: steps.append(command))
        rollout.settings = replace(rollout.settings, stall_rate_hz=1.0)
        stalled = rollout.run(3)            # the decoder brakes and drops its queue now and then
    finally:
        rollout.close()
    assert stalled.success and stalled.requests > result.requests, (stalled, result)
    with pytest.raises(ValueError, match="stall"):
        RolloutSettings(stall_rate_hz=-1.0)
    assert result.success, result
    assert result.cause == "" and result.done_at_s is not None and result.max_rise_m > 0.05
    assert result.sim_duration_s == pytest.approx(result.done_at_s + 1.5, abs=0.05)
    assert len(steps) == round(result.sim_duration_s / EMB.control_period)
    assert result.requests > 5         # chunks were requested as the queue ran low


@pytest.mark.slow
def test_rollout_of_a_learned_policy_times_out_and_holds_once_done(tmp_path):
    """A tiny untrained checkpoint: it never picks (time limit), and with done_progress 0 the
    learned policy holds one pose after its first chunk."""
    from test_vla_model import tiny_config
    from vla_model.modeling import BimanualVLAModel
    from vla_model.policy import LearnedPolicy
    from vla_model.rollout import Rollout, RolloutSettings
    BimanualVLAModel.from_encoders(tiny_config()).save_pretrained(tmp_path / "ckpt")
    policy = LearnedPolicy(EMB, str(tmp_path / "ckpt"), device="cpu", done_progress=2.0)
    rollout = Rollout(policy, RolloutSettings(time_limit_s=1.0))
    try:
        result = rollout.run(0)
        assert not result.success and result.cause == "time_limit"
        assert result.sim_duration_s == pytest.approx(1.0, abs=0.03) and result.requests >= 1
        policy.done_progress = 0.0                          # done at the first answer
        chunks, infer = [], policy.infer
        policy.infer = lambda *args: chunks.append(infer(*args)) or chunks[-1]
        result = rollout.run(0)
    finally:
        rollout.close()
    assert result.done_at_s == pytest.approx(0.0) and result.cause == "judged"
    assert len(chunks) >= 2
    for chunk in chunks:                                    # one pose, every row, every answer
        np.testing.assert_array_equal(chunk, np.repeat(chunks[0][:1], len(chunk), 0))
    assert policy._hold is None                             # stop() forgot the pose


@pytest.mark.slow
def test_grasped_by_tells_a_grasp_from_a_gripper_closed_beside_the_object():
    """Both fingers on the cube: grasped; the same gripper closed at home: not."""
    from vla_data.expert import _Expert
    expert = _Expert(ExpertSettings(cameras=("cam_high",)))
    sim, held, step = expert.sim, [], expert.sim.step
    target = sim.scene.objects[0].name
    sim.step = lambda command: (step(command), held.append(sim.grasped_by(target)))
    try:
        episode, failure = expert.run(100_000)
        assert failure is None and episode.success
        [gripper] = np.flatnonzero(np.ptp(episode.actions[:, EMB.gripper_indices], axis=0) > 0.5)
        assert held[0] == [] and held[-1] == [gripper]      # the arm that picked holds it
        closed = EMB.home.copy()
        closed[EMB.gripper_indices] = 0.0
        sim.reset(100_000)
        for _ in range(50):
            step(closed)
        assert sim.grasped_by(target) == []
    finally:
        expert.close()


def tiny_checkpoint(path):
    """A tiny untrained checkpoint saved at `path`, seeded: one policy, so one path for the
    expert that takes over from it."""
    from test_vla_model import tiny_config
    from vla_model.modeling import BimanualVLAModel
    torch.manual_seed(0)
    model = BimanualVLAModel.from_encoders(tiny_config())
    model.save_pretrained(path)
    return model


@pytest.mark.slow
def test_takeover_episode_keeps_the_policy_frames_as_context_only(tmp_path):
    """A tiny untrained checkpoint drives for its drawn handover time (it never grasps), the
    expert re-plans from there and picks the cube; training samples only the expert's frames."""
    from vla_data.expert import TakeoverSettings, generate
    from vla_data.lerobot import LeRobotDataset
    from vla_model.processing import TextEncoder
    from vla_model.training import DemoSet
    model = tiny_checkpoint(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="checkpoint"):
        TakeoverSettings()
    with pytest.raises(ValueError, match="handover"):
        TakeoverSettings(checkpoint="x", handover_s=(5.0, 50.0))
    settings = TakeoverSettings(cameras=tuple(model.config.cameras),
                                checkpoint=str(tmp_path / "ckpt"), handover_s=(1.0, 2.0))
    summary = generate(tmp_path / "takeover", settings, episodes=1, seed=100_000, workers=1)
    assert summary["episodes_kept"] == 1, summary
    data = LeRobotDataset(tmp_path / "takeover")
    handover = data.expert_from(0)
    assert data.success(0) and 50 <= handover <= 100           # 1-2 s at 50 Hz
    table = data.episode_table(0)
    assert table["observation.environment_state"][-1, 2] > 0.05   # the expert lifted the cube
    demos = DemoSet([str(tmp_path / "takeover")], model, TextEncoder("all-minilm-l6-v2", 16),
                    5, torch.device("cpu"), print)
    frames = demos.index[:, 1]
    assert frames.min() == handover and len(frames) == len(table["action"]) - handover


class DoneAtOncePolicy(HoldPolicy):
    """Holds the arms where they are and declares the task done at its first chunk."""

    name = "done_at_once"

    def reset(self, instruction, task=""):
        super().reset(instruction, task)
        self.asked = False

    def infer(self, observation, conditioning=None):
        self.asked = True
        return super().infer(observation, conditioning)

    def status(self):
        return PolicyState(phase="done", progress=1.0, done=True) if self.asked else PolicyState()


@pytest.mark.slow
def test_takeover_corrects_a_policy_that_says_done_without_success(tmp_path):
    """A policy that declares done before touching anything is judged failed settle_s later;
    with `on_done` the expert takes over from there at once, without it the scene is dropped."""
    from vla_data.expert import TakeoverSettings, _Takeover
    model = tiny_checkpoint(tmp_path / "ckpt")
    outcomes = {}
    for on_done in (False, True):
        takeover = _Takeover(TakeoverSettings(cameras=tuple(model.config.cameras),
                                              checkpoint=str(tmp_path / "ckpt"),
                                              handover_s=(30.0, 35.0), on_done=on_done))
        try:
            takeover.rollout.policy = DoneAtOncePolicy(EMB)
            outcomes[on_done] = takeover.run(100_000)
        finally:
            takeover.close()
    assert outcomes[False][0] is None and "before the handover" in outcomes[False][1]
    episode, why = outcomes[True]
    assert episode is not None and episode.success, why
    settle = takeover.rollout.settings.settle_s
    assert settle / EMB.control_period <= episode.expert_from <= 5.0 / EMB.control_period
    assert episode.environment_state[-1, 2] > 0.05                    # the expert lifted it


def test_motion_end_is_where_the_actions_stop_changing():
    from vla_model.training import motion_end
    actions = np.zeros((15, 14))
    actions[:10, 3] = np.arange(10)
    actions[10:, 3] = 9.0
    assert motion_end(actions) == 9
    assert motion_end(np.zeros((5, 14))) == 0


def tiny_demo_set(tmp_path):
    """Two 40-step ramp demonstrations (write_demos) and their DemoSet for a tiny model."""
    from test_vla_model import TINY, write_demos
    from vla_model.configuration import BimanualVLAConfig
    from vla_model.modeling import BimanualVLAModel
    from vla_model.processing import TextEncoder
    from vla_model.training import DemoSet
    data = write_demos(tmp_path / "demos", episodes=2, steps=40)
    model = BimanualVLAModel.from_encoders(BimanualVLAConfig(**TINY))
    return data, DemoSet([str(data)], model, TextEncoder("all-minilm-l6-v2", 16), 5,
                         torch.device("cpu"), print)


def test_elapsed_delay_and_progress_to_hold_shape_the_training_rows(tmp_path):
    """`elapsed_delay`: half the training rows see their episode time late (up to the delay),
    never early; validation rows keep the demonstration's time. `progress_to_hold`: progress
    labels saturate where the demonstrated motion ends."""
    from vla_model.training import TrainSettings, train
    data, demos = tiny_demo_set(tmp_path)
    settings = TrainSettings(datasets=[str(data)], output_dir="", elapsed_delay=2.0)
    rows = demos.index
    on_time = rows[:, 1] * 0.02
    for train_mode in (True, False):
        batch = demos.batch(rows, settings, np.ones(14), np.random.default_rng(0), train_mode)
        late = batch["elapsed"].numpy() - on_time
        assert np.all(late > -1e-5) and np.all(late < 2.0 + 1e-5)
        if train_mode:
            assert 0.3 < np.mean(late > 1e-4) < 0.7 and late.max() > 1.0
        else:
            assert np.allclose(late, 0.0, atol=1e-5)
    # progress_to_hold: labels reach 1 where the motion ends (write_demos ramps to the end).
    assert demos.motion_end == [39, 39]
    demos.motion_end = [20, 20]                             # as if the last 19 steps held still
    settings.progress_to_hold = True
    progress = demos.batch(rows, settings, np.ones(14), np.random.default_rng(0),
                           False)["progress"].numpy()
    np.testing.assert_allclose(progress, np.minimum(1.0, rows[:, 1] / 20), rtol=1e-6)
    with pytest.raises(ValueError, match="elapsed_delay"):
        train(TrainSettings(datasets=[str(data)], output_dir=str(tmp_path / "run"),
                            elapsed_delay=-1.0))


def test_conditioning_shift_puts_the_pending_actions_out_of_step(tmp_path):
    """Training conditioning is the demonstration's own next actions, in step with the target;
    with `conditioning_shift` it is the same actions up to that many steps early or late (the
    target unchanged), as a previous chunk is closed loop."""
    from vla_model.training import TrainSettings, train
    data, demos = tiny_demo_set(tmp_path)
    rows = demos.index[demos.index[:, 1] < 20]              # rows whose ramp has room to shift
    step = 1.0 / 39                                        # joint 0's ramp per step

    def shifts(max_shift):
        settings = TrainSettings(datasets=[str(data)], output_dir="", conditioning_prob=1.0,
                                 conditioning_noise=0.0, conditioning_shift=max_shift)
        batch = demos.batch(rows, settings, np.ones(14), np.random.default_rng(0), True)
        first = batch["conditioning"][:, 0, 0] - batch["actions"][:, 0, 0]
        sign = np.where(rows[:, 0] % 2 == 0, 1.0, -1.0)     # dark episodes ramp down
        return np.round(first.numpy() * sign / step).astype(int)
    assert set(shifts(0)) == {0}
    seen = shifts(4)
    assert set(seen) <= set(range(-4, 5)) and min(seen) < 0 < max(seen)
    with pytest.raises(ValueError, match="conditioning_shift"):
        train(TrainSettings(datasets=[str(data)], output_dir=str(tmp_path / "run"),
                            conditioning_shift=-1))


def test_cli_passes_the_recovery_options_on(monkeypatch):
    """record-expert's noise/hold/takeover flags reach its settings; finetune's --elapsed-delay,
    --progress-to-hold, --action-delta-weight and --conditioning-shift reach TrainSettings."""
    import vla_data.expert
    import vla_model.training
    from bimanual_core import cli
    seen = {}
    monkeypatch.setattr(vla_data.expert, "generate",
                        lambda out, settings, *a, **k: seen.setdefault("expert", settings) and {
                            "episodes_kept": 0, "failures": [], "seconds": 0.0, "dataset": out,
                            "episodes_total": 0, "frames_total": 0})
    monkeypatch.setattr(vla_model.training, "train",
                        lambda settings: seen.setdefault("train", settings) and {})
    parser = cli.build_parser()
    args = parser.parse_args(["record-expert", "--out", "x", "--action-noise", "0.03",
                              "--noise-time", "0.4", "--hold", "3"])
    args.func(args)
    assert (seen["expert"].action_noise, seen["expert"].noise_time_s,
            seen["expert"].hold_s) == (0.03, 0.4, 3.0)
    seen.clear()
    args = parser.parse_args(["record-expert", "--out", "x", "--takeover", "default",
                              "--handover", "2", "9", "--handover-on-done"])
    args.func(args)
    takeover = seen.pop("expert")        # with the cameras of the checkpoint that drives
    assert takeover.handover_s == (2.0, 9.0) and takeover.checkpoint.endswith("models/default")
    assert takeover.on_done
    assert takeover.cameras == ("cam_high", "cam_left_wrist", "cam_right_wrist")
    for bad in (["--handover", "9", "2"], ["--takeover", "no_such_checkpoint"]):
        args = parser.parse_args(["record-expert", "--out", "x", "--takeover", "default", *bad])
        assert args.func(args) == cli.EXIT_USAGE and "expert" not in seen
    args = parser.parse_args(["finetune", "--data", "d", "--out", "o", "--elapsed-delay", "3",
                              "--progress-to-hold", "--action-delta-weight", "2",
                              "--conditioning-shift", "10"])
    args.func(args)
    assert seen["train"].elapsed_delay == 3.0 and seen["train"].progress_to_hold
    assert (seen["train"].action_delta_weight, seen["train"].conditioning_shift) == (2.0, 10)
