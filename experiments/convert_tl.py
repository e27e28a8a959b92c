"""`python -m experiments.convert_tl` from a checkout: runs suscept_jax_runners.convert_tl (the installed runner
package)."""
import runpy

if __name__ == "__main__":
  runpy.run_module("suscept_jax_runners.convert_tl", run_name="__main__", alter_sys=True)
