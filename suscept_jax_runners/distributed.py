"""Several processes (hosts) on one run: `jax.distributed`, units partitioned round-robin, process 0 assembles.

The sweep partitions its units by checkpoint (with fewer checkpoints than processes: by checkpoint × component
group, `sweep.process_units`), the per-token runner by chunk of contexts. Each process samples the units it
owns on its own local devices (no cross-host collectives: the units are independent), writes each unit
atomically into the shared results directory, and process 0 waits for every unit before assembling the
results. Ownership depends only on the requested work, never on what is finished, so processes that start at
different times agree on it, and every process checks that all were given the same settings
(`check_same_settings`). A process that dies, or stops with an error (it leaves at once, `leave_now`), leaves
its finished units; jax.distributed stops the others --heartbeat_timeout_s later (JAX's "another task died"),
and theirs stay too; rerunning the same command computes only the rest.

  python -m experiments.sweep ... --coordinator_address=10.0.0.2:8476 --num_processes=2 --process_id=0   # host 0
  python -m experiments.sweep ... --coordinator_address=10.0.0.2:8476 --num_processes=2 --process_id=1   # host 1
  python -m experiments.per_token ... --distributed    # TPU pod slices / SLURM: jax.distributed finds its peers
"""
import socket
import sys
import time

from absl import flags

_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a run over several "
                                   "processes (jax.distributed); with --num_processes and --process_id.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
_AUTO = flags.DEFINE_bool("distributed", False, "Initialise jax.distributed from the environment (TPU pod slices, "
                          "SLURM) instead of the three flags above.")
_TIMEOUT = flags.DEFINE_integer("coordinator_timeout_s", 120, "Seconds to wait for all processes to join.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 100, "Seconds without a heartbeat after which a process "
                                  "counts as dead and jax.distributed stops the others (their finished units stay).")
_WAIT = flags.DEFINE_integer("wait_for_processes_s", 86_400, "Seconds process 0 waits for the other processes' units "
                             "before giving up (their finished units stay; rerun to complete the rest).")


IF_A_PROCESS_DIES = ("if a process dies, jax.distributed stops the others --heartbeat_timeout_s later "
                     "(\"another task died\"); every finished unit stays: rerun the same commands for the rest")


_joined = False  # this process is one of several under jax.distributed (see `leave_now`)


def joined() -> bool:
  return _joined


def leave_now(status: int) -> None:
  """End this process at once (no Python shutdown): JAX's exit handler would wait in the coordination
  service's shutdown barrier for the processes still working, up to --wait_for_processes_s, while they (process
  0 waiting for this process's units, or the others for process 0) wait for it; gone, it stops them
  --heartbeat_timeout_s later, as a killed process does."""
  import os
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


def requested() -> bool:
  return bool(_AUTO.value or _COORDINATOR.value or _NUM_PROCESSES.value or _PROCESS_ID.value is not None)


def check_flags() -> None:
  """Clear errors for an incomplete or inconsistent process layout (before any work)."""
  if not requested():
    return
  for name, flag in (("coordinator_timeout_s", _TIMEOUT), ("heartbeat_timeout_s", _HEARTBEAT),
                     ("wait_for_processes_s", _WAIT)):
    if flag.value < 1:
      raise ValueError(f"--{name}={flag.value} must be at least 1 second")
  if _AUTO.value:
    return
  missing = [name for name, flag in (("--coordinator_address", _COORDINATOR), ("--num_processes", _NUM_PROCESSES),
                                     ("--process_id", _PROCESS_ID)) if flag.value is None]
  if missing:
    raise ValueError(f"a multi-process run needs --coordinator_address, --num_processes and --process_id; "
                     f"missing {', '.join(missing)}")
  if _NUM_PROCESSES.value < 1:
    raise ValueError(f"--num_processes={_NUM_PROCESSES.value} must be >= 1")
  if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
    raise ValueError(f"--process_id={_PROCESS_ID.value} is outside [0, --num_processes={_NUM_PROCESSES.value})")
  host, _, port = _COORDINATOR.value.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:  # ("127.0.0.1:abc" failed in int(), unnamed)
    raise ValueError(f"--coordinator_address={_COORDINATOR.value!r} must be host:port, the port in 1–65535")


def initialize() -> tuple[int, int]:
  """(process index, process count): (0, 1) for a single-process run."""
  check_flags()
  if not requested():
    return 0, 1
  import jax
  if not _AUTO.value and _PROCESS_ID.value != 0:
    _wait_for_coordinator(_COORDINATOR.value, _TIMEOUT.value)  # JAX's own client aborts the process instead
  elif not _AUTO.value:  # what JAX's abort (a C++ check failure: nothing to catch) means, said before it comes
    print(f"process 0 of {_NUM_PROCESSES.value}: waiting up to --coordinator_timeout_s={_TIMEOUT.value} for the other "
          f"processes to join at {_COORDINATOR.value}; if one never does (not started, another --coordinator_address "
          f"or a duplicate --process_id), JAX aborts this process with DEADLINE_EXCEEDED ... RegisterTask",
          file=sys.stderr, flush=True)
  kwargs = {} if _AUTO.value else dict(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                                       process_id=_PROCESS_ID.value)
  # JAX's preemption service takes SIGTERM (a preemption notice, `kill`, scancel) for its lock-step sync points,
  # which units of unequal length cannot use: the process then ran on. Without it SIGTERM ends the process at
  # once; its finished units are whole files already, and the others stop a heartbeat later.
  jax.config.update("jax_enable_preemption_service", False)
  try:
    # Processes that finish their units early wait at shutdown for the others (as long as process 0 waits).
    jax.distributed.initialize(**kwargs, initialization_timeout=_TIMEOUT.value,
                               heartbeat_timeout_seconds=_HEARTBEAT.value, shutdown_timeout_seconds=_WAIT.value)
  except Exception as e:  # the coordination service's own errors (deadline exceeded, connection refused, …)
    where = f"the coordinator at {_COORDINATOR.value}" if _COORDINATOR.value else "jax.distributed's peers"
    raise ValueError(f"could not join {where} within --coordinator_timeout_s={_TIMEOUT.value}: is process 0 running "
                     f"there, and do all processes give the same --num_processes? ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''})") from None
  global _joined
  _joined = jax.process_count() > 1
  if not _AUTO.value:
    check_same_process_count(_NUM_PROCESSES.value)
  return jax.process_index(), jax.process_count()


def check_same_process_count(given: int) -> None:
  """Every process was given the same --num_processes: a clear error on all of them otherwise.

  jax.distributed takes the count from process 0 alone, so a process started with another --num_processes
  would join silently (and its user would wait for a process that is not part of the run). One small
  all-gather of the flags, before any work.
  """
  import jax
  import numpy as np
  given_P = together(np.array([given]), "--num_processes").ravel().tolist()
  if len(set(given_P)) > 1:
    raise ValueError("the processes were given different --num_processes ("
                     + ", ".join(f"process {i}: {n}" for i, n in enumerate(given_P))
                     + f"); the coordinator runs {jax.process_count()} processes (process 0's value): "
                       "start every process with the same --num_processes")


def check_same_settings(settings: dict, num_processes: int) -> None:
  """Every process was given the same settings: a clear error on all of them otherwise, naming the keys.

  A process given another --seed (or δh, draws, probes, …) would write units with other numbers into the
  same table, under process 0's config.json, and a later rerun would reuse them for good. One all-gather of a
  hash per setting, before any work (processes of one run share the code, so they have the same keys).
  """
  if num_processes <= 1:
    return
  import hashlib
  import json

  import numpy as np

  from suscept_jax import results
  flat = results.flat_settings(settings)
  keys = sorted(flat)
  digest = lambda text: int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF
  hashes = [digest(json.dumps(keys))] + [digest(json.dumps(flat[k], sort_keys=True, default=str)) for k in keys]
  gathered_PxS = together(np.array(hashes, np.int32), "the settings")
  if (gathered_PxS == gathered_PxS[0]).all():
    return
  differing = [k for i, k in enumerate(keys) if len(set(gathered_PxS[:, i + 1].tolist())) > 1]
  fix = ("the files behind them differ between processes (data are compared by content): give every process "
         "the same files" if differing and all("fingerprint" in k for k in differing)
         else "start every process with the same flags")
  raise ValueError("the processes were given different settings (" + ", ".join(differing or ["their keys"])
                   + "; this process's: " + ", ".join(f"{k}={flat[k]!r}" for k in differing[:5]) + f"): {fix}")


def together(values, what: str, barrier: str | None = None):
  """Every process's `values` (`process_allgather`), or with `barrier` a barrier of that name; where another
  process has stopped (its own error, e.g. a missing --run_dir on its host), a one-line error saying so instead
  of the collective's traceback ("Gloo AllGather failed: ... Connection closed by peer")."""
  import jax
  from jax.experimental import multihost_utils
  try:
    if barrier is not None:
      return multihost_utils.sync_global_devices(barrier)
    return multihost_utils.process_allgather(values)
  except jax.errors.JaxRuntimeError as e:
    first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise ConnectionError(f"process {jax.process_index()}: another process of the run stopped before comparing "
                          f"{what} with this one (its own error is in its log; here: {first})") from None


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Return once something listens at host:port; a clear error after `timeout_s`."""
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=1.0):
        return
    except OSError as e:
      if time.monotonic() > deadline:
        raise ValueError(f"could not join the coordinator at {address} within --coordinator_timeout_s={timeout_s}: "
                         f"is process 0 running there? ({e})") from None
      time.sleep(0.5)


def share(keys, process_index: int, num_processes: int) -> list:
  """The keys (checkpoints, chunks) process `process_index` computes: round-robin over the requested list."""
  return list(keys)[process_index::num_processes]


def refuse_untrained(target, num_processes: int, runner: str) -> None:
  """Several processes must not each train the demo model into the same run directory: a clear error."""
  if num_processes > 1 and target.needs_training:
    raise ValueError(f"the demo model in {target.run_dir} is not trained yet: run experiments.{runner} once as one "
                     f"process (or experiments.train) before a multi-process run")


def start_results(store, settings: dict, scope: dict, *, kind: str, overwrite: bool, process_index: int,
                  num_processes: int, outputs=()) -> None:
  """`store.start` by process 0 alone (with --overwrite it clears the directory); the others wait for it at a
  barrier, so none plans or writes a unit into a directory about to be cleared or a config.json about to be
  rewritten (every process was given the same command, so process 0's scope is theirs)."""
  if process_index == 0:
    store.start(settings, scope, kind=kind, overwrite=overwrite, outputs=outputs)
  if num_processes > 1:
    together(None, "the results directory's start", barrier="suscept_jax: results directory started")
    check_shared(store.path, process_index, num_processes)


def check_shared(path, process_index: int, num_processes: int) -> None:
  """Every process sees the same --output_dir: each leaves a marker there, and after a barrier each looks for all
  of them. A directory local to each host (a shared mount that failed on one) left process 0 waiting a day for
  units written elsewhere, and its advice, rerun, could never work; now every process stops here, saying so."""
  from pathlib import Path
  path = Path(path)
  marker = lambda i: path / f".process-{i}-of-{num_processes}"
  try:
    if path.is_dir():  # (not there at all: process 0 made it elsewhere; still at the barriers, so all say so)
      marker(process_index).write_bytes(b"")
    together(None, "the output directory's markers", barrier="suscept_jax: output directory markers written")
    missing = [i for i in range(num_processes) if not marker(i).exists()]
    together(None, "the output directory's markers", barrier="suscept_jax: output directory markers read")
  finally:
    marker(process_index).unlink(missing_ok=True)
  if missing:
    raise ValueError(f"--output_dir={path} is not shared by every process: process {process_index} does not see "
                     f"what process(es) {missing} wrote there. Give every process a directory all hosts mount (on "
                     f"a TPU pod, under ~/shared)")


def local_mesh():
  """This process's own devices as the sampler's mesh (units never span hosts)."""
  import jax

  from suscept_jax import parallel
  return parallel.entry_mesh(jax.local_devices())


def wait_for_units(plan_remaining, describe, *, poll_s: float = 2.0, log=print) -> None:
  """Block until `plan_remaining()` is empty (the other processes' units are written), saying what it waits for
  (`describe(remaining)`, e.g. "3 unit(s) of checkpoints [20, 60]")."""
  remaining = plan_remaining()
  last, deadline = None, time.monotonic() + _WAIT.value
  while remaining:
    if time.monotonic() > deadline:
      raise TimeoutError(f"process 0 waited --wait_for_processes_s={_WAIT.value} s for {describe(remaining)} that "
                         f"never came; the finished units are kept: rerun the same command to compute the rest")
    what = describe(remaining)
    if what != last:
      log(f"process 0: waiting for {what} from the other processes")
      last = what
    time.sleep(poll_s)
    remaining = plan_remaining()
