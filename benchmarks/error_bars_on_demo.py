"""Are the error bars honest on a transformer? The sweep at one checkpoint, repeated over seeds: for every
cell, the seed-to-seed std of χ (and of each component's LLC) against the RMS of the stderr the runs report.
Calibrated error bars give a ratio ≈ 1; with S seeds one cell's ratio has a sampling error of ≈ 1/√(2(S−1)).

`benchmarks/error_bar_calibration.py` checks the same on a quadratic toy with a known posterior; this runs the
sweep a user runs (`experiments.sweep`, one process per seed, each into its own results directory, so an
interrupted benchmark resumes), on the demo by default. Arguments after `--` go to every sweep.

  python -m benchmarks.error_bars_on_demo --seeds=20                       # the demo's last checkpoint
  python -m benchmarks.error_bars_on_demo --seeds=20 -- --steps=1600 --num_draws=200
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.error_bar_calibration import calibration_ratio

REPO = Path(__file__).resolve().parents[1]


def run_seeds(seeds, work_dir: Path, sweep_args) -> list:
  """One sweep per seed (each skipped when its results are already there); their tidy tables."""
  import pandas as pd
  tables = []
  for seed in seeds:
    out = work_dir / f"seed_{seed:03d}"
    if not (out / "results.csv").exists():
      t0 = time.perf_counter()
      proc = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--seed={seed}", f"--output_dir={out}",
                             *sweep_args], capture_output=True, text=True, cwd=REPO)
      if proc.returncode != 0:
        raise RuntimeError(f"the sweep for seed {seed} failed:\n{proc.stderr[-3000:]}")
      print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    tables.append(pd.read_csv(out / "results.csv"))
  return tables


def ratios(tables) -> dict:
  """{(quantity, checkpoint, component): (ratio per probe [P], probes)}: std over seeds / RMS reported stderr
  (NaN for a cell whose χ is exactly 0 in every run: a probe that is the base data)."""
  import pandas as pd
  both = pd.concat([t.assign(seed=i) for i, t in enumerate(tables)], ignore_index=True)
  out = {}
  for (step, comp), cells in both.groupby(["checkpoint", "component"], sort=False):
    probes = list(dict.fromkeys(cells.probe))
    by_seed = lambda column: cells.pivot(index="seed", columns="probe", values=column)[probes].to_numpy()  # [S, P]
    out[("chi", step, comp)] = (calibration_ratio(by_seed("chi"), by_seed("chi_stderr")), probes)
    llc = cells.drop_duplicates("seed")
    out[("llc", step, comp)] = (calibration_ratio(llc[["llc"]].to_numpy(), llc[["llc_stderr"]].to_numpy()), ["-"])
  return out


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  ours, sweep_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seeds", type=int, default=20)
  parser.add_argument("--work_dir", default="runs/demo/error_bars")
  args = parser.parse_args(ours)
  if args.seeds < 2:
    raise SystemExit("--seeds must be >= 2 (a spread over seeds)")
  if not any(a.startswith("--steps") for a in sweep_args):  # the demo's last checkpoint
    from suscept_jax_runners import presets
    sweep_args = [f"--steps={presets.get_preset('demo').checkpoint_steps[-1]}", *sweep_args]
  tables = run_seeds(range(args.seeds), Path(args.work_dir), sweep_args)
  print(f"{args.seeds} seeds; ratio = seed-to-seed std / RMS reported stderr (calibrated ≈ 1; one cell's own "
        f"sampling error ≈ ±{1 / np.sqrt(2 * (args.seeds - 1)):.2f})")
  all_chi, table = [], ratios(tables)
  for (quantity, step, comp), (r, probes) in table.items():
    if quantity == "chi":
      r = r[np.isfinite(r)]
      all_chi.append(r)
      print(f"checkpoint {step} {comp:>6} χ: median {np.median(r):.2f}, range [{r.min():.2f}, {r.max():.2f}] over "
            f"{len(r)} probes", end="")
    else:
      print(f"; LLC {r[0]:.2f}")
  pooled = np.concatenate(all_chi)
  print(f"every χ cell: median {np.median(pooled):.2f}, middle 80 % [{np.quantile(pooled, 0.1):.2f}, "
        f"{np.quantile(pooled, 0.9):.2f}], {np.mean(pooled > 1.33):.0%} above 1.33, {np.mean(pooled < 0.75):.0%} "
        f"below 0.75")
  return table


if __name__ == "__main__":
  main()
