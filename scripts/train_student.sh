#!/usr/bin/env bash
# Train the student with torchrun: one process per GPU (or per CPU slot, gloo).
#   scripts/train_student.sh NPROC --corpus CORPUS --tee TEE_DIR --init REF --output CKPT --max-steps N [--resume]
#   STAGE=finetune_caption scripts/train_student.sh NPROC --init CKPT --train CORPUS --output CKPT2 --max-steps N
# STAGE: train_student (pre-training, the default), finetune_caption, finetune_vqa, finetune_retrieval
# or finetune_nlvr2.
# Several machines: set NNODES, NODE_RANK and MASTER_ADDR:MASTER_PORT (RDZV_ENDPOINT) on each.
# Python: $PYTHON if set, else the project's .venv/bin/python, else python3 (no venv needs activating).
set -euo pipefail
NPROC="${1:?usage: [STAGE=train_student|finetune_caption|finetune_vqa|finetune_retrieval|finetune_nlvr2] scripts/train_student.sh NPROC [flags...]}"
shift
STAGE="${STAGE:-train_student}"
case "$STAGE" in
  train_student|finetune_caption|finetune_vqa|finetune_retrieval|finetune_nlvr2) ;;
  *) echo "train_student.sh: STAGE must be train_student, finetune_caption, finetune_vqa, finetune_retrieval or finetune_nlvr2, not '$STAGE'" >&2; exit 2 ;;
esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY="$ROOT/.venv/bin/python"
else
  PY="$(command -v python3 || true)"
  [[ -n "$PY" ]] || { echo "train_student.sh: no Python: create $ROOT/.venv (make venv) or set PYTHON" >&2; exit 2; }
fi
# The project's modules resolve from any working directory, installed or not; paths in the
# flags stay relative to the caller's directory.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# Every check (flags, device, inputs, models, --output) once, here, before torchrun starts: a
# mistake is the command's one line and exit 2, not each worker's line inside torchrun's
# failure report. Its notes come again from rank 0, so they show only when it refuses.
case " $* " in
  *" --help "*|*" -h "*) exec "$PY" -m "pipelines.$STAGE" "$@" ;;  # once, not once per process
esac
status=0
report="$(LOCAL_WORLD_SIZE="$NPROC" "$PY" -m "pipelines.$STAGE" --check-only "$@" 2>&1 >/dev/null)" || status=$?
if [[ $status -ne 0 ]]; then
  printf '%s\n' "$report" >&2
  exit "$status"
fi
if [[ "${NNODES:-1}" -gt 1 ]]; then
  exec "$PY" -m torch.distributed.run --nnodes "$NNODES" --nproc_per_node "$NPROC" \
    --rdzv_backend c10d --rdzv_endpoint "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port}" --rdzv_id "${RDZV_ID:-minivlm}" \
    -m "pipelines.$STAGE" "$@"
fi
exec "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m "pipelines.$STAGE" "$@"
