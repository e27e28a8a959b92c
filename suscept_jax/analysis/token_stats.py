"""Statistics of per-token susceptibilities: top tokens, totals, bimodal tokens, additivity (eq. 45), and the
per-token susceptibility vectors of the UMAP view. Pure functions of the tidy token table (see token_views)."""
import warnings
from typing import NamedTuple

import numpy as np
import scipy.special

from suscept_jax import estimators
from suscept_jax.analysis import structure


def head_rows(table, head: str):
  t = table[table.component == head]
  if not len(t):
    raise ValueError(f"head {head!r} is not in the per-token results (components: {sorted(set(table.component))})")
  return t


# ---- tables ---------------------------------------------------------------------------------------------

def top_tokens(table, head: str, dataset: str | None = None, *, k: int = 3, pool: int = 100,
               num_chains: int | None = None, level: float = 0.95):
  """(positive, negative): the top-k *distinct* tokens among the `pool` most positive (negative) per-token χ
  of a head (App. D's tables; a pool holds tokens of its sign only), with how often each occurs in the pool
  (Fig. 30's counts) and, given the head's count of valid chains, how many of those occurrences have a `level`
  interval clear of 0 (the pool is picked by the measured χ, so chain noise puts some tokens in it)."""
  t = table[table.component == head]
  if dataset is not None:
    t = t[t.dataset == dataset]
  out = []
  for frame in (t[t.chi > 0].nlargest(pool, "chi"), t[t.chi < 0].nsmallest(pool, "chi")):  # (each of its sign)
    aggregates = {"count": ("chi", "size"), "mean_chi": ("chi", "mean")}
    if num_chains is not None:
      frame = frame.assign(clear=clear_of_zero(frame, num_chains, level))
      aggregates["clear"] = ("clear", "sum")
    out.append(frame.groupby("token", sort=False).agg(**aggregates).reset_index().head(k))
  return tuple(out)


def clear_of_zero(rows, num_chains: int, level: float = 0.95) -> np.ndarray:
  """[N] whether each token row's `level` Student-t interval (χ ± t·stderr, K − 1 d.o.f.) excludes 0: K the chains
  behind the row (its num_chains column, where the table has it), else the head's `num_chains`."""
  chains = rows.num_chains.to_numpy() if "num_chains" in rows else num_chains
  return (rows.chi.abs() > estimators.t_quantile(chains, level) * rows.chi_stderr).to_numpy()


class TokenChains(NamedTuple):
  """Per chain, each token type's per-token χ summed over its occurrences of each sign (`per_token.
  sign_sums_per_chain` grouped by token id, summed over chunks): what Fig. 10's error bars need."""

  token_ids_V: np.ndarray  # [V] the token ids, ascending
  positive_CxKxV: np.ndarray
  negative_CxKxV: np.ndarray
  components: list  # [C]


def totals(table, token_chains: TokenChains | None = None, *, level: float = 0.95):
  """(per head: total positive and negative χ and their sum; per head × token type: the same, with the count, mean
  and std of its occurrences) (Table 1, Fig. 10). With `token_chains`, each token type's row also holds its noise
  floor and `level` intervals of its totals by sign and of its mean (`intervals_by_sign`)."""
  t = table.assign(positive=table.chi.clip(lower=0), negative=table.chi.clip(upper=0))
  per_head = t.groupby("component", sort=False)[["positive", "negative", "chi"]].sum()
  per_token = (t.groupby(["component", "token"], sort=False)
               .agg(positive=("positive", "sum"), negative=("negative", "sum"), count=("chi", "size"),
                    mean=("chi", "mean"), std=("chi", "std"),
                    **({} if token_chains is None else {"token_id": ("token_id", "first")}))
               .reset_index())
  if token_chains is None:
    return per_head, per_token
  ids_V = np.asarray(token_chains.token_ids_V)
  pos_CxKxV, neg_CxKxV = (np.asarray(a, np.float64) for a in (token_chains.positive_CxKxV, token_chains.negative_CxKxV))
  c_R = np.array([token_chains.components.index(c) for c in per_token.component])
  v_R = np.searchsorted(ids_V, per_token.token_id.to_numpy())
  floors = _floors(t, pos_CxKxV, token_chains.components, ["component", "token"])
  found = intervals_by_sign(pos_CxKxV[c_R, :, v_R].T, neg_CxKxV[c_R, :, v_R].T,
                            floors[list(zip(per_token.component, per_token.token))].to_numpy(), level)
  per_token = per_token.drop(columns="token_id").assign(**{k: v for k, v in found.items() if k != "chains"})
  count_R = per_token["count"].to_numpy()  # (the mean over occurrences is the sum's share: so is its interval)
  return per_head, per_token.assign(mean_low=per_token.sum_low / count_R, mean_high=per_token.sum_high / count_R)


def noise_floor_per_token(stderr, num_chains):
  """What chain noise alone adds to a total positive (and takes from a total negative) χ, per token, in expectation:
  E[max(ε, 0)] = σ/√(2π) for ε ~ N(0, σ²), with σ estimated by the token's standard error over K chains (÷ c4(K),
  since E[s] = c4·σ; c4(4) = 0.92). For a token whose true χ is μ the inflation is σ·(φ(μ/σ) − |μ|/σ·Φ(−|μ|/σ)),
  largest at μ = 0, so summed over tokens this bounds the inflation of a total: 0 ≤ E[total] − true total ≤ floor."""
  K = np.asarray(num_chains, np.float64)
  c4 = np.sqrt(2 / (K - 1)) * np.exp(scipy.special.gammaln(K / 2) - scipy.special.gammaln((K - 1) / 2))
  return np.asarray(stderr, np.float64) / (np.sqrt(2 * np.pi) * c4)


def intervals_by_sign(positive_KxN, negative_KxN, floor_N, level: float = 0.95) -> dict:
  """Totals by sign of N groups of tokens, from their per-chain values (NaN: an invalid chain), with `level`
  intervals for what endless chains would give on the same tokens: {positive, negative, sum, their _low, _high
  and _stderr, noise_floor, chains}.

  Two things move a total between runs. The chains' noise: each total's per-chain values (each chain's per-token
  χ summed over the tokens of that sign, `per_token.sign_sums_per_chain`) give its standard error, Student-t over
  the valid chains; for the sum, linear in the tokens, that is the whole story. And a bias: a token whose χ is
  noise is counted as positive when the noise is, so noise inflates both sign totals (they cancel in the sum).
  The bias lies between 0 and the noise floor (`noise_floor_per_token`), so the interval for a true total
  positive reaches the floor further down (the negative's, up; neither crosses 0). Coverage on synthetic
  truths: `benchmarks/totals_calibration.py`."""
  pos_KxN, neg_KxN = (np.asarray(a, np.float64) for a in (positive_KxN, negative_KxN))
  every = np.ones(len(pos_KxN), bool)  # (a NaN chain is left out by mean_and_stderr)
  (p, p_err), (n, n_err), (s, s_err) = (estimators.mean_and_stderr(a, every)
                                        for a in (pos_KxN, neg_KxN, pos_KxN + neg_KxN))
  chains_N = np.isfinite(pos_KxN).sum(0)
  q, floor = estimators.t_quantile(chains_N, level), np.asarray(floor_N, np.float64)
  return {"positive": p, "positive_low": np.maximum(p - floor - q * p_err, 0.0), "positive_high": p + q * p_err,
          "negative": n, "negative_low": n - q * n_err, "negative_high": np.minimum(n + floor + q * n_err, 0.0),
          "noise_floor": floor, "sum": s, "sum_low": s - q * s_err, "sum_high": s + q * s_err,
          "positive_stderr": p_err, "negative_stderr": n_err, "sum_stderr": s_err, "chains": chains_N}


def valid_chain_counts(per_chain_CxKxG) -> np.ndarray:
  """[C] each component's count of valid chains: those whose values are all finite (an invalid chain's are NaN)."""
  x = np.asarray(per_chain_CxKxG, np.float64)
  return np.isfinite(x.reshape(x.shape[0], x.shape[1], -1)).all(-1).sum(1)


def _floors(table, positive_CxKxG, components, keys):
  """The noise floor summed over each group of the table's rows (`keys`), at each component's count of valid
  chains (`valid_chain_counts`)."""
  valid_C = valid_chain_counts(positive_CxKxG)
  chains_R = valid_C[[components.index(c) for c in table.component]]
  floor_R = noise_floor_per_token(table.chi_stderr.to_numpy(np.float64), chains_R)
  return table.assign(floor=np.where(np.isfinite(table.chi), floor_R, 0.0)).groupby(keys, sort=False).floor.sum()


def sign_totals(table, positive_CxKxO, negative_CxKxO, context_datasets_O, components, datasets, delta_h: float, *,
                level: float = 0.95):
  """Table 1 with error bars: per component × dataset, the total positive and negative per-token χ over the
  observed tokens, their sum and scaled sum (δh·mean, eq. 45), with `level` intervals for the values a run with
  endless chains would give on the same tokens (`intervals_by_sign`), from each context's per-chain sums by sign
  (`PerTokenResult.sign_totals_per_chain`).

  Shape letters: C components, K chains, O observed contexts (their datasets: `context_datasets_O`), D datasets,
  N cells (component × dataset, in the table's order)."""
  import pandas as pd
  pos_CxKxO, neg_CxKxO = (np.asarray(a, np.float64) for a in (positive_CxKxO, negative_CxKxO))
  datasets_O = np.asarray(context_datasets_O)
  by_dataset = lambda v_CxKxO: np.stack([v_CxKxO[..., datasets_O == d].sum(-1) for d in datasets], -1)  # [C, K, D]
  cells = table.assign(tokens=np.isfinite(table.chi)).groupby(["component", "dataset"], sort=False).tokens.sum()
  c_N = np.array([components.index(c) for c, _ in cells.index])
  d_N = np.array([list(datasets).index(d) for _, d in cells.index])
  found = intervals_by_sign(by_dataset(pos_CxKxO)[c_N, :, d_N].T, by_dataset(neg_CxKxO)[c_N, :, d_N].T,
                            _floors(table, pos_CxKxO, components, ["component", "dataset"])[cells.index].to_numpy(),
                            level)
  scale_N = delta_h / cells.to_numpy()
  frame = pd.DataFrame({"component": [c for c, _ in cells.index], "dataset": [d for _, d in cells.index],
                        "tokens": cells.to_numpy(), **found})
  return frame.assign(scaled_sum=scale_N * frame["sum"], scaled_low=scale_N * frame.sum_low,
                      scaled_high=scale_N * frame.sum_high)


# ---- bimodal tokens ------------------------------------------------------------------------------------------

BIMODAL_MIN_DELTA_BIC = 10.0  # BIC(1 Gaussian) − BIC(2-Gaussian mixture) above this: "very strong" evidence
BIMODAL_MIN_WEIGHT = 0.1  # each mode must hold at least this share of the occurrences
BIMODAL_MIN_SEPARATION = 2.0  # Ashman's D = √2·|μ1 − μ2| / √(σ1² + σ2²): above 2, the modes are distinct


def position_profiles(sum_CxLxJ, sumsq_CxLxJ, count_CxLxJ, components, *, level: float = 0.95):
  """The mean and the variance of per-token χ at each position over the observed contexts, per component, each
  with the interval of what endless chains would give on these contexts (Table 1's convention), by a jackknife
  over the chains (Student-t, chains − 1 d.o.f.).

  The chains are shared by every context, so their noise does not average out over contexts; the jackknife keeps
  it. Chain noise also adds to each token's χ a variance that falls as 1/chains, which inflates the variance over
  contexts: the jackknife's bias correction (K·θ − (K − 1)·mean of the leave-one-out θ) removes exactly such a
  term. For the mean it changes nothing and the jackknife's error is the chains' standard error of the mean.

  sum_CxLxJ, sumsq_CxLxJ, count_CxLxJ: `PerTokenResult.position_sums_leaving_out_chains`, summed over chunks
  (L = K + 1: chain k left out, then none). A frame with component, position (1-based, as the token table's),
  mean, mean_low, mean_high, variance (as measured), variance_corrected, variance_low, variance_high, chains."""
  import pandas as pd
  s1, s2, n = (np.asarray(a, np.float64) for a in (sum_CxLxJ, sumsq_CxLxJ, count_CxLxJ))
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_CxLxJ = np.where(n > 0, s1 / n, np.nan)
    var_CxLxJ = np.where(n > 1, (s2 - s1 * s1 / n) / (n - 1), np.nan)
  columns = {}
  for name, theta_CxLxJ in (("mean", mean_CxLxJ), ("variance", var_CxLxJ)):
    point_CxJ, left_CxKxJ = theta_CxLxJ[:, -1], theta_CxLxJ[:, :-1]
    chains_CxJ = np.isfinite(left_CxKxJ).sum(axis=1)
    corrected_CxJ = chains_CxJ * point_CxJ - (chains_CxJ - 1) * _nanmean(left_CxKxJ, axis=1)
    half_CxJ = estimators.t_quantile(chains_CxJ, level) * estimators.jackknife_stderr(left_CxKxJ, axis=1)
    columns[name] = point_CxJ
    if name == "variance":
      columns["variance_corrected"] = corrected_CxJ
    columns[f"{name}_low"], columns[f"{name}_high"] = corrected_CxJ - half_CxJ, corrected_CxJ + half_CxJ
  C, J = mean_CxLxJ.shape[0], mean_CxLxJ.shape[-1]
  return pd.DataFrame({"component": np.repeat(list(components), J), "position": np.tile(np.arange(1, J + 1), C),
                       **{k: v.ravel() for k, v in columns.items()}, "chains": chains_CxJ.ravel()})


def _gaussian_mixture_2(x, iterations: int = 200):
  """(weights [2], means [2], stds [2], log-likelihood) of a 2-component 1-D mixture by EM (started at the
  quartiles). Written here: no mixture library is a dependency, and 1-D EM is twenty lines."""
  mu = np.quantile(x, [0.25, 0.75]).astype(np.float64)
  sd = np.full(2, max(x.std(), 1e-12) / 2)
  w = np.array([0.5, 0.5])
  for _ in range(iterations):
    log_p = np.log(w) - np.log(sd) - 0.5 * ((x[:, None] - mu) / sd) ** 2
    log_norm = np.logaddexp(log_p[:, 0], log_p[:, 1])
    r = np.exp(log_p - log_norm[:, None])
    n = r.sum(0) + 1e-12
    w, mu = n / len(x), (r * x[:, None]).sum(0) / n
    sd = np.sqrt(np.maximum((r * (x[:, None] - mu) ** 2).sum(0) / n, (1e-6 * x.std()) ** 2 + 1e-30))
  log_p = np.log(w) - np.log(sd) - 0.5 * ((x[:, None] - mu) / sd) ** 2 - 0.5 * np.log(2 * np.pi)
  return w, mu, sd, float(np.logaddexp(log_p[:, 0], log_p[:, 1]).sum())


def bimodality(values) -> dict:
  """Is the distribution of one token's χ over its contexts two populations? (§4.6)

  Stated test: a 2-Gaussian mixture must beat one Gaussian by ΔBIC > 10, both modes must hold ≥ 10 % of
  the occurrences, and the modes must be separated (Ashman's D > 2). Needs ≥ 20 occurrences.
  """
  x = np.asarray(values, np.float64)
  x = x[np.isfinite(x)]
  result = {"n": int(x.size), "bimodal": False}
  if x.size < 20 or x.std() == 0:
    return result
  ll1 = float(x.size * (-0.5 * np.log(2 * np.pi * x.var()) - 0.5))  # the Gaussian MLE
  w, mu, sd, ll2 = _gaussian_mixture_2(x)
  delta_bic = (2 * np.log(x.size) - 2 * ll1) - (5 * np.log(x.size) - 2 * ll2)
  separation = float(np.sqrt(2) * abs(mu[0] - mu[1]) / np.sqrt(sd[0] ** 2 + sd[1] ** 2))
  order = np.argsort(mu)
  result.update(delta_bic=float(delta_bic), separation=separation, weights=w[order].tolist(), means=mu[order].tolist(),
                stds=sd[order].tolist(),
                bimodal=bool(delta_bic > BIMODAL_MIN_DELTA_BIC and w.min() >= BIMODAL_MIN_WEIGHT
                             and separation > BIMODAL_MIN_SEPARATION))
  return result


def bimodal_tokens(table, head: str, *, min_count: int = 20):
  """Every token of a head with ≥ min_count occurrences, tested for bimodality, most evident first."""
  import pandas as pd
  rows = []
  for token, g in table[table.component == head].groupby("token", sort=False):
    if len(g) >= min_count:
      rows.append({"token": token, **bimodality(g.chi)})
  frame = pd.DataFrame(rows)
  return frame.sort_values("delta_bic", ascending=False) if len(frame) else frame


def pick_histogram_token(table, heads, token: str | None = None):
  """(head, token, candidates) for the histogram view: the named token (under the head where it is most
  bimodal), or else the most evidently bimodal token of `heads` among those passing the stated test (ΔBIC grows
  with the occurrences, so at 160 contexts per dataset the largest ΔBIC was '\\n', which the test calls not
  bimodal), else among all tested, or else the most frequent token of heads[0]."""
  import pandas as pd
  frames = [bimodal_tokens(table, h).assign(head=h) for h in heads]
  candidates = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else None
  if token is not None:
    present = table[(table.token == token) & table.component.isin(heads)]
    if not len(present):
      raise ValueError(f"token {token!r} does not occur for head(s) {list(heads)} in the per-token results")
    mine = candidates[candidates.token == token] if candidates is not None else []
    head = mine.sort_values("delta_bic").iloc[-1]["head"] if len(mine) else heads[0]
    return head, token, candidates
  if candidates is not None:
    ranked = candidates.sort_values(["bimodal", "delta_bic"], ascending=False)
    best = ranked.iloc[0]
    return best["head"], best.token, candidates
  return heads[0], head_rows(table, heads[0]).token.value_counts().index[0], candidates


def additivity(per_token_table, dataset_table, delta_h: float, *, leave_out=("full",)):
  """Per head × dataset: δh·(mean per-token χ) against the dataset-level χ, with slope and Pearson r
  (eq. 45: slope 1 if the per-token χ add up. The paper's Fig. 9 has r = 0.82 and, for the mean per-token χ
  against χ, a slope of 16 where 1/δh = 10 was predicted: 10/16 ≈ 0.63 in this function's terms.)

  `leave_out`: components not in the fit. "full", as in the paper's Fig. 9 (every attention head and dataset):
  its χ comes from chains that move every parameter, 5× the heads' χ and far noisier, and at the paper's
  shape (14 datasets, 160 contexts each, a tiny model) its cells alone took the least-squares slope from
  1.02 (r 0.96) to 0.76 (r 0.69)."""
  per_token_table = per_token_table[~per_token_table.component.isin(leave_out)]
  means = per_token_table.groupby(["component", "dataset"], sort=False).chi.mean().rename("mean_token_chi")
  merged = dataset_table.set_index(["component", "probe"]).chi.rename("chi")
  merged.index = merged.index.set_names(["component", "dataset"])
  joined = means.to_frame().join(merged, how="inner").reset_index()
  joined["predicted"] = delta_h * joined.mean_token_chi
  x, y = joined.predicted.to_numpy(), joined.chi.to_numpy()
  ok = np.isfinite(x) & np.isfinite(y)
  slope = float(np.polyfit(x[ok], y[ok], 1)[0]) if ok.sum() >= 2 else float("nan")
  r = float(np.corrcoef(x[ok], y[ok])[0, 1]) if ok.sum() >= 3 else float("nan")
  return joined, slope, r


MAX_NOISE_SHARE = 0.5


class AdditivityIntervals(NamedTuple):
  """Error bars of the additivity view (eq. 45), one row per cell of `additivity`'s `joined` (N = component ×
  dataset), from `additivity_intervals`."""

  slope_corrected: float  # the slope with the noise of both axes taken out (errors in variables)
  slope_interval: np.ndarray  # [2] for the slope of the noiseless cells
  predicted_interval_Nx2: np.ndarray  # δh·mean per-token χ over the dataset's contexts (not only those observed)
  chi_interval_Nx2: np.ndarray  # dataset-level χ
  difference_interval_Nx2: np.ndarray  # dataset-level χ − δh·mean per-token χ: 0 where the per-token χ add up
  level: float
  noise_share: float  # of the spread of δh·mean per-token χ over the cells (the demo: 0.04–0.09)

  def slope_determined(self) -> bool:
    """False where noise is half or more of the horizontal spread: the correction (÷ (1 − share)) then rests on a
    noisy share and the slope says little (more contexts or chains would)."""
    return self.noise_share < MAX_NOISE_SHARE

  def off_line_N(self) -> np.ndarray:
    """[N] cells whose difference's interval excludes 0: the per-token χ do not add up to the dataset's there."""
    return structure.excludes_zero(self.difference_interval_Nx2)


def additivity_intervals(joined, context_chi_CxKxO, dataset_chi_PxCxK, context_datasets_O, components, datasets,
                         delta_h: float, *, level: float = 0.95, num_resamples: int = 400, seed: int = 0,
                         correct_slope: bool = True) -> AdditivityIntervals:
  """Intervals for the additivity view from the per-chain values (NaN: a diverged chain).

  Two noises move a cell: the chains (K of them, shared by every cell: chain k of each component sees the same
  batches, and the dataset-level χ comes from the same chains) and which few contexts of each dataset were
  observed (shared by the components). Each resample redraws both with replacement. The contexts' spread is taken
  over their chain means, which also differ by the chains' noise at each context: that part (the chains ×
  contexts interaction mean square / K) is counted by the chains already, so it is taken out of the contexts'
  variance, and the contexts' resamples are shrunk to what is left, by one factor per dataset pooled over the
  components (a cell's own factor rests on too few contexts). A cell's deviation is placed about the point
  (`structure.interval_about`), widened for the few chains and the few contexts of its dataset
  (`structure.small_sample_widening`). Noise in δh·mean per-token χ flattens a least-squares slope (and the
  shared chains tie the two axes' noise), so the slope is corrected by the cells' mean noise (co)variances, taken
  at each resample's own noise level as `structure.corrected_scores` does; since that correction is not linear in
  the noise, the slope is resampled unwidened and its deviations widened after, by the widenings' mean weighted by
  how much of the slope's spread each noise makes (the chains' `small_sample_widening`; the contexts', pooled
  over every dataset, `structure.bootstrap_spread_correction`). Coverage and width on synthetic truths:
  `benchmarks/additivity_calibration.py` (correct_slope=False: the plain least-squares slope's resamples, for
  that comparison).

  Shape letters: C components, K chains, O observed contexts, P probes (= datasets), D datasets, N cells."""
  ctx_CxKxO = np.asarray(context_chi_CxKxO, np.float64)
  y_CxKxD = np.moveaxis(np.asarray(dataset_chi_PxCxK, np.float64), 0, -1)
  C, K, _ = ctx_CxKxO.shape
  members = [np.flatnonzero(np.asarray(context_datasets_O) == d) for d in datasets]
  if any(len(m) < 2 for m in members):
    raise ValueError("additivity intervals need >= 2 observed contexts of every dataset; have "
                     + ", ".join(f"{d}: {len(m)}" for d, m in zip(datasets, members)))
  chain_mean = lambda v_CxKx, picks=slice(None): _nanmean(v_CxKx[:, picks], axis=1)
  over_contexts = lambda v_xO, picks_D: delta_h * np.stack([v_xO[..., p].mean(-1) for p in picks_D], -1)  # [..., D]
  x_CxKxD = over_contexts(ctx_CxKxO, members)
  x0_CxD, y0_CxD = chain_mean(x_CxKxD), chain_mean(y_CxKxD)
  ctx_CxO = chain_mean(ctx_CxKxO)
  valid_C = np.isfinite(x_CxKxD).all(-1).sum(1)
  n_D = np.array([len(m) for m in members])
  # the cells' noise (co)variances of their means: the chains' spread / K, and the observed contexts' / n
  with np.errstate(invalid="ignore", divide="ignore"):
    dx, dy = x_CxKxD - x0_CxD[:, None], y_CxKxD - y0_CxD[:, None]
    by_chains = lambda a, b: _nanmean(a * b, axis=1) * valid_C[:, None] / (valid_C[:, None] - 1) / valid_C[:, None]
    var_x_chains, cov_xy = by_chains(dx, dx), by_chains(dx, dy)
    # the chain-mean contexts' spread, and the chains' noise in it (their interaction with the contexts / K)
    spread_CxD = np.stack([ctx_CxO[:, m].var(-1, ddof=1) for m in members], -1)
    within_CxKxO = ctx_CxKxO - ctx_CxO[:, None]
    chains_in_spread_CxD = np.stack([_nanmean(within_CxKxO[..., m].var(-1, ddof=1), axis=1) for m in members],
                                    -1) / (valid_C[:, None] - 1)
    var_x_contexts = delta_h ** 2 * (spread_CxD - chains_in_spread_CxD) / n_D
  counted = np.isfinite(chains_in_spread_CxD)
  contexts_shrink_D = np.sqrt(np.clip(1 - np.where(counted, chains_in_spread_CxD, 0).sum(0)
                                      / np.maximum(np.where(counted, spread_CxD, 0).sum(0), 1e-300), 0, 1))
  w_K = structure.small_sample_widening(K, level)
  w_D = np.array([structure.small_sample_widening(n, level) for n in n_D])
  c_D = np.array([structure.bootstrap_spread_correction(n) for n in n_D])
  cells = (np.array([components.index(c) for c in joined.component]),
           np.array([datasets.index(d) for d in joined.dataset]))

  usable = tuple(i[np.isfinite(x0_CxD[cells] + y0_CxD[cells] + var_x_chains[cells] + cov_xy[cells])] for i in cells)

  noise_x = lambda chains_scale, contexts_scale_D: np.mean(
      (chains_scale * var_x_chains + contexts_scale_D * var_x_contexts)[usable])

  def slope(x_CxD, y_CxD, chains_scale, contexts_scale_D):
    """The cells' slope (a component with < 2 valid chains left out)."""
    x, y = x_CxD[usable], y_CxD[usable]
    if not correct_slope:
      return np.polyfit(x, y, 1)[0]
    var_x = np.var(x, ddof=1)
    return (np.cov(x, y)[0, 1] - chains_scale * np.mean(cov_xy[usable])) / max(
        var_x - noise_x(chains_scale, contexts_scale_D), structure.MIN_RELIABILITY * var_x)

  rng = np.random.default_rng(seed)
  xs, ys, slopes, slopes_by_chains, slopes_by_contexts = [], [], [], [], []
  scale_K, scale_D = structure.resampled_noise_scale(1.0, K), structure.resampled_noise_scale(1.0, n_D)
  for _ in range(num_resamples):
    chains = rng.integers(0, K, K)
    contexts = [rng.choice(m, len(m)) for m in members]
    x_chains, y_chains = chain_mean(x_CxKxD, chains), chain_mean(y_CxKxD, chains)
    dx_K = np.where(np.isfinite(x_chains), x_chains, x0_CxD) - x0_CxD
    dy_K = np.where(np.isfinite(y_chains), y_chains, y0_CxD) - y0_CxD
    dx_D = contexts_shrink_D * (over_contexts(ctx_CxO, contexts) - x0_CxD)
    xs.append((x0_CxD + w_K * dx_K + w_D * dx_D)[cells]), ys.append((y0_CxD + w_K * dy_K)[cells])
    slopes.append(slope(x0_CxD + dx_K + dx_D, y0_CxD + dy_K, scale_K, scale_D))
    slopes_by_chains.append(slope(x0_CxD + dx_K, y0_CxD + dy_K, scale_K, 1.0))
    slopes_by_contexts.append(slope(x0_CxD + dx_D, y0_CxD, 1.0, scale_D))
  v_K, v_D = np.nanvar(slopes_by_chains), np.nanvar(slopes_by_contexts)
  widening = np.sqrt((w_K ** 2 * v_K + np.mean(c_D ** 2) * v_D) / (v_K + v_D)) if v_K + v_D > 0 else 1.0
  x_N, y_N = joined.predicted.to_numpy(np.float64), joined.chi.to_numpy(np.float64)
  xs, ys = np.array(xs), np.array(ys)
  point = slope(x0_CxD, y0_CxD, 1.0, 1.0)
  return AdditivityIntervals(
      slope_corrected=float(point),
      slope_interval=structure.interval_about(point, widening * np.array(slopes), level),
      predicted_interval_Nx2=structure.interval_about(x_N, xs, level),
      chi_interval_Nx2=structure.interval_about(y_N, ys, level),
      difference_interval_Nx2=structure.interval_about(y_N - x_N, ys - xs, level), level=level,
      noise_share=float(noise_x(1.0, 1.0) / np.var(x0_CxD[usable], ddof=1)))


def _nanmean(values, axis):
  """np.nanmean without its warning: NaN where every value is NaN (e.g. a component whose chains all diverged)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return np.nanmean(values, axis=axis)


# ---- UMAP of per-token susceptibility vectors ("embryology" view) --------------------------------------------

def umap_available() -> bool:
  import importlib.util
  return importlib.util.find_spec("umap") is not None


def susceptibility_vectors(table):
  """(vectors [N, H] of per-token χ over the heads, standardised per head; the tokens' rows [N] with dataset,
  context, position, token). "full" is left out."""
  heads = [c for c in dict.fromkeys(table.component) if c != "full"]
  wide = table[table.component.isin(heads)].pivot_table(index=["dataset", "context", "position", "token"],
                                                        columns="component", values="chi")[heads].dropna()
  X = wide.to_numpy(np.float64)
  scale = X.std(0)
  return (X - X.mean(0)) / np.where(scale > 0, scale, 1.0), wide.index.to_frame(index=False)


def umap_embedding(table, *, n_neighbors: int = 15, seed: int = 0):
  """(embedding [N, 2], token rows): UMAP of the per-token susceptibility vectors. Needs `umap-learn`."""
  if not umap_available():
    raise ValueError("the UMAP view needs umap-learn: pip install umap-learn")
  import umap
  X, rows = susceptibility_vectors(table)
  if len(X) < 3:
    raise ValueError(f"UMAP needs at least 3 tokens with χ for every head; have {len(X)}")
  reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(X) - 1), random_state=seed, n_components=2)
  return reducer.fit_transform(X), rows
