"""`python -m experiments.train` from a checkout: runs suscept_jax_runners.train (the installed runner package)."""
import runpy

if __name__ == "__main__":
  runpy.run_module("suscept_jax_runners.train", run_name="__main__", alter_sys=True)
