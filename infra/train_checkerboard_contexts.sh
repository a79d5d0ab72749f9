#!/bin/bash
# The checkerboard contexts of a family's hyperprior points, each trained alone on the rate from the
# shipped point of the same quality (`ttft train-base --train context`), one point after another.
# Every point checkpoints into runs/ctx/<family>-<q> and carries on from there when run again (a
# finished point is not trained again); exports go to runs/ctx/<family>-stage, outside the zoo.
#   infra/train_checkerboard_contexts.sh gray16|rgb [STEPS] [POINT...]
# then measure (benchmarks/context_gain.py) and ship a whole family (infra/ship_grown_codecs.py):
# docs/training.md, "The checkerboard points". One CPU thread: about 26-41 min a point at 6,000 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
S=../shared/data
family=${1:?gray16 or rgb}
steps=${2:-6000}
shift $(($# < 2 ? $# : 2))
case $family in
    gray16)
        data="$S/medical/ct_lung_A0001 $S/medical/ct_3slice $S/satellite/landsat8_224078_rgb_uint16.tif $S/satellite/mosaic_cog1_uint16.tif"
        modality=gray16
        points=(q00 q0 q1 q2 q3 q4 q5 q6) ;;
    rgb)
        data="$S/natural_train $S/satellite/landsat8_224078_rgb_uint16.tif $S/satellite/mosaic_cog1_uint16.tif"
        modality=rgb-rasters
        points=(q3 q5 q1 q7 q0 q4 q6) ;;
    *) echo "train_checkerboard_contexts: family gray16 or rgb, not $family" >&2; exit 2 ;;
esac
[ $# -eq 0 ] || points=("$@")  # the points named, else the whole family
for q in "${points[@]}"; do
    # the point's lambda, and whether it is opt-in, from the shipped hyperprior point's card
    read -r lmbda opt_in < <(.venv/bin/ttft codecs --json | .venv/bin/python -c "import json, sys
card = next(c for c in json.load(sys.stdin)['codecs'] if c['id'] == '$family-hyperprior-$q')
print(card['lambda'], '--opt-in' if card.get('opt_in') else '--no-opt-in')")
    # shellcheck disable=SC2086
    .venv/bin/ttft train-base "$family-checkerboard-$q" $data --size checkerboard-small --family "$family" \
        --modality "$modality" --lmbda "$lmbda" $opt_in --init-from "$family-hyperprior-$q" --train context \
        --steps "$steps" --lr 1e-3 --batch 16 --crop 128 --run-dir "runs/ctx/$family-$q" --export-to "runs/ctx/$family-stage"
done
