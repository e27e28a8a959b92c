"""Convergence diagnostics of chains of draws (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021).

Traces are [K, T] (chains × draws), float. Each function drops chains that are not finite everywhere.
  rhat:      rank-normalised split-R̂, the larger of the bulk (ranks) and the tails (ranks of |x − median|)
             versions; flags chains that disagree in location or in scale. ≈ 1 is healthy; > 1.01–1.1 is not.
  ess_bulk:  effective sample size of the rank-normalised split chains (how precisely the mean is known).
  ess_tail:  the smaller ESS of the indicators x ≤ q05 and x ≤ q95 (how precisely the tails are known).
The autocorrelation sum uses Geyer's initial monotone sequence over the combined chains, as Stan does.
Written here rather than imported from ArviZ because the kernels stay free of ArviZ's dependency stack
(xarray et al.); the tests compare these numbers with ArviZ's.

Shape letters: K chains, T draws.
"""
import dataclasses

import numpy as np
import scipy.special  # (not scipy.stats: a third of the import time, paid by every run)


def _finite_chains(trace_KxT) -> np.ndarray:
  x = np.asarray(trace_KxT, np.float64)
  if x.ndim != 2:
    raise ValueError(f"a trace must be [chains, draws], got shape {x.shape}")
  return x[np.all(np.isfinite(x), axis=1)]


def _split(x_KxT) -> np.ndarray:
  """Each chain cut into its first and second half ([2K, T//2]; a middle draw is dropped)."""
  half = x_KxT.shape[1] // 2
  return np.concatenate([x_KxT[:, :half], x_KxT[:, x_KxT.shape[1] - half:]], axis=0)


def _rank_normalize(x_KxT) -> np.ndarray:
  """z-scores of the pooled ranks (fractional offset 3/8, as in the paper)."""
  ranks = _average_ranks(x_KxT.ravel()).reshape(x_KxT.shape)
  return scipy.special.ndtri((ranks - 0.375) / (x_KxT.size + 0.25))


def _average_ranks(x) -> np.ndarray:
  """Ranks 1..n of a 1-D array, ties sharing their mean rank (scipy.stats.rankdata's "average")."""
  _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  last = np.cumsum(counts)  # the rank of each distinct value's last occurrence
  return (last - (counts - 1) / 2.0)[inverse]


def _rhat_plain(x_KxT) -> float:
  k, t = x_KxT.shape
  within = x_KxT.var(axis=1, ddof=1).mean()
  between = t * x_KxT.mean(axis=1).var(ddof=1)
  if within == 0:
    return float("nan") if between == 0 else float("inf")
  return float(np.sqrt(((t - 1) / t * within + between / t) / within))


def rhat(trace_KxT) -> float:
  """Rank-normalised split-R̂ (max of bulk and folded); NaN with fewer than 4 draws per chain."""
  x = _finite_chains(trace_KxT)
  if x.shape[0] < 1 or x.shape[1] < 4:
    return float("nan")
  split = _split(x)
  if np.ptp(split) == 0:
    return float("nan")
  bulk = _rhat_plain(_rank_normalize(split))
  folded = _rhat_plain(_rank_normalize(np.abs(split - np.median(split))))
  return float(max(bulk, folded))


def _ess_plain(x_KxT) -> float:
  """ESS of [K, T] chains with Geyer's initial monotone sequence over the combined autocorrelations
  (Stan's estimator, as Vehtari et al. define it, including the positive even-lag term at the cut)."""
  k, t = x_KxT.shape
  if t < 4:
    return float("nan")
  centered = x_KxT - x_KxT.mean(axis=1, keepdims=True)
  f = np.fft.rfft(centered, n=2 * t, axis=1)
  acov_KxT = np.fft.irfft(f * np.conj(f), axis=1)[:, :t] / t
  within = (acov_KxT[:, 0] * t / (t - 1)).mean()
  if within == 0:
    return float("nan")
  var_plus = within * (t - 1) / t + (x_KxT.mean(axis=1).var(ddof=1) if k > 1 else 0.0)
  rho = 1.0 - (within - acov_KxT.mean(axis=0)) / var_plus
  rho[0] = 1.0
  pair_sums, tail = [rho[0] + rho[1]], 0.0
  for lag in range(2, t - 2, 2):  # pairs (lag, lag + 1) while their sum stays positive
    pair = rho[lag] + rho[lag + 1]
    if pair < 0:
      tail = max(rho[lag], 0.0)
      break
    pair_sums.append(pair)
    if pair == 0:
      break
  else:  # ran out of lags: the last pair counts by its even term only
    if len(pair_sums) > 1:
      last = pair_sums.pop()
      tail = max(last - rho[2 * len(pair_sums) + 1], 0.0)
  monotone = np.minimum.accumulate(np.asarray(pair_sums))
  tau = max(-1.0 + 2.0 * monotone.sum() + tail, 1.0 / np.log10(k * t))
  return float(k * t / tau)


def ess_bulk(trace_KxT) -> float:
  x = _finite_chains(trace_KxT)
  if x.shape[0] < 1 or x.shape[1] < 8 or np.ptp(x) == 0:
    return float("nan")
  return _ess_plain(_rank_normalize(_split(x)))


def ess_tail(trace_KxT) -> float:
  x = _finite_chains(trace_KxT)
  if x.shape[0] < 1 or x.shape[1] < 8 or np.ptp(x) == 0:
    return float("nan")
  ess = [_ess_plain(_split(x <= q).astype(np.float64)) for q in np.quantile(x, [0.05, 0.95])]
  return float(np.nanmin(ess)) if not np.all(np.isnan(ess)) else float("nan")


@dataclasses.dataclass
class ComponentDiagnostics:
  """What tells a user whether to trust one component's numbers."""

  loss_trace: np.ndarray  # [K, draws] L_B(w_t) per chain (thinned if long)
  phi_trace: np.ndarray  # [K, draws] φ_t per chain (thinned if long)
  r_hat: float  # rank-normalised split-R̂ of φ over non-diverged chains
  ess_bulk: float  # bulk ESS of φ
  ess_tail: float  # tail ESS of φ
  r_hat_chi: np.ndarray  # [P] R̂ of φ·ΔL^d per probe: what χ averages
  ess_bulk_chi: np.ndarray  # [P] bulk ESS of φ·ΔL^d per probe
  mala_acceptance: float  # mean MALA acceptance of SGLD steps (≈ 0.9 healthy; NaN if not measured)
  frac_phi_negative: float  # fraction of draws with φ < 0 (large: w* is not a local minimum)
  diverged_chains: list  # indices of chains excluded for divergence
  diverged_at_draw: list  # first draw at which each excluded chain diverged

  @property
  def ess(self) -> float:
    return self.ess_bulk

  def summary(self) -> dict:
    return {"r_hat": self.r_hat, "ess_bulk": self.ess_bulk, "ess_tail": self.ess_tail,
            "mala_acceptance": self.mala_acceptance, "frac_phi_negative": self.frac_phi_negative,
            "num_diverged": len(self.diverged_chains)}

  def __repr__(self) -> str:
    chi = ", ".join(f"{r:.3f}" for r in np.atleast_1d(self.r_hat_chi))
    return (f"ComponentDiagnostics(r_hat={self.r_hat:.3f}, ess_bulk={self.ess_bulk:.1f}, "
            f"ess_tail={self.ess_tail:.1f}, r_hat_chi=[{chi}], mala_acceptance={self.mala_acceptance:.3f}, "
            f"frac_phi_negative={self.frac_phi_negative:.3f}, diverged_chains={self.diverged_chains})")
