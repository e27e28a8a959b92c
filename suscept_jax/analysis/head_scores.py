"""Head scores of any checkpoint: previous-token, induction and ablation labels for every attention head.

These are independent labels (computed from attention patterns and ablations, never from
susceptibilities) used to validate structural inference. Scores follow Olsson et al. (2022): the model
reads repeated random sequences r_0..r_{T-1} r_0..r_{T-1} (no BOS token), and
  * previous-token score = mean attention from query i >= 1 to key i - 1 (over all 2T - 1 such queries);
  * induction score = mean attention from query i in the second repeat (T <= i < 2T) to key i - T + 1,
    the position right after the previous occurrence of the current token.
Both are averaged over the batch, so they lie in [0, 1]. A head attending uniformly scores
mean_i 1 / (i + 1) over its queries (about 0.1 and 0.04 for T = 16), not 0.

Ablation deltas are next-token NLL with one head's output zeroed minus the unablated NLL, per token or
averaged over given real contexts (positive = the head helps). The NLL is the model's one per-token NLL,
jitted with the head scale as an array argument, so it compiles once per (config, batch shape), not
once per head.

Shape letters: B contexts (or repeated sequences) in a batch, K tokens per context, N rows padded to whole
batches, T scored positions, S key positions, Q scored queries, L layers, H heads, A ablation settings
(none, then each head zeroed in turn).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from suscept_jax.models.config import ModelConfig
from suscept_jax.models.transformer import bind, per_token_nll

DEFAULT_MAX_SEQ_LEN = 128  # longest default repeat: 2 * 128 = 256 positions keep patterns cheap


def default_seq_len(config: ModelConfig) -> int:
  """Length T of each repeat when none is given: min(n_ctx // 2, 128), so that 2T <= n_ctx."""
  return min(config.n_ctx // 2, DEFAULT_MAX_SEQ_LEN)


def _check_seq_len(seq_len, config: ModelConfig) -> int:
  """The repeat length T to use, or a clear error when 2T does not fit in the model's context."""
  if seq_len is None:
    seq_len = default_seq_len(config)
    if seq_len < 1:
      raise ValueError(f"n_ctx={config.n_ctx} is too short for repeated sequences (needs n_ctx >= 2)")
  if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)):
    raise TypeError(f"seq_len must be an int, got {seq_len!r}")
  if seq_len < 1:
    raise ValueError(f"seq_len={seq_len} must be >= 1")
  if 2 * seq_len > config.n_ctx:
    raise ValueError(f"seq_len={seq_len} is too long: the repeated sequence has 2 * seq_len = {2 * seq_len} "
                     f"tokens but the model's context is n_ctx={config.n_ctx} (use seq_len <= {config.n_ctx // 2})")
  return int(seq_len)


def repeated_random_tokens(config: ModelConfig, *, seq_len: int, batch: int, seed: int) -> np.ndarray:
  """int32 [batch, 2 * seq_len]: uniform random tokens r_0..r_{T-1} followed by the same tokens again."""
  if batch < 1:
    raise ValueError(f"batch={batch} must be >= 1")
  first_BxT = np.random.default_rng(seed).integers(0, config.d_vocab, (batch, seq_len), dtype=np.int32)
  return np.concatenate([first_BxT, first_BxT], axis=1)


@functools.partial(jax.jit, static_argnames=("config",))
def _repeat_pattern_scores(params: dict, tokens_Bx2T, config: ModelConfig):
  """(previous-token [L, H], induction [L, H]) scores of the repeated sequences tokens_Bx2T."""
  seq_len = tokens_Bx2T.shape[1] // 2
  _, pattern_LxBxHxTxS = bind(params, config)(tokens_Bx2T, return_attention=True)
  # Query i attends to key i - 1 (the first sub-diagonal), for i = 1..2T-1.
  prev_LxBxHxQ = jnp.diagonal(pattern_LxBxHxTxS, offset=-1, axis1=-2, axis2=-1)
  # Query i in the second repeat (i = T..2T-1) attends to key i - T + 1 (diagonal offset 1 - T).
  induction_LxBxHxQ = jnp.diagonal(pattern_LxBxHxTxS, offset=1 - seq_len, axis1=-2, axis2=-1)[..., 1:]
  return prev_LxBxHxQ.mean(axis=(1, 3)), induction_LxBxHxQ.mean(axis=(1, 3))


def repeated_sequence_scores(params: dict, config: ModelConfig, *, seq_len=None, batch: int = 64,
                             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(previous-token scores [L, H], induction scores [L, H]) from one forward pass on repeated tokens."""
  seq_len = _check_seq_len(seq_len, config)
  tokens_Bx2T = repeated_random_tokens(config, seq_len=seq_len, batch=batch, seed=seed)
  prev_LxH, induction_LxH = _repeat_pattern_scores(params, jnp.asarray(tokens_Bx2T), config)
  return np.asarray(prev_LxH, np.float64), np.asarray(induction_LxH, np.float64)


def previous_token_scores(params: dict, config: ModelConfig, *, seq_len=None, batch: int = 64,
                          seed: int = 0) -> np.ndarray:
  """[L, H] mean attention from each query i >= 1 to key i - 1 on repeated random sequences."""
  return repeated_sequence_scores(params, config, seq_len=seq_len, batch=batch, seed=seed)[0]


def induction_scores(params: dict, config: ModelConfig, *, seq_len=None, batch: int = 64,
                     seed: int = 0) -> np.ndarray:
  """[L, H] mean attention from second-repeat query i to key i - T + 1 on repeated random sequences."""
  return repeated_sequence_scores(params, config, seq_len=seq_len, batch=batch, seed=seed)[1]


def check_contexts(contexts_BxK, config: ModelConfig, *, name: str = "contexts_BxK") -> np.ndarray:
  """contexts as an int32 [B, K] array, or a clear error if the model cannot score them."""
  contexts_BxK = np.asarray(contexts_BxK)
  if not np.issubdtype(contexts_BxK.dtype, np.integer):
    raise TypeError(f"{name} must be integer token ids, got dtype {contexts_BxK.dtype}")
  if contexts_BxK.ndim != 2:
    raise ValueError(f"{name} must have shape [batch, context_length], got shape {contexts_BxK.shape}")
  n, k = contexts_BxK.shape
  if n < 1:
    raise ValueError(f"{name} is empty (shape {contexts_BxK.shape})")
  if k < 2:
    raise ValueError(f"{name} has length {k}: needs >= 2 tokens (an input and a next-token target)")
  if k - 1 > config.n_ctx:
    raise ValueError(f"{name} has length {k} but the model's context is n_ctx={config.n_ctx}: "
                     f"the model input contexts[:, :-1] must have length <= n_ctx (K <= {config.n_ctx + 1})")
  low, high = int(contexts_BxK.min()), int(contexts_BxK.max())
  if low < 0 or high >= config.d_vocab:
    raise ValueError(f"{name} has token ids in [{low}, {high}] but the model's vocabulary is "
                     f"[0, {config.d_vocab}) (d_vocab={config.d_vocab})")
  return contexts_BxK.astype(np.int32)


_ablated_nll = jax.jit(per_token_nll, static_argnames=("config",))  # compiles once per (config, batch shape)


def per_token_ablation_deltas(params: dict, config: ModelConfig, contexts_BxK, *,
                              batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """(NLL [B, K-1] of every next token, ablation deltas [L, H, B, K-1]: the NLL with each head's output
  zeroed minus the unablated NLL; positive = the head helps predict that token).

  contexts_BxK are int token rows (the model input is contexts[:, :-1]). Rows are evaluated in batches
  of batch_size; the last batch is padded (its rows dropped) so every call has one shape.
  """
  contexts_BxK = check_contexts(contexts_BxK, config)
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  n, k = contexts_BxK.shape
  batch_size = min(batch_size, n)
  num_batches = -(-n // batch_size)
  padded_NxK = np.zeros((num_batches * batch_size, k), np.int32)
  padded_NxK[:n] = contexts_BxK
  l, h = config.n_layers, config.n_heads
  # Scale 0: the unablated model; scale 1 + l * H + h: head (l, h) zeroed.
  scales_AxLxH = np.ones((1 + l * h, l, h), np.float32)
  scales_AxLxH[1 + np.arange(l * h), np.arange(l * h) // h, np.arange(l * h) % h] = 0.0
  nll_AxNxT = np.concatenate([
      np.stack([np.asarray(_ablated_nll(params, jnp.asarray(padded_NxK[start:start + batch_size]), config,
                                        jnp.asarray(scale_LxH))) for scale_LxH in scales_AxLxH], axis=0)
      for start in range(0, num_batches * batch_size, batch_size)], axis=1)[:, :n].astype(np.float64)
  if not np.all(np.isfinite(nll_AxNxT)):
    raise FloatingPointError("non-finite NLL under head ablation (params give NaN/inf logits?)")
  return nll_AxNxT[0], (nll_AxNxT[1:] - nll_AxNxT[0]).reshape(l, h, n, k - 1)


def ablation_loss_deltas(params: dict, config: ModelConfig, contexts_BxK, *, batch_size: int = 16) -> np.ndarray:
  """[L, H] mean next-token NLL with each head's output zeroed minus the unablated mean NLL."""
  _, deltas_LxHxBxT = per_token_ablation_deltas(params, config, contexts_BxK, batch_size=batch_size)
  return deltas_LxHxBxT.mean(axis=(2, 3))


def head_score_table(params: dict, config: ModelConfig, contexts_BxK=None, *, seq_len=None, batch: int = 64,
                     seed: int = 0, batch_size: int = 16) -> list[dict]:
  """One row per head: component ('l{L}h{H}'), layer, head, prev_token, induction[, ablation_delta].

  ablation_delta is present only when contexts_BxK are given (never filled with NaN).
  """
  prev_LxH, induction_LxH = repeated_sequence_scores(params, config, seq_len=seq_len, batch=batch, seed=seed)
  delta_LxH = None
  if contexts_BxK is not None:
    delta_LxH = ablation_loss_deltas(params, config, contexts_BxK, batch_size=batch_size)
  rows = []
  for index, name in enumerate(config.head_names):
    layer, head = divmod(index, config.n_heads)
    row = {"component": name, "layer": layer, "head": head,
           "prev_token": float(prev_LxH[layer, head]), "induction": float(induction_LxH[layer, head])}
    if delta_LxH is not None:
      row["ablation_delta"] = float(delta_LxH[layer, head])
    rows.append(row)
  return rows
