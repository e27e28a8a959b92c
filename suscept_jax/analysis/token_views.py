"""Views of per-token susceptibilities: highlighted text, extreme tokens in context and bimodal tokens
(self-contained HTML), and figures of bimodal histograms, additivity, comparisons with ablation and loss,
position profiles, totals and UMAP (matplotlib PNG). The statistics they show are in `token_stats`.

Every view reads a tidy token table (one row per dataset × context × position × component, see
`suscept_jax_runners.per_token`): columns dataset, context, position, token_id, token, loss_at_star,
component, chi, chi_stderr, ablation_delta.

Colours follow App. C.2 of the paper: green for χ > 0, red otherwise, with opacity |χ|/max|χ| squared
("quadratic", bright green 255) or linear ("linear", green 128), max|χ| shared by every head shown.

Shape letters: H heads shown, O contexts, J token positions.
"""
import html
from pathlib import Path

import numpy as np

from suscept_jax.analysis.pages import page, table_html
from suscept_jax.analysis.plots import pyplot, save_figure, series_colours
from suscept_jax.analysis.structure import excludes_zero
from suscept_jax.analysis.token_stats import (BIMODAL_MIN_DELTA_BIC, BIMODAL_MIN_SEPARATION, BIMODAL_MIN_WEIGHT,
                                              bimodality, clear_of_zero, head_rows, umap_embedding)

COLOUR_SCHEMES = ("quadratic", "linear")


# ---- colours ----------------------------------------------------------------------------------------------

def token_colour(chi: float, max_abs: float, scheme: str = "quadratic") -> tuple[int, int, int, float]:
  """(r, g, b, alpha) of one per-token χ (App. C.2's two algorithms)."""
  if scheme not in COLOUR_SCHEMES:
    raise ValueError(f"colour scheme {scheme!r}: expected one of {COLOUR_SCHEMES}")
  if not np.isfinite(chi) or not max_abs > 0:
    return (255, 255, 255, 0.0)
  ratio = min(abs(float(chi)) / float(max_abs), 1.0)
  alpha = ratio**2 if scheme == "quadratic" else ratio
  if chi > 0:
    return (0, 255 if scheme == "quadratic" else 128, 0, round(alpha, 4))
  return (255, 0, 0, round(alpha, 4))


def css_rgba(colour) -> str:
  r, g, b, a = colour
  return f"rgba({r}, {g}, {b}, {a:g})"


# ---- highlighted text ---------------------------------------------------------------------------------------

def _legend(heads, scheme: str, max_abs: float) -> str:
  items = "".join(f'<span style="background-color: {css_rgba(token_colour(s * max_abs, max_abs, scheme))}">'
                  f'{"+" if s > 0 else "−"}{abs(s):g}·max</span>' for s in (-1.0, -0.5, 0.5, 1.0))
  bands = " / ".join(html.escape(h) for h in heads)
  opacity = "(|χ|/max)²" if scheme == "quadratic" else "|χ|/max"
  per_head = f'<p class="legend">Each token carries one band per head, top to bottom: {bands}.</p>'
  return (f'<p class="legend">Colour: green χ &gt; 0, red χ &lt; 0; opacity {opacity}'
          f' with max |χ| = {max_abs:.3g} shared by all heads shown. {items}</p>'
          + (per_head if len(heads) > 1 else ""))


def visible_text(text: str) -> str:
  """A token as a reader can see it: a line break as a mark, then the break (↵ for \n, ␍ for \r, which breaks the
  line too), other control characters in caret notation (^C for \x03, ^? for DEL; they showed as empty boxes,
  and so did their Unicode pictures in fonts without them)."""
  def shown(i: int, c: str) -> str:
    if c == "\r":
      return "␍" if text[i + 1:i + 2] == "\n" else "␍\n"
    if c == "\n":
      return "↵\n"
    return "^" + chr(ord(c) + 64) if ord(c) < 0x20 and c != "\t" else "^?" if c == "\x7f" else c
  return "".join(shown(i, c) for i, c in enumerate(text))


def _token_span(text: str, chis, max_abs: float, scheme: str, extra: str = "", tooltip: str | None = None) -> str:
  """One element per token. One head: its background; several: stacked horizontal bands, one per head.
  `tooltip`: shown on hover (the element's title)."""
  shown = html.escape(visible_text(text))
  colours = [css_rgba(token_colour(c, max_abs, scheme)) for c in chis]
  data = " ".join(f'data-chi{i}="{c:.6g}"' for i, c in enumerate(chis))
  if tooltip is not None:
    extra += f' title="{html.escape(tooltip)}"'
  if len(colours) == 1:
    return f'<span class="tok" {data}{extra} style="background-color: {colours[0]}">{shown}</span>'
  n = len(colours)
  stops = ", ".join(f"{c} {100 * i / n:.2f}%, {c} {100 * (i + 1) / n:.2f}%" for i, c in enumerate(colours))
  return f'<span class="tok stack" {data}{extra} style="background: linear-gradient(to bottom, {stops})">{shown}</span>'


def highlighted_text_html(contexts, chi_HxOxJ, heads, *, title: str, scheme: str = "linear",
                          captions=None, max_abs: float | None = None, stderr_HxOxJ=None) -> str:
  """A page with every context's tokens highlighted by their per-token χ for one or several heads.

  contexts: list (O) of lists (J) of token strings, the tokens whose prediction χ scores.
  chi_HxOxJ: per-token χ per head. The normalisation max|χ| is shared by all heads (the paper's).
  stderr_HxOxJ: χ's standard errors; when given, hovering a token shows χ ± stderr for every head.
  """
  chi = np.asarray(chi_HxOxJ, np.float64)
  if chi.ndim != 3 or chi.shape[0] != len(heads) or chi.shape[1] != len(contexts):
    raise ValueError(f"chi must be [heads={len(heads)}, contexts={len(contexts)}, tokens]; got {chi.shape}")
  err = None if stderr_HxOxJ is None else np.asarray(stderr_HxOxJ, np.float64)
  if err is not None and err.shape != chi.shape:
    raise ValueError(f"stderr must have χ's shape {chi.shape}; got {err.shape}")
  max_abs = float(np.nanmax(np.abs(chi))) if max_abs is None and np.isfinite(chi).any() else (max_abs or 0.0)
  parts = [_legend(heads, scheme, max_abs)]
  if err is not None:
    parts.append('<p class="legend">Hover a token for χ ± its standard error under every head shown.</p>')
  tooltip = lambda o, j: (None if err is None else "\n".join(
      f"{h}: χ = {chi[i, o, j]:+.3g} ± {err[i, o, j]:.2g}" for i, h in enumerate(heads)))
  for o, tokens in enumerate(contexts):
    if len(tokens) != chi.shape[2]:
      raise ValueError(f"context {o} has {len(tokens)} tokens but χ has {chi.shape[2]} positions")
    caption = html.escape(captions[o]) if captions is not None else f"context {o}"
    spans = "".join(_token_span(t, chi[:, o, j], max_abs, scheme, tooltip=tooltip(o, j)) for j, t in enumerate(tokens))
    parts.append(f'<h2>{caption}</h2><div class="ctx">{spans}</div>')
  return page(title, "\n".join(parts))


def _in_context_html(by_context, row, window: int, max_abs: float, scheme: str, verdict: str = "") -> str:
  """One token (a table row) highlighted with ±window tokens of its context (cut at the context's ends)."""
  g = by_context[(row.dataset, row.context)]
  near = g[(g.position >= row.position - window) & (g.position <= row.position + window)]
  focus = lambda r: ' data-focus="1"' if r.position == row.position else ""
  spans = "".join(_token_span(r.token, [r.chi], max_abs, scheme, focus(r)) for r in near.itertuples())
  return (f'<div class="meta">χ = {row.chi:+.3g} ± {row.chi_stderr:.2g}{verdict} at {html.escape(str(row.dataset))}, '
          f'context {row.context}, position {row.position}</div><div class="ctx">{spans}</div>')


def extreme_tokens_html(table, head: str, *, title: str, k: int = 100, window: int = 200,
                        scheme: str = "quadratic", num_chains: int | None = None, level: float = 0.95) -> str:
  """The k most positive and k most negative tokens of one head, each with ±window tokens of its context
  highlighted (the paper's Fig. 32 layout; the window is cut at the context's ends). Given the head's count of
  valid chains, each token and each list say whether (how many) `level` intervals are clear of 0: the lists
  are picked by the measured χ, so chain noise puts some tokens in them."""
  t = head_rows(table, head)
  max_abs = float(np.nanmax(np.abs(t.chi)))
  by_context = {key: g.sort_values("position") for key, g in t.groupby(["dataset", "context"], sort=False)}
  parts = [_legend([head], scheme, max_abs)]
  # (each list holds tokens of its sign only: with fewer than k of a sign, nlargest alone listed negative
  # tokens as "most positive" and the heading still said k)
  for label, sign, rows in (("most positive", ">", t[t.chi > 0].nlargest(k, "chi")),
                            ("most negative", "<", t[t.chi < 0].nsmallest(k, "chi"))):
    heading = f" (every token with χ {sign} 0)" if len(rows) < k else ""
    verdicts = [""] * len(rows)
    if num_chains is not None:
      clear = clear_of_zero(rows, num_chains, level)
      heading += f"; {clear.sum()} with a {level * 100:g} % interval clear of 0"
      verdicts = ["" if c else " (interval holds 0)" for c in clear]
    parts.append(f"<h2>{len(rows)} {label} tokens of {html.escape(head)}{html.escape(heading)}</h2>")
    parts += [_in_context_html(by_context, row, window, max_abs, scheme, v) for row, v in zip(rows.itertuples(),
                                                                                             verdicts)]
  return page(title, "\n".join(parts))


def bimodal_html(table, head: str, token: str, figure_html: str, candidates=None, *, examples: int = 3,
                 window: int = 20, scheme: str = "quadratic") -> str:
  """The χ histogram of one (head, token) with its mixture verdict, and for each mode the contexts whose χ
  lies nearest the mode's mean (§4.6: two kinds of contexts for one token)."""
  t = head_rows(table, head)
  rows = t[t.token == token]
  if not len(rows):
    raise ValueError(f"token {token!r} does not occur for head {head!r} in the per-token results")
  verdict = bimodality(rows.chi)
  # colours scaled to this token's own χ (the head's largest made its occurrences 0.1–0.6 % opaque: invisible)
  max_abs = float(np.nanmax(np.abs(rows.chi))) or float(np.nanmax(np.abs(t.chi)))
  by_context = {key: g.sort_values("position") for key, g in t.groupby(["dataset", "context"], sort=False)}
  stated = (f"Stated test: a two-Gaussian mixture beats one Gaussian by ΔBIC &gt; {BIMODAL_MIN_DELTA_BIC:g}, "
            f"each mode holds ≥ {BIMODAL_MIN_WEIGHT:.0%} of the occurrences and Ashman's D &gt; "
            f"{BIMODAL_MIN_SEPARATION:g}; needs ≥ 20 occurrences.")
  parts = [f"<p>{html.escape(head)}, token {html.escape(repr(token))}: {verdict['n']} occurrences, "
           f"<b>{'bimodal' if verdict['bimodal'] else 'not bimodal'}</b>"
           + (f" (ΔBIC {verdict['delta_bic']:.1f}, D {verdict['separation']:.2f})" if "delta_bic" in verdict else "")
           + f". {stated}</p>", figure_html, _legend([head], scheme, max_abs)]
  centres = verdict.get("means") or [float(rows.chi.mean())]
  for m, centre in enumerate(centres):
    near = rows.assign(gap=(rows.chi - centre).abs()).nsmallest(examples, "gap")
    if len(centres) == 1:
      label = "typical"
    elif verdict["bimodal"]:
      label = f"mode {m + 1} of 2 (mean χ {centre:+.3g}, weight {verdict['weights'][m]:.0%})"
    else:  # the mixture was fitted, but the test keeps one population: its components are not modes
      label = (f"component {m + 1} of the two-Gaussian fit (mean χ {centre:+.3g}, weight {verdict['weights'][m]:.0%}; "
               f"not a mode: the test finds one population)")
    parts.append(f"<h2>Contexts nearest {label}</h2>")
    parts += [_in_context_html(by_context, row, window, max_abs, scheme) for row in near.itertuples()]
  if candidates is not None and len(candidates):
    parts.append("<h2>Tokens tested (most evident first, over every head)</h2>"
                 + table_html(_readable_candidates(candidates).head(30)))
  return page(f"χ histogram of {token!r} for {head}", "\n".join(parts))


def _readable_candidates(candidates):
  """The bimodality table as a reader takes it: sorted by ΔBIC over every head (it was grouped by head under a
  "most evident first" heading), the fit's weights and means as numbers, the verdict as a word."""
  frame = candidates.sort_values("delta_bic", ascending=False)
  columns = [c for c in ("head", "token", "n", "bimodal", "delta_bic", "separation", "weights", "means") if c in frame]
  frame = frame[columns].copy()
  frame["token"] = [visible_text(str(t)).replace("\n", "") for t in frame.token]
  frame["bimodal"] = ["yes" if b else "no" for b in frame.bimodal]
  for column in ("weights", "means"):
    if column in frame:
      frame[column] = [", ".join(f"{v:.3g}" for v in values) if isinstance(values, (list, tuple)) else ""
                       for values in frame[column]]
  return frame.rename(columns={"delta_bic": "ΔBIC", "separation": "Ashman's D", "n": "occurrences"})


# ---- figures ---------------------------------------------------------------------------------------------

def plot_token_histogram(table, head: str, token: str, path) -> Path:
  """Histogram of χ for one (head, token) over its contexts, with the mixture fit and verdict (Fig. 11)."""
  plt = pyplot()
  values = table[(table.component == head) & (table.token == token)].chi.to_numpy()
  if not len(values):
    raise ValueError(f"token {token!r} does not occur for head {head!r} in the per-token results")
  verdict = bimodality(values)
  fig, ax = plt.subplots(figsize=(5.5, 3.2))
  ax.hist(values, bins=max(10, int(np.sqrt(len(values)))), color="grey", alpha=0.7, density=True)
  if "means" in verdict:  # the model the test accepts: the two modes, or one Gaussian
    grid = np.linspace(values.min(), values.max(), 200)
    fits = (zip(verdict["weights"], verdict["means"], verdict["stds"]) if verdict["bimodal"]
            else [(1.0, values.mean(), values.std())])
    for i, (w, m, s) in enumerate(fits):
      name = f"mode {i + 1} (weight {w:.0%})" if verdict["bimodal"] else "one Gaussian (the test's verdict)"
      ax.plot(grid, w * np.exp(-0.5 * ((grid - m) / s) ** 2) / (s * np.sqrt(2 * np.pi)), lw=1.5, label=name)
    ax.legend(fontsize=7, frameon=False)
  ax.xaxis.set_major_locator(plt.MaxNLocator(5))
  ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
  ax.set_title(f"{head}, token {token!r}: n = {verdict['n']}, "
               + ("bimodal" if verdict["bimodal"] else "not bimodal")
               + (f" (ΔBIC {verdict['delta_bic']:.1f}, D {verdict['separation']:.1f})"
                  if "delta_bic" in verdict else ""),
               fontsize=9)
  ax.set_xlabel("per-token χ")
  ax.set_ylabel("density")
  return save_figure(fig, path)


def plot_additivity(joined, slope: float, r: float, path, intervals=None) -> Path:
  """Dataset-level χ against δh·mean per-token χ, one point per head × dataset (`token_stats.additivity`); with
  `intervals` (`token_stats.additivity_intervals`) each point's error bars on both axes, a ring on the cells off
  the line, and the corrected slope with its interval in the title."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(4.8, 4.2))
  comps = list(dict.fromkeys(joined.component))
  for (comp, g), colour in zip(joined.groupby("component", sort=False), series_colours(len(comps))):
    dots = ax.scatter(g.predicted, g.chi, s=16, label=comp, zorder=3, color=colour)
    if intervals is not None:
      rows = g.index.to_numpy()
      ax.errorbar(g.predicted, g.chi, xerr=_error_bars(g.predicted, intervals.predicted_interval_Nx2[rows]),
                  yerr=_error_bars(g.chi, intervals.chi_interval_Nx2[rows]), fmt="none", lw=0.6, alpha=0.5,
                  ecolor=dots.get_facecolor()[0], zorder=2)
  if intervals is not None and intervals.off_line_N().any():
    off = joined[intervals.off_line_N()]
    ax.scatter(off.predicted, off.chi, s=60, facecolors="none", edgecolors="black", lw=0.8, zorder=4,
               label="off the line")
  lim = np.nanmax(np.abs(np.r_[joined.predicted, joined.chi])) * 1.1 or 1.0
  ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8, ls="--", label="slope 1")
  ax.set_xlabel("δh · mean per-token χ")
  ax.set_ylabel("dataset-level χ")
  for axis in (ax.xaxis, ax.yaxis):
    axis.set_major_locator(plt.MaxNLocator(5))
  ax.ticklabel_format(style="sci", scilimits=(-2, 3))
  ax.set_title(additivity_line(slope, r, intervals), fontsize=8)
  ax.legend(fontsize=6, ncol=1 if len(comps) <= 10 else 2, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
  return save_figure(fig, path)


def additivity_line(slope: float, r: float, intervals=None) -> str:
  """The additivity view's one-line summary: the slope and r, and with `intervals` the corrected slope's
  interval and how many cells are off the line."""
  if intervals is None:
    return f"additivity (eq. 45): slope {slope:.2f}, r = {r:.2f}"
  low, high = intervals.slope_interval
  off = intervals.off_line_N()
  fitted = (f"slope {intervals.slope_corrected:.2f} [{low:.2f}, {high:.2f}] (least squares {slope:.2f})"
            if intervals.slope_determined() else
            f"slope not determined (noise is {intervals.noise_share:.0%} of the horizontal spread; least squares "
            f"{slope:.2f})")
  return f"additivity (eq. 45): {fitted}, r = {r:.2f}; {off.sum()} of {off.size} off the line"


def off_line_html(joined, intervals) -> str:
  """A table of the additivity view's cells off the line, largest difference first, each with its difference's
  interval ('' where none is off or there are no intervals)."""
  import pandas as pd
  if intervals is None or not intervals.off_line_N().any():
    return ""
  off = intervals.off_line_N()
  low, high = intervals.difference_interval_Nx2[off].T
  difference = (joined.chi - joined.predicted)[off]
  frame = pd.DataFrame({"component": joined.component[off], "dataset": joined.dataset[off],
                        "dataset-level χ": joined.chi[off], "δh·mean per-token χ": joined.predicted[off],
                        "difference": difference, "95 % interval": [f"[{a:.3g}, {b:.3g}]" for a, b in zip(low, high)]})
  return "<p>Off the line:</p>" + table_html(frame.loc[difference.abs().sort_values(ascending=False).index])


def plot_comparisons(table, heads, path) -> Path:
  """Hexbin densities of per-token χ against the zero-ablation delta and against the loss at w*, per head,
  with Pearson r (Fig. 7, Fig. 31)."""
  plt = pyplot()
  fig, axes = plt.subplots(2, len(heads), figsize=(3.2 * len(heads), 5.6), squeeze=False)
  for col, head in enumerate(heads):
    t = table[table.component == head]
    for row, (column, label) in enumerate((("ablation_delta", "zero-ablation Δloss"), ("loss_at_star", "loss at w*"))):
      ax = axes[row, col]
      x, y = t[column].to_numpy(), t.chi.to_numpy()
      ok = np.isfinite(x) & np.isfinite(y)
      if ok.sum() >= 3:
        bins = ax.hexbin(x[ok], y[ok], gridsize=30, mincnt=1, cmap="viridis")
        fig.colorbar(bins, ax=ax, shrink=0.8).set_label("tokens per hexagon", fontsize=7)
        r = np.corrcoef(x[ok], y[ok])[0, 1]
        ax.set_title(f"r = {r:.2f}", fontsize=8)  # (a label inside the axes covered the most extreme point)
      ax.set_xlabel(label, fontsize=8)
      ax.set_ylabel(f"χ ({head})", fontsize=8)
      ax.tick_params(labelsize=7)
  fig.suptitle("per-token χ against ablation and loss (hexbin counts)", fontsize=9)
  fig.tight_layout()
  return save_figure(fig, path)


def plot_position_profiles(table, path, bands=None) -> Path:
  """Mean and variance of per-token χ against context position, layer-0 heads against layer-1 heads (Fig. 33/34);
  with `bands` (`token_stats.position_profiles`), each one's 95 % interval over the chains as a shaded band, and
  the variance with the chains' noise removed."""
  plt = pyplot()
  heads = [c for c in dict.fromkeys(table.component) if c != "full"]
  fig, (ax_mean, ax_var) = plt.subplots(1, 2, figsize=(9, 3.3))
  for head, colour in zip(heads, series_colours(len(heads))):
    g = table[table.component == head].groupby("position").chi
    style = dict(color=colour, lw=1.0, ls="-" if head.startswith("l0") else "--")
    ax_mean.plot(g.mean().index, g.mean().to_numpy(), label=head, **style)
    if bands is None:
      ax_var.plot(g.var().index, g.var().to_numpy(), **style)
      continue
    band = bands[bands.component == head]
    ax_var.plot(band.position, band.variance_corrected, **style)
    for ax, name in ((ax_mean, "mean"), (ax_var, "variance")):
      ax.fill_between(band.position, band[f"{name}_low"], band[f"{name}_high"], color=style["color"], alpha=0.15,
                      lw=0)
  ax_mean.set_title("mean per-token χ by position (solid: layer 0, dashed: others)"
                    + ("\nbands: 95 % over the chains" if bands is not None else ""), fontsize=8)
  ax_var.set_title("variance of per-token χ by position"
                   + ("\nchains' noise removed; bands: 95 % over the chains" if bands is not None else ""), fontsize=8)
  for ax, ylabel in ((ax_mean, "mean per-token χ"), (ax_var, "variance of per-token χ")):
    ax.set_xlabel("position in context")
    ax.set_ylabel(ylabel, fontsize=8)
  ax_mean.legend(fontsize=6, ncol=2, frameon=False)
  fig.tight_layout()
  return save_figure(fig, path)


def _axis_label(token: str, width: int = 12) -> str:
  """A token as a tick label, quoted as in the tables (a leading space or a blank token stays visible),
  with escapes for control characters."""
  shown = repr(token)
  return shown if len(shown) <= width + 2 else shown[:width + 1] + "…" + shown[-1]


def plot_totals(per_token_totals, heads, path, *, k: int = 10) -> Path:
  """Per head: the k token types contributing most to the total negative and positive χ (Fig. 10); where the
  totals hold them (`token_stats.totals` with the chains), each one's noise floor (grey: up to that much of a bar
  may be chain noise) and the interval of its true total."""
  plt = pyplot()
  fig, axes = plt.subplots(len(heads), 2, figsize=(9, 2.2 * len(heads)), squeeze=False)
  for row, head in enumerate(heads):
    t = per_token_totals[per_token_totals.component == head]
    for col, (column, colour) in enumerate((("negative", "red"), ("positive", "green"))):
      top = t.reindex(t[column].abs().sort_values(ascending=False).index).head(k)
      ax = axes[row, col]
      labels = [_axis_label(s) for s in top.token]
      ax.barh(labels, top[column], color=colour)
      if "noise_floor" in top:
        ax.barh(labels, np.sign(top[column]) * top.noise_floor, color="0.6", alpha=0.8, height=0.4,
                label="noise floor" if row == col == 0 else None)
        ax.errorbar(top[column], labels, xerr=_error_bars(top[column], top[[f"{column}_low", f"{column}_high"]]),
                    fmt="none", ecolor="black", lw=0.7, capsize=2)
        if row == col == 0:
          ax.legend(fontsize=6, frameon=False, loc="lower left")
      ax.invert_yaxis()
      ax.set_title(f"{head}: total {column} χ by token", fontsize=8)
      ax.tick_params(labelsize=7)
  fig.tight_layout()
  return save_figure(fig, path)


def _error_bars(centre, low_high_Nx2):
  """[2, N] distances from each point down to its interval's low end and up to its high end (matplotlib's
  xerr / yerr)."""
  return np.abs(np.asarray(low_high_Nx2, np.float64).T - np.asarray(centre, np.float64))


def sign_totals_html(totals, level: float = 0.95) -> str:
  """Table 1 with error bars (`token_stats.sign_totals`): per component × dataset the totals by sign, the noise
  floor and the sum, each with its interval."""
  import pandas as pd
  between = lambda low, high: [f"[{a:.3g}, {b:.3g}]" for a, b in zip(totals[low], totals[high])]
  at = f"({level * 100:g} %)"
  frame = pd.DataFrame({
      "component": totals.component, "dataset": totals.dataset, "tokens": totals.tokens,
      "total +": totals.positive, f"true total + {at}": between("positive_low", "positive_high"),
      "total −": totals.negative, f"true total − {at}": between("negative_low", "negative_high"),
      "noise floor ±": totals.noise_floor, "sum": totals["sum"], f"sum {at}": between("sum_low", "sum_high"),
      "scaled sum (δh·mean)": totals.scaled_sum, f"scaled sum {at}": between("scaled_low", "scaled_high")})
  return table_html(frame, max_rows=len(frame))


def totals_line(totals) -> str:
  """Table 1's one-line summary: the noise floor's median share of a total by sign (over cells and both signs:
  up to that much of a total may be chain noise), and how many sums' intervals exclude 0."""
  with np.errstate(divide="ignore", invalid="ignore"):  # (a total of 0: its share is infinite, the median holds)
    share = np.nanmedian(np.r_[totals.noise_floor / totals.positive, totals.noise_floor / -totals.negative])
  clear = excludes_zero(totals[["sum_low", "sum_high"]].to_numpy())
  chains = int(totals.chains.median())
  return (f"Table 1: the noise floor is a median {share * 100:.0f} % of a total by sign at {chains} chains (up to "
          f"that much of a total may be chain noise); {clear.sum()} of {len(totals)} sums clear of 0")


def plot_sign_totals(totals, heads, path) -> Path:
  """Per head and dataset: the total positive and negative χ (bars, with the interval of each true total), the
  noise floor (a grey band about 0: what chain noise alone adds to each sign) and the sum (a dot with its
  interval); Table 1 drawn, with its noise."""
  plt = pyplot()
  fig, axes = plt.subplots(len(heads), 1, figsize=(max(5.0, 0.7 * totals.dataset.nunique() + 2), 2.4 * len(heads)),
                           squeeze=False)
  for ax, head in zip(axes[:, 0], heads):
    t = totals[totals.component == head]
    x = np.arange(len(t))
    bars, sums = x - 0.12, x + 0.3  # the sum beside the bars, so that their error bars do not overlap
    ax.bar(bars, 2 * t.noise_floor, bottom=-t.noise_floor, width=0.7, color="0.85", label="noise floor", zorder=1)
    for column, colour in (("positive", "green"), ("negative", "red")):
      ax.bar(bars, t[column], width=0.45, color=colour, alpha=0.7, label=f"total {column}", zorder=2)
      ax.errorbar(bars, t[column], yerr=_error_bars(t[column], t[[f"{column}_low", f"{column}_high"]]), fmt="none",
                  ecolor="black", lw=0.7, capsize=2, zorder=3)
    ax.errorbar(sums, t["sum"], yerr=_error_bars(t["sum"], t[["sum_low", "sum_high"]]), fmt="o", color="black", ms=3,
                lw=0.9, capsize=2, label="sum", zorder=4)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks(x, [d if len(d) <= 16 else d[:15] + "…" for d in map(str, t.dataset)], fontsize=7, rotation=30,
                  ha="right")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel("summed χ", fontsize=7)
    ax.set_title(f"{head}: per-token χ summed by sign", fontsize=8)
  axes[0, 0].legend(fontsize=6, ncol=4, frameon=False)
  fig.tight_layout()
  return save_figure(fig, path)


def plot_umap(table, path, *, seed: int = 0) -> Path:
  """Per-token susceptibility vectors in 2-D (UMAP), coloured by dataset."""
  embedding, rows = umap_embedding(table, seed=seed)
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4.5))
  datasets = list(dict.fromkeys(rows.dataset))
  colours = series_colours(len(datasets))
  index_of = {d: i for i, d in enumerate(datasets)}
  # One scatter in a shuffled order: drawn dataset by dataset, the last two (70,000 points at the paper's shape)
  # covered the others.
  order = np.random.default_rng(seed).permutation(len(rows))
  ax.scatter(embedding[order, 0], embedding[order, 1], s=3, alpha=0.5, lw=0,
             color=[colours[index_of[d]] for d in rows.dataset.to_numpy()[order]])
  for dataset, colour in zip(datasets, colours):
    ax.scatter([], [], s=12, color=colour, label=dataset)
  ax.set_xlabel("UMAP 1")
  ax.set_ylabel("UMAP 2")
  ax.set_title(f"per-token susceptibility vectors over {table.component.nunique() - 1} heads (UMAP)", fontsize=8)
  ax.legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
  return save_figure(fig, path)
