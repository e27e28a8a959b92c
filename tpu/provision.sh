#!/usr/bin/env bash
# Copy the repository (without runs/ and .venv/; an empty runs/ for the checkpoints the README copies in) to every
# worker and install it with JAX for TPU; with BUCKET set, mount it at ~/shared on every worker (multi-host sweeps
# need one results directory all hosts write to).
source "$(dirname "$0")/common.sh"
repo="$(cd "$(dirname "$0")/.." && pwd)"
tarball="${TMPDIR:-/tmp}/suscept_jax_repo.tgz"
run tar -C "$repo" --exclude=.venv --exclude=runs --exclude=.git -czf "$tarball" .
run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:~/repo.tgz" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all
# JAX >= 0.7 needs Python >= 3.11; the base image (Ubuntu 22.04) has 3.10, so take Ubuntu's python3.11 there.
ssh_tpu "mkdir -p ~/$REMOTE_DIR/runs && tar -C ~/$REMOTE_DIR -xzf ~/repo.tgz && cd ~/$REMOTE_DIR && py=python3 && \
{ python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { sudo apt-get update -q >/dev/null && \
sudo apt-get install -y -q python3.11 python3.11-venv >/dev/null && py=python3.11; }; } && \
\$py -m venv .venv && .venv/bin/pip install -q --upgrade pip && \
.venv/bin/pip install -q 'jax[tpu]' && .venv/bin/pip install -q -e '.[runners]' && \
.venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_devices())'"
if [[ -n "$BUCKET" ]]; then
  path="${BUCKET#gs://}"; bucket="${path%%/*}"; only_dir="${path#"$bucket"}"; only_dir="${only_dir#/}"
  ssh_tpu "sudo apt-get install -y -q gcsfuse >/dev/null && mkdir -p ~/shared && \
gcsfuse --implicit-dirs ${only_dir:+--only-dir $only_dir} $bucket ~/shared"
elif (( HOSTS > 1 )); then
  echo "note: $ACCELERATOR has $HOSTS hosts; set BUCKET so that they share ~/shared for runs and results" >&2
fi
