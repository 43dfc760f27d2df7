#!/usr/bin/env bash
# Reproduces models/default (models/default/TRAINING.md), in two stages, on the 2-core CPU:
#
# 1. runs/train_pick, the co-trained pick policy (5/10 through the ROS stack): scripted-expert
#    demonstrations (scenes from seed 100000, apart from the evaluation's 0..) that record the
#    cube's position, pointing views of 525 more layouts (seeds from 200000) with the arms at
#    demonstrated poses, then training with seed 0 on both (the point head is the co-training
#    target): 43 min.
# 2. runs/pick_dart, the recovery fine-tune shipped as models/default: 200 more expert episodes
#    (seeds from 110000) whose executed arm joints carry a smooth random offset (DART: std 0.03
#    rad, 0.5 s correlation) while the recorded action stays the expert's, with a 3 s final hold;
#    the 119 that still picked the cube fine-tune stage 1 for 1000 steps, with episode times late
#    by up to 3 s for half the samples and progress labels that reach 1 where the motion ends:
#    17 min recording + 5 min feature caching + 19 min training.
#
# `make demo` keeps the zero-shot policy as its default until the learned one succeeds at least
# as often (`make eval POLICY=default`).
set -euo pipefail
cd "$(dirname "$0")/.."
make setup
source .venv/bin/activate
bimanual-vla record-expert --task pick --episodes 250 --seed 100000 --out data/demos_pick --resume
bimanual-vla record-views --task pick --scenes 525 --views-per-scene 6 --seed 200000 \
  --poses-from data/demos_pick --out data/views_pick --resume
bimanual-vla train --data data/demos_pick --views data/views_pick --out runs/train_pick --seed 0 \
  --steps 3000 --batch-size 48 --view-batch-size 16 --lr 5e-4 --image-stride 10
bimanual-vla record-expert --task pick --episodes 200 --seed 110000 --out data/demos_pick_dart \
  --action-noise 0.03 --noise-time 0.5 --hold 3.0 --workers 2 --resume
bimanual-vla finetune --checkpoint runs/train_pick --data data/demos_pick_dart --out runs/pick_dart \
  --seed 0 --steps 1000 --batch-size 48 --lr 2e-4 --image-stride 10 --elapsed-delay 3.0 \
  --progress-to-hold --save-every 250 --eval-every 250
