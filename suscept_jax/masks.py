"""Component masks: which parameters a weight-restricted posterior lets move.

A mask is a pytree with the structure of the params whose leaves broadcast against the matching
parameter leaves: nonzero/True = free, zero/False = frozen at w*. `None` stands for "every parameter
free" (the full model). Masks are data, not structure: `stack_masks` gives every component's mask a
common per-leaf shape so one compiled sampler serves all components.

Nothing here knows about transformers; `suscept_jax.models.components` builds transformer masks on top.
"""
import re
from collections.abc import Mapping

import jax
import numpy as np


def leaf_path(path) -> str:
  """'blocks/0/attn/W_Q' for a jax key path."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def leaf_paths(tree) -> list[str]:
  """Slash-joined path of every leaf, in jax.tree.leaves order."""
  return [leaf_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def full_mask(params):
  """Every parameter free."""
  return jax.tree.map(lambda _: np.bool_(True), params)


def regex_mask(params, pattern: str):
  """Free exactly the leaves whose slash-joined path fully matches `pattern` (whole leaves).

  A pattern that matches no path is an error that lists the paths there are.
  """
  try:
    compiled = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"regex_mask: {pattern!r} is not a regular expression ({e})") from None
  mask = jax.tree_util.tree_map_with_path(
      lambda path, _: np.bool_(compiled.fullmatch(leaf_path(path)) is not None), params)
  if not any(jax.tree.leaves(mask)):
    paths = leaf_paths(params)
    shown = ", ".join(paths[:40]) + (f", … ({len(paths)} in all)" if len(paths) > 40 else "")
    raise ValueError(f"regex_mask: {pattern!r} matches no parameter path (it must match a whole path); "
                     f"the paths are: {shown}")
  return mask


def _as_bool(who: str, path: str, mask_leaf, param_leaf) -> np.ndarray:
  mask = np.asarray(mask_leaf)
  if mask.dtype.kind not in "biuf":
    raise TypeError(f"{who}: mask leaf {path} has dtype {mask.dtype}; expected bool or numbers")
  pshape = np.shape(param_leaf)
  try:
    np.broadcast_shapes(mask.shape, pshape)
  except ValueError:
    raise ValueError(f"{who}: mask leaf {path} has shape {mask.shape}, which does not "
                     f"broadcast against the parameter's shape {pshape}") from None
  if mask.ndim > len(pshape) or np.broadcast_shapes(mask.shape, pshape) != pshape:
    raise ValueError(f"{who}: mask leaf {path} has shape {mask.shape}, larger than the "
                     f"parameter's shape {pshape}")
  if mask.dtype.kind != "b":
    odd = mask[(mask != 0) & (mask != 1)]
    if odd.size:
      raise ValueError(f"{who}: mask leaf {path} holds values other than 0 and 1 (e.g. "
                       f"{odd.flat[0].item()!r}); a mask selects parameters (1 = free, 0 = frozen at w*), it does not "
                       f"scale them")
  return mask != 0


def _bool_leaves(who: str, mask, params) -> list:
  """The mask's leaves as bool arrays, in the params' leaf order (None -> all True), after checking that it
  has the params' leaves. Matched by path, not position: a flax FrozenDict mask fits dict params and the other
  way round, and a mask keyed by "2", "10" fits params keyed by 2, 10 (whose leaves come in another order)."""
  if mask is None:
    return [np.bool_(True)] * len(jax.tree.leaves(params))
  paths, mask_paths = leaf_paths(params), leaf_paths(mask)
  by_path = dict(zip(mask_paths, jax.tree.leaves(mask)))
  if sorted(mask_paths) != sorted(paths) or len(by_path) != len(paths):
    missing = sorted(set(paths) - set(mask_paths))
    extra = sorted(set(mask_paths) - set(paths))
    detail = (f"missing leaves: {missing[:5]}, unexpected leaves: {extra[:5]}" if missing or extra else
              f"two leaves of one path: {sorted(p for p in set(mask_paths) if mask_paths.count(p) > 1)[:5]}")
    raise ValueError(f"{who}: mask structure does not match the params structure ({detail})")
  return [_as_bool(who, path, by_path[path], p) for path, p in zip(paths, jax.tree.leaves(params))]


def normalize_mask(name: str, mask, params):
  """Check a mask against params and return it as a tree of bool arrays with the params' structure
  (None -> all True).

  Raises a clear error naming the component for a structure mismatch, a leaf that does not broadcast,
  or a mask that frees nothing.
  """
  leaves = _bool_leaves(f"component {name!r}", mask, params)
  if _free_per_leaf(leaves, params) == [0] * len(leaves):
    raise ValueError(f"component {name!r}: mask selects no parameters (every leaf frozen)")
  return jax.tree.unflatten(jax.tree.structure(params), leaves)


def _free_per_leaf(bool_leaves: list, params) -> list[int]:
  return [int(np.broadcast_to(m, np.shape(p)).sum()) for m, p in zip(bool_leaves, jax.tree.leaves(params))]


def count_free(mask, params) -> int:
  """Number of scalar parameters a mask frees (None: all of them); the mask is checked as the estimators
  check it."""
  return sum(_free_per_leaf(_bool_leaves("count_free", mask, params), params))


def preview(mask, params) -> list[tuple[str, tuple, int, int]]:
  """(path, shape, free count, total count) for each leaf the mask frees (None: every leaf): what a spec
  selects, the mask checked as the estimators check it."""
  free = _free_per_leaf(_bool_leaves("preview", mask, params), params)
  return [(path, tuple(np.shape(p)), f, int(np.prod(np.shape(p))))
          for path, p, f in zip(leaf_paths(params), jax.tree.leaves(params), free) if f]


def stack_masks(components: Mapping, params):
  """Validate every component's mask and stack them: (names, tree of bool arrays [C, *leaf_shape']).

  Each leaf gets the smallest shape every component's mask broadcasts to (a head mask on W_Q
  [H, D, Dh] stays [C, H, 1, 1]), so stacking costs almost no memory.
  """
  names = list(components)
  if not names:
    raise ValueError("components is empty: give at least {'full': None}")
  if unnamed := [n for n in names if not isinstance(n, str)]:
    raise TypeError(f"components: every name must be a string (it labels results and seeds chains); got "
                    f"{unnamed[:5]!r}")
  normalized = [normalize_mask(name, components[name], params) for name in names]
  flat = [jax.tree.leaves(m) for m in normalized]
  stacked = []
  for i, p in enumerate(jax.tree.leaves(params)):
    ndim = np.ndim(p)
    shapes = [(1,) * (ndim - m[i].ndim) + m[i].shape for m in flat]
    common = tuple(max(dims) for dims in zip(*shapes)) if ndim else ()
    stacked.append(np.stack([np.broadcast_to(m[i].reshape(s), common) for m, s in zip(flat, shapes)]))
  return names, jax.tree.unflatten(jax.tree.structure(params), stacked)
