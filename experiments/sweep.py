"""Susceptibility sweep: every checkpoint × probe dataset × component (each head and the full model).

  python -m experiments.sweep                       # the built-in demo: builds and trains what is missing
  python -m experiments.sweep --preset=paper --run_dir=runs/tetra --output_dir=runs/tetra/sweep

Writes one results directory (see suscept_jax.results). Each checkpoint is a unit written atomically; a
killed sweep rerun with the same flags skips the finished units and ends with the same table.
"""
import dataclasses
import functools
import time
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from experiments import cli, pipeline, presets
from suscept_jax import api, checkpoints, mixing, results
from suscept_jax.analysis import head_scores, plots
from suscept_jax.data import tokenizer as tokenizers_lib
from suscept_jax.models import components as components_lib
from suscept_jax.models import transformer
from suscept_jax.sgld import SGLDConfig

HEAD_SCORE_CONTEXTS = 32  # base contexts for the per-head zero-ablation loss deltas

_PRESET = flags.DEFINE_enum("preset", "demo", sorted(presets.PRESETS), "Named defaults for every other flag.")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Training run directory with orbax checkpoints.")
_STEPS = flags.DEFINE_list("steps", None, "Checkpoint steps to measure, or 'all' (default: the preset's).")
_BASE = flags.DEFINE_string("base", None, "Base dataset q: corpus name, local file, hf:NAME or tfds:NAME.")
_PROBES = flags.DEFINE_list("probes", None, "Probe datasets q' (same spec forms as --base).")
_COMPONENTS = flags.DEFINE_list("components", None, "Component specs (default: every head + full); see "
                                "suscept_jax.models.components. 'full' is always added.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer.json (default: the preset's or <run_dir>/tokenizer.json).")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Results directory (default: the preset's).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard results in --output_dir made with other settings.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of SGLD noise and batch order.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Contexts per SGLD step and evaluation batch (paper: 64).")
_MICRO = flags.DEFINE_integer("microbatch_size", None, "Split gradient batches into micro-batches of this size.")
_DELTA_H = flags.DEFINE_float("delta_h", None, "Mixing fraction δh of the probe (paper: 0.1).")
_CHI_FORM = flags.DEFINE_enum("chi_form", "eq41", ["eq41", "covariance"], "Estimator of χ.")
_MAX_CONTEXTS = flags.DEFINE_integer("max_contexts", None, "Cap on tokenized contexts per dataset.")
_SGLD_FLAGS = {
    "step_size": flags.DEFINE_float("step_size", None, "SGLD step size ε (paper: 1e-3)."),
    "localization": flags.DEFINE_float("localization", None, "SGLD localization γ (paper: 300)."),
    "nbeta": flags.DEFINE_float("nbeta", None, "Inverse temperature nβ (paper: 30)."),
    "num_chains": flags.DEFINE_integer("num_chains", None, "Chains per component (paper: 4)."),
    "num_draws": flags.DEFINE_integer("num_draws", None, "Draws per chain (paper: 200)."),
    "num_burnin": flags.DEFINE_integer("num_burnin", None, "Steps before the first draw (paper: 0)."),
    "steps_between_draws": flags.DEFINE_integer("steps_between_draws", None, "SGLD steps per draw (paper: 1)."),
    "sampler": flags.DEFINE_enum("sampler", None, ["sgld", "rmsprop_sgld"], "SGLD variant (paper: sgld)."),
}


def resolve_settings() -> dict:
  """Preset values overridden by the flags given; plain JSON-able values."""
  preset = presets.get_preset(_PRESET.value)
  sgld = dataclasses.replace(preset.sgld, **{k: f.value for k, f in _SGLD_FLAGS.items() if f.value is not None})
  run_dir = _RUN_DIR.value or preset.run_dir
  if run_dir is None:
    raise app.UsageError(f"--run_dir is required with --preset={_PRESET.value}")
  pick = lambda flag, default: default if flag.value is None else flag.value
  steps = _STEPS.value if _STEPS.value is not None else preset.checkpoint_steps
  if steps is not None and list(steps) != ["all"]:
    try:
      steps = [int(s) for s in steps]
    except ValueError:
      raise app.UsageError(f"--steps must be integers or 'all', got {steps}") from None
  else:
    steps = None
  comps = _COMPONENTS.value or preset.components
  return {
      "preset": _PRESET.value, "run_dir": run_dir, "checkpoint_steps": steps,
      "base": pick(_BASE, preset.base), "probes": list(pick(_PROBES, preset.probes)),
      "components": None if comps is None else list(comps),
      "tokenizer": _TOKENIZER.value or preset.tokenizer or str(Path(run_dir) / "tokenizer.json"),
      "seed": _SEED.value, "batch_size": pick(_BATCH, preset.batch_size),
      "microbatch_size": pick(_MICRO, preset.microbatch_size), "delta_h": pick(_DELTA_H, preset.delta_h),
      "chi_form": _CHI_FORM.value, "max_contexts": pick(_MAX_CONTEXTS, preset.max_contexts),
      "sgld": dataclasses.asdict(sgld),
  }


def summary_text(table, step: int) -> str:
  """χ ± 95 % interval per probe × component at one checkpoint, as aligned text."""
  t = table[table.checkpoint == step]
  comps = list(dict.fromkeys(t.component))
  width = 20
  chains = int(t.num_chains_used.max()) if len(t) else 0
  lines = [f"χ ± 95% interval at checkpoint {step} (rows: probes; columns: components); intervals are "
           f"Student-t with chains − 1 = {chains - 1} degrees of freedom; realised δh "
           f"{t.realised_delta_h.iloc[0]:.4f}",
           " " * 12 + "".join(f"{c:>{width}}" for c in comps)]
  for probe in dict.fromkeys(t.probe):
    cells = []
    for comp in comps:
      row = t[(t.probe == probe) & (t.component == comp)].iloc[0]
      cells.append(f"{row.chi:+.2e}±{row.chi_ci95:.1e}".rjust(width))
    lines.append(f"{probe[:12]:12s}" + "".join(cells))
  llc = t.drop_duplicates("component").set_index("component")
  lines.append(f"{'LLC':12s}" + "".join(f"{llc.llc[c]:.2f}±{llc.llc_ci95[c]:.2f}".rjust(width) for c in comps))
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_libraries()
  t_start = time.perf_counter()
  settings = resolve_settings()
  if settings["preset"] == "demo":
    pipeline.prepare_demo_run(settings["preset"], settings["run_dir"], settings["tokenizer"])
  run_dir = settings["run_dir"]
  model_cfg = checkpoints.read_model_config(run_dir)
  context_length = int(checkpoints.read_run_info(run_dir).get("context_length", model_cfg.n_ctx))
  tokenizer = tokenizers_lib.load_tokenizer(settings["tokenizer"])
  tokenizers_lib.check_vocab_fits(tokenizer, model_cfg.d_vocab)
  settings["tokenizer_fingerprint"] = tokenizers_lib.tokenizer_fingerprint(tokenizer)

  # Validate everything that can be wrong before any data is tokenized or anything compiled.
  available = checkpoints.available_steps(run_dir)
  steps = settings["checkpoint_steps"] or available
  missing = [s for s in steps if s not in available]
  if missing:
    raise ValueError(f"checkpoint steps {missing} are not saved in {run_dir}; available: {available}")
  template_params = transformer.init_params(model_cfg)  # masks need only the params' structure and shapes
  specs = settings["components"] or components_lib.default_components(model_cfg)
  specs = ["full"] + [s for s in specs if s != "full"]
  component_masks = components_lib.component_masks(specs, template_params, model_cfg)
  config = SGLDConfig(**settings["sgld"])
  mixing.check_mixing(settings["batch_size"], settings["delta_h"], config.num_draws)

  base = pipeline.load_dataset(settings["base"], tokenizer, context_length, settings["max_contexts"])
  probes = {spec: pipeline.load_dataset(spec, tokenizer, context_length, settings["max_contexts"])
            for spec in settings["probes"]}
  for name, data in [("base " + settings["base"], base)] + [(f"probe {k}", v) for k, v in probes.items()]:
    transformer.check_token_range(data, model_cfg, name=name)
  out = results.ResultsDir(_OUTPUT.value or presets.get_preset(settings["preset"]).output_dir)
  out.start(settings, overwrite=_OVERWRITE.value)
  done = out.finished_steps()
  todo = [s for s in steps if s not in done]
  if done:
    print(f"resuming {out.path}: {len(steps) - len(todo)} of {len(steps)} checkpoints already finished")
  preset = presets.get_preset(settings["preset"])
  note = preset.sgld_note if config == preset.sgld else "set by flags"
  print(f"SGLD: ε={config.step_size:g}, nβ={config.nbeta:g}, γ={config.localization:g}" + (f" — {note}" if note else ""))
  print(f"sweep: {len(todo)} checkpoint(s) × {len(probes)} probes × {len(specs)} components × "
        f"{config.num_chains} chains × {config.num_draws} draws -> {out.path}")

  loss_fn = functools.partial(transformer.context_nll, config=model_cfg)
  from tqdm.auto import tqdm
  bar = tqdm(total=len(todo) * config.num_steps, unit="step", dynamic_ncols=True, smoothing=0.05)
  seconds = {}
  for step in todo:
    bar.set_description(f"checkpoint {step}")
    params = checkpoints.load_params(run_dir, step)
    res = api.estimate_susceptibilities(
        loss_fn, params, component_masks, base, probes, config=config, batch_size=settings["batch_size"],
        delta_h=settings["delta_h"], seed=settings["seed"], chi_form=settings["chi_form"],
        microbatch_size=settings["microbatch_size"], checkpoint_id=step, progress=bar)
    for warning in res.warnings:
      logging.warning("checkpoint %d: %s", step, warning)
    arrays, meta = results.unit_from_result(step, res)
    # Independent labels for each head (not from susceptibilities), kept beside the χ of the same checkpoint.
    meta["head_scores"] = [{"checkpoint": step, **row} for row in head_scores.head_score_table(
        params, model_cfg, np.asarray(base[:HEAD_SCORE_CONTEXTS]), batch=32)]
    out.write_unit(step, arrays, meta)
    seconds[step] = res.seconds
    out.write_table()
    out.write_progress(out.finished_steps(), [s for s in todo if s not in seconds], seconds)
  bar.close()
  out.write_table()
  table = out.table()
  figures = plots.sweep_figures(table, out.path)
  print(summary_text(table, max(steps)))
  print(f"\nresults: {out.path}/results.csv ({len(table)} rows); figures: {', '.join(str(f) for f in figures)}")
  print(f"total time {time.perf_counter() - t_start:.0f} s")
  (out.path / "summary.txt").write_text(summary_text(table, max(steps)) + "\n")


if __name__ == "__main__":
  cli.run(main)
