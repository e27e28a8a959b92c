"""The per-token runner on the tiny trained run: the token table, resumption, two processes, the views, and bad
input."""
import html
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from suscept_jax.analysis import token_stats as ts
from tests import browser
from tests.helpers import REPO, env, start_two_processes


def per_token_cmd(tiny, out, *extra):
  root, run_dir, tok, data = tiny
  return [sys.executable, "-m", "experiments.per_token", "--preset=paper", f"--run_dir={run_dir}",
          f"--tokenizer={tok}", f"--base={data['mix']}", f"--probes={data['math']},{data['prose']}",
          "--contexts_per_dataset=3", "--contexts_per_chunk=2", "--components=l0h0,l1h1", "--num_chains=2",
          "--num_draws=10", "--batch_size=10", "--step=40", f"--output_dir={out}", *extra]


def run(cmd, timeout=300):
  return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
  out = tmp_path_factory.mktemp("per_token") / "out"
  proc = run(per_token_cmd(tiny, out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, proc


def test_a_warning_every_chunk_repeats_is_printed_once(finished):
  """Each chunk re-runs the same chains, so their warnings (ESS, R̂) came once per chunk: 42 identical lines at
  the paper's 14 chunks. Each is printed once, with a line counting the repeats; every chunk's record keeps all."""
  out, proc = finished
  printed = [line.split(": ", 1)[1] for line in proc.stderr.splitlines() if line.startswith("warning: chunk ")]
  recorded = [w for unit in sorted((out / "units").glob("chunk_*.json"))
              for w in json.loads(unit.read_text())["warnings"]]
  assert len(list((out / "units").glob("chunk_*.json"))) == 3  # (6 contexts, 2 per chunk)
  assert printed and len(printed) == len(set(printed)), printed
  repeats = len(recorded) - len(set(recorded))
  assert repeats > 0 and f"({repeats} warning(s) repeated by later chunks" in proc.stdout, (recorded, proc.stdout)
  # the views' index says them too, once each, first (at the paper's shape they were on the terminal only), and
  # which heads its text views show and why
  index = (out / "views" / "index.html").read_text()
  assert index.index("<h2>Sampling</h2>") < index.index("<h2>Highlighted text</h2>")
  assert f"{len(set(recorded))} warning(s) from the chains" in index
  assert all(index.count(html.escape(w)) == 1 for w in set(recorded)), recorded
  assert index.count("Heads shown: l0h0, l1h1 of 2 (the most responsive head of each layer") == 2


def test_token_table_holds_every_token_of_every_chosen_context(tiny, finished):
  out, _ = finished
  table = pd.read_parquet(out / "tokens.parquet")
  info = json.loads((out / "per_token.json").read_text())
  assert info["components"] == ["full", "l0h0", "l1h1"] and info["num_contexts"] == 6
  J = info["tokens_per_context"]
  assert len(table) == 3 * 6 * J  # components × (2 datasets × 3 contexts) × positions
  assert set(table.columns) >= {"dataset", "context", "position", "token_id", "token", "loss_at_star", "component",
                                "chi", "chi_stderr", "ablation_delta"}
  assert np.isfinite(table.chi).all() and (table.chi_stderr > 0).all()
  heads = table[table.component != "full"]
  assert np.isfinite(heads.ablation_delta).all() and table[table.component == "full"].ablation_delta.isna().all()
  # decoded text is the tokenizer's, token by token
  from suscept_jax.data import tokenizer as tokenizers_lib
  tok = tokenizers_lib.load_tokenizer(tiny[2])
  row = table.iloc[5]
  assert row.token == tok.decode([int(row.token_id)], skip_special_tokens=False)
  assert (out / "dataset_chi.csv").exists()  # dataset-level χ of the probes from the same chains
  dataset = pd.read_csv(out / "dataset_chi.csv")
  assert set(dataset.probe) == {str(tiny[3]["math"]), str(tiny[3]["prose"])}


def test_the_chains_kept_for_the_additivity_intervals_match_the_table(finished):
  """chains.npz: each context's mean per-token χ per chain (averaged over chains: the table's per-token χ
  averaged over the context's tokens) and the dataset-level χ per chain (averaged: dataset_chi.csv), which the
  additivity view's intervals are read from."""
  out, _ = finished
  table = pd.read_parquet(out / "tokens.parquet")
  info = json.loads((out / "per_token.json").read_text())
  with np.load(out / "chains.npz") as chains:
    context_CxKxO, dataset_PxCxK = chains["context_chi_CxKxO"], chains["dataset_chi_PxCxK"]
    datasets_O = chains["context_datasets_O"].tolist()
  assert context_CxKxO.shape == (3, 2, 6) and dataset_PxCxK.shape == (2, 3, 2)
  assert datasets_O == [d for d in info["datasets"] for _ in range(3)]
  by_context = table.groupby(["component", "dataset", "context"], sort=False).chi.mean()
  for c, comp in enumerate(info["components"]):
    np.testing.assert_allclose(context_CxKxO[c].mean(0), by_context[comp].to_numpy(), rtol=1e-4, atol=1e-9)
  dataset = pd.read_csv(out / "dataset_chi.csv").set_index(["probe", "component"]).chi
  for p, probe in enumerate(info["datasets"]):
    np.testing.assert_allclose(dataset_PxCxK[p].mean(-1), dataset[probe][info["components"]].to_numpy(), rtol=1e-6)
  heading = json.loads((out / "views" / "sections.json").read_text())["additivity"][0]
  # (2 heads × 2 datasets: "full" is not fitted)
  assert heading.startswith("Additivity (eq. 45): slope ") and heading.endswith(" of 4 off the line"), heading
  assert "a" + heading[1:] in finished[1].stdout.splitlines()  # and the line in the terminal


def test_the_position_view_has_bands_from_each_positions_sums_leaving_out_chains(finished):
  """chains.npz holds each position's sums over the contexts of the χ averaged over all chains but one (and over
  all: the table's mean and variance by position); the positions view draws their bands and says what they hold."""
  out, _ = finished
  table = pd.read_parquet(out / "tokens.parquet")
  info = json.loads((out / "per_token.json").read_text())
  with np.load(out / "chains.npz") as chains:
    sum_CxLxJ, sumsq_CxLxJ, count_CxLxJ = (chains[k] for k in ("position_sum_CxLxJ", "position_sumsq_CxLxJ",
                                                                "position_count_CxLxJ"))
  J = table.position.max()
  assert sum_CxLxJ.shape == sumsq_CxLxJ.shape == count_CxLxJ.shape == (3, 2 + 1, J) and (count_CxLxJ == 6).all()
  by_position = table.groupby(["component", "position"]).chi
  profiles = ts.position_profiles(sum_CxLxJ, sumsq_CxLxJ, count_CxLxJ, info["components"]).set_index(
      ["component", "position"])
  np.testing.assert_allclose(profiles["mean"], by_position.mean()[profiles.index], rtol=1e-4, atol=1e-9)
  np.testing.assert_allclose(profiles["variance"], by_position.var()[profiles.index], rtol=1e-3, atol=1e-12)
  assert "Bands (95 %, a jackknife over the chains, Student-t)" in (out / "views" / "index.html").read_text()


def test_the_totals_keep_their_chains_and_say_when_they_have_none(finished, tmp_path):
  """chains.npz holds, per chain, each context's χ summed over the tokens of each sign (averaged over chains: the
  table's totals by sign); the totals view shows Table 1 with intervals from them (views/totals.csv), and, from a
  results directory written before they were kept, says it has no error bars."""
  import shutil
  out, _ = finished
  table = pd.read_parquet(out / "tokens.parquet")
  info = json.loads((out / "per_token.json").read_text())
  with np.load(out / "chains.npz") as chains:
    positive_CxKxO, negative_CxKxO = chains["positive_CxKxO"], chains["negative_CxKxO"]
  assert positive_CxKxO.shape == negative_CxKxO.shape == (3, 2, 6)
  chi = table.chi.to_numpy()
  by_context = lambda kept: table.assign(kept=np.where(kept, chi, 0.0)).groupby(
      ["component", "dataset", "context"], sort=False).kept.sum()
  for c, comp in enumerate(info["components"]):
    np.testing.assert_allclose(positive_CxKxO[c].mean(0), by_context(chi > 0)[comp].to_numpy(), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(negative_CxKxO[c].mean(0), by_context(chi < 0)[comp].to_numpy(), rtol=1e-4, atol=1e-9)
  with np.load(out / "chains.npz") as chains:  # and each token type's, summed over the chunks it occurs in
    ids_V, type_positive_CxKxV = chains["token_ids_V"], chains["token_positive_CxKxV"]
  by_type = table.assign(kept=np.where(chi > 0, chi, 0.0)).groupby(["component", "token_id"]).kept.sum()
  assert list(ids_V) == sorted(set(table.token_id))
  for c, comp in enumerate(info["components"]):
    np.testing.assert_allclose(type_positive_CxKxV[c].mean(0), by_type[comp].to_numpy(), rtol=1e-4, atol=1e-9)
  types = pd.read_csv(out / "views" / "token_totals.csv")
  assert {"noise_floor", "positive_low", "mean_low", "mean_high"} <= set(types.columns)
  assert len(types) == table.groupby(["component", "token"]).ngroups
  totals = pd.read_csv(out / "views" / "totals.csv")
  assert len(totals) == 3 * 2 and (totals.chains == 2).all() and (totals.noise_floor > 0).all()
  index = (out / "views" / "index.html").read_text()
  assert "noise floor ±" in index and "Chain noise turns a token" in index
  line = next(x for x in finished[1].stdout.splitlines() if x.startswith("Table 1: the noise floor is a median "))
  assert line.endswith(" of 6 sums clear of 0") and " % of a total by sign at 2 chains " in line, line
  assert f"<p>{line}.</p>" in index
  assert (out / "views" / "sign_totals.png").stat().st_size > 5000
  copy = tmp_path / "copy"
  shutil.copytree(out, copy)
  with np.load(copy / "chains.npz") as chains:  # as the thirty-sixth session's runner wrote it
    kept = {k: chains[k] for k in chains.files if k.startswith(("context_", "dataset_"))}
  np.savez(copy / "chains.npz", **kept)
  proc = run([sys.executable, "-m", "experiments.per_token", f"--output_dir={copy}", "--views_only",
              "--views=totals,additivity"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  index = (copy / "views" / "index.html").read_text()
  assert index.count("No error bars") == 1 and "noise floor ±" not in index and "off the line" in index
  assert not any((copy / "views" / name).exists() for name in ("totals.csv", "sign_totals.png", "token_totals.csv"))


def test_a_killed_run_resumes_to_the_same_table(tiny, finished, tmp_path):
  out, _ = finished
  import shutil
  copy = tmp_path / "copy"
  shutil.copytree(out, copy)
  before = pd.read_parquet(copy / "tokens.parquet")
  # as if killed while writing the last chunk: its json (written last) and the table are missing
  (copy / "units" / "chunk_00002.json").unlink()
  (copy / "tokens.parquet").unlink()
  kept = (copy / "units" / "chunk_00000.npz").stat().st_mtime_ns
  # Resumed at another micro-batch (as after running out of device memory): it changes only summation order.
  proc = run(per_token_cmd(tiny, copy, "--views=none", "--microbatch_size=5"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (copy / "units" / "chunk_00000.npz").stat().st_mtime_ns == kept  # finished work is not redone
  after = pd.read_parquet(copy / "tokens.parquet")
  pd.testing.assert_frame_equal(after.drop(columns=["chi", "chi_stderr"]), before.drop(columns=["chi", "chi_stderr"]))
  # Another summation order moves the chains by rounding, amplified over the steps: a χ near 0 moved by
  # 2e-6 of the largest |χ| (1e-6 was this bound until the noise keys changed); a wrong resume moves O(1) of it.
  for column in ("chi", "chi_stderr"):
    np.testing.assert_allclose(after[column], before[column], rtol=1e-4, atol=1e-5 * np.abs(before[column]).max())
  used = [json.loads((copy / "units" / f"chunk_{i:05d}.json").read_text())["microbatch_size"] for i in range(3)]
  assert used == ["auto", "auto", 5], used  # the paper preset's "auto" (the whole batch fits here), then 5
  assert len(json.loads((copy / "per_token.json").read_text())["environments"]) == 1
  # A chunk computed elsewhere (another JAX, another backend): the assembled run says so.
  chunk_json = copy / "units" / "chunk_00001.json"
  moved = json.loads(chunk_json.read_text())
  moved["environment"] = {**moved["environment"], "jax": "0.11.2", "backend": "gpu"}
  chunk_json.write_text(json.dumps(moved))
  (copy / "tokens.parquet").unlink()
  proc = run(per_token_cmd(tiny, copy, "--views=none"))
  assert proc.returncode == 0 and "units computed under 2 environments" in proc.stdout, proc.stdout[-2000:]
  assert json.loads((copy / "per_token.json").read_text())["environments"]["jax 0.11.2 on gpu"] == 1
  # Base data that changed since (the chains sample it: every chunk's numbers move) is refused, as by the sweep;
  # a directory from before the base was fingerprinted is compared on the rest.
  config_json = copy / "config.json"
  config = json.loads(config_json.read_text())
  assert set(config["settings"]["probe_fingerprints"]) == {str(tiny[3]["math"]), str(tiny[3]["prose"])}
  config["settings"]["base_fingerprint"] = "0" * 16
  config_json.write_text(json.dumps(config))
  proc = run(per_token_cmd(tiny, copy, "--views=none"))
  assert proc.returncode == 2 and "base_fingerprint: '0000000000000000' here" in proc.stderr, proc.stderr[-2000:]
  del config["settings"]["base_fingerprint"], config["settings"]["probe_fingerprints"]
  config_json.write_text(json.dumps(config))
  assert run(per_token_cmd(tiny, copy, "--views=none")).returncode == 0
  # Chunks computed on other weights than the run holds at their step now (converted or trained again): refused.
  recorded = json.loads(chunk_json.read_text())
  assert re.fullmatch(r"[0-9a-f]{16}", recorded["params_digest"])
  chunk_json.write_text(json.dumps({**recorded, "params_digest": "0" * 16}))
  proc = run(per_token_cmd(tiny, copy, "--views=none"))
  assert proc.returncode == 2 and re.search(r"holds results of checkpoint \d+ computed on other weights .*"
                                            r"\(params digest 0{16} then", proc.stderr), proc.stderr[-2000:]
  # --overwrite with other settings: nothing of the old run stays beside the new one (a stale dataset_chi.csv
  # used to feed the index's additivity line).
  proc = run(per_token_cmd(tiny, copy, "--views=none", "--overwrite", "--nodataset_chi", "--seed=3"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  views = sorted(p.name for p in (copy / "views").iterdir())
  assert not (copy / "dataset_chi.csv").exists()
  with np.load(copy / "chains.npz") as chains:  # the per-context chains stay (Table 1's), the dataset-level χ go
    assert "dataset_chi_PxCxK" not in chains.files and "positive_CxKxO" in chains.files
  assert views == ["index.html", "sections.json"], views  # (no view)
  assert "Additivity" not in (copy / "views" / "index.html").read_text()
  assert (copy / "tokens.parquet").exists() and len(list((copy / "units").glob("chunk_*.json"))) == 3


def test_two_processes_write_the_table_of_one(tiny, finished, tmp_path):
  """Under jax.distributed (two processes on loopback) the chunks are split round-robin: process 0 runs chunks
  0 and 2 (with the dataset-level χ), process 1 chunk 1; process 0 waits for it and assembles the same table.
  Run over a finished copy with --overwrite: process 0 clears it before either process plans its chunks."""
  import shutil
  out, _ = finished
  two, logs = tmp_path / "two", tmp_path / "logs"
  shutil.copytree(out, two)
  logs.mkdir()
  procs = start_two_processes(per_token_cmd(tiny, two, "--views=none", "--overwrite"), logs)
  for i, p in enumerate(procs):
    assert p.wait(timeout=600) == 0, (logs / f"process{i}.log").read_text()[-3000:]
  first, second = ((logs / f"process{i}.log").read_text() for i in range(2))
  assert "process 0 of 2: chunks [0, 2] (2 to run); if a process dies" in first, first[-3000:]
  assert "process 1 of 2: chunks [1] (1 to run)" in second and "process 0 assembles" in second, second[-3000:]
  assert [json.loads((two / "units" / f"chunk_{i:05d}.json").read_text()).get("dataset_rows") is not None
          for i in range(3)] == [True, False, False]
  pd.testing.assert_frame_equal(pd.read_parquet(two / "tokens.parquet"), pd.read_parquet(out / "tokens.parquet"))
  pd.testing.assert_frame_equal(pd.read_csv(two / "dataset_chi.csv"), pd.read_csv(out / "dataset_chi.csv"))
  with np.load(two / "chains.npz") as split, np.load(out / "chains.npz") as whole:  # the additivity view's chains
    assert split.files == whole.files and all(np.array_equal(split[k], whole[k]) for k in whole.files)


@pytest.mark.parametrize("per_chunk,shares", [
    (2, ["chunks [0, 2]", "chunks [1]"]),
    (6, ["chunks [0] (only 1 chunk(s) for 2 processes: --contexts_per_chunk=3 would give every process work)",
         "chunks [] (only 1 chunk(s)"]),
])
def test_two_processes_dry_run_names_each_ones_chunks(tiny, tmp_path, per_chunk, shares):
  logs = tmp_path / "logs"
  logs.mkdir()
  procs = start_two_processes(per_token_cmd(tiny, tmp_path / "out", "--dry_run", f"--contexts_per_chunk={per_chunk}"),
                              logs)
  for i, p in enumerate(procs):
    assert p.wait(timeout=300) == 0, (logs / f"process{i}.log").read_text()[-3000:]
  for i, share in enumerate(shares):
    assert f"process {i} of 2: {share}" in (logs / f"process{i}.log").read_text()
  assert not (tmp_path / "out").exists()


def test_views_are_written_and_linked(finished):
  out, _ = finished
  views = out / "views"
  index = (views / "index.html").read_text()
  for name in ("highlight_00.html", "highlight_01.html", "extremes_l0h0.html"):
    assert (views / name).exists() and name in index
  assert 'title="l0h0: χ = ' in (views / "highlight_00.html").read_text()  # hover: χ ± stderr per head
  assert " with a 95 % interval clear of 0</h2>" in (views / "extremes_l0h0.html").read_text()  # (2 chains kept)
  assert " clear of 0)" in (views / "top_tokens.csv").read_text() and "how many of those have a 95 %" in index
  for figure in ("comparisons.png", "positions.png", "totals.png", "additivity.png"):
    assert (views / figure).stat().st_size > 5000
  assert "data:image/png;base64," in index  # figures embedded: the page is self-contained
  assert "http://" not in index and "https://" not in index  # nothing fetched from a network


@pytest.mark.parametrize("extra,message", [
    (["--contexts_per_dataset=100000"], "has {n} contexts, fewer than --contexts_per_dataset=100000"),
    (["--seed=3"], "holds results made with other settings (contexts_seed: 0 here, 3 now; seed: 0 here, 3 now)"),
    (["--contexts_seed=2"], "holds results made with other settings (contexts_seed: 0 here, 2 now)"),
    (["--contexts_seed=-1"], "--contexts_seed=-1 must be an integer in [0, 2**32)"),
    (["--seed=-1"], "--seed=-1 must be an integer in [0, 2**32)"),
    (["--views=highlight,sparkles"], "--views: unknown view(s) ['sparkles']"),
    (["--views_only", "--views=sparkles"], "--views: unknown view(s) ['sparkles']"),  # (it used to exit 0)
    (["--num_processes=2", "--process_id=0"], "a multi-process run needs --coordinator_address, --num_processes and "
                                              "--process_id; missing --coordinator_address"),
])
def test_bad_input_is_refused_naming_it(tiny, finished, tmp_path, extra, message):
  resumed = {"--seed=3", "--contexts_seed=2"} & set(extra)  # other settings than the finished directory's
  out = finished[0] if resumed else tmp_path / "out"  # the finished directory, or a fresh one
  proc = run(per_token_cmd(tiny, out, *extra))
  assert proc.returncode == 2, proc.stderr[-3000:]
  if "{n}" in message:  # the dataset named, with its size
    assert "dataset '" in proc.stderr and "fewer than --contexts_per_dataset=100000" in proc.stderr, proc.stderr[-2000:]
  else:
    assert message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  if out != finished[0]:
    assert not out.exists()  # refused before anything was written


def test_rendering_one_view_again_keeps_the_others_in_the_index(finished, tmp_path):
  """`--views_only --views=positions` (as when adding the UMAP view later): the index keeps every section."""
  import shutil
  copy = tmp_path / "copy"
  shutil.copytree(finished[0], copy)
  before = (copy / "views" / "index.html").read_text()
  proc = run([sys.executable, "-m", "experiments.per_token", f"--output_dir={copy}", "--views_only",
              "--views=positions"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  after = (copy / "views" / "index.html").read_text()
  headings = lambda page: [line for line in page.splitlines() if line.startswith("<h2>")]
  assert len(headings(before)) >= 7 and headings(after) == headings(before)
  assert "Highlighted text" in after and "χ by position" in after
  # extreme-token pages of heads not rendered again go (they stayed, unlinked, from the earlier render)
  assert len(list((copy / "views").glob("extremes_*.html"))) >= 2
  proc = run([sys.executable, "-m", "experiments.per_token", f"--output_dir={copy}", "--views_only",
              "--views=extremes", "--view_heads=l0h0", "--seed=9", "--num_draws=5"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert [f.name for f in (copy / "views").glob("extremes_*.html")] == ["extremes_l0h0.html"]
  assert "ignored: --num_draws, --seed" in proc.stderr  # (flags that only a computation reads: ignored silently)


def test_the_additivity_view_says_why_it_has_no_error_bars(finished, tmp_path):
  """Results from before chains.npz was kept, and a dataset observed in one context. (Table 1's totals: see
  test_the_totals_keep_their_chains_and_say_when_they_have_none.)"""
  import shutil
  copy = tmp_path / "copy"
  shutil.copytree(finished[0], copy)
  (copy / "chains.npz").unlink()
  proc = run([sys.executable, "-m", "experiments.per_token", f"--output_dir={copy}", "--views_only",
              "--views=additivity"])  # (a process of its own: the runners' absl flags are defined on import)
  assert proc.returncode == 0, proc.stderr[-3000:]
  index = (copy / "views" / "index.html").read_text()
  assert "No error bars: these results were written before the chains' values this view needs were kept" in index
  assert "off the line" not in index and "Highlighted text" in index
  # one context of a dataset: no spread over its contexts, so no error bars, and the page says why
  with np.load(finished[0] / "chains.npz") as chains:
    arrays = dict(chains)
  datasets_O = arrays["context_datasets_O"].tolist()
  arrays["context_datasets_O"] = np.array([datasets_O[0]] * (len(datasets_O) - 1) + datasets_O[-1:])
  np.savez(copy / "chains.npz", **arrays)
  proc = run([sys.executable, "-m", "experiments.per_token", f"--output_dir={copy}", "--views_only",
              "--views=additivity"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  index = (copy / "views" / "index.html").read_text()
  assert "No error bars: additivity intervals need &gt;= 2 observed contexts of every dataset; have " in index
  assert f": {len(datasets_O) - 1}, " in index and "off the line" not in index


def test_other_chains_on_the_same_contexts(tiny, finished, tmp_path):
  """--contexts_seed keeps the contexts while --seed draws other chains (the spread of such runs checks the error
  bars); a directory written before the flag recorded its contexts' seed as --seed's."""
  import shutil
  out, _ = finished
  proc = run(per_token_cmd(tiny, tmp_path / "other", "--seed=1", "--contexts_seed=0", "--views=none"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  keys = ["component", "dataset", "context", "position", "token_id"]
  before, after = (pd.read_parquet(d / "tokens.parquet") for d in (out, tmp_path / "other"))
  pd.testing.assert_frame_equal(after[keys], before[keys])
  assert not np.allclose(after.chi, before.chi)
  copy = tmp_path / "copy"
  shutil.copytree(out, copy)
  config = json.loads((copy / "config.json").read_text())
  del config["settings"]["contexts_seed"]
  (copy / "config.json").write_text(json.dumps(config))
  assert run(per_token_cmd(tiny, copy, "--views=none")).returncode == 0  # (its contexts were --seed's: 0)
  proc = run(per_token_cmd(tiny, copy, "--views=none", "--contexts_seed=1"))
  assert proc.returncode == 2 and "(contexts_seed: 0 here, 1 now)" in proc.stderr, proc.stderr[-2000:]


def test_views_of_a_head_or_token_not_in_the_results_are_refused(finished, tmp_path):
  out, _ = finished
  base = [sys.executable, "-m", "experiments.per_token", f"--output_dir={out}", "--views_only"]
  proc = run(base + ["--view_heads=l0h0,l1h3"])
  assert proc.returncode == 2 and "--view_heads ['l1h3'] are not in the per-token results" in proc.stderr
  proc = run(base + ["--views=bimodal", "--view_token=zzqqxx"])
  assert proc.returncode == 2 and "token 'zzqqxx' does not occur for head" in proc.stderr, proc.stderr[-2000:]
  proc = run([sys.executable, "-m", "experiments.per_token", f"--output_dir={tmp_path}", "--views_only"])
  assert proc.returncode == 2 and "holds no per-token results" in proc.stderr


@browser.requires_browser
def test_the_written_views_load_offline_in_a_browser(finished, tmp_path):
  out, _ = finished
  for name in ("index.html", "highlight_00.html", "extremes_l0h0.html", "bimodal.html"):
    png = tmp_path / f"{name}.png"
    assert not browser.screenshot(out / "views" / name, png), name  # no console errors, nothing fetched
    assert browser.pixel_summary(png)["ink"] > 0.02, name
