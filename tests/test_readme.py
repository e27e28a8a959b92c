"""The README's kernel API is runnable: every python block of its "Kernel API" and "Per-token" sections runs,
top to bottom, in one namespace, and what it shows holds (χ of the base data as a probe is exactly 0, ...)."""
import re
import warnings

import numpy as np

from tests.helpers import REPO

SECTIONS = ("## Kernel API", "## Per-token susceptibilities")


def _blocks():
  text = (REPO / "README.md").read_text()
  sections = re.split(r"(?m)^(?=## )", text)
  chosen = [sec for sec in sections if sec.startswith(SECTIONS)]
  assert len(chosen) == len(SECTIONS)
  return [code for sec in chosen for code in re.findall(r"```python\n(.*?)```", sec, flags=re.S)]


def test_every_api_snippet_runs_as_written():
  blocks = _blocks()
  assert len(blocks) >= 6
  namespace = {}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # health warnings of short toy runs are expected
    for i, code in enumerate(blocks):
      try:
        exec(compile(code, f"README.md python block {i}", "exec"), namespace)
      except Exception as e:
        raise AssertionError(f"README python block {i} failed: {e!r}\n{code}") from e
  res, pt, bif, llc = (namespace[k] for k in ("res", "pt", "bif", "llc"))
  assert res.chi.shape == (2, 3) and np.all(res.chi[1] == 0)  # probe "base" is the base data
  assert np.isfinite(res.chi).all() and (res.llc > 0).all() and llc.mean > 0
  assert pt.chi.shape[:2] == (3, 8) and np.isfinite(pt.chi).all()
  table1 = namespace["table1"]  # Table 1's totals are the per-token χ's, and each interval holds its total's value
  np.testing.assert_allclose(table1["positive"], np.clip(pt.chi, 0, None).sum((1, 2)), rtol=1e-9)
  np.testing.assert_allclose(table1["sum"], pt.chi.sum((1, 2)), rtol=1e-9, atol=1e-12)
  assert (table1["positive_low"] <= np.maximum(table1["positive"] - table1["noise_floor"], 0)).all()
  assert bif.covariance.shape[0] == 1
  assert namespace["sj"].realised_fraction(64, 0.1, num_draws=200) == 0.1
