"""Structural inference over sweep results, and the one page a researcher opens.

  python -m experiments.analyze                                  # the demo's sweep
  python -m experiments.analyze --results=runs/tetra/sweep,runs/tetra/sweep_late --num_pcs=3
  python -m experiments.analyze --patterning_targets=l1h2+l1h3   # also: the data that moves these two together

Writes report.html (self-contained: figures embedded, no network) into the first results directory, with
figures in report_figures/ next to it, and prints its path.
"""
from pathlib import Path

from absl import app, flags

from suscept_jax_runners import cli, presets

_PRESET = flags.DEFINE_enum("preset", "demo", sorted(presets.PRESETS), "Named defaults for every other flag.")
_RESULTS = flags.DEFINE_list("results", None, "Sweep results directories "
                             + cli.by_preset(lambda p: p.output_dir) + ".")
_NUM_PCS = flags.DEFINE_integer("num_pcs", 3, "Principal components analysed and plotted.")
_PER_TOKEN = flags.DEFINE_string("per_token_dir", None, "Per-token results to link (when they come from the "
                                 "sweep's training run) " + cli.by_preset(lambda p: p.per_token_output_dir)
                                 + " without --results.")
_OUTPUT = flags.DEFINE_string("output", None, "Report path (default: <first results dir>/report.html).")
_RESAMPLES = flags.DEFINE_integer("num_resamples", 200, "Bootstrap resamples for the stability of the PCs.")
_PATTERNING = flags.DEFINE_list("patterning_targets", [], "Groups of components to move together in the patterning "
                                "section, '+'-joined (e.g. l1h2+l1h3), besides the top PCs and each component alone.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  preset = presets.get_preset(_PRESET.value)
  dirs = [Path(d) for d in (_RESULTS.value or [preset.output_dir])]
  for d in dirs:
    if not (d / "config.json").exists():
      raise FileNotFoundError(f"--results: {d} is not a sweep results directory (no config.json); run "
                              "experiments.sweep first")
  if _PER_TOKEN.value and not (Path(_PER_TOKEN.value) / "views" / "index.html").exists():
    raise FileNotFoundError(f"--per_token_dir: {_PER_TOKEN.value} holds no per-token views (views/index.html); "
                            "run experiments.per_token first, or leave the flag out")
  from suscept_jax import results
  output = Path(_OUTPUT.value) if _OUTPUT.value else dirs[0] / results.REPORT_FILES[0]
  from suscept_jax import paths  # (the report's figures go beside it: tried before the analysis, not after)
  paths.check_writable_dir(output.parent / "report_figures", "--output", shown=output)
  if _NUM_PCS.value < 1:
    raise ValueError(f"--num_pcs={_NUM_PCS.value} must be >= 1")
  if _RESAMPLES.value < 1:
    raise ValueError(f"--num_resamples={_RESAMPLES.value} must be >= 1 (the PCs' stability is a bootstrap)")
  cli.quiet_libraries()
  from suscept_jax.analysis import report
  report.build(dirs, output, num_pcs=_NUM_PCS.value,
               per_token_dir=_PER_TOKEN.value or (None if _RESULTS.value else preset.per_token_output_dir),
               num_resamples=_RESAMPLES.value,
               patterning_targets=[group.split("+") for group in _PATTERNING.value])


if __name__ == "__main__":
  cli.run(main)
