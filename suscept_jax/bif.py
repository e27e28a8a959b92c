"""Bayesian influence functions: the posterior covariance (and correlation) of losses between a set of query
tokens and a set of samples, streamed from the SGLD draws.

For query token q and sample token x, over the localized posterior of each component (default: the full
model), Cov_C(ℓ_q, ℓ_x) and Corr_C(ℓ_q, ℓ_x) — what devinterp's `bif()` reports, there from stored traces.
Here the sampler keeps running co-moments (estimators.CrossMoments) of the token losses at every draw, so
memory is O(components × chains × queries × samples per chunk) and never grows with the draws. Each chain gives its
own covariance; the estimate averages the non-diverged chains, with the standard error across them.

Queries and samples are two pytrees of contexts with the same structure and trailing shapes (they are
evaluated together in one batch). Shape letters: C components, K chains, Q query rows, S sample rows,
J loss positions per row (1 for per-sample losses).
"""
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from suscept_jax import api, batched, estimators, health, masks, reprs, sampler, sgld, validation
from suscept_jax.progress import over_chunks


@dataclasses.dataclass
class BIFResult:
  """Posterior covariance and correlation of losses, queries × samples, per component."""
  __repr__ = reprs.compact_repr  # (the numbers and the arrays' shapes, not every value)

  covariance: np.ndarray  # [C, Q, J, S, J] mean over non-diverged chains
  covariance_stderr: np.ndarray  # [C, Q, J, S, J] standard error across chains
  correlation: np.ndarray  # [C, Q, J, S, J] chain-mean covariance over the chain-mean standard deviations
  correlation_stderr: np.ndarray  # [C, Q, J, S, J] its standard error, leaving out one chain at a time
  component_names: list
  draws_used: np.ndarray  # [C, K] draws in each chain's moments (a query or sample token whose loss was not
  # finite at some draw of a chain is left out of that chain: NaN there, and counted in `status`)
  llc: np.ndarray  # [C] from the same chains
  llc_stderr: np.ndarray
  status: dict
  warnings: list
  config: sgld.SGLDConfig
  seconds: float


def _per_sample_as_tokens(loss_fn: Callable) -> Callable:
  """loss_fn's per-sample losses [B] as one 'token' per sample, [B, 1] (a fresh wrapper each call compiles once:
  the sampler keys programs by function_keys.function_key, which sees through the wrapper to loss_fn)."""
  return lambda params, batch: loss_fn(params, batch)[:, None]


def _concat_rows(a, b):
  return jax.tree.map(lambda x, y: np.concatenate([np.asarray(x), np.asarray(y)]), a, b)


class PairStatistics(NamedTuple):
  """One run's covariance and correlation over its first `kept` sample columns, chain-averaged."""

  covariance: np.ndarray  # [C, Q·J, kept]
  covariance_stderr: np.ndarray
  correlation: np.ndarray
  correlation_stderr: np.ndarray
  draws: np.ndarray  # [C, K]
  left_out_q: np.ndarray  # [C] query values (of Q·J) not finite at some draw of some valid chain
  left_out_s: np.ndarray  # [C] sample values (of the chunk's kept ones) likewise
  sd_q: np.ndarray  # [C, Q·J] posterior standard deviation of each query value (root of the chains' mean variance)
  sd_s: np.ndarray  # [C, kept]


def _pair_statistics(m: estimators.CrossMoments, diverged_CxK, C: int, K: int, kept: int) -> PairStatistics:
  """From one run's cross moments: per chain, then the mean over non-diverged chains with its standard error.
  A value not finite at some draw of a chain is left out of that chain (NaN there), with its pairs."""
  draws = np.asarray(m.count).reshape(C, K)
  denominator = np.maximum(np.asarray(m.count) - 1, 1).astype(np.float64)
  bad_q, bad_s = np.asarray(m.bad_q, bool), np.asarray(m.bad_s, bool)[:, :kept]
  cov_E = np.asarray(m.comoment)[:, :, :kept] / denominator[:, None, None]  # [E, Q·J, kept]
  cov_E = np.where(bad_q[:, :, None] | bad_s[:, None, :], np.nan, cov_E)
  sd_q_E = np.where(bad_q, np.nan, np.sqrt(np.asarray(m.m2_q) / denominator[:, None]))
  sd_s_E = np.where(bad_s, np.nan, np.sqrt(np.asarray(m.m2_s)[:, :kept] / denominator[:, None]))
  valid = ~diverged_CxK & (draws >= 2)
  left_out = lambda bad_ExN: (bad_ExN.reshape(C, K, -1) & valid[..., None]).any(axis=1).sum(-1)
  cov, cov_err, corr, corr_err = (np.empty((C,) + cov_E.shape[1:]) for _ in range(4))
  sd_q, sd_s = np.empty((C, cov_E.shape[1])), np.empty((C, cov_E.shape[2]))
  for c in range(C):
    rows = slice(c * K, (c + 1) * K)
    cov[c], cov_err[c] = estimators.mean_and_stderr(cov_E[rows], valid[c])
    var_q = estimators.mean_and_stderr(sd_q_E[rows] ** 2, valid[c])[0]
    var_s = estimators.mean_and_stderr(sd_s_E[rows] ** 2, valid[c])[0]
    sd_q[c], sd_s[c] = np.sqrt(var_q), np.sqrt(var_s)
    with np.errstate(invalid="ignore", divide="ignore"):
      corr[c] = cov[c] / np.sqrt(var_q[:, None] * var_s[None, :])
    corr_err[c] = _jackknife_correlation_stderr(cov_E[rows], sd_q_E[rows] ** 2, sd_s_E[rows] ** 2, valid[c])
  return PairStatistics(covariance=cov, covariance_stderr=cov_err, correlation=corr, correlation_stderr=corr_err,
                        draws=draws, left_out_q=left_out(bad_q), left_out_s=left_out(bad_s), sd_q=sd_q, sd_s=sd_s)


def _jackknife_correlation_stderr(cov_KxQxS, var_q_KxQ, var_s_KxS, valid_K) -> np.ndarray:
  """Standard error of the reported correlation (the chains' mean covariance over their mean standard
  deviations), by leaving out one valid chain at a time. The spread of the per-chain correlations is not it:
  near ±1 they are skewed and bunched, and their stderr under-stated the reported correlation's seed-to-seed
  spread by 1.5× at ρ = 0.99 (benchmarks/error_bar_calibration.py). NaN with fewer than 2 valid chains."""
  valid = np.asarray(valid_K, bool)
  n = int(valid.sum())
  if n < 2:
    return np.full(np.shape(cov_KxQxS)[1:], np.nan)
  cov, var_q, var_s = (np.asarray(a, np.float64)[valid] for a in (cov_KxQxS, var_q_KxQ, var_s_KxS))
  leave_out = lambda a: (a.sum(0, keepdims=True) - a) / (n - 1)  # [n, ...]: the mean without chain k
  with np.errstate(invalid="ignore", divide="ignore"):
    corr_nxQxS = leave_out(cov) / np.sqrt(leave_out(var_q)[:, :, None] * leave_out(var_s)[:, None, :])
  return np.sqrt((n - 1) / n * ((corr_nxQxS - corr_nxQxS.mean(0)) ** 2).sum(0))


def estimate_bif(loss_fn: Callable, params, base, queries, samples, *, token_loss_fn: Callable | None = None,
                 components: Mapping[str, Any] | None = None, config: sgld.SGLDConfig | None = None,
                 batch_size: int = 16, seed: int = 0, microbatch_size: int | None = None,
                 observed_microbatch: int | None = None, samples_per_chunk: int | None = None, mesh=None,
                 checkpoint_id: int = 0, progress=True, base_name: str = "base data") -> BIFResult:
  """Cov and Corr of the losses of every query token with every sample token under each component's posterior.

  loss_fn(params, batch) -> per-sample losses [B] drives SGLD on `base` (as in `estimate_susceptibilities`).
  token_loss_fn(params, contexts) -> per-token losses [B, J]; default: loss_fn's per-sample losses (J = 1).
  samples_per_chunk: samples observed per run; None: all at once. The co-moments take components × chains ×
    queries × samples floats per run, so a large sample set is taken in chunks, each re-running the same
    chains (the same numbers, more sampling time; the progress bar spans every chunk).
  progress: True, False, or the caller's bar, which advances by config.num_steps per chunk.
  """
  config = validation.sgld_config_or(config, sgld.SGLDConfig())
  validation.check_seed(seed)
  components = {"full": None} if components is None else components
  if not isinstance(components, Mapping) or not components:
    raise ValueError("components must be a non-empty mapping of name -> mask (None: the full model)")
  validation.check_batching(batch_size, microbatch_size)
  validation.check_count_or_none("observed_microbatch", observed_microbatch)
  validation.check_params(params)
  validation.check_dataset(base_name, base, batch_size)
  # Without a token_loss_fn, queries and samples go through loss_fn as base rows do: each is checked against base.
  like, like_name = (base, base_name) if token_loss_fn is None else (None, "")
  num_q = validation.check_dataset("queries", queries, 1, like=like, like_name=like_name)
  num_s = validation.check_dataset("samples", samples, 1, like=like if like is not None else queries,
                                   like_name=like_name or "queries")
  if "full" in components:
    validation.check_full_is_full(components, params)
  validation.check_count_or_none("samples_per_chunk", samples_per_chunk, "all at once")
  token_loss_fn = token_loss_fn or _per_sample_as_tokens(loss_fn)
  validation.check_loss_fn(loss_fn, params, base)
  token_shape = validation.check_token_loss_fn(token_loss_fn, params, queries)
  if validation.check_token_loss_fn(token_loss_fn, params, samples)[1:] != token_shape[1:]:
    raise ValueError("queries and samples must give losses of the same trailing shape per row")
  validation.preflight(loss_fn, params, {base_name: base}, batch_size=batch_size, num_streams=config.num_chains,
                       seed=seed, checkpoint_id=checkpoint_id, config=config, microbatch_size=microbatch_size)
  observed = _concat_rows(queries, samples)
  at_star = np.asarray(batched.losses_at(token_loss_fn, params, observed, observed_microbatch))
  bad = np.flatnonzero(~np.all(np.isfinite(at_star.reshape(num_q + num_s, -1)), axis=1))
  if bad.size:
    named = [f"query {i}" if i < num_q else f"sample {i - num_q}" for i in bad[:20]]
    raise batched.DataFaultError(f"the losses at w* are not finite for {', '.join(named)}: a fault of the data")

  component_names, masks_C = masks.stack_masks(components, params)
  C, K = len(component_names), config.num_chains
  chunk = min(num_s, samples_per_chunk or num_s)
  num_chunks = -(-num_s // chunk)
  parts, out = [], None
  for i, chunk_progress in over_chunks(progress, num_chunks, config.num_steps, "bif"):
    chunk_out = sampler.run(loss_fn, params, component_names, masks_C, base, {}, config=config,
                            batch_size=batch_size, delta_h=None, seed=seed, checkpoint_id=checkpoint_id,
                            microbatch_size=microbatch_size, mesh=mesh, progress=chunk_progress, label="bif",
                            base_name=base_name,
                            observed=_concat_rows(queries, batched.padded_rows(samples, i * chunk, chunk, num_s)),
                            token_loss_fn=token_loss_fn, observed_microbatch=observed_microbatch, pair_split=num_q)
    if out is None:  # the chains (hence the LLC and diagnostics) are the same in every chunk
      out = chunk_out
    kept = min(chunk, num_s - i * chunk) * int(np.prod(token_shape[1:], dtype=int))
    parts.append(_pair_statistics(chunk_out.pair_moments, chunk_out.diverged.reshape(C, K), C, K, kept))
  J = tuple(token_shape[1:])
  shape = (num_q, *J, num_s, *J)
  cov, cov_err, corr, corr_err = (np.concatenate([getattr(part, field) for part in parts], axis=-1).reshape(C, *shape)
                                  for field in PairStatistics._fields[:4])
  draws = np.min([part.draws for part in parts], axis=0)
  left_out_q, left_out_s = parts[0].left_out_q, np.sum([part.left_out_s for part in parts], axis=0)
  # values whose posterior spread is a few float steps of their size: their covariances are partly rounding
  steps = lambda sd_CxN, star: sd_CxN / np.spacing(np.abs(star.reshape(1, -1)))  # noqa: E731
  coarse_q = (steps(parts[0].sd_q, at_star[:num_q]) < health.MIN_PHI_STEPS).sum(-1)
  coarse_s = (steps(np.concatenate([part.sd_s for part in parts], -1), at_star[num_q:]) < health.MIN_PHI_STEPS).sum(-1)
  llc, llc_err, _ = estimators.llc_table(out.moments, out.diverged.reshape(C, K), np.full(C, config.nbeta))
  diags = {name: api._component_diagnostics(out, c, K) for c, name in enumerate(component_names)}
  comp_flags = [health.component_flags(diags[name], llc[c], K)
                + health.left_out_flags(int(left_out_q[c]), int(left_out_s[c]))
                + health.coarse_loss_flags(int(coarse_q[c]), int(coarse_s[c]))
                for c, name in enumerate(component_names)]
  warnings = api._divergence_warnings(component_names, diags, K) + api._health_warnings(component_names, comp_flags,
                                                                                          [], [])
  api._emit(warnings)
  return BIFResult(covariance=cov, covariance_stderr=cov_err, correlation=corr, correlation_stderr=corr_err,
                   component_names=component_names, draws_used=draws, llc=llc, llc_stderr=llc_err,
                   status={name: health.status(f) for name, f in zip(component_names, comp_flags)},
                   warnings=warnings, config=config, seconds=out.seconds)
