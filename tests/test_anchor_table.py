"""L_B(w*) of every evaluation batch from one pass over the samples they hold (`anchor_table`)."""

import numpy as np
import pytest

import suscept_jax as sj
from suscept_jax import anchor_table, batched, sampler, toys
from suscept_jax.streams import Streams

H = np.array([1.0, 3.0])


def _streams(data, *, batch_size=8, num_chains=3, probes=None):
  return Streams(data, probes or {}, batch_size=batch_size, delta_h=0.1 if probes else None, seed=5, checkpoint_id=2,
                 num_chains=num_chains, base_name="base data")


def test_each_evaluation_batch_gets_the_mean_loss_of_its_own_samples_at_w_star():
  data = toys.quadratic_dataset(np.random.default_rng(0), 50, H, 0.5)
  params = {"w": np.array([0.3, -0.2], np.float32)}
  config = sj.SGLDConfig(num_chains=3, num_draws=30, num_burnin=4, steps_between_draws=2)
  streams = _streams(data, probes={"p": data})
  steps_B = sampler.evaluation_steps(config, np.arange(config.num_draws + 1))
  table = anchor_table.build(toys.quadratic_loss, params, streams, steps_B, rows=16, micro=None)
  indices_BxKxn = streams.base_indices(steps_B)
  assert np.array_equal(table.samples_U, np.unique(indices_BxKxn))  # each sample once (the last rows padded)
  direct_BxK = np.array([[np.asarray(toys.quadratic_loss(params, {k: v[idx] for k, v in data.items()})).mean()
                          for idx in per_stream] for per_stream in indices_BxKxn])
  np.testing.assert_allclose(table.batch_means(indices_BxKxn), direct_BxK, rtol=2e-6)
  # The batches are those of the chains: the evaluation step of block b is the first step of its block.
  assert steps_B[0] == config.num_burnin and np.all(np.diff(steps_B) == config.steps_between_draws)


def test_a_non_finite_sample_is_named_with_the_first_batch_that_holds_it():
  data = toys.quadratic_dataset(np.random.default_rng(1), 40, H, 0.5)
  streams = _streams(data, num_chains=2)
  steps_B = np.arange(12)
  indices_BxKxn = streams.base_indices(steps_B)
  bad = int(indices_BxKxn[7, 1, 3])
  first = next((b, k) for b in range(12) for k in range(2) if bad in indices_BxKxn[b, k])
  w_star = toys.quadratic_minimum(data)
  data["a"][bad] = np.inf
  with pytest.raises(batched.DataFaultError, match=rf"sample\(s\) \[{bad}\] \(in the evaluation batch of draw "
                                                   rf"{first[0]} of chain {first[1]}\)"):
    anchor_table.build(toys.quadratic_loss, w_star, streams, steps_B, rows=8, micro=None)


def test_the_preflight_and_the_table_share_one_compiled_program():
  data = toys.quadratic_dataset(np.random.default_rng(2), 40, H, 0.5)
  loss_fn = lambda p, b: 1.2345 * toys.quadratic_loss(p, b)  # noqa: E731  (computes something new: not compiled yet)
  before = batched.compiled_losses.jitted()._cache_size()
  sj.estimate_llc(loss_fn, toys.quadratic_minimum(data), data, config=sj.SGLDConfig(num_chains=4, num_draws=10),
                  batch_size=10, progress=False)
  assert batched.compiled_losses.jitted()._cache_size() == before + 1


def test_each_draw_is_anchored_on_the_batch_it_evaluates_with_mala_measured():
  """φ_t = L_B(w_t) − L_B(w*) needs L_B(w*) of the batch draw t evaluates: its own step's, MALA measured or not
  (its extra gradient reads the measured move's batch again, at the moved-to point, and changes nothing else)."""
  from suscept_jax import masks, mixing, streams
  data = toys.quadratic_dataset(np.random.default_rng(4), 64, H, 0.5)
  w_star = toys.quadratic_minimum(data)
  config = sj.SGLDConfig(step_size=1e-3, localization=10.0, nbeta=10.0, num_chains=2, num_draws=12, mala_every=3)
  out = sampler.run(toys.quadratic_loss, w_star, *masks.stack_masks({"llc": None}, w_star), data, {}, config=config,
                    batch_size=8, delta_h=None, progress=False)
  steps_T = sampler.evaluation_steps(config, np.arange(1, config.num_draws + 1))  # draw t: block t + 1
  for t, step in enumerate(steps_T):
    for k in range(config.num_chains):
      idx = mixing.BatchSchedule(64, 8, streams.stream_seed(0, 0, k)).indices(step)
      expected = np.asarray(toys.quadratic_loss(w_star, {name: v[idx] for name, v in data.items()})).mean()
      np.testing.assert_allclose(out.loss_star_trace[t, k], expected, rtol=1e-5)
  measured_T = np.isfinite(out.mala).all(axis=1)  # the moves measured at draws 0, 3, 6, 9
  assert np.flatnonzero(measured_T).tolist() == [0, 3, 6, 9] and np.isfinite(out.mala).sum() == 4 * config.num_chains
