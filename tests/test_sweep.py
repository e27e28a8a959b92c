"""The sweep runner end to end on a tiny trained model, including a real kill and resume."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from suscept_jax import results


from tests import browser, helpers
from tests.helpers import REPO, env, sweep_cmd


def direct_estimate(run_dir, tok, data, step):
  """The same estimate through the kernel API, with the inputs the runner builds for `sweep_cmd`."""
  import functools

  import suscept_jax as sj
  from suscept_jax_runners import pipeline
  from suscept_jax import checkpoints
  from suscept_jax.data import tokenizer as tokenizers_lib
  from suscept_jax.models import components, transformer
  cfg = checkpoints.read_model_config(run_dir)
  tokenizer = tokenizers_lib.load_tokenizer(tok)
  length = int(checkpoints.read_run_info(run_dir)["context_length"])
  load = lambda spec: pipeline.load_dataset(str(spec), tokenizer, length, 100_000)
  params = checkpoints.load_params(run_dir, step)
  masks = components.component_masks(["full", "l0h0", "l1h1", "l1 attn"], params, cfg)
  config = sj.SGLDConfig(num_chains=2, num_draws=12, num_burnin=2)
  return sj.estimate_susceptibilities(
      functools.partial(transformer.context_nll, config=cfg), params, masks, load(data["mix"]),
      {str(data[k]): load(data[k]) for k in ("math", "prose", "mix")}, config=config, batch_size=10,
      microbatch_size=5, delta_h=0.1, checkpoint_id=step, progress=False)


def test_sweep_end_to_end_and_resume_after_kill(tiny):
  root, run_dir, tok, data = tiny
  straight, killed = root / "straight", root / "killed"
  done = subprocess.run(sweep_cmd(run_dir, tok, data, straight), cwd=REPO, env=env(), capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  table = pd.read_csv(straight / "results.csv")
  assert list(table.columns) == results.TABLE_COLUMNS
  assert len(table) == 3 * 3 * 4  # checkpoints × probes × (full + 3 components)
  assert set(table.component) == {"full", "l0h0", "l1h1", "l1 attn"}
  assert table[["chi", "chi_stderr", "llc"]].notna().all().all()
  # 2 chains × 12 draws cannot give 50 effective draws: every cell says so, none is a quiet "ok".
  assert table.status.str.contains("ESS").all()
  assert f"{len(table)} flagged" in done.stdout and "warning(s) this run" in done.stdout
  assert "ESS" in done.stderr  # the runner logs the kernel's warnings
  # The base data as a probe: χ ≡ 0 exactly, through the real runner.
  assert (table[table.probe == str(data["mix"])].chi == 0).all()
  # The runner's numbers are the kernel API's numbers on the same inputs (a value check, not "χ != 0").
  direct = direct_estimate(run_dir, tok, data, step=40)
  got = table[table.checkpoint == 40]
  for p, probe in enumerate(direct.probe_names):
    for c, comp in enumerate(direct.component_names):
      row = got[(got.probe == probe) & (got.component == comp)].iloc[0]
      np.testing.assert_allclose([row.chi, row.llc], [direct.chi[p, c], direct.llc[c]], rtol=1e-6, atol=1e-12)
  assert (straight / "chi_over_training.png").stat().st_size > 10_000
  cfg = json.loads((straight / "config.json").read_text())
  assert cfg["settings"]["sgld"]["num_draws"] == 12 and "jax" in cfg["environment"]
  assert "environments" not in (straight / "summary.txt").read_text()  # every unit from this one
  out = results.ResultsDir(straight)
  arrays, meta = out.read_unit(next(n for n in out.finished_units() if n.startswith("step_00000040")))
  assert arrays["chi_per_chain"].shape == (3, 4, 2) and arrays["loss_trace"].shape == (4, 2, 12)
  assert "checkpoint 40" in done.stdout and "Student-t, chains − 1 = 1 degrees of freedom" in done.stdout
  assert np.allclose(table.realised_delta_h, 0.1)
  scores = pd.read_csv(straight / "head_scores.csv")
  assert len(scores) == 3 * 4 and scores[["prev_token", "induction", "ablation_delta"]].notna().all().all()

  # Kill a second run once its first unit is on disk, then rerun: same table as the uninterrupted run.
  proc = subprocess.Popen(sweep_cmd(run_dir, tok, data, killed), cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not list((killed / "units").glob("step_*.json")) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  finished = results.ResultsDir(killed).finished_steps()
  assert 1 <= len(finished) < 3, finished
  again = subprocess.run(sweep_cmd(run_dir, tok, data, killed), cwd=REPO, env=env(), capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"{3 - len(finished)} unit(s) to run, {len(finished)} finished unit(s) reused" in again.stdout
  pd.testing.assert_frame_equal(pd.read_csv(killed / "results.csv"), table)
  progress = json.loads((killed / "progress.json").read_text())
  assert len(progress["finished"]) == 3 and all(v > 0 for v in progress["finished"].values())  # kept across the kill

  # The sweep grows: one more probe and one more component reuse every finished unit, also at another micro-batch
  # (it changes only the gradient's summation order: a sweep that ran out of memory resumes with a smaller one).
  before = set(out.finished_units())
  elsewhere = out.units / f"{sorted(before)[0]}.json"  # as if written by a run on a GPU under a newer JAX
  moved = json.loads(elsewhere.read_text())
  moved["environment"] = {**moved["environment"], "jax": "0.11.2", "backend": "gpu"}
  elsewhere.write_text(json.dumps(moved))
  # The base and one probe spelled as paths relative to the working directory: the same files, the same units.
  relative = {k: os.path.relpath(data[k], REPO) for k in ("mix", "math")}
  grown = subprocess.run(
      [*sweep_cmd(run_dir, tok, data, straight), f"--base={relative['mix']}",
       f"--probes={relative['math']},{data['prose']},{data['mix']},{data['math2']}",
       "--components=l0h0,l1h1,l1 attn,l0h1", "--steps=20,40", "--microbatch_size=2"], cwd=REPO, env=env(),
      capture_output=True, text=True, timeout=600)
  assert grown.returncode == 0, grown.stderr[-3000:]
  assert "4 unit(s) to run, 3 finished unit(s) reused" in grown.stdout  # (new probe, new component) × 2 checkpoints
  assert f"{relative['math']!r} names the data {straight} holds as {str(data['math'])!r}" in grown.stdout
  here = results.environment_label(results.environment())
  listed = ", ".join(sorted([f"{here} (6 units)", "jax 0.11.2 on gpu (1 unit)"]))
  assert f"units computed under 2 environments: {listed}; cells" in (straight / "summary.txt").read_text()
  assert results.environment_label({"jax": "0.4.30", "devices": ["TPU_0(process=0,(0,0,0,0))"]}) == "jax 0.4.30 on tpu"
  used = {name: out.unit_meta(name)["microbatch_size"] for name in out.finished_units()}
  assert {used[n] for n in before} == {5} and {used[n] for n in set(used) - before} == {2}, used
  bigger = pd.read_csv(straight / "results.csv")
  assert len(bigger) == 3 * 3 * 4 + 2 * (4 * 5 - 3 * 4)
  key = ["checkpoint", "probe", "component"]
  old = bigger.merge(table[key], on=key)
  pd.testing.assert_frame_equal(old.reset_index(drop=True), table.reset_index(drop=True))  # old cells untouched

  # The analysis reads the grown directory: rows lacking the new component are excluded and reported.
  analyze = [sys.executable, "-m", "experiments.analyze", f"--results={straight}", "--num_resamples=20"]
  rep = subprocess.run(analyze + ["--patterning_targets=l0h0+l1h1"], cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=300)
  assert rep.returncode == 0, rep.stderr[-3000:]
  assert f"report: {straight / 'report.html'}" in rep.stdout
  assert "structure: X 8 rows (probe × checkpoint)" in rep.stdout  # the findings, for a terminal without a browser
  assert re.search(r"PC1: (stable|UNSTABLE) \(singular value [\d.]+ vs noise floor [\d.]+\); (strongest head label"
                   r"(?: \(of an unstable PC, less sure\))?: |no head label's interval excludes 0 \(largest: )"
                   r"r with \w+ [+-]\d\.\d\d \[", rep.stdout), rep.stdout
  page = (straight / "report.html").read_text()
  assert "missing components [&#x27;l0h1&#x27;]" in page and "Response matrix X: 8 rows" in page  # (HTML-escaped)
  assert page.count("data:image/png;base64,") == 9 and "r with induction" in page
  assert 'id="patterning"' in page and ("PC1 (stable)" in page or "PC1 (unstable)" in page)
  assert "l0h0 alone" in page and "l0h0+l1h1 together" in page and "direction(s)</b> above the noise floor" in page
  assert re.search(r"<td>[+-]\d\.\d\d \[[+-]\d\.\d\d, [+-]\d\.\d\d\]</td>", page)  # r with its interval
  _check_the_report_corrects_r_for_noise(straight)
  _check_the_report_gives_the_couplings_intervals(straight, page)
  stable_pcs = re.findall(r"  PC\d: stable", rep.stdout)
  coupled = r"\n    (couplings clear of 0 \(\d of 3 datasets\): |no dataset's coupling interval excludes 0)"
  assert len(re.findall(coupled, rep.stdout)) == len(stable_pcs), rep.stdout
  too_many = subprocess.run(analyze + ["--num_pcs=9"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
  assert too_many.returncode == 2 and "9 principal components asked for" in too_many.stderr, too_many.stderr[-2000:]
  none = subprocess.run(analyze + ["--num_resamples=0"], cwd=REPO, env=env(), capture_output=True, text=True)
  assert none.returncode == 2 and "--num_resamples=0 must be >= 1" in none.stderr, none.stderr[-2000:]
  # Refused before the analysis: per-token views that are not there (were ignored), a report under a file
  # (a traceback once the analysis had run).
  nowhere = subprocess.run(analyze + [f"--per_token_dir={root / 'no_per_token'}"], cwd=REPO, env=env(),
                           capture_output=True, text=True)
  assert nowhere.returncode == 2 and "--per_token_dir: " in nowhere.stderr and "no per-token views" in nowhere.stderr
  under_a_file = subprocess.run(analyze + [f"--output={straight / 'results.csv' / 'report.html'}"], cwd=REPO,
                                env=env(), capture_output=True, text=True)
  assert under_a_file.returncode == 2 and "cannot write into" in under_a_file.stderr, under_a_file.stderr[-2000:]
  excluded = subprocess.run(analyze + ["--patterning_targets=l0h0+full"], cwd=REPO, env=env(), capture_output=True,
                            text=True, timeout=300)  # "full" is kept apart from the matrix's columns
  assert excluded.returncode == 2 and "patterning targets name components not in the response matrix: ['full']" \
      in excluded.stderr, excluded.stderr[-2000:]
  if browser.find_browser():
    dom, errors = browser.dump_dom(straight / "report.html")
    assert not errors, errors
    assert 'id="results"' in dom and dom.count("<img") == 9 and 'id="labels"' in dom and 'id="patterning"' in dom
    assert 'id="couplings"' in dom
    assert not browser.screenshot(straight / "report.html", root / "report.png")
    assert browser.pixel_summary(root / "report.png")["ink"] > 0.02

  # Different settings into the same directory are refused, naming what differs.
  clash = subprocess.run(sweep_cmd(run_dir, tok, data, killed, "--delta_h=0.2"), cwd=REPO, env=env(),
                         capture_output=True, text=True, timeout=600)
  assert clash.returncode == 2 and "delta_h: 0.1 here, 0.2 now" in clash.stderr, clash.stderr[-2000:]
  assert "sgld" not in clash.stderr.split("other settings")[1]  # only the keys that differ are named
  # ... and so is another precision: a results directory holds numbers of one numerics setting.
  clash = subprocess.run(sweep_cmd(run_dir, tok, data, killed, "--precision=bfloat16"), cwd=REPO, env=env(),
                         capture_output=True, text=True, timeout=600)
  assert clash.returncode == 2 and "numerics.precision: 'float32' here, 'bfloat16' now" in clash.stderr, \
      clash.stderr[-2000:]
  assert json.loads((killed / "config.json").read_text())["settings"]["numerics"] == {"attention": "plain",
                                                                                     "precision": "float32"}


@pytest.mark.parametrize("extra,message", [
    (["--steps=0,7"], "checkpoint steps [7] are not saved"),
    (["--components=l0h9"], "component 'l0h9': head 9 does not exist"),
    (["--probes=/nonexistent/probe.jsonl"], "/nonexistent/probe.jsonl"),
    (["--delta_h=0.005"], "places no probe sample"),
    (["--output_dir={root}/afile"], "afile is a file, not a results directory"),  # (a traceback after tokenizing)
])
def test_sweep_bad_input_fails_fast_with_a_clear_message(tiny, extra, message):
  root, run_dir, tok, data = tiny
  (root / "afile").write_text("")
  extra = [e.format(root=root) for e in extra]
  proc = subprocess.run(sweep_cmd(run_dir, tok, data, root / "bad", *extra), cwd=REPO, env=env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2
  assert message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr  # the message, not a stack trace


def test_checkpoints_of_another_run_at_the_same_path_are_refused(tiny, tmp_path):
  """A results directory recorded the run's path and model only: another training run put at the same path
  (same sizes, another seed) had its checkpoints' units mixed into the table without a word."""
  import shutil
  root, run_dir, tok, data = tiny
  run = tmp_path / "run"
  shutil.copytree(run_dir, run)
  cmd = lambda *extra: subprocess.run(sweep_cmd(run, tok, data, tmp_path / "out", "--num_draws=6",
                                                "--components=l0h0", *extra),
                                      cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
  first = cmd("--steps=0")
  assert first.returncode == 0, first.stderr[-3000:]
  # The same run's identity with other weights at step 0 (a run converted again from other files, or trained
  # again): the finished units were reused without a word. Refused, naming the step.
  from suscept_jax import checkpoints
  saved = run / checkpoints.PARAMS_DIR
  shutil.move(saved / "0", tmp_path / "step_0")
  shutil.copytree(saved / "20", saved / "0")  # (step 20's weights at step 0)
  swapped = cmd("--steps=0")
  assert swapped.returncode == 2 and re.search(r"holds results of checkpoint 0 computed on other weights than .*run "
                                               r"holds at that step now \(params digest [0-9a-f]{16} then",
                                               swapped.stderr), swapped.stderr[-3000:]
  shutil.rmtree(saved / "0")
  shutil.move(tmp_path / "step_0", saved / "0")
  # A report made from the table before a grown sweep says so no more: the sweep notes that it is behind.
  (tmp_path / "out" / "report.html").write_text("<html></html>")
  (tmp_path / "out" / "report_figures").mkdir()
  grown = cmd("--steps=0,20")
  assert grown.returncode == 0 and re.search(r"note: .*report.html was made from the table before this run's 1 "
                                             r"unit\(s\): run experiments.analyze again", grown.stdout), grown.stdout
  info = json.loads((run / "run.json").read_text())
  info["train_config"]["seed"] += 1  # (as a run trained with another seed would say)
  (run / "run.json").write_text(json.dumps(info))
  second = cmd("--steps=0,20")
  assert second.returncode == 2 and "(run_fingerprint: '" in second.stderr, second.stderr[-3000:]
  # --overwrite removes the report made from the old table (it stayed beside the new one, another seed's numbers)
  assert cmd("--steps=0", "--overwrite").returncode == 0
  assert not (tmp_path / "out" / "report.html").exists() and not (tmp_path / "out" / "report_figures").exists()


def test_a_nested_setting_that_differs_is_named_alone(tmp_path):
  store = results.ResultsDir(tmp_path / "out")
  sgld = {"num_draws": 6, "num_chains": 4, "step_size": 1e-3}
  helpers.started_with_a_unit(store, {"seed": 0, "sgld": sgld}, {"checkpoint_steps": [0]})
  with pytest.raises(ValueError, match=r"other settings \(sgld.num_draws: 6 here, 8 now\); use another"):
    store.check_settings({"seed": 0, "sgld": {**sgld, "num_draws": 8}})  # (it printed both whole sgld dicts)


def test_tables_written_as_csv_read_back_whatever_their_tokens():
  """A token '\r' went out unquoted (pandas ends lines in '\n' and quotes only fields holding that): tokens.csv
  of the demo read back 18 rows too many, and token_totals.csv shifted values into other columns."""
  import io
  frame = pd.DataFrame({"token": ["\r", "\n", "a,b", 'q"', "\r\n", "x"], "chi": [0.1, np.nan, 3e-9, -1.0, 2.0, 0.0],
                        "status": ["ok", "R̂ 1.2 > 1.1; ESS 9 < 50", "ok", "ok", "ok", "ok"]})
  back = pd.read_csv(io.BytesIO(results.csv_bytes(frame, "%.9g")), keep_default_na=False, na_values=[""])
  pd.testing.assert_frame_equal(back, frame, check_dtype=False)


def test_another_runners_directory_is_refused_even_with_overwrite(tmp_path):
  """A per-token directory given to the sweep (or the reverse) was listed key by key as "other settings" with
  the advice to --overwrite, which then deleted half of the other runner's results: now one line naming both."""
  store = helpers.started_with_a_unit(results.ResultsDir(tmp_path / "pt"), {"contexts_per_dataset": 4},
                                      {"views": []}, kind="per_token")
  with pytest.raises(ValueError, match=r"pt holds per-token results \(experiments.per_token\), not a sweep's "
                                       r"results \(experiments.sweep\): give another --output_dir"):
    store.check_kind("sweep")
  store.check_kind("per_token")
  config = json.loads((store.path / "config.json").read_text())
  del config["kind"]  # (written before the kind was recorded: read off the settings)
  (store.path / "config.json").write_text(json.dumps(config))
  assert store.kind() == "per_token"
  with pytest.raises(ValueError, match=r"not a sweep's results"):
    store.check_kind("sweep")


def test_a_directory_whose_run_stopped_before_its_first_unit_takes_the_corrected_settings(tmp_path):
  """A bad --base or a damaged checkpoint stops a run after config.json is written: the corrected rerun was
  refused ("holds results made with other settings") though nothing had been computed."""
  from suscept_jax_runners import cli
  store = results.ResultsDir(tmp_path / "out")
  store.start({"base": "short.jsonl", "data_identity": "stat"}, {"checkpoint_steps": [0]}, kind="sweep")
  store.check_settings({"base": "mix.jsonl"})
  store.check_kind("per_token")
  assert cli.data_identity(store, overwrite=False) == "content"
  store.start({"base": "mix.jsonl"}, {"checkpoint_steps": [0]}, kind="sweep")
  assert store.settings() == {"base": "mix.jsonl"}
  store.write_unit("step_00000000-x", {"chi": np.zeros(1)}, {"checkpoint": 0})
  with pytest.raises(ValueError, match=r"base: 'mix.jsonl' here, 'other.jsonl' now"):
    store.check_settings({"base": "other.jsonl"})


def test_the_output_path_is_tried_before_any_work_and_left_as_it_was(tmp_path):
  (tmp_path / "afile").write_text("")
  with pytest.raises(ValueError, match=r"afile is a file, not a results directory"):
    results.ResultsDir(tmp_path / "afile").check_writable(write=False)
  results.ResultsDir(tmp_path / "new" / "deeper").check_writable(write=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # (the trial's directories removed again)
  with pytest.raises(ValueError, match=r"cannot write into .*afile/sub \(NotADirectoryError"):
    results.ResultsDir(tmp_path / "afile" / "sub").check_writable(write=True)


def test_data_are_identified_as_the_results_directory_recorded(tmp_path):
  """A new (or overwritten) directory identifies local data by content; one that recorded another identity,
  or none (written before the setting), keeps it, so its recorded fingerprints compare like with like."""
  from suscept_jax_runners import cli
  store = results.ResultsDir(tmp_path / "out")
  assert cli.data_identity(store, overwrite=False) == "content"
  helpers.started_with_a_unit(store, {"seed": 0}, {"checkpoint_steps": [0]})  # (before "data_identity" existed)
  assert cli.data_identity(store, overwrite=False) == "stat"
  assert cli.data_identity(store, overwrite=True) == "content"
  store.check_settings({"seed": 0}, legacy=cli.LEGACY_SETTINGS)  # a legacy key the settings lack is no difference
  with pytest.raises(ValueError, match=r"data_identity: 'stat' here, 'content' now"):
    store.check_settings({"seed": 0, "data_identity": "content"}, legacy=cli.LEGACY_SETTINGS)
  recorded = results.ResultsDir(tmp_path / "new")
  helpers.started_with_a_unit(recorded, {"seed": 0, "data_identity": "content"}, {"checkpoint_steps": [0]})
  assert cli.data_identity(recorded, overwrite=False) == "content"


def test_directories_from_before_a_setting_existed_read_as_its_legacy_value(tmp_path):
  from suscept_jax_runners import cli
  store = results.ResultsDir(tmp_path / "old")
  helpers.started_with_a_unit(store, {"seed": 0}, {"checkpoint_steps": [0]})  # (before "numerics" existed)
  store.check_settings({"seed": 0, "numerics": {"attention": "plain", "precision": "float32"}},
                       legacy=cli.LEGACY_SETTINGS)
  with pytest.raises(ValueError, match=r"numerics.precision: 'float32' here, 'bfloat16' now\)"):
    store.check_settings({"seed": 0, "numerics": {"attention": "plain", "precision": "bfloat16"}},
                         legacy=cli.LEGACY_SETTINGS)


def test_results_that_measured_mala_without_saying_how_are_not_mixed_with_new_ones(tmp_path):
  """On 2026-12-05 a measured MALA move's batch was re-read by the next step, which biased the chains; a directory
  written then (no "mala_measurement") resumed by a run measuring MALA is refused, naming the setting. A run
  without MALA computes what it always did and resumes such a directory."""
  import dataclasses

  from suscept_jax import SGLDConfig
  from suscept_jax_runners import cli
  store = results.ResultsDir(tmp_path / "old")
  helpers.started_with_a_unit(store, {"seed": 0}, {"checkpoint_steps": [0]})  # (before the key existed)
  store.check_settings({"seed": 0, **cli.mala_setting(SGLDConfig(mala_every=0))}, legacy=cli.LEGACY_SETTINGS)
  store.check_settings({"seed": 0, **cli.mala_setting(SGLDConfig(noise_level=0.0))}, legacy=cli.LEGACY_SETTINGS)
  with pytest.raises(ValueError, match=r"mala_measurement: 'unrecorded \(maybe a re-read batch\)' here, "
                                       r"'extra gradient' now"):
    store.check_settings({"seed": 0, **cli.mala_setting(SGLDConfig())}, legacy=cli.LEGACY_SETTINGS)
  recorded = results.ResultsDir(tmp_path / "new")
  helpers.started_with_a_unit(recorded, {"seed": 0, **cli.mala_setting(SGLDConfig())}, {"checkpoint_steps": [0]})
  recorded.check_settings({"seed": 0, **cli.mala_setting(dataclasses.replace(SGLDConfig(), mala_every=3))},
                          legacy=cli.LEGACY_SETTINGS)


def _check_the_report_corrects_r_for_noise(results_dir):
  """The report's intervals of r are the bias-corrected ones (`structure.label_correlation_intervals` given X's
  loadings and the noise-matched resamples), not the resamples' bare percentiles."""
  from suscept_jax.analysis import report, response, structure
  data = response.assemble([results_dir])
  pca = structure.pca(data.X_RxH)
  stability = structure.bootstrap_stability(
      data.X_RxH, structure.chain_resampler(data.per_chain_RxHxK), 2, num_resamples=20,
      spread_correction=structure.bootstrap_spread_correction(4), interval_widening=structure.small_sample_widening(4))
  found = report._label_correlations([results_dir], data, pca, stability, 2)
  cols = found.columns
  corrected = structure.label_correlation_intervals(
      stability.loadings_BxkxH[:, :, cols], found.labels, point_loadings_kxH=pca.loadings_kxH[:2][:, cols],
      noise_matched_BxkxH=stability.noise_matched_loadings_BxkxH[:, :, cols])
  bare = structure.label_correlation_intervals(stability.loadings_BxkxH[:, :, cols], found.labels,
                                              point_loadings_kxH=None, noise_matched_BxkxH=None)
  for name in found.labels:
    np.testing.assert_array_equal(found.interval[name], corrected[name])
  assert any(not np.allclose(corrected[n], bare[n], equal_nan=True) for n in found.labels)


def _check_the_report_gives_the_couplings_intervals(results_dir, page: str):
  """The report's couplings table holds each dataset's coupling with `structure.data_coupling_intervals`' interval
  (the analysis ran with --num_resamples=20; the tiny sweep has 2 chains)."""
  from suscept_jax.analysis import response, structure
  data = response.assemble([results_dir])
  couplings = structure.data_couplings(structure.pca(data.X_RxH).scores_Rxk, data.datasets_R, data.checkpoints_R)
  scores = structure.corrected_scores(
      data.X_RxH, structure.chain_resampler(data.per_chain_RxHxK, shared_chains_R=data.shared_chains_R),
      data.stderr_RxH, 2, num_chains=data.per_chain_RxHxK.shape[-1], num_resamples=20)
  intervals = structure.data_coupling_intervals(scores, data.datasets_R, data.checkpoints_R)
  assert 'id="couplings"' in page
  for d, (lo, hi) in ((d, iv[0]) for d, iv in intervals.items()):
    assert f"{couplings[d][0]:+#.3g} [{lo:+#.3g}, {hi:+#.3g}]</td>" in page, (d, couplings[d], lo, hi)


def test_results_files_are_strict_json_and_a_null_reads_back_as_nan(tmp_path):
  """JSON has no NaN: Python's bare `NaN` token stopped jq and JavaScript's JSON.parse on a unit whose χ is
  undefined. Non-finite numbers are written as null, and the table reads them back as NaN floats."""
  def strict(path):
    return json.loads(path.read_text(), parse_constant=lambda token: pytest.fail(f"{path.name} holds {token}"))
  store = results.ResultsDir(tmp_path / "out")
  store.start({"seed": 0}, {"checkpoint_steps": [0]}, kind="sweep")
  row = {c: 1.0 for c in results.TABLE_COLUMNS} | {"probe": "p", "component": "full", "status": "χ undefined",
                                                   "checkpoint": 0, "num_chains_used": 4, "num_diverged": 4,
                                                   "probe_draws_dropped": 0}
  nan_row = row | {"chi": float("nan"), "chi_stderr": np.float32("nan"), "r_hat": float("inf")}
  store.write_unit("step_00000000-x", {"chi": np.zeros(1)},
                   {"checkpoint": 0, "rows": [nan_row, row | {"component": "l0h0"}], "seconds": float("nan")})
  store.write_progress([])
  assert strict(store.units / "step_00000000-x.json")["rows"][0]["chi"] is None
  assert strict(store.path / "progress.json")["finished"] == {"step_00000000-x": None}
  strict(store.path / "config.json")
  table = store.table()
  assert table.chi.dtype == np.float64 and table.chi_stderr.dtype == np.float64
  assert np.isnan(table.chi[0]) and np.isnan(table.chi_stderr[0]) and np.isnan(table.r_hat[0])
  assert table.chi[1] == 1.0 and table.num_chains_used.tolist() == [4, 4]
  nan_only = results.ResultsDir(tmp_path / "nan_only")  # a column with no number at all is still a float column
  nan_only.start({"seed": 0}, {"checkpoint_steps": [0]}, kind="sweep")
  nan_only.write_unit("step_00000000-x", {"chi": np.zeros(1)}, {"checkpoint": 0, "rows": [nan_row]})
  assert nan_only.table().chi.dtype == np.float64


def test_a_directory_another_run_is_writing_into_is_refused_and_reports_say_so(tiny, tmp_path):
  """Two runs into one directory at once both found it empty: the table mixed their settings under one
  config.json, and a sweep and a per-token run shared it. The directory is held for a run's whole length (the
  kernel lets go when the process ends, however it ends); whatever reads it meanwhile says the results are
  partial, as it does for a run that stopped with units left."""
  from suscept_jax import dir_lock
  root, run_dir, tok, data = tiny
  out = tmp_path / "out"
  held = dir_lock.hold_directory(out, "experiments.sweep")  # (another open file: flock keeps it apart, in-process too)
  assert f"experiments.sweep, process {os.getpid()} on " in results.ResultsDir(out).writer()
  proc = subprocess.run(sweep_cmd(run_dir, tok, data, out), cwd=REPO, env=env(), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 2 and re.search(r"out is being written by experiments.sweep, process \d+ on .*since "
                                            r".*: wait for it to finish, or give another --output_dir", proc.stderr)
  store = results.ResultsDir(out)
  store.start({"seed": 0}, {"checkpoint_steps": [0, 20]}, kind="sweep")
  store.write_unit("step_00000000-x", {"chi": np.zeros(1)}, {"checkpoint": 0, "rows": []})
  assert re.search(r"still being written by experiments.sweep, .*covers the 1 unit\(s\) finished so far",
                   store.unfinished_note())
  held.close()
  assert store.writer() is None and store.unfinished_note() is None
  store.write_progress(["step_00000020-x"])
  assert "the last run stopped with 1 unit(s) not finished (progress.json)" in store.unfinished_note()
  script = (f"import time; from suscept_jax import dir_lock; h = dir_lock.hold_directory({str(out)!r}, 'a child'); "
            "print('held', flush=True); time.sleep(60)")
  child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(dir_lock.DirectoryInUse, match=r"being written by a child, process \d+"):
      dir_lock.hold_directory(out, "experiments.per_token")
  finally:
    child.kill()
    child.wait()
  dir_lock.hold_directory(out, "experiments.per_token").close()  # (a killed holder blocks nothing)


def test_a_write_that_fails_leaves_no_temporary_behind(tmp_path, monkeypatch):
  """A full disk left a hidden partial file (.<name>.tmp-<pid>) in units/ for good."""
  import errno
  from suscept_jax import paths

  def full(*_):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(paths.os, "replace", full)
  with pytest.raises(OSError, match="No space left"):
    paths.atomic_write_bytes(tmp_path / "unit.json", b"{}")
  assert list(tmp_path.iterdir()) == []
