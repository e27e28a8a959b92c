"""The compiled chunk programs: a chunk of draw blocks (or of burn-in steps) of every local entry.

Entries are the flattened (component, chain) pairs, component-major. Their sampler states carry a leading
entry axis that is vmapped inside each device and split across the devices of a mesh with `jax.shard_map`.
A state is flat and holds only the group's free leaves (position [F], `ravel_pytree`'s order, F = P for a
group freeing everything: `restricted.FreeView`): the update, the noise, the mask and MALA are one fused pass
over F instead of a few per parameter leaf (much less to compile, fewer kernels to launch) and never touch a
frozen coordinate; only the loss functions see the parameter tree, its frozen leaves w*. The noise at a
coordinate does not depend on which others are drawn (`sgld.standard_normal_at`), so restricted chains equal
full ones. Masks are data (one bool row [F] per component, indexed by the entry's
component), so one compilation serves every component of a group; so are ε, nβ and γ (`sgld.Hyper`), so a
grid of settings is one program too.

Draws come *after* updates (as in devinterp): the run is a sequence of blocks, each evaluating the current
position and then taking `steps_between_draws` updates; block 0 evaluates the starting point and is not
recorded, block t ≥ 1 is draw t. The evaluation is the forward pass of the block's first gradient step, so
L_B(w_t) costs nothing extra; a draw adds one forward over the D·M probe slots placed by Algorithm 1 (a probe
sample identical to the base sample it replaces contributes exactly 0), and L_B(w*) of each stream's batch
is data, from the run's table of per-sample losses at w* (`anchor_table.py`). A MALA measurement costs one
gradient at the moved-to point on the move's batch, in the block's loop (`_block_moves`), so a program holds
one copy of the backward pass; the chain never sees it (re-reading the batch in the next step instead, as
this package did for a day, biased the chain and the draw after it). A probe sample with a non-finite
loss drops that probe's contribution for that draw (counted per entry × probe in the moments) instead of
killing the chain.

Shape letters: E entries (local to a device inside the chunk), K streams (= chains), D probes, M probe slots
per batch (⌈n·δh⌉), n batch rows, L blocks per chunk, S steps per block, O observed contexts, J token
positions per observed context, P flattened parameters, F the group's free ones among them, C components.
"""
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

from suscept_jax import estimators, parallel, sgld
from suscept_jax.batched import batched_losses, flatten_rows, loss_and_grad
from suscept_jax.restricted import FreeView, SliceLayout, over_entries, stream_rows, with_free_slices

ENTRY_AXIS = parallel.ENTRY_AXIS


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
  loss_star_LxK: Any  # float32 [L, K] L_B(w*) of each block's evaluation batch, per stream (`anchor_table`)
  first_step: Any  # int32 [] global SGLD step of the chunk's first block
  first_block: Any  # int32 [] index of the chunk's first block (block b ≥ 1 is draw b − 1)
  num_blocks: Any  # int32 [] blocks to run (≤ L; the rest is padding)


class BurninData(NamedTuple):
  """One call's burn-in batches (replicated on every device)."""

  base_LxK: Any  # pytree, leaves [L, K, n, ...]: every step's batch of every stream (L steps here)
  first_step: Any  # int32 [] global SGLD step of the first
  num_steps: Any  # int32 [] steps to take (≤ L; the rest is padding)


class ChunkTraces(NamedTuple):
  """Per-block values of a chunk (block axis L first)."""

  loss_LxE: Any  # L_B(w) at the evaluated position
  phi_LxE: Any  # φ = L_B(w) − L_B(w*)
  delta_loss_LxExD: Any  # ΔL per probe (NaN where dropped)
  mala_LxE: Any  # MALA acceptance of the block's first move (NaN where not measured)
  probe_nonfinite_LxExD: Any  # bool: a placed probe sample's loss was not finite at a draw that counts


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
  free_slices: SliceLayout | None = None  # leaves of which each component frees one slice (`slice_layout`)
  traced: tuple = ()  # `function_keys.traced_key` of the loss functions at the run's shapes (part of the cache key)


def _specs(tree_type, spec):
  return tree_type(*([spec] * len(tree_type._fields)))


_E, _REP, _LE = P(ENTRY_AXIS), P(), P(None, ENTRY_AXIS)
ENTRIES_SPEC = Entries(_E, _E, _E, sgld.Hyper(_E, _E, _E))
CHUNK_DATA_SPEC = _specs(ChunkData, _REP)
BURNIN_DATA_SPEC = _specs(BurninData, _REP)
TRACES_SPEC = _specs(ChunkTraces, _LE)


def flat_masks(masks_C, params, free=None) -> np.ndarray:
  """The stacked component masks as one bool row per component over the free leaves' flattened coordinates,
  [C, F] (the order of `ravel_pytree(params)`; free None: every leaf, F = P): the sampler's state is flat, so
  every update is one fused pass."""
  rows = [np.broadcast_to(np.asarray(m, bool), (np.shape(m)[0],) + np.shape(p)).reshape(np.shape(m)[0], -1)
          for m, p in zip(jax.tree.leaves(masks_C), jax.tree.leaves(params))]
  return np.concatenate(rows, axis=1)[:, FreeView(jax.tree.map(np.asarray, params), free).columns()]


class EntryStep(NamedTuple):
  """One entry's SGLD update: the new state, and the per-sample losses and gradient at the old position."""

  state: sgld.SGLDState
  losses_n: Any  # per-sample losses of the step's batch
  grad_F: Any  # ∇ of their mean over the free leaves, flattened


class _Iteration(NamedTuple):
  """One iteration of a block's loop (`_block_moves`): a step, or MALA's gradient at the moved-to point."""

  state: sgld.SGLDState
  losses_n: Any  # per-sample losses of the iteration's batch at the position it started from
  mala_half: Any  # this position's half of MALA's log-ratio (0 where not wanted)


class BlockMoves(NamedTuple):
  """A block's updates of the local entries (`_block_moves`)."""

  state: sgld.SGLDState  # after the block's steps_between_draws updates
  losses_En: Any  # per-sample losses of step 0's batch at the block's starting point
  acceptance_E: Any  # MALA acceptance of the block's first move; NaN where it was not measured


def _entry_step_fn(loss_fn, plan: Plan, masks_CxF, view: FreeView):
  """step(state, key, component, hyper, batch, global_step) -> `EntryStep` for one entry (vmapped by the
  callers). The state is flat (position [F], the free leaves); the loss sees the parameter tree."""
  config = plan.config

  def step(state, key, comp, hyper, batch, global_step):  # (named scopes: what a profile's ops belong to)
    with jax.named_scope("gradient"):
      losses, grad = loss_and_grad(with_free_slices(loss_fn, plan.free_slices, view.anchor, comp),
                                   view.tree_of(state.position), batch, plan.microbatch_size, plan.free_leaves,
                                   view.anchor)
    with jax.named_scope("sgld_update"):
      grad_F = view.ravel(grad)
      noise_F = sgld.standard_normal_at(jax.random.fold_in(key, global_step), view.segments, state.position.dtype)
      new_state = sgld.step(state, grad_F, noise_F, view.anchor_F, masks_CxF[comp], config, hyper)
    return EntryStep(state=new_state, losses_n=losses, grad_F=grad_F)

  return step


def _block_moves(loss_fn, plan: Plan, masks_CxF, view: FreeView, entries: Entries, state, batch_of, global_step,
                 measure) -> BlockMoves:
  """A block's `steps_between_draws` SGLD updates of the local entries, and (when `measure`) the MALA
  acceptance of its first move.

  batch_of(i): every stream's batch [K, n, ...] of the block's step i. log α(w → w') = half(w, w') − half(w',
  w) (`sgld.mala_half`) needs the loss and gradient at w' on the move's own batch: one more gradient, which the
  chain never uses. Every gradient is taken at one call site inside one loop, so the program holds one copy of
  the backward pass: with `measure`, iteration 1 evaluates step 0's batch at w' and its step is discarded, then
  the steps go on. The chain is the one `mala_every=0` samples: the same batches, the same noise.
  """
  config = plan.config
  step = _entry_step_fn(loss_fn, plan, masks_CxF, view)
  mala = config.measures_mala

  def entry_iteration(state, start, key, comp, hyper, batch, g, is_eval, half_wanted) -> _Iteration:
    moved = step(state, key, comp, hyper, batch, g)
    if not mala:
      return _Iteration(state=moved.state, losses_n=moved.losses_n, mala_half=jnp.zeros(()))

    @jax.named_scope("mala")
    def half():  # at w: towards w'; at w' (is_eval): back towards w, with the G of the first move's end
      choose = lambda old, new: jax.tree.map(lambda a, b: jnp.where(is_eval, a, b), old, new)
      precond = sgld.preconditioner_of(choose(state.square_avg, moved.state.square_avg), config)
      here = sgld.Evaluated(position=state.position, loss=moved.losses_n.mean(), grad=moved.grad_F)
      return sgld.mala_half(here, choose(start, moved.state.position), view.anchor_F, masks_CxF[comp], precond,
                            config, hyper).astype(jnp.float32)

    return _Iteration(state=moved.state, losses_n=moved.losses_n,
                      mala_half=jax.lax.cond(half_wanted, half, lambda: jnp.zeros((), jnp.float32)))

  def iterate(st, i, is_eval, half_wanted) -> _Iteration:  # every local entry: fields with a leading E
    one = lambda s, start, key_data, comp, hyper, batch: entry_iteration(
        s, start, jax.random.wrap_key_data(key_data), comp, hyper, batch, global_step + i, is_eval, half_wanted)
    return over_entries(one, plan.entry_grid, (st, state.position, entries.key_data, entries.component,
                                                entries.hyper), batch_of(i), entries.stream)

  E, n = entries.component.shape[0], plan.batch_size
  if config.steps_between_draws == 1 and not mala:  # one plain step: no loop
    moved = iterate(state, 0, False, False)
    return BlockMoves(state=moved.state, losses_En=moved.losses_n, acceptance_E=jnp.full((E,), jnp.nan))

  measure = jnp.asarray(measure) & mala

  def body(j, so_far: BlockMoves) -> BlockMoves:  # acceptance_E carries the log-ratio until the loop ends
    is_eval = measure & (j == 1)
    i = j - (measure & (j >= 1)).astype(jnp.int32)  # the step whose batch (and noise) this iteration reads
    moved = iterate(so_far.state, i, is_eval, measure & (j <= 1))
    return BlockMoves(
        state=jax.tree.map(lambda old, new: jnp.where(is_eval, old, new), so_far.state, moved.state),
        losses_En=jnp.where(j == 0, moved.losses_n, so_far.losses_En).astype(so_far.losses_En.dtype),
        acceptance_E=so_far.acceptance_E + jnp.where(j == 0, moved.mala_half, -moved.mala_half))

  start = BlockMoves(state=state, losses_En=jnp.zeros((E, n)), acceptance_E=jnp.zeros((E,), jnp.float32))
  done = jax.lax.fori_loop(0, config.steps_between_draws + measure.astype(jnp.int32), body, start)
  return done._replace(acceptance_E=jnp.where(measure, sgld.acceptance_of(done.acceptance_E), jnp.nan))


def _draw_chunk(loss_fn, plan: Plan, carry: Carry, entries: Entries, anchor, masks_CxF, data: ChunkData, observed):
  """Run `data.num_blocks` blocks (evaluate, then steps_between_draws updates) on the local entries."""
  config = plan.config
  view = FreeView(anchor, plan.free_leaves)  # the state's free coordinates; the tree the loss functions see
  params_at = view.tree_of
  n, D, M = plan.batch_size, plan.num_probes, plan.num_slots
  E = entries.component.shape[0]
  L = plan.blocks_per_chunk

  @jax.named_scope("probes")
  def probe_deltas(position_E, batch_K, losses_En, l):
    """(ΔL [E, D] with NaN where dropped, non-finite flags [E, D]) for block l."""
    slot_M, weight_M = data.slot_position_LxM[l], data.slot_weight_LxM[l]
    probes_K = jax.tree.map(lambda a: a[l], data.probe_LxKxDxM)  # [K, D, M, ...]
    probe_losses_ExDxM = over_entries(
        lambda w, comp, p: batched_losses(with_free_slices(loss_fn, plan.free_slices, anchor, comp), params_at(w),
                                          flatten_rows(p, 2), plan.microbatch_size).reshape(D, M),
        plan.entry_grid, (position_E, entries.component), probes_K, entries.stream)
    probes_E = stream_rows(probes_K, entries.stream)  # [E, D, M, ...]
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
    moves = _block_moves(loss_fn, plan, masks_CxF, view, entries, c.state, batch_of, global_step,
                         config.mala_measured(block))
    losses_En = moves.losses_En
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
      with jax.named_scope("per_token"):
        tokens_ExOxJ = jax.vmap(lambda w, comp: batched_losses(
            with_free_slices(plan.token_loss_fn, plan.free_slices, anchor, comp), params_at(w), observed,
            plan.observed_microbatch))(c.state.position, entries.component)
      excess_ExOxJ = tokens_ExOxJ - estimators.expand_like(loss_E, tokens_ExOxJ)  # (J: one axis or several)
      token_moments = estimators.update_moments(token_moments, phi_E, excess_ExOxJ, active_E,
                                                jnp.isfinite(tokens_ExOxJ))
    pair_moments = c.pair_moments
    if plan.pair_split is not None:  # raw token losses of queries against samples (Bayesian influence)
      split = plan.pair_split
      pair_moments = estimators.update_cross_moments(pair_moments, tokens_ExOxJ[:, :split].reshape(E, -1),
                                                     tokens_ExOxJ[:, split:].reshape(E, -1), active_E)

    values = ChunkTraces(loss_LxE=loss_E, phi_LxE=phi_E, delta_loss_LxExD=delta_ExD, mala_LxE=moves.acceptance_E,
                         probe_nonfinite_LxExD=nonfinite_ExD & active_E[:, None])  # block l's row of each trace
    traces = jax.tree.map(lambda buf, v: buf.at[l].set(v), traces, values)
    return Carry(state=moves.state, moments=moments, diverged=diverged, diverged_at=diverged_at,
                 token_moments=token_moments, pair_moments=pair_moments), traces

  traces = ChunkTraces(loss_LxE=jnp.zeros((L, E)), phi_LxE=jnp.zeros((L, E)), delta_loss_LxExD=jnp.zeros((L, E, D)),
                       mala_LxE=jnp.full((L, E), jnp.nan), probe_nonfinite_LxExD=jnp.zeros((L, E, D), bool))
  return jax.lax.fori_loop(0, data.num_blocks, block_body, (carry, traces))


def _burnin_chunk(loss_fn, plan: Plan, state, entries: Entries, anchor, masks_CxF, data: BurninData):
  """Take `data.num_steps` SGLD steps of the local entries; nothing is recorded."""
  step = _entry_step_fn(loss_fn, plan, masks_CxF, FreeView(anchor, plan.free_leaves))

  def body(i, st):
    one = lambda s, key_data, comp, hyper, batch: step(s, jax.random.wrap_key_data(key_data), comp, hyper, batch,
                                                       data.first_step + i).state
    return over_entries(one, plan.entry_grid, (st, entries.key_data, entries.component, entries.hyper),
                         jax.tree.map(lambda a: a[i], data.base_LxK), entries.stream)

  return jax.lax.fori_loop(0, data.num_steps, body, state)


def program(kind: str, loss_fn, plan: Plan, mesh, compiler_options: dict):
  """The uncompiled program of a kind, "draw" or "burnin": jit(shard_map(chunk)) over `mesh`'s entry axis (the
  carried state donated)."""
  if kind == "draw":
    fn = functools.partial(_draw_chunk, loss_fn, plan)
    in_specs, out_specs = (_E, ENTRIES_SPEC, _REP, _REP, CHUNK_DATA_SPEC, _REP), (_E, TRACES_SPEC)
  else:
    fn = functools.partial(_burnin_chunk, loss_fn, plan)
    in_specs, out_specs = (_E, ENTRIES_SPEC, _REP, _REP, BURNIN_DATA_SPEC), _E
  mapped = parallel.shard_map_without_empty(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,), compiler_options=compiler_options)
