"""The one progress bar of the project: rate and ETA for long work (sampling, training, tokenizing, sweeps)."""
import threading


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


def bar_for(progress, total: int, label: str):
  """What a function taking `progress=` reports to: the caller's bar (anything with `update`, which the
  caller sized and closes), a new bar of `total` when `progress` is True (the function closes it), else None."""
  if progress is False or progress is None:
    return None
  if hasattr(progress, "update"):
    return progress
  return progress_bar(total, label)


def owns(bar, progress) -> bool:
  """Whether the function that got `progress=` made `bar` itself (so it labels and closes it)."""
  return bar is not None and bar is not progress


def over_chunks(progress, num_chunks: int, steps_per_chunk: int, label: str):
  """(chunk index, what to pass as that chunk's `progress=`) for each chunk, all on one bar: the caller's, or
  one made here of num_chunks × steps_per_chunk, labelled per chunk and closed after the last."""
  bar = bar_for(progress, num_chunks * steps_per_chunk, label)
  try:
    for i in range(num_chunks):
      if owns(bar, progress):
        bar.set_description(f"{label} chunk {i + 1}/{num_chunks}")
      yield i, (bar if bar is not None else False)
  finally:
    if owns(bar, progress):
      bar.close()


class MeanOfParts:
  """Advances `bar` by the mean of `parts` reporters' counts, in whole units, from any thread.

  A run of several programs side by side (one per component group), each performing the run's N steps,
  then counts N on its caller's bar, not N × parts: the caller sizes its bar from the settings alone, and
  the ETA follows the slowest-finishing share of the work rather than overshooting the total."""

  def __init__(self, bar, parts: int):
    self.bar, self.parts = bar, parts
    self._counted = self._sent = 0
    self._lock = threading.Lock()

  def update(self, n: int = 1) -> None:
    with self._lock:
      self._counted += n
      whole = self._counted // self.parts
      if whole > self._sent:
        self.bar.update(whole - self._sent)
        self._sent = whole
