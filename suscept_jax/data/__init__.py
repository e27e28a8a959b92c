"""Text data: dataset specs -> documents -> tokens -> packed contexts [N, K].

Importing this package is cheap: `datasets` and `tensorflow_datasets` are imported only when an hf:
or tfds: source (or the TFDS builder) is actually used.
"""
from suscept_jax.data.packing import decode_context, load_contexts, pack_documents
from suscept_jax.data.sources import dataset_fingerprint, iter_documents, parse_spec
from suscept_jax.data.tokenizer import (check_vocab_fits, eos_id, load_tokenizer, save_tokenizer,
                                        tokenizer_fingerprint, train_bpe_tokenizer)


def build_tfds_text_dataset(name: str, source_path, data_dir, *, column: str | None = None) -> None:
  """See `suscept_jax.data.tfds_text.build_tfds_text_dataset` (imported lazily: it needs tfds)."""
  from suscept_jax.data import tfds_text

  tfds_text.build_tfds_text_dataset(name, source_path, data_dir, column=column)
