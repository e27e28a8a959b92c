"""The sweep's figures at the paper's shape (30 checkpoints, 14 probes, 16 heads): the choices that keep them
legible, each against what went wrong before."""
import matplotlib.colors
import numpy as np
import pandas as pd

from suscept_jax.analysis import plots, structure_plots


def test_series_get_colours_told_apart_up_to_the_papers_counts_and_beyond():
  for n in (4, 14, 16, 30):  # (tab10 cycled gave code and repeats:legal, l0h0 and l1h2 one colour)
    colours = {matplotlib.colors.to_hex(c) for c in plots.series_colours(n)}
    assert len(colours) == n, n


def test_the_heatmap_draws_a_few_evenly_spaced_checkpoints_the_first_and_last_among_them():
  steps = [0, 10, 20, 30, 40, 50, 60, 80, 100, 125, 150, 175, 200, 250, 300, 350, 400, 450, 500, 600, 700, 800, 900,
           1000, 1100, 1200, 1300, 1400, 1500, 1600]
  shown = plots.heatmap_checkpoints(steps)
  assert len(shown) == plots.MAX_HEATMAP_CHECKPOINTS and shown[0] == 0 and shown[-1] == 1600
  assert shown == sorted(set(shown)) and set(shown) <= set(steps)
  assert plots.heatmap_checkpoints([3000, 0, 1000]) == [0, 1000, 3000]  # few: all of them


def test_full_gets_its_own_axis_only_where_the_heads_would_lie_flat_beside_it():
  heads = np.array([-2e-5, 3e-5, 1e-5])
  assert plots.full_apart([1e-3, 5e-4], heads)  # 33× the heads' reach
  assert not plots.full_apart([5e-5, -4e-5], heads)  # comparable: one axis
  assert not plots.full_apart([np.nan], heads) and not plots.full_apart([1.0], [np.nan, 0.0])


def _paper_shaped_table(rng):
  steps, probes = [0, 10, 100, 1000, 1600], [f"d{i}" for i in range(14)]
  comps = ["full"] + [f"l{l}h{h}" for l in range(2) for h in range(8)]
  rows = [{"checkpoint": s, "probe": p, "component": c, "chi": rng.normal() * (30.0 if c == "full" else 1.0) * 1e-5,
           "chi_ci95": 1e-5, "llc": rng.normal(), "llc_ci95": 0.1, "status": "ok" if rng.random() < 0.5 else "R̂ 1.2",
           "realised_delta_h": 0.1}
          for s in steps for p in probes for c in comps]
  return pd.DataFrame(rows)


def test_the_sweep_figures_draw_at_the_papers_shape(tmp_path):
  """Every sweep figure and the structure ones draw a table of the paper's width (14 probes × 17 components)
  without error, the heatmap at most a page wide (one panel per row at 17 components)."""
  table = _paper_shaped_table(np.random.default_rng(0))
  for path in plots.sweep_figures(table, tmp_path):
    assert path.stat().st_size > 10_000, path
  import matplotlib.image
  assert matplotlib.image.imread(tmp_path / "chi_heatmap.png").shape[1] < 2000
  datasets = np.repeat(np.array([f"d{i}" for i in range(14)]), 5)
  steps = np.tile(np.array([0, 10, 100, 1000, 1600]), 14)
  scores = np.random.default_rng(1).normal(size=(70, 3))
  assert structure_plots.plot_trajectories(scores, datasets, steps, tmp_path / "t.png").stat().st_size > 10_000
  assert structure_plots.plot_pc_time_series(scores, datasets, steps, 3, tmp_path / "p.png").stat().st_size > 10_000


def test_a_sweep_of_full_alone_draws_without_warnings(tmp_path):
  import warnings
  table = pd.DataFrame([{"checkpoint": s, "probe": "p", "component": "full", "chi": 0.1 * s, "chi_ci95": 0.5,
                         "llc": 1.0, "llc_ci95": 0.1, "status": "ok"} for s in (0, 10, 100)])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert all(p.stat().st_size > 5_000 for p in plots.sweep_figures(table, tmp_path))
