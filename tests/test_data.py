"""Data pipeline: spec parsing, the local/HF/TFDS loaders, BPE tokenizers, packing and its cache."""
import json
import os
import subprocess
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from suscept_jax import data
from suscept_jax.data import packing, sources

EOT = "<|endoftext|>"
K = 16

DOCUMENTS = [
    "The quick brown fox jumps over the lazy dog.\nIt was not amused.",
    "def add(a, b):\n    return a + b\n",
    "héllo wörld, 漢字 and an emoji 🙂 in one line",
    "Short.",
    "Tabs\tand  double  spaces and a trailing newline\n",
] * 6


@pytest.fixture(scope="module")
def tokenizer():
  return data.train_bpe_tokenizer(DOCUMENTS, vocab_size=300)


@pytest.fixture
def jsonl_path(tmp_path):
  records = [{"text": doc, "id": i} for i, doc in enumerate(DOCUMENTS)]
  records.insert(3, {"text": "", "id": -1})  # Empty documents are skipped by every loader.
  path = tmp_path / "docs.jsonl"
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
  return path


def _contexts(spec, tokenizer, tmp_path, **kwargs):
  return data.load_contexts(spec, tokenizer, K, cache_dir=tmp_path / "cache", progress=False, **kwargs)


# --- packing and tokenizers -------------------------------------------------------------------


def test_pack_round_trips_text(tokenizer):
  ascii_docs = [f"Document number {i} says: " + "lorem ipsum dolor " * (i % 4 + 1) for i in range(12)]
  eos = data.eos_id(tokenizer)
  ids_per_doc = [tokenizer.encode(doc).ids for doc in ascii_docs]
  contexts_NxK = data.pack_documents(ids_per_doc, K, eos)
  n_stream = sum(len(ids) + 1 for ids in ids_per_doc)
  assert contexts_NxK.dtype == np.int32 and contexts_NxK.shape == (n_stream // K, K)
  decoded = "".join(data.decode_context(tokenizer, row) for row in contexts_NxK)
  joined = "".join(doc + EOT for doc in ascii_docs)
  assert joined.startswith(decoded)
  tail_ids = [t for ids in ids_per_doc for t in ids + [eos]][contexts_NxK.size:]
  assert decoded + tokenizer.decode(tail_ids, skip_special_tokens=False) == joined
  assert len(tail_ids) < K


def test_pack_documents_limits_and_errors():
  docs = [[1, 2, 3]] * 10  # 40 tokens with eos.
  assert data.pack_documents(docs, 8, 0).shape == (5, 8)
  capped = data.pack_documents(iter(docs), 8, 0, max_contexts=2)
  np.testing.assert_array_equal(capped, [[1, 2, 3, 0, 1, 2, 3, 0]] * 2)
  with pytest.raises(ValueError, match=r"gave 8 tokens.*2 documents.*context of 16 tokens"):
    data.pack_documents(docs[:2], 16, 0)
  with pytest.raises(ValueError, match="context_length"):
    data.pack_documents(docs, 1, 0)


def test_tokenizer_round_trip_determinism_and_save(tokenizer, tmp_path):
  for text in DOCUMENTS[:5] + ["unseen: Ωμέγα ∑ 🚀\r\n\x00 end", " leading space"]:
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
  again = data.train_bpe_tokenizer(DOCUMENTS, vocab_size=300, path=tmp_path / "tok")
  assert data.tokenizer_fingerprint(again) == data.tokenizer_fingerprint(tokenizer)
  assert sorted(os.listdir(tmp_path / "tok")) == ["tokenizer.json"]  # No temp file left behind.
  loaded = data.load_tokenizer(tmp_path / "tok" / "tokenizer.json")
  assert data.tokenizer_fingerprint(loaded) == data.tokenizer_fingerprint(tokenizer)
  from_dir = data.load_tokenizer(tmp_path / "tok")
  assert data.tokenizer_fingerprint(from_dir) == data.tokenizer_fingerprint(loaded)
  other = data.train_bpe_tokenizer(DOCUMENTS, vocab_size=280)
  assert data.tokenizer_fingerprint(other) != data.tokenizer_fingerprint(tokenizer)


def test_load_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.json"):
    data.load_tokenizer(tmp_path / "nope.json")
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="bad.json is not a valid tokenizer"):
    data.load_tokenizer(bad)


def test_eos_id_and_vocab_fit(tokenizer):
  assert tokenizer.id_to_token(data.eos_id(tokenizer)) == EOT
  no_eot = data.train_bpe_tokenizer(DOCUMENTS, vocab_size=300, special_tokens=("<pad>",))
  with pytest.raises(ValueError, match=r"no '<\|endoftext\|>' token.*<pad>"):
    data.eos_id(no_eot)
  assert data.eos_id(no_eot, "<pad>") == no_eot.token_to_id("<pad>")
  data.check_vocab_fits(tokenizer, 300)
  with pytest.raises(ValueError, match=r"^tokenizer vocab 300 does not fit the model's d_vocab=299$"):
    data.check_vocab_fits(tokenizer, 299)


def test_token_labels_are_distinct_and_carry_the_tokens_bytes():
  """Tokens holding part of a multi-byte character decode alone to "\ufffd": one label for many tokens, which
  the per-token tables then counted as one token. Their labels now carry their bytes, checked here against
  what the tokenizer itself encodes."""
  import re

  from suscept_jax.data import tokenizer as tokenizer_lib
  multibyte = "naïve café — “quoted” 日本語 and 🎉, Ωμέγα"
  tok = data.train_bpe_tokenizer([multibyte] * 40 + DOCUMENTS, vocab_size=400)
  labels = tokenizer_lib.token_labels(tok, range(tokenizer_lib.vocab_size(tok)))
  assert len(set(labels.values())) == tokenizer_lib.vocab_size(tok)  # decoded alone, dozens of tokens share "\ufffd"
  assert not any("\ufffd" in label for label in labels.values())
  assert labels[tok.token_to_id(EOT)] == EOT and labels[tok.encode(" the").ids[0]] == " the"

  def label_bytes(label):  # text as UTF-8, <0xNN> as the byte it names
    parts = re.split(r"<0x([0-9A-F]{2})>", label)
    return b"".join(bytes([int(p, 16)]) if i % 2 else p.encode() for i, p in enumerate(parts))

  for text in (multibyte, "unseen: 🚀 ∑ ü"):
    ids = tok.encode(text).ids
    assert b"".join(label_bytes(labels[i]) for i in ids) == text.encode()
  assert "<0xF0><0x9F>" in "".join(labels[i] for i in tok.encode("🚀").ids)  # a character split over tokens


# --- loaders agree ------------------------------------------------------------------------------


def test_plain_hf_and_tfds_loaders_agree_on_jsonl(jsonl_path, tokenizer, tmp_path):
  hf_cache = tmp_path / "hf"
  tfds_dir = tmp_path / "tfds"
  data.build_tfds_text_dataset("suscept_docs", jsonl_path, tfds_dir)
  specs = [str(jsonl_path), f"file:{jsonl_path}", f"hf:{jsonl_path}?cache_dir={hf_cache}",
           f"tfds:suscept_docs?data_dir={tfds_dir}&split=train"]
  assert [list(sources.iter_documents(s)) for s in specs] == [DOCUMENTS] * len(specs)
  reference = _contexts(specs[0], tokenizer, tmp_path)
  assert reference.shape[1] == K and reference.shape[0] > 10
  for spec in specs[1:]:
    np.testing.assert_array_equal(_contexts(spec, tokenizer, tmp_path), reference, err_msg=spec)
  fingerprints = [data.dataset_fingerprint(s) for s in specs]
  assert fingerprints[0] == fingerprints[1]  # `file:` is just explicit about a local path.
  assert len(set(fingerprints)) == 3


def test_plain_and_hf_loaders_agree_on_parquet(tokenizer, tmp_path):
  path = tmp_path / "docs.parquet"
  pq.write_table(pa.table({"id": list(range(len(DOCUMENTS))), "body": DOCUMENTS}), path)
  plain = _contexts(str(path), tokenizer, tmp_path)  # `body` is the only string column.
  hf = _contexts(f"hf:{path}?cache_dir={tmp_path / 'hf'}&column=body", tokenizer, tmp_path)
  np.testing.assert_array_equal(plain, hf)
  assert list(sources.iter_documents(str(path))) == DOCUMENTS


def test_text_directory_is_one_document_per_file_for_all_loaders(tmp_path):
  folder = tmp_path / "texts"
  folder.mkdir()
  for i, doc in enumerate(DOCUMENTS[:5]):
    (folder / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
  (folder / "03b.txt").write_bytes(b"windows\r\nline endings\r\n")
  expected = DOCUMENTS[:4] + ["windows\nline endings\n"] + DOCUMENTS[4:5]
  data.build_tfds_text_dataset("suscept_texts", folder, tmp_path / "tfds")
  for spec in [str(folder), f"hf:{folder}?cache_dir={tmp_path / 'hf'}",
               f"tfds:suscept_texts?data_dir={tmp_path / 'tfds'}"]:
    assert list(sources.iter_documents(spec)) == expected, spec


def test_tfds_dataset_is_rebuilt_when_source_changes(tmp_path):
  source = tmp_path / "a.jsonl"
  source.write_text('{"text": "first"}\n')
  data.build_tfds_text_dataset("suscept_rebuild", source, tmp_path / "tfds")
  spec = f"tfds:suscept_rebuild?data_dir={tmp_path / 'tfds'}"
  assert list(sources.iter_documents(spec)) == ["first"]
  source.write_text('{"text": "second"}\n{"text": "third"}\n')
  data.build_tfds_text_dataset("suscept_rebuild", source, tmp_path / "tfds")
  assert list(sources.iter_documents(spec)) == ["second", "third"]


# --- cache ----------------------------------------------------------------------------------------


def _cache_entries(cache_dir):
  return sorted(p.name for p in cache_dir.iterdir()) if cache_dir.exists() else []


def test_cache_hit_does_not_tokenize(jsonl_path, tokenizer, tmp_path, monkeypatch):
  first = _contexts(str(jsonl_path), tokenizer, tmp_path)
  assert isinstance(first, np.memmap) and not first.flags.writeable
  [npy] = (tmp_path / "cache").glob("*.npy")
  mtime = npy.stat().st_mtime_ns
  sidecar = json.loads(npy.with_suffix(".json").read_text())
  assert sidecar["spec"] == str(jsonl_path) and sidecar["n_contexts"] == len(first)
  assert sidecar["tokenizer"] == data.tokenizer_fingerprint(tokenizer)
  assert sidecar["n_documents_read"] == len(DOCUMENTS)

  def no_tokenizing(*args):
    raise AssertionError("cache miss: tokenized again")

  monkeypatch.setattr(packing, "_tokenize", no_tokenizing)
  np.testing.assert_array_equal(_contexts(str(jsonl_path), tokenizer, tmp_path), first)
  assert npy.stat().st_mtime_ns == mtime
  with pytest.raises(AssertionError, match="cache miss"):  # Another key is another entry.
    _contexts(str(jsonl_path), tokenizer, tmp_path, max_contexts=3)
  monkeypatch.undo()
  capped = _contexts(str(jsonl_path), tokenizer, tmp_path, max_contexts=3)
  np.testing.assert_array_equal(capped, first[:3])


def test_a_damaged_cache_entry_is_tokenized_again(jsonl_path, tokenizer, tmp_path):
  """A cached .npy cut short after it was written stopped every run with numpy's "mmap length is greater than
  file size", naming no file: it is a cache, so it is built again, with a warning naming it."""
  first = np.array(_contexts(str(jsonl_path), tokenizer, tmp_path))
  [npy] = (tmp_path / "cache").glob("*.npy")
  with open(npy, "r+b") as f:
    f.truncate(npy.stat().st_size // 2)
  with pytest.warns(UserWarning, match=rf"cached contexts .*{npy.name} are damaged .*tokenizing .* again"):
    again = _contexts(str(jsonl_path), tokenizer, tmp_path)
  np.testing.assert_array_equal(again, first)


def test_interrupted_write_leaves_no_cache_file(jsonl_path, tokenizer, tmp_path, monkeypatch):
  real_tokenize = packing._tokenize

  def interrupted(documents, tok):
    batches = real_tokenize(documents, tok)
    yield next(batches)
    raise KeyboardInterrupt

  monkeypatch.setattr(packing, "_DOCS_PER_BATCH", 4)
  monkeypatch.setattr(packing, "_tokenize", interrupted)
  with pytest.raises(KeyboardInterrupt):
    _contexts(str(jsonl_path), tokenizer, tmp_path)
  assert _cache_entries(tmp_path / "cache") == []
  monkeypatch.setattr(packing, "_tokenize", real_tokenize)
  assert len(_contexts(str(jsonl_path), tokenizer, tmp_path)) > 0


def test_dataset_fingerprint_follows_file_changes(jsonl_path):
  before = data.dataset_fingerprint(str(jsonl_path))
  assert data.dataset_fingerprint(str(jsonl_path)) == before
  with open(jsonl_path, "a") as f:
    f.write('{"text": "one more"}\n')
  assert data.dataset_fingerprint(str(jsonl_path)) != before


def test_an_edit_that_puts_size_and_mtime_back_is_still_seen(jsonl_path, tokenizer, tmp_path):
  """`cp -p`, `rsync -t` and `tar x` restore a file's mtime: a same-size edit with its mtime put back is new
  data to the fingerprint, to the token cache and to HF's loader of local files (it served the old rows)."""
  path = tmp_path / "same.jsonl"
  old_text, new_text = " ".join(["old"] * 30), " ".join(["NEW"] * 30)
  path.write_text(json.dumps({"text": old_text}) + "\n")
  hf_spec = f"hf:{path}?cache_dir={tmp_path / 'hf'}"
  before = [data.dataset_fingerprint(spec) for spec in (str(path), hf_spec)]
  assert list(data.iter_documents(hf_spec)) == [old_text]
  assert "old" in data.decode_context(tokenizer, _contexts(str(path), tokenizer, tmp_path)[0])
  stat = path.stat()
  path.write_text(json.dumps({"text": new_text}) + "\n")
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
  assert [data.dataset_fingerprint(spec) for spec in (str(path), hf_spec)] != before
  assert list(data.iter_documents(hf_spec)) == [new_text]
  assert "NEW" in data.decode_context(tokenizer, _contexts(str(path), tokenizer, tmp_path)[0])


def test_the_digest_cache_key_tells_hosts_and_inodes_apart(jsonl_path, monkeypatch):
  """A cache root shared by hosts (an NFS home) with the data on each host's own disk: the same path, size and
  mtimes may hold other bytes on another host, or after a file is replaced by another (a new inode)."""
  stat = jsonl_path.stat()
  key = sources._digest_key(jsonl_path, stat)
  other_inode = types.SimpleNamespace(**{k: getattr(stat, k) for k in dir(stat) if k.startswith("st_")})
  other_inode.st_ino += 1
  assert sources._digest_key(jsonl_path, other_inode) != key
  monkeypatch.setattr(sources.socket, "gethostname", lambda: "another-host")
  assert sources._digest_key(jsonl_path, stat) != key


def test_copies_of_the_same_data_have_one_fingerprint(jsonl_path, tmp_path, monkeypatch):
  """Each host of a pod slice may hold its own copy of a dataset (copied or built there: other mtimes, other
  mounts) behind the same spec: the same bytes are the same data, other bytes are not. The "stat" identity
  (what older results directories recorded) tells the copies apart by path and mtime."""
  import shutil
  hosts = [tmp_path / f"host{i}" for i in range(2)]
  for i, host in enumerate(hosts):
    (host / "data").mkdir(parents=True)
    shutil.copyfile(jsonl_path, host / "data" / "docs.jsonl")
    (host / "data" / "notes.txt").write_text("A plain text document.\n")
    for f in (host / "data").iterdir():
      os.utime(f, ns=(1_700_000_000_000_000_000 + i, 1_700_000_000_000_000_000 + i))

  def on_each_host(spec, identity):
    seen = []
    for host in hosts:
      monkeypatch.chdir(host)
      seen.append(data.dataset_fingerprint(spec, identity=identity))
    return seen

  def build_tfds(host):  # each host prepares its own TFDS copy (records byte-identical, files of its own)
    monkeypatch.chdir(host)
    data.build_tfds_text_dataset("suscept_copy", "data/docs.jsonl", "tfds")

  specs = ["data/docs.jsonl", "data", f"hf:data/docs.jsonl?cache_dir={tmp_path / 'hf'}",
           "tfds:suscept_copy?data_dir=tfds&split=train"]
  for host in hosts:
    build_tfds(host)
  for spec in specs:
    content, stat = on_each_host(spec, "content"), on_each_host(spec, "stat")
    assert content[0] == content[1] and stat[0] != stat[1], spec
  with open(hosts[1] / "data" / "docs.jsonl", "a") as f:
    f.write('{"text": "one more on host 1"}\n')
  build_tfds(hosts[1])
  for spec in specs:
    content = on_each_host(spec, "content")
    assert content[0] != content[1], spec
  with pytest.raises(ValueError, match="identity must be one of"):
    data.dataset_fingerprint(specs[0], identity="mtime")


def test_stat_identity_is_what_older_versions_recorded(jsonl_path):
  """Results directories written before content identity recorded this hash (rebuilt here by hand): resuming
  them compares like with like."""
  import hashlib
  stat = jsonl_path.stat()
  parts = {"kind": "file", "target": str(jsonl_path), "options": {},
           "files": [[str(jsonl_path.resolve()), stat.st_size, stat.st_mtime_ns]]}
  expected = "file-" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
  assert data.dataset_fingerprint(str(jsonl_path), identity="stat") == expected


# --- errors and edge cases --------------------------------------------------------------------


def test_errors_name_the_input(jsonl_path, tmp_path):
  missing = tmp_path / "missing.jsonl"
  for spec in [str(missing), f"file:{missing}", f"hf:{missing}"]:
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
      data.iter_documents(spec)
  with pytest.raises(ValueError, match=r"unknown scheme 'gs' in dataset spec 'gs://bucket/x.jsonl'"):
    data.iter_documents("gs://bucket/x.jsonl")
  with pytest.raises(ValueError, match=r"unknown option.*'splitt'.*hf"):
    data.iter_documents(f"hf:{jsonl_path}?splitt=train")
  empty = tmp_path / "empty.jsonl"
  empty.write_text('{"text": ""}\n\n{"text": null}\n')
  with pytest.raises(ValueError, match=r"empty\.jsonl' is empty"):
    list(data.iter_documents(str(empty)))
  with pytest.raises(ValueError, match=r"empty\.jsonl.* is empty"):
    list(data.iter_documents(f"hf:{empty}?cache_dir={tmp_path / 'hf'}"))


@pytest.mark.parametrize("scheme", ["plain", "hf", "tfds", "parquet"])
def test_unknown_column_lists_available_columns(scheme, jsonl_path, tmp_path):
  spec = {
      "plain": f"{jsonl_path}?column=body",
      "hf": f"hf:{jsonl_path}?column=body&cache_dir={tmp_path / 'hf'}",
      "tfds": f"tfds:suscept_cols?data_dir={tmp_path / 'tfds'}&column=body",
      "parquet": f"{tmp_path / 'x.parquet'}?column=body",
  }[scheme]
  if scheme == "tfds":
    data.build_tfds_text_dataset("suscept_cols", jsonl_path, tmp_path / "tfds")
  if scheme == "parquet":
    pq.write_table(pa.table({"text": ["a"], "id": [1]}), tmp_path / "x.parquet")
  with pytest.raises(ValueError, match=r"column 'body' not found in .*available columns: text"):
    list(data.iter_documents(spec))


def test_column_auto_detection(tmp_path):
  path = tmp_path / "c.jsonl"
  path.write_text('{"id": 1, "content": "x", "meta": "m"}\n')
  assert list(data.iter_documents(str(path))) == ["x"]
  path.write_text('{"id": 1, "a": "x", "b": "y"}\n')
  with pytest.raises(ValueError, match=r"cannot tell which column.*a \(string\), b \(string\)"):
    list(data.iter_documents(str(path)))
  assert list(data.iter_documents(f"{path}?column=b")) == ["y"]


def test_the_json_column_is_chosen_from_the_first_records_together(tmp_path):
  """A text field null (or missing) in the first record was passed over for the only other string field, while
  HF's loader, which looks at every row, read the text: both now read the text."""
  path = tmp_path / "n.jsonl"
  rows = [{"title": "T1", "text": None}, {"title": "T2", "text": "body two"}, {"title": "T3"},
          {"title": "T4", "text": "body four"}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert list(data.iter_documents(str(path))) == ["body two", "body four"]
  assert list(data.iter_documents(f"hf:{path}?cache_dir={tmp_path / 'hf'}")) == ["body two", "body four"]
  mixed = tmp_path / "m.jsonl"
  mixed.write_text('{"a": "x", "b": 1}\n{"a": 2, "b": "y"}\n')  # no field is a string in every record
  with pytest.raises(ValueError, match=r"a \(non-string\), b \(non-string\)"):
    list(data.iter_documents(str(mixed)))


def test_a_renamed_file_in_a_directory_is_other_data(tmp_path):
  """The content identity holds the names inside a directory: a.txt -> a.jsonl turns one whole-file document
  into the JSON line's text, with the same bytes."""
  root = tmp_path / "d"
  root.mkdir()
  (root / "a.txt").write_text('{"text": "x"}\n')
  before = data.dataset_fingerprint(str(root))
  (root / "a.txt").rename(root / "a.jsonl")
  assert list(data.iter_documents(str(root))) == ["x"] and data.dataset_fingerprint(str(root)) != before


def test_the_text_column_is_found_after_many_records_without_it(tmp_path):
  path = tmp_path / "late.jsonl"
  rows = [{"title": f"T{i}", "text": None} for i in range(50)] + [{"title": "T50", "text": "the body"}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert list(data.iter_documents(str(path))) == ["the body"]
  assert list(data.iter_documents(f"hf:{path}?cache_dir={tmp_path / 'hf'}")) == ["the body"]


def test_json_files_as_hf_reads_them(tmp_path):
  """A byte-order mark, a pretty-printed .json object and a .json array read as HF's json builder reads them;
  a broken .json names its file."""
  bom = tmp_path / "bom.jsonl"
  bom.write_bytes(b'\xef\xbb\xbf{"text": "first"}\n{"text": "second"}\n')
  pretty = tmp_path / "pretty.json"
  pretty.write_text('{\n  "text": "one object",\n  "id": 3\n}\n')
  array = tmp_path / "array.json"
  array.write_text('[\n {"text": "a"},\n {"text": "b"}\n]\n')
  lines = tmp_path / "lines.json"
  lines.write_text('{"text": "l1"}\n{"text": "l2"}\n')
  bom_array, bom_pretty = tmp_path / "bom_array.json", tmp_path / "bom_pretty.json"
  bom_array.write_bytes(b"\xef\xbb\xbf" + array.read_bytes())
  bom_pretty.write_bytes(b"\xef\xbb\xbf" + pretty.read_bytes())
  for path, expected in ((bom, ["first", "second"]), (pretty, ["one object"]), (array, ["a", "b"]),
                         (lines, ["l1", "l2"]), (bom_array, ["a", "b"]), (bom_pretty, ["one object"])):
    assert list(data.iter_documents(str(path))) == expected, path
    assert list(data.iter_documents(f"hf:{path}?cache_dir={tmp_path / 'hf'}")) == expected, path
  broken = tmp_path / "broken.json"
  broken.write_text('[{"text": "a"},\n{"text": "b"}\n')
  with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
    list(data.iter_documents(str(broken)))


def test_directories_skip_hidden_entries_and_follow_linked_folders(tmp_path):
  """A notebook's .ipynb_checkpoints copy is not the dataset (it was read twice); a shard folder linked in is."""
  root = tmp_path / "data"
  (root / ".ipynb_checkpoints").mkdir(parents=True)
  (root / "a.jsonl").write_text('{"text": "shard one"}\n')
  (root / ".ipynb_checkpoints" / "a-checkpoint.jsonl").write_text('{"text": "shard one"}\n')
  (root / ".hidden.jsonl").write_text('{"text": "editor copy"}\n')
  (tmp_path / "elsewhere" / "shard2").mkdir(parents=True)
  (tmp_path / "elsewhere" / "shard2" / "b.jsonl").write_text('{"text": "shard two"}\n')
  (root / "shard2").symlink_to(tmp_path / "elsewhere" / "shard2")
  (root / "shard2" / "loop").symlink_to(root)  # a link back up the tree is read once
  assert list(data.iter_documents(str(root))) == ["shard one", "shard two"]


def test_tfds_names_that_are_not_prepared_fail_clearly(tmp_path):
  """Nothing is downloaded: a registered dataset not prepared in data_dir (it tried the network) and an unknown
  name (TFDS printed its whole catalogue) are short errors naming the spec, before any data is read."""
  for spec, message in ((f"tfds:mnist?data_dir={tmp_path}", r"TFDS dataset 'mnist' is not prepared in .*tfds build"),
                        (f"tfds:my_txet?data_dir={tmp_path}", r"TFDS has no dataset 'my_txet' registered or prepared")):
    for call in (data.dataset_fingerprint, lambda s: list(data.iter_documents(s))):
      with pytest.raises(FileNotFoundError, match=message) as caught:
        call(spec)
      assert spec in str(caught.value) and len(str(caught.value)) < 400


def test_empty_files_blank_options_and_dictionary_columns(tmp_path):
  """An empty .jsonl is empty to both loaders (HF's raised a bare StopIteration; the column guess said 'no
  columns'); `?column=` without a value is refused (it fell back to guessing); a dictionary-encoded parquet
  text column (pandas categoricals) is text, as HF reads it."""
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  for spec in (str(empty), f"hf:{empty}?cache_dir={tmp_path / 'hf'}"):
    with pytest.raises(ValueError, match=r"empty\.jsonl.* is empty"):
      list(data.iter_documents(spec))
  with pytest.raises(ValueError, match=r"option\(s\) \['column'\] in dataset spec .* have no value"):
    data.iter_documents(f"{tmp_path / 'x.jsonl'}?column=")
  path = tmp_path / "cat.parquet"
  pq.write_table(pa.table({"text": pa.array(["a", "b", "a"]).dictionary_encode(), "id": [1, 2, 3]}), path)
  assert list(data.iter_documents(str(path))) == ["a", "b", "a"]
  assert list(data.iter_documents(f"hf:{path}?cache_dir={tmp_path / 'hf'}")) == ["a", "b", "a"]


def test_invalid_utf8_is_replaced(tmp_path):
  txt = tmp_path / "bad.txt"
  txt.write_bytes(b"abc\xffdef")
  jsonl = tmp_path / "bad.jsonl"
  jsonl.write_bytes(b'{"text": "x\xc3y"}\n')
  assert list(data.iter_documents(str(txt))) == ["abc\ufffddef"]
  assert list(data.iter_documents(str(jsonl))) == ["x\ufffdy"]


def test_a_corpus_name_is_the_corpus_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
  """`code` in a project with a code/ folder read the folder's files (and built the corpus for nothing)."""
  (tmp_path / "code").mkdir()
  (tmp_path / "code" / "NOTES.txt").write_text("TODO: refactor the parser\n")
  monkeypatch.chdir(tmp_path)
  assert sources.parse_spec("code").kind == "corpus"
  for spec in ("./code", "file:code"):
    assert sources.parse_spec(spec).kind == "file"
    assert list(data.iter_documents(spec)) == ["TODO: refactor the parser\n"]


def test_corpus_name_reads_built_corpus(jsonl_path, monkeypatch):
  fake = types.ModuleType("suscept_jax.data.corpora")
  fake.corpus_path = lambda name, out_dir=None: {"code": jsonl_path}[name]
  fake.CORPUS_SPECS = {"code": None}
  monkeypatch.setitem(sys.modules, "suscept_jax.data.corpora", fake)
  assert list(data.iter_documents("code")) == DOCUMENTS
  assert data.dataset_fingerprint("code").startswith("corpus-")


def test_import_stays_light():
  code = ("import sys, suscept_jax.data; "
          "print(sorted(m for m in ('datasets', 'tensorflow_datasets') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"
