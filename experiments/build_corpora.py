"""`python -m experiments.build_corpora` from a checkout: runs suscept_jax_runners.build_corpora (the installed runner
package)."""
import runpy

if __name__ == "__main__":
  runpy.run_module("suscept_jax_runners.build_corpora", run_name="__main__", alter_sys=True)
