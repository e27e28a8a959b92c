"""Where suscept_jax keeps caches (corpora, tokenized contexts, downloads).

One root, overridable with the environment variable SUSCEPT_JAX_CACHE, so a TPU VM or a CI run can
point every cache at a scratch disk.
"""
import os
from pathlib import Path


def cache_root() -> Path:
  """Root of all caches: $SUSCEPT_JAX_CACHE, else ~/.cache/suscept_jax."""
  root = os.environ.get("SUSCEPT_JAX_CACHE")
  return Path(root).expanduser() if root else Path.home() / ".cache" / "suscept_jax"


def atomic_write_bytes(path: Path, data: bytes) -> None:
  """Write `data` to `path` via a temporary sibling and rename, so readers never see half a file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
