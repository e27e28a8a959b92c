#!/usr/bin/env bash
# Create a TPU v4 VM.
source "$(dirname "$0")/common.sh"
run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" \
  --accelerator-type "$ACCELERATOR" --version "$RUNTIME"
