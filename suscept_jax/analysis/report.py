"""One self-contained HTML page for one or more sweep results directories: the run's config, the tidy table
(sortable, flagged cells in colour), the sweep figures, structural inference (scree, loadings, couplings,
trajectories, PC time series, stability, correlations with independent head labels), patterning (the probe
re-weightings that move the components along each top PC, or one component alone) and links to the
per-token views when present. Figures are embedded as data URIs and the sorting script is inline: the page
opens offline.

Shape letters (as in structure.py): R rows (probe × checkpoint), H components, K chains, D probes, B
resamples, G patterning targets.
"""
import html
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from suscept_jax import health, results
from suscept_jax.analysis import plots, response, structure, structure_plots
from suscept_jax.analysis.pages import embedded_png, index_html, scrolling

_SORT_SCRIPT = """<script>
for (const table of document.querySelectorAll('table.sortable')) {
  table.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
    const body = table.tBodies[0], rows = Array.from(body.rows);
    const asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
    const key = r => { const t = r.cells[col].textContent, v = parseFloat(t); return isNaN(v) ? t : v; };
    rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1));
    rows.forEach(r => body.appendChild(r));
  }));
}
</script>"""

# Rows of the results table shown when every word typed is in them (and, ticked, only flagged rows): the paper's
# sweep puts 7,140 rows in the page.
_FILTER_SCRIPT = """<script>
(() => {
  const table = document.getElementById('results'), box = document.getElementById('results-filter');
  if (!table || !box) return;
  const flaggedOnly = document.getElementById('results-flagged'), count = document.getElementById('results-count');
  const rows = Array.from(table.tBodies[0].rows);
  const texts = rows.map(r => Array.from(r.cells, c => c.textContent).join(' | ').toLowerCase());
  const apply = () => {
    const words = box.value.toLowerCase().split(/\\s+/).filter(w => w);
    let shown = 0;
    rows.forEach((r, i) => {
      const keep = (!flaggedOnly.checked || r.classList.contains('flagged')) && words.every(w => texts[i].includes(w));
      r.style.display = keep ? '' : 'none';
      shown += keep;
    });
    count.textContent = `showing ${shown} of ${rows.length} rows`;
  };
  box.addEventListener('input', apply);
  flaggedOnly.addEventListener('change', apply);
  apply();
})();
</script>"""

TABLE_SHOWN = ["checkpoint", "probe", "component", "chi", "chi_ci95", "llc", "llc_ci95", "num_chains_used",
               "num_diverged", "r_hat", "ess_bulk", "mala_acceptance", "status"]


def _table_html(table) -> str:
  """The tidy table, sortable by clicking a header; cells whose status is not ok are coloured and the
  diagnostic that failed is highlighted."""
  cols = [c for c in TABLE_SHOWN if c in table.columns]
  head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
  body = []
  for row in table[cols].itertuples(index=False):
    record = dict(zip(cols, row))
    flagged = record.get("status", "ok") != "ok"
    cells = []
    for c in cols:
      v = record[c]
      text = f"{v:.4g}" if isinstance(v, (float, np.floating)) else html.escape(str(v))
      number = isinstance(v, (float, np.floating))
      bad = ((c == "r_hat" and number and v > health.R_HAT_MAX) or (c == "num_diverged" and v)
             or (c == "mala_acceptance" and number and v < health.MIN_MALA)
             or (c == "ess_bulk" and number and v < health.MIN_ESS) or (c == "llc" and number and v < 0)
             or (c == "chi" and number and not np.isfinite(v)))
      cells.append(f'<td class="{"bad" if bad else ""}">{text}</td>')
    body.append(f'<tr class="{"flagged" if flagged else ""}">{"".join(cells)}</tr>')
  return (f'<p class="meta">{len(table)} cells, {int((table.status != "ok").sum())} flagged (rows in orange; the '
          f'status column names every failed test, and those shown in a column here are red there: R̂, ESS, MALA, '
          f'divergences, a negative LLC, an undefined χ). Click a header to sort.</p>'
          f'<p><input type="search" id="results-filter" size="40" placeholder="filter: words every row shown holds">'
          f' <label><input type="checkbox" id="results-flagged"> flagged only</label>'
          f' <span class="meta" id="results-count"></span></p>'
          + scrolling(f'<table class="sortable" id="results"><thead><tr>{head}</tr></thead>'
                      f'<tbody>{"".join(body)}</tbody></table>'))


def build(results_dirs, out_path, *, num_pcs: int = 3, per_token_dir=None, num_resamples: int = 200,
          patterning_targets=(), log=print) -> Path:
  """Write the report to out_path (figures next to it, in report_figures/) and return its path.

  patterning_targets: groups of components (e.g. [["l1h2", "l1h3"]]) to move together, the others held
  fixed, as rows of the patterning section besides the top PCs and each component alone."""
  import pandas as pd
  dirs = [Path(results_dirs)] if isinstance(results_dirs, (str, Path)) else [Path(d) for d in results_dirs]
  out_path = Path(out_path)
  fig_dir = out_path.parent / results.REPORT_FILES[1]
  fig_dir.mkdir(parents=True, exist_ok=True)
  data = response.assemble(dirs)
  structure.check_num_pcs(num_pcs, data.X_RxH)
  unknown = sorted({c for group in patterning_targets for c in group} - set(data.components))
  if unknown:
    raise ValueError(f"patterning targets name components not in the response matrix: {unknown} (its components: "
                     f"{', '.join(data.components)})")
  table = pd.concat([results.ResultsDir(d).table() for d in dirs], ignore_index=True)
  table = table.drop_duplicates(["checkpoint", "probe", "component"])
  sections = []
  config = results.ResultsDir(dirs[0]).config()
  unfinished = [note for note in (results.ResultsDir(d).unfinished_note() for d in dirs) if note]
  for note in unfinished:
    log(f"note: {note}")
  sections.append(("Run", f"<p>Results: {', '.join(html.escape(str(d)) for d in dirs)}</p>"
                          + "".join(f"<p class='warn'>{html.escape(note)}.</p>" for note in unfinished) +
                          f"<details><summary>config.json (settings, versions)</summary><pre>"
                          f"{html.escape(json.dumps(config, indent=2, default=str))}</pre></details>"))
  sections.append(("Results table", _table_html(table)))
  figures = plots.sweep_figures(table, fig_dir)
  sections.append(("χ and LLC over training", "".join(embedded_png(f, f.stem) for f in figures)))

  # Structural inference.
  pca = structure.pca(data.X_RxH)
  # (every cell has >= 2 usable chains: `response.assemble` leaves out rows without an error bar)
  resampler = structure.chain_resampler(data.per_chain_RxHxK, shared_chains_R=data.shared_chains_R)
  chains = int(np.median(np.isfinite(data.per_chain_RxHxK).sum(-1)))  # (cells pooled over seeds have more)
  stability = structure.bootstrap_stability(data.X_RxH, resampler, num_pcs, stderr_RxH=data.stderr_RxH,
                                            num_resamples=num_resamples,
                                            spread_correction=structure.bootstrap_spread_correction(chains),
                                            interval_widening=structure.small_sample_widening(chains))
  stability_html = "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in stability.describe()) + "</ul>"
  datasets, steps = data.datasets_R, data.checkpoints_R
  couplings = structure.data_couplings(pca.scores_Rxk, datasets, steps)
  coupling_steps, partial = structure.coupling_checkpoints(datasets, steps)
  corrected = structure.corrected_scores(data.X_RxH, resampler, data.stderr_RxH, num_pcs, num_chains=chains,
                                         num_resamples=num_resamples)
  coupling_intervals = structure.data_coupling_intervals(corrected, datasets, steps)
  stable_k = stability.stable_k
  struct_figs = [
      structure_plots.plot_scree(pca, stability, fig_dir / "scree.png"),
      structure_plots.plot_loadings(pca, data.components, num_pcs, fig_dir / "loadings.png", stable_k=stable_k),
      structure_plots.plot_couplings(couplings, num_pcs, fig_dir / "couplings.png", checkpoints=coupling_steps,
                                     clear={d: structure.excludes_zero(i) for d, i in coupling_intervals.items()},
                                     stable_k=stable_k),
      *([structure_plots.plot_trajectories(pca.scores_Rxk, datasets, steps, fig_dir / "trajectories.png",
                                           stable_k=stable_k)] if num_pcs >= 2 else []),  # (planes of 2 PCs)
      structure_plots.plot_pc_time_series(pca.scores_Rxk, datasets, steps, num_pcs, fig_dir / "pc_time_series.png",
                                          intervals_Rxkx2=structure.score_intervals(corrected), stable_k=stable_k),
  ]
  explained = _explained_text(pca, num_pcs)
  excluded = ("<p>Excluded from the matrix:</p><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in data.excluded)
              + "</ul>") if data.excluded else "<p>Nothing excluded.</p>"
  found = _label_correlations(dirs, data, pca, stability, num_pcs)
  notes = "".join(f"<p>{html.escape(n)}.</p>" for n in data.notes + (
      [f"Data couplings leave out {', '.join(partial)}: sampled at too few of the checkpoints the others share"]
      if partial else []))
  labels_html = _label_table(found, num_pcs)
  couplings_html = _couplings_table(couplings, coupling_intervals, stable_k, num_pcs)
  findings = _summary_lines(data, pca, stability, found, num_pcs, (couplings, coupling_intervals))
  sections.append(("Structural inference",
                   '<h3>Findings</h3><pre style="white-space: pre-wrap">'
                   + html.escape("\n".join(line.removeprefix("  ") for line in findings)) + "</pre>"
                   f"<p>Response matrix X: {len(data.rows)} rows (probe × checkpoint) × {len(data.components)} "
                   f"components, columns standardised; explained variance {explained}.</p>{notes}{excluded}"
                   f"<h3>Stability of the top {num_pcs} PCs</h3>{stability_html}"
                   f"<h3>Loadings against independent head labels</h3>{labels_html}"
                   f"<h3>Data couplings</h3>{couplings_html}"
                   + "".join(embedded_png(f, f.stem) for f in struct_figs)))
  sections.append(("Patterning", _patterning_html(data, pca, stability, resampler, num_resamples=num_resamples,
                                                  delta_h=config["settings"].get("delta_h", 0.1), fig_dir=fig_dir,
                                                  groups=patterning_targets)))
  if per_token_dir is not None and (Path(per_token_dir) / "views" / "index.html").exists():
    sections.append(("Per-token susceptibilities", _per_token_link(Path(per_token_dir), config["settings"], log,
                                                                   page_dir=out_path.parent)))
  page = index_html("susceptibilities: report", sections)
  page = page.replace("</style>", ".flagged td { background: #fff1dc; } td.bad { background: #ffc9c9; } "
                                  "#couplings td.clear { font-weight: bold; } "
                                  "th { cursor: pointer; background: #f3f3f3; position: sticky; top: 0; } "
                                  "#results td { white-space: nowrap; } "
                                  "#results td:last-child { white-space: normal; min-width: 24em; "
                                  "font-size: 0.8em; }\n</style>")
  page = page.replace("</body>", _SORT_SCRIPT + "\n" + _FILTER_SCRIPT + "\n</body>")
  from suscept_jax.paths import atomic_write_bytes
  atomic_write_bytes(out_path, page.encode())
  for line in findings:  # (the same lines as the page's findings: a TPU VM has no browser)
    log(line)
  log(f"report: {out_path}")
  return out_path


class _LabelCorrelations(NamedTuple):
  """Pearson r across heads between each PC's loadings and each head label, at one checkpoint."""

  checkpoint: int | None
  num_heads: int
  r: dict  # label name -> [k]
  interval: dict  # label name -> [k, 2]: the 95 % interval over the chain resamples (NaN without them)
  columns: list  # the scored heads' columns of X
  labels: dict  # label name -> each scored head's value


def _label_correlations(dirs, data, pca, stability, num_pcs) -> _LabelCorrelations | str:
  """r between each PC's loadings and the head scores at the matrix's last checkpoint (or the latest scored
  before it), from whichever directory scored it, with its 95 % interval over the chain resamples when there
  are any; or a sentence saying why there is none."""
  import pandas as pd
  scores = pd.concat([results.ResultsDir(d).head_scores() for d in dirs], ignore_index=True)
  if not len(scores):
    return "No head scores recorded in these results."
  if "checkpoint" in scores:
    scored = scores.checkpoint[scores.checkpoint <= data.checkpoints_R.max()]
    at = scored.max() if len(scored) else scores.checkpoint.min()
    last = scores[scores.checkpoint == at].drop_duplicates("component")
  else:
    last = scores.drop_duplicates("component")
  last = last.set_index("component")
  heads = [c for c in data.components if c in last.index]
  if len(heads) < 3:
    return "Too few heads with scores to correlate."
  cols = [data.components.index(h) for h in heads]
  labels = {name: last.loc[heads, name].to_numpy(float) for name in ("prev_token", "induction", "ablation_delta")
            if name in last.columns}
  interval = {name: np.full((num_pcs, 2), np.nan) for name in labels}
  if stability.loadings_BxkxH is not None and len(stability.loadings_BxkxH):
    interval = structure.label_correlation_intervals(
        stability.loadings_BxkxH[:, :, cols], labels, point_loadings_kxH=pca.loadings_kxH[:num_pcs][:, cols],
        noise_matched_BxkxH=stability.noise_matched_loadings_BxkxH[:, :, cols])
  return _LabelCorrelations(checkpoint=int(last["checkpoint"].iloc[0]) if "checkpoint" in last else None,
                            num_heads=len(heads),
                            r=structure.label_correlations(pca.loadings_kxH[:num_pcs][:, cols], labels),
                            interval=interval, columns=cols, labels=labels)


def _r_text(r: float, lo_hi) -> str:
  return f"{r:+.2f}" + (f" [{lo_hi[0]:+.2f}, {lo_hi[1]:+.2f}]" if np.isfinite(lo_hi).all() else "")


def _couplings_table(couplings: dict, intervals: dict, stable_k, num_pcs: int) -> str:
  """Each dataset's coupling to PC1..k (as in the figure, before its columns are normalised), with the 95 %
  interval of the noiseless matrix's coupling (`structure.data_coupling_intervals`)."""
  def cell(value, lo_hi):
    text = f"{value:+#.3g}" + (f" [{lo_hi[0]:+#.3g}, {lo_hi[1]:+#.3g}]" if np.isfinite(lo_hi).all() else "")
    return f"<td class=\"clear\">{text}</td>" if structure.excludes_zero(lo_hi) else f"<td>{text}</td>"

  header = "".join(f"<th>{structure_plots.pc_name(j, stable_k)}</th>" for j in range(num_pcs))
  rows = "".join(f"<tr><td>{html.escape(str(d))}</td>" + "".join(cell(c[j], intervals[d][j]) for j in range(num_pcs))
                 + "</tr>" for d, c in couplings.items() if np.isfinite(c[:num_pcs]).any())
  return (f'<p class="meta">Each dataset\'s scores on the PCs averaged over the checkpoints every dataset has (the '
          f'figure below, before its columns are normalised). In brackets: the 95 % interval of the coupling the '
          f'noiseless matrix would show, from the same chain resamples, widened for the few chains. The cells\' '
          f'noise shrinks the couplings X shows (it inflates each column\'s spread, which standardising divides '
          f'by), so the interval is placed about the coupling divided by its PC\'s reliability and need not hold '
          f'the value shown. On synthetic matrices from 4 chains these intervals held the true coupling 97–100 % '
          f'of the time (erring wide at high noise), bare percentiles of the resamples 65–97 % '
          f'(benchmarks/structure_calibration.py). Bold: '
          f'the interval excludes 0 (a dot in the figure).</p>'
          f'<table id="couplings"><tr><th>dataset</th>{header}</tr>{rows}</table>')


def _label_table(found: _LabelCorrelations | str, num_pcs: int) -> str:
  if isinstance(found, str):
    return f"<p>{html.escape(found)}</p>"
  names = list(found.r)
  rows = "".join(f"<tr><td>PC{j + 1}</td>" + "".join(f"<td>{_r_text(found.r[n][j], found.interval[n][j])}</td>"
                                                      for n in names) + "</tr>" for j in range(num_pcs))
  header = "".join(f"<th>r with {html.escape(n)}</th>" for n in names)
  checkpoint = found.checkpoint if found.checkpoint is not None else "?"
  return (f'<p class="meta">Head scores at checkpoint {checkpoint} ({found.num_heads} heads); labels are computed '
          f'from attention patterns and ablations, never from χ. In brackets: the 95 % interval of r over the chain '
          f'resamples, their deviations widened for the few chains (√(K/(K−1))·t/z: 1.87 at 4 chains) and the '
          f'interval moved against the bias the cells\' noise puts in r (noise inflates a column\'s spread, so '
          f'standardising shrinks the noisier columns and turns the PCs; resamples at X\'s own noise level say '
          f'how far), so it need not hold the r shown. On synthetic matrices from 4 chains these intervals held the '
          f'true r 95–100 % of the time, the chains\' noise independent or shared between cells (without the '
          f'bias correction, r with a label that followed PC1: down to 17 %); where PC2 was weak, 60–100 % '
          f'(benchmarks/structure_calibration.py). r takes the sign of the PC '
          f'as shown (its largest loading positive); where a PC\'s sign flips in a share of the resamples (said '
          f'under Stability), another run may show that PC, and its r, reversed. It is the estimation noise of '
          f'X; the heads being few is not in it.</p>'
          f'<table id="labels"><tr><th>PC</th>{header}</tr>{rows}</table>')


def _explained_text(pca, num_pcs: int) -> str:
  return ", ".join(f"PC{j + 1} {100 * r:.1f} %" for j, r in enumerate(pca.explained_variance_ratio[:num_pcs]))


def _summary_lines(data, pca, stability, found: _LabelCorrelations | str, num_pcs: int,
                   couplings_and_intervals=None) -> list[str]:
  """The structural-inference findings in a few lines, for the terminal (a TPU VM has no browser); with the data
  couplings and their intervals, each stable PC's datasets whose coupling is clear of 0."""
  explained = _explained_text(pca, num_pcs)
  lines = [f"structure: X {len(data.rows)} rows (probe × checkpoint) × {len(data.components)} components; "
           f"explained variance {explained}"]
  for j in range(num_pcs):
    floor = (f" vs noise floor {stability.noise_floor:.3g}" if np.isfinite(stability.noise_floor) else "")
    line = (f"  PC{j + 1}: {'stable' if stability.stable_k[j] else 'UNSTABLE'} (singular value "
            f"{stability.singular_value_k[j]:.3g}{floor}){stability.sign_note(j)}")
    if not isinstance(found, str):
      line += "; " + _strongest_label_text(found, j, bool(stability.stable_k[j]))
    lines.append(line)
    common = _common_response_text(pca.loadings_kxH[j], j)
    if common:
      lines.append(f"    {common}")
    if couplings_and_intervals is not None and stability.stable_k[j]:
      lines.append(f"    {_clear_couplings_text(*couplings_and_intervals, j)}")
  if stability.floor_out_of_reach:
    lines.append("  " + stability.describe()[-1])
  return lines


NEARLY_EQUAL_LOADINGS = 0.1  # (max − min) / mean |loading| below which a PC is the heads' common response


def _common_response_text(loadings_H, j: int) -> str | None:
  """A caveat for a PC whose loadings are nearly equal across heads (the demo's PC1: 0.347–0.359): it is the heads'
  common response, and an r across heads then follows differences of a few percent, noise included."""
  loadings_H = np.asarray(loadings_H, float)
  low, high = float(loadings_H.min()), float(loadings_H.max())
  if low <= 0 or (high - low) / float(np.abs(loadings_H).mean()) >= NEARLY_EQUAL_LOADINGS:
    return None
  return (f"PC{j + 1}'s loadings are nearly equal across heads ({low:.3f}–{high:.3f}): it is their common response, "
          f"and its r with a head label rests on differences of a few percent")


def _clear_couplings_text(couplings: dict, intervals: dict, j: int, most: int = 4) -> str:
  """The datasets whose coupling to PC j has an interval excluding 0, largest first (at most `most` named)."""
  clear = sorted((d for d in couplings if structure.excludes_zero(intervals[d])[j]),
                 key=lambda d: -abs(couplings[d][j]))
  if not clear:
    return "no dataset's coupling interval excludes 0"
  named = ", ".join(f"{d} {couplings[d][j]:+#.3g}" for d in clear[:most])
  more = f" and {len(clear) - most} more" if len(clear) > most else ""
  return f"couplings clear of 0 ({len(clear)} of {len(couplings)} datasets): {named}{more}"


def _strongest_label_text(found: _LabelCorrelations, j: int, stable: bool = True) -> str:
  """The head label PC j follows most clearly: the largest |r| among those whose interval excludes 0 (a large
  r inside an interval across 0 is the winner's curse over a few heads, e.g. on uniform loadings), else says
  none does; NaN r (a constant label) never wins. Of an unstable PC it says that its intervals are less sure:
  on synthetic rank-2 matrices whose PC2 fell below the noise floor, its intervals held the true r 83–95 % of
  the time, and those of labels unrelated to it excluded 0 in up to 18 % (a stable PC's: ≤ 5 %;
  `benchmarks/structure_calibration.py`)."""
  finite = [n for n in found.r if np.isfinite(found.r[n][j])]
  if not finite:
    return "no head label varies across these heads"
  clear = [n for n in finite if structure.excludes_zero(found.interval[n][j])]
  name = max(clear or finite, key=lambda n: abs(found.r[n][j]))
  text = f"r with {name} {_r_text(found.r[name][j], found.interval[name][j])}"
  if clear:
    return ("strongest head label: " if stable else "strongest head label (of an unstable PC, less sure): ") + text
  return "no head label's interval excludes 0 (largest: " + text + ")"


def _ratio_text(effect: float, off_target: float) -> str:
  """effect / off-target; '–' when the plan does nothing (no direction of X above its noise floor)."""
  if effect == 0:
    return "–"
  return f"{effect / off_target:.3g}" if off_target > 0 else "∞"


def _per_token_link(per_token_dir: Path, sweep_settings: dict, log, *, page_dir: Path) -> str:
  """A link to the per-token views when they come from the sweep's training run; otherwise why not. Relative to
  the report's directory `page_dir` (an absolute file:// link broke when the run was copied or moved)."""
  target = (per_token_dir / "views" / "index.html").resolve()
  config_path = per_token_dir / "config.json"
  theirs = json.loads(config_path.read_text())["settings"].get("run_dir") if config_path.exists() else None
  ours = sweep_settings.get("run_dir")
  if theirs is None or ours is None or Path(theirs).resolve() != Path(ours).resolve():
    why = f"the per-token views at {per_token_dir} come from run {theirs}, the sweep from run {ours}: not linked"
    log(why)
    return f"<p>{html.escape(why)}.</p>"
  try:
    href = Path(os.path.relpath(target, Path(page_dir).resolve())).as_posix()
  except ValueError:  # (another drive on Windows: no relative path)
    href = target.as_uri()
  return f'<p><a href="{html.escape(href)}">per-token views</a> ({html.escape(str(per_token_dir))})</p>'


def _patterning_html(data, pca, stability, resampler, *, num_resamples: int, delta_h: float, fig_dir: Path,
                     groups=()) -> str:
  """At the last checkpoint: for each top PC's direction, each component alone and each group of components
  asked for (moved together), the re-weighting of the probes (no weight beyond δh) whose first-order effect
  best produces it, and how well it does."""
  last = int(data.checkpoints_R.max())
  rows = np.flatnonzero(data.checkpoints_R == last)
  if len(rows) < 2:
    return f"<p>Only {len(rows)} probe at checkpoint {last}: patterning needs at least 2.</p>"
  datasets = data.datasets_R[rows].tolist()
  num_pcs = len(stability.stable_k)
  names = [f"PC{j + 1} ({'stable' if stability.stable_k[j] else 'unstable'})" for j in range(num_pcs)]
  names += [f"{c} alone" for c in data.components] + [f"{'+'.join(g)} together" for g in groups]
  together_GxH = np.array([[float(c in g) for c in data.components] for g in groups]).reshape(len(groups),
                                                                                           len(data.components))
  targets_GxH = np.concatenate([pca.loadings_kxH[:num_pcs] * pca.column_scale_H, np.eye(len(data.components)),
                                together_GxH])
  X_DxH, stderr_DxH = data.X_RxH[rows], data.stderr_RxH[rows]
  rng = np.random.default_rng(0)  # the probes' χ share the checkpoint's chains: their errors are correlated
  noise = structure.resampled_noise(X_DxH, np.array([resampler(rng)[rows] for _ in range(num_resamples)]),
                                    stderr_DxH)
  plans = structure.scaled_patterns(X_DxH, targets_GxH, stderr_DxH, noise_BxDxH=noise, max_weight=delta_h)
  figure = structure_plots.plot_patterns(plans.delta_h_GxD, names, datasets, last, fig_dir / "patterning.png")
  effect, off_target = plans.effect_G(targets_GxH), plans.off_target_G(targets_GxH)
  effect_err = plans.effect_stderr_G(targets_GxH)
  body = "".join(f"<tr><td>{html.escape(n)}</td><td>{effect[t]:.3g} ± {effect_err[t]:.2g}</td>"
                 f"<td>{off_target[t]:.3g}</td>"
                 f"<td>{_ratio_text(effect[t], off_target[t])}</td>"
                 f"<td>{plans.residual_G[t]:.2f}</td></tr>" for t, n in enumerate(names))
  return (f'<p class="meta">Checkpoint {last}, {len(datasets)} probes: X there has <b>{plans.rank} direction(s)'
          f"</b> above the noise floor of its error bars ({plans.noise_floor:.2g}), so the probes can move the "
          f"components independently in {plans.rank} direction(s) at first order. For each target (a PC's "
          f"loadings, in χ's units, or one component with the others held fixed) the plan is dh = (Xᵀ)⁺·target "
          f"over those directions, scaled so that no probe's weight exceeds δh = {delta_h:g} (where χ was "
          f"measured). Effect: the change Σ<sub>d</sub> dh<sub>d</sub>·χ<sub>d,c</sub> of ⟨φ<sub>c</sub>⟩ "
          f"along the target, in nats (× nβ for weight-refined LLCs), less its optimism (a plan made on X fits "
          f"X's noise too; plans made on X + noise and judged on X say by how much), ± its spread over X within "
          f"the cells' error bars. Off-target: one length for what the plan does besides its target and the "
          f"effect's spread over X within the cells' error bars (correlated as the shared chains make them), "
          f"added in quadrature (the ratio is of the numbers shown, to their digits). Residual: "
          f"the share of the target these probes cannot produce (1: none of it). A target with effect / "
          f"off-target below ≈ 2 is not one these probes can "
          f"steer. (The PCs come from every checkpoint, the plans from the last one's X alone: a PC along which "
          f"the checkpoints differ can be out of reach at any one of them.)</p>"
          f'<table id="patterning" class="sortable"><thead><tr><th>target</th><th>effect</th><th>off-target</th>'
          f"<th>effect / off-target</th><th>residual</th></tr></thead><tbody>{body}</tbody></table>"
          f"{embedded_png(figure, figure.stem)}")
