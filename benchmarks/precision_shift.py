"""How far χ and the LLC move between numerics settings, against their error bars.

  python -m benchmarks.precision_shift REFERENCE_DIR OTHER_DIR [OTHER_DIR ...]

Each directory is a sweep results directory of the same run with a different `--precision` / `--attention`
(same seed, checkpoints, probes, components). The chains share their noise and batches, so the shift is
what the numerics change, not sampling noise; it is printed in units of the reference's standard error.
A setting is safe for a study when the shifts are small against the error bars (median well under 0.5, none
above 1): it then moves no conclusion the error bars allow.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

KEYS = ["checkpoint", "probe", "component"]


def numerics_of(results_dir: Path) -> str:
  settings = json.loads((results_dir / "config.json").read_text())["settings"]
  numerics = settings.get("numerics", {"attention": "plain", "precision": "float32"})
  return f"{numerics['precision']}/{numerics['attention']}"


def shifts(reference: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
  """Per row: |Δχ| / stderr(χ) and, per (checkpoint, component), |ΔLLC| / stderr(LLC) of the reference."""
  both = reference.merge(other, on=KEYS, suffixes=("_ref", "_other"))
  if len(both) != len(reference):
    raise ValueError(f"the directories hold different rows ({len(reference)} in the reference, {len(both)} shared): "
                     f"run both with the same checkpoints, probes and components")
  both["chi_shift"] = (both.chi_other - both.chi_ref).abs() / both.chi_stderr_ref
  both["llc_shift"] = (both.llc_other - both.llc_ref).abs() / both.llc_stderr_ref
  return both


def summary(label: str, values: np.ndarray) -> str:
  values = values[np.isfinite(values)]
  return (f"{label}: median {np.median(values):.3f}, 90th pct {np.percentile(values, 90):.3f}, "
          f"max {values.max():.3f} standard errors ({values.size} values; {np.mean(values > 1):.0%} above 1)")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("reference")
  parser.add_argument("others", nargs="+")
  args = parser.parse_args(argv)
  ref_dir = Path(args.reference)
  reference = pd.read_csv(ref_dir / "results.csv")
  print(f"reference {ref_dir} ({numerics_of(ref_dir)}): {len(reference)} rows")
  for other_dir in map(Path, args.others):
    both = shifts(reference, pd.read_csv(other_dir / "results.csv"))
    llc = both.drop_duplicates(["checkpoint", "component"])
    print(f"{other_dir} ({numerics_of(other_dir)}) against the reference:")
    print("  " + summary("|Δχ| / stderr", both.chi_shift.to_numpy()))
    print("  " + summary("|ΔLLC| / stderr", llc.llc_shift.to_numpy()))
    worst = both.loc[both.chi_shift.idxmax()]
    print(f"  largest χ shift: {worst.component} on {worst.probe} at checkpoint {worst.checkpoint}: "
          f"{worst.chi_ref:.4g} -> {worst.chi_other:.4g} (stderr {worst.chi_stderr_ref:.3g})")


if __name__ == "__main__":
  main()
