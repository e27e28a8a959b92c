"""How long the side by side's draw programs take to compile under XLA settings, each setting in a fresh process.

  python -m benchmarks.compile_time [--settings ours xla xla_gpu_autotune_level=0 ...] [--groups=N]
      [--precision=float32] [--attention=plain] [--tiny] [--budget_s=240] [--out=DIR]

On the H200 the demo's cold dataset-level run in float32 was 52 of its 52.3 s compilation of three draw programs
(0.6 s compiled; this 2-core CPU compiles them in 3.6–3.8 s), and float32 at HIGHEST compiled five times longer
than bfloat16 for the paper's model: the ≥ 30× target against devinterp on a GPU fails on compilation alone.
This says which of XLA's settings shortens it, program by program, without sampling.

A setting is one of
  ours      our compile options (`compile_options.for_platform`: on CPU LLVM level 1 and the LLVM IR emitters;
            XLA's defaults on accelerators), nothing else;
  xla       XLA's own defaults on every platform (our CPU options off);
  xla_…=…   XLA flags (without their dashes; several joined by commas) added to XLA_FLAGS on top of ours, e.g.
            xla_gpu_autotune_level=0 (no autotuning of GPU kernels), xla_gpu_enable_triton_gemm=false (cuBLAS
            for every matmul, whose autotuning only times its algorithms),
            xla_gpu_enable_llvm_module_compilation_parallelism=true (a program's kernels split into parts that
            LLVM and ptxas compile on several threads).
Each runs in a process of its own: XLA keeps its autotuning results for the process, so a second setting in
the same one would find them and look faster than it is. A flag this XLA does not know stops that process
(XLA refuses unknown flags); the table says so and the next setting runs.

The job is the side by side's dataset level on random tokens of the same shapes (compilation depends on
shapes only): the demo model with random weights, every head and "full", 4 chains × 100 draws, batch 20, two
probes at δh 0.1. Each component group's draw program is compiled alone (`sampler.memory_plan`, one group at
a time; a run on an accelerator compiles them all at once and waits for the slowest, on a CPU beside sampling),
and its compile time is XLA's own (JAX's backend-compile event; tracing and lowering apart). Default
settings: ours and xla on CPU; on a GPU ours, then the three flags above, one at a time; on a TPU ours. Writes
DIR/compile_time.json after each setting, so a run stopped at its budget keeps what it measured.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD_FLAG = "--_child"
GPU_FLAGS = ("xla_gpu_autotune_level=0", "xla_gpu_enable_triton_gemm=false",
             "xla_gpu_enable_llvm_module_compilation_parallelism=true")
NAMED_SETTINGS = ("ours", "xla")
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # JAX's event for XLA's own compile time
MIN_SETTING_S = 20.0  # a setting with less of the budget left is skipped, not started to be cut off


def setting(text: str) -> str:
  """--settings: ours, xla, or XLA flags without their dashes (name=value, several joined by commas)."""
  text = text.strip()
  flags = text.split(",")
  if text in NAMED_SETTINGS or all(f.startswith("xla_") and "=" in f and " " not in f for f in flags):
    return text
  raise argparse.ArgumentTypeError(f"{text!r}: a setting is 'ours', 'xla' or XLA flags without their dashes, "
                                   f"such as {GPU_FLAGS[0]}")


def xla_flags(name: str) -> str:
  """The XLA_FLAGS words of a flag setting: "a=1,b=2" -> "--a=1 --b=2"."""
  return " ".join(f"--{flag}" for flag in name.split(","))


def parse_args(argv=None):
  from suscept_jax.models.config import ATTENTION_IMPLEMENTATIONS, PRECISIONS
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--settings", nargs="+", type=setting,
                      help="what to compile under, in order (default: ours and xla on CPU; on a GPU ours and each "
                      "of " + ", ".join(GPU_FLAGS) + "; on a TPU ours)")
  parser.add_argument("--groups", type=int, help="compile only the first N component groups (default: all)")
  parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                      help="the model's precision (default float32, the side by side's, as devinterp computes)")
  parser.add_argument("--attention", default="plain", choices=ATTENTION_IMPLEMENTATIONS)
  parser.add_argument("--tiny", action="store_true", help="the side by side's tiny job (for the tests)")
  parser.add_argument("--budget_s", type=float, default=240.0, help="no setting starts or runs past this")
  parser.add_argument("--out", help="write DIR/compile_time.json (after each setting)")
  parser.add_argument(CHILD_FLAG, dest="child", metavar="SETTING", help=argparse.SUPPRESS)
  return parser.parse_args(argv)


# ---- one setting, in its own process -------------------------------------------------------------------------

def compile_groups(args) -> dict:
  """Compile the job's draw programs group by group under this process's setting: {platform, device, jax,
  compile_options, xla_flags, groups: [{components, compile_s, wall_s, bytes}]}; compile_s is the longest XLA
  compile in the group's call (its draw program; the small programs around it take a fraction of a second)."""
  import jax
  import numpy as np

  from benchmarks import devinterp_side_by_side as sbs
  from suscept_jax import compile_options, masks as mask_stack, restricted, sampler
  from suscept_jax.models import components as comps
  from suscept_jax.models.config import Numerics

  if args.child == "xla":
    compile_options.CPU_BACKEND_OPTIMIZATION_LEVEL, compile_options.CPU_FUSION_EMITTERS = None, True
  # Cold, whatever the environment says: no persistent cache of programs (nor, with it, of XLA's autotuning).
  jax.config.update("jax_enable_compilation_cache", False)
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, seconds, **_: compiles.append(seconds) if event == BACKEND_COMPILE_EVENT else None)
  settings = sbs.TINY if args.tiny else sbs.Settings()
  cfg, params, _ = sbs.load_weights(settings)
  contexts = sbs.random_contexts(cfg, settings)
  base, probes = contexts.pop("base"), contexts
  loss_fn, _ = sbs.our_loss_fns(cfg, Numerics(attention=args.attention, precision=args.precision))
  names, masks_C = mask_stack.stack_masks(comps.component_masks(comps.default_components(cfg), params, cfg), params)
  groups = [members for _, members in restricted.component_groups(masks_C, len(names))][:args.groups]
  measured = []
  for members in groups:
    group_masks = jax.tree.map(lambda m: np.asarray(m)[members], masks_C)
    before, t0 = len(compiles), time.perf_counter()
    (program,) = sampler.memory_plan(loss_fn, params, [names[c] for c in members], group_masks, base, probes,
                                     config=settings.sgld_config(), batch_size=settings.batch_size,
                                     delta_h=settings.delta_h, seed=settings.seed)
    measured.append({"components": program.components, "compile_s": max(compiles[before:], default=0.0),
                     "wall_s": time.perf_counter() - t0, "bytes": program.bytes_per_device})
  device = jax.devices()[0]
  return {"platform": device.platform, "device": device.device_kind, "jax": jax.__version__,
          "compile_options": compile_options.for_platform(device.platform),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "groups": measured}


# ---- the driver ----------------------------------------------------------------------------------------------

def run_setting(name: str, argv: list, seconds: float) -> dict:
  """One setting in a fresh process (its XLA flags in XLA_FLAGS): the child's result, or why there is none."""
  env = dict(os.environ)
  if name not in NAMED_SETTINGS:
    env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), xla_flags(name)]).strip()
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # compiling needs no preallocated pool
  t0 = time.perf_counter()
  try:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compile_time", *argv, CHILD_FLAG, name], env=env,
                          capture_output=True, text=True, timeout=seconds)
  except subprocess.TimeoutExpired:
    return {"setting": name, "error": f"stopped at its {seconds:.0f} s"}
  process_s = time.perf_counter() - t0
  lines = proc.stdout.strip().splitlines()
  if proc.returncode != 0 or not lines:
    said = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return {"setting": name, "error": f"exit status {proc.returncode}: {said}"}
  return {"setting": name, "process_s": process_s, **json.loads(lines[-1])}


def default_settings(platform: str) -> list:
  """ours and xla on CPU; on a GPU ours and each of its flags alone; elsewhere ours (a TPU's compiler takes its
  flags from LIBTPU_INIT_ARGS, not XLA_FLAGS)."""
  return {"cpu": ["ours", "xla"], "gpu": ["ours", *GPU_FLAGS]}.get(platform, ["ours"])


def line(result: dict, first: dict | None) -> str:
  """A setting's line: each group's compile seconds, their sum, and the sum against the first setting's."""
  if "groups" not in result:
    return f"  {result['setting']}: {result['error']}"
  total = sum(g["compile_s"] for g in result["groups"])
  first_total = sum(g["compile_s"] for g in first["groups"]) if first is not None else 0.0
  against = (f" ({total / first_total:.2f}× {first['setting']})" if first is not result and first_total > 0
             else f" on {result['device']}")
  per_group = ", ".join(f"{g['components'][0]}{'…' if len(g['components']) > 1 else ''} {g['compile_s']:.1f}"
                        for g in result["groups"])
  return f"  {result['setting']}: {per_group}; sum {total:.1f} s{against}; process {result['process_s']:.1f} s"


def main(argv=None) -> list | None:
  args = parse_args(argv)
  if args.child:
    print(json.dumps(compile_groups(args)))
    return None
  job = ["--precision", args.precision, "--attention", args.attention, *(["--tiny"] if args.tiny else []),
         *(["--groups", str(args.groups)] if args.groups else [])]
  print(f"compile seconds of each component group's draw program ({args.precision}, {args.attention} attention), "
        f"each setting in a fresh process:", flush=True)
  started = time.perf_counter()
  pending, results = list(args.settings or ["ours"]), []
  while pending:
    name = pending.pop(0)
    left = args.budget_s - (time.perf_counter() - started)
    if left < MIN_SETTING_S:
      results.append({"setting": name, "error": f"skipped: {max(left, 0):.0f} s of --budget_s left"})
    else:
      results.append(run_setting(name, job, left))
      if not args.settings and len(results) == 1 and "platform" in results[0]:
        pending = default_settings(results[0]["platform"])[1:]
    print(line(results[-1], next((r for r in results if "groups" in r), None)), flush=True)
    if args.out:
      Path(args.out).mkdir(parents=True, exist_ok=True)
      (Path(args.out) / "compile_time.json").write_text(json.dumps(results, indent=1))
  return results


if __name__ == "__main__":
  main()
