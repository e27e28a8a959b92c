"""Where suscept_jax keeps caches (corpora, tokenized contexts, downloads).

One root, overridable with the environment variable SUSCEPT_JAX_CACHE, so a TPU VM or a CI run can
point every cache at a scratch disk.
"""
import atexit
import contextlib
import errno
import fcntl
import json
import math
import os
import socket
import time
from pathlib import Path

import numpy as np


def cache_root() -> Path:
  """Root of all caches: $SUSCEPT_JAX_CACHE, else ~/.cache/suscept_jax."""
  root = os.environ.get("SUSCEPT_JAX_CACHE")
  return Path(root).expanduser() if root else Path.home() / ".cache" / "suscept_jax"


def atomic_write_bytes(path: Path, data: bytes) -> None:
  """Write `data` to `path` via a temporary sibling and rename, so readers never see half a file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:  # (a full disk, an interrupt: no half-written temporary left behind for good)
    tmp.unlink(missing_ok=True)
    raise


def json_bytes(value, *, indent: int | None = 2, default=None) -> bytes:
  """`value` as strict JSON: a NaN or infinite float (Python's or numpy's) is written as null. JSON has no NaN,
  and Python's bare `NaN` token stops jq, JavaScript's JSON.parse and most other readers of a results file."""
  return json.dumps(_finite_or_null(value), indent=indent, allow_nan=False, default=default).encode()


def atomic_write_json(path: Path, value, *, default=None) -> None:
  """`json_bytes(value)` written atomically (see `atomic_write_bytes`)."""
  atomic_write_bytes(path, json_bytes(value, default=default))


def _finite_or_null(value):
  if isinstance(value, dict):
    return {k: _finite_or_null(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite_or_null(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


LOCK_FILE = ".lock"
# File systems without advisory locks (some FUSE mounts): the lock is then left out, not the run.
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def hold_directory(path: Path, what: str):
  """An exclusive lock on the directory `path` (its LOCK_FILE) for the rest of this process, or until the
  returned file is closed; None where the file system has no locks. Two runs writing into one directory at
  once mixed their settings in one table (each checked the directory while it was still empty). The kernel
  drops the lock when the process ends, however it ends, so a killed run never blocks its rerun. Raises
  `DirectoryInUse`, naming the holder (`what`, its process, host and start). A directory made here that holds
  nothing but the lock when the process ends is removed (a run refused for bad input leaves nothing)."""
  path = Path(path)
  made = not path.exists()
  for attempt in range(5):
    path.mkdir(parents=True, exist_ok=True)
    try:
      handle = open(path / LOCK_FILE, "a+")
      break
    except FileNotFoundError:  # (another process's trial, `check_writable_dir`, removed the directory it made)
      if attempt == 4:
        raise
  if made:
    atexit.register(_remove_if_only_lock, path)
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _holder(handle)
    handle.close()
    raise DirectoryInUse(path, holder) from None
  except OSError as e:
    handle.close()
    if e.errno in _NO_LOCKS:
      return None
    raise
  handle.truncate(0)
  handle.write(f"{what}, process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
  handle.flush()
  return handle


def _remove_if_only_lock(path: Path) -> None:
  with contextlib.suppress(OSError):
    if os.listdir(path) == [LOCK_FILE]:
      (path / LOCK_FILE).unlink()
      path.rmdir()


def directory_holder(path: Path) -> str | None:
  """Who holds `hold_directory`'s lock on `path` now (as it wrote itself down), or None: no one does."""
  lock = Path(path) / LOCK_FILE
  if not lock.exists():
    return None
  with open(lock) as handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return _holder(handle) or "another run"
    except OSError:
      return None
  return None


def _holder(handle) -> str:
  handle.seek(0)
  return handle.read().strip()


class DirectoryInUse(ValueError):
  """Another process holds `hold_directory`'s lock on the directory."""

  def __init__(self, path, holder: str):
    self.path, self.holder = Path(path), holder or "another run, just starting"
    super().__init__(f"{path} is being written by {self.holder}: wait for it to finish, or give another directory")


def check_writable_dir(path, flag: str, *, shown=None) -> None:
  """Refuse, naming `flag`, a directory this process cannot create or write in (under a file, read-only, not
  permitted), before any work: an hour of work then not written is lost. The trial leaves nothing behind.
  `shown`: the path the message names (default `path`)."""
  path = Path(path)
  made = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
  probe = path / f".writable-{os.getpid()}"
  try:
    # Another process checking the same path may remove what it made meanwhile: our probe then finds no
    # directory, or our mkdir found it made and then gone (EEXIST). Both are tried again.
    for attempt in range(5):
      try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        break
      except (FileNotFoundError, FileExistsError):
        if attempt == 4:
          raise
    probe.unlink()
  except OSError as e:
    raise ValueError(f"cannot write into {shown or path} ({type(e).__name__}: {e.strerror or e}): give a directory "
                     f"this user can write, as {flag}") from None
  finally:
    for made_dir in made:
      with contextlib.suppress(OSError):
        made_dir.rmdir()
