"""Checkout-only shims so the README's `python -m experiments.<runner>` commands keep working.

The runners themselves live in `suscept_jax_runners` (installed with the package; a name that cannot
collide with another project's `experiments`). This directory is not installed.
"""
