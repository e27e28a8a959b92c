"""The XLA options our programs are compiled with: per platform, and followed by the small programs outside the
sampler's mesh (the preflight's losses at w*, the chains' keys)."""
import numpy as np

from suscept_jax import batched, compile_options, streams, toys


def test_cpu_compiles_at_llvm_level_1_with_the_older_emitters_and_accelerators_keep_the_defaults(monkeypatch):
  emitters = ({"xla_cpu_use_fusion_emitters": False}
              if compile_options.cpu_accepts("xla_cpu_use_fusion_emitters", False) else {})
  assert compile_options.for_platform("cpu") == {"xla_backend_optimization_level": 1, **emitters}
  assert compile_options.for_platform("gpu") == compile_options.for_platform("tpu") == {}
  monkeypatch.setattr(compile_options, "CPU_FUSION_EMITTERS", True)
  assert compile_options.for_platform("cpu") == {"xla_backend_optimization_level": 1}
  monkeypatch.setattr(compile_options, "CPU_BACKEND_OPTIMIZATION_LEVEL", None)
  assert compile_options.for_platform("cpu") == {}


def test_an_option_this_xla_does_not_know_is_left_out(monkeypatch):
  """A jaxlib whose XLA:CPU refuses an option ("No such compile option") compiles with its default instead of
  failing every program."""
  assert not compile_options.cpu_accepts("xla_cpu_no_such_option_anywhere", False)
  assert compile_options.cpu_accepts("xla_backend_optimization_level", 1)
  monkeypatch.setattr(compile_options, "cpu_accepts", lambda option, value: False)
  assert compile_options.for_platform("cpu") == {"xla_backend_optimization_level": 1}


def test_the_small_programs_follow_the_options_and_compute_the_same(monkeypatch):
  data = toys.quadratic_dataset(np.random.default_rng(0), 16, np.ones(3), 0.5)
  w_star = toys.quadratic_minimum(data)
  w = {name: value + 0.1 for name, value in w_star.items()}
  at_level_1 = batched.compiled_losses.jitted()
  losses_1 = np.asarray(batched.losses_at(toys.quadratic_loss, w, data))
  keys_1 = streams.chain_keys(3, 1, ["full", "l0h0"], 4)
  monkeypatch.setattr(compile_options, "CPU_BACKEND_OPTIMIZATION_LEVEL", None)
  monkeypatch.setattr(compile_options, "CPU_FUSION_EMITTERS", True)
  assert batched.compiled_losses.jitted() is not at_level_1  # another jitted function: compiled with XLA's defaults
  assert np.ptp(losses_1) > 0
  np.testing.assert_allclose(np.asarray(batched.losses_at(toys.quadratic_loss, w, data)), losses_1, rtol=1e-6)
  np.testing.assert_array_equal(streams.chain_keys(3, 1, ["full", "l0h0"], 4), keys_1)


def test_the_runners_flag_chooses_the_cpu_emitters(monkeypatch, parsed_runner_flags):
  from absl.testing import flagsaver

  from suscept_jax_runners import cli
  monkeypatch.setattr(compile_options, "CPU_FUSION_EMITTERS", False)
  with flagsaver.flagsaver(cpu_fusion_emitters=True):
    cli.apply_cpu_fusion_emitters()
    assert "xla_cpu_use_fusion_emitters" not in compile_options.for_platform("cpu")
  with flagsaver.flagsaver(cpu_fusion_emitters=False):
    cli.apply_cpu_fusion_emitters()
    assert compile_options.CPU_FUSION_EMITTERS is False
