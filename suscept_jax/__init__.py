"""suscept_jax: susceptibilities of neural networks in JAX.

Kernel-level API (stable; see README):
  SGLDConfig, estimate_susceptibilities, estimate_llc, and mask helpers.
Names are imported on first use, so `import suscept_jax` (and the runners' --help) stays fast.
"""
import importlib

_EXPORTS = {
    "SGLDConfig": "suscept_jax.sgld_config",
    "estimate_susceptibilities": "suscept_jax.api", "estimate_llc": "suscept_jax.api",
    "SusceptibilityResult": "suscept_jax.api", "LLCResult": "suscept_jax.api", "ChiTable": "suscept_jax.estimators",
    "estimate_per_token_susceptibilities": "suscept_jax.per_token", "PerTokenResult": "suscept_jax.per_token",
    "estimate_bif": "suscept_jax.bif", "BIFResult": "suscept_jax.bif",
    "DataFaultError": "suscept_jax.batched", "SusceptibilityWarning": "suscept_jax.health",
    "full_mask": "suscept_jax.masks", "regex_mask": "suscept_jax.masks", "stack_masks": "suscept_jax.masks",
    "preview": "suscept_jax.masks", "count_free": "suscept_jax.masks", "leaf_paths": "suscept_jax.masks",
    "mix": "suscept_jax.mixing", "mixing_pattern": "suscept_jax.mixing", "probe_positions": "suscept_jax.mixing",
    "realised_fraction": "suscept_jax.mixing",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  try:
    return importlib.import_module(f"suscept_jax.{name}")  # submodules: sj.diagnostics, sj.toys, …
  except ModuleNotFoundError:
    raise AttributeError(f"module 'suscept_jax' has no attribute {name!r}") from None


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))
