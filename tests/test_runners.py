"""The runners fail before work, never after; say what they will do; and live under a name of their own."""
import dataclasses
import json
import subprocess
import sys
import time

import pytest

from suscept_jax.data import tokenizer as tokenizers_lib
from tests import helpers
from tests.helpers import REPO, env, sweep_cmd


def run(cmd, timeout=120):
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
  return proc, time.perf_counter() - t0


def test_help_is_quick_and_shows_each_presets_defaults():
  proc, seconds = run([sys.executable, "-m", "experiments.sweep", "--help"])
  assert "Traceback" not in proc.stderr  # (absl ends --help with exit status 1)
  assert seconds < 5, seconds  # no JAX import for --help (0.2 s here; generous for a loaded CI machine)
  text = " ".join(proc.stdout.split())
  assert "(default demo: 20; paper: 64)" in text  # batch_size under each preset
  from suscept_jax.sgld_config import SGLDConfig
  for field in dataclasses.fields(SGLDConfig):  # every SGLDConfig field has a flag
    assert f"--{field.name}" in proc.stdout, field.name


@pytest.mark.parametrize("extra,message", [
    (["--run_dir=/nonexistent/run"], "--run_dir=/nonexistent/run holds no training run"),
    (["--delta_h=0"], "delta_h=0.0 must lie strictly between 0 and 1"),
    (["--step_size=-1"], "SGLDConfig.step_size=-1.0 must be > 0"),
    (["--probes=nosuchcorpus"], "dataset 'nosuchcorpus': no such corpus"),
    (["--components=l0h9"], "component 'l0h9': head 9 does not exist"),
    (["--steps=0,7"], "checkpoint steps [7] are not saved"),
    (["--steps=40,0,40"], "--steps=40,0,40: lists [40] more than once"),
    (["--steps="], "names no checkpoint (give steps or 'all')"),
    (["--num_draws=1", "--delta_h=0.05"], "places no probe sample"),
    (["--seed=-1"], "--seed=-1 must be an integer in [0, 2**32)"),  # (it used to write config.json first)
    (["--steps=abc"], "--steps=abc: expected integers or 'all'"),  # (it printed 145 lines of usage first)
    (["--components="], "--components= names no component"),  # (it planned every head)
    (["--step_size=inf"], "SGLDConfig.step_size=inf must be a finite number"),  # (it ran; every chain "diverged")
])
def test_bad_input_fails_in_seconds_before_any_output(tiny, tmp_path, extra, message):
  root, run_dir, tok, data = tiny
  out = tmp_path / "out"
  proc, seconds = run(sweep_cmd(run_dir, tok, data, out, *extra))
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not out.exists()  # nothing written: the corrected rerun into the same directory just works
  assert seconds < 30, seconds


def test_a_tokenizer_that_does_not_match_the_model_is_refused(tiny, tmp_path):
  root, run_dir, tok, data = tiny
  small = tmp_path / "small.json"
  tokenizers_lib.train_bpe_tokenizer(helpers.prose_documents(50), vocab_size=300, path=small)
  proc, _ = run(sweep_cmd(run_dir, small, data, tmp_path / "out"))
  assert proc.returncode == 2 and "has a vocabulary of" in proc.stderr and "d_vocab=320" in proc.stderr
  other = tmp_path / "other.json"  # the right size, but not the tokenizer the run was trained with
  tokenizers_lib.train_bpe_tokenizer(helpers.prose_documents(400, seed=3) + helpers.math_documents(80, seed=3),
                                     vocab_size=320, path=other)
  if tokenizers_lib.vocab_size(tokenizers_lib.load_tokenizer(other)) == 320:
    proc, _ = run(sweep_cmd(run_dir, other, data, tmp_path / "out"))
    assert proc.returncode == 2 and "is not the one" in proc.stderr and "was trained with" in proc.stderr
  assert not (tmp_path / "out").exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tiny, tmp_path):
  root, run_dir, tok, data = tiny
  out = tmp_path / "out"
  proc, _ = run(sweep_cmd(run_dir, tok, data, out, "--dry_run"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "resolved settings:" in proc.stdout and '"num_draws": 12' in proc.stdout
  assert "planned: 3 unit(s)" in proc.stdout and "checkpoint 40: 3 probe(s) × 4 component(s)" in proc.stdout
  assert not out.exists()


def test_the_demo_presets_run_dir_is_the_only_one_that_trains_itself(tmp_path):
  proc, seconds = run([sys.executable, "-m", "experiments.sweep", f"--run_dir={tmp_path / 'typo'}",
                       f"--output_dir={tmp_path / 'out'}"])
  assert proc.returncode == 2 and "holds no training run" in proc.stderr
  assert not (tmp_path / "typo").exists() and not (tmp_path / "out").exists()


def test_runner_package_name_and_checkout_shims():
  import suscept_jax_runners.sweep  # noqa: F401  (the installed name)
  pyproject = (REPO / "pyproject.toml").read_text()
  assert '"experiments' not in pyproject  # the generic name is not installed
  for runner in ("sweep", "train", "calibrate", "build_corpora"):
    proc, _ = run([sys.executable, "-m", f"experiments.{runner}", "--help"])
    assert f"suscept_jax_runners/{runner}.py" in proc.stdout, (runner, proc.stderr[-500:])


def test_summary_covers_every_checkpoint_with_full_probe_names(tiny):
  from suscept_jax import results
  from suscept_jax.analysis import summary
  root, run_dir, tok, data = tiny
  out = root / "summary_sweep"
  proc, _ = run(sweep_cmd(run_dir, tok, data, out, "--steps=0,40"), timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = (out / "summary.txt").read_text()
  table = results.ResultsDir(out).table()
  assert text == summary.summary_text(table) + "\n"
  assert "checkpoint 0" in text and "checkpoint 40" in text
  for probe in (data["math"], data["prose"], data["mix"]):
    assert f"= {probe}\n" in text  # the legend names every probe in full, on one line
  flagged = int((table.status != "ok").sum())
  assert f"Flagged cells: {flagged} of {len(table)}" in text and text.count("*") >= flagged
  assert (out / "chi_heatmap.png").stat().st_size > 10_000
  unit = json.loads(next((out / "units").glob("step_*.json")).read_text())
  assert {"jax", "devices", "matmul_precision"} <= set(unit["environment"])


@pytest.mark.parametrize("extra,message", [
    (["--model=huge"], "Unknown model config 'huge'"),
    (["--steps=0"], "TrainConfig.steps=0 must be >= 1"),
    (["--batch_size=6"], "--batch_size=6 must be divisible by the 4 devices"),
    (["--data=/nonexistent/train.jsonl"], "/nonexistent/train.jsonl"),
    (["--repeat_fraction=1.5"], "--repeat_fraction=1.5 must lie in [0, 1)"),
    (["--model=tiny", "--vocab_size=64"], "--vocab_size=64: a byte-level tokenizer has at least 257 tokens"),
    (["--checkpoint_steps=0,abc"], "--checkpoint_steps=0,abc must be integers"),
    (["--workdir={tmp}/afile"], "--workdir={tmp}/afile is a file, not a run directory"),  # (a traceback, late)
    (["--workdir={tmp}/afile/sub"], "cannot write into {tmp}/afile/sub (NotADirectoryError"),
])
def test_train_runner_fails_before_work(tmp_path, extra, message):
  workdir = tmp_path / "run"
  (tmp_path / "afile").write_text("")
  extra = [e.format(tmp=tmp_path) for e in extra]
  proc, _ = run([sys.executable, "-m", "experiments.train", f"--workdir={workdir}",
                 f"--tokenizer={tmp_path / 'tok.json'}", *extra])
  assert proc.returncode == 2 and message.format(tmp=tmp_path) in proc.stderr, proc.stderr[-2000:]
  assert not workdir.exists() and not (tmp_path / "tok.json").exists()


def test_build_corpora_names_an_unknown_corpus_without_a_traceback():
  proc, _ = run([sys.executable, "-m", "experiments.build_corpora", "--names=bogus"])
  assert proc.returncode == 2 and "Unknown corpus name(s) ['bogus']" in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def test_a_tilde_in_a_flag_means_the_home_directory(tmp_path):
  """`--data=~/x.jsonl`: no shell expands a `~` after `=` (nor tpu/run.sh's workers); the runners do."""
  home = tmp_path / "home"
  proc = subprocess.run([sys.executable, "-m", "experiments.train", "--workdir=~/run", "--tokenizer=~/tok.json",
                         "--data=~/missing.jsonl"], cwd=REPO, env={**env(), "HOME": str(home)}, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2 and f"{home}/missing.jsonl" in proc.stderr and "~" not in proc.stderr, proc.stderr


def test_train_runner_trains_the_presets_recipe_and_keeps_to_it(tiny, tmp_path):
  """`experiments.train` takes the preset's repeated spans (the demo's 0.75, what `make demo` trains with: the
  runner used to drop them), records them, and will not call a run finished that was trained otherwise."""
  root, _, _, data = tiny
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", "--model=demo",
         f"--tokenizer={tmp_path / 'tok.json'}", f"--data={data['mix']}", "--steps=2", "--batch_size=8"]
  proc, _ = run(cmd, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  info = json.loads((workdir / "run.json").read_text())
  assert info["repeat_fraction"] == 0.75 and info["train_data"] == str(data["mix"])
  # --steps below the demo's checkpoint list (0, 400, …, 3000) keeps its steps up to it, and the last (it was
  # refused); the tokenizer is copied where the sweep looks for it (the README's train-then-sweep failed)
  assert sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit()) == [0, 2]
  assert (workdir / "tokenizer.json").read_bytes() == (tmp_path / "tok.json").read_bytes()
  proc, _ = run(cmd + ["--repeat_fraction=0"], timeout=600)
  assert proc.returncode == 2 and "repeat_fraction: 0.75 there, 0.0 now" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("eval_contexts", [0, 256])
def test_repeated_spans_mark_training_rows_only(eval_contexts):
  """The share asked for, over the rows `training.train` trains on: with eval_contexts=0 none was marked, and on
  small data (a tenth held out, not eval_contexts) part of the unmarked tail was training data."""
  import numpy as np

  from suscept_jax import training
  from suscept_jax_runners import pipeline
  contexts_NxK = np.random.default_rng(0).integers(0, 300, (400, 65)).astype(np.int32)
  cfg = training.TrainConfig(eval_contexts=eval_contexts)
  marked_NxK = pipeline.with_repeated_spans(contexts_NxK, cfg, 0.75, 300)
  num_test = training.num_test_contexts(len(contexts_NxK), cfg)
  assert num_test == (0 if eval_contexts == 0 else 40)
  changed_N = (marked_NxK != contexts_NxK).any(1)
  assert not changed_N[len(contexts_NxK) - num_test:].any()
  assert abs(changed_N[:len(contexts_NxK) - num_test].mean() - 0.75) < 0.06


def test_calibrate_runner_writes_its_verdicts(tiny, tmp_path):
  root, run_dir, tok, data = tiny
  out = tmp_path / "calibration"
  cmd = [sys.executable, "-m", "experiments.calibrate", "--preset=paper", f"--run_dir={run_dir}",
         f"--tokenizer={tok}", f"--data={data['mix']}", "--step_sizes=1e-4,1e-2", "--num_chains=2",
         "--num_draws=16", "--batch_size=10", f"--output_dir={out}"]
  zero, _ = run(cmd + ["--batch_size=0"])  # (it used to run at the preset's batch size without a word)
  assert zero.returncode == 2 and "--batch_size=0 must be a positive integer" in zero.stderr, zero.stderr[-2000:]
  proc, _ = run(cmd, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  verdict = json.loads((out / "calibration.json").read_text())
  assert verdict["checkpoint"] == 40 and verdict["components"] == ["full", "l0h0"]
  assert verdict["microbatch_size"] == "auto"  # the paper preset's: sized to the devices, as the sweep's
  assert len(verdict["cells"]) == 2 * 2 and len(verdict["explanation"]) == 2
  assert verdict["criteria"]["min_acceptance"] == 0.9
  assert ("recommended: ε=" in proc.stdout) == (verdict["recommended"] is not None)
  assert (out / "calibration.png").stat().st_size > 10_000


@pytest.mark.parametrize("raised,status,says", [
    # Ctrl-C mid-run: one line saying that written results are kept.
    ("KeyboardInterrupt", 130, ["interrupted: results already written are kept"]),
    # Out of device memory: the sampler's message (it names the setting to lower) and how to continue.
    ("MemoryError(\"the sampler's program does not fit in device memory at batch_size=64\")", 2,
     ["error: the sampler's program does not fit in device memory at batch_size=64",
      "results already written are kept", "--microbatch_size=auto"]),
    # A full disk: named, with how to continue (it ended in a raw OSError traceback).
    ("OSError(28, 'No space left on device', '/runs/out/units/step_1.npz')", 2,
     ["error: no space left writing /runs/out/units/step_1.npz (No space left on device)",
      "results already written are kept", "run the same command again to continue"]),
])
def test_an_interrupt_or_a_program_too_large_ends_with_a_message_not_a_traceback(raised, status, says):
  script = ("from suscept_jax_runners import cli\n"
            "def main(argv):\n"
            f"  raise {raised}\n"
            "cli.run(main)\n")
  proc, _ = run([sys.executable, "-c", script])
  assert proc.returncode == status, proc.stderr[-2000:]
  assert all(s in proc.stderr for s in says) and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  verbose, _ = run([sys.executable, "-c", script, "--verbosity=1"])
  assert verbose.returncode == status and "Traceback" in verbose.stderr  # the traceback on request


def test_another_spelling_of_a_recorded_path_takes_the_recorded_name(tmp_path, monkeypatch):
  """`$PWD/data/x.jsonl` for `data/x.jsonl`: the same file, so a rerun reuses the results under the recorded name
  (a probe) instead of computing them again, or refusing the base as another setting. Anything else is left."""
  from suscept_jax import results
  from suscept_jax.data import sources
  from suscept_jax_runners import pipeline
  monkeypatch.chdir(tmp_path)
  (tmp_path / "data").mkdir()
  for name in ("x", "y", "b"):
    helpers.write_jsonl(tmp_path / "data" / f"{name}.jsonl", ["one document", "another"])
  spelled = {"data/x.jsonl": [str(tmp_path / "data" / "x.jsonl"), "./data/x.jsonl", "data/../data/x.jsonl",
                              "file:data/x.jsonl"]}
  assert all(sources.same_local_data("data/x.jsonl", other) for other in spelled["data/x.jsonl"])
  assert not sources.same_local_data("data/x.jsonl", "data/y.jsonl")
  assert not sources.same_local_data("data/x.jsonl", "data/x.jsonl?column=content")  # another column
  assert not sources.same_local_data("data/x.jsonl", "data/gone.jsonl") and not sources.same_local_data("code", "code")
  store = results.ResultsDir(tmp_path / "out")
  recorded = {"base": "data/b.jsonl", "probes": ["data/x.jsonl", "repeats:data/y.jsonl"]}
  request = {"base": str(tmp_path / "data" / "b.jsonl"), "probes": ["./data/x.jsonl", "data/y.jsonl", "hf:imdb"]}
  assert pipeline.recorded_spellings(request, store) == (request, [])  # nothing recorded yet
  store.start(recorded, {"probes": ["data/x.jsonl"]}, kind="per_token")
  (store.units / "chunk_0000.json").write_text("{}"), (store.units / "chunk_0000.npz").write_bytes(b"")  # one unit
  settings, notes = pipeline.recorded_spellings(request, store)
  # 'data/y.jsonl' is the file under 'repeats:data/y.jsonl', but other contexts (each with a repeated span)
  assert settings == {"base": "data/b.jsonl", "probes": ["data/x.jsonl", "data/y.jsonl", "hf:imdb"]}, settings
  assert notes == [f"{str(tmp_path / 'data' / 'b.jsonl')!r} names the data {store.path} holds as 'data/b.jsonl': "
                   "taken under that name",
                   f"'./data/x.jsonl' names the data {store.path} holds as 'data/x.jsonl': taken under that name"]
  twice, _ = pipeline.recorded_spellings({**request, "probes": ["data/x.jsonl", "./data/x.jsonl"]}, store)
  assert twice["probes"] == ["data/x.jsonl"]  # one file asked for under two spellings: computed once


def test_a_long_summary_reaches_the_terminal_as_its_last_checkpoint_and_where_the_rest_is(tmp_path):
  """A sweep of the paper's shape wrote a 4,500-line summary and echoed all of it; now a summary over
  SUMMARY_LINES_PRINTED lines shows its last checkpoint (with that checkpoint's flags) and names the file."""
  import pandas as pd
  from suscept_jax.analysis import summary
  from suscept_jax_runners import sweep
  rows = [{"checkpoint": s, "probe": f"d{p}", "component": c, "chi": 1e-4, "chi_ci95": 1e-5, "llc": 1.0,
           "llc_ci95": 0.1, "num_chains_used": 4, "realised_delta_h": 0.1, "status": "ok" if s else "R̂ 1.2 > 1.1"}
          for s in (0, 100, 200) for p in range(3) for c in ("full", "l0h0")]
  small = pd.DataFrame(rows)
  text = summary.summary_text(small)
  assert sweep.terminal_summary(small, text, tmp_path / "summary.txt") == text  # short: all of it
  big = pd.DataFrame([{**r, "checkpoint": r["checkpoint"] + 1000 * k} for k in range(30) for r in rows])
  text = summary.summary_text(big)
  shown = sweep.terminal_summary(big, text, tmp_path / "summary.txt")
  assert text.count("\n") > sweep.SUMMARY_LINES_PRINTED > shown.count("\n")
  assert "checkpoint 29200" in shown and "checkpoint 29100" not in shown
  assert f"of 90: every checkpoint and its flags are in {tmp_path / 'summary.txt'}" in shown


def test_the_demo_presets_note_on_its_step_size_speaks_of_its_own_model_only(tmp_path, monkeypatch):
  """The demo's note (no ε of `calibrate` passes on the demo model) was printed for any run under the preset."""
  from suscept_jax_runners import presets
  demo = presets.get_preset("demo")
  monkeypatch.chdir(REPO)  # (the preset's run directory is relative to where the runners start)
  assert presets.sgld_note_for(demo, demo.run_dir) == demo.sgld_note
  assert presets.sgld_note_for(demo, str(REPO / demo.run_dir)) == demo.sgld_note  # another spelling of it
  other = presets.sgld_note_for(demo, tmp_path / "train")
  assert "demo" not in other and "not calibrated for this model" in other and "experiments.calibrate" in other
  paper = presets.get_preset("paper")
  assert presets.sgld_note_for(paper, tmp_path / "train") == paper.sgld_note  # (names no run of its own)
