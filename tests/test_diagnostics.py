"""Convergence diagnostics against chains with known properties, and against ArviZ (which we did not write)."""
import warnings

import numpy as np
import pytest

from suscept_jax import diagnostics


def ar1_chains(rho: float, num_chains: int, num_draws: int, seed: int = 0) -> np.ndarray:
  """Stationary Gaussian AR(1) chains x_t = ρ·x_{t−1} + √(1 − ρ²)·ξ_t: integrated autocorrelation
  time (1 + ρ)/(1 − ρ), so ESS = chains·draws·(1 − ρ)/(1 + ρ)."""
  rng = np.random.default_rng(seed)
  x = np.empty((num_chains, num_draws))
  x[:, 0] = rng.normal(size=num_chains)
  noise = np.sqrt(1 - rho**2) * rng.normal(size=(num_chains, num_draws))
  for t in range(1, num_draws):
    x[:, t] = rho * x[:, t - 1] + noise[:, t]
  return x


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.8])
def test_bulk_ess_of_ar1_chains_matches_the_autocorrelation_time(rho):
  x = ar1_chains(rho, 4, 4000)
  exact = x.size * (1 - rho) / (1 + rho)
  assert abs(diagnostics.ess_bulk(x) / exact - 1) < 0.2, (diagnostics.ess_bulk(x), exact)
  # The tails of a Gaussian AR(1) decorrelate faster than its bulk; tail ESS is never above the draws.
  assert 0.8 * exact < diagnostics.ess_tail(x) <= 1.05 * x.size
  assert diagnostics.rhat(x) < 1.01


def test_rhat_flags_chains_with_different_means_and_different_scales():
  shifted = ar1_chains(0.5, 4, 1000, seed=1)
  shifted[0] += 2.0  # one chain two standard deviations off
  assert diagnostics.rhat(shifted) > 1.1
  scaled = ar1_chains(0.5, 4, 1000, seed=2)
  scaled[0] *= 5.0  # same mean, 5× the spread: only the folded (tail) R̂ sees it
  assert diagnostics.rhat(scaled) > 1.1
  trending = ar1_chains(0.5, 4, 1000, seed=3) + np.linspace(0, 4, 1000)  # not stationary: the split halves differ
  assert diagnostics.rhat(trending) > 1.1


def test_degenerate_traces_give_nan_not_numbers():
  assert np.isnan(diagnostics.rhat(np.zeros((4, 100))))
  assert np.isnan(diagnostics.ess_bulk(np.ones((4, 100))))
  assert np.isnan(diagnostics.rhat(np.zeros((4, 2))))
  nan_chain = ar1_chains(0.5, 4, 200)
  nan_chain[1, 5] = np.nan  # a chain with a missing value is left out, not averaged in
  assert diagnostics.rhat(nan_chain) == diagnostics.rhat(np.delete(nan_chain, 1, axis=0))
  with pytest.raises(ValueError, match=r"\[chains, draws\]"):
    diagnostics.rhat(np.zeros(10))


@pytest.mark.parametrize("rho,num_draws", [(0.0, 1000), (0.6, 1001), (0.9, 500)])
def test_agrees_with_arviz(rho, num_draws):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    arviz = pytest.importorskip("arviz", reason="pip install arviz (the test extra) to cross-check with ArviZ")
  x = ar1_chains(rho, 4, num_draws, seed=4)
  x[2] += 0.3
  np.testing.assert_allclose(diagnostics.rhat(x), arviz.rhat(x, method="rank"), rtol=1e-10)
  np.testing.assert_allclose(diagnostics.ess_bulk(x), arviz.ess(x, method="bulk"), rtol=1e-10)
  # the 5 % and 95 % quantiles named: ArviZ 1.x has no default for them (0.x: these)
  np.testing.assert_allclose(diagnostics.ess_tail(x), arviz.ess(x, method="tail", prob=(0.05, 0.95)), rtol=1e-10)
