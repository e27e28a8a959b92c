"""The per-token HTML views in a real headless browser: they load offline without console errors, render
something visible, and hold one element per token whose computed colour is the expected one for known χ."""
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from suscept_jax.analysis import pages, token_views as tv
from tests import browser

pytestmark = browser.requires_browser

PROBE = """<script>
for (const e of document.querySelectorAll('.tok')) {
  const s = getComputedStyle(e);
  e.setAttribute('data-bg', s.backgroundColor);
  e.setAttribute('data-bgimg', s.backgroundImage);
}
</script></body>"""


class _Tokens(HTMLParser):
  def __init__(self):
    super().__init__()
    self.tokens = []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if "tok" in (attrs.get("class") or "").split():
      self.tokens.append(attrs)


def _rgba(css: str):
  """'rgb(0, 255, 0)' / 'rgba(255, 0, 0, 0.25)' -> (r, g, b, a)."""
  numbers = [float(v) for v in re.findall(r"[\d.]+", css)]
  return tuple(numbers) if len(numbers) == 4 else (*numbers, 1.0)


def _colours_in(css: str):
  return [_rgba(m) for m in re.findall(r"rgba?\([^)]*\)", css)]


def _close(got, want, tol=0.01):
  if want[3] == 0:
    return got[3] == 0  # transparent: the colour channels do not matter
  return got[:3] == tuple(float(v) for v in want[:3]) and abs(got[3] - want[3]) <= tol


def test_one_element_per_token_with_the_expected_computed_colour(tmp_path):
  chi_1xOxJ = np.array([[[2.0, 1.0, -0.5, 0.0, -2.0], [0.3, -1.2, 1.7, -0.1, 0.9]]])
  tokens = [["def", " f", "(x", ")", ":\n"], ["<a>", " &", " b", "\t", " c"]]
  for scheme in tv.COLOUR_SCHEMES:
    page = tmp_path / f"one_{scheme}.html"
    page.write_text(tv.highlighted_text_html(tokens, chi_1xOxJ, ["l0h0"], title="t", scheme=scheme)
                    .replace("</body>", PROBE))
    dom, errors = browser.dump_dom(page)
    assert not errors, errors
    parser = _Tokens()
    parser.feed(dom)
    assert len(parser.tokens) == chi_1xOxJ.size  # one element per token, in order
    for attrs, chi in zip(parser.tokens, chi_1xOxJ.reshape(-1)):
      assert float(attrs["data-chi0"]) == pytest.approx(chi, rel=1e-5)
      want = tv.token_colour(chi, 2.0, scheme)
      assert _close(_rgba(attrs["data-bg"]), want), (chi, scheme, attrs["data-bg"], want)


def test_stacked_bands_carry_each_heads_colour(tmp_path):
  chi_HxOxJ = np.array([[[1.0, -4.0]], [[-2.0, 0.5]], [[4.0, 0.0]]])  # 3 heads, max |χ| = 4 shared
  page = tmp_path / "stack.html"
  page.write_text(tv.highlighted_text_html([["x", "y"]], chi_HxOxJ, ["a", "b", "c"], title="t")
                  .replace("</body>", PROBE))
  dom, errors = browser.dump_dom(page)
  assert not errors, errors
  parser = _Tokens()
  parser.feed(dom)
  assert len(parser.tokens) == 2
  for j, attrs in enumerate(parser.tokens):
    bands = _colours_in(attrs["data-bgimg"])[::2]  # each band: its colour at its start and at its end
    assert len(bands) == 3, attrs["data-bgimg"]
    for h in range(3):
      assert _close(bands[h], tv.token_colour(chi_HxOxJ[h, 0, j], 4.0, "linear")), (h, j, bands[h])


def test_console_errors_are_caught(tmp_path):
  """The check itself can fail: a page with a script error, or a network fetch, is reported."""
  page = tmp_path / "broken.html"
  page.write_text("<html><body><p>x</p><script>noSuchFunction()</script>"
                  '<img src="https://example.invalid/a.png"></body></html>')
  _, errors = browser.dump_dom(page)
  assert any("noSuchFunction" in e for e in errors), errors


def test_a_page_with_figures_renders_visibly(tmp_path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(3, 2))
  ax.plot([0, 1], [0, 1])
  fig.savefig(tmp_path / "f.png")
  plt.close(fig)
  rng = np.random.default_rng(0)
  chi = rng.normal(size=(1, 3, 40))
  text = tv.highlighted_text_html([[f" w{j}" for j in range(40)]] * 3, chi, ["h"], title="t", scheme="linear")
  page = tmp_path / "index.html"
  page.write_text(pages.index_html("views", [("text", text.split("<body>")[1].split("</body>")[0]),
                                          ("figure", pages.embedded_png(tmp_path / "f.png", "f"))]))
  png = tmp_path / "shot.png"
  assert not browser.screenshot(page, png)
  seen = browser.pixel_summary(png)
  assert seen["ink"] > 0.02 and seen["green"] > 0.002 and seen["red"] > 0.002, seen
  blank = tmp_path / "blank.html"
  blank.write_text("<html><body></body></html>")
  browser.screenshot(blank, tmp_path / "blank.png")
  assert browser.pixel_summary(tmp_path / "blank.png")["ink"] < 0.001  # the measure tells blank from not


def test_the_reports_results_table_filters_by_the_words_typed_and_by_flags(tmp_path):
  """The report's results table (7,140 rows at the paper's shape) shows only the rows holding every word typed,
  and with the box ticked only flagged ones; the count says how many. Typed and ticked here by a script, as a
  person would: the input and change events the page listens to."""
  import pandas as pd
  from suscept_jax.analysis import report
  table = pd.DataFrame([{"checkpoint": s, "probe": p, "component": c, "chi": 0.1, "chi_ci95": 0.05,
                         "status": "ESS 30 < 50" if (c == "l1h2" and s == 100) else "ok"}
                        for s in (0, 100) for p in ("code", "repeats:code", "legal") for c in ("full", "l1h2")])
  typed = """<script>
  const box = document.getElementById('results-filter');
  box.value = 'L1H2 code'; box.dispatchEvent(new Event('input'));
  document.body.setAttribute('data-words', document.getElementById('results-count').textContent);
  const tick = document.getElementById('results-flagged');
  tick.checked = true; tick.dispatchEvent(new Event('change'));
  document.body.setAttribute('data-flagged', document.getElementById('results-count').textContent);
  for (const r of document.querySelectorAll('#results tbody tr')) {
    r.setAttribute('data-shown', r.style.display !== 'none');
  }
  </script></body>"""
  page = pages.index_html("report", [("Results table", report._table_html(table))])
  page = page.replace("</body>", report._SORT_SCRIPT + report._FILTER_SCRIPT + typed)
  path = tmp_path / "report.html"
  path.write_text(page)
  dom, errors = browser.dump_dom(path)
  assert not errors, errors
  assert 'data-words="showing 4 of 12 rows"' in dom  # l1h2 of code and repeats:code, at both checkpoints
  assert 'data-flagged="showing 2 of 12 rows"' in dom  # of those, the flagged ones: checkpoint 100
  shown = re.findall(r'<tr class="(\w*)" data-shown="true">(.*?)</tr>', dom)
  assert len(shown) == 2 and all(cls == "flagged" and "l1h2" in row and ">100<" in row for cls, row in shown), shown
