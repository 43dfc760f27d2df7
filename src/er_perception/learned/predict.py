"""Inference with a trained `learned` ER head: an image and an object phrase -> scored boxes and
points, in pixels (no ROS).

The phrase's colour words and noun (`language.phrase_attributes`, nouns folded onto the trained
vocabulary) each give a logit map; their sum peaks on the object that is both. Every local
maximum of that map is a candidate; its score is the product of the words' probabilities there
(each word must hold), its box the one regressed at that cell.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from er_perception.backends.hf import _iou as box_iou  # IoU of one box with (N, 4) boxes
from er_perception.language import phrase_attributes
from er_perception.learned.model import (GroundingHead, ImageEncoder, WordEncoder, cell_centres,
                                         colour_histograms)


@dataclass
class Found:
    """One object found for a phrase: pixel-edge box (x0, y0, x1, y1) and its score in 0..1."""

    score: float
    box: np.ndarray

    def centre_px(self) -> tuple[float, float]:
        """Box centre as pixel (v, u), the centre of the top-left pixel being (0, 0)."""
        return (self.box[1] + self.box[3]) / 2 - 0.5, (self.box[0] + self.box[2]) / 2 - 0.5


@dataclass
class ImageMaps:
    """One image's head features and box distances, reused by every phrase asked about it."""

    features: torch.Tensor      # (1, d, h, w) object features
    colour: torch.Tensor        # (1, c, h, w) colour features
    distances: torch.Tensor     # (1, 4, h, w) pixels
    height: int
    width: int


class Grounder:
    """A trained head with its frozen encoders, ready to answer phrases about images."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.head = GroundingHead.load(model_dir, self.device)
        self.config = self.head.config
        self.images = ImageEncoder(self.device)
        self.words = WordEncoder(self.device)

    @torch.inference_mode()
    def maps(self, rgb: np.ndarray) -> ImageMaps:
        s8, s16 = self.images(rgb[None])
        features = self.head.trunk_features(s8, s16)
        colour = self.head.colour_features(colour_histograms(torch.from_numpy(rgb[None]))
                                           .to(self.device))
        return ImageMaps(features, colour, self.head.box_distances(features), *rgb.shape[:2])

    @torch.inference_mode()
    def phrase_logits(self, maps: ImageMaps, phrase: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, w) summed logits and (h, w) score (product of the words' probabilities); raises
        ValueError when the phrase names neither a colour nor an object."""
        colours, noun = phrase_attributes(phrase, self.config.nouns)
        words = [("colour", c) for c in colours] + ([("noun", noun)] if noun else [])
        if not words:
            raise ValueError(f"{phrase!r} names no colour and no object")
        total = torch.zeros(maps.features.shape[-2:], device=self.device)
        log_score = torch.zeros_like(total)
        for kind, word in words:
            features = maps.colour if kind == "colour" else maps.features
            logits = self.head.word_logits(features, kind, self.words([word]).to(self.device))
            total = total + logits[0, 0]
            log_score = log_score + F.logsigmoid(logits[0, 0])
        return total, log_score.exp()

    def find(self, maps: ImageMaps, phrase: str, max_results: int = 10,
             score_threshold: float = 0.3, nms_iou: float = 0.5) -> list[Found]:
        """Objects the phrase names, best first: the local maxima of its map scoring above the
        threshold, boxes overlapping a better one by more than nms_iou dropped."""
        total, score = self.phrase_logits(maps, phrase)
        peaks = total == F.max_pool2d(total[None, None], 3, stride=1, padding=1)[0, 0]
        rows, cols = torch.nonzero(peaks, as_tuple=True)
        order = torch.argsort(total[rows, cols], descending=True)
        v_c, u_c = cell_centres(*total.shape)
        distances = maps.distances[0].cpu().numpy()
        found: list[Found] = []
        for k in order.tolist():
            r, c = int(rows[k]), int(cols[k])
            s = float(score[r, c])
            if s < score_threshold:
                continue
            left, top, right, bottom = distances[:, r, c]
            u, v = u_c[c] + 0.5, v_c[r] + 0.5                    # pixel-edge coordinates
            box = np.clip(np.array([u - left, v - top, u + right, v + bottom]), 0,
                          [maps.width, maps.height, maps.width, maps.height])
            if found and box_iou(box, np.stack([f.box for f in found])).max() > nms_iou:
                continue
            found.append(Found(s, box))
            if len(found) >= max_results:
                break
        return found
