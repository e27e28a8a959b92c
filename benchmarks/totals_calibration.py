"""Are the error bars of Table 1's totals honest? Per-token χ with a known truth, observed through K chains as the
per-token runner observes them, and `token_stats.sign_totals` checked against the truth:
- the total positive and negative χ over the observed tokens: how often the interval holds the true total
  (what endless chains would give on the same tokens), with the noise floor's shift and without it (the chains'
  t-interval about the measured total alone, which noise inflates);
- the sum (linear in the tokens): how often its interval holds the true sum;
- how far noise inflated each sign total, as a share of the floor (in [0, 1] if the floor bounds it);
- the totals' spread from run to run of the same truth against their reported standard errors (1: calibrated).
Truths: tokens whose χ is 0 next to tokens that respond, at noise levels around the demo's (there the median
token's |χ| is 1.9 of its standard error), the chains' noise independent or partly shared by a chain's tokens.

  python -m benchmarks.totals_calibration              # ≈ 10 s on 2 cores
  python -m benchmarks.totals_calibration --trials=20  # quicker, rougher

Shape letters as in `suscept_jax.per_token`: C components, K chains, O observed contexts, J token positions.
"""
import numpy as np
import pandas as pd

from benchmarks import common
from suscept_jax import estimators, per_token
from suscept_jax.analysis import token_stats as ts

COMPONENTS, DATASETS, CONTEXTS, TOKENS, CHAINS, DELTA_H = 3, 3, 4, 31, 4, 0.1


def truth(zero_share: float, seed: int = 0, *, fixed: float | None = None):
  """[C, O, J] true per-token χ: a share of the tokens do not respond (0), the rest are heavy-tailed and lean
  positive on some cells (as the demo's heads do on their datasets); with `fixed`, every token at ±fixed (70 %
  positive), where noise decides the sign of some and a plug-in guess of the bias errs most."""
  rng = np.random.default_rng(seed)
  shape = (COMPONENTS, DATASETS * CONTEXTS, TOKENS)
  if fixed is not None:
    return fixed * np.where(rng.random(shape) < 0.7, 1.0, -1.0)
  lean_CxO = np.repeat(rng.normal(0.0, 0.5, (COMPONENTS, DATASETS)), CONTEXTS, axis=1)
  responding = rng.standard_t(4, shape) + lean_CxO[..., None]
  return np.where(rng.random(shape) < zero_share, 0.0, responding)


def observe(mu_CxOxJ, *, noise: float, shared: float, trial: int, heavy_tails: bool = False):
  """[C, K, O, J] per-chain per-token χ: the truth plus noise whose mean over K chains has standard deviation
  `noise` (token to token it varies by a factor of ≈ 2), a share of its variance `shared` by all of a chain's
  tokens in a context (a chain that wandered moves them together); Student-t(3) noise with `heavy_tails`."""
  rng = np.random.default_rng(1000 + trial)
  C, O, J = mu_CxOxJ.shape
  draw = (lambda size: rng.standard_t(3, size) / np.sqrt(3.0)) if heavy_tails else (lambda size: rng.normal(size=size))
  sigma_CxOxJ = noise * np.sqrt(CHAINS) * np.exp(0.35 * np.random.default_rng(7).normal(size=(C, O, J)))
  eps = np.sqrt(shared) * draw((C, CHAINS, O, 1)) + np.sqrt(1 - shared) * draw((C, CHAINS, O, J))
  return mu_CxOxJ[:, None] + sigma_CxOxJ[:, None] * eps


def table_of(per_chain_CxKxOxJ):
  """The runner's token table (one row per component × context × position) with χ and its standard error."""
  C, K, O, J = per_chain_CxKxOxJ.shape
  chi, stderr = estimators.mean_and_stderr(np.moveaxis(per_chain_CxKxOxJ, 1, 0), np.ones(K, bool))
  datasets_O = np.repeat(np.arange(DATASETS), CONTEXTS)
  return pd.DataFrame({"component": np.repeat(np.arange(C), O * J), "dataset": np.tile(np.repeat(datasets_O, J), C),
                       "chi": chi.reshape(-1), "chi_stderr": stderr.reshape(-1)}), datasets_O


def coverage(zero_share: float, noise: float, shared: float, trials: int, heavy_tails: bool = False,
             fixed_in_noise: float | None = None):
  """Over `trials` observations of one truth, means over its cells: shares of intervals that held the true
  positive total (with the floor's shift; without), the true negative total (with; without), the true sum;
  inflation of the sign totals as a share of the floor; run-to-run spread of each total / its RMS reported
  standard error. fixed_in_noise: every token's |χ| that many times the noise (`truth`'s `fixed`)."""
  mu_CxOxJ = truth(zero_share, fixed=None if fixed_in_noise is None else fixed_in_noise * noise)
  datasets_O = np.repeat(np.arange(DATASETS), CONTEXTS)
  cells = lambda values_CxOxJ: np.stack([values_CxOxJ[:, datasets_O == d].sum((1, 2)) for d in range(DATASETS)], 1)
  true_pos, true_neg, true_sum = (cells(np.clip(mu_CxOxJ, 0, None)), cells(np.clip(mu_CxOxJ, None, 0)),
                                  cells(mu_CxOxJ))
  found = []
  for trial in range(trials):
    per_chain = observe(mu_CxOxJ, noise=noise, shared=shared, trial=trial, heavy_tails=heavy_tails)
    table, datasets_O = table_of(per_chain)
    positive, negative = per_token.sign_sums_per_chain(per_chain, np.ones((COMPONENTS, CHAINS), bool))
    frame = ts.sign_totals(table, positive, negative, datasets_O, list(range(COMPONENTS)), list(range(DATASETS)),
                           DELTA_H)
    found.append(frame.sort_values(["component", "dataset"]))
  grid = lambda column: np.array([f[column].to_numpy().reshape(COMPONENTS, DATASETS) for f in found])  # [T, C, D]
  q = estimators.t_quantile(CHAINS)
  held = lambda truth_CxD, lo, hi: np.mean((lo <= truth_CxD) & (truth_CxD <= hi))
  pos, neg, floor = grid("positive"), grid("negative"), grid("noise_floor")
  spread = lambda column: np.mean(grid(column).std(0, ddof=1) / np.sqrt(np.mean(grid(f"{column}_stderr") ** 2, 0)))
  return {"positive held": held(true_pos, grid("positive_low"), grid("positive_high")),
          "positive held plain": held(true_pos, pos - q * grid("positive_stderr"), grid("positive_high")),
          "negative held": held(true_neg, grid("negative_low"), grid("negative_high")),
          "negative held plain": held(true_neg, grid("negative_low"), neg + q * grid("negative_stderr")),
          "sum held": held(true_sum, grid("sum_low"), grid("sum_high")),
          "inflation / floor": np.mean(((pos - true_pos) - (neg - true_neg)) / 2) / np.mean(floor),
          "floor / total": np.mean(floor) / np.mean(pos - neg) * 2,
          "spread / stderr": np.mean([spread(c) for c in ("positive", "negative", "sum")])}


SETTINGS = [  # (label, share of tokens with χ = 0, noise of a token's mean over chains, share shared, t3 noise,
    # every token's |χ| in units of the noise, or None)
    ("quiet", 0.3, 0.1, 0.0, False, None),
    ("demo-like", 0.3, 0.5, 0.0, False, None),
    ("demo-like, shared chain noise", 0.3, 0.5, 0.5, False, None),
    ("demo-like, t3 noise", 0.3, 0.5, 0.0, True, None),
    ("noisy", 0.3, 1.5, 0.0, False, None),
    ("mostly silent", 0.9, 0.5, 0.0, False, None),
    ("all silent", 1.0, 0.5, 0.0, False, None),
    ("every token at ±1 noise", 0.0, 0.5, 0.0, False, 1.0),
    ("every token at ±2 noise", 0.0, 0.5, 0.0, False, 2.0),
]


def main(argv=None):
  trials = common.parse_trials(argv, __doc__, 200)
  print(f"Table 1's intervals at 95 %: {COMPONENTS} components × {DATASETS} datasets, {CONTEXTS} contexts × "
        f"{TOKENS} tokens each, {CHAINS} chains, {trials} runs per setting")
  columns = ("positive held", "positive held plain", "negative held", "negative held plain", "sum held",
             "inflation / floor", "floor / total", "spread / stderr")
  print(f"{'truth':32s} " + " ".join(f"{h:>6s}" for h in ("pos", "plain", "neg", "plain", "sum", "infl", "floor",
                                                            "spread")))
  for label, zero_share, noise, shared, heavy_tails, fixed in SETTINGS:
    f = coverage(zero_share, noise, shared, trials, heavy_tails, fixed)
    print(f"{label:32s} " + " ".join(f"{f[c]:6.2f}" for c in columns))
  print("pos, neg: share of intervals that held the true total (plain: the chains' t-interval about the measured "
        "total, without the floor's shift); sum: the same for the sum; infl: mean inflation of a sign total by "
        "noise / the noise floor (in [0, 1] if the floor bounds it); floor: the floor / the sign totals' mean "
        "magnitude; spread: run-to-run std of a total / its RMS reported standard error")


if __name__ == "__main__":
  main()
