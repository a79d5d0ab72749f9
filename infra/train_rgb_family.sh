#!/bin/bash
# The recipe of the shipped rgb hyperprior family, stage by stage (each card's `command` and its
# `init_from_card` chain say the same; the cards of q0, q1 and q3 predate the chain). Every stage
# checkpoints into runs/ and resumes when run again; stages export into staging folders, which
# TTFT_ZOO_PATH puts ahead of the shipped zoo so that a later stage starts from an earlier one.
# One CPU thread per stage: about 8 h in all.
#   infra/train_rgb_family.sh      then copy runs/rgb/s2/* into adapters/zoo/models
#                                  and runs/rgb/adapters/* into adapters/zoo/adapters
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA=../shared/data/natural_train
train() { .venv/bin/ttft train-base "$@" --family rgb; }

# 1. lambda 0.0067 from scratch (15k steps, lr 5e-4), then fine-tunes walking out from it
train rgb-hyperprior-q3 $DATA --steps 15000 --lmbda 0.0067 --run-dir runs/rgb/q3 --export-to runs/rgb/s1
export TTFT_ZOO_PATH=runs/rgb/s1
for point in "q1 0.0018 q3 3000" "q0 0.0009 q1 4000" "q4 0.013 q3 3000" "q5 0.025 q4 3000" "q6 0.05 q5 4000" \
             "q7 0.1 q6 2500"; do
    set -- $point
    train rgb-hyperprior-$1 $DATA --steps $4 --lr 1e-4 --lmbda $2 --init-from rgb-hyperprior-$3 \
        --run-dir runs/rgb/$1 --export-to runs/rgb/s1
done
# 2. session 7: q5 10k and q7 4k more steps from their stage-1 weights, then q4 and q6 2.5k-step
#    fine-tunes of that new q5 (the stage-1 q4 and q6 are replaced)
mkdir -p runs/rgb/s2 && cp runs/rgb/s1/rgb-hyperprior-q[013].* runs/rgb/s2/
train rgb-hyperprior-q5 $DATA --steps 10000 --lr 1e-4 --lmbda 0.025 --init-from rgb-hyperprior-q5 \
    --run-dir runs/rgb/q5-s2 --export-to runs/rgb/s2
train rgb-hyperprior-q7 $DATA --steps 4000 --lr 1e-4 --lmbda 0.1 --init-from rgb-hyperprior-q7 \
    --run-dir runs/rgb/q7-s2 --export-to runs/rgb/s2
export TTFT_ZOO_PATH=runs/rgb/s2
for point in "q4 0.013" "q6 0.05"; do
    set -- $point
    train rgb-hyperprior-$1 $DATA --steps 2500 --lr 1e-4 --lmbda $2 --init-from rgb-hyperprior-q5 \
        --run-dir runs/rgb/$1-s2 --export-to runs/rgb/s2
done
# 3. the stage-1 edges adapters of every point
for point in "q0 600" "q1 800" "q3 1500" "q4 800" "q5 800" "q6 600" "q7 600"; do
    set -- $point
    .venv/bin/ttft train-adapter $DATA --task edges --codec rgb-hyperprior-$1 --steps $2 \
        --run-dir runs/rgb/adapter-$1 --out runs/rgb/adapters
done
