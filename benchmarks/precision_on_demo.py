"""How far χ and the LLC move between numerics settings on the demo, measured in one process on this device.

  python -m benchmarks.precision_on_demo [--run_dir=runs/demo/train] [--contexts=DIR] [--out=DIR]
      [--settings float32/plain bfloat16/fused default/plain] [--components full l0h0 ...] [--num_draws=100]
      [--tiny]

The device's half of the precision question (`precision_shift` compares sweep directories, which need the
corpora). Every setting runs the same job as the devinterp side by side (every head and "full" × 4 chains,
two probes, batch 20) with the same seed, so the chains share their noise and batches and a shift is what the
numerics change, not sampling noise; it is printed in units of the first setting's standard error (safe for a
study: median well under 0.5, none above 1). On CPU "default" is float32; on an NVIDIA GPU it is TF32, and
bfloat16/fused runs cuDNN's attention where the head width allows (not the demo's 12).

--contexts: a folder `devinterp_side_by_side --write_contexts` wrote (the demo's data; `make device-prep` puts
it in .whl/contexts); without it, random tokens. DIR/precision_on_demo.json is rewritten after each setting.
"""
import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks import devinterp_side_by_side as side_by_side
from benchmarks.precision_shift import summary

DEFAULT_SETTINGS = ("float32/plain", "bfloat16/fused", "default/plain")


def numerics_of(setting: str):
  """"bfloat16/fused" -> Numerics(precision="bfloat16", attention="fused") (refused by name when unknown)."""
  from suscept_jax.models.config import Numerics
  precision, _, attention = setting.partition("/")
  return Numerics(precision=precision, attention=attention or "plain")


def estimate(cfg, params, contexts: dict, settings: side_by_side.Settings, setting: str, specs=None) -> dict:
  """One setting's dataset-level χ [P, C] and LLC [C] with their standard errors, and its wall seconds
  (compilation included). specs: the components (default: every head and "full")."""
  import suscept_jax as sj
  from suscept_jax.models import components
  loss_fn, _ = side_by_side.our_loss_fns(cfg, numerics_of(setting))
  masks = components.component_masks(specs or components.default_components(cfg), params, cfg)
  config = settings.sgld_config()
  probes = {p: x for p, x in contexts.items() if p != "base"}
  t0 = time.perf_counter()
  with warnings.catch_warnings(record=True) as caught:  # the health warnings: kept in the result, not printed
    warnings.simplefilter("always", sj.SusceptibilityWarning)
    res = sj.estimate_susceptibilities(loss_fn, params, masks, contexts["base"], probes, config=config,
                                       batch_size=settings.batch_size, delta_h=settings.delta_h, seed=settings.seed,
                                       progress=False)
  return dict(setting=setting, seconds=time.perf_counter() - t0, warnings=[str(w.message) for w in caught],
              components=list(res.component_names),
              probes=list(probes), chi=np.asarray(res.chi).tolist(), chi_stderr=np.asarray(res.chi_stderr).tolist(),
              llc=np.asarray(res.llc).tolist(), llc_stderr=np.asarray(res.llc_stderr).tolist())


def shifts(reference: dict, other: dict) -> dict:
  """|Δχ| / stderr(χ) [P·C] and |ΔLLC| / stderr(LLC) [C], the standard errors the reference's."""
  def shift(key):
    return (np.abs(np.subtract(other[key], reference[key])) / np.asarray(reference[f"{key}_stderr"])).ravel()
  return dict(chi=shift("chi"), llc=shift("llc"))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run_dir", default="runs/demo/train", help="the trained weights (ignored with --tiny)")
  parser.add_argument("--contexts", help="a folder of contexts written by devinterp_side_by_side --write_contexts")
  parser.add_argument("--out", default="runs/precision_on_demo")
  parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS),
                      help="precision/attention pairs; the first is the reference")
  parser.add_argument("--components", nargs="+", help="component specs (default: every head and 'full')")
  parser.add_argument("--num_draws", type=int)
  parser.add_argument("--tiny", action="store_true", help="the tiny model at random init, 2 chains × 8 draws")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  for setting in args.settings:
    numerics_of(setting)  # bad input refused before any work
  settings = side_by_side.TINY if args.tiny else side_by_side.Settings()
  if args.num_draws:
    settings = dataclasses.replace(settings, num_draws=args.num_draws)
  cfg, params, source = side_by_side.load_weights(settings, None if args.tiny else args.run_dir)
  written = side_by_side.written_contexts(args.contexts) if args.contexts else None
  if args.contexts and written is None:
    raise ValueError(f"--contexts={args.contexts} holds no contexts written by devinterp_side_by_side "
                     f"--write_contexts")
  contexts = (side_by_side.file_contexts(cfg, settings, written) if written
              else side_by_side.random_contexts(cfg, settings))
  print(f"weights: {source}; contexts: {args.contexts or 'random tokens'}; {settings.num_chains} chains × "
        f"{settings.num_draws} draws, batch {settings.batch_size}", flush=True)
  out_dir = Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  result = dict(weights=source, contexts=args.contexts, settings=dataclasses.asdict(settings), runs=[])
  for setting in args.settings:
    run = estimate(cfg, params, contexts, settings, setting, args.components)
    result["runs"].append(run)
    line = f"{setting}: {run['seconds']:.1f} s (compilation included)"
    if len(result["runs"]) > 1:
      moved = shifts(result["runs"][0], run)
      run["chi_shift"], run["llc_shift"] = moved["chi"].tolist(), moved["llc"].tolist()
      line += (f"; against {args.settings[0]}:\n  " + summary("|Δχ| / stderr", moved["chi"]) + "\n  "
               + summary("|ΔLLC| / stderr", moved["llc"]))
    print(line, flush=True)
    (out_dir / "precision_on_demo.json").write_text(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()
