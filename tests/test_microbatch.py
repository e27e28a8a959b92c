"""microbatch_size='auto': the largest micro-batch whose compiled program fits the devices (XLA's memory
analysis against device memory); choosing it never changes the numbers beyond summation order."""
import warnings

import jax
import numpy as np
import pytest

import suscept_jax as sj
from suscept_jax import programs, sampler
from suscept_jax.models import config as model_config, transformer

pytestmark = pytest.mark.filterwarnings("ignore::suscept_jax.health.SusceptibilityWarning")
CFG = model_config.get_config("tiny")
SGLD = sj.SGLDConfig(num_chains=2, num_draws=4)


def _problem():
  params = transformer.init_params(CFG, seed=0)
  rng = np.random.default_rng(0)
  base = rng.integers(0, CFG.d_vocab, size=(64, CFG.n_ctx + 1)).astype(np.int32)
  probe = rng.integers(0, CFG.d_vocab // 2, size=(64, CFG.n_ctx + 1)).astype(np.int32)
  loss_fn = lambda p, b: transformer.context_nll(p, b, CFG)  # noqa: E731
  return loss_fn, params, {"full": None}, base, {"probe": probe}


def _run(micro):
  loss_fn, params, comps, base, probes = _problem()
  return sj.estimate_susceptibilities(loss_fn, params, comps, base, probes, config=SGLD, batch_size=32,
                                      microbatch_size=micro, progress=False)


def test_auto_fits_and_never_changes_the_numbers(monkeypatch):
  need = []
  real_program_bytes = programs.program_bytes
  monkeypatch.setattr(programs, "program_bytes", lambda compiled: need.append(real_program_bytes(compiled)) or need[-1])
  programs._AUTO_CHOICES.clear()
  whole = _run(None)
  auto = _run("auto")  # this machine's memory holds the whole batch: no micro-batching, the same numbers
  assert [c.plan.microbatch_size for c in programs._AUTO_CHOICES.values()] == [None] and len(need) == 1
  np.testing.assert_array_equal(auto.chi, whole.chi)
  # A device that holds a little less than the whole batch's program: a smaller micro-batch is chosen.
  whole_batch_bytes = need.pop()
  programs._AUTO_CHOICES.clear()
  monkeypatch.setattr(programs, "device_memory_bytes",
                      lambda device: int(whole_batch_bytes / programs.MEMORY_FRACTION) - 1)
  small = _run("auto")
  chosen = list(programs._AUTO_CHOICES.values())[0].plan.microbatch_size
  assert chosen is not None and chosen < 32 and need[0] == whole_batch_bytes and need[-1] < whole_batch_bytes
  explicit = _run(chosen)
  np.testing.assert_array_equal(small.chi, explicit.chi)  # auto = the same micro-batch given by hand
  np.testing.assert_allclose(small.chi, whole.chi, rtol=1e-4, atol=1e-10)  # = no micro-batching, up to rounding
  np.testing.assert_allclose(small.llc, whole.llc, rtol=1e-4)


def test_a_micro_batch_that_does_not_divide_the_batch_changes_nothing():
  """Batch 20 in micro-batches of 8: the last one is padded with 4 rows of weight 0. Every chain's χ and LLC
  are those of the whole batch (weighting the pad rows in moves them by 10-20 %)."""
  rng = np.random.default_rng(0)
  base = sj.toys.quadratic_dataset(rng, 40, np.linspace(0.5, 2.0, 4), 0.1)
  probe = sj.toys.quadratic_dataset(rng, 40, np.linspace(2.0, 0.5, 4), 0.1)
  config = sj.SGLDConfig(step_size=2e-3, localization=10.0, nbeta=100.0, num_chains=2, num_draws=20)
  run = lambda micro: sj.estimate_susceptibilities(  # noqa: E731
      sj.toys.quadratic_loss, sj.toys.quadratic_minimum(base), {"full": None, "w0": {"w": np.eye(4)[0] > 0}}, base,
      {"probe": probe}, config=config, batch_size=20, delta_h=0.25, microbatch_size=micro, progress=False)
  whole, padded = run(None), run(8)
  np.testing.assert_allclose(padded.chi_per_chain, whole.chi_per_chain, rtol=1e-5)
  np.testing.assert_allclose(padded.llc_per_chain, whole.llc_per_chain, rtol=1e-5)


def test_auto_runs_without_probes_and_after_a_burn_in():
  """An LLC run (no probe: zero-size χ moments in the carry) with a burn-in, under "auto": the program compiled
  ahead of time takes back the outputs of its own calls and of the burn-in, and gives the whole batch's numbers."""
  loss_fn, params, _, base, _ = _problem()
  config = sj.SGLDConfig(num_chains=2, num_draws=4, num_burnin=2)
  whole = sj.estimate_llc(loss_fn, params, base, config=config, batch_size=32, progress=False)
  programs._AUTO_CHOICES.clear()  # (a cached choice would run the jitted program instead)
  auto = sj.estimate_llc(loss_fn, params, base, config=config, batch_size=32, microbatch_size="auto", progress=False)
  np.testing.assert_array_equal(auto.per_chain, whole.per_chain)


@pytest.mark.parametrize("kind", ["burnin", "draw"])
def test_out_of_device_memory_is_a_memory_error_naming_the_settings(monkeypatch, kind):
  """RESOURCE_EXHAUSTED from the burn-in or the draw program (simulated: this CPU does not run out) ends as a
  MemoryError that names the batch, the micro-batch and the entries per device, not as XLA's error."""
  real = programs.compiled_program
  class Exhausted:  # a program that compiles (ahead of its first call, as the sampler does) but cannot run
    def lower(self, *args):
      return self
    def compile(self):
      return self
    def __call__(self, *args):
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.90GiB.")
  monkeypatch.setattr(programs, "compiled_program",
                      lambda k, *args: Exhausted() if k == kind else real(k, *args))
  loss_fn, params, comps, base, probes = _problem()
  with pytest.raises(MemoryError, match=r"does not fit in device memory at batch_size=32, microbatch_size=None "
                                        r"\(1 entries per device\); pass microbatch_size='auto'"):
    sj.estimate_susceptibilities(loss_fn, params, comps, base, probes, batch_size=32, progress=False,
                                 config=sj.SGLDConfig(num_chains=2, num_draws=4, num_burnin=2))


def test_nothing_fits_is_a_clear_error(monkeypatch):
  programs._AUTO_CHOICES.clear()
  monkeypatch.setattr(programs, "device_memory_bytes", lambda device: 1000)
  with pytest.raises(MemoryError, match=r"microbatch_size='auto': no micro-batch fits .* needed per micro-batch "
                                        r"size: 32: .* GiB; 16: "):
    _run("auto")


def test_auto_compiles_only_sizes_that_may_fit_and_still_picks_the_largest_that_does(monkeypatch):
  """After two compilations, a size whose need on the line through the last two measured exceeds the limit by
  SKIP_BEYOND_LIMIT is skipped: for a device that holds the 2-row program but not the 4-row one, at most 4 of the
  6 sizes are compiled, and the choice is the one compiling every size gives."""
  loss_fn, params, _, base, probes = _problem()
  names, masks_C = sj.stack_masks({"full": None}, params)
  plan = lambda **kw: sampler.memory_plan(loss_fn, params, names, masks_C, base, probes, config=SGLD, batch_size=32,
                                          delta_h=0.1, **kw)[0]
  need = {micro: plan(microbatch_size=micro).bytes_per_device for micro in programs.microbatch_candidates(32)}
  assert need[4] > need[2]
  compiled = []
  real_program_bytes = programs.program_bytes
  monkeypatch.setattr(programs, "program_bytes", lambda c: compiled.append(real_program_bytes(c)) or compiled[-1])
  programs._AUTO_CHOICES.clear()
  chosen = plan(microbatch_size="auto", device_bytes=int(need[2] / programs.MEMORY_FRACTION) + 2)
  assert chosen.microbatch_size == 2 and chosen.bytes_per_device == need[2]
  assert compiled[:2] == [need[None], need[16]] and compiled[-1] == need[2] and len(compiled) <= 4
  assert [rows for rows, _, _ in chosen.searched] == [32, 16, 8, 4, 2]  # the search, as memory_plan reports it
  assert [got for _, got, _ in chosen.searched if got is not None] == compiled
  # (the limit is at least need[2], so a skipped size was predicted over SKIP_BEYOND_LIMIT × need[2])
  assert all(predicted > programs.SKIP_BEYOND_LIMIT * need[2] for _, got, predicted in chosen.searched if got is None)


def test_predicted_bytes_follow_the_line_through_the_two_smallest_sizes_measured():
  assert programs.predicted_bytes([(64, 1000)], 8) is None
  assert programs.predicted_bytes([(64, 1000), (32, 520), (16, 280)], 8) == 160


def test_candidates_halve_down_to_one():
  assert programs.microbatch_candidates(64) == [None, 32, 16, 8, 4, 2, 1]
  assert programs.microbatch_candidates(20) == [None, 10, 5, 2, 1]
  with pytest.raises(ValueError, match="microbatch_size='big' must be a positive integer, 'auto' or None"):
    with warnings.catch_warnings():
      _run("big")


def test_memory_plan_sizes_a_run_for_another_machine_without_running_it():
  """Per component group: the micro-batch auto-sizing would pick for a device of a given size, and the bytes."""
  loss_fn, params, _, base, probes = _problem()
  names, masks_C = sj.stack_masks({"full": None, "l0h0": sj.regex_mask(params, r"blocks/0/attn/W_Q")}, params)
  plan = lambda **kw: sampler.memory_plan(loss_fn, params, names, masks_C, base, probes, config=SGLD, batch_size=32,
                                          delta_h=0.1, **kw)
  whole = plan(microbatch_size=None)
  assert [p.components for p in whole] == [["full"], ["l0h0"]] and all(p.microbatch_size is None for p in whole)
  assert whole[1].bytes_per_device < whole[0].bytes_per_device  # the restricted program needs less
  programs._AUTO_CHOICES.clear()
  small = plan(microbatch_size="auto", device_bytes=int(whole[0].bytes_per_device / programs.MEMORY_FRACTION) - 1)
  assert small[0].microbatch_size is not None and small[0].bytes_per_device < whole[0].bytes_per_device
  assert small[1].microbatch_size is None  # the lighter group still fits whole
  explicit = plan(microbatch_size=small[0].microbatch_size)
  assert explicit[0].bytes_per_device == small[0].bytes_per_device


def test_logits_in_chunks_never_change_the_numbers():
  """The sampler with the unembedding in chunks of 9 tokens (`transformer.per_token_nll`'s logits_chunk, as
  "auto" does on CPU for the paper model) samples the chains of whole logits, to rounding: the full model, and
  a layer-1 head whose restricted program holds the unembedding frozen."""
  from suscept_jax.models import components
  _, params, _, base, probes = _problem()
  comps = components.component_masks(["full", "l1h0"], params, CFG)
  run = lambda chunk: sj.estimate_susceptibilities(  # noqa: E731
      lambda p, b: transformer.context_nll(p, b, CFG, logits_chunk=chunk), params, comps, base, probes, config=SGLD,
      batch_size=32, progress=False)
  whole, chunked = run(None), run(9)  # 32 × 16 tokens in 57 chunks, the last padded
  assert np.all(np.abs(whole.chi) > 0)
  np.testing.assert_allclose(chunked.chi, whole.chi, rtol=1e-3, atol=1e-6)
  # (rounding relative to the largest LLC: the head's is near 0)
  np.testing.assert_allclose(chunked.llc, whole.llc, rtol=1e-4, atol=1e-4 * np.abs(whole.llc).max())
