#!/usr/bin/env bash
# Cross-embodiment fine-tuning: the ALOHA-trained models/default (14 joints) adapted to the bi-arm
# Franka (franka_duo, 16 joints) with <= 100 scripted-expert demonstrations, then measured closed
# loop through the whole ROS 2 stack in MuJoCo. `finetune` keeps every embodiment-independent
# tensor of the checkpoint (vision/language projections, transformer, progress and point heads)
# and re-creates the joint-state / conditioning input projections and the action output layer for
# 16 joints (runs/franka_pick/transfer.json lists which). Results: README "Fine-tuning to the
# Franka", bench/results/eval_franka_pick_finetuned_franka_duo.md.
# The measured run (seed 0): 58 demonstrations (seeds 100000-100057; the recording was stopped
# there), a 700-step schedule cut at step 500 for time, checkpoint-500 evaluated on seeds 0-9.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMOS=${DEMOS:-58}
STEPS=${STEPS:-700}
EPISODES=${EPISODES:-10}
make setup
source .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
bimanual-vla record-expert --task pick --embodiment franka_duo --episodes "$DEMOS" --seed 100000 \
  --workers 1 --out data/demos_pick_franka --resume
bimanual-vla finetune --checkpoint default --data data/demos_pick_franka --embodiment franka_duo \
  --out runs/franka_pick --seed 0 --steps "$STEPS" --batch-size 48 --lr 5e-4 --image-stride 10 \
  --eval-every 100 --save-every 100
bimanual-vla evaluate --policy runs/franka_pick/checkpoint-500 --task pick --embodiment franka_duo \
  --episodes "$EPISODES" --seed 0 --out bench/results/eval_franka_pick_finetuned_franka_duo.json
