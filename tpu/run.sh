#!/usr/bin/env bash
# Run a command in the repository on every worker, e.g. tpu/run.sh python -m experiments.sweep --preset=paper ...
# On a multi-host slice a sweep or a per-token run gets --distributed: every host joins jax.distributed,
# computes its share (checkpoints; chunks of contexts) on its own chips, and host 0 assembles the results; its
# --run_dir and --output_dir must be on the shared mount (~/shared, see provision.sh). A `~` in a flag's value
# reaches the runner as it is (no shell expands it after `=`); the runners expand it to the worker's home.
source "$(dirname "$0")/common.sh"
if [[ $# -eq 0 ]]; then echo "usage: tpu/run.sh [--dry-run] <command...>" >&2; exit 2; fi
words="$*"                           # to look for flags in
command=$(printf '%q ' "$@")         # to run: each argument stays one word on the worker ("--components=l1 attn")
command="${command% }"
if (( HOSTS > 1 )) && [[ "$words" == *"experiments.sweep"* || "$words" == *"experiments.per_token"* ]]; then
  # (the directory itself or under it: ~/shared_old is another directory)
  if [[ "$words" != *"--output_dir=$HOME/shared/"* && "$words" != *"--output_dir=~/shared/"* \
        && "$words" != *"--output_dir=../shared/"* && "$words" != *"--output_dir=$HOME/shared "* \
        && "$words" != *"--output_dir=~/shared "* && "$words" != *"--output_dir=../shared "* \
        && "$words" != *"--output_dir=$HOME/shared" && "$words" != *"--output_dir=~/shared" \
        && "$words" != *"--output_dir=../shared" ]]; then
    echo "error: $ACCELERATOR has $HOSTS hosts: give --output_dir=~/shared/... (a directory every host writes to)" >&2
    exit 2
  fi
  command="$command --distributed"
fi
ssh_tpu "cd ~/$REMOTE_DIR && source .venv/bin/activate && $command"
