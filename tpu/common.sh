#!/usr/bin/env bash
# Settings shared by the TPU scripts; override through the environment. Every script takes --dry-run as its
# first argument: it then prints each command it would run (one per line, shell-quoted) and runs none.
set -euo pipefail
: "${TPU_NAME:=suscept-v4}"
: "${ZONE:=us-central2-b}"
: "${ACCELERATOR:=v4-8}"
: "${RUNTIME:=tpu-ubuntu2204-base}"
: "${REMOTE_DIR:=suscept_jax}"
: "${BUCKET:=}"          # gs://bucket/path: mounted (gcsfuse) at ~/shared on every worker by provision.sh
PROJECT_FLAG=()
if [[ -n "${PROJECT:-}" ]]; then PROJECT_FLAG=(--project "$PROJECT"); fi
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi

# Hosts of the slice: a v4-N slice has N/2 chips, four per host (v4-8: one host; v4-32: four).
cores="${ACCELERATOR#*-}"
HOSTS=$(( cores <= 8 ? 1 : cores / 8 ))

run() {  # run a command, or print it under --dry-run
  if [[ "$DRY_RUN" == 1 ]]; then printf '%q ' "$@"; printf '\n'; else "$@"; fi
}
ssh_tpu() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all --command "$1"
}
