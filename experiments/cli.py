"""Small helpers shared by the absl runners."""
from absl import flags, logging


def quiet_libraries() -> None:
  """Show warnings and errors only (orbax logs every checkpoint operation at INFO), unless the user
  asked for a verbosity with --verbosity / -v."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
