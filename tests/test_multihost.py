"""A sweep over two processes under jax.distributed (loopback, CPU): units split by checkpoint (or, with fewer
checkpoints than processes, by checkpoint × component group), each process writes its own, process 0 starts the
results directory and assembles: the same table as one process. Bad process layouts fail clearly."""
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from suscept_jax import results
from tests.helpers import REPO, env, free_port, start_two_processes, sweep_cmd

SMALL = ["--num_draws=6", "--components=l0h0,l1h1"]


def _start_two(run_dir, tok, data, out, logs, *extra):
  """The sweep's two processes on loopback, each logging to its file in `logs`."""
  return start_two_processes(sweep_cmd(run_dir, tok, data, out, *SMALL), logs, *extra)


def test_two_processes_give_the_same_table_as_one_even_after_one_dies(tiny, tmp_path):
  """Process 1 is terminated (SIGTERM) as soon as it has joined. Process 0 writes its own units and is stopped by
  jax.distributed's heartbeat; every unit it finished stays, and rerunning the two processes computes only the
  rest: the table is the one-process table."""
  root, run_dir, tok, data = tiny
  one = subprocess.run(sweep_cmd(run_dir, tok, data, tmp_path / "one", *SMALL), cwd=REPO, env=env(),
                       capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  a = pd.read_csv(tmp_path / "one" / "results.csv")
  assert sorted(a["checkpoint"].unique()) == [0, 20, 40]
  two, logs = tmp_path / "two", tmp_path / "logs"
  logs.mkdir()
  procs = _start_two(run_dir, tok, data, two, logs, "--heartbeat_timeout_s=10")
  deadline = time.monotonic() + 300
  while "process 1 of 2: checkpoints [20]" not in (logs / "process1.log").read_text() and procs[1].poll() is None:
    assert time.monotonic() < deadline, (logs / "process1.log").read_text()[-3000:]
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)  # (a preemption notice, `kill`, scancel): JAX's preemption service took it
  assert procs[1].wait(timeout=60) == -signal.SIGTERM
  assert procs[0].wait(timeout=300) != 0  # stopped by jax.distributed once process 1's heartbeats stop
  finished = results.ResultsDir(two).finished_steps()
  assert set(finished) <= {0, 40}, finished  # process 1 died before its checkpoint; process 0's units are whole
  procs = _start_two(run_dir, tok, data, two, logs)
  for i, p in enumerate(procs):
    assert p.wait(timeout=600) == 0, (logs / f"process{i}.log").read_text()[-3000:]
  first, second = ((logs / f"process{i}.log").read_text() for i in range(2))
  assert "process 0 of 2: checkpoints [0, 40]; if a process dies, jax.distributed stops the others" in first, \
      first[-3000:]
  assert f"{2 - len(finished)} unit(s) to run" in first, first[-3000:]  # only what process 0 had not finished
  assert "process 1 of 2: checkpoints [20]" in second and "process 0 assembles the table" in second
  pd.testing.assert_frame_equal(a, pd.read_csv(two / "results.csv"))


@pytest.mark.parametrize("extra,message", [
    (["--num_processes=2", "--process_id=2", "--coordinator_address=127.0.0.1:1"], "--process_id=2 is outside [0, "),
    (["--num_processes=2", "--process_id=0"], "missing --coordinator_address"),
    (["--num_processes=2", "--process_id=1", "--coordinator_address=127.0.0.1:{port}", "--coordinator_timeout_s=3"],
     "could not join the coordinator at 127.0.0.1:"),
    (["--num_processes=2", "--process_id=0", "--coordinator_address=127.0.0.1:1", "--heartbeat_timeout_s=0"],
     "--heartbeat_timeout_s=0 must be at least 1 second"),
    (["--num_processes=2", "--process_id=1", "--coordinator_address=127.0.0.1:abc"],  # (int()'s message, unnamed)
     "--coordinator_address='127.0.0.1:abc' must be host:port, the port in 1–65535"),
    (["--num_processes=2", "--process_id=0", "--coordinator_address=127.0.0.1:99999"],  # (it waited, then aborted)
     "the port in 1–65535"),
])
def test_bad_process_layouts_fail_clearly(tiny, tmp_path, extra, message):
  root, run_dir, tok, data = tiny
  extra = [e.format(port=free_port()) for e in extra]
  proc = subprocess.run(sweep_cmd(run_dir, tok, data, tmp_path / "out", *SMALL, *extra), cwd=REPO, env=env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-3000:]


def test_process_0_alone_says_what_it_waits_for_before_jax_aborts_it(tiny, tmp_path):
  """JAX ends process 0 with a C++ check failure (nothing to catch) when the others never join: the line
  before it says what it waited for and what the abort will mean."""
  root, run_dir, tok, data = tiny
  proc = subprocess.run(sweep_cmd(run_dir, tok, data, tmp_path / "out", *SMALL, "--num_processes=2", "--process_id=0",
                                  f"--coordinator_address=127.0.0.1:{free_port()}", "--coordinator_timeout_s=2"),
                        cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert ("process 0 of 2: waiting up to --coordinator_timeout_s=2 for the other processes to join at 127.0.0.1:"
          in proc.stderr), proc.stderr[-3000:]
  assert "DEADLINE_EXCEEDED" in proc.stderr, proc.stderr[-3000:]  # JAX's own words, which the line announces


def test_processes_given_different_counts_both_fail_clearly(tiny, tmp_path):
  """jax.distributed takes process 0's count; a process started with another --num_processes would join
  silently. Both processes stop before any work, naming every process's value."""
  root, run_dir, tok, data = tiny
  address = f"127.0.0.1:{free_port()}"
  procs = [subprocess.Popen(sweep_cmd(run_dir, tok, data, tmp_path / "out", *SMALL, f"--coordinator_address={address}",
                                      f"--num_processes={n}", f"--process_id={i}", "--coordinator_timeout_s=60"),
                            cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i, n in enumerate((2, 3))]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 2, err[-3000:]
    assert "different --num_processes (process 0: 2, process 1: 3)" in err, err[-3000:]
  assert not (tmp_path / "out" / "units").exists() or not any((tmp_path / "out" / "units").iterdir())


def test_processes_given_different_settings_both_fail_clearly(tiny, tmp_path):
  """A process given another --seed wrote its checkpoint's units with that seed's numbers under process 0's
  config.json (a rerun then reused them for good); when it was refused alone, process 0 waited a day for its
  units. Both processes now stop before any work, naming the setting, and leave at once."""
  root, run_dir, tok, data = tiny
  address = f"127.0.0.1:{free_port()}"
  start = time.monotonic()
  procs = [subprocess.Popen(sweep_cmd(run_dir, tok, data, tmp_path / "out", *SMALL, f"--coordinator_address={address}",
                                      "--num_processes=2", f"--process_id={i}", "--coordinator_timeout_s=60", *extra),
                            cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i, extra in enumerate(([], ["--seed=1"]))]
  outputs = [p.communicate(timeout=300) for p in procs]
  for i, (p, (_, err)) in enumerate(zip(procs, outputs)):
    assert p.returncode == 2, err[-3000:]
    assert f"the processes were given different settings (seed; this process's: seed={i})" in err, err[-3000:]
  assert time.monotonic() - start < 120
  assert not (tmp_path / "out" / "units").exists() or not any((tmp_path / "out" / "units").iterdir())


def test_a_process_that_stops_with_an_error_leaves_at_once(monkeypatch):
  """An error in one of several processes ends it without Python's shutdown, where jax.distributed would keep
  it waiting for the others (up to --wait_for_processes_s) while they wait for its units."""
  from suscept_jax_runners import cli, distributed
  left = []
  monkeypatch.setattr(distributed, "_joined", True)
  monkeypatch.setattr(distributed, "leave_now", lambda status: left.append(status) or (_ for _ in ()).throw(
      SystemExit(status)))
  monkeypatch.setattr(cli.flags.FLAGS["verbosity"], "value", 0)
  with pytest.raises(SystemExit):
    try:
      raise ValueError("bad input")
    except ValueError:
      cli._stop("error: bad input", 2)
  assert left == [2]
  monkeypatch.setattr(distributed, "_joined", False)
  with pytest.raises(SystemExit):
    try:
      raise ValueError("bad input")
    except ValueError:
      cli._stop("error: bad input", 2)
  assert left == [2]  # (one process alone exits normally)


def _host_copies(data: dict, root: Path) -> tuple[dict, list[Path]]:
  """Each of two hosts' own copy of the data files (other paths and mtimes, the same bytes): the relative
  specs that lead to them from each host's directory, and the two directories."""
  hosts = [root / f"host{i}" for i in range(2)]
  for i, host in enumerate(hosts):
    (host / "data").mkdir(parents=True)
    for name, path in data.items():
      shutil.copyfile(path, host / "data" / f"{name}.jsonl")
      os.utime(host / "data" / f"{name}.jsonl", ns=(1_700_000_000_000_000_000 + i,) * 2)
  return {name: f"data/{name}.jsonl" for name in data}, hosts


def test_fewer_checkpoints_than_processes_are_split_by_component_group(tiny, tmp_path):
  """One checkpoint on two processes: each samples one component group's unit (with the full model's chains,
  which every χ pairs with); process 0 assembles the one-process table. Each process reads its own copy of the
  data (as hosts of a pod slice may: other paths and mtimes behind the same specs), which is the same data."""
  root, run_dir, tok, data = tiny
  specs, hosts = _host_copies(data, tmp_path)
  one = subprocess.run(sweep_cmd(run_dir, tok, specs, tmp_path / "one", *SMALL, "--steps=40"), cwd=hosts[0],
                       env=env(), capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  two, logs = tmp_path / "two", tmp_path / "logs"
  logs.mkdir()
  for extra in (["--dry_run"], []):  # the dry run names each process's share and writes nothing
    procs = start_two_processes(sweep_cmd(run_dir, tok, specs, two, *SMALL, "--steps=40", *extra), logs, cwds=hosts)
    for i, p in enumerate(procs):
      assert p.wait(timeout=600) == 0, (logs / f"process{i}.log").read_text()[-3000:]
    for i, head in enumerate(("l0h0", "l1h1")):
      log = (logs / f"process{i}.log").read_text()
      assert f"process {i} of 2: checkpoint × component-group units 40: {head}" in log, log[-3000:]
    assert (two / "units").exists() != bool(extra)
  out = results.ResultsDir(two)
  assert sorted(out.unit_meta(u)["component_names"] for u in out.finished_units()) == [["full", "l0h0"],
                                                                                      ["full", "l1h1"]]
  assert out.settings()["data_identity"] == "content"
  pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "one" / "results.csv"), pd.read_csv(two / "results.csv"))


def test_hosts_whose_copies_of_the_data_differ_both_fail_clearly(tiny, tmp_path):
  """A host whose copy of a probe has other bytes would write numbers of other data into the table: every
  process stops before any work, naming the dataset."""
  root, run_dir, tok, data = tiny
  specs, hosts = _host_copies(data, tmp_path)
  with open(hosts[1] / "data" / "math.jsonl", "a") as f:
    f.write('{"text": "1 + 1 = 2"}\n')
  logs = tmp_path / "logs"
  logs.mkdir()
  procs = start_two_processes(sweep_cmd(run_dir, tok, specs, tmp_path / "out", *SMALL, "--steps=40"), logs,
                              "--coordinator_timeout_s=60", cwds=hosts)
  for i, p in enumerate(procs):
    log = (logs / f"process{i}.log").read_text() if p.wait(timeout=300) is not None else ""
    assert p.returncode == 2, log[-3000:]
    assert "the processes were given different settings (probe_fingerprints.data/math.jsonl;" in log, log[-3000:]
    assert "the files behind them differ between processes (data are compared by content)" in log, log[-3000:]
  assert not (tmp_path / "out" / "units").exists() or not any((tmp_path / "out" / "units").iterdir())


def test_units_are_shared_by_checkpoint_or_else_by_component_group():
  """`sweep.process_units` on the tiny model's components (l1 attn frees one more leaf than l1h1: its own
  group): by checkpoint when there are enough, else by checkpoint × group, a unit with "full" alone kept."""
  from suscept_jax.models import components as components_lib, config as model_config, transformer
  from suscept_jax_runners import sweep
  cfg = model_config.get_config("tiny", d_vocab=320)
  shapes = transformer.param_shapes(cfg)
  specs = ["full", "l0h0", "l1h1", "l1 attn", "l0h1"]
  masks = components_lib.component_masks(specs, shapes, cfg)
  share = lambda planned, steps, i, n: sweep.process_units(planned, steps, specs, masks, shapes, i, n)
  planned = [(s, ["p"], specs) for s in (0, 20, 40)]
  assert share(planned, [0, 20, 40], 1, 2) == ([(20, ["p"], specs)], "checkpoints [20]")
  units, line = share([(40, ["p"], specs), (40, ["q"], ["full"])], [40], 0, 2)
  assert units == [(40, ["p"], ["full", "l0h0", "l0h1"]), (40, ["p"], ["full", "l1 attn"]), (40, ["q"], ["full"])]
  assert line == "checkpoint × component-group units 40: l0h0+l0h1, 40: l1 attn"
  assert share([(40, ["p"], specs), (40, ["q"], ["full"])], [40], 1, 2)[0] == [(40, ["p"], ["full", "l1h1"])]


def test_only_process_0_starts_the_results_directory(tmp_path):
  """`distributed.start_results`: with --overwrite a process other than 0 neither clears the directory nor
  rewrites its settings (with several processes it waits for process 0 at a barrier); process 0 does both."""
  import numpy as np
  from suscept_jax_runners import distributed
  store = results.ResultsDir(tmp_path / "out")
  start = lambda seed, i: distributed.start_results(store, {"seed": seed}, {"probes": ["p"]}, kind="sweep",
                                                    overwrite=True, process_index=i, num_processes=1)
  start(0, 0)
  store.write_unit("step_00000000-x", {"chi": np.zeros(1)}, {"checkpoint": 0})
  start(1, 1)
  assert store.finished_units() == ["step_00000000-x"] and store.settings() == {"seed": 0}
  start(1, 0)
  assert store.finished_units() == [] and store.settings() == {"seed": 1}


def test_a_process_that_stopped_is_named_in_one_line_not_a_collectives_traceback(monkeypatch):
  """Process 1 stopped with its own clear error (a --run_dir missing on its host); process 0, in the settings'
  all-gather, died with 30 lines ending in "Gloo AllGather failed: ... Connection closed by peer"."""
  import jax
  from jax.experimental import multihost_utils
  from suscept_jax_runners import distributed

  def closed(*args, **kwargs):
    raise jax.errors.JaxRuntimeError("UNKNOWN: Gloo AllGather failed: pair.cc:547] Connection closed by peer\nmore")

  monkeypatch.setattr(multihost_utils, "process_allgather", closed)
  with pytest.raises(ConnectionError, match=r"another process of the run stopped before comparing the settings with "
                                            r"this one \(its own error is in its log; here: UNKNOWN: Gloo"):
    distributed.check_same_settings({"seed": 0}, 2)


def test_an_output_directory_not_shared_by_every_process_stops_them_all(tmp_path, monkeypatch):
  """Each process's --output_dir local to its host: process 0 waited a day (by default) for units written
  elsewhere, then advised a rerun that could never work. Now each process sees the others' markers or stops."""
  import threading
  from jax.experimental import multihost_utils
  from suscept_jax_runners import distributed
  barrier = threading.Barrier(2, timeout=60)
  monkeypatch.setattr(multihost_utils, "sync_global_devices", lambda name: barrier.wait())
  outcome = {}

  def process(i, path):
    path.mkdir(parents=True, exist_ok=True)
    try:
      distributed.check_shared(path, i, 2)
      outcome[i] = "ok"
    except ValueError as e:
      outcome[i] = str(e)

  for paths in ((tmp_path / "shared", tmp_path / "shared"), (tmp_path / "host0", tmp_path / "host1")):
    threads = [threading.Thread(target=process, args=(i, p)) for i, p in enumerate(paths)]
    for t in threads:
      t.start()
    for t in threads:
      t.join(timeout=60)
    if paths[0] == paths[1]:
      assert outcome == {0: "ok", 1: "ok"} and not list(paths[0].iterdir())  # (the markers removed again)
  assert "host0 is not shared by every process: process 0 does not see what process(es) [1] wrote" in outcome[0]
  assert "process 1 does not see what process(es) [0] wrote" in outcome[1]


def test_a_damaged_unit_is_named_with_what_to_do(tmp_path):
  """Units are written atomically, but a disk or a hand can damage one later: the error names the file (it was
  json's or zipfile's own, naming nothing)."""
  import numpy as np
  store = results.ResultsDir(tmp_path / "out")
  store.write_unit("step_00000000-x", {"chi": np.zeros(1)}, {"checkpoint": 0})
  store.write_unit("step_00000001-x", {"chi": np.zeros(1)}, {"checkpoint": 1})
  (store.units / "step_00000000-x.json").write_text('{"checkpoint": ')
  (store.units / "step_00000001-x.npz").write_bytes(b"PK\x03\x04 cut short")
  with pytest.raises(ValueError, match=r"step_00000000-x.json is damaged .*delete it and its .npz"):
    store.unit_meta("step_00000000-x")
  with pytest.raises(ValueError, match=r"step_00000001-x.npz is damaged .*delete it and its .json"):
    store.read_unit("step_00000001-x")
  # A rerun plans before anything else: it stops there, naming the archive (it reused it and said it was done).
  (store.units / "step_00000000-x.json").write_text('{"checkpoint": 0, "probe_names": [], "component_names": []}')
  with pytest.raises(ValueError, match=r"step_00000001-x.npz is damaged \(not a complete .npz archive\)"):
    store.plan([0, 1], ["p"], ["full"], None)
  (store.units / "step_00000000-x.json").write_text('[]')  # valid JSON, not a unit's
  with pytest.raises(ValueError, match=r"step_00000000-x.json is damaged \(valid JSON, but not a unit's metadata"):
    store.unit_meta("step_00000000-x")


def test_other_processes_wait_at_the_barrier_until_process_0_has_started(tmp_path, monkeypatch):
  """Two processes as threads, the barrier a threading.Barrier: process 0 is slow to start the directory
  (--overwrite, new settings), and process 1 reads the new settings once `start_results` returns. Without the
  barrier it would read the old ones, plan against them and write into a directory about to be cleared."""
  import threading

  from jax.experimental import multihost_utils

  from suscept_jax_runners import distributed
  barrier = threading.Barrier(2, timeout=60)
  monkeypatch.setattr(multihost_utils, "sync_global_devices", lambda name: barrier.wait())
  out = tmp_path / "out"
  results.ResultsDir(out).start({"seed": 0}, {"probes": ["p"]}, kind="sweep", overwrite=False)
  slow, seen_by_1 = results.ResultsDir(out), []
  start_now = slow.start
  monkeypatch.setattr(slow, "start", lambda *a, **k: (time.sleep(0.5), start_now(*a, **k)))

  def process(i, store):
    distributed.start_results(store, {"seed": 1}, {"probes": ["p"]}, kind="sweep", overwrite=True,
                              process_index=i, num_processes=2)
    if i == 1:
      seen_by_1.append(store.settings())

  threads = [threading.Thread(target=process, args=(0, slow)),
             threading.Thread(target=process, args=(1, results.ResultsDir(out)))]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=60)
  assert seen_by_1 == [{"seed": 1}]


def _check_many(root, queue):
  failed = 0
  for i in range(400):
    try:  # (the runners' check: a single stat, then `paths.check_writable_dir` on its units/)
      results.ResultsDir(Path(root) / f"out{i}").check_writable(write=True)
    except ValueError:
      failed += 1
  queue.put(failed)


def test_processes_checking_one_output_dir_at_once_both_pass(tmp_path):
  """Each process of a run checks the shared output directory, and removes what it made: another process's
  check, between its mkdir and its probe, met a directory just removed (FileNotFoundError: 'cannot write into'
  in CI; 3 in 600 checks here)."""
  import multiprocessing
  ctx = multiprocessing.get_context("spawn")
  queue = ctx.Queue()
  procs = [ctx.Process(target=_check_many, args=(str(tmp_path), queue)) for _ in range(2)]
  for p in procs:
    p.start()
  failures = [queue.get(timeout=120) for _ in procs]
  for p in procs:
    p.join(timeout=60)
  assert failures == [0, 0]


def test_a_directory_made_and_removed_by_another_check_meanwhile_is_tried_again(tmp_path, monkeypatch):
  """The other race of the test above: our mkdir met the directory another process had just made (EEXIST), and
  that process removed it before pathlib could see it was a directory, so mkdir(exist_ok=True) raised
  FileExistsError ('cannot write into …' in one CI run of the fortieth session)."""
  import pathlib

  from suscept_jax import paths
  real_mkdir, raised = pathlib.Path.mkdir, []

  def mkdir_after_a_race(self, *args, **kwargs):
    if not raised:
      raised.append(self)
      raise FileExistsError(17, "File exists", str(self))
    return real_mkdir(self, *args, **kwargs)

  monkeypatch.setattr(pathlib.Path, "mkdir", mkdir_after_a_race)
  paths.check_writable_dir(tmp_path / "out" / "units", "--output_dir")
  assert raised and not (tmp_path / "out").exists()  # tried again, passed, and left nothing behind
