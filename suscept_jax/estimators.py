"""Streaming moments and the estimators built from them: χ (eq. 41), LLC, and sampler diagnostics.

Per draw t of chain k of component C the sampler produces φ_t = L_B(w_t) − L_B(w*) and, per probe d,
ΔL_t^d. Accumulators keep running means and co-moments (Welford: numerically stable in float32,
memory independent of the number of draws) per entry (= component × chain) and probe. The same update
serves per-token susceptibilities, where "probe" becomes "token".

Estimates, from the per-chain moments (host side, float64):
  χ_{C,k}^d  = −⟨φ·ΔL^d⟩_{C,k} + ⟨φ⟩_{C,k}·⟨ΔL^d⟩_{full,k}          ("eq41", App. C.1)
             = −Cov_{C,k}(φ, ΔL^d) − ⟨φ⟩_{C,k}·(⟨ΔL^d⟩_{C,k} − ⟨ΔL^d⟩_{full,k})
  (chain k of C is paired with chain k of the full model, so per-chain estimates are independent)
  "covariance": −Cov_{C,k}(φ, ΔL^d);  scale_by_delta_h divides by the realised fraction m/n (Remark 3.1)
  λ̂_{C,k}   = nβ·⟨φ⟩_{C,k}
χ_C and λ̂_C average the non-diverged chains; error bars are the standard error across those chains.
"""
import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

CHI_FORMS = ("eq41", "covariance")


class Moments(NamedTuple):
  """Running moments over draws for E entries; y has trailing axes (probes, tokens, …)."""

  count: jnp.ndarray  # int32 [E] draws accumulated
  mean_x: jnp.ndarray  # [E]     ⟨φ⟩
  m2_x: jnp.ndarray  # [E]     Σ(φ − ⟨φ⟩)²
  mean_y: jnp.ndarray  # [E, ...] ⟨y⟩
  comoment: jnp.ndarray  # [E, ...] Σ(φ − ⟨φ⟩)(y − ⟨y⟩)


def init_moments(num_entries: int, y_shape: tuple = ()) -> Moments:
  zeros = lambda *s: jnp.zeros((num_entries, *s), jnp.float32)
  return Moments(jnp.zeros((num_entries,), jnp.int32), zeros(), zeros(), zeros(*y_shape), zeros(*y_shape))


def update_moments(m: Moments, x_E, y_Ex, active_E) -> Moments:
  """Welford update with one draw (x [E], y [E, ...]) for the entries where `active` is True."""
  expand = lambda a, like: a.reshape(a.shape + (1,) * (like.ndim - a.ndim))
  count = m.count + active_E.astype(jnp.int32)
  n = jnp.maximum(count, 1).astype(jnp.float32)
  dx = x_E - m.mean_x
  mean_x = m.mean_x + dx / n
  m2_x = m.m2_x + dx * (x_E - mean_x)
  mean_y = m.mean_y + (y_Ex - m.mean_y) / expand(n, y_Ex)
  comoment = m.comoment + expand(dx, y_Ex) * (y_Ex - mean_y)
  keep = lambda new, old: jnp.where(expand(active_E, new), new, old)
  return Moments(count, keep(mean_x, m.mean_x), keep(m2_x, m.m2_x), keep(mean_y, m.mean_y),
                 keep(comoment, m.comoment))


def to_numpy(m: Moments) -> Moments:
  return Moments(*(np.asarray(a, np.float64 if a.dtype != np.int32 else np.int64) for a in m))


def chi_per_chain(m: Moments, full_mean_y, *, form: str = "eq41"):
  """χ per entry [E, ...] from moments; `full_mean_y` = ⟨y⟩ of the paired full-model chain [E, ...]."""
  if form not in CHI_FORMS:
    raise ValueError(f"chi form {form!r}: expected one of {CHI_FORMS}")
  n = np.maximum(m.count, 1).reshape((-1,) + (1,) * (m.mean_y.ndim - 1))
  cov = m.comoment / n
  if form == "covariance":
    return -cov
  mean_x = m.mean_x.reshape(n.shape)
  return -cov - mean_x * (m.mean_y - full_mean_y)


def pooled_mean_y(m: Moments, valid_E) -> np.ndarray:
  """Draw-weighted ⟨y⟩ over the valid entries (e.g. the full model's non-diverged chains)."""
  w = np.where(valid_E, m.count, 0).astype(np.float64)
  if w.sum() == 0:
    return np.full(m.mean_y.shape[1:], np.nan)
  return np.tensordot(w, m.mean_y, axes=(0, 0)) / w.sum()


def mean_and_stderr(per_chain_K, valid_K):
  """Mean and standard error across valid chains (axis 0); stderr is NaN with < 2 valid chains."""
  x = np.asarray(per_chain_K, np.float64)[np.asarray(valid_K, bool)]
  if x.shape[0] == 0:
    nan = np.full(x.shape[1:], np.nan)
    return nan, nan
  mean = x.mean(axis=0)
  if x.shape[0] < 2:
    return mean, np.full(mean.shape, np.nan)
  return mean, x.std(axis=0, ddof=1) / np.sqrt(x.shape[0])


# ---- diagnostics on host-side traces ----------------------------------------------------------------

def split_rhat(trace_KxT) -> float:
  """Split-R̂ (Gelman et al.) of one scalar across chains; NaN when it cannot be computed."""
  x = np.asarray(trace_KxT, np.float64)
  x = x[np.all(np.isfinite(x), axis=1)]
  t = x.shape[1] // 2 if x.ndim == 2 else 0
  if x.shape[0] < 1 or t < 2 or (x.shape[0] < 2 and t < 2):
    return float("nan")
  halves = np.concatenate([x[:, :t], x[:, -t:]], axis=0)
  chain_means = halves.mean(axis=1)
  within = halves.var(axis=1, ddof=1).mean()
  between = t * chain_means.var(ddof=1)
  if within == 0:
    return float("nan") if between == 0 else float("inf")
  var_plus = (t - 1) / t * within + between / t
  return float(np.sqrt(var_plus / within))


def effective_sample_size(trace_KxT) -> float:
  """Multi-chain ESS with Geyer's initial monotone sequence (Stan's estimator, without ranks)."""
  x = np.asarray(trace_KxT, np.float64)
  x = x[np.all(np.isfinite(x), axis=1)]
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] < 4:
    return float("nan")
  k, t = x.shape
  centered = x - x.mean(axis=1, keepdims=True)
  f = np.fft.rfft(centered, n=2 * t, axis=1)
  acov = np.fft.irfft(f * np.conj(f), axis=1)[:, :t] / t  # [K, T]
  chain_var = acov[:, 0] * t / (t - 1)
  within = chain_var.mean()
  if within == 0:
    return float("nan")
  var_plus = within * (t - 1) / t + (x.mean(axis=1).var(ddof=1) if k > 1 else 0.0)
  rho = 1.0 - (within - acov.mean(axis=0)) / var_plus
  rho[0] = 1.0
  total, prev_pair = 0.0, np.inf
  for lag in range(0, t - 1, 2):
    pair = rho[lag] + rho[lag + 1]
    if pair < 0:
      break
    pair = min(pair, prev_pair)
    total += pair
    prev_pair = pair
  tau = max(-1.0 + 2.0 * total, 1.0 / np.log10(max(k * t, 10)))
  return float(k * t / tau)


@dataclasses.dataclass
class ComponentDiagnostics:
  """What tells a user whether to trust one component's numbers."""

  loss_trace: np.ndarray  # [K, draws] L_B(w_t) per chain (thinned if long)
  phi_trace: np.ndarray  # [K, draws] φ_t per chain (thinned if long)
  r_hat: float  # split-R̂ of φ across non-diverged chains (≈ 1 is healthy; > 1.1 suspicious)
  ess: float  # effective sample size of φ across non-diverged chains
  mala_acceptance: float  # mean MALA acceptance of SGLD steps (≈ 0.9 healthy; NaN if not measured)
  frac_phi_negative: float  # fraction of draws with φ < 0 (large: w* is not a local minimum)
  diverged_chains: list  # indices of chains excluded for divergence
  diverged_at_draw: list  # first draw at which each excluded chain diverged

  def summary(self) -> dict:
    return {"r_hat": self.r_hat, "ess": self.ess, "mala_acceptance": self.mala_acceptance,
            "frac_phi_negative": self.frac_phi_negative, "num_diverged": len(self.diverged_chains)}
