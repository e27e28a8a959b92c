"""Small helpers shared by the absl runners: error handling, preset-aware flags, the run to work on.

Runner modules import only absl and light modules at the top (presets, configs), and the JAX stack
inside `main`, so `--help` answers in well under a second.
"""
import dataclasses
import errno
import os
import sys
import traceback
import types
import typing
from pathlib import Path

from absl import app, flags, logging

from suscept_jax import paths
from suscept_jax.sgld_config import SAMPLERS, SGLDConfig
from suscept_jax_runners import presets

# Bad input, and failures whose message says what to do (an unreachable dataset or coordinator, a training
# loss that overflowed): ended with their message, not a traceback.
INPUT_ERRORS = (ValueError, FileNotFoundError, TypeError, KeyError, ConnectionError, TimeoutError, FloatingPointError)

_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "Directory of JAX's persistent compilation cache, so reruns, resumed runs and the "
    "processes of a multi-process sweep skip compiling programs already built (default: jax_compilation/ under "
    "$SUSCEPT_JAX_CACHE or ~/.cache/suscept_jax, unless $JAX_COMPILATION_CACHE_DIR is set; 'off' disables it).")


_GROUPS_SIDE_BY_SIDE = flags.DEFINE_bool(
    "groups_side_by_side", True, "On one CPU device, run the component groups' compiled programs side by side, one "
    "host thread per core (one group compiles while another samples); --nogroups_side_by_side runs one at a time. "
    "Several devices and accelerators always run one at a time.")


_CPU_FUSION_EMITTERS = flags.DEFINE_bool(
    "cpu_fusion_emitters", False, "Compile CPU programs with XLA:CPU's MLIR fusion emitters (XLA's default): "
    "kernels 5–25 % faster, compilation ≈ 1.6× as long (the demo's first run 15.3 against 12.6 s). Off by default, "
    "as small CPU jobs are mostly compilation; turn it on for a long CPU job of a larger model. Accelerators are not "
    "affected.")


def apply_cpu_fusion_emitters() -> None:
  """--cpu_fusion_emitters to the programs' compiler options (`compile_options.CPU_FUSION_EMITTERS`)."""
  from suscept_jax import compile_options
  compile_options.CPU_FUSION_EMITTERS = _CPU_FUSION_EMITTERS.value


def apply_groups_side_by_side() -> None:
  """--groups_side_by_side to the sampler (`sampler.MAX_CONCURRENT_PROGRAMS`)."""
  from suscept_jax import sampler
  sampler.MAX_CONCURRENT_PROGRAMS = None if _GROUPS_SIDE_BY_SIDE.value else 1


def enable_compilation_cache() -> None:
  """Point JAX's persistent compilation cache at --compilation_cache (one program per component group is
  compiled per process; on a rerun they load in a fraction of the time)."""
  where = _COMPILATION_CACHE.value
  if where == "off" or (where is None and os.environ.get("JAX_COMPILATION_CACHE_DIR")):
    return
  import jax
  jax.config.update("jax_compilation_cache_dir", where or str(paths.cache_root() / "jax_compilation"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def quiet_libraries() -> None:
  """Show warnings and errors only (orbax logs every checkpoint operation at INFO), unless the user
  asked for a verbosity with --verbosity / -v."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def run(main) -> None:
  """app.run(main), but bad input and a program too large for the devices end with their message (exit status
  2), not a traceback, and Ctrl-C with a line saying that finished work is kept (exit status 130: every runner
  writes its units atomically and resumes from them).

  The traceback is still printed with --verbosity=1 (or higher) for debugging.
  """
  def wrapped(argv):
    try:
      expand_home_in_flags()
      enable_compilation_cache()
      apply_groups_side_by_side()
      apply_cpu_fusion_emitters()
      return main(argv)
    except INPUT_ERRORS as e:
      notes = "".join(f"\n{note}" for note in getattr(e, "__notes__", ()))  # (e.g. which dataset was loading)
      _stop(f"error: {e}{notes}\n(run with --verbosity=1 to see the traceback)", 2)
    except MemoryError as e:  # the sampler's own message says which setting to lower
      _stop(f"error: {e}\nresults already written are kept: run again with the setting it names lowered (e.g. "
            f"--microbatch_size=auto or a smaller size) to continue from them", 2)
    except OSError as e:
      if e.errno not in (errno.ENOSPC, errno.EDQUOT):
        raise
      _stop(f"error: no space left writing {e.filename or 'a file'} ({e.strerror}); results already written are "
            "kept: free some space (or use another --output_dir) and run the same command again to continue", 2)
    except KeyboardInterrupt:
      _stop("interrupted: results already written are kept; run the same command again to continue (a sweep, a "
            "per-token run and training resume from their finished units)", 130)
    except Exception:  # (anything else: its traceback; one of several processes must still leave, see _stop)
      if distributed := _joined_distributed():
        traceback.print_exc()
        distributed.leave_now(1)
      raise

  app.run(wrapped)


def expand_home_in_flags() -> None:
  """`--run_dir=~/shared/run` means the home directory, but no shell expands a `~` after `=` inside a word (nor
  does a command sent to TPU workers, tpu/run.sh): expand it in every flag value (and list item) it begins."""
  def expand(value):
    return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value
  for name in list(flags.FLAGS):
    value = flags.FLAGS[name].value
    new = [expand(v) for v in value] if isinstance(value, list) else expand(value)
    if new != value:
      setattr(flags.FLAGS, name, new)


def _stop(message: str, status: int) -> None:
  """End the process with `message` on stderr and exit `status`, after the traceback with --verbosity >= 1
  (called from an except block)."""
  if flags.FLAGS["verbosity"].value >= 1:
    traceback.print_exc()
  print(message, file=sys.stderr)
  if distributed := _joined_distributed():  # (a normal exit waits for the others at jax.distributed's shutdown)
    distributed.leave_now(status)
  sys.exit(status)


def _joined_distributed():
  """The `distributed` module when this runner joined other processes, else None (a runner that never imported
  it did not)."""
  distributed = sys.modules.get("suscept_jax_runners.distributed")
  return distributed if distributed is not None and distributed.joined() else None


def by_preset(getter) -> str:
  """'(demo: X; paper: Y)': a flag's effective default under each preset, for its --help text."""
  values = []
  for name, preset in presets.PRESETS.items():
    value = getter(preset)
    if isinstance(value, (list, tuple)):
      value = ",".join(map(str, value)) if len(value) <= 4 else f"{len(value)} items"
    values.append(f"{name}: {value}")
  return "(default " + "; ".join(values) + ")"


def _base_type(annotation):
  if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
    return next(a for a in typing.get_args(annotation) if a is not type(None))
  return annotation


def define_sgld_flags(exclude=()) -> dict:
  """One flag per SGLDConfig field (help from the field's metadata, defaults per preset): {field: holder}."""
  holders = {}
  for field in dataclasses.fields(SGLDConfig):
    if field.name in exclude:
      continue
    help_text = f"SGLD: {field.metadata['help']} {by_preset(lambda p, n=field.name: getattr(p.sgld, n))}."
    kind = _base_type(field.type)
    if field.name == "sampler":
      holders[field.name] = flags.DEFINE_enum(field.name, None, list(SAMPLERS), help_text)
    elif kind is int:
      holders[field.name] = flags.DEFINE_integer(field.name, None, help_text)
    else:
      holders[field.name] = flags.DEFINE_float(field.name, None, help_text)
  return holders


def define_numerics_flags() -> dict:
  """--attention and --precision: how the forward pass computes (suscept_jax.models.config.Numerics)."""
  from suscept_jax.models.config import ATTENTION_IMPLEMENTATIONS, PRECISIONS
  return {"attention": flags.DEFINE_enum("attention", "plain", list(ATTENTION_IMPLEMENTATIONS),
                                         "Attention: plain (explicit softmax, the reference), fused "
                                         "(jax.nn.dot_product_attention: cuDNN on GPU in bfloat16, XLA otherwise) "
                                         "or flash (the Pallas flash-attention kernel, TPU only)."),
          "precision": flags.DEFINE_enum("precision", "float32", list(PRECISIONS),
                                         "Matmuls: float32 (exact, HIGHEST), default (the accelerator's: TF32 on "
                                         "NVIDIA GPUs, bf16 passes on TPU) or bfloat16 (bf16 inputs, float32 "
                                         "accumulation, params and losses). Recorded with the results.")}


def define_microbatch_flag():
  """--microbatch_size: how the SGLD step's gradient batch is split (sweep, per-token and calibrate runners; the
  default is the preset's `microbatch_size` for all three)."""
  return flags.DEFINE_string("microbatch_size", None, "Split gradient batches into micro-batches of this size, or "
                             "'auto': the largest whose program fits the devices' memory (XLA's memory analysis) "
                             + by_preset(lambda p: p.microbatch_size) + ". Changes only the summation order: a "
                             "run may resume with another.")


def microbatch_size(holder, default):
  """The flag's value (else `default`) as the kernels take it: a positive int, "auto" or None."""
  micro = default if holder.value is None else holder.value
  if micro is None or micro == "auto":
    return micro
  try:
    micro = int(micro)
  except ValueError:
    raise ValueError(f"--microbatch_size={micro!r} must be a positive integer or 'auto'") from None
  if micro < 1:
    raise ValueError(f"--microbatch_size={micro} must be a positive integer or 'auto'")
  return micro


def numerics(holders: dict) -> dict:
  """The numerics flags as the JSON-able dict results directories record (config.Numerics(**it))."""
  return {name: holder.value for name, holder in holders.items()}


# What results made before a setting existed were computed with (numerics) or identified their data by.
LEGACY_SETTINGS = {"numerics": {"attention": "plain", "precision": "float32"}, "data_identity": "stat",
                   "mala_measurement": "unrecorded (maybe a re-read batch)"}


def mala_setting(config: SGLDConfig) -> dict:
  """How a run measuring MALA measures it, as its results directory records it. On 2026-12-05 a measured move's
  batch was re-read by the next step, which biased the chains (`SGLDConfig.mala_measured`); a directory that
  measured MALA without recording how is refused rather than mixed with these numbers. Runs without MALA
  compute what they always did: nothing is recorded, nothing refused."""
  return {"mala_measurement": "extra gradient"} if config.measures_mala else {}


def data_identity(store, overwrite: bool) -> str:
  """How this run identifies local data files (`sources.DATA_IDENTITIES`): by content, unless it resumes a
  results directory that recorded another way (or, written before the setting, none: "stat"), whose
  recorded fingerprints are then comparable with this run's."""
  if overwrite or not store.holds_results():
    return "content"
  return {**LEGACY_SETTINGS, **store.settings()}["data_identity"]


def sgld_config(base: SGLDConfig, holders: dict, **fixed) -> SGLDConfig:
  """`base` with every SGLD flag the user gave (and `fixed` values) replaced; invalid values raise here."""
  given = {name: holder.value for name, holder in holders.items() if holder.value is not None}
  return dataclasses.replace(base, **given, **fixed)


def resolve_run(preset_name: str, run_dir: str | None, tokenizer: str | None, *, run_dir_flag: str = "run_dir"):
  """(preset, run directory, tokenizer path): the flags, else the preset's, else <run_dir>/tokenizer.json."""
  preset = presets.get_preset(preset_name)
  run_dir = run_dir or preset.run_dir
  if run_dir is None:
    raise app.UsageError(f"--{run_dir_flag} is required with --preset={preset_name}")
  return preset, run_dir, tokenizer or preset.tokenizer or str(Path(run_dir) / "tokenizer.json")
