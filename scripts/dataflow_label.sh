#!/usr/bin/env bash
# Label Open Images on Dataflow GPU workers. Set the variables, then run from the repo root.
set -euo pipefail
PROJECT=${PROJECT:?set PROJECT}
REGION=${REGION:-us-central1}
BUCKET=${BUCKET:?set BUCKET (a GCS bucket name)}
IMAGE=${IMAGE:?set IMAGE (an SDK container image with CUDA torch, see docs/dataflow.md)}
RUN=${RUN:-run-$(date +%Y%m%d-%H%M%S)}

python -m pipelines.pseudo_label \
  --runner DataflowRunner --project "$PROJECT" --region "$REGION" \
  --temp_location "gs://$BUCKET/tmp" \
  --input "gs://$BUCKET/openimages/train-images-boxable-with-rotation.csv" \
  --image-root "gs://$BUCKET/openimages/images" --image-path-template '{Subset}/{ImageID}.jpg' \
  --output "gs://$BUCKET/labels/$RUN" \
  --captioner Salesforce/blip-image-captioning-large --tagger google/siglip-so400m-patch14-384 \
  --device cuda --batch-size 32 --large-model \
  --setup_file ./setup.py --sdk_container_image "$IMAGE" \
  --machine_type g2-standard-8 \
  --dataflow_service_options 'worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver' \
  --experiments no_use_multiple_sdk_containers \
  "$@"
