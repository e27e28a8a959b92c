#!/usr/bin/env bash
# Settings shared by the TPU scripts; override through the environment.
set -euo pipefail
: "${TPU_NAME:=suscept-v4}"
: "${ZONE:=us-central2-b}"
: "${ACCELERATOR:=v4-8}"
: "${RUNTIME:=tpu-ubuntu2204-base}"
: "${REMOTE_DIR:=suscept_jax}"
PROJECT_FLAG=()
if [[ -n "${PROJECT:-}" ]]; then PROJECT_FLAG=(--project "$PROJECT"); fi
ssh_tpu() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all --command "$1"; }
