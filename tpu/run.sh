#!/usr/bin/env bash
# Run a command in the repository on the VM, e.g. tpu/run.sh python -m experiments.sweep --preset=paper ...
source "$(dirname "$0")/common.sh"
if [[ $# -eq 0 ]]; then echo "usage: tpu/run.sh <command...>" >&2; exit 2; fi
ssh_tpu "cd ~/$REMOTE_DIR && source .venv/bin/activate && $*"
