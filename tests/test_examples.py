"""examples/ run: the kernels on a plain-jax.numpy, a Flax Linen and a Flax NNX model, with regex and
hand-made masks (at tiny sizes here; the scripts' defaults give meaningful numbers)."""
import warnings

import numpy as np
import pytest

import suscept_jax as sj
from examples import flax_linen_model, flax_nnx_model, plain_jax_model

TINY = dict(train_steps=30, num_chains=2, num_draws=10, batch_size=32, num_contexts=3)


@pytest.mark.parametrize("example, free", [
    (plain_jax_model, {"attention": 4 * 2 * 16 * 8, "head 0": 4 * 16 * 8}),
    (flax_linen_model, {"output layer": 32 * 16 + 16, "embeddings 0-3": 4 * 32}),
    (flax_nnx_model, {"hidden layer": 32 * 32 + 32, "units 0-7 out": 8 * 16}),
])
def test_example_runs_and_its_numbers_hold(example, free):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", sj.SusceptibilityWarning)  # short toy runs fail ESS tests, as they should
    out = example.main(**TINY)
  assert out["component_names"] == ["full", *free]
  for name, count in free.items():
    assert sj.count_free(out["components"][name], out["params"]) == count
  assert out["probe_names"] == ["chain_b", "base_again"]
  chi = out["chi"]
  assert chi.shape == (2, 3) and np.isfinite(chi).all() and np.isfinite(out["chi_stderr"]).all()
  assert np.all(chi[1] == 0.0)  # the base data as a probe: χ is exactly zero
  assert np.any(chi[0] != 0.0)
  assert out["per_token_chi"].shape == (3, TINY["num_contexts"], 11) and np.isfinite(out["per_token_chi"]).all()
  assert out["llc"] > 0 and out["llc_stderr"] >= 0
