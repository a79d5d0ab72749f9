#!/bin/sh
# One-shot setup of the compose stack (its `setup` service); safe to run again.
# The bucket of the archive and the inbox (in the stack, minio-init.sh has made it already), the
# work pools `cpu` and `gpu`, the `gpu` global concurrency limit held around each tile's TTFT step,
# and the deployments of infra/prefect.yaml. The API address and auth string (PREFECT_API_URL,
# PREFECT_API_AUTH_STRING) and the S3 settings come from the environment; nothing here prints them.
set -eu
cd "$(dirname "$0")/.."  # the project root: /opt/ttft-archive in the image

python - <<'PY'
import json, os

import s3fs

fs = s3fs.S3FileSystem(**json.loads(os.environ["TTFT_STORAGE_OPTIONS"]))
if not fs.exists("ttft"):
    fs.mkdir("ttft")
PY

for pool in cpu gpu; do
    prefect work-pool create "$pool" --type process --overwrite
done
# TTFT steps the GPU runs at once (1 unless TTFT_GPU_SLOTS says more); created, or set on a rerun
slots="${TTFT_GPU_SLOTS:-1}"
prefect gcl create gpu --limit "$slots" 2> /dev/null || prefect gcl update gpu --limit "$slots"
prefect deploy --all --no-prompt --prefect-file infra/prefect.yaml
