"""Tiny real artifacts for tests: a local corpus, a trained BPE tokenizer, a trained tiny model run."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from suscept_jax import training
from suscept_jax.data import math_gen, packing
from suscept_jax.data import tokenizer as tokenizers_lib
from suscept_jax.models import config as model_config
from tests import XLA_TEST_FLAGS


def started_with_a_unit(store, settings: dict, scope: dict, kind: str = "sweep"):
  """`store` (a results.ResultsDir) started with `settings` and holding one finished unit, so that its settings
  are protected (a directory with no finished unit holds nothing a rerun must keep)."""
  store.start(settings, scope, kind=kind)
  store.write_unit("step_00000000-0000000000", {"chi": np.zeros(1)}, {"checkpoint": 0})
  return store


def write_jsonl(path: Path, documents) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
  return path


def math_documents(count: int, seed: int = 0) -> list[str]:
  return [math_gen.generate_batch(i, seed=seed, problems_per_batch=8) for i in range(count)]


def prose_documents(count: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  words = "the a cat dog sat on mat and ran to house garden quickly slowly red blue".split()
  return [" ".join(rng.choice(words, size=60)) + "." for _ in range(count)]


def tiny_run(root: Path, *, steps: int = 40, checkpoint_steps=(0, 20, 40), seed: int = 0):
  """(run_dir, tokenizer_path, {name: jsonl}) for a tiny model trained on generated math + prose."""
  data = {"math": write_jsonl(root / "math.jsonl", math_documents(60, seed)),
          "prose": write_jsonl(root / "prose.jsonl", prose_documents(120, seed)),
          "mix": write_jsonl(root / "mix.jsonl", math_documents(60, seed + 1) + prose_documents(120, seed + 1))}
  tok_path = root / "tokenizer.json"
  tokenizer = tokenizers_lib.train_bpe_tokenizer(
      (json.loads(line)["text"] for line in data["mix"].read_text().splitlines()), vocab_size=320, path=tok_path)
  cfg = model_config.get_config("tiny", d_vocab=320)
  contexts = packing.load_contexts(str(data["mix"]), tokenizer, cfg.n_ctx, cache_dir=root / "cache", progress=False)
  run_dir = root / "run"
  training.train(run_dir, cfg, contexts, training.TrainConfig(steps=steps, batch_size=8, eval_every=20,
                                                              checkpoint_steps=tuple(checkpoint_steps), seed=seed),
                 progress=False, run_info={"tokenizer_fingerprint": tokenizers_lib.tokenizer_fingerprint(tokenizer)})
  return run_dir, tok_path, data


REPO = Path(__file__).resolve().parents[1]


def sweep_cmd(run_dir, tok, data, out, *extra):
  """The sweep runner on the tiny run, as a user would type it (a real subprocess)."""
  return [sys.executable, "-m", "experiments.sweep", "--preset=paper", f"--run_dir={run_dir}", f"--tokenizer={tok}",
          f"--base={data['mix']}", f"--probes={data['math']},{data['prose']},{data['mix']}", "--steps=0,20,40",
          "--components=l0h0,l1h1,l1 attn", "--num_chains=2", "--num_draws=12", "--batch_size=10",
          "--microbatch_size=5", "--num_burnin=2", f"--output_dir={out}", *extra]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_two_processes(cmd, logs: Path, *extra, cwds=(REPO, REPO)) -> list[subprocess.Popen]:
  """`cmd` as the two processes of a multi-process run on loopback, each logging to logs/process<i>.log and
  running in its directory of `cwds` (hosts whose relative paths lead to their own files)."""
  address = f"127.0.0.1:{free_port()}"
  procs = []
  for i in range(2):
    with (logs / f"process{i}.log").open("w") as log:  # the child keeps its own copy of the file
      procs.append(subprocess.Popen([*cmd, f"--coordinator_address={address}", "--num_processes=2",
                                     f"--process_id={i}", *extra], cwd=cwds[i], env=env(), stdout=log,
                                    stderr=subprocess.STDOUT))
  return procs


def env():
  e = dict(os.environ)
  e["XLA_FLAGS"] = " ".join(XLA_TEST_FLAGS)
  e["PYTHONPATH"] = str(REPO)
  e["SUSCEPT_JAX_CACHE"] = e.get("SUSCEPT_JAX_CACHE", str(Path.home() / ".cache" / "suscept_jax"))
  return e


class CountingBar:
  """A progress bar stand-in for the tests: counts what it is told (anything with `update` is a bar)."""

  def __init__(self):
    self.n, self.updates = 0, 0

  def update(self, n=1):
    self.n += n
    self.updates += 1


def record_calls(monkeypatch, owner, name: str) -> list:
  """[(args, kwargs)] of every call of owner.name from now to the test's end, each still made (a spy on, e.g.,
  matplotlib's Axes.fill_between, to check what a figure draws)."""
  calls, original = [], getattr(owner, name)

  def spy(*args, **kwargs):
    calls.append((args[1:], kwargs))  # (without the bound object: the Axes)
    return original(*args, **kwargs)

  monkeypatch.setattr(owner, name, spy)
  return calls
