"""The benchmark scripts run end to end at tiny sizes, so they cannot rot (their figures are not checked
here: speed targets are benchmark output, recorded in BUILD_NOTES.md, not timed tests)."""
import contextlib
import functools
import io
import json
import re
import shutil
import time
from pathlib import Path

import importlib
import importlib.metadata

import jax
import numpy as np
import pandas as pd
import pytest

import suscept_jax as sj

from benchmarks import (accelerator_figures, compile_time, device_session, devinterp_side_by_side, error_bars_on_demo,
                        paper_memory, precision_on_demo, precision_shift, restricted_gradients, scaling)
from tests.helpers import sweep_cmd


def test_restricted_gradients_prints_every_kind(capsys):
  restricted_gradients.main(["--model=tiny", "--batch_size=8", "--num_chains=2", "--draws=3", "--repeats=1"])
  out = capsys.readouterr().out
  for kind in ("full", "layer-0 head", "layer-1 head", "unembed"):
    assert re.search(rf"{kind}: .* free leaves +[\d.]+ MFLOP \(\d\.\d\d×\), +[\d.]+ ms", out), out
  assert len(re.findall(r"free, on the grid +[\d.]+ MFLOP", out)) == 2, out  # the two kinds of several heads
  own = re.findall(r"free, on the grid +([\d.]+) MFLOP.*; own head, on the grid +([\d.]+) MFLOP", out)
  assert len(own) == 2 and all(float(b) < float(a) for a, b in own), out  # ... and their heads' own path
  assert re.search(r"sampler.run, 5 components .* \(3 programs when restricted\)", out), out
  restricted_gradients.main(["--model=tiny", "--batch_size=8", "--num_chains=2", "--flops_only"])
  out = capsys.readouterr().out
  assert len(re.findall(r"free leaves +[\d.]+ MFLOP \(\d\.\d\d×\);", out)) == 2, out  # (then the grid's)
  assert " ms" not in out and "sampler.run" not in out, out


def test_scaling_prints_the_curve_and_a_projection(capsys):
  scaling.main(["--model=tiny", "--batch_size=8", "--replicas=1,3", "--draws=3", "--projection_model=tiny"])
  out = capsys.readouterr().out
  assert len(re.findall(r"E = +\d+: .* ms per draw", out)) == 2, out
  assert "per-token pass" in out and "% of peak" in out
  assert re.search(r"TPU v4-8, 4 chips \(bf16\) at 30% of peak: sweep \d+ min", out), out


def test_paper_memory_sizes_every_group_on_both_machines(capsys):
  paper_memory.main(["--model=tiny", "--probes=2", "--batch_size=8", "--num_chains=2", "--per_token_batch_size=8",
                     "--per_token_contexts=4"])
  out = capsys.readouterr().out
  # 3 groups × (sweep, per-token run) × 2 machines; whole batches fit, so auto-sizing keeps them
  fits = re.findall(r"entries per device, micro-batch 8: ([\d.]+) GiB \(whole batch: \1 GiB; compiled at 8\)", out)
  assert len(fits) == 12, out
  assert "TPU v4-8" in out and "H100" in out and out.count("per-token run (batch 8, 4 contexts observed)") == 2



def test_accelerator_figures_write_what_they_measured_within_the_budget(capsys, tmp_path):
  result = accelerator_figures.main(["--tiny", "--draws=2", "--budget_s=0.5", f"--out={tmp_path}"])
  out = capsys.readouterr().out
  ran = [row for row in result["settings"] if "seconds_per_draw" in row]
  assert len(ran) == 1 and ran[0]["precision"] == "default" and ran[0]["entries"] == 4, result  # the paper step first
  assert 0 < ran[0]["fraction_of_peak"] < 1 and ran[0]["microbatch"] == [None], ran
  assert ran[0]["fixed_seconds"] > 0 and ran[0]["whole_run_seconds_per_draw"] > ran[0]["seconds_per_draw"] > 0, ran
  assert [[bytes_ > 0 for _, bytes_, _ in search] for search in ran[0]["auto_search"]] == [[True]]  # whole batch fits
  assert out.count("not started") == len(accelerator_figures.SETTINGS) - 1, out
  assert set(result["matmul_peak_tflops"]) == {"bf16", "f32 default", "f32 highest"}
  # At tiny size the "peak" is a 256² bf16 matmul of microseconds, timed at another moment than the pass on a
  # shared 2-core CPU, and XLA counts the softmax's elementwise work as FLOPs: the ratio passed 1 once (1.02).
  # On the device (8192² matmul, paper-size pass) it is a fraction; here: a plausible positive figure.
  assert 0 < result["per_token"]["fraction_of_bf16_peak"] < 2
  numerics = {(row["precision"], row["attention"]): row for row in result["numerics"]}  # (run whatever the budget)
  assert len(numerics) == 6 and all(row["agrees_with_plain"] for row in numerics.values() if "agrees_with_plain" in row)
  assert numerics["float32", "fused"]["nll_max_abs_vs_plain"] < 1e-4
  assert numerics["float32", "plain"]["nll_spread"] > 0.1
  assert {row["kernel"] for row in numerics.values()} == {"plain", "xla"}  # fused runs XLA's kernel on a CPU
  assert ran[0]["kernel"] == "plain" and result["per_token"]["kernel"] == "xla"
  assert 1e-5 < numerics["bfloat16", "plain"]["nll_max_abs_vs_exact"] < 0.1  # bf16 visibly rounds, mildly
  assert json.loads((tmp_path / "accelerator_figures.json").read_text()) == json.loads(json.dumps(result))
  # The paper's runs projected from these measured times (on any machine, after the device run)
  scaling.main([f"--from_figures={tmp_path / 'accelerator_figures.json'}"])
  projected = re.findall(r"at the rate of full/default/plain \(([\d.e+-]+) TFLOP/s.*\): sweep ([\d.]+) min, "
                         r"per-token run ([\d.]+) min", capsys.readouterr().out)
  assert len(projected) == 1 and all(float(x) > 0 for x in projected[0]), projected


def test_gradient_steps_count_burn_in_every_block_and_mala_extra_gradients():
  assert scaling.gradient_steps(sj.SGLDConfig(num_draws=200)) == 221  # (block 0 evaluates w*, 200 draws, 20 MALA)
  assert scaling.gradient_steps(sj.SGLDConfig(num_draws=200, mala_every=0)) == 201
  assert scaling.gradient_steps(sj.SGLDConfig(num_draws=200, noise_level=0.0)) == 201  # (no proposal density)
  assert scaling.gradient_steps(sj.SGLDConfig(num_draws=5, num_burnin=3, steps_between_draws=2, mala_every=2)) == 18


def test_projection_from_measured_times_scales_with_them():
  """A paper draw costs more than the measured one (13 probes, batch 64, MALA), not more than its FLOPs say,
  and the projection moves in proportion to the measured time, plus each run's fixed work."""
  names = scaling.paper_flops("tiny")["names"]
  row = dict(components="all", entries=4 * len(names), precision="default", attention="plain", fixed_seconds=0.0)
  figures = lambda **kw: dict(model="tiny", device="cpu", batch_size=64, settings=[dict(row, **kw)],
                              matmul_peak_tflops={"f32 default": 1.0})
  [one] = scaling.measured_projection(figures(seconds_per_draw=0.01))
  [two] = scaling.measured_projection(figures(seconds_per_draw=0.02))
  [fixed] = scaling.measured_projection(figures(seconds_per_draw=0.01, fixed_seconds=60.0))
  paper = scaling.paper_runs()
  measured_draws = paper["checkpoints"] * paper["draws"] * 0.01 / 60  # minutes, had a paper draw cost a measured one
  assert measured_draws < one["sweep_minutes"] < paper["probes"] * measured_draws, one
  assert two["sweep_minutes"] == pytest.approx(2 * one["sweep_minutes"])
  assert fixed["sweep_minutes"] - one["sweep_minutes"] == pytest.approx(paper["checkpoints"])
  assert fixed["per_token_minutes"] - one["per_token_minutes"] == pytest.approx(paper["per_token_units"])


def test_fractions_of_the_datasheet_peak_and_timing_group_by_group():
  assert accelerator_figures.datasheet_peaks("NVIDIA H200")["bf16"] == 989.4e12
  assert accelerator_figures.datasheet_peaks("TPU v4") == {"bf16": 275e12}
  assert accelerator_figures.datasheet_peaks("cpu") == {}  # (on a CPU: the measured matmul rate only)
  from suscept_jax.models import components, config as model_config, transformer
  cfg = model_config.get_config("tiny")
  params = transformer.init_params(cfg, seed=0)
  names, masks_C = sj.stack_masks(components.component_masks(components.default_components(cfg), params, cfg),
                                  params)
  groups = accelerator_figures.group_runs(names, masks_C)
  assert sorted(n for group_names, _ in groups for n in group_names) == sorted(names) and len(groups) == 3
  for group_names, group_masks in groups:  # each group's masks are its components' own
    for leaf, whole in zip(jax.tree.leaves(group_masks), jax.tree.leaves(masks_C)):
      np.testing.assert_array_equal(leaf, whole[[names.index(n) for n in group_names]])


def test_the_steady_pace_leaves_out_the_work_before_the_first_chunk(monkeypatch):
  clock = iter([10.0, 10.5, 11.0, 11.5])
  monkeypatch.setattr(accelerator_figures.time, "perf_counter", lambda: next(clock))
  pace = accelerator_figures.Pace()
  assert [pace.update(n) for n in (2, 1, 1)] and pace.seconds_per_step() == 0.5  # 2 steps in 1 s after the first
  single, none = accelerator_figures.Pace(), accelerator_figures.Pace()
  single.update(3)
  assert single.seconds_per_step() is None and none.seconds_per_step() is None  # one chunk: nothing steady


def test_a_kernel_that_refuses_its_inputs_is_recorded_and_the_other_settings_run(monkeypatch):
  """On the device, cuDNN may refuse a shape: that setting is a row naming the error, not the end of the run
  (here cuDNN is asked for on a CPU, which has none)."""
  from suscept_jax.models import config as model_config, transformer
  cfg = model_config.get_config("tiny")
  monkeypatch.setattr(transformer, "fused_kernel", lambda backend, precision, d_head: "cudnn")
  params = accelerator_figures.peaked(transformer.init_params(cfg, seed=0))
  tokens = np.random.default_rng(0).integers(0, cfg.d_vocab, (4, cfg.n_ctx), dtype=np.int32)
  rows = {(row["precision"], row["attention"]): row for row in accelerator_figures.numerics_check(cfg, params, tokens)}
  assert len(rows) == 6
  for precision in model_config.PRECISIONS:
    assert "cuDNN" in rows[precision, "fused"]["error"] and rows[precision, "fused"]["kernel"] == "cudnn"
    assert "error" not in rows[precision, "plain"] and rows[precision, "plain"]["grad_rel_vs_exact"] >= 0


def test_flops_are_the_arithmetic_of_the_matmuls_and_a_draw_adds_its_forwards():
  """The FLOP count behind every fraction of peak against the arithmetic: a linear layer's gradient is two
  matmuls of 2·b·k·n each (forward, and the weight's gradient); a draw adds the probes' forwards."""
  import jax.numpy as jnp

  from suscept_jax import mixing
  from suscept_jax.models import config as model_config, transformer
  b, k, n = 64, 128, 96
  x_BK, w_KN = jnp.ones((b, k)), jnp.ones((k, n))
  counted = scaling.flops_of(jax.grad(lambda w, x: jnp.sum((x @ w) ** 2)), w_KN, x_BK)
  assert 4 * b * k * n <= counted <= 1.05 * 4 * b * k * n, counted
  cfg = model_config.get_config("tiny")
  params = transformer.init_params(cfg, seed=0)
  names, masks_C = sj.stack_masks({"full": None}, params)
  loss_fn = lambda w, batch: transformer.context_nll(w, batch, config=cfg)
  batch = np.zeros((8, cfg.n_ctx), np.int32)
  forward = scaling.flops_of(loss_fn, params, batch)
  step = scaling.step_flops(loss_fn, params, names, masks_C, batch)
  assert 2.5 * forward < step < 3.5 * forward  # a gradient: about three forwards
  counted = scaling.draw_flops(loss_fn, params, names, masks_C, batch, chains=3, probes=2, delta_h=0.25)
  assert counted["gradient"] == pytest.approx(3 * step, rel=1e-4)  # (per entry of a vmap over 3 chains, not 4)
  slots = mixing.max_probe_samples(8, 0.25)  # each chain: 2 probes' slots (L_B(w*) is a table built before)
  assert counted["draw"] == pytest.approx(3 * (step + 2 * slots * forward / 8), rel=0.02)


def test_probe_forwards_are_counted_as_the_sampler_runs_them():
  """A draw's probe forwards per entry (`scaling.forward_flops`): a full component's are whole forwards of its
  slots; a head's, told its free head on the entry grid, are fewer (w*'s part counted once per chain), and the
  program computes the same losses as the plain model."""
  from benchmarks import common
  from suscept_jax.models import components, config as model_config, transformer
  cfg = model_config.get_config("tiny", d_vocab=64, n_heads=3)
  params = transformer.init_params(cfg, seed=0)
  names, masks_C = sj.stack_masks(components.component_masks(["full", "l1h0", "l1h1", "l1h2"], params, cfg), params)
  loss_fn = functools.partial(transformer.context_nll, config=cfg)
  rows = np.random.default_rng(0).integers(0, 64, (6, cfg.n_ctx), dtype=np.int32)
  whole = scaling.flops_of(loss_fn, params, rows)
  counted = scaling.forward_flops(loss_fn, params, names, masks_C, rows, chains=2)
  assert counted["full"] == pytest.approx(whole, rel=0.02)
  assert 0 < counted["l1h0"] == counted["l1h2"] < 0.9 * whole, (counted, whole)
  head_masks = jax.tree.map(lambda m: np.asarray(m)[1:], masks_C)
  free = [bool(np.any(m)) for m in jax.tree.leaves(head_masks)]
  program, component_E = common.group_forwards(loss_fn, params, head_masks, free, 2)
  moved_E = jax.tree.map(lambda a, m: np.stack([a + 0.5 * m[c] for c in component_E]), params,
                         jax.tree.map(np.asarray, head_masks))
  losses_E = program(params, moved_E, component_E, np.stack([rows, rows[::-1]]))
  for e, c in enumerate(component_E):
    moved = jax.tree.map(lambda a: a[e], moved_E)
    np.testing.assert_allclose(losses_E[e], loss_fn(moved, rows if e % 2 == 0 else rows[::-1]), rtol=2e-5)


def test_settings_that_differ_only_in_attention_are_counted_once(monkeypatch):
  from benchmarks import accelerator_figures
  from suscept_jax.models import config as model_config
  calls = []
  monkeypatch.setattr(accelerator_figures, "_DRAW_FLOPS", {})
  monkeypatch.setattr(accelerator_figures, "draw_flops",
                      lambda loss_fn, *a, **kw: calls.append(loss_fn) or {"draw": 1.0})
  cfg = model_config.get_config("tiny")
  batch = np.zeros((4, cfg.n_ctx), np.int32)
  count = lambda precision, b=batch: accelerator_figures.counted_draw_flops(  # noqa: E731
      cfg, None, ["full"], None, b, precision, chains=2, probes=1, delta_h=0.1)
  count("bfloat16"), count("bfloat16"), count("float32"), count("bfloat16", batch[:2])
  assert [fn.keywords["numerics"].precision for fn in calls] == ["bfloat16", "float32", "bfloat16"]
  assert {fn.keywords["numerics"].attention for fn in calls} == {"plain"}


def test_compiled_flops_reads_every_form_of_the_cost_analysis():
  import jax
  import jax.numpy as jnp

  from benchmarks import common
  a = jnp.ones((64, 32), jnp.float32)
  assert common.compiled_flops(jax.jit(lambda x: x @ x.T).lower(a).compile()) == 2 * 64 * 64 * 32

  class Compiled:  # what other JAX versions and backends return
    def __init__(self, cost):
      self.cost = cost

    def cost_analysis(self):
      if self.cost is NotImplementedError:
        raise NotImplementedError("no cost model")
      return self.cost

  assert common.compiled_flops(Compiled([{"flops": 7.0}])) == 7.0
  assert common.compiled_flops(Compiled({"flops": 5})) == 5.0
  for missing in (NotImplementedError, None, [], {"bytes accessed": 1.0}):
    assert common.compiled_flops(Compiled(missing)) != common.compiled_flops(Compiled(missing))  # NaN


def test_device_session_plans_parts_whose_flags_their_scripts_accept(capsys, tmp_path):
  """The one call a lent accelerator gets: a renamed flag in a part would waste it, so every part's argv must
  parse with that script's own parser (at paper size and tiny), and the versions are written first."""
  chosen = ["--parts", ",".join(device_session.ALL_PART_NAMES), "--figures_settings",
            "all/bfloat16/fused,full/bfloat16/fused/512,full/default/plain/whole",
            "--precision_settings", "float32/plain", "default/plain"]
  for extra in ([], ["--tiny"], chosen):
    args = device_session.parse_args(["--out", str(tmp_path), *extra])
    for name, module, argv, seconds, env in device_session.parts(args):
      importlib.import_module(module).parse_args(argv)  # exits (SystemExit) on an unknown flag
      assert seconds > 0
  planned = device_session.parts(device_session.parse_args(["--out", str(tmp_path), *chosen]))
  assert [part.name for part in planned] == list(device_session.ALL_PART_NAMES)
  assert accelerator_figures.parse_args(planned[0].argv).settings == [
      ("all", "bfloat16", "fused", "auto"), ("full", "bfloat16", "fused", 512), ("full", "default", "plain", None)]
  assert planned[2].argv[-3:] == ["--settings", "float32/plain", "default/plain"]
  assert "--skip_devinterp" in planned[3].argv and planned[3].env["XLA_FLAGS"] == device_session.UNTUNED_XLA_FLAGS
  for part in (planned[1], planned[3]):  # our half: float32 with plain attention unless asked
    ours = devinterp_side_by_side.parse_args(part.argv)
    assert (ours.precision, ours.attention) == ("float32", "plain")
  asked = device_session.parse_args(["--out", str(tmp_path), "--side_by_side_numerics", "bfloat16/fused"])
  ours = devinterp_side_by_side.parse_args(device_session.parts(asked)[1].argv)
  assert (ours.precision, ours.attention) == ("bfloat16", "fused")
  for bad in ("bfloat16", "bf16/fused", "bfloat16/fused/512"):
    with pytest.raises(SystemExit):
      device_session.parse_args(["--out", str(tmp_path), "--side_by_side_numerics", bad])
  with pytest.raises(SystemExit):
    device_session.parse_args(["--out", str(tmp_path), "--parts", "figures,warmup"])
  for bad in ("all/float16/plain", "full/bfloat16/fused/0", "full/bfloat16/fused/many", "full/bfloat16"):
    with pytest.raises(SystemExit):
      accelerator_figures.parse_args(["--settings", bad])
  device_session.main(["--out", str(tmp_path), "--dry_run"])
  printed = capsys.readouterr().out
  assert "--- figures: timeout 300 python3 -m benchmarks.accelerator_figures" in printed
  assert "benchmarks.devinterp_side_by_side --work_dir" in printed and "--devinterp_device cuda" in printed
  versions = json.loads((tmp_path / "versions.json").read_text())
  assert versions["jax"] == importlib.metadata.version("jax") and "pyarrow" in versions
  assert device_session.installed_versions(["no-such-distribution"]) == {"no-such-distribution": None}


def test_compile_time_compiles_each_setting_in_its_own_process(capsys, tmp_path):
  """Each setting is its own process (XLA keeps autotuning results per process): XLA's defaults without our CPU
  options, XLA flags passed through XLA_FLAGS on top of ours, a flag XLA does not know reported (it stops only
  its own process), and a setting left without budget skipped; the JSON is written as it goes."""
  results = compile_time.main(["--tiny", "--groups", "1", "--out", str(tmp_path), "--settings", "xla",
                               "xla_gpu_autotune_level=0,xla_cpu_enable_fast_math=false", "xla_no_such_flag=1"])
  xla, flagged, unknown = results
  assert xla["platform"] == "cpu" and xla["compile_options"] == {} and "autotune" not in xla["xla_flags"]
  assert flagged["compile_options"]["xla_backend_optimization_level"] == 1
  assert flagged["xla_flags"].endswith("--xla_gpu_autotune_level=0 --xla_cpu_enable_fast_math=false")
  for measured in (xla, flagged):
    (group,) = measured["groups"]
    assert group["components"] == ["full"] and group["bytes"] > 0 and group["wall_s"] >= group["compile_s"] > 0
  assert "groups" not in unknown and "xla_no_such_flag" in unknown["error"]
  assert json.loads((tmp_path / "compile_time.json").read_text()) == results
  printed = capsys.readouterr().out
  assert re.search(r"  xla: full [\d.]+; sum [\d.]+ s on cpu", printed), printed
  assert re.search(r"  xla_gpu_autotune_level=0,xla_cpu_enable_fast_math=false: full [\d.]+; sum [\d.]+ s "
                   r"\([\d.]+× xla\)", printed), printed
  skipped = compile_time.main(["--tiny", "--budget_s", "1", "--settings", "ours"])
  assert skipped == [{"setting": "ours", "error": "skipped: 1 s of --budget_s left"}]
  assert compile_time.default_settings("cpu") == ["ours", "xla"]
  assert compile_time.default_settings("gpu") == ["ours", *compile_time.GPU_FLAGS]
  assert compile_time.default_settings("tpu") == ["ours"]
  for bad in ("--xla_gpu_autotune_level=0", "autotune=0", "xla_gpu_autotune_level", "fast"):
    with pytest.raises(SystemExit):
      compile_time.parse_args(["--settings", bad])


def test_device_session_side_by_side_takes_the_carried_contexts(tmp_path):
  """`make device-prep` writes the demo's contexts beside the wheels (the machine has no corpora): the side by
  side reads them with --tokens, base first; without them it says --random_tokens rather than fail there."""
  args = device_session.parse_args(["--out", str(tmp_path), "--wheels", str(tmp_path / "whl")])
  side_by_side = lambda: device_session.parts(args)[1].argv  # noqa: E731
  assert "--random_tokens" in side_by_side() and "--tokens" not in side_by_side()
  assert "--contexts" not in device_session.parts(args)[2].argv  # the precision part: random tokens too
  contexts = {name: np.zeros((2, 3), np.int32) for name in ("base", "repeats_pile", "code")}
  devinterp_side_by_side.write_contexts(tmp_path / "whl" / "contexts", contexts)
  argv = side_by_side()
  files = argv[argv.index("--tokens") + 1:]
  assert [Path(f).stem for f in files] == ["base", "repeats_pile", "code"] and "--random_tokens" not in argv
  precision = device_session.parts(args)[2].argv
  assert precision[precision.index("--contexts") + 1] == str(tmp_path / "whl" / "contexts")


def test_a_device_session_part_past_its_time_is_stopped(tmp_path):
  sleeper = device_session.Part("sleeper", "timeit", ["-n", "1", "import time; time.sleep(60)"], 1.0, {})
  outcome = device_session.run_part(sleeper, tmp_path)
  assert outcome == "stopped at its 1 s"
  quick = device_session.Part("quick", "timeit", ["-n", "1", "pass"], 30.0, {})
  assert device_session.run_part(quick, tmp_path) == "ok"
  log = (tmp_path / device_session.SESSION_LOG).read_text()  # one file for every part (the tool returns 8)
  assert log.index("=== sleeper ===") < log.index("=== quick ===") < log.index("loop")  # (timeit's own line)
  # A part whose child holds its output (the devinterp job, pip) is stopped with that child, on time.
  spawner = device_session.Part("spawner", "timeit", [
      "-n", "1", "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(60)'])"],
      1.0, {})
  started = time.perf_counter()
  assert device_session.run_part(spawner, tmp_path) == "stopped at its 1 s"
  assert time.perf_counter() - started < 20


@pytest.fixture(scope="module")
def two_seed_sweeps(tiny, tmp_path_factory):
  """(work dir holding seed_000/ and seed_001/, the sweep's arguments, error_bars_on_demo's table and printout)."""
  root, run_dir, tok, data = tiny
  work = tmp_path_factory.mktemp("error_bars")
  sweep_args = [a for a in sweep_cmd(run_dir, tok, data, work / "unused")[3:] if not a.startswith("--output_dir")]
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    table = error_bars_on_demo.main(["--seeds=2", f"--work_dir={work}", "--", *sweep_args, "--steps=40"])
  return work, sweep_args, table, printed.getvalue()


def test_error_bars_on_demo_runs_one_sweep_per_seed_and_compares(tiny, two_seed_sweeps, capsys):
  data = tiny[3]
  work, sweep_args, table, out = two_seed_sweeps
  assert sorted(p.name for p in work.glob("seed_*")) == ["seed_000", "seed_001"]
  assert {key[0] for key in table} == {"chi", "llc"} and {key[1] for key in table} == {40}
  chi, probes = table[("chi", 40, "l0h0")]
  assert probes == [str(data[name]) for name in ("math", "prose", "mix")] and (chi[:2] > 0).all()
  assert np.isnan(chi[2])  # the probe that is the base data: χ ≡ 0 in every run, no ratio
  assert out.count("checkpoint 40") == 4 and "every χ cell: median" in out, out  # full + the 3 components
  error_bars_on_demo.main(["--seeds=2", f"--work_dir={work}", "--", *sweep_args, "--steps=40"])
  assert "seed 0:" not in capsys.readouterr().out  # finished seeds are reused


def test_precision_shift_measures_a_known_shift_in_standard_errors(two_seed_sweeps, tmp_path, capsys):
  """A real sweep directory against a copy whose χ moved by 0.5 and LLC by 2 standard errors, said to be bf16."""
  reference = two_seed_sweeps[0] / "seed_000"
  other = tmp_path / "bf16"
  shutil.copytree(reference, other)
  table = pd.read_csv(other / "results.csv")
  table["chi"] += 0.5 * table.chi_stderr
  table["llc"] += 2 * table.llc_stderr
  table.to_csv(other / "results.csv", index=False)
  config = json.loads((other / "config.json").read_text())
  config["settings"]["numerics"]["precision"] = "bfloat16"
  (other / "config.json").write_text(json.dumps(config))
  precision_shift.main([str(reference), str(other)])
  out = capsys.readouterr().out
  cells = int((table.chi_stderr > 0).sum())  # (the base data as a probe: χ ≡ 0 with no error bar, left out)
  assert f"reference {reference} (float32/plain): {len(table)} rows" in out
  assert f"{other} (bfloat16/plain) against the reference:" in out
  assert (f"|Δχ| / stderr: median 0.500, 90th pct 0.500, max 0.500 standard errors ({cells} values; 0% above 1)"
          in out), out
  assert "|ΔLLC| / stderr: median 2.000, 90th pct 2.000, max 2.000 standard errors (4 values; 100% above 1)" in out
  table.iloc[1:].to_csv(other / "results.csv", index=False)
  with pytest.raises(ValueError, match=f"the directories hold different rows \\({len(table)} in the reference, "
                                       f"{len(table) - 1} shared\\)"):
    precision_shift.main([str(reference), str(other)])


def test_precision_on_demo_measures_each_setting_against_the_first_in_its_standard_errors(tmp_path, capsys):
  """The same chains at each numerics setting: on CPU "default" is float32, so it moves nothing, bit for bit;
  bfloat16 moves χ and the LLC by rounding, a small part of their error bars; a bad setting is refused first."""
  result = precision_on_demo.main(["--tiny", "--components", "full", "l1h0", "--out", str(tmp_path),
                                   "--settings", "float32/plain", "default/plain", "bfloat16/fused"])
  reference, default, bf16 = result["runs"]
  assert reference["components"] == ["full", "l1h0"] and np.all(np.asarray(reference["chi_stderr"]) > 0)
  assert default["chi"] == reference["chi"] and max(default["chi_shift"] + default["llc_shift"]) == 0
  assert 0 < max(bf16["chi_shift"] + bf16["llc_shift"]) < 1
  assert json.loads((tmp_path / "precision_on_demo.json").read_text())["runs"][2]["setting"] == "bfloat16/fused"
  assert "|Δχ| / stderr: median" in capsys.readouterr().out
  with pytest.raises(ValueError, match="precision='float16'"):
    precision_on_demo.main(["--tiny", "--out", str(tmp_path), "--settings", "float32/plain", "float16/plain"])
  with pytest.raises(ValueError, match=f"--contexts={tmp_path} holds no contexts written by"):
    precision_on_demo.main(["--tiny", "--out", str(tmp_path / "out"), "--contexts", str(tmp_path)])


def test_device_session_gives_no_part_more_than_the_call_has_left(monkeypatch, tmp_path):
  """Parts run in order, each at most its own time and never past --total_s; one with under a minute left is
  skipped (the device tool would cut it off without a record)."""
  clock = {"now": 0.0}
  monkeypatch.setattr(device_session.time, "perf_counter", lambda: clock["now"])
  given = {}

  def run_part(part, out):
    given[part.name] = part.seconds
    clock["now"] += 250.0  # each part takes 250 s
    return "ok"

  monkeypatch.setattr(device_session, "run_part", run_part)
  outcomes = device_session.main(["--out", str(tmp_path), "--total_s", "550"])
  assert given == {"figures": 300.0, "side_by_side": 260.0} and outcomes["precision"].startswith("skipped: 50 s")
  clock["now"], given = 0.0, {}
  device_session.main(["--out", str(tmp_path), "--total_s", "640"])
  assert given == {"figures": 300.0, "side_by_side": 260.0, "precision": 140.0}


def test_an_h200s_time_bounds_an_h100s():
  """The goal names an H100; the lent device was an H200 (same tensor-core peaks, 1.43× the HBM bandwidth)."""
  low, high = scaling.h100_range("NVIDIA H200", 60.0)
  assert low == 60.0 and high == pytest.approx(60.0 * 4.8 / 3.35)
  assert scaling.h100_range("NVIDIA H100 80GB HBM3", 60.0) is None and scaling.h100_range("cpu", 1.0) is None
