"""The SGLD driver: every chain of every component sampled by compiled programs, sharded over devices.

`run` groups the components by the parameter leaves they free (`restricted.py`: one program per group,
differentiating only those leaves), builds each group's entries (the component-major (component, chain)
pairs, padded to a multiple of the device count), and drives its program (`chunks.py`, compiled and cached
in `programs.py`) chunk by chunk: the next chunk's batches (`streams.py`) are gathered on the host while the
devices run the current one, and the draw statistics are streamed into moments, so memory does not grow with
the number of draws. On a one-device CPU mesh the groups run side by side, one per core.

L_B(w*) of every evaluation batch comes from one pass over the base samples the run's batches hold, shared by
every group (`anchor_table.py`). Faults: a base sample with a non-finite loss at w* is a fault of the data
(raised as `DataFaultError` naming it, before any sampling), not a divergence; a probe sample with a
non-finite loss drops that probe's contribution for that draw and is named in
`SamplerOutput.nonfinite_probe_samples`.

Per-token observation (optional): at every draw each entry also evaluates `token_loss_fn` on a fixed set of
observed contexts and streams the moments of (ℓ_i(w_t) − L_B(w_t), φ_t) per token: what per-token
susceptibilities average, with memory independent of the number of draws.

Shape letters: E entries, C components, K streams (= chains), D probes, L blocks per chunk, S steps per block,
T draws, O observed contexts, J token positions per observed context.
"""
import concurrent.futures
import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from suscept_jax import anchor_table, batched, estimators, function_keys, mixing, parallel, programs, sgld
from suscept_jax.batched import MICROBATCH_AUTO, num_rows
from suscept_jax.chunks import BurninData, Carry, ChunkData, Entries, Plan, flat_masks
from suscept_jax.programs import ProgramMemory
from suscept_jax.progress import MeanOfParts, reporting
from suscept_jax.restricted import FreeView, component_groups, entry_grid, slice_layout
from suscept_jax.streams import Streams, chain_keys, key_data_shape
# Kept importable from here, where they were defined before the split (callers outside the package use them).
from suscept_jax.batched import DataFaultError, loss_and_grad  # noqa: F401
from suscept_jax.streams import stream_seed  # noqa: F401

ENTRY_AXIS = parallel.ENTRY_AXIS


class SamplerOutput(NamedTuple):
  """Raw results over entries (component-major: entry = component·K + chain), host numpy."""

  moments: estimators.Moments  # y axis = probes
  diverged: np.ndarray  # bool [E]
  diverged_at: np.ndarray  # int [E]
  loss_trace: np.ndarray  # [T, E] L_B(w_t)
  phi_trace: np.ndarray  # [T, E] φ_t
  delta_loss_trace: np.ndarray  # [T, E, D] ΔL_t^d (NaN where a probe's contribution was dropped)
  loss_star_trace: np.ndarray  # [T, K] L_B(w*) of each stream's draw batch
  mala: np.ndarray  # [T, E] acceptance (NaN where not measured)
  nonfinite_probe_samples: dict  # probe name -> sorted sample indices whose loss was not finite at some w_t
  realised_delta_h: float  # probe samples placed per sample evaluated over the run (nan without probes)
  seconds: float
  token_moments: estimators.Moments | None = None  # y = ℓ_i − L_B per observed token [E, O, J], if observed
  pair_moments: estimators.CrossMoments | None = None  # query × sample token losses, with pair_split


def run(loss_fn: Callable, params, component_names, masks_C, base, probes: Mapping[str, Any], *,
        config: sgld.SGLDConfig, hyper_C: sgld.Hyper | None = None, restrict_gradients: bool = True,
        progress=True, label: str = "sgld", **options) -> SamplerOutput:
  """Sample every (component, chain) and stream the draw statistics. Inputs are assumed validated.

  hyper_C: per-component ε, nβ, γ (arrays [C]); default: the config's for every component.
  restrict_gradients: one program per group of components freeing the same parameter leaves, each
    differentiating only those (`component_groups`); False: one program over all entries, full gradients.
  progress: True (a bar of config.num_steps), False, or the caller's bar (anything with `update`), which
    advances by config.num_steps in all, however many programs run.
  options: batch_size, delta_h, seed, checkpoint_id, microbatch_size, mesh, draws_per_chunk, base_name,
    observed, token_loss_fn, observed_microbatch, pair_split, traced (see `_run_program`).
  """
  t0 = time.perf_counter()
  groups, calls = zip(*_program_calls(component_names, masks_C, config, hyper_C, restrict_gradients))
  keys = _compile_meanwhile(lambda: [chain_keys(options.get("seed", 0), options.get("checkpoint_id", 0),
                                                call.component_names, config.num_chains) for call in calls])
  try:
    if options.get("traced") is None:  # (once for every group's program, while the keys' program compiles)
      options["traced"] = trace_functions(loss_fn, params, base, options.get("observed"),
                                          options.get("token_loss_fn"))
    return _run_groups(loss_fn, params, groups, calls, base, probes, config=config, progress=progress, label=label,
                       t0=t0, **options)
  finally:
    keys.join()


def _run_groups(loss_fn: Callable, params, groups, calls, base, probes: Mapping[str, Any], *,
                config: sgld.SGLDConfig, progress, label: str, t0: float, **options) -> SamplerOutput:
  """`run` of the component groups' programs, side by side where `concurrent_programs` says."""
  if len(calls) == 1:
    return _run_program(loss_fn, params, *calls[0], base, probes, config=config, progress=progress, label=label,
                        **options)
  with reporting(progress, config.num_steps, label) as bar:
    shared = MeanOfParts(bar, len(calls)) if bar is not None else False  # the run counts num_steps in all
    table = _SharedTable()
    run_group = lambda call: _run_program(loss_fn, params, *call, base, probes, config=config, progress=shared,
                                          label=label, shared_table=table, **options)
    mesh = parallel.as_entry_mesh(options.get("mesh"))
    workers = concurrent_programs(mesh, len(calls))
    if compiles_ahead(mesh, workers):
      # The groups that wait for a worker are compiled meanwhile; on one worker (an accelerator) every group is,
      # and sampling starts when all are compiled (a program would otherwise run beside the autotuner's buffers
      # of another's compilation, in memory that auto-sizing planned for one).
      compiling = [_compile_meanwhile(lambda call=call: _run_program(
          loss_fn, params, *call, base, probes, config=config, progress=False, plan_only=True, **options))
          for call in (calls[workers:] if workers > 1 else calls)]
      if workers == 1:
        for thread in compiling:
          thread.join()
    if workers > 1:
      futures = [_group_pool(workers).submit(run_group, call) for call in calls]
      try:
        outputs = [future.result() for future in futures]
      except BaseException:  # (a data fault, an interrupt): groups not yet started never start
        for future in futures:
          future.cancel()
        raise
    else:
      outputs = [run_group(call) for call in calls]
  return _merge_groups(outputs, list(groups), config.num_chains, time.perf_counter() - t0)


MAX_CONCURRENT_PROGRAMS: int | None = None  # None: one per core on a one-device CPU mesh (else 1); 1: off
_GROUP_POOLS: dict = {}  # workers -> a thread pool kept for the process (reused by every run)
_GROUP_POOLS_LOCK = threading.Lock()


def concurrent_programs(mesh, num_programs: int) -> int:
  """How many component groups' programs run at once, each from its own host thread.

  On CPU a draw program keeps about one core busy (its kernels are small and run one after another) and a
  program runs in the thread that calls it, so groups run side by side, one per core, one group compiling
  while another samples (the demo's per-token run 3.0–3.6× devinterp's speed instead of ≈ 2.8×). Only on a
  mesh of one CPU device (a plain CPU process): on several CPU devices each program already runs on one
  thread per device. Accelerators run one at a time (the programs would share one device's memory, which
  auto-sizing plans for one). `MAX_CONCURRENT_PROGRAMS = 1` turns it off. The threads are one pool kept for
  the process.
  """
  if mesh.devices.size > 1 or not programs.on_cpu(mesh):
    return 1
  limit = (os.cpu_count() or 1) if MAX_CONCURRENT_PROGRAMS is None else MAX_CONCURRENT_PROGRAMS
  return max(1, min(num_programs, limit))


COMPILE_AHEAD: bool | None = None  # None: as `compiles_ahead` decides; True / False: always / never


def compiles_ahead(mesh, workers: int) -> bool:
  """Whether the groups that wait for a worker are compiled meanwhile, each in a thread of its own.

  On CPU only when groups run side by side (a core compiles while the others sample; one worker would
  compile on the core that samples). On accelerators always: compiling is the host's work and sampling the
  device's, and groups ran one after another, each compiling only when its turn came. On the H200 the
  demo's cold dataset-level job was 52 of its 52.3 s compilation of three draw programs in float32
  (BUILD_NOTES, "Thirty-first session"), on a host of 16 cores; compiled side by side the job waits for
  the slowest, not the sum (there every group compiles at once, before any samples: `run`).
  `COMPILE_AHEAD` overrides the choice.
  """
  if COMPILE_AHEAD is not None:
    return COMPILE_AHEAD
  return workers > 1 or not programs.on_cpu(mesh)


COMPILE_AHEAD_THREAD = "suscept_jax-compile-ahead"


def _compile_meanwhile(compile_group: Callable[[], Any]) -> threading.Thread:
  """Run `compile_group` (a group's `_run_program` with plan_only, or the chains' keys) in a thread of its own,
  now.

  The keys' small program compiled in 0.3 s alone but took 3 s when its group asked for it with two draw
  programs compiling, while that group, compiled, waited (the demo's cold dataset-level run); started by `run`
  before anything else it compiles while the first group traces (BUILD_NOTES, "Thirty-eighth session").

  A group that waits for a worker used to be traced and compiled only when one came free, so a cold run ended
  with that compile beside one group sampling, then that group sampling alone on two cores. Compiled from the
  start instead, beside the first groups' compiles, its sampling can begin as soon as a worker is free (the
  demo's dataset-level run, cold: idle cores ≈ 1.8 → 1.2 s of ≈ 23 s; warm runs compile nothing and are
  unchanged: BUILD_NOTES, "Twenty-third session"). The group's own call reuses the compiled program (jit
  compiles a program once even when two threads ask for it at once). A failure here is left to that call,
  which compiles again and raises it where it names its settings. Returns the thread.
  """
  def compile_quietly():
    try:
      compile_group()
    except Exception:  # noqa: BLE001 (reported by the group's own call)
      pass

  # Not a daemon: the interpreter would tear down under a daemon thread still inside XLA; exit waits for it.
  thread = threading.Thread(target=compile_quietly, name=COMPILE_AHEAD_THREAD)
  thread.start()
  return thread


class _SharedTable:
  """The run's `anchor_table.AnchorTable`, built by whichever group asks first (every group reads the same
  streams) and read by all."""

  def __init__(self):
    self._lock = threading.Lock()
    self._table = None

  def get(self, build: Callable[[], anchor_table.AnchorTable]) -> anchor_table.AnchorTable:
    with self._lock:
      if self._table is None:
        self._table = build()
      return self._table


def evaluation_steps(config: sgld.SGLDConfig, blocks) -> np.ndarray:
  """The global SGLD step whose batch each block evaluates its position on (its first)."""
  return config.num_burnin + np.asarray(blocks) * config.steps_between_draws


def _group_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
  with _GROUP_POOLS_LOCK:
    if workers not in _GROUP_POOLS:
      _GROUP_POOLS[workers] = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="suscept_jax-group")
    return _GROUP_POOLS[workers]


def memory_plan(loss_fn: Callable, params, component_names, masks_C, base, probes: Mapping[str, Any], *,
                config: sgld.SGLDConfig, restrict_gradients: bool = True, device_bytes: int | None = None,
                **options) -> list[ProgramMemory]:
  """What `run` with the same arguments would need per device, program by program, without running it:
  each group's draw program is compiled (with microbatch_size="auto": the size auto-sizing picks against
  `device_bytes`, default the devices' own memory). For sizing a run for another machine (e.g. a 4-device mesh
  of emulated CPU devices with device_bytes of a TPU v4 chip)."""
  if options.get("traced") is None:
    options["traced"] = trace_functions(loss_fn, params, base, options.get("observed"), options.get("token_loss_fn"))
  return [_run_program(loss_fn, params, *call, base, probes, config=config, progress=False, plan_only=True,
                       device_bytes=device_bytes, **options)
          for _, call in _program_calls(component_names, masks_C, config, None, restrict_gradients)]


class Traced(NamedTuple):
  """What a run's functions compute and give, traced once per run and shared by its groups' programs. Traced
  per group, the demo's loss and its gradient took ≈ 0.6 s a group with draw programs compiling beside it; once
  per run, the side by side's dataset-level job took 22.5 instead of 23.6 s cold and 13.7 instead of 14.3 s
  compiled (2 cores, three rounds alternated: BUILD_NOTES, "Forty-fifth session")."""

  keyed_loss: function_keys.Keyed  # loss_fn keyed by its forward's trace: the forward programs' (table, preflight)
  gradient_key: str  # the forward's and the gradient's traces: the draw program's (a custom_jvp/vjp rule is not in
  # the forward's)
  token_key: str | None  # token_loss_fn's forward trace, when tokens are observed
  token_shape: tuple | None  # [1, J, ...]: token_loss_fn's output on one observed row
  statistics_dtype: np.dtype  # of φ, ΔL, L_B(w*) and their moments (`batched.statistics_dtype`)


def trace_functions(loss_fn: Callable, params, base, observed=None, token_loss_fn=None) -> Traced:
  """`Traced` of a run's loss (on one row of `base`) and, with `observed`, its token loss (on one observed row)."""
  forward_key, gradient_key = function_keys.traced_keys(loss_fn, params, batched.first_row(base))
  keyed_loss = loss_fn if isinstance(loss_fn, function_keys.Keyed) else function_keys.Keyed(loss_fn, forward_key)
  return Traced(
      keyed_loss=keyed_loss, gradient_key=gradient_key,
      token_key=None if observed is None else batched.keyed_by_trace(token_loss_fn, params, observed).key,
      token_shape=(None if observed is None else
                   jax.eval_shape(token_loss_fn, params, batched.first_row(observed)).shape),
      statistics_dtype=batched.statistics_dtype(loss_fn, params, base))


class _ProgramCall(NamedTuple):
  """The components one compiled program samples (the leading arguments of `_run_program`)."""

  component_names: list
  masks_C: Any  # their stacked masks
  hyper_C: sgld.Hyper  # their ε, nβ, γ
  free: tuple | None  # the leaves the program differentiates (None: all)


def _program_calls(component_names, masks_C, config, hyper_C, restrict: bool) -> list[tuple[list, _ProgramCall]]:
  """(component indices, the call) of each compiled program: one per component group, or one for all."""
  C = len(component_names)
  if hyper_C is None:
    hyper_C = sgld.Hyper(*(np.full(C, v, np.float32) for v in sgld.hyper_of(config)))
  if not restrict:
    return [(list(range(C)), _ProgramCall(component_names=list(component_names), masks_C=masks_C, hyper_C=hyper_C,
                                         free=None))]
  calls = []
  for free, comps in component_groups(masks_C, C):
    calls.append((comps, _ProgramCall(
        component_names=[component_names[c] for c in comps],
        masks_C=jax.tree.map(lambda m: np.asarray(m)[comps], masks_C),
        hyper_C=sgld.Hyper(*(np.broadcast_to(np.asarray(h, np.float32), (C,))[comps] for h in hyper_C)),
        free=None if all(free) else free)))
  return calls


def _merge_groups(outputs, groups, num_chains: int, seconds: float) -> SamplerOutput:
  """One SamplerOutput over all entries, in the original component-major order, from the groups' outputs."""
  order = np.concatenate(groups)
  position = np.empty_like(order)
  position[order] = np.arange(order.size)
  rows_E = (position[:, None] * num_chains + np.arange(num_chains)).ravel()  # entry -> row of the concatenation
  per_entry = lambda axis: lambda *xs: np.take(np.concatenate(xs, axis=axis), rows_E, axis=axis)
  over = lambda field, axis: (None if getattr(outputs[0], field) is None else
                              jax.tree.map(per_entry(axis), *[getattr(o, field) for o in outputs]))
  first = outputs[0]
  return SamplerOutput(
      moments=over("moments", 0), diverged=over("diverged", 0), diverged_at=over("diverged_at", 0),
      loss_trace=over("loss_trace", 1), phi_trace=over("phi_trace", 1), delta_loss_trace=over("delta_loss_trace", 1),
      loss_star_trace=first.loss_star_trace, mala=over("mala", 1),
      nonfinite_probe_samples={d: sorted(set().union(*(o.nonfinite_probe_samples[d] for o in outputs)))
                               for d in first.nonfinite_probe_samples},
      realised_delta_h=first.realised_delta_h, seconds=seconds,
      token_moments=over("token_moments", 0), pair_moments=over("pair_moments", 0))


class _Resident(NamedTuple):
  """What every call of a group's programs reads besides the carry and the chunk: placed on the devices once."""

  entries: Entries  # split over the entry axis
  anchor: Any  # w* (the parameter tree), replicated
  masks_CxF: Any  # `flat_masks` over the group's free leaves, replicated
  observed: Any  # the observed contexts (an empty array without), replicated


class _GroupRun(NamedTuple):
  """One component group's run, as the helpers of `_run_program` read it; fixed once the micro-batch is settled."""

  plan: Plan
  streams: Streams
  resident: _Resident  # on the devices
  stream_E: np.ndarray  # each entry's stream (host), to name a probe's non-finite samples
  num_entries: int  # E: the real entries (the rest, up to a multiple of the device count, is padding)
  put_e: Callable  # host array -> split over the entry axis
  put_r: Callable  # host array -> replicated
  anchor_table: anchor_table.AnchorTable | None  # L_B(w*) of the evaluation batches (None when only planning)
  statistics_dtype: np.dtype  # of φ, ΔL, L_B(w*) and their moments (`batched.statistics_dtype`)

  @property
  def num_blocks(self) -> int:
    """Draws + 1: block 0 evaluates the start."""
    return self.plan.config.num_draws + 1


class _Chunk(NamedTuple):
  """One chunk of blocks: the host's bookkeeping and the program's input."""

  count: int  # blocks run (≤ blocks_per_chunk; the rest is padding)
  steps_LxS: np.ndarray  # the global SGLD step of every step of every block
  probe_idx_LxKxDxM: np.ndarray | None  # the probe sample in every slot of every stream (None without probes)
  data: ChunkData  # on the devices


def _run_program(loss_fn: Callable, params, component_names, masks_C, hyper_C: sgld.Hyper, free: tuple | None,
                 base, probes: Mapping[str, Any], *, config: sgld.SGLDConfig, batch_size: int,
                 delta_h: float | None, seed: int = 0, checkpoint_id: int = 0, microbatch_size: int | None = None,
                 mesh=None, draws_per_chunk: int | None = None, progress=True, label: str = "sgld",
                 base_name: str = "base data", observed=None, token_loss_fn=None,
                 observed_microbatch: int | None = None, pair_split: int | None = None, plan_only: bool = False,
                 device_bytes: int | None = None, shared_table: _SharedTable | None = None,
                 traced: Traced | None = None) -> SamplerOutput | ProgramMemory:
  """`run` for components sharing one compiled program, differentiating the leaves in `free` (None: all).

  observed, token_loss_fn: contexts [O, ...] whose per-token losses are observed at every draw.
  pair_split: with observed, the cross-moments of the token losses of rows [0, split) against the rest.
  plan_only: compile the draw program (choosing the micro-batch if "auto") and return its ProgramMemory.
  shared_table: the run's shared L_B(w*) table (built here when not given).
  traced: the run's `trace_functions` (traced here when not given).
  """
  t0 = time.perf_counter()
  mesh = parallel.as_entry_mesh(mesh)
  probe_names = list(probes)
  K, C = config.num_chains, len(component_names)
  E = C * K
  E_pad = -(-E // mesh.size) * mesh.size
  num_blocks = config.num_draws + 1
  streams = Streams(base, probes, batch_size=batch_size, delta_h=delta_h, seed=seed, checkpoint_id=checkpoint_id,
                    num_chains=K, base_name=base_name)
  traced = traced or trace_functions(loss_fn, params, base, observed, token_loss_fn)
  token_shape, statistics_dtype, keyed_loss = traced.token_shape, traced.statistics_dtype, traced.keyed_loss
  plan = Plan(config=config, batch_size=batch_size, num_streams=streams.num_streams, num_probes=len(probe_names),
              num_slots=streams.num_slots, microbatch_size=microbatch_size,
              blocks_per_chunk=draws_per_chunk or blocks_per_chunk(num_blocks, mesh),
              token_loss_fn=token_loss_fn if observed is not None else None,
              observed_microbatch=programs.observed_microbatch_for(mesh, token_shape, observed_microbatch),
              pair_split=pair_split if observed is not None else None,
              free_leaves=free, entry_grid=entry_grid(C, K, mesh.size, free),
              free_slices=slice_layout(masks_C, params, free),
              traced=(traced.gradient_key, traced.token_key))

  put_e = lambda x: jax.device_put(x, NamedSharding(mesh, P(ENTRY_AXIS)))
  put_r = lambda x: jax.device_put(x, NamedSharding(mesh, P()))
  # The programs are compiled before the values that only their calls read are computed (the chains' keys, the
  # table of L_B(w*)), so those overlap another group's compilation; zeros of the same shapes stand in until then.
  entries = _entries(component_names, hyper_C, K, streams.num_streams, E_pad)
  resident = _Resident(entries=jax.tree.map(put_e, entries), anchor=put_r(params),
                       masks_CxF=put_r(flat_masks(masks_C, params, free)),
                       observed=put_r(observed if observed is not None else np.zeros((0,), np.float32)))
  carry = jax.tree.map(put_e, _initial_carry(params, plan, E_pad, num_rows(observed) if observed is not None else 0,
                                             token_shape, statistics_dtype))
  group_run = _GroupRun(plan=plan, streams=streams, resident=resident, stream_E=entries.stream, num_entries=E,
                        put_e=put_e, put_r=put_r, anchor_table=None, statistics_dtype=statistics_dtype)
  with reporting(progress, config.num_steps, label) as bar:
    first_chunk = _chunk_inputs(group_run, 0)  # (L_B(w*) zeros: shapes only)
    draw_fn = None
    auto = plan.microbatch_size == MICROBATCH_AUTO
    if auto or plan_only:
      program_args = _draw_args(group_run, carry, first_chunk)
      searched = ()
      if auto:  # the largest micro-batch whose program fits the devices
        plan, draw_fn, need, searched = programs.auto_microbatch(loss_fn, plan, mesh, program_args, device_bytes)
        group_run = group_run._replace(plan=plan)
      if plan_only:
        if not auto:
          compiled = programs.compile_ahead(programs.compiled_program("draw", loss_fn, plan, mesh), program_args)
          need = programs.program_bytes(compiled)
        return ProgramMemory(components=list(component_names), entries_per_device=E_pad // mesh.size,
                             microbatch_size=plan.microbatch_size, bytes_per_device=need, searched=searched)
    # Out of device memory in any program below, at its call or when its results are read: a MemoryError.
    with _out_of_memory_named(batch_size=batch_size, microbatch_size=plan.microbatch_size,
                              entries_per_device=E_pad // mesh.size,
                              observed_rows=num_rows(observed) if observed is not None else None):
      if draw_fn is None:  # compiled here, one group tracing at a time; its first call reuses it
        draw_fn = programs.compiled_program("draw", loss_fn, plan, mesh)
        programs.compile_ahead(draw_fn, _draw_args(group_run, carry, first_chunk))
      keys = put_e(_entry_key_data(component_names, K, E_pad, seed, checkpoint_id))
      table = (shared_table or _SharedTable()).get(lambda: _anchor_table(  # a data fault: before any sampling
          keyed_loss, params, streams, evaluation_steps(config, np.arange(num_blocks)),
          rows=batched.check_rows(batch_size, K), micro=microbatch_size))
      group_run = group_run._replace(resident=resident._replace(entries=resident.entries._replace(key_data=keys)),
                                     anchor_table=table)
      first_chunk = first_chunk._replace(data=first_chunk.data._replace(
          loss_star_LxK=put_r(_loss_star(group_run, first_chunk.steps_LxS))))
      if config.num_burnin:
        carry = _burn_in(group_run, programs.compiled_program("burnin", loss_fn, plan, mesh), carry, bar)
      sampled = _sample_blocks(group_run, draw_fn, carry, first_chunk, bar)

  return _output(sampled, E, plan,
                 realised_delta_h=(mixing.realised_fraction(batch_size, delta_h, config.num_draws) if probe_names
                                   else float("nan")),
                 seconds=time.perf_counter() - t0)


@contextlib.contextmanager
def _out_of_memory_named(*, batch_size: int, microbatch_size, entries_per_device: int, observed_rows: int | None):
  """A device's out-of-memory error (RESOURCE_EXHAUSTED) raised as a MemoryError that names the settings to lower."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    observing = (f", observing {observed_rows} rows' token losses (fewer per chunk: contexts_per_chunk or "
                 f"samples_per_chunk)") if observed_rows is not None else ""
    raise MemoryError(f"the sampler's program does not fit in device memory at batch_size={batch_size}, "
                      f"microbatch_size={microbatch_size} ({entries_per_device} entries per device){observing}; pass "
                      f"microbatch_size='auto' (or a smaller one), or more devices") from None


CHUNKS_PER_RUN = 20  # calls of the draw program per run: progress and the next chunk's host work between them
CPU_CHUNKS_PER_RUN = 4


def blocks_per_chunk(num_blocks: int, mesh) -> int:
  """Blocks per call of the draw program: about CHUNKS_PER_RUN calls per run, at most 64 blocks (a chunk's
  batches are gathered at once). On CPU, CPU_CHUNKS_PER_RUN: every call ends in a host sync, which on a one-device
  CPU mesh is where the side-by-side component groups wait on each other. 4 chunks instead of 17 made the demo's
  dataset-level job 10–13 % faster with the same numbers; one program alone gained 8 % from one chunk (BUILD_NOTES,
  fifteenth session)."""
  chunks = CPU_CHUNKS_PER_RUN if programs.on_cpu(mesh) else CHUNKS_PER_RUN
  return max(1, min(num_blocks, math.ceil(num_blocks / chunks), 64))


def _empty_leaves_placed(carry: Carry, put_e) -> Carry:
  """The carry with its zero-size leaves (e.g. χ moments of no probe: an LLC run) placed on the entry axis again.
  A program returns zero-size outputs replicated whatever its out_specs, and a program compiled ahead of time
  (microbatch_size="auto") refuses an argument whose sharding differs from the one it was compiled for."""
  return jax.tree.map(lambda a: put_e(a) if a.size == 0 else a, carry)


def _padded(a_E, num_padded: int) -> np.ndarray:
  """Per-entry values padded to `num_padded` rows (a multiple of the device count) with copies of entry 0, whose
  results are discarded."""
  return np.concatenate([a_E, np.repeat(a_E[:1], num_padded - len(a_E), axis=0)])


def _entries(component_names, hyper_C: sgld.Hyper, num_chains: int, num_streams: int, num_padded: int) -> Entries:
  """The entries (component-major (component, chain) pairs), padded to `num_padded`, with zero key data of the
  keys' shape: enough to compile the programs, whose calls then read `_entry_key_data`."""
  C, K = len(component_names), num_chains
  components_E = np.repeat(np.arange(C, dtype=np.int32), K)
  return Entries(key_data=_padded(np.zeros((C * K, *key_data_shape()), np.uint32), num_padded),
                 component=_padded(components_E, num_padded),
                 stream=_padded(np.tile(np.arange(K, dtype=np.int32) % num_streams, C), num_padded),
                 hyper=sgld.Hyper(*(_padded(np.asarray(h, np.float32)[components_E], num_padded) for h in hyper_C)))


def _entry_key_data(component_names, num_chains: int, num_padded: int, seed: int, checkpoint_id: int) -> np.ndarray:
  """uint32 [num_padded, 2]: each entry's noise key (`chain_keys`), padded as `_entries`."""
  return _padded(chain_keys(seed, checkpoint_id, component_names, num_chains), num_padded)


def _initial_carry(params, plan: Plan, num_entries: int, num_observed: int, token_shape, dtype) -> Carry:
  """Every entry at w* with empty moments in `dtype` (host arrays): per-token moments over the observed rows'
  tokens, and query × sample cross-moments when the plan splits them (`pair_split`)."""
  anchor_F = FreeView(jax.tree.map(np.asarray, params), plan.free_leaves).anchor_F  # the free leaves only (host)
  state = jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (num_entries,) + np.shape(a)),
                       sgld.init(anchor_F, plan.config))
  token_moments = pair_moments = ()
  if plan.token_loss_fn is not None:
    token_moments = estimators.init_moments(num_entries, (num_observed, *token_shape[1:]), dtype)
  if plan.pair_split is not None:
    per_row = int(np.prod(token_shape[1:]))
    pair_moments = estimators.init_cross_moments(num_entries, plan.pair_split * per_row,
                                                 (num_observed - plan.pair_split) * per_row, dtype)
  return Carry(state=state, moments=estimators.init_moments(num_entries, (plan.num_probes,), dtype),
               diverged=np.zeros((num_entries,), bool), diverged_at=np.full((num_entries,), -1, np.int32),
               token_moments=token_moments, pair_moments=pair_moments)


class _Sampled(NamedTuple):
  """What a group's blocks leave for its SamplerOutput."""

  carry: Carry  # the final state and moments, on the devices
  kept: list  # per chunk: (ChunkTraces, L_B(w*) [l, K]) of its recorded blocks, host numpy
  nonfinite_probe: dict  # probe name -> indices of its samples whose loss was not finite at some draw


def _sample_blocks(group_run: _GroupRun, draw_fn, carry: Carry, first_chunk: _Chunk, bar) -> _Sampled:
  """Every block, chunk by chunk, the next chunk's batches gathered while the devices run the current one."""
  E = group_run.num_entries
  probe_names = list(group_run.streams.probes)
  kept = []
  nonfinite_probe = {d: set() for d in probe_names}
  first_block = 0
  pending = first_chunk
  while first_block < group_run.num_blocks:
    chunk = pending
    carry, traces = draw_fn(*_draw_args(group_run, carry, chunk))
    next_block = first_block + chunk.count
    if next_block < group_run.num_blocks:
      pending = _chunk_inputs(group_run, next_block)
    traces = jax.tree.map(lambda a: np.asarray(a)[:chunk.count], traces)
    loss_star_LxK = np.asarray(chunk.data.loss_star_LxK)[:chunk.count]
    if probe_names and traces.probe_nonfinite_LxExD.any():
      for l, e, d in zip(*np.nonzero(traces.probe_nonfinite_LxExD[:, :E])):
        samples = chunk.probe_idx_LxKxDxM[l, group_run.stream_E[e], d]
        nonfinite_probe[probe_names[d]].update(int(i) for i in samples)
    recorded = slice(1 if first_block == 0 else 0, chunk.count)  # block 0 evaluates the start: not a draw
    kept.append((jax.tree.map(lambda a: a[recorded, :E], traces), loss_star_LxK[recorded]))
    first_block = next_block
    if bar is not None:
      bar.update(chunk.count * group_run.plan.config.steps_between_draws)
  return _Sampled(carry=carry, kept=kept, nonfinite_probe=nonfinite_probe)


def _draw_args(group_run: _GroupRun, carry: Carry, chunk: _Chunk) -> tuple:
  """The draw program's arguments for `chunk` from `carry`."""
  resident = group_run.resident
  return (_empty_leaves_placed(carry, group_run.put_e), resident.entries, resident.anchor, resident.masks_CxF,
          chunk.data, resident.observed)


def _chunk_inputs(group_run: _GroupRun, first_block: int) -> _Chunk:
  """The chunk of blocks from `first_block`: every step's base batch, Algorithm 1's probe slots and samples,
  padded to `plan.blocks_per_chunk` blocks (one shape, one program), and L_B(w*) of every evaluation batch."""
  plan, streams = group_run.plan, group_run.streams
  config, L = plan.config, plan.blocks_per_chunk
  S = config.steps_between_draws
  count = min(L, group_run.num_blocks - first_block)
  blocks = np.array(list(range(first_block, first_block + count)) + [first_block] * (L - count))
  steps_LxS = evaluation_steps(config, blocks)[:, None] + np.arange(S)[None, :]
  probe_idx = None
  if plan.num_probes:
    slots = mixing.probe_slots(plan.batch_size, streams.delta_h, np.maximum(blocks - 1, 0))
    slots = slots._replace(weight_TxM=np.where((blocks >= 1)[:, None], slots.weight_TxM, 0.0).astype(np.float32))
    probe_idx = streams.probe_indices(steps_LxS[:, 0], slots)
    probe_data = streams.gather_probes(probe_idx)
  else:
    slots = mixing.ProbeSlots(np.zeros((L, 0), np.int32), np.zeros((L, 0), np.float32))
    probe_data = np.zeros((L, config.num_chains, 0, 0), np.float32)
  data = ChunkData(base_LxSxK=streams.gather_base(steps_LxS), probe_LxKxDxM=probe_data,
                   slot_position_LxM=slots.position_TxM, slot_weight_LxM=slots.weight_TxM,
                   loss_star_LxK=_loss_star(group_run, steps_LxS),
                   first_step=np.int32(evaluation_steps(config, first_block)), first_block=np.int32(first_block),
                   num_blocks=np.int32(count))
  return _Chunk(count=count, steps_LxS=steps_LxS, probe_idx_LxKxDxM=probe_idx, data=jax.tree.map(group_run.put_r, data))


def _anchor_table(loss_fn, params, streams: Streams, eval_steps_B, *, rows: int, micro) -> anchor_table.AnchorTable:
  """The run's table of L_B(w*), after every probe sample it places is checked at w* (both once per run, the
  loss traced for its program key once: probes share the base's sample structure; one keyed already is kept)."""
  keyed = batched.keyed_by_trace(loss_fn, params, streams.base)
  anchor_table.check_probe_samples(keyed, params, streams, eval_steps_B, rows=rows, micro=micro)
  return anchor_table.build(keyed, params, streams, eval_steps_B, rows=rows, micro=micro)


def _loss_star(group_run: _GroupRun, steps_LxS) -> np.ndarray:
  """[L, K]: L_B(w*) of each block's evaluation batch per stream, from the run's table (zeros before
  the table exists: shapes for compiling)."""
  if group_run.anchor_table is None:
    return np.zeros((len(steps_LxS), group_run.streams.num_streams), group_run.statistics_dtype)
  return group_run.anchor_table.batch_means(group_run.streams.base_indices(steps_LxS[:, 0]))


def _burn_in(group_run: _GroupRun, burn, carry: Carry, bar) -> Carry:
  """`config.num_burnin` steps of every entry, up to 64 per call of the burn-in program; nothing is recorded."""
  config, resident = group_run.plan.config, group_run.resident
  per_call = max(1, min(config.num_burnin, 64))
  step = 0
  while step < config.num_burnin:
    count = min(per_call, config.num_burnin - step)
    steps = np.array(list(range(step, step + count)) + [step] * (per_call - count))
    data = BurninData(base_LxK=group_run.streams.gather_base(steps), first_step=np.int32(step),
                      num_steps=np.int32(count))
    state = burn(carry.state, resident.entries, resident.anchor, resident.masks_CxF,
                 jax.tree.map(group_run.put_r, data))
    carry = carry._replace(state=state)
    step += count
    if bar is not None:
      jax.block_until_ready(state)
      bar.update(count)
  return carry


def _output(sampled: _Sampled, num_entries: int, plan: Plan, *, realised_delta_h: float,
            seconds: float) -> SamplerOutput:
  """The host-side SamplerOutput of a finished run: the final moments of the real entries (padding dropped) and
  the recorded blocks' traces, chunks concatenated."""
  carry = sampled.carry
  real = lambda tree: estimators.to_numpy(jax.tree.map(lambda a: np.asarray(a)[:num_entries], tree))
  cat = lambda field: np.concatenate([getattr(traces, field) for traces, _ in sampled.kept])
  return SamplerOutput(
      moments=real(carry.moments), diverged=np.asarray(carry.diverged)[:num_entries],
      diverged_at=np.asarray(carry.diverged_at)[:num_entries], loss_trace=cat("loss_LxE"), phi_trace=cat("phi_LxE"),
      delta_loss_trace=cat("delta_loss_LxExD"), loss_star_trace=np.concatenate([star for _, star in sampled.kept]),
      mala=cat("mala_LxE"), nonfinite_probe_samples={d: sorted(idx) for d, idx in sampled.nonfinite_probe.items()},
      realised_delta_h=realised_delta_h, seconds=seconds,
      token_moments=real(carry.token_moments) if plan.token_loss_fn is not None else None,
      pair_moments=real(carry.pair_moments) if plan.pair_split is not None else None)

