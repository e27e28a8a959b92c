"""Streaming moments and the estimators built from them: χ (eq. 41) and the LLC.

Per draw t of chain k of component C the sampler produces φ_t = L_B(w_t) − L_B(w*) and, per probe d,
ΔL_t^d. Accumulators keep running means and co-moments (Welford: numerically stable in float32,
memory independent of the number of draws) per entry (= component × chain) and probe. The same update
serves per-token susceptibilities, where "probe" becomes "token".

A y value can be missing for a draw (a probe sample whose loss is not finite): then that draw is left
out of that y's moments only, so each y keeps its own count and its own ⟨φ⟩ over the draws it saw.

Estimates, from the per-chain moments (host side, float64):
  χ_{C,k}^d  = −⟨φ·ΔL^d⟩_{C,k} + ⟨φ⟩_{C,k}·⟨ΔL^d⟩_{full,k}          ("eq41", App. C.1)
             = −Cov_{C,k}(φ, ΔL^d) − ⟨φ⟩_{C,k}·(⟨ΔL^d⟩_{C,k} − ⟨ΔL^d⟩_{full,k})
  (chain k of C is paired with chain k of the full model, and both read data stream k, so the
  per-chain estimates are independent and carry the batch noise)
  "covariance": −Cov_{C,k}(φ, ΔL^d);  scale_by_delta_h divides by the realised probe fraction (Remark 3.1)
  λ̂_{C,k}   = nβ·⟨φ⟩_{C,k}
χ_C and λ̂_C average the non-diverged chains; error bars are the standard error across those chains,
and intervals use Student-t quantiles with (chains behind the value − 1) degrees of freedom.

Shape letters: E entries (component-major (component, chain) pairs), C components, K chains, Q query and S
sample values of the cross-moments.
"""
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import scipy.special

CHI_FORMS = ("eq41", "covariance")


class Moments(NamedTuple):
  """Running moments over draws for E entries; y has trailing axes (probes, tokens, …)."""

  count: jnp.ndarray  # int32 [E]      draws accumulated
  mean_x: jnp.ndarray  # [E]           ⟨φ⟩
  m2_x: jnp.ndarray  # [E]             Σ(φ − ⟨φ⟩)²
  count_y: jnp.ndarray  # int32 [E, ...] draws in which y was present
  mean_x_y: jnp.ndarray  # [E, ...]    ⟨φ⟩ over those draws
  mean_y: jnp.ndarray  # [E, ...]      ⟨y⟩
  comoment: jnp.ndarray  # [E, ...]    Σ(φ − ⟨φ⟩)(y − ⟨y⟩) over those draws


def init_moments(num_entries: int, y_shape: tuple = (), dtype=np.float32) -> Moments:
  """Empty moments (host arrays: placing them on devices compiles nothing), in `dtype` (float64 where the loss
  is, under JAX's x64 mode: `batched.statistics_dtype`)."""
  zeros = lambda *s: np.zeros((num_entries, *s), dtype)
  count = lambda *s: np.zeros((num_entries, *s), np.int32)
  return Moments(count=count(), mean_x=zeros(), m2_x=zeros(), count_y=count(*y_shape), mean_x_y=zeros(*y_shape),
                 mean_y=zeros(*y_shape), comoment=zeros(*y_shape))


def expand_like(a, like):
  """`a` [E] (or [E, ...]) with trailing unit axes, to broadcast against `like` [E, ..., more]."""
  return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def update_moments(m: Moments, x_E, y_Ex, active_E, present_Ex=None) -> Moments:
  """Welford update with one draw (x [E], y [E, ...]) for the active entries; y only where present. The values
  are taken in the moments' dtype."""
  dtype = m.mean_x.dtype
  x_E, y_Ex = jnp.asarray(x_E, dtype), jnp.asarray(y_Ex, dtype)
  count = m.count + active_E.astype(jnp.int32)
  n = jnp.maximum(count, 1).astype(dtype)
  dx = x_E - m.mean_x
  mean_x = m.mean_x + dx / n
  m2_x = m.m2_x + dx * (x_E - mean_x)
  keep = lambda new, old, on: jnp.where(expand_like(on, new), new, old)

  use_y = expand_like(active_E, y_Ex) if present_Ex is None else expand_like(active_E, y_Ex) & present_Ex
  use_y = jnp.broadcast_to(use_y, y_Ex.shape)
  y = jnp.where(use_y, y_Ex, 0.0)  # a missing y may be NaN: keep it out of the arithmetic
  count_y = m.count_y + use_y.astype(jnp.int32)
  n_y = jnp.maximum(count_y, 1).astype(dtype)
  x_Ex = expand_like(x_E, y_Ex)
  dx_y = x_Ex - m.mean_x_y
  mean_x_y = m.mean_x_y + dx_y / n_y
  mean_y = m.mean_y + (y - m.mean_y) / n_y
  comoment = m.comoment + dx_y * (y - mean_y)
  return Moments(count=count, mean_x=keep(mean_x, m.mean_x, active_E), m2_x=keep(m2_x, m.m2_x, active_E),
                 count_y=count_y, mean_x_y=jnp.where(use_y, mean_x_y, m.mean_x_y),
                 mean_y=jnp.where(use_y, mean_y, m.mean_y), comoment=jnp.where(use_y, comoment, m.comoment))


class CrossMoments(NamedTuple):
  """Running moments of two observed vectors q [E, Q] and s [E, S] over draws: enough for their covariance
  and correlation (Bayesian influence functions) in O(E·Q·S) memory, however many draws."""

  count: jnp.ndarray  # int32 [E]   draws accumulated
  mean_q: jnp.ndarray  # [E, Q]
  m2_q: jnp.ndarray  # [E, Q]       Σ(q − ⟨q⟩)²
  mean_s: jnp.ndarray  # [E, S]
  m2_s: jnp.ndarray  # [E, S]
  comoment: jnp.ndarray  # [E, Q, S]  Σ(q − ⟨q⟩)(s − ⟨s⟩)
  bad_q: jnp.ndarray  # bool [E, Q]  not finite at some draw: its moments (and its pairs') are not estimates
  bad_s: jnp.ndarray  # bool [E, S]


def init_cross_moments(num_entries: int, num_q: int, num_s: int, dtype=np.float32) -> CrossMoments:
  """Empty co-moments (host arrays), in `dtype` (as `init_moments`)."""
  z = lambda *shape: np.zeros((num_entries, *shape), dtype)
  return CrossMoments(count=np.zeros((num_entries,), np.int32), mean_q=z(num_q), m2_q=z(num_q), mean_s=z(num_s),
                      m2_s=z(num_s), comoment=z(num_q, num_s), bad_q=np.zeros((num_entries, num_q), bool),
                      bad_s=np.zeros((num_entries, num_s), bool))


def update_cross_moments(m: CrossMoments, q_ExQ, s_ExS, active_E) -> CrossMoments:
  """Welford's co-moment update with one draw, for the active entries (values taken in the co-moments' dtype).
  A value that is not finite marks itself bad for that entry (`bad_q`, `bad_s`) and stands in as its running
  mean, so the other values' moments stay exact: leaving the whole draw out for one sample's NaN computed every
  other pair on part of the posterior (a covariance 0.05 against 0.089), and on which part depended on which
  samples shared its chunk."""
  q_ExQ, s_ExS = jnp.asarray(q_ExQ, m.mean_q.dtype), jnp.asarray(s_ExS, m.mean_q.dtype)
  finite_q, finite_s = jnp.isfinite(q_ExQ), jnp.isfinite(s_ExS)
  bad_q = m.bad_q | (active_E[:, None] & ~finite_q)
  bad_s = m.bad_s | (active_E[:, None] & ~finite_s)
  q = jnp.where(active_E[:, None], jnp.where(finite_q, q_ExQ, m.mean_q), 0.0)
  s = jnp.where(active_E[:, None], jnp.where(finite_s, s_ExS, m.mean_s), 0.0)
  count = m.count + active_E.astype(jnp.int32)
  n = jnp.maximum(count, 1).astype(m.mean_q.dtype)[:, None]
  dq, ds = q - m.mean_q, s - m.mean_s
  mean_q, mean_s = m.mean_q + dq / n, m.mean_s + ds / n
  new = CrossMoments(count=count, mean_q=mean_q, m2_q=m.m2_q + dq * (q - mean_q), mean_s=mean_s,
                     m2_s=m.m2_s + ds * (s - mean_s), comoment=m.comoment + dq[:, :, None] * (s - mean_s)[:, None, :],
                     bad_q=bad_q, bad_s=bad_s)
  kept = (jnp.where(expand_like(active_E, new_a), new_a, old_a) for new_a, old_a in zip(new[1:], m[1:]))
  return CrossMoments(count, *kept)


def to_numpy(m):
  """Moments (or CrossMoments) as float64 / int64 (and bool) host arrays."""
  as_host = {"i": np.int64, "u": np.int64, "b": bool}
  return type(m)(*(np.asarray(a, as_host.get(np.asarray(a).dtype.kind, np.float64)) for a in m))


def select(m: Moments, index) -> Moments:
  """The moments of some entries (a slice or index array over the entry axis)."""
  return Moments(*(a[index] for a in m))


MIN_CHI_DRAWS = 2  # draws of a chain that observed y, for its χ (a covariance over draws)


def chi_per_chain(m: Moments, full_mean_y, *, form: str = "eq41"):
  """χ per entry [E, ...] from moments; `full_mean_y` = ⟨y⟩ of the paired full-model chain [E, ...]."""
  if form not in CHI_FORMS:
    raise ValueError(f"chi form {form!r}: expected one of {CHI_FORMS}")
  n = np.maximum(m.count_y, 1)
  cov = m.comoment / n
  chi = -cov if form == "covariance" else -cov - m.mean_x_y * (m.mean_y - full_mean_y)
  # Under two draws that observed y there is no estimate, not a χ of 0: a covariance over one draw is 0, and
  # "full"'s eq. 41 χ was exactly 0 ± 0 at num_draws=1, read as a measured 0.
  return np.where(m.count_y >= MIN_CHI_DRAWS, chi, np.nan)


def pooled_mean_y(m: Moments, valid_E) -> np.ndarray:
  """Draw-weighted ⟨y⟩ over the valid entries (e.g. the full model's non-diverged chains)."""
  w = np.where(expand_like(np.asarray(valid_E), m.count_y), m.count_y, 0).astype(np.float64)
  total = w.sum(axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, (w * m.mean_y).sum(axis=0) / np.maximum(total, 1), np.nan)


def mean_and_stderr(per_chain_K, valid_K):
  """Mean and standard error across the valid chains (axis 0), element by element: a NaN value (a chain that
  never observed that quantity, see `chi_per_chain`) is left out of its own element only. NaN mean with no
  chain left, NaN stderr with fewer than 2."""
  x = np.asarray(per_chain_K, np.float64)
  use = _chains_used(x, valid_K)
  n = use.sum(axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = np.where(use, x, 0.0).sum(axis=0) / n
    var = np.where(use, (x - mean) ** 2, 0.0).sum(axis=0) / (n - 1)
    return mean[()], np.where(n >= 2, np.sqrt(var / n), np.nan)[()]


def chains_behind(per_chain_K, valid_K):
  """The number of chains behind each element of `mean_and_stderr`'s result (the valid ones whose value is not
  NaN), what its Student-t interval's degrees of freedom follow: a probe or token only some chains observed has
  a standard error from those chains alone."""
  return _chains_used(np.asarray(per_chain_K, np.float64), valid_K).sum(axis=0)


def _chains_used(x_K, valid_K):
  """Which chains' values count, element by element: the valid chains' that are not NaN."""
  return expand_like(np.asarray(valid_K, bool), x_K) & ~np.isnan(x_K)


def jackknife_stderr(left_out_Kx, axis: int = 0):
  """The jackknife standard error from leave-one-chain-out replicates along `axis`: √((K − 1)/K · Σ_k (θ₋ₖ − θ̄)²)
  over the K finite ones (a NaN replicate: a chain outside the jackknife, e.g. a diverged one). For a plain mean
  it is exactly the chains' standard error of the mean; for a statistic whose parts all chains share it carries
  that part's noise too. NaN with fewer than 2 replicates."""
  x = np.asarray(left_out_Kx, np.float64)
  num = np.isfinite(x).sum(axis=axis)
  with np.errstate(invalid="ignore", divide="ignore"):
    centre = np.nansum(x, axis=axis, keepdims=True) / np.expand_dims(num, axis)
    spread = np.nansum((x - centre) ** 2, axis=axis)
    return np.where(num >= 2, np.sqrt((num - 1) / num * spread), np.nan)


def t_quantile(num_chains, level: float = 0.95):
  """Two-sided Student-t multiplier with (chains − 1) degrees of freedom: mean ± q·stderr covers `level`.

  With the paper's 4 chains q = 3.18 for 95 %, not 1.96: a standard error from 4 numbers is itself noisy.
  NaN with fewer than 2 chains.
  """
  dof = np.asarray(num_chains, np.float64) - 1
  with np.errstate(invalid="ignore"):
    return np.where(dof >= 1, scipy.special.stdtrit(np.maximum(dof, 1), 0.5 + level / 2), np.nan)


class ChiTable(NamedTuple):
  """χ of every probe × component for one estimator form."""

  chi: np.ndarray  # [P, C] mean over the non-diverged chains
  stderr: np.ndarray  # [P, C] standard error across those chains
  per_chain: np.ndarray  # [P, C, K]


def chi_table(moments, diverged_CxK, component_names, form, realised_fraction) -> ChiTable:
  """χ tables. Chain k of every component is paired with chain k of "full" for ⟨ΔL⟩_full (both read data
  stream k), so the per-chain estimates are independent and their spread carries the full chains'
  uncertainty and the batch noise. Where full chain k has no ⟨ΔL⟩ of its own (it diverged, or it observed that
  y at no draw: its mean_y is the accumulator's initial 0, not an estimate), the pooled mean of the full chains
  that have one stands in."""
  C, K = diverged_CxK.shape
  full = component_names.index("full")
  full_moments = select(moments, slice(full * K, (full + 1) * K))
  full_valid = ~diverged_CxK[full]
  pooled = pooled_mean_y(full_moments, full_valid)
  own_K = expand_like(full_valid, full_moments.count_y) & (full_moments.count_y > 0)
  full_mean_K = np.where(own_K, full_moments.mean_y, pooled)
  per_entry = chi_per_chain(moments, np.tile(full_mean_K, (C,) + (1,) * pooled.ndim), form=form)
  if realised_fraction is not None:
    per_entry = per_entry / realised_fraction
  per_chain = per_entry.reshape(C, K, -1).transpose(2, 0, 1)  # [P, C, K]
  chi, err = np.empty(per_chain.shape[:2]), np.empty(per_chain.shape[:2])
  for c in range(C):
    chi[:, c], err[:, c] = mean_and_stderr(per_chain[:, c, :].T, ~diverged_CxK[c])
  return ChiTable(chi, err, per_chain)


class LLCTable(NamedTuple):
  """The LLC of every component (λ̂ = nβ·⟨φ⟩; "full": the ordinary LLC, else weight-refined)."""

  llc: np.ndarray  # [C] mean over the non-diverged chains
  stderr: np.ndarray  # [C] standard error across those chains
  per_chain: np.ndarray  # [C, K]


def llc_table(moments, diverged_CxK, nbeta_C) -> LLCTable:
  """LLCs from the streamed moments of φ: nβ times each chain's ⟨φ⟩, averaged over the valid chains."""
  C, K = diverged_CxK.shape
  per_chain = np.asarray(nbeta_C, np.float64).reshape(-1, 1) * moments.mean_x.reshape(C, K)
  stats = [mean_and_stderr(per_chain[c], ~diverged_CxK[c]) for c in range(C)]
  return LLCTable(llc=np.array([s[0] for s in stats]), stderr=np.array([s[1] for s in stats]), per_chain=per_chain)
