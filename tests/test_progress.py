"""Progress a caller can size from the settings alone: a run advances its caller's bar by the run's SGLD
steps (config.num_steps) however many programs run side by side, and per-token estimation by that per
chunk of contexts. (A sweep sized its bar so and overshot it by the number of component groups.)"""
import jax.numpy as jnp
import numpy as np
import pytest

import suscept_jax as sj
from suscept_jax import masks as masks_lib, restricted, sampler, sgld, toys
from suscept_jax.progress import MeanOfParts, progress_bar
from tests.helpers import CountingBar


def two_leaf_loss(params, batch):
  """The quadratic toy over two parameter leaves, so that components freeing one leaf form their own group."""
  return toys.quadratic_loss({"w": jnp.concatenate([params["a"], params["b"]])}, batch)


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  base = toys.quadratic_dataset(rng, 64, np.linspace(0.5, 2.0, 4), 0.1)
  w = toys.quadratic_minimum(base)["w"]
  params = {"a": w[:2], "b": w[2:]}
  components = {"full": None, "a": {"a": True, "b": False}, "b": {"a": False, "b": True}}
  config = sgld.SGLDConfig(step_size=1e-3, nbeta=30.0, localization=100.0, num_chains=2, num_draws=4, num_burnin=2)
  return params, components, base, config


def test_a_run_of_several_programs_counts_its_steps_once(problem):
  params, components, base, config = problem
  names, masks_C = masks_lib.stack_masks(components, params)
  assert len(restricted.component_groups(masks_C, len(names))) == 3  # full, leaf a, leaf b: three programs
  bar = CountingBar()
  sampler.run(two_leaf_loss, params, names, masks_C, base, {}, config=config, batch_size=16, delta_h=None,
              progress=bar)
  assert bar.n == config.num_steps and bar.updates >= 2


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_per_token_chunks_each_count_their_steps(problem):
  params, components, base, config = problem
  bar = CountingBar()
  contexts = {k: v[:3] for k, v in base.items()}
  sj.estimate_per_token_susceptibilities(two_leaf_loss, lambda p, b: two_leaf_loss(p, b)[:, None], params,
                                         components, base, contexts, config=config, batch_size=16,
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


def test_the_wait_before_the_first_step_is_not_the_pace():
  """100 s of loading and compiling, then 10 steps/s: the ETA follows the steps from its first display (tqdm
  alone showed the first steps' pace as 2 per 100 s, an ETA of hours), and elapsed still counts the wait."""
  clock = [0.0]
  bar = progress_bar(1000, "sweep", smoothing=0.05, waiting="loading data, compiling")
  bar._time = lambda: clock[0]
  bar.start_t = bar.last_print_t = 0.0
  assert "loading data, compiling" in str(bar)
  clock[0] = 100.0
  bar.update(2)
  assert "<?" in str(bar) and "compiling" not in str(bar)  # counted; no pace measured yet
  etas = []
  for _ in range(5):
    clock[0] += 0.5
    bar.update(5)
    etas.append((bar.total - bar.n) / bar.format_dict["rate"])
  assert np.allclose(etas, [(1000 - bar.n + 5 * (4 - i)) / 10 for i in range(5)], rtol=0.01), etas
  assert bar.format_dict["elapsed"] == pytest.approx(102.5)
  bar.close()


def test_a_disabled_bar_takes_updates_silently(capsys):
  bar = progress_bar(10, "quiet", enabled=False, waiting="compiling")
  bar.update(3)
  bar.update(4)
  bar.close()
  assert capsys.readouterr() == ("", "")
  shown = progress_bar(10, "shown", waiting="compiling")
  shown.update(3)
  shown.close()
  assert "shown" in capsys.readouterr().err


def test_the_closing_line_shows_the_average_rate():
  clock = [0.0]
  bar = progress_bar(20, "sweep", smoothing=0.05)
  bar._time = lambda: clock[0]
  bar.start_t = bar.last_print_t = 0.0
  clock[0] = 8.0
  bar.update(10)
  clock[0] = 10.0
  bar.update(10)
  bar.close()
  assert "20/20 [00:10<00:00,  2.00step/s]" in str(bar)


def test_a_warning_during_a_run_gets_its_own_line_above_the_bar(capsys, caplog):
  """(A log line landed in the middle of the bar's line: `4.92step/s]W1202 08:28:40 ... sweep.py:233] ...`.)"""
  from suscept_jax.progress import warn_above
  bar = progress_bar(10, "sweep")
  bar.update(3)
  warn_above(bar, "checkpoint 0: component 'l0h0': negative LLC")
  bar.update(2)
  bar.close()
  lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
  at = lines.index("warning: checkpoint 0: component 'l0h0': negative LLC")  # a line of its own
  below = [line for line in lines[at + 1:] if line.strip()]
  assert "3/10" in below[0] and "5/10" in below[-1]  # the bar, redrawn below it
  warn_above(None, "no bar shown")  # without a bar: to the log
  warn_above(progress_bar(10, "quiet", enabled=False), "bar disabled")
  assert [r.getMessage() for r in caplog.records] == ["no bar shown", "bar disabled"]


def test_warnings_shown_prints_each_message_once_and_at_most_the_limit(caplog):
  """The runners' warnings above the bar (with no bar shown: through logging): repeats once, then a line at the
  limit, and every one counted."""
  from suscept_jax.progress import WarningsShown
  shown = WarningsShown(limit=3)
  with caplog.at_level("WARNING", logger="suscept_jax"):
    for i, message in enumerate(["a", "b", "a", "c", "d", "e", "b"]):
      shown.say(None, message, where=f"chunk {i}")
  said = [r.getMessage() for r in caplog.records]
  assert said[:3] == ["chunk 0: a", "chunk 1: b", "chunk 3: c"] and len(said) == 4
  assert said[3].startswith("more warnings than 3: the rest are not printed")
  assert shown.count == 7 and shown.repeats == 2
