"""Cost that follows what is free: one program per group of components freeing the same leaves, each
differentiating only those. The chains must be the same as with full gradients (within rounding), and the
restricted programs must really do less work."""
import functools
import os
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from suscept_jax import (batched, chunks, compile_options, function_keys, masks as masks_lib, parallel, programs,
                         restricted, sampler, sgld)
from suscept_jax.models import components, config as model_config, transformer
from tests import XLA_TEST_FLAGS

SPECS = ["full", "l0h1", "l1h0", "l1h1", "unembed"]


@pytest.fixture(scope="module")
def problem():
  cfg = model_config.get_config("tiny", d_vocab=64)
  params = transformer.init_params(cfg, seed=0)
  names, masks_C = masks_lib.stack_masks(components.component_masks(SPECS, params, cfg), params)
  rng = np.random.default_rng(0)
  base = rng.integers(0, 64, (96, cfg.n_ctx), dtype=np.int32)
  probes = {"other": rng.integers(0, 32, (96, cfg.n_ctx), dtype=np.int32)}
  observed = rng.integers(0, 64, (3, cfg.n_ctx), dtype=np.int32)
  loss, tokens = (functools.partial(f, config=cfg) for f in (transformer.context_nll, transformer.per_token_nll))
  return cfg, params, names, masks_C, base, probes, observed, loss, tokens


def test_components_are_grouped_by_the_leaves_they_free(problem):
  cfg, params, names, masks_C, *_ = problem
  groups = restricted.component_groups(masks_C, len(names))
  assert [[names[c] for c in comps] for _, comps in groups] == [["full"], ["l0h1"], ["l1h0", "l1h1"], ["unembed"]]
  paths = masks_lib.leaf_paths(params)
  free_paths = {names[comps[0]]: {p for p, f in zip(paths, free) if f} for free, comps in groups}
  assert free_paths["full"] == set(paths)
  assert free_paths["l1h0"] and all("1" in p for p in free_paths["l1h0"]), free_paths["l1h0"]
  assert free_paths["unembed"] and all("unembed" in p for p in free_paths["unembed"]), free_paths["unembed"]


def test_a_free_view_carries_only_the_free_leaves(problem):
  """A group's state is the flat vector of its free leaves; the tree the loss sees fills the rest with w*."""
  cfg, params, names, masks_C, *_ = problem
  leaves = jax.tree.leaves(params)
  free = restricted.free_leaves(masks_C, [names.index("l1h0")])
  view = restricted.FreeView(params, free)
  flat_P = np.concatenate([np.ravel(a) for a in leaves])
  assert view.size == sum(np.size(a) for a, f in zip(leaves, free) if f) < flat_P.size
  np.testing.assert_array_equal(np.asarray(view.ravel(params)), flat_P[view.columns()])
  moved = jax.tree.map(lambda a: a + 1.0, params)
  tree = view.tree_of(view.ravel(moved))
  for a, m, t, f in zip(leaves, jax.tree.leaves(moved), jax.tree.leaves(tree), free):
    np.testing.assert_array_equal(np.asarray(t), np.asarray(m if f else a))
  masks_CxF = chunks.flat_masks(masks_C, params, free)
  np.testing.assert_array_equal(masks_CxF, chunks.flat_masks(masks_C, params)[:, view.columns()])
  assert masks_CxF[names.index("l1h0")].sum() == masks_CxF[names.index("l1h0")].size // cfg.n_heads > 0
  everything = restricted.FreeView(params, None)
  assert everything.size == flat_P.size and everything.segments == ((0, flat_P.size),)


def test_restricted_programs_give_the_same_chains(problem):
  cfg, params, names, masks_C, base, probes, observed, loss, tokens = problem
  config = sgld.SGLDConfig(step_size=1e-3, nbeta=30.0, localization=100.0, num_chains=2, num_draws=6, num_burnin=2,
                           mala_every=2)
  run = lambda restrict: sampler.run(loss, params, names, masks_C, base, probes, config=config, batch_size=16,
                                     delta_h=0.25, restrict_gradients=restrict, progress=False, observed=observed,
                                     token_loss_fn=tokens)
  full, restricted = run(False), run(True)
  assert np.ptp(full.phi_trace) > 1e-3  # the chains moved, so equality below says something
  for field in ("loss_trace", "phi_trace", "delta_loss_trace"):
    np.testing.assert_allclose(getattr(restricted, field), getattr(full, field), rtol=2e-4, atol=2e-6, err_msg=field)
  # MALA's log-ratio is the difference of two float32 sums over every free coordinate (each ≈ half their
  # number), so rounding leaves ≈ 1e-4 of the acceptance even between identical chains.
  np.testing.assert_allclose(restricted.mala, full.mala, rtol=0, atol=5e-4)
  np.testing.assert_array_equal(restricted.loss_star_trace, full.loss_star_trace)
  for a, b in zip(jax.tree.leaves(restricted.token_moments), jax.tree.leaves(full.token_moments)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  for a, b in zip(jax.tree.leaves(restricted.moments), jax.tree.leaves(full.moments)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_a_restricted_program_does_less_work(problem):
  """XLA's own flop count of one gradient: a layer-1 head skips the backward pass into layer 0 and the
  unembedding's weight gradient; an unembedding component skips the whole backward pass below it."""
  cfg, params, names, masks_C, base, *_ , loss, _ = problem
  batch = base[:16]
  flops = {}
  for free, comps in restricted.component_groups(masks_C, len(names)):
    fn = jax.jit(lambda w, b, free=None if all(free) else free: batched.loss_and_grad(loss, w, b, None, free, params))
    flops[names[comps[0]]] = fn.lower(params, batch).compile().cost_analysis()["flops"]
  forward = jax.jit(loss).lower(params, batch).compile().cost_analysis()["flops"]
  assert flops["unembed"] < flops["l1h0"] < flops["l0h1"] <= flops["full"], flops
  assert flops["full"] > 2.5 * forward  # a full gradient is forward + ~2× backward
  assert flops["unembed"] < 1.6 * forward, (flops, forward)


_SIDE_BY_SIDE_CHECK = """
import functools, os, threading
import jax, jax.numpy as jnp, numpy as np
from suscept_jax import batched, chunks, masks as masks_lib, parallel, sampler, sgld
from suscept_jax.models import components, config as model_config, transformer
assert jax.device_count() == 1
cfg = model_config.get_config("tiny", d_vocab=64)
params = transformer.init_params(cfg, seed=0)
names, masks_C = masks_lib.stack_masks(components.component_masks(%r, params, cfg), params)
rng = np.random.default_rng(0)
base = rng.integers(0, 63, (96, cfg.n_ctx), dtype=np.int32)
probes = {"other": rng.integers(0, 32, (96, cfg.n_ctx), dtype=np.int32)}
observed = rng.integers(0, 64, (3, cfg.n_ctx), dtype=np.int32)
loss, tokens = (functools.partial(f, config=cfg) for f in (transformer.context_nll, transformer.per_token_nll))
assert sampler.MAX_CONCURRENT_PROGRAMS is None  # the default
assert sampler.concurrent_programs(parallel.as_entry_mesh(None), 4) == min(4, os.cpu_count())
config = sgld.SGLDConfig(step_size=1e-3, nbeta=30.0, localization=100.0, num_chains=2, num_draws=5, mala_every=2)
run = lambda lf, b: sampler.run(lf, params, names, masks_C, b, probes, config=config, batch_size=16, delta_h=0.25,
                                progress=False, observed=observed, token_loss_fn=tokens)
# Two workers for four groups: the last two groups are compiled meanwhile, in threads of their own, and their
# calls reuse those compilations (each group's draw program lowered and compiled once, by the thread named here).
lowered_by, compiled = [], []
def listen(event, duration, **kwargs):
  if "draw_chunk" in str(kwargs.get("fun_name")):
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
      lowered_by.append(threading.current_thread().name)
    if event == "/jax/core/compile/backend_compile_duration":
      compiled.append(event)
jax.monitoring.register_event_duration_secs_listener(listen)
sampler.MAX_CONCURRENT_PROGRAMS = 2
side_by_side = run(loss, base)
jax.monitoring.unregister_event_duration_listener(listen)
assert sorted(name.startswith(sampler.COMPILE_AHEAD_THREAD) for name in lowered_by) == [False] * 2 + [True] * 2, \
    lowered_by
assert len(compiled) == 4, compiled
sampler.MAX_CONCURRENT_PROGRAMS = 3
three_workers = run(loss, base)
sampler.MAX_CONCURRENT_PROGRAMS = 1
one_by_one = run(loss, base)
compared = lambda out: out._replace(seconds=0.0)
for other in (side_by_side, three_workers):
  for a, b in zip(jax.tree.leaves(compared(other)), jax.tree.leaves(compared(one_by_one)), strict=True):
    np.testing.assert_array_equal(a, b)
# A group meeting a non-finite base sample in a worker thread: DataFaultError in the caller, naming it.
sampler.MAX_CONCURRENT_PROGRAMS = 2
bad = 37
base[bad, 0] = 63  # the only context starting with token 63: its loss is NaN
nan_loss = lambda p, b: jnp.where(b[:, 0] == 63, jnp.nan, loss(p, b))
config = sgld.SGLDConfig(step_size=1e-3, nbeta=30.0, localization=100.0, num_chains=2, num_draws=30, mala_every=0)
try:
  run(nan_loss, base)
except batched.DataFaultError as e:
  assert f"sample(s) [{bad}]" in str(e), e
else:
  raise AssertionError("no DataFaultError")
print("side by side = one by one; faults surface")
"""


def test_groups_running_side_by_side_give_identical_numbers_and_surface_faults():
  """On by default on a one-device CPU mesh: the groups' programs run from one pool thread each, and groups
  waiting for a thread are compiled meanwhile. The numbers must not notice, the waiting groups' calls reuse
  those compilations, and a data fault met in a worker thread is raised in the caller naming the sample. In a
  child process with one CPU device (this one has 4 emulated devices, where groups run one at a time) and
  XLA's default emitters, as users run it (the suite's other processes compile with the older ones)."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f not in XLA_TEST_FLAGS]
  env = {**os.environ, "XLA_FLAGS": " ".join(flags)}
  done = subprocess.run([sys.executable, "-c", _SIDE_BY_SIDE_CHECK % (SPECS,)], capture_output=True, text=True,
                        timeout=600, env=env)
  assert done.returncode == 0 and "side by side = one by one" in done.stdout, done.stderr[-3000:]


def test_a_mesh_of_several_devices_runs_one_program_at_a_time():
  assert sampler.MAX_CONCURRENT_PROGRAMS is None
  assert jax.device_count() == 4
  assert sampler.concurrent_programs(parallel.as_entry_mesh(None), 4) == 1
  one_device = parallel.as_entry_mesh(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",)))
  assert sampler.concurrent_programs(one_device, 4) == min(4, os.cpu_count())


def test_accelerators_run_one_program_at_a_time():
  """Programs running side by side would share one device's memory, which auto-sizing plans for one."""
  class Device:
    platform = "tpu"
  class Mesh:
    devices = np.array([Device(), Device()])
  assert sampler.concurrent_programs(Mesh(), 4) == 1


def test_groups_run_one_at_a_time_are_compiled_ahead_where_compiling_is_the_hosts_work(problem, monkeypatch):
  """On an accelerator groups run one after another, and each used to compile when its turn came (the H200's
  cold demo job: 52 of 52.3 s compiling). Now every group is compiled at once, each in a thread of its own,
  before any samples, and its call reuses that compilation. Exercised on this process's mesh of 4 CPU devices
  (`COMPILE_AHEAD` forced on, where it is off by default): the same numbers as without."""
  cfg, params, names, masks_C, base, probes, observed, loss, tokens = problem
  class Device:
    platform = "gpu"
  class Mesh:
    devices = np.array([Device()])
  cpu_mesh = parallel.as_entry_mesh(None)
  assert sampler.COMPILE_AHEAD is None
  assert sampler.compiles_ahead(Mesh(), 1)
  assert not sampler.compiles_ahead(cpu_mesh, sampler.concurrent_programs(cpu_mesh, 4))  # 4 devices: one worker
  assert sampler.compiles_ahead(cpu_mesh, 2)
  config = sgld.SGLDConfig(step_size=1e-3, nbeta=30.0, localization=100.0, num_chains=2, num_draws=4, mala_every=2)
  fresh_loss = lambda w, b, free_slices=None: loss(w, b, free_slices=free_slices)  # noqa: E731 (code of its own:
  # no program of it is compiled yet; told the free heads, as `loss` is)
  run = lambda lf: sampler.run(lf, params, names, masks_C, base, probes, config=config, batch_size=16,  # noqa: E731
                               delta_h=0.25, progress=False, observed=observed, token_loss_fn=tokens)
  lowered_by, compiled, sampling = [], [], []
  def listen(event, duration, **kwargs):
    if "draw_chunk" in str(kwargs.get("fun_name")):
      if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
        lowered_by.append(threading.current_thread().name)
      if event == "/jax/core/compile/backend_compile_duration":
        compiled.append(time.perf_counter())
  sample_blocks = sampler._sample_blocks
  def noting_when_sampling_starts(*args):
    sampling.append(time.perf_counter())
    return sample_blocks(*args)
  monkeypatch.setattr(sampler, "_sample_blocks", noting_when_sampling_starts)
  monkeypatch.setattr(sampler, "COMPILE_AHEAD", True)
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    ahead = run(fresh_loss)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  num_groups = len(restricted.component_groups(masks_C, len(names)))
  assert [name.startswith(sampler.COMPILE_AHEAD_THREAD) for name in lowered_by] == [True] * num_groups, lowered_by
  assert len(compiled) == num_groups == len(sampling), (compiled, sampling)
  assert max(compiled) < min(sampling)  # no group samples beside another's compilation
  monkeypatch.setattr(sampler, "COMPILE_AHEAD", False)
  in_turn = run(loss)
  for a, b in zip(jax.tree.leaves(ahead._replace(seconds=0.0)), jax.tree.leaves(in_turn._replace(seconds=0.0)),
                  strict=True):
    np.testing.assert_array_equal(a, b)


def test_a_run_traces_its_functions_once_for_all_its_groups(problem, monkeypatch):
  """Tracing the loss, its gradient and the token loss for each group's program (and again for each group
  compiled ahead) took ≈ 1.9 s of the demo's compiled dataset-level run (BUILD_NOTES, forty-fifth session): a run
  traces them once, however many groups it runs."""
  cfg, params, names, masks_C, base, probes, observed, loss, tokens = problem
  traced, traced_keys = [], function_keys.traced_keys
  monkeypatch.setattr(function_keys, "traced_keys", lambda fn, *a, **k: traced.append(fn) or traced_keys(fn, *a, **k))
  config = sgld.SGLDConfig(step_size=1e-3, nbeta=30.0, localization=100.0, num_chains=2, num_draws=2)
  sampler.run(loss, params, names, masks_C, base, probes, config=config, batch_size=16, delta_h=0.25, progress=False,
              observed=observed, token_loss_fn=tokens)
  assert len(restricted.component_groups(masks_C, len(names))) >= 3
  assert traced == [loss, tokens], traced  # the loss (its forward and gradient from one trace), the token loss


def test_cpu_programs_compiled_with_our_options_give_the_same_chains(problem, monkeypatch):
  """LLVM level 1 and the LLVM IR fusion emitters are compile-time levers only: the chains match XLA's defaults
  within float rounding."""
  cfg, params, names, masks_C, base, probes, observed, loss, tokens = problem
  config = sgld.SGLDConfig(step_size=1e-3, nbeta=30.0, localization=100.0, num_chains=2, num_draws=6, mala_every=2)
  def run(level, emitters):
    monkeypatch.setattr(compile_options, "CPU_BACKEND_OPTIMIZATION_LEVEL", level)
    monkeypatch.setattr(compile_options, "CPU_FUSION_EMITTERS", emitters)
    return sampler.run(loss, params, names, masks_C, base, probes, config=config, batch_size=16, delta_h=0.25,
                       progress=False, observed=observed, token_loss_fn=tokens)
  default, ours = run(None, True), run(1, False)
  assert np.ptp(default.phi_trace) > 1e-3
  for field in ("loss_trace", "phi_trace", "delta_loss_trace"):
    np.testing.assert_allclose(getattr(ours, field), getattr(default, field), rtol=2e-4, atol=2e-6, err_msg=field)
  for a, b in zip(jax.tree.leaves(ours.token_moments), jax.tree.leaves(default.token_moments)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  class Device:
    platform = "gpu"
  class Mesh:
    devices = np.array([Device()])
  assert programs.compiler_options(Mesh()) == {}  # accelerators keep XLA's defaults
  assert programs.compiler_options(parallel.as_entry_mesh(None)) == compile_options.for_platform("cpu")
  assert programs.compiler_options(parallel.as_entry_mesh(None))["xla_backend_optimization_level"] == 1


def test_the_runners_flag_turns_side_by_side_off_and_on(monkeypatch, parsed_runner_flags):
  from absl.testing import flagsaver
  from suscept_jax_runners import cli
  monkeypatch.setattr(sampler, "MAX_CONCURRENT_PROGRAMS", None)
  with flagsaver.flagsaver(groups_side_by_side=False):
    cli.apply_groups_side_by_side()
    assert sampler.MAX_CONCURRENT_PROGRAMS == 1
  with flagsaver.flagsaver(groups_side_by_side=True):
    cli.apply_groups_side_by_side()
    assert sampler.MAX_CONCURRENT_PROGRAMS is None


def test_the_entry_grid_is_used_where_there_is_work_to_share():
  some_frozen, all_free = (True, False, True), (True, True, True)
  assert restricted.entry_grid(4, 4, 1, some_frozen) == (4, 4)
  assert restricted.entry_grid(8, 4, 4, some_frozen) == (2, 4)  # a TPU v4-8: two heads of a layer per chip
  assert restricted.entry_grid(4, 4, 4, some_frozen) is None  # one component per device: nothing to share
  assert restricted.entry_grid(3, 4, 2, some_frozen) is None  # not whole components per device
  assert restricted.entry_grid(4, 4, 1, all_free) is None and restricted.entry_grid(4, 4, 1, None) is None


def test_frozen_layers_run_once_per_chain_on_the_entry_grid(problem):
  """Two layer-1 heads × two chains: on the grid, the embedding and layer 0 (frozen, and fed the same batch
  by chain k of both heads) are computed once per chain. Same numbers as the flat layout to rounding, and
  XLA counts less work."""
  cfg, params, names, masks_C, base, *_ , loss, _ = problem
  (free, comps), = [(f, c) for f, c in restricted.component_groups(masks_C, len(names)) if names[c[0]] == "l1h0"]
  C, K = len(comps), 2
  scale_E = 1 + 1e-2 * np.arange(C * K, dtype=np.float32)  # every entry at its own point
  positions = jax.tree.map(lambda a: a[None] * scale_E.reshape((-1,) + (1,) * np.ndim(a)), params)
  batch_K = base[:K * 16].reshape(K, 16, -1)
  stream_E = np.tile(np.arange(K), C)
  grad = lambda w, b: batched.loss_and_grad(loss, w, b, None, free, params)
  program = lambda grid: jax.jit(lambda w, b: restricted.over_entries(grad, grid, (w,), b, stream_E)).lower(
      positions, batch_K).compile()
  flat, grid = program(None), program(restricted.entry_grid(C, K, 1, free))
  for a, b in zip(jax.tree.leaves(flat(positions, batch_K)), jax.tree.leaves(grid(positions, batch_K))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
  assert grid.cost_analysis()["flops"] < 0.95 * flat.cost_analysis()["flops"]
  with pytest.raises(ValueError, match=r"grid \(2, 3\) holds 6 entries, but the entry arguments have 4"):
    restricted.over_entries(grad, (2, 3), (positions,), batch_K, stream_E)


def test_one_and_four_devices_agree_on_a_transformer(problem):
  """The device count changes only rounding: the same batches and noise, but XLA may round a vmap of
  another size differently, and on one device the layer-1 heads run on the entry grid (on four, flat)."""
  cfg, params, names, masks_C, base, probes, observed, loss, tokens = problem
  assert jax.device_count() == 4
  config = sgld.SGLDConfig(step_size=1e-3, nbeta=30.0, localization=100.0, num_chains=2, num_draws=6, mala_every=2)
  run = lambda mesh: sampler.run(loss, params, names, masks_C, base, probes, config=config, batch_size=16,
                                 delta_h=0.25, progress=False, mesh=mesh, observed=observed, token_loss_fn=tokens)
  four, one = run(None), run(parallel.entry_mesh(jax.devices()[:1]))
  assert np.ptp(one.phi_trace) > 1e-3
  for field in ("loss_trace", "phi_trace", "delta_loss_trace"):  # losses ≈ 4 nats: float32's spacing is 5e-7
    np.testing.assert_allclose(getattr(one, field), getattr(four, field), rtol=1e-5, atol=2e-6, err_msg=field)
  for a, b in zip(jax.tree.leaves(one.token_moments), jax.tree.leaves(four.token_moments)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)
