"""The devinterp half of `benchmarks.devinterp_side_by_side`: runs *inside* the devinterp virtualenv.

  <devinterp-venv>/bin/python benchmarks/devinterp_job.py JOB_DIR

It needs numpy, torch, transformer-lens<4, datasets and devinterp==2.0.1 — never suscept_jax or jax. JOB_DIR
holds what the side-by-side script wrote: `job.json` (TransformerLens config, SGLD settings, component and
probe names, torch device), `weights.npz` (a TransformerLens state dict) and `contexts.npz` (base and
probe token contexts [N, L]). It times one `devinterp.slt.susceptibilities.susceptibilities` call (wall clock from
building the model to the returned tree; imports timed apart), then reads devinterp's per-draw losses back
from the zarr stores it wrote, to get what devinterp does not report (untimed):

  χ per chain  devinterp's formula applied to one chain k (the mean over chains is exactly its χ):
                 φ_{k,t} = L_base(w_{k,t}) − anchor     (L_base: its fixed sampling-task contexts)
                 χ_{C,k,i} = ⟨φ·L_base⟩_{C,k} − ⟨φ·ℓ_i⟩_{C,k} − ⟨φ⟩_{C,k}·(⟨L_base⟩_full − ⟨ℓ_i⟩_full)
               "reported": anchor = ⟨init_loss⟩_full (its 32 initial-loss batches), as devinterp computes it;
               "anchored": anchor = L_base(w*) on the same fixed contexts, so φ(w*) = 0 as in ours.
               devinterp leaves "full" out of its table; the same formula gives it.
  leave one out  χ (the mean over chains) again without chain k of every component, k = 1..K: the replicates of a
               jackknife over chains. Its head χ takes ⟨L_base⟩_full − ⟨ℓ_i⟩_full from all of "full"'s chains, a
               term every chain of the head shares, so the spread of the per-chain values misses that term's
               noise (on the demo's data, runs with other seeds moved per-token χ by 1.2–2.3× the error bar
               from that spread; BUILD_NOTES, "Twenty-fourth session"). Chain k of every component runs on the
               same seed, so the jackknife leaves out chain k everywhere.
  context s.e. a bootstrap over devinterp's fixed base contexts (64 resamples of the rows that define L_base
               and φ): the uncertainty its chains cannot show, since they all observe the same contexts.
  batch term   β_{C,k} = (1/n)·⟨Cov_j(ℓ_j(w) − ℓ_j(w*), ℓ_j(w))⟩_t over its base contexts j (per-context mean
               losses, n = batch size): what φ and L_B on the *same random batch* add to our χ (dataset level
               on devinterp's scale and every per-token χ alike); devinterp's fixed contexts do not have it.
  LLC          "reported": devinterp's `compute_llc` (every step's batch loss minus ⟨init_loss⟩, step 0 = w*);
               "anchored": nβ·⟨L_B(w_s) − L_B(w*)⟩ on the same batch B, steps s ≥ 1 (ours' definition).

Results: `devinterp_result.npz` and `devinterp_result.json` in JOB_DIR.

Shape letters: C components, K chains, T draws, O observed contexts (O_base: the sampling task's), J token
positions per observed context, L tokens per context, N and U rows (U: distinct), S steps, B rows per step,
R bootstrap resamples.
"""
import json
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path

T_START = time.perf_counter()
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformer_lens  # noqa: E402
import xarray as xr  # noqa: E402
from datasets import Dataset  # noqa: E402
from devinterp.slt.llc import compute_llc  # noqa: E402
from devinterp.slt.susceptibilities import susceptibilities  # noqa: E402
from devinterp.slt.weight_restrictions import create_param_masks  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - T_START
SAMPLING_TASK = "base"


def build_model(tl_config: dict, weights_path: Path, device: str = "cpu"):
  """A HookedTransformer with the exported weights (buffers keep TransformerLens' own values), on `device`."""
  model = transformer_lens.HookedTransformer(transformer_lens.HookedTransformerConfig(**tl_config, device=device))
  with np.load(weights_path) as weights:
    state = {k: torch.from_numpy(weights[k]) for k in weights.files}
  result = model.load_state_dict(state, strict=False)
  missing = [k for k in result.missing_keys if not k.endswith((".mask", ".IGNORE"))]
  if missing or result.unexpected_keys:
    raise ValueError(f"state dict does not fit the model: missing {missing}, unexpected {result.unexpected_keys}")
  return model


def as_dataset(tokens_NxL: np.ndarray) -> Dataset:
  """An HF Dataset with the equal-length `input_ids` column devinterp reads."""
  return Dataset.from_dict({"input_ids": np.asarray(tokens_NxL, np.int64).tolist()}).with_format("torch")


def store_path(output: Path, component: str) -> Path:
  """Where `susceptibilities` writes a component's samples (it appends the restriction's name)."""
  return output.parent / f"{output.stem}_{component}{output.suffix}"


def run(job: dict, job_dir: Path):
  """Build model + datasets and run devinterp's susceptibilities: (seconds, returned tree, model, output path)."""
  output = job_dir / "devinterp_samples.zarr"
  for component in job["components"]:
    shutil.rmtree(store_path(output, component), ignore_errors=True)  # devinterp silently reuses old stores
  device = job.get("device", "cpu")
  t0 = time.perf_counter()
  model = build_model(job["tl_config"], job_dir / "weights.npz", device)
  with np.load(job_dir / "contexts.npz") as contexts:
    data = {name: as_dataset(contexts[name]) for name in [SAMPLING_TASK, *job["probes"]]}
  restrictions = {name: None if name == "full" else create_param_masks(model, name) for name in job["components"]}
  sgld = job["sgld"]
  tree = susceptibilities(model, data[SAMPLING_TASK], observables=data, weight_restrictions=restrictions,
                          sampling_task=SAMPLING_TASK, lr=sgld["lr"], n_beta=sgld["n_beta"],
                          localization=sgld["localization"], num_chains=sgld["num_chains"],
                          num_draws=sgld["num_draws"], batch_size=sgld["batch_size"], output_path=output,
                          device=device)
  return time.perf_counter() - t0, tree, model, output


def open_samples(output: Path, components: list) -> dict:
  """{component: the sampling Dataset devinterp wrote} (per-draw losses of every observable)."""
  return {c: xr.open_datatree(str(store_path(output, c)), engine="zarr", consolidated=False).dataset
          for c in components}


def token_losses(model, ids_NxL: np.ndarray, chunk: int = 512) -> np.ndarray:
  """Per-token NLL [N, L−1] at the model's (reference, untouched) weights."""
  out = []
  with torch.no_grad():
    for start in range(0, len(ids_NxL), chunk):
      ids = torch.from_numpy(np.asarray(ids_NxL[start:start + chunk], np.int64)).to(model.cfg.device)
      out.append(model(ids, return_type="loss", loss_per_token=True).cpu().numpy())
  return np.concatenate(out)


def load_losses(samples: dict, components: list, probes: list):
  """(base {C: [K, T, O_base]} per-context mean losses of the sampling task, probe {p: {C: [K, T, O, J]}})."""
  base = {c: samples[c][f"loss_{SAMPLING_TASK}"].values.mean(axis=-1) for c in components}
  probe = {p: {c: samples[c][f"loss_{p}"].values for c in components} for p in probes}
  return base, probe


def per_chain_token_chi(base: dict, probe: dict, components: list, anchor, rows=None) -> dict:
  """{probe: χ [C, K, O, J]}: devinterp's per-token formula chain by chain, L_base over the base contexts `rows`
  (default: all) and φ = L_base − anchor, where anchor is a number or [O_base] losses at w* (averaged over rows)."""
  rows = slice(None) if rows is None else rows
  anchor = float(np.mean(np.asarray(anchor)[rows])) if np.ndim(anchor) else float(anchor)
  base_KxT = {c: base[c][..., rows].mean(axis=-1) for c in components}
  out = {}
  for p, losses in probe.items():
    delta_full_OxJ = base_KxT["full"].mean() - losses["full"].mean(axis=(0, 1))
    chi = []
    for c in components:
      phi_KxT = base_KxT[c] - anchor
      phi_loss_KxOxJ = np.einsum("kt,ktoj->koj", phi_KxT, losses[c]) / phi_KxT.shape[1]
      chi.append((phi_KxT * base_KxT[c]).mean(axis=1)[:, None, None] - phi_loss_KxOxJ
                 - phi_KxT.mean(axis=1)[:, None, None] * delta_full_OxJ)
    out[p] = np.stack(chi)
  return out


def leave_one_chain_out(base: dict, probe: dict, components: list, anchor) -> dict:
  """{probe: [K, C, O, J]}: the chain-mean χ of `per_chain_token_chi` without chain k of every component."""
  num_chains = next(iter(base.values())).shape[0]
  out = {p: [] for p in probe}
  for k in range(num_chains):
    keep = [i for i in range(num_chains) if i != k]
    chi = per_chain_token_chi({c: x[keep] for c, x in base.items()},
                              {p: {c: x[keep] for c, x in losses.items()} for p, losses in probe.items()},
                              components, anchor)
    for p in probe:
      out[p].append(chi[p].mean(axis=1))
  return {p: np.stack(x) for p, x in out.items()}


def context_se(base: dict, probe: dict, components: list, anchor, num_resamples: int = 64, seed: int = 0) -> dict:
  """{probe: (per-token [C, O, J], dataset-level [C])} standard errors of the chain-mean χ from devinterp's choice
  of fixed base contexts: a bootstrap over those contexts. Every chain observes the same contexts, so its
  spread across chains misses this; ours draws fresh batches per chain, which its own spread carries."""
  rng = np.random.default_rng(seed)
  num_rows = next(iter(base.values())).shape[-1]
  draws = [per_chain_token_chi(base, probe, components, anchor, rng.integers(0, num_rows, num_rows))
           for _ in range(num_resamples)]
  out = {}
  for p in probe:
    chain_mean_RxCxOxJ = np.stack([d[p].mean(axis=1) for d in draws])
    out[p] = (chain_mean_RxCxOxJ.std(axis=0, ddof=1), chain_mean_RxCxOxJ.mean(axis=(2, 3)).std(axis=0, ddof=1))
  return out


def batch_term(base: dict, components: list, star_base_O: np.ndarray, batch_size: int) -> np.ndarray:
  """β [C, K] = (1/n)·⟨Cov_j(ℓ_j(w_t) − ℓ_j(w*), ℓ_j(w_t))⟩_t over the base contexts j (see the module doc)."""
  out = []
  for name in components:
    loss_KxTxO = base[name]
    change_KxTxO = loss_KxTxO - star_base_O
    centred = lambda x: x - x.mean(axis=-1, keepdims=True)  # noqa: E731
    cov_KxT = (centred(change_KxTxO) * centred(loss_KxTxO)).sum(axis=-1) / (loss_KxTxO.shape[-1] - 1)
    out.append(cov_KxT.mean(axis=1) / batch_size)
  return np.stack(out)


def anchored_llc(samples: dict, components: list, model, nbeta: float) -> np.ndarray:
  """[C, K] nβ·⟨L_B(w_s) − L_B(w*)⟩ over steps s ≥ 1, B = the batch devinterp drew at step s."""
  ids = {c: samples[c]["sampling_input_ids_micro"].values for c in components}  # [K, S, B, L]
  rows_NxL = np.concatenate([x.reshape(-1, x.shape[-1]) for x in ids.values()])
  unique_UxL, inverse = np.unique(rows_NxL, axis=0, return_inverse=True)
  star_N = token_losses(model, unique_UxL).mean(axis=-1)[inverse.ravel()]
  out, start = [], 0
  for c in components:
    shape = ids[c].shape[:3]
    star_KxSxB = star_N[start:start + np.prod(shape)].reshape(shape)
    start += int(np.prod(shape))
    loss_KxSxB = samples[c]["sampling_loss_micro"].values.mean(axis=-1)
    out.append(nbeta * (loss_KxSxB - star_KxSxB)[:, 1:].mean(axis=(1, 2)))
  return np.stack(out)


def returned_chi(tree, components: list, probes: list, shape_OxJ: tuple) -> dict:
  """{probe: χ [C', O, J]} as devinterp's returned tree has it (C' = its restrictions; "full" is absent)."""
  sus = tree["susceptibilities"].dataset
  wr = [str(w) for w in sus["wr"].values]
  names = list(sus.attrs["dataset_id_to_name"])
  dataset_id = sus["dataset_id"].values
  out = {}
  for probe in probes:
    rows = sus["sus"].values[dataset_id == names.index(probe)]  # [O·J, wr], row-major over (batch, position)
    out[probe] = np.stack([rows[:, wr.index(c)].reshape(shape_OxJ) for c in components if c != "full"])
  return out


def main(job_dir: Path) -> None:
  job = json.loads((job_dir / "job.json").read_text())
  components, probes, sgld = job["components"], job["probes"], job["sgld"]
  seconds, tree, model, output = run(job, job_dir)
  samples = open_samples(output, components)
  base, probe = load_losses(samples, components, probes)
  init_mean = float(samples["full"]["init_loss"].values.mean())
  star_base_O = token_losses(model, samples["full"][f"input_ids_{SAMPLING_TASK}"].values).mean(axis=-1)
  anchors = {"reported": init_mean, "anchored": star_base_O}
  arrays = {"llc_per_chain/reported": np.stack([compute_llc(xr.DataTree(dataset=samples[c]))["llc_per_chain"].values
                                                for c in components]),
            "llc_per_chain/anchored": anchored_llc(samples, components, model, sgld["n_beta"]),
            "batch_term_per_chain": batch_term(base, components, star_base_O, sgld["batch_size"])}
  chi = {form: per_chain_token_chi(base, probe, components, anchor) for form, anchor in anchors.items()}
  for form, anchor in anchors.items():
    spread = context_se(base, probe, components, anchor)
    left_out = leave_one_chain_out(base, probe, components, anchor)
    for p in probes:
      arrays[f"chi_token_per_chain/{form}/{p}"] = chi[form][p]
      arrays[f"chi_token_leave_one_out/{form}/{p}"] = left_out[p]
      arrays[f"chi_token_context_se/{form}/{p}"], arrays[f"chi_context_se/{form}/{p}"] = spread[p]
  theirs = returned_chi(tree, components, probes, chi["reported"][probes[0]].shape[2:])
  heads = [i for i, c in enumerate(components) if c != "full"]
  consistency = max(float(np.abs(chi["reported"][p][heads].mean(axis=1) - theirs[p]).max()) for p in probes)
  for p in probes:
    arrays[f"context_ids/{p}"] = np.asarray(samples["full"][f"input_ids_{p}"].values, np.int64)
  np.savez(job_dir / "devinterp_result.npz", **arrays)
  info = {"seconds": seconds, "import_seconds": IMPORT_SECONDS, "components": components, "probes": probes,
          "max_abs_diff_vs_returned_chi": consistency, "init_loss_mean": init_mean,
          "base_loss_at_star": float(star_base_O.mean()),
          "versions": {p: version(p) for p in ("devinterp", "torch", "transformer-lens", "datasets")},
          "device": str(model.cfg.device) + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available()
                                             and str(model.cfg.device).startswith("cuda") else "")}
  (job_dir / "devinterp_result.json").write_text(json.dumps(info, indent=2))
  print(json.dumps({"seconds": round(seconds, 2), "max_abs_diff_vs_returned_chi": consistency}))


if __name__ == "__main__":
  main(Path(sys.argv[1]))
