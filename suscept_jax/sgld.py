"""Pure SGLD kernels for the localized tempered posterior  p(w) ∝ exp(−nβ·L(w) − γ/2·‖w − w*‖²).

Same update and constants as devinterp, so hyperparameters transfer (Lau et al. form):

  SGLD:          w ← w + m ⊙ ( −(ε/2)·(nβ·∇L_B(w) + γ·(w − w*) + λ·w) + √ε·σ·ξ )
  RMSProp-SGLD:  V ← αV + (1−α)·(∇L_B)²,  G = 1/(√V + eps)
                 w ← w + m ⊙ ( −(ε/2)·G·(nβ·∇L_B(w) + γ·(w − w*) + λ·w) + √(εG)·σ·ξ )

m is the component mask: it multiplies the whole update (drift and noise), and frozen coordinates are
kept bit-exact with `where`. Kernels are pure functions of arrays; the driver (sampler.py) owns
batching, keys, vmap and sharding. No Flax, no absl here.

ε, nβ and γ travel as `Hyper` (arrays, so a vmapped grid of settings runs as one program); everything
else in `SGLDConfig` is static structure. `hyper=None` takes them from the config.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from suscept_jax.sgld_config import SAMPLERS, SGLDConfig  # noqa: F401  (SGLDConfig is part of this module's API)

class Hyper(NamedTuple):
  """The hyperparameters that may differ between entries of one vectorized run (scalars or [E])."""

  step_size: Any  # ε
  nbeta: Any  # nβ
  localization: Any  # γ


def hyper_of(config: SGLDConfig) -> Hyper:
  return Hyper(config.step_size, config.nbeta, config.localization)


class SGLDState(NamedTuple):
  """One chain's sampler state. `square_avg` is () for plain SGLD."""

  position: Any
  square_avg: Any


def init(position, config: SGLDConfig) -> SGLDState:
  """Chain state at w (normally w*)."""
  square_avg = jax.tree.map(jnp.zeros_like, position) if config.sampler == "rmsprop_sgld" else ()
  return SGLDState(position, square_avg)


NOISE_BLOCK = 1024  # flat coordinates per independently keyed block of noise (`standard_normal_at`)


def standard_normal_at(key, segments, dtype=jnp.float32):
  """N(0, 1) noise at the flat coordinates of `segments` (static [start, end) ranges, ascending, disjoint),
  concatenated, such that coordinate j's value depends only on (key, j): block j // NOISE_BLOCK is drawn from
  fold_in(key, block), every block the segments touch in one RNG call.

  A program that moves a few coordinates (a head group's 9 k of the demo's 70 k) draws only their blocks
  (drawing all of every entry's was up to a quarter of the demo's run), and its noise there equals that of a
  program moving them all, so restricted chains equal full ones.
  """
  segments = [(int(a), int(b)) for a, b in segments if b > a]
  blocks = np.unique(np.concatenate([np.arange(a // NOISE_BLOCK, (b - 1) // NOISE_BLOCK + 1) for a, b in segments]
                                    or [np.zeros(0, np.int64)]))
  draw = lambda b: jax.random.normal(jax.random.fold_in(key, b), (NOISE_BLOCK,), dtype)
  drawn = jax.vmap(draw)(jnp.asarray(blocks, jnp.uint32)).ravel()
  # Every block between a segment's first and last is drawn, so its coordinates lie contiguous in `drawn`.
  starts = [int(np.searchsorted(blocks, a // NOISE_BLOCK)) * NOISE_BLOCK + a % NOISE_BLOCK for a, _ in segments]
  pieces = [drawn[s:s + b - a] for s, (a, b) in zip(starts, segments)]
  return jnp.concatenate(pieces) if pieces else jnp.zeros((0,), dtype)


def standard_normal_like(key, tree):
  """N(0, 1) noise shaped like `tree`: `standard_normal_at` over all of its flat coordinates (`ravel_pytree`'s
  order), so a program drawing only some of them gets the same values there."""
  flat, unravel = ravel_pytree(tree)
  return unravel(standard_normal_at(key, [(0, flat.size)], flat.dtype))


def preconditioner(state: SGLDState, grad, config: SGLDConfig):
  """(new square_avg, G) — G is None for plain SGLD."""
  if config.sampler != "rmsprop_sgld":
    return (), None
  a = config.rmsprop_alpha
  square_avg = jax.tree.map(lambda v, g: a * v + (1 - a) * g * g, state.square_avg, grad)
  return square_avg, preconditioner_of(square_avg, config)


def preconditioner_of(square_avg, config: SGLDConfig):
  """G = 1/(√V + eps) from the squared-gradient average V; None for plain SGLD."""
  if config.sampler != "rmsprop_sgld":
    return None
  return jax.tree.map(lambda v: 1.0 / (jnp.sqrt(v) + config.rmsprop_eps), square_avg)


def drift(position, grad, anchor, config: SGLDConfig, hyper: Hyper | None = None):
  """∇ of the energy U = nβ·L + γ/2·‖w − w*‖² + λ/2·‖w‖², given ∇L."""
  h = hyper or hyper_of(config)
  return jax.tree.map(
      lambda w, g, w0: h.nbeta * g + h.localization * (w - w0) + config.weight_decay * w,
      position, grad, anchor)


def step(state: SGLDState, grad, noise, anchor, mask, config: SGLDConfig, hyper: Hyper | None = None) -> SGLDState:
  """One SGLD / RMSProp-SGLD update; `grad` = ∇L_B(w) (batch mean), `noise` ~ N(0, I) like w."""
  h = hyper or hyper_of(config)
  square_avg, precond = preconditioner(state, grad, config)
  force = drift(state.position, grad, anchor, config, h)
  half_eps, sqrt_eps = 0.5 * h.step_size, jnp.sqrt(h.step_size)
  sigma = config.noise_level
  if precond is None:
    update = jax.tree.map(lambda f, xi: -half_eps * f + sqrt_eps * sigma * xi, force, noise)
  else:
    update = jax.tree.map(lambda f, xi, g: -half_eps * g * f + sqrt_eps * sigma * jnp.sqrt(g) * xi,
                          force, noise, precond)
  proposed = jax.tree.map(jnp.add, state.position, update)
  if config.bounding_box is not None:
    b = config.bounding_box
    proposed = jax.tree.map(lambda w, w0: jnp.clip(w, w0 - b, w0 + b), proposed, anchor)
  position = jax.tree.map(lambda w, new, m: jnp.where(m, new, w), state.position, proposed, mask)
  if precond is not None:
    square_avg = jax.tree.map(lambda v_new, v_old, m: jnp.where(m, v_new, v_old),
                              square_avg, state.square_avg, mask)
  return SGLDState(position, square_avg)


def energy(loss, position, anchor, config: SGLDConfig, hyper: Hyper | None = None):
  """U(w) = nβ·L(w) + γ/2·‖w − w*‖² + λ/2·‖w‖² for a batch loss value L(w)."""
  h = hyper or hyper_of(config)
  sq = lambda t: sum(jnp.vdot(x, x) for x in jax.tree.leaves(t))
  diff = jax.tree.map(jnp.subtract, position, anchor)
  return h.nbeta * loss + 0.5 * h.localization * sq(diff) + 0.5 * config.weight_decay * sq(position)


class Evaluated(NamedTuple):
  """A position with its batch loss and the gradient of that loss: what MALA's log-ratio needs at each end of a
  move (both ends on the move's own batch)."""

  position: Any
  loss: Any  # L_B(position)
  grad: Any  # ∇L_B(position), shaped like position


def mala_half(frm: Evaluated, to, anchor, mask, precond, config: SGLDConfig, hyper: Hyper | None = None):
  """U(frm) − log q(to | frm): the part of the MALA log-ratio computed at `frm`.

  log α(w → w') = half(w, w') − half(w', w), so a sampler can compute each half when it has that point's
  gradient (the second from one more gradient at w' on the same batch, `chunks._block_moves`) and keep only a
  scalar and w in between.
  Computed on the flattened parameters: one fused pass instead of a few per leaf (much less to compile).
  """
  h = hyper or hyper_of(config)
  eps = h.step_size * config.noise_level ** 2
  w, w_to, g, w0 = (ravel(t) for t in (frm.position, to, frm.grad, anchor))
  free = ravel(jax.tree.map(lambda m, x: jnp.broadcast_to(m, jnp.shape(x)), mask, frm.position))
  precond = ravel(precond) if precond is not None else 1.0
  proposal_sq = (w_to - w + 0.5 * h.step_size * precond * drift(w, g, w0, config, h)) ** 2 / precond
  log_q = -jnp.sum(jnp.where(free, proposal_sq, 0.0)) / (2 * eps)  # log density (up to a constant) of `to`
  return energy(frm.loss, w, w0, config, h) - log_q


def ravel(tree):
  """The leaves of `tree` flattened into one vector, in `ravel_pytree`'s order (a bare array: itself, raveled).
  Host numpy leaves give a numpy vector (outside a program, eager jnp would compile a program per leaf shape)."""
  xp = np if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(tree)) else jnp
  leaves = [xp.ravel(x) for x in jax.tree.leaves(tree)]
  return leaves[0] if len(leaves) == 1 else xp.concatenate(leaves)


def acceptance_of(log_ratio):
  """min(1, exp(log α)), safe for any log α."""
  return jnp.minimum(1.0, jnp.exp(jnp.minimum(log_ratio, 0.0)))


def mala_acceptance(before: Evaluated, after: Evaluated, anchor, mask, precond, config: SGLDConfig,
                    hyper: Hyper | None = None):
  """Metropolis-adjusted acceptance probability of the move before → after (a diagnostic; healthy ≈ 0.9).

  Both losses and gradients must come from the same batch. The proposal is the (preconditioned)
  Langevin step restricted to the free coordinates; G is held fixed over the move.
  """
  there = mala_half(before, after.position, anchor, mask, precond, config, hyper)
  back = mala_half(after, before.position, anchor, mask, precond, config, hyper)
  return acceptance_of(there - back)
