"""SGLD kernels and the sampler against things we did not write: gradient descent, known learning
coefficients, closed-form Gaussian posteriors, exact invariances."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import suscept_jax as sj
from suscept_jax import parallel, sgld, toys


quadratic_loss = toys.quadratic_loss  # a Gaussian posterior with known covariance


def test_zero_noise_sgld_is_localized_gradient_descent():
  config = sj.SGLDConfig(step_size=1e-2, localization=3.0, nbeta=5.0, noise_level=0.0)
  w = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
  anchor = {"a": jnp.array([0.5, 0.0]), "b": jnp.array(0.0)}
  grad = {"a": jnp.array([0.3, 0.1]), "b": jnp.array(-1.0)}
  noise = jax.tree.map(lambda x: 7.0 * jnp.ones_like(x), w)  # must be ignored at σ = 0
  mask = sj.full_mask(w)
  new = sgld.step(sgld.init(w, config), grad, noise, anchor, mask, config).position
  expected = jax.tree.map(lambda x, g, x0: x - 0.5 * 1e-2 * (5.0 * g + 3.0 * (x - x0)), w, grad, anchor)
  for got, want in zip(jax.tree.leaves(new), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_masked_coordinates_are_bit_exact_even_with_nan_updates():
  config = sj.SGLDConfig(sampler="rmsprop_sgld")
  w = {"w": jnp.array([1.0, 2.0, 3.0])}
  mask = {"w": np.array([True, False, True])}
  grad = {"w": jnp.array([jnp.nan, jnp.nan, 1.0])}
  new = sgld.step(sgld.init(w, config), grad, {"w": jnp.ones(3)}, w, mask, config)
  assert new.position["w"][1] == 2.0
  assert jnp.isnan(new.position["w"][0]) and jnp.isfinite(new.position["w"][2])


def test_masked_coordinates_never_move_in_a_run():
  """The loss sees only the frozen coordinates, so φ ≡ 0 (to float rounding) iff they never move."""
  rng = np.random.default_rng(0)
  data = {"a": rng.normal(size=(64, 4)).astype(np.float32), "s": np.ones((64, 4), np.float32)}
  frozen = np.array([False, True, False, True])

  def loss_fn(w, batch):
    return quadratic_loss({"w": jnp.where(frozen, w["w"], 0.0)},
                          {"a": jnp.where(frozen, batch["a"], 0.0), "s": batch["s"]})

  w_star = {"w": data["a"].mean(0)}
  config = sj.SGLDConfig(step_size=1e-2, localization=1.0, nbeta=10.0, num_chains=2, num_draws=30)
  res = sj.estimate_llc(loss_fn, w_star, data, config=config, batch_size=16, mask={"w": ~frozen}, progress=False)
  assert np.abs(res.diagnostics.phi_trace).max() < 1e-6  # L_B(w_t) and L_B(w*) differ only by rounding
  moving = sj.estimate_llc(loss_fn, w_star, data, config=config, batch_size=16, mask={"w": frozen}, progress=False)
  assert moving.diagnostics.phi_trace[:, 1:].mean() > 1e-3


@pytest.mark.parametrize("free", [None, 2])
def test_regular_model_llc_is_half_the_dimension(free):
  """Linear regression: λ = d/2, and k/2 when restricted to k coordinates (closed form incl. discretization)."""
  rng = np.random.default_rng(0)
  n, d = 256, 5
  x = rng.normal(size=(n, d))
  x = np.linalg.qr(x)[0] * np.sqrt(n)  # whitened: XᵀX/n = I, so the posterior is isotropic
  w_true = rng.normal(size=d)
  y = x @ w_true + 0.5 * rng.normal(size=n)
  w_ols = np.linalg.lstsq(x, y, rcond=None)[0]

  def loss_fn(p, batch):
    xb, yb = batch
    return 0.5 * (yb - xb @ p["w"]) ** 2

  # ε = 1e-3: at 1e-4 the chains mix so slowly that the error bar ranged over 6–24 % of λ with the seed (the
  # exact value includes the discretization either way); at 1e-3 it stays under 9 % for seeds 0–7.
  config = sj.SGLDConfig(step_size=1e-3, localization=0.0, nbeta=n / np.log(n), num_chains=8, num_draws=2000,
                         num_burnin=200)
  mask = None if free is None else {"w": np.arange(d) < free}
  res = sj.estimate_llc(loss_fn, {"w": jnp.asarray(w_ols, jnp.float32)}, (x.astype(np.float32), y.astype(np.float32)),
                        config=config, batch_size=n, mask=mask, progress=False)
  k = d if free is None else free
  exact = toys.quadratic_llc(np.ones(k), np.ones(k, bool), config)
  assert abs(exact - k / 2) < 0.05 * k  # discretization bias is small here
  assert abs(res.mean - exact) < 4 * res.stderr + 1e-3, (res.mean, res.stderr, exact)
  assert res.stderr < 0.1 * exact


# Normal crossing f(x; w) = x·w1^k1·w2^k2 at w = 0, the anchors' known-λ cases (devinterp's ε = 4e-4). The
# noise is made exactly orthogonal to x, so the empirical minimum sits at w* = 0 as the theory assumes. The
# estimate is compared with the exact posterior expectation on the same data (2-D quadrature,
# toys.normal_crossing_posterior_llc) within 4 standard errors: at n = 1000 the multiplicity-2 cases sit
# well above their asymptotic λ. Case (0, 1) is a Gaussian, where discretised SGLD's own stationary law is
# known exactly (toys.quadratic_llc); in the singular cases the O(ε) bias is below the Monte Carlo error
# (measured |z| < 1 at ε = 4e-4, while ε = 1e-4 under-explores the ridges: z down to −3.9 in 6000 steps).
NORMAL_CROSSING = [((0, 1), 1 / 2), ((1, 1), 1 / 2), ((0, 2), 1 / 4), ((1, 2), 1 / 4), ((2, 2), 1 / 4),
                   ((0, 3), 1 / 6), ((3, 3), 1 / 6)]


@pytest.fixture(scope="module")
def normal_crossing_data():
  rng = np.random.default_rng(0)
  n = 1000
  x = rng.normal(0, 2, n)
  y = 0.25 * rng.normal(0, 1, n)
  y = y - x * (x @ y) / (x @ x)
  return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("powers,true_lambda", NORMAL_CROSSING)
def test_normal_crossing_learning_coefficient(normal_crossing_data, powers, true_lambda):
  x, y = normal_crossing_data
  n = len(x)
  k1, k2 = powers

  def loss_fn(p, batch):
    xb, yb = batch
    return (yb - xb * p["w"][0] ** k1 * p["w"][1] ** k2) ** 2

  config = sj.SGLDConfig(step_size=4e-4, localization=0.0, nbeta=n / np.log(n), num_chains=16, num_draws=5000,
                         num_burnin=1000, bounding_box=1.0, mala_every=0)
  res = sj.estimate_llc(loss_fn, {"w": jnp.zeros(2)}, (x, y), config=config, batch_size=n, progress=False)
  exact = toys.normal_crossing_posterior_llc(x, powers, config.nbeta, box=1.0)
  if min(powers) == 0:  # multiplicity 1: the posterior expectation is λ itself at any n
    assert abs(exact - true_lambda) < 1e-6
  if powers == (0, 1):  # L(w) − L(0) = S·w2²: curvature 2S, and SGLD's discretised Gaussian is exact
    exact = toys.quadratic_llc([2 * np.mean(np.square(x, dtype=np.float64))], [True], config)
  assert abs(res.mean - exact) < 4 * res.stderr, (res.mean, res.stderr, exact)
  # The check has power: 4 s.e. is narrower than the gap between λ = 1/4 and 1/6 (0.083). For (1, 1) 4 s.e.
  # ranged over 0.041–0.074 with the seed (seeds 0–7), so a tighter bound would test the seed.
  assert 4 * res.stderr < 1 / 4 - 1 / 6


def test_llc_invariant_to_scaling_loss_and_inverse_temperature():
  """λ̂(2L, nβ/2) = λ̂(L, nβ): the chains are the same up to rounding."""
  rng = np.random.default_rng(0)
  data = {"a": rng.normal(size=(128, 3)).astype(np.float32), "s": rng.uniform(0.5, 2, (128, 3)).astype(np.float32)}
  w_star = {"w": (data["a"] * data["s"]).sum(0) / data["s"].sum(0)}
  base = sj.SGLDConfig(step_size=1e-3, localization=5.0, nbeta=40.0, num_chains=2, num_draws=50)
  half = sj.SGLDConfig(step_size=1e-3, localization=5.0, nbeta=20.0, num_chains=2, num_draws=50)
  r1 = sj.estimate_llc(quadratic_loss, w_star, data, config=base, batch_size=32, progress=False)
  r2 = sj.estimate_llc(lambda w, b: 2.0 * quadratic_loss(w, b), w_star, data, config=half, batch_size=32,
                       progress=False)
  np.testing.assert_allclose(r1.per_chain, r2.per_chain, rtol=1e-5)


def test_rmsprop_sgld_samples_the_same_gaussian():
  """RMSProp-SGLD preconditions and comes near the Gaussian's LLC at this step size. Only near: without a
  correction term for its position-dependent preconditioner it samples exp(−U)/G (devinterp's algorithm), 8 %
  high here and more at smaller steps (an audit: 30 % at ε = 1e-5), which the tolerance below admits."""
  rng = np.random.default_rng(0)
  n, d = 256, 4
  data = {"a": (0.01 * rng.normal(size=(n, d))).astype(np.float32), "s": np.ones((n, d), np.float32)}
  w_star = {"w": data["a"].mean(0)}
  config = sj.SGLDConfig(step_size=1e-4, localization=0.0, nbeta=100.0, num_chains=8, num_draws=2000,
                         num_burnin=500, sampler="rmsprop_sgld")
  res = sj.estimate_llc(quadratic_loss, w_star, data, config=config, batch_size=n, progress=False)
  assert abs(res.mean - d / 2) < 0.15 * d / 2 + 4 * res.stderr, (res.mean, res.stderr)


def test_mala_acceptance_is_high_for_small_steps_and_low_for_large():
  data = {"a": np.zeros((64, 3), np.float32), "s": np.ones((64, 3), np.float32)}
  w = {"w": np.zeros(3, np.float32)}
  accept = {}
  for eps in (1e-4, 3e-2):
    config = sj.SGLDConfig(step_size=eps, localization=0.0, nbeta=60.0, num_chains=2, num_draws=40, mala_every=1)
    res = sj.estimate_llc(quadratic_loss, w, data, config=config, batch_size=64, progress=False)
    accept[eps] = res.diagnostics.mala_acceptance
  assert accept[1e-4] > 0.95 and accept[3e-2] < accept[1e-4]


def test_diverged_chains_are_reported_and_excluded():
  data = {"a": np.zeros((64, 3), np.float32), "s": np.ones((64, 3), np.float32)}
  w = {"w": np.zeros(3, np.float32)}
  config = sj.SGLDConfig(step_size=1.0, localization=0.0, nbeta=100.0, num_chains=3, num_draws=30, mala_every=0)
  res = sj.estimate_llc(quadratic_loss, w, data, config=config, batch_size=64, progress=False)
  assert res.diagnostics.diverged_chains == [0, 1, 2]
  assert np.isnan(res.mean)
  assert any("diverged" in w and "step_size" in w for w in res.warnings)


def test_one_and_four_devices_give_identical_numbers():
  assert jax.device_count() == 4
  rng = np.random.default_rng(0)
  data = {"a": rng.normal(size=(96, 3)).astype(np.float32), "s": rng.uniform(0.5, 2, (96, 3)).astype(np.float32)}
  probe = {"a": rng.normal(size=(80, 3)).astype(np.float32), "s": rng.uniform(1, 3, (80, 3)).astype(np.float32)}
  w_star = {"w": (data["a"] * data["s"]).sum(0) / data["s"].sum(0)}
  comps = {"full": None, "c0": {"w": np.array([True, False, False])}}
  config = sj.SGLDConfig(step_size=1e-3, localization=10.0, nbeta=50.0, num_chains=3, num_draws=25, num_burnin=5,
                         steps_between_draws=2, mala_every=4)
  kw = dict(config=config, batch_size=32, delta_h=0.1, progress=False)
  r4 = sj.estimate_susceptibilities(quadratic_loss, w_star, comps, data, {"p": probe}, **kw)
  r1 = sj.estimate_susceptibilities(quadratic_loss, w_star, comps, data, {"p": probe}, **kw,
                                    mesh=parallel.entry_mesh(jax.devices()[:1]))
  np.testing.assert_array_equal(r4.chi_per_chain, r1.chi_per_chain)
  np.testing.assert_array_equal(r4.llc_per_chain, r1.llc_per_chain)
  np.testing.assert_array_equal(r4.diagnostics["c0"].loss_trace, r1.diagnostics["c0"].loss_trace)


# ---- one step by hand ------------------------------------------------------------------------------------

def test_one_sgld_step_by_hand():
  """w = 1, w* = 0.5, ∇L = 0.2, ε = 0.01, nβ = 10, γ = 2, λ = 0.1, ξ = 0.5:
  drift = 10·0.2 + 2·0.5 + 0.1·1 = 3.1;  w' = 1 − 0.005·3.1 + 0.1·0.5 = 1.0345. The frozen coordinate stays."""
  config = sj.SGLDConfig(step_size=0.01, nbeta=10.0, localization=2.0, weight_decay=0.1)
  w, anchor = {"w": jnp.array([1.0, 1.0])}, {"w": jnp.array([0.5, 0.5])}
  new = sgld.step(sgld.init(w, config), {"w": jnp.array([0.2, 0.2])}, {"w": jnp.array([0.5, 0.5])}, anchor,
                  {"w": np.array([True, False])}, config)
  np.testing.assert_allclose(np.asarray(new.position["w"]), [1.0345, 1.0], rtol=1e-6)


def test_the_noise_level_and_the_bounding_box_by_hand():
  """The same step with σ = 0.5: w' = 1 − 0.0155 + 0.1·0.5·0.5 = 1.0095 (σ², not σ, passed every other test).
  With a box of 0.01 around w* = 0.5 the step lands at w* + 0.01 = 0.51: the box is centred on w*, not on 0
  (a box around 0 passed every other test: their w* was 0)."""
  step = lambda **kw: sgld.step(
      sgld.init({"w": jnp.array([1.0])}, sj.SGLDConfig(**kw)), {"w": jnp.array([0.2])}, {"w": jnp.array([0.5])},
      {"w": jnp.array([0.5])}, {"w": np.array([True])},
      sj.SGLDConfig(step_size=0.01, nbeta=10.0, localization=2.0, weight_decay=0.1, **kw)).position["w"]
  np.testing.assert_allclose(np.asarray(step(noise_level=0.5)), [1.0095], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(step(bounding_box=0.01)), [0.51], rtol=1e-6)


def test_the_preconditioned_mala_ratio_by_hand():
  """log α(w → w') with RMSProp's G = 25/3 (as after the step above), ε = 0.01, nβ = 10, γ = 2, w* = 0.5, written
  out: U(w) = nβ·L + γ/2·(w − w*)², q(w'|w) = N(w − ε/2·G·U'(w), ε·G). w = 1 (L 0.3, ∇L 0.2: U 3.25, U' 3),
  w' = 1.02 (L 0.31, ∇L 0.25: U 3.3704, U' 3.54):
  log q(w'|w) = −(1.02 − 0.875)²/(2·0.01·G) = −0.126150, log q(w|w') = −(1 − 0.8725)²/(2·0.01·G) = −0.097538,
  log α = −3.3704 + 3.25 − 0.097538 + 0.126150 = −0.091788. (A proposal without G's variance passed every
  other test: they rebuild the move with this function.)"""
  config = sj.SGLDConfig(step_size=0.01, nbeta=10.0, localization=2.0, sampler="rmsprop_sgld")
  G, anchor, mask = {"w": jnp.array([25 / 3])}, {"w": jnp.array([0.5])}, {"w": np.array([True])}
  w, w_to = {"w": jnp.array([1.0])}, {"w": jnp.array([1.02])}
  there = sgld.mala_half(sgld.Evaluated(w, 0.3, {"w": jnp.array([0.2])}), w_to, anchor, mask, G, config)
  back = sgld.mala_half(sgld.Evaluated(w_to, 0.31, {"w": jnp.array([0.25])}), w, anchor, mask, G, config)
  assert float(there - back) == pytest.approx(-0.091788, abs=2e-5)


def test_one_rmsprop_sgld_step_by_hand():
  """Same numbers, RMSProp-SGLD from V = 0 (α = 0.99, eps = 0.1): V = 0.01·0.2² = 4e-4, G = 1/(0.02 + 0.1) = 25/3;
  w' = 1 − 0.005·(25/3)·3.1 + √(0.01·25/3)·0.5 = 1 − 0.1291667 + 0.1443376 = 1.0151709."""
  config = sj.SGLDConfig(step_size=0.01, nbeta=10.0, localization=2.0, weight_decay=0.1, sampler="rmsprop_sgld")
  w, anchor = {"w": jnp.array([1.0])}, {"w": jnp.array([0.5])}
  new = sgld.step(sgld.init(w, config), {"w": jnp.array([0.2])}, {"w": jnp.array([0.5])}, anchor,
                  {"w": np.array([True])}, config)
  np.testing.assert_allclose(np.asarray(new.position["w"]), [1.0151709], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(new.square_avg["w"]), [4e-4], rtol=1e-6)


def test_hyper_overrides_the_config_per_call():
  """ε, nβ, γ as data (what a vectorized grid of settings uses) give the same step as a config holding them."""
  w, anchor, grad, noise = ({"w": jnp.array([v])} for v in (1.0, 0.5, 0.2, 0.5))
  mask = {"w": np.array([True])}
  config = sj.SGLDConfig(step_size=0.01, nbeta=10.0, localization=2.0)
  via_hyper = sgld.step(sgld.init(w, sj.SGLDConfig()), grad, noise, anchor, mask, sj.SGLDConfig(),
                        sgld.Hyper(jnp.float32(0.01), jnp.float32(10.0), jnp.float32(2.0)))
  np.testing.assert_allclose(via_hyper.position["w"], sgld.step(sgld.init(w, config), grad, noise, anchor, mask,
                                                                config).position["w"], rtol=1e-6)


# ---- draws are posterior samples, never w* -----------------------------------------------------------------

@pytest.mark.parametrize("burnin,between", [(0, 1), (0, 3), (2, 2)])
def test_draws_are_taken_after_updates(burnin, between):
  """With σ = 0 SGLD is deterministic gradient descent on the localized energy, so draw t must be the
  position after burn-in + t·steps_between_draws updates (t = 1 … T), never the starting point w*."""
  data = {"a": np.full((8, 1), 1.0, np.float32), "s": np.full((8, 1), 2.0, np.float32)}
  w_star = {"w": np.zeros(1, np.float32)}  # not the loss minimum (a = 1): GD moves
  config = sj.SGLDConfig(step_size=0.01, nbeta=5.0, localization=3.0, noise_level=0.0, num_chains=2, num_draws=6,
                         num_burnin=burnin, steps_between_draws=between, mala_every=0)
  res = sj.estimate_llc(toys.quadratic_loss, w_star, data, config=config, batch_size=8, progress=False)
  w, positions = 0.0, []
  for _ in range(burnin + config.num_draws * between):
    w -= 0.005 * (5.0 * 2.0 * (w - 1.0) + 3.0 * w)
    positions.append(w)
  expected_w = np.array(positions[burnin + between - 1::between])
  expected_loss = 0.5 * 2.0 * (expected_w - 1.0) ** 2
  np.testing.assert_allclose(res.trace, np.broadcast_to(expected_loss, (2, 6)), rtol=1e-5)
  assert np.all(res.diagnostics.phi_trace != 0.0)


@pytest.mark.parametrize("variant", ["sgld", "rmsprop_sgld"])
@pytest.mark.parametrize("between,batch_size,mala_every,step_size,num_draws", [
    (2, 16, 2, 2e-2, 13), (1, 8, 3, 8e-2, 25), (1, 8, 1, 8e-2, 25)])  # (ε: some moves refused in each)
def test_mala_trace_is_each_measured_move_rebuilt_by_hand(variant, between, batch_size, mala_every, step_size,
                                                          num_draws):
  """The sampler measures MALA with one more gradient, at the moved-to point on the move's own batch, and the
  chain goes on as without it. Rebuilt here move by move from the kernels, the documented noise keys
  fold_in(chain key, step) and the stream's batch schedule (every step its own batch), with the gradient at w'
  taken by hand; the acceptance is recorded at the draw whose block's first move it measured."""
  from suscept_jax import masks as masks_lib, sampler, streams
  rng = np.random.default_rng(3)
  data = {"a": rng.normal(size=(16, 3)).astype(np.float32), "s": rng.uniform(0.5, 2, (16, 3)).astype(np.float32)}
  w_star = {"w": jnp.asarray(toys.quadratic_minimum(data)["w"])}
  config = sj.SGLDConfig(step_size=step_size, localization=1.0, nbeta=20.0, num_chains=1, num_draws=num_draws,
                         steps_between_draws=between, num_burnin=1, mala_every=mala_every, sampler=variant)
  mask = masks_lib.full_mask(w_star)
  out = sampler.run(quadratic_loss, w_star, *masks_lib.stack_masks({"llc": None}, w_star), data, {},
                    config=config, batch_size=batch_size, delta_h=None, progress=False)
  key = jax.random.wrap_key_data(streams.chain_keys(0, 0, ["llc"], 1)[0])
  schedule = sj.mixing.BatchSchedule(16, batch_size, streams.stream_seed(0, 0, 0))
  batch_at = lambda s: {k: v[schedule.indices(s)] for k, v in data.items()}
  loss_grad = lambda w, batch: jax.value_and_grad(lambda w: quadratic_loss(w, batch).mean())(w)
  state, expected = sgld.init(w_star, config), np.full(config.num_draws, np.nan, np.float32)
  for s in range(config.num_steps):
    batch = batch_at(s)
    loss, grad = loss_grad(state.position, batch)
    new = sgld.step(state, grad, sgld.standard_normal_like(jax.random.fold_in(key, s), state.position), w_star, mask,
                    config)
    block = (s - config.num_burnin) // config.steps_between_draws
    is_first = s >= config.num_burnin and (s - config.num_burnin) % config.steps_between_draws == 0
    if is_first and block >= 1 and (block - 1) % mala_every == 0:
      assert config.mala_measured(block)
      new_loss, new_grad = loss_grad(new.position, batch)
      expected[block - 1] = sgld.mala_acceptance(
          sgld.Evaluated(state.position, loss, grad), sgld.Evaluated(new.position, new_loss, new_grad), w_star, mask,
          sgld.preconditioner(state, grad, config)[1], config)
    elif is_first:
      assert not config.mala_measured(block)
    state = new
  np.testing.assert_allclose(out.mala[:, 0], expected, rtol=1e-4, atol=1e-6)
  measured = out.mala[np.isfinite(out.mala)]
  assert measured.size == np.isfinite(expected).sum() == config.num_mala_measurements
  # moves that are sometimes refused (most are accepted at this ε)
  assert measured.size >= 4 and np.any(measured < 0.99)


@pytest.mark.parametrize("field,value,rule", [
    ("sampler", "adam", r"expected one of"), ("step_size", 0.0, "must be > 0"), ("nbeta", -1.0, "must be > 0"),
    ("localization", -1.0, "must be >= 0"), ("noise_level", -0.5, "must be >= 0"),
    ("weight_decay", -1e-3, "must be >= 0"), ("num_burnin", -1, "must be >= 0"), ("mala_every", -2, "must be >= 0"),
    ("num_chains", 0, "must be >= 1"), ("num_draws", 0, "must be >= 1"), ("steps_between_draws", 0, "must be >= 1"),
    ("bounding_box", 0.0, "must be > 0 or None"), ("rmsprop_alpha", 1.0, r"must be in \[0, 1\)"),
    # NaN passes every "< 0" test as False and inf every "> 0" (both ran, every chain "diverged", and a NaN
    # max_loss_increase switched the divergence test off silently)
    ("step_size", float("inf"), "must be a finite number"), ("localization", float("nan"), "must be a finite"),
    ("max_loss_increase", float("nan"), "must be a finite"), ("max_loss_increase", -1.0, "must be > 0"),
    ("rmsprop_eps", -1.0, "must be > 0"), ("weight_decay", float("inf"), "must be a finite"),
])
def test_bad_sampler_settings_are_refused_when_made_naming_the_field(field, value, rule):
  with pytest.raises(ValueError, match=rf"SGLDConfig\.{field}=.*{rule}") as raised:
    sj.SGLDConfig(**{field: value})
  assert f"{field}={value!r}" in str(raised.value) or f"{field}={value}" in str(raised.value)


def test_an_unbounded_divergence_threshold_leaves_only_non_finite_phi():
  assert sj.SGLDConfig(max_loss_increase=float("inf")).max_loss_increase == float("inf")


def test_noise_at_a_coordinate_does_not_depend_on_which_others_are_drawn():
  """What lets a head group's program draw noise only over its free leaves and still give the chains of a
  program moving every coordinate: coordinate j's value depends only on (key, j)."""
  key = jax.random.key(7)
  full = np.asarray(sgld.standard_normal_at(key, [(0, 5000)]))
  assert full.shape == (5000,) and 0.9 < full.std() < 1.1
  segments = [(3, 10), (1020, 1030), (2100, 4100), (4999, 5000)]  # inside one block, across blocks, the last
  expected = np.concatenate([full[a:b] for a, b in segments])
  np.testing.assert_array_equal(np.asarray(sgld.standard_normal_at(key, segments)), expected)
  np.testing.assert_array_equal(np.asarray(sgld.standard_normal_at(key, [(2100, 4100)])), full[2100:4100])
  assert sgld.standard_normal_at(key, []).shape == (0,)
  tree = {"a": jnp.zeros((40, 50)), "b": jnp.zeros((3000,))}  # ravel order: a's 2000 coordinates, then b's
  like = sgld.standard_normal_like(key, tree)
  np.testing.assert_array_equal(np.asarray(like["a"]).ravel(), full[:2000])
  np.testing.assert_array_equal(np.asarray(like["b"]), full[2000:])
  assert not np.array_equal(np.asarray(sgld.standard_normal_at(jax.random.key(8), [(0, 5000)])), full)


def test_ravel_of_host_leaves_stays_on_the_host_and_equals_the_device_one():
  tree = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones((4,), np.float32)}
  host = sgld.ravel(tree)
  assert isinstance(host, np.ndarray)  # no program compiled for it
  np.testing.assert_array_equal(host, np.asarray(sgld.ravel(jax.tree.map(jnp.asarray, tree))))
  from jax.flatten_util import ravel_pytree
  np.testing.assert_array_equal(host, np.asarray(ravel_pytree(tree)[0]))  # the order the sampler's state uses


@pytest.mark.parametrize("variant,between", [("sgld", 1), ("sgld", 2), ("rmsprop_sgld", 1)])
def test_measuring_mala_leaves_the_chains_as_they_are(variant, between):
  """MALA only observes: its extra gradient is taken at the moved-to point and discarded, so every chain, every
  draw and the LLC are those of mala_every=0, to rounding (the programs differ by the loop). For a day the step
  after a measured move re-read that move's batch to save the gradient: two moves shared one batch's noise,
  which widened the chain (a quadratic's LLC +15–20 % at mala_every=1, batch 8), and with one step per draw the
  next draw was evaluated on the batch that had just moved the chain (its φ low: the LLC 0.23 -> −0.53 here)."""
  rng = np.random.default_rng(0)
  data = toys.quadratic_dataset(rng, 4096, np.ones(3), 3.0)
  w_star = toys.quadratic_minimum(data)
  runs = {}
  for mala_every in (0, 1, 3):
    config = sj.SGLDConfig(num_chains=4, num_draws=60, num_burnin=10, mala_every=mala_every, sampler=variant,
                           steps_between_draws=between)  # the paper's ε, nβ, γ
    runs[mala_every] = sj.estimate_llc(toys.quadratic_loss, w_star, data, config=config, batch_size=8,
                                       progress=False)
  for mala_every in (1, 3):
    np.testing.assert_allclose(runs[mala_every].trace, runs[0].trace, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(runs[mala_every].per_chain, runs[0].per_chain, rtol=1e-4,  # (φ cancels: rounding
                               atol=1e-4 * np.abs(runs[0].per_chain).max())            # relative to the largest)
    assert np.isfinite(runs[mala_every].diagnostics.mala_acceptance)
  assert np.isnan(runs[0].diagnostics.mala_acceptance)
