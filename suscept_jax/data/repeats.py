"""Contexts with a repeated span: the data on which induction heads form and matter.

A chosen row of K tokens gets one span of L ~ U{min_len..max_len} uniform random tokens at s1 and the same
tokens again at s2 ≥ s1 + L; the rest stays real text. A model predicts the second copy only by looking
back at the first (induction). The demo trains on pile with 75 % of its rows so marked (its heads then
specialise: a previous-token and an induction head form between steps 1300 and 1600), and probes with
`repeats:<spec>`, every row marked.
"""
import numpy as np

PREFIX = "repeats:"


def add_repeated_spans(contexts_NxK, fraction: float, *, seed: int, min_len: int, max_len: int,
                       d_vocab: int) -> np.ndarray:
  """A copy of the contexts in which each row, independently with probability `fraction`, carries one
  repeated span of random tokens in [0, d_vocab)."""
  out = np.array(contexts_NxK, dtype=np.int32, copy=True)
  n, k = out.shape
  if not 1 <= min_len <= max_len or 2 * max_len > k:
    raise ValueError(f"repeated spans of {min_len}..{max_len} tokens need 1 <= min_len <= max_len and 2·max_len <= "
                     f"the context's {k} tokens")
  if not 0 <= fraction <= 1:
    raise ValueError(f"fraction={fraction} must lie in [0, 1]")
  rng = np.random.default_rng(seed)
  rows = np.flatnonzero(rng.random(n) < fraction)
  for r, length in zip(rows, rng.integers(min_len, max_len + 1, len(rows))):
    s1 = rng.integers(0, k - 2 * length + 1)
    s2 = rng.integers(s1 + length, k - length + 1)
    out[r, s1:s1 + length] = rng.integers(0, d_vocab, length)
    out[r, s2:s2 + length] = out[r, s1:s1 + length]
  return out


def split_spec(spec: str) -> tuple[str, bool]:
  """('pile', True) for 'repeats:pile'; (spec, False) otherwise."""
  if spec == PREFIX:
    raise ValueError(f"dataset spec {spec!r} names no dataset after {PREFIX!r} (e.g. {PREFIX}pile)")
  return (spec[len(PREFIX):], True) if spec.startswith(PREFIX) else (spec, False)


def span_lengths(context_length: int) -> tuple[int, int]:
  """(min_len, max_len) of the spans for contexts of this length: 3/8 to 1/2 of it (12..16 at 32 tokens)."""
  return max(1, (3 * context_length) // 8), context_length // 2
