"""Choosing SGLD's step size (and nβ, γ) from the chains themselves, as one vectorized program.

devinterp's users call ε and nβ "more art than science". Here every setting of a grid (ε × nβ × γ) runs
for every chosen component as extra entries of one compiled sampler (ε, nβ, γ are data, see sgld.Hyper),
all reading the same data streams, and each setting is judged by four stated tests:
  - MALA acceptance ≥ `min_acceptance` (0.9 by default) for every component: the Langevin step is small
    enough that a Metropolis correction would rarely reject it (Lau et al. use ≈ 0.9 as healthy);
  - the LLC trace is flat in its second half, for every component: over chains, the mean change of
    nβ·φ from the third to the fourth quarter of the draws is below 5 % of the LLC, or within the Student-t
    multiplier (chains − 1 degrees of freedom) that a stationary setting exceeds in any of its C components
    with probability FLAT_ALPHA (Bonferroni: two-sided level 1 − FLAT_ALPHA / C per component), so the chance
    of rejecting a good setting does not grow with the components judged (a trace still rising there means
    the draws are dominated by the start at w*). A fixed 2 standard errors per component rejected the
    stationary ε of the test problem in 2 of 12 seeds with 2 components and 8 chains; with the paper's 17
    components and 4 chains (t with 3 degrees of freedom exceeds 2 with probability 0.14) it could reject
    a good setting 9 times in 10 (1 − 0.86¹⁷) where the 5 % clause does not hold;
  - the chains agree and the whole trace looks stationary: rank-normalised split-R̂ of nβ·φ ≤ 1.1 (too
    small a step often fails here: chains still climbing from w*, each its own way, while the quarter test
    alone has little power with few chains);
  - the sweep's own non-stationary-start test (`health.start_flags`): chains climbing from w* together can
    pass both tests above (ε = 1e-5 on a 5-parameter regression, 8 chains × 300 draws: R̂ 1.09, the quarter
    change within its error; LLC 1.58 ± 0.22 against 2.5), and the sweep would flag the setting recommended;
and no chain diverged. The recommendation is the largest passing ε (larger steps mix faster). A trace that
climbs slowly enough passes all four (an LLC low by a fifth in 1 of 4 seeds of the same problem at ε = 3e-5):
the tests judge the run as long as it is, and a longer one (or a burn-in) is the remedy.

Shape letters: C components (the grid runs each once per setting), K chains, T draws.
"""
import dataclasses
import itertools
import numbers
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from suscept_jax import diagnostics, estimators, health, masks, sampler, sgld, validation

FLAT_ALPHA = 0.05  # chance that a stationary setting fails the flatness test in any of its components
FLAT_RELATIVE = 0.05  # … or within this fraction of the LLC
RHAT_MAX = 1.1  # rank-normalised split-R̂ of the LLC trace above this fails


@dataclasses.dataclass(frozen=True)
class Setting:
  step_size: float
  nbeta: float
  localization: float

  @property
  def label(self) -> str:
    return f"ε={self.step_size:g}, nβ={self.nbeta:g}, γ={self.localization:g}"


@dataclasses.dataclass
class SettingResult:
  """One (setting, component) cell of the grid."""

  setting: Setting
  component: str
  llc: float  # nβ·⟨φ⟩ over non-diverged chains
  llc_stderr: float
  mala_acceptance: float  # mean over measured moves of non-diverged chains
  num_diverged: int
  second_half_change: float  # mean over chains of (4th-quarter − 3rd-quarter mean of nβ·φ)
  second_half_change_stderr: float
  flat_z: float  # the change counts as flat within this many standard errors (see FLAT_ALPHA)
  r_hat: float  # rank-normalised split-R̂ of the LLC trace over non-diverged chains
  llc_trace: np.ndarray  # [K, T] nβ·φ_t per chain

  @property
  def flat(self) -> bool:
    change = abs(self.second_half_change)
    return bool(np.isfinite(change) and (change <= self.flat_z * self.second_half_change_stderr
                                         or change <= FLAT_RELATIVE * abs(self.llc)))

  @property
  def start(self) -> list[str]:
    """The sweep's non-stationary-start test on the usable chains (`health.start_flags`): a setting the sweep
    would flag is not recommended (ε 1e-5 passed the other tests with an LLC of 1.58 ± 0.22 against 2.5)."""
    usable = self.llc_trace[np.all(np.isfinite(self.llc_trace), axis=1)]
    return health.start_flags(usable)

  def passes(self, min_acceptance: float) -> bool:
    return (self.num_diverged == 0 and self.mala_acceptance >= min_acceptance and self.flat
            and self.r_hat <= RHAT_MAX and not self.start)

  def reasons(self, min_acceptance: float) -> list[str]:
    """Why this cell fails (empty if it passes)."""
    out = []
    if self.num_diverged:
      out.append(f"{self.num_diverged} chain(s) diverged")
      if not np.isfinite(self.llc):
        return out
    if not self.mala_acceptance >= min_acceptance:
      out.append(f"MALA acceptance {health.beyond(self.mala_acceptance, min_acceptance)} < {min_acceptance}")
    if not self.flat:
      out.append(f"LLC still moving in the second half ({self.second_half_change:+.3g} ± "
                 f"{self.second_half_change_stderr:.2g} from the 3rd to the 4th quarter; flat: within "
                 f"{self.flat_z:.3g} s.e. or {FLAT_RELATIVE:.0%} of the LLC)")
    if not self.r_hat <= RHAT_MAX:
      out.append(f"R̂ {health.beyond(self.r_hat, RHAT_MAX)} > {RHAT_MAX} (chains disagree or are not yet stationary)")
    return out + self.start

  def summary(self) -> dict:
    return {"step_size": self.setting.step_size, "nbeta": self.setting.nbeta,
            "localization": self.setting.localization, "component": self.component, "llc": self.llc,
            "llc_stderr": self.llc_stderr, "mala_acceptance": self.mala_acceptance,
            "num_diverged": self.num_diverged, "second_half_change": self.second_half_change,
            "second_half_change_stderr": self.second_half_change_stderr, "flat_z": self.flat_z, "flat": self.flat,
            "r_hat": self.r_hat, "stationary_start": not self.start}


@dataclasses.dataclass
class CalibrationResult:
  cells: list  # SettingResult for every setting × component
  components: list
  settings: list
  min_acceptance: float
  seconds: float

  def recommend(self, nbeta: float | None = None, localization: float | None = None) -> Setting | None:
    """The largest ε that passes for every component at the given (nβ, γ) (default: the grid's first)."""
    nbeta = self.settings[0].nbeta if nbeta is None else nbeta
    localization = self.settings[0].localization if localization is None else localization
    passing = [s for s in self.settings if s.nbeta == nbeta and s.localization == localization
               and all(c.passes(self.min_acceptance) for c in self.cells if c.setting == s)]
    return max(passing, key=lambda s: s.step_size) if passing else None

  def recommendations(self) -> list:
    """(nβ, γ, `recommend`(nβ, γ)) for every (nβ, γ) of the grid, in its order: nβ and γ change the posterior
    itself (the user chooses them), ε only how it is sampled. With several, the first's alone was reported."""
    pairs = dict.fromkeys((s.nbeta, s.localization) for s in self.settings)
    return [(nbeta, localization, self.recommend(nbeta, localization)) for nbeta, localization in pairs]

  def explain(self) -> list[str]:
    """One line per setting: passes, or why not."""
    lines = []
    for s in self.settings:
      why = [f"{c.component}: {'; '.join(c.reasons(self.min_acceptance))}" for c in self.cells
             if c.setting == s and not c.passes(self.min_acceptance)]
      lines.append(f"{s.label}: " + ("passes" if not why else " | ".join(why)))
    return lines

  def to_json(self) -> dict:
    best = self.recommend()
    by_pair = [{"nbeta": b, "localization": g, "recommended": None if s is None else dataclasses.asdict(s)}
               for b, g, s in self.recommendations()]
    return {"recommended": None if best is None else dataclasses.asdict(best),  # (the grid's first nβ and γ)
            "recommended_by_nbeta_and_localization": by_pair,
            "criteria": {"min_acceptance": self.min_acceptance, "flat_alpha": FLAT_ALPHA,
                         "flat_relative": FLAT_RELATIVE, "r_hat_max": RHAT_MAX},
            "explanation": self.explain(), "cells": [c.summary() for c in self.cells], "seconds": self.seconds}


def flat_threshold(num_chains: int, num_components: int) -> float:
  """Standard errors within which a setting's second-half change counts as flat: the two-sided Student-t
  multiplier (chains − 1 degrees of freedom) at level 1 − FLAT_ALPHA / components (Bonferroni), so that a
  stationary setting fails in any of its components with probability ≤ FLAT_ALPHA."""
  return float(estimators.t_quantile(num_chains, 1 - FLAT_ALPHA / max(1, num_components)))


def _second_half_change(trace_KxT):
  """(mean, stderr) over chains of (mean of the 4th quarter − mean of the 3rd quarter)."""
  t = trace_KxT.shape[1]
  q3, q4 = trace_KxT[:, t // 2:3 * t // 4], trace_KxT[:, 3 * t // 4:]
  if q3.shape[1] == 0 or q4.shape[1] == 0:
    return float("nan"), float("nan")
  mean, se = estimators.mean_and_stderr(q4.mean(axis=1) - q3.mean(axis=1), np.ones(len(trace_KxT), bool))
  return float(mean), float(se)


def calibrate(loss_fn, params, data, components: Mapping[str, Any], *, step_sizes, nbetas=None, localizations=None,
              config: sgld.SGLDConfig | None = None, batch_size: int = 64, min_acceptance: float = 0.9,
              seed: int = 0, checkpoint_id: int = 0, microbatch_size: int | None = None, mesh=None,
              progress=True, data_name: str = "data") -> CalibrationResult:
  """Run every (ε, nβ, γ) of the grid for every component in one program and judge each setting.

  `config` gives everything else (chains, draws, sampler, MALA frequency; its ε, nβ, γ are the defaults of
  the grid axes that are not given).
  """
  config = validation.sgld_config_or(config, sgld.SGLDConfig())
  validation.check_seed(seed)
  if not config.mala_every:
    raise ValueError("calibration judges settings by MALA acceptance: config.mala_every must be > 0")
  if config.num_draws < 8:
    raise ValueError(f"calibration needs at least 8 draws to test flatness; got num_draws={config.num_draws}")
  if not 0 <= min_acceptance <= 1:  # (NaN too: no acceptance passes it, so no setting would ever be recommended)
    raise ValueError(f"min_acceptance={min_acceptance}: expected an acceptance probability in [0, 1]")
  axes = {"step_sizes": step_sizes, "nbetas": [config.nbeta] if nbetas is None else nbetas,
          "localizations": [config.localization] if localizations is None else localizations}
  for name, values in axes.items():  # (an empty nbetas used to fall back to the config's without a word)
    kind = "non-negative" if name == "localizations" else "positive"
    wrong = ValueError(f"calibration grid {name}={values!r}: expected a non-empty list of {kind} numbers")
    if np.ndim(values) != 1 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
      raise wrong
    values = [float(v) for v in values]
    if not values or any(not np.isfinite(v) or v < 0 or (name != "localizations" and v == 0) for v in values):
      raise wrong
  settings = [Setting(float(e), float(b), float(g))
              for b, g, e in itertools.product(axes["nbetas"], axes["localizations"], axes["step_sizes"])]
  validation.check_batching(batch_size, microbatch_size)
  validation.check_params(params)
  validation.check_dataset(data_name, data, batch_size)
  names, masks_C = masks.stack_masks(components, params)
  validation.check_loss_fn(loss_fn, params, data)
  validation.preflight(loss_fn, params, {data_name: data}, batch_size=batch_size, num_streams=config.num_chains,
                       seed=seed, checkpoint_id=checkpoint_id, config=config, microbatch_size=microbatch_size)

  # Entries: settings × components, each with its own ε, nβ, γ; the grid shares the data streams.
  grid_names = [f"{name} | {s.label}" for s in settings for name in names]
  stacked = jax.tree.map(lambda m: np.concatenate([m] * len(settings)), masks_C)
  hyper = sgld.Hyper(*(np.repeat(np.array([getattr(s, f) for s in settings], np.float32), len(names))
                       for f in ("step_size", "nbeta", "localization")))
  out = sampler.run(loss_fn, params, grid_names, stacked, data, {}, config=config, batch_size=batch_size,
                    delta_h=None, seed=seed, checkpoint_id=checkpoint_id, microbatch_size=microbatch_size,
                    mesh=mesh, hyper_C=hyper, progress=progress, label="calibration", base_name=data_name)
  K = config.num_chains
  cells = []
  for i, (setting, name) in enumerate((s, n) for s in settings for n in names):
    sl = slice(i * K, (i + 1) * K)
    ok = ~out.diverged[sl]
    llc_KxT = setting.nbeta * out.phi_trace[:, sl].T
    llc, llc_err = estimators.mean_and_stderr(setting.nbeta * out.moments.mean_x[sl], ok)
    mala = out.mala[:, sl][:, ok]
    mala = mala[np.isfinite(mala)]
    change, change_err = _second_half_change(llc_KxT[ok]) if ok.sum() >= 2 else (float("nan"), float("nan"))
    cells.append(SettingResult(setting=setting, component=name, llc=float(llc), llc_stderr=float(llc_err),
                               mala_acceptance=float(mala.mean()) if mala.size else float("nan"),
                               num_diverged=int((~ok).sum()), second_half_change=change,
                               second_half_change_stderr=change_err,
                               flat_z=flat_threshold(int(ok.sum()), len(names)),
                               r_hat=diagnostics.rhat(llc_KxT[ok]),
                               llc_trace=llc_KxT))
  return CalibrationResult(cells=cells, components=names, settings=settings, min_acceptance=min_acceptance,
                           seconds=out.seconds)
