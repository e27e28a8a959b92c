"""Steps shared by the runners: check what a run needs, build it if it is the demo's own, then load it.

`resolve_target` checks everything that can be checked without tokenizing data or training a model (the
run directory, its checkpoints, the tokenizer against the model); the `ensure_*` steps are idempotent
and resumable: corpora and tokenized contexts are cached, a tokenizer is written atomically, and
training resumes from its latest train state.
"""
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from suscept_jax import checkpoints, training
from suscept_jax.data import corpora, packing, repeats, sources
from suscept_jax.data import tokenizer as tokenizers_lib
from suscept_jax.models import components as components_lib
from suscept_jax.models import config as model_config
from suscept_jax.models import transformer
from suscept_jax.models.config import ModelConfig
from suscept_jax_runners import presets


@dataclasses.dataclass
class RunTarget:
  """The training run a sweep or a calibration works on, as far as it is known before any work."""

  run_dir: str
  model_config: ModelConfig
  available_steps: list  # saved checkpoints (for a demo run still to be trained: its schedule)
  context_length: int  # tokens per context the model was trained on
  tokenizer_path: str
  needs_training: bool  # the demo preset's own run, not (fully) trained yet: the runner trains it first

  def check_steps(self, steps) -> list[int]:
    """`steps` (None: all), each of which must be saved (or scheduled, for a run still to be trained)."""
    steps = list(self.available_steps) if steps is None else list(steps)
    missing = [s for s in steps if s not in self.available_steps]
    if missing:
      raise ValueError(f"checkpoint steps {missing} are not saved in {self.run_dir} (--steps, or --step); "
                       f"available: {self.available_steps}")
    return steps


def resolve_target(preset_name: str, run_dir, tokenizer_path) -> RunTarget:
  """Check the run directory and the tokenizer; never trains or tokenizes anything.

  A directory that holds no training run is an error, except the demo preset's own directory (the demo
  trains it). The tokenizer's vocabulary must equal the model's, and must be the tokenizer the run was
  trained with when the run recorded one.
  """
  preset = presets.get_preset(preset_name)
  own_demo = preset.trains_itself and Path(run_dir).resolve() == Path(preset.run_dir).resolve()
  try:
    info = checkpoints.read_run_info(run_dir)
  except FileNotFoundError:
    if not own_demo:
      raise FileNotFoundError(
          f"--run_dir={run_dir} holds no training run (no {checkpoints.RUN_FILE}); train one with "
          f"`python -m experiments.train --workdir={run_dir}`, or leave --run_dir out to use the demo's") from None
    info = None
  if info is None:
    cfg = model_config.get_config(preset.model)
    steps, context_length, needs_training = preset.train.schedule(), cfg.n_ctx, True
  else:
    cfg = ModelConfig(**info["model_config"])
    try:
      steps = checkpoints.available_steps(run_dir)
    except FileNotFoundError:
      if not own_demo:
        raise
      steps = []
    needs_training = own_demo and preset.train.steps not in steps
    if needs_training:
      steps = preset.train.schedule()
    context_length = int(info.get("context_length", cfg.n_ctx))
  tokenizer_path = str(tokenizer_path)
  if Path(tokenizer_path).exists():
    check_run_tokenizer(tokenizer_path, cfg, info, run_dir)
  elif not own_demo:
    raise FileNotFoundError(f"tokenizer {tokenizer_path} not found (give the one the run was trained with as "
                            f"--tokenizer)")
  return RunTarget(run_dir=str(run_dir), model_config=cfg, available_steps=list(steps),
                   context_length=context_length, tokenizer_path=tokenizer_path, needs_training=needs_training)


def check_run_tokenizer(tokenizer_path, cfg, run_info, run_dir):
  """The tokenizer at `tokenizer_path`, checked against the model (its vocabulary) and against the run (the
  fingerprint it recorded, when it recorded one): contexts tokenized otherwise would be another model's data."""
  tokenizer = tokenizers_lib.load_tokenizer(tokenizer_path)
  tokenizers_lib.check_vocab_matches(tokenizer, cfg.d_vocab, name=f"tokenizer {tokenizer_path}")
  recorded = (run_info or {}).get("tokenizer_fingerprint")
  if recorded and recorded != tokenizers_lib.tokenizer_fingerprint(tokenizer):
    raise ValueError(f"tokenizer {tokenizer_path} is not the one {run_dir} was trained with (fingerprint "
                     f"{tokenizers_lib.tokenizer_fingerprint(tokenizer)} vs {recorded} recorded with the run)")
  return tokenizer


def check_datasets(specs) -> None:
  """Every dataset spec names something that exists (no data is read): fail in seconds, not after work."""
  for spec in specs:
    sources.check_spec(repeats.split_spec(spec)[0])


def measured_components(requested, model_cfg: ModelConfig) -> tuple[list[str], dict]:
  """The component specs a run measures, "full" first and then `requested` (None or empty: every head) each
  once, with their masks (spec -> mask pytree)."""
  specs = requested or components_lib.default_components(model_cfg)
  specs = ["full"] + [s for s in dict.fromkeys(specs) if s != "full"]
  return specs, components_lib.component_masks(specs, transformer.param_shapes(model_cfg), model_cfg)


def take_recorded_spellings(settings: dict, store, *, overwrite: bool) -> dict:
  """`recorded_spellings` as a runner applies it: not when the results are to be overwritten, and each spec
  respelled said in a line."""
  if overwrite:
    return settings
  settings, notes = recorded_spellings(settings, store)
  for line in notes:
    print(line)
  return settings


def recorded_spellings(settings: dict, store) -> tuple[dict, list[str]]:
  """`settings` with its base and probes spelled as the results directory `store` recorded them wherever a
  request names the same local data by another spelling of its path (`$PWD/data/x.jsonl` for `data/x.jsonl`):
  a rerun then reuses those results rather than computing a probe again under a second name or refusing the
  base as another setting. Returns the settings and a line per spec respelled; a directory without results, or
  a spec that names other data, changes nothing (the data's fingerprints are still compared later)."""
  if not store.holds_results():
    return settings, []
  config = store.config()
  recorded = config["settings"]
  known = list(dict.fromkeys([*recorded.get("probes", []),
                              *(p for scope in config.get("scopes", []) for p in scope.get("probes", []))]))

  def respell(spec: str, candidates) -> str:
    if spec in candidates:
      return spec
    inner, marked = repeats.split_spec(spec)
    for other in candidates:
      other_inner, other_marked = repeats.split_spec(other)
      if other_marked == marked and sources.same_local_data(inner, other_inner):
        return other
    return spec

  base = respell(settings["base"], [recorded["base"]] if "base" in recorded else [])
  probes = [respell(p, known) for p in settings["probes"]]
  respelled = [(a, b) for a, b in zip([settings["base"], *settings["probes"]], [base, *probes]) if a != b]
  notes = [f"{a!r} names the data {store.path} holds as {b!r}: taken under that name" for a, b in respelled]
  return {**settings, "base": base, "probes": list(dict.fromkeys(probes))}, notes


def contexts_fingerprint(spec: str, tokenizer, context_length: int, max_contexts, *,
                         identity: str = "content") -> str:
  """Identity of the contexts a spec gives (its data files or hub revision, the tokenizer, the packing),
  without tokenizing: what a results directory records so changed data cannot be mixed in silently.
  `identity`: how local files are identified (`sources.DATA_IDENTITIES`; see `data_identity`)."""
  inner, marked = repeats.split_spec(spec)
  ensure_corpora([inner])
  parts = [sources.dataset_fingerprint(inner, identity=identity), tokenizers_lib.tokenizer_fingerprint(tokenizer),
           int(context_length), max_contexts] + (["repeated spans v1"] if marked else [])
  return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def ensure_corpora(specs) -> None:
  """Build the offline corpora if any spec names one that is not built yet."""
  specs = [repeats.split_spec(s)[0] for s in specs]
  names = [s for s in specs if s in corpora.CORPUS_SPECS or s == "pile"]
  missing = []
  for name in names:
    try:
      corpora.corpus_path(name)
    except FileNotFoundError:
      missing.append(name)
  if missing:
    print(f"building the offline corpora (missing: {', '.join(missing)})")
    from suscept_jax_runners import corpus_fetch
    corpora.build_corpora(fetch=corpus_fetch.fetch_archive, deb_to_tar=corpus_fetch.deb_data_tar)


def ensure_tokenizer(path, *, train_data: str, vocab_size: int):
  """Load the tokenizer at `path`, training a byte-level BPE on `train_data` first if it is missing."""
  path = Path(path)
  if not path.exists():
    print(f"training a {vocab_size}-token byte-level BPE tokenizer on {train_data!r} -> {path}")
    ensure_corpora([train_data])
    tokenizers_lib.train_bpe_tokenizer(sources.iter_documents(train_data), vocab_size=vocab_size, path=path)
  return tokenizers_lib.load_tokenizer(path)


def load_dataset(spec: str, tokenizer, context_length: int, max_contexts=None):
  """Tokenized contexts int32 [N, K] of a dataset spec (memory-mapped from the cache). 'repeats:<spec>': the
  contexts of <spec>, every one with a repeated span of random tokens (data/repeats.py)."""
  inner, marked = repeats.split_spec(spec)
  ensure_corpora([inner])
  contexts = packing.load_contexts(inner, tokenizer, context_length, max_contexts=max_contexts)
  if not marked:
    return contexts
  low, high = repeats.span_lengths(contexts.shape[1])
  return repeats.add_repeated_spans(contexts, 1.0, seed=0, min_len=low, max_len=high,
                                    d_vocab=tokenizers_lib.vocab_size(tokenizer))


def with_repeated_spans(contexts_NxK, train_config: training.TrainConfig, repeat_fraction: float,
                        d_vocab: int) -> np.ndarray:
  """The contexts with a share `repeat_fraction` of the training rows carrying a repeated span; the test rows
  (the last ones, as many as `training.train` holds out) untouched."""
  num_train = len(contexts_NxK) - training.num_test_contexts(len(contexts_NxK), train_config)
  low, high = repeats.span_lengths(contexts_NxK.shape[1])
  marked = repeats.add_repeated_spans(contexts_NxK[:num_train], repeat_fraction, seed=train_config.seed,
                                      min_len=low, max_len=high, d_vocab=d_vocab)
  return np.concatenate([marked, np.asarray(contexts_NxK[num_train:], np.int32)])


def ensure_trained(run_dir, *, model: str, tokenizer, train_data: str, train_config: training.TrainConfig,
                   max_contexts=None, repeat_fraction: float = 0.0) -> dict | None:
  """Train (or finish training) the model in `run_dir`; a no-op when its last step is already saved."""
  cfg = model_config.get_config(model)
  tokenizers_lib.check_vocab_matches(tokenizer, cfg.d_vocab)
  run_info = {"tokenizer_fingerprint": tokenizers_lib.tokenizer_fingerprint(tokenizer), "train_data": train_data,
              "repeat_fraction": repeat_fraction, "max_contexts": max_contexts}
  training.check_same_recipe(run_dir, training.recipe(cfg, train_config, **run_info))
  try:
    if train_config.steps in checkpoints.available_steps(run_dir):
      return None
  except FileNotFoundError:
    pass
  contexts = load_dataset(train_data, tokenizer, cfg.n_ctx, max_contexts)
  if repeat_fraction:
    contexts = with_repeated_spans(contexts, train_config, repeat_fraction, cfg.d_vocab)
  print(f"training the {model!r} model ({train_config.steps} steps) in {run_dir}")
  summary = training.train(run_dir, cfg, contexts, train_config, run_info=run_info)
  print(f"trained: test loss {summary['test_loss']:.3f} nats vs unigram entropy {summary['unigram_entropy']:.3f} "
        f"({summary['seconds']:.0f} s)")
  return summary


def ready_target(target: RunTarget, preset_name: str, run_dir, tokenizer_path):
  """(target, tokenizer) ready for work: the demo's own run is built first when it is missing."""
  from suscept_jax.data import tokenizer as tokenizers_lib
  if target.needs_training:
    prepare_demo_run(preset_name, target.run_dir, target.tokenizer_path)
    target = resolve_target(preset_name, run_dir, tokenizer_path)
  return target, tokenizers_lib.load_tokenizer(target.tokenizer_path)


def prepare_demo_run(preset_name: str, run_dir, tokenizer_path) -> None:
  """The demo trains its own model (and builds corpora and tokenizer) when they are missing."""
  preset = presets.get_preset(preset_name)
  tokenizer = ensure_tokenizer(tokenizer_path, train_data=preset.train_data, vocab_size=preset.vocab_size)
  ensure_trained(run_dir, model=preset.model, tokenizer=tokenizer, train_data=preset.train_data,
                 train_config=preset.train, repeat_fraction=preset.train_repeat_fraction)
