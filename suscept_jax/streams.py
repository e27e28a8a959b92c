"""The chains' PRNG keys and data streams.

Chain k of *every* component reads stream k, whose base and probe batches come from schedules seeded by
(seed, checkpoint, k). Chain k of C and chain k of "full" therefore share their batches (eq. 41's pairing
keeps its common random numbers), while different chains see different batches, so the spread across chains
carries the batch noise and the error bars hold. (A full-batch run without probes has no batch noise: its one
stream is the whole dataset in order, shared by all.) Noise keys are fold_in(seed, checkpoint,
component-name hash, chain), and each step folds in its global index: every chain meets the same batches and
noise whatever the device count and however the run is split into chunks or component groups.

Shape letters: C components, K streams (= chains), D probes, M probe slots per batch, L blocks, n batch rows.
"""
import functools
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from suscept_jax import mixing
from suscept_jax.batched import num_rows
from suscept_jax.compile_options import platform_jit


def component_seed(name: str) -> int:
  """Stable 31-bit id of a component name (adding a component never changes another's noise)."""
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


KEY_ROWS_BUCKET = 64  # key rows are derived in padded blocks: groups of different sizes share one program


def check_key_id(name: str, value) -> None:
  """A seed or checkpoint id is folded into every chain's key as a uint32: it must lie in [0, 2**32)."""
  if not 0 <= int(value) < 2**32:
    raise ValueError(f"{name}={value} must be an integer in [0, 2**32)")


def chain_keys(seed: int, checkpoint_id: int, component_names, num_chains: int) -> np.ndarray:
  """uint32 key data [C·K, 2]: fold_in(seed, checkpoint, component, chain)."""
  for name, value in (("seed", seed), ("checkpoint_id", checkpoint_id)):
    check_key_id(name, value)
  ids = np.array([(component_seed(name), k) for name in component_names for k in range(num_chains)], np.uint32)
  rows = -(-len(ids) // KEY_ROWS_BUCKET) * KEY_ROWS_BUCKET  # one compiled shape for every group up to its size
  padded = np.concatenate([ids, np.zeros((rows - len(ids), 2), np.uint32)])
  return np.asarray(_entry_keys(np.uint32(seed), np.uint32(checkpoint_id), padded))[:len(ids)]


@functools.cache
def key_data_shape() -> tuple:
  """The shape of one key's uint32 data (`chain_keys` rows), found without compiling anything."""
  return tuple(jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape)


@platform_jit
def _entry_keys(seed, checkpoint_id, ids_Ex2):
  root = jax.random.fold_in(jax.random.key(seed), checkpoint_id)
  return jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(jax.random.fold_in(root, i[0]), i[1])))(ids_Ex2)


def stream_seed(seed: int, checkpoint_id: int, chain: int) -> tuple:
  """Seed of data stream (= chain) k: the same for every component, different for every chain."""
  return (int(seed), int(checkpoint_id), int(chain))


def num_streams(num_samples: int, batch_size: int, num_chains: int, has_probes: bool) -> int:
  """One stream per chain, except a full-batch run without probes: every batch is then the whole dataset
  and the order cannot matter, so all chains share one stream taken in order (no shuffling, one L_B(w*))."""
  return 1 if batch_size == num_samples and not has_probes else num_chains


class Streams:
  """Host side of the data streams: gathers each chunk's batches from (memory-mapped) arrays."""

  def __init__(self, base, probes: Mapping[str, Any], *, batch_size, delta_h, seed, checkpoint_id, num_chains,
               base_name):
    self.base, self.probes, self.base_name = base, probes, base_name
    self.n, self.delta_h = batch_size, delta_h
    self.num_streams = num_streams(num_rows(base), batch_size, num_chains, bool(probes))
    seeds = [stream_seed(seed, checkpoint_id, k) for k in range(self.num_streams)]
    self.base_schedules = [mixing.BatchSchedule(num_rows(base), batch_size, s, name=base_name) for s in seeds]
    self.probe_schedules = {d: [mixing.BatchSchedule(num_rows(p), batch_size, s, name=f"probe {d!r}") for s in seeds]
                            for d, p in probes.items()}
    self.num_slots = mixing.max_probe_samples(batch_size, delta_h) if probes else 0

  def base_indices(self, steps) -> np.ndarray:
    """int64 [*steps.shape, K, n]: the base samples each step of each stream reads."""
    steps = np.asarray(steps)
    if self.num_streams == 1 and self.n == num_rows(self.base) and not self.probes:
      return np.broadcast_to(np.arange(self.n), steps.shape + (1, self.n))
    idx = [sch.indices_many(steps.ravel()).reshape(steps.shape + (self.n,)) for sch in self.base_schedules]
    return np.stack(idx, axis=steps.ndim)

  def gather_base(self, steps):
    idx = self.base_indices(steps)
    return jax.tree.map(lambda a: np.asarray(a[idx]), self.base)

  def probe_indices(self, eval_steps, slots: mixing.ProbeSlots) -> np.ndarray:
    """int64 [L, K, D, M]: the probe sample in every slot of every stream's evaluation batch."""
    eval_steps = np.asarray(eval_steps)
    out = []
    for schedules in self.probe_schedules.values():
      per_stream = [np.take_along_axis(sch.indices_many(eval_steps), slots.position_TxM.astype(np.int64), axis=1)
                    for sch in schedules]
      out.append(np.stack(per_stream, axis=1))  # [L, K, M]
    return np.stack(out, axis=2)

  def gather_probes(self, probe_idx_LxKxDxM):
    per_probe = [jax.tree.map(lambda a, d=d: np.asarray(a[probe_idx_LxKxDxM[:, :, d]]), p)
                 for d, p in enumerate(self.probes.values())]
    return jax.tree.map(lambda *xs: np.stack(xs, axis=2), *per_probe)
