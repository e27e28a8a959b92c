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
