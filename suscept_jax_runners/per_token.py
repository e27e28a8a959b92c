"""Per-token susceptibilities of one checkpoint, and the views that make them readable.

  python -m experiments.per_token                         # the demo's last checkpoint, a few contexts per probe
  python -m experiments.per_token --preset=paper --run_dir=runs/tetra --step=49900 --contexts_per_dataset=160
  python -m experiments.per_token --views_only --view_heads=l0h1,l1h2   # re-render views from the results
  python -m experiments.per_token ... --distributed    # several hosts: chunks split between them

For every probe dataset, `--contexts_per_dataset` contexts (a seeded shuffle) are observed at every draw of
the same chains; each token gets χ ± stderr per component, its loss at w* and its zero-ablation loss delta
per head. Work runs in chunks of contexts, each written atomically (units/chunk_<i>), so a killed run
resumes; several processes (the sweep's flags, `distributed.py`) split the chunks and process 0 assembles.
Writes `tokens.parquet` (and `.csv` when small): one row per dataset × context × position × component, and
`views/` (index.html with the figures embedded, highlighted-text pages, top-token tables).
"""
import json
import sys
import time
from pathlib import Path

from absl import app, flags

from suscept_jax_runners import cli, distributed, presets

DEFAULT_VIEWS = ("highlight", "extremes", "top", "totals", "bimodal", "additivity", "comparisons", "positions")
ALL_VIEWS = DEFAULT_VIEWS + ("umap",)  # umap: on request (needs umap-learn; its first use compiles for ~1 min)

_PRESET = flags.DEFINE_enum("preset", "demo", sorted(presets.PRESETS), "Named defaults for every other flag.")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Training run directory " + cli.by_preset(lambda p: p.run_dir) + ".")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the last one saved).")
_BASE = flags.DEFINE_string("base", None, "Base dataset q " + cli.by_preset(lambda p: p.base) + ".")
_PROBES = flags.DEFINE_list("probes", None, "Datasets whose contexts are observed "
                            + cli.by_preset(lambda p: p.probes) + ".")
_CONTEXTS = flags.DEFINE_integer("contexts_per_dataset", None, "Contexts per dataset, chosen by a seeded shuffle "
                                 + cli.by_preset(lambda p: p.per_token_contexts) + ".")
_COMPONENTS = flags.DEFINE_list("components", None, "Component specs; 'full' is always added (default: every head).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer.json "
                                 + cli.by_preset(lambda p: p.tokenizer or "<run_dir>/tokenizer.json") + ".")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Results directory "
                              + cli.by_preset(lambda p: p.per_token_output_dir) + ".")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard results in --output_dir made with other settings.")
# What this runner writes beside the units (cleared by --overwrite with them).
CHAINS = "chains.npz"
OUTPUTS = ("tokens.parquet", "tokens.csv", "dataset_chi.csv", CHAINS, "per_token.json", "views")
# Fingerprints recorded since 2026-12 (directories written before hold none: compared where present).
NEWER_FINGERPRINTS = ("base_fingerprint", "probe_fingerprints", "run_fingerprint")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the resolved settings and the work planned, then exit.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of SGLD noise, batch order and (unless --contexts_seed) the choice "
                             "of contexts.")
_CONTEXTS_SEED = flags.DEFINE_integer("contexts_seed", None, "Seed of the choice of contexts (default: --seed). "
                                      "Runs with other --seed and one --contexts_seed observe the same contexts "
                                      "through other chains: their spread checks the error bars.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Base contexts per SGLD step "
                              + cli.by_preset(lambda p: p.per_token_batch_size) + ".")
_MICRO = cli.define_microbatch_flag()
_DELTA_H = flags.DEFINE_float("delta_h", None, "δh of the dataset-level χ computed alongside "
                              + cli.by_preset(lambda p: p.delta_h) + ".")
_DATASET_CHI = flags.DEFINE_bool("dataset_chi", True, "Also estimate the dataset-level χ of the probes from the same "
                                 "chains (for the additivity view, on shared samples).")
_CHUNK = flags.DEFINE_integer("contexts_per_chunk", None, "Observed contexts per unit of work; each unit re-runs the "
                               "same chains (default: " + cli.by_preset(
                                   lambda p: "one dataset" if p.per_token_unit_per_dataset else "all at once")[9:])
_MAX_CONTEXTS = flags.DEFINE_integer("max_contexts", None, "Cap on tokenized contexts per dataset "
                                     + cli.by_preset(lambda p: p.max_contexts) + ".")
_VIEWS = flags.DEFINE_list("views", list(DEFAULT_VIEWS), f"Views to render: any of {', '.join(ALL_VIEWS)}, or none.")
_VIEW_HEADS = flags.DEFINE_list("view_heads", None, "Heads shown in the text views (default: up to 3: the most "
                                "responsive head of each layer, by mean |χ| over the tokens, then the next).")
_VIEW_TOKEN = flags.DEFINE_string("view_token", None, "Token whose χ histogram is drawn (default: the most bimodal).")
_VIEWS_ONLY = flags.DEFINE_bool("views_only", False, "Only re-render the views of an existing --output_dir (the "
                                 "index keeps the sections of views rendered before and not asked for now).")
_SGLD = cli.define_sgld_flags()
_NUMERICS = cli.define_numerics_flags()
flags.adopt_module_key_flags(cli)
flags.adopt_module_key_flags(distributed)


def requested_views() -> list[str]:
  """--views, checked: the known views asked for ([] for none)."""
  views = [] if _VIEWS.value == ["none"] else list(_VIEWS.value)
  unknown = sorted(set(views) - set(ALL_VIEWS))
  if unknown:
    raise ValueError(f"--views: unknown view(s) {unknown}; known: {', '.join(ALL_VIEWS)}, or none")
  return views


def resolve_settings() -> dict:
  preset, run_dir, tokenizer = cli.resolve_run(_PRESET.value, _RUN_DIR.value, _TOKENIZER.value)
  pick = lambda flag, default: default if flag.value is None else flag.value
  views = requested_views()
  sgld = cli.sgld_config(preset.per_token_sgld, _SGLD)
  settings = {
      "preset": _PRESET.value, "run_dir": run_dir, "tokenizer": tokenizer, "step": _STEP.value,
      "base": pick(_BASE, preset.base), "probes": list(pick(_PROBES, preset.probes)),
      "contexts_per_dataset": pick(_CONTEXTS, preset.per_token_contexts),
      "components": _COMPONENTS.value, "seed": _SEED.value, "contexts_seed": pick(_CONTEXTS_SEED, _SEED.value),
      "batch_size": pick(_BATCH, preset.per_token_batch_size),
      "microbatch_size": cli.microbatch_size(_MICRO, preset.microbatch_size),
      "delta_h": pick(_DELTA_H, preset.delta_h), "dataset_chi": _DATASET_CHI.value,
      "max_contexts": pick(_MAX_CONTEXTS, preset.max_contexts), "sgld": sgld, "views": views,
      "numerics": cli.numerics(_NUMERICS),
  }
  total = len(settings["probes"]) * settings["contexts_per_dataset"]
  settings["contexts_per_chunk"] = pick(_CHUNK, settings["contexts_per_dataset"] if preset.per_token_unit_per_dataset
                                        else total)
  from suscept_jax import validation
  for flag in ("seed", "contexts_seed"):  # (refused here, naming the flag, before anything is written)
    validation.check_seed(settings[flag], f"--{flag}")
  if settings["contexts_per_dataset"] < 1:
    raise ValueError(f"--contexts_per_dataset={settings['contexts_per_dataset']} must be >= 1")
  if settings["batch_size"] < 1:
    raise ValueError(f"--batch_size={settings['batch_size']} must be >= 1")
  if not settings["probes"]:
    raise ValueError("--probes is empty: name at least one dataset to draw contexts from")
  if settings["contexts_per_chunk"] < 1:
    raise ValueError(f"--contexts_per_chunk={settings['contexts_per_chunk']} must be >= 1")
  if settings["dataset_chi"]:
    from suscept_jax import mixing
    mixing.check_mixing(settings["batch_size"], settings["delta_h"], sgld.num_draws)
  return settings


TOP_POOL = 100  # per-token χ of each sign the "top" view's tokens are picked from (App. D's tables)
VIEWS_ONLY_FLAGS = ("views_only", "output_dir", "preset", "views", "view_heads", "view_token")  # what it reads
# (absl names a flag's module by sys.argv[0] when it is defined in __main__, as under `python -m`: anything not absl's)
_ours = lambda module: not module.startswith("absl")  # noqa: E731


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_libraries()
  t_start = time.perf_counter()
  preset = presets.get_preset(_PRESET.value)
  out = Path(_OUTPUT.value or preset.per_token_output_dir)
  if _VIEWS_ONLY.value:
    if distributed.initialize()[0] != 0:  # (launched on every host of a slice) process 0 renders
      return
    ignored = [f"--{name}" for name in flags.FLAGS if flags.FLAGS[name].present and name not in VIEWS_ONLY_FLAGS
               and _ours(flags.FLAGS.find_module_defining_flag(name, ""))]
    if ignored:  # (they were ignored without a word)
      print(f"note: --views_only re-renders {out} as it was computed; ignored: {', '.join(sorted(set(ignored)))}",
            file=sys.stderr)
    views = requested_views()
    paths = render_views(out, views, heads=_VIEW_HEADS.value, token=_VIEW_TOKEN.value, keep_other_views=True)
    print(f"views: {out / 'views' / 'index.html'} ({len(paths)} files)")
    return
  settings = resolve_settings()
  process_index, num_processes = distributed.initialize()  # before anything touches a JAX backend

  import dataclasses

  import numpy as np

  from suscept_jax.models import transformer
  from suscept_jax_runners import pipeline
  from suscept_jax import checkpoints, results
  target = pipeline.resolve_target(settings["preset"], settings["run_dir"], settings["tokenizer"])
  step = target.check_steps(None)[-1] if settings["step"] is None else target.check_steps([settings["step"]])[0]
  model_cfg = target.model_config
  specs, component_masks = pipeline.measured_components(settings["components"], model_cfg)
  pipeline.check_datasets([settings["base"]] + settings["probes"])
  store = results.ResultsDir(out)
  settings = pipeline.take_recorded_spellings(settings, store, overwrite=_OVERWRITE.value)
  number_settings = {**{k: settings[k] for k in ("base", "probes", "contexts_per_dataset", "seed", "contexts_seed",
                                                  "batch_size", "delta_h", "dataset_chi", "max_contexts", "numerics")},
                     "sgld": dataclasses.asdict(settings["sgld"]), **cli.mala_setting(settings["sgld"]),
                     "components": specs, "step": step,
                     "contexts_per_chunk": settings["contexts_per_chunk"],  # names the units: resume alike
                     "run_dir": str(Path(target.run_dir).resolve())}
  distributed.check_same_settings({**number_settings, "run_dir": None, "overwrite": _OVERWRITE.value,
                                   "dry_run": _DRY_RUN.value, "views": settings["views"]}, num_processes)
  store.check_writable(write=not _DRY_RUN.value)
  if process_index == 0 and not _DRY_RUN.value:
    store.claim("per_token")
  store.check_kind("per_token")
  legacy = {**cli.LEGACY_SETTINGS, "contexts_seed": settings["seed"]}  # (before the flag: chosen by --seed)
  if not _OVERWRITE.value:
    store.check_settings(number_settings, ignore=("data_identity", "tokenizer_fingerprint", "contexts_fingerprint",
                                                  *NEWER_FINGERPRINTS), legacy=legacy)
  if _DRY_RUN.value:
    print("resolved settings:\n" + json.dumps({**number_settings, "microbatch_size": settings["microbatch_size"],
                                                "output_dir": str(out), "views": settings["views"]},
                                               indent=2, default=str))
    total = len(settings["probes"]) * settings["contexts_per_dataset"]
    chunk = settings["contexts_per_chunk"]
    num_chunks = -(-total // chunk)
    print(f"planned: {num_chunks} chunk(s) of ≤ {chunk} contexts ({total} in all) × {len(specs)} components × "
          f"{settings['sgld'].num_chains} chains × {settings['sgld'].num_draws} draws at checkpoint {step} -> {out}")
    if num_processes > 1:
      print(chunk_share(total, chunk, process_index, num_processes)[1])
    return

  from suscept_jax.data import packing, tokenizer as tokenizers_lib
  distributed.refuse_untrained(target, num_processes, "per_token")
  target, tokenizer = pipeline.ready_target(target, settings["preset"], settings["run_dir"], settings["tokenizer"])
  load = lambda spec: pipeline.load_dataset(spec, tokenizer, target.context_length, settings["max_contexts"])
  base = load(settings["base"])
  transformer.check_token_range(base, model_cfg, name=settings["base"])
  chosen, labels = [], []
  for spec in settings["probes"]:
    data = load(spec)
    transformer.check_token_range(data, model_cfg, name=spec)
    n = settings["contexts_per_dataset"]
    if len(data) < n:
      capped = (f" (--max_contexts={settings['max_contexts']} caps it)"
                if settings["max_contexts"] is not None and len(data) >= settings["max_contexts"] else "")
      raise ValueError(f"dataset {spec!r} has {len(data)} contexts{capped}, fewer than --contexts_per_dataset={n}")
    ids = np.sort(np.random.default_rng([settings["contexts_seed"], len(chosen)]).permutation(len(data))[:n])
    chosen.append(np.asarray(data[ids]))
    labels += [(spec, int(i)) for i in ids]
  contexts = np.concatenate(chosen)
  identity = cli.data_identity(store, _OVERWRITE.value)
  spec_fingerprint = lambda spec: pipeline.contexts_fingerprint(spec, tokenizer, target.context_length,
                                                                settings["max_contexts"], identity=identity)
  run_settings = {**number_settings, "data_identity": identity,
                  "tokenizer_fingerprint": tokenizers_lib.tokenizer_fingerprint(tokenizer),
                  "contexts_fingerprint": packing.tokens_fingerprint(contexts),
                  # the chains sample the base (and, for dataset-level χ, mix in the probes): changed data there
                  # changes every chunk's numbers, as it does a sweep's
                  "base_fingerprint": spec_fingerprint(settings["base"]),
                  **({"probe_fingerprints": {spec: spec_fingerprint(spec) for spec in settings["probes"]}}
                     if settings["dataset_chi"] else {}),
                  "run_fingerprint": checkpoints.run_fingerprint(target.run_dir)}
  # Again across processes, now with the data each host sees (its files may differ behind the same paths).
  distributed.check_same_settings({**run_settings, "run_dir": None}, num_processes)
  if not _OVERWRITE.value:
    store.check_settings(run_settings, legacy=legacy, unrecorded=NEWER_FINGERPRINTS)
    checkpoints.check_weights_unchanged(store.params_digests(prefix="chunk_"), target.run_dir, store.path)
  distributed.start_results(store, run_settings, {"views": settings["views"]}, kind="per_token",
                            overwrite=_OVERWRITE.value,
                            process_index=process_index, num_processes=num_processes, outputs=OUTPUTS)
  probes = {spec: load(spec) for spec in settings["probes"]} if settings["dataset_chi"] else None
  compute(store, settings, target=target, step=step, component_masks=component_masks, base=base, contexts=contexts,
          labels=labels, probes=probes, tokenizer=tokenizer, process_index=process_index, num_processes=num_processes)
  if process_index != 0:
    print(f"process {process_index}: its chunks are written; process 0 assembles the tokens and renders the views")
    return
  paths = render_views(out, settings["views"], heads=_VIEW_HEADS.value, token=_VIEW_TOKEN.value)
  print(f"per-token results: {out / 'tokens.parquet'}; views: {out / 'views' / 'index.html'} ({len(paths)} files); "
        f"total time {time.perf_counter() - t_start:.0f} s")


def chunk_share(num_contexts: int, per_chunk: int, process_index: int, num_processes: int) -> tuple[list, str]:
  """This process's chunks, and the line naming them (with a hint when there are fewer chunks than processes)."""
  num_chunks = -(-num_contexts // per_chunk)
  own = distributed.share(range(num_chunks), process_index, num_processes)
  line = f"process {process_index} of {num_processes}: chunks {own}"
  if num_chunks < num_processes:
    line += (f" (only {num_chunks} chunk(s) for {num_processes} processes: "
             f"--contexts_per_chunk={-(-num_contexts // num_processes)} would give every process work)")
  return own, line


def compute(store, settings, *, target, step, component_masks, base, contexts, labels, probes, tokenizer,
            process_index: int = 0, num_processes: int = 1) -> None:
  """Run the chunks still missing (of several processes: this one's, round-robin), then (process 0, once every
  chunk is written) the tidy token table."""
  import functools
  import io
  import warnings

  import numpy as np
  import pandas as pd

  import suscept_jax as sj
  from suscept_jax import batched, checkpoints, per_token as per_token_lib, results
  from suscept_jax.analysis import head_scores
  from suscept_jax.data import tokenizer as tokenizers_lib
  from suscept_jax.models import transformer
  from suscept_jax.paths import atomic_write_bytes, atomic_write_json
  from suscept_jax.progress import WarningsShown, progress_bar
  model_cfg, config = target.model_config, settings["sgld"]
  params = checkpoints.load_params(target.run_dir, step)
  digest = checkpoints.params_digest(params)
  num = len(contexts)
  chunk = min(settings["contexts_per_chunk"], num)
  num_chunks = -(-num // chunk)
  from suscept_jax.models.config import Numerics
  numerics = Numerics(**settings["numerics"])
  loss_fn = functools.partial(transformer.context_nll, config=model_cfg, numerics=numerics)
  token_loss_fn = functools.partial(transformer.per_token_nll, config=model_cfg, numerics=numerics)
  done = set(store.finished_units(prefix="chunk_"))
  chunk_name = lambda i: f"chunk_{i:05d}"
  todo = [i for i in range(num_chunks) if chunk_name(i) not in done]
  mesh = None
  if num_processes > 1:
    own, line = chunk_share(num, chunk, process_index, num_processes)
    todo = [i for i in todo if i in own]
    mesh = distributed.local_mesh()
    print(f"{line} ({len(todo)} to run); {distributed.IF_A_PROCESS_DIES}")
  shown = WarningsShown()
  with progress_bar(len(todo) * config.num_steps, "per-token", smoothing=0.05,  # rate and ETA over the chunks
                    waiting="compiling") as bar:  # closed also when a chunk fails
    for i in todo:
      name = chunk_name(i)
      bar.set_description(f"chunk {i + 1}/{num_chunks}")
      chunk_contexts = batched.padded_rows(contexts, i * chunk, chunk, num)  # fixed shape: one compilation
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = sj.estimate_per_token_susceptibilities(
            loss_fn, token_loss_fn, params, component_masks, base, chunk_contexts, config=config,
            batch_size=settings["batch_size"], microbatch_size=settings["microbatch_size"], delta_h=settings["delta_h"],
            seed=settings["seed"], checkpoint_id=step,
            probes=probes if (probes and i == 0) else None, progress=bar, mesh=mesh,
            base_name=f"base data {settings['base']!r}")
      for w in caught:  # (each chunk re-runs the same chains: their warnings once)
        shown.say(bar, w.message, where=f"chunk {i}")
      keep = slice(0, min(chunk, num - i * chunk))
      arrays = {"chi": res.chi[:, keep], "chi_stderr": res.chi_stderr[:, keep], "loss_at_star": res.loss_at_star[keep],
                "context_chi_CxKxO": res.context_means_per_chain()[:, :, keep],
                "num_chains": res.chains_behind()[:, keep]}
      arrays["positive_CxKxO"], arrays["negative_CxKxO"] = (a[:, :, keep] for a in res.sign_totals_per_chain())
      arrays.update(zip(POSITION_CHAINS, res.position_sums_leaving_out_chains(keep)))
      targets_OxJ = contexts[i * chunk:i * chunk + keep.stop, 1:res.chi.shape[-1] + 1]
      arrays["token_ids_U"], types_OxJ = np.unique(targets_OxJ, return_inverse=True)
      arrays["token_positive_CxKxU"], arrays["token_negative_CxKxU"] = per_token_lib.sign_sums_per_chain(
          res.chi_per_chain[:, :, keep], res.valid_chains(), types_OxJ.reshape(targets_OxJ.shape))
      if res.dataset is not None:
        arrays["dataset_chi_PxCxK"] = res.dataset_chi_per_chain()
      meta = {"checkpoint": step, "params_digest": digest, "chunk": i, "first_context": i * chunk,
              "component_names": res.component_names,
              "probe_names": [], "rows": [], "llc": res.llc.tolist(), "status": res.status, "warnings": res.warnings,
              "seconds": res.seconds, "microbatch_size": settings["microbatch_size"],  # may differ between chunks
              "environment": results.environment()}
      if res.dataset is not None:
        meta["dataset_rows"] = res.dataset.records()
        meta["realised_delta_h"] = res.dataset.realised_delta_h
      store.write_unit(name, arrays, meta)
  if shown.repeats:
    print(f"({shown.repeats} warning(s) repeated by later chunks, which re-run the same chains, were not printed "
          f"again; every chunk's are in its unit's record)")
  if process_index != 0:
    return
  if num_processes > 1:
    missing = lambda: [i for i in range(num_chunks) if chunk_name(i) not in store.finished_units(prefix="chunk_")]
    distributed.wait_for_units(missing, lambda chunks: f"chunk(s) {chunks}")
  # Assemble: one row per dataset × context × position × component.
  parts = [store.read_unit(chunk_name(i)) for i in range(num_chunks)]
  chi = np.concatenate([a["chi"] for a, _ in parts], axis=1)  # [C, O, J]
  err = np.concatenate([a["chi_stderr"] for a, _ in parts], axis=1)
  chains = (np.concatenate([a["num_chains"] for a, _ in parts], axis=1)  # (chunks of an earlier version: none)
            if all("num_chains" in a for a, _ in parts) else None)
  loss = np.concatenate([a["loss_at_star"] for a, _ in parts])  # [O, J]
  comps = parts[0][1]["component_names"]
  _, deltas_LxHxOxJ = head_scores.per_token_ablation_deltas(params, model_cfg, contexts, batch_size=16)
  heads = model_cfg.head_names
  O, J = loss.shape
  targets = contexts[:, 1:J + 1]
  token_text = tokenizers_lib.token_labels(tokenizer, np.unique(targets))  # distinct for distinct tokens
  base_cols = {"dataset": np.repeat([d for d, _ in labels], J), "context": np.repeat([c for _, c in labels], J),
               "position": np.tile(np.arange(1, J + 1), O), "token_id": targets.reshape(-1),
               "token": [token_text[int(t)] for t in targets.reshape(-1)], "loss_at_star": loss.reshape(-1)}
  frames = []
  for c, comp in enumerate(comps):
    ablation = (deltas_LxHxOxJ.reshape(len(heads), O * J)[heads.index(comp)] if comp in heads
                else np.full(O * J, np.nan))
    frames.append(pd.DataFrame({**base_cols, "component": comp, "chi": chi[c].reshape(-1),
                                "chi_stderr": err[c].reshape(-1), "ablation_delta": ablation,
                                **({"num_chains": chains[c].reshape(-1)} if chains is not None else {})}))
  table = pd.concat(frames, ignore_index=True)
  buf = io.BytesIO()
  table.to_parquet(buf, index=False)
  atomic_write_bytes(store.path / "tokens.parquet", buf.getvalue())
  if len(table) <= 300_000:
    atomic_write_bytes(store.path / "tokens.csv", results.csv_bytes(table, "%.6g"))
  dataset_rows = parts[0][1].get("dataset_rows")
  if dataset_rows:
    frame = pd.DataFrame(dataset_rows)
    atomic_write_bytes(store.path / "dataset_chi.csv", results.csv_bytes(frame, "%.9g"))
  write_chains(store.path, parts, [d for d, _ in labels])
  info = {"checkpoint": step, "delta_h": parts[0][1].get("realised_delta_h", settings["delta_h"]),
          "components": comps, "datasets": settings["probes"], "num_contexts": O, "tokens_per_context": J,
          "llc": dict(zip(comps, parts[0][1]["llc"])), "status": parts[0][1]["status"],
          "environments": store.environments(prefix="chunk_")}
  atomic_write_json(store.path / "per_token.json", info)
  mixed = results.mixed_environments_note(info["environments"])
  if mixed:
    print(mixed)


def write_chains(out: Path, parts, context_datasets_O) -> None:
  """chains.npz: per chain, each context's mean per-token χ and its totals by sign, each token type's totals by sign,
  each position's sums over the contexts leaving out each chain, and the dataset-level χ: what the intervals of
  the additivity view (`token_stats.additivity_intervals`), of the totals (`token_stats.sign_totals`,
  `token_stats.totals`) and of the mean and variance by position (`token_stats.position_profiles`) are made
  from. An array is left out where a chunk's unit (of an earlier version) lacks it; the file is not written where
  no array is left."""
  import io

  import numpy as np

  from suscept_jax.paths import atomic_write_bytes
  arrays = {key: np.concatenate([a[key] for a, _ in parts], axis=2) for key in PER_CONTEXT_CHAINS
            if all(key in a for a, _ in parts)}
  if "dataset_chi_PxCxK" in parts[0][0]:
    arrays["dataset_chi_PxCxK"] = parts[0][0]["dataset_chi_PxCxK"]
  for key in POSITION_CHAINS:  # each position's sums over the contexts of every chunk (the same chains in each)
    if all(key in a for a, _ in parts):
      arrays[key] = sum(a[key] for a, _ in parts)
  if all("token_ids_U" in a for a, _ in parts):  # each token type's sums, over the chunks it occurs in
    ids_V = np.unique(np.concatenate([a["token_ids_U"] for a, _ in parts]))
    for sign in ("positive", "negative"):
      sums_CxKxV = np.zeros(parts[0][0][f"token_{sign}_CxKxU"].shape[:2] + ids_V.shape)
      for a, _ in parts:
        sums_CxKxV[..., np.searchsorted(ids_V, a["token_ids_U"])] += a[f"token_{sign}_CxKxU"]
      arrays[f"token_{sign}_CxKxV"] = sums_CxKxV
    arrays["token_ids_V"] = ids_V
  if not arrays:
    (out / CHAINS).unlink(missing_ok=True)
    return
  buf = io.BytesIO()
  np.savez(buf, **arrays, context_datasets_O=np.array(context_datasets_O))
  atomic_write_bytes(out / CHAINS, buf.getvalue())


PER_CONTEXT_CHAINS = ("context_chi_CxKxO", "positive_CxKxO", "negative_CxKxO")
POSITION_CHAINS = ("position_sum_CxLxJ", "position_sumsq_CxLxJ", "position_count_CxLxJ")  # L: chain left out


ADDITIVITY_NOTE = (
    "<p>Each point is a component × dataset. Error bars (95 %): the chains' noise on both axes and, on the "
    "horizontal, which few contexts of the dataset were observed. The slope is corrected for that noise (noise "
    "on the horizontal axis flattens a least-squares line), its interval resampled over chains and contexts; a "
    "point is off the line where the interval of its difference (dataset-level χ − δh·mean per-token χ) excludes 0. "
    "On shared chains eq. 45 predicts slope 1.</p>")


POSITIONS_NOTE = (
    "<p>Bands (95 %, a jackknife over the chains, Student-t): what endless chains would give on these contexts, as "
    "in Table 1. The chains are shared by every context, so their noise does not average out along a curve. Chain "
    "noise in each token's χ adds to its variance over the contexts; the variance shown has that part removed (the "
    "jackknife's bias correction: it falls as 1/chains).</p>")


NO_CHAINS_NOTE = ("<p>No error bars: these results were written before the chains' values this view needs were "
                  "kept (chains.npz); a rerun with --overwrite gives them.</p>")


TOTALS_NOTE = (
    "<p>Per component × dataset, over the observed tokens (Table 1). Intervals (95 %) hold what endless chains would "
    "give on these tokens. Chain noise turns a token's χ positive or negative at random, so it inflates both totals "
    "by sign (they cancel in the sum), by at most the noise floor: the interval of a true total positive therefore "
    "reaches the floor below the measured total (a negative's, above it). Where the floor is much of a total, "
    "much of that total may be noise; the floor shrinks as 1/√chains.</p>")


def chains_with(out: Path, keys) -> dict | None:
  """The arrays `keys` (and the contexts' datasets) of chains.npz, or None where it or one of them is missing
  (results of an earlier version)."""
  import numpy as np
  if not (out / CHAINS).exists():
    return None
  with np.load(out / CHAINS) as chains:
    if not all(k in chains.files for k in keys):
      return None
    return {k: chains[k] for k in (*keys, "context_datasets_O")}


def chains_by_component(out: Path, components) -> dict:
  """{component: its count of valid chains} from chains.npz ({} for results of a version that kept none)."""
  from suscept_jax.analysis import token_stats as ts
  chains = chains_with(out, ("context_chi_CxKxO",))
  if chains is None:
    return {}
  return dict(zip(components, ts.valid_chain_counts(chains["context_chi_CxKxO"]).tolist()))


def load_sign_totals(out: Path, table, info) -> tuple:
  """(Table 1 with intervals, `token_stats.sign_totals`, or None; the paragraph saying what its intervals hold
  or why there are none)."""
  from suscept_jax.analysis import token_stats as ts
  chains = chains_with(out, ("positive_CxKxO", "negative_CxKxO"))
  if chains is None:
    return None, NO_CHAINS_NOTE
  return ts.sign_totals(table, chains["positive_CxKxO"], chains["negative_CxKxO"],
                        chains["context_datasets_O"].tolist(), info["components"], info["datasets"],
                        info["delta_h"]), TOTALS_NOTE


def load_additivity_intervals(out: Path, joined, info) -> tuple:
  """(the additivity view's intervals from chains.npz or None, the paragraph saying what its error bars hold or
  why there are none: results written before chains.npz was kept, or one context per dataset)."""
  import html

  from suscept_jax.analysis import token_stats as ts
  chains = chains_with(out, ("context_chi_CxKxO", "dataset_chi_PxCxK"))
  if chains is None:
    return None, NO_CHAINS_NOTE
  try:
    return ts.additivity_intervals(joined, chains["context_chi_CxKxO"], chains["dataset_chi_PxCxK"],
                                   chains["context_datasets_O"].tolist(), info["components"], info["datasets"],
                                   info["delta_h"]), ADDITIVITY_NOTE
  except ValueError as e:
    return None, f"<p>No error bars: {html.escape(str(e))}.</p>"


def render_totals(out: Path, table, info, heads) -> tuple:
  """(the index's section, the files written) of the totals view: Table 1 per component × dataset with intervals
  (views/totals.csv, sign_totals.png, and its line in the terminal) and Fig. 10's token types (totals.png,
  views/token_totals.csv); without the chains' sums (results of an earlier version), the totals per head and
  the paragraph saying why there are no error bars."""
  from suscept_jax import results
  from suscept_jax.analysis import pages, token_stats as ts, token_views as tv
  from suscept_jax.paths import atomic_write_bytes
  views_dir = out / "views"
  by_sign, note = load_sign_totals(out, table, info)
  types = chains_with(out, ("token_ids_V", "token_positive_CxKxV", "token_negative_CxKxV"))
  per_head, per_token = ts.totals(table, None if types is None else ts.TokenChains(
      types["token_ids_V"], types["token_positive_CxKxV"], types["token_negative_CxKxV"], info["components"]))
  written = [tv.plot_totals(per_token, heads, views_dir / "totals.png")]
  if by_sign is None:
    for stale in ("totals.csv", "sign_totals.png", "token_totals.csv"):  # of an earlier render
      (views_dir / stale).unlink(missing_ok=True)
    body = note + pages.table_html(per_head.reset_index())
  else:
    for name, frame in (("totals.csv", by_sign), ("token_totals.csv", per_token)):
      atomic_write_bytes(views_dir / name, results.csv_bytes(frame, "%.6g"))
      written.append(views_dir / name)
    written.append(tv.plot_sign_totals(by_sign, heads, views_dir / "sign_totals.png"))
    line = tv.totals_line(by_sign)
    print(line)
    body = f"<p>{line}.</p>" + note + pages.embedded_png(written[-1], "totals by sign") + tv.sign_totals_html(by_sign)
  return ("Total positive and negative χ", body + pages.embedded_png(written[0], "totals by token")), written


def sampling_html(out: Path) -> str:
  """The index's first section: each warning of the sampling behind every view (R̂, ESS, divergences, …), once
  (every chunk re-runs the same chains); at the paper's shape they were on the terminal only."""
  import html

  from suscept_jax import results
  store = results.ResultsDir(out)
  said = dict.fromkeys(w for name in store.finished_units(prefix="chunk_")
                       for w in store.unit_meta(name).get("warnings", []))
  if not said:
    return "<p>No warnings: every component's chains passed the status tests (README: Status and warnings).</p>"
  return (f"<p class='warn'>{len(said)} warning(s) from the chains behind every view (each also printed by the "
          f"run):</p><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in said) + "</ul>")


def render_views(out: Path, views, *, heads=None, token=None, keep_other_views: bool = False) -> list[Path]:
  """Every requested view of a per-token results directory (see suscept_jax.analysis.token_views), and
  index.html over them. With `keep_other_views` (--views_only), the index keeps the sections of views
  rendered earlier and not asked for now (adding the UMAP view later does not drop the others); each
  view's section is kept in views/sections.json for that."""
  import numpy as np
  import pandas as pd

  from suscept_jax import results
  from suscept_jax.analysis import pages, token_stats as ts, token_views as tv
  from suscept_jax.paths import atomic_write_bytes
  path = Path(out) / "tokens.parquet"
  if not path.exists():
    raise FileNotFoundError(f"{out} holds no per-token results (no tokens.parquet); run experiments.per_token first")
  table = pd.read_parquet(path)
  info = json.loads((Path(out) / "per_token.json").read_text())
  all_heads = [c for c in info["components"] if c != "full"]
  named = bool(heads)
  if heads:
    missing = [h for h in heads if h not in info["components"]]
    if missing:
      raise ValueError(f"--view_heads {missing} are not in the per-token results (components: {info['components']})")
  else:  # per layer its most responsive head (largest mean |χ|), then the next most responsive: the demo showed
    # l0h0, l1h0, l0h1 by name while its specialised heads were l0h3 and l1h2, l1h3
    mean_abs = {h: float(np.nanmean(np.abs(table.chi[table.component == h]))) for h in all_heads}
    ranked = sorted(all_heads, key=lambda h: -mean_abs[h] if np.isfinite(mean_abs[h]) else np.inf)
    layers = {}
    for h in ranked:
      layers.setdefault(h.split("h")[0], h)
    chosen = (list(layers.values()) + [h for h in ranked if h not in layers.values()])[:3]
    heads = [h for h in all_heads if h in chosen] or info["components"][:1]  # (shown in the model's order)
  shown = (f'<p class="meta">Heads shown: {", ".join(heads)} of {len(all_heads)} ('
           + ("named by --view_heads" if named else "the most responsive head of each layer by mean |χ| over the "
              "tokens, then the next; --view_heads names others") + ").</p>")
  views_dir = Path(out) / "views"
  views_dir.mkdir(parents=True, exist_ok=True)
  written, sections, chains = [], {}, chains_by_component(Path(out), info["components"])
  write = lambda name, text: (atomic_write_bytes(views_dir / name, text.encode()), written.append(views_dir / name))
  if "highlight" in views:
    links = []
    for d, dataset in enumerate(info["datasets"]):
      t = table[table.dataset == dataset]
      keys = list(dict.fromkeys(zip(t.context, t.position)))
      contexts_ids = list(dict.fromkeys(t.context))
      tokens = [t[(t.context == c) & (t.component == heads[0])].sort_values("position").token.tolist()
                for c in contexts_ids]
      per_head = lambda column: [[t[(t.context == c) & (t.component == h)].sort_values("position")[column].to_numpy()
                                  for c in contexts_ids] for h in heads]
      name = f"highlight_{d:02d}.html"
      write(name, tv.highlighted_text_html(tokens, per_head("chi"), heads, title=f"per-token χ on {dataset}",
                                          captions=[f"{dataset} · context {c}" for c in contexts_ids],
                                          stderr_HxOxJ=per_head("chi_stderr")))
      links.append((name, dataset, f"({len(contexts_ids)} contexts, {len(keys)} tokens)"))
    sections["highlight"] = ("Highlighted text", pages.link_list(links) + shown)
  if "extremes" in views:
    links = []
    for h in heads:
      name = f"extremes_{h.replace(' ', '_')}.html"
      write(name, tv.extreme_tokens_html(table, h, title=f"most positive and negative per-token χ of {h}",
                                         num_chains=chains.get(h)))
      links.append((name, h, ""))
    sections["extremes"] = ("Top-100 positive and negative tokens in context", pages.link_list(links) + shown)
    for stale in set(views_dir.glob("extremes_*.html")) - set(written):  # heads of an earlier render: unlinked
      stale.unlink()
  if "top" in views:
    rows = []
    for h in all_heads or heads:
      for dataset in info["datasets"]:
        pos, neg = ts.top_tokens(table, h, dataset, pool=TOP_POOL, num_chains=chains.get(h))
        clear = lambda top: [f"; {c} clear of 0" for c in top["clear"]] if "clear" in top else [""] * len(top)
        listed = lambda top: ", ".join(f"{t!r} ({n}{c})" for t, n, c in zip(top.token, top["count"], clear(top)))
        cell = table[(table.component == h) & (table.dataset == dataset)]
        pooled = lambda n: f"{min(n, TOP_POOL)} of {n}"  # (the pool is every token of its sign below TOP_POOL)
        rows.append({"head": h, "dataset": dataset, "top positive": listed(pos), "top negative": listed(neg),
                     "pool +": pooled(int((cell.chi > 0).sum())), "pool −": pooled(int((cell.chi < 0).sum()))})
    frame = pd.DataFrame(rows)
    atomic_write_bytes(views_dir / "top_tokens.csv", results.csv_bytes(frame))
    written.append(views_dir / "top_tokens.csv")
    sections["top"] = (f"Top tokens per head and dataset (3 distinct among the pool of each sign: its {TOP_POOL} "
                       "most extreme per-token χ, or all of that sign where fewer, as the pool columns say; in "
                       "brackets: how often each is in the pool" + (", and how many of those have a 95 % interval "
                                                                     "clear of 0" if chains else "") + ")",
                       pages.table_html(frame, max_rows=len(frame)))  # (every row: 224 at the paper's shape)
  if "totals" in views:
    sections["totals"], paths = render_totals(Path(out), table, info, heads)
    written.extend(paths)
  if "bimodal" in views:
    head, token, candidates = ts.pick_histogram_token(table, heads, token)
    figure = tv.plot_token_histogram(table, head, token, views_dir / "bimodal.png")
    written.append(figure)
    write("bimodal.html", tv.bimodal_html(table, head, token, pages.embedded_png(figure, "histogram"), candidates))
    sections["bimodal"] = (f"χ of {token!r} for {head} over its contexts",
                           pages.embedded_png(figure, "histogram")
                           + '<p><a href="bimodal.html">contexts from each mode</a></p>')
  if "additivity" in views:
    dataset_csv = Path(out) / "dataset_chi.csv"
    if dataset_csv.exists():
      joined, slope, r = ts.additivity(table, pd.read_csv(dataset_csv), info["delta_h"])
      intervals, note = load_additivity_intervals(Path(out), joined, info)
      figure = tv.plot_additivity(joined, slope, r, views_dir / "additivity.png", intervals)
      written.append(figure)
      line = tv.additivity_line(slope, r, intervals)
      print(line)
      sections["additivity"] = (line[0].upper() + line[1:],
                                pages.embedded_png(figure, "additivity") + note + tv.off_line_html(joined, intervals))
  if "comparisons" in views:
    figure = tv.plot_comparisons(table, heads, views_dir / "comparisons.png")
    written.append(figure)
    sections["comparisons"] = ("χ against ablation and loss", pages.embedded_png(figure, "comparisons"))
  if "umap" in views:
    figure = tv.plot_umap(table, views_dir / "umap.png")
    written.append(figure)
    sections["umap"] = ("Per-token susceptibility vectors (UMAP)", pages.embedded_png(figure, "umap"))
  if "positions" in views:
    sums = chains_with(Path(out), POSITION_CHAINS)
    bands = None if sums is None else ts.position_profiles(*(sums[k] for k in POSITION_CHAINS), info["components"])
    figure = tv.plot_position_profiles(table, views_dir / "positions.png", bands)
    written.append(figure)
    sections["positions"] = ("χ by position", pages.embedded_png(figure, "positions")
                             + (POSITIONS_NOTE if bands is not None else NO_CHAINS_NOTE))
  kept_path = views_dir / "sections.json"
  if keep_other_views and kept_path.exists():
    sections = {**{v: tuple(sec) for v, sec in json.loads(kept_path.read_text()).items()}, **sections}
  sections = {v: sections[v] for v in ALL_VIEWS if v in sections}  # one order, whatever was rendered when
  atomic_write_bytes(kept_path, json.dumps(sections).encode())
  write("index.html", pages.index_html(f"per-token susceptibilities at checkpoint {info['checkpoint']}",
                                    [("Sampling", sampling_html(Path(out)))] + list(sections.values())))
  return written


if __name__ == "__main__":
  cli.run(main)
