"""Training the transformer LM: AdamW (the paper's settings), data-parallel, checkpointed, resumable.

Batches come from a deterministic schedule keyed by (seed, step), so a run resumed from its latest
train state sees exactly the batches an uninterrupted run would and ends with the same params.

Shape letters: N contexts of the training set, B contexts per batch, K tokens per context (n_ctx + 1).
"""
import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from suscept_jax import checkpoints, dir_lock, mixing, paths
from suscept_jax.data import packing
from suscept_jax.models import transformer
from suscept_jax.models.config import ModelConfig
from suscept_jax.progress import progress_bar
from suscept_jax.train_config import PAPER_CHECKPOINT_STEPS, TrainConfig, scaled_paper_schedule  # noqa: F401

def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))


def make_train_step(model_config: ModelConfig, optimizer, mesh):
  """jit'd (params, opt_state, batch) -> (params, opt_state, loss); the batch is split over the mesh."""
  replicated = NamedSharding(mesh, P())
  data_sharded = NamedSharding(mesh, P("data"))

  def step(params, opt_state, contexts_BxK):
    def loss(p):
      return transformer.context_nll(p, contexts_BxK, model_config).mean()
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  return jax.jit(step, in_shardings=(replicated, replicated, data_sharded),
                 out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 1))


def make_eval(model_config: ModelConfig, batch_size: int = 64):
  nll = jax.jit(lambda p, c: transformer.context_nll(p, c, model_config))

  def evaluate(params, contexts_NxK) -> float:
    losses = [np.asarray(nll(params, np.asarray(contexts_NxK[i:i + batch_size])))
              for i in range(0, len(contexts_NxK), batch_size)]
    return float(np.concatenate(losses).mean())

  return evaluate


def unigram_entropy(contexts_NxK, vocab_size: int) -> float:
  """Entropy (nats) of the empirical unigram distribution of the predicted tokens: the loss to beat."""
  counts = np.bincount(np.asarray(contexts_NxK[:, 1:]).reshape(-1), minlength=vocab_size).astype(np.float64)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


# Settings that do not change the trained numbers: a resumed run may change them.
_FREE_TO_CHANGE = ("eval_every", "resume_every")


def recipe(model_config: ModelConfig, cfg: TrainConfig, **run_info) -> dict:
  """What a run's checkpoints depend on, as run.json records it (the keys a resume must find unchanged)."""
  train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _FREE_TO_CHANGE}
  return json.loads(json.dumps({"model_config": model_config.__dict__, "train_config": train, **run_info},
                               default=str))


def check_same_recipe(run_dir, wanted: dict) -> None:
  """A run directory that already holds a (part-)trained run must have been trained with the same recipe:
  resuming, or calling it finished, with other data or settings would mix two runs under one name. Only the
  keys of `wanted` (a `recipe`) are compared, and of those only the ones the run recorded (older runs lack some)."""
  try:
    recorded = checkpoints.read_run_info(run_dir)
  except FileNotFoundError:
    held = [d for d in (checkpoints.PARAMS_DIR, checkpoints.TRAIN_STATE_DIR) if any((Path(run_dir) / d).glob("*"))]
    if held:  # whose checkpoints they are is unknown: a run.json written now would describe them wrongly
      raise ValueError(f"{run_dir} holds {' and '.join(held)} but no {checkpoints.RUN_FILE}: whose they are is "
                       "unknown; use another --workdir, or delete it to start again") from None
    return
  origin = recorded.get("converted_from") or recorded.get("source")
  if origin:
    raise ValueError(f"{run_dir} holds checkpoints converted from {origin}: training there would mix a new run "
                     "with them; use another --workdir")
  differ = []
  for key, value in wanted.items():
    before = recorded.get(key)
    if isinstance(value, dict) and isinstance(before, dict):
      differ += [f"{key}.{k}: {before.get(k)!r} there, {v!r} now" for k, v in value.items()
                 if k in before and before[k] != v]
    elif key in recorded and before != value:
      differ.append(f"{key}: {before!r} there, {value!r} now")
  if differ:
    raise ValueError(f"{run_dir} holds a run trained otherwise ({'; '.join(differ)}): resuming or reusing it "
                     "would mix two runs; use another --workdir, or delete it to start again")


def data_mesh():
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def num_test_contexts(num_contexts: int, cfg: TrainConfig) -> int:
  """Contexts held out from the end of the data for the test loss: eval_contexts, at most a tenth."""
  return min(cfg.eval_contexts, num_contexts // 10)


def train(run_dir, model_config: ModelConfig, contexts_NxK, cfg: TrainConfig, *, progress=True,
          stop_after: int | None = None, log=print, run_info: dict | None = None) -> dict:
  """Train (or resume) a run in `run_dir`; returns a summary. `stop_after` ends early (as a kill would).

  `run_info` is recorded with the run (e.g. the tokenizer's fingerprint, which the sweep checks)."""
  run_dir = Path(run_dir)
  if cfg.batch_size % jax.device_count():
    raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {jax.device_count()} devices")
  if contexts_NxK.shape[1] - 1 > model_config.n_ctx:
    raise ValueError(f"contexts of length {contexts_NxK.shape[1]} need n_ctx >= {contexts_NxK.shape[1] - 1}; "
                     f"the model has n_ctx={model_config.n_ctx}")
  transformer.check_token_range(contexts_NxK, model_config, name="training contexts")
  n_eval = num_test_contexts(len(contexts_NxK), cfg)
  train_data, test_data = contexts_NxK[:len(contexts_NxK) - n_eval], contexts_NxK[len(contexts_NxK) - n_eval:]
  # (before run.json is written: a run refused here must leave nothing that refuses the corrected command)
  source = (run_info or {}).get("train_data")
  batches = mixing.BatchSchedule(len(train_data), cfg.batch_size, cfg.seed,
                                 name=f"training data {source!r}" if source else "training data")
  run_info = {**(run_info or {}), "tokens_fingerprint": packing.tokens_fingerprint(contexts_NxK),
              "num_train_contexts": len(train_data), "num_test_contexts": n_eval,
              "context_length": int(contexts_NxK.shape[1])}
  run_dir.mkdir(parents=True, exist_ok=True)
  # Held for the whole run (let go when it returns or fails, or its process ends): two trainings of one
  # directory at once left one dead in orbax's "No ArrayMetadata found" and a temporary checkpoint behind.
  held = dir_lock.hold_directory(run_dir, "training")
  try:
    return _train_held(run_dir, model_config, cfg, train_data, test_data, batches, run_info, progress=progress,
                       stop_after=stop_after, log=log)
  finally:
    if held is not None:
      held.close()


def _train_held(run_dir: Path, model_config: ModelConfig, cfg: TrainConfig, train_data, test_data, batches,
                run_info: dict, *, progress, stop_after, log) -> dict:
  """`train`'s work, in a run directory it holds."""
  schedule_steps = cfg.schedule()
  check_same_recipe(run_dir, recipe(model_config, cfg, **run_info))
  checkpoints.write_run_info(run_dir, model_config, train_config=dataclasses.asdict(cfg), **run_info)

  mesh = data_mesh()
  optimizer = make_optimizer(cfg)
  train_step = make_train_step(model_config, optimizer, mesh)
  evaluate = make_eval(model_config)

  params = transformer.init_params(model_config, seed=cfg.seed)
  opt_state = optimizer.init(params)
  state_mngr = checkpoints.train_state_manager(run_dir)
  params_mngr = checkpoints.params_manager(run_dir)
  start, resumed = 0, state_mngr.latest_step() is not None
  if resumed:
    start = state_mngr.latest_step()
    try:
      restored = state_mngr.restore(start, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(params), opt_state=ocp.args.StandardRestore(opt_state)))
    except Exception as e:  # noqa: BLE001 (orbax's and tensorstore's words name neither the path nor the remedy)
      state_dir = run_dir / checkpoints.TRAIN_STATE_DIR
      raise ValueError(f"the resume state at step {start} in {state_dir} could not be read "
                       f"({checkpoints.error_headline(e)[:300]}): delete {state_dir / str(start)} to train again from "
                       "step 0 (the same recipe gives the same params; the checkpoints already kept stay)") from None
    params, opt_state = restored["params"], restored["opt_state"]
    log(f"resumed from step {start} in {run_dir}")
  saved = set(params_mngr.all_steps())
  lost = [s for s in schedule_steps if s < start and s not in saved]
  if lost:  # (deleted or never copied: resuming cannot make them again)
    log(f"warning: checkpoint step(s) {lost} of the schedule are missing in {run_dir / checkpoints.PARAMS_DIR} and "
        f"lie before the resume step {start}: only training again from step 0 (delete the run directory) makes them")
  metrics_path = run_dir / "metrics.jsonl"

  def save(step):
    if step in schedule_steps and step not in saved:
      checkpoints.save_params(params_mngr, step, params)
      saved.add(step)
    state_mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                  opt_state=ocp.args.StandardSave(opt_state)), force=True)
    state_mngr.wait_until_finished()

  def record(step, **values):
    with open(metrics_path, "a") as f:
      f.write(paths.json_bytes({"step": step, **values}, indent=None).decode() + "\n")

  if not resumed:  # (a run stopped after saving step 0's state resumes from it: saving it again was refused)
    save(0)
    record(0, test_loss=evaluate(params, test_data))
  # Closed also when a step fails; disabled, the bar takes its updates silently.
  with progress_bar(cfg.steps, "train", initial=start, waiting="compiling", enabled=bool(progress)) as bar:
    t0, loss = time.perf_counter(), float("nan")
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    for step in range(start, end):
      batch = np.asarray(train_data[np.sort(batches.indices(step))])
      previous_loss = loss
      params, opt_state, loss = train_step(params, opt_state, batch)
      # At most two steps in flight. Unbounded, XLA:CPU with several devices could deadlock: each device holds
      # at most 32 computations in flight, and one device's slots filled with later steps while its launch of
      # an earlier step, whose gradient all-reduce the other devices were waiting in, never started (the test
      # process aborted at the rendezvous timeout in about 1 of 5 runs of tests/test_training.py).
      jax.block_until_ready(previous_loss)
      done = step + 1
      if done % cfg.eval_every == 0 or done == cfg.steps:
        loss = float(loss)
        if not math.isfinite(loss):
          raise FloatingPointError(f"training loss became {loss} at step {done}; lower the learning rate")
        test_loss = evaluate(params, test_data)
        record(done, train_loss=loss, test_loss=test_loss)
        bar.set_postfix(train=f"{loss:.3f}", test=f"{test_loss:.3f}")
      if done in schedule_steps or done % cfg.resume_every == 0 or done == end:
        save(done)
      bar.update(1)
  state_mngr.close()
  params_mngr.close()
  return {"steps_run": end - start, "seconds": time.perf_counter() - t0, "final_step": end,
          "train_loss": float(loss), "test_loss": evaluate(params, test_data),
          "unigram_entropy": unigram_entropy(train_data, model_config.d_vocab),
          "checkpoints": sorted(saved)}
