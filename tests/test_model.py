"""The attention-only transformer: size, positional variants, a plain-numpy reference forward, components."""
import dataclasses
import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import suscept_jax as sj
from suscept_jax.models import components, config as model_config, transformer


def test_tetrahedron_parameter_count():
  params = jax.eval_shape(lambda: transformer.init_params(model_config.get_config("tetrahedron_3m")))
  count = transformer.param_count(params)
  print(f"tetrahedron_3m: {count:,} parameters")
  assert count == 3_355_016  # ≈ 3.36M, as in the paper (2 layers, 256 wide, 8×32 heads, ctx 1024, vocab 5000)
  assert params["blocks"]["1"]["attn"]["W_Q"].shape == (8, 256, 32)
  assert params["blocks"]["1"]["attn"]["W_O"].shape == (8, 32, 256)


def numpy_forward_nll(params, contexts, cfg, *, positions_after_ln1=True):
  """Independent plain-numpy forward (float64) of the architecture as specified, for cross-checking.

  Shortformer follows TransformerLens (the paper's implementation): W_pos is added to ln1's *output* on
  the query/key path. `positions_after_ln1=False` is the other reading (ln1(resid + W_pos)), kept only to
  show that the reference test can tell the two apart.
  """
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x_in, targets = contexts[:, :-1], contexts[:, 1:]
  B, T = x_in.shape

  def ln(x, scale, bias):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + cfg.ln_eps) * scale + bias

  resid = p["embed"]["W_E"][x_in]
  pos = p["pos_embed"]["W_pos"][:T][None]
  if cfg.positional_embedding == "standard":
    resid = resid + pos
  for layer in range(cfg.n_layers):
    blk = p["blocks"][str(layer)]
    norm = (lambda x: ln(x, blk["ln1"]["scale"], blk["ln1"]["bias"])) if cfg.layer_norm else (lambda x: x)
    # TransformerLens' shortformer: q/k input = ln1(resid) + W_pos, value input = ln1(resid).
    v_in = norm(resid)
    if cfg.positional_embedding != "shortformer":
      qk_in = v_in
    else:
      qk_in = v_in + pos if positions_after_ln1 else norm(resid + pos)
    a = blk["attn"]
    out = np.zeros_like(resid) + a["b_O"]
    for h in range(cfg.n_heads):
      q = qk_in @ a["W_Q"][h] + a["b_Q"][h]
      k = qk_in @ a["W_K"][h] + a["b_K"][h]
      v = v_in @ a["W_V"][h] + a["b_V"][h]
      scores = q @ k.transpose(0, 2, 1) / np.sqrt(cfg.d_head)
      scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
      w = np.exp(scores - scores.max(-1, keepdims=True))
      w /= w.sum(-1, keepdims=True)
      out += (w @ v) @ a["W_O"][h]
    resid = resid + out
  if cfg.layer_norm:
    resid = ln(resid, p["ln_final"]["scale"], p["ln_final"]["bias"])
  logits = resid @ p["unembed"]["W_U"] + p["unembed"]["b_U"]
  logits -= logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -np.take_along_axis(logp, targets[..., None], -1)[..., 0]


@pytest.mark.parametrize("positional", ["shortformer", "standard"])
@pytest.mark.parametrize("layer_norm", [True, False])
def test_per_token_nll_matches_numpy_reference(positional, layer_norm):
  cfg = dataclasses.replace(model_config.get_config("tiny"), positional_embedding=positional, layer_norm=layer_norm,
                            init_std=0.5)
  params = transformer.init_params(cfg, seed=1)
  # Random (non-trivial) biases and LayerNorm parameters too.
  keys = iter(jax.random.split(jax.random.key(7), 64))
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(next(keys), a.shape), params)
  contexts = np.random.default_rng(0).integers(0, cfg.d_vocab, (3, cfg.n_ctx + 1)).astype(np.int32)
  got = np.asarray(transformer.per_token_nll(params, contexts, cfg))
  want = numpy_forward_nll(params, contexts, cfg)
  assert got.shape == (3, cfg.n_ctx)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(np.asarray(transformer.context_nll(params, contexts, cfg)), want.mean(-1), rtol=2e-4)
  if positional == "shortformer" and layer_norm:  # the test has power: the other convention is far off
    other = numpy_forward_nll(params, contexts, cfg, positions_after_ln1=False)
    assert np.abs(other - want).max() > 0.1
  # Logits in the hundreds (exp overflows float32): logsumexp − target logit stays finite and exact.
  sharp = {**params, "unembed": {**params["unembed"], "W_U": 300.0 * params["unembed"]["W_U"]}}
  for chunk in (None, 7):  # 48 tokens in 7 chunks of 7: the last one padded
    got = np.asarray(transformer.per_token_nll(sharp, contexts, cfg, logits_chunk=chunk))
    assert np.isfinite(got).all() and got.max() > 50
    np.testing.assert_allclose(got, numpy_forward_nll(sharp, contexts, cfg), rtol=2e-4, atol=2e-3)


def test_long_contexts_attend_block_by_block_with_the_same_numbers():
  """From BLOCKED_ATTENTION_FROM positions on, plain attention runs query block by query block and never forms
  the scores above the causal diagonal: the per-token NLL still matches the numpy reference, and its gradient
  the full-pattern path's, with a context that needs padding to whole blocks (301 = 3 blocks of 101)."""
  cfg = dataclasses.replace(model_config.get_config("tiny"), n_ctx=301, init_std=0.5)
  assert cfg.n_ctx >= transformer.BLOCKED_ATTENTION_FROM
  params = transformer.init_params(cfg, seed=5)
  keys = iter(jax.random.split(jax.random.key(9), 64))
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(next(keys), a.shape), params)
  contexts = np.random.default_rng(4).integers(0, cfg.d_vocab, (2, cfg.n_ctx + 1)).astype(np.int32)
  np.testing.assert_allclose(np.asarray(transformer.per_token_nll(params, contexts, cfg)),
                             numpy_forward_nll(params, contexts, cfg), rtol=2e-4, atol=2e-4)

  def full_pattern_nll(p):  # the path that returns every pattern attends all positions at once
    logits, _ = transformer.bind(p, cfg)(contexts[:, :-1], return_attention=True)
    return transformer._nll_of_logits(logits, contexts[:, 1:]).mean()

  blocked_nll = lambda p: transformer.per_token_nll(p, contexts, cfg).mean()  # noqa: E731
  scores_shape = f"{cfg.n_heads},{cfg.n_ctx},{cfg.n_ctx}]"
  assert scores_shape not in str(jax.make_jaxpr(blocked_nll)(params))  # no [.., H, T, T] scores formed
  assert scores_shape in str(jax.make_jaxpr(full_pattern_nll)(params))
  blocked, full = jax.grad(blocked_nll)(params), jax.grad(full_pattern_nll)(params)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(full))
  for got, want in zip(jax.tree.leaves(blocked), jax.tree.leaves(full)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


def test_logits_in_chunks_give_the_same_losses_and_gradients():
  """Chunked unembedding (recomputed in the backward pass) against all at once: the same per-token NLL and
  gradient to rounding, under vmap over parameter copies, with a head ablated and in bfloat16 too."""
  cfg = model_config.get_config("tiny")
  params = transformer.init_params(cfg, seed=2)
  copies = jax.tree.map(lambda a: jnp.stack([a, a + 0.05 * jnp.sin(a * 7.0 + 1.0)]), params)
  contexts = np.random.default_rng(3).integers(0, cfg.d_vocab, (5, cfg.n_ctx + 1)).astype(np.int32)
  scale_LxH = jnp.asarray([[1.0, 0.0], [1.0, 1.0]])
  # bfloat16: a weight gradient comes out of its matmul rounded to bfloat16, whole or per chunk
  for numerics, rtol in ((model_config.Numerics(), 1e-5), (model_config.Numerics(precision="bfloat16"), 1e-2)):
    def loss_and_tokens(p, chunk, numerics=numerics):
      nll = transformer.per_token_nll(p, contexts, cfg, scale_LxH, numerics=numerics, logits_chunk=chunk)
      return (nll * jnp.arange(1, nll.shape[-1] + 1)).mean(), nll  # unequal weights per token
    results = {chunk: jax.jit(jax.vmap(jax.value_and_grad(functools.partial(loss_and_tokens, chunk=chunk),
                                                          has_aux=True)))(copies) for chunk in (None, 16, 13)}
    (_, whole_nll), whole_grad = results[None]
    for chunk in (16, 13):
      (_, nll), grad = results[chunk]
      assert nll.shape == whole_nll.shape == (2, 5, cfg.n_ctx)
      np.testing.assert_allclose(nll, whole_nll, rtol=1e-6, atol=1e-6)
      scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(whole_grad))  # (b_K's gradient is 0 ± rounding)
      for got, want in zip(jax.tree.leaves(grad), jax.tree.leaves(whole_grad)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)
  assert float(jnp.abs(whole_grad["blocks"]["0"]["attn"]["W_Q"][:, 1]).max()) == 0.0  # the ablated head


def test_logits_are_chunked_only_where_it_pays():
  """The rule of logits_chunk="auto": accelerators whole; on CPU whole up to the threshold, then balanced
  chunks of at most CPU_LOGITS_CHUNK_TOKENS; and a bad value is refused by name."""
  tokens = transformer.CPU_LOGITS_CHUNK_TOKENS
  assert transformer.logits_chunk_for(8 * 1023, 5000, "gpu") is None
  assert transformer.logits_chunk_for(8 * 1023, 5000, "tpu") is None
  assert transformer.logits_chunk_for(20 * 31, 512, "cpu") is None  # the demo's batch: whole
  assert transformer.logits_chunk_for(transformer.CPU_LOGITS_WHOLE_UP_TO // 5000, 5000, "cpu") is None
  chunk = transformer.logits_chunk_for(8 * 1023, 5000, "cpu")  # the paper model at batch 8: 16 chunks of 512
  assert chunk == 512 and -(-8 * 1023 // chunk) * chunk - 8 * 1023 < 16
  chunk = transformer.logits_chunk_for(1023, 5000, "cpu")  # one paper context: two balanced chunks
  assert chunk == 512 <= tokens
  cfg = model_config.get_config("tiny")
  params = transformer.init_params(cfg)
  contexts = np.zeros((1, cfg.n_ctx + 1), np.int32)
  for bad in (0, -3, 2.5, True, "whole"):
    with pytest.raises(ValueError, match="logits_chunk="):
      transformer.per_token_nll(params, contexts, cfg, logits_chunk=bad)


def test_shortformer_positions_reach_only_queries_and_keys():
  """Shortformer: with one uniform-attention head the values, hence the output, ignore positions;
  the standard variant puts positions in the residual stream, so the output depends on them."""
  for positional, should_depend in (("shortformer", False), ("standard", True)):
    cfg = dataclasses.replace(model_config.get_config("tiny"), positional_embedding=positional, n_layers=1)
    params = transformer.init_params(cfg, seed=0)
    tokens = np.full((1, cfg.n_ctx), 3, np.int32)  # one repeated token: only positions differ across a row
    out1 = transformer.logits(params, tokens, cfg)
    params2 = jax.tree.map(lambda a: a, params)
    params2["pos_embed"]["W_pos"] = params["pos_embed"]["W_pos"] * 5.0
    out2 = transformer.logits(params2, tokens, cfg)
    # Identical tokens: under shortformer every value vector is the same, so attention (whatever its
    # pattern) returns it unchanged and the positions cannot matter.
    assert (not np.allclose(out1, out2, atol=1e-5)) == should_depend, positional
  # ...but under shortformer positions do change the attention pattern.
  cfg = dataclasses.replace(model_config.get_config("tiny"), positional_embedding="shortformer", init_std=0.5)
  params = transformer.init_params(cfg, seed=0)
  tokens = np.random.default_rng(0).integers(0, cfg.d_vocab, (1, cfg.n_ctx)).astype(np.int32)
  _, pat1 = transformer.bind(params, cfg)(tokens, return_attention=True)
  params["pos_embed"]["W_pos"] = params["pos_embed"]["W_pos"] * 5.0
  _, pat2 = transformer.bind(params, cfg)(tokens, return_attention=True)
  assert not np.allclose(pat1, pat2, atol=1e-4)


def test_context_longer_than_model_is_rejected():
  cfg = model_config.get_config("tiny")
  params = transformer.init_params(cfg)
  with pytest.raises(ValueError, match=r"length 17 but the model's context is n_ctx=16"):
    transformer.per_token_nll(params, np.zeros((1, cfg.n_ctx + 2), np.int32), cfg)
  with pytest.raises(TypeError, match="integer token ids"):
    transformer.logits(params, np.zeros((1, 4), np.float32), cfg)


def test_unknown_config_and_bad_fields():
  with pytest.raises(ValueError, match="Unknown model config 'huge'"):
    model_config.get_config("huge")
  with pytest.raises(ValueError, match="positional_embedding='rotary'"):
    model_config.ModelConfig(positional_embedding="rotary")


def test_head_components_select_exactly_one_head():
  cfg = model_config.get_config("tiny")
  params = transformer.init_params(cfg)
  mask = components.component_mask("l1h0", params, cfg)
  attn = params["blocks"]["1"]["attn"]
  free = sj.count_free(mask, params)
  assert free == 3 * cfg.d_model * cfg.d_head + 3 * cfg.d_head + cfg.d_head * cfg.d_model
  assert np.asarray(mask["blocks"]["1"]["attn"]["W_Q"]).shape == (cfg.n_heads, 1, 1)
  assert not np.asarray(mask["blocks"]["1"]["attn"]["b_O"]) and not np.asarray(mask["blocks"]["0"]["attn"]["W_Q"]).any()
  assert attn["W_Q"].shape[0] == cfg.n_heads
  names = components.default_components(cfg)
  assert names == ["full", "l0h0", "l0h1", "l1h0", "l1h1"]
  masks_by_name = components.component_masks(names, params, cfg)
  _, stacked = sj.stack_masks(masks_by_name, params)
  assert stacked["blocks"]["0"]["attn"]["W_K"].shape == (5, cfg.n_heads, 1, 1)
  # Heads partition the per-head weights: their masks never overlap.
  heads = np.stack([np.broadcast_to(stacked["blocks"]["1"]["attn"]["W_V"][i], attn["W_V"].shape) for i in range(1, 5)])
  assert heads.sum(0).max() == 1


def test_zeroing_a_heads_output_gives_zero_gradient_in_its_mask():
  """devinterp's check: if head l0h1 is ablated (W_O slice 0), its Q/K/V get no gradient."""
  cfg = model_config.get_config("tiny")
  params = transformer.init_params(cfg, seed=3)
  params["blocks"]["0"]["attn"]["W_O"] = params["blocks"]["0"]["attn"]["W_O"].at[1].set(0.0)
  contexts = np.random.default_rng(0).integers(0, cfg.d_vocab, (4, cfg.n_ctx + 1)).astype(np.int32)
  grad = jax.grad(lambda p: transformer.context_nll(p, contexts, cfg).mean())(params)
  mask = components.component_mask("l0h1", params, cfg)
  for name in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V"):
    g = np.asarray(grad["blocks"]["0"]["attn"][name])
    m = np.broadcast_to(np.asarray(mask["blocks"]["0"]["attn"][name]), g.shape)
    assert np.all(g[m] == 0.0) and np.any(g[~m] != 0.0), name


def test_component_spec_errors_and_preview():
  cfg = model_config.get_config("tiny")
  params = transformer.init_params(cfg)
  with pytest.raises(ValueError, match=r"unknown component spec 'head3'"):
    components.component_mask("head3", params, cfg)
  with pytest.raises(ValueError, match=r"component 'l0h7': head 7 does not exist"):
    components.component_mask("l0h7", params, cfg)
  with pytest.raises(ValueError, match=r"component 're:nothing/.*': regex_mask: 'nothing/.\*' matches no parameter "
                                       r"path.*the paths are: blocks/0/attn/W_K.*embed/W_E"):
    components.component_masks(["re:nothing/.*"], params, cfg)
  text = components.describe("unembed", params, cfg)
  assert "unembed/W_U" in text and "unembed/b_U" in text and "blocks" not in text
  assert components.describe("re:blocks/0/attn/W_[QK]", params, cfg).count("\n  blocks/0/attn/W_") == 2


def test_fused_attention_asks_for_cudnn_by_name_where_cudnn_takes_the_inputs(monkeypatch):
  """jax.nn.dot_product_attention's own default is XLA on GPUs too, so "fused" names cuDNN: on an NVIDIA GPU, in
  bfloat16 (cuDNN takes no float32), with a head width that is a multiple of 8 up to 128."""
  assert transformer.fused_kernel("gpu", "bfloat16", 32) == "cudnn"  # the paper's model
  assert transformer.fused_kernel("cuda", "bfloat16", 128) == "cudnn"
  assert transformer.fused_kernel("gpu", "bfloat16", 12) == "xla"  # the demo's heads
  assert transformer.fused_kernel("gpu", "bfloat16", 136) == "xla"
  for precision in ("float32", "default"):
    assert transformer.fused_kernel("gpu", precision, 32) == "xla"
  for backend in ("cpu", "tpu"):
    assert transformer.fused_kernel(backend, "bfloat16", 32) == "xla"
  cfg = model_config.get_config("tiny")
  tokens = np.zeros((2, cfg.n_ctx), np.int32)
  monkeypatch.setattr(transformer, "fused_kernel", lambda backend, precision, d_head: "cudnn")  # the name reaches
  with pytest.raises(RuntimeError, match="cuDNN"):  # jax, which has no cuDNN on this machine
    transformer.per_token_nll(transformer.init_params(cfg, seed=0), tokens, cfg,
                              numerics=model_config.Numerics(attention="fused", precision="bfloat16"))


def test_appended_positions_change_no_causal_output_or_gradient():
  """cuDNN's differentiated attention takes even lengths only, the Pallas TPU kernel whole tiles of 128;
  `causal_padded` appends positions up to such a length, which causality keeps out of every real row: outputs
  and gradients equal the unpadded ones."""
  attend = functools.partial(jax.nn.dot_product_attention, is_causal=True, implementation="xla")
  rng = np.random.default_rng(0)
  for t, multiple in ((15, 2), (16, 2), (13, 8)):
    q, k, v = (jnp.asarray(rng.standard_normal((3, t, 2, 8)), jnp.float32) for _ in range(3))
    padded = functools.partial(transformer.causal_padded, attend, multiple=multiple)
    np.testing.assert_allclose(padded(q, k, v), attend(q, k, v), atol=1e-6)
    weights = jnp.asarray(rng.standard_normal((3, t, 2, 8)), jnp.float32)  # a loss that reads every output
    grads = [jax.grad(lambda *qkv, f=f: (f(*qkv) * weights).sum(), argnums=(0, 1, 2))(q, k, v)
             for f in (padded, attend)]
    for padded, direct in zip(*grads):
      np.testing.assert_allclose(padded, direct, atol=1e-5)


def _assert_every_draw_program_traces(monkeypatch, attention: str, kernel_primitive: str, ln_eps: float):
  """Every group's draw program of the tiny model (restricted gradients, entries vmapped, micro-batches,
  shard_map, the per-token observation) traced, not compiled, through `memory_plan`, holding the kernel. A
  config of its own (`ln_eps`): its traces are cached nowhere else."""
  from suscept_jax import programs, sampler
  traced = []
  monkeypatch.setattr(programs, "compile_ahead", lambda program, args: traced.append(str(program.trace(*args).jaxpr)))
  monkeypatch.setattr(programs, "program_bytes", lambda compiled: 0)
  cfg = model_config.get_config("tiny", ln_eps=ln_eps)
  numerics = model_config.Numerics(attention=attention, precision="bfloat16")
  params = transformer.init_params(cfg, seed=0)
  rng = np.random.default_rng(0)
  base = rng.integers(0, cfg.d_vocab, (64, cfg.n_ctx), dtype=np.int32)
  probes = {"p": rng.integers(0, cfg.d_vocab, (32, cfg.n_ctx), dtype=np.int32)}
  names, masks_C = sj.stack_masks(components.component_masks(components.default_components(cfg), params, cfg),
                                  params)
  loss_fn = functools.partial(transformer.context_nll, config=cfg, numerics=numerics)
  config = sj.SGLDConfig(num_chains=2, num_draws=4)
  per_token = dict(observed=base[:6], token_loss_fn=functools.partial(transformer.per_token_nll, config=cfg,
                                                                       numerics=numerics), observed_microbatch=2)
  for options in (dict(microbatch_size=None), dict(microbatch_size=4), per_token):
    traced.clear()
    sampler.memory_plan(loss_fn, params, names, masks_C, base, probes, config=config, batch_size=8, delta_h=0.25,
                        **options)
    assert len(traced) == 3 and all(kernel_primitive in jaxpr for jaxpr in traced)  # 3 component groups


def test_the_draw_programs_trace_with_cudnn_attention(monkeypatch):
  """What a GPU will compile, traced at the tiny model's odd length (T = 15) with cuDNN's detection stubbed
  (this CPU has none; tracing checks shapes, lowering would need a GPU). Without the appended position the
  gradient's trace fails ("Unsupported sequence length")."""
  fused_stablehlo = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
  for name, stub in (("check_cudnn_version", lambda: 91000), ("check_compute_capability", lambda c: True),
                     ("is_cuda_compute_capability_equal", lambda c: False)):
    if not hasattr(fused_stablehlo, name):
      pytest.skip(f"this JAX's cuDNN attention has no {name} to stub")
    monkeypatch.setattr(fused_stablehlo, name, stub)
  monkeypatch.setattr(transformer, "fused_kernel", lambda backend, precision, d_head: "cudnn")
  _assert_every_draw_program_traces(monkeypatch, "fused", "dot_product_attention", ln_eps=1.25e-5)


def test_the_draw_programs_trace_with_the_pallas_tpu_kernel(monkeypatch):
  """What a TPU will compile, traced under Pallas' interpret mode (nothing runs) at T = 15, padded to one
  128-position tile: the kernel under the sampler's vmaps and micro-batch loop."""
  from jax.experimental.pallas import tpu as pltpu
  with pltpu.force_tpu_interpret_mode():
    _assert_every_draw_program_traces(monkeypatch, "flash", "pallas_call", ln_eps=1.5e-5)


@pytest.mark.parametrize("positional", ["shortformer", "standard"])
def test_fused_attention_matches_the_plain_implementation(positional):
  """jax.nn.dot_product_attention (XLA here; cuDNN on a GPU in bfloat16) against the explicit softmax: NLL and
  gradients."""
  cfg = dataclasses.replace(model_config.get_config("tiny"), positional_embedding=positional)
  params = jax.tree.map(lambda x: x * 10.0, transformer.init_params(cfg, seed=3))  # peaked patterns, not uniform
  tokens = np.random.default_rng(0).integers(0, cfg.d_vocab, size=(4, cfg.n_ctx + 1))
  plain, fused = model_config.Numerics(), model_config.Numerics(attention="fused")
  nll = {n: np.asarray(transformer.per_token_nll(params, tokens, cfg, numerics=n)) for n in (plain, fused)}
  np.testing.assert_allclose(nll[fused], nll[plain], atol=2e-5, rtol=0)
  assert np.abs(nll[plain] - nll[plain].mean()).max() > 0.1  # the comparison sees real variation
  grad = {n: jax.grad(lambda p: transformer.context_nll(p, tokens, cfg, numerics=n).mean())(params)
          for n in (plain, fused)}
  for g_fused, g_plain in zip(jax.tree.leaves(grad[fused]), jax.tree.leaves(grad[plain])):
    np.testing.assert_allclose(g_fused, g_plain, atol=2e-5 * max(1.0, float(np.abs(g_plain).max())), rtol=0)


_FLASH_CHECK = """
import dataclasses, jax, numpy as np
from jax.experimental.pallas import tpu as pltpu
from suscept_jax.models import config as model_config, transformer
cfg = dataclasses.replace(model_config.get_config("tiny"), n_layers=1, n_ctx=128)  # the kernel tiles by 128
params = jax.tree.map(lambda x: x * 10.0, transformer.init_params(cfg, seed=3))  # peaked patterns
tokens = np.random.default_rng(0).integers(0, cfg.d_vocab, size=(2, cfg.n_ctx + 1))
plain, flash = model_config.Numerics(), model_config.Numerics(attention="flash")
for length in (cfg.n_ctx + 1, 101):  # 128 predictions: whole tiles; 100 (as the paper's 1023): padded to 128
  ids = tokens[:, :length]
  loss = lambda p, n: transformer.context_nll(p, ids, cfg, numerics=n).mean()
  with pltpu.force_tpu_interpret_mode():
    nll_flash = np.asarray(transformer.per_token_nll(params, ids, cfg, numerics=flash))
    grad_flash = jax.grad(loss)(params, flash)
  nll_plain = np.asarray(transformer.per_token_nll(params, ids, cfg, numerics=plain))
  np.testing.assert_allclose(nll_flash, nll_plain, atol=2e-5, rtol=1e-5)  # float32 rounding of NLLs up to ~30 nats
  assert np.abs(nll_plain - nll_plain.mean()).max() > 0.1
  for g_flash, g_plain in zip(jax.tree.leaves(grad_flash), jax.tree.leaves(jax.grad(loss)(params, plain))):
    np.testing.assert_allclose(g_flash, g_plain, atol=2e-5 * max(1.0, float(np.abs(g_plain).max())), rtol=0)
print("flash matches plain")
"""


def test_pallas_flash_attention_matches_the_plain_implementation():
  """The Pallas TPU flash kernel, interpreted on this CPU (`pltpu.force_tpu_interpret_mode`): the same per-token
  NLL and gradients as the explicit softmax (in a child process: interpret mode's simulated TPU memory and host
  callbacks are global state that must not outlive the check in the test process), at whole tiles and at a
  length it pads. Outside TPU and interpret mode it is refused, naming the fix."""
  done = subprocess.run([sys.executable, "-c", _FLASH_CHECK], capture_output=True, text=True, timeout=600)
  assert done.returncode == 0 and "flash matches plain" in done.stdout, done.stderr[-3000:]
  cfg = dataclasses.replace(model_config.get_config("tiny"), n_layers=1, n_ctx=128)
  params = transformer.init_params(cfg, seed=3)
  tokens = np.random.default_rng(0).integers(0, cfg.d_vocab, size=(2, cfg.n_ctx + 1))
  flash = model_config.Numerics(attention="flash")
  with pytest.raises(ValueError, match="attention='flash' is the Pallas TPU kernel; this backend is 'cpu'"):
    transformer.per_token_nll(params, tokens, cfg, numerics=flash)


def test_bfloat16_matmuls_stay_close_and_report_float32():
  cfg = model_config.get_config("tiny")
  params = transformer.init_params(cfg, seed=4)
  tokens = np.random.default_rng(1).integers(0, cfg.d_vocab, size=(4, cfg.n_ctx + 1))
  exact = transformer.per_token_nll(params, tokens, cfg)
  for numerics in (model_config.Numerics(precision="bfloat16"),
                   model_config.Numerics(attention="fused", precision="bfloat16")):
    low = transformer.per_token_nll(params, tokens, cfg, numerics=numerics)
    assert low.dtype == np.float32
    diff = np.abs(np.asarray(low) - np.asarray(exact)).max()
    assert 0 < diff < 0.02, diff  # rounded (so not the float32 program), but only at bf16's ~3 significant digits
  grad = jax.jit(jax.grad(lambda p: transformer.context_nll(p, tokens, cfg, numerics=numerics).mean()))(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grad))  # the backward's matmuls run too
  with pytest.raises(ValueError, match="precision='fp8'"):
    model_config.Numerics(precision="fp8")
  with pytest.raises(ValueError, match="attention='magic'"):
    model_config.Numerics(attention="magic")


def test_a_bfloat16_matmul_on_cpu_multiplies_the_rounded_inputs_in_float32():
  """bfloat16 inputs with float32 accumulation, as on an accelerator: the product of two bfloat16 values is exact
  in float32, so the result is the float64 product of the rounded inputs to float32 rounding. On CPU no dot of
  the compiled program takes bfloat16 operands: XLA:CPU under JAX 0.12 has no kernel for some of them ("Unsupported
  element type for DotThunk::Execute: BF16 x BF16 = F32"), which took the bfloat16 runs down there."""
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(3, 5, 64)).astype(np.float32), rng.normal(size=(64, 7)).astype(np.float32)
  numerics = model_config.Numerics(precision="bfloat16")
  product = jax.jit(lambda a, b: transformer._matmul("btd,dv->btv", a, b, numerics))
  rounded = lambda x: np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32), np.float64)  # noqa: E731
  expected = np.einsum("btd,dv->btv", rounded(a), rounded(b))
  np.testing.assert_allclose(np.asarray(product(a, b)), expected, rtol=1e-6, atol=1e-6)
  assert not np.allclose(np.asarray(product(a, b)), np.einsum("btd,dv->btv", a, b), rtol=1e-4, atol=1e-4)  # rounded
  compiled = product.lower(a, b).compile().as_text()
  dots = [line for line in compiled.splitlines() if " dot(" in line]
  assert dots and not any("bf16" in line.split(" dot(")[0] for line in dots), dots
  operands = {name for line in dots for name in line.split(" dot(")[1].split(")")[0].replace("%", "").split(", ")}
  assert not any(f"%{name} = bf16" in compiled for name in operands), compiled
