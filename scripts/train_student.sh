#!/usr/bin/env bash
# Pre-train the student with torchrun: one process per GPU (or per CPU slot, gloo).
#   scripts/train_student.sh NPROC --corpus CORPUS --tee TEE_DIR --init REF --output CKPT --max-steps N [--resume]
# Several machines: set NNODES, NODE_RANK and MASTER_ADDR:MASTER_PORT (RDZV_ENDPOINT) on each.
set -euo pipefail
NPROC="${1:?usage: scripts/train_student.sh NPROC [train_student flags...]}"
shift
if [[ "${NNODES:-1}" -gt 1 ]]; then
  exec python -m torch.distributed.run --nnodes "$NNODES" --nproc_per_node "$NPROC" \
    --rdzv_backend c10d --rdzv_endpoint "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port}" --rdzv_id "${RDZV_ID:-minivlm}" \
    -m pipelines.train_student "$@"
fi
exec python -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m pipelines.train_student "$@"
