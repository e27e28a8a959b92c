"""Cost of per-token observation, and its memory against the number of draws.

Throughput: the sampler runs the same chains with and without observing O contexts at every draw; the
difference is what observation costs. It is compared with a bare forward pass over the same tokens for
the same entries (jit(vmap(per_token_nll)) over E parameter copies, once per draw): the ratio bare/observed
is the per-token throughput as a fraction of the bare forward pass (target ≥ 0.8).
Memory: the per-token estimator at 50 and at 500 draws in fresh processes, peak RSS compared (target: within 5%).

  python -m benchmarks.per_token_cost [--model=demo] [--components=full,l0h0] [--contexts=32] [--draws=40]
                                      [--memory_draws=50,500] [--skip_memory]
"""
import argparse
import functools
import time

import jax
import jax.numpy as jnp

import suscept_jax as sj
from suscept_jax import sampler
from suscept_jax.models import transformer

from benchmarks import common

CHILD = r"""
import functools, sys
import suscept_jax as sj
from suscept_jax.models import transformer
from benchmarks import common
draws, model, components, contexts = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg, loss_fn, params, masks, base, probes = common.setup(model, components=components)
token_loss_fn = functools.partial(transformer.per_token_nll, config=cfg)
res = sj.estimate_per_token_susceptibilities(loss_fn, token_loss_fn, params, masks, base, base[:contexts],
                                             config=sj.SGLDConfig(num_draws=draws), batch_size=16, progress=False)
common.print_peak_memory(draws, res.seconds)
"""


def _run(loss_fn, params, masks, base, config, **kw) -> float:
  names, masks_C = sj.stack_masks(masks, params)
  args = (loss_fn, params, names, masks_C, base, {})
  sampler.run(*args, config=config, batch_size=16, delta_h=None, progress=False, **kw)  # compile
  return sampler.run(*args, config=config, batch_size=16, delta_h=None, progress=False, **kw).seconds


def throughput(model: str, components: str, num_contexts: int, draws: int) -> dict:
  cfg, loss_fn, params, masks, base, _ = common.setup(model, components=components)
  observed = base[:num_contexts]
  token_loss_fn = functools.partial(transformer.per_token_nll, config=cfg)
  config = sj.SGLDConfig(num_draws=draws)
  plain = _run(loss_fn, params, masks, base, config)
  watched = _run(loss_fn, params, masks, base, config, observed=observed, token_loss_fn=token_loss_fn)
  E = len(masks) * config.num_chains
  stacked = jax.tree.map(lambda a: jnp.broadcast_to(a, (E, *a.shape)), params)
  forward = jax.jit(jax.vmap(lambda w: token_loss_fn(w, jnp.asarray(observed))))
  forward(stacked).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(draws + 1):  # one evaluation per block, as the sampler does
    out = forward(stacked)
  out.block_until_ready()
  bare = time.perf_counter() - t0
  tokens = E * (draws + 1) * observed.shape[0] * (observed.shape[1] - 1)
  return {"entries": E, "contexts": num_contexts, "tokens_per_context": observed.shape[1] - 1, "draws": draws,
          "run_s": plain, "run_observing_s": watched, "observation_s": watched - plain, "bare_forward_s": bare,
          "observed_tokens_per_s": tokens / max(watched - plain, 1e-9), "bare_tokens_per_s": tokens / bare,
          "fraction_of_bare": bare / max(watched - plain, 1e-9)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  common.add_size_flags(parser)
  parser.add_argument("--contexts", type=int, default=32)
  parser.add_argument("--draws", type=int, default=40)
  parser.add_argument("--memory_draws", type=common.draw_counts, default=(50, 500), help="the two run lengths")
  parser.add_argument("--skip_memory", action="store_true")
  args = parser.parse_args(argv)
  print(f"device: {jax.devices()[0].device_kind}, model {args.model}")
  r = throughput(args.model, args.components, args.contexts, args.draws)
  print(f"  {r['entries']} entries × {r['contexts']} contexts × {r['tokens_per_context']} tokens, {r['draws']} draws: "
        f"run {r['run_s']:.1f} s, observing {r['run_observing_s']:.1f} s -> observation {r['observation_s']:.1f} s; "
        f"bare forward over the same tokens {r['bare_forward_s']:.1f} s")
  print(f"  per-token throughput {r['observed_tokens_per_s']:.3g} tokens/s against bare {r['bare_tokens_per_s']:.3g}: "
        f"{r['fraction_of_bare']:.2f} of the bare forward pass (target ≥ 0.8)")
  if not args.skip_memory:
    common.memory_growth(
        lambda draws: common.child_measurement(CHILD, draws, args.model, args.components, args.contexts),
        args.memory_draws)
  return r


if __name__ == "__main__":
  main()
