"""The `hf` ER backend: open-vocabulary detection with a transformers model (no ROS imports).

OWLv2, OWL-ViT and Grounding DINO find boxes for free-text phrases. The query is reduced to the
object phrases it names ("where to grasp the red cube" -> "red cube"), the detector runs once on
the frame for all of them, and its boxes give points (their centres), top-down grasps (across the
short side) and straight trajectories between two objects. With depth and a camera pose, each
result carries the world point at its box centre, at the median depth of the central part of the
box. The model loads only from a local directory (`save_pretrained` layout): the robot does not
download weights.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from er_perception.backends.base import (Answer, Box, CameraFrame, ErBackend, Grasp, Point,
                                         Trajectory, limit, motion_path, normalise_query,
                                         not_a_motion)
from er_perception.geometry import ER_SCALE, back_project, to_er
from er_perception.language import object_phrases, parse_motion, tokens

# config.json model_type -> name; all load with AutoModelForZeroShotObjectDetection + AutoProcessor.
MODEL_TYPES = {"owlv2": "OWLv2", "owlvit": "OWL-ViT", "grounding-dino": "Grounding DINO"}
GROUNDING_DINO = "grounding-dino"
# The defaults of the processors' post_process_grounded_object_detection (transformers 5).
DEFAULT_SCORE_THRESHOLDS = {"owlv2": 0.1, "owlvit": 0.1, GROUNDING_DINO: 0.25}
DEFAULT_TEXT_THRESHOLD = 0.25
# Depth is read from the middle half of a box (in each direction): the object, not what
# surrounds it in the box's corners.
_CENTRE_FRACTION = 0.5


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one (x0, y0, x1, y1) box with each of (N, 4) boxes."""
    lo = np.maximum(box[:2], others[:, :2])
    hi = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=1)
    return inter / np.maximum(_area(box) + _area(others) - inter, 1e-12)


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _centre_px(box: np.ndarray) -> tuple[float, float]:
    """Centre of a pixel-edge (x0, y0, x1, y1) box as pixel (v, u), the centre of the top-left
    pixel being (0, 0)."""
    return (box[1] + box[3]) / 2 - 0.5, (box[0] + box[2]) / 2 - 0.5


@dataclass
class _Detection:
    """One detected box: pixel edges (x0, y0, x1, y1) within the image, and its world point."""

    label: str
    score: float
    box: np.ndarray
    position_3d: np.ndarray | None

    def centre_px(self) -> tuple[float, float]:
        return _centre_px(self.box)

    def box_2d(self, frame: CameraFrame) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = self.box
        return (y0 * ER_SCALE / frame.height, x0 * ER_SCALE / frame.width,
                y1 * ER_SCALE / frame.height, x1 * ER_SCALE / frame.width)


def _centre_depth(depth: np.ndarray, box: np.ndarray) -> float | None:
    """Median valid z-depth in the central part of a pixel-edge box, or None without any."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_w, half_h = (x1 - x0) * _CENTRE_FRACTION / 2, (y1 - y0) * _CENTRE_FRACTION / 2
    height, width = depth.shape
    r0, c0 = min(int(cy - half_h), height - 1), min(int(cx - half_w), width - 1)
    r1, c1 = max(r0 + 1, math.ceil(cy + half_h)), max(c0 + 1, math.ceil(cx + half_w))
    z = depth[r0:r1, c0:c1].astype(float)
    z = z[np.isfinite(z) & (z > 0)]
    return float(np.median(z)) if z.size else None


class HfBackend(ErBackend):
    """Open-vocabulary ER with a transformers zero-shot detector from a local directory.

    Args (the ER node's `hf.<option>` parameters):
      model_path: directory of a saved OWLv2, OWL-ViT or Grounding DINO model and its processor
        (config.json `model_type` owlv2, owlvit or grounding-dino). Required.
      score_threshold: boxes scoring at or below this are dropped (0..1). Default: the
        processor's own, 0.1 for OWL models and 0.25 (its box threshold) for Grounding DINO.
      text_threshold: Grounding DINO only: a query token is grounded in a box when its score is
        above this; a box whose grounded tokens name no phrase of the query is dropped.
      device: "auto" (CUDA when present), "cpu" or "cuda[:N]".
      max_detections: at most this many boxes per query (best first).
      nms_iou: boxes of one label overlapping a better one by more than this IoU are dropped (OWL
        models box one object many times); 1 keeps them all. Also the overlap above which two
        boxes are one object, which is not a trajectory's start and target at once.
      trajectory_points: points per trajectory, start and end included.

    3D results are the world point at the box centre, at the median depth of the middle of the
    box: a point on the object's visible surface, not its centre. A box does not measure how deep
    the object is, so `Box.size_3d` is zeros (unknown).
    """

    name = "hf"

    def __init__(self, model_path: str = "", score_threshold: float | None = None,
                 text_threshold: float = DEFAULT_TEXT_THRESHOLD, device: str = "auto",
                 max_detections: int = 20, nms_iou: float = 0.5, trajectory_points: int = 10):
        self.model_type = self._check_model_dir(model_path)
        if score_threshold is None:
            score_threshold = DEFAULT_SCORE_THRESHOLDS[self.model_type]
        for option, value in (("score_threshold", score_threshold),
                              ("text_threshold", text_threshold), ("nms_iou", nms_iou)):
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ValueError(f"hf backend: {option} must be in 0..1, got {value!r}")
        if max_detections < 1 or trajectory_points < 2:
            raise ValueError("hf backend: max_detections >= 1 and trajectory_points >= 2")
        self.score_threshold, self.text_threshold = float(score_threshold), float(text_threshold)
        self.nms_iou, self.max_detections = float(nms_iou), int(max_detections)
        self.trajectory_points = int(trajectory_points)
        self.device = self._pick_device(device)
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
        try:
            self._processor = AutoProcessor.from_pretrained(model_path, local_files_only=True)
            self._model = AutoModelForZeroShotObjectDetection.from_pretrained(
                model_path, local_files_only=True).to(self.device).eval()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"hf backend: cannot load the {MODEL_TYPES[self.model_type]} model "
                             f"in {model_path}: {exc}") from exc

    @staticmethod
    def _check_model_dir(model_path: str) -> str:
        """The model_type of a local model directory; ValueError saying what is wrong."""
        if not model_path:
            raise ValueError("hf backend: model_path is required (a local directory with a "
                             "saved OWLv2, OWL-ViT or Grounding DINO model and processor)")
        config = Path(model_path) / "config.json"
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError) as exc:
            raise ValueError(f"hf backend: cannot read {config}: {exc}") from None
        if model_type not in MODEL_TYPES:
            raise ValueError(f"hf backend: {model_path} holds a {model_type!r} model; supported "
                             f"model types: {', '.join(MODEL_TYPES)}")
        return model_type

    @staticmethod
    def _pick_device(name: str):
        import torch

        from vla_model.processing import pick_device
        if name not in ("auto", "cpu") and not str(name).startswith("cuda"):
            raise ValueError(f"hf backend: device must be auto, cpu or cuda[:N], got {name!r}")
        device = pick_device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"hf backend: device {name!r} asked for, but CUDA is not available")
        return device

    # -- detection -------------------------------------------------------------------------------
    def _detect(self, frame: CameraFrame, phrases: list[str]) -> list[_Detection]:
        """Boxes of the phrases in the frame, best first, at most max_detections per phrase."""
        import torch
        # Truncation: OWL text towers read 16 tokens; a longer phrase is cut, not an error.
        inputs = self._processor(images=frame.rgb, text=[phrases], truncation=True,
                                 return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = self._model(**inputs)
        if self.model_type == GROUNDING_DINO:
            extra = {"input_ids": inputs["input_ids"], "text_threshold": self.text_threshold}
        else:
            extra = {"text_labels": [phrases]}
        result = self._processor.post_process_grounded_object_detection(
            outputs, threshold=self.score_threshold, target_sizes=[(frame.height, frame.width)],
            **extra)[0]
        boxes = result["boxes"].float().cpu().numpy().reshape(-1, 4)
        boxes = np.clip(boxes, 0.0, [frame.width, frame.height, frame.width, frame.height])
        scores = result["scores"].float().cpu().numpy()
        labels = [self._phrase(text, phrases) for text in result["text_labels"]]
        # OWLv2 boxes can lie in the padding below or right of the image: nothing to see there.
        inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        kept: dict[str, list[int]] = {}
        for i in np.argsort(-scores, kind="stable"):
            label = labels[i]
            if label is None or not inside[i]:
                continue
            same = kept.setdefault(label, [])
            if len(same) < self.max_detections and (
                    not same or _iou(boxes[i], boxes[same]).max() <= self.nms_iou):
                same.append(i)
        best_first = sorted((i for same in kept.values() for i in same), key=lambda i: -scores[i])
        return [_Detection(labels[i], float(scores[i]), boxes[i],
                           self._position_3d(frame, boxes[i])) for i in best_first]

    def _phrase(self, text_label: str, phrases: list[str]) -> str | None:
        """The query phrase a box is of. OWL labels are the phrases themselves; Grounding DINO's
        are the tokens grounded in the box: the phrase sharing most words with them."""
        if self.model_type != GROUNDING_DINO:
            return text_label
        grounded = set(tokens(text_label))
        overlap = [len(grounded & set(p.split())) for p in phrases]
        best = int(np.argmax(overlap))
        return phrases[best] if overlap[best] else None

    @staticmethod
    def _position_3d(frame: CameraFrame, box: np.ndarray) -> np.ndarray | None:
        if not frame.has_3d:
            return None
        z = _centre_depth(frame.depth, box)
        if z is None:
            return None
        v, u = _centre_px(box)
        return back_project(u, v, z, frame.K, frame.pose)[0]

    def _find(self, frame: CameraFrame, query: str) -> tuple[list[_Detection], str]:
        """Detections of what the query names, best first, or [] and the reason."""
        query = normalise_query(query)
        phrases = object_phrases(query)
        if not phrases:
            return [], f"{query!r} names no object to look for"
        found = self._detect(frame, phrases)
        return found, "" if found else self._nothing(frame, phrases)

    def _nothing(self, frame: CameraFrame, phrases: list[str]) -> str:
        text = (f" and text threshold {self.text_threshold:g}"
                if self.model_type == GROUNDING_DINO else "")
        return (f"{MODEL_TYPES[self.model_type]} found no {' or '.join(map(repr, phrases))} "
                f"above the score threshold {self.score_threshold:g}{text} in {frame.camera}")

    # -- queries ---------------------------------------------------------------------------------
    def detect(self, frame: CameraFrame, query: str, max_results: int = 0) -> Answer[Box]:
        found, message = self._find(frame, query)
        return Answer([Box(d.label, d.box_2d(frame), d.score, d.position_3d,
                           None if d.position_3d is None else np.zeros(3))
                       for d in limit(found, max_results)], message)

    def point(self, frame: CameraFrame, query: str, max_results: int = 0) -> Answer[Point]:
        found, message = self._find(frame, query)
        return Answer([Point(d.label, *to_er(*d.centre_px(), frame.width, frame.height), d.score,
                             d.position_3d)
                       for d in limit(found, max_results)], message)

    def grasp(self, frame: CameraFrame, query: str, max_results: int = 0) -> Answer[Grasp]:
        """Top-down grasps at box centres, closing across the box's short side (image x for a
        box taller than wide, image y otherwise), as wide as that side."""
        found, message = self._find(frame, query)
        grasps = []
        for d in limit(found, max_results):
            w, h = d.box[2] - d.box[0], d.box[3] - d.box[1]
            angle, short = (0.0, w) if w <= h else (math.pi / 2, h)
            y, x = to_er(*d.centre_px(), frame.width, frame.height)
            grasps.append(Grasp(d.label, y, x, angle, short * ER_SCALE / frame.width, d.score,
                                d.position_3d))
        return Answer(grasps, message)

    def trajectory(self, frame: CameraFrame, query: str,
                   max_results: int = 0) -> Answer[Trajectory]:
        """Straight paths from each box of the object to each box of the target (in the world
        when both have a 3D point, else in the image), best pair first."""
        parts = parse_motion(normalise_query(query))
        if parts is None:
            return not_a_motion(query)
        source, target = (object_phrases(p) for p in parts)
        if not source or not target:
            return Answer(message=f"{query!r} names no object or no target to look for")
        found = self._detect(frame, list(dict.fromkeys(source + target)))
        sources = [d for d in found if d.label in source]
        targets = [d for d in found if d.label in target]
        if not sources or not targets:
            return Answer(message=self._nothing(frame, source if not sources else target))
        pairs = sorted(((s, t) for s in sources for t in targets
                        if s is not t and _iou(s.box, t.box[None])[0] <= self.nms_iou),
                       key=lambda pair: -pair[0].score * pair[1].score)
        paths = [motion_path(frame, f"{s.label} -> {t.label}", s.score * t.score, s.centre_px(),
                             t.centre_px(), s.position_3d, t.position_3d, self.trajectory_points)
                 for s, t in limit(pairs, max_results)]
        return Answer(paths, "" if paths else "the object and the target are the same box")
