"""Per-token susceptibilities (Definition 3.2, App. C.2): which tokens in which contexts a component responds to.

For every token i of a fixed set of observed contexts,
  χ_i = −⟨φ·(ℓ_i − L_B)⟩_C + ⟨φ⟩_C·⟨ℓ_i − L_B⟩_full    (per chain k, paired with full chain k)
with φ and L_B = L_{B_t}(w_t) exactly as in the dataset-level estimator: the same chains, the same per-chain
data streams, draws after updates. ℓ_i is the token's NLL at the draw. The moments stream on the device
(memory O(components × chains × tokens), never the draws); contexts are observed in chunks, each chunk
re-running the same (deterministic) chains, so the result does not depend on the chunking. With `probes`,
the first chunk also gives the dataset-level χ of those probes from the same chains (δh·mean_i χ_i ≈ χ,
eq. 45, on shared samples).

Shape letters: C components, K chains, O observed contexts, J token positions per context, P probes.
"""
import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from suscept_jax import api, batched, estimators, health, masks, mixing, reprs, sampler, sgld, validation
from suscept_jax.progress import over_chunks


@dataclasses.dataclass
class PerTokenResult:
  """χ for every component × observed token, with error bars, the LLCs and the sampler's diagnostics."""
  __repr__ = reprs.compact_repr  # (the numbers and the arrays' shapes, not every value)

  chi: np.ndarray  # [C, O, J] per-token χ (mean over non-diverged chains)
  chi_stderr: np.ndarray  # [C, O, J] standard error across chains
  chi_per_chain: np.ndarray  # [C, K, O, J]
  loss_at_star: np.ndarray  # [O, J] each token's NLL at w* (the checkpoint)
  component_names: list
  llc: np.ndarray  # [C] from the same chains
  llc_stderr: np.ndarray  # [C]
  diagnostics: dict  # component -> diagnostics.ComponentDiagnostics (of the first chunk's run)
  status: dict  # component -> "ok" or the failed health tests of its chains
  warnings: list
  dataset: Any  # api.SusceptibilityResult of `probes` from the same chains, or None
  config: sgld.SGLDConfig
  batch_size: int
  num_chunks: int
  seconds: float

  def interval(self, level: float = 0.95) -> np.ndarray:
    """[C, O, J] half-widths of Student-t intervals (d.o.f.: the chains behind the token's χ − 1, as the cell's
    of `api.SusceptibilityResult.interval`)."""
    return estimators.t_quantile(self.chains_behind(), level) * self.chi_stderr

  def chains_behind(self) -> np.ndarray:
    """[C, O, J] the valid chains that observed each token (`estimators.chains_behind`): its error bar's."""
    return estimators.chains_behind(np.moveaxis(self.chi_per_chain, 1, 0), self.valid_chains().T)

  def valid_chains(self) -> np.ndarray:
    """[C, K] the chains that did not diverge (their values count; the others' are NaN below)."""
    return np.array([[k not in self.diagnostics[c].diverged_chains for k in range(self.chi_per_chain.shape[1])]
                     for c in self.component_names])

  def context_means_per_chain(self) -> np.ndarray:
    """[C, K, O] each context's mean per-token χ on each chain, NaN for a diverged chain: what a chain (or context)
    resampling of anything averaged over tokens needs, at O(contexts) instead of O(tokens) memory."""
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # a context no token of which a chain observed: NaN
      means_CxKxO = np.nanmean(self.chi_per_chain.reshape(self.chi_per_chain.shape[:3] + (-1,)), axis=-1)
    return np.where(self.valid_chains()[..., None], means_CxKxO, np.nan)

  def position_sums_leaving_out_chains(self, contexts=slice(None)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """([C, K + 1, J] × 3) at each position, over the `contexts` (an index into the observed ones): the sum, the sum
    of squares and the count (finite values) of the per-token χ averaged over the valid chains but chain k, for
    each k, and (k = K) over all of them; zeros where k diverged. In float64 (the variance is a difference of sums).
    What the jackknife over chains of the mean and variance by position needs (`token_stats.position_profiles`),
    additive over chunks of contexts."""
    valid_CxK = self.valid_chains()
    x_CxKxOxJ = np.where(valid_CxK[..., None, None], np.asarray(self.chi_per_chain[:, :, contexts], np.float64),
                         np.nan)
    finite_CxKxOxJ = np.isfinite(x_CxKxOxJ)
    total_CxOxJ, n_CxOxJ = np.nansum(x_CxKxOxJ, axis=1), finite_CxKxOxJ.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
      means_CxLxOxJ = np.concatenate([(total_CxOxJ[:, None] - np.where(finite_CxKxOxJ, x_CxKxOxJ, 0.0))
                                      / (n_CxOxJ[:, None] - finite_CxKxOxJ), (total_CxOxJ / n_CxOxJ)[:, None]], axis=1)
    means_CxLxOxJ[:, :-1][~valid_CxK] = np.nan
    means_CxLxOxJ[~np.isfinite(means_CxLxOxJ)] = np.nan
    kept = np.isfinite(means_CxLxOxJ)
    return (np.where(kept, means_CxLxOxJ, 0.0).sum(axis=2), np.where(kept, means_CxLxOxJ ** 2, 0.0).sum(axis=2),
            kept.sum(axis=2))

  def sign_totals_per_chain(self, groups_OxJ=None) -> tuple[np.ndarray, np.ndarray]:
    """([C, K, G], [C, K, G]) each context's (or group's: `sign_sums_per_chain`) per-token χ on each chain summed
    over its tokens of each sign: what the error bars of Table 1 and of Fig. 10 need (`token_stats.sign_totals`,
    `token_stats.totals`)."""
    return sign_sums_per_chain(self.chi_per_chain, self.valid_chains(), groups_OxJ)

  def dataset_chi_per_chain(self) -> np.ndarray | None:
    """[P, C, K] the dataset-level χ of `probes` on each chain, NaN for a diverged chain (None without probes)."""
    if self.dataset is None:
      return None
    return np.where(self.valid_chains()[None], self.dataset.chi_per_chain, np.nan)


def sign_sums_per_chain(chi_per_chain_CxKxOxJ, valid_CxK, groups_OxJ=None) -> tuple[np.ndarray, np.ndarray]:
  """([C, K, G], [C, K, G]): each group's per-token χ on each chain, summed over its tokens whose χ (the mean over
  the valid chains) is positive, and over those whose χ is negative; NaN for an invalid chain. Groups: each
  token's integer label in [0, G) (e.g. its token type), by default its context (G = O). Their means over chains
  are the group's total positive and negative χ, their spread the totals' first-order chain noise. A value a
  chain lacks (it never observed that token) counts as the mean; a token no chain observed counts for neither."""
  x_CxKxOxJ = np.asarray(chi_per_chain_CxKxOxJ, np.float64)
  C, K, O = x_CxKxOxJ.shape[:3]
  valid_CxK = np.asarray(valid_CxK, bool)
  chi_CxOxJ = estimators.mean_and_stderr(np.moveaxis(x_CxKxOxJ, 1, 0), valid_CxK.T)[0]
  filled_CxKxN = np.where(np.isnan(x_CxKxOxJ), chi_CxOxJ[:, None], x_CxKxOxJ).reshape(C, K, -1)
  groups_N = (np.repeat(np.arange(O), filled_CxKxN.shape[-1] // O) if groups_OxJ is None
              else np.asarray(groups_OxJ).reshape(-1))
  G = int(groups_N.max()) + 1 if groups_N.size else 0

  def sums(picked_CxOxJ):
    kept_CxKxN = np.where(picked_CxOxJ.reshape(C, 1, -1), filled_CxKxN, 0.0)
    return np.stack([[np.bincount(groups_N, kept_CxKxN[c, k], G) for k in range(K)] for c in range(C)])

  return tuple(np.where(valid_CxK[..., None], sums(picked), np.nan) for picked in (chi_CxOxJ > 0, chi_CxOxJ < 0))


def estimate_per_token_susceptibilities(
    loss_fn: Callable, token_loss_fn: Callable, params, components: Mapping[str, Any], base, contexts, *,
    probes: Mapping[str, Any] | None = None, config: sgld.SGLDConfig | None = None, batch_size: int = 16,
    delta_h: float = 0.1, seed: int = 0, contexts_per_chunk: int | None = None, microbatch_size: int | None = None,
    observed_microbatch: int | None = None, mesh=None, checkpoint_id: int = 0, progress=True,
    base_name: str = "base data", restrict_gradients: bool = True) -> PerTokenResult:
  """Per-token χ of every observed token for every component (Definition 3.2; paper: 100 draws, batch 16).

  loss_fn(params, batch) -> per-sample losses [B] (drives SGLD, as in `estimate_susceptibilities`);
  token_loss_fn(params, contexts) -> per-token losses [B, J]; contexts: pytree with leading axis O.
  restrict_gradients: as in `estimate_susceptibilities`.
  progress: True (one bar over every chunk), False, or the caller's bar (anything with `update`), which
    advances by config.num_steps per chunk of contexts.
  observed_microbatch: contexts evaluated at a time at each draw; None: on CPU about 128 token losses' worth
    (`programs.observed_microbatch_for`), on accelerators all of a chunk at once.
  """
  config = validation.sgld_config_or(config, sgld.SGLDConfig(num_draws=100))
  validation.check_seed(seed)
  validation.check_batching(batch_size, microbatch_size)
  validation.check_count_or_none("observed_microbatch", observed_microbatch)
  if not isinstance(components, Mapping) or "full" not in components:
    raise ValueError("components must be a mapping that contains 'full' "
                     "(⟨ℓ_i − L_B⟩_full comes from its chains)")
  validation.check_params(params)
  validation.check_dataset(base_name, base, batch_size)
  num_contexts = validation.check_dataset("contexts", contexts, 1)
  validation.check_full_is_full(components, params)
  if probes:
    mixing.check_mixing(batch_size, delta_h, config.num_draws)
    for name, probe in probes.items():
      validation.check_dataset(f"probe {name!r}", probe, batch_size, like=base,
                               why_batch=validation.PROBE_SIZE_WHY)
  component_names, masks_C = masks.stack_masks(components, params)
  validation.check_loss_fn(loss_fn, params, base)
  token_shape = validation.check_token_loss_fn(token_loss_fn, params, contexts)
  validation.check_count_or_none("contexts_per_chunk", contexts_per_chunk, "all at once")
  chunk = min(num_contexts, contexts_per_chunk or num_contexts)
  validation.preflight(loss_fn, params, {base_name: base, **{f"probe {k!r}": v for k, v in (probes or {}).items()}},
                       batch_size=batch_size, num_streams=config.num_chains, seed=seed, checkpoint_id=checkpoint_id,
                       config=config, microbatch_size=microbatch_size)
  loss_at_star = np.asarray(batched.losses_at(token_loss_fn, params, contexts, observed_microbatch))
  bad = np.flatnonzero(~np.all(np.isfinite(loss_at_star.reshape(num_contexts, -1)), axis=1))
  if bad.size:
    raise batched.DataFaultError(f"contexts: the token losses at w* are not finite in context(s) "
                                 f"{bad[:20].tolist()}: a fault of the data (for a language model, e.g. token ids "
                                 f"outside its vocabulary). Fix or remove them.")

  C, K = len(component_names), config.num_chains
  num_chunks = math.ceil(num_contexts / chunk)
  per_chain_chunks, short_chunks, dataset, first, seconds = [], [], None, None, 0.0
  for i, chunk_progress in over_chunks(progress, num_chunks, config.num_steps, "per-token"):
    out = sampler.run(loss_fn, params, component_names, masks_C, base, probes if (probes and i == 0) else {},
                      config=config, batch_size=batch_size, delta_h=delta_h if (probes and i == 0) else None, seed=seed,
                      checkpoint_id=checkpoint_id, microbatch_size=microbatch_size, mesh=mesh,
                      progress=chunk_progress, label="per-token",
                      base_name=base_name, observed=batched.padded_rows(contexts, i * chunk, chunk, num_contexts),
                      token_loss_fn=token_loss_fn, observed_microbatch=observed_microbatch,
                      restrict_gradients=restrict_gradients)
    diverged = out.diverged.reshape(C, K)
    table = estimators.chi_table(out.token_moments, diverged, component_names, "eq41", None)
    per_chain_chunks.append(table.per_chain.reshape(chunk, *token_shape[1:], C, K))  # [O', J, C, K]
    m = out.token_moments  # a token of a live chain short of draws: its loss was not finite at some of them
    short = (estimators.expand_like(m.count, m.count_y) > m.count_y) & estimators.expand_like(~out.diverged, m.count_y)
    short_chunks.append(np.moveaxis(short.reshape(C, K, chunk, -1), (0, 1), (-2, -1)))  # [O', J', C, K]
    seconds += out.seconds
    if i == 0:
      first = out
  per_chain = np.concatenate(per_chain_chunks)[:num_contexts]  # [O, J, C, K]
  per_chain_CxKxOxJ = np.moveaxis(per_chain, (-2, -1), (0, 1))
  short_OxJxC = np.concatenate(short_chunks)[:num_contexts].any(axis=-1)
  short_OxJxC |= short_OxJxC[..., component_names.index("full"), None]  # (eq. 41 reads ⟨ℓ_i − L⟩ off "full")
  short_tokens_C = short_OxJxC.sum(axis=(0, 1))
  diverged = first.diverged.reshape(C, K)
  chi = np.empty(per_chain_CxKxOxJ.shape[:1] + per_chain_CxKxOxJ.shape[2:])
  err = np.empty_like(chi)
  for c in range(C):
    chi[c], err[c] = estimators.mean_and_stderr(per_chain_CxKxOxJ[c], ~diverged[c])
  llc, llc_err, _ = estimators.llc_table(first.moments, diverged, np.full(C, config.nbeta))
  diags = {name: api._component_diagnostics(first, c, K) for c, name in enumerate(component_names)}
  full_diverged = diverged[component_names.index("full")].all()  # (then no token's χ is defined)
  undefined_C = (np.isnan(chi.reshape(C, num_contexts, -1)) & ~np.moveaxis(short_OxJxC, -1, 0)).sum(axis=(1, 2))
  comp_flags = [health.component_flags(diags[name], llc[c], K, health.phi_steps(llc[c] / config.nbeta,
                                                                                first.loss_star_trace))
                + ([health.FULL_DIVERGED] if full_diverged and not diverged[c].all() else [])
                + health.token_flags(int(short_tokens_C[c]),
                                     0 if full_diverged or diverged[c].all() else int(undefined_C[c]))
                for c, name in enumerate(component_names)]
  warnings = api._divergence_warnings(component_names, diags, K)
  warnings += api._health_warnings(component_names, comp_flags, [], [])
  if probes:
    dataset = api.result_from_output(first, loss_fn, params, component_names, probes, config=config,
                                     batch_size=batch_size, delta_h=delta_h, chi_form="eq41",
                                     scale_by_delta_h=False, microbatch_size=microbatch_size, emit=False)
  api._emit(warnings)
  return PerTokenResult(
      chi=chi, chi_stderr=err, chi_per_chain=per_chain_CxKxOxJ, loss_at_star=loss_at_star,
      component_names=component_names, llc=llc, llc_stderr=llc_err, diagnostics=diags,
      status={name: health.status(flags) for name, flags in zip(component_names, comp_flags)},
      warnings=warnings, dataset=dataset, config=config, batch_size=batch_size, num_chunks=num_chunks,
      seconds=seconds)
