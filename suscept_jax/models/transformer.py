"""The attention-only transformer of the paper, in Flax NNX, plus pure functions over its params pytree.

Every head is a slice of an explicit head axis (W_Q/W_K/W_V [H, D, Dh], W_O [H, Dh, D]) so that a
component mask can select it. The NNX modules are the single implementation of the forward pass;
`logits`, `per_token_nll` and `context_nll` rebuild a module from a plain params dict (at trace time
only), which is what the SGLD kernels, optax and orbax work with.

Params layout (all dict keys are strings, so orbax round-trips it unchanged):
  embed/W_E [V, D]; pos_embed/W_pos [n_ctx, D]; blocks/<l>/ln1/{scale,bias} [D];
  blocks/<l>/attn/{W_Q,W_K,W_V} [H, D, Dh], {b_Q,b_K,b_V} [H, Dh], W_O [H, Dh, D], b_O [D];
  ln_final/{scale,bias} [D]; unembed/W_U [D, V], b_U [V].

Shape letters: B contexts in a batch, C tokens per context (T inputs and the last target), T query
positions, S key positions, D d_model, H heads, K d_head (Dh above), V vocabulary, L layers; N a batch's
predicted tokens flattened, M chunks of n of them (`_chunked_nll`).
"""
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from suscept_jax import validation
from suscept_jax.models.config import HEAD_LEAVES, ModelConfig, Numerics

_EXACT = Numerics()


def _matmul(spec: str, a, b, numerics: Numerics):
  """einsum as `numerics` says: inputs rounded to the compute dtype, accumulated and returned in float32.

  On CPU a bfloat16 product multiplies the rounded inputs in float32: the same numbers (the product of two
  bfloat16 values is exact in float32, and the sum accumulates in float32 either way), where XLA:CPU from JAX
  0.12 on has no kernel for some bfloat16 dots with a float32 result ("Unsupported element type for
  DotThunk::Execute: BF16 x BF16 = F32"). Chosen by the default backend, as `fused_kernel` is."""
  if numerics.precision == "bfloat16":
    a, b = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    if jax.default_backend() != "cpu":
      return jnp.einsum(spec, a, b, precision=jax.lax.Precision.DEFAULT, preferred_element_type=jnp.float32)
  precision = jax.lax.Precision.DEFAULT if numerics.precision == "default" else jax.lax.Precision.HIGHEST
  return jnp.einsum(spec, a.astype(jnp.float32), b.astype(jnp.float32), precision=precision,
                    preferred_element_type=jnp.float32)


def _normal(rngs: nnx.Rngs, shape, std: float) -> nnx.Param:
  return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32))


def _zeros(shape) -> nnx.Param:
  return nnx.Param(jnp.zeros(shape, jnp.float32))


class FreeHead(NamedTuple):
  """Of a layer's heads, only head `index` may differ from `anchor` (that layer's attention parameters at w*)."""

  anchor: dict
  index: Any  # int32 scalar, maybe traced


def _qkv(qk_input_BxTxD, v_input_BxTxD, w: dict, numerics: Numerics):
  """Queries, keys and values [B, T, H, K] of the heads whose weights `w` holds (W_Q [H, D, K], b_Q [H, K], …)."""
  with jax.named_scope("qkv"):
    return (_matmul("btd,hdk->bthk", qk_input_BxTxD, w["W_Q"], numerics) + w["b_Q"],
            _matmul("btd,hdk->bthk", qk_input_BxTxD, w["W_K"], numerics) + w["b_K"],
            _matmul("btd,hdk->bthk", v_input_BxTxD, w["W_V"], numerics) + w["b_V"])


def _attend(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, numerics: Numerics, return_pattern: bool = False):
  """(z [B, T, H, K], the pattern [B, H, T, S] or None) by the implementation `numerics` names."""
  with jax.named_scope("attention"):
    if numerics.attention == "fused" and not return_pattern:
      return _fused_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, numerics), None
    if numerics.attention == "flash" and not return_pattern:
      return _flash_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, numerics), None
    if q_BxTxHxK.shape[-3] >= BLOCKED_ATTENTION_FROM and not return_pattern:
      return _blocked_causal_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, numerics), None
    return _plain_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, numerics)


def _one_head_free(qk_input_BxTxD, v_input_BxTxD, w: dict, free: FreeHead, numerics: Numerics):
  """The attention output [B, T, D] (without b_O) when only head `free.index` may differ from w*: the other
  heads' outputs at w*, which do not depend on the entry where the layer's input does not (a head of the
  highest free layer: computed once per stream under `restricted.over_entries`), plus the free head's own,
  the only one differentiated. The same sum as all heads at once, to rounding."""
  star = free.anchor
  z_star_BxTxHxK, _ = _attend(*_qkv(qk_input_BxTxD, v_input_BxTxD, star, numerics), numerics)
  with jax.named_scope("attn_out"):
    per_head_BxTxHxD = _matmul("bthk,hkd->bthd", z_star_BxTxHxK, star["W_O"], numerics)
    others_H = (jnp.arange(per_head_BxTxHxD.shape[-2]) != free.index).astype(jnp.float32)
    others_BxTxD = jnp.einsum("bthd,h->btd", per_head_BxTxHxD, others_H, precision=jax.lax.Precision.HIGHEST)
  pick_H = (jnp.arange(per_head_BxTxHxD.shape[-2]) == free.index).astype(jnp.float32)
  own = {name: jnp.tensordot(pick_H, w[name], axes=1, precision=jax.lax.Precision.HIGHEST)[None]
         for name in HEAD_LEAVES}  # [1, ...]: exact (one-hot), and its gradient a product, not a scatter
  z_own_BxTx1xK, _ = _attend(*_qkv(qk_input_BxTxD, v_input_BxTxD, own, numerics), numerics)
  with jax.named_scope("attn_out"):
    return others_BxTxD + _matmul("bthk,hkd->btd", z_own_BxTx1xK, own["W_O"], numerics)


class Attention(nnx.Module):
  """Causal multi-head attention with an explicit head axis on every weight."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    h, d, k, std = config.n_heads, config.d_model, config.d_head, config.init_std
    self.W_Q, self.W_K, self.W_V = (_normal(rngs, (h, d, k), std) for _ in range(3))
    self.b_Q, self.b_K, self.b_V = (_zeros((h, k)) for _ in range(3))
    self.W_O = _normal(rngs, (h, k, d), std)
    self.b_O = _zeros((d,))

  def __call__(self, qk_input_BxTxD, v_input_BxTxD, head_scale_H=None, *, numerics: Numerics = _EXACT,
               return_pattern: bool = False, free_head: FreeHead | None = None):
    """Returns (output [B, T, D], attention pattern [B, H, T, T] or None when not asked for and fused).
    free_head: only that head may differ from w* (`_one_head_free`; not with head_scale_H or the pattern)."""
    w = {name: getattr(self, name)[...] for name in HEAD_LEAVES}
    if free_head is not None and head_scale_H is None and not return_pattern:
      return _one_head_free(qk_input_BxTxD, v_input_BxTxD, w, free_head, numerics) + self.b_O[...], None
    z_BxTxHxK, pattern_BxHxTxS = _attend(*_qkv(qk_input_BxTxD, v_input_BxTxD, w, numerics), numerics, return_pattern)
    with jax.named_scope("attn_out"):
      if head_scale_H is not None:
        z_BxTxHxK = z_BxTxHxK * head_scale_H[:, None]
      out_BxTxD = _matmul("bthk,hkd->btd", z_BxTxHxK, self.W_O[...], numerics) + self.b_O[...]
    return out_BxTxD, pattern_BxHxTxS


def _plain_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, numerics: Numerics):
  """The reference: causal softmax(QKᵀ/√d_head)·V with the pattern [B, H, T, S] (softmax in float32)."""
  scores_BxHxTxS = _matmul("bthk,bshk->bhts", q_BxTxHxK, k_BxTxHxK, numerics) / np.sqrt(q_BxTxHxK.shape[-1])
  t, s = scores_BxHxTxS.shape[-2:]
  causal_TxS = jnp.arange(s)[None, :] <= jnp.arange(s - t, s)[:, None]  # query i sits at key position s − t + i
  scores_BxHxTxS = jnp.where(causal_TxS, scores_BxHxTxS, -jnp.inf)
  pattern_BxHxTxS = jax.nn.softmax(scores_BxHxTxS, axis=-1)
  return _matmul("bhts,bshk->bthk", pattern_BxHxTxS, v_BxTxHxK, numerics), pattern_BxHxTxS


BLOCKED_ATTENTION_FROM = 256  # plain attention without its pattern runs in query blocks from this context on
MAX_ATTENTION_BLOCKS = 8  # ... of at least MIN_ATTENTION_BLOCK positions
MIN_ATTENTION_BLOCK = 128


def _blocked_causal_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, numerics: Numerics):
  """Plain attention's output, query block by query block, each against the keys up to its last position only:
  the blocks above the causal diagonal, which the mask would zero, are never computed.

  With n blocks that is (n + 1) / 2n of the scores, and of their memory (56 % at 8 blocks). The paper model's
  attention (4 entries × 8 contexts × 1023 positions, value and gradient) took 1.5 s in 8 blocks against 3.0 s
  whole on CPU, with 1.8 instead of 3.2 GiB of XLA's temporaries (BUILD_NOTES, "Thirty-second session"). The
  same arithmetic per query; XLA may round differently. Blocks of equal size: the context is padded at its end
  (`causal_padded`), which changes no real position's output."""
  t = q_BxTxHxK.shape[-3]
  blocks = min(MAX_ATTENTION_BLOCKS, -(-t // MIN_ATTENTION_BLOCK))
  size = -(-t // blocks)

  def attend(q, k, v):
    rows = lambda x, start, end: x[..., start:end, :, :]  # noqa: E731 (positions are axis -3)
    outputs = [_plain_attention(rows(q, i * size, (i + 1) * size), rows(k, 0, (i + 1) * size),
                                rows(v, 0, (i + 1) * size), numerics)[0] for i in range(blocks)]
    return jnp.concatenate(outputs, axis=-3)

  return causal_padded(attend, q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, multiple=size)


CUDNN_HEAD_DIMS = range(8, 129, 8)  # what cuDNN's flash attention takes on every NVIDIA GPU it runs on


def fused_kernel(backend: str, precision: str, d_head: int) -> str:
  """The kernel attention="fused" runs: "cudnn" (cuDNN's flash attention) on an NVIDIA GPU in bfloat16 with a
  head width cuDNN takes, else "xla" (XLA's composition, fused by the compiler). cuDNN takes only half
  precision. Chosen here by name because `jax.nn.dot_product_attention`'s own default (implementation=None)
  is XLA on every backend in this JAX, GPUs included."""
  if backend in ("gpu", "cuda") and precision == "bfloat16" and d_head in CUDNN_HEAD_DIMS:
    return "cudnn"
  return "xla"


def causal_padded(attend, q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, multiple: int):
  """attend(q, k, v) (causal) with zero positions appended up to a multiple of `multiple`, dropped from its
  output.

  The kernels take only some lengths: cuDNN's, once differentiated, even ones (JAX 0.10's check counts the
  empty placeholder it passes for "no bias" as a bias); the Pallas TPU kernel whole tiles of 128. The paper's
  contexts give T = 1023 predictions. Appended positions come after every real one, so the causal mask keeps
  them out of the real rows' outputs and gradients: the same numbers, a little more work."""
  t = q_BxTxHxK.shape[-3]
  extra = -t % multiple
  if not extra:
    return attend(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK)
  padded = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(0, extra), (0, 0), (0, 0)])  # noqa: E731
  return attend(padded(q_BxTxHxK), padded(k_BxTxHxK), padded(v_BxTxHxK))[..., :t, :, :]


def _fused_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, numerics: Numerics):
  """jax.nn.dot_product_attention with the kernel `fused_kernel` names, in the compute dtype; output float32."""
  dtype = jnp.bfloat16 if numerics.precision == "bfloat16" else jnp.float32
  precision = "highest" if numerics.precision == "float32" else "default"
  kernel = fused_kernel(jax.default_backend(), numerics.precision, q_BxTxHxK.shape[-1])
  attend = functools.partial(jax.nn.dot_product_attention, is_causal=True, implementation=kernel)
  q, k, v = (x.astype(dtype) for x in (q_BxTxHxK, k_BxTxHxK, v_BxTxHxK))
  with jax.default_matmul_precision(precision):
    z_BxTxHxK = causal_padded(attend, q, k, v, multiple=2) if kernel == "cudnn" else attend(q, k, v)
  return z_BxTxHxK.astype(jnp.float32)


def _flash_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, numerics: Numerics):
  """The Pallas flash-attention kernel for TPU (jax.experimental.pallas.ops.tpu.flash_attention): causal, in
  tiles of 128 positions (a context is padded up to whole tiles, `causal_padded`), never materialising the
  [T, T] pattern; output float32. On other backends it runs only under `pltpu.force_tpu_interpret_mode()`
  (the tests' CPU check)."""
  from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash
  if jax.default_backend() != "tpu" and not _tpu_interpret_mode():
    raise ValueError(f"attention='flash' is the Pallas TPU kernel; this backend is {jax.default_backend()!r}: "
                     f"use attention='fused' (cuDNN flash attention on GPU in bfloat16, XLA otherwise)")
  d_head = q_BxTxHxK.shape[-1]
  block = 128  # the kernel's smallest tile
  dtype = jnp.bfloat16 if numerics.precision == "bfloat16" else jnp.float32
  sizes = pallas_flash.BlockSizes(block_q=block, block_k_major=block, block_k=block, block_b=1,
                                  block_q_major_dkv=block, block_k_major_dkv=block, block_k_dkv=block,
                                  block_q_dkv=block, block_k_major_dq=block, block_k_dq=block, block_q_dq=block)
  to_heads = lambda x: jnp.swapaxes(x, 1, 2).astype(dtype)  # [B, H, T, K]  # noqa: E731

  def attend(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK):
    z_BxHxTxK = pallas_flash.flash_attention(to_heads(q_BxTxHxK), to_heads(k_BxTxHxK), to_heads(v_BxTxHxK),
                                             causal=True, sm_scale=1.0 / np.sqrt(d_head), block_sizes=sizes)
    return jnp.swapaxes(z_BxHxTxK, 1, 2)

  with jax.default_matmul_precision("highest" if numerics.precision == "float32" else "default"):
    z_BxTxHxK = causal_padded(attend, q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, multiple=block)
  return z_BxTxHxK.astype(jnp.float32)


def _tpu_interpret_mode() -> bool:
  """Whether Pallas TPU kernels are being interpreted on this host (`pltpu.force_tpu_interpret_mode`)."""
  try:
    from jax._src import config as jax_config
    return jax_config.pallas_tpu_interpret_mode_context_manager.value is not None
  except AttributeError:  # a JAX without the switch: let Pallas say what it can do
    return True


class Block(nnx.Module):
  """Pre-LayerNorm attention block (no MLP)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    if config.layer_norm:
      self.ln1 = nnx.LayerNorm(config.d_model, epsilon=config.ln_eps, rngs=rngs)
    self.attn = Attention(config, rngs=rngs)

  def _norm(self, x):
    with jax.named_scope("layer_norm"):
      return self.ln1(x) if self.config.layer_norm else x

  def __call__(self, resid_BxTxD, pos_BxTxD, head_scale_H=None, *, numerics: Numerics = _EXACT,
               return_pattern: bool = False, free_head: FreeHead | None = None):
    v_input = self._norm(resid_BxTxD)
    if self.config.positional_embedding == "shortformer":
      # Positions enter queries and keys only, added *after* ln1 (TransformerLens' convention, the paper's
      # implementation): never the values or the residual stream.
      qk_input = v_input + pos_BxTxD
    else:
      qk_input = v_input
    attn_out_BxTxD, pattern = self.attn(qk_input, v_input, head_scale_H, numerics=numerics,
                                        return_pattern=return_pattern, free_head=free_head)
    return resid_BxTxD + attn_out_BxTxD, pattern


class TransformerLM(nnx.Module):
  """Attention-only transformer language model (Elhage et al. 2021 / the paper's 'tetrahedron')."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = nnx.Dict(W_E=_normal(rngs, (config.d_vocab, config.d_model), config.init_std))
    self.pos_embed = nnx.Dict(W_pos=_normal(rngs, (config.n_ctx, config.d_model), config.init_std))
    self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.n_layers)])
    if config.layer_norm:
      self.ln_final = nnx.LayerNorm(config.d_model, epsilon=config.ln_eps, rngs=rngs)
    self.unembed = nnx.Dict(W_U=_normal(rngs, (config.d_model, config.d_vocab), config.init_std),
                            b_U=_zeros((config.d_vocab,)))

  def __call__(self, tokens_BxT, *, head_scale_LxH=None, return_attention=False, numerics: Numerics = _EXACT):
    """Logits [B, T, V] (float32) for int tokens [B, T]; optionally every layer's pattern [L, B, H, T, T].

    head_scale_LxH multiplies each head's output (zero = ablate the head). numerics: attention
    implementation and matmul precision (config.Numerics; default exact float32, plain attention).
    """
    resid_BxTxD, patterns_LxBxHxTxS = self.final_residual(tokens_BxT, head_scale_LxH=head_scale_LxH,
                                                          return_attention=return_attention, numerics=numerics)
    logits_BxTxV = self.unembed_logits(resid_BxTxD, numerics=numerics)
    if return_attention:
      return logits_BxTxV, patterns_LxBxHxTxS
    return logits_BxTxV

  def final_residual(self, tokens_BxT, *, head_scale_LxH=None, return_attention=False,
                     numerics: Numerics = _EXACT, free_slices=None):
    """(The residual stream the unembedding reads [B, T, D], after the final LayerNorm; every layer's pattern
    [L, B, H, T, T] when return_attention, else None). free_slices: see `per_token_nll`."""
    t = tokens_BxT.shape[-1]
    with jax.named_scope("embed"):
      resid_BxTxD = jnp.take(self.embed["W_E"][...], tokens_BxT, axis=0)
      pos_BxTxD = jnp.broadcast_to(self.pos_embed["W_pos"][...][:t], resid_BxTxD.shape)
      if self.config.positional_embedding == "standard":
        resid_BxTxD = resid_BxTxD + pos_BxTxD
    patterns = []
    for layer, block in enumerate(self.blocks):
      scale_H = None if head_scale_LxH is None else head_scale_LxH[layer]
      with jax.named_scope(f"block{layer}"):
        resid_BxTxD, pattern = block(resid_BxTxD, pos_BxTxD, scale_H, numerics=numerics,
                                     return_pattern=return_attention, free_head=_free_head(free_slices, layer))
      patterns.append(pattern)
    if self.config.layer_norm:
      with jax.named_scope("layer_norm"):
        resid_BxTxD = self.ln_final(resid_BxTxD)
    return resid_BxTxD, (jnp.stack(patterns) if return_attention else None)

  def unembed_logits(self, resid_BxTxD, *, numerics: Numerics = _EXACT):
    """Logits [..., V] (float32) of a final residual [..., D]."""
    with jax.named_scope("unembed"):
      return _matmul("...d,dv->...v", resid_BxTxD, self.unembed["W_U"][...], numerics) + self.unembed["b_U"][...]


def _free_head(free_slices, layer: int) -> FreeHead | None:
  """The layer's `FreeHead` where `free_slices` (`restricted.FreeSlices`) puts all its head leaves in one slice
  group, else None (a leaf frozen or freed whole there, or heads freed unevenly: every head is then computed)."""
  if free_slices is None:
    return None
  groups = {free_slices.group["blocks"][str(layer)]["attn"][name] for name in HEAD_LEAVES}
  if len(groups) != 1 or None in groups:
    return None
  return FreeHead(anchor=free_slices.anchor["blocks"][str(layer)]["attn"], index=free_slices.index_G[groups.pop()])


def _stringify_keys(tree):
  """Pure-dict keys as strings (NNX lists give int keys; orbax and path regexes want strings)."""
  if isinstance(tree, dict):
    return {str(k): _stringify_keys(v) for k, v in tree.items()}
  return tree


def init_params(config: ModelConfig, seed: int = 0) -> dict:
  """A freshly initialised params pytree (plain nested dict of float32 arrays)."""
  model = TransformerLM(config, rngs=nnx.Rngs(seed))
  return _stringify_keys(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def param_shapes(config: ModelConfig) -> dict:
  """The params pytree as shapes and dtypes only (jax.ShapeDtypeStruct leaves): enough for masks, and
  instant where building real params on a fresh CPU backend takes seconds."""
  return jax.eval_shape(lambda: init_params(config))


@functools.lru_cache(maxsize=None)
def _graph(config: ModelConfig):
  abstract_model = nnx.eval_shape(lambda: TransformerLM(config, rngs=nnx.Rngs(0)))
  return nnx.split(abstract_model)


def bind(params: dict, config: ModelConfig) -> TransformerLM:
  """A TransformerLM module whose parameters are `params` (works on tracers inside jit/vmap/grad)."""
  graphdef, abstract_state = _graph(config)
  state = jax.tree.map(lambda x: x, abstract_state)  # a fresh copy: replace_by_pure_dict mutates
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def check_tokens(tokens, config: ModelConfig, *, name: str = "tokens") -> None:
  """Raise a clear error for inputs the model cannot take (too long; wrong dtype)."""
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise TypeError(f"{name} must be integer token ids, got dtype {tokens.dtype}")
  if tokens.shape[-1] > config.n_ctx:
    raise ValueError(f"{name} has length {tokens.shape[-1]} but the model's context is n_ctx={config.n_ctx}")


def check_token_range(contexts, config: ModelConfig, *, name: str = "contexts") -> None:
  """Raise if any token id falls outside the model's vocabulary (inside jit it would silently give NaN)."""
  arr = np.asarray(contexts)
  if arr.size and (arr.min() < 0 or arr.max() >= config.d_vocab):
    raise ValueError(f"{name} holds token ids in [{arr.min()}, {arr.max()}], outside the model's vocabulary "
                     f"[0, {config.d_vocab}); was it tokenized with a tokenizer larger than d_vocab?")


def logits(params: dict, tokens_BxT, config: ModelConfig):
  """Next-token logits [B, T, V] for int tokens [B, T] (T <= n_ctx)."""
  check_tokens(tokens_BxT, config)
  return bind(params, config)(tokens_BxT)


CPU_LOGITS_CHUNK_TOKENS = 512  # on CPU, large logits are computed about this many tokens at a time
CPU_LOGITS_WHOLE_UP_TO = 2**21  # ... when one evaluation's logits exceed this many floats (8 MiB)


def logits_chunk_for(num_tokens: int, d_vocab: int, backend: str) -> int | None:
  """Tokens per chunk of the unembedding and its cross-entropy for `logits_chunk="auto"`: None (all at once)
  on accelerators, and on CPU for logits of at most CPU_LOGITS_WHOLE_UP_TO floats; otherwise balanced
  chunks of at most CPU_LOGITS_CHUNK_TOKENS tokens (so padding adds fewer tokens than there are chunks).

  On CPU the paper model's gradient for 4 entries at batch 8 (4 × 8184 × 5000 logits) took 11.6 s whole and
  8.6 s in chunks of 512 tokens, with 14 % less memory (BUILD_NOTES, "Thirty-second session"); the demo's
  logits (20 × 31 × 512) are below the threshold. Accelerators stay whole until measured there.
  """
  if backend != "cpu" or num_tokens * d_vocab <= CPU_LOGITS_WHOLE_UP_TO:
    return None
  chunks = -(-num_tokens // CPU_LOGITS_CHUNK_TOKENS)
  return -(-num_tokens // chunks)


def _nll_of_logits(logits_NxV, targets_N):
  """logsumexp of the logits minus the target's logit: no [N, V] of log-probabilities is held."""
  with jax.named_scope("cross_entropy"):
    target_logit_N = jnp.take_along_axis(logits_NxV, targets_N[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits_NxV, axis=-1) - target_logit_N


def _chunked_nll(model: TransformerLM, resid_NxD, targets_N, numerics: Numerics, chunk: int):
  """The per-token NLL [N] from the final residual, `chunk` tokens at a time (padded up to whole chunks).

  Each chunk's logits are recomputed in the backward pass (`jax.checkpoint`) instead of being kept: only
  [chunk, V] of logits and of their gradient exist at a time, for one more unembedding matmul per chunk.
  Each token's NLL is the same arithmetic as all at once; XLA may round differently."""
  num_tokens, d_model = resid_NxD.shape
  pad = -num_tokens % chunk
  resid_MxnxD = jnp.pad(resid_NxD, ((0, pad), (0, 0))).reshape(-1, chunk, d_model)
  targets_Mxn = jnp.pad(targets_N, (0, pad)).reshape(-1, chunk)  # (padding scores token 0, then is dropped)

  def chunk_nll(resid_and_targets):
    resid_nxD, targets_n = resid_and_targets
    return _nll_of_logits(model.unembed_logits(resid_nxD, numerics=numerics), targets_n)

  return jax.lax.map(jax.checkpoint(chunk_nll), (resid_MxnxD, targets_Mxn)).reshape(-1)[:num_tokens]


def per_token_nll(params: dict, contexts_BxC, config: ModelConfig, head_scale_LxH=None, numerics: Numerics = _EXACT,
                  logits_chunk: int | str | None = "auto", free_slices=None):
  """NLL of each next token, [B, K-1]: position i scores token i+1 given tokens 0..i (K-1 <= n_ctx).

  head_scale_LxH multiplies each head's output (0 = zero-ablate it). The one per-token NLL of the project,
  as logsumexp of the logits minus the target's logit: no [B, T, V] of log-probabilities is held (the paper
  model's gradient at batch 8 needs 2067 MiB of XLA:CPU temporaries instead of 2315 through log_softmax).
  logits_chunk: tokens whose logits are computed at a time (None: all; "auto": `logits_chunk_for`); it
  changes the memory and speed, not the numbers (beyond rounding).
  free_slices: the sampler's `restricted.FreeSlices` at an entry whose component frees one head of a layer:
  the layer's other heads are computed at w* and only that head is differentiated (`_one_head_free`); the
  same numbers, to rounding.
  """
  inputs_BxT, targets_BxT = contexts_BxC[..., :-1], contexts_BxC[..., 1:]
  check_tokens(inputs_BxT, config, name="contexts[:, :-1]")
  model = bind(params, config)
  resid_BxTxD, _ = model.final_residual(inputs_BxT, head_scale_LxH=head_scale_LxH, numerics=numerics,
                                        free_slices=free_slices)
  num_tokens = math.prod(targets_BxT.shape)
  if logits_chunk == "auto":
    logits_chunk = logits_chunk_for(num_tokens, config.d_vocab, jax.default_backend())
  else:
    validation.check_count_or_none("logits_chunk", logits_chunk, none_means="all at once; or 'auto'")
  if logits_chunk is None or logits_chunk >= num_tokens:
    return _nll_of_logits(model.unembed_logits(resid_BxTxD, numerics=numerics), targets_BxT)
  nll_N = _chunked_nll(model, resid_BxTxD.reshape(num_tokens, -1), targets_BxT.reshape(num_tokens), numerics,
                       logits_chunk)
  return nll_N.reshape(targets_BxT.shape)


def context_nll(params: dict, contexts_BxC, config: ModelConfig, numerics: Numerics = _EXACT,
                logits_chunk: int | str | None = "auto", free_slices=None):
  """Mean next-token NLL of each context, [B] (eq. 48 before averaging over the batch)."""
  return per_token_nll(params, contexts_BxC, config, numerics=numerics, logits_chunk=logits_chunk,
                       free_slices=free_slices).mean(axis=-1)


def param_count(params) -> int:
  """Total number of scalar parameters in a pytree."""
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))
