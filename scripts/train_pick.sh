#!/usr/bin/env bash
# Reproduces runs/train_pick, the learned pick policy measured in bench/results/eval_learned_pick.*:
# scripted-expert demonstrations (scenes from seed 100000, apart from the evaluation's 0..), then
# training with seed 0. models/default is filled from it only once it succeeds at least as often as
# the zero-shot policy (`make eval POLICY=runs/train_pick`).
set -euo pipefail
cd "$(dirname "$0")/.."
make setup
source .venv/bin/activate
bimanual-vla record-expert --task pick --episodes 123 --seed 100000 --out data/demos_pick --resume
bimanual-vla train --data data/demos_pick --out runs/train_pick --seed 0 --steps 2000 \
  --batch-size 48 --lr 5e-4 --image-stride 10 --cameras cam_high,cam_left_wrist,cam_right_wrist
