"""Token streams -> fixed-length contexts [N, K], and the on-disk cache of tokenized datasets.

Documents are concatenated, each followed by the end-of-text token, and cut into consecutive rows of
K tokens; the incomplete tail is dropped. `load_contexts` does this for a dataset spec with bounded
memory (batched tokenization, rows streamed to disk) and caches the result as an .npy keyed by the
data, the tokenizer and the packing settings, so experiments reuse one tokenization.
"""
import hashlib
import itertools
import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from suscept_jax import paths
from suscept_jax.progress import progress_bar
from suscept_jax.data import sources
from suscept_jax.data import tokenizer as tokenizer_lib

_FORMAT = "packed-v1"  # Bump when the packing rule changes, to invalidate old caches.
_DOCS_PER_BATCH = 512
_CHARS_PER_BATCH = 1 << 22


class _Packer:
  """Turns batches of documents' token ids into full rows of K tokens, carrying the remainder."""

  def __init__(self, context_length: int, eos_id: int, max_contexts: int | None):
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2 (the model predicts K-1 tokens), got {context_length}")
    if max_contexts is not None and max_contexts < 1:
      raise ValueError(f"max_contexts must be positive or None, got {max_contexts}")
    self.context_length, self.max_contexts = context_length, max_contexts
    self.eos_1 = np.array([eos_id], np.int32)
    self.carry = np.empty(0, np.int32)
    self.n_contexts = self.n_tokens = self.n_documents = 0

  @property
  def done(self) -> bool:
    return self.max_contexts is not None and self.n_contexts >= self.max_contexts

  def add(self, ids_per_document: Sequence[Sequence[int]]) -> np.ndarray:
    """Appends documents (each followed by eos); returns the rows [n, K] completed by them."""
    pieces = [self.carry]
    for ids in ids_per_document:
      pieces += [np.asarray(ids, np.int32), self.eos_1]
    stream = np.concatenate(pieces)
    self.n_documents += len(ids_per_document)
    self.n_tokens += len(stream) - len(self.carry)
    n_rows = len(stream) // self.context_length
    if self.max_contexts is not None:
      n_rows = min(n_rows, self.max_contexts - self.n_contexts)
    cut = n_rows * self.context_length
    self.carry = stream[cut:]
    self.n_contexts += n_rows
    return stream[:cut].reshape(n_rows, self.context_length)

  def check_nonempty(self, name: str) -> None:
    if self.n_contexts == 0:
      raise ValueError(f"{name} gave {self.n_tokens} tokens ({self.n_documents} documents, each plus "
                       f"end-of-text), fewer than one context of {self.context_length} tokens")


def pack_documents(token_ids: Iterable[Sequence[int]], context_length: int, eos_id: int,
                   max_contexts: int | None = None) -> np.ndarray:
  """Packs documents' token ids into contexts_NxK (int32), each document followed by `eos_id`.

  Stops reading documents once `max_contexts` rows are made. Raises ValueError if not even one
  full context can be made.
  """
  packer = _Packer(context_length, eos_id, max_contexts)
  rows = []
  documents = iter(token_ids)
  while not packer.done:
    batch = list(itertools.islice(documents, _DOCS_PER_BATCH))
    if not batch:
      break
    rows.append(packer.add(batch))
  packer.check_nonempty("the documents")
  return np.concatenate(rows)


def load_contexts(spec: str, tokenizer, context_length: int, *, max_contexts: int | None = None,
                  cache_dir=None, progress: bool = True) -> np.ndarray:
  """Tokenized, packed contexts_NxK of dataset `spec`, memory-mapped read-only from the cache.

  The cache key covers the data (`sources.dataset_fingerprint`), the tokenizer, K and max_contexts,
  so any change re-tokenizes and a repeat call reads the .npy without tokenizing. Files are written
  to a temporary name and renamed, so an interrupted run never leaves a partial cache entry.
  A JSON sidecar next to the .npy records the spec and counts.
  """
  cache_dir = Path(cache_dir) if cache_dir is not None else paths.cache_root() / "contexts"
  key = {
      "format": _FORMAT,
      "dataset": sources.dataset_fingerprint(spec),
      "tokenizer": tokenizer_lib.tokenizer_fingerprint(tokenizer),
      "context_length": context_length,
      "max_contexts": max_contexts,
  }
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  npy_path = cache_dir / f"{_slug(spec)}-{digest}.npy"
  if npy_path.is_file():
    try:
      return np.load(npy_path, mmap_mode="r")
    except (ValueError, OSError) as e:  # damaged after it was written (truncated, overwritten): a cache, rebuilt
      warnings.warn(f"the cached contexts {npy_path} are damaged ({e}); tokenizing {spec!r} again", stacklevel=2)
      npy_path.unlink(missing_ok=True)
  eos = tokenizer_lib.eos_id(tokenizer)
  cache_dir.mkdir(parents=True, exist_ok=True)
  raw_path = cache_dir / f".{npy_path.name}.{uuid.uuid4().hex}.raw"
  tmp_path = cache_dir / f".{npy_path.name}.{uuid.uuid4().hex}.tmp"
  try:
    packer = _Packer(context_length, eos, max_contexts)
    with open(raw_path, "wb") as raw, progress_bar(max_contexts, f"tokenizing {spec}", unit="ctx",
                                                   enabled=progress) as bar:
      for ids_per_document in _tokenize(sources.iter_documents(spec), tokenizer):
        rows_nxk = packer.add(ids_per_document)
        raw.write(rows_nxk.tobytes())
        bar.update(len(rows_nxk))
        if packer.done:
          break
    packer.check_nonempty(f"dataset {spec!r}")
    _write_npy(raw_path, tmp_path, (packer.n_contexts, context_length))
    sidecar = dict(key, spec=spec, eos_id=eos, n_contexts=packer.n_contexts,
                   n_documents_read=packer.n_documents, n_tokens_read=packer.n_tokens,
                   n_tokens_kept=packer.n_contexts * context_length)
    paths.atomic_write_bytes(npy_path.with_suffix(".json"), json.dumps(sidecar, indent=2).encode())
    os.replace(tmp_path, npy_path)
  finally:
    for leftover in (raw_path, tmp_path):
      leftover.unlink(missing_ok=True)
  return np.load(npy_path, mmap_mode="r")


def tokens_fingerprint(contexts_NxK) -> str:
  """Identity of an array of token contexts (its int32 bytes): what a run records to refuse other data later."""
  return hashlib.sha256(np.ascontiguousarray(np.asarray(contexts_NxK, np.int32)).tobytes()).hexdigest()[:16]


def decode_context(tokenizer, row) -> str:
  """Text of one context (special tokens kept), for round-trip checks and per-token views.

  A row may start or end inside a multi-byte character; those bytes decode to U+FFFD.
  """
  return tokenizer.decode(np.asarray(row).tolist(), skip_special_tokens=False)


def _tokenize(documents: Iterable[str], tokenizer) -> Iterator[list[list[int]]]:
  """Yields the token ids of consecutive batches of documents (batched for the Rust thread pool)."""
  encode = getattr(tokenizer, "encode_batch_fast", None) or tokenizer.encode_batch
  for batch in _batches(documents):
    yield [encoding.ids for encoding in encode(batch, add_special_tokens=False)]


def _batches(documents: Iterable[str]) -> Iterator[list[str]]:
  batch, chars = [], 0
  for doc in documents:
    batch.append(doc)
    chars += len(doc)
    if len(batch) >= _DOCS_PER_BATCH or chars >= _CHARS_PER_BATCH:
      yield batch
      batch, chars = [], 0
  if batch:
    yield batch


def _write_npy(raw_path: Path, npy_path: Path, shape: tuple[int, int]) -> None:
  """Writes an int32 .npy of `shape` whose data are the bytes of `raw_path`, without loading them."""
  with open(npy_path, "wb") as out, open(raw_path, "rb") as raw:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)), "fortran_order": False,
              "shape": shape}
    np.lib.format.write_array_header_1_0(out, header)
    shutil.copyfileobj(raw, out, 1 << 24)
    out.flush()
    os.fsync(out.fileno())


def _slug(spec: str) -> str:
  """A short, filesystem-safe reminder of the spec in the cache file name."""
  return re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_")[-40:] or "data"
