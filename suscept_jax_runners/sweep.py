"""Susceptibility sweep: every checkpoint × probe dataset × component (each head and the full model).

  python -m experiments.sweep                       # the built-in demo: builds and trains what is missing
  python -m experiments.sweep --preset=paper --run_dir=runs/tetra --output_dir=runs/tetra/sweep
  python -m experiments.sweep --dry_run             # the resolved settings and the work planned, nothing else

Everything that can be wrong with the flags, the run, the tokenizer, the components and the dataset names
is checked before any output is written, any data tokenized or any model trained. Writes one results
directory (see suscept_jax.results): each checkpoint × probe set × component set is a unit written
atomically; a killed sweep rerun with the same flags skips the finished units and ends with the same table;
a sweep that asks for more checkpoints, probes or components reuses what is there and adds the rest (the same
numbers as one run of everything, to rounding where a new head joins a group of heads computed before).
"""
import json
import time
import warnings
from pathlib import Path

from absl import app, flags

from suscept_jax.paths import atomic_write_bytes
from suscept_jax_runners import cli, distributed, presets

HEAD_SCORE_CONTEXTS = 32  # base contexts for the per-head zero-ablation loss deltas

_PRESET = flags.DEFINE_enum("preset", "demo", sorted(presets.PRESETS), "Named defaults for every other flag.")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Training run directory with orbax checkpoints "
                               + cli.by_preset(lambda p: p.run_dir) + ".")
_STEPS = flags.DEFINE_list("steps", None, "Checkpoint steps to measure, or 'all' "
                           + cli.by_preset(lambda p: p.checkpoint_steps or "all") + ".")
_BASE = flags.DEFINE_string("base", None, "Base dataset q: corpus name, local file, hf:NAME or tfds:NAME "
                            + cli.by_preset(lambda p: p.base) + ".")
_PROBES = flags.DEFINE_list("probes", None, "Probe datasets q' (same spec forms as --base) "
                            + cli.by_preset(lambda p: p.probes) + ".")
_COMPONENTS = flags.DEFINE_list("components", None, "Component specs (see suscept_jax.models.components); "
                                "'full' is always added (default: every head + full).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer.json "
                                 + cli.by_preset(lambda p: p.tokenizer or "<run_dir>/tokenizer.json") + ".")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Results directory " + cli.by_preset(lambda p: p.output_dir) + ".")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard results in --output_dir made with other settings.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the resolved settings and the work planned, then exit.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of SGLD noise and batch order.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Contexts per SGLD step and evaluation batch "
                              + cli.by_preset(lambda p: p.batch_size) + ".")
_MICRO = cli.define_microbatch_flag()
_DELTA_H = flags.DEFINE_float("delta_h", None, "Mixing fraction δh of the probe "
                              + cli.by_preset(lambda p: p.delta_h) + ".")
_CHI_FORM = flags.DEFINE_enum("chi_form", "eq41", ["eq41", "covariance"], "Estimator of χ.")
_MAX_CONTEXTS = flags.DEFINE_integer("max_contexts", None, "Cap on tokenized contexts per dataset "
                                     + cli.by_preset(lambda p: p.max_contexts) + ".")
_SGLD = cli.define_sgld_flags()
_NUMERICS = cli.define_numerics_flags()
flags.adopt_module_key_flags(cli)  # the SGLD flags show in --help
flags.adopt_module_key_flags(distributed)


def resolve_settings() -> dict:
  """Preset values overridden by the flags given; every value checked; plain JSON-able values."""
  from suscept_jax import mixing
  preset, run_dir, tokenizer = cli.resolve_run(_PRESET.value, _RUN_DIR.value, _TOKENIZER.value)
  pick = lambda flag, default: default if flag.value is None else flag.value
  steps = _STEPS.value if _STEPS.value is not None else preset.checkpoint_steps
  if steps is not None and list(steps) != ["all"]:
    try:
      steps = [int(s) for s in steps]
    except ValueError:
      raise ValueError(f"--steps={','.join(steps)}: expected integers or 'all'") from None  # (not the usage)
    twice = sorted({s for s in steps if steps.count(s) > 1})
    if not steps or twice:
      raise ValueError(f"--steps={','.join(map(str, steps))}: " + (f"lists {twice} more than once" if twice else
                                                                   "names no checkpoint (give steps or 'all')"))
  else:
    steps = None
  sgld = cli.sgld_config(preset.sgld, _SGLD)
  batch_size, micro = pick(_BATCH, preset.batch_size), cli.microbatch_size(_MICRO, preset.microbatch_size)
  if batch_size < 1:
    raise ValueError(f"--batch_size={batch_size} must be a positive integer")
  delta_h = pick(_DELTA_H, preset.delta_h)
  mixing.check_mixing(batch_size, delta_h, sgld.num_draws)  # also: 0 < δh < 1
  max_contexts = pick(_MAX_CONTEXTS, preset.max_contexts)
  if max_contexts is not None and max_contexts < batch_size:
    raise ValueError(f"--max_contexts={max_contexts} is smaller than --batch_size={batch_size}")
  probes = list(pick(_PROBES, preset.probes))
  if not probes:
    raise ValueError("--probes is empty: name at least one probe dataset")
  comps = _COMPONENTS.value if _COMPONENTS.present else preset.components
  if comps is not None and not comps:  # (an empty --components= planned every head, quietly)
    raise ValueError("--components= names no component: give component specs, or leave the flag out (every head)")
  from suscept_jax import validation
  validation.check_seed(_SEED.value, "--seed")  # (refused before anything is written, naming the flag)
  return {
      "preset": _PRESET.value, "run_dir": run_dir, "checkpoint_steps": steps, "base": pick(_BASE, preset.base),
      "probes": probes, "components": None if comps is None else list(comps), "tokenizer": tokenizer,
      "seed": _SEED.value, "batch_size": batch_size, "microbatch_size": micro, "delta_h": delta_h,
      "chi_form": _CHI_FORM.value, "max_contexts": max_contexts, "sgld": sgld, "numerics": cli.numerics(_NUMERICS),
  }


# Recorded by results directories written before it was known not to change the numbers; not compared. The
# micro-batch changes only the summation order of the gradient (exact accumulation), like the device count, so
# a sweep that ran out of memory resumes with a smaller one (or "auto") and keeps its finished units; each unit
# records the micro-batch it used.
NOT_COMPARED = ("microbatch_size",)


def number_settings(settings: dict, target, **fingerprints) -> dict:
  """The settings that change a unit's numbers (what a results directory must agree on)."""
  import dataclasses
  keys = ("base", "seed", "batch_size", "delta_h", "chi_form", "max_contexts", "numerics")
  return {**{k: settings[k] for k in keys}, "sgld": dataclasses.asdict(settings["sgld"]),
          **cli.mala_setting(settings["sgld"]),
          "run_dir": str(Path(target.run_dir).resolve()), "model_config": dataclasses.asdict(target.model_config),
          **fingerprints}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_libraries()
  t_start = time.perf_counter()
  settings = resolve_settings()
  process_index, num_processes = distributed.initialize()  # before anything touches a JAX backend

  # Everything else that can be checked without work, before anything is written.
  from suscept_jax import results
  from suscept_jax.models import transformer
  from suscept_jax_runners import pipeline
  target = pipeline.resolve_target(settings["preset"], settings["run_dir"], settings["tokenizer"])
  steps = target.check_steps(settings["checkpoint_steps"])
  model_cfg = target.model_config
  specs, component_masks = pipeline.measured_components(settings["components"], model_cfg)
  pipeline.check_datasets([settings["base"]] + settings["probes"])
  preset = presets.get_preset(settings["preset"])
  out = results.ResultsDir(_OUTPUT.value or preset.output_dir)
  settings = pipeline.take_recorded_spellings(settings, out, overwrite=_OVERWRITE.value)
  scope = {"checkpoint_steps": steps, "probes": settings["probes"], "components": specs}
  # First across processes, so that all stop together (paths left out: hosts may mount the shared directories
  # at other paths).
  distributed.check_same_settings({**number_settings(settings, target), "run_dir": None, **scope,
                                   "overwrite": _OVERWRITE.value, "dry_run": _DRY_RUN.value}, num_processes)
  out.check_writable(write=not _DRY_RUN.value)
  if process_index == 0 and not _DRY_RUN.value:
    out.claim("sweep")
  out.check_kind("sweep")
  if not _OVERWRITE.value:  # the data's fingerprints are compared once the data exists (demo: after building it)
    out.check_settings(number_settings(settings, target),
                       ignore=("data_identity", "tokenizer_fingerprint", "base_fingerprint", "run_fingerprint",
                               *NOT_COMPARED),
                       legacy=cli.LEGACY_SETTINGS)
  config = settings["sgld"]
  by_flags = [f for f in ("step_size", "nbeta", "localization") if getattr(config, f) != getattr(preset.sgld, f)]
  note = (f"{', '.join(by_flags)} set by flags" if by_flags  # (what the printed line shows)
          else presets.sgld_note_for(preset, target.run_dir))
  if _DRY_RUN.value:
    planned = out.plan(steps, settings["probes"], specs, None) if not _OVERWRITE.value else \
        [(s, settings["probes"], specs) for s in steps]
    shown = {**settings, "sgld": vars(config), "components": specs, "checkpoint_steps": steps}
    print("resolved settings:\n" + json.dumps(shown, indent=2, default=str))
    print(f"SGLD settings: {note}" if note else "")
    if target.needs_training:
      print(f"first: train the demo model in {target.run_dir} ({preset.train.steps} steps)")
    print(f"planned: {len(planned)} unit(s) into {out.path} "
          f"({len(out.finished_units()) if not _OVERWRITE.value else 0} finished unit(s) reused)")
    for step, probes, comps in planned:
      print(f"  checkpoint {step}: {len(probes)} probe(s) × {len(comps)} component(s) × {config.num_chains} "
            f"chains × {config.num_draws} draws = {config.num_steps} SGLD steps for {len(comps) * config.num_chains} "
            f"entries")
    if num_processes > 1:
      _, own = process_units(planned, steps, specs, component_masks, transformer.param_shapes(model_cfg),
                             process_index, num_processes)
      print(f"process {process_index} of {num_processes}: {own}")
    return

  # Work: build the demo run if it is ours and missing, then fingerprint the data and plan the units.
  distributed.refuse_untrained(target, num_processes, "sweep")
  from suscept_jax import checkpoints
  from suscept_jax.data import tokenizer as tokenizers_lib
  target, tokenizer = pipeline.ready_target(target, settings["preset"], settings["run_dir"], settings["tokenizer"])
  identity = cli.data_identity(out, _OVERWRITE.value)
  fingerprint = lambda spec: pipeline.contexts_fingerprint(spec, tokenizer, target.context_length,
                                                           settings["max_contexts"], identity=identity)
  run_settings = number_settings(settings, target, data_identity=identity,
                                 run_fingerprint=checkpoints.run_fingerprint(target.run_dir),
                                 tokenizer_fingerprint=tokenizers_lib.tokenizer_fingerprint(tokenizer),
                                 base_fingerprint=fingerprint(settings["base"]))
  probe_fps = {spec: fingerprint(spec) for spec in settings["probes"]}
  # Again across processes, now with the data each host sees (its files may differ behind the same paths).
  distributed.check_same_settings({**run_settings, "run_dir": None, "probe_fingerprints": probe_fps},
                                  num_processes)
  if not _OVERWRITE.value:
    out.check_settings(run_settings, ignore=NOT_COMPARED, legacy=cli.LEGACY_SETTINGS, unrecorded=("run_fingerprint",))
    checkpoints.check_weights_unchanged(out.params_digests(), target.run_dir, out.path)
  from suscept_jax.analysis import plots  # (what --overwrite clears: the summary and these figures)
  distributed.start_results(out, run_settings, scope, kind="sweep", overwrite=_OVERWRITE.value,
                            process_index=process_index,
                            num_processes=num_processes,
                            outputs=("summary.txt", *plots.SWEEP_FIGURES, *results.REPORT_FILES))
  planned = out.plan(steps, settings["probes"], specs, probe_fps)
  reused = len(out.finished_units())
  if num_processes > 1:  # this process's share only
    planned, own = process_units(planned, steps, specs, component_masks, transformer.param_shapes(model_cfg),
                                 process_index, num_processes)
    print(f"process {process_index} of {num_processes}: {own}; {distributed.IF_A_PROCESS_DIES}")
  print(f"SGLD: ε={config.step_size:g}, nβ={config.nbeta:g}, γ={config.localization:g}"
        + (f" — {note}" if note else ""))
  print(f"sweep -> {out.path}: {len(planned)} unit(s) to run"
        + (f", {reused} finished unit(s) reused" if reused else "")
        + f"; {len(settings['probes'])} probes × {len(specs)} components × {config.num_chains} chains × "
        f"{config.num_draws} draws")
  mesh = distributed.local_mesh() if num_processes > 1 else None
  num_warnings = run_units(planned, out, target, tokenizer=tokenizer, settings=settings,
                           component_masks=component_masks, probe_fps=probe_fps, mesh=mesh,
                           writes_table=process_index == 0)
  if process_index != 0:
    print(f"process {process_index}: its units are written; process 0 assembles the table")
    return
  if num_processes > 1:
    distributed.wait_for_units(lambda: out.plan(steps, settings["probes"], specs, probe_fps),
                               lambda units: f"{len(units)} unit(s) of checkpoints {sorted({u[0] for u in units})}")

  out.write_table()
  out.write_progress([])
  table = out.table()
  from suscept_jax.analysis import summary
  figures = plots.sweep_figures(table, out.path)
  text = summary.summary_text(table)
  mixed = results.mixed_environments_note(out.environments())
  text += f"\n{mixed}" if mixed else ""
  atomic_write_bytes(out.path / "summary.txt", (text + "\n").encode())
  print(terminal_summary(table, text, out.path / "summary.txt"))
  flagged = int((table.status != "ok").sum())
  print(f"\nresults: {out.path}/results.csv ({len(table)} rows; {flagged} flagged, {num_warnings} warning(s) "
        f"this run); "
        f"figures: {', '.join(str(f) for f in figures)}")
  if planned and (out.path / results.REPORT_FILES[0]).exists():
    print(f"note: {out.path / results.REPORT_FILES[0]} was made from the table before this run's "
          f"{len(planned)} unit(s): run experiments.analyze again to bring it up to date")
  print(f"total time {time.perf_counter() - t_start:.0f} s")


SUMMARY_LINES_PRINTED = 80  # a longer summary is shown at its last checkpoint only (the paper's shape: 4,500 lines)


def terminal_summary(table, text: str, path) -> str:
  """What the terminal gets of the summary `text` written to `path`: all of it up to `SUMMARY_LINES_PRINTED`
  lines, else the summary of the last checkpoint and a line saying where the rest is."""
  lines = text.count("\n") + 1
  if lines <= SUMMARY_LINES_PRINTED:
    return text
  from suscept_jax.analysis import summary
  last = max(table.checkpoint)
  return (summary.summary_text(table[table.checkpoint == last])
          + f"\n\n(the last checkpoint, {last}, of {table.checkpoint.nunique()}: every checkpoint and its flags are "
            f"in {path}, {lines} lines)")


def process_units(planned, steps, specs, component_masks, param_shapes, process_index: int,
                  num_processes: int) -> tuple[list, str]:
  """This process's share of the planned units of a multi-process sweep, and a line naming it.

  Units are owned by checkpoint, round-robin over the requested list. With fewer checkpoints than processes
  each unit is split into one unit per component group (the components freeing the same parameters: one
  program each), each with "full" (every χ pairs its chains with the full model's), owned round-robin over
  the requested checkpoint × group list: more processes get work, at the cost of sampling the full model's
  chains once per group. Ownership depends on the requested work only, never on what is finished.
  """
  if len(steps) >= num_processes:
    own = distributed.share(steps, process_index, num_processes)
    return [u for u in planned if u[0] in own], f"checkpoints {own}"
  from suscept_jax import masks, restricted
  parts = [c for c in specs if c != "full"] or ["full"]
  names, masks_C = masks.stack_masks({c: component_masks[c] for c in parts}, param_shapes)
  groups = [[names[i] for i in members] for _, members in restricted.component_groups(masks_C, len(names))]
  group_of = {c: g for g, members in enumerate(groups) for c in members}
  keys = [(step, g) for step in steps for g in range(len(groups))]
  own = distributed.share(keys, process_index, num_processes)
  units = []
  for step, probes, comps in planned:
    split = [(g, [c for c in comps if c != "full" and group_of.get(c) == g]) for g in range(len(groups))]
    split = [(g, members) for g, members in split if members] or [(0, [])]  # only "full" left: one unit
    units += [(step, probes, ["full"] + members) for g, members in split if (step, g) in own]
  return units, "checkpoint × component-group units " + ", ".join(
      f"{step}: {'+'.join(groups[g])}" for step, g in own)


def run_units(planned, out, target, *, tokenizer, settings, component_masks, probe_fps, mesh=None,
              writes_table: bool = True) -> int:
  """Sample every planned unit, writing each as it finishes; returns the number of warnings logged.

  With `writes_table` the table and progress.json are rewritten after each unit too: process 0's job only, so
  that a slow write of another process cannot land after process 0's final table (each unit is its own file)."""
  import functools

  import numpy as np
  from suscept_jax import api, checkpoints, results
  from suscept_jax.progress import WarningsShown, progress_bar
  from suscept_jax.analysis import head_scores
  from suscept_jax.models import transformer
  from suscept_jax_runners import pipeline
  if not planned:
    return 0
  model_cfg, config = target.model_config, settings["sgld"]
  needed = {settings["base"]} | {p for _, probes, _ in planned for p in probes}
  data = {spec: pipeline.load_dataset(spec, tokenizer, target.context_length, settings["max_contexts"])
          for spec in [settings["base"]] + [p for p in settings["probes"] if p in needed]}
  for spec, contexts in data.items():
    transformer.check_token_range(contexts, model_cfg, name=spec)
  base = data[settings["base"]]
  scored = {out.unit_meta(name)["checkpoint"] for name in out.finished_units()
            if out.unit_meta(name).get("head_scores")}
  from suscept_jax.models.config import Numerics
  loss_fn = functools.partial(transformer.context_nll, config=model_cfg, numerics=Numerics(**settings["numerics"]))
  with progress_bar(len(planned) * config.num_steps, "sweep", smoothing=0.05,  # closed also when a unit fails
                    waiting="loading data, compiling") as bar:
    names = [results.unit_name(step, probes, comps) for step, probes, comps in planned]
    shown = WarningsShown()
    for i, (step, probes, comps) in enumerate(planned):
      bar.set_description(f"checkpoint {step}")
      params = checkpoints.load_params(target.run_dir, step)
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = api.estimate_susceptibilities(
            loss_fn, params, {c: component_masks[c] for c in comps}, base, {p: data[p] for p in probes}, config=config,
            batch_size=settings["batch_size"], delta_h=settings["delta_h"], seed=settings["seed"],
            chi_form=settings["chi_form"], microbatch_size=settings["microbatch_size"], checkpoint_id=step,
            progress=bar, mesh=mesh, base_name=f"base data {settings['base']!r}")
      for w in caught:
        shown.say(bar, f"checkpoint {step}: {w.message}")
      arrays, meta = results.unit_from_result(step, res, probe_fingerprints=probe_fps)
      meta["params_digest"] = checkpoints.params_digest(params)  # (a resume checks it against the run's weights)
      meta["microbatch_size"] = settings["microbatch_size"]  # not a number setting: see NOT_COMPARED
      if step not in scored:  # independent labels for each head (not from susceptibilities)
        meta["head_scores"] = [{"checkpoint": step, **row} for row in head_scores.head_score_table(
            params, model_cfg, np.asarray(base[:HEAD_SCORE_CONTEXTS]), batch=32)]
        scored.add(step)
      out.write_unit(names[i], arrays, meta)
      if writes_table:
        out.write_table()
        out.write_progress(names[i + 1:])
  return shown.count


if __name__ == "__main__":
  cli.run(main)
