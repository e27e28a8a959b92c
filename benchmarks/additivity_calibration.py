"""Are the additivity view's error bars honest? Per-token and dataset-level χ with a known truth, observed as the
per-token runner observes them: a few contexts of each dataset, K chains shared by every cell (chain k of each
component sees the same batches; the dataset-level χ comes from the same chains), and
`token_stats.additivity_intervals` checked against the truth:
- the slope of the noiseless cells (dataset-level χ on δh·mean per-token χ over each dataset's whole population
  of contexts), corrected for the noise in both axes and not (the plain least-squares slope's resamples);
- each cell's difference (dataset-level χ − δh·mean per-token χ): how often its interval holds the true one.
Truths: additive (slope 1, as eq. 45 predicts on shared samples) and not (slope 1.6 with scatter), at the demo's
shape (9 components × 9 datasets, 4 contexts each, 4 chains) and at noise levels around the demo's.

  python -m benchmarks.additivity_calibration              # ≈ 1 min on 2 cores
  python -m benchmarks.additivity_calibration --trials=10  # quicker, rougher

Shape letters as in `suscept_jax.analysis.token_stats.additivity_intervals`: C components, K chains, O observed
contexts, D datasets.
"""
import numpy as np
import pandas as pd

from benchmarks import common
from suscept_jax.analysis import token_stats as ts

COMPONENTS, DATASETS, CONTEXTS, CHAINS, DELTA_H = 9, 9, 4, 4, 0.1


def truth(slope: float, scatter: float, seed: int = 0):
  """(x_true [C, D], y_true [C, D]) in per-token units (δh is applied by the observation): mean per-token χ over
  each dataset's population of contexts, and the dataset-level χ / δh."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(COMPONENTS, DATASETS)) * np.exp(0.5 * rng.normal(size=(COMPONENTS, 1)))
  return x, slope * x + scatter * rng.normal(size=x.shape)


def observe(x_true_CxD, y_true_CxD, *, context_noise: float, chain_noise: float, trial: int,
            heavy_tails: bool = False):
  """(context_chi [C, K, O], dataset_chi [P, C, K], context_datasets [O]): each observed context's mean per-token
  χ differs from its dataset's population mean (partly alike across components: the same context; with
  `heavy_tails` now and then by far, as the demo's contexts do), and each
  chain adds noise shared by every cell (chain k's batches) and its own, tied between the two axes."""
  rng = np.random.default_rng(trial)
  C, D = x_true_CxD.shape
  datasets_O = np.repeat(np.arange(D), CONTEXTS)
  # a context's departure from its dataset's mean: Gaussian, or Student-t with 3 d.o.f. scaled to unit variance
  draw = (lambda size: rng.standard_t(3, size) / np.sqrt(3.0)) if heavy_tails else (lambda size: rng.normal(size=size))
  shared_O = draw(len(datasets_O))
  context_CxO = x_true_CxD[:, datasets_O] + context_noise * (0.6 * shared_O + 0.8 * draw((C, len(datasets_O))))
  chain_K = rng.normal(size=CHAINS)  # chain k's batches, felt by every cell
  per_chain = np.sqrt(CHAINS) * chain_noise  # the noise of a mean over K chains is `chain_noise`
  own_CxKxD = rng.normal(size=(C, CHAINS, D))  # a cell's own chain noise, shared by its contexts and χ
  context_CxKxO = (context_CxO[:, None] + per_chain * (0.4 * chain_K[None, :, None] + 0.6 * own_CxKxD[..., datasets_O]
                                                      + 0.7 * rng.normal(size=(C, CHAINS, len(datasets_O)))))
  dataset_CxKxD = y_true_CxD[:, None] + per_chain * (0.4 * chain_K[None, :, None] + 0.6 * own_CxKxD
                                                     + 0.7 * rng.normal(size=(C, CHAINS, D)))
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


def coverage(slope: float, scatter: float, context_noise: float, chain_noise: float, trials: int,
             heavy_tails: bool = False):
  """Over `trials` observations of one truth: (slope interval held the true slope: corrected, plain least
  squares; mean share of cells whose difference interval held the true difference; mean share of cells called
  off the line; corrected and plain slopes' means)."""
  x_true, y_true = truth(slope, scatter)
  x_true_N, y_true_N = DELTA_H * x_true.reshape(-1), DELTA_H * y_true.reshape(-1)
  true_slope = np.polyfit(x_true_N, y_true_N, 1)[0]
  held, held_plain, cells, off, slopes, plain = [], [], [], [], [], []
  for trial in range(trials):
    context, dataset, datasets_O = observe(x_true, y_true, context_noise=context_noise, chain_noise=chain_noise,
                                           trial=trial, heavy_tails=heavy_tails)
    joined = joined_table(context, dataset, datasets_O)
    found = ts.additivity_intervals(joined, context, dataset, datasets_O, list(range(COMPONENTS)),
                                    list(range(DATASETS)), DELTA_H, num_resamples=200, seed=trial)
    plain_slope = np.polyfit(joined.predicted, joined.chi, 1)[0]
    held.append(found.slope_interval[0] <= true_slope <= found.slope_interval[1])
    bare = ts.additivity_intervals(joined, context, dataset, datasets_O, list(range(COMPONENTS)),
                                   list(range(DATASETS)), DELTA_H, num_resamples=200, seed=trial, correct_slope=False)
    held_plain.append(bare.slope_interval[0] <= true_slope <= bare.slope_interval[1])
    difference = y_true_N - x_true_N
    lo, hi = found.difference_interval_Nx2.T
    cells.append(np.mean((lo <= difference) & (difference <= hi)))
    off.append(found.off_line_N().mean())
    slopes.append(found.slope_corrected), plain.append(plain_slope)
  return {"true slope": true_slope, "held": np.mean(held), "held plain": np.mean(held_plain),
          "cells held": np.mean(cells), "off line": np.mean(off), "slope": np.mean(slopes),
          "plain slope": np.mean(plain)}


SETTINGS = [  # (label, slope, scatter, context noise, chain noise, heavy-tailed contexts), noise in per-token units
    ("additive, low noise", 1.0, 0.0, 0.2, 0.1, False),  # of the truth's spread over cells (≈ 1)
    ("additive, demo-like", 1.0, 0.0, 0.5, 0.2, False),
    ("additive, demo-like, t3 contexts", 1.0, 0.0, 0.5, 0.2, True),
    ("additive, high noise", 1.0, 0.0, 1.0, 0.4, False),
    ("slope 1.6 + scatter, demo-like", 1.6, 0.5, 0.5, 0.2, False),
    ("slope 1.6 + scatter, high noise", 1.6, 0.5, 1.0, 0.4, False),
]


def main(argv=None):
  trials = common.parse_trials(argv, __doc__, 40)
  print(f"additivity intervals at 95 %: {COMPONENTS} components × {DATASETS} datasets, {CONTEXTS} contexts each, "
        f"{CHAINS} chains, {trials} runs per setting")
  print(f"{'truth':34s} {'true':>6s} {'slope':>6s} {'plain':>6s} {'held':>6s} {'plain':>6s} {'cells':>6s} "
        f"{'off':>6s}")
  for label, slope, scatter, context_noise, chain_noise, heavy_tails in SETTINGS:
    f = coverage(slope, scatter, context_noise, chain_noise, trials, heavy_tails)
    print(f"{label:34s} {f['true slope']:6.2f} {f['slope']:6.2f} {f['plain slope']:6.2f} {f['held']:6.2f} "
          f"{f['held plain']:6.2f} {f['cells held']:6.2f} {f['off line']:6.2f}")
  print("slope: mean corrected slope; plain: mean least-squares slope; held: share of runs whose slope interval "
        "held the true slope (corrected, plain); cells: mean share of cells whose difference interval held the "
        "true difference; off: mean share of cells called off the line")


if __name__ == "__main__":
  main()
