"""Named settings for the runners: `demo` (a 2-core CPU, minutes) and `paper` (Baker et al., App. C)."""
import dataclasses
import os

from suscept_jax.sgld_config import SGLDConfig
from suscept_jax.train_config import PAPER_CHECKPOINT_STEPS, TrainConfig

# The paper's probe datasets (App. A, Table 2) on the Hugging Face hub, and its base distribution (App. C.1).
PAPER_PROBES = tuple(f"hf:timaeus/pile-{name}" for name in (
    "github", "pile-cc", "pubmed_abstracts", "uspto_backgrounds", "pubmed_central", "stackexchange",
    "wikipedia_en", "freelaw", "arxiv", "dm_mathematics", "enron_emails", "hackernews", "nih_exporter"))
PAPER_BASE = "hf:timaeus/dsir-pile-1m-2"
# Offline stand-ins for the Pile subsets (suscept_jax.data.corpora), all built by the demo.
# Plus pile contexts that each carry a repeated span (suscept_jax.data.repeats): where induction matters.
DEMO_PROBES = ("code", "legal", "wiki", "literature", "prose", "techdocs", "dictionary", "math", "repeats:pile")


@dataclasses.dataclass(frozen=True)
class Preset:
  """Everything a sweep (and, for the demo, its training run) needs besides the output directory."""

  model: str  # named model config (suscept_jax.models.config.CONFIGS)
  run_dir: str | None  # training run with checkpoints; None: must be given
  tokenizer: str | None  # tokenizer.json; None: the run's own (run_dir/tokenizer.json)
  vocab_size: int  # vocab of a tokenizer trained when missing
  train_data: str  # dataset spec the model is trained on
  train: TrainConfig
  base: str  # dataset spec of q (the base distribution)
  probes: tuple  # dataset specs of the probes q'
  components: tuple | None  # None: every head + "full"
  checkpoint_steps: tuple | None  # None: every saved checkpoint
  sgld: SGLDConfig
  batch_size: int
  delta_h: float
  microbatch_size: int | str | None  # None: whole batches; "auto": the largest that fits
  max_contexts: int | None  # per sweep dataset (base and probes), after tokenization; training uses all
  output_dir: str
  sgld_note: str = ""  # where the SGLD settings come from (printed by the sweep; `sgld_note_for`)
  trains_itself: bool = False  # the runners build corpora, tokenizer and model in run_dir when missing
  train_repeat_fraction: float = 0.0  # share of training contexts given a repeated span (data/repeats.py)
  per_token_sgld: SGLDConfig = SGLDConfig(num_draws=100)  # per-token runs (paper App. C.3: 100 draws)
  per_token_batch_size: int = 16  # paper: 16
  per_token_contexts: int = 160  # contexts per dataset, chosen by a seeded shuffle (paper: 160)
  per_token_output_dir: str = "runs/per_token"
  # One unit of work per dataset (a kill loses at most one dataset; each unit re-runs the same chains, so
  # this costs sampling time where the SGLD step, not the observation, dominates: off for the demo).
  per_token_unit_per_dataset: bool = True


PRESETS = {
    "demo": Preset(
        model="demo", run_dir="runs/demo/train", tokenizer="runs/demo/tokenizer.json", vocab_size=512,
        # 75 % of the training contexts carry a repeated span and lr is 5e-3: a previous-token head and an
        # induction head form between steps 1300 and 1600 (BUILD_NOTES.md); the checkpoints bracket that.
        train_data="pile", train_repeat_fraction=0.75,
        train=TrainConfig(steps=3000, batch_size=32, learning_rate=5e-3, eval_every=500, resume_every=500,
                          checkpoint_steps=(0, 400, 1000, 1300, 1600, 2000, 3000)),
        base="pile", probes=DEMO_PROBES, components=None, checkpoint_steps=(0, 1000, 1300, 1600, 3000),
        sgld=SGLDConfig(step_size=1e-3, localization=300.0, nbeta=30.0, num_chains=4, num_draws=100),
        batch_size=20, delta_h=0.1, microbatch_size=None, max_contexts=20_000, output_dir="runs/demo/sweep",
        trains_itself=True, per_token_contexts=4, per_token_output_dir="runs/demo/per_token",
        per_token_unit_per_dataset=False,
        sgld_note=("ε = 1e-3 is the paper's, not a calibrated value: `python -m experiments.calibrate` finds no ε "
                   "for this model whose MALA acceptance is ≥ 0.9 and whose LLC trace settles within 100 draws "
                   "(the full model's acceptance 0.25–0.47 for ε ≥ 1e-4, where nβ·λ_max(Hessian) ≈ 2800 makes the "
                   "step stiff, 0.63 at 3e-5; ε ≤ 1e-5 accepts but has not left w* after 100 draws). See "
                   "BUILD_NOTES.md.")),
    "paper": Preset(
        model="tetrahedron_3m", run_dir=None, tokenizer=None, vocab_size=5000, train_data=PAPER_BASE,
        train=TrainConfig(), base=PAPER_BASE, probes=PAPER_PROBES, components=None,
        checkpoint_steps=PAPER_CHECKPOINT_STEPS,  # S of App. C.1; the per-token run uses the last, 49900
        sgld=SGLDConfig(), batch_size=64, delta_h=0.1, max_contexts=100_000,
        # 17 entries per chip at micro-batch 8 need ≈ 37 GiB (XLA's analysis), more than a v4 chip's 32: sized
        # per device from XLA's memory analysis instead (batched.MICROBATCH_AUTO).
        microbatch_size="auto",
        output_dir="runs/paper/sweep", per_token_output_dir="runs/paper/per_token",
        sgld_note="the paper's settings (App. C.3); check them on your model with `python -m experiments.calibrate`"),
}


def get_preset(name: str) -> Preset:
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name]


def sgld_note_for(preset: Preset, run_dir) -> str:
  """The preset's note on its SGLD settings where it speaks of the run it names (the demo's note is about the
  demo model), else a line saying they are the preset's, to be checked on this model."""
  own_run = preset.run_dir is not None and run_dir is not None and (
      os.path.realpath(preset.run_dir) == os.path.realpath(run_dir))
  if own_run or preset.run_dir is None:
    return preset.sgld_note
  return "the preset's settings, not calibrated for this model: check them with `python -m experiments.calibrate`"
