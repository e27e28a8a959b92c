"""Orbax checkpoints of a training run, and loading any saved step's params.

A run directory holds:
  checkpoints/<step>/params   the params pytree at each scheduled step (what sweeps load)
  train_state/<step>/...      params + optimizer state for resuming (only the latest is kept)
  run.json                    the model config and training settings (so params can be rebuilt)
"""
import hashlib
import json
import re
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from suscept_jax import validation
from suscept_jax.models.config import ModelConfig
from suscept_jax.paths import atomic_write_bytes, atomic_write_json

PARAMS_DIR = "checkpoints"
TRAIN_STATE_DIR = "train_state"
RUN_FILE = "run.json"


def params_manager(run_dir) -> ocp.CheckpointManager:
  """Manager of the scheduled params checkpoints (all kept)."""
  return ocp.CheckpointManager(Path(run_dir).absolute() / PARAMS_DIR,
                               options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))


def train_state_manager(run_dir) -> ocp.CheckpointManager:
  """Manager of resume states (params, optimizer state, step); only the newest is kept."""
  return ocp.CheckpointManager(Path(run_dir).absolute() / TRAIN_STATE_DIR,
                               options=ocp.CheckpointManagerOptions(create=True, max_to_keep=1,
                                                                    enable_async_checkpointing=False))


def write_run_info(run_dir, model_config: ModelConfig, **settings) -> None:
  info = {"model_config": model_config.__dict__, **settings}
  atomic_write_json(Path(run_dir) / RUN_FILE, info, default=str)


def _params_reader(run_dir) -> ocp.CheckpointManager:
  """Manager over an existing params checkpoint directory (never creates it). Reading is this process's own
  business: in a multi-process sweep every process reads other checkpoints, so orbax must not synchronise
  the processes (it would wait for peers that read something else)."""
  me = jax.process_index()
  local = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me},
                                             barrier_sync_key_prefix=f"reader{me}")
  return ocp.CheckpointManager((Path(run_dir) / PARAMS_DIR).absolute(),
                               options=ocp.CheckpointManagerOptions(create=False, multiprocessing_options=local))


def read_run_info(run_dir) -> dict:
  path = Path(run_dir) / RUN_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: {run_dir} is not a suscept_jax training run "
                            f"(train one with `python -m experiments.train --workdir={run_dir}`)")
  return json.loads(path.read_text())


# What identifies a run's checkpoints in its run.json: the training recipe and data, or where they were
# converted from. (Not the whole file: fields a later version records would change every fingerprint.)
RUN_IDENTITY = ("train_config", "tokens_fingerprint", "source", "converted_from")


def run_fingerprint(run_dir) -> str:
  """A short hash of what identifies the run (`RUN_IDENTITY`): results computed on one run's checkpoints must
  not be mixed with another's found later at the same path."""
  info = read_run_info(run_dir)
  identity = {k: info[k] for k in RUN_IDENTITY if k in info}
  return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_model_config(run_dir) -> ModelConfig:
  return ModelConfig(**read_run_info(run_dir)["model_config"])


def available_steps(run_dir) -> list[int]:
  """Sorted steps with a saved params checkpoint; a clear error if there are none."""
  ckpt_dir = Path(run_dir) / PARAMS_DIR
  if not ckpt_dir.is_dir():
    raise FileNotFoundError(f"no checkpoint directory {ckpt_dir} (is {run_dir!s} a training run directory?)")
  with _params_reader(run_dir) as mngr:
    steps = sorted(int(s) for s in mngr.all_steps())
  if not steps:
    raise FileNotFoundError(f"checkpoint directory {ckpt_dir} holds no checkpoints")
  return steps


def save_params(mngr: ocp.CheckpointManager, step: int, params) -> None:
  mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
  mngr.wait_until_finished()


def load_params(run_dir, step: int | None = None):
  """The params pytree (numpy arrays) saved at `step` (default: the last saved step)."""
  steps = available_steps(run_dir)
  if step is None:
    step = steps[-1]
  if step not in steps:
    raise ValueError(f"no checkpoint at step {step} in {Path(run_dir) / PARAMS_DIR}; available steps: "
                     f"{_summarize(steps)}")
  config = read_model_config(run_dir)
  abstract = _abstract_params(config)
  with _params_reader(run_dir) as mngr:
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
    except Exception as e:  # noqa: BLE001 (tensorstore raises a bare Exception, or a ValueError, for damage)
      first = error_headline(e)
      # tensorstore's errors carry a status code (DATA_LOSS: …, OUT_OF_RANGE: …); orbax's shape errors do not
      if isinstance(e, ValueError) and not re.match(r"[A-Z][A-Z_]+: ", first):
        # (orbax's own message suggests strict=False, which would load wrong shapes)
        raise ValueError(f"the checkpoint at step {step} in {run_dir} does not match the model its run.json "
                         f"describes ({config}): {first}") from None
      raise ValueError(f"the checkpoint at step {step} in {run_dir} could not be read (a damaged or partly "
                       f"copied file?): {first[:300]}") from None
  params = jax.tree.map(np.asarray, restored["params"])
  _check_finite(params, f"the checkpoint at step {step} in {run_dir}")
  return params


def params_digest(params) -> str:
  """A short hash of the weights themselves (every leaf's path, dtype, shape and bytes): results record the
  weights they were computed on, which a run's identity (its recipe, or where it was converted from) does not
  pin down: a run converted again from other files at the same paths, or trained again, has other weights."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    leaf = np.ascontiguousarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}|{leaf.dtype}|{leaf.shape}|".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()[:16]


def check_weights_unchanged(recorded: dict, run_dir, results_dir, *, log=print) -> None:
  """Refuse results computed on other weights than `run_dir` now holds at their step: `recorded` maps a step to
  the `params_digest`s its finished results recorded (`ResultsDir.params_digests`; results written before
  digests were recorded, and steps no longer in the run, are not checked). Loads each such checkpoint once."""
  if not recorded:
    return
  present = set(available_steps(run_dir))
  checked = sorted(s for s in recorded if s in present)
  if len(checked) > 4:
    log(f"checking the weights of {len(checked)} finished checkpoint(s) against {run_dir} ...")
  for step in checked:
    now = params_digest(load_params(run_dir, step))
    if recorded[step] != {now}:
      then = ", ".join(sorted(recorded[step] - {now}))
      raise ValueError(f"{results_dir} holds results of checkpoint {step} computed on other weights than "
                       f"{run_dir} holds at that step now (params digest {then} then, {now} now): the "
                       f"run was trained or converted again; use --overwrite to recompute, or another --output_dir")


def _check_finite(params, what: str) -> None:
  """`validation.check_params`, its error naming `what` holds the params (a step, a file)."""
  try:
    validation.check_params(params)
  except ValueError as e:
    raise ValueError(f"{what}: {e}") from None


def error_headline(error: BaseException) -> str:
  """The first line of orbax's or tensorstore's error (their later lines are kilobytes of spec)."""
  return str(error).splitlines()[0] if str(error) else type(error).__name__


def _abstract_params(config: ModelConfig):
  """Shapes and dtypes of the params, placed on this process's first device (restored arrays are local)."""
  from suscept_jax.models import transformer  # local: keep checkpoint listing free of model imports
  here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here),
                      jax.eval_shape(lambda: transformer.init_params(config)))


def _summarize(steps: list[int]) -> str:
  return str(steps) if len(steps) <= 12 else f"{steps[:6]} ... {steps[-6:]} ({len(steps)} in all)"


def import_transformer_lens(input_path, run_dir, *, tokenizer_path=None, config=None, log=print) -> list[int]:
  """TransformerLens checkpoints (a file or a directory of `checkpoint_<step>.pth`/`.safetensors`) -> the run
  directory `run_dir` (params checkpoints, run.json, tokenizer.json); steps already there are skipped, unless
  their file's content differs from what was converted (run.json's `source_digests`): that is refused, as the
  step would keep the old weights. Returns every step of the input. `config`: see `interop.from_transformer_lens`."""
  from suscept_jax.data import sources, tokenizer as tokenizers_lib
  from suscept_jax.models import interop

  files = interop.checkpoint_files(input_path)
  run_dir = Path(run_dir)
  first_file = next(iter(files.values()))
  _, model_config = interop.from_transformer_lens(interop.load_state_dict(first_file), config)
  info = {"source": "transformer_lens", "converted_from": str(Path(input_path).absolute()),
          "context_length": model_config.n_ctx}
  try:
    recorded = read_run_info(run_dir)
  except FileNotFoundError:
    recorded = {}
  existing = ModelConfig(**recorded["model_config"]) if recorded else None
  if existing is not None and existing != model_config:
    raise ValueError(f"run directory {run_dir} already holds a run of another model ({existing}); the checkpoints in "
                     f"{input_path} are {model_config}")
  if recorded and recorded.get("converted_from") != info["converted_from"]:
    origin = (f"converted from {recorded['converted_from']}" if recorded.get("converted_from")
              else "trained here")
    raise ValueError(f"run directory {run_dir} already holds a run {origin}; adding the checkpoints of "
                     f"{input_path} would mix two runs: convert into another directory")
  info = {**recorded, **info}  # (a rerun without --tokenizer keeps the fingerprint recorded before)
  info.pop("model_config", None)
  with params_manager(run_dir) as mngr:
    done = {int(s) for s in mngr.all_steps()}
  converted = {int(step): digest for step, digest in recorded.get("source_digests", {}).items()}
  digests = {step: sources.content_digest(file) for step, file in files.items()}
  for step, file in files.items():
    if step in done and step in converted and converted[step] != digests[step]:
      raise ValueError(f"step {step} of {run_dir} was converted from another content of {file} (sha256 "
                       f"{converted[step][:16]} then, {digests[step][:16]} now); its weights would stay the old "
                       f"ones: convert into another directory, or remove {run_dir} first")
  # what each step's weights come from: for the steps done, as recorded then (none if converted before this
  # was recorded); for the rest, their files as they are now (recorded before converting them)
  kept = {step: digest for step, digest in converted.items() if step in done}
  new = {step: digest for step, digest in digests.items() if step not in done}
  info["source_digests"] = {str(step): digest for step, digest in sorted({**kept, **new}.items())}
  if tokenizer_path:
    tokenizer = tokenizers_lib.load_tokenizer(tokenizer_path)
    tokenizers_lib.check_vocab_matches(tokenizer, model_config.d_vocab, name=f"tokenizer {tokenizer_path}")
    atomic_write_bytes(run_dir / "tokenizer.json", Path(tokenizer_path).read_bytes())
    info["tokenizer_fingerprint"] = tokenizers_lib.tokenizer_fingerprint(tokenizer)
  elif not (run_dir / "tokenizer.json").exists():
    log(f"note: no --tokenizer given; the sweep will need --tokenizer, or {run_dir / 'tokenizer.json'}")
  write_run_info(run_dir, model_config, **info)
  with params_manager(run_dir) as mngr:
    for i, (step, file) in enumerate(files.items()):
      if step in done:
        continue
      params, cfg = interop.from_transformer_lens(interop.load_state_dict(file), config)
      if cfg != model_config:
        raise ValueError(f"{file} is a different model ({cfg}) from {first_file} ({model_config})")
      _check_finite(params, str(file))  # (converted silently, it stopped the sweep later, naming no file)
      save_params(mngr, step, params)
      log(f"[{i + 1}/{len(files)}] step {step}: {file.name}")
  log(f"{len(files)} checkpoints (steps {list(files)[:3]}{' …' if len(files) > 3 else ''}) in {run_dir}; model "
      f"{model_config}")
  return list(files)
