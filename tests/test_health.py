"""Numbers that should not be trusted say so: status per cell, Python warnings of our own category, and an API
that refuses what it cannot mean."""
import warnings

import numpy as np
import pytest

import suscept_jax as sj
from suscept_jax import health, masks, sampler, toys

D, N = 3, 64


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  base = toys.quadratic_dataset(rng, N, np.array([0.5, 1.0, 2.0]), 0.1)
  probe = toys.quadratic_dataset(rng, N, np.array([2.0, 1.0, 0.5]), 0.1)
  return base, {"p": probe}, toys.quadratic_minimum(base), {"full": None, "c0": {"w": np.array([True, False, False])}}


def run(problem, recwarn=None, **config):
  base, probes, w_star, comps = problem
  cfg = sj.SGLDConfig(**{"step_size": 1e-3, "localization": 10.0, "nbeta": 100.0, "num_chains": 4, "num_draws": 200,
                         "mala_every": 5, **config})
  return sj.estimate_susceptibilities(toys.quadratic_loss, w_star, comps, base, probes, config=cfg, batch_size=N,
                                      delta_h=0.25, progress=False)


def test_a_healthy_run_is_ok_and_silent(problem):
  with warnings.catch_warnings():
    warnings.simplefilter("error", sj.SusceptibilityWarning)
    res = run(problem, step_size=5e-3, num_draws=400)
  assert np.all(res.status == "ok") and res.warnings == []
  assert all(row["status"] == "ok" for row in res.records())


def test_each_component_test_on_stated_values():
  """The thresholds as stated (MALA is tested on given values: a Gaussian toy cannot drive it below ≈ 0.5,
  since a Langevin step near its stability limit reflects the chain and the Metropolis ratio turns symmetric)."""
  def diag(**kw):
    base = dict(loss_trace=None, phi_trace=np.ones((4, 100)), r_hat=1.0, ess_bulk=400.0, ess_tail=400.0,
                r_hat_chi=np.ones(1), ess_bulk_chi=np.full(1, 400.0), mala_acceptance=0.9, frac_phi_negative=0.0,
                diverged_chains=[], diverged_at_draw=[])
    return sj.diagnostics.ComponentDiagnostics(**{**base, **kw})
  assert health.component_flags(diag(), 3.0, 4) == []
  assert health.component_flags(diag(mala_acceptance=1e-8), 3.0, 4) == ["MALA acceptance 1e-08 < 0.2"]
  assert health.component_flags(diag(r_hat=1.65, ess_bulk=10.7), 3.0, 4) == ["R̂ 1.65 > 1.1", "ESS 10.7 < 50"]
  assert health.component_flags(diag(ess_bulk=49.6), 3.0, 4) == ["ESS 49.6 < 50"]  # (never "ESS 50 < 50")
  assert health.component_flags(diag(r_hat=1.1044), 3.0, 4) == ["R̂ 1.104 > 1.1"]  # (it read "R̂ 1.10 > 1.1")
  assert health.probe_flags(1.1004, 400.0, 0, 0.1, 0.1) == ["R̂(φ·ΔL) 1.1004 > 1.1"]
  assert health.component_flags(diag(diverged_chains=[1], diverged_at_draw=[3]), 3.0, 4) == ["1/4 chains diverged"]
  # The start is flagged only when the climb is both significant and large enough to matter (each alone passed
  # with "or" in place of "and"): 100 of 1000 draws lower by 0.1, chains agreeing, moves ⟨φ⟩ by 1 %: no flag;
  # lower by 1.0 (10 %): flagged; lower by 4.0 in one chain only (10 %, not significant across 4): no flag.
  climb = lambda drop_K: np.concatenate([1.0 - np.asarray(drop_K)[:, None] * np.ones((4, 100)), np.ones((4, 900))],
                                        axis=1) + 1e-3 * np.random.default_rng(0).standard_normal((4, 1000))
  assert health.component_flags(diag(phi_trace=climb([0.1] * 4)), 3.0, 4) == []
  assert health.component_flags(diag(phi_trace=climb([1.0] * 4)), 3.0, 4) == [
      "non-stationary start (first 10% of draws below the rest; moves ⟨φ⟩ by 10%)"]
  assert health.component_flags(diag(phi_trace=climb([4.0, 0, 0, 0])), 3.0, 4) == []
  assert health.component_flags(diag(), -5.81, 4) == ["negative LLC (-5.81): w* is not a local minimum"]
  nan = float("nan")
  assert health.component_flags(diag(r_hat=nan, ess_bulk=nan), 3.0, 4) == [
      health.UNDEFINED.format("R̂"), health.UNDEFINED.format("ESS")]
  assert health.component_flags(diag(diverged_chains=[1, 2, 3], diverged_at_draw=[3, 3, 3]), 3.0, 4) == [
      "3/4 chains diverged", "no error bar: 1 usable chain (needs 2 or more)"]
  assert health.component_flags(diag(mala_acceptance=nan), 3.0, 4) == []  # (no MALA moves measured)
  assert health.probe_flags(1.0, 400.0, 0, 0.094, 0.1) == ["realised δh 0.094 vs 0.1"]
  assert health.probe_flags(nan, nan, 0, 0.1, 0.1) == []  # (a constant φ·ΔL, e.g. probe = base: χ is exact)
  assert health.probe_flags(1.0, 400.0, 3, 0.1, 0.1) == ["3 probe draws dropped (non-finite loss)"]
  assert health.undefined_chi_flags(nan, False, True) == [health.FULL_DIVERGED]
  assert health.undefined_chi_flags(nan, False, False) == ["χ undefined: no chain observed this probe at 2 draws or more"]
  assert health.undefined_chi_flags(nan, True, True) == [] and health.undefined_chi_flags(0.3, False, True) == []


def test_phi_within_a_few_float_steps_of_the_loss_is_flagged():
  """φ = L_B(w) − L_B(w*) of losses near 1e4 in float32 (spacing 2**-10 ≈ 1e-3) is rounding: an offset of 1e4
  added to a quadratic's losses halved its LLC here, with status ok. The flag counts ⟨φ⟩ in float steps of the
  run's largest |L_B(w*)|, in the statistics' dtype (float64 steps are 2**29 times finer)."""
  assert health.phi_steps(2e-3, np.float32([9000.0, 10000.0])) == pytest.approx(2e-3 / 2 ** -10)
  assert health.phi_steps(2e-3, np.float64([10000.0])) == pytest.approx(2e-3 / 2 ** -39)
  assert health.phi_steps(2e-3, np.float32([np.nan])) == float("inf")
  data = toys.quadratic_dataset(np.random.default_rng(0), N, np.array([0.5, 1.0, 2.0]), 0.1)
  cfg = sj.SGLDConfig(step_size=1e-3, localization=10.0, nbeta=100.0, num_chains=2, num_draws=40, mala_every=0)
  llc = lambda offset: sj.estimate_llc(lambda p, b: offset + toys.quadratic_loss(p, b), toys.quadratic_minimum(data),
                                       data, config=cfg, batch_size=N, progress=False)
  assert "resolution" not in llc(0.0).status
  with pytest.warns(sj.SusceptibilityWarning, match="float steps of L"):
    assert "resolution: ⟨φ⟩ spans" in llc(1e4).status


def test_a_chi_left_undefined_by_the_full_models_chains_is_not_ok(problem):
  """Every chain of "full" diverges (a step only its direction cannot take); c0's chains are fine, but its eq. 41
  χ needs ⟨ΔL⟩_full: NaN, and its status says why instead of "ok"."""
  base, probes, w_star, _ = problem
  comps = {"full": None, "c0": {"w": np.array([True, False, False])}}
  cfg = sj.SGLDConfig(step_size=1e-3, localization=10.0, nbeta=100.0, num_chains=2, num_draws=20, mala_every=0)
  steep = lambda p, b: toys.quadratic_loss(p, b) + 1e9 * (p["w"][2] - w_star["w"][2]) ** 2  # (only full moves w[2])
  with pytest.warns(sj.SusceptibilityWarning):
    res = sj.estimate_susceptibilities(steep, w_star, comps, base, probes, config=cfg, batch_size=N, delta_h=0.25,
                                       progress=False)
  assert res.diverged[0].all() and not res.diverged[1].any() and np.isnan(res.chi[0, 1])
  assert health.FULL_DIVERGED in res.status[0, 1] and health.FULL_DIVERGED in res.records()[1]["status"]


def test_a_run_where_everything_diverges_is_not_silent(problem):
  with pytest.warns(sj.SusceptibilityWarning, match="all 4 chains diverged"):
    res = run(problem, step_size=1.0, localization=0.0, num_draws=20, mala_every=0)
  assert np.all(np.isnan(res.chi)) and all(s.startswith("all chains diverged") for s in res.status.ravel())


def test_probe_samples_met_only_by_diverged_chains_are_not_suspects(problem):
  """A diverged chain's probe losses overflow with it: the sample candidates for a data fault are the
  samples whose loss was not finite at a draw that counts, and here there is none."""
  base, probes, w_star, comps = problem
  names, masks_C = masks.stack_masks(comps, w_star)
  config = sj.SGLDConfig(step_size=1.0, localization=0.0, nbeta=100.0, num_chains=4, num_draws=20, mala_every=0)
  out = sampler.run(toys.quadratic_loss, w_star, names, masks_C, base, probes, config=config, batch_size=N,
                    delta_h=0.25, progress=False)
  assert out.diverged.all() and np.isnan(out.delta_loss_trace).any()  # the probe losses did overflow
  assert out.nonfinite_probe_samples == {"p": []}


def test_a_run_dominated_by_its_start_is_flagged(problem):
  """ε = 1e-5 for 40 draws: the chains are still climbing away from w* (relaxation ≈ 1000 steps)."""
  with pytest.warns(sj.SusceptibilityWarning, match="non-stationary start"):
    res = run(problem, step_size=1e-5, num_draws=40, mala_every=0)
  assert "non-stationary start" in res.status[0, 0]


@pytest.mark.parametrize("num_chains, num_draws, expected", [(1, 100, "no error bar"), (4, 3, "undefined")])
def test_a_run_too_short_or_narrow_to_judge_is_not_ok(problem, num_chains, num_draws, expected):
  """One chain has no standard error, and 3 draws leave R̂ and ESS NaN: neither may read as a passed test."""
  with pytest.warns(sj.SusceptibilityWarning, match=expected):
    res = run(problem, num_chains=num_chains, num_draws=num_draws, mala_every=0)
  assert all(expected in s for s in res.status.ravel()), res.status
  base, _, w_star, _ = problem
  cfg = sj.SGLDConfig(step_size=1e-3, localization=10.0, nbeta=100.0, num_chains=num_chains, num_draws=num_draws)
  with pytest.warns(sj.SusceptibilityWarning, match=expected):
    assert expected in sj.estimate_llc(toys.quadratic_loss, w_star, base, config=cfg, batch_size=N,
                                       progress=False).status


def test_a_checkpoint_that_is_not_a_minimum_gets_a_negative_llc_flag():
  rng = np.random.default_rng(1)
  data = toys.quadratic_dataset(rng, N, np.ones(D), 0.1)
  w_off = {"w": toys.quadratic_minimum(data)["w"] + 0.5}  # the loss falls as the chain moves towards the minimum
  config = sj.SGLDConfig(step_size=1e-3, localization=1.0, nbeta=100.0, num_chains=4, num_draws=100)
  with pytest.warns(sj.SusceptibilityWarning, match="negative LLC"):
    res = sj.estimate_llc(toys.quadratic_loss, w_off, data, config=config, batch_size=N, progress=False)
  assert res.mean < 0 and "negative LLC" in res.status


def test_start_shift_test_on_known_traces():
  flat = np.random.default_rng(0).normal(1.0, 0.1, (4, 100))
  diff, se, shift = health.start_shift(flat)
  assert abs(diff) < 3 * se and shift < health.START_SHIFT
  climbing = flat * np.minimum(1.0, np.arange(100) / 20.0)  # 20 draws to rise
  diff, se, shift = health.start_shift(climbing)
  assert diff > health.START_Z * se and shift > health.START_SHIFT


def test_masks_must_be_zero_or_one(problem):
  base, probes, w_star, _ = problem
  with pytest.raises(ValueError, match=r"component 'half': mask leaf w holds values other than 0 and 1 \(e.g. 0.5\)"):
    sj.estimate_susceptibilities(toys.quadratic_loss, w_star, {"full": None, "half": {"w": np.array([0.5, 1, 0])}},
                                 base, probes, batch_size=N)
  names, stacked = sj.stack_masks({"full": None, "ints": {"w": np.array([1, 0, 1])}}, w_star)
  assert stacked["w"].dtype == bool and stacked["w"][1].tolist() == [True, False, True]


def test_regex_mask_that_matches_nothing_lists_the_paths():
  params = {"blocks": {"0": {"W_Q": np.zeros(2)}}, "embed": np.zeros(3)}
  with pytest.raises(ValueError, match=r"'blocks/1/.\*' matches no parameter path.*the paths are: blocks/0/W_Q, embed"):
    sj.regex_mask(params, "blocks/1/.*")
  with pytest.raises(ValueError, match="not a regular expression"):
    sj.regex_mask(params, "(")


def test_results_are_named_and_readable(problem):
  res = run(problem, num_draws=50)
  table = res.chi_with("covariance")
  assert isinstance(table, sj.ChiTable) and table.chi.shape == table.stderr.shape == (1, 2)
  text = repr(res.diagnostics["full"])
  assert text.startswith("ComponentDiagnostics(r_hat=") and "array" not in text and len(text) < 400
  assert set(res.records()[0]) >= {"status", "chi_ci95", "r_hat_chi", "realised_delta_h"}


def test_the_readme_examples_are_what_the_code_says():
  """The README's status examples are produced by suscept_jax.health, not written by hand."""
  from pathlib import Path

  def diag(**kw):
    base = dict(loss_trace=None, phi_trace=np.ones((4, 100)), r_hat=1.0, ess_bulk=400.0, ess_tail=400.0,
                r_hat_chi=np.ones(1), ess_bulk_chi=np.full(1, 400.0), mala_acceptance=0.9, frac_phi_negative=0.0,
                diverged_chains=[], diverged_at_draw=[])
    return sj.diagnostics.ComponentDiagnostics(**{**base, **kw})
  climbing = np.random.default_rng(0).normal(1.0, 0.02, (4, 100)) * np.minimum(1.0, (np.arange(100) + 1) / 24.0)
  examples = [
      health.status(health.component_flags(diag(r_hat=1.65, ess_bulk=10.7), -5.81, 4)),
      health.status(health.component_flags(diag(diverged_chains=[2], diverged_at_draw=[7], mala_acceptance=1e-8),
                                            3.0, 4)),
      health.status(health.component_flags(diag(phi_trace=climbing), 3.0, 4)),
      health.status(health.probe_flags(1.21, 400.0, 0, 0.094, 0.1)),
  ]
  readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
  block = readme.split("## Status and warnings")[1].split("```")[1].strip().splitlines()
  assert block == examples, examples
