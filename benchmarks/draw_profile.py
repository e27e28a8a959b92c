"""Where a draw's time goes: the compiled draw programs profiled, each op's time summed by what it computes.

  python -m benchmarks.draw_profile [--model=tetrahedron_3m] [--components=full] [--batch_size=64]
      [--num_chains=4] [--precision=bfloat16] [--attention=fused] [--logits=auto] [--draws=4] [--out=DIR]

Runs `sampler.run` once to compile, then again under `jax.profiler.trace`, reads the trace back
(`jax.profiler.ProfileData`) and XLA's optimised HLO of the same programs (dumped with --xla_dump_to, which this
script sets before JAX starts), and sums every op's time by the named scope it was traced in: the stage of the
draw (`chunks`: gradient, sgld_update, mala, probes, per_token), the part of the model (`transformer`: embed,
layer_norm, qkv, attention, attn_out, unembed, cross_entropy) and the direction (backward: inside a transpose).
Prints that table per draw and the most expensive ops, and writes DIR/draw_profile.json.

Op times come from XLA's own trace events: on a GPU, CUPTI's kernel events, which XLA attributes to HLO ops; on
CPU, the thunk executor's events (--xla_cpu_enable_xprof_traceme, also set here), summed over the threads that
run them (core time, not wall time). An op that contains others (a loop) counts only through what it contains.
"""
import os
import re
import sys
import tempfile

# Run as a script (python -m), before JAX starts its backends, where alone XLA's flags take effect: where its
# HLO goes, and XLA:CPU's per-op trace events. Imported (its parser, its helpers), it changes nothing.
_DUMP = None
if __name__ == "__main__" and "jax" not in sys.modules:
  _DUMP = tempfile.mkdtemp(prefix="draw_profile_hlo_")
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), f"--xla_dump_to={_DUMP}",
                                      "--xla_dump_hlo_as_text", "--xla_cpu_enable_xprof_traceme=true"]).strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import suscept_jax as sj  # noqa: E402
from suscept_jax import sampler  # noqa: E402
from suscept_jax.models import components, config as model_config, transformer  # noqa: E402
from suscept_jax.models.config import Numerics  # noqa: E402

from benchmarks.accelerator_figures import logits_setting  # noqa: E402

STAGES = ("gradient", "sgld_update", "mala", "probes", "per_token")  # `chunks`' named scopes
PARTS = ("embed", "layer_norm", "qkv", "attention", "attn_out", "unembed", "cross_entropy")  # `transformer`'s
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = ')
_OP_NAME = re.compile(r'metadata=\{op_name="([^"]*)"')
_TARGET = re.compile(r'custom_call_target="([^"]*)"')


class OpTime(NamedTuple):
  """One HLO op's summed time over the trace."""

  module: int | str  # the program's id (XLA's dump number), or its name where the trace gives only that
  op: str  # the HLO instruction's name
  kernel: str  # the trace event's own name where it differs from the op's (a GPU kernel's), else ""
  seconds: float


def where_traced(op_name: str) -> tuple[str, str, str]:
  """(stage, part, direction) of an op from its metadata op_name, e.g.
  "jit(_draw_chunk)/while/body/gradient/transpose(jvp(block1))/attention/dot_general"
  -> ("gradient", "attention", "backward"); "other" where no scope names it."""
  words = re.findall(r"\w+", op_name)
  stage = next((w for w in words if w in STAGES), "other")
  part = next((w for w in reversed(words) if w in PARTS), "other")
  return stage, part, "backward" if "transpose(" in op_name else "forward"


class HloDumps(NamedTuple):
  """What XLA's optimised HLO dumps say of the programs: module id (the trace's program_id) -> name, and
  (module id, op) -> (op_name metadata, custom call target)."""

  modules: dict
  ops: dict


def hlo_dumps(dump_dir) -> HloDumps:
  """Read every module_<id>.<name>.*after_optimizations.txt under dump_dir."""
  modules, ops = {}, {}
  for path in Path(dump_dir).glob("module_*after_optimizations.txt"):
    number, name = int(path.name.split(".")[0][len("module_"):]), path.name.split(".")[1]
    modules[number] = name
    for line in path.read_text(errors="replace").splitlines():
      match = _INSTRUCTION.match(line)
      op_name, target = _OP_NAME.search(line), _TARGET.search(line)
      if match and (op_name or target):
        ops[number, match.group(1)] = (op_name.group(1) if op_name else "", target.group(1) if target else "")
  return HloDumps(modules, ops)


def leaf_events(events) -> list:
  """The events of one trace line that contain no other event (a loop's event holds its body's)."""
  ordered = sorted(events, key=lambda e: (e.start_ns, -e.end_ns))
  leaves, stack = [], []
  for event in ordered:
    while stack and stack[-1][0].end_ns <= event.start_ns:
      parent, has_child = stack.pop()
      if not has_child:
        leaves.append(parent)
    if stack:
      stack[-1][1] = True
    stack.append([event, False])
  leaves.extend(event for event, has_child in stack if not has_child)
  return leaves


def hlo_of(stats: dict):
  """(module, op) an event ran for, from its stats: XLA:CPU's thunk events carry hlo_op and program_id; a GPU
  kernel's carries the launch's annotation, "...#hlo_op=<op>,hlo_module=<name>,program_id=<id>#". None for an
  event that names no op."""
  if "hlo_op" in stats:
    return stats.get("program_id", stats.get("hlo_module", "")), str(stats["hlo_op"])
  for value in stats.values():
    if isinstance(value, str) and "hlo_op=" in value:
      program, module = re.search(r"program_id=(\d+)", value), re.search(r"hlo_module=([^,#]+)", value)
      return (int(program.group(1)) if program else module.group(1) if module else "",
              re.search(r"hlo_op=([^,#]+)", value).group(1))
  return None


def op_times(trace_dir) -> list[OpTime]:
  """Every HLO op's summed time in the newest trace under trace_dir, from the events that name an op (leaves
  only): the device planes' where they have such events (a GPU's kernels), else the host's (XLA:CPU)."""
  traces = list(Path(trace_dir).glob("**/*.xplane.pb"))
  if not traces:
    raise RuntimeError(f"jax.profiler wrote no trace (*.xplane.pb) under {trace_dir}")
  path = max(traces, key=lambda p: p.stat().st_mtime)
  profile = jax.profiler.ProfileData.from_file(str(path))
  by_plane = collections.defaultdict(list)  # plane name -> [(line's leaf events with their (module, op))]
  for plane in profile.planes:
    for line in plane.lines:
      tagged = [(event, hlo) for event in line.events if (hlo := hlo_of(dict(event.stats))) is not None]
      ops = {id(event): hlo for event, hlo in tagged}
      by_plane[plane.name].extend((event, ops[id(event)]) for event in leaf_events([e for e, _ in tagged]))
  device = [name for name, events in by_plane.items() if name.startswith("/device:") and events]
  totals = collections.defaultdict(float)
  for name in device or list(by_plane):
    for event, (module, op) in by_plane[name]:
      totals[module, op, event.name if event.name != op else ""] += event.duration_ns * 1e-9
  return [OpTime(module, op, kernel, seconds) for (module, op, kernel), seconds in totals.items()]


DRAW_PROGRAM = "_draw_chunk"  # the name of the sampler's draw programs (`chunks._draw_chunk`)


def summarise(times: list[OpTime], dumps: HloDumps, draws: int) -> dict:
  """Seconds per draw of the draw programs by (stage, part, direction), their ops most expensive first, and
  the time per draw of every other program that ran (the table of L_B(w*), chain keys, ...)."""
  rows, ops, outside = collections.defaultdict(float), [], collections.defaultdict(float)
  for t in times:
    module = dumps.modules.get(t.module, str(t.module))
    if DRAW_PROGRAM not in module:
      outside[module] += 1e3 * t.seconds / draws
      continue
    op_name, target = dumps.ops.get((t.module, t.op), ("", ""))
    where = where_traced(op_name)
    rows[where] += t.seconds / draws
    ops.append(dict(op=t.op, kernel=t.kernel or target, op_name=op_name, stage=where[0], part=where[1],
                    direction=where[2], ms_per_draw=1e3 * t.seconds / draws))
  total = sum(rows.values())
  table = [dict(stage=s, part=p, direction=d, ms_per_draw=1e3 * v, fraction=v / total if total else 0.0)
           for (s, p, d), v in sorted(rows.items(), key=lambda kv: -kv[1])]
  return dict(ms_per_draw=1e3 * total, by_scope=table, top_ops=sorted(ops, key=lambda o: -o["ms_per_draw"])[:40],
              other_programs_ms_per_draw=dict(sorted(outside.items(), key=lambda kv: -kv[1])))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="runs/draw_profile")
  parser.add_argument("--model", default="tetrahedron_3m")
  parser.add_argument("--components", default="full", help="comma-separated component specs, or 'all'")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--num_chains", type=int, default=4)
  parser.add_argument("--precision", default="bfloat16", choices=model_config.PRECISIONS)
  parser.add_argument("--attention", default="fused", choices=model_config.ATTENTION_IMPLEMENTATIONS)
  parser.add_argument("--logits", type=logits_setting, default="auto", help="auto, whole or tokens per chunk")
  parser.add_argument("--draws", type=int, default=4)
  parser.add_argument("--top", type=int, default=15, help="ops to print")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  if _DUMP is None:
    raise SystemExit("run it as a script, `python -m benchmarks.draw_profile`: XLA's dump and trace flags must be "
                     "set before JAX starts")
  jax.config.update("jax_enable_compilation_cache", False)
  cfg = model_config.get_config(args.model)
  params = transformer.init_params(cfg)
  rng = np.random.default_rng(0)
  tokens = lambda n: rng.integers(0, cfg.d_vocab, (n, cfg.n_ctx), dtype=np.int32)  # noqa: E731
  base, probes = tokens(4 * args.batch_size), {"probe": tokens(2 * args.batch_size)}
  specs = components.default_components(cfg) if args.components == "all" else args.components.split(",")
  names, masks_C = sj.stack_masks(components.component_masks(specs, params, cfg), params)
  loss_fn = functools.partial(transformer.context_nll, config=cfg, logits_chunk=args.logits,
                              numerics=Numerics(precision=args.precision, attention=args.attention))
  run = functools.partial(sampler.run, loss_fn, params, names, masks_C, base, probes, progress=False,
                          config=sj.SGLDConfig(num_chains=args.num_chains, num_draws=args.draws, mala_every=0),
                          batch_size=args.batch_size, delta_h=0.1, microbatch_size="auto")
  run()  # compile (here, not from JAX's persistent cache: a cached program leaves no HLO dump to name its ops)
  trace_dir = tempfile.mkdtemp(prefix="draw_profile_trace_")
  with jax.profiler.trace(trace_dir):
    seconds = run().seconds
  summary = summarise(op_times(trace_dir), hlo_dumps(_DUMP), args.draws + 1)  # (+ the start's evaluation)
  summary.update(device=f"{jax.devices()[0].device_kind} ×{jax.device_count()}", backend=jax.default_backend(),
                 model=args.model, components=names, chains=args.num_chains, batch_size=args.batch_size,
                 precision=args.precision, attention=args.attention, logits=args.logits, draws=args.draws,
                 wall_ms_per_draw=1e3 * seconds / (args.draws + 1))
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "draw_profile.json").write_text(json.dumps(summary, indent=1))
  print(f"{summary['device']}: {args.model}, {len(names)} components × {args.num_chains} chains, batch "
        f"{args.batch_size}, {args.precision}/{args.attention}, logits {args.logits or 'whole'}: "
        f"{summary['ms_per_draw']:.1f} ms of the draw programs' op time per draw (wall "
        f"{summary['wall_ms_per_draw']:.1f} ms; other programs "
        f"{sum(summary['other_programs_ms_per_draw'].values()):.1f} ms)")
  if not summary["by_scope"]:
    print("no op events from the draw programs in the trace (on a GPU: is CUPTI there?)")
  for row in summary["by_scope"]:
    print(f"  {row['stage']:12s} {row['part']:14s} {row['direction']:8s} {row['ms_per_draw']:9.2f} ms "
          f"{100 * row['fraction']:5.1f}%")
  print("most expensive ops:")
  for op in summary["top_ops"][:args.top]:
    print(f"  {op['ms_per_draw']:9.2f} ms  {op['stage']}/{op['part']}/{op['direction']}  {op['op']}"
          + (f" [{op['kernel'][:60]}]" if op["kernel"] else ""))
  return summary


if __name__ == "__main__":
  main()
