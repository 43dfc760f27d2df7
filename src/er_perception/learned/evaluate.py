"""Scoring ER backends on held-out simulator scenes (no ROS).

Pointing accuracy is scored as Where2Place and the Gemini Robotics report score it: a query is
right when its first point lies inside the ground-truth mask of the object it names. Box AP50 is
VOC-style average precision at IoU >= 0.5 over every query of a group: all returned boxes ranked
by score, one ground-truth box per query. Latency is the wall time of each backend call.

Test scenes (`SceneGenerator("test")`, seeds from TEST_SEED_OFFSET) each give three queries:
  held_out_pair      a colour x object pair no training scene shows, in a training phrasing;
  held_out_phrasing  a pair training scenes show, in a phrasing training never used;
  seen               a pair and a phrasing both used in training (a new scene).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from er_perception.backends.base import ErBackend
from er_perception.geometry import ER_SCALE, from_er
from er_perception.learned import TEST_SEED_OFFSET
from er_perception.learned.dataset import mask_box_px
from er_perception.learned.predict import box_iou
from er_perception.learned.scenes import (HELD_OUT_PAIRS, HELD_OUT_TEMPLATES, TRAIN_TEMPLATES,
                                          Scene, SceneGenerator)

GROUPS = ("held_out_pair", "held_out_phrasing", "seen")
IOU_THRESHOLD = 0.5


@dataclass
class Query:
    group: str
    text: str
    segmentation_id: int          # the object it names


def scene_queries(scene: Scene, rng: np.random.Generator,
                  held_out_pairs=HELD_OUT_PAIRS) -> list[Query]:
    """The queries of one test scene (see the module docstring); a group without a fitting
    object in the scene is skipped."""
    held = [sid for sid, pair in scene.attributes.items() if pair in held_out_pairs]
    seen = [sid for sid, pair in scene.attributes.items() if pair not in held_out_pairs]
    out = []
    for group, ids, templates in (("held_out_pair", held, TRAIN_TEMPLATES),
                                  ("held_out_phrasing", seen, HELD_OUT_TEMPLATES),
                                  ("seen", seen, TRAIN_TEMPLATES)):
        if ids:
            sid = ids[int(rng.integers(len(ids)))]
            colour, noun = scene.attributes[sid]
            template = templates[int(rng.integers(len(templates)))]
            out.append(Query(group, template.format(c=colour, n=noun), sid))
    return out


def average_precision(scored: list[tuple[float, bool]], positives: int) -> float:
    """VOC all-point AP from (score, is_true_positive) detections and the number of ground
    truths; 0 when there are none."""
    if positives <= 0:
        return 0.0
    order = sorted(scored, key=lambda item: -item[0])
    tp = np.cumsum([hit for _, hit in order], dtype=float)
    fp = np.cumsum([not hit for _, hit in order], dtype=float)
    recall = np.concatenate([[0.0], tp / positives, [1.0]])
    precision = np.concatenate([[0.0], tp / np.maximum(tp + fp, 1e-12), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def box_hits(boxes_px: list[np.ndarray], truth_px: np.ndarray,
             threshold: float = IOU_THRESHOLD) -> list[bool]:
    """Which boxes (in score order) are true positives for one ground truth: the first one
    overlapping it by IoU >= threshold; later ones are duplicates."""
    hits, matched = [], False
    for box in boxes_px:
        hit = not matched and box_iou(box, truth_px[None])[0] >= threshold
        matched |= hit
        hits.append(bool(hit))
    return hits


@dataclass
class GroupScore:
    queries: int = 0
    pointed: int = 0
    scored_boxes: list[tuple[float, bool]] = field(default_factory=list)

    def summary(self) -> dict:
        return dict(queries=self.queries,
                    pointing_accuracy=self.pointed / self.queries if self.queries else 0.0,
                    box_ap50=average_precision(self.scored_boxes, self.queries))


def point_inside(point, mask: np.ndarray) -> bool:
    """Whether an ER (y, x) point lies on the mask."""
    h, w = mask.shape
    v, u = from_er(point.y, point.x, w, h)
    r, c = int(round(v)), int(round(u))
    return 0 <= r < h and 0 <= c < w and bool(mask[r, c])


def er_box_px(box_2d, width: int, height: int) -> np.ndarray:
    """ER [ymin, xmin, ymax, xmax] (0..1000) -> pixel-edge (x0, y0, x1, y1)."""
    y0, x0, y1, x1 = box_2d
    return np.array([x0 * width, y0 * height, x1 * width, y1 * height]) / ER_SCALE


def evaluate(backend: ErBackend, scenes: int, seed: int = TEST_SEED_OFFSET,
             camera: str = "cam_high", say: Callable[[str], None] = lambda _: None) -> dict:
    """Pointing accuracy, box AP50 (per group and over all) and call latencies of a backend on
    `scenes` rendered test scenes (seeds seed, seed+1, ...)."""
    if scenes < 1:
        raise ValueError(f"scenes must be >= 1, got {scenes}")
    groups = {g: GroupScore() for g in GROUPS}
    total = GroupScore()
    latencies, failures = [], []
    rng = np.random.default_rng(seed)
    with SceneGenerator("test", camera) as gen:
        for i in range(scenes):
            scene = gen.render(seed + i)
            frame = scene.frame
            for q in scene_queries(scene, rng, gen.held_out):
                mask = scene.mask(q.segmentation_id)
                t0 = time.perf_counter()
                points = backend.point(frame, q.text, max_results=1)
                t1 = time.perf_counter()
                boxes = backend.detect(frame, q.text)
                latencies += [t1 - t0, time.perf_counter() - t1]
                hit = bool(points) and point_inside(points[0], mask)
                if not hit and len(failures) < 20:
                    failures.append(dict(seed=seed + i, query=q.text, group=q.group,
                                         message=points.message))
                scored = list(zip((b.score for b in boxes), box_hits(
                    [er_box_px(b.box_2d, frame.width, frame.height) for b in boxes],
                    mask_box_px(mask))))
                for g in (groups[q.group], total):
                    g.queries += 1
                    g.pointed += hit
                    g.scored_boxes += scored
            if (i + 1) % 25 == 0 or i + 1 == scenes:
                say(f"{i + 1}/{scenes} scenes: pointing {total.pointed}/{total.queries}")
    ms = np.array(latencies) * 1000
    return dict(backend=backend.name, scenes=scenes, seed=seed, camera=camera,
                **total.summary(),
                latency_p50_ms=float(np.percentile(ms, 50)),
                latency_p90_ms=float(np.percentile(ms, 90)),
                groups={g: s.summary() for g, s in groups.items()},
                first_failures=failures)
