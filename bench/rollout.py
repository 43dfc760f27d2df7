"""In-process closed-loop success of a checkpoint (no ROS): `vla_model.rollout` on seeded scenes.

A quick proxy for `make eval POLICY=<checkpoint>` (the ROS stack's figure is the one that
counts) for comparing checkpoints while training: the same simulator, decoder core, camera rate
and success rule, a fixed backbone latency in simulated time. Prints one line an episode and
writes bench/results/rollout_<name>_<task>.json:
    {"success_rate", "episodes", "ci95", "records": [...]}

    python bench/rollout.py --checkpoint default [--task pick] [--episodes 10] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bimanual_core.config import load_embodiment, resolve_checkpoint, runtime_environment

runtime_environment(os.environ)          # headless MuJoCo (before mujoco is imported)

from bimanual_core.evaluation import machine_description, wilson_interval, write_json  # noqa: E402
from vla_model.policy import LearnedPolicy  # noqa: E402
from vla_model.rollout import Rollout, RolloutSettings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="default", help="directory or name in models/")
    parser.add_argument("--task", default="pick")
    parser.add_argument("--embodiment", default="aloha2")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="first scene seed")
    parser.add_argument("--latency", type=float, default=RolloutSettings.latency_s,
                        help="backbone latency in simulated seconds")
    parser.add_argument("--stall-rate", type=float, default=0.0,
                        help="injected 'backbone lost' events per simulated second (the decoder "
                             "brakes, as on a loaded machine)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for inference")
    parser.add_argument("--no-hold", action="store_true",
                        help="keep querying the model after it says done (LearnedPolicy's "
                             "hold_when_done off)")
    parser.add_argument("--name", default="", help="results file suffix (default: checkpoint)")
    parser.add_argument("--out", default="", help="results path (default bench/results/...)")
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")

    checkpoint = resolve_checkpoint(args.checkpoint)
    settings = RolloutSettings(task=args.task, embodiment=args.embodiment, latency_s=args.latency,
                               stall_rate_hz=args.stall_rate)
    policy = LearnedPolicy(load_embodiment(args.embodiment), checkpoint, device="cpu",
                           threads=args.threads, hold_when_done=not args.no_hold)
    rollout = Rollout(policy, settings)
    records, t0 = [], time.monotonic()
    try:
        for seed in range(args.seed, args.seed + args.episodes):
            r = rollout.run(seed)
            records.append(r.summary())
            print(f"seed {seed}: {'ok  ' if r.success else 'FAIL'} {r.sim_duration_s:5.1f} s sim "
                  f"{r.wall_duration_s:5.1f} s wall, done at {r.done_at_s}, rise max "
                  f"{100 * r.max_rise_m:.1f} cm end {100 * r.final_rise_m:.1f} cm, progress max "
                  f"{max(r.progress, default=0):.2f} | {r.reason}", flush=True)
    finally:
        rollout.close()
    wins = sum(r["success"] for r in records)
    name = args.name or Path(checkpoint).name
    report = {"checkpoint": checkpoint, "task": args.task, "embodiment": args.embodiment,
              "seed": args.seed, "settings": vars(settings),
              "hold_when_done": not args.no_hold, "episodes": len(records),
              "successes": wins, "success_rate": wins / len(records),
              "ci95": list(wilson_interval(wins, len(records))),
              "wall_time_s": round(time.monotonic() - t0, 1), "machine": machine_description(),
              "records": records}
    path = write_json(report, args.out or RESULTS / f"rollout_{name}_{args.task}.json")
    print(f"{wins}/{len(records)} ({100 * wins / len(records):.0f} %), written to {path}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
