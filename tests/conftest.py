"""Test set-up: the tests' XLA flags (tests/__init__.py) and a persistent compilation cache, set before jax is
imported."""
import os

from tests import XLA_TEST_FLAGS

for _flag in XLA_TEST_FLAGS:
  if _flag not in os.environ.get("XLA_FLAGS", ""):  # (pytest-xdist workers inherit them already set)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from suscept_jax import paths  # noqa: E402

jax.config.update("jax_compilation_cache_dir", str(paths.cache_root() / "jax_compilation"))  # the runners' cache
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
  """(root, run_dir, tokenizer, {name: jsonl}): a tiny model trained through the real code path, shared."""
  from tests import helpers
  root = tmp_path_factory.mktemp("sweep")
  run_dir, tok, data = helpers.tiny_run(root, steps=40, checkpoint_steps=(0, 20, 40))
  data["math2"] = helpers.write_jsonl(root / "math2.jsonl", helpers.math_documents(40, seed=7))
  return root, run_dir, tok, data


@pytest.fixture
def parsed_runner_flags():
  """absl's flags marked parsed, as a runner's main sees them (restored afterwards), for tests of the runners'
  flag handlers under `flagsaver`."""
  import importlib

  from absl import flags
  importlib.import_module("suscept_jax_runners.cli")  # (defines the runners' shared flags)
  was_parsed = flags.FLAGS.is_parsed()
  flags.FLAGS.mark_as_parsed()
  yield flags.FLAGS
  if not was_parsed:
    flags.FLAGS.unparse_flags()
