"""Turn a local text source (jsonl/json/txt/parquet file or directory) into a real TFDS dataset.

The dataset has one `train` split with a single `text` feature, one example per non-empty document
in source order (shuffling disabled), stored as array_record. tfds 4.9 prepares a
`GeneratorBasedBuilder` without TensorFlow and without Beam, and `tfds.data_source` reads it back
from `data_dir` alone, so no builder class has to be registered or importable at read time.
"""
import json
import re
import types
from pathlib import Path

import tensorflow_datasets as tfds

from suscept_jax.data import sources

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_VERSION = "1.0.0"


class TextFileBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Builder over the documents of one local source; subclassed per dataset name.

  Subclasses set `name`, `source_path` and `column`. Registration is skipped so that building the
  same name twice in one process works and reading goes through the prepared files.
  """

  VERSION = tfds.core.Version(_VERSION)
  source_path: str = ""
  column: str | None = None

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    """No code directory (checksums, metadata files) belongs to this generic builder.

    Returning None also skips tfds 4.9's lookup of the defining package, which imports the
    `importlib_resources` backport that tfds only declares for Python < 3.9.
    """
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Documents of {self.source_path}, one example each, in source order.",
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(_source_metadata(self.source_path, self.column)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the source is local.
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    documents = sources.iter_local_documents(self.source_path, self.column)
    for index, text in enumerate(documents):
      yield index, {"text": text}


def build_tfds_text_dataset(name: str, source_path, data_dir, *, column: str | None = None) -> None:
  """Prepares TFDS dataset `name` (version 1.0.0) under `data_dir` from the local `source_path`.

  Afterwards `tfds.data_source(name, split="train", data_dir=data_dir)` (or the spec
  `tfds:NAME?data_dir=DATA_DIR`) reads it. A dataset already built from the same, unchanged source is
  kept; one built from another source or an older version of the file is regenerated.
  """
  if not _NAME.fullmatch(name):
    raise ValueError(f"TFDS dataset name {name!r} must be snake_case: lowercase letters, digits, '_'")
  source_path = Path(source_path).expanduser().resolve()
  expected = _source_metadata(source_path, column)  # Also checks the source exists.
  version_dir = Path(data_dir).expanduser() / name / _VERSION
  if _built_from(version_dir) == expected:
    return
  attributes = {"name": name, "source_path": str(source_path), "column": column, "__module__": __name__}
  builder_cls = types.new_class(f"TextFileBuilder_{name}", (TextFileBuilder,),
                                {"skip_registration": True}, lambda ns: ns.update(attributes))
  builder = builder_cls(data_dir=str(Path(data_dir).expanduser()), file_format="array_record")
  mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD if version_dir.exists() else None
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode)
                               if mode else None)


def _source_metadata(source_path, column: str | None) -> dict:
  return {"source": str(source_path), "column": column,
          "source_fingerprint": sources.files_fingerprint(source_path)}


def _built_from(version_dir: Path) -> dict | None:
  """The source metadata of a completely prepared dataset in `version_dir`, else None."""
  metadata = version_dir / "metadata.json"
  if not (metadata.is_file() and (version_dir / "dataset_info.json").is_file()):
    return None
  try:
    return json.loads(metadata.read_text())
  except (OSError, ValueError):
    return None
