"""The SGLD driver: every chain of every component as one compiled program, sharded over devices.

Entries are the flattened (component, chain) pairs. Their sampler states carry a leading entry axis
that is vmapped inside each device and split across the devices of a mesh with `jax.shard_map`. Masks
are data (a stacked mask tree indexed by the entry's component), so one compilation serves every
component. All entries see the same batch at a step (common random numbers). Noise keys come from
fold_in(seed, checkpoint, component-name hash, chain, step): results do not depend on the device count
or on how the run is split into chunks.

A step's forward pass at w_t gives the per-sample base losses of the draw for free; a draw adds one
forward at w* (shared by all entries) and one forward over the D·m probe samples placed by Algorithm 1
(a probe sample identical to the base sample it replaces contributes exactly 0 to ΔL).

The host loop runs the draws in chunks (one `while_loop` per chunk) so it can show progress with an ETA
and prepare the next chunk's batches while the device works.
"""
import dataclasses
import functools
import math
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from suscept_jax import estimators, mixing, parallel, sgld

ENTRY_AXIS = parallel.ENTRY_AXIS


# ---- losses and gradients over (micro-)batches --------------------------------------------------------

def num_rows(batch) -> int:
  return int(jax.tree.leaves(batch)[0].shape[0])


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
  """Per-sample losses [n] of `batch`, evaluated `micro` rows at a time."""
  n = num_rows(batch)
  if micro is None or micro >= n:
    return loss_fn(params, batch)
  batches, _ = _split_micro(batch, micro)
  losses = jax.lax.map(lambda b: loss_fn(params, b), batches)
  return losses.reshape(-1)[:n]


def loss_and_grad(loss_fn, params, batch, micro: int | None):
  """(per-sample losses [n], ∇ of their mean), accumulated exactly over micro-batches."""
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


# ---- the compiled chunk programs ------------------------------------------------------------------------

class Carry(NamedTuple):
  """Everything that persists across chunks, with a leading entry axis."""

  state: sgld.SGLDState
  moments: estimators.Moments
  diverged: jnp.ndarray  # bool [E]
  diverged_at: jnp.ndarray  # int32 [E], first draw index at which the chain diverged (-1: never)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Static description of what a compiled chunk does (hashable: a compilation cache key)."""

  config: sgld.SGLDConfig
  batch_size: int
  probe_positions: tuple  # Algorithm 1's positions in a batch (empty without probes)
  num_probes: int
  microbatch_size: int | None
  draws_per_chunk: int
  burnin_per_chunk: int


def _entry_fns(loss_fn, plan: Plan, masks_C, anchor):
  """Per-entry step functions (vmapped by the caller)."""
  config = plan.config

  def mask_of(comp):
    return jax.tree.map(lambda m: m[comp], masks_C)

  def step(state, key, comp, batch, global_step):
    losses, grad = loss_and_grad(loss_fn, state.position, batch, plan.microbatch_size)
    noise = sgld.standard_normal_like(jax.random.fold_in(key, global_step), state.position)
    return sgld.step(state, grad, noise, anchor, mask_of(comp), config), losses, grad

  def mala(state, new_state, comp, batch, losses, grad):
    new_losses, new_grad = loss_and_grad(loss_fn, new_state.position, batch, plan.microbatch_size)
    _, precond = sgld.preconditioner(state, grad, config)
    return sgld.mala_acceptance(state.position, new_state.position, losses.mean(), new_losses.mean(),
                                grad, new_grad, anchor, mask_of(comp), precond, config)

  return step, mala


def _draw_chunk(loss_fn, plan: Plan, carry: Carry, keys, comps, masks_C, anchor, base_LxS, eval_LxD,
                first_step, first_draw, n_draws):
  """Run `n_draws` draw blocks (a draw step then steps_between_draws − 1 plain steps) on local entries."""
  config = plan.config
  step_fn, mala_fn = _entry_fns(loss_fn, plan, masks_C, anchor)
  keys = jax.random.wrap_key_data(keys)
  vstep = jax.vmap(step_fn, in_axes=(0, 0, 0, None, None))
  positions = np.asarray(plan.probe_positions, np.int32)
  m, n = len(positions), plan.batch_size
  num_local = comps.shape[0]
  L = plan.draws_per_chunk
  buffers = (jnp.zeros((L, num_local)), jnp.zeros((L, num_local)), jnp.zeros((L,)),
             jnp.full((L, num_local), jnp.nan))

  def draw_block(l, loop_carry):
    c, (loss_buf, phi_buf, star_buf, mala_buf) = loop_carry
    s = config.steps_between_draws
    draw = first_draw + l
    global_step = first_step + l * s
    batch = jax.tree.map(lambda a: a[l, 0], base_LxS)
    loss_star = batched_losses(loss_fn, anchor, batch, plan.microbatch_size).mean()
    new_state, losses_En, grads = vstep(c.state, keys, comps, batch, global_step)
    loss_E = losses_En.mean(axis=-1)
    phi_E = loss_E - loss_star
    if plan.num_probes:
      # Only the probe samples need a forward pass: the base samples they replace were just evaluated
      # at w_t by the gradient pass (losses_En).
      base_at_probe = jax.tree.map(lambda a: a[positions], batch)
      probes = jax.tree.map(lambda a: a[l], eval_LxD)  # [D, m, ...]
      flat_probes = jax.tree.map(lambda p: p.reshape((-1,) + p.shape[2:]), probes)
      probe_losses_EDxM = jax.vmap(lambda w: batched_losses(loss_fn, w, flat_probes, plan.microbatch_size))(
          c.state.position).reshape(num_local, plan.num_probes, m)
      # A probe sample identical to the base sample it replaces changes nothing: that is exact here, not
      # left to rounding (the two losses come from differently shaped forward passes).
      same_DxM = functools.reduce(jnp.logical_and, [
          jnp.all((p == b[None]).reshape(p.shape[:2] + (-1,)), axis=-1)
          for p, b in zip(jax.tree.leaves(probes), jax.tree.leaves(base_at_probe))])
      diff_EDxM = jnp.where(same_DxM, 0.0, probe_losses_EDxM - losses_En[:, None, positions])
      delta_loss_ED = diff_EDxM.sum(axis=-1) / n
    else:
      delta_loss_ED = jnp.zeros((num_local, 0))
    if config.mala_every and config.noise_level > 0:
      acceptance = jax.lax.cond(
          draw % config.mala_every == 0,
          lambda: jax.vmap(mala_fn, in_axes=(0, 0, 0, None, 0, 0))(c.state, new_state, comps, batch,
                                                                  losses_En, grads),
          lambda: jnp.full((num_local,), jnp.nan))
    else:
      acceptance = jnp.full((num_local,), jnp.nan)
    bad = ~jnp.isfinite(phi_E) | (phi_E > config.max_loss_increase) | ~jnp.all(jnp.isfinite(delta_loss_ED), axis=-1)
    diverged_at = jnp.where(bad & ~c.diverged, draw, c.diverged_at)
    diverged = c.diverged | bad
    moments = estimators.update_moments(c.moments, phi_E, delta_loss_ED, ~diverged)

    def plain(i, st):
      b = jax.tree.map(lambda a: a[l, i], base_LxS)
      return vstep(st, keys, comps, b, global_step + i)[0]

    new_state = jax.lax.fori_loop(1, s, plain, new_state)
    buffers = (loss_buf.at[l].set(loss_E), phi_buf.at[l].set(phi_E), star_buf.at[l].set(loss_star),
               mala_buf.at[l].set(acceptance))
    return Carry(new_state, moments, diverged, diverged_at), buffers

  carry, buffers = jax.lax.fori_loop(0, n_draws, draw_block, (carry, buffers))
  return (carry,) + buffers


def _burnin_chunk(loss_fn, plan: Plan, state, keys, comps, masks_C, anchor, base_L, first_step, n_steps):
  step_fn, _ = _entry_fns(loss_fn, plan, masks_C, anchor)
  keys = jax.random.wrap_key_data(keys)
  vstep = jax.vmap(step_fn, in_axes=(0, 0, 0, None, None))

  def body(i, st):
    return vstep(st, keys, comps, jax.tree.map(lambda a: a[i], base_L), first_step + i)[0]

  return jax.lax.fori_loop(0, n_steps, body, state)


_COMPILED: dict = {}


def _compiled(kind: str, loss_fn, plan: Plan, mesh):
  """jit(shard_map(chunk)) for a plan, cached so a sweep compiles once for all checkpoints."""
  cache_key = (kind, loss_fn, plan, mesh)
  if cache_key not in _COMPILED:
    e, rep = P(ENTRY_AXIS), P()
    if kind == "draw":
      fn = lambda *a: _draw_chunk(loss_fn, plan, *a)
      in_specs = (e, e, e, rep, rep, rep, rep, rep, rep, rep)
      out_specs = (e, P(None, ENTRY_AXIS), P(None, ENTRY_AXIS), rep, P(None, ENTRY_AXIS))
      donate = (0,)
    else:
      fn = lambda *a: _burnin_chunk(loss_fn, plan, *a)
      in_specs = (e, e, e, rep, rep, rep, rep, rep)
      out_specs = e
      donate = (0,)
    _COMPILED[cache_key] = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False),
                                   donate_argnums=donate)
  return _COMPILED[cache_key]


# ---- host driver -----------------------------------------------------------------------------------------

class SamplerOutput(NamedTuple):
  """Raw results over entries (component-major: entry = component·K + chain), host numpy."""

  moments: estimators.Moments  # y axis = probes
  diverged: np.ndarray  # bool [E]
  diverged_at: np.ndarray  # int [E]
  loss_trace: np.ndarray  # [draws, E] L_B(w_t)
  phi_trace: np.ndarray  # [draws, E] φ_t
  loss_star_trace: np.ndarray  # [draws] L_B(w*)
  mala: np.ndarray  # [draws, E] acceptance (NaN where not measured)
  seconds: float


def component_seed(name: str) -> int:
  """Stable 31-bit id of a component name (adding a component never changes another's noise)."""
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def chain_keys(seed: int, checkpoint_id: int, component_names, num_chains: int) -> np.ndarray:
  """uint32 key data [C·K, 2]: fold_in(seed, checkpoint, component, chain)."""
  root = jax.random.fold_in(jax.random.key(seed), checkpoint_id)
  keys = [jax.random.fold_in(jax.random.fold_in(root, component_seed(name)), k)
          for name in component_names for k in range(num_chains)]
  return np.asarray(jax.random.key_data(jnp.stack(keys)))


def _gather(tree, idx):
  return jax.tree.map(lambda a: np.asarray(a[idx]), tree)


def _stack(trees):
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def _progress_bar(progress, total: int, label: str):
  if progress is False or progress is None:
    return None
  if hasattr(progress, "update"):
    return progress
  from tqdm.auto import tqdm
  return tqdm(total=total, desc=label, unit="step", dynamic_ncols=True, smoothing=0.1)


def run(loss_fn: Callable, params, component_names, masks_C, base, probes: Mapping[str, Any], *,
        config: sgld.SGLDConfig, batch_size: int, delta_h: float | None, seed: int = 0,
        checkpoint_id: int = 0, microbatch_size: int | None = None, mesh=None,
        draws_per_chunk: int | None = None, progress=True, label: str = "sgld") -> SamplerOutput:
  """Sample every (component, chain) and stream the draw statistics. Inputs are assumed validated."""
  t0 = time.perf_counter()
  mesh = mesh or parallel.entry_mesh()
  n_dev = mesh.size
  probe_names = list(probes)
  positions = tuple(int(p) for p in mixing.probe_positions(batch_size, delta_h)) if probe_names else ()
  K, C = config.num_chains, len(component_names)
  E = C * K
  E_pad = -(-E // n_dev) * n_dev
  draws_per_chunk = draws_per_chunk or max(1, min(config.num_draws, math.ceil(config.num_draws / 20), 64))
  burnin_per_chunk = max(1, min(config.num_burnin, 64)) if config.num_burnin else 1
  plan = Plan(config, batch_size, positions, len(probe_names), microbatch_size, draws_per_chunk,
              burnin_per_chunk)

  # Entry layout, padded to a multiple of the device count with copies of entry 0 (discarded).
  comps = np.repeat(np.arange(C, dtype=np.int32), K)
  keys = chain_keys(seed, checkpoint_id, component_names, K)
  pad = E_pad - E
  comps = np.concatenate([comps, np.zeros(pad, np.int32)])
  keys = np.concatenate([keys, np.repeat(keys[:1], pad, axis=0)])

  entry_sharding = NamedSharding(mesh, P(ENTRY_AXIS))
  replicated = NamedSharding(mesh, P())
  put_e = lambda x: jax.device_put(x, entry_sharding)
  put_r = lambda x: jax.device_put(x, replicated)
  anchor = put_r(params)
  masks_dev = put_r(masks_C)
  state0 = jax.vmap(lambda _: sgld.init(params, config))(jnp.arange(E_pad))
  carry = Carry(state0, estimators.init_moments(E_pad, (len(probe_names),)),
                jnp.zeros((E_pad,), bool), jnp.full((E_pad,), -1, jnp.int32))
  carry = jax.tree.map(put_e, carry)
  keys_dev, comps_dev = put_e(keys), put_e(comps)

  base_schedule = mixing.BatchSchedule(num_rows(base), batch_size, seed, name="base data")
  probe_schedules = [mixing.BatchSchedule(num_rows(probes[d]), batch_size, seed, name=f"probe {d!r}")
                     for d in probe_names]
  bar = _progress_bar(progress, config.num_steps, label)

  def base_batches(steps):
    return _stack([_gather(base, base_schedule.indices(s)) for s in steps])

  # Burn-in.
  step = 0
  if config.num_burnin:
    burn = _compiled("burnin", loss_fn, plan, mesh)
    while step < config.num_burnin:
      n = min(burnin_per_chunk, config.num_burnin - step)
      steps = list(range(step, step + n)) + [step] * (burnin_per_chunk - n)
      state = burn(carry.state, keys_dev, comps_dev, masks_dev, anchor, put_r(base_batches(steps)),
                   np.int32(step), np.int32(n))
      carry = carry._replace(state=state)
      step += n
      if bar is not None:
        jax.block_until_ready(state)
        bar.update(n)

  # Draws, in chunks; the next chunk's batches are gathered while the device runs the current one.
  draw_fn = _compiled("draw", loss_fn, plan, mesh)
  S = config.steps_between_draws
  traces = {"loss": [], "phi": [], "star": [], "mala": []}

  def chunk_inputs(first_draw):
    n = min(draws_per_chunk, config.num_draws - first_draw)
    draws = list(range(first_draw, first_draw + n)) + [first_draw] * (draws_per_chunk - n)
    first = config.num_burnin + first_draw * S
    steps = [[config.num_burnin + d * S + i for i in range(S)] for d in draws]
    base_LxS = _stack([base_batches(row) for row in steps])
    if probe_names:
      eval_LxD = _stack([_stack([_gather(probes[d], sch.indices(row[0])[list(positions)])
                                 for d, sch in zip(probe_names, probe_schedules)]) for row in steps])
    else:
      eval_LxD = np.zeros((draws_per_chunk, 0), np.float32)
    return n, first, put_r(base_LxS), put_r(eval_LxD)

  first_draw = 0
  pending = chunk_inputs(0)
  while first_draw < config.num_draws:
    n, first, base_dev, eval_dev = pending
    carry, loss_b, phi_b, star_b, mala_b = draw_fn(
        carry, keys_dev, comps_dev, masks_dev, anchor, base_dev, eval_dev,
        np.int32(first), np.int32(first_draw), np.int32(n))
    next_draw = first_draw + n
    if next_draw < config.num_draws:
      pending = chunk_inputs(next_draw)
    traces["loss"].append(np.asarray(loss_b)[:n, :E])
    traces["phi"].append(np.asarray(phi_b)[:n, :E])
    traces["star"].append(np.asarray(star_b)[:n])
    traces["mala"].append(np.asarray(mala_b)[:n, :E])
    first_draw = next_draw
    if bar is not None:
      bar.update(n * S)
  if bar is not None and not hasattr(progress, "update"):
    bar.close()

  moments = estimators.to_numpy(jax.tree.map(lambda a: np.asarray(a)[:E], carry.moments))
  return SamplerOutput(moments, np.asarray(carry.diverged)[:E], np.asarray(carry.diverged_at)[:E],
                       np.concatenate(traces["loss"]), np.concatenate(traces["phi"]),
                       np.concatenate(traces["star"]), np.concatenate(traces["mala"]),
                       time.perf_counter() - t0)
