#!/bin/bash
# The recipe of the shipped gray16 family, stage by stage (each card's `command` and its
# `init_from_card` chain say the same). Every stage checkpoints into runs/ and resumes when run
# again; each exports into its own staging folder, which TTFT_ZOO_PATH puts ahead of the shipped
# zoo so that the next stage starts from it. One CPU thread: about 5 h in all.
#   infra/train_gray16_family.sh    stages 1-6, then stage 7 on a GPU (its exports go into
#                                   adapters/zoo/models), then stage 8 the points above q4 (copy
#                                   runs/gray16/s8/* there too), then stage 9 trains the adapters of
#                                   the shipped codecs: copy runs/gray16/adapters/* into adapters/zoo/adapters
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
S=../shared/data
CT="$S/medical/ct_lung_A0001 $S/medical/ct_3slice"
BANDS="$S/satellite/landsat8_224078_rgb_uint16.tif $S/satellite/mosaic_cog1_uint16.tif"
train() { .venv/bin/ttft train-base "$@" --family gray16; }

# 1. lambda 0.1 on CT alone, from scratch (12k steps)
train gray16-hyperprior-q3 $CT --modality ct --steps 12000 --lmbda 0.1 --run-dir runs/gray16/q3-s1 --export-to runs/gray16/s1
# 2. 800 steps on CT + the 16-bit bands (crops in proportion to image area)
TTFT_ZOO_PATH=runs/gray16/s1 train gray16-hyperprior-q3 $CT $BANDS --modality gray16 --steps 800 --lr 1e-4 \
    --lmbda 0.1 --init-from gray16-hyperprior-q3 --run-dir runs/gray16/q3-s2 --export-to runs/gray16/s2
# 3. 20000 more on the same
TTFT_ZOO_PATH=runs/gray16/s2 train gray16-hyperprior-q3 $CT $BANDS --modality gray16 --steps 20000 --lr 1e-4 \
    --lmbda 0.1 --init-from gray16-hyperprior-q3 --run-dir runs/gray16/q3-s3 --export-to runs/gray16/s3
# 4. the other rate points, 2000-step fine-tunes of that q3
export TTFT_ZOO_PATH=runs/gray16/s3
for point in "q4 0.3" "q1 0.01" "q2 0.03"; do
    set -- $point
    train gray16-hyperprior-$1 $CT $BANDS --modality gray16 --steps 2000 --lr 1e-4 --lmbda $2 \
        --init-from gray16-hyperprior-q3 --run-dir runs/gray16/$1 --export-to runs/gray16/s3
done
# 5. the lowest point, a 3000-step fine-tune of q1 (reaches ~0.2 bpp on 8-bit content)
train gray16-hyperprior-q0 $CT $BANDS --modality gray16 --steps 3000 --lr 1e-4 --lmbda 0.0015 \
    --init-from gray16-hyperprior-q1 --run-dir runs/gray16/q0 --export-to runs/gray16/s3
# 6. the lowest point of all (lambda 0.0004), 3000 steps from q0 with the luma of two natural_train
#    folders added (about half the pixels): ~0.1 bpp on 8-bit content
train gray16-hyperprior-q00 $CT $BANDS $S/natural_train/Urban100 $S/natural_train/Set14 --modality gray16 \
    --steps 3000 --lr 1e-4 --lmbda 0.0004 --init-from gray16-hyperprior-q0 --run-dir runs/gray16/q00 --export-to runs/gray16/s3
# 7. on a GPU (an H200; batches of 16 crops of 256, lr 1e-4 with
#    tenfold decays at 75% and 92% of the budget, the same 73 images as stages 2-6 less the
#    natural_train luma): the six points side by side from their stage-6 weights for 500 s (about
#    10,400 steps each), then q1-q4 for 180 s more (about 4,700 steps each, four side by side).
#    infra/gpu_finetune.py says how (pack here with `--modality gray16 --data $CT $BANDS
#    --budget-mb 59`, train there, export here); the device commands were `BUDGET=500
#    infra/gpu_finetune.sh` and `BUDGET=180 infra/gpu_finetune.sh`, with .gpu carried. This stage
#    needs the device, so it is not run below; its results are the shipped cards.
unset TTFT_ZOO_PATH
# 8. the points above q4 (to about 1 bpp on CT), from the shipped q4 after stage 7: its latents
#    scaled by a gain (a finer coding step, --init-gain), then 2000 steps at the new lambda. Their
#    exports go into adapters/zoo/models beside the others.
for point in "q5 2 1.0" "q6 4 3.0"; do  # opt-in: the default stays q4
    set -- $point
    train gray16-hyperprior-$1 $CT $BANDS --modality gray16 --steps 2000 --lr 1e-4 --lmbda $3 \
        --init-from gray16-hyperprior-q4 --init-gain $2 --opt-in --run-dir runs/gray16/$1 --export-to runs/gray16/s8
done
# 9. the stage-1 adapters of every point (600 steps, CT only), on the codecs in adapters/zoo/models
#    and, for q5 and q6, their stage-8 exports (the same files once copied)
export TTFT_ZOO_PATH=runs/gray16/s8
for q in q00 q0 q1 q2 q3 q4 q5 q6; do
    for task in ct-lung-window ct-mediastinum-window ct-bone-mask ct-lung-mask; do
        .venv/bin/ttft train-adapter $CT --task $task --codec gray16-hyperprior-$q --steps 600 \
            --run-dir runs/gray16/adapter-$q-$task --out runs/gray16/adapters
    done
done
