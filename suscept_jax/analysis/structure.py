"""Structural inference (§2.5, §3.3, App. B): principal components of the response matrix, their stability,
their agreement with independent head labels, and the patterning re-weighting.

X has one row per (probe dataset, checkpoint) and one column per component (heads; "full" is kept apart),
X ≈ C·P: data couplings C (rows × modes) and head loadings P (modes × heads). Pure numpy on host arrays.

Shape letters: R rows (probe × checkpoint), H columns (components), k kept PCs, B bootstrap resamples,
K chains, D datasets, T checkpoints, G patterning targets (goals: a desired change of every component).
"""
import warnings
from typing import NamedTuple

import numpy as np
import scipy.special

from suscept_jax import estimators


class PCA(NamedTuple):
  """SVD of the standardised response matrix, with a fixed sign per PC."""

  explained_variance_ratio: np.ndarray  # [min(R, H)] share of the total variance per PC, descending
  loadings_kxH: np.ndarray  # P = Vᵀ (rows: PCs), the largest-|·| loading of each PC positive
  scores_Rxk: np.ndarray  # U·Σ: each row's coordinates on the PCs (π_d(t) when rows are (d, t))
  singular_values: np.ndarray  # [min(R, H)]
  column_mean_H: np.ndarray  # what standardising subtracted ...
  column_scale_H: np.ndarray  # ... and divided by (1 where a column is constant)


def standardise(X_RxH: np.ndarray):
  """(Z, mean, scale): every column centred and scaled to unit variance (constant columns only centred)."""
  X = np.asarray(X_RxH, np.float64)
  mean, scale = X.mean(0), X.std(0)
  scale = np.where(scale > 0, scale, 1.0)
  return (X - mean) / scale, mean, scale


def fix_signs(loadings_kxH: np.ndarray) -> np.ndarray:
  """+1/−1 per PC so that its largest-magnitude loading is positive: one convention for every run."""
  idx = np.argmax(np.abs(loadings_kxH), axis=1)
  return np.where(loadings_kxH[np.arange(len(idx)), idx] < 0, -1.0, 1.0)


def signs_against(loadings_kxH: np.ndarray, reference_kxH: np.ndarray) -> np.ndarray:
  """+1/−1 per PC so that it points along the reference's PC of the same rank (resamples compared with X)."""
  return np.where((np.asarray(loadings_kxH) * reference_kxH).sum(1) < 0, -1.0, 1.0)


def pca(X_RxH: np.ndarray, *, standardise_columns: bool = True) -> PCA:
  """PCA of the response matrix by SVD (every PC kept; slice what you need)."""
  X = np.asarray(X_RxH, np.float64)
  if X.ndim != 2 or min(X.shape) < 2:
    raise ValueError(f"the response matrix needs at least 2 rows and 2 columns; got shape {X.shape}")
  if not np.isfinite(X).all():
    raise ValueError("the response matrix holds NaN or inf: exclude those rows first (see response.assemble)")
  if standardise_columns:
    Z, mean, scale = standardise(X)
  else:
    mean, scale = X.mean(0), np.ones(X.shape[1])
    Z = X - mean
  U, S, Vt = np.linalg.svd(Z, full_matrices=False)
  signs = fix_signs(Vt)
  total = float((S**2).sum())
  return PCA(explained_variance_ratio=S**2 / total if total > 0 else np.zeros_like(S), loadings_kxH=Vt * signs[:, None],
             scores_Rxk=U * S * signs, singular_values=S, column_mean_H=mean, column_scale_H=scale)


def check_num_pcs(num_pcs: int, X_RxH) -> int:
  """`num_pcs`, if the centred matrix has that many directions: at most min(rows − 1, columns) (a PC beyond
  them is a null direction, singular value 0, that would still get loadings and label correlations)."""
  rows, cols = np.shape(X_RxH)
  most = min(rows - 1, cols)
  if not 1 <= num_pcs <= most:
    raise ValueError(f"{num_pcs} principal components asked for, but the response matrix has {rows} rows and "
                     f"{cols} columns: centred, at most {most}")
  return num_pcs


def principal_angles(A_kxH: np.ndarray, B_kxH: np.ndarray) -> np.ndarray:
  """Principal angles (radians, ascending) between the row spaces of A and B."""
  Qa, _ = np.linalg.qr(np.asarray(A_kxH, np.float64).T)
  Qb, _ = np.linalg.qr(np.asarray(B_kxH, np.float64).T)
  cosines = np.clip(np.linalg.svd(Qa.T @ Qb, compute_uv=False), -1.0, 1.0)
  return np.sort(np.arccos(cosines))


def coupling_checkpoints(datasets_R, checkpoints_R) -> tuple[list, list]:
  """(checkpoints, partial datasets): the checkpoints every dataset has, leaving out the datasets sampled at
  fewer than half as many checkpoints as the best-covered one (a probe added at one checkpoint shrank every
  other dataset's average to that checkpoint, and moved its couplings from −0.62 to −0.05)."""
  datasets_R, checkpoints_R = np.asarray(datasets_R), np.asarray(checkpoints_R)
  have = {d: set(checkpoints_R[datasets_R == d].tolist()) for d in dict.fromkeys(datasets_R.tolist())}
  most = max(len(t) for t in have.values())
  partial = [d for d, t in have.items() if 2 * len(t) < most]
  common = set.intersection(*(t for d, t in have.items() if d not in partial))
  if not common:
    raise ValueError("no checkpoint has rows for every dataset: the data couplings would not compare")
  return sorted(common), partial


def data_couplings(scores_Rxk: np.ndarray, datasets_R, checkpoints_R=None) -> dict:
  """{dataset: [k] mean of its rows' scores over checkpoints}: the data side C of X ≈ C·P (Fig. 12).

  With `checkpoints_R`, over the checkpoints every dataset has (`coupling_checkpoints`): scores move with
  training, so a dataset averaged over other checkpoints than the rest would differ by when, not by what. A
  dataset sampled at too few checkpoints to share them gets NaN."""
  datasets_R = np.asarray(datasets_R)
  names = list(dict.fromkeys(datasets_R.tolist()))
  use_R, partial = np.ones(len(datasets_R), bool), []
  if checkpoints_R is not None:
    common, partial = coupling_checkpoints(datasets_R, checkpoints_R)
    use_R = np.isin(np.asarray(checkpoints_R), common)
  return {d: np.full(scores_Rxk.shape[1], np.nan) if d in partial else scores_Rxk[(datasets_R == d) & use_R].mean(0)
          for d in names}


def interval_about(centre, resampled_B, level: float) -> np.ndarray:
  """[..., 2]: the resamples' `level` spread about their median (percentiles less the median), placed at `centre`
  (the point estimate, or one corrected for a bias the resamples do not centre on). NaN resamples are ignored;
  where all are NaN (a dataset left out) the interval is NaN."""
  tails = [50 * (1 - level), 100 - 50 * (1 - level)]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "All-NaN slice": NaN is the answer there
    offsets_2x = np.nanpercentile(resampled_B, tails, axis=0) - np.nanmedian(resampled_B, 0)
  return np.moveaxis(centre + offsets_2x, 0, -1)


def excludes_zero(lo_hi_x2) -> np.ndarray:
  """[...] whether each interval ([..., 2]) lies wholly on one side of 0 (False where NaN)."""
  lo_hi = np.asarray(lo_hi_x2, np.float64)
  return np.isfinite(lo_hi).all(-1) & (np.prod(lo_hi, -1) > 0)


def resampled_noise_scale(widening, num_draws):
  """The noise a resample moved `widening` × (resample − point) away carries, in units of the point's noise
  variance: the point's own plus the deviation's, whose variance over a bootstrap of n draws is (n−1)/n of it at
  widening 1. What a noise correction taken at a resample's own level multiplies by."""
  return 1 + np.asarray(widening) ** 2 * (np.asarray(num_draws) - 1) / np.asarray(num_draws)


MIN_RELIABILITY = 0.1  # a column whose noise seems to be all its spread still keeps √0.1 of its scale (no 1/0)


def score_reliability(X_RxH: np.ndarray, loadings_kxH: np.ndarray, noise_var_H: np.ndarray) -> np.ndarray:
  """[k] α_k = Σ_h P_kh²·√(1 − noise share of column h's variance): how much the columns' noise shrinks PC k's
  scores. Standardising divides a column by its observed spread √(s²_true + noise), so its signal enters the
  scores at √(reliability) of its noiseless size; one number per PC (the loadings weigh the columns), since
  per-column factors are themselves too noisy (dividing by them doubled the couplings' intervals)."""
  X = np.asarray(X_RxH, np.float64)
  var_H = X.var(0)
  noise_share_H = np.asarray(noise_var_H, np.float64) * (1 - 1 / X.shape[0]) / np.where(var_H > 0, var_H, 1.0)
  return (np.asarray(loadings_kxH) ** 2) @ np.sqrt(np.maximum(1 - noise_share_H, MIN_RELIABILITY))


class CorrectedScores(NamedTuple):
  """Each row's scores on PC1..k divided by their PC's `score_reliability`, at X and over widened chain resamples:
  what the intervals of the couplings and of the scores are read from (`corrected_scores`)."""

  point_Rxk: np.ndarray
  resampled_BxRxk: np.ndarray
  level: float


def corrected_scores(X_RxH: np.ndarray, resample, stderr_RxH: np.ndarray, num_pcs: int, *, num_chains: int,
                     level: float = 0.95, num_resamples: int = 200, seed: int = 0) -> CorrectedScores:
  """The scores of PC1..k (oriented as X's) corrected for the shrinkage noise puts in them, at X and over resamples.

  Noise biases the scores X shows towards 0: it inflates every column's spread, and standardising then shrinks
  the signal (on a synthetic rank-2 X, PC1's largest couplings came out 20 % too small at cell noise 1.0), and
  resamples see under half of that bias. So each score is divided by its PC's `score_reliability` (noise
  variance per column: the cells' mean stderr²), which removed the bias there (≤ 0.07 against a spread of 0.3),
  and the statistic is resampled whole: each resample's deviation from X widened for the few chains
  (`small_sample_widening`), its reliability taken at its own noise level. Intervals: `data_coupling_intervals`,
  `score_intervals`; coverage on synthetic truths: `benchmarks/structure_calibration.py`."""
  X = np.asarray(X_RxH, np.float64)
  check_num_pcs(num_pcs, X)
  noise_var_H = (np.asarray(stderr_RxH, np.float64) ** 2).mean(0)
  ref_P = pca(X).loadings_kxH[:num_pcs]

  def corrected_Rxk(X_moved_RxH, noise_scale: float):
    Z = pca(X_moved_RxH)
    signs_k = signs_against(Z.loadings_kxH[:num_pcs], ref_P)
    alpha_k = score_reliability(X_moved_RxH, Z.loadings_kxH[:num_pcs], noise_var_H * noise_scale)
    return Z.scores_Rxk[:, :num_pcs] * signs_k / alpha_k

  widening = small_sample_widening(num_chains, level)
  widened_noise_scale = float(resampled_noise_scale(widening, num_chains))
  rng = np.random.default_rng(seed)
  resampled = [corrected_Rxk(X + widening * (resample(rng) - X), widened_noise_scale) for _ in range(num_resamples)]
  return CorrectedScores(point_Rxk=corrected_Rxk(X, 1.0), resampled_BxRxk=np.array(resampled), level=level)


def data_coupling_intervals(scores: CorrectedScores, datasets_R, checkpoints_R) -> dict:
  """{dataset: [k, 2]} interval of each dataset's coupling (`data_couplings`) to PC1..k of the noiseless matrix,
  from `corrected_scores`. It need not hold X's coupling, which keeps the bias. NaN for a dataset
  `data_couplings` leaves out."""
  def couplings_Dxk(scores_Rxk):
    return np.array(list(data_couplings(scores_Rxk, datasets_R, checkpoints_R).values()))

  intervals_Dxkx2 = interval_about(couplings_Dxk(scores.point_Rxk),
                                   np.array([couplings_Dxk(s) for s in scores.resampled_BxRxk]), scores.level)
  return dict(zip(dict.fromkeys(np.asarray(datasets_R).tolist()), intervals_Dxkx2))


def score_intervals(scores: CorrectedScores) -> np.ndarray:
  """[R, k, 2] interval of each row's score on PC1..k of the noiseless matrix, from `corrected_scores`. On the
  benchmark's truths (40 runs per setting, 45 rows) they held the true scores in 95–100 % of cases."""
  return interval_about(scores.point_Rxk, scores.resampled_BxRxk, scores.level)


class Stability(NamedTuple):
  """Is each of the top PCs to be believed? Two stated tests, both must pass:
  - resampling: span(PC1..j) moves by less than `STABLE_ANGLE_DEG` (median over resamples of X);
  - noise floor (parallel analysis): PC j's singular value exceeds the 95th percentile of the largest
    singular value of pure-noise matrices of the cells' own standard errors (standardised like X), drawn
    both independently per cell and with the correlation the resampling shows between cells (the larger)."""

  subspace_angle_deg_Bxk: np.ndarray  # largest principal angle between span(PC1..j) of a resample and of X
  pc_cosine_Bxk: np.ndarray  # |cos| between PC j of X and the resample's PC j
  median_angle_deg_k: np.ndarray
  singular_value_k: np.ndarray  # of the standardised X
  noise_floor: float  # the larger of the two floors below (nan without error bars)
  stable_k: np.ndarray  # bool
  independent_noise_floor: float = float("nan")  # cells' noise drawn independently
  correlated_noise_floor: float = float("nan")  # cells' noise as the resamples deviate, scaled to the stderr
  loadings_BxkxH: np.ndarray | None = None  # each resample's PC j, its sign matched to X's PC j (widened)
  ceiling: float = float("nan")  # √(R·H): no singular value of a standardised X exceeds it
  # Share of the angle test's resamples whose PC j, oriented by the convention (`fix_signs`), points against X's
  # PC j: how often another run would show PC j, and the sign of every r with it, reversed (near-tied loadings).
  orientation_flip_k: np.ndarray | None = None
  # The angle test's resampled PCs (deviations times `spread_correction`: X's own noise level), signs matched to
  # X's: how far noise moves r on average, the bias `label_correlation_intervals` takes out.
  noise_matched_loadings_BxkxH: np.ndarray | None = None

  @property
  def floor_out_of_reach(self) -> bool:
    """The noise floor is at or above the largest singular value a standardised X can have: the test cannot
    pass, whatever X holds (cells whose error bars exceed their column's spread across rows)."""
    return bool(np.isfinite(self.noise_floor) and self.noise_floor >= self.ceiling)

  def sign_note(self, j: int) -> str:
    """'; its sign flips in x % of resamples' when PC j's orientation is that uncertain (`ORIENTATION_NOTE`); of a
    stable PC, said as its span holding while its sign does not ("stable … its sign flips" read as a
    contradiction)."""
    if self.orientation_flip_k is None or self.orientation_flip_k[j] < ORIENTATION_NOTE:
      return ""
    share = f"{100 * self.orientation_flip_k[j]:.0f} %"
    if self.stable_k[j]:
      return f"; its span holds, but its sign flips in {share} of resamples (read the sign of its r with care)"
    return f"; its sign flips in {share} of resamples"

  def describe(self) -> list[str]:
    cos = np.median(self.pc_cosine_Bxk, 0)
    floors = (f" (independent cells {self.independent_noise_floor:.3g}, correlated as resampled "
              f"{self.correlated_noise_floor:.3g})" if np.isfinite(self.correlated_noise_floor) else "")
    lines = [f"PC{j + 1}: span(PC1..{j + 1}) moves {a:.1f}° (median), |cos| {c:.2f}; singular value {v:.3g} vs "
             f"noise floor {self.noise_floor:.3g}{floors} -> {'stable' if ok else 'UNSTABLE'}{self.sign_note(j)}"
             for j, (a, c, v, ok) in enumerate(zip(self.median_angle_deg_k, cos, self.singular_value_k,
                                                   self.stable_k))]
    if self.floor_out_of_reach:
      lines.append(f"The noise floor {self.noise_floor:.3g} is at or above √(rows·columns) = {self.ceiling:.3g}, "
                   f"the largest singular value a standardised X can have: no PC can pass this test here (the cells' "
                   f"error bars exceed the spread of their columns; more chains or draws lower them).")
    return lines


STABLE_ANGLE_DEG = 30.0  # a PC's subspace that moves by more than this under resampling is not to be believed
# A PC whose orientation flips in at least this share of resamples is said to (its r may show the other sign in
# another run). On a synthetic rank-2 X through 4 chains (60 trials per noise level) the median share tracked how
# many runs' PC2 pointed against the truth's: 4 % against 2 % of runs, 28 against 18, 35 against 37.
ORIENTATION_NOTE = 0.05


def top_singular_quantile(noise_BxRxH: np.ndarray, column_scale_H=None, *, centre: bool = True,
                          quantile: float = 0.95) -> float:
  """The `quantile` over draws of the largest singular value of noise matrices scaled like X (columns divided
  by `column_scale_H`, centred unless `centre` is False)."""
  N = np.asarray(noise_BxRxH, np.float64) / (1.0 if column_scale_H is None else column_scale_H)
  if centre:
    N = N - N.mean(1, keepdims=True)
  return float(np.quantile(np.linalg.svd(N, compute_uv=False)[:, 0], quantile))


def independent_noise(stderr_RxH: np.ndarray, num_draws: int, rng) -> np.ndarray:
  """[B, R, H] draws of N(0, stderr²), independent per cell.

  The rows take their draws in the order of their stderr rows sorted, not in the order they are listed: the
  same rows listed in another order (a sweep grown probe by probe against one run at once) get the same noise,
  so the same noise floor (listing order alone moved it by up to 15 % at few draws)."""
  err = np.asarray(stderr_RxH, np.float64)
  canonical_R = np.lexsort(err.reshape(err.shape[0], -1).T[::-1])  # rows sorted, column 0 the primary key
  draws = rng.standard_normal((num_draws,) + err.shape)
  noise = np.empty_like(draws)
  noise[:, canonical_R] = draws
  return err * noise


def resampled_noise(X_RxH: np.ndarray, resamples_BxRxH: np.ndarray, stderr_RxH: np.ndarray) -> np.ndarray:
  """[B, R, H] noise draws with the correlation between cells that resampling shows (the probes of one
  checkpoint are observed on the same chains, and chain k of every component sees the same batches) and
  each cell's spread equal to its reported stderr: resample − X, rescaled per cell."""
  deviations = np.asarray(resamples_BxRxH, np.float64) - np.asarray(X_RxH, np.float64)
  spread = deviations.std(0)
  return deviations * np.where(spread > 0, np.asarray(stderr_RxH, np.float64) / np.where(spread > 0, spread, 1), 0)


def noise_floor(stderr_RxH: np.ndarray, column_scale_H=None, *, centre: bool = True, num_draws: int = 200,
                seed: int = 0, quantile: float = 0.95) -> float:
  """The `quantile` of the largest singular value of noise matrices N ~ N(0, stderr²) (independent cells),
  scaled like X (see `top_singular_quantile`)."""
  noise = independent_noise(stderr_RxH, num_draws, np.random.default_rng(seed))
  return top_singular_quantile(noise, column_scale_H, centre=centre, quantile=quantile)


def bootstrap_spread_correction(num_chains: int) -> float:
  """√(K/(K−1)): a chain bootstrap's deviations times this have the unbiased variance of a mean of K chains
  (resampling K chains with replacement gives (K−1)/K of it): 1.15 at K = 4. The angle test resamples with it.
  On a synthetic rank-2 X (24 × 9) through 4 chains, 80 trials per noise level, the median angle by which
  span(PC1) and span(PC1..2) moved from the truth's (in X's own column scale) was 6.8° / 12.1°, 14.5° / 28.9°
  and 21.9° / 51.0° at three noise levels; raw resamples said 4.6 / 9.0, 11.1 / 29.3, 18.9 / 43.6, corrected
  5.2 / 10.5, 12.8 / 34.2, 21.9 / 49.1: closer in five cases of six, and erring wide where it errs."""
  K = float(num_chains)
  if K < 2:
    raise ValueError(f"a spread over chains needs >= 2 chains, got {num_chains}")
  return float(np.sqrt(K / (K - 1)))


def small_sample_widening(num_chains: int, level: float = 0.95) -> float:
  """How much wider than a chain bootstrap's spread a `level` interval from K chains must be:
  `bootstrap_spread_correction` times t_{K−1}/z (the error of K chains is itself noisy): 1.87 at K = 4, 1.10
  at K = 16. On a synthetic rank-2 X (100 trials) the r intervals covered the
  true r 88 / 79 % of the time (PC1 / PC2) from the raw resamples at K = 4, 99 / 96 % widened; 90 / 91 % and
  94 / 96 % at K = 16. Those counts took the sign convention as given; with the truth's PC oriented as each
  run's (the convention flips a PC2 whose largest loadings noise near-ties: 3–54 % of runs), widened
  intervals covered 99 / 98–100 % at three noise levels, the chains' noise independent or shared between
  cells, raw 88–94 / 88–97 % (100 trials each; by the convention alone PC2's fell to 63–72 % at the two
  higher noise levels). `Stability.orientation_flip_k` says how often a PC's sign flips. Those labels followed
  PC2; a label following PC1 showed a bias that widening does not cure (`label_correlation_intervals`)."""
  return (bootstrap_spread_correction(num_chains) * estimators.t_quantile(float(num_chains), level)
          / float(scipy.special.ndtri(0.5 + level / 2)))


def bootstrap_stability(X_RxH: np.ndarray, resample, num_pcs: int, *, stderr_RxH=None, num_resamples: int = 200,
                        seed: int = 0, threshold_deg: float = STABLE_ANGLE_DEG, spread_correction: float = 1.0,
                        interval_widening: float = 1.0) -> Stability:
  """Stability of PC1..k when X is re-estimated: `resample(rng) -> X'` (chains drawn with replacement,
  `chain_resampler`), and, when the cells' standard errors are given, against the noise floor (the larger of
  independent cells and cells correlated as the resamples are).

  spread_correction: the angle test compares X's PCs with those of X + this × (resample − X)
  (`bootstrap_spread_correction`: a bootstrap over few chains moves them too little).
  interval_widening: the kept loadings (`Stability.loadings_BxkxH`, for intervals of r) come from each
  resample's deviation from X times this (`small_sample_widening`)."""
  check_num_pcs(num_pcs, X_RxH)
  rng = np.random.default_rng(seed)
  ref = pca(X_RxH)
  ref_P = ref.loadings_kxH[:num_pcs]
  angles, cosines = np.zeros((num_resamples, num_pcs)), np.zeros((num_resamples, num_pcs))
  flipped = np.zeros((num_resamples, num_pcs), bool)
  resamples, loadings, matched = [], [], []
  for b in range(num_resamples):
    resamples.append(resample(rng))
    P = _resampled_loadings(X_RxH, resamples[-1], spread_correction, num_pcs)
    signs_k = signs_against(P, ref_P)
    flipped[b] = signs_k < 0
    matched.append(P * signs_k[:, None])
    kept = P if interval_widening == spread_correction else _resampled_loadings(X_RxH, resamples[-1],
                                                                                interval_widening, num_pcs)
    loadings.append(kept * signs_against(kept, ref_P)[:, None])
    for j in range(num_pcs):
      angles[b, j] = np.degrees(principal_angles(ref_P[:j + 1], P[:j + 1])[-1])
      cosines[b, j] = abs(float(ref_P[j] @ P[j]))
  median = np.median(angles, 0)
  independent = correlated = float("nan")
  if stderr_RxH is not None:
    independent = noise_floor(stderr_RxH, ref.column_scale_H, seed=seed)
    correlated = top_singular_quantile(resampled_noise(X_RxH, np.array(resamples), stderr_RxH), ref.column_scale_H)
  floor = max(independent, correlated) if stderr_RxH is not None else float("nan")
  values = ref.singular_values[:num_pcs]
  stable = (median < threshold_deg) & (~np.isfinite(floor) | (values > floor))
  return Stability(subspace_angle_deg_Bxk=angles, pc_cosine_Bxk=cosines, median_angle_deg_k=median,
                   singular_value_k=values, noise_floor=floor, stable_k=stable, independent_noise_floor=independent,
                   correlated_noise_floor=correlated, loadings_BxkxH=np.array(loadings),
                   ceiling=float(np.sqrt(np.size(X_RxH))), orientation_flip_k=flipped.mean(0),
                   noise_matched_loadings_BxkxH=np.array(matched))


def _resampled_loadings(X_RxH, resample_RxH, factor: float, num_pcs: int) -> np.ndarray:
  """PC1..k of X + factor × (resample − X): the resample itself at factor 1."""
  moved = resample_RxH if factor == 1.0 else X_RxH + factor * (np.asarray(resample_RxH) - X_RxH)
  return pca(moved).loadings_kxH[:num_pcs]


def chain_resampler(per_chain_RxHxK: np.ndarray, shared_chains_R=None):
  """resample(rng) for `bootstrap_stability`: every cell's χ re-averaged over chains drawn with replacement
  (NaN = an excluded chain, never drawn).

  `shared_chains_R` labels the rows estimated on the same chains (a sweep's checkpoint: its probes are
  observed on one set of chains, and chain k of every component sees the same batches). Chain indices are
  then drawn once per label and used for every cell of its rows, so the resamples keep the correlation the
  shared chains put between cells (on the demo: 0.40 between probes, 0.18 between components); a cell
  whose drawn chains are all excluded re-averages its own valid chains. Without it, every cell draws alone."""
  per_chain = np.asarray(per_chain_RxHxK, np.float64)
  valid = np.isfinite(per_chain)
  counts = valid.sum(-1)
  if (counts < 2).any():
    raise ValueError("bootstrap over chains needs >= 2 valid chains in every cell")
  order = np.argsort(~valid, axis=-1, kind="stable")  # valid chains first
  ordered = np.take_along_axis(per_chain, order, -1)

  first_counts = np.arange(per_chain.shape[-1]) < counts[..., None]  # a cell draws as many as it has valid

  def independently(rng):
    draw = (rng.random(per_chain.shape) * counts[..., None]).astype(int)
    return np.where(first_counts, np.take_along_axis(ordered, draw, -1), 0.0).sum(-1) / counts

  if shared_chains_R is None:
    return independently
  labels = {x: i for i, x in enumerate(dict.fromkeys(shared_chains_R))}  # any hashable label, e.g. (seed, checkpoint)
  group_R = np.array([labels[x] for x in shared_chains_R])
  if len(group_R) != per_chain.shape[0]:
    raise ValueError(f"shared_chains_R has {len(group_R)} labels for {per_chain.shape[0]} rows")
  num_chains = per_chain.shape[-1]

  def jointly(rng):
    draw_RxK = rng.integers(0, num_chains, size=(len(labels), num_chains))[group_R]
    drawn = np.take_along_axis(per_chain, np.broadcast_to(draw_RxK[:, None, :], per_chain.shape), -1)
    kept = np.isfinite(drawn)
    mean = np.where(kept, drawn, 0).sum(-1) / np.maximum(kept.sum(-1), 1)
    return mean if kept.any(-1).all() else np.where(kept.any(-1), mean, independently(rng))

  return jointly


def label_correlations(loadings_kxH: np.ndarray, labels_HxL: dict) -> dict:
  """{label: [k] Pearson r across heads between each PC's loadings and the label} (independent head labels:
  previous-token, induction, ablation delta)."""
  out = {}
  for name, values in labels_HxL.items():
    v = np.asarray(values, np.float64)
    out[name] = np.array([np.corrcoef(p, v)[0, 1] if v.std() > 0 and p.std() > 0 else np.nan for p in loadings_kxH])
  return out


def label_correlation_intervals(loadings_BxkxH: np.ndarray, labels_HxL: dict, *, point_loadings_kxH,
                                noise_matched_BxkxH, level: float = 0.95) -> dict:
  """{label: [k, 2]} interval of each PC's r with the label over resampled loadings (`Stability.loadings_BxkxH`):
  how far the estimation noise of X moves r. (The few heads themselves are a sample too; that part of r's
  uncertainty is not in it.)

  Given X's own loadings and resamples at X's noise level (`Stability.noise_matched_loadings_BxkxH`), both
  required (None for both gives the bare percentiles, biased: for comparison only), the interval is also
  corrected for the bias noise puts in r: a cell's noise inflates its column's spread, so standardising
  shrinks the noisier columns and turns X's PCs away from the noiseless matrix's; a resample, noisier again,
  turns them further the same way. The interval is then the resamples' spread about their median, placed at
  r(X) − (median r of the noise-matched resamples − r(X)), within [−1, 1]. On synthetic rank-2 matrices from 4
  chains whose label followed PC1, the widened but uncorrected intervals held the true r 17–65 % of the time,
  corrected 95–100 %, no wider (40–60 trials per setting, noise independent or shared between cells; a label
  following PC2 was held 95–100 % either way). The correction is first order: where PC2 was weak, a precise
  PC1 r near −0.86 was held in only 60 % (the resamples showed a third of its bias; uncorrected 0 %). The
  corrected interval need not hold the r of X's own PCs. `benchmarks/structure_calibration.py` measures all
  of this."""
  def r_Bxk_by_label(loadings_BxkxH):
    per_resample = [label_correlations(P, labels_HxL) for P in loadings_BxkxH]
    return {name: np.array([r[name] for r in per_resample]) for name in labels_HxL}

  spread = r_Bxk_by_label(loadings_BxkxH)
  if point_loadings_kxH is None or noise_matched_BxkxH is None:
    tails = [50 * (1 - level), 100 - 50 * (1 - level)]
    return {name: np.nanpercentile(r_Bxk, tails, axis=0).T for name, r_Bxk in spread.items()}
  point = label_correlations(point_loadings_kxH, labels_HxL)
  matched = r_Bxk_by_label(noise_matched_BxkxH)
  return {name: np.clip(interval_about(point[name] - (np.nanmedian(matched[name], 0) - point[name]), r_Bxk, level),
                        -1.0, 1.0) for name, r_Bxk in spread.items()}


class Patterning(NamedTuple):
  """Minimum-norm re-weighting of probe datasets for a target change of the component observables."""

  delta_h_D: np.ndarray  # re-weighting per dataset
  predicted_H: np.ndarray  # Xᵀ·dh: the change it produces (= the target when reachable)
  predicted_stderr_H: np.ndarray  # spread of the prediction over X drawn within its error bars
  delta_h_stderr_D: np.ndarray
  residual_norm: float  # |predicted − target|: 0 when the target lies in the reachable span
  # How much of predicted_H is dh fitting X's own noise (0 without error bars): the mean over X + noise draws N of
  # (X + N)ᵀ·dh_N − Xᵀ·dh_N, dh_N planned on X + N and scaled to dh's largest weight (as plans are compared:
  # unscaled, a draw's plan through a direction near rcond is huge). predicted − optimism estimates what dh does
  # to the true X.
  optimism_H: np.ndarray | None = None


def patterning(X_DxH: np.ndarray, target_H: np.ndarray, *, X_stderr_DxH=None, X_noise_BxDxH=None,
               num_samples: int = 500, seed: int = 0, rcond: float = 1e-10) -> Patterning:
  """dh = (Xᵀ)⁺·dμ: the smallest change of dataset weights whose first-order effect on the components is dμ
  (rows of X: datasets at one checkpoint; columns: components; dμ_C = Σ_d dh_d·χ_{d,C}). With error bars
  on X, the spread of dh and of the prediction over X + noise: `X_noise_BxDxH` draws when given (e.g.
  `resampled_noise`, correlated as the chains make them), else N(0, stderr²) per cell, independently. Every
  direction of X above `rcond` is used, noise ones too: `scaled_patterns` keeps only those above the noise
  floor.

  Planned on X and judged on X, the plan looks better than it is (it fits X's noise too): `optimism_H` says by
  how much, from plans made on X + noise and judged on X."""
  X = np.asarray(X_DxH, np.float64)
  target = np.asarray(target_H, np.float64)
  if target.shape != (X.shape[1],):
    raise ValueError(f"target must have one entry per component ({X.shape[1]}); got shape {target.shape}")
  if not np.isfinite(X).all():
    raise ValueError("X holds NaN or inf")
  dh = np.linalg.pinv(X.T, rcond=rcond) @ target
  predicted = X.T @ dh
  dh_err, pred_err = np.full(X.shape[0], np.nan), np.full(X.shape[1], np.nan)
  optimism = np.zeros(X.shape[1])
  noise = X_noise_BxDxH
  if noise is None and X_stderr_DxH is not None:
    noise = independent_noise(X_stderr_DxH, num_samples, np.random.default_rng(seed))
  if noise is not None:
    draws_dh, draws_pred, draws_optimism = [], [], []
    for N in np.asarray(noise, np.float64):
      draws_dh.append(np.linalg.pinv((X + N).T, rcond=rcond) @ target)
      draws_pred.append((X + N).T @ dh)  # the planned dh applied to a plausible true X
      # a plan made on X + N, judged there against judged on X, at dh's largest weight
      draws_optimism.append(N.T @ draws_dh[-1] / max(float(np.abs(draws_dh[-1]).max()), 1e-300))
    dh_err, pred_err = np.std(draws_dh, 0, ddof=1), np.std(draws_pred, 0, ddof=1)
    optimism = np.mean(draws_optimism, 0) * float(np.abs(dh).max())
  return Patterning(delta_h_D=dh, predicted_H=predicted, predicted_stderr_H=pred_err, delta_h_stderr_D=dh_err,
                    residual_norm=float(np.linalg.norm(predicted - target)), optimism_H=optimism)


class ScaledPatterns(NamedTuple):
  """`patterning` for several targets, each plan scaled to a common largest weight (rows: targets)."""

  delta_h_GxD: np.ndarray  # weight per probe dataset; the largest |weight| of each row is `max_weight`
  delta_h_stderr_GxD: np.ndarray  # spread of the re-weighting over X drawn within its error bars
  change_GxH: np.ndarray  # Σ_d dh_d·χ_{d,c}: the plan's first-order effect on every component c, less its optimism
  change_stderr_GxH: np.ndarray  # its spread over X drawn within the error bars (the plan held fixed)
  residual_G: np.ndarray  # |effect − target| / |target| before scaling: 0 when the probes can produce the target
  rank: int  # directions of X used: its singular values above the noise floor of its error bars (all without)
  noise_floor: float  # the largest singular value expected of X's noise alone (nan without error bars)

  def effect_G(self, targets_GxH) -> np.ndarray:
    """Length of the effect along its target direction."""
    unit = np.asarray(targets_GxH, np.float64)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    return np.abs((self.change_GxH * unit).sum(1))

  def effect_stderr_G(self, targets_GxH) -> np.ndarray:
    """Spread of the effect along its target over X within its error bars (the components' spreads combined
    as if independent: exact for a target that is one component)."""
    unit = np.asarray(targets_GxH, np.float64)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    return np.sqrt(((unit * np.nan_to_num(self.change_stderr_GxH)) ** 2).sum(1))

  def off_target_G(self, targets_GxH) -> np.ndarray:
    """Length of what the plan may do besides its target: the effect's part off the target direction and
    its spread over X, together."""
    unit = np.asarray(targets_GxH, np.float64)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    off = self.change_GxH - (self.change_GxH * unit).sum(1, keepdims=True) * unit
    spread = np.nan_to_num(self.change_stderr_GxH)
    return np.sqrt((off**2).sum(1) + (spread**2).sum(1))


def scaled_patterns(X_DxH: np.ndarray, targets_GxH: np.ndarray, stderr_DxH=None, *, noise_BxDxH=None,
                    max_weight: float = 0.1, num_samples: int = 500, seed: int = 0) -> ScaledPatterns:
  """`patterning` for each target (a row: the desired change of every component), each plan scaled so that
  no dataset's weight exceeds `max_weight` (the δh at which χ was measured, where first order holds): the
  scaled effect says how far the probes can move the components in that direction at that weight.

  With error bars (`stderr_DxH`, and `noise_BxDxH` draws correlated as the chains make them), the
  pseudo-inverse keeps only the directions of X whose singular values exceed the noise floor (the larger of
  the two): an exact solution through a direction that noise alone could produce is noise amplified (on the demo
  it gave plans whose spread exceeded their effect for every target). The part of a target outside the kept
  directions is reported as its residual. A plan's change is reported less its optimism (`Patterning.optimism_H`):
  on a synthetic rank-3 X its effect judged on X was 0.83 stderr too large on average; corrected, −0.03."""
  X = np.asarray(X_DxH, np.float64)
  targets = np.atleast_2d(np.asarray(targets_GxH, np.float64))
  if targets.ndim != 2 or targets.shape[1] != X.shape[1]:
    raise ValueError(f"targets must have one entry per component ({X.shape[1]}); got shape {targets.shape}")
  if (np.linalg.norm(targets, axis=1) == 0).any():
    raise ValueError("a patterning target is all zeros")
  singular = np.linalg.svd(X, compute_uv=False)
  floors = []
  if stderr_DxH is not None:
    floors.append(noise_floor(stderr_DxH, centre=False, seed=seed))
  if noise_BxDxH is not None:
    floors.append(top_singular_quantile(noise_BxDxH, centre=False))
  floor = max(floors) if floors else float("nan")
  rcond = max(floor / singular[0], 1e-10) if floors and singular[0] > 0 else 1e-10
  rank = int((singular > rcond * singular[0]).sum())
  rows = [patterning(X, t, X_stderr_DxH=stderr_DxH, X_noise_BxDxH=noise_BxDxH, num_samples=num_samples, seed=seed,
                     rcond=rcond) for t in targets]
  scale_G = np.array([max_weight / max(float(np.abs(r.delta_h_D).max()), 1e-300) for r in rows])
  return ScaledPatterns(
      delta_h_GxD=np.array([r.delta_h_D for r in rows]) * scale_G[:, None],
      delta_h_stderr_GxD=np.array([r.delta_h_stderr_D for r in rows]) * scale_G[:, None],
      change_GxH=np.array([r.predicted_H - r.optimism_H for r in rows]) * scale_G[:, None],
      change_stderr_GxH=np.array([r.predicted_stderr_H for r in rows]) * scale_G[:, None],
      residual_G=np.array([r.residual_norm / np.linalg.norm(t) for r, t in zip(rows, targets)]), rank=rank,
      noise_floor=floor)
