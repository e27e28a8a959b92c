"""tpu/*.sh --dry-run prints every command (and runs none): checked for a single-host v4-8 and a v4-32 pod slice."""
import os
import shlex
import subprocess
import sys

import pytest

from tests.helpers import REPO


def dry_run(script, *args, **environment):
  env = {k: v for k, v in os.environ.items() if k not in ("TPU_NAME", "ZONE", "ACCELERATOR", "BUCKET", "PROJECT")}
  env.update(PATH="/usr/bin:/bin", **environment)  # no gcloud on PATH: a command that ran would fail
  proc = subprocess.run(["bash", str(REPO / "tpu" / script), "--dry-run", *args], env=env, capture_output=True,
                        text=True, timeout=30)
  return proc, [shlex.split(line) for line in proc.stdout.splitlines()]


def worker_words(ssh_command) -> list[str]:
  """The words of the command a worker runs after `cd … && source … &&` (as its shell splits them)."""
  return shlex.split(ssh_command[-1].split(" && ")[-1])


def test_v4_8_single_host():
  proc, cmds = dry_run("create.sh", TPU_NAME="t1", PROJECT="p")
  assert proc.returncode == 0, proc.stderr
  assert cmds == [["gcloud", "compute", "tpus", "tpu-vm", "create", "t1", "--zone", "us-central2-b", "--project", "p",
                   "--accelerator-type", "v4-8", "--version", "tpu-ubuntu2204-base"]]
  proc, cmds = dry_run("provision.sh")
  assert proc.returncode == 0 and [c[0] for c in cmds] == ["tar", "gcloud", "gcloud"] and "note:" not in proc.stderr
  install = cmds[-1][-1]
  assert "pip install -q 'jax[tpu]'" in install and "'.[runners]'" in install and "--worker=all" in cmds[-1]
  assert subprocess.run(["bash", "-n", "-c", install]).returncode == 0  # the command the workers run parses
  assert install.startswith("mkdir -p ~/suscept_jax/runs && ")  # (scp of runs/tetra into it keeps its name)
  assert "install -y -q python3.11 python3.11-venv" in install and "$py -m venv .venv" in install
  sweep = "python -m experiments.sweep --preset=paper --run_dir=runs/tetra"
  proc, cmds = dry_run("run.sh", *sweep.split())
  assert proc.returncode == 0 and len(cmds) == 1
  assert cmds[0][-1].startswith("cd ~/suscept_jax && source .venv/bin/activate && ")
  assert worker_words(cmds[0]) == sweep.split()  # one host: no --distributed
  proc, cmds = dry_run("run.sh", *sweep.split(), "--components=l0h1,l1 attn")
  assert worker_words(cmds[0])[-1] == "--components=l0h1,l1 attn"  # one argument stays one word
  proc, cmds = dry_run("fetch.sh", "runs/tetra/sweep")
  assert cmds[-1][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse"]
  assert "suscept-v4:~/suscept_jax/runs/tetra/sweep" in cmds[-1]
  proc, cmds = dry_run("delete.sh")
  assert cmds == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "suscept-v4", "--zone", "us-central2-b", "--quiet"]]


def test_provision_keeps_a_python_that_jax_takes(tmp_path):
  """The base image's python3 is 3.10, which no JAX ≥ 0.7 installs on: provision.sh takes Ubuntu's python3.11
  there. Run here with a python3 that is new enough (this one), it keeps python3 and asks apt for nothing."""
  _, cmds = dry_run("provision.sh")
  install = cmds[-1][-1]
  choose = install[install.index("py=python3 &&"):install.index("$py -m venv")].rstrip("& ")
  (tmp_path / "python3").symlink_to(sys.executable)
  proc = subprocess.run(["bash", "-c", f"{choose} && echo $py"], capture_output=True, text=True, timeout=30,
                        env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
  assert proc.returncode == 0 and proc.stdout.strip() == "python3", (proc.stdout, proc.stderr)


def test_v4_32_pod_slice_shares_a_bucket_and_runs_distributed():
  pod = {"ACCELERATOR": "v4-32", "BUCKET": "gs://my-bucket/suscept"}
  proc, cmds = dry_run("provision.sh", **pod)
  assert proc.returncode == 0
  assert "gcsfuse --implicit-dirs --only-dir suscept my-bucket ~/shared" in cmds[-1][-1]
  sweep = "python -m experiments.sweep --preset=paper --run_dir=~/shared/tetra --output_dir=~/shared/sweep"
  proc, cmds = dry_run("run.sh", *sweep.split(), **pod)
  assert proc.returncode == 0 and worker_words(cmds[0]) == [*sweep.split(), "--distributed"]
  assert "--worker=all" in cmds[0]
  per_token = "python -m experiments.per_token --preset=paper --run_dir=~/shared/tetra --output_dir=~/shared/pt"
  proc, cmds = dry_run("run.sh", *per_token.split(), **pod)
  assert proc.returncode == 0 and worker_words(cmds[0]) == [*per_token.split(), "--distributed"]
  proc, _ = dry_run("run.sh", "python", "-m", "experiments.per_token", "--preset=paper", **pod)
  assert proc.returncode == 2 and "v4-32 has 4 hosts: give --output_dir=~/shared/" in proc.stderr
  proc, _ = dry_run("run.sh", "python", "-m", "experiments.sweep", "--preset=paper", **pod)
  assert proc.returncode == 2 and "v4-32 has 4 hosts: give --output_dir=~/shared/" in proc.stderr
  proc, _ = dry_run("run.sh", *sweep.replace("~/shared/sweep", "~/shared_old/sweep").split(), **pod)
  assert proc.returncode == 2, "~/shared_old is not the shared mount (a prefix match took it)"
  proc, _ = dry_run("run.sh", *sweep.replace("~/shared/sweep", "~/shared").split(), **pod)
  assert proc.returncode == 0
  proc, _ = dry_run("provision.sh", ACCELERATOR="v4-32")
  assert "set BUCKET" in proc.stderr


@pytest.mark.parametrize("script", ["run.sh", "fetch.sh"])
def test_missing_arguments_print_usage(script):
  proc, _ = dry_run(script)
  assert proc.returncode == 2 and "usage: tpu/" in proc.stderr
