"""The sweep's plain-text summary: every checkpoint, full probe names, flagged cells marked and explained."""
import textwrap

import numpy as np


def summary_text(table, *, width: int = 19) -> str:
  """χ ± 95 % interval per probe × component for every checkpoint, then the LLCs, then the flags.

  Probes are labelled P1, P2, … in the grids, with a legend of their full names, one per line and never
  wrapped (specs can be long paths, to be copied whole).
  A cell whose status is not "ok" carries a '*' and is explained at the end.
  """
  if not len(table):
    return "no finished results yet"
  probes = list(dict.fromkeys(table.probe))
  comps = list(dict.fromkeys(table.component))
  labels = {p: f"P{i + 1}" for i, p in enumerate(probes)}
  chains = int(table.num_chains_used.max())
  lines = [textwrap.fill(f"Susceptibilities χ ± 95% interval (Student-t, chains − 1 = {chains - 1} degrees of "
                         f"freedom); rows: probes, columns: components; * = flagged (see the end).", 120,
                         subsequent_indent="  "), "Probes:"]
  lines += [f"  {labels[p]} = {p}" for p in probes]
  header = " " * 8 + "".join(f"{c[:width - 1]:>{width}}" for c in comps)
  flagged = []
  for step in sorted(set(table.checkpoint)):
    t = table[table.checkpoint == step]
    lines += ["", f"checkpoint {step}  (realised δh {t.realised_delta_h.iloc[0]:.4f})", header]
    for probe in probes:
      cells = []
      for comp in comps:
        row = t[(t.probe == probe) & (t.component == comp)]
        if not len(row):
          cells.append("—".rjust(width))
          continue
        row = row.iloc[0]
        mark = "*" if row.status != "ok" else " "
        if row.status != "ok":
          flagged.append((step, comp, row.status, labels[probe]))
        cells.append(f"{row.chi:+.2e}±{row.chi_ci95:.1e}{mark}".rjust(width))
      lines.append(f"{labels[probe]:8s}" + "".join(cells))
    llc = t.drop_duplicates("component").set_index("component")
    lines.append(f"{'LLC':8s}" + "".join(
        (f"{llc.llc[c]:.3g}±{llc.llc_ci95[c]:.2g}" if c in llc.index and np.isfinite(llc.llc[c])
         else "—").rjust(width)
        for c in comps))
  lines += ["", f"Flagged cells: {len(flagged)} of {len(table)}" + (":" if flagged else ".")]
  groups = {}
  for step, comp, status, label in flagged:  # one line per checkpoint × component × reason
    groups.setdefault((step, comp, status), []).append(label)
  for (step, comp, status), cells in groups.items():
    where = f"all {len(cells)} probes" if len(cells) == len(probes) else ", ".join(cells)
    lines.append(textwrap.fill(f"checkpoint {step}, {comp} ({where}): {status}", 120, subsequent_indent="    "))
  return "\n".join(lines)
