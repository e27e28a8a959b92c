"""Per-sample losses, and the gradient of their mean, over batches evaluated a micro-batch at a time.

A batch of n rows is cut into micro-batches of `micro` rows (padded with copies of the first rows, which get
weight 0) whose gradients are summed exactly: micro-batching changes the summation order, never the maths.
A loss function maps (params, batch with leaves [n, ...]) to per-sample losses [n] (or per-token [n, J]).
"""

import jax
import jax.numpy as jnp
import numpy as np

from suscept_jax.compile_options import platform_jit
from suscept_jax.function_keys import Keyed, abstract, traced_key

MICROBATCH_AUTO = "auto"  # microbatch_size="auto": the sampler picks the largest that fits the devices (programs.py)


class DataFaultError(ValueError):
  """A dataset sample whose loss at w* is not finite: a fault of the data, not of the sampler."""


def fault_at_w_star(name: str, samples, where: str = "") -> DataFaultError:
  """The error for `samples` of dataset `name` whose loss at w* is not finite (`where`: the batch that met them),
  one wording for the preflight and the run's checks at w*."""
  samples = list(samples)
  listed = f"{samples[:20]}{' …' if len(samples) > 20 else ''}"
  return DataFaultError(f"{name}: the loss at w* (the checkpoint itself) is not finite for sample(s) {listed}"
                        f"{f' ({where})' if where else ''}: a fault of the data, not of the sampler. Remove or fix "
                        f"these samples.")

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


def flatten_rows(tree, lead: int):
  """Merge the first `lead` axes of every leaf into one row axis."""
  return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[lead:]), tree)


@platform_jit(static_argnums=(0, 3))
def compiled_losses(keyed_loss_fn: Keyed, params, batch, micro=None):
  """`losses_at` for a loss function already keyed (`keyed_by_trace`)."""
  return batched_losses(keyed_loss_fn, params, batch, micro)


def losses_at(loss_fn, params, batch, micro=None):
  """Per-sample (or per-token) losses of `batch` at `params`, compiled once per (what loss_fn computes, shapes):
  a fresh lambda of the same code reuses the program, a setting the code reads that has changed does not."""
  return compiled_losses(keyed_by_trace(loss_fn, params, batch), params, batch, micro)


def keyed_by_trace(loss_fn, params, batch) -> Keyed:
  """loss_fn keyed by what it computes on one row of `batch` (`function_keys.traced_key`); one already keyed is
  returned as it is (a caller evaluating several datasets of one sample structure traces once)."""
  if isinstance(loss_fn, Keyed):
    return loss_fn
  return Keyed(loss_fn, traced_key(loss_fn, params, first_row(batch)))


def first_row(data):
  """The shapes of data's first sample, as a batch of one."""
  return jax.tree.map(lambda a: abstract(a, (1,) + np.shape(a)[1:]), data)


def statistics_dtype(loss_fn, params, data) -> np.dtype:
  """The dtype of φ, ΔL, L_B(w*) and their moments for this loss: `statistics_dtype_of` its output's."""
  return statistics_dtype_of(jax.eval_shape(loss_fn, params, first_row(data)).dtype)


def statistics_dtype_of(loss_dtype) -> np.dtype:
  """float64 for a float64 loss (JAX's x64 mode: φ is a small difference of large losses, and the user asked for
  the precision), else float32 (a bfloat16 loss's statistics too)."""
  return np.dtype(np.float64) if np.dtype(loss_dtype) == np.float64 else np.dtype(np.float32)


def check_rows(batch_size: int, num_chains: int) -> int:
  """Rows per call of the checks at w* (the preflight's first batches of up to two streams, the sampler's
  `anchor_table`): one shape, so one compiled `compiled_losses` serves both."""
  return min(num_chains, 2) * batch_size


def sample_losses(loss_fn, params, data, indices, microbatch_size=None, rows: int | None = None) -> np.ndarray:
  """Losses at `params` of the samples `data[indices]` (host-side, in the order given). rows: evaluate exactly
  this many per call (the last call padded by repeating its first sample), so every caller with the same
  `rows` shares one compiled program; None: all in one call. microbatch_size "auto" evaluates whole rows."""
  indices = np.asarray(indices, np.int64)
  micro = None if microbatch_size == MICROBATCH_AUTO else microbatch_size
  per_call = rows or max(indices.size, 1)
  losses, keyed = [], keyed_by_trace(loss_fn, params, data)
  for start in range(0, indices.size, per_call):
    part = indices[start:start + per_call]
    evaluated = np.concatenate([part, np.full(per_call - part.size, part[0])])
    batch = jax.tree.map(lambda a: np.asarray(a[evaluated]), data)
    losses.append(np.asarray(compiled_losses(keyed, params, batch, micro))[:part.size])
  return np.concatenate(losses) if losses else np.zeros((0,), np.float32)


def nonfinite_samples(loss_fn, params, data, indices, microbatch_size=None, rows: int | None = None) -> list[int]:
  """The sample indices among `indices` whose loss at `params` is not finite (host-side check), evaluated as
  `sample_losses` does."""
  indices = np.unique(np.asarray(indices, np.int64))
  losses = sample_losses(loss_fn, params, data, indices, microbatch_size, rows)
  return [int(i) for i in indices[~np.isfinite(losses)]]
