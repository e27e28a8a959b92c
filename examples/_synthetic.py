"""Token data with structure for the examples: sequences from two Markov chains of different character.

`base` mixes both chains (the training distribution q); the probe `chain_b` holds only the second one, so
more of it nudges the posterior in a definite direction; `base_again` (the base data itself) has χ = 0.

Shape letters: N sequences, T token positions, V vocabulary (the chain's states), C components,
O observed contexts.
"""
import numpy as np

VOCAB = 16
LENGTH = 12  # tokens per context (the models predict LENGTH - 1 of them)


def markov_chain(chain: int, n: int, *, sample_seed: int = 0, vocab: int = VOCAB, length: int = LENGTH,
                 concentration: float = 0.2):
  """int32 [n, length]: sequences from random Markov chain number `chain` (sparse for small concentration)."""
  transitions_VxV = np.random.default_rng(chain).dirichlet(np.full(vocab, concentration), size=vocab)
  rng = np.random.default_rng([chain, sample_seed])
  tokens_NxT = np.zeros((n, length), np.int32)
  tokens_NxT[:, 0] = rng.integers(vocab, size=n)
  for t in range(1, length):
    cumulative_NxV = transitions_VxV[tokens_NxT[:, t - 1]].cumsum(axis=1)
    tokens_NxT[:, t] = (rng.random(n)[:, None] < cumulative_NxV).argmax(axis=1)
  return tokens_NxT


def datasets(n: int = 512, seed: int = 0) -> tuple[np.ndarray, dict]:
  """(base [n, LENGTH], probes {name: [n, LENGTH]})."""
  take_a = np.random.default_rng(seed).random(n)[:, None] < 0.5
  base = np.where(take_a, markov_chain(0, n, sample_seed=seed), markov_chain(1, n, sample_seed=seed))
  return base, {"chain_b": markov_chain(1, n, sample_seed=seed + 1), "base_again": base}


def report(name: str, res, per_token, llc) -> dict:
  """Print what an example measured and return it as plain numbers (what tests check)."""
  print(f"\n== {name}: χ ± s.e. (probe × component)")
  for p, probe in enumerate(res.probe_names):
    cells = "  ".join(f"{c}: {res.chi[p, i]:+.2e} ± {res.chi_stderr[p, i]:.1e}"
                      for i, c in enumerate(res.component_names))
    print(f"  {probe:11s} {cells}")
  print("  weight-refined LLC per component (same chains):",
        "  ".join(f"{c}: {v:.3f}" for c, v in zip(res.component_names, res.llc)))
  chi_CxOxT = np.asarray(per_token.chi)
  c, o, t = np.unravel_index(np.abs(chi_CxOxT).argmax(), chi_CxOxT.shape)
  print(f"  per-token χ {chi_CxOxT.shape} (component × context × position); largest |χ|: "
        f"{chi_CxOxT[c, o, t]:+.2e} at {per_token.component_names[c]}, context {o}, position {t}")
  print(f"  LLC: {llc.mean:.3f} ± {llc.stderr:.3f}")
  return {"chi": np.asarray(res.chi), "chi_stderr": np.asarray(res.chi_stderr), "probe_names": list(res.probe_names),
          "component_names": list(res.component_names), "per_token_chi": chi_CxOxT, "llc": float(llc.mean),
          "llc_stderr": float(llc.stderr)}
