"""XLA compiler options for our programs, per platform, and a jit that applies those of the platform it runs on.

On CPU, compilation is the larger half of a small job (the demo's dataset-level run: ≈ 10 of 24 s, three draw
programs of 250–340 fused kernels, each compiled by LLVM). LLVM at level 1 instead of 2 compiles them ≈ 25 %
faster, and the kernels' speed did not move beyond the machine's noise (BUILD_NOTES, "Scale, ninth session").
The small programs that run before sampling (the preflight's losses at w*, the chains' keys) compile about
twice as fast at level 1 (0.51 → 0.25 s and 0.38 → 0.17 s on the demo) and lie on a cold run's serial front
(BUILD_NOTES, "Twenty-second session"). Accelerators keep XLA's defaults. The options only change how a program
is compiled, never what it computes (tested: the same chains to rounding).
"""
import functools
import threading

import jax

CPU_BACKEND_OPTIMIZATION_LEVEL = 1  # LLVM's level for programs on CPU; None: XLA's default (2)


def for_platform(platform: str) -> dict:
  """The options for programs compiled for `platform` ("cpu", "gpu", "tpu", ...)."""
  if platform == "cpu" and CPU_BACKEND_OPTIMIZATION_LEVEL is not None:
    return {"xla_backend_optimization_level": CPU_BACKEND_OPTIMIZATION_LEVEL}
  return {}


def platform_jit(fn=None, **jit_kwargs):
  """`jax.jit(fn, **jit_kwargs)` compiled with `for_platform(jax.default_backend())`, looked up at each call (one
  jitted function per distinct options, kept). For the small programs outside the sampler's mesh, which run on
  the default device. `.jitted()` is the function the next call would use (for its cache)."""
  if fn is None:
    return functools.partial(platform_jit, **jit_kwargs)
  jitted_by_options: dict = {}
  lock = threading.Lock()

  def jitted():
    options = for_platform(jax.default_backend())
    key = tuple(sorted(options.items()))
    with lock:
      if key not in jitted_by_options:
        jitted_by_options[key] = jax.jit(fn, compiler_options=options or None, **jit_kwargs)
      return jitted_by_options[key]

  @functools.wraps(fn)
  def call(*args, **kwargs):
    return jitted()(*args, **kwargs)

  call.jitted = jitted
  return call
