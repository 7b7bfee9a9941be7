"""Download, verification and extraction, served from file:// URLs (there is no network)."""

from __future__ import annotations

import gzip
import hashlib
import tarfile
import zipfile
from pathlib import Path

import pytest

from cmkd.data.download import download_and_verify
from cmkd.errors import CmkdError


def _sum(path: Path, algorithm: str) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, path.read_bytes()).hexdigest()}"


@pytest.fixture
def served(tmp_path: Path) -> Path:
    src = tmp_path / "served"
    (src / "pkg" / "Forest").mkdir(parents=True)
    (src / "pkg" / "Forest" / "a.txt").write_text("forest")
    with zipfile.ZipFile(src / "data.zip", "w") as zf:
        zf.write(src / "pkg" / "Forest" / "a.txt", "pkg/Forest/a.txt")
    with tarfile.open(src / "data.tar.gz", "w:gz") as tf:
        tf.add(src / "pkg", "pkg")
    with gzip.open(src / "labels.bin.gz", "wb") as f:
        f.write(b"\x00\x01\x02")
    return src


@pytest.mark.parametrize("archive", ["data.zip", "data.tar.gz"])
def test_archive_is_verified_and_extracted(served: Path, tmp_path: Path, archive: str) -> None:
    dest = tmp_path / "dest"
    out = download_and_verify((served / archive).as_uri(), dest, _sum(served / archive, "md5"))
    assert out == dest
    assert (dest / "pkg" / "Forest" / "a.txt").read_text() == "forest"
    assert not (dest / archive).exists()  # the archive goes once extracted
    assert not list(dest.glob("*.part"))


def test_gz_is_decompressed_and_sha256_accepted(served: Path, tmp_path: Path) -> None:
    src = served / "labels.bin.gz"
    out = download_and_verify(src.as_uri(), tmp_path / "d", _sum(src, "sha256"))
    assert out == tmp_path / "d" / "labels.bin" and out.read_bytes() == b"\x00\x01\x02"


def test_no_extract_keeps_the_file(served: Path, tmp_path: Path) -> None:
    src = served / "labels.bin.gz"
    out = download_and_verify(src.as_uri(), tmp_path / "d", _sum(src, "md5"), extract=False)
    assert out.read_bytes() == src.read_bytes()


def test_checksum_mismatch_names_file_and_both_sums(served: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    wrong = "md5:" + "0" * 32
    with pytest.raises(CmkdError) as err:
        download_and_verify((served / "data.zip").as_uri(), dest, wrong)
    message = str(err.value)
    assert "data.zip" in message and wrong in message
    assert _sum(served / "data.zip", "md5") in message
    assert list(dest.iterdir()) == []  # nothing half-downloaded or unverified is left


def test_bad_checksum_spec_and_missing_url(served: Path, tmp_path: Path) -> None:
    with pytest.raises(CmkdError, match="md5:<hex>"):
        download_and_verify((served / "data.zip").as_uri(), tmp_path, "crc32:1234")
    with pytest.raises(CmkdError, match="nothing.zip"):
        download_and_verify((served / "nothing.zip").as_uri(), tmp_path, "md5:00")


def test_zip_member_outside_the_folder_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escaped.txt", "x")
    with pytest.raises(CmkdError, match="outside"):
        download_and_verify(evil.as_uri(), tmp_path / "dest", _sum(evil, "md5"))
    assert not (tmp_path / "escaped.txt").exists()


def test_truncated_gz_leaves_no_partial_file(tmp_path: Path) -> None:
    whole = gzip.compress(bytes(range(256)) * 4096)
    cut = tmp_path / "cut.bin.gz"
    cut.write_bytes(whole[: len(whole) // 2])  # decompression fails halfway
    dest = tmp_path / "dest"
    with pytest.raises(CmkdError, match="cannot extract"):
        download_and_verify(cut.as_uri(), dest, _sum(cut, "md5"))
    assert not (dest / "cut.bin").exists()
    assert not list(dest.glob("*.part"))
