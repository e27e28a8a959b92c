"""The response matrix X of one or more sweep results directories: one row per (probe, checkpoint), one column
per component, "full" kept apart; with standard errors and per-chain values for the bootstrap.

Incompatible input never becomes a silently wrong matrix: directories whose recorded settings differ in
anything that changes χ (the training run, model, base data, δh, χ's form, SGLD settings, batch, precision)
are refused, naming each difference; only the seed and the micro-batch may differ (a cell sampled under
several seeds pools their chains: independent replicas are more chains). Components are those
every directory has (or the ones asked for, which every directory must have); a row with a missing cell, a
non-finite χ, or a cell without an error bar (fewer than 2 usable chains) is excluded and the exclusion is
reported in `ResponseData.excluded`.

Shape letters: R rows (probe × checkpoint), H columns (components), K chains.
"""
from pathlib import Path
from typing import NamedTuple

import numpy as np

from suscept_jax import results


class ResponseData(NamedTuple):
  X_RxH: np.ndarray  # χ per (probe, checkpoint) row and component column
  stderr_RxH: np.ndarray
  per_chain_RxHxK: np.ndarray  # χ per chain (NaN: a chain excluded for divergence)
  rows: list  # [(probe, checkpoint)], probes in first-seen order, checkpoints ascending
  components: list  # the columns (heads and other components, never "full")
  full_R: np.ndarray  # χ of "full" per row (NaN where absent)
  full_stderr_R: np.ndarray
  excluded: list  # one message per excluded row or component, saying why
  seeds_R: list  # the sweep seeds whose chains each row's cells hold (in that order along K)
  notes: list = []  # what else was done to the cells (seeds pooled)

  @property
  def shared_chains_R(self) -> list:
    """Per row, what identifies its chains: rows at one checkpoint of the same seeds were observed on the same
    chains (the streams follow (seed, checkpoint, chain)), so a bootstrap draws their chains together."""
    return [(seeds[0] if len(seeds) == 1 else tuple(seeds), int(t)) for seeds, (_, t) in zip(self.seeds_R, self.rows)]

  @property
  def datasets_R(self) -> np.ndarray:
    return np.array([p for p, _ in self.rows])

  @property
  def checkpoints_R(self) -> np.ndarray:
    return np.array([t for _, t in self.rows])


# Settings that may differ between the directories of one matrix: the seed gives independent replicas (their
# rows are resampled apart, `shared_chains_R`), the micro-batch changes only the order of a sum.
MAY_DIFFER = ("seed", "microbatch_size")


def _check_same_settings(settings_by_dir: dict) -> None:
  """Refuse directories whose settings differ in a key both recorded (one recorded only by newer versions is
  not compared), naming each key with every directory's value."""
  (first, first_settings), *rest = settings_by_dir.items()
  differ = {}
  for d, mine in rest:
    for k, (theirs, ours) in results.settings_differences(first_settings, mine, ignore=MAY_DIFFER,
                                                          recorded_by_both=True).items():
      differ.setdefault(k, [repr(theirs) + f" in {first}"]).append(f"{ours!r} in {d}")
  if differ:
    listed = "; ".join(f"{k}: {', '.join(v)}" for k, v in differ.items())
    raise ValueError(f"the results directories were made with different settings ({listed}); a response matrix "
                     f"needs one model and one estimator (only {', '.join(MAY_DIFFER)} may differ)")


def _cells(store: results.ResultsDir) -> dict:
  """(checkpoint, probe, component) -> (χ, stderr, per-chain χ with NaN for diverged chains)."""
  cells = {}
  metas = sorted(((name, store.unit_meta(name)) for name in store.finished_units()),
                 key=lambda nm: nm[1].get("written_at", 0))
  for name, meta in metas:  # the oldest unit with a cell provides it (as in the tidy table)
    arrays = store.read_unit(name)[0]
    per_chain = np.where(arrays["diverged"][None], np.nan, arrays["chi_per_chain"])  # [P, C, K]
    for p, probe in enumerate(meta["probe_names"]):
      for c, comp in enumerate(meta["component_names"]):
        cells.setdefault((meta["checkpoint"], probe, comp),
                         (float(arrays["chi"][p, c]), float(arrays["chi_stderr"][p, c]), per_chain[p, c]))
  return cells


def assemble(results_dirs, *, components=None) -> ResponseData:
  """X from the sweep results in `results_dirs` (a path or a list of paths)."""
  dirs = [Path(results_dirs)] if isinstance(results_dirs, (str, Path)) else [Path(d) for d in results_dirs]
  if not dirs:
    raise ValueError("no results directory given")
  settings_by_dir = {}
  for d in dirs:
    settings_by_dir[str(d)] = results.ResultsDir(d).settings()
  _check_same_settings(settings_by_dir)
  by_seed, comps_by_dir = {}, {}
  for d in dirs:
    mine = _cells(results.ResultsDir(d))
    if not mine:
      raise ValueError(f"{d} holds no finished results")
    comps_by_dir[str(d)] = list(dict.fromkeys(c for _, _, c in mine))
    seed = int(settings_by_dir[str(d)].get("seed", 0))
    for k, v in mine.items():  # of one seed, the first directory named provides a cell (the same chains)
      by_seed.setdefault(k, {}).setdefault(seed, v)
  cells, pooled = _pool_seeds(by_seed)
  notes = [f"{pooled} cell(s) sampled under several seeds: their chains are pooled (χ and its error bar over all "
           f"of them; the results table shows the first directory's)"] if pooled else []
  if components is None:
    shared = [c for c in next(iter(comps_by_dir.values())) if all(c in v for v in comps_by_dir.values())]
    components = [c for c in shared if c != "full"]
    dropped = sorted({c for v in comps_by_dir.values() for c in v} - set(shared))
    excluded = [f"component {c!r}: not in every results directory" for c in dropped]
    components, unusable = _without_unusable_components(cells, components)
    excluded += unusable
  else:
    missing = {d: [c for c in components if c not in v] for d, v in comps_by_dir.items()}
    missing = {d: m for d, m in missing.items() if m}
    if missing:
      raise ValueError(f"components not in the results: {missing}")
    components, excluded = [c for c in components if c != "full"], []
  if len(components) < 2:
    raise ValueError(f"a response matrix needs >= 2 components besides 'full'; have {components}"
                     + (f" ({'; '.join(excluded)})" if excluded else ""))
  probes = list(dict.fromkeys(p for _, p, _ in cells))
  steps = sorted({t for t, _, _ in cells})
  rows, seeds, X, err, chains, full, full_err = [], [], [], [], [], [], []
  K = max(len(v[2]) for v in cells.values())
  for probe in probes:
    for step in steps:
      have = [cells.get((step, probe, c)) for c in components]
      if all(h is None for h in have):
        if any((s, probe, c) in cells for s in steps for c in components):
          excluded.append(f"row ({probe}, {step}): no results at this checkpoint")
        continue
      if any(h is None for h in have):
        lacking = [c for c, h in zip(components, have) if h is None]
        excluded.append(f"row ({probe}, {step}): missing components {lacking}")
        continue
      if not all(np.isfinite(h[0]) for h in have):
        bad = [c for c, h in zip(components, have) if not np.isfinite(h[0])]
        excluded.append(f"row ({probe}, {step}): χ is not finite for {bad}")
        continue
      unsure = [c for c, h in zip(components, have) if not _has_error_bar(h)]
      if unsure:
        excluded.append(f"row ({probe}, {step}): no error bar for {unsure} (fewer than 2 usable chains)")
        continue
      rows.append((probe, step))
      seeds.append(max((h[3] for h in have), key=len))  # (a component sampled under fewer seeds: NaN beyond)
      X.append([h[0] for h in have])
      err.append([h[1] for h in have])
      chains.append([np.pad(h[2], (0, K - len(h[2])), constant_values=np.nan) for h in have])
      f = cells.get((step, probe, "full"))
      full.append(f[0] if f else np.nan)
      full_err.append(f[1] if f else np.nan)
  if len(rows) < 2:
    raise ValueError(f"only {len(rows)} complete row(s) in the results ({'; '.join(excluded) or 'nothing excluded'})")
  return ResponseData(X_RxH=np.array(X), stderr_RxH=np.array(err), per_chain_RxHxK=np.array(chains), rows=rows,
                      components=list(components), full_R=np.array(full), full_stderr_R=np.array(full_err),
                      excluded=excluded, seeds_R=seeds, notes=notes)


def _has_error_bar(cell) -> bool:
  """A cell with a finite stderr from >= 2 usable chains (resampling needs two)."""
  return bool(np.isfinite(cell[1]) and np.isfinite(cell[2]).sum() >= 2)


def _usable(cell) -> bool:
  """A cell with a finite χ and an error bar."""
  return bool(np.isfinite(cell[0])) and _has_error_bar(cell)


def _without_unusable_components(cells: dict, components: list) -> tuple[list, list]:
  """The components without those unusable (χ not finite, or no error bar: diverged chains) in more than half
  of the cells they have, and a message for each one left out. Left in, such a component (one head diverged
  everywhere) removed every row, and the matrix with it."""
  kept, messages = [], []
  for c in components:
    mine = [cell for (_, _, comp), cell in cells.items() if comp == c]
    bad = sum(not _usable(cell) for cell in mine)
    if mine and 2 * bad > len(mine):
      messages.append(f"component {c!r}: χ not finite or without an error bar in {bad}/{len(mine)} cells")
    else:
      kept.append(c)
  return kept, messages


def _pool_seeds(by_seed: dict) -> tuple[dict, int]:
  """{cell: (χ, stderr, per-chain χ, seeds)} with the chains of every seed that sampled a cell pooled (seeds are
  independent replicas: more chains), and how many cells were pooled. A replica's cells were dropped before."""
  from suscept_jax import estimators
  cells, pooled = {}, 0
  for key, of_seed in by_seed.items():
    seeds = list(of_seed)
    if len(seeds) == 1:
      cells[key] = (*of_seed[seeds[0]], seeds)
      continue
    per_chain = np.concatenate([of_seed[s][2] for s in seeds])
    chi, stderr = estimators.mean_and_stderr(per_chain, np.isfinite(per_chain))
    cells[key] = (float(chi), float(stderr), per_chain, seeds)
    pooled += 1
  return cells, pooled
