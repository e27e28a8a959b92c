"""Per-token susceptibilities against the closed-form Gaussian posterior, and invariances of the estimator."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import suscept_jax as sj
from suscept_jax import parallel, toys

D, N = 6, 64
H_BASE = np.linspace(0.5, 2.0, D)
FIRST3 = np.arange(D) < 3


def token_losses(params, batch):
  """Each sample is a 'context' of one token: per-token losses [B, 1]."""
  return toys.quadratic_loss(params, batch)[:, None]


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  base = toys.quadratic_dataset(rng, N, H_BASE, 0.05)
  curvatures = rng.uniform(0.2, 3.0, (8, D))  # every observed sample its own curvature: its own χ_i
  contexts = toys.quadratic_dataset(rng, 8, curvatures, 0.05)
  comps = {"full": None, "first3": {"w": FIRST3}}
  return base, contexts, toys.quadratic_minimum(base), comps, curvatures


def test_per_token_chi_matches_the_closed_form(problem):
  base, contexts, w_star, comps, curvatures = problem
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=16, num_draws=4000,
                         num_burnin=200, mala_every=0)
  res = sj.estimate_per_token_susceptibilities(toys.quadratic_loss, token_losses, w_star, comps, base, contexts,
                                               config=config, batch_size=N, progress=False)
  assert res.chi.shape == (2, 8, 1) and res.loss_at_star.shape == (8, 1)
  free = {"full": np.ones(D, bool), "first3": FIRST3}
  for c, name in enumerate(res.component_names):
    for i in range(8):
      # χ_i = −Cov(φ, ℓ_i − L): the closed form of eq. 41 with the sample's curvature as the "probe", f = 1.
      exact = toys.quadratic_chi(H_BASE, curvatures[i], free[name], 1.0, config)
      got, err = res.chi[c, i, 0], res.chi_stderr[c, i, 0]
      assert abs(got - exact) < 4 * err + 1e-6, (name, i, got, err, exact)
    resolved = np.abs([toys.quadratic_chi(H_BASE, s, free[name], 1.0, config) for s in curvatures])
    assert (resolved > 6 * res.chi_stderr[c, :, 0]).sum() >= 6  # the check has power for most samples


def test_chunking_and_devices_do_not_change_the_numbers(problem):
  base, contexts, w_star, comps, _ = problem
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=3, num_draws=40, mala_every=0)
  kw = dict(config=config, batch_size=16, progress=False)
  whole = sj.estimate_per_token_susceptibilities(toys.quadratic_loss, token_losses, w_star, comps, base, contexts, **kw)
  chunked = sj.estimate_per_token_susceptibilities(toys.quadratic_loss, token_losses, w_star, comps, base, contexts,
                                                   contexts_per_chunk=3, **kw)
  assert chunked.num_chunks == 3
  np.testing.assert_allclose(chunked.chi_per_chain, whole.chi_per_chain, rtol=1e-5, atol=1e-12)
  one = sj.estimate_per_token_susceptibilities(toys.quadratic_loss, token_losses, w_star, comps, base, contexts,
                                               mesh=parallel.entry_mesh(jax.devices()[:1]), **kw)
  np.testing.assert_array_equal(one.chi_per_chain, whole.chi_per_chain)


def test_one_draw_gives_no_token_chi_and_says_so(problem):
  """"full"'s per-token χ was exactly 0 ± 0 at num_draws=1 with no word of it: under 2 draws that observed a
  token there is no χ, and each status counts the tokens left without one (also over several token axes)."""
  base, contexts, w_star, comps, _ = problem
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=3, num_draws=1, mala_every=0)
  two_axes = lambda p, c: jnp.stack([token_losses(p, c), token_losses(p, c) + 1.0], axis=-1)  # noqa: E731
  res = sj.estimate_per_token_susceptibilities(toys.quadratic_loss, two_axes, w_star, comps, base, contexts,
                                               config=config, batch_size=16, progress=False)
  assert np.isnan(res.chi).all() and np.isfinite(res.llc).all()
  tokens = res.chi[0].size
  assert all(f"χ undefined for {tokens} token(s)" in status for status in res.status.values()), res.status


def test_token_losses_may_carry_several_token_axes(problem):
  """[B, J, 2] token losses (here ℓ and ℓ + 1: a constant shift leaves χ as it is) give the [B, J] numbers on
  each slice, also when a chunk's contexts are as many as the entries (where a wrong broadcast would run)."""
  base, contexts, w_star, comps, _ = problem
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=2, num_draws=20, mala_every=0)
  kw = dict(config=config, batch_size=16, contexts_per_chunk=4, progress=False)  # 4 contexts, 2 × 2 entries
  flat = sj.estimate_per_token_susceptibilities(toys.quadratic_loss, token_losses, w_star, comps, base, contexts, **kw)
  paired = lambda p, b: token_losses(p, b)[:, :, None] + jnp.array([0.0, 1.0])
  both = sj.estimate_per_token_susceptibilities(toys.quadratic_loss, paired, w_star, comps, base, contexts, **kw)
  assert both.chi.shape == (2, 8, 1, 2) and both.chi_per_chain.shape == (2, 2, 8, 1, 2)
  np.testing.assert_allclose(both.chi[..., 0], flat.chi, rtol=1e-6)
  np.testing.assert_allclose(both.chi[..., 1], flat.chi, rtol=1e-4)  # (rounding of ℓ + 1 in float32)


def test_a_token_loss_that_fails_at_draws_is_flagged_not_counted_as_zero(problem):
  """Context 0's loss is finite at w* only: no chain observes it, so its χ is NaN (it used to read 0 with status
  ok). Context 1's fails where w₅ > w₅*, a coordinate only "full" moves: half of full's draws, which every
  component's χ reads through ⟨ℓ₁ − L⟩_full. Both are named in each status; every other token keeps the
  numbers of a clean run."""
  base, contexts, w_star, comps, _ = problem
  fragile = {**contexts, "kind": np.array([1, 2, 0, 0, 0, 0, 0, 0], np.int32)}
  w0 = jnp.asarray(w_star["w"])

  def fragile_losses(params, batch):
    w = params["w"]
    broken = ((batch["kind"] == 1) & jnp.any(w != w0)) | ((batch["kind"] == 2) & (w[5] > w0[5]))
    return jnp.where(broken, jnp.nan, toys.quadratic_loss(params, batch))[:, None]
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=3, num_draws=40, mala_every=0)
  kw = dict(config=config, batch_size=16, progress=False)
  clean = sj.estimate_per_token_susceptibilities(toys.quadratic_loss, token_losses, w_star, comps, base, contexts, **kw)
  with pytest.warns(sj.SusceptibilityWarning, match="short of draws"):
    res = sj.estimate_per_token_susceptibilities(toys.quadratic_loss, fragile_losses, w_star, comps, base, fragile,
                                                 **kw)
  assert np.all(np.isnan(res.chi[:, 0])) and np.all(np.isnan(res.chi_per_chain[:, :, 0]))
  for name in comps:
    assert "2 token(s) short of draws" in res.status[name] and "short" not in clean.status[name]
  assert np.all(np.isfinite(res.chi[:, 1])) and np.all(np.isfinite(res.chi_stderr[:, 1]))
  np.testing.assert_allclose(res.chi[:, 2:], clean.chi[:, 2:], rtol=1e-6)


def test_additivity_on_shared_samples(problem):
  """δh·mean_i χ_i over a probe's samples ≈ the dataset-level χ of that probe from the same chains (eq. 45)."""
  base, _, w_star, comps, _ = problem
  rng = np.random.default_rng(5)
  probe = toys.quadratic_dataset(rng, N, rng.uniform(0.2, 3.0, (N, D)), 0.05)
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=8, num_draws=2000,
                         num_burnin=100, mala_every=0)
  res = sj.estimate_per_token_susceptibilities(toys.quadratic_loss, token_losses, w_star, comps, base, probe,
                                               probes={"p": probe}, config=config, batch_size=N, delta_h=0.25,
                                               progress=False)
  dataset = res.dataset
  assert dataset.probe_names == ["p"] and dataset.realised_delta_h == 0.25
  predicted = dataset.realised_delta_h * res.chi[:, :, 0].mean(axis=1)
  for c in range(2):
    assert abs(predicted[c] - dataset.chi[0, c]) < 4 * dataset.chi_stderr[0, c], (predicted, dataset.chi)
  # what the additivity view's chain resampling reads: per chain, each context's mean χ and the dataset-level χ
  np.testing.assert_allclose(res.context_means_per_chain().mean(1), res.chi.mean(-1), rtol=1e-10)
  np.testing.assert_allclose(res.dataset_chi_per_chain().mean(-1), dataset.chi, rtol=1e-10)
  # and Table 1's: per chain, each context's χ summed over its tokens of each sign; averaged, the totals by sign
  positive_CxKxO, negative_CxKxO = res.sign_totals_per_chain()
  np.testing.assert_allclose(positive_CxKxO.mean(1), np.clip(res.chi, 0, None).sum(-1), rtol=1e-10)
  np.testing.assert_allclose(negative_CxKxO.mean(1), np.clip(res.chi, None, 0).sum(-1), rtol=1e-10)
  name = res.component_names[1]
  one_diverged = dataclasses.replace(res, diagnostics={**res.diagnostics, name: dataclasses.replace(
      res.diagnostics[name], diverged_chains=[3])})
  assert np.isnan(one_diverged.context_means_per_chain()[1, 3]).all()
  assert np.isnan(one_diverged.dataset_chi_per_chain()[:, 1, 3]).all()
  assert np.isfinite(one_diverged.context_means_per_chain()[0]).all()
  assert np.isnan(one_diverged.sign_totals_per_chain()[0][1, 3]).all()
  assert np.isfinite(one_diverged.sign_totals_per_chain()[1][1, :3]).all()
  from suscept_jax import estimators  # Student-t half-widths at the chains each component kept (8, and 7 there)
  half_widths = one_diverged.interval(0.95) / res.chi_stderr
  assert np.allclose(half_widths[0], estimators.t_quantile(8, 0.95)) and np.allclose(
      half_widths[1], estimators.t_quantile(7, 0.95)) and estimators.t_quantile(7, 0.95) > 2.4


def test_sign_sums_per_chain_pick_tokens_by_the_chains_mean():
  """A token counts for a sign by its χ over the valid chains (not by each chain's value), a value a chain lacks
  counts as that mean, and an invalid chain's sums are NaN."""
  from suscept_jax import per_token
  x_CxKxOxJ = np.array([[[[3.0, -1.0, 2.0]], [[-1.0, -3.0, np.nan]], [[100.0, 100.0, 100.0]]]])  # [1, 3, 1, 3]
  positive, negative = per_token.sign_sums_per_chain(x_CxKxOxJ, np.array([[True, True, False]]))
  # chains 0 and 1: token χ 1, −2 and 2 (chain 1 lacks the third: it counts as 2)
  np.testing.assert_array_equal(positive[0, :, 0], [5.0, 1.0, np.nan])
  np.testing.assert_array_equal(negative[0, :, 0], [-1.0, -3.0, np.nan])


def test_bad_inputs(problem):
  base, contexts, w_star, comps, _ = problem
  with pytest.raises(ValueError, match=r"token_loss_fn must return per-token losses of shape \[B, J\]"):
    sj.estimate_per_token_susceptibilities(toys.quadratic_loss, toys.quadratic_loss, w_star, comps, base, contexts,
                                           batch_size=16)
  rounded = lambda p, c: jnp.round(100 * token_losses(p, c)).astype(jnp.int32)  # noqa: E731
  with pytest.raises(ValueError, match=r"token_loss_fn must return floating-point losses; it returned int32"):
    sj.estimate_per_token_susceptibilities(toys.quadratic_loss, rounded, w_star, comps, base, contexts, batch_size=16)
  bad = {k: v.copy() for k, v in contexts.items()}
  bad["a"][2] = np.nan
  with pytest.raises(sj.DataFaultError, match=r"context\(s\) \[2\]"):
    sj.estimate_per_token_susceptibilities(toys.quadratic_loss, token_losses, w_star, comps, base, bad, batch_size=16)
  with pytest.raises(ValueError, match="contains 'full'"):
    sj.estimate_per_token_susceptibilities(toys.quadratic_loss, token_losses, w_star, {"first3": {"w": FIRST3}}, base,
                                           contexts, batch_size=16)
  for micro in (0, 2.5):
    with pytest.raises(ValueError, match=rf"observed_microbatch={micro!r} must be a positive integer or None"):
      sj.estimate_per_token_susceptibilities(toys.quadratic_loss, token_losses, w_star, comps, base, contexts,
                                             batch_size=16, observed_microbatch=micro)
  for chunk in (0, 2.5):  # (0 ran every context at once)
    with pytest.raises(ValueError, match=rf"contexts_per_chunk={chunk!r} must be a positive integer or None"):
      sj.estimate_per_token_susceptibilities(toys.quadratic_loss, token_losses, w_star, comps, base, contexts,
                                             batch_size=16, contexts_per_chunk=chunk)


def test_contexts_a_language_model_cannot_take_are_refused_naming_them():
  import functools
  from suscept_jax.models import components, config as model_config, transformer
  cfg = model_config.get_config("tiny", d_vocab=64)
  params = transformer.init_params(cfg, seed=0)
  masks = components.component_masks(["full", "l0h0"], params, cfg)
  loss, tokens = (functools.partial(f, config=cfg) for f in (transformer.context_nll, transformer.per_token_nll))
  rng = np.random.default_rng(0)
  base = rng.integers(0, 64, (32, cfg.n_ctx), dtype=np.int32)
  run = lambda contexts: sj.estimate_per_token_susceptibilities(
      loss, tokens, params, masks, base, contexts, config=sj.SGLDConfig(num_draws=4, num_chains=2), batch_size=16,
      progress=False)
  with pytest.raises(ValueError, match=r"has length 18 but the model's context is n_ctx=16"):
    run(rng.integers(0, 64, (4, cfg.n_ctx + 3), dtype=np.int32))
  contexts = rng.integers(0, 64, (4, cfg.n_ctx), dtype=np.int32)
  contexts[2, 5] = 70
  with pytest.raises(sj.DataFaultError, match=r"context\(s\) \[2\].*outside its vocabulary"):
    run(contexts)


def test_the_cpu_default_observes_contexts_a_few_at_a_time_with_the_same_numbers():
  """On CPU the observed contexts are evaluated ≈ 128 token losses at a time unless told: a speed lever only."""
  import functools
  from suscept_jax import programs
  from suscept_jax.models import components, config as model_config, transformer
  cfg = model_config.get_config("tiny", d_vocab=64)  # n_ctx 16: 15 token losses per context -> 8 contexts
  params = transformer.init_params(cfg, seed=0)
  masks = components.component_masks(["full", "l1h0", "l1h1"], params, cfg)
  loss, tokens = (functools.partial(f, config=cfg) for f in (transformer.context_nll, transformer.per_token_nll))
  rng = np.random.default_rng(0)
  base = rng.integers(0, 64, (64, cfg.n_ctx), dtype=np.int32)
  contexts = rng.integers(0, 64, (21, cfg.n_ctx), dtype=np.int32)
  mesh = parallel.as_entry_mesh(None)
  shape = jax.eval_shape(tokens, params, contexts[:1]).shape  # [1, 15]
  assert programs.observed_microbatch_for(mesh, shape, None) == 128 // (cfg.n_ctx - 1)
  assert programs.observed_microbatch_for(mesh, shape, 5) == 5  # asked for: kept
  assert programs.observed_microbatch_for(mesh, None, None) is None  # nothing observed

  class Device:
    platform = "gpu"
  class Mesh:
    devices = np.array([Device()])
  assert programs.observed_microbatch_for(Mesh(), shape, None) is None  # accelerators: all at once
  run = lambda micro: sj.estimate_per_token_susceptibilities(
      loss, tokens, params, masks, base, contexts, config=sj.SGLDConfig(num_draws=6, num_chains=2), batch_size=16,
      observed_microbatch=micro, progress=False)
  default, at_once = run(None), run(len(contexts))
  assert np.ptp(at_once.chi_per_chain) > 0
  np.testing.assert_allclose(default.chi_per_chain, at_once.chi_per_chain, rtol=1e-4, atol=1e-7)
