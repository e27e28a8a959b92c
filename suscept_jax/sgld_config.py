"""SGLD hyperparameters and schedule: plain data (no JAX import), so runners can show and check them fast.

Every field carries its help text in `metadata["help"]`; the runners build one flag per field from it.
"""
import dataclasses
import math
import numbers

SAMPLERS = ("sgld", "rmsprop_sgld")


def _field(default, help_text: str):
  return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class SGLDConfig:
  """SGLD hyperparameters (defaults: the paper's App. C.3) and sampling schedule."""

  step_size: float = _field(1e-3, "step size ε")
  localization: float = _field(300.0, "localization γ, the pull towards w*")
  nbeta: float = _field(30.0, "nβ, inverse temperature times dataset size")
  num_chains: int = _field(4, "chains per component (chain k reads data stream k)")
  num_draws: int = _field(200, "draws per chain (draw t after burn-in + t·steps_between_draws steps)")
  num_burnin: int = _field(0, "SGLD steps before the first draw")
  steps_between_draws: int = _field(1, "SGLD steps per draw (thinning)")
  sampler: str = _field("sgld", "SGLD variant: sgld or rmsprop_sgld (devinterp's; without a correction term for its "
                                "position-dependent preconditioner it samples exp(−U)/G, not the posterior: on a "
                                "Gaussian its LLC is 8 % high at ε = 1e-4, 30 % at 1e-5)")
  noise_level: float = _field(1.0, "noise scale σ; σ ≠ 1 samples a tempered posterior (the LLC scales by σ², as with "
                                   "devinterp's option); 0 turns SGLD into (localized) gradient descent")
  weight_decay: float = _field(0.0, "λ, devinterp's extra L2 term (0 in the paper)")
  rmsprop_alpha: float = _field(0.99, "RMSProp-SGLD: decay of the squared-gradient average")
  rmsprop_eps: float = _field(0.1, "RMSProp-SGLD: added to √V (devinterp's default)")
  mala_every: int = _field(10, "estimate MALA acceptance every this many draws (0 = never; each costs one more "
                                  "gradient, at the moved-to point, and leaves the chain as it is)")
  max_loss_increase: float = _field(100.0, "a chain whose φ = L(w_t) − L(w*) exceeds this (or is not finite) "
                                            "diverged; inf: only a non-finite φ")
  bounding_box: float | None = _field(None, "if set, clip every free coordinate to [w* − b, w* + b] (devinterp's)")

  def __post_init__(self):
    for f in dataclasses.fields(self):  # (a float where a count goes, or a string, would fail far from here)
      value, integral = getattr(self, f.name), f.type in (int, "int")
      if f.name == "sampler" or (value is None and "None" in str(f.type)):
        continue
      if isinstance(value, bool) or not isinstance(value, numbers.Integral if integral else numbers.Real):
        raise TypeError(f"SGLDConfig.{f.name}={value!r} must be {'an integer' if integral else 'a number'}")
    unbounded = ("max_loss_increase",)  # (inf: only a non-finite φ marks a divergence)
    for f in dataclasses.fields(self):  # NaN passes every comparison below as False, so it must be refused here
      value = getattr(self, f.name)
      if isinstance(value, numbers.Real) and not (math.isfinite(value) or (f.name in unbounded and value > 0)):
        raise ValueError(f"SGLDConfig.{f.name}={value} must be a finite number")
    if self.sampler not in SAMPLERS:
      raise ValueError(f"SGLDConfig.sampler={self.sampler!r}: expected one of {SAMPLERS}")
    for name in ("step_size", "nbeta", "max_loss_increase", "rmsprop_eps"):
      if not getattr(self, name) > 0:
        raise ValueError(f"SGLDConfig.{name}={getattr(self, name)} must be > 0")
    for name in ("localization", "noise_level", "weight_decay", "num_burnin", "mala_every"):
      if getattr(self, name) < 0:
        raise ValueError(f"SGLDConfig.{name}={getattr(self, name)} must be >= 0")
    for name in ("num_chains", "num_draws", "steps_between_draws"):
      if getattr(self, name) < 1:
        raise ValueError(f"SGLDConfig.{name}={getattr(self, name)} must be >= 1")
    if self.bounding_box is not None and not self.bounding_box > 0:
      raise ValueError(f"SGLDConfig.bounding_box={self.bounding_box} must be > 0 or None")
    if not 0 <= self.rmsprop_alpha < 1:
      raise ValueError(f"SGLDConfig.rmsprop_alpha={self.rmsprop_alpha} must be in [0, 1)")

  @property
  def num_steps(self) -> int:
    """SGLD updates a run performs: burn-in, then draw t is taken after burn-in + t·steps_between_draws
    updates (t = 1 … num_draws, never at w* itself), plus the block whose evaluation closes the run."""
    return self.num_burnin + (self.num_draws + 1) * self.steps_between_draws

  @property
  def measures_mala(self) -> bool:
    """Whether any move's MALA acceptance is measured (never with σ = 0, where there is no proposal density)."""
    return bool(self.mala_every > 0 and self.noise_level > 0)

  @property
  def num_mala_measurements(self) -> int:
    """Moves whose MALA acceptance a run measures (`mala_measured` over its blocks), one more gradient each."""
    return sum(bool(self.mala_measured(block)) for block in range(self.num_draws + 1))

  def mala_measured(self, block):
    """Whether block `block`'s first move has its MALA acceptance measured (block: an int or an integer array,
    numpy or jax: the same arithmetic serves the host and the compiled programs): draws 0, k, 2k, … (block b ≥ 1
    is draw b − 1, k = mala_every), never with σ = 0. A measurement takes one more gradient, at the moved-to point
    on the move's own batch, which the chain never uses: the chain is the one mala_every=0 samples.

    (For a day, 2026-12-05, the next step re-read the move's batch instead, so that the measurement cost no
    gradient: that gave two moves one batch's noise, which widened the chain (a quadratic's LLC 15–20 % high at
    mala_every=1, batch 8), and evaluated the next draw on the batch that had just moved the chain (φ low).)
    """
    return (block >= 1) & ((block - 1) % max(self.mala_every, 1) == 0) & self.measures_mala
