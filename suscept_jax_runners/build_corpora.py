"""Build the offline probe corpora and the `pile` mixture, then print what was built.

Usage: python -m experiments.build_corpora [--out_dir=DIR] [--names=code,math,pile]
       [--max_bytes_per_corpus=3000000]
"""

import time

from absl import app
from absl import flags

from suscept_jax.data import corpora
from suscept_jax_runners import cli, corpus_fetch

_OUT_DIR = flags.DEFINE_string(
    "out_dir", None, "Output directory (default: cache root/corpora/v1)."
)
_NAMES = flags.DEFINE_list(
    "names", None, f"Corpora to build (default: all of {list(corpora.CORPUS_SPECS)})."
)
_MAX_BYTES = flags.DEFINE_integer(
    "max_bytes_per_corpus", 3_000_000, "JSONL byte cap per source corpus."
)


def format_table(manifest: dict) -> str:
  """One row per corpus: name, source package and version, docs, MB, license, status."""
  header = ("name", "source", "version", "docs", "MB", "license", "status")
  rows = [header]
  for name, entry in manifest["corpora"].items():
    source = entry.get("source", {})
    if entry["status"] != "built":
      status = f"skipped: {entry.get('reason', '')}"
    else:
      status = "built (below min_bytes)" if entry.get("below_min_bytes") else "built"
    rows.append(
        (
            name,
            str(source.get("package") or "-"),
            str(source.get("version") or "-"),
            str(entry.get("documents", "-")),
            f"{entry['bytes'] / 1e6:.2f}" if "bytes" in entry else "-",
            entry["license"].split(";")[0][:40],
            status,
        )
    )
  widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
  return "\n".join(
      "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  start = time.perf_counter()
  manifest = corpora.build_corpora(_OUT_DIR.value, _NAMES.value, max_bytes_per_corpus=_MAX_BYTES.value,
                                   fetch=corpus_fetch.fetch_archive, deb_to_tar=corpus_fetch.deb_data_tar)
  print(format_table(manifest))
  out_dir = _OUT_DIR.value or corpora.default_out_dir()
  print(f"\n{out_dir}  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
  cli.run(main)  # (an unknown --names value ends with its message, not a traceback)
