"""Are the structural-inference error bars honest? Response matrices with a known truth, observed through K
chains as a sweep observes X (the probes of a checkpoint sharing the chains, when asked), and the report's
intervals checked against that truth:
- r between a PC's loadings and a head label (`label_correlation_intervals`): how often the 95 % interval holds
  the true r, with and without the bias correction, for a label following PC1 and one following PC2; and for
  labels unrelated to both (true r exactly 0), how often an interval wrongly excludes 0. On the suite's rank-2
  truth at three noise levels, on one whose PC2 sits below the noise floor, and on a common-response PC1 (the
  demo's shape: the heads moving together, with small differences the label follows);
- a patterning plan's effect (`scaled_patterns`), judged on the true X: the mean error in stderr units and
  how often the 95 % interval misses, reported on X as planned (in sample) and less its optimism;
- the data couplings' intervals (`data_coupling_intervals`) against bare percentiles of the resamples, and
  each row's score intervals (`score_intervals`, the report's bands over training).

  python -m benchmarks.structure_calibration              # ≈ 2 min on 2 cores
  python -m benchmarks.structure_calibration --trials=10  # quicker, rougher

Shape letters as in `suscept_jax.analysis.structure`: R rows (5 checkpoints × 9 probes), H heads, K chains,
D datasets (probes).
"""
import numpy as np

from benchmarks import common
from suscept_jax.analysis import structure as st

CHECKPOINTS, PROBES, HEADS = 5, 9, 8


def rank_two_truth(second_scale: float = 1.5):
  """(X_true [R, H], chain groups [R], labels): a rank-2 X (PC scales 5 and `second_scale`) of 5 checkpoints ×
  9 probes and 8 heads, and a head label following each generating direction (the suite's truth)."""
  rng0 = np.random.default_rng(0)
  groups_R = np.repeat(np.arange(CHECKPOINTS), PROBES)
  scores = rng0.normal(size=(len(groups_R), 2)) * [5.0, second_scale]
  P, _ = np.linalg.qr(rng0.normal(size=(HEADS, 2)))
  label_2 = P[:, 1] + 0.3 * rng0.normal(size=HEADS)  # drawn first: the suite's first label, unchanged
  labels = {"follows PC1": P[:, 0] + 0.3 * rng0.normal(size=HEADS), "follows PC2": label_2}
  return scores @ P.T, groups_R, labels


def common_response_truth(eps: float = 0.1):
  """(X_true, groups, labels): PC1 a response every head shares, scaled by (1 + eps·u) per head, over uneven
  column spreads; the label follows u, PC2 another direction."""
  rng0 = np.random.default_rng(1)
  groups_R = np.repeat(np.arange(CHECKPOINTS), PROBES)
  u, v = np.linalg.qr(np.column_stack([np.ones(HEADS), rng0.normal(size=(HEADS, 2))]))[0][:, 1:].T * np.sqrt(HEADS)
  scores = rng0.normal(size=(len(groups_R), 2)) * [5.0, 0.75]
  spreads_H = np.exp(0.5 * rng0.normal(size=HEADS))
  X_true = (np.outer(scores[:, 0], 1 + eps * u) + np.outer(scores[:, 1], v)) * spreads_H
  return X_true, groups_R, {"follows PC1": u + 0.3 * rng0.normal(size=HEADS)}


def through_chains(X_true_RxH, groups_R, noise: float, shared: bool, trial: int, K: int = 4):
  """[R, H, K] per-chain χ: X_true plus noise of std `noise` in each cell's mean of K chains. With `shared`,
  chain k of a checkpoint moves every cell of its rows (the probes share the chains: correlation 0.4 between
  them) and, a little, every head (they share the batches)."""
  rng = np.random.default_rng(trial)
  eps = rng.normal(size=X_true_RxH.shape + (K,))
  if shared:
    num_groups = int(groups_R.max()) + 1
    chain_shift = (np.sqrt(0.18) * rng.normal(size=(num_groups, 1, K))
                   + np.sqrt(0.82) * rng.normal(size=(num_groups, X_true_RxH.shape[1], K)))
    eps = np.sqrt(0.4) * chain_shift[groups_R] + np.sqrt(0.6) * eps
  return X_true_RxH[..., None] + noise * np.sqrt(K) * eps


def unrelated_labels(truth_kxH, count: int = 5, seed: int = 7) -> dict:
  """Labels whose r with every PC of `truth_kxH` is exactly 0 (orthogonal to its loadings and to a constant)."""
  basis, _ = np.linalg.qr(np.column_stack([np.ones(truth_kxH.shape[1]), truth_kxH.T]))
  draws = np.random.default_rng(seed).normal(size=(count, truth_kxH.shape[1]))
  return {f"unrelated {i}": v - basis @ (basis.T @ v) for i, v in enumerate(draws)}


def r_interval_rates(truth, noise: float, shared: bool, trials: int, K: int = 4, resamples: int = 60) -> dict:
  """{(kind, label): [2] rate over trials}: for a label the truth names, how often the interval holds its
  true r (the truth's PC oriented as the run's); for the unrelated labels, how often one excludes 0."""
  X_true, groups_R, labels = truth
  truth_kxH = st.pca(X_true).loadings_kxH[:2]
  nulls = unrelated_labels(truth_kxH)
  r_true = st.label_correlations(truth_kxH, labels)
  rates: dict = {}
  for trial in range(trials):
    per_chain = through_chains(X_true, groups_R, noise, shared, trial, K)
    X = per_chain.mean(-1)
    point_kxH = st.pca(X).loadings_kxH[:2]
    orientation_k = np.sign((point_kxH * truth_kxH).sum(1))
    stab = st.bootstrap_stability(X, st.chain_resampler(per_chain, shared_chains_R=groups_R if shared else None), 2,
                                  num_resamples=resamples, seed=trial,
                                  spread_correction=st.bootstrap_spread_correction(K),
                                  interval_widening=st.small_sample_widening(K))
    both = {**labels, **nulls}
    intervals = {"uncorrected": st.label_correlation_intervals(stab.loadings_BxkxH, both, point_loadings_kxH=None,
                                                                 noise_matched_BxkxH=None),
                 "corrected": st.label_correlation_intervals(stab.loadings_BxkxH, both, point_loadings_kxH=point_kxH,
                                                             noise_matched_BxkxH=stab.noise_matched_loadings_BxkxH)}
    for kind, by_label in intervals.items():
      for name in labels:
        lo, hi = by_label[name].T
        held = (lo <= r_true[name] * orientation_k) & (r_true[name] * orientation_k <= hi)
        rates[kind, name] = rates.get((kind, name), 0) + held / trials
      for name in nulls:
        lo, hi = by_label[name].T
        rates[kind, "unrelated"] = rates.get((kind, "unrelated"), 0) + ((lo > 0) | (hi < 0)) / (trials * len(nulls))
  return rates


def patterning_errors(noise: float, trials: int, num_samples: int = 200) -> dict:
  """{kind: (mean z, miss rate)} of a plan's effect along its target judged on the true X, z = (reported −
  true) / stderr, for the in-sample effect (the plan on the X it was made on) and the corrected one; a
  rank-3 X of 9 probes × 8 components, each component's own target."""
  rng0 = np.random.default_rng(0)
  X_true = rng0.normal(size=(PROBES, 3)) @ np.diag([5.0, 2.0, 1.0]) @ rng0.normal(size=(3, HEADS))
  targets_GxH = np.eye(HEADS)[:3]
  z = {"in sample": [], "corrected": []}
  for trial in range(trials):
    X = X_true + noise * np.random.default_rng(trial).normal(size=X_true.shape)
    plans = st.scaled_patterns(X, targets_GxH, np.full(X.shape, noise), num_samples=num_samples, seed=trial)
    true_change_GxH = plans.delta_h_GxD @ X_true
    stderr_G = plans.effect_stderr_G(targets_GxH)
    for kind, change_GxH in (("in sample", plans.delta_h_GxD @ X), ("corrected", plans.change_GxH)):
      z[kind].append(((change_GxH - true_change_GxH) * targets_GxH).sum(1) / stderr_G)
  return {kind: (float(np.mean(v)), float(np.mean(np.abs(v) > 1.96))) for kind, v in z.items()}


def coupling_coverage(truth, noise: float, shared: bool, trials: int, K: int = 4, resamples: int = 60) -> dict:
  """{kind: ([2] coverage of the true couplings, [2] mean width) (PC1, PC2)} over datasets and trials: the
  report's intervals (`data_coupling_intervals`, reliability-corrected) against the widened resamples' bare
  percentiles (uncorrected)."""
  X_true, groups_R, _ = truth
  probes_R = np.tile(np.arange(PROBES), CHECKPOINTS)
  truth_pca = st.pca(X_true)
  couplings = lambda pca_: np.array(list(st.data_couplings(pca_.scores_Rxk[:, :2], probes_R).values()))  # [D, 2]
  truth_Dx2 = couplings(truth_pca)
  widen = st.small_sample_widening(K)
  found = {kind: (np.zeros(2), np.zeros(2)) for kind in ("uncorrected", "corrected")}
  for trial in range(trials):
    per_chain = through_chains(X_true, groups_R, noise, shared, trial, K)
    X = per_chain.mean(-1)
    estimate = st.pca(X)
    resample = st.chain_resampler(per_chain, shared_chains_R=groups_R if shared else None)
    rng = np.random.default_rng(trial)
    spread_BxDx2 = []
    for _ in range(resamples):
      again = st.pca(X + widen * (resample(rng) - X))
      spread_BxDx2.append(couplings(again) * st.signs_against(again.loadings_kxH[:2], estimate.loadings_kxH[:2]))
    stderr_RxH = per_chain.std(-1, ddof=1) / np.sqrt(K)
    corrected = st.data_coupling_intervals(st.corrected_scores(X, resample, stderr_RxH, 2, num_chains=K,
                                                               num_resamples=resamples, seed=trial), probes_R, None)
    target_Dx2 = truth_Dx2 * np.sign((estimate.loadings_kxH[:2] * truth_pca.loadings_kxH[:2]).sum(1))
    intervals = {"uncorrected": np.percentile(spread_BxDx2, [2.5, 97.5], axis=0),
                 "corrected": np.moveaxis(np.array(list(corrected.values())), -1, 0)}
    for kind, (lo, hi) in intervals.items():
      found[kind][0][:] += ((lo <= target_Dx2) & (target_Dx2 <= hi)).mean(0) / trials
      found[kind][1][:] += (hi - lo).mean(0) / trials
  return found


def score_coverage(truth, noise: float, shared: bool, trials: int, K: int = 4, resamples: int = 60) -> tuple:
  """([2] coverage of the true per-row scores (PC1, PC2), [2] mean width) by `score_intervals`, over rows and
  trials (the bands of the report's PC time series)."""
  X_true, groups_R, _ = truth
  truth_pca = st.pca(X_true)
  coverage, width = np.zeros(2), np.zeros(2)
  for trial in range(trials):
    per_chain = through_chains(X_true, groups_R, noise, shared, trial, K)
    X = per_chain.mean(-1)
    resample = st.chain_resampler(per_chain, shared_chains_R=groups_R if shared else None)
    scores = st.corrected_scores(X, resample, per_chain.std(-1, ddof=1) / np.sqrt(K), 2, num_chains=K,
                                 num_resamples=resamples, seed=trial)
    lo, hi = np.moveaxis(st.score_intervals(scores), -1, 0)
    target_Rx2 = truth_pca.scores_Rxk[:, :2] * np.sign((st.pca(X).loadings_kxH[:2] * truth_pca.loadings_kxH[:2]).sum(1))
    coverage += ((lo <= target_Rx2) & (target_Rx2 <= hi)).mean(0) / trials
    width += (hi - lo).mean(0) / trials
  return coverage, width


def _pair(values) -> str:
  return " ".join(f"{v:4.2f}" for v in values)


def main(argv=None):
  trials = common.parse_trials(argv, __doc__, 40, "noisy copies per setting (patterning: 5× as many)")
  settings = [("rank-2", rank_two_truth(), 0.3, False), ("rank-2", rank_two_truth(), 0.6, True),
              ("rank-2", rank_two_truth(), 1.0, False), ("weak PC2", rank_two_truth(0.5), 0.3, False),
              ("weak PC2", rank_two_truth(0.5), 0.6, True), ("common PC1", common_response_truth(), 0.3, True)]
  near_95 = np.sqrt(0.95 * 0.05 / trials)
  print(f"r of a PC with a head label, 95 % intervals from 4 chains, {trials} runs per setting: coverage of "
        f"the true r [PC1 PC2]; unrelated labels: share of intervals excluding 0 [PC1 PC2]. A rate from "
        f"{trials} runs is itself uncertain: ± {near_95:.3f} (one s.e.) near 0.95")
  print(f"  {'truth':11s} {'noise':15s} {'label':12s} {'uncorrected':>11s}  {'corrected':>9s}")
  for name, truth, noise, shared in settings:
    rates = r_interval_rates(truth, noise, shared, trials)
    for label in list(truth[2]) + ["unrelated"]:
      print(f"  {name:11s} {noise:.1f} {'shared' if shared else 'independent':11s} {label:12s} "
            f"{_pair(rates['uncorrected', label])}  {_pair(rates['corrected', label])}", flush=True)
  print(f"\npatterning: a plan's effect along its target against the true X, {5 * trials} runs per noise "
        f"level: mean (reported − true) / stderr, share of 95 % intervals missing")
  for noise in (0.1, 0.3, 0.6, 1.0):
    errors = patterning_errors(noise, 5 * trials)
    print(f"  noise {noise:.1f}: " + "; ".join(f"{kind} {z:+.2f}, {miss:.3f}" for kind, (z, miss) in errors.items()),
          flush=True)
  print(f"\ndata couplings: coverage [PC1 PC2] of the true couplings by 95 % intervals (mean width in brackets), "
        f"{trials} runs per setting: the report's (reliability-corrected) against bare widened percentiles")
  for name, truth, noise, shared in settings[:3] + [("rank-2", rank_two_truth(), 1.0, True)] + settings[4:]:
    coverage = coupling_coverage(truth, noise, shared, trials)
    print(f"  {name:11s} {noise:.1f} {'shared' if shared else 'independent':11s}: " + "; ".join(
        f"{kind} {_pair(rate)} [{_pair(width)}]" for kind, (rate, width) in coverage.items()), flush=True)
  print(f"\nscores of each row (probe × checkpoint; the bands of the PC time series): coverage [PC1 PC2] of the true "
        f"scores by `score_intervals` (mean width in brackets), {trials} runs per setting")
  for name, truth, noise, shared in settings:
    rate, width = score_coverage(truth, noise, shared, trials)
    print(f"  {name:11s} {noise:.1f} {'shared' if shared else 'independent':11s}: {_pair(rate)} [{_pair(width)}]",
          flush=True)


if __name__ == "__main__":
  main()
