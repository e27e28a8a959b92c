"""Shared set-up for the benchmarks: a model, data and components like the sweep uses."""
import argparse
import dataclasses
import functools
import json
import subprocess
import sys

import numpy as np

from suscept_jax.models import config as model_config, transformer
from suscept_jax.models.components import component_masks, default_components


def add_size_flags(parser, model: str = "demo") -> None:
  """--model and --components, which every timing benchmark takes (the suite runs them at tiny size)."""
  parser.add_argument("--model", default=model)
  parser.add_argument("--components", default="", help="comma-separated specs (default: every head and full)")


def draw_counts(text: str) -> tuple:
  """"50,500" -> (50, 500): the two run lengths a memory-against-draws comparison takes."""
  try:
    counts = tuple(int(n) for n in text.split(","))
  except ValueError:
    counts = ()
  if len(counts) != 2 or min(counts) < 1:
    raise argparse.ArgumentTypeError(f"want two positive draw counts, as in 50,500; got {text!r}")
  return counts


def parse_trials(argv, doc: str, default: int, help: str = "noisy copies of the truth per setting") -> int:
  """--trials of a calibration benchmark (its docstring as the help text), refused below 2 (a spread needs two)."""
  parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--trials", type=int, default=default, help=help)
  trials = parser.parse_args(argv).trials
  if trials < 2:
    parser.error(f"--trials={trials} must be >= 2")
  return trials


def setup(model: str = "demo", *, components: str = "", num_contexts: int = 4096, seed: int = 0, **overrides):
  """(loss_fn, params, component masks, base [N, K], 8 probes) with random tokens: timing only.
  components: comma-separated component specs ("full,l0h1"); empty: every head and the full model."""
  cfg = dataclasses.replace(model_config.get_config(model), **overrides)
  rng = np.random.default_rng(seed)
  data = lambda: rng.integers(0, cfg.d_vocab, (num_contexts, cfg.n_ctx), dtype=np.int32)
  params = transformer.init_params(cfg, seed=seed)
  specs = components.split(",") if components else default_components(cfg)
  masks = component_masks(specs, params, cfg)
  loss_fn = functools.partial(transformer.context_nll, config=cfg)
  probes = {f"probe{i}": data() for i in range(8)}
  return cfg, loss_fn, params, masks, data(), probes


def print_peak_memory(draws: int, seconds: float) -> None:
  """In a measuring child process, after its run: the JSON line `child_measurement` reads (peak RSS, and the
  device's peak bytes in use where the device reports them)."""
  import resource

  import jax
  stats = jax.devices()[0].memory_stats() or {}
  print(json.dumps({"draws": draws, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "device_peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20, "seconds": seconds}))


def child_measurement(code: str, *args) -> dict:
  """The JSON line a measuring child process prints last (`print_peak_memory`): peak RSS needs a fresh process
  per measurement."""
  out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def memory_growth(measure, draws: tuple) -> float:
  """Print the peak memory of `measure(draws)` (a dict with peak_rss_mb, seconds, maybe device_peak_mb) at the
  two draw counts and the growth between them; return the growth (target: within 5 %)."""
  runs = [measure(n) for n in draws]
  for r in runs:
    device = f", device peak {r['device_peak_mb']:.0f} MB" if r.get("device_peak_mb") else ""  # (none on CPU)
    print(f"  {r['draws']:4d} draws: peak RSS {r['peak_rss_mb']:.0f} MB{device}, {r['seconds']:.0f} s")
  growth = runs[1]["peak_rss_mb"] / runs[0]["peak_rss_mb"] - 1
  print(f"  peak memory growth from {draws[0]} to {draws[1]} draws: {100 * growth:+.1f}% (target: within 5%)")
  return growth


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


def _group_program(evaluate, loss_fn, params, masks_C, free, num_chains: int, *, grid: bool, slices: bool):
  """(jitted fn(anchor, positions [E, ...], component_E, rows [K, N, ...]) -> evaluate(told loss, w, rows, anchor)
  for every entry, component_E): one component group's C components × K chains (component-major, chain k reading
  stream k) as the sampler maps them on one device, with w* an argument: on the entry grid where it applies
  (`grid`) and the loss told each entry's free slices (`slices`). params: w* or its shapes, for the layout."""
  import jax

  from suscept_jax import restricted
  C = jax.tree.leaves(masks_C)[0].shape[0]
  layout = restricted.slice_layout(masks_C, params, free) if slices else None
  entry_grid = restricted.entry_grid(C, num_chains, 1, free) if grid else None
  stream_E = np.tile(np.arange(num_chains), C)

  def over(anchor, positions_E, component_E, rows_KxN):
    one = lambda w, c, rows: evaluate(restricted.with_free_slices(loss_fn, layout, anchor, c), w, rows, anchor)  # noqa
    return restricted.over_entries(one, entry_grid, (positions_E, component_E), rows_KxN, stream_E)

  return jax.jit(over), np.repeat(np.arange(C, dtype=np.int32), num_chains)


def group_gradients(loss_fn, params, masks_C, free, num_chains: int, *, grid: bool = True, slices: bool = True):
  """`_group_program` of every entry's (losses, gradient) at its stream's batch, as an SGLD step computes them:
  only the leaves in `free` differentiated (None: all)."""
  from suscept_jax import batched
  return _group_program(lambda told, w, batch, anchor: batched.loss_and_grad(told, w, batch, None, free, anchor),
                        loss_fn, params, masks_C, free, num_chains, grid=grid, slices=slices)


def group_forwards(loss_fn, params, masks_C, free, num_chains: int, *, grid: bool = True, slices: bool = True):
  """`_group_program` of every entry's losses of its stream's rows, as a draw evaluates its probe slots: the
  leaves outside `free` (None: all free) taken from w*, as the sampler's state holds only the free ones."""
  import jax

  from suscept_jax import batched

  def losses(told, w, rows, anchor):
    at = w if free is None else jax.tree.unflatten(jax.tree.structure(anchor), [
        a if f else b for a, b, f in zip(jax.tree.leaves(w), jax.tree.leaves(anchor), free)])
    return batched.batched_losses(told, at, rows, None)

  return _group_program(losses, loss_fn, params, masks_C, free, num_chains, grid=grid, slices=slices)


def group_program_flops(program, params, rows_KxN) -> float:
  """XLA's FLOP count per entry of a `_group_program` (program, component_E) at rows [K, N, ...] (shapes will
  do), compiled for the CPU (`flops_on_cpu`), not run."""
  import jax
  fn, component_E = program
  shape = lambda a, lead=(): jax.ShapeDtypeStruct(lead + tuple(np.shape(a)), a.dtype)  # noqa: E731
  return flops_on_cpu(fn, jax.tree.map(shape, params), jax.tree.map(lambda a: shape(a, (component_E.size,)), params),
                      component_E, shape(rows_KxN)) / component_E.size


def group_gradient_flops(loss_fn, params, masks_C, free, batch_KxN, *, grid: bool = True, slices: bool = True):
  """XLA's FLOP count per entry of `group_gradients`' program (`group_program_flops`)."""
  return group_program_flops(group_gradients(loss_fn, params, masks_C, free, batch_KxN.shape[0], grid=grid,
                                             slices=slices), params, batch_KxN)


def flops_on_cpu(jitted, *args) -> float:
  """XLA's FLOP count of `jitted` at these arguments' shapes, compiled for the CPU (not run) whatever the default
  backend: on an H200, XLA's GPU count of an SGLD step's gradient was 0.23 TFLOP per entry where the CPU's count
  and the matmuls' arithmetic (≈ 3 forwards of 0.37 TFLOP) give 1.14 — its fusions and library calls hide most
  of the backward pass's matmuls from the count."""
  import jax
  try:
    cpu = jax.devices("cpu")[0]
  except RuntimeError:  # (JAX_PLATFORMS without cpu): the default backend's count, low on a GPU
    return compiled_flops(jitted.lower(*args).compile())
  on_cpu = jax.sharding.SingleDeviceSharding(cpu)  # (placed shapes fix the lowering's device; constants follow)
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=on_cpu), args)
  with jax.default_device(cpu):
    return compiled_flops(jitted.lower(*shapes).compile())


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
