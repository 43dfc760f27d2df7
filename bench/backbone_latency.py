"""Backbone latency per query: 4 cameras at 240x320, batch 1, instruction cached, conditioning on.

Times the learned policy's whole query path (images -> tensors -> model -> chunk), the way the
backbone node calls it, for each action head, on the CPU and (when present) the GPU. Writes
bench/results/backbone_latency.json: {"cpu": {"p50_ms", "p99_ms", ...}, "gpu": {...} | null}.

    python bench/backbone_latency.py [--queries 200]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bimanual_core.config import load_embodiment
from vla_backbone_node.policy import PolicyObservation
from vla_model.configuration import BimanualVLAConfig
from vla_model.modeling import BimanualVLAModel
from vla_model.policy import LearnedPolicy

RESULTS = Path(__file__).resolve().parent / "results" / "backbone_latency.json"


def time_policy(checkpoint: str, device: str, queries: int, warmup: int = 10) -> dict:
    emb = load_embodiment("aloha2")
    policy = LearnedPolicy(emb, checkpoint, device=device)
    policy.reset("pick up the red cube")
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for c in emb.cameras}
    conditioning = np.tile(emb.home, (30, 1))
    times = []
    for i in range(warmup + queries):
        obs = PolicyObservation(0.02 * i, emb.home + rng.normal(0, 0.01, 14), images)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        policy.infer(obs, conditioning)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000.0)
    t = np.array(times)
    return {"p50_ms": round(float(np.percentile(t, 50)), 2),
            "p99_ms": round(float(np.percentile(t, 99)), 2),
            "mean_ms": round(float(t.mean()), 2), "queries": queries,
            "cameras": len(policy.model.config.cameras)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    result: dict = {"cpu": None, "gpu": None, "heads": {},
                    "machine": {"cpu": platform.processor() or platform.machine(),
                                "cores": os.cpu_count(), "torch": torch.__version__,
                                "torch_threads": torch.get_num_threads()}}
    with tempfile.TemporaryDirectory() as tmp:
        for head in ("regression", "flow"):
            ckpt = Path(tmp) / head
            BimanualVLAModel(BimanualVLAConfig(action_head=head)).save_pretrained(ckpt)
            for device in devices:
                figures = time_policy(str(ckpt), device, args.queries)
                key = "gpu" if device == "cuda" else "cpu"
                if device == "cuda":
                    figures["device_name"] = torch.cuda.get_device_name()
                result["heads"].setdefault(head, {})[key] = figures
                print(f"{head:10s} {key}: p50 {figures['p50_ms']:.1f} ms, "
                      f"p99 {figures['p99_ms']:.1f} ms ({figures['cameras']} cameras)",
                      flush=True)
                if head == "regression":
                    result[key] = figures
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
