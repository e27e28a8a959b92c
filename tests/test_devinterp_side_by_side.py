"""The devinterp side-by-side benchmark at tiny size: the job files, our half, the comparison (our own results
fed as both sides: z ≡ 0), and, where the devinterp virtualenv is built, the devinterp job on the same files."""
import dataclasses
import json
import re
import warnings

import numpy as np
import pytest

from benchmarks import devinterp_side_by_side as sbs
from suscept_jax.models import interop

COMPONENTS = ["full", "l0h1", "l1h0"]


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
  """(job_dir, settings, contexts, our Side): the tiny model's job files and both of our estimators' results."""
  settings = sbs.TINY
  cfg, params, _ = sbs.load_weights(settings)
  contexts = sbs.random_contexts(cfg, settings)
  job_dir = tmp_path_factory.mktemp("side_by_side")
  sbs.write_job(job_dir, cfg, params, contexts, settings, COMPONENTS)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # 8 draws trip our health checks (ESS, R̂): expected at this size
    side = sbs.run_ours(cfg, params, contexts, settings, COMPONENTS)
  return job_dir, settings, cfg, params, contexts, side


def test_job_files_hold_the_exported_weights_contexts_and_settings(ours):
  job_dir, settings, cfg, params, contexts, _ = ours
  job = json.loads((job_dir / "job.json").read_text())
  assert job["components"] == COMPONENTS and job["probes"] == ["repeats", "narrow"] and job["device"] == "cpu"
  assert job["tl_config"] == interop.transformer_lens_config(cfg)
  assert job["sgld"] == dict(lr=settings.step_size, n_beta=settings.nbeta, localization=settings.localization,
                             num_chains=settings.num_chains, num_draws=settings.num_draws,
                             batch_size=settings.batch_size)
  expected = interop.to_transformer_lens(params, cfg)
  with np.load(job_dir / "weights.npz") as weights:
    assert sorted(weights.files) == sorted(expected)
    for key in expected:
      np.testing.assert_array_equal(weights[key], expected[key])
  with np.load(job_dir / "contexts.npz") as saved:
    assert saved.files == ["base", "repeats", "narrow"]
    for name in saved.files:
      np.testing.assert_array_equal(saved[name], contexts[name])
      assert saved[name].shape[1] == cfg.n_ctx and saved[name].max() < cfg.d_vocab
  assert contexts["repeats"].shape[0] == contexts["narrow"].shape[0] == settings.batch_size * sbs.BATCHES_PER_DRAW


def test_our_half_gives_every_table_on_the_common_grid(ours):
  _, settings, cfg, _, contexts, side = ours
  P, C, O, J = 2, len(COMPONENTS), settings.probe_rows, cfg.n_ctx - 1
  assert side.chi_PxC.shape == side.chi_se_PxC.shape == (P, C) and side.llc_C.shape == (C,)
  for probe in ("repeats", "narrow"):
    assert side.token_chi[probe].shape == side.token_se[probe].shape == (C, O, J)
    np.testing.assert_array_equal(side.context_ids[probe], contexts[probe])
  assert np.isfinite(side.chi_PxC).all() and np.isfinite(side.token_chi["repeats"]).all()
  assert set(side.seconds) == {"dataset", "per_token", "dataset_compiled", "per_token_compiled"}
  assert all(s > 0 for s in side.seconds.values())


def test_our_half_runs_at_the_precision_asked_for(ours):
  """--precision / --attention reach both of our loss functions (default: float32 with plain attention, as
  devinterp computes); bfloat16 matmuls move the tiny model's per-token NLL by rounding only."""
  from suscept_jax.models.config import Numerics
  _, _, cfg, params, contexts, _ = ours
  assert sbs.parse_args([]).precision == "float32" and sbs.parse_args([]).attention == "plain"
  args = sbs.parse_args(["--precision", "bfloat16", "--attention", "fused"])
  numerics = Numerics(attention=args.attention, precision=args.precision)
  (exact, exact_tokens), (rounded, rounded_tokens) = sbs.our_loss_fns(cfg), sbs.our_loss_fns(cfg, numerics)
  for fn in (exact, exact_tokens):
    assert fn.keywords["numerics"] == Numerics()
  for fn in (rounded, rounded_tokens):
    assert fn.keywords["numerics"] == numerics
  base = contexts["base"][:8]
  diff = np.abs(np.asarray(rounded_tokens(params, base)) - np.asarray(exact_tokens(params, base)))
  assert 0 < diff.max() < 0.01, diff.max()
  with pytest.raises(SystemExit):
    sbs.parse_args(["--precision", "float16"])


def _permuted(side, seed=0):
  """The same results with each probe's context rows in another order (as devinterp's observables have them)."""
  rng = np.random.default_rng(seed)
  perms = {p: rng.permutation(len(ids)) for p, ids in side.context_ids.items()}
  return dataclasses.replace(side, name="ours again",
                             token_chi={p: x[:, perms[p]] for p, x in side.token_chi.items()},
                             token_se={p: x[:, perms[p]] for p, x in side.token_se.items()},
                             context_ids={p: x[perms[p]] for p, x in side.context_ids.items()})


def test_comparison_of_our_results_with_themselves_agrees_exactly(ours):
  _, _, _, _, _, side = ours
  probes = ["repeats", "narrow"]
  comparison = sbs.compare(side, _permuted(side), COMPONENTS, probes, num_chains=2)
  assert np.all(comparison["chi_z"] == 0) and np.all(comparison["llc_z"] == 0)
  assert np.all(comparison["chi_p"] == 1) and np.all(comparison["llc_p"] == 1)
  for stats in comparison["per_token"].values():
    assert stats["frac_abs_z_gt_3"] == 0 and stats["mean_diff"] == 0 and stats["corr"] == pytest.approx(1.0)
  lines = []
  verdicts = sbs.report(side, {"ours again": _permuted(side)}, {"ours again": comparison}, COMPONENTS, probes,
                        log=lines.append)
  assert verdicts["agree_chi"] and verdicts["agree_llc_full"] and verdicts["agree_per_token"]
  assert verdicts["ratios"]["dataset"] == pytest.approx(1.0) and not verdicts["speed_dataset"]
  assert any("dataset   ratio   1.00×" in line and "FAIL" in line for line in lines)
  compiled = side.seconds["dataset"] / side.seconds["dataset_compiled"]
  assert verdicts["ratios_compiled"]["dataset"] == pytest.approx(compiled)
  assert any(line.startswith("ours again, programs compiled") and f"= {compiled:.2f}×" in line for line in lines)


def test_jackknife_over_chains_is_the_standard_error_of_a_mean_and_carries_a_shared_term():
  """devinterp's χ error bar: for a plain mean the jackknife equals s/√K exactly; for a statistic with a part
  that every replicate shares (θ = ⟨a⟩·⟨b⟩, as devinterp's head χ uses ⟨·⟩ over all of "full"'s chains) it
  matches the delta method, which the spread of the per-chain values a_k·⟨b⟩ does not."""
  rng = np.random.default_rng(0)
  x_KxN = rng.normal(size=(4, 50))
  left_out = sbs.leave_one_out_means(x_KxN)
  np.testing.assert_allclose(left_out[2], x_KxN[[0, 1, 3]].mean(axis=0))
  np.testing.assert_allclose(sbs.jackknife_se(left_out), x_KxN.std(axis=0, ddof=1) / 2)
  num = 4000
  a_K, b_K = rng.normal(2.0, 1.0, num), rng.normal(3.0, 2.0, num)
  replicates = sbs.leave_one_out_means(a_K) * sbs.leave_one_out_means(b_K)
  delta = np.sqrt((b_K.mean() ** 2 * a_K.var(ddof=1) + a_K.mean() ** 2 * b_K.var(ddof=1)) / num)
  assert sbs.jackknife_se(replicates) == pytest.approx(delta, rel=0.02)
  per_value_spread = (a_K * b_K.mean()).std(ddof=1) / np.sqrt(num)
  assert per_value_spread < 0.7 * delta


def test_row_order_and_z_scores():
  ours_ids = np.array([[1, 2], [3, 4], [5, 6]])
  assert sbs.row_order(ours_ids, ours_ids[[2, 0, 1]]).tolist() == [2, 0, 1]
  with pytest.raises(ValueError, match="not among ours"):
    sbs.row_order(ours_ids, np.array([[9, 9]]))
  np.testing.assert_allclose(sbs.z_score([1.0, 0.0], [0.3, 0.0], [0.0, 0.0], [0.4, 0.0]), [2.0, 0.0])


def test_devinterp_job_on_the_same_files(ours):
  venv = sbs.venv_dir()
  if not sbs.venv_ready(venv):
    pytest.skip(f"the devinterp virtualenv is not built at {venv}: run `python -m benchmarks.devinterp_side_by_side "
                f"--tiny` once (it installs {', '.join(sbs.REQUIREMENTS)} there), or point "
                f"SUSCEPT_JAX_DEVINTERP_VENV at such a virtualenv")
  job_dir, settings, cfg, _, _, side = ours
  sbs.run_devinterp(job_dir, venv)
  info = json.loads((job_dir / "devinterp_result.json").read_text())
  assert info["versions"]["devinterp"] == "2.0.1" and info["versions"]["transformer-lens"].startswith("3.")
  assert info["max_abs_diff_vs_returned_chi"] < 1e-6  # its per-chain χ averages to the χ it returned
  theirs = {variant: sbs.devinterp_side(job_dir, variant) for variant in sbs.VARIANTS}
  anchored, mapped = theirs["anchored"], theirs["mapped"]
  for form in theirs.values():
    assert form.chi_PxC.shape == side.chi_PxC.shape and np.isfinite(form.chi_PxC).all()
    assert np.isfinite(form.llc_C).all() and form.llc_C[0] > 0  # "full" moves away from w*
  # re-anchoring φ moves head χ by c·(⟨ℓ − L_base⟩_C − ⟨ℓ − L_base⟩_full); β shifts every token of a component alike
  shift = mapped.token_chi["repeats"] - anchored.token_chi["repeats"]
  np.testing.assert_allclose(shift, shift[:, :1, :1] * np.ones_like(shift), rtol=1e-5)  # float32 losses
  comparisons = {k: sbs.compare(side, form, COMPONENTS, ["repeats", "narrow"], num_chains=2)
                 for k, form in theirs.items()}
  assert comparisons["mapped"]["chi_z"].shape == (2, len(COMPONENTS))
  lines = []
  sbs.report(side, theirs, comparisons, COMPONENTS, ["repeats", "narrow"], log=lines.append)
  assert any("against mapped" in line for line in lines)



def test_agreement_is_judged_by_student_t_over_the_cells_not_by_a_normal_z():
  """Each side's stderr comes from 4 chains: a difference of 3 stderrs has p ≈ 0.02 (Welch's 6 d.o.f.), and 18
  cells are one check. Two of our own runs with other seeds failed 'every |z| ≤ 3' in 13 of 28 pairs."""
  from scipy import stats
  ours = np.r_[3.0 * np.sqrt(2), np.zeros(17)]  # cell 0: z = 3 with equal stderrs of 1 a side
  p = sbs.welch_p_values(ours, np.ones(18), np.zeros(18), np.ones(18), num_chains=4)
  assert p[0] == pytest.approx(2 * stats.t.sf(3.0, 6)) and np.all(p[1:] == 1)  # ≈ 0.024 (a normal z: 0.0027)
  assert sbs.welch_p_values([1.0], [1.0], [0.0], [0.0], num_chains=10**9)[0] == pytest.approx(
      2 * stats.norm.sf(1.0), rel=1e-6)  # one exact side, endless chains: the normal z
  # 18 cells: one at p 0.02 passes (0.02 × 18 > 0.05); one at 1e-4 fails; one cell alone at 0.02 fails at 0.05
  assert sbs.agree(np.r_[0.02, np.ones(17)]) and not sbs.agree(np.r_[1e-4, np.ones(17)])
  assert not sbs.agree(0.02) and sbs.agree(0.06)
  far = sbs.welch_p_values(np.r_[40.0, np.zeros(17)], np.ones(18), np.zeros(18), np.ones(18), num_chains=4)
  assert not sbs.agree(far)  # (a real disagreement, 28 combined stderrs, is still caught)


def test_virtualenv_markers_and_the_offline_build_refuses_an_empty_wheel_folder(tmp_path):
  """A virtualenv counts as built when its marker (written last) lists devinterp and transformer-lens as required
  here, with the pinned CPU torch (`build_venv`) or the machine's own (`build_venv_offline`, for an accelerator
  image with no package index)."""
  venv = tmp_path / "venv"
  assert not sbs.venv_ready(venv)
  venv.mkdir()
  for requirements, ready in [(list(sbs.REQUIREMENTS), True), (list(sbs.REQUIREMENTS[1:]) + ["torch (the machine's)"],
                                                                True), (["devinterp==1.0"], False)]:
    (venv / sbs.VENV_MARKER).write_text(json.dumps({"requirements": requirements}))
    assert sbs.venv_ready(venv) == ready
  (tmp_path / "wheels").mkdir()
  with pytest.raises(ValueError, match=r"--devinterp_wheels=.*wheels holds no \.whl files"):
    sbs.build_venv_offline(tmp_path / "other", tmp_path / "wheels")
  assert not (tmp_path / "other").exists()  # refused before anything is built


def test_the_accelerator_wheel_list_pins_what_the_job_requires():
  """devinterp_wheels_h200.txt (what the H200 image lacks, carried as wheels) agrees with REQUIREMENTS."""
  lines = [line.strip() for line in (sbs.JOB_SCRIPT.parent / "devinterp_wheels_h200.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
  pins = dict(line.split("==") for line in lines)
  assert len(pins) == len(lines)  # every line an exact pin
  assert f"devinterp=={pins['devinterp']}" in sbs.REQUIREMENTS
  assert "transformer-lens<4" in sbs.REQUIREMENTS and int(pins["transformer-lens"].split(".")[0]) < 4
  assert "torch" not in pins  # the machine's own


def test_contexts_from_dataset_specs_are_the_sweeps_tokenization_of_them(tiny, tmp_path):
  """--data: the base's first num_base contexts and each probe's first batch_size × 3, tokenized by the run's
  tokenizer exactly as the sweep loads them; written for --tokens and read back the same; bad input named."""
  from suscept_jax import checkpoints
  from suscept_jax.data import tokenizer as tokenizers_lib
  from suscept_jax_runners import pipeline
  _, run_dir, tok, data = tiny
  settings = dataclasses.replace(sbs.TINY, num_base=40)
  cfg = checkpoints.read_model_config(run_dir)
  specs = [str(data["mix"]), str(data["math"]), f"repeats:{data['prose']}"]
  contexts = sbs.dataset_contexts(cfg, settings, specs, run_dir, tok)
  assert list(contexts) == ["base", sbs.dataset_name(specs[1]), sbs.dataset_name(specs[2])]
  assert ":" not in list(contexts)[2] and "/" not in list(contexts)[1]
  tokenizer = tokenizers_lib.load_tokenizer(tok)
  for name, spec, rows in zip(contexts, specs, (40, settings.probe_rows, settings.probe_rows)):
    expected = np.asarray(pipeline.load_dataset(spec, tokenizer, cfg.n_ctx, max_contexts=rows))
    assert contexts[name].shape == (rows, cfg.n_ctx) and contexts[name].dtype == np.int32
    np.testing.assert_array_equal(contexts[name], expected)
  assert not np.array_equal(contexts[list(contexts)[2]], contexts[list(contexts)[1]])

  paths = sbs.write_contexts(tmp_path / "contexts", contexts)
  assert [p.name for p in paths] == [f"{name}.npy" for name in contexts]
  assert sbs.written_contexts(tmp_path / "contexts") == paths and sbs.written_contexts(tmp_path) is None
  assert sbs.write_contexts(tmp_path / "contexts", {"base": contexts["base"]}) == [paths[0]]  # rewritten: one file
  assert sorted(p.name for p in (tmp_path / "contexts").glob("*.npy")) == ["base.npy"]
  np.save(tmp_path / "mine.npy", np.zeros(3))
  with pytest.raises(ValueError, match=r"holds other \.npy files \(mine\.npy\)"):
    sbs.write_contexts(tmp_path, contexts)
  assert (tmp_path / "mine.npy").exists()
  paths = sbs.write_contexts(tmp_path / "contexts", contexts)
  again = sbs.file_contexts(cfg, settings, [str(p) for p in paths])
  assert list(again) == list(contexts)
  for name in contexts:
    np.testing.assert_array_equal(again[name], contexts[name])

  other_tok = tmp_path / "other.json"
  from tests import helpers
  tokenizers_lib.train_bpe_tokenizer(helpers.math_documents(60, seed=5), vocab_size=cfg.d_vocab, path=other_tok)
  with pytest.raises(ValueError, match="is not the one .* was trained with"):
    sbs.dataset_contexts(cfg, settings, specs, run_dir, other_tok)
  with pytest.raises(FileNotFoundError, match="--tokenizer"):
    sbs.dataset_contexts(cfg, settings, specs, run_dir, tmp_path / "missing.json")
  with pytest.raises(ValueError, match=f"--data {data['mix']}: .* need at least 30000"):
    sbs.dataset_contexts(cfg, dataclasses.replace(settings, batch_size=10_000), specs, run_dir, tok)
  with pytest.raises(ValueError, match="at most one of --tokens, --data"):
    sbs.load_contexts(cfg, settings, sbs.parse_args(["--data", *specs, "--random_tokens"]))
  with pytest.raises(ValueError, match="--data needs --run_dir"):
    sbs.load_contexts(cfg, settings, sbs.parse_args(["--data", *specs]))
  for flags in (["--tokens", *map(str, paths)], ["--run_dir", str(run_dir), "--random_tokens"], []):
    with pytest.raises(ValueError, match=rf"--tokenizer={re.escape(str(tok))} tokenizes dataset specs .* come from"):
      sbs.load_contexts(cfg, settings, sbs.parse_args([*flags, "--tokenizer", str(tok)]))
  random, source = sbs.load_contexts(cfg, settings, sbs.parse_args(["--run_dir", str(run_dir), "--random_tokens"]))
  assert source == "random tokens" and list(random) == ["base", "repeats", "narrow"]


def test_our_side_measures_mala_at_our_default_unless_told_to_do_devinterps_work():
  import suscept_jax as sj
  assert sbs.Settings().sgld_config().mala_every == sj.SGLDConfig().mala_every == 10
  assert sbs.Settings(mala_every=0).sgld_config().mala_every == 0
  assert sbs.parse_args(["--mala_every=0"]).mala_every == 0 and sbs.parse_args([]).mala_every is None
