"""ER training sets: rendered scenes on disk, their cached encoder features and targets (no ROS).

`generate` renders scenes (SceneGenerator) into `<dir>/scenes.npz`: images, segmentation and
each object's colour and noun. `TrainingSet` loads them, runs the frozen image encoder once per
image and caches the feature maps in `<dir>/cache/` (keyed by the encoder), so training costs
only the head; targets per object are its coverage of each map cell and its box.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from er_perception.learned.model import STRIDE, ImageEncoder, colour_histograms
from er_perception.learned.scenes import OBJECT_KINDS, SceneGenerator

SCENES_FILE, META_FILE = "scenes.npz", "meta.json"
ENCODER_VERSION = "efficientnet-lite0-b4b10-v1"
# Hue-turned copies of the training images teach object maps that ignore colour.
HUE_ROTATION_RANGE = (np.pi / 3, 5 * np.pi / 3)
HUE_SEED = 12345


def generate(out_dir: str | Path, scenes: int, split: str = "train", seed: int = 0,
             camera: str = "cam_high", say: Callable[[str], None] = lambda _: None) -> Path:
    """Render `scenes` scenes of `split` (seeds seed, seed+1, ...) into out_dir/scenes.npz."""
    if scenes < 1:
        raise ValueError(f"scenes must be >= 1, got {scenes}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rgb, seg, ids, colour_idx, noun_idx = [], [], [], [], []
    with SceneGenerator(split, camera) as gen:
        colours, nouns = list(gen.colours), list(OBJECT_KINDS)
        most = gen.max_objects + (1 if split == "test" else 0)
        for i in range(scenes):
            scene = gen.render(seed + i)
            rgb.append(scene.frame.rgb)
            seg.append(scene.frame.segmentation.astype(np.uint8))
            row = [(sid, colours.index(c), nouns.index(n))
                   for sid, (c, n) in sorted(scene.attributes.items())]
            row += [(0, -1, -1)] * (most - len(row))
            ids.append([r[0] for r in row])
            colour_idx.append([r[1] for r in row])
            noun_idx.append([r[2] for r in row])
            if (i + 1) % 100 == 0 or i + 1 == scenes:
                say(f"rendered {i + 1}/{scenes} scenes")
    np.savez_compressed(out / SCENES_FILE, rgb=np.stack(rgb), segmentation=np.stack(seg),
                        object_ids=np.array(ids, np.int16), colour=np.array(colour_idx, np.int8),
                        noun=np.array(noun_idx, np.int8))
    (out / META_FILE).write_text(json.dumps(dict(
        split=split, scenes=scenes, seed=seed, camera=camera, colours=colours, nouns=nouns,
        held_out=[list(p) for p in gen.held_out]), indent=2) + "\n")
    return out


def coverage(masks: np.ndarray) -> np.ndarray:
    """(..., H, W) bool masks -> (..., H/STRIDE, W/STRIDE) fraction of each cell covered."""
    *lead, h, w = masks.shape
    if h % STRIDE or w % STRIDE:
        raise ValueError(f"image size {w}x{h} is not a multiple of {STRIDE}")
    cells = masks.reshape(*lead, h // STRIDE, STRIDE, w // STRIDE, STRIDE)
    return cells.mean(axis=(-3, -1), dtype=np.float32)


def mask_box_px(mask: np.ndarray) -> np.ndarray:
    """Pixel-edge box (x0, y0, x1, y1) of a non-empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


class TrainingSet:
    """A generated set as tensors: features (s8, s16), per-object coverage, boxes and attribute
    indices; object slots without an object have id 0."""

    def __init__(self, data_dir: str | Path, encoder: ImageEncoder | None = None,
                 batch: int = 4, say: Callable[[str], None] = lambda _: None):
        root = Path(data_dir)
        if not (root / SCENES_FILE).is_file():
            raise ValueError(f"{root} holds no {SCENES_FILE}; generate it with "
                             f"`bimanual-vla er-data --out {root}`")
        self.meta = json.loads((root / META_FILE).read_text())
        data = np.load(root / SCENES_FILE)
        self.colours, self.nouns = self.meta["colours"], self.meta["nouns"]
        self.object_ids = data["object_ids"].astype(np.int64)
        self.colour = torch.from_numpy(data["colour"].astype(np.int64))
        self.noun = torch.from_numpy(data["noun"].astype(np.int64))
        seg = data["segmentation"]
        n, m = self.object_ids.shape
        cov = np.zeros((n, m, seg.shape[1] // STRIDE, seg.shape[2] // STRIDE), np.float32)
        boxes = np.zeros((n, m, 4), np.float32)
        valid = np.zeros((n, m), bool)
        for i, j in zip(*np.nonzero(self.object_ids > 0)):
            mask = seg[i] == self.object_ids[i, j]
            if mask.any():
                cov[i, j], boxes[i, j], valid[i, j] = coverage(mask), mask_box_px(mask), True
        self.coverage, self.boxes = torch.from_numpy(cov), torch.from_numpy(boxes)
        self.valid = torch.from_numpy(valid)
        rgb = data["rgb"]
        self.colour_cells = torch.cat([colour_histograms(torch.from_numpy(rgb[i:i + 10])).half()
                                       for i in range(0, len(rgb), 10)])
        self.s8, self.s16 = self._features(root, rgb, "", encoder, batch, say)
        # The same scenes in other hues: the objects' shapes without their colours (see train).
        angles = np.random.default_rng(HUE_SEED).uniform(*HUE_ROTATION_RANGE, len(rgb))
        self.hue_s8, self.hue_s16 = self._features(
            root, rgb, "hue-", encoder, batch, say,
            transform=lambda i, images: np.stack([rotate_hue(im, a) for im, a in
                                                  zip(images, angles[i:i + len(images)])]))

    def __len__(self) -> int:
        return len(self.object_ids)

    @staticmethod
    def _features(root: Path, rgb: np.ndarray, prefix: str, encoder, batch: int, say,
                  transform=None):
        digest = hashlib.sha1(rgb[:: max(1, len(rgb) // 16)].tobytes()).hexdigest()[:12]
        cache = root / "cache" / f"{prefix}{ENCODER_VERSION}-{len(rgb)}-{digest}.pt"
        if cache.is_file():
            saved = torch.load(cache, weights_only=True)
            return saved["s8"], saved["s16"]
        encoder = encoder or ImageEncoder()
        s8, s16 = [], []
        for i in range(0, len(rgb), batch):
            images = rgb[i:i + batch] if transform is None else transform(i, rgb[i:i + batch])
            a, b = encoder(images)
            s8.append(a.half())
            s16.append(b.half())
            if (i // batch) % 50 == 0:
                say(f"encoded {min(i + batch, len(rgb))}/{len(rgb)} {prefix}images")
        s8, s16 = torch.cat(s8), torch.cat(s16)
        cache.parent.mkdir(exist_ok=True)
        torch.save({"s8": s8, "s16": s16}, cache)
        return s8, s16


def rotate_hue(rgb: np.ndarray, angle: float) -> np.ndarray:
    """An RGB image with its hues turned by `angle` radians (a rotation about the grey axis:
    greys stay grey, saturation and brightness are kept)."""
    axis = np.full(3, 1 / np.sqrt(3))
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = (np.cos(angle) * np.eye(3) + np.sin(angle) * cross
                + (1 - np.cos(angle)) * np.outer(axis, axis))
    out = rgb.astype(np.float32) @ rotation.T.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
