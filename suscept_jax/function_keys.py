"""Cache keys for functions by what they compute, not by object identity.

The sampler's compiled programs (`programs`) and the small compiled evaluations at w* (`batched.losses_at`) are
kept across calls; a user writes a fresh lambda per call, or changes a setting the loss function reads between
calls. `function_key` keys the code and what it closes over or reads as a global, cheaply; `traced_key` keys
what a fresh trace of the function computes, which also sees state read through attributes. `Keyed` carries
a function with such a key, for `jax.jit`'s static arguments.
"""
import functools
import hashlib
import inspect
import types

import jax
import jax.numpy as jnp
import numpy as np


def function_key(fn, _depth: int = 0):
  """A hashable key, equal for functions that compute the same thing: the same code, defaults, closed-over
  values and the module globals the code reads (functions among them keyed the same way), and bound object. So
  `lambda p, b: loss(p, b, cfg)` written anew for every call keys the same while `cfg` is the same; a function
  reading something unhashable (an array, a list) keys by identity. Globals count because a notebook changes
  them between calls: without them a fresh lambda reading a changed global reused the old program (its
  numbers came from the old value, silently)."""
  if _depth > 4:
    return fn
  if isinstance(fn, functools.partial):
    key = ("partial", function_key(fn.func, _depth + 1), fn.args, tuple(sorted(fn.keywords.items())))
  elif inspect.ismethod(fn):
    key = ("method", function_key(fn.__func__, _depth + 1), fn.__self__)
  elif isinstance(fn, types.FunctionType):
    cells = tuple(function_key(c, _depth + 1) if callable(c) else c
                  for c in (_cell_value(cell) for cell in fn.__closure__ or ()))
    key = ("function", fn.__code__, fn.__defaults__, tuple(sorted((fn.__kwdefaults__ or {}).items())), cells,
           tuple((name, function_key(value, _depth + 1) if callable(value) else value)
                 for name, value in _globals_read(fn.__code__, fn.__globals__)))
  else:
    return fn  # other callables: their own equality
  try:
    hash(key)
  except TypeError:
    return fn
  return key


def traced_key(fn, *example_args, gradient: bool = False) -> str:
  """A digest of what `fn` computes at the example arguments' shapes: its freshly traced jaxpr and the bytes of
  its constants. `chunks.Plan.traced` holds it, so the program cache sees state that `function_key` cannot: a
  value the code reads through an attribute (a settings object, a bound method's `self`) changed between calls
  used to rerun the program traced with the old value, silently. Traced through a fresh wrapper, as JAX caches
  traces by function identity and would hand back the stale one. With `gradient`, the trace of the gradient
  with respect to the first argument is digested too: a custom_jvp or custom_vjp rule (absent from the forward
  trace) is part of what the SGLD step computes, and a setting only such a rule read, changed, reran the old
  chains. Costs 0.01 s (forward) and 0.06 s (with the gradient) for the demo's loss on an idle core (0.11 and
  0.5 s with two draw programs compiling beside it), 0.05 and 0.27 s for the paper model's; a sampler run
  traces once for all its programs (`sampler.trace_functions`)."""
  return traced_keys(fn, *example_args, gradient=gradient)[-1]


def traced_keys(fn, *example_args, gradient: bool = True) -> tuple[str, ...]:
  """(`traced_key` of the forward[, `traced_key` with the gradient]) from one trace of the forward: for a caller
  that needs both (the sampler: its forward programs' key and its draw program's)."""
  args = jax.tree.map(abstract, example_args)
  digest = hashlib.blake2b(digest_size=16)
  _digest_jaxpr(digest, jax.make_jaxpr(lambda *a: fn(*a))(*args))
  forward = digest.hexdigest()  # (the digest goes on from here: hexdigest does not end it)
  if not gradient:
    return (forward,)
  summed = lambda first, *rest: jnp.sum(fn(first, *rest))
  try:
    closed = jax.make_jaxpr(jax.grad(summed, allow_int=True))(*args)
  except Exception:  # noqa: BLE001 (a loss that cannot be differentiated fails where the step differentiates it)
    digest.update(b"no gradient")
  else:
    _digest_jaxpr(digest, closed)
  return forward, digest.hexdigest()


def _digest_jaxpr(digest, closed) -> None:
  digest.update(str(closed.jaxpr).encode())
  for const in closed.consts:
    const = np.ascontiguousarray(const)
    digest.update(f"{const.shape}{const.dtype}".encode())
    digest.update(const.tobytes())


def abstract(a, shape=None) -> jax.ShapeDtypeStruct:
  """`a`'s shape (or `shape`) and dtype, without its values (an array, a numpy scalar, or a Python number)."""
  return jax.ShapeDtypeStruct(np.shape(a) if shape is None else shape,
                              getattr(a, "dtype", None) or np.asarray(a).dtype)


def _globals_read(code, namespace: dict) -> list:
  """(name, value) of the module globals that `code` (or a function defined inside it) reads, by name."""
  names = set(code.co_names)
  stack = [c for c in code.co_consts if isinstance(c, types.CodeType)]
  while stack:
    inner = stack.pop()
    names.update(inner.co_names)
    stack += [c for c in inner.co_consts if isinstance(c, types.CodeType)]
  return [(name, namespace[name]) for name in sorted(names) if name in namespace]


def _cell_value(cell):
  try:
    return cell.cell_contents
  except ValueError:  # a cell not yet assigned
    return cell


class Keyed:
  """`fn` hashed and compared by `key` (e.g. its `traced_key`): a static argument of a jitted function that is
  compiled again exactly when what `fn` computes changes, and not for a fresh lambda of the same code."""

  def __init__(self, fn, key):
    self.fn, self.key = fn, key

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)

  def __hash__(self):
    return hash(self.key)

  def __eq__(self, other):
    return isinstance(other, Keyed) and other.key == self.key
