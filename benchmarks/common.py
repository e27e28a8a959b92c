"""Shared set-up for the benchmarks: a model, data and components like the sweep uses."""
import dataclasses
import functools

import numpy as np

from suscept_jax.models import components, config as model_config, transformer


def setup(model: str = "demo", *, num_contexts: int = 4096, seed: int = 0, **overrides):
  """(loss_fn, params, component masks, base [N, K], 8 probes) with random tokens: timing only."""
  cfg = dataclasses.replace(model_config.get_config(model), **overrides)
  rng = np.random.default_rng(seed)
  data = lambda: rng.integers(0, cfg.d_vocab, (num_contexts, cfg.n_ctx), dtype=np.int32)
  params = transformer.init_params(cfg, seed=seed)
  masks = components.component_masks(components.default_components(cfg), params, cfg)
  loss_fn = functools.partial(transformer.context_nll, config=cfg)
  probes = {f"probe{i}": data() for i in range(8)}
  return cfg, loss_fn, params, masks, data(), probes


def timed(fn):
  """(fn(), wall seconds of that one call): compilation included when it is the first."""
  import time
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def seconds_per_call(fn, *args, repeats: int = 5) -> float:
  """Wall seconds of one call of a jitted `fn` (compiled and warmed first), averaged over `repeats` calls."""
  import time

  import jax
  jax.block_until_ready(fn(*args))
  t = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / repeats


def compiled_flops(compiled) -> float:
  """XLA's FLOP count of a compiled program, NaN where the backend gives none (`cost_analysis` is a dict on
  current JAX, a list of dicts on older ones, and may be unavailable): a missing count must not stop a run
  that also measures time."""
  try:
    cost = compiled.cost_analysis()
  except NotImplementedError:
    return float("nan")
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return float(cost.get("flops", float("nan"))) if isinstance(cost, dict) else float("nan")


def peak_matmul_flops(n: int = 2048, repeats: int = 10) -> float:
  """Measured float32 matmul throughput of the default device (FLOP/s): the machine's practical peak."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((n, n), jnp.float32)
  return 2 * n**3 / seconds_per_call(jax.jit(lambda x: x @ x), a, repeats=repeats)
