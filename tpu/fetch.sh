#!/usr/bin/env bash
# Copy a results directory back from the VM: tpu/fetch.sh runs/tetra/sweep
source "$(dirname "$0")/common.sh"
if [[ $# -ne 1 ]]; then echo "usage: tpu/fetch.sh [--dry-run] <remote path relative to the repository>" >&2; exit 2; fi
run mkdir -p "$(dirname "$1")"
run gcloud compute tpus tpu-vm scp --recurse "$TPU_NAME:~/$REMOTE_DIR/$1" "$(dirname "$1")/" \
  --zone "$ZONE" "${PROJECT_FLAG[@]}"
