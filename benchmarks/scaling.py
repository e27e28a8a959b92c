"""Time per draw as replicas grow, FLOP/s against peak, and a projection of the paper's runs.

  python -m benchmarks.scaling [--model=demo] [--batch_size=20] [--replicas=1,4,17,68] [--draws=20]

1. Replicas (component × chain entries, here chains of the full model) E = 1, 4, 17, 68: seconds per draw and
   per replica-draw, and the draw program's achieved FLOP/s (XLA's count) against a measured matmul peak.
   Per-replica time falls while a replica alone leaves the device idle and flattens once the matmuls fill it.
2. The per-token pass (per-token NLL of O contexts for E parameter copies): FLOP/s against the same peak.
3. Projection: FLOPs of the paper's sweep and per-token run (XLA's count for the paper model at batch 64 ×
   ctx 1024, restricted gradients per component kind) over the peaks of one H100 and of a TPU v4-8 at a given
   utilisation. A FLOP count over a peak, not a measurement: replace it with device figures when measured.
"""
import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

import suscept_jax as sj
from suscept_jax import batched, mixing, restricted, sampler
from suscept_jax.models import components, config as model_config, transformer

from benchmarks import common

# Vendor datasheet peaks, dense FLOP/s.
PEAKS = {"H100 SXM (bf16)": 989e12, "H100 SXM (tf32)": 495e12, "TPU v4-8, 4 chips (bf16)": 4 * 275e12}


def paper_runs() -> dict:
  """What `--preset=paper` runs (App. C): the sweep over checkpoints × probes × components × chains × draws,
  and the per-token run, one unit per dataset (each re-running every chain) with dataset-level χ on."""
  from suscept_jax_runners import presets
  paper = presets.get_preset("paper")
  return dict(checkpoints=len(paper.checkpoint_steps), probes=len(paper.probes), chains=paper.sgld.num_chains,
              draws=paper.sgld.num_draws, batch=paper.batch_size, delta_h=paper.delta_h,
              per_token_draws=paper.per_token_sgld.num_draws, per_token_batch=paper.per_token_batch_size,
              per_token_contexts=paper.per_token_contexts,
              per_token_units=len(paper.probes) if paper.per_token_unit_per_dataset else 1)


def flops_of(fn, *args) -> float:
  """XLA's FLOP count of jit(fn) at these arguments (compiled, not run)."""
  return common.compiled_flops(jax.jit(fn).lower(*args).compile())


def gradient_flops(loss_fn, params, names, masks_C, batch) -> dict:
  """{component: XLA's FLOP count of its SGLD step's gradient at `batch`}, each restricted to the parameter
  leaves its group frees, as the sampler runs it (`restricted.component_groups`)."""
  out = {}
  for free, comps in restricted.component_groups(masks_C, len(names)):
    free = None if all(free) else free
    grad = flops_of(lambda w, b, free=free: batched.loss_and_grad(loss_fn, w, b, None, free, w), params, batch)
    out.update({names[c]: grad for c in comps})
  return out


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
  grad_flops = flops_of(lambda w, b: batched.loss_and_grad(loss_fn, w, b, None), params, base[:batch_size])
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
  forward = lambda w: jax.vmap(lambda p: token_loss_fn(p, contexts))(w)
  flops = flops_of(forward, stacked)
  s = common.seconds_per_call(jax.jit(forward), stacked)
  print(f"per-token pass: {replicas} replicas × {contexts.shape[0]} contexts × {contexts.shape[1]} tokens: "
        f"{s * 1e3:.1f} ms, {flops / s / 1e9:.1f} GFLOP/s = {100 * flops / s / peak:.1f}% of peak")


def paper_projection(utilisation: float, model: str = "tetrahedron_3m"):
  """FLOPs of the paper's sweep and per-token run from XLA's count on the paper model (compiled, not run)."""
  paper = paper_runs()
  cfg = model_config.get_config(model)
  params = jax.eval_shape(lambda: transformer.init_params(cfg))
  loss_fn = functools.partial(transformer.context_nll, config=cfg)
  token_loss_fn = functools.partial(transformer.per_token_nll, config=cfg)
  batch = jax.ShapeDtypeStruct((paper["batch"], cfg.n_ctx), jnp.int32)
  one = jax.ShapeDtypeStruct((1, cfg.n_ctx), jnp.int32)
  forward_1 = flops_of(loss_fn, params, one)
  specs = components.default_components(cfg)
  masks = components.component_masks(specs, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params), cfg)
  names, masks_C = sj.stack_masks(masks, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params))
  groups = restricted.component_groups(masks_C, len(names))
  step_flops = functools.partial(gradient_flops, loss_fn, params, names, masks_C)
  step = step_flops(batch)
  slots = mixing.max_probe_samples(paper["batch"], paper["delta_h"])
  K, T = paper["chains"], paper["draws"]
  # Per draw: every entry's step + its probe slots; per stream one batch at w*.
  per_draw = sum(K * (g + paper["probes"] * slots * forward_1) for g in step.values()) + K * paper["batch"] * forward_1
  unrestricted = len(names) * K * (step["full"] + paper["probes"] * slots * forward_1) + K * paper["batch"] * forward_1
  sweep = paper["checkpoints"] * T * per_draw
  observed = paper["probes"] * paper["per_token_contexts"]
  units = paper["per_token_units"]
  per_token_batch = jax.ShapeDtypeStruct((paper["per_token_batch"], cfg.n_ctx), jnp.int32)
  token_forward = flops_of(token_loss_fn, params, one)
  token_slots = mixing.max_probe_samples(paper["per_token_batch"], paper["delta_h"])
  # Per unit and draw: every entry's step, its observed contexts and its dataset-level probe slots; per stream
  # one batch at w*.
  per_token_unit_draw = (sum(K * (g + observed / units * token_forward + paper["probes"] * token_slots * forward_1)
                             for g in step_flops(per_token_batch).values()) + K * paper["per_token_batch"] * forward_1)
  per_token = units * paper["per_token_draws"] * per_token_unit_draw
  print(f"{model} model ({cfg.n_layers} layers × {cfg.n_heads} heads, ctx {cfg.n_ctx}, {len(names)} components): "
        f"forward of one context {forward_1 / 1e9:.2f} GFLOP; gradient at batch {paper['batch']}: "
        + ", ".join(f"{names[comps[0]]} (and {len(comps) - 1} alike) {step[names[comps[0]]] / 1e12:.2f} TFLOP"
                    for _, comps in groups))
  print(f"  sweep ({paper['checkpoints']} checkpoints × {paper['probes']} probes × {len(names)} components × {K} "
        f"chains × {T} draws): {sweep / 1e15:.1f} PFLOP (full gradients everywhere: "
        f"{paper['checkpoints'] * T * unrestricted / 1e15:.1f} PFLOP)")
  print(f"  per-token run ({units} unit(s) of {paper['per_token_draws']} draws, {observed} observed contexts in "
        f"all): {per_token / 1e15:.1f} PFLOP")
  for device, peak in PEAKS.items():
    print(f"  {device} at {utilisation:.0%} of peak: sweep {sweep / (peak * utilisation) / 60:.0f} min, "
          f"per-token run {per_token / (peak * utilisation) / 60:.0f} min")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--model", default="demo")
  parser.add_argument("--batch_size", type=int, default=20)
  parser.add_argument("--replicas", default="1,4,17,68")
  parser.add_argument("--draws", type=int, default=20)
  parser.add_argument("--utilisation", type=float, default=0.3, help="assumed fraction of peak for the projection")
  parser.add_argument("--projection_model", default="tetrahedron_3m", help="the paper's model (a smaller one in tests)")
  parser.add_argument("--skip_projection", action="store_true")
  args = parser.parse_args(argv)
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
