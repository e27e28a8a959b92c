#!/usr/bin/env bash
# Copy the repository (without runs/ and .venv/) to the VM and install it with JAX for TPU.
source "$(dirname "$0")/common.sh"
repo="$(cd "$(dirname "$0")/.." && pwd)"
tarball="$(mktemp -d)/repo.tgz"
tar -C "$repo" --exclude=.venv --exclude=runs --exclude=.git -czf "$tarball" .
gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:~/repo.tgz" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all
ssh_tpu "mkdir -p ~/$REMOTE_DIR && tar -C ~/$REMOTE_DIR -xzf ~/repo.tgz && cd ~/$REMOTE_DIR && \
  python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && \
  .venv/bin/pip install -q 'jax[tpu]' && .venv/bin/pip install -q -e '.[test]' && \
  .venv/bin/python -c 'import jax; print(jax.devices())'"
