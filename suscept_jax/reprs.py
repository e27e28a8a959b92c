"""Short reprs for result objects: a printed result shows its numbers and the shapes of its arrays, not the
thousands of values of its traces (the dataclass default printed every one)."""
import dataclasses

import numpy as np

_SHOWN = 8  # arrays with more values than this print as dtype[shape]


def compact_repr(result) -> str:
  """`Name(field=value, …)` with large arrays as dtype[shape], floats to 4 digits, long containers counted."""
  return f"{type(result).__name__}(" + ", ".join(
      f"{f.name}={_short(getattr(result, f.name))}" for f in dataclasses.fields(result)) + ")"


def _short(value) -> str:
  if isinstance(value, float | np.floating):
    return f"{value:.4g}"
  if hasattr(value, "shape") and hasattr(value, "dtype"):  # numpy and JAX arrays
    if np.size(value) > _SHOWN:
      return f"{value.dtype}{list(value.shape)}"
    array = np.asarray(value)
    if array.dtype == object:  # (statuses)
      return repr(array.tolist())
    return np.array2string(array, precision=4, separator=", ", max_line_width=10**6)
  if isinstance(value, tuple) and hasattr(value, "_fields"):  # NamedTuples of arrays (moments)
    return f"{type(value).__name__}({', '.join(value._fields)})"
  if isinstance(value, dict) and len(value) > _SHOWN // 2 or isinstance(value, list) and len(value) > _SHOWN:
    return f"<{len(value)} {'entries' if isinstance(value, dict) else 'items'}>"
  if isinstance(value, dict):
    return "{" + ", ".join(f"{k!r}: {_short(v)}" for k, v in value.items()) + "}"
  return repr(value)
