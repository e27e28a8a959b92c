"""Library hygiene: a fresh lambda per call neither recompiles forever nor grows memory; any mesh works."""
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, PartitionSpec as P
import numpy as np
import pytest

import suscept_jax as sj
from suscept_jax import function_keys as keys, parallel, programs, streams, toys

pytestmark = pytest.mark.filterwarnings("ignore::suscept_jax.health.SusceptibilityWarning")

H = np.array([1.0, 3.0])
CFG = sj.SGLDConfig(step_size=1e-3, num_chains=4, num_draws=8)


def _data(seed=0):
  return toys.quadratic_dataset(np.random.default_rng(seed), 40, H, 0.5)


def test_function_key_sees_through_fresh_closures():
  def make(scale):
    return lambda p, b: scale * toys.quadratic_loss(p, b)
  assert keys.function_key(make(2.0)) == keys.function_key(make(2.0))
  assert keys.function_key(make(2.0)) != keys.function_key(make(3.0))
  wrap = lambda f: (lambda p, b: f(p, b)[:, None])  # noqa: E731
  assert keys.function_key(wrap(make(2.0))) == keys.function_key(wrap(make(2.0)))
  array_closure = lambda: (lambda p, b: np.ones(3) @ b)  # noqa: E731
  a, b = (lambda arr: (lambda p, x: arr * x))(np.ones(2)), (lambda arr: (lambda p, x: arr * x))(np.ones(2))
  assert keys.function_key(a) is a and keys.function_key(a) != keys.function_key(b)  # unhashable: identity
  assert keys.function_key(array_closure()) == keys.function_key(array_closure())


SCALE = 1.0  # a module global that a loss function reads, as notebook code does


def test_a_global_that_the_loss_reads_is_part_of_its_key():
  """A fresh lambda of the same code reading a global that has changed must not reuse the old program."""
  global SCALE
  data = _data()
  params = toys.quadratic_minimum(data)
  llc = {}
  try:
    for scale in (1.0, 0.0):
      SCALE = scale
      loss_fn = lambda p, b: SCALE * toys.quadratic_loss(p, b)  # noqa: E731
      llc[scale] = sj.estimate_llc(loss_fn, params, data, config=CFG, batch_size=10, progress=False).mean
  finally:
    SCALE = 1.0
  assert llc[1.0] != 0.0 and llc[0.0] == 0.0, llc
  fresh = lambda: (lambda p, b: SCALE * toys.quadratic_loss(p, b))  # noqa: E731
  assert keys.function_key(fresh()) == keys.function_key(fresh())  # the same value: one program


class _Settings:  # a mutable settings object: hashed by identity, so `function_key` cannot see its values
  scale = 1.0


SETTINGS = _Settings()


class _Model:
  def __init__(self, scale):
    self.scale = scale

  def loss(self, p, b):
    return self.scale * toys.quadratic_loss(p, b)


def test_state_read_through_an_attribute_is_part_of_the_key():
  """The same function object reading a changed attribute (a settings object's, a bound method's `self`) must not
  reuse the program traced with the old value: the key holds the digest of a fresh trace (`traced_key`)."""
  data = _data()
  params = toys.quadratic_minimum(data)
  by_global = lambda p, b: SETTINGS.scale * toys.quadratic_loss(p, b)  # noqa: E731
  model = _Model(1.0)
  llc = lambda fn: sj.estimate_llc(fn, params, data, config=CFG, batch_size=10, progress=False).mean  # noqa: E731
  try:
    for fn, holder in ((by_global, SETTINGS), (model.loss, model)):
      holder.scale = 1.0
      before = llc(fn)
      holder.scale = 0.0
      assert before != 0.0 and llc(fn) == 0.0
  finally:
    SETTINGS.scale = 1.0
  one_row = {k: v[:1] for k, v in data.items()}
  assert keys.traced_key(by_global, params, one_row) == keys.traced_key(by_global, params, one_row)
  assert keys.traced_key(_Model(2.0).loss, params, one_row) == keys.traced_key(_Model(2.0).loss, params,
                                                                                       one_row)
  assert keys.traced_key(_Model(2.0).loss, params, one_row) != keys.traced_key(_Model(3.0).loss, params,
                                                                                       one_row)


GRADIENT_SCALE = 1.0  # read only by a custom_jvp rule: the forward pass does not depend on it


@jax.custom_jvp
def _scaled_gradient(x):
  return x


@_scaled_gradient.defjvp
def _scaled_gradient_jvp(primals, tangents):
  return primals[0], jax.tree.map(lambda t: t * GRADIENT_SCALE, tangents[0])


def test_a_setting_only_a_custom_gradient_rule_reads_is_part_of_the_key():
  """The SGLD step differentiates the loss: a value read only by a custom_jvp rule changes the chains while the
  forward trace and the loss's code stay the same. It reran the old program, its LLC silently the old one."""
  global GRADIENT_SCALE
  data = _data()
  params = toys.quadratic_minimum(data)
  make = lambda: (lambda p, b: toys.quadratic_loss(_scaled_gradient(p), b))  # noqa: E731 (fresh per call)
  llc = {}
  try:
    for scale in (1.0, 0.0):
      GRADIENT_SCALE = scale
      llc[scale] = sj.estimate_llc(make(), params, data, config=CFG, batch_size=10, progress=False).mean
    # with no gradient the chains are pure noise about w*: a different LLC from the same noise, not the old one
    assert llc[0.0] != llc[1.0], llc
    one_row = {k: v[:1] for k, v in data.items()}
    with_zero = keys.traced_key(make(), params, one_row, gradient=True)
  finally:
    GRADIENT_SCALE = 1.0
  assert with_zero != keys.traced_key(make(), params, one_row, gradient=True)
  assert keys.traced_key(make(), params, one_row, gradient=True) == keys.traced_key(make(), params, one_row,
                                                                                    gradient=True)


def test_fresh_lambdas_compile_once_and_the_cache_is_bounded(monkeypatch):
  data = _data()
  params = toys.quadratic_minimum(data)
  programs._COMPILED.clear()
  results = []
  for _ in range(3):  # a new lambda each call, as a user writes it inside a loop
    loss_fn = lambda p, b, scale=1.0: scale * toys.quadratic_loss(p, b)  # noqa: E731
    results.append(sj.estimate_llc(loss_fn, params, data, config=CFG, batch_size=10, progress=False).mean)
  assert sorted(key[0] for key in programs._COMPILED) == ["draw"]  # one, not one per call
  assert results[0] == results[1] == results[2]
  monkeypatch.setattr(programs, "COMPILED_CACHE_SIZE", 2)
  for i in range(4):  # closures over arrays cannot be keyed by value: each compiles, but at most 2 are kept
    weight = np.float32(1.0) + np.zeros(1, np.float32) * i
    loss_fn = lambda p, b: weight[0] * toys.quadratic_loss(p, b)  # noqa: E731
    sj.estimate_llc(loss_fn, params, data, config=CFG, batch_size=10, progress=False)
    assert len(programs._COMPILED) <= 2


@pytest.mark.parametrize("shape, names, axis_type", [((4,), ("data",), AxisType.Auto),
                                                     ((2, 2), ("x", "y"), AxisType.Auto),
                                                     ((4,), ("entries",), AxisType.Explicit)])
def test_any_user_mesh_gives_the_same_numbers(shape, names, axis_type):
  """Also a mesh named like ours with an Explicit axis (`jax.make_mesh`'s default in newer JAX), under which
  shard_map refuses host arrays for a split axis."""
  data = _data(1)
  params = toys.quadratic_minimum(data)
  components = {"full": None, "first": {"w": np.array([1.0, 0.0])}}
  probe = toys.quadratic_dataset(np.random.default_rng(5), 40, 2 * H, 0.5)
  run = lambda mesh: sj.estimate_susceptibilities(  # noqa: E731
      toys.quadratic_loss, params, components, data, {"p": probe}, config=CFG, batch_size=10, progress=False, mesh=mesh)
  reference = run(None)
  mesh = jax.make_mesh(shape, names, devices=jax.devices()[:4], axis_types=(axis_type,) * len(shape))
  np.testing.assert_array_equal(run(mesh).chi, reference.chi)


def test_zero_size_arrays_stay_out_of_shard_map():
  """`parallel.shard_map_without_empty` gives what `jax.shard_map` gives where that compiles: zero-size inputs
  returned as they came and through a loop's carry (what crashes jaxlib 0.11.2's compiler over ≥ 2 devices),
  split or replicated, and zero-size results made inside."""
  mesh = parallel.entry_mesh(jax.devices()[:4])
  e, rep = P(parallel.ENTRY_AXIS), P()

  def body(x_E, empty_Ex0, table_0x3):
    looped = jax.lax.fori_loop(0, 3, lambda i, c: (c[0] * 2.0 + i, c[1] + 1.0), (x_E, empty_Ex0))
    return {"looped": looped, "kept": empty_Ex0, "made": jnp.zeros((x_E.shape[0], 0, 2)), "table": table_0x3}

  in_specs, out_specs = (e, e, rep), {"looped": (e, e), "kept": e, "made": e, "table": rep}
  args = (np.arange(8.0, dtype=np.float32), np.zeros((8, 0), np.float32), np.zeros((0, 3), np.int32))
  ours = jax.jit(parallel.shard_map_without_empty(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs))(*args)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), ours) == {
      "looped": (((8,), jnp.float32), ((8, 0), jnp.float32)), "kept": ((8, 0), jnp.float32),
      "made": ((8, 0, 2), jnp.float32), "table": ((0, 3), jnp.int32)}
  np.testing.assert_array_equal(ours["looped"][0], (np.arange(8.0) * 8 + 4))  # ((x·2 + 0)·2 + 1)·2 + 2
  if jax.__version_info__ < (0, 11):  # (the plain one crashes jaxlib 0.11.2)
    plain = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs))(*args)
    jax.tree.map(np.testing.assert_array_equal, ours, plain)


def test_a_mesh_that_is_not_a_mesh_is_refused():
  data = _data()
  with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
    sj.estimate_llc(toys.quadratic_loss, toys.quadratic_minimum(data), data, config=CFG, batch_size=10,
                    progress=False, mesh=jax.devices())


def test_chain_keys_do_not_depend_on_the_group_they_are_derived_with():
  """Keys are derived in padded blocks (one program for groups of any size up to the block): each entry's key
  is fold_in(seed, checkpoint, component, chain) whatever else is derived with it, so adding a component
  changes no other chain's noise."""
  names = ["full", "l0h0", "l1h3"]
  together = streams.chain_keys(7, 3, names, 3)
  assert together.shape == (9, 2)
  alone = np.concatenate([streams.chain_keys(7, 3, [name], 3) for name in names])
  np.testing.assert_array_equal(together, alone)
  root = jax.random.fold_in(jax.random.key(7), 3)
  expected = jax.random.key_data(jax.random.fold_in(jax.random.fold_in(root, streams.component_seed("l1h3")), 2))
  np.testing.assert_array_equal(together[-1], expected)
  many = [f"c{i}" for i in range(40)]  # more rows than one block
  np.testing.assert_array_equal(streams.chain_keys(7, 3, many, 2)[-2:], streams.chain_keys(7, 3, many[-1:], 2))
  # Every entry its own noise: components sharing keys would share their chains' noise (a constant
  # component_seed left every other test green), and their χ errors would move together.
  heads = ["full"] + [f"l{layer}h{head}" for layer in range(2) for head in range(8)]
  keys = streams.chain_keys(0, 0, heads, 4)
  assert len({tuple(row) for row in keys}) == 17 * 4
  assert not np.array_equal(streams.chain_keys(0, 1, heads, 4), keys)  # and per checkpoint


def test_each_group_lowers_its_draw_program_once_and_its_calls_reuse_it():
  """The sampler compiles each component group's draw program ahead of its first call (`compile_ahead`, one
  group tracing at a time); the calls must reuse that compilation, not lower and compile it again."""
  data = _data(2)
  w_star = toys.quadratic_minimum(data)
  params = {"u": w_star["w"][:1], "v": w_star["w"][1:]}
  loss_fn = lambda p, b: toys.quadratic_loss({"w": jnp.concatenate([p["u"], p["v"]])}, b)  # noqa: E731
  components = {"full": None, "u": {"u": np.ones(1), "v": np.zeros(1)}, "v": {"u": np.zeros(1), "v": np.ones(1)}}
  probe = toys.quadratic_dataset(np.random.default_rng(6), 40, 2 * H, 0.5)
  lowered = []
  def listen(event, duration, **kwargs):
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration" and "draw_chunk" in str(kwargs.get("fun_name")):
      lowered.append(kwargs["fun_name"])
  programs._COMPILED.clear()
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    result = sj.estimate_susceptibilities(loss_fn, params, components, data, {"p": probe}, config=CFG, batch_size=10,
                                          progress=False)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert len(programs._COMPILED) == 3  # full, u, v: three groups
  assert len(lowered) == 3, lowered
  assert np.all(np.isfinite(result.chi))
