"""L_B(w*) of every evaluation batch of a run, from one pass over the base samples those batches hold.

φ_t = L_B(w_t) − L_B(w*) needs the loss at w* of each draw's evaluation batch. Every component group reads the
same streams, and a stream's batches over a run revisit the same samples (the demo's 4 streams × 101 batches
of 20 rows hold 2 048 distinct samples), so a run evaluates each of those samples once at w* and averages per
batch on the host: one forward per sample instead of one per batch row per group, and no program of its own
(the rows go through the preflight's compiled program: `batched.losses_at` at `batched.check_rows` rows).
A sample whose loss at w* is not finite is a fault of the data, named before any sampling together with the
first evaluation batch that holds it; so is a probe sample that any evaluation batch places
(`check_probe_samples`).

Shape letters: U distinct samples, B blocks (one evaluation batch each), T draws (B − 1), K streams, n batch
rows, D probes, M probe slots per batch.
"""
from typing import NamedTuple

import numpy as np

from suscept_jax import batched, mixing
from suscept_jax.streams import Streams


class AnchorTable(NamedTuple):
  """Per-sample losses at w* of the samples a run's evaluation batches hold."""

  samples_U: np.ndarray  # int64, sorted: indices into the base data
  losses_U: np.ndarray  # their losses at w*, float32 (float64 where the loss is: `batched.statistics_dtype`)

  def losses_of(self, indices):
    """The losses at w* of the samples at `indices` (any shape; every one in the table)."""
    return self.losses_U[np.searchsorted(self.samples_U, indices)]

  def batch_means(self, indices_Xxn) -> np.ndarray:
    """L_B(w*) of batches given by their samples' indices [..., n], [...] in the losses' dtype (summed in
    float64)."""
    return self.losses_of(indices_Xxn).astype(np.float64).mean(axis=-1).astype(self.losses_U.dtype)


def build(loss_fn, params, streams: Streams, eval_steps_B, *, rows: int, micro) -> AnchorTable:
  """The table for the evaluation batches at global SGLD steps `eval_steps_B` of every stream, the samples
  evaluated `rows` at a time by `batched.sample_losses` (as the preflight's are, micro-batched by `micro`).
  Raises DataFaultError naming the non-finite samples of the first batch (by block, then stream) that holds
  one."""
  indices_BxKxn = streams.base_indices(np.asarray(eval_steps_B))
  samples_U = np.unique(indices_BxKxn)
  losses_U = batched.sample_losses(loss_fn, params, streams.base, samples_U, micro, rows)
  table = AnchorTable(samples_U=samples_U, losses_U=losses_U.astype(batched.statistics_dtype_of(losses_U.dtype)))
  _raise_on_faults(table, indices_BxKxn, streams.base_name)
  return table


def _raise_on_faults(table: AnchorTable, indices_BxKxn, base_name: str) -> None:
  finite_BxKxn = np.isfinite(table.losses_of(indices_BxKxn))
  if finite_BxKxn.all():
    return
  b, k = (int(i) for i in np.argwhere(~finite_BxKxn.all(axis=-1))[0])
  samples = sorted({int(i) for i in indices_BxKxn[b, k][~finite_BxKxn[b, k]]})
  raise batched.fault_at_w_star(base_name, samples, f"in the evaluation batch of draw {b} of chain {k}")


def check_probe_samples(loss_fn, params, streams: Streams, eval_steps_B, *, rows: int, micro) -> None:
  """Every probe sample the run places (Algorithm 1's slots in the evaluation batches of blocks 1 … B − 1 of every
  stream) must have a finite loss at w*; else its probe is named with the samples and the first batch placing
  one, before any sampling. Met later, such a sample only dropped the draws that placed it (with a warning),
  while the preflight raised for one in its first batches: one fault, two behaviours by seed. One forward per
  distinct placed sample, through the table's program (a non-finite loss away from w* still drops draws)."""
  if not streams.probes:
    return
  eval_steps_B = np.asarray(eval_steps_B)
  slots = mixing.probe_slots(streams.n, streams.delta_h, np.arange(len(eval_steps_B) - 1))  # block b: draw b − 1
  indices_TxKxDxM = streams.probe_indices(eval_steps_B[1:], slots)
  placed_TxKxM = np.broadcast_to((slots.weight_TxM > 0)[:, None, :], indices_TxKxDxM[:, :, 0].shape)
  for d, (name, data) in enumerate(streams.probes.items()):
    indices_TxKxM = indices_TxKxDxM[:, :, d]
    faulty = batched.nonfinite_samples(loss_fn, params, data, indices_TxKxM[placed_TxKxM], micro, rows)
    if faulty:
      t, k = (int(i) for i in np.argwhere((np.isin(indices_TxKxM, faulty) & placed_TxKxM).any(axis=-1))[0])
      raise batched.fault_at_w_star(f"probe {name!r}", faulty,
                                    f"placed first in the evaluation batch of draw {t + 1} of chain {k}")
