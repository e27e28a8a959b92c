"""Dataset spec strings -> iterators of documents (str).

One string names any text source the experiments can read, so a config or a command line can switch
between the offline corpora, local files, the Hugging Face hub and TFDS without code changes:

  code, pile, ...               a corpus built by `python -m experiments.build_corpora` (jsonl), even
                                where a folder of that name exists (`./code` names the folder)
  data/x.jsonl, file:data/x.jsonl
                                a local .jsonl/.json (one JSON object per line), .txt (the whole
                                file is one document), .parquet, or a directory of such files
                                (one document per .txt file, files in sorted order)
  hf:NAME?split=train&column=text&revision=...&name=CONFIG&cache_dir=...
                                `datasets.load_dataset`; a local file or directory as NAME is
                                loaded with the json/parquet/text builder of its extension (HF's
                                prepared copy kept per content, under <cache_dir>/<content hash>)
  tfds:NAME?split=train&column=text&data_dir=...
                                `tfds.data_source` (array_record, no TensorFlow needed)

Local paths also take `?column=FIELD`. Without a column, the text field is `text`, else `content`,
else the only string column. Empty documents are skipped; a source without any non-empty document
is an error. Invalid UTF-8 in local files is replaced with U+FFFD rather than failing.
"""
import dataclasses
import hashlib
import importlib
import itertools
import json
import os
import re
import socket
import urllib.parse
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from suscept_jax import paths

_SCHEMES = ("file", "hf", "tfds")
_OPTIONS = {
    "corpus": frozenset(),
    "file": frozenset({"column"}),
    "hf": frozenset({"split", "column", "revision", "name", "cache_dir"}),
    "tfds": frozenset({"split", "column", "data_dir"}),
}
_HF_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}
_DATA_SUFFIXES = tuple(_HF_BUILDERS)
_CORPUS_NAME = re.compile(r"[A-Za-z0-9_-]+")
_SCHEME_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A parsed spec: `kind` is corpus|file|hf|tfds, `target` the name or path, `options` the query."""
  raw: str
  kind: str
  target: str
  options: Mapping[str, str]


def parse_spec(spec: str) -> DatasetSpec:
  """Parses a dataset spec string (see the module docstring); raises ValueError naming `spec`."""
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"dataset spec must be a non-empty string, got {spec!r}")
  spec = spec.strip()
  # A corpus name is the corpus even where a folder of that name exists (`./code` or `file:code` is the folder);
  # any other existing path wins, even with ':' or '?'.
  if spec not in corpus_names() and os.path.exists(os.path.expanduser(spec)):
    return DatasetSpec(spec, "file", spec, {})
  match = _SCHEME_PREFIX.match(spec)
  if match:
    kind, rest = match.group(1).lower(), spec[match.end():]
    if kind not in _SCHEMES:
      raise ValueError(f"unknown scheme {kind!r} in dataset spec {spec!r}; expected a corpus name, "
                       f"a local path, or one of {', '.join(s + ':' for s in _SCHEMES)}")
  elif _CORPUS_NAME.fullmatch(spec):
    kind, rest = "corpus", spec
  else:
    kind, rest = "file", spec
  target, options = _split_query(rest, spec)
  unknown = sorted(set(options) - _OPTIONS[kind])
  if unknown:
    allowed = ", ".join(sorted(_OPTIONS[kind])) or "none"
    raise ValueError(f"unknown option(s) {unknown} in dataset spec {spec!r}; allowed for {kind}: {allowed}")
  if not target:
    raise ValueError(f"dataset spec {spec!r} names no dataset")
  blank = sorted(k for k, v in options.items() if not v)
  if blank:  # (`?column=` fell back to guessing the column)
    raise ValueError(f"option(s) {blank} in dataset spec {spec!r} have no value")
  return DatasetSpec(spec, kind, target, options)


def _split_query(rest: str, spec: str) -> tuple[str, dict[str, str]]:
  if "?" not in rest or os.path.exists(os.path.expanduser(rest)):
    return rest, {}
  target, query = rest.split("?", 1)
  options = {}
  for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
    if key in options:
      raise ValueError(f"option {key!r} given twice in dataset spec {spec!r}")
    options[key] = value
  return target, options


def check_spec(spec: str) -> DatasetSpec:
  """Everything about `spec` that can be checked without reading data: its syntax, a corpus name that
  exists (built or buildable), a local path that exists and holds data files. Hub and TFDS names are only
  checked for syntax here (reaching them is the slow part). Raises ValueError/FileNotFoundError naming it."""
  parsed = parse_spec(spec)
  if parsed.kind == "corpus":
    known = corpus_names()
    if parsed.target not in known:
      raise ValueError(f"dataset {spec!r}: no such corpus (known: {', '.join(known)}) and no such file")
  elif parsed.kind == "file":
    data_files(_existing_path(parsed.target, spec))
  elif parsed.kind == "hf" and _looks_like_path(parsed.target):
    data_files(_existing_path(parsed.target, spec))
  return parsed


def same_local_data(spec_a: str, spec_b: str) -> bool:
  """Whether two specs name one local file or folder by two spellings of its path (`data/x.jsonl`,
  `./data/x.jsonl`, `$PWD/data/x.jsonl`, `file:data/x.jsonl`), with the same options: the same dataset. False
  for anything else (corpora, hub and TFDS names, a path that no longer exists, a spec that no longer parses)."""
  try:
    a, b = parse_spec(spec_a), parse_spec(spec_b)
    local = lambda parsed: parsed.kind == "file" or (parsed.kind == "hf" and _looks_like_path(parsed.target))
    return (a.kind == b.kind and local(a) and dict(a.options) == dict(b.options)
            and os.path.samefile(os.path.expanduser(a.target), os.path.expanduser(b.target)))
  except (ValueError, OSError):
    return False


def corpus_names() -> list[str]:
  """Names of the offline corpora (built by `python -m experiments.build_corpora`, or on first use)."""
  corpora = importlib.import_module("suscept_jax.data.corpora")
  return sorted(set(corpora.CORPUS_SPECS) | {"pile"})


def iter_documents(spec: str) -> Iterator[str]:
  """Returns an iterator over the non-empty documents of `spec`.

  The spec is parsed and the source opened eagerly (so a bad spec fails here, not at the first
  `next`); documents are then read lazily, in the source's order.
  """
  parsed = parse_spec(spec)
  if parsed.kind == "corpus":
    return iter_local_documents(_corpus_path(parsed.target), column="text", name=spec)
  if parsed.kind == "file":
    return iter_local_documents(parsed.target, column=parsed.options.get("column"), name=spec)
  if parsed.kind == "hf":
    dataset, column = _load_hf(parsed)
    return _non_empty(_iter_hf(dataset, column, spec), spec)
  source, column = _load_tfds(parsed)
  return _non_empty(_iter_tfds(source, column), spec)


# How local data files are identified. "content": by their bytes (with their names inside a directory), so a
# per-host copy, a moved or a touched file is the same data; "stat": by resolved path, size and mtime, what results
# directories written before content identity existed recorded (kept so they resume).
DATA_IDENTITIES = ("content", "stat")


def dataset_fingerprint(spec: str, *, identity: str = "content") -> str:
  """A stable string identifying the data behind `spec`, for cache keys and results directories.

  Local files (corpora, paths, hf: and tfds: data on disk): the content of every data file (see
  DATA_IDENTITIES for `identity`). hf from the hub: the spec plus the loaded dataset's own fingerprint
  (which covers the hub revision). tfds: the spec plus version, split sizes and the prepared files.
  """
  if identity not in DATA_IDENTITIES:
    raise ValueError(f"identity must be one of {DATA_IDENTITIES}, got {identity!r}")
  parsed = parse_spec(spec)
  # Where HF caches does not change the data, so it is not part of the identity.
  options = {k: v for k, v in sorted(parsed.options.items()) if k != "cache_dir"}
  parts = {"kind": parsed.kind, "target": parsed.target, "options": options}
  if parsed.kind == "corpus":
    parts["files"] = _files_identity(_corpus_path(parsed.target), identity)
  elif parsed.kind == "file":
    parts["files"] = _files_identity(_existing_path(parsed.target, spec), identity)
  elif parsed.kind == "hf":
    dataset, column = _load_hf(parsed)
    parts.update(column=column, rows=len(dataset))
    local = Path(parsed.target).expanduser()
    if local.exists():
      parts["files"] = _files_identity(local, identity)
    # HF's own fingerprint of local files follows their mtimes: for those the files' content stands in for it.
    if identity == "stat" or not local.exists():
      parts["hf"] = getattr(dataset, "_fingerprint", None)
  else:
    parts.update(_tfds_identity(parsed, identity))
  digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
  return f"{parsed.kind}-{digest[:20]}"


# --- local files ------------------------------------------------------------------------------


def iter_local_documents(path, column: str | None = None, *, name: str | None = None) -> Iterator[str]:
  """Non-empty documents of a local file or directory (see module docstring); `name` is for errors."""
  name = name or str(path)
  files = data_files(_existing_path(path, name))
  return _non_empty((doc for f in files for doc in _read_file(f, column)), name)


def files_fingerprint(path) -> str:
  """Hash of the content (and names) of every data file under a local `path`."""
  identity = _files_identity(_existing_path(path, str(path)), "content")
  return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:20]


def data_files(path) -> list[Path]:
  """The data files of `path`: itself if a file, else the .jsonl/.json/.txt/.parquet files under it (in
  symlinked folders too, hidden ones skipped), sorted."""
  path = Path(path).expanduser()
  if path.is_file():
    if path.suffix.lower() not in _DATA_SUFFIXES:
      raise ValueError(f"unsupported file type {path.suffix!r} for {path}; expected one of {_DATA_SUFFIXES}")
    return [path]
  files = sorted(p for p in _walk_files(path) if p.suffix.lower() in _DATA_SUFFIXES)
  if not files:
    raise FileNotFoundError(f"no {'/'.join(_DATA_SUFFIXES)} files in directory {path}")
  return files


def _walk_files(root: Path) -> Iterator[Path]:
  """Files under `root`, following symlinked folders (each real folder once), skipping hidden files and folders
  (.ipynb_checkpoints, .git, editors' copies: not the dataset)."""
  seen = set()
  for folder, subfolders, names in os.walk(root, followlinks=True):
    real = os.path.realpath(folder)
    if real in seen:  # a link back up the tree, or two links to one folder
      subfolders[:] = []
      continue
    seen.add(real)
    subfolders[:] = [d for d in subfolders if not d.startswith(".")]
    yield from (Path(folder) / n for n in names if not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))


def _existing_path(path, name: str) -> Path:
  resolved = Path(path).expanduser()
  if not resolved.exists():
    raise FileNotFoundError(f"dataset {name!r}: no such file or directory: {resolved}")
  return resolved


def _read_file(path: Path, column: str | None) -> Iterator[str]:
  suffix = path.suffix.lower()
  if suffix == ".txt":
    # Text mode gives universal newlines, like the HF `text` builder, so both loaders agree.
    yield path.read_text(encoding="utf-8", errors="replace")
  elif suffix == ".parquet":
    yield from _read_parquet(path, column)
  else:
    yield from _read_json_lines(path, column)


_COLUMN_SAMPLE = 100  # JSON records whose keys decide the text column (HF's json builder looks at every row)


def _read_json_lines(path: Path, column: str | None) -> Iterator[str]:
  """Yields the text field of each JSON object in a jsonl file (or a .json holding one array or one object).

  The column is chosen from the first records together: a field that is null or missing in the first record
  is still found (the first record alone picked another column, where HF's loader took the right one)."""
  records = _json_objects(path)
  sample = list(itertools.islice(records, _COLUMN_SAMPLE))
  if not sample:  # no records: an empty dataset, which `_non_empty` names (not a column it cannot pick)
    return
  values = {}
  for _, record in sample:
    for key, value in record.items():
      if value is not None:
        values.setdefault(key, set()).add(isinstance(value, str))
  is_string = {key: kinds == {True} for key, kinds in values.items()}
  for _, record in sample:  # fields only ever null: not string columns, but columns
    is_string.update({key: False for key in record if key not in is_string})
  field = pick_column(is_string, column, str(path))
  for line_no, record in itertools.chain(sample, records):
    value = record.get(field)
    if value is None:
      continue
    if not isinstance(value, str):
      raise ValueError(f"{path}:{line_no}: field {field!r} is a {type(value).__name__}, not a string")
    yield value


def _json_objects(path: Path) -> Iterator[tuple[int, dict]]:
  """(number, record) of each record of `_json_records`, which must be a JSON object."""
  for line_no, record in _json_records(path):
    if not isinstance(record, dict):
      raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
    yield line_no, record


def _json_records(path: Path) -> Iterator[tuple[int, object]]:
  """(number, record) of a JSON-lines file, or of a .json file holding one array (numbered by element) or
  one object; a UTF-8 byte-order mark is allowed, as HF's loader allows it."""
  with open(path, "rb") as f:
    head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    f.seek(0)
    whole_file = head.startswith(b"[") or (path.suffix.lower() == ".json" and head.startswith(b"{"))
    if whole_file:
      text = f.read().decode("utf-8-sig", errors="replace")
      try:
        value = json.loads(text)
      except json.JSONDecodeError as e:
        if not head.startswith(b"{"):
          raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
      else:  # (a .json file of one object per line fails as a whole: read it by lines below)
        yield from enumerate(value if isinstance(value, list) else [value], 1)
        return
      f.seek(0)
    for n, raw in enumerate(f, 1):
      if raw.strip():
        yield n, _parse_json_line(raw, path, n)


def _parse_json_line(raw: bytes, path: Path, line_no: int):
  try:
    return json.loads(raw.decode("utf-8-sig" if line_no == 1 else "utf-8", errors="replace"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None


def _read_parquet(path: Path, column: str | None) -> Iterator[str]:
  import pyarrow as pa
  import pyarrow.parquet as pq

  parquet = pq.ParquetFile(path)
  schema = parquet.schema_arrow
  text_type = lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
  is_string = {f.name: text_type(f.type) or (pa.types.is_dictionary(f.type) and text_type(f.type.value_type))
               for f in schema}
  field = pick_column(is_string, column, str(path))
  for batch in parquet.iter_batches(batch_size=_BATCH, columns=[field]):
    yield from (text for text in batch.column(0).to_pylist() if text is not None)


# --- Hugging Face datasets ----------------------------------------------------------------------


def _load_hf(parsed: DatasetSpec):
  """Returns (datasets.Dataset, text column) for an `hf:` spec."""
  import datasets

  split = parsed.options.get("split", "train")
  kwargs = {"split": split, "cache_dir": parsed.options.get("cache_dir") or None}
  local = Path(parsed.target).expanduser()
  if local.exists():
    files = data_files(local)
    builders = {_HF_BUILDERS[f.suffix.lower()] for f in files}
    if len(builders) != 1:
      raise ValueError(f"dataset {parsed.raw!r} mixes file types {sorted(builders)}; "
                       "use one type per directory")
    path_or_builder = builders.pop()
    kwargs["data_files"] = [str(f) for f in files]
    # HF reuses its prepared copy of local files while their mtimes hold (a same-size edit with the mtime put
    # back served the old rows under the new content's fingerprint): kept per content, it holds these bytes.
    kwargs["cache_dir"] = str(Path(kwargs["cache_dir"] or paths.cache_root() / "hf_local").expanduser()
                              / files_fingerprint(local))
    if path_or_builder == "text":
      kwargs.update(sample_by="document", encoding_errors="replace")
  elif _looks_like_path(parsed.target):
    raise FileNotFoundError(f"dataset {parsed.raw!r}: no such file or directory: {local}")
  else:
    path_or_builder = parsed.target
    for key in ("name", "revision"):
      if parsed.options.get(key):
        kwargs[key] = parsed.options[key]
  try:
    dataset = datasets.load_dataset(path_or_builder, streaming=False, **kwargs)
  except StopIteration:  # (HF's json builder on a file without a record)
    raise ValueError(f"dataset {parsed.raw!r} is empty: it has no records") from None
  except Exception as e:  # Keep the library's error, but say which spec it was about.
    _add_note(e, f"while loading dataset spec {parsed.raw!r}")
    raise
  is_string = {k: isinstance(v, datasets.Value) and v.dtype in ("string", "large_string")
               for k, v in dataset.features.items()}
  return dataset, pick_column(is_string, parsed.options.get("column"), parsed.raw)


def _iter_hf(dataset, column: str, name: str) -> Iterator[str]:
  try:
    for batch in dataset.select_columns([column]).iter(batch_size=_BATCH):
      yield from (text for text in batch[column] if text is not None)
  except Exception as e:  # (e.g. invalid UTF-8 in a local file, found while reading, after tokenizing began)
    _add_note(e, f"while reading dataset spec {name!r}")
    raise


def _looks_like_path(target: str) -> bool:
  return target.startswith(("/", "./", "../", "~")) or target.lower().endswith(_DATA_SUFFIXES)


# --- TFDS -----------------------------------------------------------------------------------------


def _tfds_builder(parsed: DatasetSpec):
  """The TFDS builder of a `tfds:` spec, which must be prepared already: a clear error naming the spec for an
  unknown name (not TFDS's catalogue of every dataset) or one not prepared in its data_dir (nothing is
  downloaded here)."""
  import tensorflow_datasets as tfds

  data_dir = parsed.options.get("data_dir") or None
  try:
    builder = tfds.builder(parsed.target, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise FileNotFoundError(f"dataset {parsed.raw!r}: TFDS has no dataset {parsed.target!r} registered or prepared"
                            f" in {data_dir or 'its default data_dir'}") from None
  if not builder.is_prepared():
    raise FileNotFoundError(f"dataset {parsed.raw!r}: TFDS dataset {parsed.target!r} is not prepared in "
                            f"{builder.data_dir} (prepare it first: `tfds build`, or for a text file "
                            f"suscept_jax.data.build_tfds_text_dataset)")
  return builder


def _load_tfds(parsed: DatasetSpec):
  """Returns (tfds array_record data source, text feature name) for a `tfds:` spec."""
  import tensorflow_datasets as tfds

  _tfds_builder(parsed)
  try:
    source = tfds.data_source(parsed.target, split=parsed.options.get("split", "train"),
                              data_dir=parsed.options.get("data_dir") or None, download=False)
  except Exception as e:
    _add_note(e, f"while loading dataset spec {parsed.raw!r}")
    raise
  features = source.dataset_info.features
  is_string = {k: isinstance(v, tfds.features.Text) for k, v in features.items()}
  return source, pick_column(is_string, parsed.options.get("column"), parsed.raw)


def _iter_tfds(source, column: str) -> Iterator[str]:
  for start in range(0, len(source), _BATCH):
    for example in source.__getitems__(list(range(start, min(start + _BATCH, len(source))))):
      value = example[column]
      yield value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _tfds_identity(parsed: DatasetSpec, identity: str) -> dict:
  builder = _tfds_builder(parsed)
  info = builder.info
  split = parsed.options.get("split", "train")
  splits = {name: [s.num_examples, s.num_bytes] for name, s in info.splits.items()}
  data_path = Path(os.fspath(builder.data_path))
  if not data_path.is_dir():
    files = []
  elif identity == "stat":
    files = _file_stats(sorted(p for p in data_path.iterdir() if p.is_file()))
  else:  # the records themselves (the JSON beside them describes them, with local paths)
    files = _files_identity(data_path, identity, files=sorted(
        p for p in data_path.iterdir() if p.is_file() and p.suffix.lower() != ".json"))
  return {"full_name": info.full_name, "version": str(info.version), "split": split, "splits": splits,
          "files": files}


# --- shared helpers -------------------------------------------------------------------------------


def pick_column(is_string: Mapping[str, bool], column: str | None, where: str) -> str:
  """The text column: `column` if given, else `text`, `content`, or the only string column."""
  available = ", ".join(f"{k} ({'string' if s else 'non-string'})" for k, s in is_string.items())
  if column:
    if column not in is_string:
      raise ValueError(f"column {column!r} not found in {where}; available columns: {available or 'none'}")
    if not is_string[column]:
      raise ValueError(f"column {column!r} of {where} is not a string column; available columns: {available}")
    return column
  for candidate in ("text", "content"):
    if is_string.get(candidate):
      return candidate
  strings = [k for k, s in is_string.items() if s]
  if len(strings) == 1:
    return strings[0]
  raise ValueError(f"cannot tell which column of {where} holds the text; available columns: "
                   f"{available or 'none'}; pick one with ?column=NAME")


def _non_empty(documents: Iterable[str], name: str) -> Iterator[str]:
  count = 0
  for doc in documents:
    if doc:
      count += 1
      yield doc
  if count == 0:
    raise ValueError(f"dataset {name!r} is empty: it has no non-empty documents")


def _corpus_path(name: str) -> Path:
  # Imported here so this module works whether or not the corpora module is present/built.
  corpora = importlib.import_module("suscept_jax.data.corpora")
  return Path(corpora.corpus_path(name))


def _files_identity(root: Path, identity: str, files: Iterable[Path] | None = None) -> list:
  """The identity of the data files under `root` (default: `data_files(root)`): [name inside `root` ("" for a
  file), size, sha256 of the bytes] each for "content", `_file_stats` for "stat"."""
  files = data_files(root) if files is None else list(files)
  if identity == "stat":
    return _file_stats(files)
  return [[path.relative_to(root).as_posix() if root.is_dir() else "", path.stat().st_size, content_digest(path)]
          for path in files]


def content_digest(path: Path) -> str:
  """sha256 of a file's bytes, cached under the cache root by host, resolved path, device, inode, size, mtime and
  ctime: a large corpus is read once per copy, and a rewritten file is read again, even one whose size and
  mtime were put back (`cp -p`, `rsync -t`, `tar x` set the mtime, never the ctime), and even where hosts share
  the cache root but not the data disk."""
  cached = paths.cache_root() / "file_digests" / _digest_key(path, path.stat())
  try:
    digest = cached.read_text().strip()
    if re.fullmatch(r"[0-9a-f]{64}", digest):
      return digest
  except OSError:
    pass
  with open(path, "rb") as f:
    digest = hashlib.file_digest(f, "sha256").hexdigest()
  try:
    paths.atomic_write_bytes(cached, digest.encode())
  except OSError:  # a read-only cache costs only the re-read
    pass
  return digest


def _digest_key(path: Path, stat) -> str:
  """Where a file's digest is cached: anything that differs between two files, or two versions of one file."""
  return hashlib.sha256(json.dumps([socket.gethostname(), str(path.resolve()), stat.st_dev, stat.st_ino,
                                    stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]).encode()).hexdigest()[:32]


def _file_stats(files: Iterable[Path]) -> list:
  """[resolved path, size, mtime_ns] of each file: the "stat" identity (changes whenever a file is rewritten)."""
  stats = []
  for path in files:
    stat = path.stat()
    stats.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
  return stats


def _add_note(error: BaseException, note: str) -> None:
  if hasattr(error, "add_note"):  # Python >= 3.11
    error.add_note(note)
