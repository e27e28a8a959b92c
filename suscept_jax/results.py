"""A sweep's results directory: written unit by unit, atomically; readable without re-running anything.

Layout:
  config.json              every setting, library versions, git revision, devices (written once)
  units/step_<N>.npz       one finished work unit (a checkpoint): χ/LLC tables, per-chain values, traces
  units/step_<N>.json      the unit's scalar metadata (seconds, warnings, names)
  progress.json            finished units and timings (rewritten after each unit)
  results.csv, .parquet    the tidy table over all finished units (one row per checkpoint × probe × component)
  head_scores.csv          previous-token / induction / ablation scores per checkpoint × head (independent labels)

A killed sweep restarts, finds its finished units, and runs only the rest; since every unit's random
numbers depend only on (seed, checkpoint, component, chain, step), the final table is identical.
"""
import io
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from suscept_jax.paths import atomic_write_bytes

# chi_ci95 / llc_ci95: half-widths of 95 % Student-t intervals with (num_chains_used − 1) degrees of freedom.
TABLE_COLUMNS = ["checkpoint", "probe", "component", "chi", "chi_stderr", "chi_ci95", "llc", "llc_stderr", "llc_ci95",
                 "num_chains_used", "r_hat", "ess_bulk", "ess_tail", "r_hat_chi", "ess_bulk_chi", "mala_acceptance",
                 "frac_phi_negative", "num_diverged", "probe_draws_dropped", "realised_delta_h", "status"]


def git_revision(path=None) -> str:
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path or Path(__file__).parent, capture_output=True,
                         text=True, timeout=10)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path or Path(__file__).parent,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def environment() -> dict:
  """Versions and devices, recorded with every run."""
  import flax
  import jax
  import optax
  import orbax.checkpoint

  import suscept_jax
  return {"suscept_jax": suscept_jax.__version__, "git_revision": git_revision(), "jax": jax.__version__,
          "flax": flax.__version__, "optax": optax.__version__, "orbax": orbax.checkpoint.__version__,
          "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
          "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count()}


class ResultsDir:
  """Reads and writes one sweep's results directory."""

  def __init__(self, path):
    self.path = Path(path)
    self.units = self.path / "units"

  # -- config ------------------------------------------------------------------------------------------
  def start(self, settings: dict, *, overwrite: bool = False) -> None:
    """Record the settings; refuse to mix results of different settings in one directory."""
    self.units.mkdir(parents=True, exist_ok=True)
    config_path = self.path / "config.json"
    if config_path.exists() and not overwrite:
      old = json.loads(config_path.read_text())["settings"]
      new = json.loads(json.dumps(settings, default=str))
      diff = {k: (old.get(k), new.get(k)) for k in set(old) | set(new) if old.get(k) != new.get(k)}
      if diff:
        raise ValueError(f"{self.path} holds results of a sweep with different settings {diff}; use another "
                         f"--output_dir, or --overwrite to discard them")
      return
    if overwrite:
      for f in self.units.glob("*"):
        f.unlink()
      for name in ("progress.json", "results.csv", "results.parquet"):
        (self.path / name).unlink(missing_ok=True)
    payload = {"settings": settings, "environment": environment(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_bytes(config_path, json.dumps(payload, indent=2, default=str).encode())

  def settings(self) -> dict:
    path = self.path / "config.json"
    if not path.exists():
      raise FileNotFoundError(f"{self.path} is not a sweep results directory (no config.json)")
    return json.loads(path.read_text())["settings"]

  # -- units ------------------------------------------------------------------------------------------
  def unit_name(self, step: int) -> str:
    return f"step_{int(step):08d}"

  def finished_steps(self) -> list[int]:
    """Checkpoints whose unit is completely written (the json is written last)."""
    if not self.units.exists():
      return []
    return sorted(int(p.stem.split("_")[1]) for p in self.units.glob("step_*.json")
                  if (self.units / (p.stem + ".npz")).exists())

  def write_unit(self, step: int, arrays: dict, meta: dict) -> None:
    """Arrays first, metadata last: a unit counts as finished only once both are in place."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(self.units / f"{self.unit_name(step)}.npz", buf.getvalue())
    atomic_write_bytes(self.units / f"{self.unit_name(step)}.json", json.dumps(meta, indent=2, default=str).encode())

  def read_unit(self, step: int) -> tuple[dict, dict]:
    name = self.unit_name(step)
    with np.load(self.units / f"{name}.npz") as f:
      arrays = {k: f[k] for k in f.files}
    return arrays, json.loads((self.units / f"{name}.json").read_text())

  def write_progress(self, done: list[int], todo: list[int], seconds: dict) -> None:
    payload = {"finished": done, "remaining": todo, "seconds_per_unit": seconds,
               "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_bytes(self.path / "progress.json", json.dumps(payload, indent=2).encode())

  # -- the tidy table -------------------------------------------------------------------------------------
  def rows(self) -> list[dict]:
    rows = []
    for step in self.finished_steps():
      _, meta = self.read_unit(step)
      rows.extend(meta["rows"])
    return rows

  def table(self):
    """pandas DataFrame of every finished unit (TABLE_COLUMNS)."""
    import pandas as pd
    return pd.DataFrame(self.rows(), columns=TABLE_COLUMNS)

  def head_scores(self):
    """pandas DataFrame of the per-head labels of every finished unit (empty if none were recorded)."""
    import pandas as pd
    rows = []
    for step in self.finished_steps():
      rows.extend(self.read_unit(step)[1].get("head_scores", []))
    return pd.DataFrame(rows)

  def write_table(self) -> None:
    scores = self.head_scores()
    if len(scores):
      atomic_write_bytes(self.path / "head_scores.csv", scores.to_csv(index=False, float_format="%.6g").encode())
    df = self.table()
    atomic_write_bytes(self.path / "results.csv", df.to_csv(index=False, float_format="%.9g").encode())
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(self.path / "results.parquet", buf.getvalue())


def unit_from_result(step: int, res) -> tuple[dict, dict]:
  """(arrays, meta) of one checkpoint's SusceptibilityResult, ready for `write_unit`."""
  comps = res.component_names
  arrays = {
      "chi": res.chi, "chi_stderr": res.chi_stderr, "chi_per_chain": res.chi_per_chain,
      "llc": res.llc, "llc_stderr": res.llc_stderr, "llc_per_chain": res.llc_per_chain,
      "diverged": res.diverged, "loss_star_trace": res.loss_star_trace,
      "loss_trace": np.stack([res.diagnostics[c].loss_trace for c in comps]),
      "phi_trace": np.stack([res.diagnostics[c].phi_trace for c in comps]),
  }
  rows = [{"checkpoint": int(step), **row} for row in res.records()]
  meta = {"checkpoint": int(step), "probe_names": res.probe_names, "component_names": comps,
          "seconds": res.seconds, "warnings": res.warnings, "realised_delta_h": res.realised_delta_h,
          "rows": rows}
  return arrays, meta
