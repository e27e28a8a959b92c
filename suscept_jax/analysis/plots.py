"""Figures of a sweep: χ per head over training for each probe, and the LLCs over training."""
import math
from pathlib import Path

import numpy as np


def pyplot():
  """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save_figure(fig, path, *, tight: bool = True) -> Path:
  """Write a figure as PNG (110 dpi) and close it."""
  path = Path(path)
  fig.savefig(path, dpi=110, **({"bbox_inches": "tight"} if tight else {}))
  pyplot().close(fig)
  return path


def _x(steps):
  return np.asarray(steps, float)


MAX_STEP_TICKS = 12  # checkpoints labelled one by one up to this many; beyond, the powers of ten


def _symlog_steps(ax, steps) -> None:
  """Log-like step axis that still shows step 0 (training changes fastest early), labelled at the checkpoints
  themselves when there are few (with only 0 and 10³ labelled, the demo's 1300, 1600 and 3000 could not be told
  apart), else at 0 and the powers of ten past the linear part."""
  steps = np.asarray(steps, float)
  positive = steps[steps > 0]
  linthresh = float(positive.min()) if positive.size else 1.0
  ax.set_xscale("symlog", linthresh=linthresh)
  ax.xaxis.set_minor_locator(pyplot().NullLocator())
  ax.tick_params(axis="x", labelbottom=True)  # (shared axes hid them on every panel above an empty one)
  distinct = np.unique(steps)
  if len(distinct) <= MAX_STEP_TICKS:
    ax.set_xticks(distinct, [f"{s:g}" for s in distinct], rotation=60, fontsize=7)
    return
  decades = range(int(np.ceil(np.log10(linthresh))), int(np.floor(np.log10(max(steps.max(), linthresh)))) + 1)
  ax.set_xticks([0.0] * bool((steps <= 0).any()) + [10.0 ** p for p in decades])


def series_colours(n: int) -> list:
  """n colours to tell a figure's series apart: tab10 up to 10, tab20 up to 20 (the paper's 16 heads and 14
  datasets), evenly spaced hues beyond. (tab10 cycled gave code and repeats:legal, l0h0 and l1h2 one colour.)"""
  plt = pyplot()
  if n <= 20:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i) for i in range(n)]
  return [plt.get_cmap("turbo")(x) for x in np.linspace(0.05, 0.95, n)]


def flagged_share_note(flagged) -> str:
  """' (n of m)' for a title: how much the red rings cover (at few draws most cells are flagged)."""
  flagged = np.asarray(flagged, bool)
  return f" ({int(flagged.sum())} of {flagged.size})" if flagged.any() else ""


def _ring_flagged(ax, x, y, bad) -> None:
  """A red ring on each flagged point (see the status column / summary.txt), labelled once per axes; thin and
  behind the lines, so that where most cells are flagged the rings do not hide the values."""
  if bad.any():
    ax.scatter(x[bad], y[bad], s=45, facecolors="none", edgecolors="red", lw=0.9, alpha=0.7, zorder=1.5,
               label="flagged" if "flagged" not in ax.get_legend_handles_labels()[1] else None)


def _component_flagged(rows) -> bool:
  """Whether a checkpoint × component's own numbers (its LLC) are flagged: a test every probe row of it failed
  (the component's tests appear in each of its rows; a probe's own, in that row only)."""
  flags = [set(str(status).split("; ")) for status in rows.status if status != "ok"]
  return len(flags) == len(rows) > 0 and bool(set.intersection(*flags))


FULL_ON_ITS_OWN_AXIS = 3.0  # "full" gets a right-hand axis when its χ reaches beyond this × the heads' reach


def _heads_ylim(ax, values, margin: float = 0.08) -> None:
  """Limits that hold `values` (the heads' χ ± interval, and full's χ where it shares their axis): "full"'s
  band, from chains that move every parameter, is often far wider and would flatten the heads (it runs off the
  panel instead)."""
  values = np.asarray(values, float)
  values = values[np.isfinite(values)]
  if values.size:
    low, high = min(values.min(), 0.0), max(values.max(), 0.0)
    pad = margin * (high - low) or 1e-12
    ax.set_ylim(low - pad, high + pad)


def full_apart(full_chi, heads_reach) -> bool:
  """Whether "full"'s χ reaches beyond `FULL_ON_ITS_OWN_AXIS` × the heads' reach (their χ ± interval), so that on
  one axis the heads would lie flat."""
  full_chi, heads_reach = (np.abs(np.asarray(v, float)) for v in (full_chi, heads_reach))
  full_chi, heads_reach = full_chi[np.isfinite(full_chi)], heads_reach[np.isfinite(heads_reach)]
  if not full_chi.size or not heads_reach.size or heads_reach.max() == 0:
    return False
  return bool(full_chi.max() > FULL_ON_ITS_OWN_AXIS * heads_reach.max())


def plot_chi_over_training(table, path) -> Path:
  """One panel per probe: χ of every component against checkpoint, with 95 % Student-t interval bands. The
  limits follow the heads; "full" shares their axis when its χ fits within `FULL_ON_ITS_OWN_AXIS` × their reach,
  else it is drawn on a right-hand axis of its own."""
  plt = pyplot()
  probes = list(dict.fromkeys(table.probe))
  comps = list(dict.fromkeys(table.component))
  heads = [c for c in comps if c != "full"]
  colour = dict(zip(heads, series_colours(len(heads))))
  cols = min(4, len(probes))
  rows = math.ceil(len(probes) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharex=True)
  own_axis = []
  for ax, probe in zip(axes.flat, probes):
    t = table[table.probe == probe]
    reach, shown = [], []
    for comp in heads:
      c = t[t.component == comp].sort_values("checkpoint")
      x, y, e = _x(c.checkpoint), c.chi.to_numpy(), c.chi_ci95.to_numpy()
      ax.plot(x, y, label=comp, marker=".", color=colour[comp], lw=1.2)
      ax.fill_between(x, y - e, y + e, alpha=0.15, color=colour[comp], lw=0)
      _ring_flagged(ax, x, y, (c.status != "ok").to_numpy())
      reach += [y - e, y + e]
    full = t[t.component == "full"].sort_values("checkpoint")
    if len(full):
      x, y, e = _x(full.checkpoint), full.chi.to_numpy(), full.chi_ci95.to_numpy()
      apart = full_apart(y, np.concatenate(reach) if reach else [])
      target = ax.twinx() if apart else ax
      target.plot(x, y, label="full", marker=".", color="black", lw=2, ls="--")
      target.fill_between(x, y - e, y + e, alpha=0.15, color="black", lw=0)
      _ring_flagged(target, x, y, (full.status != "ok").to_numpy())
      if apart:
        own_axis.append(probe)
        target.set_ylabel("χ of full (dashed, this axis)", fontsize=7)
        target.tick_params(axis="y", labelsize=7)
        _heads_ylim(target, y)
      else:
        shown += [y] if heads else [y - e, y + e]  # (a sweep of "full" alone: its band sets the limits)
    _heads_ylim(ax, np.concatenate(reach + shown) if reach or shown else [])
    ax.axhline(0, color="grey", lw=0.5)
    _symlog_steps(ax, table.checkpoint)
    ax.set_title(probe + (" (full on the right axis)" if probe in own_axis else ""), fontsize=10)
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel("χ")
  for ax in list(axes.flat)[len(probes):]:
    ax.axis("off")
  handles, labels = [], []
  for ax in fig.axes:  # (full's entry may sit on a right-hand axis)
    for h, label in zip(*ax.get_legend_handles_labels()):
      if label not in labels:
        handles.append(h)
        labels.append(label)
  order = sorted(range(len(labels)), key=lambda i: (labels[i] != "full", labels[i] != "flagged"))
  fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="center right", fontsize=8,
             frameon=False)
  fig.suptitle("Susceptibility χ per component over training (bands: 95% Student-t intervals across chains, "
               "chains − 1 d.o.f.)\nthe axes follow the heads, so full's band may run off a panel; red rings: "
               f"flagged cells{flagged_share_note(table.status != 'ok')})")
  fig.tight_layout(rect=(0, 0, 0.9, 0.95))
  path = Path(path)
  return save_figure(fig, path, tight=False)


def plot_llc_over_training(table, path) -> Path:
  """LLC of the full model and weight-refined LLC of each head against checkpoint."""
  plt = pyplot()
  t = table.drop_duplicates(["checkpoint", "component"])
  flagged = {key: _component_flagged(rows) for key, rows in table.groupby(["checkpoint", "component"])}
  comps = list(dict.fromkeys(t.component))
  heads = [c for c in comps if c != "full"]
  colour = {"full": "C0", **dict(zip(heads, series_colours(len(heads))))}
  fig, (ax_full, ax_heads) = plt.subplots(1, 2, figsize=(11, 3.8))
  for comp in comps:
    c = t[t.component == comp].sort_values("checkpoint")
    ax = ax_full if comp == "full" else ax_heads
    ax.errorbar(_x(c.checkpoint), c.llc, yerr=c.llc_ci95, label=comp, marker=".", capsize=2, lw=1,
                color=colour[comp])
    _ring_flagged(ax, _x(c.checkpoint), c.llc.to_numpy(), np.array([flagged[(s, comp)] for s in c.checkpoint], bool))
  share = {ax: flagged_share_note([v for (_, comp), v in flagged.items() if (comp == "full") == (ax is ax_full)])
           for ax in (ax_full, ax_heads)}
  for ax, title, ylabel in ((ax_full, "LLC (full model), 95% t-intervals", "LLC λ̂"),
                            (ax_heads, "weight-refined LLC per component, 95% t-intervals", "weight-refined LLC")):
    _symlog_steps(ax, t.checkpoint)
    ax.set_title(title + (f"\nflagged{share[ax]}" if share[ax] else ""), fontsize=10)
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel(ylabel)
  if heads:  # (beside the panel: inside it covered the values)
    ax_heads.legend(fontsize=7, ncol=1 if len(heads) <= 10 else 2, frameon=False, loc="upper left",
                    bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  path = Path(path)
  return save_figure(fig, path)


MAX_HEATMAP_CHECKPOINTS = 6  # at the paper's 30 checkpoints, 30 panels of numbers were ≈ 2 px tall on the page
HEATMAP_MAX_WIDTH_IN = 16.0  # inches of panels side by side (≈ 1760 px at the figures' 110 dpi)


def heatmap_checkpoints(steps) -> list:
  """The checkpoints the heatmap draws: all up to `MAX_HEATMAP_CHECKPOINTS`, else that many evenly spaced by
  index, the first and the last among them."""
  steps = sorted(steps)
  if len(steps) <= MAX_HEATMAP_CHECKPOINTS:
    return steps
  return [steps[i] for i in np.unique(np.round(np.linspace(0, len(steps) - 1, MAX_HEATMAP_CHECKPOINTS)).astype(int))]


def plot_chi_heatmaps(table, path) -> Path:
  """One probes × components heatmap of χ per checkpoint (shared symmetric colour scale); each cell prints χ in
  units of its 95 % interval half-width (|z| ≥ 1: resolved), a flagged cell's followed by * as in summary.txt
  (a × in its place hid 154 of the demo's 405 numbers), in white on the darkest colours (a black mark there was
  invisible)."""
  plt = pyplot()
  every_step = sorted(set(table.checkpoint))
  steps = heatmap_checkpoints(every_step)
  probes = list(dict.fromkeys(table.probe))
  comps = list(dict.fromkeys(table.component))
  # Panels side by side only while the figure stays ≈ a page wide: at the paper's 17 components, three panels
  # across were shrunk to a third on the page, their numbers unreadable.
  cols = max(1, min(3, len(steps), int(HEATMAP_MAX_WIDTH_IN // (0.75 * len(comps)))))
  rows = math.ceil(len(steps) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(1.0 + 0.75 * len(comps) * cols, 0.9 + 0.42 * len(probes) * rows),
                           squeeze=False, layout="constrained")  # (fixed margins left inches blank at 6 rows)
  finite = table.chi[np.isfinite(table.chi)]
  vmax = float(np.abs(finite).max()) if len(finite) else 1.0
  labels = [p if len(p) <= 18 else "…" + p[-17:] for p in probes]
  for ax, step in zip(axes.flat, steps):
    t = table[table.checkpoint == step].set_index(["probe", "component"])
    grid = np.full((len(probes), len(comps)), np.nan)
    for i, p in enumerate(probes):
      for j, c in enumerate(comps):
        if (p, c) in t.index:
          row = t.loc[(p, c)]
          grid[i, j] = row.chi
          z = row.chi / row.chi_ci95 if row.chi_ci95 > 0 else np.nan
          text = (f"{z:.1f}" if np.isfinite(z) else "–") + ("*" if row.status != "ok" else "")
          dark = np.isfinite(row.chi) and abs(row.chi) > 0.6 * vmax
          ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(comps)), comps, rotation=60, fontsize=7)
    ax.set_yticks(range(len(probes)), labels, fontsize=7)
    ax.set_title(f"checkpoint {step}", fontsize=9)
  for ax in list(axes.flat)[len(steps):]:
    ax.axis("off")
  fig.colorbar(image, ax=axes, shrink=0.8, label="χ", aspect=20 * rows)  # (one width however many rows)
  shown = (f"; {len(steps)} of {len(every_step)} checkpoints, evenly spaced: every one is in the results table"
           if len(steps) < len(every_step) else "")
  fig.suptitle(f"χ per probe × component (numbers: χ / 95% half-width, * flagged: see summary.txt{shown})",
               fontsize=9)
  path = Path(path)
  return save_figure(fig, path)


SWEEP_FIGURES = ("chi_over_training.png", "llc_over_training.png", "chi_heatmap.png")


def sweep_figures(table, out_dir) -> list[Path]:
  out_dir = Path(out_dir)
  over_training, llc, heatmap = (out_dir / name for name in SWEEP_FIGURES)
  return [plot_chi_over_training(table, over_training), plot_llc_over_training(table, llc),
          plot_chi_heatmaps(table, heatmap)]


def plot_calibration(result, path) -> Path:
  """LLC traces per setting (one panel per setting, a line per chain and component), and MALA acceptance
  and LLC against ε per component, with the recommended ε marked."""
  plt = pyplot()
  settings, comps = result.settings, result.components
  cols = min(4, len(settings))
  rows = math.ceil(len(settings) / cols)
  fig = plt.figure(figsize=(4.0 * cols, 2.8 * rows + 3.4))
  grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1.0] * rows + [1.25])
  colors = series_colours(len(comps))
  best = result.recommend()
  for i, setting in enumerate(settings):
    ax = fig.add_subplot(grid[i // cols, i % cols])
    for j, comp in enumerate(comps):
      cell = next(c for c in result.cells if c.setting == setting and c.component == comp)
      for k, trace in enumerate(cell.llc_trace):
        ax.plot(trace, color=colors[j], lw=0.7, alpha=0.7, label=comp if k == 0 else None)
      t = cell.llc_trace.shape[1]
      ax.axvspan(t // 2, t, color="grey", alpha=0.08, lw=0)
    passes = all(c.passes(result.min_acceptance) for c in result.cells if c.setting == setting)
    verdict = "passes" if passes else "fails"
    ax.set_title(f"{setting.label}\n{verdict}{'  ← recommended' if setting == best else ''}", fontsize=8)
    ax.set_xlabel("draw", fontsize=8)
    ax.set_ylabel("nβ·φ (LLC trace)", fontsize=8)
    ax.tick_params(labelsize=7)
    if i == 0:
      ax.legend(fontsize=7, frameon=False)
  ax_acc = fig.add_subplot(grid[rows, :cols // 2 or 1])
  ax_llc = fig.add_subplot(grid[rows, cols // 2 or 1:] if cols > 1 else grid[rows, 0])
  for j, comp in enumerate(comps):
    for nbeta, gamma in dict.fromkeys((s.nbeta, s.localization) for s in settings):
      cells = sorted((c for c in result.cells if c.component == comp and c.setting.nbeta == nbeta
                      and c.setting.localization == gamma), key=lambda c: c.setting.step_size)
      eps = [c.setting.step_size for c in cells]
      label = f"{comp} (nβ={nbeta:g}, γ={gamma:g})"
      ax_acc.plot(eps, [c.mala_acceptance for c in cells], marker="o", color=colors[j], label=label)
      ax_llc.errorbar(eps, [c.llc for c in cells], yerr=[c.llc_stderr for c in cells], marker="o", color=colors[j],
                      capsize=2, label=label)
  ax_acc.axhline(result.min_acceptance, color="grey", ls="--", lw=1)
  for ax, ylabel in ((ax_acc, "MALA acceptance"), (ax_llc, "LLC (± 1 s.e.)")):
    ax.set_xscale("log")
    ax.set_xlabel("step size ε")
    ax.set_ylabel(ylabel)
    if best is not None:
      ax.axvline(best.step_size, color="green", lw=1)
  ax_acc.legend(fontsize=7, frameon=False)
  fig.suptitle("SGLD calibration: " + (f"recommended {best.label}" if best else "no setting passes (see JSON)"),
               fontsize=10)
  fig.tight_layout()
  path = Path(path)
  return save_figure(fig, path, tight=False)
