"""The one progress bar of the project: rate and ETA for long work (sampling, training, tokenizing, sweeps)."""


def progress_bar(total: int | None, label: str, *, unit: str = "step", enabled: bool = True, initial: int = 0,
                 smoothing: float = 0.1):
  """A tqdm bar (console or notebook) counting `unit`s towards `total`, with rate and ETA.

  Disabled, it still takes updates and does nothing, so callers need no branch. smoothing: weight of the
  latest rate in the ETA (tqdm's exponential average); lower for work whose pace varies, e.g. a sweep's
  compile-then-sample units.
  """
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, desc=label, unit=unit, dynamic_ncols=True, smoothing=smoothing,
              disable=not enabled)
