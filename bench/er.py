"""ER backends on held-out simulator scenes: pointing accuracy, box AP50 and latency per query.

Runs `er_perception.learned.evaluate` (the `bimanual-vla er-eval` scoring) for each backend on
the same rendered test scenes (seeds from 1 000 000, never a training seed; 3 queries a scene:
a held-out colour x object pair, a held-out phrasing, a seen pair and phrasing). Latency is the
wall time of one backend call (point or detect) on a fresh frame, torch on one thread, on this
machine's CPU. Writes bench/results/er.json:
    {"<backend>": {"pointing_accuracy", "box_ap50", "latency_p50_ms", ..., "groups": {...}}}

    python bench/er.py [--scenes 200] [--backends sim,learned] [--option learned.model_path=DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import yaml

from bimanual_core.config import runtime_environment

runtime_environment(os.environ)          # headless MuJoCo (before mujoco is imported)

from er_perception.backends import make_backend  # noqa: E402
from er_perception.learned import TEST_SEED_OFFSET  # noqa: E402
from er_perception.learned.evaluate import evaluate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "er.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=TEST_SEED_OFFSET)
    parser.add_argument("--backends", default="sim,learned")
    parser.add_argument("--option", action="append", default=[], metavar="BACKEND.KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options: dict[str, dict] = {}
    for item in args.option:
        key, _, value = item.partition("=")
        backend, _, name = key.partition(".")
        options.setdefault(backend, {})[name] = yaml.safe_load(value)
    machine = dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                   torch_threads=args.threads,
                   note="shared 2-core CPU: other jobs may inflate latencies")
    results = {}
    for name in args.backends.split(","):
        start = time.monotonic()
        report = evaluate(make_backend(name, **options.get(name, {})), args.scenes, args.seed,
                          say=lambda m, n=name: print(f"[{n}] {m}", flush=True))
        report.pop("first_failures")
        results[name] = dict(report, seconds=round(time.monotonic() - start, 1), machine=machine)
        print(f"{name}: pointing {report['pointing_accuracy']:.3f}, AP50 "
              f"{report['box_ap50']:.3f}, p50 {report['latency_p50_ms']:.1f} ms; "
              + ", ".join(f"{g} {s['pointing_accuracy']:.3f}/{s['box_ap50']:.3f}"
                          for g, s in report["groups"].items()), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
