"""`python -m experiments.calibrate` from a checkout: runs suscept_jax_runners.calibrate (the installed runner
package)."""
import runpy

if __name__ == "__main__":
  runpy.run_module("suscept_jax_runners.calibrate", run_name="__main__", alter_sys=True)
