"""Per-token views on hand-made inputs: the paper's colour algorithms (App. C.2), the bimodality test, top
tokens, totals and additivity."""
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from benchmarks import additivity_calibration, totals_calibration
from suscept_jax import per_token
from suscept_jax.analysis import pages, token_stats as ts, token_views as tv
from tests.helpers import record_calls


@pytest.mark.parametrize("chi,scheme,expected", [
    # App. C.2, first algorithm: rgba(0, 255, 0, (|χ|/max)²) for χ > 0, rgba(255, 0, 0, (|χ|/max)²) otherwise
    (2.0, "quadratic", (0, 255, 0, 1.0)),
    (1.0, "quadratic", (0, 255, 0, 0.25)),
    (-0.5, "quadratic", (255, 0, 0, 0.0625)),
    # second algorithm: rgba(0, 128, 0, |χ|/max), red alike, linear opacity
    (1.0, "linear", (0, 128, 0, 0.5)),
    (-1.5, "linear", (255, 0, 0, 0.75)),
    (0.0, "linear", (255, 0, 0, 0.0)),  # zero is white (fully transparent)
])
def test_colours_follow_the_papers_two_algorithms(chi, scheme, expected):
  assert tv.token_colour(chi, 2.0, scheme) == expected


def test_colour_input_checks():
  with pytest.raises(ValueError, match="colour scheme 'cubic'"):
    tv.token_colour(1.0, 1.0, "cubic")
  assert tv.token_colour(float("nan"), 1.0)[3] == 0.0 and tv.token_colour(1.0, 0.0)[3] == 0.0


def test_normalisation_is_shared_by_all_heads_shown():
  chi = np.array([[[0.5, -1.0]], [[4.0, 2.0]]])  # heads × contexts × tokens: head b holds the max
  page = tv.highlighted_text_html([["x", "y"]], chi, ["a", "b"], title="t", scheme="linear")
  assert "max |χ| = 4 shared" in page
  # head a's first token: 0.5/4 = 0.125 green; its band is the top half of the token's element
  assert "rgba(0, 128, 0, 0.125) 0.00%, rgba(0, 128, 0, 0.125) 50.00%" in page
  assert "rgba(255, 0, 0, 0.25) 0.00%" in page and "rgba(0, 128, 0, 0.5) 50.00%" in page
  assert page.count('class="tok stack"') == 2  # one element per token
  with pytest.raises(ValueError, match="context 0 has 3 tokens but χ has 2 positions"):
    tv.highlighted_text_html([["x", "y", "z"]], chi, ["a", "b"], title="t")
  with pytest.raises(ValueError, match=r"chi must be \[heads=1"):
    tv.highlighted_text_html([["x", "y"]], chi, ["a"], title="t")


def test_hovering_a_token_shows_chi_with_its_error_bar_for_every_head():
  chi = np.array([[[0.5, -1.0]], [[4.0, 2.0]]])
  err = np.array([[[0.1, 0.25]], [[1.5, 0.02]]])
  page = tv.highlighted_text_html([["x", "y"]], chi, ["a", "b"], title="t", stderr_HxOxJ=err)
  assert 'title="a: χ = +0.5 ± 0.1\nb: χ = +4 ± 1.5"' in page and 'title="a: χ = -1 ± 0.25\nb: χ = +2 ± 0.02"' in page
  assert "Hover a token" in page and "title=" not in tv.highlighted_text_html([["x", "y"]], chi, ["a", "b"], title="t")
  with pytest.raises(ValueError, match=r"stderr must have χ's shape \(2, 1, 2\)"):
    tv.highlighted_text_html([["x", "y"]], chi, ["a", "b"], title="t", stderr_HxOxJ=err[:1])


def test_text_is_escaped_and_newlines_are_marked():
  page = tv.highlighted_text_html([["<b>", "\n"]], np.array([[[1.0, -1.0]]]), ["h"], title="t")
  assert "&lt;b&gt;</span>" in page and "<b>" not in page.split("<body>")[1]
  assert "↵\n</span>" in page
  carriage = tv.highlighted_text_html([["a\r", "b\r\n"]], np.array([[[1.0, -1.0]]]), ["h"], title="t")
  assert "a␍\n</span>" in carriage and "b␍↵\n</span>" in carriage and "\r" not in carriage  # (a raw \r broke
  # the line unmarked, then was marked ↵ as \n is)
  control = tv.highlighted_text_html([["\x03G", "\x7f"]], np.array([[[1.0, -1.0]]]), ["h"], title="t")
  assert "^CG</span>" in control and "^?</span>" in control and "\x03" not in control  # (they showed as boxes)
  links = pages.link_list([("highlight_00.html", "/data/sp&c<i>al.jsonl", "(4 contexts)"), ("x.html", "l0h0", "")])
  assert links == ('<ul><li><a href="highlight_00.html">/data/sp&amp;c&lt;i&gt;al.jsonl</a> (4 contexts)</li>'
                   '<li><a href="x.html">l0h0</a></li></ul>')


def test_extreme_tokens_list_each_sign_apart():
  """With fewer tokens of a sign than k, the list holds only those (it listed negative tokens as "most
  positive" under a heading that said k)."""
  table = _table({"a": [3.0, 2.0], "b": [-1.0, -2.0, -5.0]})
  page = tv.extreme_tokens_html(table, "h", title="t", k=100)
  positive, negative = page.split("most negative")
  assert "2 most positive tokens of h (every token with χ &gt; 0)" in positive
  assert "3 most negative tokens of h (every token with χ &lt; 0)" in page
  assert positive.count('data-focus="1"') == 2 and negative.count('data-focus="1"') == 3
  # given the chains: how many intervals are clear of 0 (t with 3 d.o.f.: |χ| > 3.18 × 0.1 here), token by token
  page = tv.extreme_tokens_html(_table({"a": [3.0, 0.3], "b": [-1.0]}), "h", title="t", k=100, num_chains=4)
  assert "2 most positive tokens of h (every token with χ &gt; 0); 1 with a 95 % interval clear of 0" in page
  assert "1 with a 95 % interval clear of 0" in page.split("most negative")[1]
  assert page.count("(interval holds 0)") == 1 and "χ = +0.3 ± 0.1 (interval holds 0) at d" in page


def _table(values_by_token, component="h", dataset="d"):
  rows = []
  position = 0
  for token, values in values_by_token.items():
    for v in values:
      position += 1
      rows.append({"dataset": dataset, "context": 0, "position": position, "token": token, "component": component,
                   "chi": float(v), "chi_stderr": 0.1, "loss_at_star": 1.0, "ablation_delta": 0.0})
  return pd.DataFrame(rows)


def test_bimodality_test_finds_two_modes_and_only_then():
  rng = np.random.default_rng(0)
  two = np.r_[rng.normal(-1, 0.2, 60), rng.normal(1, 0.2, 40)]
  verdict = ts.bimodality(two)
  assert verdict["bimodal"] and verdict["delta_bic"] > 10 and verdict["separation"] > 2
  np.testing.assert_allclose(verdict["means"], [-1, 1], atol=0.1)
  np.testing.assert_allclose(verdict["weights"], [0.6, 0.4], atol=0.02)
  assert not ts.bimodality(rng.normal(0, 1, 200))["bimodal"]  # one Gaussian
  skewed_small_mode = np.r_[rng.normal(0, 0.2, 190), rng.normal(3, 0.2, 10)]  # second mode 5 % < 10 %
  assert not ts.bimodality(skewed_small_mode)["bimodal"]
  close = np.r_[rng.normal(-0.2, 0.3, 100), rng.normal(0.2, 0.3, 100)]  # overlapping: D < 2
  assert not ts.bimodality(close)["bimodal"]
  assert ts.bimodality(two[:10]) == {"n": 10, "bimodal": False}  # too few occurrences to say
  table = _table({"two": two, "one": rng.normal(0, 1, 100), "rare": [1.0, 2.0]})
  found = ts.bimodal_tokens(table, "h")
  assert list(found.token[:1]) == ["two"] and "rare" not in set(found.token)
  head, token, _ = ts.pick_histogram_token(table, ["h"])
  assert (head, token) == ("h", "two")
  page = tv.bimodal_html(table, "h", "two", "<img>")
  assert "<b>bimodal</b>" in page and page.count("Contexts nearest mode") == 2
  one = tv.bimodal_html(table, "h", "one", "<img>")  # a fitted mixture the test rejects has no modes to show
  assert "<b>not bimodal</b>" in one and "nearest mode" not in one and one.count("not a mode") == 2
  with pytest.raises(ValueError, match="token 'zz' does not occur"):
    ts.pick_histogram_token(table, ["h"], "zz")
  # A frequent token whose small second mode fails the test has the larger ΔBIC (it grows with the occurrences):
  # the view shows the token that passes (at the paper's shape it showed '\n', "not bimodal").
  frequent = np.r_[rng.normal(0, 0.2, 1900), rng.normal(3, 0.2, 100)]
  crowded = _table({"two": two, "frequent": frequent})
  assert ts.bimodal_tokens(crowded, "h").token.iloc[0] == "frequent"
  assert not ts.bimodality(frequent)["bimodal"]
  assert ts.pick_histogram_token(crowded, ["h"])[1] == "two"


def test_top_tokens_and_totals():
  table = _table({"a": [3.0, 2.0, 2.5], "b": [1.0], "c": [-4.0, -1.0], "d": [-0.5]})
  pos, neg = ts.top_tokens(table, "h", k=2, pool=4)
  assert list(pos.token) == ["a", "b"] and list(pos["count"]) == [3, 1]  # the pool holds 3, 2.5, 2, 1
  assert list(neg.token) == ["c", "d"] and neg["mean_chi"].iloc[0] == pytest.approx(-2.5)
  _, neg = ts.top_tokens(table, "h", k=5, pool=4)  # 3 negative tokens: the pool holds no positive one
  assert list(neg.token) == ["c", "d"] and neg["count"].sum() == 3
  # given the chains, how many of each token's occurrences in the pool have an interval clear of 0 (stderr 0.1,
  # t with 3 d.o.f.: |χ| > 0.318)
  pos, neg = ts.top_tokens(table, "h", k=5, pool=4, num_chains=4)
  assert list(pos["clear"]) == [3, 1] and list(neg["clear"]) == [2, 1]
  # a row only 2 chains observed (its num_chains column): t with 1 d.o.f. (12.7 · 0.1 = 1.27), not the head's 3
  fewer = table.assign(num_chains=np.where(table.token == "b", 2, 4))
  pos, _ = ts.top_tokens(fewer, "h", k=5, pool=4, num_chains=4)
  assert list(pos["clear"]) == [3, 0]
  per_head, per_token = ts.totals(table)
  assert per_head.loc["h", "positive"] == pytest.approx(8.5) and per_head.loc["h", "negative"] == pytest.approx(-5.5)
  assert per_token.set_index("token").loc["c", "negative"] == pytest.approx(-5.0)
  assert "noise_floor" not in per_token  # (no chains: no floor, no intervals)


def test_token_types_totals_with_chains_have_floors_and_intervals():
  """Fig. 10's token types from per-chain sums grouped by token id: the totals are the table's, the floor each
  occurrence's σ/√(2π) (σ: its stderr ÷ c4(4) = 0.9213), the mean's interval the chains' t-interval."""
  rng = np.random.default_rng(0)
  ids_N = np.array([7, 7, 7, 3, 3, 9])
  per_chain_KxN = rng.normal(size=(4, 6)) + np.array([2.0, 1.0, 0.1, -1.0, -2.0, 0.0])
  chi, stderr = per_chain_KxN.mean(0), per_chain_KxN.std(0, ddof=1) / 2
  table = pd.DataFrame({"component": "h", "dataset": "d", "token": [f"t{i}" for i in ids_N], "token_id": ids_N,
                        "chi": chi, "chi_stderr": stderr})
  ids_V, groups_N = np.unique(ids_N, return_inverse=True)
  positive, negative = per_token.sign_sums_per_chain(per_chain_KxN[None, :, None], np.ones((1, 4), bool),
                                                     groups_N[None])
  _, types = ts.totals(table, ts.TokenChains(ids_V, positive, negative, ["h"]))
  row = types.set_index("token").loc["t7"]
  mine = ids_N == 7
  assert row.positive == pytest.approx(chi[mine & (chi > 0)].sum()) and row["count"] == 3
  assert row.noise_floor == pytest.approx(stderr[mine].sum() / (np.sqrt(2 * np.pi) * 0.9213), rel=1e-4)
  means_K = per_chain_KxN[:, mine].mean(1)
  half = 3.182 * means_K.std(ddof=1) / 2
  assert (row.mean_low, row.mean_high) == pytest.approx((means_K.mean() - half, means_K.mean() + half), rel=1e-3)
  assert row.positive_low <= row.positive - row.noise_floor and row.positive_high > row.positive
  assert (types.negative_high <= 0).all() and (types.positive_low >= 0).all()


def test_additivity_slope_and_r_on_exact_sums():
  rows, dataset_rows = [], []
  rng = np.random.default_rng(1)
  for head in ("h1", "h2"):
    for d in ("p", "q", "r"):
      values = rng.normal(size=50)
      rows.append(_table({"x": values}, component=head, dataset=d))
      dataset_rows.append({"component": head, "probe": d, "chi": 0.1 * values.mean()})
  joined, slope, r = ts.additivity(pd.concat(rows), pd.DataFrame(dataset_rows), 0.1)
  assert len(joined) == 6 and slope == pytest.approx(1.0) and r == pytest.approx(1.0)
  # "full" is not fitted (the paper's Fig. 9 plots the heads): its cells far off the line change nothing
  for d in ("p", "q", "r"):
    rows.append(_table({"x": rng.normal(size=50)}, component="full", dataset=d))
    dataset_rows.append({"component": "full", "probe": d, "chi": 5.0})
  with_full = ts.additivity(pd.concat(rows), pd.DataFrame(dataset_rows), 0.1)
  assert "full" not in set(with_full[0].component) and with_full[1:] == pytest.approx((slope, r))
  assert ts.additivity(pd.concat(rows), pd.DataFrame(dataset_rows), 0.1, leave_out=())[1] != pytest.approx(1.0)


@pytest.mark.parametrize("slope,scatter", [(1.0, 0.0), (1.6, 0.5)])
def test_additivity_intervals_hold_a_known_slope_and_each_cells_difference(slope, scatter):
  """On a truth observed as the runner observes it (4 contexts per dataset, 4 shared chains, demo-like noise),
  the corrected slope's interval holds the true slope and each cell's difference interval its true difference;
  the plain least-squares slope's resamples, flattened by the noise, do not (the test fails without the
  correction). Neither interval is much wider than it must be: from 4 chains and 4 contexts an honest interval is
  about 1.5× the estimates' own spread (t₃/z times a 4-chain spread's mean), never under 1."""
  found = additivity_calibration.coverage(additivity_calibration.Setting("", slope, scatter), 30)
  assert found["held"] >= 0.9 and found["held plain"] < 0.8, found
  assert abs(found["slope"] - found["true slope"]) < 0.03 < found["true slope"] - found["plain slope"], found
  assert found["cells held"] >= 0.93, found
  assert 0.9 <= found["slope width"] <= 1.8 and 1.2 <= found["cells width"] <= 1.8, found
  if scatter == 0:  # every cell on the line: few called off it
    assert found["off line"] <= 0.06, found
  else:
    assert found["off line"] >= 0.25, found


def test_additivity_counts_the_chains_noise_at_each_context_once():
  """Contexts alike in truth, each chain's noise differing between them (ρ = 0): the noise of a cell's δh·mean
  per-token χ is the chains' alone, δh²σ²/(nK). The chain means of the contexts also spread by that noise, which
  the contexts' variance once counted a second time (the noise share came out twice the truth)."""
  ac = additivity_calibration
  x_true, y_true = ac.truth(1.0, 0.0)
  noise = []
  for trial in range(20):
    context, dataset, datasets_O = ac.observe(x_true, y_true, context_noise=0.0, chain_noise=0.5, trial=trial, rho=0.0)
    joined = ac.joined_table(context, dataset, datasets_O)
    found = ts.additivity_intervals(joined, context, dataset, datasets_O, list(range(ac.COMPONENTS)),
                                    list(range(ac.DATASETS)), ac.DELTA_H, num_resamples=20)
    noise.append(found.noise_share * joined.predicted.var(ddof=1))
  per_chain_sd = 2 * 0.5  # `observe`: one chain's noise is twice a 4-chain mean's
  truth = ac.DELTA_H ** 2 * per_chain_sd ** 2 / (ac.CONTEXTS * ac.CHAINS)
  assert np.mean(noise) / truth == pytest.approx(1.0, abs=0.08), np.mean(noise) / truth


def test_a_cell_off_the_line_is_called_off_and_drawn_ringed(tmp_path, monkeypatch):
  ac = additivity_calibration
  x_true, y_true = ac.truth(1.0, 0.0)
  y_true[2, 3] += 4.0  # one component × dataset whose dataset-level χ the per-token χ do not add up to
  context, dataset, datasets_O = ac.observe(x_true, y_true, context_noise=0.2, chain_noise=0.1, trial=0)
  joined = ac.joined_table(context, dataset, datasets_O)
  found = ts.additivity_intervals(joined, context, dataset, datasets_O, list(range(ac.COMPONENTS)),
                                  list(range(ac.DATASETS)), ac.DELTA_H, num_resamples=100)
  off = found.off_line_N()
  # the other 80 cells are on the line: called off at 5 % each, so a count the binomial makes rare is a defect
  assert off[(joined.component == 2) & (joined.dataset == 3)].all(), joined[off]
  assert off.sum() - 1 <= scipy.stats.binom.ppf(0.999, len(off) - 1, 0.05), joined[off]
  low, high = found.slope_interval
  assert low < found.slope_corrected < high and found.difference_interval_Nx2.shape == (len(joined), 2)
  assert found.slope_determined() and 0 < found.noise_share < 0.1, found.noise_share
  table = tv.off_line_html(joined, found)
  assert table.startswith("<p>Off the line:</p>") and table.count("<tr>") == off.sum()  # one row per cell
  first = table.split("<tbody>")[1].split("</tr>")[0]
  assert "<td>2</td>" in first and "<td>3</td>" in first  # the cell moved most comes first
  assert tv.off_line_html(joined, None) == ""
  line = tv.additivity_line(1.0, 0.9, found)
  assert line.startswith(f"additivity (eq. 45): slope {found.slope_corrected:.2f} [{low:.2f}, {high:.2f}] "
                         "(least squares 1.00), r = 0.90; ") and line.endswith(f"{off.sum()} of 81 off the line")
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  errorbars, scatters = (record_calls(monkeypatch, plt.Axes, name) for name in ("errorbar", "scatter"))
  assert tv.plot_additivity(joined, 1.0, 0.9, tmp_path / "a.png", found).stat().st_size > 5000
  monkeypatch.undo()
  assert len(errorbars) == ac.COMPONENTS  # one set of bars per component, on both axes
  assert all(k["xerr"].shape == (2, ac.DATASETS) and (k["yerr"] >= 0).all() for _, k in errorbars)
  assert scatters[-1][1]["label"] == "off the line"


def test_a_slope_whose_noise_is_most_of_the_spread_is_called_not_determined():
  ac = additivity_calibration
  x_true, y_true = ac.truth(1.0, 0.0)
  context, dataset, datasets_O = ac.observe(x_true, y_true, context_noise=4.0, chain_noise=1.0, trial=0)
  joined = ac.joined_table(context, dataset, datasets_O)
  found = ts.additivity_intervals(joined, context, dataset, datasets_O, list(range(ac.COMPONENTS)),
                                  list(range(ac.DATASETS)), ac.DELTA_H, num_resamples=50)
  assert not found.slope_determined() and found.noise_share >= ts.MAX_NOISE_SHARE
  assert tv.additivity_line(0.3, 0.2, found).startswith(
      f"additivity (eq. 45): slope not determined (noise is {found.noise_share:.0%} of the horizontal spread; "
      "least squares 0.30), r = 0.20; ")


def test_additivity_intervals_refuse_a_dataset_observed_in_one_context():
  context = np.zeros((2, 4, 3))
  with pytest.raises(ValueError, match="need >= 2 observed contexts of every dataset; have a: 2, b: 1"):
    ts.additivity_intervals(pd.DataFrame({"component": [], "dataset": []}), context, np.zeros((2, 2, 4)),
                            ["a", "a", "b"], ["c0", "c1"], ["a", "b"], 0.1)


def test_the_additivity_benchmark_prints_every_setting(capsys):
  """`python -m benchmarks.additivity_calibration` at tiny size (so it cannot rot)."""
  additivity_calibration.main(["--trials=2"])
  rows = capsys.readouterr().out.splitlines()
  labels = [s.label for s in additivity_calibration.SETTINGS]
  assert [r.split("  ")[0] for r in rows if r.startswith(("additive", "slope 1.6", "noisy"))] == labels, rows
  assert len(labels) == 6 + 2 * 12
  with pytest.raises(SystemExit):
    additivity_calibration.main(["--trials=1"])
  assert "--trials=1 must be >= 2" in capsys.readouterr().err


@pytest.mark.parametrize("zero_share,noise", [(0.3, 0.5), (1.0, 0.5)])
def test_totals_intervals_hold_the_true_totals_and_the_floor_bounds_the_inflation(zero_share, noise):
  """Table 1 on a truth observed through 4 chains at the demo's noise (and on one where no token responds): each
  interval holds the true total by sign (the chains' t-interval about the measured total, which noise inflates,
  does not: the test fails without the floor), the sum's holds the true sum, noise inflates the totals by less
  than the floor (by all of it where nothing responds), and the totals' spread over runs matches their errors."""
  found = totals_calibration.coverage(zero_share, noise, 0.0, 60)
  assert min(found["positive held"], found["negative held"]) >= 0.95, found
  assert max(found["positive held plain"], found["negative held plain"]) < 0.8, found
  assert 0.9 <= found["sum held"] <= 0.99, found
  assert 0.3 <= found["inflation / floor"] <= 1.08, found
  if zero_share == 1.0:
    assert found["inflation / floor"] >= 0.92, found
  assert 0.75 <= found["spread / stderr"] <= 1.15, found


def profiles_of(chi_KxOxJ):
  """`ts.position_profiles` of one component's per-chain per-token χ, through the result's own sums."""
  K, O, J = chi_KxOxJ.shape
  result = per_token.PerTokenResult.__new__(per_token.PerTokenResult)
  result.chi_per_chain, result.component_names = chi_KxOxJ[None], ["h"]
  result.diagnostics = {"h": type("D", (), {"diverged_chains": [k for k in range(K) if np.isnan(chi_KxOxJ[k]).all()]})}
  return ts.position_profiles(*result.position_sums_leaving_out_chains(), ["h"])


@pytest.mark.parametrize("noise", ["normal", "large", "heavy-tailed, by context"])
def test_position_bands_hold_what_endless_chains_give_on_these_contexts(noise):
  """The mean and the variance of χ by position over fixed contexts, seen through 4 chains whose noise is shared by
  every context (a chain offset per position) and each token's own: the bands hold what endless chains give (the
  contexts' mean and variance of the truth) at the stated rate; chain noise inflates the variance as measured, and
  the corrected one removes it."""
  rng = np.random.default_rng(0)
  O, J, K, runs = 30, 10, 4, 200
  truth_OxJ = rng.normal(0.0, 1.0, (O, J)) * np.linspace(0.3, 1.5, J) + np.linspace(-1, 1, J)
  token_noise = {"normal": lambda: rng.normal(0.0, 1.0, (K, O, J)), "large": lambda: rng.normal(0.0, 3.0, (K, O, J)),
                 "heavy-tailed, by context": lambda: rng.standard_t(5, (K, O, J)) * rng.uniform(0.2, 2, (1, O, 1))}
  held = {"mean": [], "variance": []}
  measured, corrected = [], []
  for _ in range(runs):
    chi_KxOxJ = truth_OxJ + rng.normal(0.0, 0.5, (K, 1, J)) + token_noise[noise]()
    bands = profiles_of(chi_KxOxJ)
    np.testing.assert_allclose(bands["mean"], chi_KxOxJ.mean(0).mean(0))
    np.testing.assert_allclose(bands["variance"], chi_KxOxJ.mean(0).var(0, ddof=1))
    for name, true_J in (("mean", truth_OxJ.mean(0)), ("variance", truth_OxJ.var(0, ddof=1))):
      held[name].append((bands[f"{name}_low"] <= true_J) & (true_J <= bands[f"{name}_high"]))
    measured.append(bands["variance"]), corrected.append(bands.variance_corrected)
  assert 0.93 <= np.mean(held["mean"]) <= 0.97, np.mean(held["mean"])
  assert 0.93 <= np.mean(held["variance"]) <= 0.985, np.mean(held["variance"])
  inflation = np.mean(measured) - truth_OxJ.var(0, ddof=1).mean()
  assert inflation > 0.1 and abs(np.mean(corrected) - truth_OxJ.var(0, ddof=1).mean()) < 0.2 * inflation


def test_position_bands_leave_a_diverged_chain_out_and_are_drawn(tmp_path):
  rng = np.random.default_rng(1)
  O, J, K = 12, 8, 4
  chi_KxOxJ = rng.normal(0.0, 1.0, (1, O, J)) + rng.normal(0.0, 0.5, (K, O, J))
  diverged = chi_KxOxJ.copy()
  diverged[2] = np.nan
  left, three = profiles_of(diverged), profiles_of(chi_KxOxJ[[0, 1, 3]])
  assert (left.chains == 3).all()
  pd.testing.assert_frame_equal(left, three)
  table = pd.DataFrame({"component": "l0h0", "position": np.tile(np.arange(1, J + 1), O),
                        "chi": chi_KxOxJ.mean(0).ravel()})
  figure = tv.plot_position_profiles(table, tmp_path / "positions.png", profiles_of(chi_KxOxJ).assign(component="l0h0"))
  assert figure.stat().st_size > 5000


def test_sign_totals_match_the_table_and_are_drawn(tmp_path, monkeypatch):
  tc = totals_calibration
  per_chain = tc.observe(tc.truth(0.3), noise=0.5, shared=0.0, trial=0)
  table, datasets_O = tc.table_of(per_chain)
  positive, negative = per_token.sign_sums_per_chain(per_chain, np.ones((tc.COMPONENTS, tc.CHAINS), bool))
  totals = ts.sign_totals(table, positive, negative, datasets_O, list(range(tc.COMPONENTS)),
                          list(range(tc.DATASETS)), tc.DELTA_H)
  by_cell = table.groupby(["component", "dataset"]).chi
  np.testing.assert_allclose(totals.positive, by_cell.apply(lambda v: v[v > 0].sum()), rtol=1e-12)
  np.testing.assert_allclose(totals["sum"], by_cell.sum(), rtol=1e-12)
  np.testing.assert_allclose(totals.scaled_sum, tc.DELTA_H * by_cell.mean(), rtol=1e-12)
  assert (totals.tokens == tc.CONTEXTS * tc.TOKENS).all() and (totals.chains == tc.CHAINS).all()
  assert (totals.positive_low >= 0).all() and (totals.negative_high <= 0).all()
  assert (totals.positive_low < totals.positive - totals.noise_floor + 1e-12).all()
  floor_share = np.median(np.r_[totals.noise_floor / totals.positive, totals.noise_floor / -totals.negative])
  clear = ((totals.sum_low > 0) | (totals.sum_high < 0)).sum()
  assert tv.totals_line(totals) == (f"Table 1: the noise floor is a median {floor_share * 100:.0f} % of a total by "
                                    f"sign at 4 chains (up to that much of a total may be chain noise); {clear} of 9 "
                                    "sums clear of 0")
  page = tv.sign_totals_html(totals)
  assert page.count("<tr") == len(totals) + 1 and "true total + (95 %)" in page and "noise floor ±" in page
  bars = record_calls(monkeypatch, tv.pyplot().Axes, "bar")
  assert tv.plot_sign_totals(totals, [0, 2], tmp_path / "sign.png").stat().st_size > 5000
  assert len(bars) == 2 * 3  # per head: the floor's band and a bar per sign


def test_the_totals_benchmark_prints_every_setting(capsys):
  """`python -m benchmarks.totals_calibration` at tiny size (so it cannot rot)."""
  totals_calibration.main(["--trials=2"])
  rows = capsys.readouterr().out.splitlines()
  assert sum(r.startswith(tuple(s[0] for s in totals_calibration.SETTINGS)) for r in rows) == 9
  with pytest.raises(SystemExit):
    totals_calibration.main(["--trials=1"])
  assert "--trials=1 must be >= 2" in capsys.readouterr().err


def test_umap_of_susceptibility_vectors_separates_two_kinds_of_tokens(tmp_path):
  pytest.importorskip("umap", reason="the UMAP view needs umap-learn (in the test extra)")
  rng = np.random.default_rng(0)
  frames = []
  for dataset, centre in (("a", np.array([2.0, 0.0, -1.0])), ("b", np.array([-2.0, 1.0, 1.0]))):
    for context in range(4):
      for position in range(1, 26):
        chi = centre + 0.3 * rng.normal(size=3)
        for head, value in zip(("l0h0", "l0h1", "l1h0"), chi):
          frames.append({"dataset": dataset, "context": context, "position": position, "token": f"t{position}",
                         "component": head, "chi": value})
  table = pd.DataFrame(frames)
  embedding, rows = ts.umap_embedding(table)
  assert embedding.shape == (200, 2)
  labels = rows.dataset.to_numpy()
  distances = ((embedding[:, None] - embedding[None]) ** 2).sum(-1)
  np.fill_diagonal(distances, np.inf)
  assert (labels[distances.argmin(1)] == labels).mean() > 0.95  # each token's nearest neighbour: same kind
  assert tv.plot_umap(table, tmp_path / "u.png").stat().st_size > 5000


def test_a_long_table_scrolls_and_a_cut_one_says_so():
  """The top-tokens table at the paper's shape (224 rows) was cut at 200 without a word."""
  from suscept_jax.analysis import pages
  short, long = pd.DataFrame({"a": range(5)}), pd.DataFrame({"a": range(224)})
  assert "overflow" not in pages.table_html(short) and "rows.</p>" not in pages.table_html(short)
  cut = pages.table_html(long)
  assert "overflow: auto" in cut and cut.count("<td>") == 200 and "The first 200 of 224 rows." in cut
  assert pages.table_html(long, max_rows=len(long)).count("<td>") == 224
