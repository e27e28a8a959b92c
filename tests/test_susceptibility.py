"""χ from the engine against exact identities and a closed-form Gaussian posterior; Algorithm 1; bad input."""
import dataclasses
import math
import types
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import suscept_jax as sj
from suscept_jax import api, estimators, mixing, per_token, sampler, streams, toys


quadratic_loss = toys.quadratic_loss

D, N = 6, 64
H_BASE = np.linspace(0.5, 2.0, D)
H_CURVY = np.array([3.0, 0.2, 3.0, 0.2, 3.0, 0.2])
FIRST3 = np.arange(D) < 3


def dataset(seed, curvature):
  rng = np.random.default_rng(seed)
  return {"a": (0.05 * rng.normal(size=(N, D))).astype(np.float32),
          "s": np.broadcast_to(curvature, (N, D)).astype(np.float32).copy()}


@pytest.fixture(scope="module")
def gaussian_problem():
  base = dataset(0, H_BASE)
  probes = {"same": base, "curvy": dataset(1, H_CURVY), "shift": {"a": base["a"] + 1.0, "s": base["s"].copy()}}
  w_star = {"w": (base["s"] * base["a"]).sum(0) / base["s"].sum(0)}
  comps = {"full": None, "first3": {"w": FIRST3}, "last3": {"w": ~FIRST3}}
  return base, probes, w_star, comps


def test_chi_matches_closed_form_gaussian(gaussian_problem):
  base, probes, w_star, comps = gaussian_problem
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=16, num_draws=4000,
                         num_burnin=200, mala_every=20)
  res = sj.estimate_susceptibilities(quadratic_loss, w_star, comps, base, probes, config=config, batch_size=N,
                                     delta_h=0.5, progress=False)
  assert res.realised_delta_h == 0.5
  free = {"full": np.ones(D, bool), "first3": FIRST3, "last3": ~FIRST3}
  curvy = res.probe_names.index("curvy")
  for c, name in enumerate(res.component_names):
    exact = toys.quadratic_chi(H_BASE, H_CURVY, free[name], 0.5, config)
    got, err = res.chi[curvy, c], res.chi_stderr[curvy, c]
    assert abs(got - exact) < 4 * err, (name, got, err, exact)
    assert abs(exact) > 8 * err  # the check has power: χ is resolved well away from 0
    # Only the linear terms change in "shift": χ = 0 exactly in expectation.
    assert abs(res.chi[res.probe_names.index("shift"), c]) < 4 * res.chi_stderr[res.probe_names.index("shift"), c]
    # The weight-refined LLC of the same samples: nβ·½Σ_C h v.
    assert abs(res.llc[c] - toys.quadratic_llc(H_BASE, free[name], config)) < 4 * res.llc_stderr[c]
  diag = res.diagnostics["full"]
  assert diag.r_hat < 1.05 and diag.mala_acceptance > 0.9 and diag.frac_phi_negative == 0.0


def test_chi_is_exactly_zero_when_probe_is_the_base_data(gaussian_problem):
  base, probes, w_star, comps = gaussian_problem
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=4, num_draws=40)
  for batch_size in (N, 20):  # also with mini-batches and micro-batching
    res = sj.estimate_susceptibilities(quadratic_loss, w_star, comps, base, {"same": base, "curvy": probes["curvy"]},
                                       config=config, batch_size=batch_size, delta_h=0.1, microbatch_size=8,
                                       progress=False)
    assert np.all(res.chi[0] == 0.0) and np.all(res.chi_per_chain[0] == 0.0)
    assert np.all(np.isfinite(res.chi[1]))  # its value is checked against the closed form elsewhere
    for form in ("eq41", "covariance"):
      assert np.all(res.chi_with(form, scale_by_delta_h=True)[0][0] == 0.0)


def test_vmapped_components_match_separate_runs(gaussian_problem):
  base, probes, w_star, comps = gaussian_problem
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=2, num_draws=30)
  kw = dict(config=config, batch_size=32, delta_h=0.25, progress=False)
  together = sj.estimate_susceptibilities(quadratic_loss, w_star, comps, base, probes, **kw)
  for c, name in enumerate(together.component_names):
    alone = sj.estimate_susceptibilities(quadratic_loss, w_star, {"full": None, name: comps[name]}, base, probes, **kw)
    c_alone = alone.component_names.index(name)
    np.testing.assert_allclose(alone.llc_per_chain[c_alone], together.llc_per_chain[c], rtol=1e-5)
    np.testing.assert_allclose(alone.chi_per_chain[:, c_alone], together.chi_per_chain[:, c], rtol=1e-4, atol=1e-9)


def test_chi_forms_and_scaling_are_consistent(gaussian_problem):
  base, probes, w_star, comps = gaussian_problem
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=2, num_draws=30)
  res = sj.estimate_susceptibilities(quadratic_loss, w_star, comps, base, probes, config=config, batch_size=32,
                                     delta_h=0.1, progress=False)
  chi, _, _ = res.chi_with("eq41")
  np.testing.assert_allclose(chi, res.chi)
  scaled = res.chi_with("eq41", scale_by_delta_h=True)
  assert res.realised_delta_h == 0.1  # ⌊30 draws · 32 · 0.1⌋ / 960: Algorithm 1 over the whole run
  np.testing.assert_allclose(scaled.chi, res.chi / 0.1)
  np.testing.assert_allclose(scaled.stderr, res.chi_stderr / 0.1)
  cov, _, _ = res.chi_with("covariance")
  full = res.component_names.index("full")
  np.testing.assert_allclose(cov[:, full], res.chi[:, full], rtol=1e-6)  # same chain: the forms agree for "full"
  rows = res.records()
  assert len(rows) == 3 * 3 and {"probe", "component", "chi", "chi_stderr", "llc", "r_hat"} <= set(rows[0])


# ---- Algorithm 1 --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,dh", [(64, 0.1), (16, 0.1), (100, 0.1), (10, 0.3), (7, 0.5), (20, 0.15), (8, 0.1)])
def test_algorithm1_over_the_run_realises_delta_h(n, dh):
  draws = 50
  counts = np.array([len(sj.probe_positions(n, dh, t)) for t in range(draws)])
  # Each batch holds ⌊n·δh⌋ or ⌈n·δh⌉ probe samples, never more than the padded slot count…
  assert set(counts) <= {int(np.floor(n * dh + 1e-9)), int(np.ceil(n * dh - 1e-9))}
  assert counts.max() <= mixing.max_probe_samples(n, dh)
  # …and over the run exactly ⌊T·n·δh⌋ are placed: the paper's fraction, not ⌊n·δh⌋/n (6/64 at n = 64).
  assert counts.sum() == int(np.floor(draws * n * dh + 1e-9))
  assert sj.realised_fraction(n, dh, draws) == counts.sum() / (draws * n)
  # even spacing over the global index: the running count never strays from j·δh by a sample or more
  pattern = sj.mixing_pattern(draws * n, dh)
  assert np.all(np.abs(np.cumsum(pattern) - np.arange(1, draws * n + 1) * dh) < 1)
  slots = mixing.probe_slots(n, dh, np.arange(draws))
  assert slots.weight_TxM.sum() == counts.sum()
  assert np.array_equal(slots.position_TxM[3][slots.weight_TxM[3] > 0], sj.probe_positions(n, dh, 3))


def test_paper_batch_sizes_realise_the_paper_fraction():
  assert [len(sj.probe_positions(64, 0.1, t)) for t in range(5)] == [6, 6, 7, 6, 7]
  assert sj.realised_fraction(64, 0.1, 200) == 0.1  # the old per-batch Algorithm 1 gave 6/64 = 0.094
  assert sj.realised_fraction(16, 0.1, 100) == 0.1  # per-token batch: 1/16 = 0.0625 before


def test_algorithm1_mixing_a_dataset_with_itself_is_the_identity():
  data = list(range(50))
  assert sj.mix(data, data, 0.3) == data
  mixed = sj.mix(data, [-x for x in data], 0.1)
  assert sum(x < 0 for x in mixed) == 5 and mixed[9] == -9


def test_a_run_that_places_no_probe_sample_is_a_configuration_error(gaussian_problem):
  base, probes, w_star, comps = gaussian_problem
  config = sj.SGLDConfig(num_draws=1)
  with pytest.raises(ValueError, match=r"batch_size=8 × num_draws=1 with delta_h=0.1 places no probe sample"):
    sj.estimate_susceptibilities(quadratic_loss, w_star, comps, base, probes, config=config, batch_size=8,
                                 delta_h=0.1)


@pytest.mark.parametrize("num_draws", [25, 23])
def test_small_batches_still_get_their_probe_share(gaussian_problem, num_draws):
  """Batch 8 at δh 0.1 (n·δh = 0.8): most batches hold 1 probe sample, some 0, and the run realises
  ⌊T·n·δh⌋ / (T·n) (0.1 exactly at 25 draws, 18/184 at 23). Measured, not taken from the formula: a probe
  whose every sample costs 1 more than its base twin has ΔL = (probe samples in the batch) / n at every draw, so
  ⟨ΔL⟩ is the share of probe samples the draws' batches really held."""
  base, probes, w_star, comps = gaussian_problem
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=2, num_draws=num_draws)
  with_offset = lambda data, c: {**data, "c": np.full(len(data["a"]), c, np.float32)}
  loss = lambda params, batch: quadratic_loss(params, batch) + batch["c"]
  probes = {"same": with_offset(base, 0.0), "curvy": with_offset(probes["curvy"], 0.0), "plus1": with_offset(base, 1.0)}
  res = sj.estimate_susceptibilities(loss, w_star, comps, with_offset(base, 0.0), probes, config=config, batch_size=8,
                                     delta_h=0.1, progress=False)
  share = math.floor(num_draws * 8 * 0.1) / (num_draws * 8)
  assert res.realised_delta_h == pytest.approx(share, rel=1e-12)
  np.testing.assert_allclose(res.moments.mean_y[:, 2], share, rtol=1e-5)  # every entry: [E, P]
  assert np.all(res.chi[0] == 0.0) and np.all(res.chi[1] != 0.0)


# ---- the estimators' arithmetic against numpy ---------------------------------------------------------------

def test_streamed_moments_equal_numpy_over_the_draws_each_entry_kept():
  """Welford over draws with entries inactive at some draws and y missing at others (a NaN there): the moments
  of each entry are numpy's over exactly its kept draws (⟨φ⟩ over the draws where y was present, not all)."""
  rng = np.random.default_rng(0)
  T, E, P = 40, 3, 2
  x_TxE, y_TxExP = rng.normal(size=(T, E)), rng.normal(size=(T, E, P)) + 3.0
  active_TxE, present_TxExP = rng.random((T, E)) > 0.2, rng.random((T, E, P)) > 0.3
  m = estimators.init_moments(E, (P,))
  for t in range(T):
    m = estimators.update_moments(m, x_TxE[t], np.where(present_TxExP[t], y_TxExP[t], np.nan), active_TxE[t],
                                  present_TxExP[t])
  for e in range(E):
    x = x_TxE[active_TxE[:, e], e]
    assert int(m.count[e]) == len(x)
    np.testing.assert_allclose([m.mean_x[e], m.m2_x[e]], [x.mean(), ((x - x.mean()) ** 2).sum()], rtol=1e-5)
    for p in range(P):
      kept = active_TxE[:, e] & present_TxExP[:, e, p]
      xs, ys = x_TxE[kept, e], y_TxExP[kept, e, p]
      np.testing.assert_allclose([m.count_y[e, p], m.mean_x_y[e, p], m.mean_y[e, p], m.comoment[e, p]],
                                 [kept.sum(), xs.mean(), ys.mean(), ((xs - xs.mean()) * (ys - ys.mean())).sum()],
                                 rtol=1e-5, atol=1e-5)


def test_mean_and_stderr_and_a_diverged_full_chain():
  """The standard error is numpy's std (ddof 1) / √n over the valid chains; a component's chain paired with a
  diverged chain of "full" takes ⟨ΔL⟩_full pooled over the valid full chains only."""
  x = np.array([1.0, 2.0, 4.0, 100.0])
  mean, err = estimators.mean_and_stderr(x, np.array([True, True, True, False]))
  assert mean == pytest.approx(7 / 3) and err == pytest.approx(x[:3].std(ddof=1) / np.sqrt(3))
  # C = 2 components (full, head) × K = 2 chains, one probe; full's chain 1 diverged with a wild ⟨ΔL⟩.
  m = estimators.Moments(count=np.full(4, 50), mean_x=np.ones(4), m2_x=np.ones(4), count_y=np.full((4, 1), 50),
                         mean_x_y=np.full((4, 1), 2.0), mean_y=np.array([[0.5], [1e3], [0.8], [0.9]]),
                         comoment=np.full((4, 1), -5.0))
  table = estimators.chi_table(m, np.array([[False, True], [False, False]]), ["full", "head"], "eq41", None)
  cov = -5.0 / 50
  np.testing.assert_allclose(table.per_chain[0, 1], [-cov - 2.0 * (0.8 - 0.5), -cov - 2.0 * (0.9 - 0.5)])


def test_a_full_chain_that_never_observed_a_probe_gives_no_mean_to_its_pair():
  """Full chain 0 observed the probe at no draw (every one dropped): its mean_y is the accumulator's initial 0,
  not ⟨ΔL⟩. Chain 0 of the head takes the pooled mean of the full chains that observed it, as with a diverged
  one; with ⟨ΔL⟩_full = 0 instead, its χ here would be off by ⟨φ⟩·⟨ΔL⟩ = 2 × 0.7."""
  m = estimators.Moments(count=np.full(4, 50), mean_x=np.ones(4), m2_x=np.ones(4),
                         count_y=np.array([[0], [50], [50], [50]]), mean_x_y=np.full((4, 1), 2.0),
                         mean_y=np.array([[0.0], [0.7], [0.8], [0.9]]), comoment=np.full((4, 1), -5.0))
  table = estimators.chi_table(m, np.zeros((2, 2), bool), ["full", "head"], "eq41", None)
  cov = -5.0 / 50
  np.testing.assert_allclose(table.per_chain[0, 1], [-cov - 2.0 * (0.8 - 0.7), -cov - 2.0 * (0.9 - 0.7)])
  assert np.isnan(table.per_chain[0, 0, 0])  # (the full chain itself has no estimate)


def test_intervals_follow_the_chains_behind_each_value():
  """A cell or token that only some valid chains observed (NaN per-chain values elsewhere) has a standard error
  from those chains, so its Student-t multiplier has their degrees of freedom: with 2 of 4 chains, t(1) = 12.7,
  not t(3) = 3.18. Checked against scipy's quantiles."""
  per_chain_PxCxK = np.array([[[0.1, 0.3, np.nan, np.nan], [0.1, 0.2, 0.3, 0.5]]])
  diverged_CxK = np.array([[False] * 4, [False, False, False, True]])
  chi, err = zip(*(estimators.mean_and_stderr(per_chain_PxCxK[0, c], ~diverged_CxK[c]) for c in range(2)))
  result = api.SusceptibilityResult.__new__(api.SusceptibilityResult)
  result.chi_per_chain, result.diverged, result.chi_stderr = per_chain_PxCxK, diverged_CxK, np.array([err])
  expected = [scipy.stats.t.ppf(0.975, 1) * err[0], scipy.stats.t.ppf(0.975, 2) * err[1]]
  np.testing.assert_allclose(result.interval()[0], expected, rtol=1e-10)
  tokens = per_token.PerTokenResult.__new__(per_token.PerTokenResult)
  tokens.chi_per_chain = np.moveaxis(per_chain_PxCxK, 0, -1)[..., None, :]  # [C, K, O=1, J=1]
  tokens.chi_stderr = np.array(err).reshape(2, 1, 1)
  tokens.component_names = ["full", "head"]
  tokens.diagnostics = {name: types.SimpleNamespace(diverged_chains=list(np.flatnonzero(diverged_CxK[c])))
                        for c, name in enumerate(tokens.component_names)}
  np.testing.assert_allclose(tokens.interval().ravel(), expected, rtol=1e-10)


def test_float64_under_x64_keeps_its_precision():
  """Under JAX's x64 mode a float64 loss runs (it stopped in a while_loop's carry types: float32 moments against
  float64 values) and keeps φ, L_B(w*) and the moments in float64, so an offset of 1e4 added to every loss, which
  halves the LLC in float32 (`test_health`), changes it only by float64 rounding here."""
  with jax.enable_x64(True):
    data = {k: np.asarray(v, np.float64) for k, v in toys.quadratic_dataset(np.random.default_rng(0), 64,
                                                                            np.array([0.5, 1.0, 2.0]), 0.1).items()}
    w_star = {k: np.asarray(v, np.float64) for k, v in toys.quadratic_minimum(data).items()}
    cfg = sj.SGLDConfig(step_size=1e-3, localization=10.0, nbeta=100.0, num_chains=2, num_draws=40, mala_every=5)
    runs = [sj.estimate_llc(lambda p, b, offset=offset: offset + toys.quadratic_loss(p, b), w_star, data,
                            config=cfg, batch_size=16, progress=False) for offset in (0.0, 1e4)]
  assert runs[0].trace.dtype == np.float64 and "resolution" not in runs[1].status
  np.testing.assert_allclose(runs[1].mean, runs[0].mean, rtol=1e-6)
  assert abs(runs[0].mean) > 0.1


# ---- bad input: clear errors that name the input, before compiling ---------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(delta_h=1.5), r"delta_h=1.5 must lie strictly between 0 and 1"),
    (dict(delta_h=0.0), r"delta_h=0.0"),
    (dict(batch_size=0), r"batch_size=0"),
    (dict(batch_size=100), r"base data has 64 samples, fewer than batch_size=100"),
    (dict(microbatch_size=-1), r"microbatch_size=-1"),
    (dict(chi_form="bogus"), r"chi_form='bogus'"),
])
def test_bad_settings(gaussian_problem, kwargs, match):
  base, probes, w_star, comps = gaussian_problem
  with pytest.raises(ValueError, match=match):
    sj.estimate_susceptibilities(quadratic_loss, w_star, comps, base, probes, **{"batch_size": 32, **kwargs})


def test_bad_inputs_name_what_is_wrong(gaussian_problem):
  base, probes, w_star, comps = gaussian_problem
  call = lambda **kw: sj.estimate_susceptibilities(
      **{"loss_fn": quadratic_loss, "params": w_star, "components": comps, "base": base, "probes": probes,
         "batch_size": 32, **kw})
  with pytest.raises(ValueError, match="must be a mapping that contains 'full'"):
    call(components={"first3": {"w": FIRST3}})
  with pytest.raises(ValueError, match="component 'nothing': mask selects no parameters"):
    call(components={"full": None, "nothing": {"w": np.zeros(D, bool)}})
  with pytest.raises(ValueError, match=r"component 'bad': mask structure does not match.*unexpected leaves: \['v'\]"):
    call(components={"full": None, "bad": {"v": FIRST3}})
  with pytest.raises(ValueError, match=r"component 'wide': mask leaf w has shape \(7,\)"):
    call(components={"full": None, "wide": {"w": np.ones(7, bool)}})
  with pytest.raises(ValueError, match=r"params leaf w contains NaN"):
    call(params={"w": np.full(D, np.nan, np.float32)})
  for dtype in (np.int32, jnp.bfloat16, np.float16):  # (bf16's numpy kind is "V"; fp16 failed deep inside JAX)
    with pytest.raises(TypeError, match=rf"params leaf w has dtype {jnp.dtype(dtype)}; SGLD needs float32 \(or "
                                        r"float64\) params.*cast them"):
      call(params={"w": jnp.asarray(w_star["w"]).astype(dtype)})
  with pytest.raises(TypeError, match=r"components: every name must be a string.*\[3\]"):
    call(components={"full": None, 3: {"w": FIRST3}})
  with pytest.raises(TypeError, match=r"config must be a suscept_jax.SGLDConfig, not a dict: SGLDConfig\(\*\*config\)"):
    call(config={"num_chains": 2})
  with pytest.raises(TypeError, match=r"seed must be an integer, not a .*Array"):
    call(seed=jax.random.key(0))
  with pytest.raises(ValueError, match=r"params has no array leaves"):
    call(params={})
  with pytest.raises(TypeError, match=r"component 'text': mask leaf w has dtype <U1; expected bool or numbers"):
    call(components={"full": None, "text": {"w": np.array(["a"] * D)}})
  with pytest.raises(ValueError, match=r"base data: every array needs the same leading \(sample\) axis.*\[10, 64\]"):
    call(base={"a": base["a"], "s": base["s"][:10]})
  with pytest.raises(ValueError, match=r"probe 'tiny' has 5 samples, fewer than batch_size=32"):
    call(probes={"tiny": jax_tree_head(base, 5)})
  with pytest.raises(ValueError, match=r"probe 'odd' has pytree structure"):
    call(probes={"odd": {"a": base["a"]}})
  with pytest.raises(ValueError, match=r"probe 'wrongshape': sample shape/dtype"):
    call(probes={"wrongshape": {"a": base["a"][:, :3], "s": base["s"][:, :3]}})
  with pytest.raises(ValueError, match=r"base data is empty"):
    call(base={"a": base["a"][:0], "s": base["s"][:0]})
  with pytest.raises(ValueError, match="probes must be a non-empty mapping"):
    call(probes={})
  with pytest.raises(ValueError, match=r"loss_fn must return per-sample losses of shape \[B\]"):
    call(loss_fn=lambda w, b: quadratic_loss(w, b).sum())
  with pytest.raises(ValueError, match=r"loss_fn must return floating-point losses; it returned int32"):
    call(loss_fn=lambda w, b: (100 * quadratic_loss(w, b)).astype(jnp.int32))  # (sampled noise about w*)


def test_masks_of_another_mapping_type_and_the_mask_helpers(gaussian_problem):
  """A flax FrozenDict mask fits dict params (the same leaf paths); count_free and preview read None as the
  full model and check a mask as the estimators do (they zipped leaves by position: a mask of another leaf
  previewed the wrong parameter)."""
  base, probes, w_star, _ = gaussian_problem
  params = {"w": w_star["w"], "v": np.zeros((2, 3), np.float32)}
  assert sj.count_free(None, params) == D + 6 and [row[0] for row in sj.preview(None, params)] == ["v", "w"]
  assert sj.count_free({"v": False, "w": FIRST3}, params) == 3
  assert sj.preview({"v": np.array([True, False])[:, None], "w": False}, params) == [("v", (2, 3), 3, 6)]
  for bad, match in [({"w": True}, r"count_free: mask structure does not match.*missing leaves: \['v'\]"),
                     ({"v": 0.5, "w": 0}, r"count_free: mask leaf v holds values other than 0 and 1")]:
    with pytest.raises(ValueError, match=match):
      sj.count_free(bad, params)
  # Matched by path, not position: params keyed by 2, 10 and a mask keyed by "2", "10" (whose leaves sort the
  # other way) were refused as "the same leaves in another order", while keys 0, 1 with "0", "1" passed.
  by_int = {2: np.ones(3, np.float32), 10: np.float32(0.0)}
  assert sj.count_free({"2": np.array([0, 1, 0]), "10": 0}, by_int) == 1
  assert sj.count_free({"2": 0, "10": 1}, by_int) == 1
  names, stacked = sj.stack_masks({"full": None, "one": {"2": np.array([0, 1, 0]), "10": 0}}, by_int)
  np.testing.assert_array_equal(stacked[2][1], [False, True, False])
  assert not stacked[10][1]
  frozen = flax.core.FrozenDict({"w": FIRST3})
  names, masks_C = sj.stack_masks({"full": None, "first3": frozen}, w_star)
  np.testing.assert_array_equal(masks_C["w"][1], FIRST3)
  assert isinstance(masks_C, dict)  # (the params' structure)


def test_sgld_config_refuses_values_of_the_wrong_kind():
  for kw, match in [(dict(num_chains=2.5), "num_chains=2.5 must be an integer"),
                    (dict(num_draws="10"), "num_draws='10' must be an integer"),
                    (dict(mala_every=True), "mala_every=True must be an integer"),
                    (dict(step_size="1e-3"), "step_size='1e-3' must be a number")]:
    with pytest.raises(TypeError, match=match):
      sj.SGLDConfig(**kw)
  assert sj.SGLDConfig(num_chains=np.int64(2), step_size=np.float32(1e-3), nbeta=30).num_chains == 2


def test_mix_keeps_the_kind_of_data():
  rows = np.arange(20 * 3).reshape(20, 3)
  mixed = sj.mix(rows, -rows, 0.1)
  take = sj.mixing_pattern(20, 0.1)
  assert isinstance(mixed, np.ndarray) and take.sum() == 2
  np.testing.assert_array_equal(mixed[take], -rows[take])
  np.testing.assert_array_equal(mixed[~take], rows[~take])
  as_dict = sj.mix({"x": rows, "y": rows[:, 0]}, {"x": -rows[:15], "y": -rows[:15, 0]}, 0.1)
  assert as_dict["x"].shape == (15, 3)
  np.testing.assert_array_equal(as_dict["y"], np.where(sj.mixing_pattern(15, 0.1), -rows[:15, 0], rows[:15, 0]))


def test_warnings_point_at_the_users_call(gaussian_problem):
  base, probes, w_star, comps = gaussian_problem
  config = sj.SGLDConfig(num_chains=1, num_draws=20)  # (one chain: no error bar, a warning)
  with pytest.warns(sj.SusceptibilityWarning) as caught:
    sj.estimate_susceptibilities(quadratic_loss, w_star, comps, base, probes, config=config, batch_size=32,
                                 progress=False)
  assert {Path(w.filename).name for w in caught} == {Path(__file__).name}, [w.filename for w in caught]


def test_a_printed_result_shows_numbers_and_shapes_not_traces(gaussian_problem):
  base, probes, w_star, _ = gaussian_problem
  config = sj.SGLDConfig(num_draws=300, mala_every=0)
  llc = sj.estimate_llc(quadratic_loss, w_star, base, config=config, batch_size=32, progress=False)
  text = repr(llc)
  assert text.startswith(f"LLCResult(mean={llc.mean:.4g}, stderr=") and "trace=float32[4, 300]" in text, text
  assert len(text) < 1000 and "\n" not in text, text  # (the dataclass default printed all 1200 trace values)


def jax_tree_head(tree, k):
  return {key: value[:k] for key, value in tree.items()}


# ---- data faults are data faults ------------------------------------------------------------------------------

def _with_nan_sample(data, index):
  out = {k: v.copy() for k, v in data.items()}
  out["a"][index] = np.nan
  return out


def _first_draw_batch(num, batch_size, stream, config):
  """Sample indices of a stream's first evaluation batch (what the preflight checks)."""
  return mixing.BatchSchedule(num, batch_size, streams.stream_seed(0, 0, stream)).indices(
      config.num_burnin + config.steps_between_draws)


def test_a_nan_sample_seen_by_the_preflight_is_named_before_sampling(gaussian_problem):
  base, probes, w_star, comps = gaussian_problem
  config = sj.SGLDConfig(num_chains=2, num_draws=10)
  bad = int(_first_draw_batch(N, 16, 0, config)[3])
  with pytest.raises(sj.DataFaultError, match=rf"base data: the loss at w\* .* not finite for sample\(s\) \[{bad}\]"):
    sj.estimate_susceptibilities(quadratic_loss, w_star, comps, _with_nan_sample(base, bad), probes, config=config,
                                 batch_size=16, progress=False)
  with pytest.raises(sj.DataFaultError, match=rf"probe 'curvy': .* sample\(s\) \[{bad}\]"):
    sj.estimate_susceptibilities(quadratic_loss, w_star, comps, base, {"curvy": _with_nan_sample(probes["curvy"], bad)},
                                 config=config, batch_size=16, progress=False)


def _unchecked_index(config):
  checked = set(_first_draw_batch(N, 16, 0, config)) | set(_first_draw_batch(N, 16, 1, config))
  return next(i for i in range(N) if i not in checked)


def _first_batch_holding(index, config, batch_size):
  """(block, chain) of the first evaluation batch (by block, then chain) that holds base sample `index`."""
  for block in range(config.num_draws + 1):
    for chain in range(config.num_chains):
      step = config.num_burnin + block * config.steps_between_draws
      if index in mixing.BatchSchedule(N, batch_size, streams.stream_seed(0, 0, chain)).indices(step):
        return block, chain
  raise AssertionError(f"sample {index} is in no evaluation batch")


def test_a_nan_base_sample_beyond_the_preflight_is_a_data_fault_named_before_sampling(gaussian_problem, capsys,
                                                                                       monkeypatch):
  base, probes, w_star, comps = gaussian_problem
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=2, num_draws=40)
  bad = _unchecked_index(config)
  block, chain = _first_batch_holding(bad, config, 16)
  assert block > 1  # not a batch the preflight checks

  def sampled(*args, **kwargs):
    raise AssertionError("the chains were sampled before the fault was found")

  monkeypatch.setattr(sampler, "_sample_blocks", sampled)
  for progress in (False, True):
    message = rf"base data: .* sample\(s\) \[{bad}\] \(in the evaluation batch of draw {block} of chain {chain}\)"
    with pytest.raises(sj.DataFaultError, match=message) as raised:
      sj.estimate_susceptibilities(quadratic_loss, w_star, comps, _with_nan_sample(base, bad), probes, config=config,
                                   batch_size=16, progress=progress)
  # Its own bar is closed while the traceback (which keeps the frames alive, as a notebook does) is still held:
  # the error starts on a line of its own.
  from tqdm import tqdm
  assert raised.tb is not None and not tqdm._instances and capsys.readouterr().err.endswith("\n")


def test_a_nan_probe_sample_beyond_the_preflight_is_a_data_fault_named_before_sampling(gaussian_problem,
                                                                                        monkeypatch):
  """Every probe sample the run places is checked at w* before sampling (`anchor_table.check_probe_samples`): it
  was raised for only when the preflight's first batches held it, else its draws were dropped with a warning."""
  base, probes, w_star, comps = gaussian_problem
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=2, num_draws=200)
  bad = _unchecked_index(config)

  def sampled(*args, **kwargs):
    raise AssertionError("the chains were sampled before the fault was found")

  monkeypatch.setattr(sampler, "_sample_blocks", sampled)
  faulty = {"curvy": probes["curvy"], "faulty": _with_nan_sample(probes["curvy"], bad)}
  with pytest.raises(sj.DataFaultError, match=rf"probe 'faulty': the loss at w\* .* sample\(s\) \[{bad}\] \(placed "
                                              rf"first in the evaluation batch of draw \d+ of chain [01]\)"):
    sj.estimate_susceptibilities(quadratic_loss, w_star, comps, base, faulty, config=config, batch_size=16,
                                 delta_h=0.5, progress=False)


def test_a_probe_sample_whose_loss_overflows_away_from_w_star_drops_its_draws_and_is_reported(gaussian_problem):
  """Finite at w*, not finite where the chains go: that probe's contribution is dropped draw by draw (counted,
  flagged, warned), no chain is killed, and the warning says the fault is not in the data at w*."""
  base, probes, w_star, comps = gaussian_problem
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=2, num_draws=200)
  bad = _unchecked_index(config)
  trap = lambda data, index=None: {**data, "trap": (np.arange(N) == index).astype(np.float32)}  # noqa: E731
  at_star = jnp.asarray(w_star["w"])
  loss = lambda p, b: quadratic_loss(p, b) + jnp.where(  # noqa: E731  (inf for a trapped sample once w moved)
      (b["trap"] > 0) & jnp.any(p["w"] != at_star), jnp.inf, 0.0)
  probes = {"curvy": trap(probes["curvy"]), "faulty": trap(probes["curvy"], bad)}
  res = sj.estimate_susceptibilities(loss, w_star, comps, trap(base), probes, config=config, batch_size=16,
                                     delta_h=0.5, progress=False)
  dropped = res.probe_draws_dropped
  assert np.all(dropped[0] == 0) and np.all(dropped[1] > 0)  # only the faulty probe loses draws
  assert not res.diverged.any() and np.all(np.isfinite(res.chi))  # no chain was killed by it
  assert any("probe 'faulty'" in w and "finite at w*" in w for w in res.warnings), res.warnings
  # Its χ comes from the draws that remain: close to the clean probe's (same samples otherwise).
  np.testing.assert_allclose(res.chi[1], res.chi[0], atol=4 * res.chi_stderr[0].max())
  assert {"probe_draws_dropped", "realised_delta_h"} <= set(res.records()[0])


def test_full_must_free_every_parameter(gaussian_problem):
  base, probes, w_star, comps = gaussian_problem
  with pytest.raises(ValueError, match=r"component 'full' must free every parameter .* freezes 3 of them"):
    sj.estimate_susceptibilities(quadratic_loss, w_star, {"full": {"w": FIRST3}}, base, probes, batch_size=16)
  # An explicit all-ones mask is fine.
  config = sj.SGLDConfig(num_chains=2, num_draws=2)
  sj.estimate_susceptibilities(quadratic_loss, w_star, {"full": {"w": np.ones(D, bool)}}, base, probes,
                               config=config, batch_size=16, progress=False)


def test_one_draw_gives_no_chi_and_says_so(gaussian_problem):
  """A covariance over one draw is 0: "full"'s eq. 41 χ came out exactly 0 ± 0 at num_draws=1, its status naming
  only R̂ and ESS, read as a measured 0. Under 2 draws that observed the probe there is no χ; the LLC stays."""
  base, probes, w_star, comps = gaussian_problem
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=4, num_draws=1)
  res = sj.estimate_susceptibilities(quadratic_loss, w_star, comps, base, probes, config=config, batch_size=64,
                                     delta_h=0.1, progress=False)
  assert np.isnan(res.chi).all() and np.isfinite(res.llc).all()
  assert all("χ undefined: no chain observed this probe at 2 draws or more" in s for s in res.status.ravel())
  two = sj.estimate_susceptibilities(quadratic_loss, w_star, comps, base, probes, progress=False, batch_size=64,
                                     delta_h=0.1, config=dataclasses.replace(config, num_draws=2))
  assert np.isfinite(two.chi).all()
