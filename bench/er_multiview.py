"""Multi-view correspondence on MuJoCo ALOHA 2 scenes: does a point on an object in one camera,
transferred to another (er_perception.geometry.deproject_er + correspond), land on that object
there, and is `visible` right?

For every scene (task x seed), object, and ordered camera pair where the object is in the source
image: the object's point is its mask centroid in the source (what the `sim` backend answers),
deprojected with the source depth and pose, projected into the target with its depth. Ground
truth: the target's segmentation at the projected pixel is the object (`fp_on_edge`: false
positives with the object one pixel away, on its silhouette). Writes
bench/results/er_multiview.json: agreement of `visible` with the truth, precision (visible ->
on the object), recall (on the object -> visible), latency per correspondence.

    python bench/er_multiview.py [--seeds 10] [--tasks pick,place,handover]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from itertools import permutations
from pathlib import Path

import numpy as np

from bimanual_core.config import load_embodiment, runtime_environment

runtime_environment(os.environ)          # headless MuJoCo (before mujoco is imported)

from aloha_driver.sim import AlohaSim  # noqa: E402
from er_perception.geometry import (CameraPose, GeometryError, correspond,  # noqa: E402
                                    deproject_er, mask_centroid, to_er)

RESULTS = Path(__file__).resolve().parent / "results" / "er_multiview.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--tasks", default="pick,place,handover")
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    emb = load_embodiment("aloha2")
    counts = dict(pairs=0, no_depth=0, tp=0, fp=0, fn=0, tn=0, fp_on_edge=0)
    reasons: dict[str, int] = {}
    misses: dict[str, int] = {}      # false negatives by object label
    latencies = []
    for task in args.tasks.split(","):
        for seed in range(args.seeds):
            with AlohaSim(emb, task=task, seed=seed) as sim:
                views = {}
                for cam in emb.cameras:
                    r = sim.render(cam)
                    views[cam] = (r, sim.camera_intrinsics(cam),
                                  CameraPose.from_quat_wxyz(*sim.camera_pose(cam)))
                for obj in sim.objects():
                    oid = obj["segmentation_id"]
                    for src, dst in permutations(views, 2):
                        (ra, Ka, pa), (rb, Kb, pb) = views[src], views[dst]
                        mask = ra["segmentation"] == oid
                        if not mask.any():
                            continue
                        h, w = mask.shape
                        counts["pairs"] += 1
                        t0 = time.perf_counter()
                        try:
                            world = deproject_er(*to_er(*mask_centroid(mask), w, h),
                                                 ra["depth"], Ka, pa)
                        except GeometryError:
                            counts["no_depth"] += 1
                            continue
                        c = correspond(world, Kb, pb, w, h, rb["depth"], args.tolerance)
                        latencies.append((time.perf_counter() - t0) * 1e3)
                        v, u = int(c.y * h / 1000) if c.y == c.y else -1, \
                            int(c.x * w / 1000) if c.x == c.x else -1
                        truth = 0 <= v < h and 0 <= u < w and rb["segmentation"][v, u] == oid
                        key = ("tp" if truth else "fp") if c.visible else ("fn" if truth else "tn")
                        counts[key] += 1
                        if key == "fn":
                            misses[obj["label"]] = misses.get(obj["label"], 0) + 1
                        if key == "fp" and np.any(rb["segmentation"][max(v - 1, 0):v + 2,
                                                                     max(u - 1, 0):u + 2] == oid):
                            counts["fp_on_edge"] += 1      # one pixel off the silhouette
                        if not c.visible:
                            reason = c.reason.split(":")[0].split(" (")[0]
                            reasons[reason] = reasons.get(reason, 0) + 1
            print(f"{task} seeds 0..{args.seeds - 1}: {counts}", flush=True)
    judged = counts["tp"] + counts["fp"] + counts["fn"] + counts["tn"]
    result = dict(
        scenes=args.seeds * len(args.tasks.split(",")), tasks=args.tasks.split(","),
        tolerance_m=args.tolerance, **counts,
        agreement=(counts["tp"] + counts["tn"]) / judged,
        precision=counts["tp"] / max(counts["tp"] + counts["fp"], 1),
        recall=counts["tp"] / max(counts["tp"] + counts["fn"], 1),
        not_visible_reasons=reasons, fn_by_object=misses,
        latency_p50_ms=float(np.percentile(latencies, 50)),
        latency_p90_ms=float(np.percentile(latencies, 90)),
        machine=dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                     note="shared 2-core CPU: other jobs may inflate latencies"))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
