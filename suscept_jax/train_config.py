"""Optimisation settings of a training run: plain data (no JAX import), so runners can show them fast."""
import dataclasses
import math

# App. C.1: the checkpoint steps of the paper's 50k-step run.
PAPER_CHECKPOINT_STEPS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1500, 2000, 3000, 4000, 5000,
                          6000, 7000, 8000, 9000, 10000, 12500, 15000, 17500, 20000, 25000, 30000, 40000, 49900)
PAPER_TOTAL_STEPS = 50_000


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation settings (defaults: the paper's AdamW run)."""

  steps: int = PAPER_TOTAL_STEPS
  batch_size: int = 100
  learning_rate: float = 1e-3
  weight_decay: float = 0.05
  b1: float = 0.9
  b2: float = 0.999
  grad_clip: float = 1.0
  seed: int = 0
  eval_every: int = 500  # steps between test-loss evaluations
  eval_contexts: int = 256  # held-out contexts (taken from the end of the data) for the test loss
  resume_every: int = 200  # steps between resume states (also saved at every scheduled checkpoint)
  checkpoint_steps: tuple = ()  # empty: the paper's schedule scaled to `steps`

  def __post_init__(self):
    for name in ("learning_rate", "weight_decay", "b1", "b2", "grad_clip"):
      if not math.isfinite(getattr(self, name)):
        raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be a finite number")
    for name in ("steps", "batch_size", "eval_every", "resume_every"):
      if not getattr(self, name) >= 1:
        raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be >= 1")
    for name in ("learning_rate", "grad_clip"):
      if not getattr(self, name) > 0:
        raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be > 0")
    if self.weight_decay < 0 or not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
      raise ValueError(f"TrainConfig: weight_decay={self.weight_decay} must be >= 0 and b1={self.b1}, "
                       f"b2={self.b2} in [0, 1)")
    bad = [s for s in self.checkpoint_steps if not 0 <= s <= self.steps]
    if bad:
      raise ValueError(f"TrainConfig.checkpoint_steps {bad} lie outside [0, steps={self.steps}]")

  def schedule(self) -> list[int]:
    """The steps whose params are kept: `checkpoint_steps` (else the paper's list scaled), and always the last
    (without it the trained model was kept only in the resume state, which no runner reads)."""
    if not self.checkpoint_steps:
      return scaled_paper_schedule(self.steps)
    return sorted(set(self.checkpoint_steps) | {self.steps})


def scaled_paper_schedule(total_steps: int) -> list[int]:
  """The paper's checkpoint list S scaled to a run of `total_steps` (deduplicated, last step included)."""
  scale = total_steps / PAPER_TOTAL_STEPS
  steps = {min(total_steps, round(s * scale)) for s in PAPER_CHECKPOINT_STEPS}
  return sorted(steps | {total_steps})
