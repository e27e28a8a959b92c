"""Side by side with devinterp 2.0.1: the same weights, contexts and SGLD settings; time and χ/LLC agreement.

  python -m benchmarks.devinterp_side_by_side [--tiny] [--run_dir=runs/demo [--checkpoint=STEP]]
      [--data BASE PROBE ... [--tokenizer=T] | --tokens BASE.npy PROBE.npy ... | --random_tokens]
      [--num_chains=4] [--num_draws=100] [--batch_size=20]
      [--components full l0h0 ...] [--work_dir=runs/devinterp_side_by_side] [--skip_devinterp]
      [--devinterp_device=cuda] [--devinterp_wheels=.whl] [--precision=float32] [--attention=plain]

What runs:
  devinterp  in its own virtualenv ($SUSCEPT_JAX_DEVINTERP_VENV, default <cache>/devinterp-venv; built on
             first use with devinterp==2.0.1, torch==2.13.0 (CPU) and transformer-lens<4, reused once complete), as a
             subprocess (benchmarks/devinterp_job.py) on files written here: the weights exported to a
             TransformerLens state dict, its config, the contexts. One `susceptibilities` call (every head +
             "full", sampling task = the base data, observables = base + probes, both at their defaults: 3
             evaluation batches per observable per draw, 32 initial-loss batches) gives its dataset-level and
             per-token χ, so its one time counts for both. On a machine with its own torch and no package
             index (the accelerator), --devinterp_wheels builds that virtualenv offline on the machine's torch
             from carried wheels (devinterp_wheels_h200.txt lists what the H200 image lacks), and
             --devinterp_device=cuda runs devinterp on the GPU.
  ours       in this process, compilation included: `estimate_susceptibilities` (dataset level) and
             `estimate_per_token_susceptibilities` observing the probe contexts devinterp evaluates; then
             both again with their programs compiled (what each further checkpoint of a sweep costs). In
             float32 with plain attention, as devinterp computes, unless --precision / --attention say
             otherwise (on an NVIDIA GPU, bfloat16 with fused attention: the agreement checks then also say
             whether that setting's χ stays within the error bars of devinterp's float32).
Contexts: with --run_dir, by default the demo's datasets (base `pile`, probes `code` and `repeats:pile`: its
2048 and 60 first contexts), tokenized by the run's tokenizer as the sweep tokenizes them (--data names others);
without --run_dir, or with --random_tokens, random tokens (a uniform base; probes 'repeats' and 'narrow'), on
which a trained model is not at a minimum, so its LLCs come out negative on both sides. The shapes, so the
times, are the same either way.
Same ε, nβ, γ, chains, draws, batch size, components (head = its W_Q/W_K/W_V/b_Q/b_K/b_V/W_O slices on both
sides) and contexts (each probe dataset is exactly the batch_size × 3 contexts devinterp observes).

Definitions, and how they map (devinterp's estimator: see devinterp_job.py):
  dataset level  ours χ = −Cov(φ, ΔL) − ⟨φ⟩(⟨ΔL⟩_C − ⟨ΔL⟩_full), ΔL = L(batch with a fraction δh of probe samples)
                 − L(batch) ≈ δh·(L_probe − L_base); devinterp's χ (the mean of its per-token table) has
                 L_probe − L_base in place of ΔL. So χ_devinterp ≈ χ_ours / δh: ours is shown divided by the
                 realised δh (`chi_with(scale_by_delta_h=True)`).
  per token      the same formula on both sides (χ_i with ℓ_i − L_base), no scaling.
  two offsets    (1) devinterp's φ = L_base(w_t) − ⟨init_loss⟩, the initial loss taken on 32 other batches, so
                 φ(w*) ≠ 0: the offset c = L_base(w*) − ⟨init_loss⟩ adds −c·(⟨ℓ_i − L_base⟩_C − ⟨ℓ_i − L_base⟩_full)
                 to its χ, and nβ·(its step batches' L(w*) − ⟨init_loss⟩) to every LLC. (2) ours takes φ and L_B
                 on each draw's own random batch, which adds β = (1/n)·Cov_j(ℓ_j(w) − ℓ_j(w*), ℓ_j(w)) (n = batch
                 size, j over base samples) to every χ, per token and (on devinterp's scale) dataset level;
                 devinterp's fixed contexts have no such term.
  forms          devinterp is shown three ways, from its own samples: "reported" (as it computes them),
                 "anchored" (φ = L_base(w_t) − L_base(w*) on its fixed contexts; LLC on its step batches minus
                 their own loss at w*, steps ≥ 1) and "mapped" (anchored + β estimated from its base contexts):
                 the last is what ours should equal, and what the agreement verdicts judge.
  also           devinterp reports no χ for "full"; the job computes it with its formula.
Error bars: ours, the standard error across chains (each reads its own data stream; chain k of a head and of
"full" share theirs, so the ⟨ΔL⟩_full term is carried). devinterp's χ error bar is a jackknife over chains
(leaving out chain k of every component: its head χ takes ⟨·⟩_full from all of "full"'s chains, which the spread
of per-chain values missed, 1.2–2.3× too small per token on the demo's data) ⊕ a bootstrap over the
batch_size × 3 base contexts it fixed (every chain observes the same ones); its LLC error bar is the chain spread.
Agreement: z = (ours − devinterp) / √(se_ours² + se_devinterp²). PASS when every
dataset-level |z| ≤ 3 and the LLC of "full" has |z| ≤ 3; per token, when at most 5 % of the tokens of each
component have |z| > 3 (Student t with ≈ 6 degrees of freedom puts 2.4 % there). That last check is weak
evidence either way at 4 chains a side: every token's χ and error bar come from the same few chains, so when
those chains happen to sit together away from the posterior mean, many tokens fail at once (a t-statistic with
3 degrees of freedom, shared by all of them). On the demo's data it failed in 22 of 45 pairs of two of our own
runs (seeds 0–9) and in 13 of 40 pairs of ours against devinterp (PER_TOKEN_NULL_NOTE). At 16 chains it
failed in none of 15 pairs of our own runs (0.2–0.7 % of tokens beyond |z| 3 on average): for a per-token
check that means something, pass --num_chains=16 (devinterp then takes ≈ 4× as long).
Speed targets (ratios in one run, compilation included): dataset level ≥ 10×, per token ≥ 3×. The ratios with
our programs compiled are printed beside them, without a target.

Shape letters: P probes, C components, K chains, O observed contexts, J token positions per observed context,
L tokens per context.
"""
import argparse
import dataclasses
import json
import os
import re
import site
import subprocess
import sys
from pathlib import Path

import numpy as np

REQUIREMENTS = ("torch==2.13.0", "devinterp==2.0.1", "transformer-lens<4")
VENV_MARKER = "suscept_jax_venv.json"
BATCHES_PER_DRAW = 3  # devinterp's default evaluation batches per observable per draw
JOB_SCRIPT = Path(__file__).with_name("devinterp_job.py")
TARGETS = {"dataset": 10.0, "per_token": 3.0}
Z_MAX, TOKEN_FRACTION_MAX = 3.0, 0.05
FAMILY_ALPHA = 0.05  # the dataset-level χ and LLC checks each fail in this share of runs where both sides are right
PER_TOKEN_NULL_NOTE = ("at 4 chains a side this check also fails in about half the pairs of two of our own runs on "
                       "the demo's data (22 of 45), at 16 chains in none of 15: --num_chains=16 for a real test")


@dataclasses.dataclass(frozen=True)
class Settings:
  """One run's settings, shared by both sides (δh and num_base are ours only)."""

  model: str = "demo"
  num_chains: int = 4
  num_draws: int = 100
  batch_size: int = 20
  step_size: float = 1e-3  # ε (devinterp: lr)
  nbeta: float = 30.0  # nβ (devinterp: n_beta)
  localization: float = 300.0  # γ
  delta_h: float = 0.1  # our probe fraction (devinterp evaluates probes apart)
  num_base: int = 2048  # base contexts when they are random
  seed: int = 0
  mala_every: int = 10  # ours: MALA acceptance every this many draws (our default; devinterp's job measures none)

  def sgld_config(self):
    """Our SGLDConfig of these settings (devinterp's job takes the same numbers from the job file)."""
    import suscept_jax as sj
    return sj.SGLDConfig(step_size=self.step_size, nbeta=self.nbeta, localization=self.localization,
                         num_chains=self.num_chains, num_draws=self.num_draws, mala_every=self.mala_every)

  @property
  def probe_rows(self) -> int:
    """Contexts per probe: exactly what devinterp observes (batch_size × its 3 batches per draw)."""
    return self.batch_size * BATCHES_PER_DRAW


TINY = Settings(model="tiny", num_chains=2, num_draws=8, batch_size=8, num_base=128)


@dataclasses.dataclass
class Side:
  """One implementation's results on the common grid (P probes, C components, O contexts, J positions)."""

  name: str
  chi_PxC: np.ndarray  # dataset-level χ on devinterp's scale (ours divided by the realised δh)
  chi_se_PxC: np.ndarray
  token_chi: dict  # probe -> [C, O, J]
  token_se: dict  # probe -> [C, O, J]
  llc_C: np.ndarray
  llc_se_C: np.ndarray
  context_ids: dict  # probe -> [O, L], the row order of token_chi
  seconds: dict  # "dataset", "per_token" -> wall seconds


# ---- weights and contexts ------------------------------------------------------------------------------------

def load_weights(settings: Settings, run_dir=None, checkpoint=None):
  """(model config, params, description): a saved checkpoint, else a random initialisation (timing only)."""
  if run_dir:
    from suscept_jax import checkpoints
    cfg = checkpoints.read_model_config(run_dir)
    step = checkpoint if checkpoint is not None else checkpoints.available_steps(run_dir)[-1]
    return cfg, checkpoints.load_params(run_dir, step), f"checkpoint step {step} of {run_dir}"
  from suscept_jax.models import config as model_config, transformer
  cfg = model_config.get_config(settings.model)
  return cfg, transformer.init_params(cfg, seed=settings.seed), (
      f"random initialisation of the {settings.model!r} config (untrained: timing is meaningful, χ only as a check)")


def random_contexts(cfg, settings: Settings) -> dict:
  """base: uniform tokens; probes: 'repeats' (a repeated random span) and 'narrow' (tokens < d_vocab/8)."""
  from suscept_jax.data import repeats
  rng = np.random.default_rng(settings.seed + 1)
  T, V = cfg.n_ctx, cfg.d_vocab
  uniform = lambda n, v: rng.integers(0, v, (n, T), dtype=np.int32)  # noqa: E731
  lo, hi = repeats.span_lengths(T)
  spans = repeats.add_repeated_spans(uniform(settings.probe_rows, V), 1.0, seed=settings.seed + 2, min_len=lo,
                                     max_len=hi, d_vocab=V)
  return {"base": uniform(settings.num_base, V), "repeats": spans,
          "narrow": uniform(settings.probe_rows, max(2, V // 8))}


def file_contexts(cfg, settings: Settings, paths) -> dict:
  """base = the first file, one probe per further file (named by its stem, its first batch_size × 3 rows)."""
  if len(paths) < 2:
    raise ValueError("--tokens needs a base file and at least one probe file")
  out = {}
  for i, path in enumerate(paths):
    tokens = np.load(path)
    if tokens.ndim != 2 or tokens.shape[1] < cfg.n_ctx:
      raise ValueError(f"{path}: expected int contexts [N, >= {cfg.n_ctx}], got shape {tokens.shape}")
    tokens = np.asarray(tokens[:, :cfg.n_ctx], np.int32)  # devinterp feeds whole rows: at most n_ctx tokens
    if tokens.min() < 0 or tokens.max() >= cfg.d_vocab:
      raise ValueError(f"{path}: token ids outside the model's vocabulary [0, {cfg.d_vocab})")
    name = "base" if i == 0 else Path(path).stem
    if name in out:
      raise ValueError(f"{path}: a second dataset named {name!r} (probes are named by their file stems)")
    if len(tokens) < settings.probe_rows:  # devinterp observes batch_size × 3 contexts of the base data too
      raise ValueError(f"{path}: {len(tokens)} contexts, need at least {settings.probe_rows}")
    out[name] = tokens if i == 0 else tokens[:settings.probe_rows]
  return out


DEFAULT_DATA = ("pile", "code", "repeats:pile")  # with --run_dir: the demo's base, its headline probe, induction


def dataset_name(spec: str) -> str:
  """A probe's name on both sides: its spec with characters other than letters, digits, '.', '-', '_' as '_'
  (the names become file and variable names in the job's files)."""
  return re.sub(r"[^A-Za-z0-9_.-]", "_", spec)


def dataset_contexts(cfg, settings: Settings, specs, run_dir, tokenizer_path) -> dict:
  """base = the first spec's first `num_base` contexts, one probe per further spec (its first batch_size × 3),
  tokenized as the sweep tokenizes them (`pipeline.load_dataset`) with the tokenizer the run was trained with."""
  from suscept_jax import checkpoints
  from suscept_jax_runners import pipeline
  if len(specs) < 2:
    raise ValueError("--data needs a base dataset and at least one probe dataset")
  if not Path(tokenizer_path).exists():
    raise FileNotFoundError(f"tokenizer {tokenizer_path} not found (give the one {run_dir} was trained with as "
                            f"--tokenizer)")
  tokenizer = pipeline.check_run_tokenizer(tokenizer_path, cfg, checkpoints.read_run_info(run_dir), run_dir)
  pipeline.check_datasets(specs)
  out = {}
  for i, spec in enumerate(specs):
    name = "base" if i == 0 else dataset_name(spec)
    if name in out:
      raise ValueError(f"--data {spec}: a second dataset named {name!r}")
    wanted = settings.num_base if i == 0 else settings.probe_rows
    tokens = np.asarray(pipeline.load_dataset(spec, tokenizer, cfg.n_ctx, max_contexts=wanted), np.int32)
    if len(tokens) < settings.probe_rows:  # devinterp observes batch_size × 3 contexts of the base data too
      raise ValueError(f"--data {spec}: {len(tokens)} contexts of {cfg.n_ctx} tokens, need at least "
                       f"{settings.probe_rows}")
    out[name] = tokens
  return out


def default_tokenizer(run_dir) -> Path:
  """Where `make demo` puts a run's tokenizer: beside its run directory (runs/demo/tokenizer.json)."""
  return Path(run_dir).resolve().parent / "tokenizer.json"


# ---- the devinterp side --------------------------------------------------------------------------------------

def venv_dir() -> Path:
  from suscept_jax import paths
  return Path(os.environ.get("SUSCEPT_JAX_DEVINTERP_VENV") or paths.cache_root() / "devinterp-venv")


def venv_ready(venv: Path) -> bool:
  """Complete = built by `build_venv` or `build_venv_offline` (their marker is written last) with devinterp
  and transformer-lens as required here (torch: the pinned CPU build, or the machine's own)."""
  marker = venv / VENV_MARKER
  return marker.exists() and set(REQUIREMENTS[1:]) <= set(json.loads(marker.read_text()).get("requirements", []))


def build_venv(venv: Path, log=print) -> None:
  """Create (or finish) the devinterp virtualenv: CPU torch first, so pip keeps that build."""
  log(f"building the devinterp virtualenv in {venv} ({', '.join(REQUIREMENTS)})")
  if not (venv / "bin" / "python").exists():
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
  pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
  subprocess.run(pip + [REQUIREMENTS[0]], check=True)
  subprocess.run(pip + list(REQUIREMENTS), check=True)
  _finish_venv(venv, list(REQUIREMENTS))


def build_venv_offline(venv: Path, wheels: Path, log=print) -> None:
  """The devinterp virtualenv on a machine with no package index but its own torch (an accelerator image):
  the machine's packages plus every wheel in `wheels` (devinterp, transformer-lens and what the machine lacks,
  e.g. `devinterp_wheels_h200.txt`), installed as they are, without resolving."""
  files = sorted(str(p) for p in Path(wheels).glob("*.whl"))
  if not files:
    raise ValueError(f"--devinterp_wheels={wheels} holds no .whl files")
  log(f"building the devinterp virtualenv in {venv} from {len(files)} wheels in {wheels} (the machine's torch)")
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)  # (ensurepip may be absent)
  python = str(venv / "bin" / "python")
  # The machine's packages through a .pth file: `--system-site-packages` would reach only the base
  # interpreter's, not those of a virtualenv that this Python may itself be (as on the accelerator's image).
  venv_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True,
                             capture_output=True, text=True).stdout.strip()
  (Path(venv_site) / "machine_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", venv_site,
                  *files], check=True)
  _finish_venv(venv, list(REQUIREMENTS[1:]) + ["torch (the machine's)"])


def _finish_venv(venv: Path, requirements: list) -> None:
  """Check that the job's imports work, then write the marker (last: it says the build is complete)."""
  subprocess.run([str(venv / "bin" / "python"), "-c", "import devinterp.slt.susceptibilities, transformer_lens, "
                  "datasets, xarray"], check=True)
  (venv / VENV_MARKER).write_text(json.dumps({"requirements": requirements}))


def write_job(job_dir: Path, cfg, params, contexts: dict, settings: Settings, components: list,
              device: str = "cpu") -> None:
  """The files the devinterp job reads: job.json, weights.npz (TransformerLens names), contexts.npz; device:
  where torch runs devinterp ("cpu", "cuda")."""
  from suscept_jax.models import interop
  job_dir.mkdir(parents=True, exist_ok=True)
  np.savez(job_dir / "weights.npz", **interop.to_transformer_lens(params, cfg))
  np.savez(job_dir / "contexts.npz", **contexts)
  sgld = dict(lr=settings.step_size, n_beta=settings.nbeta, localization=settings.localization,
              num_chains=settings.num_chains, num_draws=settings.num_draws, batch_size=settings.batch_size)
  job = dict(tl_config=interop.transformer_lens_config(cfg), sgld=sgld, components=components,
             probes=[p for p in contexts if p != "base"], device=device)
  (job_dir / "job.json").write_text(json.dumps(job, indent=2))


def run_devinterp(job_dir: Path, venv: Path) -> None:
  """Run the job in the devinterp virtualenv (its progress bars off); its output streams through."""
  for name in ("devinterp_result.npz", "devinterp_result.json"):
    (job_dir / name).unlink(missing_ok=True)
  subprocess.run([str(venv / "bin" / "python"), str(JOB_SCRIPT), str(job_dir)], check=True,
                 env={**os.environ, "TQDM_DISABLE": "1"})


VARIANTS = ("reported", "anchored", "mapped")  # the last one is what the agreement verdicts judge


def devinterp_side(job_dir: Path, variant: str = "mapped") -> Side:
  """devinterp's results as a Side in one of three forms; χ error bars = a jackknife over chains ⊕ the bootstrap
  over its fixed base contexts (devinterp_job.context_se); LLC error bars = spread across chains. Forms:
  "reported" (its χ and `compute_llc` as they come), "anchored" (φ re-anchored at L_base(w*) on its own
  contexts; LLC on the same batches), "mapped" (anchored + our same-batch term β: what ours should equal)."""
  info = json.loads((job_dir / "devinterp_result.json").read_text())
  with np.load(job_dir / "devinterp_result.npz") as f:
    arrays = {k: f[k] for k in f.files}
  form = "reported" if variant == "reported" else "anchored"
  shift_CxK = arrays["batch_term_per_chain"] if variant == "mapped" else 0.0
  token_chi, token_se, chi, chi_se, ids = {}, {}, [], [], {}
  for p in info["probes"]:
    per_chain_CxKxOxJ = arrays[f"chi_token_per_chain/{form}/{p}"] + np.asarray(shift_CxK)[..., None, None]
    shift_left_out_KxC = leave_one_out_means(np.broadcast_to(shift_CxK, per_chain_CxKxOxJ.shape[:2]).T)
    left_out_KxCxOxJ = arrays[f"chi_token_leave_one_out/{form}/{p}"] + shift_left_out_KxC[..., None, None]
    token_chi[p] = per_chain_CxKxOxJ.mean(axis=1)
    token_se[p] = np.hypot(jackknife_se(left_out_KxCxOxJ), arrays[f"chi_token_context_se/{form}/{p}"])
    chi.append(per_chain_CxKxOxJ.mean(axis=(1, 2, 3)))
    chi_se.append(np.hypot(jackknife_se(left_out_KxCxOxJ.mean(axis=(2, 3))), arrays[f"chi_context_se/{form}/{p}"]))
    ids[p] = arrays[f"context_ids/{p}"]
  llc, llc_se = mean_se(arrays[f"llc_per_chain/{form}"], axis=1)
  seconds = {"dataset": info["seconds"], "per_token": info["seconds"], "imports": info["import_seconds"]}
  return Side(f"devinterp {variant}", np.array(chi), np.array(chi_se), token_chi, token_se, llc, llc_se, ids,
              seconds)


def leave_one_out_means(x_KxN: np.ndarray) -> np.ndarray:
  """[K, N]: row k is the mean of the other K − 1 rows."""
  x_KxN = np.asarray(x_KxN, float)
  return (x_KxN.sum(axis=0) - x_KxN) / (len(x_KxN) - 1)


def jackknife_se(left_out_Kx: np.ndarray) -> np.ndarray:
  """The jackknife standard error from K leave-one-out replicates (axis 0): `estimators.jackknife_stderr`. For a
  statistic whose parts all chains share (devinterp's ⟨·⟩_full term) it carries that part's noise too."""
  from suscept_jax import estimators
  return estimators.jackknife_stderr(left_out_Kx, axis=0)


def mean_se(x, axis: int):
  """Mean and standard error along `axis` (chains)."""
  x = np.asarray(x, np.float64)
  return x.mean(axis=axis), x.std(axis=axis, ddof=1) / np.sqrt(x.shape[axis])


# ---- our side ------------------------------------------------------------------------------------------------

def our_loss_fns(cfg, numerics=None) -> tuple:
  """(loss_fn, token_loss_fn) of the model at `numerics` (`config.Numerics`; default float32, plain attention,
  as devinterp computes)."""
  import functools

  from suscept_jax.models import transformer
  from suscept_jax.models.config import Numerics
  numerics = numerics or Numerics()
  return (functools.partial(transformer.context_nll, config=cfg, numerics=numerics),
          functools.partial(transformer.per_token_nll, config=cfg, numerics=numerics))


def run_ours(cfg, params, contexts: dict, settings: Settings, components: list, numerics=None) -> Side:
  """Both of our estimators, each timed with its compilation; probe contexts observed in file order."""
  import suscept_jax as sj
  from benchmarks.common import timed
  from suscept_jax.models import components as comps
  masks = comps.component_masks(components, params, cfg)
  base = contexts["base"]
  probes = {p: x for p, x in contexts.items() if p != "base"}
  config = settings.sgld_config()
  loss_fn, token_loss_fn = our_loss_fns(cfg, numerics)
  observed = np.concatenate(list(probes.values()))
  dataset = lambda: sj.estimate_susceptibilities(loss_fn, params, masks, base, probes, config=config,  # noqa: E731
                                                 batch_size=settings.batch_size, delta_h=settings.delta_h,
                                                 seed=settings.seed, progress=False)
  per_token = lambda: sj.estimate_per_token_susceptibilities(  # noqa: E731
      loss_fn, token_loss_fn, params, masks, base, observed, config=config, batch_size=settings.batch_size,
      seed=settings.seed, progress=False)
  seconds = {}
  res, seconds["dataset"] = timed(dataset)
  tok, seconds["per_token"] = timed(per_token)
  # Again, with the programs compiled: what each further checkpoint of a sweep costs (same shapes).
  seconds["dataset_compiled"], seconds["per_token_compiled"] = timed(dataset)[1], timed(per_token)[1]
  return ours_side(res, tok, probes, seconds)


def ours_side(res, tok, probes: dict, seconds: dict) -> Side:
  """Our results as a Side: dataset χ divided by the realised δh (devinterp's scale), per-token χ split by probe."""
  table = res.chi_with(form="eq41", scale_by_delta_h=True)
  token_chi, token_se, start = {}, {}, 0
  for p, rows in probes.items():
    token_chi[p] = tok.chi[:, start:start + len(rows)]
    token_se[p] = tok.chi_stderr[:, start:start + len(rows)]
    start += len(rows)
  return Side("ours", table.chi, table.stderr, token_chi, token_se, res.llc, res.llc_stderr,
              {p: np.asarray(x) for p, x in probes.items()}, seconds)


# ---- the comparison ------------------------------------------------------------------------------------------

def z_score(a, se_a, b, se_b):
  """(a − b) / √(se_a² + se_b²); 0 where both the difference and the error bars are 0."""
  diff, se = np.asarray(a) - np.asarray(b), np.sqrt(np.square(se_a) + np.square(se_b))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where((diff == 0) & (se == 0), 0.0, diff / se)


def welch_p_values(a, se_a, b, se_b, num_chains: int):
  """Two-sided p-values of the differences a − b under Student-t with Welch–Satterthwaite degrees of freedom,
  each side's stderr from `num_chains` chains ((num_chains − 1) d.o.f.). At 4 chains a side |z| = 3 has
  p ≈ 0.02, not the normal 0.003: a stderr from 4 chains is itself noisy, often small by chance."""
  from scipy import stats
  z = z_score(a, se_a, b, se_b)
  var_a, var_b = np.square(se_a), np.square(se_b)
  with np.errstate(invalid="ignore", divide="ignore"):
    dof = np.square(var_a + var_b) / ((np.square(var_a) + np.square(var_b)) / max(num_chains - 1, 1))
  return 2 * stats.t.sf(np.abs(z), np.where(np.isfinite(dof), dof, np.inf))


def agree(p_values, alpha: float = FAMILY_ALPHA) -> bool:
  """No cell's p-value below alpha / cells (Bonferroni): the check fails in at most `alpha` of the runs where
  both sides are right, however many cells it holds."""
  p = np.asarray(p_values, np.float64).ravel()
  return bool(np.all(p >= alpha / p.size))


def row_order(ours_ids_OxL: np.ndarray, theirs_ids_OxL: np.ndarray) -> np.ndarray:
  """For each of devinterp's context rows, the index of the same context among ours."""
  index = {row.tobytes(): i for i, row in enumerate(np.asarray(ours_ids_OxL, np.int64))}
  order = [index.get(row.tobytes()) for row in np.asarray(theirs_ids_OxL, np.int64)]
  if None in order:
    raise ValueError("devinterp observed contexts that are not among ours: the job files are out of date")
  return np.array(order)


def compare(ours: Side, theirs: Side, components: list, probes: list, num_chains: int) -> dict:
  """z-scores and p-values (`welch_p_values`, chains a side): dataset χ [P, C], LLC [C]; and per component the
  per-token |z| summary over all probes."""
  token = {c: {"z": [], "diff": [], "ours": [], "theirs": []} for c in components}
  for p in probes:
    order = row_order(ours.context_ids[p], theirs.context_ids[p])
    a, se_a = ours.token_chi[p][:, order], ours.token_se[p][:, order]
    b, se_b = theirs.token_chi[p], theirs.token_se[p]
    z = z_score(a, se_a, b, se_b)
    for c, name in enumerate(components):
      for key, value in (("z", z[c]), ("diff", a[c] - b[c]), ("ours", a[c]), ("theirs", b[c])):
        token[name][key].append(value.ravel())
  per_token = {}
  for name, parts in token.items():
    z, ours_c, theirs_c = (np.concatenate(parts[k]) for k in ("z", "ours", "theirs"))
    per_token[name] = {"tokens": int(z.size), "frac_abs_z_gt_3": float(np.mean(np.abs(z) > Z_MAX)),
                       "median_abs_z": float(np.median(np.abs(z))), "mean_z": float(np.mean(z)),
                       "mean_diff": float(np.mean(np.concatenate(parts["diff"]))),
                       "corr": float(np.corrcoef(ours_c, theirs_c)[0, 1]) if np.std(ours_c) * np.std(theirs_c) > 0
                       else float("nan")}
  chi, llc = ((ours.chi_PxC, ours.chi_se_PxC, theirs.chi_PxC, theirs.chi_se_PxC),
              (ours.llc_C, ours.llc_se_C, theirs.llc_C, theirs.llc_se_C))
  return {"chi_z": z_score(*chi), "chi_p": welch_p_values(*chi, num_chains), "llc_z": z_score(*llc),
          "llc_p": welch_p_values(*llc, num_chains), "per_token": per_token}


def verdicts(ours: Side, judged: Side, comparison: dict, components: list) -> dict:
  """PASS/FAIL of the speed targets and of the agreement checks against the judged devinterp form."""
  full = components.index("full")
  ratio = {k: judged.seconds[k] / ours.seconds[k] for k in TARGETS}
  compiled = {k: judged.seconds[k] / ours.seconds[f"{k}_compiled"] for k in TARGETS}
  return {**{f"speed_{k}": bool(ratio[k] >= TARGETS[k]) for k in TARGETS}, "ratios_compiled": compiled,
          "agree_chi": agree(comparison["chi_p"]), "agree_llc_full": agree(comparison["llc_p"][full]),
          "agree_per_token": all(v["frac_abs_z_gt_3"] <= TOKEN_FRACTION_MAX for v in comparison["per_token"].values()),
          "ratios": ratio}


def report(ours: Side, theirs: dict, comparisons: dict, components: list, probes: list, log=print) -> dict:
  """Print times, ratios and agreement tables against each devinterp form {label: Side}; the verdicts judge
  the last form. Returns the verdicts."""
  labels = list(theirs)
  judged = labels[-1]
  v = verdicts(ours, theirs[judged], comparisons[judged], components)
  flag = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
  other = theirs[judged]
  log(f"\ntime (wall s, compilation included): devinterp {other.seconds['dataset']:.1f} (one run gives both levels; "
      f"+ {other.seconds.get('imports', 0):.1f} s imports)  |  ours dataset-level {ours.seconds['dataset']:.1f}, "
      f"per-token {ours.seconds['per_token']:.1f}")
  for k in TARGETS:
    log(f"  {k:9s} ratio {v['ratios'][k]:6.2f}×  (target ≥ {TARGETS[k]:g}×)  {flag(v['speed_' + k])}")
  log("ours again, programs compiled (each further checkpoint of a sweep; no target): "
      + ", ".join(f"{k} {ours.seconds[k + '_compiled']:.1f} s = {r:.2f}×" for k, r in v["ratios_compiled"].items()))
  log("\ndataset-level χ (devinterp's scale = ours / realised δh), mean ± s.e. across chains; "
      "(z) = diff / √(se_ours² + se_devinterp²)")
  log("  columns: ours | " + " | ".join(labels))
  for p, probe in enumerate(probes):
    log(f"  probe {probe!r}")
    for c, name in enumerate(components):
      cells = [f"{theirs[k].chi_PxC[p, c]:+.3e} ± {theirs[k].chi_se_PxC[p, c]:.1e} "
               f"({comparisons[k]['chi_z'][p, c]:+6.2f})" for k in labels]
      log(f"    {name:6s} {ours.chi_PxC[p, c]:+.3e} ± {ours.chi_se_PxC[p, c]:.1e} | " + " | ".join(cells))
  log(f"  {_family_line(comparisons[judged]['chi_p'])} against {judged}: {flag(v['agree_chi'])}")
  log("\nLLC, mean ± s.e. (z); columns: ours | " + " | ".join(labels))
  for c, name in enumerate(components):
    cells = [f"{theirs[k].llc_C[c]:8.3f} ± {theirs[k].llc_se_C[c]:.3f} ({comparisons[k]['llc_z'][c]:+6.2f})"
             for k in labels]
    log(f"    {name:6s} {ours.llc_C[c]:8.3f} ± {ours.llc_se_C[c]:.3f} | " + " | ".join(cells))
  log(f"  LLC of full: {_family_line(comparisons[judged]['llc_p'][components.index('full')])} against {judged}: "
      f"{flag(v['agree_llc_full'])}")
  log("\nper-token χ on the same contexts, all probes: % of tokens with |z| > 3, median |z|, mean (ours − theirs), "
      "correlation")
  for k in labels:
    log(f"  against {k}")
    for name, s in comparisons[k]["per_token"].items():
      log(f"    {name:6s} {s['tokens']:5d} tokens  {100 * s['frac_abs_z_gt_3']:5.1f} %  {s['median_abs_z']:6.2f}  "
          f"{s['mean_diff']:+.2e}  {s['corr']:+.3f}")
  log(f"  each component ≤ {100 * TOKEN_FRACTION_MAX:g} % of tokens with |z| > 3 against {judged}: "
      f"{flag(v['agree_per_token'])}\n  ({PER_TOKEN_NULL_NOTE})")
  return v


def _family_line(p_values) -> str:
  p = np.asarray(p_values, np.float64).ravel()
  cells = f" / {p.size} cells (Bonferroni)" if p.size > 1 else ""
  return (f"p ≥ {FAMILY_ALPHA:g}{cells}, Student-t with Welch's d.o.f. (smallest p {np.min(p):.2g}"
          + (f", × {p.size} = {min(1.0, np.min(p) * p.size):.2g}" if p.size > 1 else "") + ")")


def save_results(job_dir: Path, ours: Side, theirs: dict, comparisons: dict, v: dict, meta: dict) -> None:
  """summary.json (every number printed) and ours_result.npz (our per-token tables, for later analysis)."""
  side = lambda s: {"seconds": s.seconds, "chi": s.chi_PxC.tolist(), "chi_se": s.chi_se_PxC.tolist(),  # noqa: E731
                    "llc": s.llc_C.tolist(), "llc_se": s.llc_se_C.tolist()}
  out = {**meta, "ours": side(ours), **{k: side(s) for k, s in theirs.items()},
         "comparisons": {k: {"chi_z": c["chi_z"].tolist(), "llc_z": c["llc_z"].tolist(), "per_token": c["per_token"]}
                         for k, c in comparisons.items()}, "verdicts": v}
  (job_dir / "summary.json").write_text(json.dumps(out, indent=2, default=float))
  np.savez(job_dir / "ours_result.npz", **{f"{k}/{p}": x for k, d in (("token_chi", ours.token_chi),
                                                                      ("token_se", ours.token_se),
                                                                      ("context_ids", ours.context_ids))
                                           for p, x in d.items()})


# ---- main ----------------------------------------------------------------------------------------------------

def parse_args(argv=None):
  from suscept_jax.models.config import ATTENTION_IMPLEMENTATIONS, PRECISIONS
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tiny", action="store_true", help="the 'tiny' model, 2 chains × 8 draws (for the tests)")
  parser.add_argument("--run_dir", help="a training run to take the weights from (default: random init)")
  parser.add_argument("--checkpoint", type=int, help="its step (default: the last)")
  parser.add_argument("--tokens", nargs="+", help="BASE.npy PROBE.npy ...: int contexts [N, ≥ n_ctx]")
  parser.add_argument("--data", nargs="+", help="BASE PROBE ...: dataset specs as the sweep takes them, tokenized "
                      f"with the run's tokenizer (default with --run_dir: {' '.join(DEFAULT_DATA)})")
  parser.add_argument("--tokenizer", help="the run's tokenizer.json (default: the one beside --run_dir)")
  parser.add_argument("--write_contexts", metavar="DIR", help="write the chosen contexts to DIR as base.npy and "
                      "<probe>.npy (what --tokens reads) and stop: for a machine without the corpora")
  parser.add_argument("--random_tokens", action="store_true", help="random contexts even with --run_dir (the "
                      "default without it): uniform base, probes 'repeats' and 'narrow'")
  for field in ("num_chains", "num_draws", "batch_size"):
    parser.add_argument(f"--{field}", type=int)
  parser.add_argument("--mala_every", type=int, help="ours: MALA acceptance every this many draws (default 10, "
                      "our default, one more gradient each; 0: none, the same work as devinterp's job)")
  parser.add_argument("--components", nargs="+", help="component specs (default: every head and 'full')")
  parser.add_argument("--work_dir", default="runs/devinterp_side_by_side")
  parser.add_argument("--skip_devinterp", action="store_true", help="our half only (no comparison)")
  parser.add_argument("--devinterp_device", default="cpu", help="torch device for devinterp (cpu, cuda)")
  parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                      help="our half's matmul precision (default float32, as devinterp computes; on an NVIDIA GPU "
                      "the README recommends bfloat16 with --attention=fused)")
  parser.add_argument("--attention", default="plain", choices=ATTENTION_IMPLEMENTATIONS,
                      help="our half's attention implementation")
  parser.add_argument("--devinterp_wheels", help="build devinterp's virtualenv offline from the wheels in this "
                      "folder, on the machine's own torch (when it is not built yet)")
  return parser.parse_args(argv)


def main(argv=None) -> dict | None:
  args = parse_args(argv)
  settings = TINY if args.tiny else Settings()
  settings = dataclasses.replace(settings, **{k: getattr(args, k) for k in ("num_chains", "num_draws", "batch_size",
                                                                           "mala_every") if getattr(args, k) is not None})
  cfg, params, source = load_weights(settings, args.run_dir, args.checkpoint)
  contexts, contexts_source = load_contexts(cfg, settings, args)
  if args.write_contexts:
    write_contexts(Path(args.write_contexts), contexts)
    print(f"contexts: {contexts_source} -> {args.write_contexts}")
    return None
  from suscept_jax.models import components as comps
  components = args.components or comps.default_components(cfg)
  if "full" not in components:
    raise ValueError("--components must include 'full' (both sides take ⟨ΔL⟩_full from its chains)")
  probes = [p for p in contexts if p != "base"]
  load = os.getloadavg()[0]
  print(f"weights: {source}\ncontexts: {contexts_source}; "
        f"base {contexts['base'].shape}, probes {probes} × {settings.probe_rows}\n"
        f"{len(components)} components × {settings.num_chains} chains × {settings.num_draws} draws × {len(probes)} "
        f"probes, batch {settings.batch_size}; ε {settings.step_size:g}, nβ {settings.nbeta:g}, "
        f"γ {settings.localization:g}; ours measures MALA acceptance "
        f"{f'every {settings.mala_every} draws' if settings.mala_every else 'never (as devinterp here)'}; "
        f"load average {load:.2f}")
  job_dir = Path(args.work_dir)
  write_job(job_dir, cfg, params, contexts, settings, components, args.devinterp_device)
  from suscept_jax.models.config import Numerics
  numerics = Numerics(attention=args.attention, precision=args.precision)
  ours = run_ours(cfg, params, contexts, settings, components, numerics)
  print(f"ours ({numerics.precision}, {numerics.attention} attention): dataset-level {ours.seconds['dataset']:.1f} s, "
        f"per-token {ours.seconds['per_token']:.1f} s "
        f"(compiled: {ours.seconds['dataset_compiled']:.1f} s, {ours.seconds['per_token_compiled']:.1f} s)")
  if args.skip_devinterp:
    return None
  venv = venv_dir()
  if not venv_ready(venv):
    build_venv_offline(venv, Path(args.devinterp_wheels)) if args.devinterp_wheels else build_venv(venv)
  run_devinterp(job_dir, venv)
  theirs = {variant: devinterp_side(job_dir, variant) for variant in VARIANTS}
  comparisons = {k: compare(ours, side, components, probes, settings.num_chains) for k, side in theirs.items()}
  v = report(ours, theirs, comparisons, components, probes)
  info = json.loads((job_dir / "devinterp_result.json").read_text())
  init, star = info["init_loss_mean"], info["base_loss_at_star"]
  print(f"\ndevinterp's φ anchor: ⟨init_loss⟩ {init:.4f} vs L_base(w*) {star:.4f} on its fixed base contexts "
        f"(c = {star - init:+.4f} nats)\ndevinterp ran on {info.get('device', 'cpu')} with torch "
        f"{info['versions']['torch']}; ours on {jax_device()}")
  meta = {"weights": source, "contexts": contexts_source, "settings": dataclasses.asdict(settings),
          "numerics": dataclasses.asdict(numerics),
          "components": components, "probes": probes, "load_average": [load, os.getloadavg()[0]], "devinterp": info}
  save_results(job_dir, ours, theirs, comparisons, v, meta)
  print(f"summary: {job_dir / 'summary.json'}")
  return v


def load_contexts(cfg, settings: Settings, args) -> tuple[dict, str]:
  """(contexts, where they come from): --tokens files, --data specs, random tokens, or (with --run_dir) the
  default datasets."""
  chosen = [flag for flag, given in (("--tokens", args.tokens), ("--data", args.data),
                                     ("--random_tokens", args.random_tokens)) if given]
  if len(chosen) > 1:
    raise ValueError(f"give at most one of --tokens, --data and --random_tokens (got {' and '.join(chosen)})")
  specs = args.data or (DEFAULT_DATA if args.run_dir and not (args.tokens or args.random_tokens) else None)
  if args.tokenizer and specs is None:  # it would tokenize nothing: say so rather than ignore it
    source = chosen[0] if chosen else "random tokens (no --run_dir)"
    raise ValueError(f"--tokenizer={args.tokenizer} tokenizes dataset specs (--data, or the default datasets "
                     f"with --run_dir), but here the contexts come from {source}")
  if args.tokens:
    return file_contexts(cfg, settings, args.tokens), "files " + " ".join(args.tokens)
  if specs is None:
    return random_contexts(cfg, settings), "random tokens"
  if not args.run_dir:
    raise ValueError("--data needs --run_dir (the run whose tokenizer tokenizes the data)")
  tokenizer = args.tokenizer or default_tokenizer(args.run_dir)
  return dataset_contexts(cfg, settings, specs, args.run_dir, tokenizer), f"datasets {' '.join(specs)} ({tokenizer})"


CONTEXTS_MANIFEST = "contexts.json"  # the files `write_contexts` wrote, in the order `--tokens` takes them


def write_contexts(folder: Path, contexts: dict) -> list:
  """base.npy, then one <probe>.npy per probe in `folder`, listed in its manifest; their paths in the order
  `--tokens` takes them. Files an earlier call listed go first; a folder holding other .npy files is refused
  (they are not ours to delete, and a reader of the folder could take them for contexts)."""
  folder.mkdir(parents=True, exist_ok=True)
  manifest = folder / CONTEXTS_MANIFEST
  for name in (json.loads(manifest.read_text()) if manifest.exists() else []):
    (folder / name).unlink(missing_ok=True)
  strangers = sorted(p.name for p in folder.glob("*.npy"))
  if strangers:
    raise ValueError(f"--write_contexts={folder} holds other .npy files ({', '.join(strangers)}): give an empty "
                     f"folder or one this script wrote")
  paths = []
  for name, tokens in contexts.items():
    paths.append(folder / f"{name}.npy")
    np.save(paths[-1], tokens)
  manifest.write_text(json.dumps([p.name for p in paths]))
  return paths


def written_contexts(folder: Path) -> list | None:
  """The paths `write_contexts` wrote in `folder`, base first, or None when it wrote none there."""
  manifest = Path(folder) / CONTEXTS_MANIFEST
  if not manifest.exists():
    return None
  return [Path(folder) / name for name in json.loads(manifest.read_text())]


def jax_device() -> str:
  import jax
  return f"{jax.default_backend()} ({jax.devices()[0].device_kind})"


if __name__ == "__main__":
  main()
