"""Download an official archive, verify its checksum, and extract it."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from cmkd.errors import CmkdError
from cmkd.io import atomic_path

_ALGORITHMS = ("md5", "sha256")


def download_and_verify(
    url: str, dest_dir: Path, checksum: str | None, extract: bool = True
) -> Path:
    """Fetch `url` into `dest_dir`, check it against `checksum` ("md5:<hex>" or "sha256:<hex>")
    and, if `extract`, unpack a .zip, .tar, .tar.gz/.tgz or .gz.

    `checksum=None` skips verification; it is only for sources that publish no checksum.
    Returns the downloaded file, or with `extract` the folder a zip/tar was unpacked into or
    the file a .gz was decompressed to (the archive itself is then removed).
    """
    algorithm, expected = _parse_checksum(checksum) if checksum is not None else (None, None)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    filename = Path(unquote(urlparse(url).path)).name
    if not filename:
        raise CmkdError(f"cannot tell the file name from the URL {url}")
    target = dest_dir / filename

    digest = hashlib.new(algorithm or "sha256")
    # Through cmkd.io's temp file: renamed into place only when whole and verified, removed
    # otherwise, and created with the umask's permissions like any other file.
    with atomic_path(target, suffix=".part") as tmp:
        try:
            with open(tmp, "wb") as out, urllib.request.urlopen(url) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as err:
            raise CmkdError(f"cannot download {url}: {err}") from err
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise CmkdError(
                f"checksum mismatch for {filename} from {url}: expected {algorithm}:{expected}, "
                f"got {algorithm}:{actual}; the file was removed"
            )
    return _extract(target, dest_dir) if extract else target


def _parse_checksum(checksum: str) -> tuple[str, str]:
    algorithm, _, value = checksum.partition(":")
    if algorithm not in _ALGORITHMS or not value:
        raise CmkdError(f"checksum {checksum!r} is not of the form md5:<hex> or sha256:<hex>")
    return algorithm, value.lower()


def _extract(archive: Path, dest_dir: Path) -> Path:
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    _check_inside(dest_dir, member, archive)
                zf.extractall(dest_dir)
            result = dest_dir
        elif name.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(archive) as tf:
                # The "data" filter refuses absolute paths, links out of dest_dir and devices.
                tf.extractall(dest_dir, filter="data")
            result = dest_dir
        elif name.endswith(".gz"):
            result = archive.with_suffix("")
            # Through a temp file and a rename: a cut-off decompression leaves no partial file.
            partial = result.with_name(result.name + ".part")
            try:
                with gzip.open(archive, "rb") as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(partial, result)
            finally:
                partial.unlink(missing_ok=True)
        else:
            raise CmkdError(f"cannot extract {archive}: not a .zip, .tar, .tar.gz, .tgz or .gz")
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as err:
        raise CmkdError(f"cannot extract {archive}: {err}") from err
    archive.unlink()
    return result


def _check_inside(dest_dir: Path, member: str, archive: Path) -> None:
    root = dest_dir.resolve()
    if not (root / member).resolve().is_relative_to(root):
        raise CmkdError(f"archive {archive} has a member outside its folder: {member}")
