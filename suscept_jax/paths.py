"""Where suscept_jax keeps caches (corpora, tokenized contexts, downloads), and how it writes files.

One root, overridable with the environment variable SUSCEPT_JAX_CACHE, so a TPU VM or a CI run can
point every cache at a scratch disk. Files are written atomically (readers never see half a file), JSON
strictly (no NaN tokens).
"""
import contextlib
import json
import math
import os
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
