"""Self-contained HTML pages (styles inline, images as data URIs): they open offline and can be mailed."""
import base64
import html
from pathlib import Path

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
.ctx {{ font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 2.1; margin: 0.6em 0 1.2em;
        padding: 0.4em; border: 1px solid #ddd; }}
.tok {{ padding: 4px 0; }}
.tok[data-focus] {{ outline: 2px solid #222; outline-offset: 1px; font-weight: bold; }}
.legend span {{ padding: 0 0.5em; }}
h2 {{ font-size: 1.05em; margin-top: 1.4em; }}
.meta {{ color: #666; font-size: 0.85em; }}
.warn {{ border-left: 4px solid #c0392b; padding-left: 0.6em; }}
table {{ border-collapse: collapse; font-size: 0.85em; }} td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}
</style></head><body>
<h1>{title}</h1>
{body}
</body></html>
"""


def page(title: str, body: str) -> str:
  """A whole page: `title` (escaped here) as its heading, then `body` (HTML)."""
  return _PAGE.format(title=html.escape(title), body=body)


def index_html(title: str, sections) -> str:
  """A self-contained index page: sections of (heading, html) with images embedded as data URIs."""
  body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
  return page(title, body)


def embedded_png(path, alt: str) -> str:
  data = base64.b64encode(Path(path).read_bytes()).decode()
  return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width: 100%">'


SCROLLED_ROWS = 25  # a longer table sits in a box of its own height that scrolls (Table 1 at the paper's shape:
# 238 rows, four screens of the index)


def scrolling(inner: str) -> str:
  """`inner` in a box of its own height that scrolls (a long table within a page)."""
  return f'<div style="max-height: 480px; overflow: auto">{inner}</div>'


def table_html(frame, max_rows: int = 200) -> str:
  """An HTML table of `frame`'s first `max_rows` rows (saying so when there are more), in a scrolling box when
  it is longer than `SCROLLED_ROWS`."""
  table = frame.head(max_rows).to_html(index=False, float_format=lambda v: f"{v:.4g}", escape=True)
  if len(frame) > SCROLLED_ROWS:
    table = scrolling(table)
  if len(frame) > max_rows:
    table += f'<p class="meta">The first {max_rows} of {len(frame)} rows.</p>'
  return table


def link_list(links) -> str:
  """A list of links from (href, text, note) rows, text and note escaped here (a dataset's name is a path or an
  hf: spec, where & and < are common)."""
  items = "".join(f'<li><a href="{html.escape(href)}">{html.escape(text)}</a>{" " + html.escape(note) if note else ""}'
                  f"</li>" for href, text, note in links)
  return f"<ul>{items}</ul>"
