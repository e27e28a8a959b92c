"""The SGLD driver: every chain of every component as one compiled program, sharded over devices.

Entries are the flattened (component, chain) pairs, component-major. Their sampler states carry a
leading entry axis that is vmapped inside each device and split across the devices of a mesh with
`jax.shard_map`. A state is flat (position [P], `ravel_pytree`'s order): the update, the noise, the mask
and MALA are one fused pass over P instead of a few per parameter leaf (much less to compile, fewer kernels
to launch); only the loss functions see the parameter tree. Masks are data (one bool row [P] per component,
indexed by the entry's component), so one compilation serves every component of a group
(`component_groups`); so are ε, nβ and γ (`sgld.Hyper`), so a grid of settings is one program too.

Data streams: chain k of *every* component reads stream k, whose base and probe batches come from
schedules seeded by (seed, checkpoint, k). Chain k of C and chain k of "full" therefore share their
batches (eq. 41's pairing keeps its common random numbers), while different chains see different
batches, so the spread across chains carries the batch noise and the error bars hold. (A full-batch
run without probes has no batch noise: its one stream is the whole dataset in order, shared by all.)
Noise keys are fold_in(seed, checkpoint, component-name hash, chain, step): every chain meets the same
batches and noise whatever the device count and however the run is split into chunks. Chunking changes no
bit; the device count can change the rounding, since XLA may round a vmap over 9 entries differently from
one over 36 (bit-identical on the tests' toy models; on a transformer, losses agree to float32's spacing).

A group whose components leave some leaves frozen runs on an entry grid where each device holds whole
components (`entry_grid`): the map over chains is outside the map over components, so whatever depends on
a chain's batch and w* alone (the embedding, every frozen layer below the free ones) is computed once per
chain, not once per component (`over_entries`). A layer-1 head of the paper's model saves 13 % of its
gradient's FLOPs this way, on top of what restricting the gradient saves.

Draws come *after* updates (as in devinterp): the run is a sequence of blocks, each evaluating the
current position and then taking `steps_between_draws` updates; block 0 evaluates the starting point
and is not recorded, block t ≥ 1 is draw t. The evaluation is the forward pass of the block's first
gradient step, so L_B(w_t) costs nothing extra; a draw adds one forward over the D·M probe slots placed
by Algorithm 1 (a probe sample identical to the base sample it replaces contributes exactly 0), and
L_B(w*) of each stream's batch comes from one small program per chunk shared by every group
(`_anchor_losses`). A MALA measurement is one more gradient, taken at the same call site as the steps
(`_block_moves`), so a program holds one copy of the backward pass.

Faults: a non-finite L_B(w*) is a fault of the base data (raised as `DataFaultError` naming the samples),
not a divergence; a probe sample with a non-finite loss drops that probe's contribution for that draw
(counted per entry × probe in the moments) instead of killing the chain.

Per-token observation (optional): at every draw each entry also evaluates `token_loss_fn` on a fixed set
of observed contexts and streams the moments of (ℓ_i(w_t) − L_B(w_t), φ_t) per token: what per-token
susceptibilities average, with memory independent of the number of draws.

Shape letters: E entries (local to a device inside the chunk), K streams (= chains), D probes, M probe
slots per batch (⌈n·δh⌉), n batch rows, L blocks per chunk, S steps per block, T draws, O observed
contexts, J token positions per observed context.
"""
import collections
import concurrent.futures
import dataclasses
import functools
import inspect
import math
import os
import threading
import time
import types
import zlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding, PartitionSpec as P

from suscept_jax import estimators, mixing, parallel, sgld
from suscept_jax.progress import MeanOfParts, reporting

ENTRY_AXIS = parallel.ENTRY_AXIS


class DataFaultError(ValueError):
  """A dataset sample whose loss at w* is not finite: a fault of the data, not of the sampler."""


# ---- losses and gradients over (micro-)batches --------------------------------------------------------

def num_rows(batch) -> int:
  return int(jax.tree.leaves(batch)[0].shape[0])


def padded_rows(tree, start: int, size: int, total: int):
  """Rows [start, start + size) of every leaf (of `total`), padded to `size` by repeating the last row: chunks
  of one shape, so one compilation serves them all (the caller drops the padding)."""
  idx = np.minimum(np.arange(start, start + size), total - 1)
  return jax.tree.map(lambda a: np.asarray(a[idx]), tree)


def _split_micro(batch, micro: int):
  """Pad rows (repeating the first ones) to a multiple of `micro`; reshape to [k, micro, ...]."""
  n = num_rows(batch)
  k = -(-n // micro)
  pad = k * micro - n

  def reshape(a):
    if pad:
      a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad,) + a.shape[1:])], axis=0)
    return a.reshape((k, micro) + a.shape[1:])

  weights = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)]).reshape(k, micro)
  return jax.tree.map(reshape, batch), weights


def batched_losses(loss_fn, params, batch, micro: int | None):
  """Per-sample losses [n, ...] of `batch`, evaluated `micro` rows at a time."""
  n = num_rows(batch)
  if micro is None or micro >= n:
    return loss_fn(params, batch)
  batches, _ = _split_micro(batch, micro)
  losses = jax.lax.map(lambda b: loss_fn(params, b), batches)
  return losses.reshape((-1,) + losses.shape[2:])[:n]


def loss_and_grad(loss_fn, params, batch, micro: int | None, free=None, anchor=None):
  """(per-sample losses [n], ∇ of their mean), accumulated exactly over micro-batches.

  free (a bool per parameter leaf, or None = all): only those leaves are differentiated; the others are
  taken from `anchor` (w*), where a chain that never frees them keeps them, and get a zero gradient.
  """
  if free is None or all(free):
    return _loss_and_grad(loss_fn, params, batch, micro)
  anchor_leaves, treedef = jax.tree.flatten(anchor)

  def on_free_leaves(differentiated, b):
    it = iter(differentiated)
    return loss_fn(treedef.unflatten([next(it) if f else a for a, f in zip(anchor_leaves, free)]), b)

  losses, grad_free = _loss_and_grad(on_free_leaves, [w for w, f in zip(jax.tree.leaves(params), free) if f],
                                     batch, micro)
  it = iter(grad_free)
  return losses, treedef.unflatten([next(it) if f else jnp.zeros_like(a) for a, f in zip(anchor_leaves, free)])


def _loss_and_grad(loss_fn, params, batch, micro: int | None):
  n = num_rows(batch)
  if micro is None or micro >= n:
    def mean_loss(p):
      losses = loss_fn(p, batch)
      return losses.mean(), losses
    (_, losses), grad = jax.value_and_grad(mean_loss, has_aux=True)(params)
    return losses, grad
  batches, weights = _split_micro(batch, micro)

  def body(grad_sum, xs):
    micro_batch, w = xs

    def weighted_loss(p):
      losses = loss_fn(p, micro_batch)
      return jnp.dot(losses, w) / n, losses

    (_, losses), grad = jax.value_and_grad(weighted_loss, has_aux=True)(params)
    return jax.tree.map(jnp.add, grad_sum, grad), losses

  grad, losses = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), (batches, weights))
  return losses.reshape(-1)[:n], grad


# ---- cost that follows what is free ---------------------------------------------------------------------

def free_leaves(masks_C, components) -> tuple[bool, ...]:
  """Per parameter leaf: whether any of `components` (indices into the stacked masks) frees a coordinate."""
  idx = np.asarray(list(components), np.int64)
  return tuple(bool(np.any(np.asarray(m)[idx])) for m in jax.tree.leaves(masks_C))


def component_groups(masks_C, num_components: int) -> list[tuple[tuple[bool, ...], list[int]]]:
  """Components grouped by the set of leaves they free, in order of first appearance: one program each.

  A group's program differentiates only its free leaves and holds the rest at w* as constants shared by all
  its entries, so XLA drops the weight gradients of frozen leaves and the backward pass below the lowest free
  layer, and runs the frozen layers' matmuls as one batch over entries (e.g. a layer-1 head: no backward into
  layer 0, no unembedding weight gradient). The numbers do not change: a frozen coordinate never moves.
  """
  groups: dict = {}
  for c in range(num_components):
    groups.setdefault(free_leaves(masks_C, [c]), []).append(c)
  return list(groups.items())


def pinned(position, anchor, free):
  """`position` with the leaves outside `free` replaced by w* (equal in value; constants to XLA)."""
  if free is None:
    return position
  leaves, treedef = jax.tree.flatten(position)
  return treedef.unflatten([w if f else a for w, a, f in zip(leaves, jax.tree.leaves(anchor), free)])


def _flatten_rows(tree, lead: int):
  """Merge the first `lead` axes of every leaf into one row axis."""
  return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[lead:]), tree)


@functools.partial(jax.jit, static_argnums=(0, 3))
def losses_at(loss_fn, params, batch, micro=None):
  """Per-sample (or per-token) losses of `batch` at `params`, compiled once per (loss_fn, shapes)."""
  return batched_losses(loss_fn, params, batch, micro)


def _anchor_losses(loss_fn, micro, anchor, base_LxSxK):
  """L_B(w*) [L, K] of every block's evaluation batch (its first step's) of every stream, one batch (or
  micro-batch) at a time.

  Outside the draw programs: it does not depend on the component group, so it is compiled once per run
  rather than once per group, and each group's program holds one forward copy fewer."""
  base_LxKxn = jax.tree.map(lambda a: a[:, 0], base_LxSxK)
  L, K, n = jax.tree.leaves(base_LxKxn)[0].shape[:3]
  micro = micro if isinstance(micro, int) else n
  losses = jax.lax.map(lambda b: batched_losses(loss_fn, anchor, b, micro), _flatten_rows(base_LxKxn, 2))
  return losses.reshape(L, K, n).mean(-1)


def nonfinite_samples(loss_fn, params, data, indices, microbatch_size=None, rows: int | None = None) -> list[int]:
  """The sample indices among `indices` whose loss at `params` is not finite (host-side check). rows: evaluate
  exactly this many (repeating the first index), so checks of several datasets share one compiled program."""
  indices = np.unique(np.asarray(indices, np.int64))
  if indices.size == 0:
    return []
  microbatch_size = None if microbatch_size == MICROBATCH_AUTO else microbatch_size
  evaluated = np.concatenate([indices, np.full(max(0, (rows or 0) - indices.size), indices[0])])
  batch = jax.tree.map(lambda a: np.asarray(a[evaluated]), data)
  losses = np.asarray(losses_at(loss_fn, params, batch, microbatch_size))[:indices.size]
  return [int(i) for i in indices[~np.isfinite(losses)]]


# ---- the compiled chunk programs ------------------------------------------------------------------------

class Entries(NamedTuple):
  """Per-entry constants, leading axis E (split across devices)."""

  key_data: Any  # uint32 [E, 2] noise key of the entry: fold_in(seed, checkpoint, component, chain)
  component: Any  # int32 [E] index into the stacked masks
  stream: Any  # int32 [E] the data stream the entry reads (its chain index)
  hyper: sgld.Hyper  # ε, nβ, γ, each float32 [E]


class Carry(NamedTuple):
  """Everything that persists across chunks, leading axis E."""

  state: sgld.SGLDState
  moments: estimators.Moments
  diverged: Any  # bool [E]
  diverged_at: Any  # int32 [E] first draw at which the chain diverged (-1: never)
  token_moments: Any  # estimators.Moments with y [E, O, J] (per-token observation), or () without
  pair_moments: Any  # estimators.CrossMoments of query × sample token losses (pair_split), or () without


class ChunkData(NamedTuple):
  """One chunk's batches and schedule (replicated on every device)."""

  base_LxSxK: Any  # pytree, leaves [L, S, K, n, ...]: every step's batch of every stream
  probe_LxKxDxM: Any  # pytree, leaves [L, K, D, M, ...]: probe samples in Algorithm 1's slots
  slot_position_LxM: Any  # int32 [L, M] batch position of each slot
  slot_weight_LxM: Any  # float32 [L, M] 1 = a placed probe sample, 0 = padding (and block 0)
  loss_star_LxK: Any  # float32 [L, K] L_B(w*) of each block's evaluation batch, per stream (`anchor_losses`)
  first_step: Any  # int32 [] global SGLD step of the chunk's first block
  first_block: Any  # int32 [] index of the chunk's first block (block b ≥ 1 is draw b − 1)
  num_blocks: Any  # int32 [] blocks to run (≤ L; the rest is padding)


class ChunkTraces(NamedTuple):
  """Per-block values of a chunk (block axis L first)."""

  loss_LxE: Any  # L_B(w) at the evaluated position
  phi_LxE: Any  # φ = L_B(w) − L_B(w*)
  delta_loss_LxExD: Any  # ΔL per probe (NaN where dropped)
  mala_LxE: Any  # MALA acceptance of the block's first move (NaN where not measured)
  probe_nonfinite_LxExD: Any  # bool: some placed probe sample had a non-finite loss


@dataclasses.dataclass(frozen=True)
class Plan:
  """Static description of what a compiled chunk does (hashable: a compilation cache key)."""

  config: sgld.SGLDConfig
  batch_size: int
  num_streams: int  # K
  num_probes: int  # D
  num_slots: int  # M (0 without probes)
  microbatch_size: int | None
  blocks_per_chunk: int
  token_loss_fn: Callable | None = None  # (params, contexts [O', ...]) -> per-token losses [O', J]
  observed_microbatch: int | None = None  # observed contexts evaluated this many at a time
  pair_split: int | None = None  # observed rows [0, split) are queries, the rest samples: stream their covariance
  free_leaves: tuple | None = None  # leaves differentiated (a bool per leaf; None = all): see component_groups
  entry_grid: tuple[int, int] | None = None  # (components, chains) per device when each holds whole components


def _specs(tree_type, spec):
  return tree_type(*([spec] * len(tree_type._fields)))


_E, _REP, _LE = P(ENTRY_AXIS), P(), P(None, ENTRY_AXIS)
ENTRIES_SPEC = Entries(_E, _E, _E, sgld.Hyper(_E, _E, _E))
CHUNK_DATA_SPEC = _specs(ChunkData, _REP)
TRACES_SPEC = _specs(ChunkTraces, _LE)


def flat_masks(masks_C, params) -> np.ndarray:
  """The stacked component masks as one bool row per component over the flattened parameters, [C, P] (the
  order of `ravel_pytree(params)`): the sampler's state is flat, so every update is one fused pass."""
  rows = [np.broadcast_to(np.asarray(m, bool), (np.shape(m)[0],) + np.shape(p)).reshape(np.shape(m)[0], -1)
          for m, p in zip(jax.tree.leaves(masks_C), jax.tree.leaves(params))]
  return np.concatenate(rows, axis=1)


def _entry_step_fn(loss_fn, plan: Plan, masks_CxP, anchor):
  """step(state, key, component, hyper, batch, global_step) -> (new state, losses [n], ∇L [P]) for one entry
  (vmapped by the callers). The state is flat (position [P]); the loss sees the parameter tree."""
  config = plan.config
  anchor_P, unravel = ravel_pytree(anchor)

  def step(state, key, comp, hyper, batch, global_step):
    losses, grad = loss_and_grad(loss_fn, unravel(state.position), batch, plan.microbatch_size, plan.free_leaves,
                                 anchor)
    grad_P = sgld.ravel(grad)
    noise_P = sgld.standard_normal_like(jax.random.fold_in(key, global_step), state.position)
    return sgld.step(state, grad_P, noise_P, anchor_P, masks_CxP[comp], config, hyper), losses, grad_P

  return step


def _measures_mala(config: sgld.SGLDConfig) -> bool:
  return bool(config.mala_every) and config.noise_level > 0


def _block_moves(loss_fn, plan: Plan, masks_CxP, anchor, entries: Entries, state, batch_of, global_step, measure):
  """A block's `steps_between_draws` SGLD updates of the local entries, and (when `measure`) the MALA
  acceptance of its first move.

  batch_of(i): every stream's batch [K, n, ...] of the block's step i. Returns (new state, per-sample losses
  [E, n] of step 0's batch at the block's starting point, acceptance [E], NaN where not measured). Every
  gradient is taken at one call site inside one loop, so the program holds one copy of the backward pass:
  with `measure`, iteration 1 re-evaluates step 0's batch at the moved-to point w' instead of stepping
  (log α = half(w, w') − half(w', w), `sgld.mala_half`; only a scalar per entry is carried), then the steps
  go on.
  """
  config = plan.config
  step = _entry_step_fn(loss_fn, plan, masks_CxP, anchor)
  anchor_P = sgld.ravel(anchor)
  mala = _measures_mala(config)

  def entry_iteration(state, start, key, comp, hyper, batch, step_index, is_eval, half_wanted):
    new_state, losses, grad = step(state, key, comp, hyper, batch, step_index)
    if not mala:
      return new_state, losses, jnp.zeros(())

    def half():  # at w: towards w'; at w' (is_eval): back towards w. G is the one after the first step.
      choose = lambda old, new: jax.tree.map(lambda a, b: jnp.where(is_eval, a, b), old, new)
      precond = sgld.preconditioner_of(choose(state.square_avg, new_state.square_avg), config)
      return sgld.mala_half(state.position, choose(start, new_state.position), losses.mean(), grad, anchor_P,
                            masks_CxP[comp], precond, config, hyper)

    return new_state, losses, jax.lax.cond(half_wanted, half, lambda: jnp.zeros(()))

  def iterate(st, i, is_eval, half_wanted):
    one = lambda s, start, key_data, comp, hyper, batch: entry_iteration(
        s, start, jax.random.wrap_key_data(key_data), comp, hyper, batch, global_step + i, is_eval, half_wanted)
    return over_entries(one, plan.entry_grid, (st, state.position, entries.key_data, entries.component,
                                                entries.hyper), batch_of(i), entries.stream)

  S = config.steps_between_draws
  if S == 1 and not mala:  # one plain step: no loop
    new_state, losses_En, _ = iterate(state, 0, False, False)
    return new_state, losses_En, jnp.full(losses_En.shape[:1], jnp.nan)

  def body(j, carry):
    st, losses0_En, log_ratio_E = carry
    is_eval = measure & (j == 1)
    i = j - (measure & (j >= 1)).astype(jnp.int32)  # the step whose batch this iteration reads
    new_st, losses_En, half_E = iterate(st, i, is_eval, measure & (j <= 1))
    st = jax.tree.map(lambda old, new: jnp.where(is_eval, old, new), st, new_st)
    return (st, jnp.where(j == 0, losses_En, losses0_En).astype(losses0_En.dtype),
            log_ratio_E + jnp.where(j == 0, half_E, -half_E))

  E, n = entries.component.shape[0], plan.batch_size
  measure = jnp.asarray(measure if mala else False)
  new_state, losses_En, log_ratio_E = jax.lax.fori_loop(
      0, S + measure.astype(jnp.int32), body, (state, jnp.zeros((E, n)), jnp.zeros((E,))))
  return new_state, losses_En, jnp.where(measure, sgld.acceptance_of(log_ratio_E), jnp.nan)


def _stream_rows(tree_K, stream_E):
  """Each entry's rows of its own stream: leaves [K, ...] -> [E, ...]."""
  return jax.tree.map(lambda a: a[stream_E], tree_K)


def entry_grid(num_components: int, num_chains: int, num_devices: int, free) -> tuple[int, int] | None:
  """(components, chains) of each device's entries for `over_entries`, or None for the flat layout.

  A grid needs whole components on every device (entries are component-major) and pays only when there is
  work to share: at least two components per device, and frozen leaves (free not None and not all True), so
  that some of the forward pass depends on the batch and w* alone. A group freeing everything stays flat.
  """
  C_local, rest = divmod(num_components, num_devices)
  if rest or C_local < 2 or free is None or all(free):
    return None
  return C_local, num_chains


def over_entries(fn, grid, entry_args: tuple, stream_data, stream_E):
  """fn(*entry_args, data) for every local entry, vmapped: entry_args' leaves lead with the entry axis E,
  stream_data's with the stream axis K.

  grid None: each entry is handed its own stream's rows (stream_E). grid (C, K): the local entries are C
  whole components of K chains, component-major, chain k reading stream k (mod the stream count). Then the
  map over chains is the outer one and the map over components maps only the entry arguments, so whatever
  depends on the stream's data and w* alone (the embedding, every frozen layer below a group's free ones) is
  computed once per stream instead of once per entry. Same arithmetic per entry; XLA may round differently.
  """
  if grid is None:
    return jax.vmap(fn)(*entry_args, _stream_rows(stream_data, stream_E))
  C, K = grid
  E = jax.tree.leaves(entry_args)[0].shape[0]
  if E != C * K:
    raise ValueError(f"over_entries: grid {grid} holds {C * K} entries, but the entry arguments have {E}")
  to_KxC = lambda a: jnp.swapaxes(a.reshape((C, K) + a.shape[1:]), 0, 1)
  from_KxC = lambda a: jnp.swapaxes(a, 0, 1).reshape((C * K,) + a.shape[2:])
  per_chain_K = jax.tree.map(lambda a: a[np.arange(K) % a.shape[0]], stream_data)
  over_components = lambda args_C, data: jax.vmap(lambda *args: fn(*args, data))(*args_C)
  return jax.tree.map(from_KxC, jax.vmap(over_components)(jax.tree.map(to_KxC, entry_args), per_chain_K))


def _draw_chunk(loss_fn, plan: Plan, carry: Carry, entries: Entries, anchor, masks_CxP, data: ChunkData, observed):
  """Run `data.num_blocks` blocks (evaluate, then steps_between_draws updates) on the local entries."""
  config = plan.config
  _, unravel = ravel_pytree(anchor)
  params_at = lambda w_P: pinned(unravel(w_P), anchor, plan.free_leaves)  # the tree the loss functions see
  n, K, D, M = plan.batch_size, plan.num_streams, plan.num_probes, plan.num_slots
  E = entries.component.shape[0]
  L = plan.blocks_per_chunk

  def probe_deltas(position_E, batch_K, losses_En, l):
    """(ΔL [E, D] with NaN where dropped, non-finite flags [E, D]) for block l."""
    slot_M, weight_M = data.slot_position_LxM[l], data.slot_weight_LxM[l]
    probes_K = jax.tree.map(lambda a: a[l], data.probe_LxKxDxM)  # [K, D, M, ...]
    probe_losses_ExDxM = over_entries(
        lambda w, p: batched_losses(loss_fn, params_at(w), _flatten_rows(p, 2), plan.microbatch_size).reshape(D, M),
        plan.entry_grid, (position_E,), probes_K, entries.stream)
    probes_E = _stream_rows(probes_K, entries.stream)  # [E, D, M, ...]
    base_at_slots_E = jax.tree.map(lambda a: a[:, slot_M][entries.stream], batch_K)  # [E, M, ...]
    # A probe sample identical to the base sample it replaces changes nothing: exact here, not left to
    # rounding (the two losses come from differently shaped forward passes).
    same_ExDxM = functools.reduce(jnp.logical_and, [
        jnp.all((p == b[:, None]).reshape(p.shape[:3] + (-1,)), axis=-1)
        for p, b in zip(jax.tree.leaves(probes_E), jax.tree.leaves(base_at_slots_E))])
    placed_M = weight_M > 0
    nonfinite_ExD = jnp.any(placed_M & ~jnp.isfinite(probe_losses_ExDxM), axis=-1)
    diff_ExDxM = jnp.where(placed_M & ~same_ExDxM, probe_losses_ExDxM - losses_En[:, None, slot_M], 0.0)
    delta_ExD = jnp.where(nonfinite_ExD, jnp.nan, diff_ExDxM.sum(axis=-1) / n)
    return delta_ExD, nonfinite_ExD

  def block_body(l, loop_carry):
    c, traces = loop_carry
    S = config.steps_between_draws
    block = data.first_block + l
    draw = block - 1
    global_step = data.first_step + l * S
    batch_of = lambda i: jax.tree.map(lambda a: a[l, i], data.base_LxSxK)  # [K, n, ...]
    loss_star_E = data.loss_star_LxK[l][entries.stream]
    measure = (draw >= 0) & (jnp.maximum(draw, 0) % max(config.mala_every, 1) == 0)
    new_state, losses_En, acceptance_E = _block_moves(loss_fn, plan, masks_CxP, anchor, entries, c.state, batch_of,
                                                      global_step, measure)
    loss_E = losses_En.mean(axis=-1)
    phi_E = loss_E - loss_star_E
    if D:
      delta_ExD, nonfinite_ExD = probe_deltas(c.state.position, batch_of(0), losses_En, l)
    else:
      delta_ExD, nonfinite_ExD = jnp.zeros((E, 0)), jnp.zeros((E, 0), bool)
    star_ok_E = jnp.isfinite(loss_star_E)  # otherwise a data fault, reported by the host
    bad_E = star_ok_E & (~jnp.isfinite(phi_E) | (phi_E > config.max_loss_increase))
    diverged_at = jnp.where(bad_E & ~c.diverged, jnp.maximum(draw, 0), c.diverged_at)
    diverged = c.diverged | bad_E
    active_E = (draw >= 0) & ~diverged & star_ok_E
    moments = estimators.update_moments(c.moments, phi_E, delta_ExD, active_E, ~nonfinite_ExD)
    token_moments = c.token_moments
    if plan.token_loss_fn is not None:  # ℓ_i(w_t) − L_B(w_t) for every observed token, at the draw's position
      tokens_ExOxJ = jax.vmap(lambda w: batched_losses(plan.token_loss_fn, params_at(w), observed,
                                                       plan.observed_microbatch))(c.state.position)
      token_moments = estimators.update_moments(token_moments, phi_E, tokens_ExOxJ - loss_E[:, None, None], active_E,
                                                jnp.isfinite(tokens_ExOxJ))
    pair_moments = c.pair_moments
    if plan.pair_split is not None:  # raw token losses of queries against samples (Bayesian influence)
      split = plan.pair_split
      pair_moments = estimators.update_cross_moments(pair_moments, tokens_ExOxJ[:, :split].reshape(E, -1),
                                                     tokens_ExOxJ[:, split:].reshape(E, -1), active_E)

    values = ChunkTraces(loss_E, phi_E, delta_ExD, acceptance_E, nonfinite_ExD)
    traces = jax.tree.map(lambda buf, v: buf.at[l].set(v), traces, values)
    return Carry(new_state, moments, diverged, diverged_at, token_moments, pair_moments), traces

  traces = ChunkTraces(jnp.zeros((L, E)), jnp.zeros((L, E)), jnp.zeros((L, E, D)), jnp.full((L, E), jnp.nan),
                       jnp.zeros((L, E, D), bool))
  return jax.lax.fori_loop(0, data.num_blocks, block_body, (carry, traces))


def _burnin_chunk(loss_fn, plan: Plan, state, entries: Entries, anchor, masks_CxP, base_LxK, first_step, n_steps):
  step = _entry_step_fn(loss_fn, plan, masks_CxP, anchor)

  def body(i, st):
    one = lambda s, key_data, comp, hyper, batch: step(s, jax.random.wrap_key_data(key_data), comp, hyper, batch,
                                                       first_step + i)[0]
    return over_entries(one, plan.entry_grid, (st, entries.key_data, entries.component, entries.hyper),
                         jax.tree.map(lambda a: a[i], base_LxK), entries.stream)

  return jax.lax.fori_loop(0, n_steps, body, state)


COMPILED_CACHE_SIZE = 32  # compiled programs kept, least recently used dropped first (a sweep cycles through
# a draw and a burn-in program per component group, so this bounds the groups a sweep can use without recompiling)
_COMPILED: collections.OrderedDict = collections.OrderedDict()
_CACHE_LOCK = threading.RLock()  # component groups may run (and look up their programs) from several threads


def function_key(fn, _depth: int = 0):
  """A hashable key, equal for functions that compute the same thing: the same code, defaults and closed-over
  values (functions among them keyed the same way), and bound object. So `lambda p, b: loss(p, b, cfg)` written
  anew for every call keys the same; a function closing over something unhashable (an array, a list) keys by
  identity."""
  if _depth > 4:
    return fn
  if isinstance(fn, functools.partial):
    key = ("partial", function_key(fn.func, _depth + 1), fn.args, tuple(sorted(fn.keywords.items())))
  elif inspect.ismethod(fn):
    key = ("method", function_key(fn.__func__, _depth + 1), fn.__self__)
  elif isinstance(fn, types.FunctionType):
    cells = tuple(function_key(c, _depth + 1) if callable(c) else c
                  for c in (_cell_value(cell) for cell in fn.__closure__ or ()))
    key = ("function", fn.__code__, fn.__defaults__, tuple(sorted((fn.__kwdefaults__ or {}).items())), cells)
  else:
    return fn  # other callables: their own equality
  try:
    hash(key)
  except TypeError:
    return fn
  return key


def _cell_value(cell):
  try:
    return cell.cell_contents
  except ValueError:  # a cell not yet assigned
    return cell


def _compiled(kind: str, loss_fn, plan: Plan, mesh):
  """The compiled program of a kind ("draw", "burnin": jit(shard_map(chunk)) for a plan; "anchor": the
  evaluation batches' L_B(w*), which depends only on the loss function and micro-batch), cached so a sweep
  compiles once for all checkpoints.

  Keyed by `function_key` of the loss functions (not their identity): fresh lambdas of the same code do not
  recompile, and at most COMPILED_CACHE_SIZE programs are held, so memory stays bounded whatever is passed.
  """
  options = tuple(sorted(compiler_options(mesh).items()))
  if kind == "anchor":
    cache_key = (kind, function_key(loss_fn), plan.microbatch_size, options)
  else:
    cache_key = (kind, function_key(loss_fn), function_key(plan.token_loss_fn),
                 dataclasses.replace(plan, token_loss_fn=None), mesh, options)
  with _CACHE_LOCK:
    if cache_key in _COMPILED:
      _COMPILED.move_to_end(cache_key)
      return _COMPILED[cache_key]
    program = _new_program(kind, loss_fn, plan, mesh)
    _COMPILED[cache_key] = program
    while len(_COMPILED) > COMPILED_CACHE_SIZE:
      _COMPILED.popitem(last=False)
    return program


def _on_cpu(mesh) -> bool:
  return all(d.platform == "cpu" for d in np.asarray(mesh.devices).flat)


CPU_BACKEND_OPTIMIZATION_LEVEL = 1  # LLVM's level for programs on CPU; None: XLA's default (2)


def compiler_options(mesh) -> dict:
  """XLA options for the sampler's programs on `mesh`'s platform.

  On CPU, compilation is the larger half of a small job (the demo's dataset-level run: ≈ 10 of 24 s, three
  programs of 250–340 fused kernels, each compiled by LLVM). LLVM at level 1 instead of 2 compiles them ≈ 25 %
  faster; the kernels' speed did not move beyond the machine's noise (BUILD_NOTES, "Scale, ninth session").
  Accelerators keep their defaults.
  """
  if _on_cpu(mesh) and CPU_BACKEND_OPTIMIZATION_LEVEL is not None:
    return {"xla_backend_optimization_level": CPU_BACKEND_OPTIMIZATION_LEVEL}
  return {}


def _new_program(kind: str, loss_fn, plan: Plan, mesh):
  options = compiler_options(mesh)
  if kind == "anchor":
    return jax.jit(functools.partial(_anchor_losses, loss_fn, plan.microbatch_size), compiler_options=options)
  if kind == "draw":
    fn = functools.partial(_draw_chunk, loss_fn, plan)
    in_specs, out_specs = (_E, ENTRIES_SPEC, _REP, _REP, CHUNK_DATA_SPEC, _REP), (_E, TRACES_SPEC)
  else:
    fn = functools.partial(_burnin_chunk, loss_fn, plan)
    in_specs, out_specs = (_E, ENTRIES_SPEC, _REP, _REP, _REP, _REP, _REP), _E
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False),
                 donate_argnums=(0,), compiler_options=options)


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
  if requested is not None or token_shape is None or not _on_cpu(mesh):
    return requested
  tokens_per_context = max(1, math.prod(token_shape[1:]))
  return max(1, CPU_OBSERVED_TOKENS_PER_MICROBATCH // tokens_per_context)


MICROBATCH_AUTO = "auto"
MEMORY_FRACTION = 0.85  # of a device's memory a program may plan to use (the rest: allocator slack, other buffers)
_AUTO_CHOICES: dict = {}  # (what was compiled, argument shapes) -> chosen micro-batch: search once per process


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


def _auto_microbatch(loss_fn, plan: Plan, mesh, args, device_bytes: int | None = None):
  """(plan with the largest micro-batch whose draw program fits MEMORY_FRACTION of every device, its compiled
  program or None when the choice was cached, the bytes it needs per device). Micro-batching changes only the
  summation order, not the maths. device_bytes: the devices' memory (default: asked of the devices)."""
  shapes = tuple(f"{np.shape(a)}{getattr(a, 'dtype', '')}" for a in jax.tree.leaves(args))
  limit = int(MEMORY_FRACTION * (device_bytes or min(device_memory_bytes(d) for d in mesh.devices.flat)))
  key = (function_key(loss_fn), function_key(plan.token_loss_fn), dataclasses.replace(plan, token_loss_fn=None),
         mesh, shapes, limit)
  if key in _AUTO_CHOICES:
    micro, need = _AUTO_CHOICES[key]
    return dataclasses.replace(plan, microbatch_size=micro), None, need
  tried = []
  for micro in microbatch_candidates(plan.batch_size):
    candidate = dataclasses.replace(plan, microbatch_size=micro)
    compiled = _compiled("draw", loss_fn, candidate, mesh).lower(*args).compile()
    need = program_bytes(compiled)
    tried.append(f"{micro or plan.batch_size}: {need / 2**30:.3g} GiB")
    if need <= limit:
      _AUTO_CHOICES[key] = (micro, need)
      return candidate, compiled, need
  raise MemoryError(f"microbatch_size='auto': no micro-batch fits {limit / 2**30:.3g} GiB per device "
                    f"({MEMORY_FRACTION:.0%} of the smallest device); needed per micro-batch size: {'; '.join(tried)}. "
                    f"Use more devices (fewer entries per device) or fewer components × chains per run")


class ProgramMemory(NamedTuple):
  """What one compiled draw program (one component group) needs on each device."""

  components: list  # the group's component names
  entries_per_device: int
  microbatch_size: int | None  # None: whole batches
  bytes_per_device: int  # XLA's memory analysis: arguments + outputs + temporaries − aliased


# ---- host driver -----------------------------------------------------------------------------------------

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


def component_seed(name: str) -> int:
  """Stable 31-bit id of a component name (adding a component never changes another's noise)."""
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


KEY_ROWS_BUCKET = 64  # key rows are derived in padded blocks: groups of different sizes share one program


def chain_keys(seed: int, checkpoint_id: int, component_names, num_chains: int) -> np.ndarray:
  """uint32 key data [C·K, 2]: fold_in(seed, checkpoint, component, chain)."""
  for name, value in (("seed", seed), ("checkpoint_id", checkpoint_id)):
    if not 0 <= int(value) < 2**32:
      raise ValueError(f"{name}={value} must be an integer in [0, 2**32)")
  ids = np.array([(component_seed(name), k) for name in component_names for k in range(num_chains)], np.uint32)
  rows = -(-len(ids) // KEY_ROWS_BUCKET) * KEY_ROWS_BUCKET  # one compiled shape for every group up to its size
  padded = np.concatenate([ids, np.zeros((rows - len(ids), 2), np.uint32)])
  return np.asarray(_entry_keys(np.uint32(seed), np.uint32(checkpoint_id), padded))[:len(ids)]


@jax.jit
def _entry_keys(seed, checkpoint_id, ids_Ex2):
  root = jax.random.fold_in(jax.random.key(seed), checkpoint_id)
  return jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(jax.random.fold_in(root, i[0]), i[1])))(ids_Ex2)


def stream_seed(seed: int, checkpoint_id: int, chain: int) -> tuple:
  """Seed of data stream (= chain) k: the same for every component, different for every chain."""
  return (int(seed), int(checkpoint_id), int(chain))


def num_streams(num_samples: int, batch_size: int, num_chains: int, has_probes: bool) -> int:
  """One stream per chain, except a full-batch run without probes: every batch is then the whole dataset
  and the order cannot matter, so all chains share one stream taken in order (no shuffling, one L_B(w*))."""
  return 1 if batch_size == num_samples and not has_probes else num_chains


class _Streams:
  """Host side of the data streams: gathers each chunk's batches from (memory-mapped) arrays."""

  def __init__(self, base, probes: Mapping[str, Any], *, batch_size, delta_h, seed, checkpoint_id, num_chains,
               base_name):
    self.base, self.probes, self.base_name = base, probes, base_name
    self.n, self.delta_h = batch_size, delta_h
    self.num_streams = num_streams(num_rows(base), batch_size, num_chains, bool(probes))
    seeds = [stream_seed(seed, checkpoint_id, k) for k in range(self.num_streams)]
    self.base_schedules = [mixing.BatchSchedule(num_rows(base), batch_size, s, name=base_name) for s in seeds]
    self.probe_schedules = {d: [mixing.BatchSchedule(num_rows(p), batch_size, s, name=f"probe {d!r}") for s in seeds]
                            for d, p in probes.items()}
    self.num_slots = mixing.max_probe_samples(batch_size, delta_h) if probes else 0

  def base_indices(self, steps) -> np.ndarray:
    """int64 [*steps.shape, K, n]."""
    steps = np.asarray(steps)
    if self.num_streams == 1 and self.n == num_rows(self.base) and not self.probes:
      return np.broadcast_to(np.arange(self.n), steps.shape + (1, self.n))
    idx = [sch.indices_many(steps.ravel()).reshape(steps.shape + (self.n,)) for sch in self.base_schedules]
    return np.stack(idx, axis=steps.ndim)

  def gather_base(self, steps):
    idx = self.base_indices(steps)
    return jax.tree.map(lambda a: np.asarray(a[idx]), self.base)

  def probe_indices(self, eval_steps, slots: mixing.ProbeSlots) -> np.ndarray:
    """int64 [L, K, D, M]: the probe sample in every slot of every stream's evaluation batch."""
    out = []
    for schedules in self.probe_schedules.values():
      per_stream = [np.take_along_axis(sch.indices_many(eval_steps), slots.position_TxM.astype(np.int64), axis=1)
                    for sch in schedules]
      out.append(np.stack(per_stream, axis=1))  # [L, K, M]
    return np.stack(out, axis=2)

  def gather_probes(self, probe_idx_LxKxDxM):
    per_probe = [jax.tree.map(lambda a, d=d: np.asarray(a[probe_idx_LxKxDxM[:, :, d]]), p)
                 for d, p in enumerate(self.probes.values())]
    return jax.tree.map(lambda *xs: np.stack(xs, axis=2), *per_probe)


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
    observed, token_loss_fn, observed_microbatch, pair_split (see `_run_program`).
  """
  t0 = time.perf_counter()
  groups, calls = zip(*_program_calls(component_names, masks_C, config, hyper_C, restrict_gradients))
  if len(calls) == 1:
    return _run_program(loss_fn, params, *calls[0], base, probes, config=config, progress=progress, label=label,
                        **options)
  with reporting(progress, config.num_steps, label) as bar:
    shared = MeanOfParts(bar, len(calls)) if bar is not None else False  # the run counts num_steps in all
    run_group = lambda call: _run_program(loss_fn, params, *call, base, probes, config=config, progress=shared,
                                          label=label, **options)
    workers = concurrent_programs(parallel.as_entry_mesh(options.get("mesh")), len(calls))
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
  if mesh.devices.size > 1 or not _on_cpu(mesh):
    return 1
  limit = (os.cpu_count() or 1) if MAX_CONCURRENT_PROGRAMS is None else MAX_CONCURRENT_PROGRAMS
  return max(1, min(num_programs, limit))


def _group_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
  with _CACHE_LOCK:
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
  return [_run_program(loss_fn, params, *call, base, probes, config=config, progress=False, plan_only=True,
                       device_bytes=device_bytes, **options)
          for _, call in _program_calls(component_names, masks_C, config, None, restrict_gradients)]


def _program_calls(component_names, masks_C, config, hyper_C, restrict: bool) -> list[tuple]:
  """(component indices, (names, masks, hyper, free)) of each compiled program: one per component group, or
  one for all."""
  C = len(component_names)
  if hyper_C is None:
    hyper_C = sgld.Hyper(*(np.full(C, v, np.float32) for v in sgld.hyper_of(config)))
  if not restrict:
    return [(list(range(C)), (list(component_names), masks_C, hyper_C, None))]
  calls = []
  for free, comps in component_groups(masks_C, C):
    calls.append((comps, ([component_names[c] for c in comps], jax.tree.map(lambda m: np.asarray(m)[comps], masks_C),
                          sgld.Hyper(*(np.broadcast_to(np.asarray(h, np.float32), (C,))[comps] for h in hyper_C)),
                          None if all(free) else free)))
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


def _run_program(loss_fn: Callable, params, component_names, masks_C, hyper_C: sgld.Hyper, free: tuple | None,
                 base, probes: Mapping[str, Any], *, config: sgld.SGLDConfig, batch_size: int,
                 delta_h: float | None, seed: int = 0, checkpoint_id: int = 0, microbatch_size: int | None = None,
                 mesh=None, draws_per_chunk: int | None = None, progress=True, label: str = "sgld",
                 base_name: str = "base data", observed=None, token_loss_fn=None,
                 observed_microbatch: int | None = None, pair_split: int | None = None, plan_only: bool = False,
                 device_bytes: int | None = None) -> SamplerOutput | ProgramMemory:
  """`run` for components sharing one compiled program, differentiating the leaves in `free` (None: all).

  observed, token_loss_fn: contexts [O, ...] whose per-token losses are observed at every draw.
  pair_split: with observed, the cross-moments of the token losses of rows [0, split) against the rest.
  plan_only: compile the draw program (choosing the micro-batch if "auto") and return its ProgramMemory.
  """
  t0 = time.perf_counter()
  mesh = parallel.as_entry_mesh(mesh)
  n_dev = mesh.size
  probe_names = list(probes)
  K, C, S, T = config.num_chains, len(component_names), config.steps_between_draws, config.num_draws
  E = C * K
  E_pad = -(-E // n_dev) * n_dev
  num_blocks = T + 1
  blocks_per_chunk = draws_per_chunk or max(1, min(num_blocks, math.ceil(num_blocks / 20), 64))
  burnin_per_chunk = max(1, min(config.num_burnin, 64)) if config.num_burnin else 1
  streams = _Streams(base, probes, batch_size=batch_size, delta_h=delta_h, seed=seed, checkpoint_id=checkpoint_id,
                     num_chains=K, base_name=base_name)
  token_shape = (None if observed is None else
                 jax.eval_shape(token_loss_fn, params, jax.tree.map(lambda a: a[:1], observed)).shape)  # [1, J, ...]
  plan = Plan(config=config, batch_size=batch_size, num_streams=streams.num_streams, num_probes=len(probe_names),
              num_slots=streams.num_slots, microbatch_size=microbatch_size, blocks_per_chunk=blocks_per_chunk,
              token_loss_fn=token_loss_fn if observed is not None else None,
              observed_microbatch=observed_microbatch_for(mesh, token_shape, observed_microbatch),
              pair_split=pair_split if observed is not None else None,
              free_leaves=free, entry_grid=entry_grid(C, K, n_dev, free))

  # Entry layout, padded to a multiple of the device count with copies of entry 0 (discarded).
  pad = E_pad - E
  padded = lambda a: np.concatenate([a, np.repeat(a[:1], pad, axis=0)])
  components_E = np.repeat(np.arange(C, dtype=np.int32), K)
  entries = Entries(key_data=padded(chain_keys(seed, checkpoint_id, component_names, K)),
                    component=padded(components_E),
                    stream=padded(np.tile(np.arange(K, dtype=np.int32) % streams.num_streams, C)),
                    hyper=sgld.Hyper(*(padded(np.asarray(h, np.float32)[components_E]) for h in hyper_C)))

  entry_sharding = NamedSharding(mesh, P(ENTRY_AXIS))
  replicated = NamedSharding(mesh, P())
  put_e = lambda x: jax.device_put(x, entry_sharding)
  put_r = lambda x: jax.device_put(x, replicated)
  anchor, masks_dev = put_r(params), put_r(flat_masks(masks_C, params))
  anchor_P = np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves(params)])
  state0 = jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (E_pad,) + np.shape(a)), sgld.init(anchor_P, config))
  token_moments = ()
  if plan.token_loss_fn is not None:
    token_moments = estimators.init_moments(E_pad, (num_rows(observed), *token_shape[1:]))
  pair_moments = ()
  if plan.pair_split is not None:
    per_row = int(np.prod(token_shape[1:]))
    pair_moments = estimators.init_cross_moments(E_pad, plan.pair_split * per_row,
                                                 (num_rows(observed) - plan.pair_split) * per_row)
  carry = Carry(state0, estimators.init_moments(E_pad, (len(probe_names),)),
                jnp.zeros((E_pad,), bool), jnp.full((E_pad,), -1, jnp.int32), token_moments, pair_moments)
  observed_dev = put_r(observed if observed is not None else np.zeros((0,), np.float32))
  carry = jax.tree.map(put_e, carry)
  entries_dev = jax.tree.map(put_e, entries)
  with reporting(progress, config.num_steps, label) as bar:

    def chunk_inputs(first_block):
      count = min(blocks_per_chunk, num_blocks - first_block)
      blocks = np.array(list(range(first_block, first_block + count)) + [first_block] * (blocks_per_chunk - count))
      first_step = config.num_burnin + first_block * S
      steps_LxS = config.num_burnin + blocks[:, None] * S + np.arange(S)[None, :]
      probe_idx = None
      if probe_names:
        slots = mixing.probe_slots(batch_size, delta_h, np.maximum(blocks - 1, 0))
        slots = slots._replace(weight_TxM=np.where((blocks >= 1)[:, None], slots.weight_TxM, 0.0).astype(np.float32))
        probe_idx = streams.probe_indices(steps_LxS[:, 0], slots)
        probe_data = streams.gather_probes(probe_idx)
      else:
        slots = mixing.ProbeSlots(np.zeros((blocks_per_chunk, 0), np.int32), np.zeros((blocks_per_chunk, 0), np.float32))
        probe_data = np.zeros((blocks_per_chunk, K, 0, 0), np.float32)
      data = ChunkData(base_LxSxK=streams.gather_base(steps_LxS), probe_LxKxDxM=probe_data,
                       slot_position_LxM=slots.position_TxM, slot_weight_LxM=slots.weight_TxM,
                       loss_star_LxK=np.zeros((blocks_per_chunk, streams.num_streams), np.float32),
                       first_step=np.int32(first_step), first_block=np.int32(first_block), num_blocks=np.int32(count))
      return count, steps_LxS, probe_idx, jax.tree.map(put_r, data)

    def with_anchor_losses(chunk):  # (after the micro-batch is settled)
      count, steps_LxS, probe_idx, data_dev = chunk
      loss_star = _compiled("anchor", loss_fn, plan, mesh)(anchor, data_dev.base_LxSxK)
      return count, steps_LxS, probe_idx, data_dev._replace(loss_star_LxK=loss_star)

    first_chunk = chunk_inputs(0)
    draw_fn = None
    auto = plan.microbatch_size == MICROBATCH_AUTO
    if auto or plan_only:
      program_args = (carry, entries_dev, anchor, masks_dev, first_chunk[3], observed_dev)
      if auto:  # the largest micro-batch whose program fits the devices
        plan, draw_fn, need = _auto_microbatch(loss_fn, plan, mesh, program_args, device_bytes)
        microbatch_size = plan.microbatch_size
      if plan_only:
        if not auto:
          need = program_bytes(_compiled("draw", loss_fn, plan, mesh).lower(*program_args).compile())
        return ProgramMemory(list(component_names), E_pad // n_dev, plan.microbatch_size, need)

    # Burn-in.
    step = 0
    if config.num_burnin:
      burn = _compiled("burnin", loss_fn, plan, mesh)
      while step < config.num_burnin:
        count = min(burnin_per_chunk, config.num_burnin - step)
        steps = np.array(list(range(step, step + count)) + [step] * (burnin_per_chunk - count))
        state = burn(carry.state, entries_dev, anchor, masks_dev, put_r(streams.gather_base(steps)),
                     np.int32(step), np.int32(count))
        carry = carry._replace(state=state)
        step += count
        if bar is not None:
          jax.block_until_ready(state)
          bar.update(count)

    # Blocks, in chunks; the next chunk's batches are gathered while the device runs the current one.
    draw_fn = draw_fn or _compiled("draw", loss_fn, plan, mesh)

    kept = []  # per chunk: (ChunkTraces, L_B(w*) [l, K]) of the recorded blocks, host numpy
    nonfinite_probe = {d: set() for d in probe_names}
    first_block = 0
    pending = with_anchor_losses(first_chunk)
    while first_block < num_blocks:
      count, steps_LxS, probe_idx, data_dev = pending
      try:
        carry, traces = draw_fn(carry, entries_dev, anchor, masks_dev, data_dev, observed_dev)
      except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
          raise
        observing = (f", observing {num_rows(observed)} rows' token losses (fewer per chunk: contexts_per_chunk "
                     f"or samples_per_chunk)") if observed is not None else ""
        raise MemoryError(f"the sampler's program does not fit in device memory at batch_size={batch_size}, "
                          f"microbatch_size={plan.microbatch_size} ({E_pad // n_dev} entries per device){observing}; "
                          f"pass microbatch_size='auto' (or a smaller one), or more devices") from None
      next_block = first_block + count
      if next_block < num_blocks:
        pending = with_anchor_losses(chunk_inputs(next_block))
      traces = jax.tree.map(lambda a: np.asarray(a)[:count], traces)
      loss_star_LxK = np.asarray(data_dev.loss_star_LxK)[:count]
      _check_base_faults(loss_star_LxK, steps_LxS, streams, loss_fn, params, microbatch_size, first_block)
      if probe_names and traces.probe_nonfinite_LxExD.any():
        for l, e, d in zip(*np.nonzero(traces.probe_nonfinite_LxExD[:, :E])):
          nonfinite_probe[probe_names[d]].update(int(i) for i in probe_idx[l, entries.stream[e], d])
      recorded = slice(1 if first_block == 0 else 0, count)  # block 0 evaluates the start: not a draw
      drop_padding = lambda a: a[recorded, :E]
      kept.append((ChunkTraces(*map(drop_padding, traces)), loss_star_LxK[recorded]))
      first_block = next_block
      if bar is not None:
        bar.update(count * S)

  moments = estimators.to_numpy(jax.tree.map(lambda a: np.asarray(a)[:E], carry.moments))
  cat = lambda field: np.concatenate([getattr(t, field) for t, _ in kept])
  return SamplerOutput(
      moments=moments, diverged=np.asarray(carry.diverged)[:E], diverged_at=np.asarray(carry.diverged_at)[:E],
      loss_trace=cat("loss_LxE"), phi_trace=cat("phi_LxE"), delta_loss_trace=cat("delta_loss_LxExD"),
      loss_star_trace=np.concatenate([star for _, star in kept]), mala=cat("mala_LxE"), nonfinite_probe_samples={d: sorted(idx) for d, idx in nonfinite_probe.items()},
      realised_delta_h=mixing.realised_fraction(batch_size, delta_h, T) if probe_names else float("nan"),
      seconds=time.perf_counter() - t0,
      token_moments=(estimators.to_numpy(jax.tree.map(lambda a: np.asarray(a)[:E], carry.token_moments))
                     if plan.token_loss_fn is not None else None),
      pair_moments=(estimators.to_numpy(jax.tree.map(lambda a: np.asarray(a)[:E], carry.pair_moments))
                    if plan.pair_split is not None else None))


def _check_base_faults(loss_star_LxK, steps_LxS, streams: _Streams, loss_fn, params, micro, first_block):
  """Raise DataFaultError, naming the samples, if a stream's L_B(w*) was not finite in this chunk."""
  bad_l, bad_k = np.nonzero(~np.isfinite(loss_star_LxK))
  if not bad_l.size:
    return
  l, k = int(bad_l[0]), int(bad_k[0])
  indices = streams.base_schedules[k].indices(int(steps_LxS[l, 0]))
  samples = nonfinite_samples(loss_fn, params, streams.base, indices, micro)
  raise DataFaultError(
      f"{streams.base_name}: the loss at w* (the checkpoint itself) is not finite for sample(s) {samples} "
      f"(in the evaluation batch of draw {first_block + l} of chain {k}): a fault of the data, not of the "
      f"sampler. Remove or fix these samples.")
