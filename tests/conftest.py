"""Test set-up: 4 emulated CPU devices and a persistent compilation cache (set before jax is imported)."""
import os
import pathlib

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

_cache = pathlib.Path(os.environ.get("SUSCEPT_JAX_CACHE", pathlib.Path.home() / ".cache" / "suscept_jax")) / "jax_compilation"
jax.config.update("jax_compilation_cache_dir", str(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
