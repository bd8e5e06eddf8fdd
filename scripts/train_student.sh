#!/usr/bin/env bash
# Train the student with torchrun: one process per GPU (or per CPU slot, gloo).
#   scripts/train_student.sh NPROC --corpus CORPUS --tee TEE_DIR --init REF --output CKPT --max-steps N [--resume]
#   STAGE=finetune_caption scripts/train_student.sh NPROC --init CKPT --train CORPUS --output CKPT2 --max-steps N
# STAGE: train_student (pre-training, the default) or finetune_caption.
# Several machines: set NNODES, NODE_RANK and MASTER_ADDR:MASTER_PORT (RDZV_ENDPOINT) on each.
set -euo pipefail
NPROC="${1:?usage: [STAGE=train_student|finetune_caption] scripts/train_student.sh NPROC [flags...]}"
shift
STAGE="${STAGE:-train_student}"
case "$STAGE" in
  train_student|finetune_caption) ;;
  *) echo "train_student.sh: STAGE must be train_student or finetune_caption, not '$STAGE'" >&2; exit 2 ;;
esac
if [[ "${NNODES:-1}" -gt 1 ]]; then
  exec python -m torch.distributed.run --nnodes "$NNODES" --nproc_per_node "$NPROC" \
    --rdzv_backend c10d --rdzv_endpoint "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port}" --rdzv_id "${RDZV_ID:-minivlm}" \
    -m "pipelines.$STAGE" "$@"
fi
exec python -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m "pipelines.$STAGE" "$@"
