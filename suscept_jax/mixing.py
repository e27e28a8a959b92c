"""Data mixing (the paper's Algorithm 1, App. C.4) and the per-chain batch streams.

Algorithm 1 walks the global sample index j = 0, 1, … of a stream and takes the probe sample at j
exactly when ⌊(j+1)·δh⌋ grows. Run over the whole stream of evaluation batches (batch t holds
j ∈ [t·n, (t+1)·n)), a batch holds ⌊n·δh⌋ or ⌈n·δh⌉ probe samples and after T batches exactly
⌊T·n·δh⌋ have been placed: the realised fraction is δh, as in the paper (restarting the walk in every
batch would give ⌊n·δh⌋/n, e.g. 6/64 = 0.094 instead of 0.1). Shapes stay fixed by padding every batch
to ⌈n·δh⌉ slots with a weight of 0 on the unused ones. If the probe data *is* the base data the mixed
batch equals the base batch.

δh is turned into an exact fraction (0.1 -> 1/10) so ⌊j·δh⌋ has no floating-point surprises.

A `BatchSchedule` draws batch indices per step from epoch-wise permutations seeded by (seed…, epoch):
the same on every device and after a resume, and identical for two datasets of equal size (which is
what makes a probe equal to the base data give ΔL ≡ 0 exactly). The sampler gives chain k its own
schedule, seeded by (seed, checkpoint, k).
"""
import fractions
from typing import NamedTuple

import numpy as np


def _as_fraction(delta_h: float) -> fractions.Fraction:
  if not 0.0 < float(delta_h) < 1.0:
    raise ValueError(f"delta_h={delta_h} must lie strictly between 0 and 1")
  return fractions.Fraction(str(float(delta_h))).limit_denominator(10**9)


def _placed_before(j, dh: fractions.Fraction):
  """Probe samples Algorithm 1 has placed among the first j samples: ⌊j·δh⌋ (j int or int array)."""
  return (np.asarray(j, np.int64) * dh.numerator) // dh.denominator


def mixing_pattern(length: int, delta_h: float, start: int = 0) -> np.ndarray:
  """Algorithm 1 over global positions start … start+length−1: bool [length], True = probe sample."""
  dh = _as_fraction(delta_h)
  j = np.arange(start, start + length)
  return _placed_before(j + 1, dh) > _placed_before(j, dh)


def max_probe_samples(batch_size: int, delta_h: float) -> int:
  """⌈n·δh⌉: the most probe samples a batch of n can hold (the padded slot count)."""
  dh = _as_fraction(delta_h)
  return -(-batch_size * dh.numerator // dh.denominator)


def probe_positions(batch_size: int, delta_h: float, draw: int = 0) -> np.ndarray:
  """Positions (int [m_t]) that Algorithm 1 gives to probe samples in evaluation batch `draw`."""
  return np.flatnonzero(mixing_pattern(batch_size, delta_h, start=draw * batch_size))


class ProbeSlots(NamedTuple):
  """Algorithm 1's probe positions for a run of evaluation batches, padded to a fixed slot count."""

  position_TxM: np.ndarray  # int32 [T, M] position in the batch (0 in unused slots)
  weight_TxM: np.ndarray  # float32 [T, M] 1 for a placed probe sample, 0 for padding


def probe_slots(batch_size: int, delta_h: float, draws) -> ProbeSlots:
  """Slots of the evaluation batches `draws` (int [T]); M = ⌈n·δh⌉."""
  draws = np.asarray(draws, np.int64)
  m = max_probe_samples(batch_size, delta_h)
  position = np.zeros((len(draws), m), np.int32)
  weight = np.zeros((len(draws), m), np.float32)
  for row, draw in enumerate(draws):
    placed = probe_positions(batch_size, delta_h, int(draw))
    position[row, :len(placed)] = placed
    weight[row, :len(placed)] = 1.0
  return ProbeSlots(position, weight)


def realised_fraction(batch_size: int, delta_h: float, num_draws: int) -> float:
  """Probe samples placed over `num_draws` evaluation batches per sample evaluated: ⌊T·n·δh⌋ / (T·n)."""
  total = num_draws * batch_size
  return float(_placed_before(total, _as_fraction(delta_h))) / total


def check_mixing(batch_size: int, delta_h: float, num_draws: int) -> None:
  """Raise if a run of `num_draws` batches would never place a probe sample (χ would be a silent 0)."""
  if _placed_before(num_draws * batch_size, _as_fraction(delta_h)) == 0:
    need = int(np.ceil(1.0 / float(delta_h)))
    raise ValueError(f"batch_size={batch_size} × num_draws={num_draws} with delta_h={delta_h} places no probe "
                     f"sample (⌊draws·batch_size·δh⌋ = 0): evaluate at least {need} samples in all (raise "
                     f"batch_size or num_draws) or raise delta_h")


def mix(base, probe, delta_h: float):
  """Algorithm 1 on two whole datasets: sample j of the n = min(sizes) is the probe's where
  `mixing_pattern(n, delta_h)` says so, else the base's. Lists (or tuples) of samples give a list; an array,
  or a dict of arrays with a leading sample axis (the estimators' data), gives the same kind."""
  if isinstance(base, (list, tuple)):
    n = min(len(base), len(probe))
    take_probe = mixing_pattern(n, delta_h)
    return [probe[j] if take_probe[j] else base[j] for j in range(n)]
  if isinstance(base, dict):
    if set(base) != set(probe):
      raise ValueError(f"mix: base has keys {sorted(base)}, probe {sorted(probe)}")
    n = min(min(len(a) for a in base.values()), min(len(a) for a in probe.values()))
    take_probe = mixing_pattern(n, delta_h)
    return {key: _take(take_probe, np.asarray(base[key]), np.asarray(probe[key])) for key in base}
  n = min(len(base), len(probe))
  return _take(mixing_pattern(n, delta_h), np.asarray(base), np.asarray(probe))


def _take(take_probe, base, probe):
  n = len(take_probe)
  return np.where(take_probe.reshape((n,) + (1,) * (base.ndim - 1)), probe[:n], base[:n])


_U64 = np.uint64


def _splitmix64(x):
  """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic): a fast, well-mixed counter hash."""
  with np.errstate(over="ignore"):
    z = np.asarray(x, _U64) + _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def epoch_permutations(seed, epochs, num_samples: int) -> np.ndarray:
  """int64 [len(epochs), num_samples]: the permutation of every epoch, a pure function of (seed…, epoch).

  Sorting hashed counters gives every epoch its own uniformly random permutation, many epochs at once
  (a full-batch run starts a new epoch every step, thousands per run).
  """
  state = _U64(0)
  for word in np.atleast_1d(seed):
    state = _splitmix64(state ^ _U64(int(word) & 0xFFFFFFFFFFFFFFFF))
  epoch_keys = _splitmix64(state ^ np.asarray(epochs, np.int64).astype(_U64))
  with np.errstate(over="ignore"):
    keys = _splitmix64(epoch_keys[:, None] + np.arange(num_samples, dtype=_U64)[None, :])
  return np.argsort(keys, axis=1, kind="stable")


class BatchSchedule:
  """Batch indices per global step: consecutive slices of a fresh permutation every epoch."""

  def __init__(self, num_samples: int, batch_size: int, seed, name: str = "data"):
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    if num_samples < batch_size:
      raise ValueError(f"{name} has {num_samples} samples, fewer than batch_size={batch_size}")
    self.num_samples, self.batch_size = num_samples, batch_size
    self.seed = tuple(int(s) for s in np.atleast_1d(seed))
    self.steps_per_epoch = num_samples // batch_size
    self._epoch, self._perm = None, None

  def indices(self, step: int) -> np.ndarray:
    """int64 [batch_size] sample indices for a global step."""
    return self.indices_many([step])[0]

  def indices_many(self, steps) -> np.ndarray:
    """int64 [len(steps), batch_size] for several global steps (in any order)."""
    steps = np.asarray(steps, np.int64).reshape(-1)
    epochs, offsets = np.divmod(steps, self.steps_per_epoch)
    unique, inverse = np.unique(epochs, return_inverse=True)
    if len(unique) == 1 and unique[0] == self._epoch:
      perms = self._perm[None]
    else:
      perms = epoch_permutations(self.seed, unique, self.num_samples)
      self._epoch, self._perm = int(unique[-1]), perms[-1]
    cols = offsets[:, None] * self.batch_size + np.arange(self.batch_size)[None, :]
    return perms[inverse[:, None], cols]
