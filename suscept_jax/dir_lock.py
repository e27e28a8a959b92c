"""A run's hold on the directory it writes: an advisory lock, so that two runs never write into one at once.

Two sweeps started two seconds apart into one fresh directory both found it empty and both wrote: the table
mixed 12- and 20-draw units under a config.json that named one of them. The kernel drops an flock when its
process ends, however it ends, so a killed run never blocks its rerun (a lock file with a process id would).
"""
import atexit
import contextlib
import errno
import fcntl
import os
import socket
import time
from pathlib import Path

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
