"""The sampler's compiled programs: cached across calls, compiled with per-platform options, sized to memory.

A sweep calls the sampler once per checkpoint (and component group) with the same shapes: the programs are
cached by what they compute (`function_keys.function_key` of the loss functions, the static `chunks.Plan`,
which holds their `function_keys.traced_key`), not by object identity, so fresh lambdas of the same code do not
recompile, and at most COMPILED_CACHE_SIZE are held. `microbatch_size="auto"` compiles the draw program at
halving micro-batches (skipping those predicted not to fit) and keeps the largest whose XLA memory analysis fits
the devices (`auto_microbatch`).
"""
import collections
import dataclasses
import math
import os
import threading
from typing import NamedTuple

import jax
import numpy as np

from suscept_jax import chunks, compile_options
from suscept_jax.function_keys import function_key
from suscept_jax.chunks import Plan


COMPILED_CACHE_SIZE = 32  # compiled programs kept, least recently used dropped first (a sweep cycles through
# a draw and a burn-in program per component group, so this bounds the groups a sweep can use without recompiling)
_COMPILED: collections.OrderedDict = collections.OrderedDict()
_CACHE_LOCK = threading.RLock()  # component groups may run (and look up their programs) from several threads


def compiled_program(kind: str, loss_fn, plan: Plan, mesh):
  """The compiled program of a kind ("draw", "burnin": jit(shard_map(chunk)) for a plan), cached so a sweep
  compiles once for all checkpoints.

  Keyed by `function_key` of the loss functions (not their identity): fresh lambdas of the same code do not
  recompile, and at most COMPILED_CACHE_SIZE programs are held, so memory stays bounded whatever is passed.
  """
  options = compiler_options(mesh)
  cache_key = (kind, function_key(loss_fn), function_key(plan.token_loss_fn),
               dataclasses.replace(plan, token_loss_fn=None), mesh, tuple(sorted(options.items())))
  with _CACHE_LOCK:
    if cache_key in _COMPILED:
      _COMPILED.move_to_end(cache_key)
      return _COMPILED[cache_key]
    program = chunks.program(kind, loss_fn, plan, mesh, options)
    _COMPILED[cache_key] = program
    while len(_COMPILED) > COMPILED_CACHE_SIZE:
      _COMPILED.popitem(last=False)
    return program


_TRACING_LOCK = threading.Lock()  # one thread traces and lowers a program at a time (`compile_ahead`)


def compile_ahead(program, args):
  """Compile jitted `program` for `args` before its first call, which then reuses the compilation; returns the
  compiled program (for its memory analysis).

  Tracing and lowering are Python and hold the GIL; XLA's compilation releases it. Component groups run side by
  side, one thread each, and used to trace at once, interleaved, so neither started compiling until both were
  traced. Tracing one at a time, the first group compiles while the next traces (BUILD_NOTES, "Twenty-second
  session").
  """
  with _TRACING_LOCK:
    lowered = program.lower(*args)
  return lowered.compile()


def on_cpu(mesh) -> bool:
  return all(d.platform == "cpu" for d in np.asarray(mesh.devices).flat)


def compiler_options(mesh) -> dict:
  """XLA options for the sampler's programs on `mesh`'s platform (`compile_options.for_platform`: LLVM level 1
  and the LLVM IR fusion emitters on CPU, XLA's defaults on accelerators)."""
  return compile_options.for_platform(np.asarray(mesh.devices).flat[0].platform)


CPU_OBSERVED_TOKENS_PER_MICROBATCH = 128


def observed_microbatch_for(mesh, token_shape, requested: int | None) -> int | None:
  """Observed contexts per evaluation at each draw: `requested`, or on CPU by default as many as hold about
  CPU_OBSERVED_TOKENS_PER_MICROBATCH token losses (at least one context). token_shape: the token loss
  function's output shape for one context ([1, J, ...]), None when nothing is observed.

  Evaluating all observed contexts at once makes every entry's [contexts, tokens, vocabulary] logits one
  tensor far larger than the CPU's caches: the demo's per-token run (16 entries × 120 contexts × 31 tokens ×
  512) took 13.5–15.0 s against 7.4–9.9 s four contexts at a time, with the same χ to 1e-6 (BUILD_NOTES,
  "Scale, ninth session"). Accelerators keep None (all at once; `contexts_per_chunk` bounds their memory).
  """
  if requested is not None or token_shape is None or not on_cpu(mesh):
    return requested
  tokens_per_context = max(1, math.prod(token_shape[1:]))
  return max(1, CPU_OBSERVED_TOKENS_PER_MICROBATCH // tokens_per_context)


MEMORY_FRACTION = 0.85  # of a device's memory a program may plan to use (the rest: allocator slack, other buffers)
_AUTO_CHOICES: dict = {}  # (what was compiled, argument shapes) -> AutoChoice less its program: one search per process


def device_memory_bytes(device) -> int:
  """What one device holds: its allocator's limit (GPU, TPU), else the host's RAM shared by the local devices."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(1, len(jax.local_devices()))


def program_bytes(compiled) -> int:
  """Peak memory XLA plans for a compiled program on one device: arguments + outputs + temporaries, less
  what outputs reuse of donated arguments."""
  ma = compiled.memory_analysis()
  return int(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes - ma.alias_size_in_bytes)


def microbatch_candidates(batch_size: int) -> list:
  """None (the whole batch at once), then halving down to 1."""
  sizes, micro = [], batch_size // 2
  while micro >= 1:
    sizes.append(micro)
    micro //= 2
  return [None] + sorted(set(sizes), reverse=True)


SKIP_BEYOND_LIMIT = 1.25  # skip a micro-batch whose predicted need exceeds the limit by this factor


def predicted_bytes(measured: list, rows: int) -> float | None:
  """Bytes a draw program at `rows` per micro-batch is predicted to need, on the line through the two
  smallest micro-batches compiled so far (measured: [(rows, bytes)], largest first); None with fewer than two.

  Activations grow with the micro-batch and everything else (params, chain state, the batches themselves)
  does not, so need ≈ fixed + per_row · rows. A low prediction costs only a compilation that fails; a high one
  by more than SKIP_BEYOND_LIMIT would skip a size that fits. On the tiny transformer's full and one-head
  programs (batch 32), every extrapolation of every pair of neighbouring sizes erred between −92 % and +8 %.
  """
  if len(measured) < 2:
    return None
  (rows_a, bytes_a), (rows_b, bytes_b) = measured[-2:]
  per_row = (bytes_a - bytes_b) / (rows_a - rows_b)
  return bytes_b + per_row * (rows - rows_b)


class AutoChoice(NamedTuple):
  """What `auto_microbatch` chose, and the search that chose it."""

  plan: Plan  # with the chosen micro-batch
  compiled: object  # its compiled draw program; None when the choice was cached
  bytes_per_device: int  # what it needs per device
  searched: tuple  # per size tried, largest first: (rows, bytes compiled or None, bytes predicted or None)


def auto_microbatch(loss_fn, plan: Plan, mesh, args, device_bytes: int | None = None) -> AutoChoice:
  """The largest micro-batch whose draw program fits MEMORY_FRACTION of every device (`AutoChoice`).
  Micro-batching changes only the summation order, not the maths. device_bytes: the devices' memory
  (default: asked of the devices).

  The candidates halve from the whole batch; after two compilations each further size is compiled only if
  its predicted need (`predicted_bytes`) is within SKIP_BEYOND_LIMIT of the limit, and size 1 always is.
  Compiling an accelerator's program takes seconds to minutes, and the paper preset's layer-0 heads on one
  H100 would otherwise compile at 64, 32, 16, 8 and 4 rows to choose 4.
  """
  shapes = tuple(f"{np.shape(a)}{getattr(a, 'dtype', '')}" for a in jax.tree.leaves(args))
  limit = int(MEMORY_FRACTION * (device_bytes or min(device_memory_bytes(d) for d in mesh.devices.flat)))
  key = (function_key(loss_fn), function_key(plan.token_loss_fn), dataclasses.replace(plan, token_loss_fn=None),
         mesh, shapes, limit)
  if key in _AUTO_CHOICES:
    return _AUTO_CHOICES[key]._replace(compiled=None)
  measured, searched = [], []
  for micro in microbatch_candidates(plan.batch_size):
    rows = micro or plan.batch_size
    prediction = predicted_bytes(measured, rows)
    if rows > 1 and prediction is not None and prediction > SKIP_BEYOND_LIMIT * limit:
      searched.append((rows, None, prediction))
      continue
    candidate = dataclasses.replace(plan, microbatch_size=micro)
    compiled = compile_ahead(compiled_program("draw", loss_fn, candidate, mesh), args)
    need = program_bytes(compiled)
    measured.append((rows, need))
    searched.append((rows, need, prediction))
    if need <= limit:
      _AUTO_CHOICES[key] = AutoChoice(candidate, None, need, tuple(searched))
      return _AUTO_CHOICES[key]._replace(compiled=compiled)
  tried = [f"{rows}: {need / 2**30:.3g} GiB" if need is not None else
           f"{rows}: ≈ {prediction / 2**30:.3g} GiB predicted" for rows, need, prediction in searched]
  raise MemoryError(f"microbatch_size='auto': no micro-batch fits {limit / 2**30:.3g} GiB per device "
                    f"({MEMORY_FRACTION:.0%} of the smallest device); needed per micro-batch size: {'; '.join(tried)}. "
                    f"Use more devices (fewer entries per device) or fewer components × chains per run")


class ProgramMemory(NamedTuple):
  """What one compiled draw program (one component group) needs on each device."""

  components: list  # the group's component names
  entries_per_device: int
  microbatch_size: int | None  # None: whole batches
  bytes_per_device: int  # XLA's memory analysis: arguments + outputs + temporaries − aliased
  searched: tuple = ()  # with microbatch_size="auto": `AutoChoice.searched`
