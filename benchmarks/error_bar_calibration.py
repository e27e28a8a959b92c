"""Are the error bars honest? Seed-to-seed spread of χ and the LLC against the stderr each run reports.

A quadratic toy (known Gaussian posterior) with genuine mini-batching: N = 4096 samples whose targets
spread widely (so every batch is noisy), batch 16 ≪ N, δh 0.25, one probe with 3× the curvature on two of
four coordinates; components "full" and a restricted one. For each chain count K, `seeds` independent
runs give the seed-to-seed std of each estimate; calibrated error bars have
    ratio = std over seeds / RMS of the reported stderr ≈ 1.
`shared_streams=True` re-creates the old design (every chain reads one data stream) for comparison: its
error bars miss the batch noise common to all chains. Per-token χ (each of `OBSERVED` probe samples a
one-token "context") and the BIF's covariance and correlation of losses (queries × samples of the probe) are
checked the same way, cell by cell.

  python -m benchmarks.error_bar_calibration [--seeds=100] [--num_draws=200]

Shape letters: S seeds, E estimates, C components, O observed probe samples.
"""
import argparse
import contextlib
import time
from unittest import mock

import numpy as np

import suscept_jax as sj
from suscept_jax import streams, toys

N, DIM, BATCH, DELTA_H = 4096, 4, 16, 0.25
OBSERVED = 8  # probe samples observed as one-token contexts by the per-token check
RESTRICTED = np.array([True, False, True, False])


def problem(spread: float = 1.0):
  """(base, probes, w*, components) of the calibration toy."""
  rng = np.random.default_rng(0)
  base = toys.quadratic_dataset(rng, N, rng.uniform(0.5, 1.5, (N, DIM)), spread)
  probe_curvature = rng.uniform(0.5, 1.5, (N, DIM)) * np.array([3.0, 3.0, 1.0, 1.0])
  probe = toys.quadratic_dataset(rng, N, probe_curvature, spread)
  return base, {"curvy": probe}, toys.quadratic_minimum(base), {"full": None, "restricted": {"w": RESTRICTED}}


def sgld_config(num_chains: int, num_draws: int, num_burnin: int = 0) -> sj.SGLDConfig:
  """The toy's settings; MALA at the default (every 10th draw): the schedule users run, so the calibration
  covers it."""
  return sj.SGLDConfig(step_size=1e-3, localization=10.0, nbeta=100.0, num_chains=num_chains, num_draws=num_draws,
                       num_burnin=num_burnin)


def calibration_ratio(values_SxE, stderrs_SxE) -> np.ndarray:
  """[E] seed-to-seed std of each estimate over the RMS of the stderr its runs reported (rows: seeds); ≈ 1 when
  the error bars are calibrated, NaN where every reported stderr is 0 (an estimate that is exactly 0)."""
  values, stderrs = np.asarray(values_SxE, np.float64), np.asarray(stderrs_SxE, np.float64)
  rms = np.sqrt((stderrs**2).mean(0))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(rms > 0, values.std(0, ddof=1) / np.where(rms > 0, rms, 1), np.nan)


def predictions(num_draws: int = 100, spread: float = 1.0) -> dict:
  """{(quantity, component): value} from the mini-batch closed form (toys.quadratic_minibatch_prediction)."""
  base, probes, _, comps = problem(spread)
  out = {}
  for comp, mask in comps.items():
    free = np.ones(DIM, bool) if mask is None else mask["w"]
    llc, chi = toys.quadratic_minibatch_prediction(
        base, probes["curvy"], free, config=sgld_config(1, num_draws), batch_size=BATCH,
        realised_fraction=sj.realised_fraction(BATCH, DELTA_H, num_draws))
    out[("chi", comp)], out[("llc", comp)] = chi, llc
  return out


def measure(num_chains: int, seeds, *, num_draws: int = 100, num_burnin: int = 0, shared_streams: bool = False,
            spread: float = 1.0):
  """{(quantity, component): (seed-to-seed std, RMS reported stderr, mean)} over `seeds` runs."""
  base, probes, w_star, comps = problem(spread)
  config = sgld_config(num_chains, num_draws, num_burnin)
  patch = (mock.patch.object(streams, "stream_seed", lambda seed, checkpoint, chain: (seed, checkpoint, 0))
           if shared_streams else contextlib.nullcontext())
  values = {}
  with patch:
    for seed in seeds:
      res = sj.estimate_susceptibilities(toys.quadratic_loss, w_star, comps, base, probes, config=config,
                                         batch_size=BATCH, delta_h=DELTA_H, seed=int(seed), progress=False)
      for c, comp in enumerate(res.component_names):
        values.setdefault(("chi", comp), []).append((res.chi[0, c], res.chi_stderr[0, c]))
        values.setdefault(("llc", comp), []).append((res.llc[c], res.llc_stderr[c]))
  out = {}
  for key, pairs in values.items():
    est, err = np.array(pairs).T
    out[key] = (float(est.std(ddof=1)), float(np.sqrt(np.mean(err**2))), float(est.mean()))
  return out


def measure_per_token(num_chains: int, seeds, *, num_draws: int = 100, num_burnin: int = 0):
  """{component: [OBSERVED] seed-to-seed std / RMS reported stderr of each observed token's χ} over `seeds`."""
  base, probes, w_star, comps = problem()
  observed = {k: v[:OBSERVED] for k, v in probes["curvy"].items()}
  token_loss = lambda params, contexts: toys.quadratic_loss(params, contexts)[:, None]  # one token per context
  config = sgld_config(num_chains, num_draws, num_burnin)
  chi, err = [], []
  for seed in seeds:
    res = sj.estimate_per_token_susceptibilities(toys.quadratic_loss, token_loss, w_star, comps, base, observed,
                                                 config=config, batch_size=BATCH, delta_h=DELTA_H, seed=int(seed),
                                                 progress=False)
    chi.append(res.chi[..., 0])
    err.append(res.chi_stderr[..., 0])
  ratio_CxO = calibration_ratio(chi, err)
  return {comp: ratio_CxO[c] for c, comp in enumerate(res.component_names)}


def measure_bif(num_chains: int, seeds, *, num_draws: int = 100, num_burnin: int = 0):
  """{"covariance" | "correlation": (ratio, mean over seeds)}, each [C, Q, S]: seed-to-seed std / RMS reported
  stderr of the BIF between 3 query and 4 sample losses of the probe, and the estimate's mean."""
  base, probes, w_star, comps = problem()
  queries = {k: v[:3] for k, v in probes["curvy"].items()}
  samples = {k: v[3:7] for k, v in probes["curvy"].items()}
  config = sgld_config(num_chains, num_draws, num_burnin)
  draws = {"covariance": ([], []), "correlation": ([], [])}
  for seed in seeds:
    res = sj.estimate_bif(toys.quadratic_loss, w_star, base, queries, samples, components=comps, config=config,
                          batch_size=BATCH, seed=int(seed), progress=False)
    for name, (values, errors) in draws.items():
      values.append(getattr(res, name)[:, :, 0, :, 0])
      errors.append(getattr(res, f"{name}_stderr")[:, :, 0, :, 0])
  out = {}
  for name, (values, errors) in draws.items():
    out[name] = (calibration_ratio(values, errors), np.mean(values, 0))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seeds", type=int, default=100)
  parser.add_argument("--num_draws", type=int, default=200)
  parser.add_argument("--num_burnin", type=int, default=50)
  args = parser.parse_args()
  expected = predictions(args.num_draws)
  print(f"quadratic toy: N={N}, dim {DIM}, batch {BATCH}, δh {DELTA_H}, {args.num_draws} draws, {args.seeds} seeds; "
        f"ratio = seed-to-seed std / RMS reported stderr (calibrated: ≈ 1; accepted band [0.75, 1.33])")
  print("'predicted': mini-batch closed form (suscept_jax.toys.quadratic_minibatch_prediction); 'z' compares the "
        "mean over seeds with it")
  print(f"{'streams':>9} {'K':>3} {'quantity':>8} {'component':>11} {'mean':>11} {'predicted':>11} {'z':>6} "
        f"{'std':>10} {'RMS se':>10} {'ratio':>6}")
  for shared in (False, True):
    for k in (4, 16):
      t0 = time.perf_counter()
      table = measure(k, range(args.seeds), num_draws=args.num_draws, num_burnin=args.num_burnin,
                      shared_streams=shared)
      for (quantity, comp), (std, rms, mean) in table.items():
        z = (mean - expected[(quantity, comp)]) / (std / np.sqrt(args.seeds))
        print(f"{'shared' if shared else 'per-chain':>9} {k:>3} {quantity:>8} {comp:>11} {mean:>11.3e} "
              f"{expected[(quantity, comp)]:>11.3e} {z:>6.1f} {std:>10.3e} {rms:>10.3e} {std / rms:>6.2f}")
      print(f"{'':>9} ({time.perf_counter() - t0:.0f} s)")
  print(f"per-token χ of {OBSERVED} observed probe samples (per-chain streams): ratio per token")
  for k in (4, 16):
    for comp, ratios in measure_per_token(k, range(args.seeds), num_draws=args.num_draws,
                                          num_burnin=args.num_burnin).items():
      print(f"{'per-token':>9} {k:>3} {comp:>11}  mean {ratios.mean():.2f}  "
            f"range [{ratios.min():.2f}, {ratios.max():.2f}]")
  print("BIF between 3 query and 4 sample losses of the probe (per-chain streams): ratio per cell")
  for k in (4, 16):
    for name, (ratio, mean) in measure_bif(k, range(args.seeds), num_draws=args.num_draws,
                                           num_burnin=args.num_burnin).items():
      near_one = np.abs(mean) > 0.95
      print(f"{'BIF':>9} {k:>3} {name:>11}  mean {ratio.mean():.2f}  range [{ratio.min():.2f}, {ratio.max():.2f}]"
            + (f"; |value| > 0.95: {np.round(ratio[near_one], 2).tolist()}" if name == "correlation" else ""))


if __name__ == "__main__":
  main()
