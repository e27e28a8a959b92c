"""Training with orbax checkpoints: learning, resume after a kill, loading steps, errors."""
import dataclasses
import shutil

import jax
import numpy as np
import pytest

from suscept_jax import checkpoints, dir_lock, training
from suscept_jax.data import packing
from suscept_jax.data import tokenizer as tokenizers_lib
from suscept_jax.models import config as model_config

from tests import helpers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("train")
  docs = helpers.math_documents(150) + helpers.prose_documents(300)
  path = helpers.write_jsonl(root / "mix.jsonl", docs)
  tokenizer = tokenizers_lib.train_bpe_tokenizer(docs, vocab_size=320, path=root / "tokenizer.json")
  cfg = model_config.get_config("tiny", d_vocab=320)
  contexts = packing.load_contexts(str(path), tokenizer, cfg.n_ctx, cache_dir=root / "cache", progress=False)
  return root, cfg, np.asarray(contexts)


def test_scaled_paper_schedule():
  assert training.scaled_paper_schedule(50_000)[:3] == [0, 100, 200]
  assert training.scaled_paper_schedule(50_000)[-2:] == [49_900, 50_000]
  small = training.scaled_paper_schedule(1000)
  assert small[0] == 0 and small[-1] == 1000 and small == sorted(set(small))


def test_the_last_step_is_always_kept():
  """A schedule without the last step kept the trained model only in the resume state, which no runner reads
  (and the run never counted as finished)."""
  assert training.TrainConfig(steps=200, checkpoint_steps=(0, 100)).schedule() == [0, 100, 200]
  assert training.TrainConfig(steps=200, checkpoint_steps=(100, 0, 200)).schedule() == [0, 100, 200]


@pytest.mark.parametrize("field", ["learning_rate", "weight_decay", "b1", "grad_clip"])
def test_training_settings_that_are_not_finite_are_refused(field):
  """NaN passed the range checks (a comparison with NaN is False) and stopped training at step 4 with "lower the
  learning rate", leaving a run directory that then refused the same command."""
  for value in (float("nan"), float("inf")):
    with pytest.raises(ValueError, match=rf"TrainConfig.{field}={value} must be a finite number"):
      training.TrainConfig(**{field: value})


def test_a_directory_that_is_not_this_kind_of_run_is_refused_before_anything_is_written(corpus, tmp_path):
  """Checkpoints converted from TransformerLens: training there mixed a new run into them (steps below their
  latest were silently not saved). Checkpoints without run.json: the new run.json described them wrongly. A
  run refused by its own checks (a batch larger than the data) left a run.json that refused the corrected
  command."""
  root, cfg, contexts = corpus
  tc = training.TrainConfig(steps=4, batch_size=8, checkpoint_steps=(0, 4))
  converted = tmp_path / "converted"
  checkpoints.write_run_info(converted, cfg, source="transformer_lens", converted_from="/runs/tl")
  with pytest.raises(ValueError, match=r"holds checkpoints converted from /runs/tl: .*another --workdir"):
    training.train(converted, cfg, contexts, tc, progress=False)
  for held in ("checkpoints", "train_state"):
    orphans = tmp_path / f"orphans_{held}"
    (orphans / held / "700").mkdir(parents=True)
    with pytest.raises(ValueError, match=rf"holds {held} but no run.json: whose they are is unknown"):
      training.train(orphans, cfg, contexts, tc, progress=False)
    assert not (orphans / "run.json").exists()
  fresh = tmp_path / "fresh"
  with pytest.raises(ValueError, match=r"fewer than batch_size=100000"):
    training.train(fresh, cfg, contexts, dataclasses.replace(tc, batch_size=100_000), progress=False)
  assert not (fresh / "run.json").exists()
  assert training.train(fresh, cfg, contexts, tc, progress=False)["final_step"] == 4


def test_loss_falls_well_below_unigram_entropy(corpus):
  root, cfg, contexts = corpus
  summary = training.train(root / "learn", cfg, contexts,
                           training.TrainConfig(steps=300, batch_size=16, learning_rate=3e-3, eval_every=100,
                                                checkpoint_steps=(0, 300)), progress=False)
  print(summary)
  # The data has strong sequential structure, so a trained model must beat the best context-free guess.
  assert summary["test_loss"] < summary["unigram_entropy"] - 0.5
  assert checkpoints.available_steps(root / "learn") == [0, 300]


def test_resume_after_a_kill_gives_identical_params(corpus):
  root, cfg, contexts = corpus
  tc = training.TrainConfig(steps=30, batch_size=8, eval_every=10, resume_every=7, checkpoint_steps=(0, 10, 20, 30))
  training.train(root / "straight", cfg, contexts, tc, progress=False)
  training.train(root / "killed", cfg, contexts, tc, progress=False, stop_after=17)  # dies after step 17
  assert checkpoints.available_steps(root / "killed") == [0, 10]
  summary = training.train(root / "killed", cfg, contexts, tc, progress=False)
  assert summary["steps_run"] == 13  # resumed at 17: no step lost, none repeated
  for step in (10, 20, 30):
    a = checkpoints.load_params(root / "straight", step)
    b = checkpoints.load_params(root / "killed", step)
    jax.tree.map(np.testing.assert_array_equal, a, b)
  # Stopped after step 0's state was saved (Ctrl-C during the first compile): every rerun was refused with
  # orbax's "Checkpoint for step 0 already exists".
  training.train(root / "at_zero", cfg, contexts, tc, progress=False, stop_after=0)
  assert training.train(root / "at_zero", cfg, contexts, tc, progress=False)["steps_run"] == 30
  jax.tree.map(np.testing.assert_array_equal, checkpoints.load_params(root / "straight", 30),
               checkpoints.load_params(root / "at_zero", 30))


def test_a_run_is_resumed_only_with_its_own_recipe(corpus):
  """Another seed, other data or another model in a part-trained run's directory: refused before any step, naming
  what differs (it used to resume, mixing two runs under one run.json). Logging intervals may change."""
  root, cfg, contexts = corpus
  tc = training.TrainConfig(steps=12, batch_size=8, eval_every=6, resume_every=4, checkpoint_steps=(0, 12))
  training.train(root / "recipe", cfg, contexts, tc, progress=False, stop_after=5)
  with pytest.raises(ValueError, match=r"train_config\.seed: 0 there, 5 now.*another --workdir"):
    training.train(root / "recipe", cfg, contexts, dataclasses.replace(tc, seed=5), progress=False)
  with pytest.raises(ValueError, match=r"tokens_fingerprint: '\w+' there, '\w+' now"):
    training.train(root / "recipe", cfg, contexts[::-1], tc, progress=False)
  with pytest.raises(ValueError, match=r"model_config\.n_layers"):
    training.train(root / "recipe", dataclasses.replace(cfg, n_layers=cfg.n_layers + 1), contexts, tc, progress=False)
  # A run directory another training is writing (two at once left one dead in orbax and a temporary checkpoint).
  held = dir_lock.hold_directory(root / "recipe", "training")
  with pytest.raises(dir_lock.DirectoryInUse, match=r"recipe is being written by training, process \d+"):
    training.train(root / "recipe", cfg, contexts, tc, progress=False)
  held.close()
  summary = training.train(root / "recipe", cfg, contexts, dataclasses.replace(tc, eval_every=3), progress=False)
  assert summary["steps_run"] == 7 and summary["final_step"] == 12


def test_a_missing_checkpoint_before_the_resume_step_is_said(corpus, tmp_path):
  """Resuming cannot make a scheduled checkpoint that was deleted (or never copied) before the resume step; the
  summary just listed the steps without it."""
  root, cfg, contexts = corpus
  tc = training.TrainConfig(steps=8, batch_size=8, resume_every=2, checkpoint_steps=(0, 2, 8))
  training.train(tmp_path / "run", cfg, contexts, tc, progress=False, stop_after=5)
  shutil.rmtree(tmp_path / "run" / "checkpoints" / "2")
  said = []
  training.train(tmp_path / "run", cfg, contexts, tc, progress=False, log=said.append)
  assert any("checkpoint step(s) [2] of the schedule are missing" in line and "resume step 5" in line
             for line in said), said


def test_a_damaged_resume_state_is_named_with_what_to_do(corpus, tmp_path):
  root, cfg, contexts = corpus
  tc = training.TrainConfig(steps=8, batch_size=8, resume_every=2, checkpoint_steps=(0, 8))
  training.train(tmp_path / "run", cfg, contexts, tc, progress=False, stop_after=3)
  for f in (tmp_path / "run" / "train_state").rglob("*"):
    if f.is_file() and f.parent.name == "d":
      f.write_bytes(b"\0" * f.stat().st_size)
  with pytest.raises(ValueError, match=r"resume state at step \d in .*train_state could not be read .*delete "
                                       r".*train_state/\d to train again from step 0"):
    training.train(tmp_path / "run", cfg, contexts, tc, progress=False)


def test_checkpoint_errors_name_the_input(corpus, tmp_path):
  root, cfg, contexts = corpus
  training.train(tmp_path / "run", cfg, contexts, training.TrainConfig(steps=4, batch_size=8, checkpoint_steps=(0, 4)),
                 progress=False)
  with pytest.raises(ValueError, match=r"no checkpoint at step 3 in .*available steps: \[0, 4\]"):
    checkpoints.load_params(tmp_path / "run", 3)
  with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
    checkpoints.available_steps(tmp_path / "nowhere")
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="holds no checkpoints"):
    checkpoints.available_steps(tmp_path / "empty")
  shutil.copy(tmp_path / "run" / "run.json", tmp_path / "empty" / "run.json")
  with pytest.raises(FileNotFoundError, match="holds no checkpoints"):
    checkpoints.load_params(tmp_path / "empty", 0)
  with pytest.raises(ValueError, match="need n_ctx >= 20"):
    training.train(tmp_path / "long", cfg, np.zeros((100, 21), np.int32), training.TrainConfig(steps=1), progress=False)
  # damaged array files: named as damage, not as a model mismatch (tensorstore's DATA_LOSS is a ValueError too)
  for f in (tmp_path / "run" / "checkpoints" / "4").rglob("*"):
    if f.is_file() and f.parent.name == "d":
      f.write_bytes(b"\0" * f.stat().st_size)
  with pytest.raises(ValueError, match=r"checkpoint at step 4 in .* could not be read \(a damaged or partly copied"):
    checkpoints.load_params(tmp_path / "run", 4)


def test_vocab_that_does_not_fit_the_model_is_rejected(corpus):
  root, cfg, _ = corpus
  tokenizer = tokenizers_lib.load_tokenizer(root / "tokenizer.json")
  with pytest.raises(ValueError, match=r"does not fit the model's d_vocab=300"):
    tokenizers_lib.check_vocab_fits(tokenizer, 300)
  with pytest.raises(ValueError, match=r"training contexts holds token ids in \[0, 319\], outside .* \[0, 64\)"):
    training.train(root / "bad", cfg.__class__(**{**cfg.__dict__, "d_vocab": 64}),
                   np.full((100, 16), 319, np.int32) * (np.arange(16) % 2), training.TrainConfig(steps=1),
                   progress=False)
