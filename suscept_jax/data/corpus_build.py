"""Building the offline corpora: select documents, write JSONL and a manifest, mix `pile`; find them again.

Builds are deterministic (sorted sources, seeded shuffle, byte caps), cached (a corpus whose file matches
the manifest's sha256 is not rebuilt), and crash-safe (every file and the manifest are written
atomically). Archives come from `<out_dir>/_downloads`; one that is missing is fetched by the `fetch`
callable the caller passes (the runner's `suscept_jax_runners.corpus_fetch.fetch_archive`, which runs the
package clients), and debs Python cannot read go to `deb_to_tar` (the runner's `dpkg-deb`) -- the
library itself never downloads or starts a program.
"""

import hashlib
import json
import logging
import os
import random
import sys
import sysconfig
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from suscept_jax import paths
from suscept_jax.data.corpus_cleaning import clean_text, split_long_text
from suscept_jax.data.corpus_sources import (BUILD_COMMAND, BUILDER_VERSION, CORPUS_SPECS, PILE, SHUFFLE_SEED,
                                             CorpusSpec, DebToTar, SourceUnavailable, Unit, archive_version,
                                             code_units, extract_units, fetch_description, math_units)

MIN_CORPORA = 5
_MANIFEST = "manifest.json"
DOWNLOADS = "_downloads"
_LOG = logging.getLogger(__name__)
# fetch(spec, downloads_dir) -> (archive path, how it was fetched); raises SourceUnavailable.
Fetch = Callable[[CorpusSpec, Path], tuple[Path, str]]


def _archive(spec: CorpusSpec, downloads_dir: Path, fetch: Fetch | None) -> tuple[Path, str]:
  """The cached download of `spec`'s archive, else what `fetch` brings (an error without a fetcher)."""
  existing = sorted(downloads_dir.glob(spec.archive_glob))
  if existing:
    return existing[-1], fetch_description(spec)
  if fetch is None:
    raise SourceUnavailable(f"corpus {spec.name!r}: its archive ({spec.archive_glob}) is not downloaded in "
                            f"{downloads_dir}; run `{BUILD_COMMAND} --names={spec.name}` to download it")
  return fetch(spec, downloads_dir)


def _jsonl_line(text: str) -> bytes:
  return (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode("utf-8")


def select_documents(units: Sequence[Unit], name: str, max_bytes: int) -> list[bytes]:
  """JSONL lines from units sorted by key then shuffled with a per-corpus seed, up to `max_bytes`.

  A document that would overflow the cap is passed over for later, smaller ones; selection ends
  when less than 1% of the cap is left, after 50 documents in a row did not fit, or when the
  source is exhausted. Units are loaded only when reached, so large sources are not read whole.
  """
  ordered = sorted(units, key=lambda unit: unit.key)
  random.Random(f"{name}/{SHUFFLE_SEED}").shuffle(ordered)
  lines, total, misses_in_a_row = [], 0, 0
  for unit in ordered:
    for raw in unit.load():
      for piece in split_long_text(clean_text(raw)):
        if not piece:
          continue
        line = _jsonl_line(piece)
        if total + len(line) <= max_bytes:
          lines.append(line)
          total += len(line)
          misses_in_a_row = 0
          continue
        misses_in_a_row += 1
        if misses_in_a_row >= 50 or max_bytes - total < max_bytes // 100:
          return lines
  return lines


def _sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def default_out_dir() -> Path:
  return paths.cache_root() / "corpora" / "v1"


def _load_manifest(out_dir: Path) -> dict:
  path = out_dir / _MANIFEST
  if not path.exists():
    return {"format": "suscept_jax.corpora/1", "corpora": {}}
  return json.loads(path.read_text(encoding="utf-8"))


def _save_manifest(out_dir: Path, manifest: dict) -> None:
  entries = manifest["corpora"]
  manifest["corpora"] = {name: entries[name] for name in CORPUS_SPECS if name in entries}
  paths.atomic_write_bytes(
      out_dir / _MANIFEST,
      (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
  )


def _is_current(entry: dict | None, path: Path, params: dict) -> bool:
  """True when a previous build with the same parameters left exactly this file."""
  return bool(
      entry
      and entry.get("status") == "built"
      and entry.get("params") == params
      and path.exists()
      and _sha256(path) == entry.get("sha256")
  )


def _write_corpus(out_dir: Path, name: str, lines: list[bytes]) -> dict:
  path = out_dir / f"{name}.jsonl"
  data = b"".join(lines)
  paths.atomic_write_bytes(path, data)
  return {"documents": len(lines), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _spec_fields(spec: CorpusSpec) -> dict:
  return {
      "name": spec.name,
      "description": spec.description,
      "license": spec.license,
      "source_kind": spec.source_kind,
      "optional": spec.optional,
  }


def _build_source_corpus(
    spec: CorpusSpec,
    out_dir: Path,
    max_bytes: int,
    override: Path | None,
    fetch: Fetch | None,
    deb_to_tar: DebToTar | None,
) -> dict:
  """Fetch/extract/select one corpus and write its JSONL; returns its manifest entry fields."""
  if spec.source_kind == "generated":
    units, source = math_units(), {
        "package": spec.package,
        "version": spec.version,
        "fetched_with": "generated in-process",
        "seed": SHUFFLE_SEED,
    }
  elif spec.source_kind == "stdlib":
    root = override or Path(sysconfig.get_paths()["stdlib"])
    version = "local" if override else ".".join(map(str, sys.version_info[:3]))
    units = code_units(root)
    source = {
        "package": spec.package,
        "version": version,
        "fetched_with": "override directory" if override else "local interpreter stdlib",
    }
  else:
    if override:
      archive, how = override, f"override file {override.name}"
    else:
      archive, how = _archive(spec, out_dir / DOWNLOADS, fetch)
    units = extract_units(spec.name, archive, deb_to_tar)
    source = {
        "package": spec.package,
        "version": archive_version(archive),
        "fetched_with": how,
        "archive": archive.name,
        "archive_sha256": _sha256(archive),
    }
  if not units:
    raise SourceUnavailable("source has no documents")
  lines = select_documents(units, spec.name, max_bytes)
  if not lines:
    raise SourceUnavailable("no non-empty documents fit the byte cap")
  return {"source": source, **_write_corpus(out_dir, spec.name, lines)}


def _build_pile(out_dir: Path, manifest: dict, progress_log: Callable) -> dict | None:
  """Round-robin interleave of all built corpora, each contributing the same byte budget.

  The budget is the smallest built corpus's size; each source gives its first documents until it
  reaches the budget (the last one may overshoot by less than one document).
  """
  entries = manifest["corpora"]
  inputs = {
      name: entries[name]["sha256"]
      for name in CORPUS_SPECS
      if name != PILE
      and entries.get(name, {}).get("status") == "built"
      and (out_dir / f"{name}.jsonl").exists()
  }
  if not inputs:
    return None
  params = {"builder_version": BUILDER_VERSION, "inputs": inputs}
  entry = manifest["corpora"].get(PILE)
  if _is_current(entry, out_dir / f"{PILE}.jsonl", params):
    progress_log("corpus %s: cached", PILE)
    return entry
  budget = min(manifest["corpora"][name]["bytes"] for name in inputs)
  per_source = []
  for name in inputs:
    taken, total = [], 0
    with open(out_dir / f"{name}.jsonl", "rb") as f:
      for line in f:
        if total >= budget:
          break
        taken.append(line)
        total += len(line)
    per_source.append(taken)
  mixed = [
      source[i]
      for i in range(max(map(len, per_source)))
      for source in per_source
      if i < len(source)
  ]
  stats = _write_corpus(out_dir, PILE, mixed)
  progress_log("corpus %s: built, %d docs, %.2f MB", PILE, stats["documents"], stats["bytes"] / 1e6)
  return {
      **_spec_fields(CORPUS_SPECS[PILE]),
      "status": "built",
      "params": params,
      "source": {
          "package": None,
          "version": None,
          "fetched_with": "mixture of built corpora",
          "bytes_per_source": budget,
          "documents_per_source": {n: len(s) for n, s in zip(inputs, per_source)},
      },
      **stats,
  }


def build_corpora(
    out_dir: Path | None = None,
    names: Sequence[str] | None = None,
    *,
    max_bytes_per_corpus: int = 3_000_000,
    min_bytes: int = 1_000_000,
    progress: bool = True,
    sources: Mapping[str, str | os.PathLike] | None = None,
    min_corpora: int = MIN_CORPORA,
    fetch: Fetch | None = None,
    deb_to_tar: DebToTar | None = None,
) -> dict:
  """Build (or reuse) the named corpora and the `pile` mixture in `out_dir`; returns the manifest.

  Args:
    out_dir: where `<name>.jsonl`, `manifest.json` and `_downloads/` live (default: cache root).
    names: corpora to build (default: all of CORPUS_SPECS, `pile` included).
    max_bytes_per_corpus: JSONL size cap of each source corpus.
    min_bytes: corpora smaller than this are flagged `below_min_bytes` in the manifest.
    progress: log one line per corpus at INFO level.
    sources: per-corpus local override -- an archive in the same format as the download (or a
      directory of .py files for `code`) -- read by the same extraction code, no download.
    min_corpora: raise if fewer source corpora than min(min_corpora, number requested) are built.
    fetch: downloads an archive that is not in `<out_dir>/_downloads` yet (None: such corpora are skipped
      with a reason naming the build command).
    deb_to_tar: unpacks a .deb whose data compression Python's tarfile cannot read (None: the
      `zstandard` package if installed, else such corpora are skipped).
  """
  out_dir = Path(out_dir) if out_dir is not None else default_out_dir()
  names = list(CORPUS_SPECS) if names is None else list(dict.fromkeys(names))
  unknown = [name for name in names if name not in CORPUS_SPECS]
  if unknown:
    raise ValueError(f"Unknown corpus name(s) {unknown}; known: {list(CORPUS_SPECS)}")
  sources = {name: Path(path) for name, path in (sources or {}).items()}
  unknown = [name for name in sources if name not in CORPUS_SPECS]
  if unknown:
    raise ValueError(f"Source override for unknown corpus {unknown}; known: {list(CORPUS_SPECS)}")
  progress_log = _LOG.info if progress else _LOG.debug
  out_dir.mkdir(parents=True, exist_ok=True)
  manifest = _load_manifest(out_dir)
  requested = [name for name in names if name != PILE]
  failures = {}
  for name in requested:
    spec = CORPUS_SPECS[name]
    override = sources.get(name)
    params = {
        "builder_version": BUILDER_VERSION,
        "max_bytes_per_corpus": max_bytes_per_corpus,
        "override": override.name if override else None,
    }
    if _is_current(manifest["corpora"].get(name), out_dir / f"{name}.jsonl", params):
      progress_log("corpus %s: cached", name)
      continue
    try:
      built = _build_source_corpus(spec, out_dir, max_bytes_per_corpus, override, fetch, deb_to_tar)
    except Exception as error:  # pylint: disable=broad-except  # one bad source must not stop all
      reason = (
          f"{type(error).__name__}: {error}"
          if not isinstance(error, SourceUnavailable)
          else str(error)
      )
      failures[name] = reason
      _LOG.warning(
          "corpus %r skipped (%s source %s): %s. To get it: %s",
          name,
          spec.source_kind,
          spec.package,
          reason,
          spec.how_to_get,
      )
      manifest["corpora"][name] = {
          **_spec_fields(spec),
          "status": "skipped",
          "reason": reason,
          "params": params,
      }
      (out_dir / f"{name}.jsonl").unlink(missing_ok=True)
      _save_manifest(out_dir, manifest)
      continue
    entry = {
        **_spec_fields(spec),
        "status": "built",
        "params": params,
        **built,
        "below_min_bytes": built["bytes"] < min_bytes,
    }
    if entry["below_min_bytes"]:
      _LOG.warning(
          "corpus %r has %d bytes, below min_bytes=%d (source too small)",
          name,
          built["bytes"],
          min_bytes,
      )
    manifest["corpora"][name] = entry
    _save_manifest(out_dir, manifest)
    progress_log(
        "corpus %s: built, %d docs, %.2f MB", name, entry["documents"], entry["bytes"] / 1e6
    )
  built_count = sum(manifest["corpora"].get(n, {}).get("status") == "built" for n in requested)
  needed = min(min_corpora, len(requested))
  if built_count < needed:
    details = "; ".join(f"{n}: {r}" for n, r in failures.items())
    raise RuntimeError(
        f"Only {built_count} corpora built, need at least {needed}. Failed sources: "
        f"{details or 'none'}"
    )
  if PILE in names:
    pile_entry = _build_pile(out_dir, manifest, progress_log)
    if pile_entry is None:
      raise RuntimeError(f"Cannot build {PILE!r}: no corpus has been built in {out_dir}")
    manifest["corpora"][PILE] = pile_entry
    _save_manifest(out_dir, manifest)
  return manifest


# --- lookup ----------------------------------------------------------------------------------


def list_corpora(out_dir: Path | None = None) -> list[str]:
  """Names of the corpora built in `out_dir` (registry order)."""
  out_dir = Path(out_dir) if out_dir is not None else default_out_dir()
  if not (out_dir / _MANIFEST).exists():
    raise FileNotFoundError(
        f"No corpora built in {out_dir} (no {_MANIFEST}); build them with "
        f"`{BUILD_COMMAND}`. Known corpora: {list(CORPUS_SPECS)}"
    )
  entries = _load_manifest(out_dir)["corpora"]
  return [
      name
      for name in CORPUS_SPECS
      if entries.get(name, {}).get("status") == "built" and (out_dir / f"{name}.jsonl").exists()
  ]


def corpus_path(name: str, out_dir: Path | None = None) -> Path:
  """Path of corpus `name`'s JSONL; clear errors for unknown names and unbuilt corpora."""
  if name not in CORPUS_SPECS:
    raise ValueError(f"Unknown corpus {name!r}; known corpora: {list(CORPUS_SPECS)}")
  out_dir = Path(out_dir) if out_dir is not None else default_out_dir()
  path = out_dir / f"{name}.jsonl"
  if not path.exists():
    entry = (
        _load_manifest(out_dir)["corpora"].get(name, {}) if (out_dir / _MANIFEST).exists() else {}
    )
    why = f" (skipped: {entry['reason']})" if entry.get("status") == "skipped" else ""
    raise FileNotFoundError(
        f"Corpus {name!r} is not built in {out_dir}{why}; build it with "
        f"`{BUILD_COMMAND} --names={name}`. Known corpora: {list(CORPUS_SPECS)}"
    )
  return path


def iter_documents(name: str, out_dir: Path | None = None) -> Iterator[str]:
  """Texts of corpus `name`, in file order."""
  with open(corpus_path(name, out_dir), encoding="utf-8") as f:
    for line in f:
      yield json.loads(line)["text"]
