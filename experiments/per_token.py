"""`python -m experiments.per_token` from a checkout: runs suscept_jax_runners.per_token (the installed runner
package)."""
import runpy

if __name__ == "__main__":
  runpy.run_module("suscept_jax_runners.per_token", run_name="__main__", alter_sys=True)
