"""The figures a lent accelerator should give first, from one process, most important first.

  python -m benchmarks.accelerator_figures [--out=DIR] [--model=tetrahedron_3m] [--batch_size=64]
      [--draws=8] [--budget_s=420] [--tiny]

1. The device and its measured matmul peaks: bf16 inputs (float32 accumulation), float32 at HIGHEST, float32 at
   the backend's default precision (TF32 on recent NVIDIA GPUs).
2. The paper preset's SGLD draw (batch 64 × ctx 1024, one probe at δh 0.1, micro-batch "auto"), in settings of
   (entries, precision, attention[, logits]): the full model × 4 chains at each precision and attention, then every
   component × 4 chains (one program per component group, as a sweep runs them); logits as the runners compute them
   ("auto": whole on an accelerator) unless a setting names tokens per chunk or "whole". For each: the first run's
   wall time (compilation included), the compiled run's steady seconds per draw (from its progress updates, group
   by group: each group's fixed host work before its first chunk, the streams and the table of L_B(w*), is reported
   apart, since at a few draws it would swamp a fast device's step), the draw's FLOPs (XLA's count on the CPU of
   the gradients, restricted per group, and the probe's forwards: `scaling.draw_flops`) per second against the
   matching peak, the micro-batch auto-sizing chose (and its search: the sizes compiled or skipped, with bytes
   measured and predicted), and `memory_plan`'s bytes against the device's peak bytes in use.
3. The per-token pass (per-token NLL of 16 contexts for 4 parameter copies): FLOP/s against the peak.
4. Numerics on this device (after the paper preset's step): per-token NLL and its gradient at every precision
   and attention against exact float32 with plain attention, on 4 contexts at weights with sharp attention
   patterns; fused attention (cuDNN on GPU in bfloat16) against plain at its own precision (`numerics_check`).
   Every row names the attention kernel that ran (`kernel`: plain, xla, cudnn or flash).

Settings after the first start only while the budget lasts (a compile on a large model can take a
minute); the numerics and the per-token pass always run, right after the first. FLOPs are XLA's count of the
same arithmetic with plain attention, compiled for the CPU (`scaling.flops_of`: the GPU's own count misses
most of a gradient's matmuls and everything inside a cuDNN call); fractions of peak are against the
measured matmul rate and, on a device in `scaling.DATASHEET_PEAKS`, against the vendor's figure. Every figure is
printed as it comes and DIR/accelerator_figures.json is rewritten after each, so an interrupted run still
leaves what it measured. --tiny: the tiny model at small sizes (the test suite runs it on CPU).

On the lent GPU (its image has jax with CUDA, flax, scipy, tqdm; nothing to carry) it runs as the first part of
`benchmarks.device_session`, the one prepared call that also runs the devinterp side by side there; alone:
  PYTHONUNBUFFERED=1 PYTHONPATH=. python3 -m benchmarks.accelerator_figures --out=$OUT 2>&1 | tee $OUT/log.txt
"""
import argparse
import functools
import json
import time
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

import suscept_jax as sj
from suscept_jax import restricted, sampler
from suscept_jax.models import components, config as model_config, transformer
from suscept_jax.models.config import Numerics

from benchmarks import common
from benchmarks.scaling import PEAK_FOR, datasheet_peaks, draw_flops, flops_of, setting_label

# (components, precision, attention, logits), in the order they run: the paper preset's step first.
SETTINGS = [("full", "default", "plain", "auto"), ("full", "bfloat16", "fused", "auto"),
            ("full", "float32", "plain", "auto"), ("full", "bfloat16", "plain", "auto"),
            ("full", "default", "fused", "auto"), ("all", "bfloat16", "fused", "auto"),
            ("all", "float32", "plain", "auto")]


def attention_kernel(cfg, precision: str, attention: str) -> str:
  """The kernel a setting's attention runs on this backend: plain, flash, or fused's `transformer.fused_kernel`."""
  return transformer.fused_kernel(jax.default_backend(), precision, cfg.d_head) if attention == "fused" else attention


def matmul_peaks(n: int, repeats: int = 10) -> dict:
  """Measured matmul FLOP/s of the default device: bf16 inputs, float32 at default and at HIGHEST precision."""
  rng = np.random.default_rng(0)  # random data: zeros run faster than real inputs on some chips
  a = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
  kinds = {"bf16": (jnp.bfloat16, jax.lax.Precision.DEFAULT), "f32 default": (jnp.float32, jax.lax.Precision.DEFAULT),
           "f32 highest": (jnp.float32, jax.lax.Precision.HIGHEST)}
  peaks = {}
  for name, (dtype, precision) in kinds.items():
    x = a.astype(dtype)
    f = jax.jit(lambda x, p=precision: jnp.matmul(x, x, precision=p, preferred_element_type=jnp.float32))
    peaks[name] = 2 * n**3 / common.seconds_per_call(f, x, repeats=repeats)
  return peaks


def peak_bytes_in_use() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


class Pace:
  """A progress bar for `sampler.run` that notes the time at each update: its steady seconds per step, from the
  first update to the last, leave out the run's fixed work before its first chunk returns."""

  def __init__(self):
    self.marks = []  # (perf_counter, steps so far)
    self._steps = 0

  def update(self, n: int = 1) -> None:
    self._steps += n
    self.marks.append((time.perf_counter(), self._steps))

  def seconds_per_step(self) -> float | None:
    """None with fewer than two updates (one chunk: nothing steady to time)."""
    if len(self.marks) < 2:
      return None
    (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
    return (t1 - t0) / (n1 - n0)


def flops_counted_as(cfg, precision: str):
  """The loss whose FLOPs stand for a setting's: plain attention at the same precision (the same arithmetic).
  XLA's cost analysis counts no FLOPs inside a cuDNN attention call, so a fused setting's own count would
  read low."""
  return functools.partial(transformer.context_nll, config=cfg, numerics=Numerics(precision=precision,
                                                                                   attention="plain"))


def group_runs(names, masks_C) -> list:
  """[(names, masks_C)] of each component group, as the sampler runs them one after another on an accelerator."""
  return [([names[c] for c in comps], jax.tree.map(lambda m, idx=np.asarray(comps): m[idx], masks_C))
          for _, comps in restricted.component_groups(masks_C, len(names))]


_DRAW_FLOPS: dict = {}  # the counts of a session's settings that differ only in attention or logits: counted once


def counted_draw_flops(cfg, params, names, masks_C, batch, precision: str, *, chains: int, probes: int,
                       delta_h: float) -> dict:
  """`scaling.draw_flops` of the loss that stands for a setting's (`flops_counted_as`), kept per model,
  components, precision and shape: compiling the paper model's group programs for the count takes seconds on the
  host while the device idles, and settings that differ only in attention or logits chunk count the same."""
  key = (repr(cfg), tuple(names), precision, np.shape(batch), chains, probes, delta_h)
  if key not in _DRAW_FLOPS:
    _DRAW_FLOPS[key] = draw_flops(flops_counted_as(cfg, precision), params, names, masks_C, batch, chains=chains,
                                  probes=probes, delta_h=delta_h)
  return _DRAW_FLOPS[key]


def measure_setting(cfg, params, base, probes, which: str, precision: str, attention: str, logits="auto", *,
                    batch_size: int, num_chains: int, draws: int, peaks: dict, datasheet: dict | None = None) -> dict:
  """One (components, precision, attention, logits) setting: compile-included and compiled times, FLOP/s,
  memory. logits: `transformer.per_token_nll`'s logits_chunk.

  The steady time per draw is timed group by group (each its own run, its own progress marks) and summed: in
  one run of several groups, the setup of the next group would fall between two marks and count as drawing."""
  numerics = Numerics(precision=precision, attention=attention)
  loss_fn = functools.partial(transformer.context_nll, config=cfg, numerics=numerics, logits_chunk=logits)
  specs = ["full"] if which == "full" else components.default_components(cfg)
  names, masks_C = sj.stack_masks(components.component_masks(specs, params, cfg), params)
  config = sj.SGLDConfig(num_chains=num_chains, num_draws=draws, mala_every=0)
  kw = dict(config=config, batch_size=batch_size, delta_h=0.1, microbatch_size="auto")
  _, first = common.timed(lambda: sampler.run(loss_fn, params, names, masks_C, base, probes, progress=False, **kw))
  per_draw = seconds = 0.0
  for group_names, group_masks in group_runs(names, masks_C):
    pace = Pace()
    out = sampler.run(loss_fn, params, group_names, group_masks, base, probes, progress=pace, **kw)
    per_draw += pace.seconds_per_step() or out.seconds / (draws + 1)  # (steps_between_draws is 1: a step is a draw)
    seconds += out.seconds
  plans = sampler.memory_plan(loss_fn, params, names, masks_C, base, probes, **kw)  # (compiled by now)
  whole_run = seconds / (draws + 1)  # draws + the start's evaluation block, fixed work included
  counted = counted_draw_flops(cfg, params, names, masks_C, base[:batch_size], precision, chains=num_chains,
                               probes=len(probes), delta_h=kw["delta_h"])
  flops = counted["draw"]
  peak = peaks[PEAK_FOR[precision]]
  sheet = (datasheet or {}).get(PEAK_FOR[precision])
  return dict(components=which, entries=len(names) * num_chains, precision=precision, attention=attention,
              logits_chunk=logits, kernel=attention_kernel(cfg, precision, attention),
              first_run_s=first, seconds_per_draw=per_draw, whole_run_seconds_per_draw=whole_run,
              fixed_seconds=seconds - per_draw * (draws + 1), gradient_tflop=counted["gradient"] / 1e12,
              draw_tflop=flops / 1e12,
              achieved_tflops=flops / per_draw / 1e12, fraction_of_peak=flops / per_draw / peak,
              fraction_of_datasheet_peak=flops / per_draw / sheet if sheet else None,
              peak_used=PEAK_FOR[precision], microbatch=[p.microbatch_size for p in plans],
              planned_gib=[p.bytes_per_device / 2**30 for p in plans],
              auto_search=[[list(tried) for tried in p.searched] for p in plans],  # (rows, bytes or None, predicted)
              device_peak_gib=(peak_bytes_in_use() or 0) / 2**30 or None)


def peaked(params, qk: float = 6.0, unembed: float = 10.0):
  """The random init with sharp attention patterns and logits: at init both are nearly uniform (scores of
  std ≈ 0.1 on the paper preset), where any two attention kernels agree trivially."""
  scale = {"W_Q": qk, "W_K": qk, "W_U": unembed}
  return jax.tree_util.tree_map_with_path(lambda path, w: w * scale.get(getattr(path[-1], "key", None), 1.0), params)


def numerics_check(cfg, params, tokens) -> list[dict]:
  """Every (precision, attention) on this device against exact float32 with plain attention: per-token NLL
  and the gradient of its mean. Fused attention (cuDNN on GPU in bfloat16, until now only checked against XLA
  on CPU) is also compared with plain attention at its own precision, and agrees when that difference is within
  twice the precision's own deviation from exact (at least 1e-4 nats). A setting that fails on this device (a
  kernel refusing its inputs) is a row with its error, and the others still run."""
  results, rows = {}, []
  for precision in model_config.PRECISIONS:
    for attention in ("plain", "fused"):
      numerics = Numerics(precision=precision, attention=attention)
      mean_and_tokens = lambda p, n=numerics: (lambda t: (t.mean(), t))(transformer.per_token_nll(p, tokens, cfg,
                                                                                                  numerics=n))
      try:
        (_, nll), grad = jax.jit(jax.value_and_grad(mean_and_tokens, has_aux=True))(params)
      except Exception as e:  # noqa: BLE001 (recorded: the figures are what this run is for)
        rows.append(dict(precision=precision, attention=attention, kernel=attention_kernel(cfg, precision, attention),
                         error=f"{type(e).__name__}: {e}"[:300]))
        continue
      results[precision, attention] = (np.asarray(nll, np.float64),
                                       np.asarray(jax.flatten_util.ravel_pytree(grad)[0], np.float64))
  if ("float32", "plain") not in results:
    return rows
  exact_nll, exact_grad = results["float32", "plain"]
  relative = lambda g, ref: float(np.linalg.norm(g - ref) / np.linalg.norm(ref))
  for (precision, attention), (nll, grad) in results.items():
    row = dict(precision=precision, attention=attention, kernel=attention_kernel(cfg, precision, attention),
               nll_spread=float(exact_nll.std()),
               nll_max_abs_vs_exact=float(np.abs(nll - exact_nll).max()),
               mean_nll_shift_vs_exact=float(nll.mean() - exact_nll.mean()),
               grad_rel_vs_exact=relative(grad, exact_grad))
    if attention == "fused" and (precision, "plain") in results:
      plain_nll, plain_grad = results[precision, "plain"]
      differs = float(np.abs(nll - plain_nll).max())
      own = float(np.abs(plain_nll - exact_nll).max())
      row.update(nll_max_abs_vs_plain=differs, grad_rel_vs_plain=relative(grad, plain_grad),
                 agrees_with_plain=bool(differs <= max(2 * own, 1e-4)))
    rows.append(row)
  return rows


def per_token_figure(cfg, params, base, peaks: dict, replicas: int = 4, contexts: int = 16,
                     datasheet: dict | None = None) -> dict:
  """The per-token pass in bfloat16 with fused attention, its FLOPs counted on plain attention (see
  `flops_counted_as`)."""
  stacked = jax.tree.map(lambda a: jnp.broadcast_to(a, (replicas, *a.shape)), params)
  batch = jnp.asarray(base[:contexts])

  def forward_with(attention):  # (logits whole: what the accelerators run, and what XLA's count can count)
    token_loss_fn = functools.partial(transformer.per_token_nll, config=cfg, logits_chunk=None,
                                      numerics=Numerics(precision="bfloat16", attention=attention))
    return jax.jit(lambda w, b: jax.vmap(lambda p: token_loss_fn(p, b))(w))

  flops = flops_of(forward_with("plain"), stacked, batch)
  seconds = common.seconds_per_call(forward_with("fused"), stacked, batch)
  sheet = (datasheet or {}).get("bf16")
  return dict(replicas=replicas, contexts=contexts, seconds=seconds, achieved_tflops=flops / seconds / 1e12,
              fraction_of_bf16_peak=flops / seconds / peaks["bf16"],
              fraction_of_datasheet_bf16_peak=flops / seconds / sheet if sheet else None)


def logits_setting(text: str):
  """LOGITS of a setting as `transformer.per_token_nll`'s logits_chunk: "auto", "whole" (None) or tokens per
  chunk; ValueError otherwise."""
  if text in ("auto", "whole"):
    return None if text == "whole" else text
  if not text.isdigit() or int(text) < 1:
    raise ValueError(text)
  return int(text)


def settings_list(text: str) -> list[tuple]:
  """--settings: "full/default/plain,all/bfloat16/fused/512" as (components, precision, attention, logits)."""
  settings = []
  precisions, attentions = model_config.PRECISIONS, model_config.ATTENTION_IMPLEMENTATIONS
  for item in (item.strip() for item in text.split(",") if item.strip()):
    parts = item.split("/")
    try:
      which, precision, attention, logits = parts if len(parts) == 4 else (*parts, "auto")
      if which not in ("full", "all") or precision not in precisions or attention not in attentions:
        raise ValueError(item)
      settings.append((which, precision, attention, logits_setting(logits)))
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"{item!r} is not COMPONENTS/PRECISION/ATTENTION[/LOGITS] with COMPONENTS full or all, PRECISION one "
          f"of {', '.join(precisions)}, ATTENTION one of {', '.join(attentions)} and LOGITS auto, whole or tokens "
          f"per chunk") from None
  if not settings:
    raise argparse.ArgumentTypeError("no setting given")
  return settings


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="runs/accelerator_figures")
  parser.add_argument("--model", default="tetrahedron_3m")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--num_chains", type=int, default=4)
  parser.add_argument("--draws", type=int, default=8, help="draws per run (an accelerator runs one per chunk)")
  parser.add_argument("--budget_s", type=float, default=420.0, help="start no new setting after this many seconds")
  parser.add_argument("--settings", type=settings_list, default=SETTINGS,
                      metavar="COMPONENTS/PRECISION/ATTENTION[/LOGITS],...",
                      help="the settings to measure, in this order (default: all of them, the paper preset's step "
                      "first); COMPONENTS is full or all; LOGITS auto (default), whole, or tokens per chunk")
  parser.add_argument("--tiny", action="store_true", help="the tiny model at small sizes (tests, CPU)")
  return parser.parse_args(argv)


def _of_datasheet(fraction) -> str:
  return f" ({100 * fraction:.1f}% of the datasheet's)" if fraction is not None else ""


def main(argv=None) -> dict:
  args = parse_args(argv)
  t0 = time.perf_counter()
  model, batch_size, matmul_n = (("tiny", 8, 256) if args.tiny else (args.model, args.batch_size, 8192))
  cfg = model_config.get_config(model)
  params = transformer.init_params(cfg, seed=0)
  rng = np.random.default_rng(0)
  tokens = lambda n: rng.integers(0, cfg.d_vocab, (n, cfg.n_ctx), dtype=np.int32)
  base, probes = tokens(16 * batch_size), {"probe": tokens(4 * batch_size)}
  out_dir = Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  result = dict(device=f"{jax.devices()[0].device_kind} ×{jax.device_count()}", backend=jax.default_backend(),
                jax=jax.__version__, model=model, ctx=cfg.n_ctx, batch_size=batch_size, settings=[],
                free_slices=True)  # (the programs compute one head per entry where one is free: `scaling.draw_flops`)

  def save():
    (out_dir / "accelerator_figures.json").write_text(json.dumps(result, indent=1))

  peaks = matmul_peaks(matmul_n)
  datasheet = datasheet_peaks(jax.devices()[0].device_kind)
  result["matmul_peak_tflops"] = {k: v / 1e12 for k, v in peaks.items()}
  result["datasheet_peak_tflops"] = {k: v / 1e12 for k, v in datasheet.items()}
  print(f"{result['device']} ({result['backend']}, jax {jax.__version__}); matmul peaks (TFLOP/s): "
        + ", ".join(f"{k} {v / 1e12:.1f}" for k, v in peaks.items())
        + ("; datasheet: " + ", ".join(f"{k} {v / 1e12:.1f}" for k, v in datasheet.items()) if datasheet else ""),
        flush=True)
  save()
  for i, (which, precision, attention, logits) in enumerate(args.settings):
    label = setting_label(dict(components=which, precision=precision, attention=attention, logits_chunk=logits))
    if i and time.perf_counter() - t0 > args.budget_s:  # (the paper preset's step always runs)
      print(f"budget of {args.budget_s:.0f} s spent: not started: {label}", flush=True)
      continue
    try:
      row = measure_setting(cfg, params, base, probes, which, precision, attention, logits, batch_size=batch_size,
                            num_chains=args.num_chains, draws=args.draws, peaks=peaks, datasheet=datasheet)
    except (MemoryError, ValueError, NotImplementedError, RuntimeError) as e:  # (no micro-batch fits; an
      # attention this backend lacks; a kernel refusing its inputs): recorded, and the next setting runs
      row = dict(components=which, precision=precision, attention=attention, logits_chunk=logits,
                 kernel=attention_kernel(cfg, precision, attention), error=f"{type(e).__name__}: {e}"[:300])
      print(f"{label} ({row['kernel']}): {row['error']}", flush=True)
    else:
      print(f"{which:4s} × {args.num_chains} chains ({row['entries']} entries), "
            f"{label.split('/', 1)[1]} ({row['kernel']}): "
            f"first run {row['first_run_s']:.1f} s; {row['seconds_per_draw'] * 1e3:.1f} ms per draw "
            f"(+ {row['fixed_seconds']:.2f} s per run); "
            f"{row['achieved_tflops']:.2f} TFLOP/s = {100 * row['fraction_of_peak']:.1f}% of the {row['peak_used']} "
            f"matmul peak{_of_datasheet(row['fraction_of_datasheet_peak'])}; micro-batch {row['microbatch']}, "
            f"planned {max(row['planned_gib']):.2f} GiB per group, "
            f"device peak {row['device_peak_gib'] or float('nan'):.2f} GiB", flush=True)
    result["settings"].append(row)
    save()
    if i == 0:  # correctness on this device, right after the main figure (always: six small programs)
      result["numerics"] = numerics_check(cfg, peaked(params), base[:4])
      for row in result["numerics"]:
        if "error" in row:
          print(f"numerics {row['precision']}/{row['attention']} ({row['kernel']}): {row['error']}", flush=True)
          continue
        print(f"numerics {row['precision']}/{row['attention']} ({row['kernel']}): per-token NLL max |Δ| "
              f"{row['nll_max_abs_vs_exact']:.2e} vs exact (spread {row['nll_spread']:.2f}), "
              f"mean shift {row['mean_nll_shift_vs_exact']:+.2e}, "
              f"gradient {row['grad_rel_vs_exact']:.1e} relative"
              + (f"; fused vs plain {row['nll_max_abs_vs_plain']:.2e}: "
                 f"{'agrees' if row['agrees_with_plain'] else 'DIFFERS'}" if "agrees_with_plain" in row else ""),
              flush=True)
      save()
      # The per-token pass, while the budget is young (always: one small program).
      kernel = attention_kernel(cfg, "bfloat16", "fused")
      try:
        result["per_token"] = p = dict(per_token_figure(cfg, params, base, peaks, datasheet=datasheet),
                                       kernel=kernel)
        print(f"per-token pass ({p['replicas']} copies × {p['contexts']} contexts, bf16/fused, {kernel}): "
              f"{p['seconds'] * 1e3:.1f} ms, {p['achieved_tflops']:.2f} TFLOP/s = "
              f"{100 * p['fraction_of_bf16_peak']:.1f}% of the bf16 matmul peak"
              f"{_of_datasheet(p['fraction_of_datasheet_bf16_peak'])}", flush=True)
      except (NotImplementedError, RuntimeError) as e:
        result["per_token"] = dict(kernel=kernel, error=f"{type(e).__name__}: {e}"[:300])
        print(f"per-token pass (bf16/fused, {kernel}): {result['per_token']['error']}", flush=True)
      save()
  result["seconds"] = time.perf_counter() - t0
  save()
  print(f"wrote {out_dir / 'accelerator_figures.json'} ({result['seconds']:.0f} s)")
  return result


if __name__ == "__main__":
  main()
