"""Progress a caller can size from the settings alone: a run advances its caller's bar by the run's SGLD
steps (config.num_steps) however many programs run side by side, and per-token estimation by that per
chunk of contexts. (A sweep sized its bar so and overshot it by the number of component groups.)"""
import functools

import numpy as np
import pytest

import suscept_jax as sj
from suscept_jax import masks as masks_lib, sampler, sgld
from suscept_jax.models import components, config as model_config, transformer
from suscept_jax.progress import MeanOfParts
from tests.helpers import CountingBar


@pytest.fixture(scope="module")
def tiny():
  cfg = model_config.get_config("tiny", d_vocab=64)
  params = transformer.init_params(cfg, seed=0)
  specs = {spec: m for spec, m in components.component_masks(["full", "l0h1", "l1h0"], params, cfg).items()}
  rng = np.random.default_rng(0)
  base = rng.integers(0, 64, (64, cfg.n_ctx), dtype=np.int32)
  loss, tokens = (functools.partial(f, config=cfg) for f in (transformer.context_nll, transformer.per_token_nll))
  config = sgld.SGLDConfig(step_size=1e-3, nbeta=30.0, localization=100.0, num_chains=2, num_draws=4, num_burnin=2)
  return params, specs, base, loss, tokens, config


def test_a_run_of_several_programs_counts_its_steps_once(tiny):
  params, specs, base, loss, _, config = tiny
  names, masks_C = masks_lib.stack_masks(specs, params)
  assert len(sampler.component_groups(masks_C, len(names))) == 3  # full, a layer-0 head, a layer-1 head
  bar = CountingBar()
  sampler.run(loss, params, names, masks_C, base, {}, config=config, batch_size=16, delta_h=None, progress=bar)
  assert bar.n == config.num_steps and bar.updates >= 2


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_per_token_chunks_each_count_their_steps(tiny):
  params, specs, base, loss, tokens, config = tiny
  bar = CountingBar()
  sj.estimate_per_token_susceptibilities(loss, tokens, params, specs, base, base[:3], config=config, batch_size=16,
                                         contexts_per_chunk=2, progress=bar)
  assert bar.n == 2 * config.num_steps


def test_mean_of_parts_sends_whole_units_and_loses_none():
  bar = CountingBar()
  shared = MeanOfParts(bar, 3)
  for n in [1, 1, 2, 5, 3, 3, 3, 3, 3, 1]:  # 25 from the three parts, then the rest of the 3 × 10
    shared.update(n)
  assert bar.n == 25 // 3
  shared.update(5)
  assert bar.n == 10
