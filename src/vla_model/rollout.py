"""Fast closed-loop rollouts of a policy in MuJoCo, in one process (no ROS).

What the ROS stack does around the backbone, reproduced with the same code where it is plain
Python: the simulator (`aloha_driver.sim.AlohaSim`) stepped at the control rate, cameras rendered
at their configured rate (the backbone sees each camera's latest frame), the decoder's own state
machine (`action_decoder_node.controller.DecoderCore`: the chunk scheduler with its blend, the
safety limiter, requests when the queue runs low, the not-yet-executed actions sent as
conditioning), a backbone latency in simulated time, optionally injected stalls (the decoder
braking on a "backbone lost" as it does when the backbone's heartbeat lapses on a loaded
machine), and the instruction server's rule: once the
policy says done, the outcome is judged `settle_s` later from the simulator's state; otherwise the
episode fails at the time limit. A 60 s ROS episode costs ~120 s of wall time; here ~3x less, so
checkpoints can be compared on 10-20 seeds in minutes (`bench/rollout.py`).

`visit` (an optional callback) sees every control step: what a diagnosis traces, or the frames a
takeover episode keeps before the expert takes over (`vla_data.expert.TakeoverSettings`).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from vla_backbone_node.policy import Policy, PolicyObservation

LATENCY_S = 0.1        # backbone answer time in simulated seconds (CPU inference is 50-100 ms)


@dataclass(frozen=True)
class RolloutSettings:
    task: str = "pick"
    embodiment: str = "aloha2"
    time_limit_s: float = 60.0      # the instruction server's default_time_limit_s
    settle_s: float = 1.5           # the instruction server's settle_s after the policy's done
    latency_s: float = LATENCY_S    # from request to chunk, simulated seconds
    blend: str = "rtc"              # the decoder's merge strategy (config/stack.yaml)
    min_queue_s: float = 0.5        # the decoder's min_queue_s
    watchdog_timeout_s: float = 0.5
    stall_rate_hz: float = 0.0      # injected "backbone lost" events per simulated second

    def __post_init__(self):
        if not (self.time_limit_s > 0 and self.settle_s >= 0 and self.latency_s >= 0
                and self.min_queue_s >= 0 and self.watchdog_timeout_s > 0
                and self.stall_rate_hz >= 0):
            raise ValueError(f"invalid rollout settings {self}: time limit and watchdog must be "
                             "> 0, settle, latency, min_queue and stall rate >= 0")


@dataclass
class RolloutResult:
    seed: int
    success: bool
    reason: str
    cause: str                       # "" | "time_limit" | "judged" (done, failed) | "handed_over"
    sim_duration_s: float
    wall_duration_s: float
    done_at_s: float | None          # sim time the policy first said done
    max_rise_m: float                # highest the target object got above its start
    final_rise_m: float
    requests: int
    progress: list[float] = field(default_factory=list)   # policy progress at each request

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("progress")
        return out


class Rollout:
    """One simulator and one policy, reused across seeded episodes."""

    def __init__(self, policy: Policy, settings: RolloutSettings = RolloutSettings(),
                 sim=None):
        """`sim`: an `AlohaSim` of the settings' embodiment and task to drive (default: a new
        one); whoever passes it closes it."""
        os.environ.setdefault("MUJOCO_GL", "egl")
        from action_decoder_node.safety import SafetyLimiter
        from aloha_driver.sim import AlohaSim
        from bimanual_core.config import load_embodiment
        from instruction_server.success import load_success_criteria

        self.settings = settings
        self.policy = policy
        self.embodiment = emb = load_embodiment(settings.embodiment)
        self._owns_sim = sim is None
        self.sim = AlohaSim(emb, settings.task, seed=0) if sim is None else sim
        model = getattr(policy, "model", None)      # a learned policy renders only its cameras
        self.cameras = tuple(model.config.cameras if model is not None else emb.cameras)
        rate = float(emb.simulation.get("camera_rate_hz", 10.0))
        self.camera_every = max(1, int(round(emb.control_rate_hz / rate)))
        self.limiter = SafetyLimiter.from_embodiment(emb, emb.control_period)
        self.criteria = load_success_criteria()

    def _decoder(self):
        from action_decoder_node.controller import DecoderCore
        from action_decoder_node.scheduler import ChunkScheduler, LatencyEstimator
        s, emb = self.settings, self.embodiment
        scheduler = ChunkScheduler(emb.action_dim, emb.control_period, s.blend,
                                   min_queue=s.min_queue_s)
        return DecoderCore(self.limiter, scheduler, emb.joint_names, emb.control_period,
                           s.watchdog_timeout_s, request_timeout_s=max(2.0, 4 * s.latency_s),
                           conditioning_steps=emb.chunk_horizon if s.blend == "rtc" else 0,
                           latency=LatencyEstimator(initial_s=s.latency_s))

    def run(self, seed: int, visit: Callable[[np.ndarray, dict, np.ndarray], None] | None = None,
            handover_s: float | None = None) -> RolloutResult:
        """One episode on scene `seed`. `visit(joints, images, command)` is called every control
        step with the measured joints, the cameras' latest frames and the command sent. With
        `handover_s`, the policy stops after that many simulated seconds (cause "handed_over")
        and the simulator stays as it left it, for an expert to take over."""
        from action_decoder_node.controller import Chunk
        from bimanual_core.instructions import parse_instruction
        from instruction_server.success import judge
        from vla_data.expert import object_snapshot

        s, sim, policy, emb = self.settings, self.sim, self.policy, self.embodiment
        sim.reset(seed)
        instruction = sim.instruction
        policy.reset(instruction, sim.task)
        before = object_snapshot(sim)
        z0 = float(sim.target_position()[2])
        dt = emb.control_period
        latency_steps = max(0, int(math.ceil(s.latency_s / dt - 1e-9)))
        decoder = self._decoder()
        decoder.start(sim.time, sim.joint_positions())
        t_start, wall0 = sim.time, time.monotonic()
        images: dict[str, np.ndarray] = {}
        pending: list[tuple[int, object, Chunk]] = []     # (arrival step, request, chunk)
        done_at, max_rise, requests, progress = None, 0.0, 0, []
        step = 0
        stalls = np.random.default_rng([seed, 2])
        while True:
            now = sim.time
            if step % self.camera_every == 0:
                images = {c: sim.render(c, depth=False, segmentation=False)["rgb"]
                          for c in self.cameras}
            q = sim.joint_positions()
            for item in [p for p in pending if p[0] <= step]:
                pending.remove(item)
                decoder.on_chunk(now, item[2], item[1].request_id)
            if s.stall_rate_hz > 0 and stalls.random() < s.stall_rate_hz * dt:
                decoder.backbone_lost("injected stall")     # what a lapsed heartbeat does
            out = decoder.tick(now)
            if out.request is not None:
                obs = PolicyObservation(now, q, dict(images), instruction)
                actions = policy.infer(obs, out.request.conditioning)
                requests += 1
                state = policy.status()
                progress.append(float(state.progress))
                if state.done and done_at is None:
                    done_at = now
                chunk = Chunk(now, list(emb.joint_names), dt, len(actions), np.asarray(actions),
                              out.request.request_id)
                pending.append((step + latency_steps, out.request, chunk))
            command = out.command.position if out.command is not None else sim.command
            if visit is not None:
                visit(q, images, command)
            sim.step(command)
            step += 1
            max_rise = max(max_rise, float(sim.target_position()[2]) - z0)
            if done_at is not None and sim.time - done_at >= s.settle_s:
                break
            if sim.time - t_start >= s.time_limit_s:
                break
            if handover_s is not None and done_at is None and sim.time - t_start >= handover_s:
                break
        policy.stop()
        final_rise = float(sim.target_position()[2]) - z0
        wall = time.monotonic() - wall0
        duration = sim.time - t_start
        if handover_s is not None and done_at is None and duration < s.time_limit_s:
            return RolloutResult(seed, False, f"handed over after {duration:.1f} s",
                                 "handed_over", duration, wall, None, max_rise, final_rise,
                                 requests, progress)
        if done_at is None:
            return RolloutResult(seed, False, f"time limit of {s.time_limit_s:.0f} s exceeded",
                                 "time_limit", duration, wall, None, max_rise, final_rise,
                                 requests, progress)
        verdict = judge(parse_instruction(instruction, sim.task), before, object_snapshot(sim),
                        self.criteria)
        return RolloutResult(seed, verdict.success, verdict.reason,
                             "" if verdict.success else "judged", duration, wall,
                             done_at - t_start, max_rise, final_rise, requests, progress)

    def close(self) -> None:
        if self._owns_sim:
            self.sim.close()

