"""Device meshes for the sampler: the (component × chain) entry axis is split across devices; the shard_map that
splits it."""
import math

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, PartitionSpec

ENTRY_AXIS = "entries"


def entry_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of every host) named ENTRY_AXIS.

  On a TPU v4-8 VM this spans its four chips; with several hosts, every host must call with the same
  device list (jax.devices() is global under jax.distributed).
  """
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("entry_mesh: no devices given")
  return jax.make_mesh((len(devices),), (ENTRY_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def as_entry_mesh(mesh=None) -> Mesh:
  """The mesh the sampler runs on: None gives `entry_mesh()`; a 1-D mesh named ENTRY_AXIS is used as is; any
  other `jax.sharding.Mesh` (any axis names, any shape) is flattened into a 1-D entry mesh over the same
  devices, since the sampler splits one axis (component × chain) over every device it is given."""
  if mesh is None:
    return entry_mesh()
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh (or None for all devices), got {type(mesh).__name__}")
  if tuple(mesh.axis_names) == (ENTRY_AXIS,):
    return mesh
  return entry_mesh(list(mesh.devices.flat))


def shard_map_without_empty(fn, *, mesh: Mesh, in_specs, out_specs, **shard_map_kwargs):
  """`jax.shard_map(fn, ...)` with its zero-size array arguments and results kept out of the mapped
  computation: those inputs are made again inside as zeros of their per-device shape, those outputs outside as
  zeros of their whole shape. Call it under `jax.jit` (traced, not eagerly).

  Why: jaxlib 0.11.2's partitioner (Shardy) crashes the process (a segmentation fault while compiling) when a
  zero-size input of a shard_map over two or more devices is returned, also through a loop's carry. A run
  without probes carries [E, 0] moments through every chunk. Zero-size arrays hold no numbers: nothing changes
  but what the compiler sees."""
  def splits(spec, ndim: int) -> list:  # how many devices share each axis of an array with this spec
    named = list(spec) + [None] * (ndim - len(spec))
    return [1 if n is None else math.prod(mesh.shape[a] for a in (n if isinstance(n, tuple) else (n,))) for n in named]

  def call(*args):
    traced = {}  # set while `fn` is traced: its output's structure and its zero-size outputs' whole shapes
    leaves, treedef = jax.tree.flatten(args)
    specs = _spec_per_leaf(in_specs, args)

    def inner(*holed_args):
      given = iter(jax.tree.leaves(holed_args))
      full = [jnp.zeros([d // k for d, k in zip(x.shape, splits(spec, x.ndim))], x.dtype) if _empty(x) else next(given)
              for x, spec in zip(leaves, specs)]
      out = fn(*jax.tree.unflatten(treedef, full))
      out_leaves, traced["tree"] = jax.tree.flatten(out)
      traced["zeros"] = {i: ([d * k for d, k in zip(x.shape, splits(spec, x.ndim))], x.dtype)
                         for i, (x, spec) in enumerate(zip(out_leaves, _spec_per_leaf(out_specs, out))) if _empty(x)}
      return jax.tree.unflatten(traced["tree"], [None if i in traced["zeros"] else x for i, x in enumerate(out_leaves)])

    mapped = jax.shard_map(inner, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **shard_map_kwargs)
    given = iter(jax.tree.leaves(mapped(*jax.tree.unflatten(treedef, [None if _empty(x) else x for x in leaves]))))
    zeros = traced["zeros"]
    return jax.tree.unflatten(traced["tree"], [jnp.zeros(*zeros[i]) if i in zeros else next(given)
                                               for i in range(traced["tree"].num_leaves)])

  call.__name__ = getattr(getattr(fn, "func", fn), "__name__", "mapped")  # (names the compiled program)
  return call


def _empty(x) -> bool:
  return getattr(x, "size", 1) == 0


def _spec_per_leaf(specs, tree) -> list:
  """The PartitionSpec of each leaf of `tree` (in `jax.tree.leaves` order), `specs` being a prefix of it."""
  is_spec = lambda s: isinstance(s, PartitionSpec)  # noqa: E731
  per_leaf = jax.tree.map(lambda spec, sub: jax.tree.map(lambda _: spec, sub), specs, tree, is_leaf=is_spec)
  return jax.tree.leaves(per_leaf, is_leaf=is_spec)
