"""Are the additivity view's error bars honest? Per-token and dataset-level χ with a known truth, observed as the
per-token runner observes them: n contexts of each dataset, K chains shared by every cell (chain k of each
component sees the same batches; the dataset-level χ comes from the same chains), and
`token_stats.additivity_intervals` checked against the truth:
- the slope of the noiseless cells (dataset-level χ on δh·mean per-token χ over each dataset's whole population
  of contexts), corrected for the noise in both axes and not (the plain least-squares slope's resamples);
- each cell's difference (dataset-level χ − δh·mean per-token χ): how often its interval holds the true one;
- how wide the intervals are against the estimates' own spread over the runs (1 is honest; a run redraws both
  the observed contexts and the chains, as the intervals claim to cover).
Truths: additive (slope 1, as eq. 45 predicts on shared samples) and not (slope 1.6 with scatter), at the demo's
shape (9 components × 9 datasets, 4 contexts each, 4 chains) and at noise levels around the demo's; then the
additive truth at 4 and 16 chains and contexts, with a chain's noise at two contexts of one dataset correlated by
ρ = 0 (it all differs between contexts), 0.5 and 0.9, at the demo-like noise and with noisier chains (a chain's
noise at a context twice the contexts' spread: the chains' share of the contexts' spread, counted twice before
the forty-fifth session, matters most there). An interval must learn its noise from the few chains and contexts,
so an honest one is wider than the estimates' spread by about t_{K−1}/z × the mean of a K-chain spread: 1.5 at
K = n = 4, 1.07 at 16 (the slope pools every dataset's contexts: nearer 1 where the contexts' noise leads).

  python -m benchmarks.additivity_calibration              # ≈ 2 min on 2 cores
  python -m benchmarks.additivity_calibration --trials=10  # quicker, rougher

Shape letters as in `suscept_jax.analysis.token_stats.additivity_intervals`: C components, K chains, O observed
contexts, D datasets.
"""
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.special

from benchmarks import common
from suscept_jax.analysis import token_stats as ts

COMPONENTS, DATASETS, CONTEXTS, CHAINS, DELTA_H = 9, 9, 4, 4, 0.1


class Setting(NamedTuple):
  """One truth and how it is observed; noise in per-token units of the truth's spread over cells (≈ 1)."""
  label: str
  slope: float = 1.0
  scatter: float = 0.0
  context_noise: float = 0.5  # a context's departure from its dataset's mean
  chain_noise: float = 0.2  # of a context's mean over 4 chains (one chain's is twice it, whatever K is)
  heavy_tails: bool = False  # contexts depart Student-t (3 d.o.f.), now and then by far, as the demo's do
  chains: int = CHAINS
  contexts: int = CONTEXTS  # observed per dataset
  rho: float = 0.5  # correlation of a chain's noise at two contexts of one dataset
  plain: bool = True  # also the plain least-squares slope's resamples


SETTINGS = [
    Setting("additive, low noise", context_noise=0.2, chain_noise=0.1),
    Setting("additive, demo-like"),
    Setting("additive, demo-like, t3 contexts", heavy_tails=True),
    Setting("additive, high noise", context_noise=1.0, chain_noise=0.4),
    Setting("slope 1.6 + scatter, demo-like", slope=1.6, scatter=0.5),
    Setting("slope 1.6 + scatter, high noise", slope=1.6, scatter=0.5, context_noise=1.0, chain_noise=0.4),
] + [Setting(f"{label}, K={k} n={n} rho={rho}", chain_noise=chain_noise, chains=k, contexts=n, rho=rho, plain=False)
     for label, chain_noise in (("additive", 0.2), ("noisy chains", 0.5))
     for k in (4, 16) for n in (4, 16) for rho in (0.0, 0.5, 0.9)]


def truth(slope: float, scatter: float, seed: int = 0):
  """(x_true [C, D], y_true [C, D]) in per-token units (δh is applied by the observation): mean per-token χ over
  each dataset's population of contexts, and the dataset-level χ / δh."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(COMPONENTS, DATASETS)) * np.exp(0.5 * rng.normal(size=(COMPONENTS, 1)))
  return x, slope * x + scatter * rng.normal(size=x.shape)


def observe(x_true_CxD, y_true_CxD, *, context_noise: float, chain_noise: float, trial: int,
            heavy_tails: bool = False, chains: int = CHAINS, contexts: int = CONTEXTS, rho: float = 0.5):
  """(context_chi [C, K, O], dataset_chi [P, C, K], context_datasets [O]): each observed context's mean per-token
  χ differs from its dataset's population mean (partly alike across components: the same context), and each
  chain adds noise: a part shared by a cell's contexts and its dataset-level χ (partly chain k's batches, felt by
  every cell; correlation ρ between two contexts) and a part each context has alone."""
  rng = np.random.default_rng(trial)
  C, D = x_true_CxD.shape
  datasets_O = np.repeat(np.arange(D), contexts)
  draw = (lambda size: rng.standard_t(3, size) / np.sqrt(3.0)) if heavy_tails else (lambda size: rng.normal(size=size))
  shared_O = draw(len(datasets_O))
  context_CxO = x_true_CxD[:, datasets_O] + context_noise * (0.6 * shared_O + 0.8 * draw((C, len(datasets_O))))
  per_chain = np.sqrt(CHAINS) * chain_noise
  cell_CxKxD = (0.4 * rng.normal(size=chains)[None, :, None] + 0.6 * rng.normal(size=(C, chains, D))) / np.sqrt(0.52)
  alone_CxKxO = rng.normal(size=(C, chains, len(datasets_O)))
  context_CxKxO = context_CxO[:, None] + per_chain * (np.sqrt(rho) * cell_CxKxD[..., datasets_O]
                                                      + np.sqrt(1 - rho) * alone_CxKxO)
  dataset_CxKxD = y_true_CxD[:, None] + per_chain * (0.7 * cell_CxKxD + 0.7 * rng.normal(size=(C, chains, D)))
  return context_CxKxO, DELTA_H * np.moveaxis(dataset_CxKxD, -1, 0), datasets_O


def joined_table(context_CxKxO, dataset_PxCxK, datasets_O):
  """`additivity`'s joined table (one row per component × dataset), from the per-chain values."""
  C, _, _ = context_CxKxO.shape
  rows = []
  for c in range(C):
    for d in range(dataset_PxCxK.shape[0]):
      rows.append({"component": c, "dataset": d,
                   "predicted": DELTA_H * context_CxKxO[c][:, datasets_O == d].mean(),
                   "chi": dataset_PxCxK[d, c].mean()})
  return pd.DataFrame(rows)


def width_over_spread(widths, estimates, level: float = 0.95) -> float:
  """Mean interval width over the width a `level` normal interval of the estimates' spread over runs has: 1 is
  honest, above 1 too wide. Per column of `estimates` (cells), averaged."""
  z = scipy.special.ndtri(0.5 + level / 2)
  spread = np.std(np.asarray(estimates, np.float64), axis=0, ddof=1)
  return float(np.mean(np.mean(widths, axis=0) / (2 * z * spread)))


def coverage(setting: Setting, trials: int):
  """Over `trials` observations of one truth: slope interval held the true slope (corrected; plain least squares
  where `setting.plain`); the slope's interval width over its spread; mean share of cells whose difference interval
  held the true difference, and their width over spread; mean share of cells called off the line; corrected and
  plain slopes' means."""
  s = setting
  x_true, y_true = truth(s.slope, s.scatter)
  x_true_N, y_true_N = DELTA_H * x_true.reshape(-1), DELTA_H * y_true.reshape(-1)
  true_slope = np.polyfit(x_true_N, y_true_N, 1)[0]
  found, plain = [], []
  for trial in range(trials):
    context, dataset, datasets_O = observe(x_true, y_true, context_noise=s.context_noise, chain_noise=s.chain_noise,
                                           trial=trial, heavy_tails=s.heavy_tails, chains=s.chains,
                                           contexts=s.contexts, rho=s.rho)
    joined = joined_table(context, dataset, datasets_O)
    intervals = lambda **kw: ts.additivity_intervals(joined, context, dataset, datasets_O, list(range(COMPONENTS)),
                                                     list(range(DATASETS)), DELTA_H, num_resamples=200, seed=trial,
                                                     **kw)
    found.append((intervals(), joined.chi.to_numpy() - joined.predicted.to_numpy()))
    plain.append((intervals(correct_slope=False).slope_interval if s.plain else np.full(2, np.nan),
                  np.polyfit(joined.predicted, joined.chi, 1)[0]))
  holds = lambda lo_hi, value: (lo_hi[..., 0] <= value) & (value <= lo_hi[..., 1])
  slope_intervals = np.array([f.slope_interval for f, _ in found])
  difference_intervals_TxNx2 = np.array([f.difference_interval_Nx2 for f, _ in found])
  return {"true slope": true_slope, "held": np.mean(holds(slope_intervals, true_slope)),
          "held plain": np.mean(holds(np.array([p for p, _ in plain]), true_slope)) if s.plain else float("nan"),
          "slope width": width_over_spread(np.diff(slope_intervals)[:, 0], [f.slope_corrected for f, _ in found]),
          "cells held": np.mean(holds(difference_intervals_TxNx2, y_true_N - x_true_N)),
          "cells width": width_over_spread(np.diff(difference_intervals_TxNx2)[..., 0], [d for _, d in found]),
          "off line": np.mean([f.off_line_N().mean() for f, _ in found]),
          "slope": np.mean([f.slope_corrected for f, _ in found]), "plain slope": np.mean([p for _, p in plain])}


def main(argv=None):
  trials = common.parse_trials(argv, __doc__, 40)
  print(f"additivity intervals at 95 %: {COMPONENTS} components × {DATASETS} datasets, K chains and n contexts "
        f"each ({CHAINS} and {CONTEXTS} unless named), {trials} runs per setting")
  print(f"{'truth':34s} {'true':>6s} {'slope':>6s} {'plain':>6s} {'held':>6s} {'plain':>6s} {'width':>6s} "
        f"{'cells':>6s} {'width':>6s} {'off':>6s}")
  for setting in SETTINGS:
    f = coverage(setting, trials)
    plain_held = f"{f['held plain']:6.2f}" if setting.plain else f"{'-':>6s}"  # (not computed for the grid)
    print(f"{setting.label:34s} {f['true slope']:6.2f} {f['slope']:6.2f} {f['plain slope']:6.2f} {f['held']:6.2f} "
          f"{plain_held} {f['slope width']:6.2f} {f['cells held']:6.2f} {f['cells width']:6.2f} "
          f"{f['off line']:6.2f}", flush=True)
  print("slope: mean corrected slope; plain: mean least-squares slope; held: share of runs whose slope interval "
        "held the true slope (corrected, plain); width: mean interval width over 2·1.96 × the estimates' spread "
        "over runs (slope; cells' differences; honest: ≈ 1.5 at K = n = 4, 1.07 at 16); cells: mean share of "
        "cells whose difference interval held the true difference; off: mean share of cells called off the line")


if __name__ == "__main__":
  main()
