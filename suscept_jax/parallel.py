"""Device meshes for the sampler: the (component × chain) entry axis is split across devices."""
import jax
from jax.sharding import AxisType, Mesh

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
