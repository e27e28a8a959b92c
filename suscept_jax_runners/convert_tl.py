"""Turn TransformerLens checkpoints into a run directory the sweep and the per-token runner read.

  python -m experiments.convert_tl --input=tetrahedron-3m/checkpoints --output=runs/tetra --tokenizer=tokenizer.json
  python -m experiments.convert_tl --input=checkpoint_0049900.pth --output=runs/tetra --positional_embedding=standard

Each `checkpoint_XXXXXXX.pth` (or `.safetensors`) becomes the orbax params checkpoint of step XXXXXXX; the step is
read from the file name. The model config is inferred from the weights (positions and normalisation from the
flags, which default to the paper's model: shortformer, LayerNorm when ln weights are present). The tokenizer is
copied to <output>/tokenizer.json after checking its vocabulary against the model. Rerunning skips steps that are
already converted, so an interrupted conversion finishes where it stopped. Reading `.pth` needs torch
(`pip install 'suscept_jax[interop]'`).
"""
import json
from pathlib import Path

from absl import app, flags

from suscept_jax_runners import cli

_INPUT = flags.DEFINE_string("input", None, "A TransformerLens checkpoint file, or a directory of them "
                             "(checkpoint_<step>.pth / .safetensors).")
_OUTPUT = flags.DEFINE_string("output", None, "Run directory to write (orbax checkpoints + run.json).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "The model's tokenizer.json, copied into the run directory.")
_POSITIONAL = flags.DEFINE_enum("positional_embedding", "shortformer", ["shortformer", "standard"],
                                "TransformerLens positional_embedding_type of the checkpoints.")
_NORMALIZATION = flags.DEFINE_enum("normalization", "auto", ["auto", "LN", "LNPre", "none"],
                                   "TransformerLens normalization_type (auto: LN when the state dict has ln weights, "
                                   "else none).")
_CONFIG = flags.DEFINE_string("config", None, "Optional JSON of the TransformerLens config (cfg.to_dict()); its "
                              "positional_embedding_type and normalization_type win over the flags.")
flags.mark_flags_as_required(["input", "output"])


def _overrides() -> dict:
  overrides = {"positional_embedding_type": _POSITIONAL.value}
  if _NORMALIZATION.value != "auto":
    overrides["normalization_type"] = None if _NORMALIZATION.value == "none" else _NORMALIZATION.value
  if _CONFIG.value:
    path = Path(_CONFIG.value)
    if not path.is_file():
      raise FileNotFoundError(f"--config={path} not found")
    try:
      overrides.update(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
      raise ValueError(f"--config={path} is not valid JSON: {e}") from None
  return overrides


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_libraries()
  from suscept_jax import checkpoints
  if not _CONFIG.value:
    print(f"note: no --config: positions {_POSITIONAL.value!r} and normalisation {_NORMALIZATION.value!r} come from "
          f"the flags and the rest from the weights (LayerNorm eps 1e-5): a state dict cannot say them. Pass the "
          f"checkpoint's saved cfg.to_dict() as --config=cfg.json to take them from the training run")
  checkpoints.import_transformer_lens(_INPUT.value, _OUTPUT.value, tokenizer_path=_TOKENIZER.value,
                                      config=_overrides())


if __name__ == "__main__":
  cli.run(main)
