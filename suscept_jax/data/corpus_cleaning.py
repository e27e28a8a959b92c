"""Text cleaning for the offline corpora: control characters, long documents, boilerplate, markup."""

import html.parser
import re

MAX_DOCUMENT_CHARS = 64_000  # longer natural documents are split at paragraph boundaries


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
