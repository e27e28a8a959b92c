"""Repeated spans: the data on which induction heads form (data/repeats.py) and the `repeats:` dataset spec."""
import numpy as np
import pytest

from suscept_jax.data import repeats


def test_each_marked_row_repeats_a_random_span_and_the_rest_is_untouched():
  rng = np.random.default_rng(0)
  contexts = rng.integers(100, 200, (400, 32), dtype=np.int32)
  out = repeats.add_repeated_spans(contexts, 0.75, seed=1, min_len=12, max_len=16, d_vocab=512)
  changed = (out != contexts).any(1)
  assert 0.68 < changed.mean() < 0.82  # ≈ 75 % of the rows
  for row, orig in zip(out[changed][:50], contexts[changed][:50]):
    diff = np.flatnonzero(row != orig)
    found = False
    for length in range(12, 17):  # some span of that length occurs twice, non-overlapping
      for s1 in range(0, 32 - 2 * length + 1):
        for s2 in range(s1 + length, 32 - length + 1):
          spans = set(range(s1, s1 + length)) | set(range(s2, s2 + length))
          if (row[s1:s1 + length] == row[s2:s2 + length]).all() and set(diff) <= spans:
            found = True
    assert found
  np.testing.assert_array_equal(out[~changed], contexts[~changed])
  np.testing.assert_array_equal(out, repeats.add_repeated_spans(contexts, 0.75, seed=1, min_len=12, max_len=16,
                                                                d_vocab=512))  # seeded
  assert repeats.split_spec("repeats:pile") == ("pile", True) and repeats.split_spec("pile") == ("pile", False)
  with pytest.raises(ValueError, match=r"'repeats:' names no dataset after 'repeats:' \(e.g. repeats:pile\)"):
    repeats.split_spec("repeats:")  # (it said "dataset spec must be a non-empty string, got ''")
  assert repeats.span_lengths(32) == (12, 16)


def test_bad_span_settings_are_refused():
  with pytest.raises(ValueError, match="2·max_len <= the context's 20 tokens"):
    repeats.add_repeated_spans(np.zeros((2, 20), np.int32), 1.0, seed=0, min_len=4, max_len=12, d_vocab=10)
  with pytest.raises(ValueError, match="fraction=1.5"):
    repeats.add_repeated_spans(np.zeros((2, 20), np.int32), 1.5, seed=0, min_len=4, max_len=8, d_vocab=10)
