"""Error bars are a claim: over many seeds, the spread of χ and the LLC matches the stderr each run reports.

Genuine mini-batching (batch 16 of N = 4096 noisy samples): the batch noise is a large part of the error, so
error bars that only see the spread of chains sharing one data stream are too small (the old design,
re-created here to show that this test can fail).
"""
import numpy as np
import pytest

from benchmarks import error_bar_calibration

SEEDS = range(80)  # ≥ 40 (the floor); 80 keeps the ratio's own sampling error near ±0.08


@pytest.mark.parametrize("num_chains", [4, 16])
def test_error_bars_are_calibrated_under_mini_batching(num_chains):
  table = error_bar_calibration.measure(num_chains, SEEDS, num_draws=100, num_burnin=50)
  expected = error_bar_calibration.predictions(num_draws=100)
  assert set(table) == set(expected) == {("chi", "full"), ("chi", "restricted"), ("llc", "full"), ("llc", "restricted")}
  for key, (std, rms, mean) in table.items():
    assert 0.75 <= std / rms <= 1.33, (num_chains, key, std / rms, table[key])
    # …and what they bracket is right: the mean over seeds matches the mini-batch closed form (to its
    # first-order accuracy, ≈ 2 %) and is resolved away from 0.
    seed_mean_se = std / np.sqrt(len(SEEDS))
    assert abs(mean - expected[key]) < 4 * seed_mean_se + 0.03 * abs(expected[key]), (key, mean, expected[key])
    assert abs(expected[key]) > 3 * seed_mean_se


def test_a_shared_data_stream_fails_the_same_check():
  """The design this replaced (one batch stream for every chain) under-reports χ's error at K = 16."""
  table = error_bar_calibration.measure(16, SEEDS, num_draws=100, num_burnin=50, shared_streams=True)
  chi_ratios = [std / rms for (quantity, _), (std, rms, _) in table.items() if quantity == "chi"]
  assert max(chi_ratios) > 1.33, chi_ratios
