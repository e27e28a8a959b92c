"""Byte-level BPE tokenizers (HF `tokenizers`): train, load, fingerprint, and check against a model.

Byte-level pre-tokenization plus the byte-level decoder and no normalizer make
`decode(encode(text)) == text` for every string, which the per-token views rely on.
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from suscept_jax import paths

EOT = "<|endoftext|>"
_FILENAME = "tokenizer.json"


def train_bpe_tokenizer(documents: Iterable[str], vocab_size: int = 5000, *, min_frequency: int = 2,
                        special_tokens=(EOT,), path=None) -> tokenizers.Tokenizer:
  """Trains a byte-level BPE tokenizer on `documents`; saves it atomically to `path` if given.

  The 256 byte symbols are always in the vocabulary, so any text encodes without unknown tokens.
  Training is deterministic for the same documents and settings. `path` is a .json file or a
  directory (which then gets a tokenizer.json).
  """
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      min_frequency=min_frequency,
      special_tokens=list(special_tokens),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  tokenizer.train_from_iterator(documents, trainer=trainer)
  if path is not None:
    save_tokenizer(tokenizer, path)
  return tokenizer


def save_tokenizer(tokenizer: tokenizers.Tokenizer, path) -> Path:
  """Writes tokenizer.json atomically (to `path`, or into it if it is a directory); returns the file."""
  path = _json_path(path)
  paths.atomic_write_bytes(path, tokenizer.to_str(pretty=True).encode("utf-8"))
  return path


def load_tokenizer(path_or_spec) -> tokenizers.Tokenizer:
  """Loads a tokenizer.json (a file, or a directory holding one).

  `hf:REPO` loads the tokenizer.json of a hub repository instead (needs network or the HF cache).
  """
  spec = os.fspath(path_or_spec)
  if spec.startswith("hf:"):
    return tokenizers.Tokenizer.from_pretrained(spec[len("hf:"):])
  path = _json_path(spec)
  if not path.is_file():
    raise FileNotFoundError(f"tokenizer file not found: {path}")
  try:
    return tokenizers.Tokenizer.from_file(str(path))
  except Exception as e:  # The Rust side raises a bare Exception on malformed files.
    raise ValueError(f"{path} is not a valid tokenizer.json: {e}") from e


def eos_id(tokenizer: tokenizers.Tokenizer, token: str | None = None) -> int:
  """Id of the end-of-text token: `token` if given, else `<|endoftext|>`."""
  token = token or EOT
  token_id = tokenizer.token_to_id(token)
  if token_id is None:
    specials = sorted(t.content for t in tokenizer.get_added_tokens_decoder().values())
    raise ValueError(f"tokenizer has no {token!r} token (its added tokens: {specials or 'none'}); "
                     "pass the end-of-text token it uses instead")
  return token_id


def vocab_size(tokenizer: tokenizers.Tokenizer) -> int:
  """Number of token ids, added/special tokens included."""
  return tokenizer.get_vocab_size(with_added_tokens=True)


def check_vocab_fits(tokenizer: tokenizers.Tokenizer, d_vocab: int) -> None:
  """Raises ValueError if some token id would fall outside the model's embedding of `d_vocab` rows."""
  size = vocab_size(tokenizer)
  if size > d_vocab:
    raise ValueError(f"tokenizer vocab {size} does not fit the model's d_vocab={d_vocab}")


def check_vocab_matches(tokenizer: tokenizers.Tokenizer, d_vocab: int, *, name: str = "tokenizer") -> None:
  """Raises ValueError unless the tokenizer's vocabulary is exactly the model's: a smaller one leaves
  embedding rows no text can reach (and is usually the wrong tokenizer), a larger one produces ids the
  model has no row for."""
  size = vocab_size(tokenizer)
  if size != d_vocab:
    raise ValueError(f"{name} has a vocabulary of {size} tokens but the model has d_vocab={d_vocab}: "
                     f"use the tokenizer the model was trained with")


def _byte_level_symbols() -> dict[str, int]:
  """The byte each symbol of the byte-level alphabet stands for (the GPT-2 alphabet that `tokenizers`'
  ByteLevel uses): the 188 printable Latin-1 bytes stand for themselves, the other 68 bytes are shifted to
  U+0100 onwards in byte order."""
  printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
  symbols = {chr(b): b for b in printable}
  symbols.update({chr(0x100 + i): b for i, b in enumerate(b for b in range(256) if b not in printable)})
  return symbols


_BYTE_OF_SYMBOL = _byte_level_symbols()


def token_labels(tokenizer: tokenizers.Tokenizer, token_ids) -> dict[int, str]:
  """A readable label per token id, distinct for distinct tokens: the token's text, decoded alone.

  A byte-level token that holds part of a multi-byte character decodes alone to U+FFFD ("�"), so every such
  token would get the same label and the per-token tables would count different tokens as one (on the demo,
  "�" was among the top tokens of every head). Such a token is labelled by its bytes instead: the whole
  characters as text, each byte of a partial one as <0xE2> (the notation of byte-fallback tokenizers). A token
  outside the byte-level alphabet (another tokenizer's byte fallback, say) is labelled by its vocabulary entry.
  """
  labels = {}
  for token_id in map(int, token_ids):
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    if "\ufffd" in text:
      entry = tokenizer.id_to_token(token_id) or text
      in_alphabet = set(entry) <= _BYTE_OF_SYMBOL.keys()
      text = _bytes_label(bytes(_BYTE_OF_SYMBOL[c] for c in entry)) if in_alphabet else entry
    labels[token_id] = text
  return labels


def _bytes_label(raw: bytes) -> str:
  """`raw` as text where it holds whole UTF-8 characters, each other byte as <0xNN>."""
  out, i = [], 0
  while i < len(raw):
    for j in range(min(len(raw), i + 4), i, -1):  # the longest valid UTF-8 run of at most 4 bytes
      try:
        out.append(raw[i:j].decode("utf-8"))
        break
      except UnicodeDecodeError:
        continue
    else:
      out.append(f"<0x{raw[i]:02X}>")
      j = i + 1
    i = j
  return "".join(out)


def tokenizer_fingerprint(tokenizer: tokenizers.Tokenizer) -> str:
  """Hash of the tokenizer's canonical JSON: equal for tokenizers that tokenize identically."""
  canonical = json.dumps(json.loads(tokenizer.to_str()), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:20]


def _json_path(path) -> Path:
  path = Path(path).expanduser()
  return path / _FILENAME if path.is_dir() or not path.suffix else path
