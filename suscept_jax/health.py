"""When not to trust a number: the stated tests behind each result's `status` and warnings.

Every χ and LLC cell gets a status: "ok", or the failed tests joined by "; ". Thresholds (README, "Status"):
  diverged      any chain excluded for divergence (its numbers are not averaged in)
  error bar     fewer than 2 usable chains: no standard error can be given
  R̂             rank-normalised split-R̂ of φ (component) or of φ·ΔL (probe cell) above R_HAT_MAX; for φ also
                when it cannot be computed (too few draws, or φ constant). A constant φ·ΔL (probe = base:
                ΔL ≡ 0) is not flagged: its χ is exact
  ESS           bulk ESS of φ, or of φ·ΔL, below MIN_ESS effective draws (undefined φ: as for R̂)
  MALA          mean MALA acceptance below MIN_MALA (healthy ≈ 0.9; the step is far too large)
  start         non-stationary start: ⟨φ⟩ over the first START_FRACTION of the draws lies below the rest by
                more than START_Z standard errors (across chains) and by enough to move the run's ⟨φ⟩ by more
                than START_SHIFT (the draws are dominated by the climb away from w*: run longer or burn in)
  negative LLC  the LLC estimate is below 0: w* is not a local minimum of the loss (e.g. an untrained model)
  resolution    ⟨φ⟩ spans fewer than MIN_PHI_STEPS steps of the losses' float type at L_B(w*): φ is a small
                difference of two large rounded numbers, and its rounding error (up to ≈ 1/steps of ⟨φ⟩, and
                biased) no error bar holds (a component that barely moves the loss, e.g. a head at
                initialisation; a loss summed rather than averaged, or offset by a constant)
  χ undefined   the cell's χ is NaN although its component's chains are usable: every chain of "full"
                diverged (eq. 41 needs ⟨ΔL⟩_full), or no chain observed the probe at 2 draws or more
  δh            the realised probe fraction is off δh by more than DELTA_H_TOLERANCE (relative)
  dropped       some draws of this probe were dropped for a non-finite probe loss (per token: some tokens')

Shape letters: K chains, T draws.
"""
import numpy as np

from suscept_jax import estimators

R_HAT_MAX = 1.1
MIN_ESS = 50.0
MIN_MALA = 0.2
START_FRACTION, START_Z, START_SHIFT = 0.1, 2.0, 0.05
DELTA_H_TOLERANCE = 0.05
MIN_PHI_STEPS = 100.0
FULL_DIVERGED = "χ undefined: every chain of 'full' diverged (eq. 41 needs ⟨ΔL⟩_full)"
UNDEFINED = "{} undefined (too few draws: R̂ needs 4, ESS 8; or φ never moved)"


class SusceptibilityWarning(UserWarning):
  """A number the estimators return should not be trusted as is (filter with `warnings.simplefilter`)."""


def beyond(value: float, limit: float, decimals: int = 2) -> str:
  """`value` with as many decimals (2 at least) as it takes not to read as `limit` ("R̂ 1.104 > 1.1", where two
  decimals said "R̂ 1.10 > 1.1")."""
  for d in range(decimals, 8):
    if float(f"{value:.{d}f}") != limit:
      return f"{value:.{d}f}"
  return repr(float(value))


def start_shift(phi_KxT) -> tuple[float, float, float]:
  """(difference rest − early of ⟨φ⟩ averaged over chains, its stderr, shift of the run's ⟨φ⟩ it causes,
  relative to the rest's mean); NaN when there are too few draws or chains."""
  phi = np.asarray(phi_KxT, np.float64)
  phi = phi[np.all(np.isfinite(phi), axis=1)]
  k, t = phi.shape
  early = max(2, int(round(START_FRACTION * t)))
  if k < 2 or t < 2 * early:
    return float("nan"), float("nan"), float("nan")
  diff, se = estimators.mean_and_stderr(phi[:, early:].mean(1) - phi[:, :early].mean(1), np.ones(k, bool))
  rest = phi[:, early:].mean()
  return float(diff), float(se), float(diff * early / t / abs(rest)) if rest else float("inf")


def start_flags(phi_KxT) -> list[str]:
  """The non-stationary-start test on the usable chains' φ (or nβ·φ) traces: failed, its line; passed, []."""
  diff, se, shift = start_shift(phi_KxT)
  if diff > START_Z * se and shift > START_SHIFT:
    return [f"non-stationary start (first {START_FRACTION:.0%} of draws below the rest; moves ⟨φ⟩ by {shift:.0%})"]
  return []


def phi_steps(mean_phi: float, loss_star) -> float:
  """How many steps of the losses' float type at L_B(w*) ⟨φ⟩ spans: |⟨φ⟩| / the spacing of that type at the
  largest |L_B(w*)| of the run (`loss_star`, in the run's statistics dtype); inf without finite L_B(w*)."""
  star = np.asarray(loss_star)
  finite = np.abs(star[np.isfinite(star)])
  if not finite.size or not np.issubdtype(star.dtype, np.floating):
    return float("inf")
  return float(abs(mean_phi) / np.spacing(star.dtype.type(finite.max())))


def component_flags(diag, llc: float, num_chains: int, steps_of_phi: float = float("inf")) -> list[str]:
  """Failed tests that concern a whole component (every probe row of it). steps_of_phi: `phi_steps`."""
  flags = []
  bad = len(diag.diverged_chains)
  if bad:
    flags.append("all chains diverged" if bad == num_chains else f"{bad}/{num_chains} chains diverged")
    if bad == num_chains:
      return flags
  if num_chains - bad < 2:
    flags.append(f"no error bar: {num_chains - bad} usable chain (needs 2 or more)")
  # (written NaN-safe: R̂ and ESS are NaN when they cannot be computed, and that must not read as a pass)
  if not diag.r_hat <= R_HAT_MAX:
    flags.append(f"R̂ {beyond(diag.r_hat, R_HAT_MAX)} > {R_HAT_MAX}" if np.isfinite(diag.r_hat)
                 else UNDEFINED.format("R̂"))
  if not diag.ess_bulk >= MIN_ESS:
    flags.append(f"ESS {diag.ess_bulk:.3g} < {MIN_ESS:.0f}" if np.isfinite(diag.ess_bulk) else UNDEFINED.format("ESS"))
  if diag.mala_acceptance < MIN_MALA:  # (NaN: no MALA moves were measured, nothing to test)
    flags.append(f"MALA acceptance {diag.mala_acceptance:.2g} < {MIN_MALA}")
  flags += start_flags(np.delete(diag.phi_trace, diag.diverged_chains, axis=0))  # (as R̂ and ESS)
  if llc < 0:
    flags.append(f"negative LLC ({llc:.3g}): w* is not a local minimum")
  if steps_of_phi < MIN_PHI_STEPS:
    flags.append(f"resolution: ⟨φ⟩ spans {steps_of_phi:.3g} float steps of L(w*) (< {MIN_PHI_STEPS:.0f}): up to "
                 f"≈ {1 / max(steps_of_phi, 1e-9):.0%} of it may be rounding (a component that barely moves the loss, "
                 f"or a large loss: an offset, a sum; float64 under jax_enable_x64 resolves it)")
  return flags


def probe_flags(r_hat_chi: float, ess_chi: float, dropped: int, realised_delta_h: float, delta_h: float) -> list[str]:
  """Failed tests that concern one probe × component cell."""
  flags = []
  if r_hat_chi > R_HAT_MAX:
    flags.append(f"R̂(φ·ΔL) {beyond(r_hat_chi, R_HAT_MAX)} > {R_HAT_MAX}")
  if ess_chi < MIN_ESS:
    flags.append(f"ESS(φ·ΔL) {ess_chi:.3g} < {MIN_ESS:.0f}")
  if dropped:
    flags.append(f"{dropped} probe draws dropped (non-finite loss)")
  if abs(realised_delta_h - delta_h) > DELTA_H_TOLERANCE * delta_h:
    flags.append(f"realised δh {realised_delta_h:.3g} vs {delta_h:g}")
  return flags


def undefined_chi_flags(chi: float, component_diverged: bool, full_diverged: bool) -> list[str]:
  """The cell's χ is NaN while its own component's chains are usable (a diverged component says so already)."""
  if np.isfinite(chi) or component_diverged:
    return []
  return [FULL_DIVERGED if full_diverged else "χ undefined: no chain observed this probe at 2 draws or more"]


def token_flags(short_tokens: int, undefined_tokens: int = 0) -> list[str]:
  """Failed tests that concern a component's per-token χ: tokens whose loss was not finite at some draws of
  some chain (their χ comes from the draws and chains that observed them), and tokens with no χ otherwise (no
  chain observed them at 2 draws or more, e.g. a run of one draw)."""
  return ([f"{short_tokens} token(s) short of draws (non-finite token loss)"] if short_tokens else []) + (
      [f"χ undefined for {undefined_tokens} token(s): no chain observed them at 2 draws or more"]
      if undefined_tokens else [])


def left_out_flags(queries: int, samples: int) -> list[str]:
  """Bayesian influence: query and sample token losses not finite at some draw of some chain (each left out of
  those chains, with every pair it is in)."""
  if not queries and not samples:
    return []
  return [f"{queries} query and {samples} sample token loss(es) not finite at some draws (left out of those "
          "chains)"]


def coarse_loss_flags(queries: int, samples: int) -> list[str]:
  """Bayesian influence: query and sample token losses whose posterior spread is under MIN_PHI_STEPS float steps
  of their value at w* (their covariances and correlations are partly rounding: a correlation 0.45 ± 0.05 against
  an exact 0.998 at 0.4 steps, 0.87 at 7)."""
  if not queries and not samples:
    return []
  return [f"resolution: {queries} query and {samples} sample token loss(es) move under {MIN_PHI_STEPS:.0f} float "
          "steps of their size (their covariances are partly rounding)"]


def status(flags) -> str:
  return "; ".join(flags) if flags else "ok"
