"""Time per draw as replicas grow, FLOP/s against peak, and a projection of the paper's runs.

  python -m benchmarks.scaling [--model=demo] [--batch_size=20] [--replicas=1,4,17,68] [--draws=20]

1. Replicas (component × chain entries, here chains of the full model) E = 1, 4, 17, 68: seconds per draw and
   per replica-draw, and the draw program's achieved FLOP/s (XLA's count) against a measured matmul peak.
   Per-replica time falls while a replica alone leaves the device idle and flattens once the matmuls fill it.
2. The per-token pass (per-token NLL of O contexts for E parameter copies): FLOP/s against the same peak.
3. Projection: FLOPs of the paper's sweep and per-token run (XLA's count for the paper model at batch 64 ×
   ctx 1024, restricted gradients per component kind, MALA's one extra gradient per measured move) over the
   peaks of one H100 and of a TPU v4-8 at a given utilisation. A FLOP count over a peak, not a measurement.

  python -m benchmarks.scaling --from_figures=OUT/accelerator_figures.json

projects the same runs from what a device measured (`benchmarks.accelerator_figures`): at the FLOP rate each
setting's draw achieved there, plus its fixed host work per run.
"""
import argparse
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import suscept_jax as sj
from suscept_jax import batched, mixing, restricted, sampler
from suscept_jax.models import components, config as model_config, transformer

from benchmarks import common

# The vendors' dense peaks per chip (FLOP/s), by a piece of `device_kind`: the "fraction of peak" the issue asks
# for on a GPU (`accelerator_figures` reports the measured matmul rate beside it) and the projection's. NVIDIA's
# "default" float32 is TF32 on the tensor cores; "highest" is plain float32.
DATASHEET_PEAKS = {"H100": {"bf16": 989.4e12, "f32 default": 494.7e12, "f32 highest": 66.9e12},
                   "H200": {"bf16": 989.4e12, "f32 default": 494.7e12, "f32 highest": 66.9e12},
                   "TPU v4": {"bf16": 275e12}}
# The peak each precision setting is held against.
PEAK_FOR = {"bfloat16": "bf16", "default": "f32 default", "float32": "f32 highest"}
PEAKS = {"H100 SXM (bf16)": DATASHEET_PEAKS["H100"]["bf16"], "H100 SXM (tf32)": DATASHEET_PEAKS["H100"]["f32 default"],
         "TPU v4-8, 4 chips (bf16)": 4 * DATASHEET_PEAKS["TPU v4"]["bf16"]}


def datasheet_peaks(device_kind: str) -> dict:
  """{peak kind: FLOP/s} from the vendor's datasheet for this device, {} for one not listed (e.g. a CPU)."""
  return next((peaks for kind, peaks in DATASHEET_PEAKS.items() if kind.lower() in device_kind.lower()), {})


def gradient_steps(config) -> int:
  """SGLD gradients per chain in a run: every step it takes (`SGLDConfig.num_steps`: the burn-in, each block's
  steps, the last block's included) and MALA's one more at each move it measures (20 of the paper's 200 draws)."""
  return config.num_steps + config.num_mala_measurements


def paper_runs() -> dict:
  """What `--preset=paper` runs (App. C): the sweep over checkpoints × probes × components × chains × draws,
  and the per-token run, one unit per dataset (each re-running every chain) with dataset-level χ on."""
  from suscept_jax_runners import presets
  paper = presets.get_preset("paper")
  return dict(checkpoints=len(paper.checkpoint_steps), probes=len(paper.probes), chains=paper.sgld.num_chains,
              draws=paper.sgld.num_draws, gradient_steps=gradient_steps(paper.sgld), batch=paper.batch_size,
              delta_h=paper.delta_h, per_token_draws=paper.per_token_sgld.num_draws,
              per_token_gradient_steps=gradient_steps(paper.per_token_sgld),
              per_token_batch=paper.per_token_batch_size, per_token_contexts=paper.per_token_contexts,
              per_token_units=len(paper.probes) if paper.per_token_unit_per_dataset else 1)


def flops_of(fn, *args) -> float:
  """XLA's FLOP count of jit(fn) at these arguments' shapes, compiled for the CPU (`common.flops_on_cpu`)."""
  return common.flops_on_cpu(jax.jit(fn), *args)


def whole_logits(loss_fn):
  """loss_fn (a partial of the transformer's NLLs) with its logits computed all at once, for XLA's FLOP count:
  the count takes a loop's body once, so logits in chunks (`transformer.logits_chunk_for`: on CPU, the paper
  model's) would count as one chunk's (83 instead of 143 GFLOP for its gradient at batch 8). Other functions
  are returned as they are."""
  if isinstance(loss_fn, functools.partial) and loss_fn.func in (transformer.context_nll, transformer.per_token_nll):
    return functools.partial(loss_fn, logits_chunk=None)
  return loss_fn


def _per_component(group_flops, names, masks_C) -> dict:
  """{component: group_flops(its group's masks, the leaves it frees or None for all)}, one call per group."""
  out = {}
  for free, comps in restricted.component_groups(masks_C, len(names)):
    per_entry = group_flops(jax.tree.map(lambda m: np.asarray(m)[comps], masks_C), None if all(free) else free)
    out.update({names[c]: per_entry for c in comps})
  return out


def gradient_flops(loss_fn, params, names, masks_C, batch, *, chains: int = 4, slices: bool = True) -> dict:
  """{component: XLA's FLOP count per entry of its SGLD step's gradient at `batch`, as the sampler runs it on one
  device}: each group's components × `chains` chains in one program, restricted to the leaves the group frees,
  on the entry grid (frozen layers below computed once per chain) and, with `slices`, the loss told each entry's
  free head (a layer's other heads computed at w* once per chain; False: every head per entry, as before
  `restricted.slice_layout`, which device figures measured before it need for their rate)."""
  loss_fn = whole_logits(loss_fn)
  batch_KxN = jax.ShapeDtypeStruct((chains,) + tuple(np.shape(batch)), batch.dtype)
  return _per_component(lambda group_masks, free: common.group_gradient_flops(
      loss_fn, params, group_masks, free, batch_KxN, slices=slices), names, masks_C)


def forward_flops(loss_fn, params, names, masks_C, rows, *, chains: int = 4, slices: bool = True) -> dict:
  """{component: XLA's FLOP count per entry of its losses of `rows` [N, ctx] per stream (a draw's probe slots),
  as the sampler evaluates them}: on the entry grid, told the entry's free slices (`gradient_flops`), so what
  does not depend on the entry (w*'s layers below, a layer's other heads) counts once per chain."""
  loss_fn = whole_logits(loss_fn)
  rows_KxN = jax.ShapeDtypeStruct((chains,) + tuple(np.shape(rows)), rows.dtype)
  return _per_component(lambda group_masks, free: common.group_program_flops(common.group_forwards(
      loss_fn, params, group_masks, free, chains, slices=slices), params, rows_KxN), names, masks_C)


def draw_flops(loss_fn, params, names, masks_C, batch, *, chains: int, probes: int, delta_h: float,
               slices: bool = True) -> dict:
  """FLOPs of one steady draw of a run with `chains` chains of every component in `names`, one gradient step per
  draw: {"gradient": the entries' gradients alone, "draw": with the probes' forwards}. The table of L_B(w*)
  is one pass before the first chunk (`anchor_table`), timed with a run's fixed work, not in its draws.
  slices: as `gradient_flops`."""
  batch_size, n_ctx = np.shape(batch)
  step = gradient_flops(loss_fn, params, names, masks_C, batch, chains=chains, slices=slices)
  slots = jax.ShapeDtypeStruct((probes * mixing.max_probe_samples(batch_size, delta_h), n_ctx), jnp.int32)
  draw = run_flops(step, chains=chains, gradient_steps=1, draws=1,
                   probe_forwards=forward_flops(loss_fn, params, names, masks_C, slots, chains=chains, slices=slices),
                   forward_1=0.0, batch=0)
  return dict(gradient=chains * sum(step.values()), draw=draw)


def step_flops(loss_fn, params, names, masks_C, batch) -> float:
  """XLA's FLOP count of one SGLD step's gradients over every component (per entry, as `gradient_flops`)."""
  return sum(gradient_flops(loss_fn, params, names, masks_C, batch).values())


def seconds_per_draw(loss_fn, params, base, replicas: int, batch_size: int, draws: int) -> float:
  """A run of `replicas` chains of the full model, minus a one-draw run, per extra draw (compiled)."""
  names, masks_C = sj.stack_masks({"full": None}, params)

  def timed(num_draws):
    kw = dict(config=sj.SGLDConfig(num_chains=replicas, num_draws=num_draws, mala_every=0), batch_size=batch_size,
              delta_h=None, progress=False)
    sampler.run(loss_fn, params, names, masks_C, base, {}, **kw)  # compile
    return sampler.run(loss_fn, params, names, masks_C, base, {}, **kw).seconds

  return (timed(draws) - timed(1)) / (draws - 1)


def replica_curve(loss_fn, params, base, replica_counts, batch_size, draws, peak):
  counted = whole_logits(loss_fn)
  grad_flops = flops_of(lambda w, b: batched.loss_and_grad(counted, w, b, None), params, base[:batch_size])
  print(f"replicas (chains of the full model), batch {batch_size}: one gradient = {grad_flops / 1e6:.1f} MFLOP")
  previous = None
  for E in replica_counts:
    s = seconds_per_draw(loss_fn, params, base, E, batch_size, draws)
    rate = E * grad_flops / s
    note = "" if previous is None else f"; per replica ×{(s / E) / previous:.2f} vs the previous row"
    print(f"  E = {E:3d}: {s * 1e3:8.1f} ms per draw, {s / E * 1e3:7.2f} ms per replica-draw, "
          f"{rate / 1e9:6.1f} GFLOP/s = {100 * rate / peak:4.1f}% of peak{note}")
    previous = s / E


def per_token_rate(token_loss_fn, params, contexts, replicas, peak):
  stacked = jax.tree.map(lambda a: jnp.broadcast_to(a, (replicas, *a.shape)), params)
  forward = lambda w, fn=token_loss_fn: jax.vmap(lambda p: fn(p, contexts))(w)
  flops = flops_of(functools.partial(forward, fn=whole_logits(token_loss_fn)), stacked)
  s = common.seconds_per_call(jax.jit(forward), stacked)
  print(f"per-token pass: {replicas} replicas × {contexts.shape[0]} contexts × {contexts.shape[1]} tokens: "
        f"{s * 1e3:.1f} ms, {flops / s / 1e9:.1f} GFLOP/s = {100 * flops / s / peak:.1f}% of peak")


def run_flops(step: dict, *, chains: int, gradient_steps: int, draws: int, probe_forwards: dict, forward_1: float,
              batch: int, observed_forwards: dict | None = None) -> float:
  """FLOPs of one run over the components in `step` ({component: gradient FLOPs per entry at the batch}): every
  entry's gradients; per draw, every entry's forwards of its probe slots (`probe_forwards`, per entry as
  `forward_flops`) and of its observed contexts (`observed_forwards`, per token); per stream and draw, one batch
  at w* of `forward_1` each (the table of L_B(w*): one pass over the batches' samples, whose size `batch` gives;
  0 leaves it out)."""
  observed_forwards = observed_forwards or {}
  per_draw = sum(probe_forwards[c] + observed_forwards.get(c, 0.0) for c in step)
  return chains * (gradient_steps * sum(step.values()) + draws * (per_draw + batch * forward_1))


def _model(model: str):
  cfg = model_config.get_config(model)
  params = jax.eval_shape(lambda: transformer.init_params(cfg))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params)
  names, masks_C = sj.stack_masks(components.component_masks(components.default_components(cfg), zeros, cfg), zeros)
  return cfg, params, functools.partial(transformer.context_nll, config=cfg), names, masks_C


def paper_flops(model: str = "tetrahedron_3m") -> dict:
  """XLA's FLOP counts (compiled, not run) of the paper's sweep and per-token run on `model`, gradients
  restricted per component group and forwards told each entry's free head, as the sampler runs them."""
  paper = paper_runs()
  cfg, params, loss_fn, names, masks_C = _model(model)
  contexts = lambda n: jax.ShapeDtypeStruct((n, cfg.n_ctx), jnp.int32)
  forward_1 = flops_of(whole_logits(loss_fn), params, contexts(1))
  probe_slots = lambda batch: contexts(paper["probes"] * mixing.max_probe_samples(batch, paper["delta_h"]))
  K = paper["chains"]
  step = gradient_flops(loss_fn, params, names, masks_C, contexts(paper["batch"]))
  probe_forwards = forward_flops(loss_fn, params, names, masks_C, probe_slots(paper["batch"]), chains=K)
  sweep_run = functools.partial(run_flops, chains=K, gradient_steps=paper["gradient_steps"], draws=paper["draws"],
                                forward_1=forward_1, batch=paper["batch"])
  units = paper["per_token_units"]
  observed = paper["probes"] * paper["per_token_contexts"] // units
  # The observed contexts are the same for every entry: counted as one chain's (w*'s part once per component
  # group rather than once in all: errs long by a little).
  observed_forwards = forward_flops(functools.partial(transformer.per_token_nll, config=cfg), params, names,
                                    masks_C, contexts(observed), chains=1)
  per_token_run = run_flops(
      gradient_flops(loss_fn, params, names, masks_C, contexts(paper["per_token_batch"])), chains=K,
      gradient_steps=paper["per_token_gradient_steps"], draws=paper["per_token_draws"],
      probe_forwards=forward_flops(loss_fn, params, names, masks_C, probe_slots(paper["per_token_batch"]), chains=K),
      forward_1=forward_1, batch=paper["per_token_batch"], observed_forwards=observed_forwards)
  return dict(paper=paper, config=cfg, names=names, groups=restricted.component_groups(masks_C, len(names)),
              forward_1=forward_1, step=step,
              sweep=paper["checkpoints"] * sweep_run(step, probe_forwards=probe_forwards),
              sweep_unrestricted=paper["checkpoints"] * sweep_run(
                  {c: step["full"] for c in names}, probe_forwards={c: probe_forwards["full"] for c in names}),
              per_token=units * per_token_run)


def paper_projection(utilisation: float, model: str = "tetrahedron_3m") -> dict:
  """The paper's runs over the datasheet peaks of one H100 and a TPU v4-8 at an assumed utilisation."""
  f = paper_flops(model)
  paper, cfg, names, step = f["paper"], f["config"], f["names"], f["step"]
  print(f"{model} model ({cfg.n_layers} layers × {cfg.n_heads} heads, ctx {cfg.n_ctx}, {len(names)} components): "
        f"forward of one context {f['forward_1'] / 1e9:.2f} GFLOP; gradient at batch {paper['batch']}: "
        + ", ".join(f"{names[comps[0]]} (and {len(comps) - 1} alike) {step[names[comps[0]]] / 1e12:.2f} TFLOP"
                    for _, comps in f["groups"]))
  print(f"  sweep ({paper['checkpoints']} checkpoints × {paper['probes']} probes × {len(names)} components × "
        f"{paper['chains']} chains × {paper['draws']} draws, {paper['gradient_steps']} gradients per chain "
        f"with MALA's): "
        f"{f['sweep'] / 1e15:.1f} PFLOP (full gradients everywhere: {f['sweep_unrestricted'] / 1e15:.1f} PFLOP)")
  print(f"  per-token run ({paper['per_token_units']} unit(s) of {paper['per_token_draws']} draws, "
        f"{paper['probes'] * paper['per_token_contexts']} observed contexts in all): {f['per_token'] / 1e15:.1f} PFLOP")
  for device, peak in PEAKS.items():
    print(f"  {device} at {utilisation:.0%} of peak: sweep {f['sweep'] / (peak * utilisation) / 60:.0f} min, "
          f"per-token run {f['per_token'] / (peak * utilisation) / 60:.0f} min")
  return f


# HBM bandwidth by datasheet (bytes/s): the goal names an H100, the device lent was an H200 with the same
# tensor-core peaks and 1.43× the bandwidth. A draw bound by arithmetic takes as long on either; one bound by
# memory 1.43× longer on the H100: the two ends of what an H200's time says of an H100's.
HBM_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}


def h100_range(device: str, minutes: float) -> tuple[float, float] | None:
  """(arithmetic-bound, memory-bound) minutes on an H100 of a run measured at `minutes` on `device`; None unless
  the device is an H200 (an H100's own figure needs no range)."""
  if "H200" not in device:
    return None
  return minutes, minutes * HBM_BANDWIDTH["H200"] / HBM_BANDWIDTH["H100"]


def setting_label(setting: dict) -> str:
  """"COMPONENTS/PRECISION/ATTENTION[/LOGITS]" of a figures row (LOGITS only where not "auto")."""
  logits = setting.get("logits_chunk", "auto")
  return "/".join([setting["components"], setting["precision"], setting["attention"]]
                  + ([] if logits == "auto" else ["whole" if logits is None else str(logits)]))


def measured_projection(figures: dict) -> list[dict]:
  """The paper's runs on the device `benchmarks.accelerator_figures` measured, at the FLOP rate each of its
  settings achieved: a measured draw's FLOPs (every entry's gradient and its one probe's slots) over its steady
  seconds per draw; the runs' FLOPs (the table of L_B(w*) included, at the same rate) over that rate, plus each
  run's fixed host work as measured (at that run's few draws and one probe: it grows with both, so a lower
  bound). The runs' FLOPs are counted with each head's own path (`gradient_flops`, `forward_flops`); a measured
  draw's as the device ran it (figures from before that path, without "free_slices", computed every head per
  entry): for those the projection assumes the same FLOP rate, which one head's smaller matmuls may not reach."""
  f = paper_flops(figures["model"])
  paper, names = f["paper"], f["names"]
  _, params, loss_fn, _, masks_C = _model(figures["model"])
  batch = jax.ShapeDtypeStruct((figures["batch_size"], f["config"].n_ctx), jnp.int32)
  rows = []
  for setting in figures["settings"]:
    if "seconds_per_draw" not in setting:
      continue
    which = (names, masks_C) if setting["components"] == "all" else sj.stack_masks({"full": None}, params)
    draw = draw_flops(loss_fn, params, *which, batch, chains=setting["entries"] // len(which[0]), probes=1,
                      delta_h=0.1, slices=figures.get("free_slices", False))["draw"]
    rate = draw / setting["seconds_per_draw"]
    peak_kind = PEAK_FOR[setting["precision"]]
    measured_peak = figures["matmul_peak_tflops"][peak_kind] * 1e12
    # a checkpoint's fixed work: every group's run (an "all" setting measured them all; "full" one)
    fixed = setting["fixed_seconds"] * (1 if setting["components"] == "all" else len(f["groups"]))
    row = dict(setting=setting_label(setting),
               achieved_tflops=rate / 1e12, fraction_of_measured_peak=rate / measured_peak,
               sweep_minutes=(f["sweep"] / rate + paper["checkpoints"] * fixed) / 60,
               per_token_minutes=(f["per_token"] / rate + paper["per_token_units"] * fixed) / 60)
    rows.append(row)
    h100 = h100_range(figures["device"], row["sweep_minutes"])
    if h100:
      row["h100_sweep_minutes"] = h100
    print(f"  {figures['device']}, at the rate of {row['setting']} ({row['achieved_tflops']:.3g} TFLOP/s with its "
          f"probe forwards, {row['fraction_of_measured_peak']:.1%} of the measured {peak_kind} "
          f"matmul peak): sweep {row['sweep_minutes']:.1f} min, per-token run {row['per_token_minutes']:.1f} min"
          + (f"; on an H100 the sweep {h100[0]:.0f}–{h100[1]:.0f} min (bound by arithmetic – by memory)" if h100
             else ""))
  return rows


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="demo")
  parser.add_argument("--batch_size", type=int, default=20)
  parser.add_argument("--replicas", default="1,4,17,68")
  parser.add_argument("--draws", type=int, default=20)
  parser.add_argument("--utilisation", type=float, default=0.3, help="assumed fraction of peak for the projection")
  parser.add_argument("--projection_model", default="tetrahedron_3m", help="the paper's model (a smaller one in tests)")
  parser.add_argument("--skip_projection", action="store_true")
  parser.add_argument("--from_figures", help="accelerator_figures.json of a device run: project the paper's runs "
                      "from its measured step times (here, on any machine) instead of measuring")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.from_figures:
    figures = json.loads(Path(args.from_figures).read_text())
    print(f"the paper's runs on {figures['device']} ({figures['model']} model), from the steady time per draw each "
          f"setting measured:")
    measured_projection(figures)
    return
  cfg, loss_fn, params, _, base, _ = common.setup(args.model, num_contexts=1024)
  peak = common.peak_matmul_flops()
  print(f"device: {jax.devices()[0].device_kind} ×{jax.device_count()}; model {args.model} "
        f"({sum(np.size(x) for x in jax.tree.leaves(params)):,} params, ctx {cfg.n_ctx}); measured f32 matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s")
  replica_curve(loss_fn, params, base, [int(r) for r in args.replicas.split(",")], args.batch_size, args.draws, peak)
  per_token_rate(functools.partial(transformer.per_token_nll, config=cfg), params, jnp.asarray(base[:32]), 36, peak)
  if not args.skip_projection:
    paper_projection(args.utilisation, args.projection_model)


if __name__ == "__main__":
  main()
