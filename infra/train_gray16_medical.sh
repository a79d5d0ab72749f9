#!/bin/bash
# The gray16med family: the gray16 family carried on to the wider medical set, with level
# augmentation. Each rate point from the shipped gray16 point's weights, 2,000 steps at its own
# lambda (lr 1e-4, batch 8 of 128 px, one thread a job, two chains side by side), on CT + the
# 16-bit bands as gray16 was, plus the MR, radiograph and other-scanner CT images gathered from
# registry packages (infra/medical_training_data.py), a quarter of the crops levelled
# (docs/training.md, "The gray16med family"). q00 too trains without the natural luma of its CPU
# stage (as in its GPU stage): with it, it lost 2.2 dB on CT.
# Exports go into runs/gray16-med/stage-med, outside the zoo, until the family is measured
# (benchmarks/base_codec.py --gray16-family gray16med with TTFT_ZOO_PATH=runs/gray16-med/stage-med);
# copy them into adapters/zoo/models then. Every job checkpoints into runs/gray16-med/ and carries
# on when run again (a finished one exports again). The family needs no stage-1 adapters: DICOM
# series of a modality other than CT default to it, and the shipped adapters are CT tasks'.
#   infra/train_gray16_medical.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
S=../shared/data
MED=runs/data/medical_registry
[ -f $MED/SOURCES.md ] || .venv/bin/python infra/medical_training_data.py --out $MED
CT="$S/medical/ct_lung_A0001 $S/medical/ct_3slice"
DATA="$CT $S/satellite/landsat8_224078_rgb_uint16.tif $S/satellite/mosaic_cog1_uint16.tif $MED"
OUT=runs/gray16-med

point() {  # QN LAMBDA [more train-base options]
    local q=$1 lmbda=$2
    shift 2
    [ -f $OUT/stage-med/gray16med-hyperprior-$q.json ] && return 0
    .venv/bin/ttft train-base gray16med-hyperprior-$q $DATA --family gray16med --modality gray16 --steps 2000 \
        --lr 1e-4 --lmbda $lmbda --levels 0.25 --init-from gray16-hyperprior-$q --run-dir $OUT/$q \
        --export-to $OUT/stage-med "$@" >> $OUT/$q.log 2>&1
}

mkdir -p $OUT
(point q3 0.1; point q4 0.3; point q5 1.0 --opt-in; point q6 3.0 --opt-in) &
(point q2 0.03; point q1 0.01; point q0 0.0015; point q00 0.0004) &
wait
