"""XLA compiler options for our programs, per platform, and a jit that applies those of the platform it runs on.

On CPU, compilation is the larger half of a small job (the demo's dataset-level run: ≈ 10 of 24 s, three draw
programs of 250–340 fused kernels, each compiled by LLVM). LLVM at level 1 instead of 2 compiles them ≈ 25 %
faster, and the kernels' speed did not move beyond the machine's noise (BUILD_NOTES, "Scale, ninth session").
The small programs that run before sampling (the preflight's losses at w*, the chains' keys) compile about
twice as fast at level 1 (0.51 → 0.25 s and 0.38 → 0.17 s on the demo) and lie on a cold run's serial front
(BUILD_NOTES, "Twenty-second session"). Accelerators keep XLA's defaults. The options only change how a program
is compiled, never what it computes (tested: the same chains to rounding).

CPU programs are also compiled with XLA:CPU's older LLVM IR fusion emitters instead of its MLIR ones
(`xla_cpu_use_fusion_emitters`). On the demo's side by side, alternated in fresh processes (three rounds), a cold
dataset-level run took 12.4–12.9 s against 15.1–15.4 s and a cold per-token run 22.5–23.6 s against 24.6–25.0 s;
compiled, the kernels run 5–13 % slower (6.8–7.1 against 6.2–6.6 s). The demo's sweep (5 checkpoints, each program
reused) took the same time (57.9 against 58.6 s) with the same table. The bare SGLD step runs 25 % slower, a
draw 11 %: for a long CPU job of a larger model set `CPU_FUSION_EMITTERS = True` before its first program compiles
(the runners' `--cpu_fusion_emitters`). A jaxlib whose XLA no longer knows the option keeps its default (`cpu_accepts`,
checked once).
"""
import functools
import threading

import jax
import numpy as np

CPU_BACKEND_OPTIMIZATION_LEVEL = 1  # LLVM's level for programs on CPU; None: XLA's default (2)
CPU_FUSION_EMITTERS = False  # XLA:CPU's MLIR fusion emitters (its default); False: the faster-compiling LLVM IR ones


def for_platform(platform: str) -> dict:
  """The options for programs compiled for `platform` ("cpu", "gpu", "tpu", ...)."""
  if platform != "cpu":
    return {}
  options = {}
  if CPU_BACKEND_OPTIMIZATION_LEVEL is not None:
    options["xla_backend_optimization_level"] = CPU_BACKEND_OPTIMIZATION_LEVEL
  if not CPU_FUSION_EMITTERS and cpu_accepts("xla_cpu_use_fusion_emitters", False):
    options["xla_cpu_use_fusion_emitters"] = False
  return options


@functools.cache
def cpu_accepts(option: str, value) -> bool:
  """Whether this jaxlib's XLA:CPU knows the compile option `option` (a trivial program compiled with it once
  per process: XLA refuses an option it does not know, "No such compile option")."""
  one = jax.device_put(np.float32(1), jax.local_devices(backend="cpu")[0])
  try:
    jax.jit(lambda x: x + 1, compiler_options={option: value}).lower(one).compile()
  except jax.errors.JaxRuntimeError as error:
    if "No such compile option" in str(error):
      return False
    raise
  return True


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
