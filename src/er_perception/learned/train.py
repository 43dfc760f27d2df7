"""Training the `learned` ER head on a generated scene set (no ROS).

Per image, every colour and every noun of the vocabulary gets a logit map; the losses are
  - attribute maps: per-cell binary cross-entropy against the cells covered by objects of that
    colour (of that noun), so each word's map means the same thing whatever it is combined with;
  - phrase maps: for each object, the sum of its colour's and its noun's logits, softmax over the
    cells, cross-entropy against the object's coverage (the object, not its look-alikes, peaks);
  - boxes: L1 on the log distances to the box edges at cells mostly on an object;
  - hue-turned copies of the images (hues rotated about the grey axis) add object-map and box
    losses only: their objects are the same shapes in colours they are not named by, which
    teaches object maps that do not lean on colour (measured without them: 77.5 % pointing on
    held-out colour x object pairs, the blue and purple plates missed; see TRAINING.md).
Runs are seeded and log to `<output>/train_log.jsonl`; the head goes to `<output>/`.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from er_perception.learned.dataset import TrainingSet
from er_perception.learned.model import GroundingHead, HeadConfig, WordEncoder, cell_centres

MIN_BOX_COVERAGE = 0.5     # cells at least this much on an object learn its box


@dataclass
class TrainSettings:
    data_dir: str
    output_dir: str
    steps: int = 2500
    batch_size: int = 16
    hue_batch_size: int = 8          # hue-turned images per step (0: none)
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    hidden: int = 64
    positive_weight: float = 5.0     # BCE weight of covered cells (objects cover few cells)
    seed: int = 0
    threads: int = 1                 # torch CPU threads (the machine is shared)
    log_every: int = 100

    def check(self) -> None:
        if self.hue_batch_size < 0:
            raise ValueError("hue_batch_size must be >= 0")
        if self.steps < 1 or self.batch_size < 1 or self.hidden < 1 or self.threads < 1:
            raise ValueError("steps, batch_size, hidden and threads must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _attribute_loss(logits: torch.Tensor, index: torch.Tensor, cov: torch.Tensor,
                    valid: torch.Tensor, positive_weight: float) -> torch.Tensor:
    """BCE of (B, K, H, W) word maps against the cells covered by objects with each word."""
    onehot = F.one_hot(index, logits.shape[1]).float() * valid[..., None]        # (B, M, K)
    target = (cov[:, :, None] * onehot[..., None, None]).amax(dim=1)              # (B, K, H, W)
    return F.binary_cross_entropy_with_logits(logits, target,
                                              pos_weight=torch.tensor(positive_weight))


def _box_loss(head: GroundingHead, features: torch.Tensor, cov: torch.Tensor,
              boxes: torch.Tensor) -> torch.Tensor:
    """L1 of log box distances at cells mostly on an object (the one covering most of it)."""
    b = cov.shape[0]
    best_cov, best = cov.max(dim=1)                                              # (B, H, W)
    on_object = best_cov >= MIN_BOX_COVERAGE
    if not on_object.any():
        return torch.zeros(())
    boxes = boxes.gather(1, best.reshape(b, -1, 1).expand(-1, -1, 4)).reshape(*best.shape, 4)
    v, u = (torch.from_numpy(c).float() for c in cell_centres(*best.shape[1:]))
    u, v = u[None, None, :].expand_as(best), v[None, :, None].expand_as(best)
    truth = torch.stack([u - boxes[..., 0] + 0.5, v - boxes[..., 1] + 0.5,
                         boxes[..., 2] - u - 0.5, boxes[..., 3] - v - 0.5], dim=1)
    predicted = head.box_distances(features)
    on = on_object[:, None].expand_as(predicted)
    return (predicted[on].clamp(min=0.5).log() - truth[on].clamp(min=0.5).log()).abs().mean()


def losses(head: GroundingHead, data: TrainingSet, idx: torch.Tensor, hue_idx: torch.Tensor,
           colour_words: torch.Tensor, noun_words: torch.Tensor,
           positive_weight: float) -> dict[str, torch.Tensor]:
    """The losses on the images `idx` and on the hue-turned copies of the images `hue_idx`
    (object maps and boxes only: their colours are not the named ones)."""
    features = head.trunk_features(data.s8[idx], data.s16[idx])
    colour_logits = head.word_logits(head.colour_features(data.colour_cells[idx]), "colour",
                                     colour_words)                           # (B, Kc, H, W)
    noun_logits = head.word_logits(features, "noun", noun_words)             # (B, Kn, H, W)
    cov, valid = data.coverage[idx], data.valid[idx]                         # (B, M, H, W)
    colour, noun = data.colour[idx].clamp(min=0), data.noun[idx].clamp(min=0)
    out = {"colour": _attribute_loss(colour_logits, colour, cov, valid, positive_weight),
           "noun": _attribute_loss(noun_logits, noun, cov, valid, positive_weight)}
    b, m, h, w = cov.shape
    phrase = (colour_logits.gather(1, colour[..., None, None].expand(-1, -1, h, w))
              + noun_logits.gather(1, noun[..., None, None].expand(-1, -1, h, w)))
    log_p = F.log_softmax(phrase.reshape(b, m, -1), dim=-1)
    target = cov.reshape(b, m, -1)
    target = target / target.sum(-1, keepdim=True).clamp(min=1e-6)
    out["phrase"] = (-(target * log_p).sum(-1))[valid].mean()
    out["box"] = _box_loss(head, features, cov, data.boxes[idx])
    if len(hue_idx):
        hue = head.trunk_features(data.hue_s8[hue_idx], data.hue_s16[hue_idx])
        cov, valid = data.coverage[hue_idx], data.valid[hue_idx]
        out["noun_hue"] = _attribute_loss(head.word_logits(hue, "noun", noun_words),
                                          data.noun[hue_idx].clamp(min=0), cov, valid,
                                          positive_weight)
        out["box_hue"] = _box_loss(head, hue, cov, data.boxes[hue_idx])
    return out


def train(settings: TrainSettings, say: Callable[[str], None] = print) -> Path:
    """Train a head on settings.data_dir; returns the output directory."""
    settings.check()
    torch.set_num_threads(settings.threads)
    _seed(settings.seed)
    data = TrainingSet(settings.data_dir, say=say)
    if data.meta.get("split") != "train":
        raise ValueError(f"{settings.data_dir} is a {data.meta.get('split')!r} set; train on a "
                         "'train' set (er-data --split train)")
    words = WordEncoder()
    colour_words, noun_words = words(data.colours), words(data.nouns)
    config = HeadConfig(channels_s8=data.s8.shape[1], channels_s16=data.s16.shape[1],
                        hidden=settings.hidden, text_dim=colour_words.shape[1],
                        colours=list(data.colours), nouns=list(data.nouns),
                        image_size=[data.s8.shape[2] * 8, data.s8.shape[3] * 8])
    head = GroundingHead(config)
    optimiser = torch.optim.AdamW(head.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * step / settings.steps)))
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(settings.seed)
    start, log = time.monotonic(), []
    head.train()
    with open(out / "train_log.jsonl", "w") as log_file:
        for step in range(1, settings.steps + 1):
            idx = torch.randint(len(data), (settings.batch_size,), generator=generator)
            hue_idx = torch.randint(len(data), (settings.hue_batch_size,), generator=generator)
            parts = losses(head, data, idx, hue_idx, colour_words, noun_words,
                           settings.positive_weight)
            loss = sum(parts.values())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            if step % settings.log_every == 0 or step == settings.steps:
                row = dict(step=step, loss=float(loss.detach()),
                           elapsed_s=round(time.monotonic() - start, 1),
                           **{k: round(float(v.detach()), 4) for k, v in parts.items()})
                log.append(row)
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
                say(" ".join(f"{k}={v}" for k, v in row.items()))
    head.save(out, extra=dict(training=dict(
        data=str(settings.data_dir), scenes=len(data), steps=settings.steps,
        batch_size=settings.batch_size, hue_batch_size=settings.hue_batch_size,
        learning_rate=settings.learning_rate, positive_weight=settings.positive_weight,
        threads=settings.threads, seed=settings.seed, held_out_pairs=data.meta.get("held_out", []),
        final_loss=log[-1]["loss"] if log else None)))
    return out
