"""Per-sample preprocessing for observations (no ROS imports): image resizing, joint reordering.

The backbone wants fixed-size RGB images and a joint vector in the embodiment's action order,
whatever order the driver publishes its joints in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image as PILImage

# Colour encodings camera perception converts to rgb8; anything else is rejected as bad_encoding.
COLOUR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8")


def check_output_size(width: int, height: int) -> None:
    """Both 0 (keep the camera resolution) or both positive."""
    if (width == 0) != (height == 0) or width < 0 or height < 0:
        raise ValueError(
            f"output size must be both 0 (keep) or both positive, got {width}x{height}")


def resize_rgb(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of an (H, W, 3) uint8 image; width = height = 0 returns it unchanged."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.dtype} {rgb.shape}")
    check_output_size(width, height)
    if width == 0 or (rgb.shape[1], rgb.shape[0]) == (width, height):
        return rgb
    return np.asarray(PILImage.fromarray(rgb).resize((width, height), PILImage.BILINEAR))


@dataclass(frozen=True)
class JointSample:
    """Joint state in the embodiment's order; velocity/effort are empty when not published."""

    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray


class JointOrder:
    """Reorders a JointState's arrays into the configured joint order, rejecting bad input."""

    def __init__(self, joint_names: Sequence[str]):
        if not joint_names or len(set(joint_names)) != len(joint_names):
            raise ValueError(f"joint names must be unique and non-empty: {list(joint_names)}")
        self.names = list(joint_names)

    def reorder(self, names: Sequence[str], position: Sequence[float],
                velocity: Sequence[float] = (), effort: Sequence[float] = ()) -> JointSample:
        names = list(names)
        if len(position) != len(names):
            raise ValueError(f"{len(names)} joint names but {len(position)} positions")
        missing = [n for n in self.names if n not in names]
        if missing:
            raise ValueError(f"joint state lacks configured joints {missing}")
        index = [names.index(n) for n in self.names]

        def pick(values: Sequence[float], what: str) -> np.ndarray:
            if len(values) == 0:
                return np.zeros(0)
            if len(values) != len(names):
                raise ValueError(f"{len(names)} joint names but {len(values)} {what} values")
            return np.asarray(values, dtype=float)[index]

        sample = JointSample(pick(position, "position"), pick(velocity, "velocity"),
                             pick(effort, "effort"))
        if not np.all(np.isfinite(sample.position)):
            bad = [n for n, p in zip(self.names, sample.position) if not np.isfinite(p)]
            raise ValueError(f"non-finite joint positions for {bad}")
        return sample
