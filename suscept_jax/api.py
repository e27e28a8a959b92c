"""Public kernel-level API: `estimate_susceptibilities` and `estimate_llc` (see README for the contract).

Inputs are validated (suscept_jax.validation) before anything is compiled, so bad input gets an error that
names it.

Shape letters: C components, K chains, E entries (component-major (component, chain) pairs), D probes, T draws.
"""
import dataclasses
import math
import os
import sys
import warnings as warnings_lib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from suscept_jax import batched, diagnostics, estimators, health, masks, mixing, reprs, sampler, sgld, validation

MAX_TRACE_POINTS = 1000


# ---- results -----------------------------------------------------------------------------------------------

def _thin(trace_KxT):
  step = max(1, math.ceil(trace_KxT.shape[-1] / MAX_TRACE_POINTS))
  return trace_KxT[..., ::step]


def _finite_draws(trace_KxT):
  """Drop the draws (columns) where some chain has no value (a dropped probe contribution)."""
  return trace_KxT[:, np.all(np.isfinite(trace_KxT), axis=0)]


def _component_diagnostics(out: sampler.SamplerOutput, component: int, num_chains: int):
  sl = slice(component * num_chains, (component + 1) * num_chains)
  loss_KxT, phi_KxT = out.loss_trace[:, sl].T, out.phi_trace[:, sl].T
  diverged = out.diverged[sl]
  ok = ~diverged
  mala = out.mala[:, sl][:, ok]
  mala = mala[np.isfinite(mala)]
  phi_delta_DxKxT = (out.phi_trace[:, sl][:, ok, None] * out.delta_loss_trace[:, sl][:, ok, :]).transpose(2, 1, 0)
  return diagnostics.ComponentDiagnostics(
      loss_trace=_thin(loss_KxT), phi_trace=_thin(phi_KxT),
      r_hat=diagnostics.rhat(phi_KxT[ok]), ess_bulk=diagnostics.ess_bulk(phi_KxT[ok]),
      ess_tail=diagnostics.ess_tail(phi_KxT[ok]),
      r_hat_chi=np.array([diagnostics.rhat(_finite_draws(t)) for t in phi_delta_DxKxT]),
      ess_bulk_chi=np.array([diagnostics.ess_bulk(_finite_draws(t)) for t in phi_delta_DxKxT]),
      mala_acceptance=float(mala.mean()) if mala.size else float("nan"),
      frac_phi_negative=float((phi_KxT[ok] < 0).mean()) if ok.any() else float("nan"),
      diverged_chains=[int(k) for k in np.flatnonzero(diverged)],
      diverged_at_draw=[int(d) for d in out.diverged_at[sl][diverged]])


def _divergence_warnings(component_names, diagnostics_by_name, num_chains) -> list[str]:
  warnings = []
  for name in component_names:
    bad = diagnostics_by_name[name].diverged_chains
    if len(bad) == num_chains:
      warnings.append(f"component {name!r}: all {num_chains} chains diverged; its estimates are NaN. "
                      f"Lower step_size or raise localization.")
    elif bad:
      warnings.append(f"component {name!r}: chains {bad} diverged and were excluded.")
  return warnings


def _health_warnings(component_names, component_flags, probe_names, cell_flags) -> list[str]:
  """One line per flagged component (other than divergence, reported on its own) and per flagged probe."""
  lines = []
  for name, flags in zip(component_names, component_flags):
    rest = [f for f in flags if "diverged" not in f]
    if rest:
      lines.append(f"component {name!r}: {'; '.join(rest)}")
  for p, probe in enumerate(probe_names):
    cells = [f"{comp}: {'; '.join(cell_flags[p][c])}" for c, comp in enumerate(component_names) if cell_flags[p][c]]
    if cells:
      lines.append(f"probe {probe!r}: " + " | ".join(cells))
  return lines


def _emit(messages) -> None:
  """Messages reach the user as Python warnings of our own category (filterable), not only in a list,
  attributed to the user's line that called us: the first frame outside this package, however deep."""
  package = os.path.dirname(os.path.abspath(__file__)) + os.sep
  frame, level = sys._getframe(1), 2  # (level 2: our caller)
  while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
    frame, level = frame.f_back, level + 1
  for message in messages:
    warnings_lib.warn(message, health.SusceptibilityWarning, stacklevel=level)


def _probe_fault_warnings(loss_fn, params, probes, out: sampler.SamplerOutput, dropped_D, microbatch_size):
  """Name the probe samples whose non-finite loss made draws drop out (data faults if so at w* too)."""
  warnings = []
  for d, name in enumerate(probes):
    if not dropped_D[d]:
      continue
    faulty = batched.nonfinite_samples(loss_fn, params, probes[name], out.nonfinite_probe_samples[name],
                                       microbatch_size)
    cause = (f"sample(s) {faulty[:10]} have a non-finite loss at w* itself (a data fault: fix or remove them)"
             if faulty else "the loss was finite at w*, so the chains moved somewhere the probe's loss overflows")
    warnings.append(f"probe {name!r}: {int(dropped_D[d])} draw contribution(s) dropped for a non-finite probe "
                    f"loss; {cause}.")
  return warnings


@dataclasses.dataclass
class SusceptibilityResult:
  """χ per probe × component (eq. 41) with error bars, LLCs, and diagnostics."""
  __repr__ = reprs.compact_repr  # (the numbers and the arrays' shapes, not every value)

  chi: np.ndarray  # [P, C]
  chi_stderr: np.ndarray  # [P, C] standard error across non-diverged chains
  chi_per_chain: np.ndarray  # [P, C, K]
  llc: np.ndarray  # [C] nβ·⟨φ⟩ ("full": ordinary LLC; else weight-refined)
  llc_stderr: np.ndarray  # [C]
  llc_per_chain: np.ndarray  # [C, K]
  probe_names: list
  component_names: list
  diagnostics: dict  # component -> diagnostics.ComponentDiagnostics
  warnings: list
  config: sgld.SGLDConfig
  batch_size: int
  delta_h: float
  realised_delta_h: float  # probe samples placed per sample evaluated (Algorithm 1 over the run: ≈ δh)
  probe_draws_dropped: np.ndarray  # int [P, C] draw contributions dropped for a non-finite probe loss
  chi_form: str
  scale_by_delta_h: bool
  status: np.ndarray  # object [P, C]: "ok" or the failed health tests of the cell (suscept_jax.health)
  moments: estimators.Moments  # per entry (component-major), y = probes: recompute other forms offline
  diverged: np.ndarray  # bool [C, K]
  loss_star_trace: np.ndarray  # [draws, K] L_B(w*) on each chain's draw batch
  seconds: float

  @property
  def num_chains_used(self) -> np.ndarray:
    """int [C] non-diverged chains behind each component's numbers."""
    return (~self.diverged).sum(axis=1)

  def interval(self, level: float = 0.95):
    """Half-widths [P, C] of Student-t intervals for χ: chi ± this covers `level` (d.o.f.: the chains behind the
    cell − 1; fewer than the component's where some chain saw the probe at no draw)."""
    chains_CxP = estimators.chains_behind(np.transpose(self.chi_per_chain, (2, 1, 0)), ~self.diverged.T)
    return estimators.t_quantile(chains_CxP.T, level) * self.chi_stderr

  def llc_interval(self, level: float = 0.95):
    """Half-widths [C] of Student-t intervals for the LLCs."""
    return estimators.t_quantile(self.num_chains_used, level) * self.llc_stderr

  def chi_with(self, form: str = "eq41", scale_by_delta_h: bool = False) -> estimators.ChiTable:
    """χ for another estimator form, without resampling."""
    return estimators.chi_table(self.moments, self.diverged, self.component_names, form,
                      self.realised_delta_h if scale_by_delta_h else None)

  def records(self) -> list[dict]:
    """Tidy rows, one per probe × component."""
    rows = []
    chi_ci, llc_ci = self.interval(), self.llc_interval()
    for p, probe in enumerate(self.probe_names):
      for c, comp in enumerate(self.component_names):
        diag = self.diagnostics[comp]
        rows.append({"probe": probe, "component": comp, "chi": float(self.chi[p, c]),
                     "chi_stderr": float(self.chi_stderr[p, c]), "chi_ci95": float(chi_ci[p, c]),
                     "llc": float(self.llc[c]), "llc_stderr": float(self.llc_stderr[c]),
                     "llc_ci95": float(llc_ci[c]), "num_chains_used": int(self.num_chains_used[c]),
                     **diag.summary(), "r_hat_chi": float(diag.r_hat_chi[p]),
                     "ess_bulk_chi": float(diag.ess_bulk_chi[p]),
                     "probe_draws_dropped": int(self.probe_draws_dropped[p, c]),
                     "realised_delta_h": float(self.realised_delta_h), "status": str(self.status[p, c])})
    return rows


# ---- entry points ----------------------------------------------------------------------------------------

def estimate_susceptibilities(loss_fn: Callable, params, components: Mapping[str, Any], base,
                              probes: Mapping[str, Any], *, config: sgld.SGLDConfig | None = None,
                              batch_size: int = 64, delta_h: float = 0.1, seed: int = 0,
                              chi_form: str = "eq41", scale_by_delta_h: bool = False,
                              microbatch_size: int | None = None, mesh=None, checkpoint_id: int = 0,
                              progress=True, label: str = "susceptibilities",
                              base_name: str = "base data", restrict_gradients: bool = True) -> SusceptibilityResult:
  """χ of every probe for every component (eq. 41), with the LLCs the same samples give.

  loss_fn(params, batch) -> per-sample losses [B]; components maps names to masks (None = all free) and
  must contain "full"; base and every probe are pytrees of arrays with a leading sample axis.
  restrict_gradients: components freeing the same parameter leaves share a program that differentiates only
  those (same numbers, less work; one compilation per group); False: one program, full gradients.
  """
  config = validation.sgld_config_or(config, sgld.SGLDConfig())
  validation.check_batching(batch_size, microbatch_size)
  validation.check_seed(seed)
  if chi_form not in estimators.CHI_FORMS:
    raise ValueError(f"chi_form={chi_form!r}: expected one of {estimators.CHI_FORMS}")
  if not isinstance(components, Mapping) or "full" not in components:
    got = list(components) if isinstance(components, Mapping) else type(components)
    raise ValueError(f"components must be a mapping that contains 'full' (E[ΔL] in eq. 41 comes from the "
                     f"full model's chains); got {got}")
  if not isinstance(probes, Mapping) or not probes:
    raise ValueError("probes must be a non-empty mapping of name -> dataset")
  mixing.check_mixing(batch_size, delta_h, config.num_draws)
  validation.check_params(params)
  validation.check_dataset(base_name, base, batch_size)
  for name, probe in probes.items():
    validation.check_dataset(f"probe {name!r}", probe, batch_size, like=base,
                             why_batch=validation.PROBE_SIZE_WHY)
  validation.check_full_is_full(components, params)
  component_names, masks_C = masks.stack_masks(components, params)
  validation.check_loss_fn(loss_fn, params, base)
  validation.preflight(loss_fn, params, {base_name: base, **{f"probe {k!r}": v for k, v in probes.items()}},
             batch_size=batch_size, num_streams=config.num_chains, seed=seed, checkpoint_id=checkpoint_id,
             config=config, microbatch_size=microbatch_size)

  out = sampler.run(loss_fn, params, component_names, masks_C, base, probes, config=config,
                    batch_size=batch_size, delta_h=delta_h, seed=seed, checkpoint_id=checkpoint_id,
                    microbatch_size=microbatch_size, mesh=mesh, progress=progress, label=label,
                    base_name=base_name, restrict_gradients=restrict_gradients)
  return result_from_output(out, loss_fn, params, component_names, probes, config=config, batch_size=batch_size,
                            delta_h=delta_h, chi_form=chi_form, scale_by_delta_h=scale_by_delta_h,
                            microbatch_size=microbatch_size)


def result_from_output(out: sampler.SamplerOutput, loss_fn, params, component_names, probes, *, config, batch_size,
                       delta_h, chi_form, scale_by_delta_h, microbatch_size, emit: bool = True) -> SusceptibilityResult:
  """The dataset-level result of a sampler run (also used by the per-token estimator on its own chains)."""
  C, K = len(component_names), config.num_chains
  diverged = out.diverged.reshape(C, K)
  table = estimators.chi_table(out.moments, diverged, component_names, chi_form,
                     out.realised_delta_h if scale_by_delta_h else None)
  llc, llc_err, llc_chains = estimators.llc_table(out.moments, diverged, np.full(C, config.nbeta))
  diags = {name: _component_diagnostics(out, c, K) for c, name in enumerate(component_names)}
  # Draws in which a probe's contribution was dropped, over the non-diverged chains: [P, C].
  dropped_ExD = out.moments.count[:, None] - out.moments.count_y
  dropped = np.where(~diverged[..., None], dropped_ExD.reshape(C, K, -1), 0).sum(axis=1).T
  warnings = _divergence_warnings(component_names, diags, K)
  full_diverged = bool(diverged[component_names.index("full")].all())
  if full_diverged:
    warnings.append("every chain of 'full' diverged, so ⟨ΔL⟩_full is unknown and eq.41 χ is NaN for all "
                    "components (chi_with(form='covariance') still works).")
  comp_flags = [health.component_flags(diags[name], llc[c], K, health.phi_steps(llc[c] / config.nbeta,
                                                                                  out.loss_star_trace))
                for c, name in enumerate(component_names)]
  cell_flags = [[comp_flags[c] + health.undefined_chi_flags(table.chi[p, c], diverged[c].all(), full_diverged)
                 + health.probe_flags(diags[name].r_hat_chi[p], diags[name].ess_bulk_chi[p], int(dropped[p, c]),
                                      out.realised_delta_h, delta_h)
                 for c, name in enumerate(component_names)] for p in range(len(probes))]
  status = np.array([[health.status(flags) for flags in row] for row in cell_flags], dtype=object)
  warnings += _health_warnings(component_names, comp_flags, list(probes),
                               [[[f for f in cell if f not in comp_flags[c]] for c, cell in enumerate(row)]
                                for row in cell_flags])
  warnings += _probe_fault_warnings(loss_fn, params, probes, out, dropped.sum(axis=1), microbatch_size)
  if emit:
    _emit(warnings)
  return SusceptibilityResult(
      chi=table.chi, chi_stderr=table.stderr, chi_per_chain=table.per_chain, llc=llc, llc_stderr=llc_err,
      llc_per_chain=llc_chains, probe_names=list(probes), component_names=component_names, diagnostics=diags,
      warnings=warnings, config=config, batch_size=batch_size, delta_h=delta_h,
      realised_delta_h=out.realised_delta_h, probe_draws_dropped=dropped, chi_form=chi_form,
      scale_by_delta_h=scale_by_delta_h, status=status, moments=out.moments, diverged=diverged,
      loss_star_trace=out.loss_star_trace, seconds=out.seconds)


@dataclasses.dataclass
class LLCResult:
  """Local learning coefficient estimate λ̂ = nβ·⟨L_B(w) − L_B(w*)⟩ with its error bar."""
  __repr__ = reprs.compact_repr  # (the numbers and the arrays' shapes, not every value)

  mean: float
  stderr: float  # standard error across non-diverged chains
  per_chain: np.ndarray  # [K]
  trace: np.ndarray  # [K, draws] L_B(w_t) per chain (thinned if long)
  diagnostics: diagnostics.ComponentDiagnostics
  warnings: list
  status: str  # "ok" or the failed health tests (suscept_jax.health)
  seconds: float

  def interval(self, level: float = 0.95) -> float:
    """Half-width of the Student-t interval (non-diverged chains − 1 d.o.f.): mean ± this covers `level`."""
    used = len(self.per_chain) - len(self.diagnostics.diverged_chains)
    return float(estimators.t_quantile(used, level) * self.stderr)


def estimate_llc(loss_fn: Callable, params, data, *, config: sgld.SGLDConfig | None = None,
                 batch_size: int = 64, mask=None, seed: int = 0, microbatch_size: int | None = None,
                 mesh=None, checkpoint_id: int = 0, progress=True, label: str = "llc",
                 data_name: str = "data") -> LLCResult:
  """The (weight-refined, if `mask` is given) local learning coefficient at `params`. With a mask, only the
  parameter leaves it frees are differentiated."""
  config = validation.sgld_config_or(config, sgld.SGLDConfig())
  validation.check_batching(batch_size, microbatch_size)
  validation.check_seed(seed)
  validation.check_params(params)
  validation.check_dataset(data_name, data, batch_size)
  names, masks_C = masks.stack_masks({"llc": mask}, params)
  validation.check_loss_fn(loss_fn, params, data)
  validation.preflight(loss_fn, params, {data_name: data}, batch_size=batch_size, num_streams=config.num_chains,
                       seed=seed, checkpoint_id=checkpoint_id, config=config, microbatch_size=microbatch_size)
  out = sampler.run(loss_fn, params, names, masks_C, data, {}, config=config, batch_size=batch_size,
                    delta_h=None, seed=seed, checkpoint_id=checkpoint_id, microbatch_size=microbatch_size,
                    mesh=mesh, progress=progress, label=label, base_name=data_name)
  diverged = out.diverged.reshape(1, config.num_chains)
  llc, llc_err, per_chain = estimators.llc_table(out.moments, diverged, [config.nbeta])
  diag = _component_diagnostics(out, 0, config.num_chains)
  flags = health.component_flags(diag, llc[0], config.num_chains,
                                 health.phi_steps(llc[0] / config.nbeta, out.loss_star_trace))
  warnings = _divergence_warnings(names, {"llc": diag}, config.num_chains)
  warnings += _health_warnings(names, [flags], [], [])
  _emit(warnings)
  return LLCResult(mean=float(llc[0]), stderr=float(llc_err[0]), per_chain=per_chain[0], trace=diag.loss_trace,
                   diagnostics=diag, warnings=warnings, status=health.status(flags), seconds=out.seconds)
