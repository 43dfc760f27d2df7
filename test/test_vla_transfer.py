"""Cross-embodiment fine-tuning: an ALOHA (14-D) checkpoint re-headed for the bi-arm Franka (16-D).

A tiny source checkpoint and tiny datasets (as in test_vla_model) keep this fast on a CPU.
"""
import json

import numpy as np
import pytest
import torch

from bimanual_core.config import load_embodiment
from test_vla_model import EMB, tiny_config, uniform_image_inputs, write_demos, write_views
from vla_model.modeling import BimanualVLAModel
from vla_model.processing import TextEncoder
from vla_model.transfer import adapt_point_objects, adapt_to_embodiment, is_embodiment_specific

FRANKA = load_embodiment("franka_duo")


def source_checkpoint(path):
    """A tiny ALOHA model with non-trivial normalisation, saved like a trained one."""
    torch.manual_seed(3)
    model = BimanualVLAModel.from_encoders(tiny_config(point_head=True))
    model.set_normalization(np.full(14, 0.3), np.full(14, 0.5), np.full(14, -0.2),
                            np.full(14, 0.4), [0.0, 0.5, 0.1], [0.1, 0.1, 0.05])
    model.save_pretrained(path)
    return model


def franka_step_inputs(bright: bool, t: int = 30, steps: int = 60) -> dict:
    """Step t of a write_demos episode on the Franka: its image, joints and time."""
    text, text_mask = TextEncoder("all-minilm-l6-v2", 16)(["pick up the red cube"])
    state = FRANKA.home + np.eye(16)[0] * (1.0 if bright else -1.0) * t / (steps - 1)
    return dict(images=torch.full((1, 2, 48, 64, 3), 220 if bright else 30, dtype=torch.uint8),
                image_mask=torch.ones(1, 2, dtype=torch.bool), text_embeddings=text,
                text_mask=text_mask, state=torch.as_tensor(state, dtype=torch.float32)[None],
                elapsed=torch.tensor([t / 50.0]))


def test_adapt_keeps_shared_weights_and_reheads_the_joints(tmp_path):
    source = source_checkpoint(tmp_path / "src")
    target, report = adapt_to_embodiment(source, FRANKA)
    assert target.config.action_dim == 16 and target.config.joint_names == FRANKA.joint_names
    assert target.config.embodiment == "franka_duo"
    assert target.action_out.out_features == 16 * target.config.actions_per_query
    assert target.state_proj.in_features == 16 and target.cond_proj.in_features == 16
    src = source.state_dict()
    for name, tensor in target.state_dict().items():
        if is_embodiment_specific(name):
            assert name in report.reinitialised
        else:
            assert name in report.kept
            torch.testing.assert_close(tensor, src[name], rtol=0, atol=0)
    assert sorted(n.split(".")[0] for n in report.reinitialised) == sorted(
        ["action_mean", "action_std", "action_out", "action_out", "cond_proj", "cond_proj",
         "state_mean", "state_std", "state_proj", "state_proj"])
    assert any(n.startswith("vision.") for n in report.kept)
    assert {"point_out.weight", "point_mean", "decoder.norm.weight", "queries"} <= set(report.kept)
    assert not any(p.requires_grad for p in target.vision.parameters())

    with pytest.raises(ValueError, match="cameras"):
        adapt_to_embodiment(BimanualVLAModel(tiny_config(cameras=["cam_low"])), FRANKA)


def test_finetune_cli_turns_an_aloha_checkpoint_into_a_franka_policy(tmp_path):
    from bimanual_core.cli import main
    from vla_backbone_node.policy import PolicyError, PolicyObservation, make_policy
    source = source_checkpoint(tmp_path / "src")
    data = write_demos(tmp_path / "franka", embodiment=FRANKA)
    out = tmp_path / "ft"
    # no --embodiment: the dataset's robot_type (franka_duo) says which
    assert main(["finetune", "--checkpoint", str(tmp_path / "src"), "--data", str(data),
                 "--out", str(out), "--steps", "400", "--batch-size", "16", "--lr", "3e-3",
                 "--eval-every", "20", "--save-every", "400", "--image-stride", "5",
                 "--device", "cpu", "--seed", "1"]) == 0
    transfer = json.loads((out / "transfer.json").read_text())
    assert "state_proj.weight" in transfer["reinitialised"] and "text_proj.weight" in transfer["kept"]
    tuned = BimanualVLAModel.from_pretrained(out).eval()
    assert tuned.config.action_dim == 16 and tuned.config.joint_names == FRANKA.joint_names
    torch.testing.assert_close(tuned.point_std, source.point_std)          # the world: kept
    assert float(tuned.action_std[0]) > 0.1          # joint 0 ramps: normalised from the data
    log = [json.loads(line) for line in (out / "train_log.jsonl").open()]
    assert np.mean([m["action_loss"] for m in log[-3:]]) < 0.5 * log[0]["action_loss"]
    # it learnt the new joints: 9 steps on, Franka joint 0 goes on up (bright) or down (dark)
    for bright in (True, False):
        predicted = tuned.predict(**franka_step_inputs(bright)).actions[0, 9].numpy()
        expected = FRANKA.home[0] + (1.0 if bright else -1.0) * 39 / 59
        assert abs(predicted[0] - expected) < 0.2, (bright, predicted[0], expected)
        np.testing.assert_allclose(predicted[1:], FRANKA.home[1:], atol=0.1)

    policy = make_policy("learned", FRANKA, checkpoint=str(out), device="cpu")
    policy.reset("pick up the red cube")
    image = np.zeros((240, 320, 3), np.uint8)
    chunk = policy.infer(PolicyObservation(1.0, FRANKA.home, {"cam_high": image,
                                                              "cam_left_wrist": image}))
    assert chunk.shape == (FRANKA.chunk_horizon, 16) and np.all(np.isfinite(chunk))
    with pytest.raises(PolicyError, match="trained for franka_duo"):
        make_policy("learned", EMB, checkpoint=str(out), device="cpu")


def test_finetune_widens_the_point_head_to_locate_the_container_too(tmp_path):
    """A pick checkpoint (locating the cube) fine-tuned on place data that also records the bowl:
    the cube's rows keep their weights and statistics, the bowl's are learned from the data."""
    from vla_model.training import TrainSettings, train
    source = source_checkpoint(tmp_path / "src")
    wide = adapt_point_objects(source, 2)
    assert wide.config.point_dim == 6 and wide.point_out.out_features == 6
    torch.testing.assert_close(wide.point_out.weight[:3], source.point_out.weight)
    torch.testing.assert_close(wide.text_proj.weight, source.text_proj.weight)

    demos, views = write_demos(tmp_path / "demos"), write_views(tmp_path / "views", with_bowl=True)
    train(TrainSettings(datasets=[str(demos)], view_datasets=[str(views)],
                        output_dir=str(tmp_path / "ft"), steps=100, batch_size=8,
                        view_batch_size=8, learning_rate=3e-3, warmup_steps=5, save_every=100,
                        eval_every=100, val_fraction=0.0, image_stride=5,
                        init_from=str(tmp_path / "src")))
    tuned = BimanualVLAModel.from_pretrained(tmp_path / "ft").eval()
    assert tuned.config.point_objects == 2
    torch.testing.assert_close(tuned.point_mean[:3], source.point_mean)     # the cube: kept
    torch.testing.assert_close(tuned.point_mean[3:], torch.tensor([0.1, 0.5, 0.02]))
    bright, dark = (tuned.predict(**uniform_image_inputs(v, 1.0)).point[0] for v in (220, 30))
    assert dark[4] - bright[4] > 0.12               # the bowl: 0.2 apart in y in the views
    assert bright[0] - dark[0] > 0.12               # the cube: 0.2 apart in x

    pick_views = write_views(tmp_path / "pick_views")
    with pytest.raises(ValueError, match="same objects"):
        train(TrainSettings(datasets=[str(demos)], view_datasets=[str(views), str(pick_views)],
                            output_dir=str(tmp_path / "mixed"), steps=1,
                            init_from=str(tmp_path / "src")))
