#!/usr/bin/env bash
# Reproduces runs/train_pick, the learned pick policy measured in bench/results/eval_learned_pick.*:
# scripted-expert demonstrations (scenes from seed 100000, apart from the evaluation's 0..) that
# record the cube's position, pointing views of 525 more layouts (seeds from 200000) with the arms
# at demonstrated poses, then training with seed 0 on both (the point head is the co-training
# target): 43 min on the 2-core CPU. models/default holds its config.json + model.safetensors
# (models/default/TRAINING.md); `make demo` keeps the zero-shot policy as its default until the
# learned one succeeds at least as often (`make eval POLICY=default`).
set -euo pipefail
cd "$(dirname "$0")/.."
make setup
source .venv/bin/activate
bimanual-vla record-expert --task pick --episodes 250 --seed 100000 --out data/demos_pick --resume
bimanual-vla record-views --task pick --scenes 525 --views-per-scene 6 --seed 200000 \
  --poses-from data/demos_pick --out data/views_pick --resume
bimanual-vla train --data data/demos_pick --views data/views_pick --out runs/train_pick --seed 0 \
  --steps 3000 --batch-size 48 --view-batch-size 16 --lr 5e-4 --image-stride 10
