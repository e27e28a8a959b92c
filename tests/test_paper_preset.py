"""`--preset=paper` end to end, as the README walks it: TransformerLens checkpoints -> convert_tl -> sweep ->
per_token -> analyze. Here the paper's checkpoints are random-weight TransformerLens models of tiny size, and
the paper's hub datasets are local stand-ins: directories named like the hub datasets (`timaeus/pile-github`,
…) in the working directory, which the `hf:` loader reads through `datasets.load_dataset` (the same specs,
the same code path; only where the files come from differs)."""
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from suscept_jax.train_config import PAPER_CHECKPOINT_STEPS
from suscept_jax_runners import presets
from tests import helpers
from tests.helpers import REPO, env


def test_paper_preset_is_the_papers_configuration():
  paper = presets.get_preset("paper")
  assert paper.checkpoint_steps == PAPER_CHECKPOINT_STEPS and len(PAPER_CHECKPOINT_STEPS) == 29
  assert paper.checkpoint_steps[-1] == 49900
  assert paper.base == "hf:timaeus/dsir-pile-1m-2" and len(paper.probes) == 13
  assert {"hf:timaeus/pile-github", "hf:timaeus/pile-freelaw", "hf:timaeus/pile-hackernews"} <= set(paper.probes)
  assert paper.model == "tetrahedron_3m" and paper.batch_size == 64 and paper.delta_h == 0.1
  assert paper.microbatch_size == "auto"  # sized from XLA's memory analysis per device
  sgld = paper.sgld
  assert (sgld.step_size, sgld.localization, sgld.nbeta, sgld.num_chains, sgld.num_draws, sgld.num_burnin) == (
      1e-3, 300.0, 30.0, 4, 200, 0)
  assert paper.per_token_sgld.num_draws == 100 and paper.per_token_batch_size == 16
  assert paper.per_token_contexts == 160


def _run(cmd, cwd, timeout=600):
  proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
  return proc


def test_paper_preset_end_to_end_on_local_stand_ins(tiny, tmp_path):
  pytest.importorskip("torch", reason="converting .pth checkpoints needs the interop extra: "
                      "pip install -e '.[interop]'")
  tl = pytest.importorskip("transformer_lens", reason="needs the interop extra (transformer-lens<4): "
                           "pip install -e '.[interop]'")
  import torch
  root, _, tok, data = tiny
  vocab = json.loads(tok.read_text())["model"]["vocab"]
  # The paper's checkpoints: TransformerLens state dicts at steps of S (random weights, tiny sizes).
  ckpt_dir = tmp_path / "tetrahedron" / "checkpoints"
  ckpt_dir.mkdir(parents=True)
  steps = (0, 100, 49900)
  for step in steps:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)
      model = tl.HookedTransformer(tl.HookedTransformerConfig(
          n_layers=2, d_model=16, n_ctx=16, d_head=8, n_heads=2, d_vocab=len(vocab), attn_only=True, act_fn=None,
          normalization_type="LN", positional_embedding_type="shortformer", device="cpu", seed=step))
    torch.save(model.state_dict(), ckpt_dir / f"checkpoint_{step:07d}.pth")
  # The paper's datasets, under their hub names.
  paper = presets.get_preset("paper")
  for i, spec in enumerate((paper.base,) + paper.probes):
    docs = helpers.prose_documents(12, seed=i) if i % 2 else helpers.math_documents(6, seed=i)
    helpers.write_jsonl(tmp_path / spec.removeprefix("hf:") / "train.jsonl", docs)

  run_dir = tmp_path / "runs" / "tetra"
  _run([sys.executable, "-m", "experiments.convert_tl", f"--input={ckpt_dir}", f"--output={run_dir}",
        f"--tokenizer={tok}"], cwd=tmp_path)
  assert (run_dir / "tokenizer.json").read_bytes() == tok.read_bytes()
  small = ["--num_chains=2", "--num_draws=3", "--batch_size=10", "--max_contexts=40"]
  swept = (0, 49900)  # of the three converted (the preset's default is all of S, which these stand-ins lack)
  sweep = _run([sys.executable, "-m", "experiments.sweep", "--preset=paper", f"--run_dir={run_dir}",
                "--steps=" + ",".join(map(str, swept)), *small], cwd=tmp_path)  # micro-batch: the preset's auto
  import pandas as pd
  table = pd.read_parquet(tmp_path / "runs" / "paper" / "sweep" / "results.parquet")
  assert sorted(table["checkpoint"].unique()) == list(swept)
  assert set(table["probe"]) == set(paper.probes)
  assert set(table["component"]) == {"full", "l0h0", "l0h1", "l1h0", "l1h1"}
  assert np.isfinite(table["chi"]).all(), sweep.stdout[-1000:]
  per_token = _run([sys.executable, "-m", "experiments.per_token", "--preset=paper", f"--run_dir={run_dir}",
                    "--contexts_per_dataset=1", "--probes=hf:timaeus/pile-github,hf:timaeus/pile-freelaw",
                    "--views=highlight", *small], cwd=tmp_path)
  info = json.loads((tmp_path / "runs" / "paper" / "per_token" / "per_token.json").read_text())
  assert info["checkpoint"] == 49900, per_token.stdout[-1000:]
  _run([sys.executable, "-m", "experiments.analyze", "--preset=paper", "--num_resamples=20"], cwd=tmp_path)
  assert (tmp_path / "runs" / "paper" / "sweep" / "report.html").stat().st_size > 10_000
