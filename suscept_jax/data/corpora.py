"""Offline probe corpora standing in for the Pile subsets, built from registry-carried text.

Each corpus is a JSONL file (`{"text": ...}` per line, one natural document per line) of clearly
different character -- code, legal, encyclopedic, literary, news/fiction prose, technical docs,
dictionary entries, generated mathematics -- plus the base mixture `pile` that interleaves them.
Build them with `python -m experiments.build_corpora`; locate them with `corpus_path(name)`.

This module is the public face of three with one job each:
  corpus_sources   what each corpus is made of; extracting documents from a downloaded archive
  corpus_cleaning  control characters, long documents, boilerplate, markup
  corpus_build     selection, JSONL + manifest, the `pile` mixture, lookup
Downloading (pip/npm/apt-get) and `dpkg-deb` live with the runners: `suscept_jax_runners.corpus_fetch`.
"""
from suscept_jax.data.corpus_build import (DOWNLOADS, MIN_CORPORA, Fetch, build_corpora, corpus_path,
                                           default_out_dir, iter_documents, list_corpora, select_documents)
from suscept_jax.data.corpus_cleaning import (MAX_DOCUMENT_CHARS, clean_text, html_to_text, split_long_text,
                                              strip_brown_tags, strip_gutenberg_boilerplate)
from suscept_jax.data.corpus_sources import (BUILD_COMMAND, BUILDER_VERSION, CORPUS_SPECS, PILE, SHUFFLE_SEED,
                                             CorpusSpec, DebToTar, SourceUnavailable, archive_version,
                                             extract_units, fetch_description, read_deb_members)

__all__ = ["BUILD_COMMAND", "BUILDER_VERSION", "CORPUS_SPECS", "DOWNLOADS", "MAX_DOCUMENT_CHARS", "MIN_CORPORA",
           "PILE", "SHUFFLE_SEED", "CorpusSpec", "DebToTar", "Fetch", "SourceUnavailable", "archive_version",
           "build_corpora", "clean_text", "corpus_path", "default_out_dir", "extract_units", "fetch_description",
           "html_to_text", "iter_documents", "list_corpora", "read_deb_members", "select_documents",
           "split_long_text", "strip_brown_tags", "strip_gutenberg_boilerplate"]
