"""Cost that follows what is free: components grouped by the parameter leaves they free, one program each.

A group's program differentiates only its free leaves and holds the others at w* (`FreeView`), so XLA drops
the weight gradients of frozen leaves and the backward pass below the lowest free layer. On an entry grid
where each device holds whole components (`entry_grid`) the map over chains is outside the map over
components, so whatever depends on a chain's batch and w* alone (the embedding, every frozen layer below the
free ones) is computed once per chain, not once per component (`over_entries`). A layer-1 head of the
paper's model saves 13 % of its gradient's FLOPs this way, on top of what restricting the gradient saves.
The numbers do not change: a frozen coordinate never moves.

Finer than leaves: where every component of a program frees one slice along a leaf's first axis (an attention
head of W_Q [H, D, Dh]), a loss function that takes `free_slices=` is told which (`SliceLayout`, `FreeSlices`)
and may compute the frozen slices' part at w*, once per stream, and only the free slice per entry.

Shape letters: E entries (component-major (component, chain) pairs), C components, K streams (= chains),
F the free leaves' flattened coordinates (`FreeView`), G slice groups (`SliceLayout`).
"""
import functools
import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from suscept_jax import sgld


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


class FreeView:
  """A group's sampler state restricted to its free leaves: the flat vector [F] of their coordinates, in
  `ravel_pytree`'s order (F = P when every leaf is free).

  A head group of the demo frees 9 k of the 70 k coordinates: carrying, updating, pinning and summing
  (MALA) only those, and drawing noise only there, is what cost follows what is free asks of everything
  outside the gradient too. The loss functions still see the whole tree: `tree_of` fills the frozen leaves
  with w*. Built once per program, at trace time (its layout is static: the anchor's shapes).
  """

  def __init__(self, anchor, free):
    self.anchor = anchor  # w*, the parameter tree
    leaves, self._treedef = jax.tree.flatten(anchor)
    self._anchor_leaves = leaves
    self.free = tuple(free) if free is not None else (True,) * len(leaves)
    sizes = [int(np.size(a)) for a in leaves]
    ends = np.cumsum(sizes, dtype=np.int64)
    segments = []  # [start, end) of the free coordinates, neighbouring leaves merged
    for end, n, f in zip(ends, sizes, self.free):
      if f and n:
        if segments and segments[-1][1] == end - n:
          segments[-1] = (segments[-1][0], int(end))
        else:
          segments.append((int(end - n), int(end)))
    self.segments = tuple(segments)
    self.size = sum(b - a for a, b in self.segments)  # F
    self.anchor_F = self.ravel(anchor)  # w* at the free coordinates (in a program: once, where it is built)

  def columns(self) -> np.ndarray:
    """The free coordinates' indices into the flattened parameters [P] (host numpy)."""
    return np.concatenate([np.arange(a, b) for a, b in self.segments] or [np.zeros(0, np.int64)])

  def ravel(self, tree):
    """The free leaves of `tree` (shaped like the anchor) as one vector [F]."""
    return sgld.ravel([x for x, f in zip(jax.tree.leaves(tree), self.free) if f])

  def tree_of(self, position_F):
    """The parameter tree at `position_F`: free leaves from it, the others w* (constants to XLA)."""
    out, offset = [], 0
    for a, f in zip(self._anchor_leaves, self.free):
      if f:
        out.append(position_F[offset:offset + np.size(a)].reshape(np.shape(a)))
        offset += np.size(a)
      else:
        out.append(a)
    return self._treedef.unflatten(out)


def stream_rows(tree_K, stream_E):
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
    return jax.vmap(fn)(*entry_args, stream_rows(stream_data, stream_E))
  C, K = grid
  E = jax.tree.leaves(entry_args)[0].shape[0]
  if E != C * K:
    raise ValueError(f"over_entries: grid {grid} holds {C * K} entries, but the entry arguments have {E}")
  to_KxC = lambda a: jnp.swapaxes(a.reshape((C, K) + a.shape[1:]), 0, 1)
  from_KxC = lambda a: jnp.swapaxes(a, 0, 1).reshape((C * K,) + a.shape[2:])
  per_chain_K = jax.tree.map(lambda a: a[np.arange(K) % a.shape[0]], stream_data)
  over_components = lambda args_C, data: jax.vmap(lambda *args: fn(*args, data))(*args_C)
  return jax.tree.map(from_KxC, jax.vmap(over_components)(jax.tree.map(to_KxC, entry_args), per_chain_K))


class SliceLayout(NamedTuple):
  """Leaves of which each component of a program frees a single slice along axis 0 (static: part of the Plan).

  Leaves whose components free the same slice indices form one slice group (a head's W_Q, W_K, W_V, b_Q, b_K,
  b_V and W_O: one group per layer)."""

  group_of_leaf: tuple  # per parameter leaf: its slice group g, or None (frozen, freed whole, or freed unevenly)
  index_CxG: tuple  # per component of the program, per group: the index of the one slice it frees


def slice_layout(masks_C, params, free=None) -> SliceLayout | None:
  """The `SliceLayout` of stacked component masks (leaves [C, ...] broadcasting against `params`' leaves), over
  the leaves in `free` (None: all); None where no leaf qualifies.

  A leaf qualifies when every component frees coordinates in exactly one of its slices along axis 0 (and it has
  more than one): the other slices then hold w* throughout the run, since a masked coordinate never moves."""
  groups: dict = {}
  group_of_leaf = []
  for i, (m, p) in enumerate(zip(jax.tree.leaves(masks_C), jax.tree.leaves(params))):
    shape, group = np.shape(p), None
    if (free is None or free[i]) and len(shape) >= 1 and shape[0] > 1:
      freed_CxS = np.broadcast_to(np.asarray(m, bool), (np.shape(m)[0],) + shape).reshape(
          np.shape(m)[0], shape[0], -1).any(axis=-1)
      if (freed_CxS.sum(axis=1) == 1).all():
        group = groups.setdefault(tuple(freed_CxS.argmax(axis=1).tolist()), len(groups))
    group_of_leaf.append(group)
  if not groups:
    return None
  return SliceLayout(group_of_leaf=tuple(group_of_leaf), index_CxG=tuple(zip(*groups)))


@jax.tree_util.register_pytree_node_class
class FreeSlices:
  """What a loss function taking `free_slices=` is told at one entry: along axis 0 of a leaf in slice group g,
  only slice index_G[g] may differ from `anchor`; every other slice holds w*. Using it is optional (the loss
  must be the same either way, to rounding); `transformer.per_token_nll` computes a layer's frozen heads at w*
  (once per stream, where the layers below are frozen) and differentiates only the free head. A pytree whose
  groups are static, so a jitted loss function takes it too."""

  def __init__(self, anchor, group_of_leaf: tuple, index_G):
    self.anchor = anchor  # the parameter tree at w*
    self.group_of_leaf = tuple(group_of_leaf)  # per leaf of the anchor: its slice group (an int), or None
    self.index_G = index_G  # int32 [G]: this entry's free slice of each group (traced)

  @property
  def group(self):
    """A tree like the parameters: each leaf's slice group (an int), or None."""
    return jax.tree.unflatten(jax.tree.structure(self.anchor), list(self.group_of_leaf))

  def tree_flatten(self):
    return (self.anchor, self.index_G), self.group_of_leaf

  @classmethod
  def tree_unflatten(cls, group_of_leaf, children):
    return cls(children[0], group_of_leaf, children[1])


def accepts_free_slices(fn) -> bool:
  """Whether `fn` (a loss function, maybe a functools.partial) takes the keyword `free_slices`."""
  try:
    return "free_slices" in inspect.signature(fn).parameters
  except (TypeError, ValueError):  # (a callable without a signature)
    return False


def with_free_slices(fn, layout: SliceLayout | None, anchor, component):
  """`fn`, told the entry's `FreeSlices` (component: its index in the program, maybe traced) where it takes
  them and the program has a layout; else `fn` itself."""
  if layout is None or not accepts_free_slices(fn):
    return fn
  index_G = jnp.asarray(np.array(layout.index_CxG, np.int32))[component]
  return functools.partial(fn, free_slices=FreeSlices(anchor, layout.group_of_leaf, index_G))
