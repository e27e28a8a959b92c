"""What restricting gradients to the free leaves saves, per component kind and for a whole sweep step.

  python -m benchmarks.restricted_gradients [--model=demo] [--batch_size=20] [--num_chains=4] [--draws=40]
  python -m benchmarks.restricted_gradients --model=tetrahedron_3m --batch_size=64 --flops_only

Per kind (the full model, a head of the first layer, of the last layer, the unembedding), over the kind's
entries (its heads × chains, chain k reading batch k): XLA's FLOP count per entry and the measured time of
the vmapped gradient with every leaf differentiated, with only the kind's leaves, and (kinds of several
heads) with only those on the sampler's entry grid, where the frozen layers below the heads are computed
once per chain (`restricted.over_entries`), and there with each entry's own head alone differentiated, the
layer's other heads computed at w* once per chain (`restricted.slice_layout`: what the sampler runs). Then
`sampler.run` over the model's default components (every head + full) with `restrict_gradients` off and on:
seconds with and without compilation.
--flops_only: the FLOP counts only (compiled, not run), e.g. for the paper's model, too big to time here.

Shape letters: K chains (chain k reads batch k), N rows per batch, C components.
"""
import argparse
import functools

import jax
import numpy as np

import suscept_jax as sj
from suscept_jax import restricted, sampler
from suscept_jax.models import components

from benchmarks import common


def gradient_cost(loss_fn, params, masks_C, batch_KxN, free, repeats: int, *, grid: bool, slices: bool):
  """(XLA FLOPs per entry, seconds per call) of a group's gradients over its components × K chains
  (`common.group_gradients`); repeats 0: compiled, not run (NaN s)."""
  flops = common.group_gradient_flops(loss_fn, params, masks_C, free, batch_KxN, grid=grid, slices=slices)
  if not repeats:
    return flops, float("nan")
  program, component_E = common.group_gradients(loss_fn, params, masks_C, free, batch_KxN.shape[0], grid=grid,
                                                slices=slices)
  positions = jax.tree.map(lambda a: np.broadcast_to(a, (component_E.size,) + a.shape).copy(), params)
  return flops, common.seconds_per_call(program, params, positions, component_E, batch_KxN, repeats=repeats)


def run_seconds(loss_fn, params, names, masks_C, base, probes, config, batch_size, restrict):
  """(seconds of the first run, compilation included; of a second, compiled, run)."""
  kw = dict(config=config, batch_size=batch_size, delta_h=0.1, progress=False, restrict_gradients=restrict)
  first = sampler.run(loss_fn, params, names, masks_C, base, probes, **kw).seconds
  return first, sampler.run(loss_fn, params, names, masks_C, base, probes, **kw).seconds


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--model", default="demo")
  parser.add_argument("--batch_size", type=int, default=20)
  parser.add_argument("--num_chains", type=int, default=4)
  parser.add_argument("--draws", type=int, default=40)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--flops_only", action="store_true", help="FLOP counts only (compiled, not run)")
  args = parser.parse_args(argv)
  repeats = 0 if args.flops_only else args.repeats
  cfg, loss_fn, params, masks, base, probes = common.setup(args.model, num_contexts=1024)
  if args.flops_only:  # whole logits: XLA counts a loop's body once, so chunked logits would be counted short
    loss_fn = functools.partial(loss_fn, logits_chunk=None)
  last = cfg.n_layers - 1
  kinds = {"full": (["full"], 1), "layer-0 head": ([f"l0h{h}" for h in range(cfg.n_heads)], cfg.n_heads),
           f"layer-{last} head": ([f"l{last}h{h}" for h in range(cfg.n_heads)], cfg.n_heads),
           "unembed": (["unembed"], 1)}
  print(f"device: {jax.devices()[0].device_kind} ×{jax.device_count()}; model {args.model} "
        f"({sum(np.size(x) for x in jax.tree.leaves(params)):,} params, ctx {cfg.n_ctx}, {cfg.n_layers} layers × "
        f"{cfg.n_heads} heads); batch {args.batch_size}, {args.num_chains} chains")
  rng = np.random.default_rng(0)
  for kind, (specs, count) in kinds.items():
    _, masks_C = sj.stack_masks(components.component_masks(specs, params, cfg), params)
    free = restricted.free_leaves(masks_C, range(count))
    batch_KxN = rng.integers(0, cfg.d_vocab, (args.num_chains, args.batch_size, cfg.n_ctx), dtype=np.int32)
    free = None if all(free) else free
    cost = functools.partial(gradient_cost, loss_fn, params, masks_C, batch_KxN, repeats=repeats)
    costs = {"all leaves": cost(None, grid=False, slices=False), "free leaves": cost(free, grid=False, slices=False)}
    if restricted.entry_grid(count, args.num_chains, 1, free):
      costs["free, on the grid"] = cost(free, grid=True, slices=False)
      if restricted.slice_layout(masks_C, params, free):
        costs["own head, on the grid"] = cost(free, grid=True, slices=True)
    flops_all, s_all = costs["all leaves"]
    figure = lambda flops, s: f"{flops / 1e6:9.1f} MFLOP ({flops / flops_all:.2f}×)" + (
        "" if args.flops_only else f", {s * 1e3:7.1f} ms ({s / s_all:.2f}×)")
    print(f"  {kind:>13}: {count * args.num_chains:3d} entries; per entry: " + "; ".join(
        f"{name} {figure(*cost)}" for name, cost in costs.items()))
  if args.flops_only:
    return
  names, masks_C = sj.stack_masks(masks, params)
  groups = restricted.component_groups(masks_C, len(names))
  config = sj.SGLDConfig(num_chains=args.num_chains, num_draws=args.draws, mala_every=0)
  off = run_seconds(loss_fn, params, names, masks_C, base, probes, config, args.batch_size, False)
  on = run_seconds(loss_fn, params, names, masks_C, base, probes, config, args.batch_size, True)
  print(f"  sampler.run, {len(names)} components × {args.num_chains} chains × {args.draws} draws, 8 probes "
        f"({len(groups)} programs when restricted): full gradients {off[0]:.1f} s ({off[1]:.1f} s compiled), "
        f"restricted {on[0]:.1f} s ({on[1]:.1f} s compiled): {off[0] / on[0]:.2f}× ({off[1] / on[1]:.2f}× compiled)")


if __name__ == "__main__":
  main()
