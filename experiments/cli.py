"""Small helpers shared by the absl runners."""
import sys
import traceback
from pathlib import Path

from absl import app, flags, logging

INPUT_ERRORS = (ValueError, FileNotFoundError, TypeError, KeyError)


def quiet_libraries() -> None:
  """Show warnings and errors only (orbax logs every checkpoint operation at INFO), unless the user
  asked for a verbosity with --verbosity / -v."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def run(main) -> None:
  """app.run(main), but bad input ends with its message (exit status 2), not a traceback.

  The traceback is still printed with --verbosity=1 (or higher) for debugging.
  """
  def wrapped(argv):
    try:
      return main(argv)
    except INPUT_ERRORS as e:
      if flags.FLAGS["verbosity"].value >= 1:
        traceback.print_exc()
      print(f"error: {e}\n(run with --verbosity=1 to see the traceback)", file=sys.stderr)
      sys.exit(2)

  app.run(wrapped)


def resolve_run(preset_name: str, run_dir: str | None, tokenizer: str | None, *, run_dir_flag: str = "run_dir"):
  """(preset, run directory, tokenizer path): the flags, else the preset's, else <run_dir>/tokenizer.json."""
  from experiments import presets
  preset = presets.get_preset(preset_name)
  run_dir = run_dir or preset.run_dir
  if run_dir is None:
    raise app.UsageError(f"--{run_dir_flag} is required with --preset={preset_name}")
  return preset, run_dir, tokenizer or preset.tokenizer or str(Path(run_dir) / "tokenizer.json")
