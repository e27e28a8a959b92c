"""Data mixing (the paper's Algorithm 1, App. C.4) and the batch schedule shared by all chains.

Algorithm 1 walks positions j = 0, 1, … and puts a probe sample at j exactly when ⌊(j+1)·δh⌋ grows,
so a batch of n holds ⌊n·δh⌋ probe samples, evenly spread, deterministically, and if the probe data
*is* the base data the mixed batch equals the base batch.

The schedule draws batch indices per step from epoch-wise permutations seeded by (seed, epoch): the
same on every device and after a resume, and identical for two datasets of equal size (which is what
makes a probe equal to the base data give ΔL ≡ 0 exactly).
"""
import fractions

import numpy as np


def _as_fraction(delta_h: float) -> fractions.Fraction:
  """δh as an exact fraction (0.1 -> 1/10) so ⌊j·δh⌋ has no floating-point surprises."""
  if not 0.0 < float(delta_h) < 1.0:
    raise ValueError(f"delta_h={delta_h} must lie strictly between 0 and 1")
  return fractions.Fraction(str(float(delta_h))).limit_denominator(10**9)


def mixing_pattern(length: int, delta_h: float) -> np.ndarray:
  """Algorithm 1 over `length` positions: bool [length], True where the probe sample is taken."""
  dh = _as_fraction(delta_h)
  j = np.arange(1, length + 1)
  target = (j * dh.numerator) // dh.denominator  # ⌊j·δh⌋ after taking position j-1
  previous = ((j - 1) * dh.numerator) // dh.denominator
  return target > previous


def probe_positions(batch_size: int, delta_h: float) -> np.ndarray:
  """Positions (int [m], m = ⌊batch_size·δh⌋) of a batch that Algorithm 1 gives to probe samples.

  Raises if m = 0: then no probe sample is ever placed and χ would be a silent 0.
  """
  positions = np.flatnonzero(mixing_pattern(batch_size, delta_h))
  if positions.size == 0:
    need = int(np.ceil(1.0 / float(delta_h)))
    raise ValueError(f"batch_size={batch_size} with delta_h={delta_h} places no probe sample "
                     f"(⌊batch_size·δh⌋ = 0): raise batch_size to at least {need} or raise delta_h")
  return positions


def mix(base, probe, delta_h: float):
  """Algorithm 1 on two whole sequences: the mixed list of length min(len(base), len(probe))."""
  n = min(len(base), len(probe))
  take_probe = mixing_pattern(n, delta_h)
  return [probe[j] if take_probe[j] else base[j] for j in range(n)]


class BatchSchedule:
  """Batch indices per global step: consecutive slices of a fresh permutation every epoch."""

  def __init__(self, num_samples: int, batch_size: int, seed: int, name: str = "data"):
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    if num_samples < batch_size:
      raise ValueError(f"{name} has {num_samples} samples, fewer than batch_size={batch_size}")
    self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
    self.steps_per_epoch = num_samples // batch_size
    self._epoch, self._perm = None, None

  def indices(self, step: int) -> np.ndarray:
    """int64 [batch_size] sample indices for a global step."""
    epoch, offset = divmod(int(step), self.steps_per_epoch)
    if epoch != self._epoch:
      self._epoch = epoch
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
    return self._perm[offset * self.batch_size:(offset + 1) * self.batch_size]
