"""The cost and memory benchmarks (draw cost, per-token cost, memory against draws) at tiny size, so that the
scripts whose full-size figures BUILD_NOTES records cannot rot. Their figures are not judged here (timing on a
shared CPU is not a test); what is checked is that each runs through and prints every figure it promises."""
import math
import re

import pytest

from benchmarks import draw_cost, memory_vs_draws, per_token_cost

TINY = ["--model=tiny", "--components=full"]


def test_draw_cost_prints_each_draw_against_the_bare_step(capsys):
  draw_cost.main([*TINY, "--steps=4", "--num_chains=2"])
  out = capsys.readouterr().out
  assert "1 components × 2 chains = 2 entries" in out, out
  # (Differences of wall times of a few tiny draws: on a busy CPU they can come out negative, so only the form.)
  ratios = re.findall(r"draw with 8 probes, (per-chain|shared) data streams \(MALA every (—|10) draws\): "
                      r"+-?[\d.]+ ms = (-?[\d.]+) × the bare step", out)
  assert [(streams, mala) for streams, mala, _ in ratios] == [("per-chain", "—"), ("per-chain", "10"), ("shared", "—")]
  assert all(math.isfinite(float(ratio)) for _, _, ratio in ratios)
  assert re.search(r"step: [\d.]+ GFLOP \(XLA cost analysis\) .* -> -?\d+% of peak; 76 samples touched per draw",
                   out), out


def test_per_token_cost_prints_throughput_and_memory_against_draws(capsys):
  figures = per_token_cost.main([*TINY, "--contexts=2", "--draws=3", "--memory_draws=2,6"])
  out = capsys.readouterr().out
  assert figures["entries"] == 4 and figures["contexts"] == 2 and figures["tokens_per_context"] == 15
  assert math.isfinite(figures["fraction_of_bare"]) and figures["observation_s"] == pytest.approx(
      figures["run_observing_s"] - figures["run_s"])
  assert "of the bare forward pass (target ≥ 0.8)" in out
  assert re.search(r"   2 draws: peak RSS \d+ MB, \d+ s\n +6 draws: peak RSS \d+ MB", out), out
  assert "peak memory growth from 2 to 6 draws: " in out


def test_memory_vs_draws_compares_two_fresh_processes(capsys):
  growth = memory_vs_draws.main([*TINY, "--draws=2,6"])
  out = capsys.readouterr().out
  # (no device peak on CPU)
  assert re.search(r"   2 draws: peak RSS \d+ MB, \d+ s\n +6 draws: peak RSS \d+ MB", out), out
  assert f"peak memory growth from 2 to 6 draws: {100 * growth:+.1f}% (target: within 5%)" in out
  assert abs(growth) < 0.25  # the same program for a few more draws: RSS moves by the allocator's noise only


@pytest.mark.parametrize("draws", ["5", "5,x", "0,5", "1,2,3"])
def test_a_bad_draws_pair_is_refused_naming_it(capsys, draws):
  with pytest.raises(SystemExit):
    memory_vs_draws.main([*TINY, f"--draws={draws}"])
  assert f"want two positive draw counts, as in 50,500; got {draws!r}" in capsys.readouterr().err


def test_ops_are_placed_by_the_scope_they_were_traced_in():
  from benchmarks import draw_profile
  where = draw_profile.where_traced
  assert where("jit(_draw_chunk)/while/body/gradient/transpose(jvp(block1))/attention/dot_general") == (
      "gradient", "attention", "backward")
  assert where("jit(_draw_chunk)/while/body/probes/vmap(block0)/qkv/dot_general") == ("probes", "qkv", "forward")
  assert where("jit(_draw_chunk)/gradient/jvp(unembed)/...d,dv->...v/dot_general") == ("gradient", "unembed", "forward")
  assert where("jit(_draw_chunk)/sgld_update/mul") == ("sgld_update", "other", "forward")
  assert where("") == ("other", "other", "forward")


def test_draw_profile_times_every_part_of_a_draw(tmp_path):
  """A fresh process (XLA's dump and CPU trace flags act only before JAX starts) on one device with XLA's
  defaults, as a user runs it (the suite's 4 emulated devices put half of a tiny draw's op time in cross-device
  copies): the tiny model's draw programs profiled, their op time placed by scope."""
  import json
  import os
  import subprocess
  import sys
  subprocess.run([sys.executable, "-m", "benchmarks.draw_profile", "--model=tiny", "--batch_size=8", "--num_chains=2",
                  "--components=full,l1h0", "--precision=float32", "--attention=plain", "--draws=2",
                  f"--out={tmp_path}"], check=True, capture_output=True, text=True, timeout=600,
                 env={**os.environ, "XLA_FLAGS": ""})
  assert json.loads((tmp_path / "draw_profile.json").read_text())["device"] == "cpu ×1"
  summary = json.loads((tmp_path / "draw_profile.json").read_text())
  rows = {(r["stage"], r["part"], r["direction"]): r for r in summary["by_scope"]}
  assert summary["ms_per_draw"] > 0 and math.isclose(sum(r["fraction"] for r in rows.values()), 1.0, rel_tol=1e-9)
  for part in ("unembed", "attention", "qkv"):
    assert ("gradient", part, "forward") in rows and ("gradient", part, "backward") in rows, sorted(rows)
  assert ("probes", "unembed", "forward") in rows and ("sgld_update", "other", "forward") in rows, sorted(rows)
  staged = sum(r["fraction"] for key, r in rows.items() if key[0] != "other")
  assert staged > 0.5, summary["by_scope"]  # the draw's stages hold most of the time (0.87 alone here)
  stage = lambda name: sum(r["ms_per_draw"] for key, r in rows.items() if key[0] == name)  # noqa: E731
  assert stage("gradient") > stage("probes") > 0
  assert summary["top_ops"][0]["ms_per_draw"] > 0 and summary["other_programs_ms_per_draw"], summary


def test_trace_events_name_their_op_on_cpu_and_gpu():
  from benchmarks import draw_profile
  assert draw_profile.hlo_of({"hlo_op": "dot.3", "program_id": 40}) == (40, "dot.3")  # XLA:CPU's thunk events
  gpu = {"correlation_id": 7, "annotation": "fusion.12:#hlo_op=fusion.12,hlo_module=jit__draw_chunk,program_id=52#"}
  assert draw_profile.hlo_of(gpu) == (52, "fusion.12")
  assert draw_profile.hlo_of({"annotation": "#hlo_op=gemm.4,hlo_module=jit_f#"}) == ("jit_f", "gemm.4")
  assert draw_profile.hlo_of({"correlation_id": 7}) is None


def test_a_missing_trace_is_named(tmp_path):
  from benchmarks import draw_profile
  with pytest.raises(RuntimeError, match="wrote no trace"):
    draw_profile.op_times(tmp_path)
