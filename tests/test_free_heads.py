"""Cost that follows what is free, within a layer: where each component of a program frees one head, the loss
computes the layer's other heads at w* and differentiates only that head (`restricted.SliceLayout`,
`transformer._one_head_free`). The numbers must not change beyond rounding, and the programs must do less work."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from suscept_jax import batched, masks as masks_lib, restricted, sampler, sgld
from suscept_jax.models import components, config as model_config, transformer
from suscept_jax.models.config import HEAD_LEAVES, Numerics


@pytest.fixture(scope="module")
def model():
  cfg = model_config.get_config("tiny", d_vocab=64, n_heads=3)
  params = transformer.init_params(cfg, seed=0)
  params = jax.tree.map(lambda a: a * 4.0 + 0.05, params)  # sharper patterns than at init, every bias non-zero
  contexts = np.random.default_rng(0).integers(0, 64, (6, cfg.n_ctx), dtype=np.int32)
  return cfg, params, contexts


def layout_of(specs, params, cfg):
  """The slice layout of one program over `specs` (the leaves any of them frees differentiated)."""
  names, masks_C = masks_lib.stack_masks(components.component_masks(specs, params, cfg), params)
  free = restricted.free_leaves(masks_C, range(len(names)))
  return restricted.slice_layout(masks_C, params, None if all(free) else free)


def test_heads_of_a_layer_form_one_slice_group(model):
  cfg, params, _ = model
  layout = layout_of(["l1h2", "l1h0"], params, cfg)
  paths = masks_lib.leaf_paths(params)
  grouped = {p for p, g in zip(paths, layout.group_of_leaf) if g is not None}
  assert grouped == {f"blocks/1/attn/{name}" for name in HEAD_LEAVES}
  assert set(layout.group_of_leaf) == {None, 0} and layout.index_CxG == ((2,), (0,))
  # A component freeing every head of the leaves in the same program (one program for all): nothing sliced.
  assert layout_of(["l1h0", "l1 attn"], params, cfg) is None
  assert layout_of(["full"], params, cfg) is None and layout_of(["full", "l1h0"], params, cfg) is None
  both_layers = layout_of(["l0h1", "l1h2"], params, cfg)  # (not one group's program: restrict_gradients=False)
  assert both_layers is None  # each leaf is freed in one head by one component, in none by the other


def test_uneven_slices_form_groups_the_model_does_not_use(model):
  """A component freeing head 0 of W_Q but head 1 of the other head leaves: two slice groups, and the model
  computes every head of that layer (it takes the path only where all its head leaves are in one group)."""
  cfg, params, _ = model
  mask = jax.tree_util.tree_map_with_path(
      lambda path, p: np.broadcast_to(
          (np.arange(cfg.n_heads) == (0 if masks_lib.leaf_path(path).endswith("W_Q") else 1)).reshape(
              (-1,) + (1,) * (np.ndim(p) - 1)), np.shape(p))
      if masks_lib.leaf_path(path).startswith("blocks/1/attn/") and masks_lib.leaf_path(path)[-3:] in HEAD_LEAVES
      else np.zeros(np.shape(p), bool), params)
  names, masks_C = masks_lib.stack_masks({"odd": mask, "l1h2": components.component_mask("l1h2", params, cfg)},
                                         params)
  layout = restricted.slice_layout(masks_C, params)
  assert len(layout.index_CxG[0]) == 2
  told = restricted.with_free_slices(functools.partial(transformer.per_token_nll, config=cfg), layout, params, 0)
  assert transformer._free_head(told.keywords["free_slices"], 1) is None
  assert transformer._free_head(told.keywords["free_slices"], 0) is None


def test_a_loss_is_told_its_slices_only_where_it_takes_them(model):
  cfg, params, _ = model
  layout = layout_of(["l0h1", "l0h2"], params, cfg)
  takes = functools.partial(transformer.context_nll, config=cfg)
  does_not = lambda p, b: transformer.context_nll(p, b, cfg)  # noqa: E731
  assert restricted.accepts_free_slices(takes) and not restricted.accepts_free_slices(does_not)
  assert restricted.with_free_slices(does_not, layout, params, 1) is does_not
  assert restricted.with_free_slices(takes, None, params, 1) is takes
  told = restricted.with_free_slices(takes, layout, params, 1)
  assert int(transformer._free_head(told.keywords["free_slices"], 0).index) == 2
  assert transformer._free_head(told.keywords["free_slices"], 1) is None  # layer 1 is frozen here


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("numerics", [Numerics(), Numerics(precision="bfloat16"), Numerics(attention="fused")],
                         ids=["float32", "bfloat16", "fused"])
def test_one_free_head_gives_the_same_losses_and_gradient(model, layer, numerics):
  """Head 1 of a layer moved away from w*: the per-token losses and that head's gradient as with every head
  computed; the other heads' slices get no gradient (they never move)."""
  cfg, params, contexts = model
  head = 1
  layout = layout_of([f"l{layer}h0", f"l{layer}h{head}"], params, cfg)
  rng = np.random.default_rng(1)
  attn = params["blocks"][str(layer)]["attn"]
  moved = jax.tree.map(lambda a: a, params)
  moved["blocks"][str(layer)]["attn"] = {
      name: a + (0.3 * rng.standard_normal(a.shape).astype(np.float32)
                 * (np.arange(cfg.n_heads) == head).reshape((-1,) + (1,) * (a.ndim - 1)) if name in HEAD_LEAVES
                 else 0) for name, a in attn.items()}
  plain = functools.partial(transformer.per_token_nll, config=cfg, numerics=numerics)
  told = restricted.with_free_slices(plain, layout, params, 1)
  assert transformer._free_head(told.keywords["free_slices"], layer) is not None
  told, plain = jax.jit(told), jax.jit(plain)  # (XLA:CPU runs bfloat16 dots only compiled)
  mean = lambda fn: lambda p: fn(p, contexts).mean()  # noqa: E731
  tol = dict(rtol=2e-2, atol=2e-3) if numerics.precision == "bfloat16" else dict(rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(told(moved, contexts), plain(moved, contexts), **tol)
  assert not np.allclose(plain(moved, contexts), plain(params, contexts), rtol=1e-3)  # the move matters
  grad_told, grad_plain = (jax.grad(mean(fn))(moved)["blocks"][str(layer)]["attn"] for fn in (told, plain))
  for name in HEAD_LEAVES:
    np.testing.assert_allclose(grad_told[name][head], grad_plain[name][head], err_msg=name, **tol)
    assert not np.any(np.delete(np.asarray(grad_told[name]), head, axis=0)), name
  # A jitted loss function takes them too (the groups are static in the pytree).
  jitted = restricted.with_free_slices(jax.jit(functools.partial(transformer.per_token_nll, config=cfg,
                                                                 numerics=numerics)), layout, params, 1)
  assert "free_slices" in jitted.keywords
  np.testing.assert_allclose(jax.jit(jitted)(moved, contexts), plain(moved, contexts), **tol)
  # With heads scaled (ablation) the model computes every head, as without slices.
  scale_LxH = jnp.ones((cfg.n_layers, cfg.n_heads)).at[layer, 0].set(0.0)
  np.testing.assert_array_equal(told(moved, contexts, head_scale_LxH=scale_LxH),
                                plain(moved, contexts, head_scale_LxH=scale_LxH))


def test_the_head_path_gives_the_same_chains_and_does_less_work(model, monkeypatch):
  """The sampler with a loss that takes `free_slices=` against the same loss hidden behind a lambda (every head
  computed): the same traces and per-token moments to rounding; XLA counts less work for a layer-1 head's
  gradient on the entry grid."""
  cfg, params, contexts = model
  specs = ["full", "l0h0", "l0h2", "l1h1", "l1h2"]
  names, masks_C = masks_lib.stack_masks(components.component_masks(specs, params, cfg), params)
  rng = np.random.default_rng(2)
  base = rng.integers(0, 64, (96, cfg.n_ctx), dtype=np.int32)
  probes = {"other": rng.integers(0, 32, (96, cfg.n_ctx), dtype=np.int32)}
  loss, tokens = (functools.partial(f, config=cfg) for f in (transformer.context_nll, transformer.per_token_nll))
  hidden = lambda f: lambda p, b: f(p, b)  # noqa: E731
  config = sgld.SGLDConfig(step_size=1e-3, nbeta=30.0, localization=100.0, num_chains=2, num_draws=6, mala_every=2)
  run = lambda lf, tf: sampler.run(lf, params, names, masks_C, base, probes, config=config, batch_size=16,  # noqa
                                   delta_h=0.25, progress=False, observed=contexts[:3], token_loss_fn=tf)
  traced = []  # the head path, each time a program traces it (gradient, probes and observed tokens)
  monkeypatch.setattr(transformer, "_one_head_free",
                      lambda *args, one=transformer._one_head_free: traced.append(1) or one(*args))
  sliced = run(loss, tokens)
  assert len(traced) >= 2 * 3  # two head groups, three places each
  traced.clear()
  every_head = run(hidden(loss), hidden(tokens))
  assert not traced
  assert np.ptp(sliced.phi_trace) > 1e-3
  for field in ("loss_trace", "phi_trace", "delta_loss_trace"):
    np.testing.assert_allclose(getattr(sliced, field), getattr(every_head, field), rtol=1e-5, atol=2e-6,
                               err_msg=field)
  for a, b in zip(jax.tree.leaves(sliced.token_moments), jax.tree.leaves(every_head.token_moments)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)

  (free, comps), = [(f, c) for f, c in restricted.component_groups(masks_C, len(names)) if names[c[0]] == "l1h1"]
  layout = restricted.slice_layout(jax.tree.map(lambda m: np.asarray(m)[comps], masks_C), params, free)
  C, K = len(comps), 2
  positions = jax.tree.map(lambda a: np.broadcast_to(a, (C * K,) + np.shape(a)), params)
  batch_K = base[:K * 16].reshape(K, 16, -1)
  component_E, stream_E = np.repeat(np.arange(C), K), np.tile(np.arange(K), C)

  def flops(loss_fn):
    grad = lambda w, c, b: batched.loss_and_grad(restricted.with_free_slices(loss_fn, layout, params, c), w, b,  # noqa
                                                 None, free, params)
    program = jax.jit(lambda w, c, b: restricted.over_entries(grad, restricted.entry_grid(C, K, 1, free), (w, c), b,
                                                              stream_E))
    return program.lower(positions, component_E, batch_K).compile().cost_analysis()["flops"]

  assert flops(loss) < 0.9 * flops(hidden(loss))
