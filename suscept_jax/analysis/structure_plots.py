"""Figures of structural inference (matplotlib PNG): scree (Fig. 13), loadings heatmap (Fig. 6), dataset
couplings (Fig. 12), 2-D trajectories (Fig. 14) and PCs as time series (Fig. 15).

Shape letters (as in structure.py): R rows (probe × checkpoint), D probes, G patterning targets.
"""
import re
from pathlib import Path

import numpy as np

from suscept_jax.analysis.plots import _symlog_steps, pyplot, save_figure, series_colours


def head_label(component: str) -> str:
  """'l1h3' -> '1:3' (the paper's labels); other component names unchanged."""
  m = re.fullmatch(r"l(\d+)h(\d+)", component)
  return f"{m.group(1)}:{m.group(2)}" if m else component


def pc_name(j: int, stable_k=None) -> str:
  """'PC{j+1}', marked '(unstable)' when `stable_k` says PC j failed the stability tests (its figures are noise)."""
  return f"PC{j + 1}" + ("" if stable_k is None or stable_k[j] else " (unstable)")


def plot_scree(pca, stability, path) -> Path:
  plt = pyplot()
  ratio = pca.explained_variance_ratio
  fig, ax = plt.subplots(figsize=(5, 3.2))
  x = np.arange(1, len(ratio) + 1)
  stable = lambda j: j < len(stability.stable_k) and stability.stable_k[j]
  colours = ["tab:blue" if stable(j) else "lightgrey" for j in range(len(ratio))]
  ax.bar(x, ratio, color=colours)
  ax.plot(x, np.cumsum(ratio), "k.-", lw=1, label="cumulative")
  ax.set_xlabel("principal component")
  ax.set_ylabel("explained variance ratio")
  ax.set_xticks(x)
  ax.set_ylim(0, 1.02)
  ax.set_title("scree (blue: stable under resampling and above the noise floor)", fontsize=8)
  ax.legend(fontsize=7, frameon=False)
  return save_figure(fig, path)


def plot_loadings(pca, components, num_pcs: int, path, *, stable_k=None) -> Path:
  plt = pyplot()
  P = pca.loadings_kxH[:num_pcs]
  fig, ax = plt.subplots(figsize=(0.5 * len(components) + 2, 0.5 * num_pcs + 1.4))
  lim = float(np.abs(P).max()) or 1.0
  image = ax.imshow(P, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
  ax.set_xticks(range(len(components)), [head_label(c) for c in components], fontsize=7)
  ax.set_yticks(range(num_pcs), [pc_name(j, stable_k) for j in range(num_pcs)], fontsize=8)
  for j in range(num_pcs):
    for h in range(len(components)):
      ax.text(h, j, f"{P[j, h]:.2f}", ha="center", va="center", fontsize=6)
  ax.set_xlabel("component (layer:head)")
  ax.set_title("loadings P (sign: largest loading positive)", fontsize=8)
  fig.colorbar(image, ax=ax, shrink=0.8, label="loading (0 at white)")
  return save_figure(fig, path)


def plot_couplings(couplings: dict, num_pcs: int, path, *, checkpoints=None, clear=None, stable_k=None) -> Path:
  """Each dataset's couplings to the top PCs (blank: a dataset sampled at too few of the checkpoints); with
  `clear` ({dataset: [k] bool}), a dot where the coupling's interval excludes 0."""
  plt = pyplot()
  names = list(couplings)
  C = np.array([couplings[d][:num_pcs] for d in names])
  scale_k = np.abs(C).max(0)
  scale_k = np.where(np.isfinite(scale_k), scale_k, np.nanmax(np.abs(C), 0))
  C = C / np.where(scale_k > 0, scale_k, 1.0)  # each PC's column normalised (Fig. 12): PC2's pattern is seen
  fig, ax = plt.subplots(figsize=(1.3 * num_pcs + 3, 0.35 * len(names) + 1.4))
  image = ax.imshow(C, cmap="PuOr", vmin=-1.0, vmax=1.0, aspect="auto")
  ax.set_yticks(range(len(names)), [f"{d} (too few checkpoints)" if np.isnan(couplings[d]).all() else d
                                    for d in names], fontsize=7)
  ax.set_xticks(range(num_pcs), [f"{pc_name(j, stable_k)}\n(÷ {scale_k[j]:.2g})" for j in range(num_pcs)], fontsize=8)
  where = "the checkpoints all datasets have" if checkpoints is None else f"checkpoints {_listed(checkpoints)}"
  dots = ""
  raw = np.array([couplings[d][:num_pcs] for d in names])
  for i in range(len(names)):  # the coupling itself in each cell: normalised columns look alike whatever their size
    for j in range(num_pcs):
      mark = "• " if clear is not None and np.asarray(clear[names[i]])[j] else ""
      if np.isfinite(raw[i, j]):
        ax.text(j, i, f"{mark}{raw[i, j]:+.2g}", ha="center", va="center", fontsize=6,
                color="black" if abs(C[i, j]) < 0.6 else "white")
  if clear is not None:
    dots = "; • interval excludes 0"
  ax.set_title(f"data couplings (scores averaged over {where}; colours: each column ÷ its largest |coupling|, "
               f"numbers: the couplings{dots})", fontsize=8, wrap=True)
  fig.colorbar(image, ax=ax, shrink=0.8, label="coupling ÷ its column's largest |coupling|")
  return save_figure(fig, path)


def plot_trajectories(scores_Rxk, datasets_R, checkpoints_R, path, *, pairs=((0, 1), (1, 2)), stable_k=None) -> Path:
  """π_d(t) in the planes of PC pairs (those of the PCs analysed: `stable_k`'s); first and last checkpoints
  marked."""
  plt = pyplot()
  analysed = scores_Rxk.shape[1] if stable_k is None else min(scores_Rxk.shape[1], len(stable_k))
  pairs = [p for p in pairs if max(p) < analysed]
  if not pairs:
    raise ValueError(f"trajectories need 2 principal components; {analysed} analysed")
  fig, axes = plt.subplots(1, len(pairs), figsize=(4.6 * len(pairs) + 1.4, 4), squeeze=False, layout="constrained")
  datasets = list(dict.fromkeys(datasets_R.tolist()))
  for ax, (a, b) in zip(axes[0], pairs):
    for d, colour in zip(datasets, series_colours(len(datasets))):
      rows = np.flatnonzero(datasets_R == d)
      rows = rows[np.argsort(checkpoints_R[rows])]
      x, y = scores_Rxk[rows, a], scores_Rxk[rows, b]
      ax.plot(x, y, "-", color=colour, lw=1, label=d)
      ax.plot(x[:1], y[:1], "o", color=colour, ms=4, mfc="white")
      ax.plot(x[-1:], y[-1:], "s", color=colour, ms=5)
    ax.set_xlabel(pc_name(a, stable_k))
    ax.set_ylabel(pc_name(b, stable_k))
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
  _legend_beside(fig, axes[0, 0])
  fig.suptitle("trajectories π_d(t) (○ first checkpoint, ■ last)", fontsize=9)
  return save_figure(fig, path)


def _legend_beside(fig, ax) -> None:
  """The datasets' legend to the right of the panels (inside the first one it covered its lines)."""
  fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=6, frameon=False)


def plot_pc_time_series(scores_Rxk, datasets_R, checkpoints_R, num_pcs: int, path, *, intervals_Rxkx2=None,
                        stable_k=None) -> Path:
  """Each dataset's score on PC1..k against checkpoint (Fig. 15); with `intervals_Rxkx2`
  (`structure.score_intervals`), a band for each row's 95 % interval."""
  plt = pyplot()
  fig, axes = plt.subplots(1, num_pcs, figsize=(3.8 * num_pcs + 1.4, 3.2), squeeze=False, layout="constrained")
  datasets = list(dict.fromkeys(datasets_R.tolist()))
  for j, ax in enumerate(axes[0]):
    for d, colour in zip(datasets, series_colours(len(datasets))):
      rows = np.flatnonzero(datasets_R == d)
      rows = rows[np.argsort(checkpoints_R[rows])]
      ax.plot(checkpoints_R[rows], scores_Rxk[rows, j], ".-", color=colour, lw=1, label=d)
      if intervals_Rxkx2 is not None:
        ax.fill_between(checkpoints_R[rows], intervals_Rxkx2[rows, j, 0], intervals_Rxkx2[rows, j, 1],
                        color=colour, alpha=0.12 if len(datasets) <= 10 else 0.06, lw=0)
    _symlog_steps(ax, checkpoints_R)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{pc_name(j, stable_k)} score")
  _legend_beside(fig, axes[0, 0])
  if intervals_Rxkx2 is not None:
    fig.suptitle("PC scores over training; bands: 95 % intervals of the noiseless matrix's scores", fontsize=8)
  return save_figure(fig, path)


def plot_patterns(delta_h_GxD, targets, datasets, checkpoint, path) -> Path:
  """Rows: patterning targets; columns: the weight of each probe dataset in the plan that produces it."""
  plt = pyplot()
  W = np.asarray(delta_h_GxD)
  fig, ax = plt.subplots(figsize=(0.75 * len(datasets) + 3.2, 0.36 * len(targets) + 1.8))
  lim = float(np.abs(W).max()) or 1.0
  image = ax.imshow(W, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
  ax.set_yticks(range(len(targets)), ["+".join(head_label(c) for c in t.removesuffix(" alone").removesuffix(
      " together").split("+")) for t in targets], fontsize=7)
  ax.set_xticks(range(len(datasets)), datasets, fontsize=7, rotation=35, ha="right")
  for t in range(W.shape[0]):
    for d in range(W.shape[1]):
      ax.text(d, t, f"{W[t, d]:+.2f}", ha="center", va="center", fontsize=6,
              color="white" if abs(W[t, d]) > 0.6 * lim else "black")
  ax.set_ylabel("target (a component: moved alone)")
  ax.set_title(f"patterning at checkpoint {checkpoint}: probe weights dh of each plan (largest |dh| = {lim:.2g})",
               fontsize=8)
  ax.set_xlabel("probe dataset")
  fig.colorbar(image, ax=ax, shrink=0.8, label="probe weight dh (0 at white)")
  return save_figure(fig, path)


def _listed(values, most: int = 8) -> str:
  values = [str(v) for v in values]
  return ", ".join(values if len(values) <= most else values[:most - 2] + ["…", values[-1]])
