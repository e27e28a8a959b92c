"""A sweep's results directory: written unit by unit, atomically; grows; readable without re-running anything.

Layout:
  config.json              the settings that change numbers (written once), the scopes asked for so far
  units/<unit>.npz         one finished unit: a checkpoint × a probe set × a component set (χ/LLC per chain,
                           traces); <unit> = step_<N>-<hash of the probe and component lists>
  units/<unit>.json        the unit's metadata, written last: names, probe fingerprints, rows, timings,
                           environment (versions, devices, matmul precision), head scores
  progress.json            every finished unit with its time (kept across kills), and what remains
  results.csv, .parquet    the tidy table over all finished units (one row per checkpoint × probe × component)
  head_scores.csv          previous-token / induction / ablation scores per checkpoint × head (independent labels)

A sweep into an existing directory with the same number-changing settings reuses every finished unit:
more checkpoints, probes or components only add units. Units do not depend on which other probes or
components share them (noise keys follow component names, data streams follow (seed, checkpoint, chain)),
so a killed or grown sweep ends with the same table as one run straight through: bit for bit, except that a
head added to a group of heads computed before (one program there, two here) differs in rounding (a growing
audit: χ by 2e-5 of its standard error at most, the LLC by 4e-5).
"""
import hashlib
import io
import json
import platform
import shutil
import stat
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np

from suscept_jax import dir_lock, paths
from suscept_jax.paths import atomic_write_bytes, atomic_write_json

# chi_ci95 / llc_ci95: half-widths of 95 % Student-t intervals with (chains behind the value − 1) degrees of freedom
# (num_chains_used − 1 unless some chain never observed the probe: `api.SusceptibilityResult.interval`).
TABLE_COLUMNS = ["checkpoint", "probe", "component", "chi", "chi_stderr", "chi_ci95", "llc", "llc_stderr", "llc_ci95",
                 "num_chains_used", "r_hat", "ess_bulk", "ess_tail", "r_hat_chi", "ess_bulk_chi", "mala_acceptance",
                 "frac_phi_negative", "num_diverged", "probe_draws_dropped", "realised_delta_h", "status"]
NOT_FLOAT_COLUMNS = ("checkpoint", "probe", "component", "num_chains_used", "num_diverged", "probe_draws_dropped",
                     "status")


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
  """Versions, devices and numeric settings, recorded with every run and every unit."""
  import flax
  import jax
  import optax
  import orbax.checkpoint

  import suscept_jax
  return {"suscept_jax": suscept_jax.__version__, "git_revision": git_revision(), "jax": jax.__version__,
          "flax": flax.__version__, "optax": optax.__version__, "orbax": orbax.checkpoint.__version__,
          "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
          "devices": [str(d) for d in jax.devices()], "backend": jax.default_backend(),
          "process_count": jax.process_count(),
          "matmul_precision": str(jax.config.jax_default_matmul_precision or "default"),
          "x64": bool(jax.config.jax_enable_x64)}


def environment_label(env: dict) -> str:
  """Where a unit was computed, as far as its numbers can tell: the JAX version and the backend (units written
  before "backend" was recorded: read off the first device's name, e.g. "cpu:0", "cuda:0", "TPU_0(...)")."""
  backend = env.get("backend") or str((env.get("devices") or ["unknown"])[0]).split(":")[0].split("_")[0].lower()
  return f"jax {env.get('jax', 'unknown')} on {backend}"


def mixed_environments_note(units_per_label: dict) -> str | None:
  """A line for the summary when a table's units come from more than one environment (a sweep resumed
  elsewhere), else None. Same seeds, another compiler: chains part by rounding, so such cells agree within
  their error bars, not to rounding (BUILD_NOTES, "Twenty-sixth session")."""
  if len(units_per_label) < 2:
    return None
  parts = ", ".join(f"{label} ({n} unit{'s' * (n != 1)})" for label, n in sorted(units_per_label.items()))
  return (f"note: units computed under {len(units_per_label)} environments: {parts}; cells of different ones "
          "agree within their error bars, not to rounding")


def _damaged(path: Path, why) -> ValueError:
  """The error for a unit's file (`.json` or `.npz`) damaged after it was written, saying how to recover."""
  partner = ".npz" if path.suffix == ".json" else ".json"
  return ValueError(f"{path} is damaged ({why}); delete it and its {partner}, and the rerun computes that unit again")


def csv_bytes(frame, float_format: str | None = None) -> bytes:
  """A table as CSV (RFC 4180: lines end in CRLF, so a field holding a line break of either kind is quoted). With
  pandas' "\n" a token "\r" went out unquoted and split its row on reading back."""
  return frame.to_csv(index=False, float_format=float_format, lineterminator="\r\n").encode()


def unit_name(step: int, probes, components) -> str:
  digest = hashlib.sha256(json.dumps([list(probes), list(components)]).encode()).hexdigest()[:10]
  return f"step_{int(step):08d}-{digest}"


def _jsonable(value):
  return json.loads(json.dumps(value, default=str))


# The runners that write results directories, as their errors name them.
KINDS = {"sweep": "a sweep's results (experiments.sweep)", "per_token": "per-token results (experiments.per_token)"}

# What `ResultsDir` itself writes beside the units.
OUTPUTS = ("progress.json", "results.csv", "results.parquet", "head_scores.csv", "config.json")
# `experiments.analyze`'s report where it writes it by default, beside the results: made from their table, so
# --overwrite removes it with them (it stayed, showing the old seed's numbers beside the new table)
REPORT_FILES = ("report.html", "report_figures")


def flat_settings(settings: dict, prefix: str = "") -> dict:
  """Nested settings as one level, keys joined with dots ({"sgld": {"num_draws": 6}} -> {"sgld.num_draws": 6}),
  so a difference is named by the one key that differs."""
  out = {}
  for key, value in settings.items():
    if isinstance(value, dict) and value:
      out.update(flat_settings(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def settings_differences(old: dict, new: dict, *, ignore=(), recorded_by_both: bool = False) -> dict:
  """{dotted key: (old value, new value)} of the settings that differ (`flat_settings`), keys under a top-level
  key in `ignore` left out; with `recorded_by_both`, only keys both recorded (a key one version did not record
  is not a difference)."""
  old, new = ({k: v for k, v in flat_settings(d).items() if k.split(".")[0] not in ignore} for d in (old, new))
  keys = set(old) & set(new) if recorded_by_both else set(old) | set(new)
  return {k: (old.get(k), new.get(k)) for k in sorted(keys) if old.get(k) != new.get(k)}


class ResultsDir:
  """Reads and writes one sweep's results directory."""

  def __init__(self, path):
    self.path = Path(path)
    self.units = self.path / "units"

  def check_writable(self, *, write: bool) -> None:
    """Refuse a results path that is a file, or (with `write`) one where this process cannot write, before
    any work (a unit computed for an hour and then not written is lost); the trial leaves nothing behind."""
    try:  # (one stat: exists() then is_dir() met a directory another process made and removed in between)
      kind = self.path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # (under a file: check_writable_dir says so, naming the flag)
      kind = None
    if kind is not None and not stat.S_ISDIR(kind):
      raise ValueError(f"{self.path} is a file, not a results directory: give another --output_dir")
    if write:
      paths.check_writable_dir(self.units, "--output_dir", shown=self.path)

  def claim(self, runner: str) -> None:
    """Hold this directory for this run until it ends (`dir_lock.hold_directory`), before it is checked and
    written: two runs into one directory at once (two sweeps, or a sweep and a per-token run) both found it
    empty, and the table mixed their settings under one config.json. A multi-process run's process 0 holds it."""
    try:
      self._held = dir_lock.hold_directory(self.path, f"experiments.{runner}")
    except dir_lock.DirectoryInUse as e:
      raise ValueError(f"{self.path} is being written by {e.holder}: wait for it to finish, or give another "
                       "--output_dir") from None

  def writer(self) -> str | None:
    """The run writing into this directory now (see `claim`), or None."""
    return dir_lock.directory_holder(self.path)

  def unfinished_note(self) -> str | None:
    """A line for whatever reads these results while they are incomplete: a run is still writing them, or the
    last one stopped with units left (progress.json); else None. A report on a sweep still running covered
    the units finished so far without a word."""
    finished = len(self.finished_units())
    writer = self.writer()
    if writer:
      return f"{self.path} is still being written by {writer}: this covers the {finished} unit(s) finished so far"
    try:
      remaining = json.loads((self.path / "progress.json").read_text()).get("remaining") or []
    except (OSError, ValueError):
      return None
    if remaining:
      return (f"{self.path}: the last run stopped with {len(remaining)} unit(s) not finished (progress.json); "
              f"this covers the {finished} finished: run it again to finish them")
    return None

  # -- settings ---------------------------------------------------------------------------------------
  def holds_results(self) -> bool:
    """Whether any unit was finished here: a directory whose run failed before its first unit (bad data, a
    damaged checkpoint) holds nothing its settings need protecting, and a corrected rerun may replace them."""
    return (self.path / "config.json").exists() and bool(self.finished_units(prefix=""))

  def kind(self) -> str:
    """Which runner wrote this directory (`KINDS`; directories written before it was recorded: read off their
    settings, where only per-token runs have contexts_per_dataset)."""
    config = self.config()
    return config.get("kind") or ("per_token" if "contexts_per_dataset" in config["settings"] else "sweep")

  def check_kind(self, kind: str) -> None:
    """Refuse, --overwrite or not, to write one runner's results into a directory holding another's: its
    settings would be listed key by key as differences, and --overwrite would delete part of the other's."""
    if self.holds_results() and self.kind() != kind:
      raise ValueError(f"{self.path} holds {KINDS[self.kind()]}, not {KINDS[kind]}: give another --output_dir "
                       f"(--overwrite discards only results of the same runner)")

  def check_settings(self, settings: dict, *, ignore=(), legacy: dict | None = None, unrecorded=()) -> None:
    """Refuse (before anything is written) settings that would change the numbers of the units already
    here; the message names just the differing keys, with both values. Keys in `ignore` are not compared;
    `legacy` gives the value of a key (one these settings have) that directories written before it existed
    did not record; keys in `unrecorded` are compared only where the directory recorded them (nothing to
    compare them with before)."""
    if not self.holds_results():
      return
    old, new = self.settings(), _jsonable(settings)
    old = {**{k: v for k, v in _jsonable(legacy or {}).items() if k in new}, **old}
    ignore = (*ignore, *(k for k in unrecorded if k not in old))
    diff = settings_differences(old, new, ignore=ignore)
    if diff:
      listed = "; ".join(f"{k}: {a!r} here, {b!r} now" for k, (a, b) in diff.items())
      raise ValueError(f"{self.path} holds results made with other settings ({listed}); use another "
                       f"--output_dir, or --overwrite to discard them")

  def start(self, settings: dict, scope: dict, *, kind: str, overwrite: bool = False, outputs=()) -> None:
    """Record the settings and the runner's `kind` (once: replaced while no unit is finished) and the scope asked
    for; `check_kind` and `check_settings` must have passed. With `overwrite` the units and every output named
    (this class's files and the runner's `outputs`, files or folders) go first: nothing made with the old
    settings may be shown beside the new results."""
    self.units.mkdir(parents=True, exist_ok=True)
    config_path = self.path / "config.json"
    if overwrite:
      for f in self.units.glob("*"):
        f.unlink()
      for name in (*OUTPUTS, *outputs):
        target = self.path / name
        if target.is_dir():
          shutil.rmtree(target)
        else:
          target.unlink(missing_ok=True)
    if self.holds_results():
      payload = self.config()
    else:
      payload = {"kind": kind, "settings": _jsonable(settings), "environment": environment(),
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "scopes": []}
    scope = _jsonable(scope)
    if scope not in payload["scopes"]:
      payload["scopes"].append(scope)
    atomic_write_json(config_path, payload)

  def config(self) -> dict:
    """config.json (settings, scopes, environment); errors name the file when it is missing or damaged."""
    path = self.path / "config.json"
    if not path.exists():
      raise FileNotFoundError(f"{self.path} is not a sweep results directory (no config.json)")
    try:
      payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{path} is damaged ({e}): restore it, or rerun into a new --output_dir") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("settings"), dict):
      raise ValueError(f"{path} is damaged (no settings in it): restore it, or rerun into a new --output_dir")
    return payload

  def settings(self) -> dict:
    return self.config()["settings"]

  # -- units ------------------------------------------------------------------------------------------
  def finished_units(self, prefix: str = "step_") -> list[str]:
    """Units completely written (the json is written last), in name order."""
    if not self.units.exists():
      return []
    return sorted(p.stem for p in self.units.glob(f"{prefix}*.json") if (self.units / (p.stem + ".npz")).exists())

  def finished_steps(self) -> list[int]:
    return sorted({int(name.split("_")[1].split("-")[0]) for name in self.finished_units()})

  def unit_meta(self, name: str) -> dict:
    path = self.units / f"{name}.json"
    try:
      meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # (written atomically: damaged after the fact)
      raise _damaged(path, e) from None
    if not isinstance(meta, dict) or "checkpoint" not in meta:
      raise _damaged(path, "valid JSON, but not a unit's metadata: no checkpoint in it")
    return meta

  def params_digests(self, prefix: str = "step_") -> dict:
    """{checkpoint: {params digests}} recorded by the finished units named `prefix`… (units written before
    digests were recorded have none)."""
    digests: dict = {}
    for name in self.finished_units(prefix):
      meta = self.unit_meta(name)
      if meta.get("params_digest"):
        digests.setdefault(int(meta["checkpoint"]), set()).add(meta["params_digest"])
    return digests

  def environments(self, prefix: str = "step_") -> dict:
    """{environment_label: number of finished units (named `prefix`…) computed there}."""
    counts: dict = {}
    for name in self.finished_units(prefix):
      label = environment_label(self.unit_meta(name).get("environment") or {})
      counts[label] = counts.get(label, 0) + 1
    return counts

  def plan(self, steps, probes, components, probe_fingerprints: dict) -> list[tuple[int, list, list]]:
    """The units still to compute for checkpoints × probes × components ("full" first in components).

    Finished units are reused cell by cell; a probe whose data changed since its cells were computed is
    an error naming it. Each new unit holds "full" (eq. 41 pairs every chain with the full model's).
    """
    covered = {}
    for name in self.finished_units():
      self.check_arrays(name)  # (a damaged one found only by the table's readers, after a run that said it was done)
      meta = self.unit_meta(name)
      for probe, fp in meta.get("probe_fingerprints", {}).items():
        if probe_fingerprints is not None and probe in probe_fingerprints and fp != probe_fingerprints[probe]:
          raise ValueError(f"probe {probe!r} has changed since {self.path} computed it (fingerprint {fp} "
                           f"there, {probe_fingerprints[probe]} now); use another --output_dir or --overwrite")
      cells = covered.setdefault(meta["checkpoint"], set())
      cells.update((p, c) for p in meta["probe_names"] for c in meta["component_names"])
    units = []
    for step in steps:
      missing = {(p, c) for p in probes for c in components} - covered.get(step, set())
      if not missing:
        continue
      new_probes = [p for p in probes if all((p, c) in missing for c in components)]
      rest = {(p, c) for p, c in missing if p not in new_probes}
      if new_probes:
        units.append((step, new_probes, list(components)))
      if rest:
        rest_probes = [p for p in probes if any(q == p for q, _ in rest)]
        rest_comps = [c for c in components if any(d == c for _, d in rest)]
        units.append((step, rest_probes, ["full"] + [c for c in rest_comps if c != "full"]))
    return units

  def write_unit(self, name: str, arrays: dict, meta: dict) -> None:
    """Arrays first, metadata last: a unit counts as finished only once both are in place."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(self.units / f"{name}.npz", buf.getvalue())
    meta = {**meta, "written_at": time.time()}
    atomic_write_json(self.units / f"{name}.json", meta, default=str)

  def check_arrays(self, name: str) -> None:
    """A unit's .npz must open as an archive (a truncated one does not; its arrays are read only later)."""
    path = self.units / f"{name}.npz"
    if not zipfile.is_zipfile(path):
      raise _damaged(path, "not a complete .npz archive")

  def read_unit(self, name: str) -> tuple[dict, dict]:
    path = self.units / f"{name}.npz"
    try:
      with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
      raise _damaged(path, e) from None
    return arrays, self.unit_meta(name)

  def write_progress(self, remaining: list[str]) -> None:
    """Every finished unit with its time (from the units themselves, so kills lose none), and the rest."""
    done = {name: self.unit_meta(name).get("seconds") for name in self.finished_units()}
    payload = {"finished": done, "remaining": remaining, "seconds_total": sum(v or 0 for v in done.values()),
               "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(self.path / "progress.json", payload)

  # -- the tidy table -------------------------------------------------------------------------------------
  def rows(self) -> list[dict]:
    """One row per checkpoint × probe × component over all finished units (the first unit written that has
    a cell provides it), sorted by checkpoint, then in the order probes and components were asked for (the
    scopes in config.json; units written side by side by several processes finish in any order)."""
    seen, rows = set(), []
    metas = sorted((self.unit_meta(name) for name in self.finished_units()), key=lambda m: m.get("written_at", 0))
    for meta in metas:  # the oldest unit with a cell provides it: growing a sweep never changes old cells
      for row in meta["rows"]:
        key = (row["checkpoint"], row["probe"], row["component"])
        if key not in seen:
          seen.add(key)
          rows.append(row)
    scopes = self.config().get("scopes", []) if (self.path / "config.json").exists() else []
    order = lambda key, asked: {v: i for i, v in enumerate(dict.fromkeys(
        [*(v for scope in scopes for v in scope.get(asked, [])), *(r[key] for r in rows)]))}
    probes, comps = order("probe", "probes"), order("component", "components")
    return sorted(rows, key=lambda r: (r["checkpoint"], probes[r["probe"]], comps[r["component"]]))

  def table(self):
    """pandas DataFrame of every finished cell (TABLE_COLUMNS); a number JSON kept as null is NaN again."""
    import pandas as pd
    frame = pd.DataFrame(self.rows(), columns=TABLE_COLUMNS)
    return frame.astype({c: float for c in TABLE_COLUMNS if c not in NOT_FLOAT_COLUMNS})

  def head_scores(self):
    """pandas DataFrame of the per-head labels of every finished checkpoint (empty if none were recorded)."""
    import pandas as pd
    rows, seen = [], set()
    for name in self.finished_units():
      meta = self.unit_meta(name)
      if meta.get("head_scores") and meta["checkpoint"] not in seen:
        seen.add(meta["checkpoint"])
        rows.extend(meta["head_scores"])
    return pd.DataFrame(rows)

  def write_table(self) -> None:
    scores = self.head_scores()
    if len(scores):
      atomic_write_bytes(self.path / "head_scores.csv", csv_bytes(scores, "%.6g"))
    df = self.table()
    atomic_write_bytes(self.path / "results.csv", csv_bytes(df, "%.9g"))
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(self.path / "results.parquet", buf.getvalue())


def unit_from_result(step: int, res, *, probe_fingerprints: dict) -> tuple[dict, dict]:
  """(arrays, meta) of one unit's SusceptibilityResult, ready for `write_unit`."""
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
          "probe_fingerprints": {p: probe_fingerprints[p] for p in res.probe_names},
          "seconds": res.seconds, "warnings": res.warnings, "realised_delta_h": res.realised_delta_h,
          "environment": environment(), "rows": rows}
  return arrays, meta
