"""Calibrate SGLD's step size (optionally nβ and γ) at one checkpoint, for "full" and one head.

  python -m experiments.calibrate                                   # the demo model's last checkpoint
  python -m experiments.calibrate --preset=paper --run_dir=runs/tetra --step=49900 --component=l1h3 \\
      --step_sizes=1e-4,3e-4,1e-3,3e-3 --nbetas=10,30,100

Every setting of the grid runs for both components as one vectorized program. Writes
<output_dir>/calibration.png (LLC traces per setting, MALA acceptance and LLC against ε) and
calibration.json (every cell, the criteria, the recommendation and why each setting passes or fails),
and prints the recommendation: the largest ε whose MALA acceptance is ≥ --min_acceptance and whose LLC
trace is flat in its second half, for both components (criteria in suscept_jax.calibration).
"""
import dataclasses
from pathlib import Path

from absl import app, flags

from suscept_jax_runners import cli, presets

DEFAULT_STEP_SIZES = ("1e-5", "3e-5", "1e-4", "3e-4", "1e-3", "3e-3")

_PRESET = flags.DEFINE_enum("preset", "demo", sorted(presets.PRESETS), "Named defaults for every other flag.")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Training run directory with orbax checkpoints "
                               + cli.by_preset(lambda p: p.run_dir) + ".")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to calibrate at (default: the last one saved).")
_DATA = flags.DEFINE_string("data", None, "Dataset the posterior is built on " + cli.by_preset(lambda p: p.base) + ".")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer.json "
                                 + cli.by_preset(lambda p: p.tokenizer or "<run_dir>/tokenizer.json") + ".")
_COMPONENT = flags.DEFINE_string("component", None, "Component calibrated beside 'full' (default: the first head).")
_STEP_SIZES = flags.DEFINE_list("step_sizes", list(DEFAULT_STEP_SIZES), "Grid of SGLD step sizes ε.")
_NBETAS = flags.DEFINE_list("nbetas", None, "Grid of nβ " + cli.by_preset(lambda p: p.sgld.nbeta) + ".")
_LOCALIZATIONS = flags.DEFINE_list("localizations", None, "Grid of γ "
                                   + cli.by_preset(lambda p: p.sgld.localization) + ".")
_BATCH = flags.DEFINE_integer("batch_size", None, "Contexts per SGLD step "
                              + cli.by_preset(lambda p: p.batch_size) + ".")
_MICRO = cli.define_microbatch_flag()
_MIN_ACCEPTANCE = flags.DEFINE_float("min_acceptance", 0.9, "Lowest MALA acceptance a recommended setting may have.")
_MALA_EVERY = flags.DEFINE_integer("mala_every", 2, "Measure MALA acceptance every this many draws.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of SGLD noise and batch order.")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Where to write calibration.png/.json "
                              "(default: <run_dir>/../calibration).")
_SGLD = cli.define_sgld_flags(exclude=("step_size", "nbeta", "localization", "mala_every"))
flags.adopt_module_key_flags(cli)  # the SGLD flags show in --help


def _floats(name: str, values) -> list[float] | None:
  if values is None:
    return None
  try:
    return [float(v) for v in values]
  except ValueError:
    raise ValueError(f"--{name}={','.join(values)}: expected numbers") from None  # (not the usage)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_libraries()
  preset, run_dir, tokenizer_path = cli.resolve_run(_PRESET.value, _RUN_DIR.value, _TOKENIZER.value)
  step_sizes, nbetas, gammas = (_floats("step_sizes", _STEP_SIZES.value), _floats("nbetas", _NBETAS.value),
                                _floats("localizations", _LOCALIZATIONS.value))
  config = cli.sgld_config(preset.sgld, _SGLD, mala_every=_MALA_EVERY.value)
  batch_size = preset.batch_size if _BATCH.value is None else _BATCH.value
  micro = cli.microbatch_size(_MICRO, preset.microbatch_size)
  if batch_size < 1:
    raise ValueError(f"--batch_size={batch_size} must be a positive integer")
  data_spec = _DATA.value or preset.base

  import functools

  from suscept_jax import calibration, checkpoints
  from suscept_jax.analysis import plots
  from suscept_jax.data import tokenizer as tokenizers_lib
  from suscept_jax.models import components as components_lib
  from suscept_jax.models import transformer
  from suscept_jax.paths import atomic_write_json
  from suscept_jax_runners import pipeline
  target = pipeline.resolve_target(_PRESET.value, run_dir, tokenizer_path)
  step = target.check_steps(None)[-1] if _STEP.value is None else target.check_steps([_STEP.value])[0]
  model_cfg = target.model_config
  head = _COMPONENT.value or model_cfg.head_names[0]
  comps = components_lib.component_masks(["full", head], transformer.param_shapes(model_cfg), model_cfg)
  pipeline.check_datasets([data_spec])
  if target.needs_training:
    pipeline.prepare_demo_run(_PRESET.value, run_dir, tokenizer_path)
  tokenizer = tokenizers_lib.load_tokenizer(target.tokenizer_path)
  data = pipeline.load_dataset(data_spec, tokenizer, target.context_length, preset.max_contexts)
  transformer.check_token_range(data, model_cfg, name=data_spec)
  params = checkpoints.load_params(run_dir, step)

  print(f"calibrating at checkpoint {step} of {run_dir}: components full, {head}; {len(step_sizes)} step sizes × "
        f"{len(nbetas or [config.nbeta])} nβ × {len(gammas or [config.localization])} γ; "
        f"{config.num_chains} chains × {config.num_draws} draws, batch {batch_size}")
  result = calibration.calibrate(
      functools.partial(transformer.context_nll, config=model_cfg), params, data, comps, step_sizes=step_sizes,
      nbetas=nbetas, localizations=gammas, config=config, batch_size=batch_size, microbatch_size=micro,
      min_acceptance=_MIN_ACCEPTANCE.value, seed=_SEED.value, checkpoint_id=step, data_name=data_spec)
  out = Path(_OUTPUT.value or Path(run_dir).parent / "calibration")
  out.mkdir(parents=True, exist_ok=True)
  payload = {"run_dir": str(run_dir), "checkpoint": step, "data": data_spec, "components": ["full", head],
             "batch_size": batch_size, "microbatch_size": micro, "config": dataclasses.asdict(config),
             **result.to_json()}
  atomic_write_json(out / "calibration.json", payload)
  figure = plots.plot_calibration(result, out / "calibration.png")
  print("\n".join(result.explain()))
  pairs = result.recommendations()
  for nbeta, localization, best in pairs:
    at = f" at nβ={nbeta:g}, γ={localization:g}" if len(pairs) > 1 else ""
    print(f"\nrecommended{at}: {best.label}" if best else
          f"\nno setting{at} passes every test: try smaller step sizes, more draws (a longer run flattens the "
          "trace), or a burn-in")
  print(f"written: {out / 'calibration.json'}, {figure}")


if __name__ == "__main__":
  cli.run(main)
