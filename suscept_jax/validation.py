"""Checks on what a user passes to the estimators, run before anything is compiled, so bad input gets an
error that names it (never a traceback from inside JAX, never a silent NaN)."""
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from suscept_jax import batched, masks, mixing, sgld, streams


# ---- validation --------------------------------------------------------------------------------------------

def check_params(params) -> None:
  leaves = jax.tree_util.tree_leaves_with_path(params)
  if not leaves:
    raise ValueError("params has no array leaves")
  for path, leaf in leaves:
    arr = np.asarray(leaf)
    if arr.dtype not in (np.float32, np.float64):
      raise TypeError(f"params leaf {masks.leaf_path(path)} has dtype {arr.dtype}; SGLD needs float32 (or float64) "
                      f"params, since its small steps vanish in fewer bits: cast them, e.g. "
                      f"jax.tree.map(lambda a: a.astype(jnp.float32), params) (lower-precision compute is the "
                      f"loss function's business)")
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"params leaf {masks.leaf_path(path)} contains NaN or inf "
                       f"({int(np.sum(~np.isfinite(arr)))} of {arr.size} values)")


PROBE_SIZE_WHY = ("(a mixed batch takes each of its positions from the probe's own batch of the same size, "
                  "Algorithm 1: repeat the probe's rows, e.g. with np.tile, if it is smaller)")


def check_dataset(name: str, data, batch_size: int, like=None, like_name: str = "the base data",
                  why_batch: str = "") -> int:
  leaves = jax.tree.leaves(data)
  if not leaves:
    raise ValueError(f"{name} is empty (no arrays)")
  scalars = sum(np.ndim(a) == 0 for a in leaves)
  if scalars:
    raise ValueError(f"{name}: every array needs a leading (sample) axis, but {scalars} of its {len(leaves)} leaves "
                     f"are scalars (a Python list is a pytree of scalars: pass an array)")
  sizes = {int(np.shape(a)[0]) for a in leaves}
  if len(sizes) != 1:
    raise ValueError(f"{name}: every array needs the same leading (sample) axis; got leading sizes {sorted(sizes)}")
  n = sizes.pop()
  if n == 0:
    raise ValueError(f"{name} is empty (0 samples)")
  if n < batch_size:
    raise ValueError(f"{name} has {n} samples, fewer than batch_size={batch_size}" + (f" {why_batch}" if why_batch
                                                                                    else ""))
  if like is not None:
    if jax.tree.structure(data) != jax.tree.structure(like):
      raise ValueError(f"{name} has pytree structure {jax.tree.structure(data)}, but {like_name} has "
                       f"{jax.tree.structure(like)}")
    for a, b in zip(leaves, jax.tree.leaves(like)):
      if np.shape(a)[1:] != np.shape(b)[1:] or np.asarray(a[:0]).dtype != np.asarray(b[:0]).dtype:
        raise ValueError(f"{name}: sample shape/dtype {np.shape(a)[1:]} {np.asarray(a[:0]).dtype} differs "
                         f"from that of {like_name}, {np.shape(b)[1:]} {np.asarray(b[:0]).dtype}")
  return n


def _output_of_two_rows(fn, params, data, failure: str):
  """The abstract output of fn(params, first 2 rows of data), or a ValueError that starts with `failure`."""
  sample = jax.tree.map(lambda a: np.asarray(a[:2]), data)
  try:
    return jax.eval_shape(fn, params, sample)
  except Exception as e:  # surface the user's own error with context
    raise ValueError(f"{failure}: {e}") from e


def check_loss_fn(loss_fn, params, base) -> None:
  out = _output_of_two_rows(loss_fn, params, base, "loss_fn(params, batch) failed on a batch of 2 base samples")
  if not hasattr(out, "shape") or tuple(out.shape) != (2,):
    raise ValueError(f"loss_fn must return per-sample losses of shape [B]; for B=2 it returned "
                     f"{getattr(out, 'shape', type(out))}")
  _check_float_losses(out, "loss_fn")


def _check_float_losses(out, name: str) -> None:
  """Losses must be floating point: an integer loss has a zero gradient (SGLD then sampled noise about w*: an
  LLC 6× too large, flagged only by R̂) and moves in whole units (χ from rounding)."""
  if not jax.numpy.issubdtype(out.dtype, jax.numpy.floating):
    raise ValueError(f"{name} must return floating-point losses; it returned {out.dtype} (a cast to an integer "
                     f"type?): an integer loss has no gradient and moves only in whole units")


def check_token_loss_fn(token_loss_fn, params, contexts) -> tuple:
  """token_loss_fn(params, contexts) must return per-token losses [B, J, ...]; returns the shape for B = 2."""
  out = _output_of_two_rows(token_loss_fn, params, contexts, "token_loss_fn(params, contexts) failed on 2 contexts")
  shape = tuple(getattr(out, "shape", ()))
  if len(shape) < 2 or shape[0] != min(2, len(jax.tree.leaves(contexts)[0])):
    raise ValueError(f"token_loss_fn must return per-token losses of shape [B, J]; for B=2 it returned "
                     f"{getattr(out, 'shape', type(out))}")
  _check_float_losses(out, "token_loss_fn")
  return shape


def sgld_config_or(config, default: sgld.SGLDConfig) -> sgld.SGLDConfig:
  """`config`, or `default` where it is None; anything but an SGLDConfig is an error naming what came."""
  if config is None:
    return default
  if not isinstance(config, sgld.SGLDConfig):
    raise TypeError(f"config must be a suscept_jax.SGLDConfig, not a {type(config).__name__}"
                    + (": SGLDConfig(**config) makes one from a dict" if isinstance(config, Mapping) else ""))
  return config


def check_seed(seed, name: str = "seed") -> None:
  """An integer in [0, 2**32) (`streams.check_key_id`); `name` is what the message calls it (a runner's flag)."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise TypeError(f"{name} must be an integer, not a {type(seed).__name__} (chains' keys derive from it, the "
                    f"component and the checkpoint: a JAX key is not taken)")
  streams.check_key_id(name, seed)


def check_batching(batch_size: int, microbatch_size) -> None:
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
  if microbatch_size is None or microbatch_size == "auto":
    return
  if not isinstance(microbatch_size, (int, np.integer)) or microbatch_size < 1:
    raise ValueError(f"microbatch_size={microbatch_size!r} must be a positive integer, 'auto' or None")


def check_count_or_none(name: str, value, none_means: str = "") -> None:
  """A size argument (contexts or samples at a time, …): a positive integer, or None (`none_means`)."""
  if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
    meaning = f" ({none_means})" if none_means else ""
    raise ValueError(f"{name}={value!r} must be a positive integer or None{meaning}")


def preflight(loss_fn, params, datasets: Mapping[str, Any], *, batch_size, num_streams, seed, checkpoint_id,
               config: sgld.SGLDConfig, microbatch_size) -> None:
  """Before compiling the sampler: the loss at w* must be finite on the first draw batches of the first
  (up to two) streams of every dataset, or the dataset is named with its faulty samples."""
  first_eval_step = config.num_burnin + config.steps_between_draws
  for name, data in datasets.items():
    indices = np.concatenate([
        mixing.BatchSchedule(batched.num_rows(data), batch_size, streams.stream_seed(seed, checkpoint_id, k),
                             name=name).indices(first_eval_step) for k in range(min(num_streams, 2))])
    faulty = batched.nonfinite_samples(loss_fn, params, data, indices, microbatch_size,
                                       rows=batched.check_rows(batch_size, num_streams))
    if faulty:
      raise batched.fault_at_w_star(name, faulty)


def check_full_is_full(components: Mapping[str, Any], params) -> None:
  mask = components["full"]
  if mask is None:
    return
  frozen = masks.count_free(masks.full_mask(params), params) - masks.count_free(
      masks.normalize_mask("full", mask, params), params)
  if frozen:
    raise ValueError(f"component 'full' must free every parameter (E[ΔL] in eq. 41 and the LLC are the full "
                     f"posterior's), but its mask freezes {frozen} of them; pass None for 'full'")
