"""LearnedPolicy: a BimanualVLAModel checkpoint behind the backbone's Policy interface (no ROS).

The model sees the cameras it was trained with (others in the observation are ignored, missing
ones masked), the instruction and the joints, and predicts a whole chunk; the decoder's
not-yet-executed actions go in as conditioning. Its progress head (0..1 through the task, learned
from the demonstrations' timing) says when the task is done, which the instruction server waits
for before it judges the outcome. With `hold_when_done` the policy then holds the pose it was at
when it said done (its done chunk's first action): the stack keeps asking for chunks while the
outcome settles (1.5 s), past the end of every demonstration, where the model's actions are an
extrapolation (measured: grippers opening on a lifted cube).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from bimanual_core.config import Embodiment
from vla_backbone_node.policy import (ObservationError, Policy, PolicyError, PolicyObservation,
                                      PolicyState)
from vla_model.modeling import BimanualVLAModel
from vla_model.processing import VLAProcessor, pick_device

DONE_PROGRESS = 0.95      # predicted progress at which the episode counts as finished


class LearnedPolicy(Policy):
    name = "learned"

    def __init__(self, embodiment: Embodiment, checkpoint: str, device: str = "auto",
                 horizon: int | None = None, done_progress: float = DONE_PROGRESS,
                 threads: int = 0, hold_when_done: bool = True):
        super().__init__(embodiment, horizon)
        if not checkpoint:
            raise PolicyError("the learned policy needs a checkpoint directory (parameter "
                              "`checkpoint`)")
        if threads > 0:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        try:
            self.model = BimanualVLAModel.from_pretrained(checkpoint).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise PolicyError(f"cannot load checkpoint {checkpoint!r}: {exc}") from exc
        cfg = self.model.config
        if cfg.action_dim != embodiment.action_dim or (
                cfg.joint_names and cfg.joint_names != embodiment.joint_names):
            raise PolicyError(f"checkpoint {checkpoint!r} was trained for {cfg.embodiment} "
                              f"({cfg.action_dim} joints), not {embodiment.name} "
                              f"({embodiment.action_dim} joints)")
        self.processor = VLAProcessor(cfg, self.device)
        self.checkpoint = str(checkpoint)
        self.done_progress = float(done_progress)
        self.hold_when_done = bool(hold_when_done)
        self._hold: np.ndarray | None = None   # the pose held once done
        self.last_inference_ms = 0.0
        self._instruction = ""
        self._start: float | None = None       # stamp of the episode's first observation
        self._state = PolicyState()

    def reset(self, instruction: str, task: str = "") -> None:
        if not instruction.strip():
            raise PolicyError("the instruction is empty")
        self.processor.text([instruction])          # encode (and cache) it now, not mid-episode
        self._instruction = instruction
        self._start = None
        self._hold = None
        self._state = PolicyState(phase="planning", description=f"ready: {instruction}")

    def stop(self) -> None:
        self._instruction = ""
        self._hold = None
        self._state = PolicyState()

    def status(self) -> PolicyState:
        return self._state

    def infer(self, observation: PolicyObservation,
              conditioning: np.ndarray | None = None) -> np.ndarray:
        obs, conditioning = self.check_inputs(observation, conditioning, bool(self._instruction))
        frames = {c: obs.images[c] for c in self.model.config.cameras if c in obs.images}
        if not frames:
            raise ObservationError(f"the observation has none of the cameras the model was "
                                   f"trained with ({', '.join(self.model.config.cameras)})")
        if self._start is None:
            self._start = obs.stamp
        if self._hold is not None:
            return self._held_chunk()
        t0 = time.perf_counter()
        inputs = self.processor.inputs(frames, self._instruction, obs.joint_positions,
                                       conditioning, elapsed=max(0.0, obs.stamp - self._start))
        with torch.inference_mode():
            out = self.model.predict(**inputs)
        chunk = out.actions[0].float().cpu().numpy().astype(float)
        progress = float(out.progress[0])
        self.last_inference_ms = (time.perf_counter() - t0) * 1000.0
        if not np.all(np.isfinite(chunk)):
            self._state = PolicyState(phase="failed", failed=True,
                                      message="the model predicted non-finite actions")
            raise PolicyError("the model predicted non-finite actions")
        # Regression lands a little past targets that sit on a limit (an open gripper is 1.0):
        # clip to the embodiment's range, as the demonstrations were.
        np.clip(chunk, self.embodiment.lower, self.embodiment.upper, out=chunk)
        if len(chunk) < self.horizon:
            chunk = np.vstack([chunk, np.repeat(chunk[-1:], self.horizon - len(chunk), 0)])
        done = progress >= self.done_progress
        self._state = PolicyState(phase="done" if done else "executing", progress=progress,
                                  description=f"{self._instruction} ({progress:.0%})", done=done)
        if done and self.hold_when_done:
            self._hold = chunk[0].copy()
            return self._held_chunk()
        return chunk[:self.horizon]

    def _held_chunk(self) -> np.ndarray:
        return np.repeat(self._hold[None], self.horizon, 0)
