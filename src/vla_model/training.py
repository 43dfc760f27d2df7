"""Training and fine-tuning on LeRobotDataset v3 demonstrations (no ROS).

With a frozen vision encoder (the default), the encoder runs once per recorded camera frame and
its feature maps are cached next to the dataset (`<dataset>/cache/`), so an epoch costs only the
action transformer: that is what makes training practical on a CPU. Every control step of every
successful episode is a sample; it sees the latest camera frame at or before it (as the robot
does, cameras being slower than control), the joint state, the instruction and, half of the time,
a noisy copy of the actions a previous chunk would still have pending (the `conditioning` input).
Where a dataset records `observation.environment_state` (the task objects' positions), the
model's point head learns it too; pointing-view datasets (`view_datasets`, from `record-views`)
add rows that teach only that, from many more object layouts (embodied-reasoning co-training).
Fine-tuning on data that locates more objects than the checkpoint did (a pick checkpoint on
place data that also records the bowl) widens the point head and keeps the known rows.

Runs are seeded, log to `<output>/train_log.jsonl`, write `checkpoint-<step>/` every
`save_every` steps (model + optimiser + RNG: `resume=True` continues from the newest) and the
final model to `<output>/`. Under torchrun (WORLD_SIZE > 1) each process trains on its own
samples through DistributedDataParallel and rank 0 writes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from vla_data.lerobot import ENV_STATE_KEY, LeRobotDataset
from vla_model.configuration import BimanualVLAConfig
from vla_model.modeling import BimanualVLAModel
from vla_model.processing import TextEncoder, pick_device
from vla_model.transfer import adapt_point_objects, adapt_to_embodiment, needs_transfer

TRAINER_STATE = "trainer_state.pt"
VIEW_ELAPSED_S = 10.0    # a view has no episode time: it gets a random one, so points ignore it


@dataclass
class TrainSettings:
    datasets: list[str]
    output_dir: str
    view_datasets: list[str] = field(default_factory=list)   # pointing views (co-training)
    view_batch_size: int = 16
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    seed: int = 0
    save_every: int = 500
    eval_every: int = 250
    val_fraction: float = 0.05
    image_stride: int = 5              # control steps between cached camera frames
    conditioning_prob: float = 0.5
    conditioning_noise: float = 0.05   # in units of each joint's action std
    # Up to this many steps: the pending actions given as conditioning are out of step with the
    # observation (the previous chunk ran ahead of or behind the robot, as it does closed loop),
    # while the target stays the demonstration's. 0: always in step, which teaches the model to
    # copy them; closed loop it then copied a stale prefix and jumped to its own plan mid-chunk.
    conditioning_shift: int = 0
    camera_dropout: float = 0.1
    # Seconds: half of the training samples see their elapsed time late by up to this (uniform).
    # The stack pauses (a slow answer, a lost backbone makes the decoder brake) while the clock
    # runs on; a model that reads the task's phase from the clock then skips ahead (closes the
    # gripper before it reached the object). 0: the demonstrations' own times.
    elapsed_delay: float = 0.0
    # Progress labels reach 1 where the demonstrated motion ends (the actions stop changing), not
    # at the episode's last frame: demonstrations recorded with a long final hold (record-expert
    # --hold) show the arm still for seconds, frames no camera can tell apart; labelled t / n they
    # teach a progress that never reaches the done threshold once the clock is not trusted.
    progress_to_hold: bool = False
    # Train on at most this many successful demonstrations (the first ones, in dataset order):
    # what a fine-tune budget of "<= 100 demonstrations" means with datasets that hold more.
    max_demos: int | None = None
    # The regression head's weight on matching the demonstrations' step-to-step changes
    # (BimanualVLAConfig.action_delta_weight); None keeps the checkpoint's (a new model's: 0).
    action_delta_weight: float | None = None
    device: str = "auto"
    init_from: str | None = None       # a checkpoint to fine-tune (finetune), else from encoders
    resume: bool = False
    model: dict = field(default_factory=dict)   # BimanualVLAConfig overrides for a new model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class DemoSet:
    """All successful episodes of some datasets (or, for views, all episodes), as arrays plus
    cached image features."""

    def __init__(self, roots: list[str], model: BimanualVLAModel, text: TextEncoder,
                 image_stride: int, device: torch.device, say: Callable[[str], None],
                 views: bool = False, max_episodes: int | None = None):
        cfg = model.config
        self.chunk = cfg.chunk_size
        self.point_dim = cfg.point_dim
        self.stride = image_stride
        self.views = views
        self.states, self.actions, self.features, self.tasks = [], [], [], []
        self.points: list[np.ndarray | None] = []
        self.camera_masks, self.periods, self.expert_from = [], [], []
        task_texts: dict[str, int] = {}
        for root in roots:
            data = LeRobotDataset(root)
            missing = set(cfg.cameras) - set(data.cameras)
            if missing:
                say(f"[train] {root}: no cameras {sorted(missing)}; they are masked out")
            if data.joint_names and cfg.joint_names and data.joint_names != cfg.joint_names:
                raise ValueError(f"{root} has joints {data.joint_names}, the model "
                                 f"{cfg.joint_names}")
            feats = self._features(data, model, device, say)
            camera_mask = torch.tensor([c in data.cameras for c in cfg.cameras])
            for i in range(len(data)):
                if not views and not data.success(i):
                    continue
                if max_episodes is not None and len(self.states) == max_episodes:
                    break
                table = data.episode_table(i)
                self.states.append(table["observation.state"])
                self.actions.append(table["action"])
                point = table.get(ENV_STATE_KEY)
                if point is not None and cfg.point_head and point.shape[1] != cfg.point_dim:
                    raise ValueError(f"{root} locates {point.shape[1] // 3} objects, the model's "
                                     f"point head {cfg.point_objects}")
                self.points.append(point)
                self.features.append(feats[i])
                self.tasks.append(task_texts.setdefault(data.task(i), len(task_texts)))
                self.camera_masks.append(camera_mask)
                self.periods.append(1.0 / data.fps)
                self.expert_from.append(0 if views else data.expert_from(i))
        if not self.states:
            raise ValueError(f"no {'view' if views else 'successful'} episodes in {roots}")
        if views and any(p is None for p in self.points):
            raise ValueError(f"view datasets {roots} must record {ENV_STATE_KEY}")
        self.task_texts = list(task_texts)
        self.text, self.text_mask = text(self.task_texts)
        # A takeover episode's frames before the expert took over are context (elapsed time,
        # conditioning), not training samples: their labels would be the corrected policy's.
        self.index = np.array([(e, t) for e, s in enumerate(self.states)
                               for t in range(self.expert_from[e], len(s))])
        self.motion_end = [motion_end(a) for a in self.actions]

    def _features(self, data: LeRobotDataset, model: BimanualVLAModel, device, say):
        """Per episode (F, N, T, C) float16 features of every `stride`-th frame, cached; episodes
        appended to the dataset since are encoded and added to the cache."""
        cfg = model.config
        key = json.dumps([cfg.vision_encoder, cfg.vision_config, cfg.vision_blocks,
                          cfg.vision_grid, cfg.image_size, cfg.cameras, self.stride],
                         sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        path = data.root / "cache" / f"features-{digest}.pt"
        out = torch.load(path, weights_only=True) if path.exists() else []
        frames_of = [math.ceil(e["length"] / self.stride) for e in data.episodes]
        valid = next((i for i, f in enumerate(out) if len(f) != frames_of[i]), len(out))
        out = out[:min(valid, len(data))]           # a re-recorded dataset: encode again
        if len(out) == len(data):
            return out
        model.vision.to(device).eval()          # BatchNorm with its ImageNet statistics
        for i in tqdm(range(len(out), len(data)), desc=f"encoding frames of {data.root.name}",
                      file=sys.stderr, disable=not _is_main()):
            frames = []
            for cam in cfg.cameras:
                if cam in data.cameras:
                    frames.append(data.frames(i, cam)[::self.stride])
                else:
                    frames.append(np.zeros((frames_of[i], 8, 8, 3), np.uint8))
            images = torch.from_numpy(np.stack(frames, 1))
            with torch.inference_mode():
                feats = [model.encode_images(images[j:j + 32].to(device)).half().cpu()
                         for j in range(0, len(images), 32)]
            out.append(torch.cat(feats))
        path.parent.mkdir(exist_ok=True)
        if _is_main():
            torch.save(out, path)
        return out

    def split(self, val_fraction: float, rng: np.random.Generator):
        episodes = rng.permutation(len(self.states))
        n_val = int(round(val_fraction * len(episodes))) if len(episodes) > 1 else 0
        val = set(episodes[:n_val].tolist())
        mask = np.array([e in val for e, _ in self.index])
        return self.index[~mask], self.index[mask]

    def stats(self):
        s, a = np.concatenate(self.states), np.concatenate(self.actions)
        return s.mean(0), s.std(0), a.mean(0), a.std(0)

    def known_points(self) -> np.ndarray:
        """(M, 3 K) every recorded task-object position row (empty if none)."""
        known = [p for p in self.points if p is not None]
        return np.concatenate(known) if known else np.zeros((0, self.point_dim), np.float32)

    def batch(self, rows: np.ndarray, settings: TrainSettings, action_std: np.ndarray,
              rng: np.random.Generator, train: bool) -> dict[str, torch.Tensor]:
        h = self.chunk
        feats, states, targets, progress, tasks, cond, cond_mask = [], [], [], [], [], [], []
        elapsed, points, point_mask = [], [], []
        for e, t in rows:
            actions = self.actions[e]
            n = len(actions)
            idx = np.minimum(np.arange(t, t + h), n - 1)
            targets.append(actions[idx])
            states.append(self.states[e][t])
            feats.append(self.features[e][min(t // self.stride, len(self.features[e]) - 1)])
            end = self.motion_end[e] if settings.progress_to_hold else n - 1
            progress.append(min(1.0, t / max(end, 1)))
            late = (rng.uniform(0, settings.elapsed_delay)
                    if train and settings.elapsed_delay > 0 and rng.random() < 0.5 else 0.0)
            elapsed.append(rng.uniform(0, VIEW_ELAPSED_S) if self.views
                           else t * self.periods[e] + late)
            tasks.append(self.tasks[e])
            known = self.points[e] is not None
            points.append(self.points[e][t] if known else np.zeros(self.point_dim, np.float32))
            point_mask.append(known)
            c, m = np.zeros((h, actions.shape[1]), np.float32), np.zeros(h, bool)
            if train and not self.views and rng.random() < settings.conditioning_prob:
                k = int(rng.integers(h // 2, h))          # the previous chunk ran h - k steps
                shift = int(rng.integers(-settings.conditioning_shift,
                                         settings.conditioning_shift + 1))
                c[:k] = actions[np.clip(idx[:k] + shift, 0, n - 1)] + rng.normal(
                    size=(k, actions.shape[1])) * (settings.conditioning_noise * action_std)
                m[:k] = True
            cond.append(c)
            cond_mask.append(m)
        image_mask = torch.stack([self.camera_masks[e] for e, _ in rows])
        if train and settings.camera_dropout > 0:
            drop = torch.from_numpy(rng.random(image_mask.shape) < settings.camera_dropout)
            keep_one = drop.all(1)
            drop[keep_one] = False
            image_mask = image_mask & ~drop
        tasks = torch.tensor(tasks)
        return dict(image_features=torch.stack(feats).float(), image_mask=image_mask,
                    text_embeddings=self.text[tasks], text_mask=self.text_mask[tasks],
                    state=torch.from_numpy(np.stack(states)),
                    conditioning=torch.from_numpy(np.stack(cond)),
                    conditioning_mask=torch.from_numpy(np.stack(cond_mask)),
                    elapsed=torch.tensor(elapsed, dtype=torch.float32),
                    actions=torch.from_numpy(np.stack(targets)),
                    action_mask=torch.full((len(rows),), not self.views),
                    progress=torch.tensor(progress, dtype=torch.float32),
                    point=torch.from_numpy(np.stack(points).astype(np.float32)),
                    point_mask=torch.tensor(point_mask))


def motion_end(actions: np.ndarray, tolerance: float = 1e-6) -> int:
    """Index of the last action that differs from its predecessor (0 if none does): where the
    demonstrated motion ends and the final hold begins."""
    moved = np.flatnonzero(np.abs(np.diff(actions, axis=0)).max(axis=1) > tolerance)
    return int(moved[-1] + 1) if len(moved) else 0


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _latest_checkpoint(output: Path) -> Path | None:
    found = sorted(output.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def _lr(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _target_embodiment(settings: TrainSettings) -> str | None:
    """The embodiment to train for: --embodiment, else the first dataset's robot_type when it
    names a config/<name>.yaml (what record-expert writes), else None (the checkpoint's own)."""
    from bimanual_core.config import config_dir
    if settings.model.get("embodiment"):
        return settings.model["embodiment"]
    robot = LeRobotDataset(settings.datasets[0]).info.get("robot_type") if settings.datasets else None
    return robot if robot and (config_dir() / f"{robot}.yaml").exists() else None


def _located_objects(roots: list[str]) -> int:
    """How many task objects the datasets locate (`observation.environment_state` holds 3 values
    per object; 0 when none records it). Datasets that record it must agree."""
    counts = {len(LeRobotDataset(r).environment_names) for r in roots} - {0}
    if len(counts) > 1 or any(c % 3 for c in counts):
        raise ValueError(f"the datasets {roots} record {sorted(counts)} environment values: "
                         "train on datasets that locate the same objects (3 values each)")
    return counts.pop() // 3 if counts else 0


def build_model(settings: TrainSettings, say) -> tuple[BimanualVLAModel, bool, int]:
    """The model to train, whether its joint normalisation must come from the data (a new
    model, or a checkpoint re-headed for another embodiment), and how many of its point
    normalisation values are already set (the rest come from the data)."""
    from bimanual_core.config import load_embodiment
    objects = _located_objects(settings.datasets + settings.view_datasets)
    if settings.init_from:
        say(f"[train] fine-tuning {settings.init_from}")
        model = BimanualVLAModel.from_pretrained(settings.init_from)
        point_values = model.config.point_dim
        if objects and model.config.point_head and objects != model.config.point_objects:
            say(f"[train] the point head now locates {objects} objects (it located "
                f"{model.config.point_objects}): rows of the objects it knew are kept")
            point_values = min(point_values, 3 * objects)
            model = adapt_point_objects(model, objects)
        target = _target_embodiment(settings)
        if target is None:
            return model, False, point_values
        embodiment = load_embodiment(target)
        if not needs_transfer(model, embodiment):
            return model, False, point_values
        model, report = adapt_to_embodiment(model, embodiment, seed=settings.seed)
        say(f"[train] cross-embodiment transfer {report.summary()}")
        output = Path(settings.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        (output / "transfer.json").write_text(json.dumps(report.as_dict(), indent=1))
        return model, True, point_values
    embodiment = load_embodiment(settings.model.get("embodiment", "aloha2"))
    overrides = dict(action_dim=embodiment.action_dim, chunk_size=embodiment.chunk_horizon,
                     joint_names=embodiment.joint_names, embodiment=embodiment.name,
                     control_rate_hz=embodiment.control_rate_hz,
                     cameras=list(embodiment.cameras))
    overrides["point_head"] = objects > 0
    overrides["point_objects"] = max(objects, 1)
    overrides.update(settings.model)
    return BimanualVLAModel.from_encoders(BimanualVLAConfig(**overrides)), True, 0


def _concat(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([a[k], b[k]]) for k in a}


def train(settings: TrainSettings,
          say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
          ) -> dict:
    """Train (or fine-tune) and save; returns the final metrics."""
    if settings.elapsed_delay < 0:
        raise ValueError(f"elapsed_delay must be >= 0 seconds, got {settings.elapsed_delay}")
    if settings.conditioning_shift < 0:
        raise ValueError("conditioning_shift must be >= 0 steps, got "
                         f"{settings.conditioning_shift}")
    if settings.max_demos is not None and settings.max_demos < 1:
        raise ValueError(f"max_demos must be >= 1, got {settings.max_demos}")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(settings.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    output = Path(settings.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    seed_everything(settings.seed + rank)
    rng = np.random.default_rng(settings.seed + rank)

    resume_from = _latest_checkpoint(output) if settings.resume else None
    model, fresh_stats, point_values_set = (
        (BimanualVLAModel.from_pretrained(resume_from), False, -1) if resume_from
        else build_model(settings, say))
    text = TextEncoder(model.config.text_encoder, model.config.max_text_tokens, device)
    demos = DemoSet(settings.datasets, model, text, settings.image_stride, device, say,
                    max_episodes=settings.max_demos)
    train_rows, val_rows = demos.split(settings.val_fraction, np.random.default_rng(settings.seed))
    views = view_train = view_val = None
    if settings.view_datasets:
        if not model.config.point_head:
            raise ValueError("pointing views need a model with a point head (point_head: true)")
        views = DemoSet(settings.view_datasets, model, text, 1, device, say, views=True)
        view_train, view_val = views.split(settings.val_fraction,
                                           np.random.default_rng(settings.seed))
    if fresh_stats:         # a new model, or re-headed for new joints (the same world)
        model.set_normalization(*demos.stats())
    if 0 <= point_values_set < model.config.point_dim:   # rows the data must normalise
        points = np.concatenate([demos.known_points()]
                                + ([views.known_points()] if views else []))
        if len(points):
            mean, std = points.mean(0), points.std(0)
            keep = slice(0, point_values_set)
            mean[keep], std[keep] = model.point_mean[keep].numpy(), model.point_std[keep].numpy()
            model.set_point_normalization(mean, std)
    if settings.action_delta_weight is not None:
        model.config.set_action_delta_weight(settings.action_delta_weight)
    action_std = model.action_std.cpu().numpy()
    model.vision.requires_grad_(not model.config.freeze_vision)   # from_pretrained resets it
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    step = 0
    if resume_from:
        state = torch.load(resume_from / TRAINER_STATE, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        say(f"[train] resumed from {resume_from} at step {step}")
    net = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index]
                                                     if device.type == "cuda" else None)
           if distributed else model)
    say(f"[train] {len(demos.states)} episodes, {len(train_rows)} train / {len(val_rows)} val "
        f"samples{f', {len(view_train)} pointing views' if views else ''}, {sum(p.numel() for p in trainable) / 1e6:.1f} M trainable parameters, "
        f"{device}")
    log = (output / "train_log.jsonl").open("a") if rank == 0 else None
    (output / "train_settings.json").write_text(json.dumps(asdict(settings), indent=1))

    def to_device(batch):
        return {k: v.to(device) for k, v in batch.items()}

    def predict_rows(data: DemoSet, rows: np.ndarray):
        """(batch, prediction) pairs over up to 2048 rows, for validation."""
        for j in range(0, min(len(rows), 2048), settings.batch_size):
            batch = to_device(data.batch(rows[j:j + settings.batch_size], settings, action_std,
                                         rng, train=False))
            inputs = {k: v for k, v in batch.items() if k not in (
                "actions", "action_mask", "progress", "point", "point_mask")}
            yield batch, model(**inputs)

    def point_error_cm(pairs) -> float | None:
        """Mean distance between predicted and true object positions, over objects and rows."""
        errors = [(out.point - batch["point"]).unflatten(-1, (-1, 3)).norm(dim=-1)
                  [batch["point_mask"]].flatten() for batch, out in pairs if out.point is not None]
        errors = torch.cat(errors) if errors else torch.zeros(0)
        return float(errors.mean() * 100) if len(errors) else None

    def largest_step(chunks) -> float:
        """The largest change between consecutive actions of a chunk, averaged over chunks:
        a chunk that jumps drives the arm at its velocity limit."""
        return float(torch.cat([c.diff(dim=1).abs().amax(dim=(1, 2)) for c in chunks]).mean())

    def validate() -> dict:
        model.eval()
        result = {}
        with torch.inference_mode():
            if len(val_rows):
                pairs = list(predict_rows(demos, val_rows))
                err = np.mean([(out.actions - batch["actions"]).abs().mean(dim=(0, 1)).cpu()
                               .numpy() for batch, out in pairs], 0)
                result.update(val_l1_rad=float(err.mean()), val_l1_max_joint=float(err.max()),
                              val_point_cm=point_error_cm(pairs),
                              val_max_step_rad=largest_step([out.actions for _, out in pairs]),
                              demo_max_step_rad=largest_step([b["actions"] for b, _ in pairs]))
            if views is not None and len(view_val):
                result["val_view_point_cm"] = point_error_cm(predict_rows(views, view_val))
        model.train()
        return {k: v for k, v in result.items() if v is not None}

    bar = tqdm(total=settings.steps, initial=step, desc="train", file=sys.stderr,
               disable=rank != 0, dynamic_ncols=True)
    t0, metrics = time.monotonic(), {}
    while step < settings.steps:
        rows = train_rows[rng.integers(0, len(train_rows), settings.batch_size)]
        batch = demos.batch(rows, settings, action_std, rng, train=True)
        if views is not None:
            rows = view_train[rng.integers(0, len(view_train), settings.view_batch_size)]
            batch = _concat(batch, views.batch(rows, settings, action_std, rng, train=True))
        batch = to_device(batch)
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, settings)
        out = net(**batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{out.loss.item():.4f}")
        if rank == 0 and (step % settings.eval_every == 0 or step == settings.steps):
            metrics = {"step": step, "loss": out.loss.item(),
                       "action_loss": out.action_loss.item(),
                       "progress_loss": out.progress_loss.item(),
                       **{name: loss.item() for name, loss in (("point_loss", out.point_loss),
                                                               ("delta_loss", out.delta_loss))
                          if loss is not None},
                       "lr": _lr(step - 1, settings), "seconds": round(time.monotonic() - t0, 1),
                       **validate()}
            log.write(json.dumps(metrics) + "\n")
            log.flush()
            bar.write(f"[train] {json.dumps(metrics)}")
        if rank == 0 and (step % settings.save_every == 0 or step == settings.steps):
            ckpt = output / f"checkpoint-{step}"
            model.save_pretrained(ckpt)
            torch.save({"optimizer": optimizer.state_dict(), "step": step,
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()},
                       ckpt / TRAINER_STATE)
    bar.close()
    if rank == 0:
        model.save_pretrained(output)
        (output / "final_metrics.json").write_text(json.dumps(metrics, indent=1))
    if distributed:
        torch.distributed.destroy_process_group()
    return metrics
