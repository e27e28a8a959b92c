"""suscept_jax: susceptibilities of neural networks in JAX.

Kernel-level API (stable; see README):
  SGLDConfig, estimate_susceptibilities, estimate_llc, and mask helpers.
"""
from suscept_jax.api import ChiTable, LLCResult, SusceptibilityResult, estimate_llc, estimate_susceptibilities
from suscept_jax.health import SusceptibilityWarning
from suscept_jax.masks import count_free, full_mask, leaf_paths, preview, regex_mask, stack_masks
from suscept_jax.mixing import mix, mixing_pattern, probe_positions, realised_fraction
from suscept_jax.sampler import DataFaultError
from suscept_jax.sgld import SGLDConfig

__all__ = [
    "SGLDConfig", "estimate_susceptibilities", "estimate_llc", "SusceptibilityResult", "LLCResult", "ChiTable",
    "DataFaultError", "SusceptibilityWarning", "full_mask", "regex_mask", "stack_masks", "preview", "count_free", "leaf_paths",
    "mix", "mixing_pattern", "probe_positions", "realised_fraction",
]
__version__ = "0.1.0"
