"""`python -m experiments.analyze` from a checkout: runs suscept_jax_runners.analyze (the installed runner package)."""
import runpy

if __name__ == "__main__":
  runpy.run_module("suscept_jax_runners.analyze", run_name="__main__", alter_sys=True)
