"""A sweep over two processes under jax.distributed (loopback, CPU): units split by checkpoint, each process
writes its own, process 0 assembles: the same table as one process. Bad process layouts fail clearly."""
import socket
import subprocess
import sys

import pandas as pd
import pytest

from tests.helpers import REPO, env, sweep_cmd

SMALL = ["--num_draws=6", "--components=l0h0,l1h1"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_give_the_same_table_as_one(tiny, tmp_path):
  root, run_dir, tok, data = tiny
  one = subprocess.run(sweep_cmd(run_dir, tok, data, tmp_path / "one", *SMALL), cwd=REPO, env=env(),
                       capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(sweep_cmd(run_dir, tok, data, tmp_path / "two", *SMALL, f"--coordinator_address={address}",
                                      "--num_processes=2", f"--process_id={i}"),
                            cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "process 0 of 2: checkpoints [0, 40]" in outputs[0][0]
  assert "process 1 of 2: checkpoints [20]" in outputs[1][0] and "process 0 assembles the table" in outputs[1][0]
  a = pd.read_csv(tmp_path / "one" / "results.csv")
  b = pd.read_csv(tmp_path / "two" / "results.csv")
  pd.testing.assert_frame_equal(a, b)
  assert sorted(a["checkpoint"].unique()) == [0, 20, 40]
  # Process 1 died before writing its unit: the other units stay, and rerunning completes only the rest.
  for f in (tmp_path / "two" / "units").glob("step_00000020-*"):
    f.unlink()
  rerun = subprocess.run(sweep_cmd(run_dir, tok, data, tmp_path / "two", *SMALL), cwd=REPO, env=env(),
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "1 unit(s) to run, 2 finished unit(s) reused" in rerun.stdout, rerun.stdout[-2000:]
  pd.testing.assert_frame_equal(a, pd.read_csv(tmp_path / "two" / "results.csv"))


@pytest.mark.parametrize("extra,message", [
    (["--num_processes=2", "--process_id=2", "--coordinator_address=127.0.0.1:1"], "--process_id=2 is outside [0, "),
    (["--num_processes=2", "--process_id=0"], "missing --coordinator_address"),
    (["--num_processes=2", "--process_id=1", "--coordinator_address=127.0.0.1:{port}", "--coordinator_timeout_s=3"],
     "could not join the coordinator at 127.0.0.1:"),
])
def test_bad_process_layouts_fail_clearly(tiny, tmp_path, extra, message):
  root, run_dir, tok, data = tiny
  extra = [e.format(port=_free_port()) for e in extra]
  proc = subprocess.run(sweep_cmd(run_dir, tok, data, tmp_path / "out", *SMALL, *extra), cwd=REPO, env=env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-3000:]


def test_processes_given_different_counts_both_fail_clearly(tiny, tmp_path):
  """jax.distributed takes process 0's count; a process started with another --num_processes would join
  silently. Both processes stop before any work, naming every process's value."""
  root, run_dir, tok, data = tiny
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(sweep_cmd(run_dir, tok, data, tmp_path / "out", *SMALL, f"--coordinator_address={address}",
                                      f"--num_processes={n}", f"--process_id={i}", "--coordinator_timeout_s=60"),
                            cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i, n in enumerate((2, 3))]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 2, err[-3000:]
    assert "different --num_processes (process 0: 2, process 1: 3)" in err, err[-3000:]
  assert not (tmp_path / "out" / "units").exists() or not any((tmp_path / "out" / "units").iterdir())
