"""Cost of a draw (SGLD step + φ at w* + all probe evaluations, D = 8) over the bare SGLD step, the cost of
per-chain data streams (K forwards at w* per draw instead of one shared), and the achieved FLOP/s of the
step against the machine's measured matmul peak.

  python -m benchmarks.draw_cost [--model=demo] [--components=full,l0h0] [--batch_size=20] [--num_chains=4]
Prints the figures recorded in BUILD_NOTES.md.
"""
import argparse
import contextlib
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

import suscept_jax as sj
from suscept_jax import mixing, sampler, streams as streams_lib

from benchmarks import common, scaling


def timed_run(loss_fn, params, masks, base, probes, config, batch_size, delta_h):
  names, masks_C = sj.stack_masks(masks, params)
  kw = dict(config=config, batch_size=batch_size, delta_h=delta_h, progress=False)
  sampler.run(loss_fn, params, names, masks_C, base, probes, **kw)  # compile
  return sampler.run(loss_fn, params, names, masks_C, base, probes, **kw).seconds


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  common.add_size_flags(parser)
  parser.add_argument("--batch_size", type=int, default=20)
  parser.add_argument("--num_chains", type=int, default=4)
  parser.add_argument("--steps", type=int, default=80)
  args = parser.parse_args(argv)
  cfg, loss_fn, params, masks, base, probes = common.setup(args.model, components=args.components)
  delta_h = 0.1
  m = mixing.max_probe_samples(args.batch_size, delta_h)
  E = len(masks) * args.num_chains
  print(f"device: {jax.devices()[0].device_kind} ×{jax.device_count()}; model {args.model} "
        f"({sum(np.size(x) for x in jax.tree.leaves(params)):,} params, ctx {cfg.n_ctx}); {len(masks)} components × "
        f"{args.num_chains} chains = {E} entries; batch {args.batch_size}, D = 8 probes, M = {m} probe slots")
  base_cfg = dict(num_chains=args.num_chains, mala_every=0)
  t_bare = timed_run(loss_fn, params, masks, base, {}, sj.SGLDConfig(num_burnin=args.steps, num_draws=1, **base_cfg),
                     args.batch_size, delta_h)
  t_one = timed_run(loss_fn, params, masks, base, {}, sj.SGLDConfig(num_burnin=0, num_draws=1, **base_cfg),
                    args.batch_size, delta_h)
  step_s = (t_bare - t_one) / args.steps
  for mala, streams in ((0, "per-chain"), (10, "per-chain"), (0, "shared")):
    patch = (mock.patch.object(streams_lib, "num_streams", lambda *a: 1) if streams == "shared"
             else contextlib.nullcontext())
    with patch:
      cfg_draw = sj.SGLDConfig(num_draws=args.steps, **{**base_cfg, "mala_every": mala})
      t_draws = timed_run(loss_fn, params, masks, base, probes, cfg_draw, args.batch_size, delta_h)
      t_single = timed_run(loss_fn, params, masks, base, probes,
                           sj.SGLDConfig(num_draws=1, **{**base_cfg, "mala_every": mala}), args.batch_size, delta_h)
    draw_s = (t_draws - t_single) / (args.steps - 1)
    print(f"  draw with 8 probes, {streams} data streams (MALA every {mala or '—'} draws): {draw_s * 1e3:8.1f} ms = "
          f"{draw_s / step_s:.2f} × the bare step ({step_s * 1e3:.1f} ms)")
  samples_touched = args.batch_size + args.num_chains * args.batch_size + 8 * m
  print(f"  forward samples per draw: {args.batch_size} per entry (the step, with its backward) + "
        f"{args.num_chains} × {args.batch_size} at w* (one batch per stream) + 8 × {m} probe slots, "
        f"vs {args.batch_size * 9} per entry for separate mixed batches")
  names, masks_C = sj.stack_masks(masks, params)  # the step's gradients, restricted as the sampler runs them
  flops = args.num_chains * scaling.step_flops(loss_fn, params, names, masks_C, jnp.asarray(base[:args.batch_size]))
  peak = common.peak_matmul_flops()
  print(f"  step: {flops / 1e9:.2f} GFLOP (XLA cost analysis) in {step_s * 1e3:.1f} ms = "
        f"{flops / step_s / 1e9:.1f} GFLOP/s; measured f32 matmul peak {peak / 1e9:.1f} GFLOP/s "
        f"-> {100 * flops / step_s / peak:.0f}% of peak; {samples_touched} samples touched per draw")


if __name__ == "__main__":
  main()
