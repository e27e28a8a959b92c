"""Head scores on hand-built models with a planted previous-token head and a planted induction circuit."""
import dataclasses

import numpy as np
import pytest

from suscept_jax.analysis import head_scores as hs
from suscept_jax.models.config import ModelConfig, get_config
from suscept_jax.models.transformer import init_params

V, N_CTX = 128, 32  # vocabulary; context (default repeat length T = 16)
TOK, POS, PREV, OUT = 0, V, V + N_CTX, 2 * V + N_CTX  # residual-stream slots: one-hot codes
D_MODEL, D_HEAD = 3 * V + N_CTX, V
PREV_HEAD, INDUCTION_HEAD = (0, 1), (1, 0)  # l0h1 and l1h0; l0h0 and l1h1 attend uniformly, write nothing


def planted_induction_model(positional_embedding: str):
  """A 2-layer model that does induction with one-hot residual slots, and its config.

  Residual stream: [token one-hot | position one-hot | previous-token one-hot | output one-hot].
  l0h1 (previous-token head): query = position i, key = position j + 1, so q_i . k_j is large iff
    j = i - 1; its value copies the token slot into the previous-token slot.
  l1h0 (induction head): query = current token, key = previous-token slot, so it attends to keys whose
    previous token is the current token; its value copies that key's token into the output slot, which
    the unembedding reads, so the model predicts repeats. l0h0 and l1h1: Q/K and W_O zero.
  Works unchanged for 'standard' and 'shortformer' positions, since layer 1 never reads the position slot.
  """
  config = ModelConfig(n_layers=2, d_model=D_MODEL, n_heads=2, d_head=D_HEAD, n_ctx=N_CTX, d_vocab=V,
                       layer_norm=False, positional_embedding=positional_embedding)
  params = _zeros_like(init_params(config, seed=0))
  attn = [params["blocks"][str(layer)]["attn"] for layer in range(2)]
  for layer in range(2):  # uniform heads keep a random W_V: it must not matter since their W_O is zero
    attn[layer]["W_V"] = np.array(init_params(config, seed=1)["blocks"][str(layer)]["attn"]["W_V"])
  sharp = np.sqrt(30.0 * np.sqrt(D_HEAD))  # matching query/key pairs get attention score 30
  t, p = np.arange(V), np.arange(N_CTX)
  params["embed"]["W_E"][t, TOK + t] = 1.0
  params["pos_embed"]["W_pos"][p, POS + p] = 1.0
  prev = attn[0]
  prev["W_Q"][1, POS + p, p] = sharp
  prev["W_K"][1, POS + p[:-1], p[:-1] + 1] = sharp
  prev["W_V"][1] = 0.0
  prev["W_V"][1, TOK + t, t] = 1.0
  prev["W_O"][1, t, PREV + t] = 1.0
  ind = attn[1]
  ind["W_Q"][0, TOK + t, t] = sharp
  ind["W_K"][0, PREV + t, t] = sharp
  ind["W_V"][0] = 0.0
  ind["W_V"][0, TOK + t, t] = 1.0
  ind["W_O"][0, t, OUT + t] = 1.0
  params["unembed"]["W_U"][OUT + t, t] = 10.0
  return params, config


def _zeros_like(tree):
  if isinstance(tree, dict):
    return {k: _zeros_like(v) for k, v in tree.items()}
  return np.zeros(np.shape(tree), np.float32)


def uniform_baseline(queries) -> float:
  """Score of a head attending uniformly: mean over queries i of 1 / (i + 1) (i + 1 visible keys)."""
  return float(np.mean(1.0 / (np.asarray(queries) + 1.0)))


def repeated_contexts(n: int, seq_len: int, seed: int) -> np.ndarray:
  first_NxT = np.random.default_rng(seed).integers(0, V, (n, seq_len), dtype=np.int32)
  return np.concatenate([first_NxT, first_NxT], axis=1)


@pytest.fixture(scope="module", params=["standard", "shortformer"])
def planted(request):
  return planted_induction_model(request.param)


def test_planted_previous_token_head_is_singled_out(planted):
  params, config = planted
  prev_LxH = hs.previous_token_scores(params, config)
  assert prev_LxH.shape == (2, 2)
  assert prev_LxH[PREV_HEAD] > 0.99
  others = np.delete(prev_LxH.ravel(), PREV_HEAD[0] * 2 + PREV_HEAD[1])
  assert np.all(others < 0.3), prev_LxH
  # l1h1 has zero Q/K: exactly uniform attention over the i + 1 visible keys.
  t = hs.default_seq_len(config)
  np.testing.assert_allclose(prev_LxH[1, 1], uniform_baseline(np.arange(1, 2 * t)), rtol=1e-5)


def test_planted_induction_head_is_singled_out(planted):
  params, config = planted
  t = hs.default_seq_len(config)
  assert t == 16
  induction_LxH = hs.induction_scores(params, config)
  assert induction_LxH.shape == (2, 2)
  # Not 1: at query T the key 0 also 'follows' r_0 (the previous-token head attends to itself there),
  # and random tokens collide with probability about 1/V.
  assert induction_LxH[INDUCTION_HEAD] > 0.85, induction_LxH
  others = np.delete(induction_LxH.ravel(), INDUCTION_HEAD[0] * 2 + INDUCTION_HEAD[1])
  assert np.all(others < 0.1), induction_LxH
  for layer, head in [(0, 0), (1, 1)]:  # zero Q/K: the uniform baseline, exactly
    np.testing.assert_allclose(induction_LxH[layer, head], uniform_baseline(np.arange(t, 2 * t)), rtol=1e-5)
  # A shorter repeat moves the baseline but not the planted head.
  short_LxH = hs.induction_scores(params, config, seq_len=5, batch=8, seed=3)
  np.testing.assert_allclose(short_LxH[1, 1], uniform_baseline(np.arange(5, 10)), rtol=1e-5)
  assert short_LxH[INDUCTION_HEAD] > 0.85


def test_scores_of_a_random_model_are_attention_weights():
  config = get_config("tiny")
  params = init_params(config, seed=2)
  prev_LxH, induction_LxH = hs.repeated_sequence_scores(params, config, batch=16)
  for scores_LxH in (prev_LxH, induction_LxH):
    assert scores_LxH.shape == (config.n_layers, config.n_heads)
    assert np.all((scores_LxH >= 0.0) & (scores_LxH <= 1.0))
  np.testing.assert_array_equal(prev_LxH, hs.previous_token_scores(params, config, batch=16))
  np.testing.assert_array_equal(induction_LxH, hs.induction_scores(params, config, batch=16))
  # Zero layer-1 Q/K: that layer attends uniformly, so both scores equal their baselines.
  params["blocks"]["1"]["attn"]["W_Q"] = np.zeros_like(params["blocks"]["1"]["attn"]["W_Q"])
  prev_LxH, induction_LxH = hs.repeated_sequence_scores(params, config, batch=16)
  t = config.n_ctx // 2
  np.testing.assert_allclose(prev_LxH[1], uniform_baseline(np.arange(1, 2 * t)), rtol=1e-5)
  np.testing.assert_allclose(induction_LxH[1], uniform_baseline(np.arange(t, 2 * t)), rtol=1e-5)


def test_ablation_deltas_and_single_compilation():
  params, config = planted_induction_model("standard")
  contexts_NxK = repeated_contexts(20, 16, seed=7)  # K = 32 <= n_ctx + 1; 20 rows = 3 batches of 8, padded
  hs._ablated_nll.clear_cache()
  delta_LxH = hs.ablation_loss_deltas(params, config, contexts_NxK, batch_size=8)
  assert hs._ablated_nll._cache_size() == 1  # one compile for 5 head scales x 3 batches
  assert delta_LxH.shape == (2, 2)
  assert delta_LxH[0, 0] == 0.0 and delta_LxH[1, 1] == 0.0  # W_O = 0: ablating changes nothing
  assert delta_LxH[PREV_HEAD] > 1.0 and delta_LxH[INDUCTION_HEAD] > 1.0, delta_LxH
  # Batching does not change the result (up to float32 summation order).
  np.testing.assert_allclose(hs.ablation_loss_deltas(params, config, contexts_NxK, batch_size=20), delta_LxH,
                             rtol=1e-4, atol=1e-5)
  # Per token: the same numbers before averaging, zero everywhere for heads whose output is zero.
  nll_NxT, per_token_LxHxNxT = hs.per_token_ablation_deltas(params, config, contexts_NxK, batch_size=8)
  assert per_token_LxHxNxT.shape == (2, 2, 20, 31) and nll_NxT.shape == (20, 31)
  assert np.all(per_token_LxHxNxT[0, 0] == 0.0) and np.all(per_token_LxHxNxT[1, 1] == 0.0)
  np.testing.assert_allclose(per_token_LxHxNxT.mean(axis=(2, 3)), delta_LxH, rtol=1e-12)


def test_head_score_table():
  params, config = planted_induction_model("standard")
  rows = hs.head_score_table(params, config, batch=16)
  assert [row["component"] for row in rows] == config.head_names == ["l0h0", "l0h1", "l1h0", "l1h1"]
  assert all("ablation_delta" not in row for row in rows)
  rows = hs.head_score_table(params, config, repeated_contexts(4, 16, seed=1), batch=16)
  by_name = {row["component"]: row for row in rows}
  assert by_name["l0h1"]["prev_token"] > 0.99 and by_name["l1h0"]["induction"] > 0.85
  assert (by_name["l1h0"]["layer"], by_name["l1h0"]["head"]) == (1, 0)
  for row in rows:
    values = [row["prev_token"], row["induction"], row["ablation_delta"]]
    assert all(isinstance(v, float) and np.isfinite(v) for v in values), row


def test_errors_name_the_bad_input():
  config = get_config("tiny")  # n_ctx = 16
  params = init_params(config)
  with pytest.raises(ValueError, match=r"seq_len=9 is too long.*n_ctx=16"):
    hs.previous_token_scores(params, config, seq_len=9)
  with pytest.raises(ValueError, match=r"seq_len=0"):
    hs.induction_scores(params, config, seq_len=0)
  with pytest.raises(ValueError, match=r"seq_len=20 is too long"):
    hs.head_score_table(params, config, seq_len=20)
  one_token_config = dataclasses.replace(config, n_ctx=1)
  with pytest.raises(ValueError, match=r"n_ctx=1 is too short"):
    hs.previous_token_scores(init_params(one_token_config), one_token_config)
  good_NxK = np.zeros((3, 17), np.int32)  # K - 1 = 16 = n_ctx: the longest allowed
  assert hs.ablation_loss_deltas(params, config, good_NxK).shape == (2, 2)
  with pytest.raises(TypeError, match=r"contexts_BxK must be integer.*float32"):
    hs.ablation_loss_deltas(params, config, good_NxK.astype(np.float32))
  with pytest.raises(ValueError, match=r"contexts_BxK has length 18.*n_ctx=16"):
    hs.ablation_loss_deltas(params, config, np.zeros((3, 18), np.int32))
  with pytest.raises(ValueError, match=r"contexts_BxK has length 1"):
    hs.ablation_loss_deltas(params, config, np.zeros((3, 1), np.int32))
  with pytest.raises(ValueError, match=r"contexts_BxK must have shape \[batch, context_length\]"):
    hs.ablation_loss_deltas(params, config, np.zeros(17, np.int32))
  with pytest.raises(ValueError, match=r"contexts_BxK has token ids in \[64, 64\].*d_vocab=64"):
    hs.head_score_table(params, config, np.full((2, 8), 64, np.int32))
