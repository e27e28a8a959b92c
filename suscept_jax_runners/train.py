"""Train an attention-only transformer and keep orbax checkpoints over training.

  python -m experiments.train                         # the demo model on the offline "pile" (a few minutes)
  python -m experiments.train --preset=paper --workdir=runs/tetra --data=hf:timaeus/dsir-pile-1m-2

Killed runs resume from their latest train state with no lost steps: rerun the same command.
"""
import dataclasses
from pathlib import Path

from absl import app, flags

from suscept_jax.train_config import TrainConfig
from suscept_jax_runners import cli, presets

_PRESET = flags.DEFINE_enum("preset", "demo", sorted(presets.PRESETS), "Named defaults for every other flag.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, train state, metrics). "
                               "Default: the preset's.")
_MODEL = flags.DEFINE_string("model", None, "Named model config: demo, tetrahedron_3m, tiny "
                             + cli.by_preset(lambda p: p.model) + ".")
_DATA = flags.DEFINE_string("data", None, "Training data: a corpus name, a local file, hf:NAME or tfds:NAME.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer.json (trained on --data if it does not exist).")
_VOCAB = flags.DEFINE_integer("vocab_size", None, "Vocab of a tokenizer trained because --tokenizer is missing "
                               + cli.by_preset(lambda p: p.vocab_size) + ".")
_STEPS = flags.DEFINE_integer("steps", None, "Optimizer steps " + cli.by_preset(lambda p: p.train.steps) + ".")
_BATCH = flags.DEFINE_integer("batch_size", None, "Contexts per step, split over all devices "
                              + cli.by_preset(lambda p: p.train.batch_size) + ".")
_LR = flags.DEFINE_float("learning_rate", None, "AdamW learning rate "
                         + cli.by_preset(lambda p: p.train.learning_rate) + ".")
_WD = flags.DEFINE_float("weight_decay", None, "AdamW weight decay " + cli.by_preset(lambda p: p.train.weight_decay)
                         + ".")
_SEED = flags.DEFINE_integer("seed", None, "Initialisation and data-order seed " + cli.by_preset(lambda p: p.train.seed)
                             + ".")
_CKPT_STEPS = flags.DEFINE_list("checkpoint_steps", None, "Steps whose params are kept; the last step always is "
                                + cli.by_preset(lambda p: p.train.checkpoint_steps or "the paper's list S, scaled")
                                + "; with a smaller --steps, the preset's steps up to it.")
_MAX_CONTEXTS = flags.DEFINE_integer("max_contexts", None, "Cap on tokenized training contexts.")
_REPEATS = flags.DEFINE_float("repeat_fraction", None, "Share of training contexts given a repeated span (what "
                              "makes induction heads form) " + cli.by_preset(lambda p: p.train_repeat_fraction) + ".")


MIN_VOCAB = 257  # 256 byte symbols and the end-of-text token


def train_config(preset: presets.Preset) -> TrainConfig:
  """The preset's training settings with the flags given; a smaller --steps keeps the preset's checkpoint steps
  up to it (the demo's fixed list ended at 3000, so --steps=50 was refused)."""
  try:
    steps = tuple(int(s) for s in _CKPT_STEPS.value) if _CKPT_STEPS.value else None
  except ValueError:
    raise ValueError(f"--checkpoint_steps={','.join(_CKPT_STEPS.value)} must be integers") from None
  if steps is None and _STEPS.value is not None and preset.train.checkpoint_steps:
    steps = tuple(s for s in preset.train.checkpoint_steps if s <= _STEPS.value)
  overrides = {"steps": _STEPS.value, "batch_size": _BATCH.value, "learning_rate": _LR.value,
               "weight_decay": _WD.value, "seed": _SEED.value, "checkpoint_steps": steps}
  return dataclasses.replace(preset.train, **{k: v for k, v in overrides.items() if v is not None})


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_libraries()
  preset, workdir, tokenizer_path = cli.resolve_run(_PRESET.value, _WORKDIR.value, _TOKENIZER.value,
                                                    run_dir_flag="workdir")
  data = _DATA.value or preset.train_data
  model = _MODEL.value or preset.model
  config = train_config(preset)
  from suscept_jax import validation
  validation.check_seed(config.seed, "--seed")  # (numpy's "expected non-negative integer", after the tokenizer)
  from suscept_jax.models import config as model_config
  from suscept_jax_runners import pipeline
  d_vocab = model_config.get_config(model).d_vocab  # an unknown model name fails here, before any work
  import jax
  if config.batch_size % jax.device_count():
    raise ValueError(f"--batch_size={config.batch_size} must be divisible by the {jax.device_count()} devices")
  vocab = _VOCAB.value or preset.vocab_size
  if not Path(tokenizer_path).exists():  # (an existing tokenizer is checked against the model as it is loaded)
    if vocab != d_vocab:
      raise ValueError(f"--vocab_size={vocab} differs from model {model!r}'s d_vocab={d_vocab}")
    if vocab < MIN_VOCAB:
      raise ValueError(f"--vocab_size={vocab}: a byte-level tokenizer has at least {MIN_VOCAB} tokens (256 bytes "
                       f"and end-of-text); model {model!r} cannot be trained on one")
  repeat_fraction = preset.train_repeat_fraction if _REPEATS.value is None else _REPEATS.value
  if not 0 <= repeat_fraction < 1:
    raise ValueError(f"--repeat_fraction={repeat_fraction} must lie in [0, 1)")
  pipeline.check_datasets([data])
  from suscept_jax import paths
  if Path(workdir).exists() and not Path(workdir).is_dir():
    raise ValueError(f"--workdir={workdir} is a file, not a run directory")
  paths.check_writable_dir(workdir, "--workdir")
  tokenizer = pipeline.ensure_tokenizer(tokenizer_path, train_data=data, vocab_size=vocab)
  from suscept_jax.data import tokenizer as tokenizers_lib
  tokenizers_lib.check_vocab_matches(tokenizer, d_vocab, name=f"tokenizer {tokenizer_path}")
  own_copy = Path(workdir) / "tokenizer.json"  # where the sweep, per-token and calibrate runners look for it
  if not own_copy.exists():
    tokenizers_lib.save_tokenizer(tokenizer, own_copy)
  elif (tokenizers_lib.tokenizer_fingerprint(tokenizers_lib.load_tokenizer(own_copy))
        != tokenizers_lib.tokenizer_fingerprint(tokenizer)):
    raise ValueError(f"{own_copy} is another tokenizer than --tokenizer={tokenizer_path}: the run's other runners "
                     "would read it; use another --workdir, or the tokenizer the run was trained with")
  summary = pipeline.ensure_trained(workdir, model=model, tokenizer=tokenizer, train_data=data, train_config=config,
                                    max_contexts=_MAX_CONTEXTS.value, repeat_fraction=repeat_fraction)
  if summary is None:
    print(f"{workdir} is already trained to its last step; nothing to do")
  else:
    print(f"{workdir}: checkpoints at {summary['checkpoints']}")


if __name__ == "__main__":
  cli.run(main)
