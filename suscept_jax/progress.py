"""The one progress bar of the project: rate and ETA for long work (sampling, training, tokenizing, sweeps)."""
import contextlib
import functools
import logging
import sys
import threading


def progress_bar(total: int | None, label: str, *, unit: str = "step", enabled: bool = True, initial: int = 0,
                 smoothing: float = 0.1, waiting: str | None = None):
  """A tqdm bar (console or notebook) counting `unit`s towards `total`, with rate and ETA.

  Disabled, it still takes updates and does nothing, so callers need no branch. smoothing: weight of the
  latest rate in the ETA (tqdm's exponential average); lower for work whose pace varies, e.g. a sweep's
  compile-then-sample units. The pace starts at the first update (`_PacedFromFirstStep`); `waiting` is
  shown until then (e.g. "compiling"), so a bar that does not move yet says why.
  """
  bar = _paced_bar_class()(total=total, initial=initial, desc=label, unit=unit, dynamic_ncols=True,
                           smoothing=smoothing, disable=not enabled)
  if waiting and enabled:
    bar.set_postfix_str(waiting)
  return bar


def warn_above(bar, message: str) -> None:
  """A warning printed on its own line above a running bar, which is redrawn below it (a log line would
  land in the middle of the bar's line); through `logging` when no bar is shown."""
  if bar is not None and not getattr(bar, "disable", True):
    bar.write(f"warning: {message}", file=sys.stderr)
  else:
    logging.getLogger("suscept_jax").warning(message)


class WarningsShown:
  """The warnings a runner prints above its bar: each message once (every chunk of a per-token run re-runs the
  same chains: 42 identical lines at the paper's 14 chunks) and at most `limit` of them (a sweep of the paper's
  shape at few draws gave ≈ 800); all are counted, and every one is kept in the results where the user looks."""

  def __init__(self, limit: int = 20):
    self.limit = limit
    self.count = 0  # every warning given
    self.repeats = 0  # of messages already printed
    self._seen: set[str] = set()

  def say(self, bar, message, *, where: str = "") -> None:
    """Print `message` (prefixed with `where`) unless it was printed before or the limit is reached."""
    text = str(message)
    self.count += 1
    if text in self._seen:
      self.repeats += 1
      return
    self._seen.add(text)
    if len(self._seen) <= self.limit:
      warn_above(bar, f"{where}: {text}" if where else text)
    elif len(self._seen) == self.limit + 1:
      warn_above(bar, f"more warnings than {self.limit}: the rest are not printed (each flagged cell's reasons "
                      f"are in its status column and in summary.txt)")


@functools.cache
def _paced_bar_class():
  from tqdm.auto import tqdm

  class _PacedFromFirstStep(tqdm):
    """tqdm whose rate (hence ETA) counts only the time after its first update. The wait before it —
    loading data, compiling the programs: seconds on CPU, minutes for a large model — is a one-off that
    tqdm would average in as the pace of the first steps, showing an ETA of the compile time times the
    steps left (33 min for a 90 s demo sweep). Elapsed time still counts from the start."""

    _paced = False  # the first update has come
    _closing = False

    def update(self, n=1):
      if self._paced or not n or self.disable:
        return super().update(n)
      self._paced = True
      self.last_print_t = self._time()  # the next refresh's rate spans only the steps after this one
      super().update(n)  # (within tqdm's minimum interval: counted, no rate sample)
      self.last_print_n = self.n
      if self.postfix:
        self.set_postfix_str("", refresh=False)
      self.refresh()
      return True

    @property
    def format_dict(self):
      shown = super().format_dict
      if self._paced and not self._closing and self.smoothing and shown["rate"] is None:
        shown["rate"] = 0  # no rate measured since the first update: "?", where tqdm would average in the wait
      return shown

    def close(self):
      self._closing = True  # the closing line shows the average over all the elapsed time, as tqdm does
      return super().close()

  return _PacedFromFirstStep


def bar_for(progress, total: int, label: str):
  """What a function taking `progress=` reports to: the caller's bar (anything with `update`, which the
  caller sized and closes), a new bar of `total` when `progress` is True (the function closes it), else None."""
  if progress is False or progress is None:
    return None
  if hasattr(progress, "update"):
    return progress
  return progress_bar(total, label, waiting="compiling")


def owns(bar, progress) -> bool:
  """Whether the function that got `progress=` made `bar` itself (so it labels and closes it)."""
  return bar is not None and bar is not progress


@contextlib.contextmanager
def reporting(progress, total: int, label: str):
  """`bar_for` as a context: the bar to update (or None); one made here is closed on the way out, also when
  the work raises, so an error starts on its own line."""
  bar = bar_for(progress, total, label)
  try:
    yield bar
  finally:
    if owns(bar, progress):
      bar.close()


def over_chunks(progress, num_chunks: int, steps_per_chunk: int, label: str):
  """(chunk index, what to pass as that chunk's `progress=`) for each chunk, all on one bar: the caller's, or
  one made here of num_chunks × steps_per_chunk, labelled per chunk and closed after the last."""
  with reporting(progress, num_chunks * steps_per_chunk, label) as bar:
    for i in range(num_chunks):
      if owns(bar, progress):
        bar.set_description(f"{label} chunk {i + 1}/{num_chunks}")
      yield i, (bar if bar is not None else False)


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
