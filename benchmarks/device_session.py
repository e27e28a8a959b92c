"""One call on a lent accelerator machine: what its few minutes should measure, most important first, each
part within its own time so that a slow part cannot eat the next one's.

  python3 -m benchmarks.device_session --out=$OUT [--figures_s=300] [--side_by_side_s=260] [--precision_s=150]
      [--total_s=580] [--dry_run]

0. versions.json: the versions that decide whether the parts run (jax, jaxlib, torch, transformers, and the
   image's packages that the carried devinterp wheels constrain: pyarrow, fsspec, protobuf, typing-extensions).
1. benchmarks.accelerator_figures: matmul peaks, the paper preset's SGLD draw at batch 64 × ctx 1024 (precision,
   attention, FLOP/s against peak, memory), the per-token pass. It rewrites OUT/accelerator_figures.json after
   each figure, so a part stopped at its time still leaves what it measured.
2. benchmarks.devinterp_side_by_side on the demo weights and the demo's contexts (carried in .whl/contexts)
   with devinterp on the GPU (its virtualenv built offline from the carried wheels, on the machine's torch);
   OUT/summary.json.
3. benchmarks.precision_on_demo: how far χ and the LLC of the same job move at bfloat16 (cuDNN where it
   applies) and at the device's default precision (TF32), against float32, in standard errors;
   OUT/precision_on_demo.json.

Each part is a child process whose output goes to OUT/session.log (one file for every part: the device tool
returns at most 8 files from OUT, and the parts write 7 besides); one that passes its time is stopped, with its own
children, and the next starts; OUT/outcomes.json says how each ended (exit status 1 unless all were "ok"). No
part runs past --total_s from the start (the call's own limit, so the device tool never cuts a part off
unrecorded): a part gets at most what is left, and one with under a minute left is skipped (the parts' own
times add up to more than --total_s: the last gets what the first two leave). Before it,
`make device-prep` fetches the wheels into .whl/ and trains the demo weights if missing.
The device tool's call (15 minutes of device time per session, at most 10 per command; carry
[".whl", "runs/demo/train"], ≈ 42 MB):
  PYTHONUNBUFFERED=1 PYTHONPATH=. python3 -m benchmarks.device_session --out=$OUT   (timeout_s ≈ 590)
Afterwards, here (no device time): `python -m benchmarks.scaling --from_figures=<files_at>/accelerator_figures.json`
projects the paper's sweep and per-token run from the step times measured there.

What the first lent H200 (2026-12-04, benchmarks/figures/h200_2026-12-04) left unmeasured, in one call of ≈ 590 s:
  PYTHONUNBUFFERED=1 PYTHONPATH=. python3 -m benchmarks.device_session --out=$OUT \
      --parts=compile,profile,figures,side_by_side --compile_s=110 --profile_s=100 --figures_s=170 \
      --figures_budget_s=130 \
      --figures_settings=full/bfloat16/fused,full/bfloat16/fused/512,full/default/plain,all/bfloat16/fused
- compile: which of XLA's GPU settings shortens the side by side's 52 s of compilation (`compile_time`: the full
  model's draw program, ≈ 17 s of it, compiled in a fresh process under ours, no autotuning, no Triton matmuls,
  and LLVM's module split over threads; float32 at HIGHEST compiled 5× longer than bfloat16 there, which
  points at the autotuning of its matmuls). The `untuned` part measures the first of these end to end;
- profile: where the bf16 draw's 42 ms go, by part of the model and stage of the draw (`draw_profile`; by
  arithmetic the float32 logits' traffic alone floors it near 9 ms);
- figures: the bf16 step again, then with the logits in chunks of 512 tokens (on CPU 11-26 % faster for the
  paper model; on a GPU unmeasured: it recomputes the unembedding, and saves memory traffic only where a
  chunk's logits stay in cache), TF32 with plain attention now computed block by block (122.7 ms before),
  every component at once (never reached);
- side_by_side gets what is left (≈ 210 s; devinterp did not finish in 260 s before); our half's cold time
  against 52.3 s before (the same job, groups compiled one after another) says what compiling them side
  by side gained, its compiled time against 0.6 s whether concurrent autotuning chose worse kernels. If the
  call leaves 4 minutes of device time, a second call runs it alone, our half at the README's GPU setting
  (the first call gave float32's): `--parts=side_by_side --side_by_side_s=330 --side_by_side_numerics=bfloat16/fused`.
TF32's shift on the demo (the precision part) matters least and is left out.
"""
import argparse
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

VERSIONS_OF = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "libtpu", "numpy", "torch", "transformers",
               "pyarrow", "fsspec", "protobuf", "typing-extensions")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="where the figures, logs and summaries go ($OUT)")
  parser.add_argument("--figures_s", type=float, default=300.0, help="time of the accelerator figures")
  parser.add_argument("--figures_budget_s", type=float, default=200.0,
                      help="the figures start no new setting after this (the part's own budget)")
  parser.add_argument("--side_by_side_s", type=float, default=260.0, help="time of the devinterp side by side")
  parser.add_argument("--side_by_side_numerics", type=numerics_setting, default="float32/plain",
                      metavar="PRECISION/ATTENTION",
                      help="our half's precision and attention in the side by side and untuned parts (default "
                      "float32/plain, as devinterp computes; bfloat16/fused is the README's GPU setting)")
  parser.add_argument("--precision_s", type=float, default=150.0, help="time of the precision shifts on the demo")
  parser.add_argument("--total_s", type=float, default=580.0, help="no part runs past this from the start")
  parser.add_argument("--parts", type=part_names, default=list(PART_NAMES),
                      help=f"the parts to run, in this order, comma-separated (default: {','.join(PART_NAMES)}; "
                      "also: untuned, our half of the side by side with XLA's GPU autotuning off; compile, "
                      "benchmarks.compile_time's compile seconds under XLA's GPU settings; replicas, "
                      "benchmarks.scaling's time per draw as entries grow, on the paper's model; profile, "
                      "benchmarks.draw_profile of the paper preset's draw in bfloat16 with fused attention)")
  parser.add_argument("--untuned_s", type=float, default=120.0, help="time of the untuned part")
  parser.add_argument("--compile_s", type=float, default=120.0,
                      help="time of the compile part: the side by side's first draw program compiled under XLA "
                      "settings, each in a fresh process (benchmarks.compile_time)")
  parser.add_argument("--replicas_s", type=float, default=150.0,
                      help="time of the replicas part: the paper model's time per draw at 1, 4, 17, 68 entries")
  parser.add_argument("--profile_s", type=float, default=120.0,
                      help="time of the profile part: where the paper preset's draw spends its time")
  parser.add_argument("--profile_logits", default="auto", help="the profile's --logits (auto, whole, or a chunk)")
  parser.add_argument("--figures_settings", help="the figures' --settings (default: all of them)")
  parser.add_argument("--precision_settings", nargs="+", help="precision_on_demo's --settings (default: its own)")
  parser.add_argument("--run_dir", default="runs/demo/train", help="the side by side's weights")
  parser.add_argument("--wheels", default=".whl", help="devinterp's wheels (benchmarks/devinterp_wheels_h200.txt)")
  parser.add_argument("--devinterp_device", default="cuda")
  parser.add_argument("--work_dir", default="/tmp/device_session_sbs", help="the side by side's job files")
  parser.add_argument("--devinterp_venv", default="/tmp/device_session_dv", help="devinterp's virtualenv")
  parser.add_argument("--tiny", action="store_true", help="both parts at tiny size (CPU)")
  parser.add_argument("--dry_run", action="store_true", help="write versions.json, print the parts, run nothing")
  return parser.parse_args(argv)


def installed_versions(names=VERSIONS_OF) -> dict:
  """{distribution: version, or None when it is not installed}."""
  versions = {}
  for name in names:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


MIN_PART_S = 60.0  # a part given less than this is skipped, not started to be cut off
PART_NAMES = ("figures", "side_by_side", "precision")
ALL_PART_NAMES = (*PART_NAMES, "untuned", "replicas", "profile", "compile")
# On the H200, compilation was 52 of the side by side's 52.3 s (0.6 s compiled): the untuned part measures how
# much of it is XLA's autotuning of GPU kernels, and how much slower the untuned kernels draw.
UNTUNED_XLA_FLAGS = "--xla_gpu_autotune_level=0"


def part_names(text: str) -> list[str]:
  """--parts: known part names, comma-separated, in the order they run."""
  names = [name.strip() for name in text.split(",") if name.strip()]
  unknown = [name for name in names if name not in ALL_PART_NAMES]
  if unknown or not names:
    raise argparse.ArgumentTypeError(f"unknown part(s) {unknown or text!r}: expected some of "
                                     f"{', '.join(ALL_PART_NAMES)}")
  return names


def numerics_setting(text):
  """--side_by_side_numerics: the `Numerics` of "PRECISION/ATTENTION" (`precision_on_demo.numerics_of`, both
  fields required)."""
  from benchmarks.precision_on_demo import numerics_of
  if text.count("/") != 1:
    raise argparse.ArgumentTypeError(f"{text!r}: expected PRECISION/ATTENTION, e.g. bfloat16/fused")
  try:
    return numerics_of(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


class Part(NamedTuple):
  name: str  # its output in OUT/session.log follows a line "=== <name> ==="
  module: str  # run as python -m module argv
  argv: list
  seconds: float  # stopped after this
  env: dict  # added to the environment


def parts(args) -> list[Part]:
  """The parts, in the order they run."""
  tiny = ["--tiny"] if args.tiny else []
  carried = carried_contexts(args)
  figures = ["--out", args.out, "--budget_s", str(args.figures_budget_s), *tiny,
             *(["--settings", args.figures_settings] if args.figures_settings else [])]
  numerics = args.side_by_side_numerics
  ours = ["--precision", numerics.precision, "--attention", numerics.attention]
  side_by_side = ["--work_dir", args.work_dir, "--devinterp_device", args.devinterp_device,
                  "--devinterp_wheels", args.wheels, *ours, *(tiny or ["--run_dir", args.run_dir, *carried])]
  untuned = ["--work_dir", args.work_dir + "_untuned", "--skip_devinterp", *ours,
             *(tiny or ["--run_dir", args.run_dir, *carried])]
  # Batch 4: 68 entries of the paper's model at float32 need ≈ 54 GiB there (12.5 GiB per entry at batch 64).
  replicas = (["--model", "tiny", "--replicas", "1,2", "--draws", "3"] if args.tiny else
              ["--model", "tetrahedron_3m", "--batch_size", "4", "--replicas", "1,4,17,68", "--draws", "10"])
  profile = ["--out", args.out, "--logits", args.profile_logits,
             *(["--model", "tiny", "--batch_size", "8", "--num_chains", "2", "--precision", "float32", "--attention",
                "plain", "--draws", "2"] if args.tiny else [])]
  # One group (the full model's program, ≈ 17 s of the 52 s on the H200) per setting: ours and three flags fit.
  compile_job = ["--out", args.out, "--budget_s", str(args.compile_s - 5), *ours, *(tiny or ["--groups", "1"])]
  contexts = ["--contexts", str(contexts_folder(args))] if "--tokens" in carried else []
  precision = ["--out", args.out, *(tiny or ["--run_dir", args.run_dir, *contexts]),
               *(["--settings", *args.precision_settings] if args.precision_settings else [])]
  # Both frameworks share the GPU in the side by side: JAX takes memory as it needs it instead of 75 % up front.
  # Each program's compile time goes to the log (JAX_LOG_COMPILES).
  shared_gpu = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "SUSCEPT_JAX_DEVINTERP_VENV": args.devinterp_venv,
                "JAX_LOG_COMPILES": "1"}
  every = {"figures": Part("figures", "benchmarks.accelerator_figures", figures, args.figures_s, {}),
           "side_by_side": Part("side_by_side", "benchmarks.devinterp_side_by_side", side_by_side,
                                args.side_by_side_s, shared_gpu),
           "precision": Part("precision", "benchmarks.precision_on_demo", precision, args.precision_s, {}),
           "untuned": Part("untuned", "benchmarks.devinterp_side_by_side", untuned, args.untuned_s,
                           {"XLA_FLAGS": UNTUNED_XLA_FLAGS, "JAX_LOG_COMPILES": "1"}),
           "replicas": Part("replicas", "benchmarks.scaling", [*replicas, "--skip_projection"], args.replicas_s, {}),
           "profile": Part("profile", "benchmarks.draw_profile", profile, args.profile_s, {}),
           "compile": Part("compile", "benchmarks.compile_time", compile_job, args.compile_s, {})}
  return [every[name] for name in args.parts]


def contexts_folder(args) -> Path:
  """Where `make device-prep` writes the demo's contexts: beside the wheels."""
  return Path(args.wheels) / "contexts"


def carried_contexts(args) -> list:
  """The side by side's contexts: the demo's datasets as `make device-prep` wrote them beside the wheels (the
  machine has no corpora), else random tokens."""
  from benchmarks import devinterp_side_by_side
  written = devinterp_side_by_side.written_contexts(contexts_folder(args))
  return ["--tokens", *map(str, written)] if written else ["--random_tokens"]


SESSION_LOG = "session.log"


def run_part(part: Part, out: Path) -> str:
  """Run one part for at most its seconds, its output printed and appended to OUT/session.log after a line
  naming it; its outcome in words."""
  env = {**os.environ, "PYTHONUNBUFFERED": "1", **part.env}
  with open(out / SESSION_LOG, "a") as log:
    log.write(f"=== {part.name} ===\n")
    log.flush()
    # A session of its own, so that the timer stops the part's children too (the devinterp job, pip): they
    # share its output, and the loop below would otherwise wait for them past the part's time.
    proc = subprocess.Popen([sys.executable, "-m", part.module, *part.argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    timer = threading.Timer(part.seconds, lambda: _kill_group(proc))
    timer.start()
    try:
      for line in proc.stdout:
        print(line, end="", flush=True)
        log.write(line)
    finally:
      timer.cancel()
      proc.wait()
  if proc.returncode == 0:
    return "ok"
  return f"stopped at its {part.seconds:.0f} s" if proc.returncode == -9 else f"exit status {proc.returncode}"


def _kill_group(proc: subprocess.Popen) -> None:
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except ProcessLookupError:  # it ended as the timer fired
    pass


def main(argv=None) -> dict:
  args = parse_args(argv)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  versions = installed_versions()
  (out / "versions.json").write_text(json.dumps(versions, indent=1))
  print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v), flush=True)
  outcomes = {}
  started = time.perf_counter()
  for part in parts(args):
    left = args.total_s - (time.perf_counter() - started)
    if not args.dry_run and left < MIN_PART_S:
      outcomes[part.name] = f"skipped: {max(left, 0):.0f} s of --total_s left"
      print(f"--- {part.name}: {outcomes[part.name]}", flush=True)
      continue
    part = part._replace(seconds=min(part.seconds, left))
    command = " ".join([f"{k}={v}" for k, v in part.env.items()] + ["timeout", f"{part.seconds:.0f}", "python3", "-m",
                                                                     part.module, *part.argv])
    print(f"--- {part.name}: {command}", flush=True)
    if args.dry_run:
      continue
    outcomes[part.name] = run_part(part, out)
  summary = Path(args.work_dir) / "summary.json"
  if not args.dry_run and summary.exists():
    shutil.copy(summary, out / "summary.json")
  print(f"--- parts: {outcomes or 'none run (dry run)'}", flush=True)
  if not args.dry_run:
    (out / "outcomes.json").write_text(json.dumps(outcomes, indent=1))
  return outcomes


if __name__ == "__main__":
  sys.exit(0 if all(o == "ok" for o in main().values()) else 1)
