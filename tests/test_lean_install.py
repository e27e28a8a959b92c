"""`pip install suscept_jax` (no extras) gives working kernels: they import and run with only the kernel
dependencies. The check runs the kernels in a fresh interpreter where every other third-party package
(Flax, optax, orbax, absl, datasets, tokenizers, TFDS, matplotlib, pandas, torch, …) fails to import,
exactly as in an environment that holds only the declared dependencies."""
import subprocess
import sys
import tomllib

from tests.helpers import REPO, env

# What the kernels may import: the declared dependencies and what they bring (jax -> jaxlib, ml_dtypes,
# opt_einsum, scipy).
KERNEL_DEPENDENCIES = {"jax", "numpy", "scipy", "tqdm"}
ALLOWED_TOP_LEVEL = KERNEL_DEPENDENCIES | {"jaxlib", "ml_dtypes", "opt_einsum", "suscept_jax"}

_SCRIPT = r"""
import importlib.abc, sys
allowed = set(sys.argv[1].split(","))
stdlib = set(sys.stdlib_module_names)

class OnlyKernelDependencies(importlib.abc.MetaPathFinder):
  # Wraps the path finder: outside the allowed packages and the standard library nothing is found, as if
  # it were not installed.
  def __init__(self, finder):
    self.finder = finder
  def find_spec(self, name, path=None, target=None):
    top = name.partition(".")[0]
    if top not in allowed and top not in stdlib and not top.startswith("_"):
      return None
    return self.finder.find_spec(name, path, target)
  def invalidate_caches(self):
    self.finder.invalidate_caches()

sys.meta_path[:] = [OnlyKernelDependencies(f) if getattr(f, "__name__", "") == "PathFinder" else f
                    for f in sys.meta_path]
try:
  import flax
  raise SystemExit("the blocker did not block flax")
except ModuleNotFoundError:
  pass

import numpy as np
import suscept_jax as sj
from suscept_jax import toys
for name in sj.__all__:  # every public kernel name resolves
  getattr(sj, name)
for module in ("diagnostics", "calibration", "toys", "models.interop", "models.config"):
  importlib.import_module("suscept_jax." + module)

rng = np.random.default_rng(0)
h = np.array([1.0, 2.0, 4.0])
base = toys.quadratic_dataset(rng, 64, h, 0.5)
probe = toys.quadratic_dataset(rng, 64, 2 * h, 0.5)
params = toys.quadratic_minimum(base)
cfg = sj.SGLDConfig(step_size=1e-3, num_chains=2, num_draws=10)
components = {"full": None, "first": {"w": np.array([1.0, 0.0, 0.0])}}
res = sj.estimate_susceptibilities(toys.quadratic_loss, params, components, base, {"probe": probe, "base": base},
                                   config=cfg, batch_size=20, progress=False)
assert res.chi.shape == (2, 2) and np.all(res.chi[1] == 0), res.chi
llc = sj.estimate_llc(toys.quadratic_loss, params, base, config=cfg, batch_size=20, progress=False)
assert np.isfinite(llc.mean)
token_loss = lambda p, contexts: toys.quadratic_loss(p, contexts)[:, None]
pt = sj.estimate_per_token_susceptibilities(toys.quadratic_loss, token_loss, params, components, base, probe,
                                            config=cfg, batch_size=20, progress=False)
assert pt.chi.shape[:2] == (2, 64)
loaded = sorted(m.partition(".")[0] for m in sys.modules if not m.startswith("_"))
print("third-party:", sorted(set(loaded) - stdlib - {"suscept_jax"}))
"""


def test_kernels_run_with_only_the_kernel_dependencies():
  proc = subprocess.run([sys.executable, "-c", _SCRIPT, ",".join(sorted(ALLOWED_TOP_LEVEL))], cwd=REPO, env=env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "third-party:" in proc.stdout


def test_the_declared_core_dependencies_are_the_kernel_dependencies():
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  name = lambda dep: dep.split(">")[0].split("=")[0].split("<")[0].strip().replace("-", "_")
  declared = {name(dep) for dep in project["dependencies"]}
  assert declared == KERNEL_DEPENDENCIES
  extras = project["optional-dependencies"]
  assert {"data", "runners", "analysis", "interop", "test"} <= set(extras)
