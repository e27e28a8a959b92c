"""Steps shared by the runners: build what a run needs if it is missing, then load it.

Each step is idempotent and resumable: corpora and tokenized contexts are cached, a tokenizer is written
atomically, and training resumes from its latest train state.
"""
from pathlib import Path

from experiments import presets
from suscept_jax import checkpoints, training
from suscept_jax.data import corpora, packing, sources
from suscept_jax.data import tokenizer as tokenizers_lib
from suscept_jax.models import config as model_config


def ensure_corpora(specs) -> None:
  """Build the offline corpora if any spec names one that is not built yet."""
  names = [s for s in specs if s in corpora.CORPUS_SPECS or s == "pile"]
  missing = []
  for name in names:
    try:
      corpora.corpus_path(name)
    except FileNotFoundError:
      missing.append(name)
  if missing:
    print(f"building the offline corpora (missing: {', '.join(missing)})")
    corpora.build_corpora()


def ensure_tokenizer(path, *, train_data: str, vocab_size: int):
  """Load the tokenizer at `path`, training a byte-level BPE on `train_data` first if it is missing."""
  path = Path(path)
  if not path.exists():
    print(f"training a {vocab_size}-token byte-level BPE tokenizer on {train_data!r} -> {path}")
    ensure_corpora([train_data])
    tokenizers_lib.train_bpe_tokenizer(sources.iter_documents(train_data), vocab_size=vocab_size, path=path)
  return tokenizers_lib.load_tokenizer(path)


def load_dataset(spec: str, tokenizer, context_length: int, max_contexts=None):
  """Tokenized contexts int32 [N, K] of a dataset spec (memory-mapped from the cache)."""
  ensure_corpora([spec])
  return packing.load_contexts(spec, tokenizer, context_length, max_contexts=max_contexts)


def ensure_trained(run_dir, *, model: str, tokenizer, train_data: str, train_config: training.TrainConfig,
                   max_contexts=None) -> dict | None:
  """Train (or finish training) the model in `run_dir`; a no-op when its last step is already saved."""
  cfg = model_config.get_config(model)
  tokenizers_lib.check_vocab_fits(tokenizer, cfg.d_vocab)
  try:
    if train_config.steps in checkpoints.available_steps(run_dir):
      return None
  except FileNotFoundError:
    pass
  contexts = load_dataset(train_data, tokenizer, cfg.n_ctx, max_contexts)
  print(f"training the {model!r} model ({train_config.steps} steps) in {run_dir}")
  summary = training.train(run_dir, cfg, contexts, train_config)
  print(f"trained: test loss {summary['test_loss']:.3f} nats vs unigram entropy {summary['unigram_entropy']:.3f} "
        f"({summary['seconds']:.0f} s)")
  return summary


def prepare_demo_run(preset_name: str, run_dir, tokenizer_path) -> None:
  """The demo trains its own model (and builds corpora and tokenizer) when they are missing."""
  preset = presets.get_preset(preset_name)
  tokenizer = ensure_tokenizer(tokenizer_path, train_data=preset.train_data, vocab_size=preset.vocab_size)
  ensure_trained(run_dir, model=preset.model, tokenizer=tokenizer, train_data=preset.train_data,
                 train_config=preset.train)
