#!/bin/bash
# On a GPU machine, after `infra/gpu_finetune.py pack ID...` here and with .gpu
# carried: fine-tunes every packed codec side by side for BUDGET seconds and leaves each state dict,
# checkpointed every minute, and one shared log in $OUT. Bring them home with `gpu_finetune.py export`.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/.gpu/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
BUDGET=${BUDGET:-420}
OUT=${OUT:?the folder that comes back}
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader
python3 -c "import torch, compressai; print('torch', torch.__version__, 'compressai', compressai.__version__)" || exit 1
for card in .gpu/models/*.json; do
    id=$(basename "$card" .json)
    timeout $((BUDGET + 90)) python3 infra/gpu_finetune.py train "$id" --out "$OUT" --budget-s "$BUDGET" "$@" &
done
wait
ls -la "$OUT"
