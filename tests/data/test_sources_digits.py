from __future__ import annotations

import gzip
import hashlib
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile

from cmkd.data.sources import digits
from cmkd.data.sources.digits import (
    fsdd_official_test_mask,
    hz_to_mel,
    load_fsdd,
    load_mnist,
    mel_filterbank,
    mel_to_hz,
)
from cmkd.errors import CmkdError


def test_mel_scale_is_htk_and_inverts() -> None:
    hz = np.array([0.0, 100.0, 700.0, 1000.0, 4000.0, 8000.0])
    assert np.allclose(mel_to_hz(hz_to_mel(hz)), hz)
    assert hz_to_mel(700.0) == pytest.approx(2595 * np.log10(2))
    assert hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.1)  # HTK's anchor point


def test_filterbank_matches_the_triangle_formula() -> None:
    n_mels, n_fft, sr = 32, 256, 8000
    fb = mel_filterbank(n_mels, n_fft, sr)
    assert fb.shape == (n_mels, n_fft // 2 + 1) and fb.dtype == np.float32
    mels = np.linspace(0, 2595 * np.log10(1 + (sr / 2) / 700), n_mels + 2)
    corners = 700 * (10 ** (mels / 2595) - 1)
    bins = np.arange(n_fft // 2 + 1) * sr / n_fft
    for m in range(n_mels):
        lo, mid, hi = corners[m : m + 3]
        for k, f in enumerate(bins):
            want = (
                (f - lo) / (mid - lo)
                if lo <= f <= mid
                else (hi - f) / (hi - mid)
                if mid < f <= hi
                else 0.0
            )
            assert fb[m, k] == pytest.approx(want, abs=1e-6)
    assert (fb.sum(axis=1) > 0).all()  # no empty filter at this resolution


def test_each_filter_peaks_at_one_at_its_centre() -> None:
    n_mels, sr = 10, 8000
    fine = mel_filterbank(n_mels, 2**16, sr)  # bins every 0.12 Hz
    bins = np.linspace(0, sr / 2, fine.shape[1])
    centres = mel_to_hz(np.linspace(0, hz_to_mel(sr / 2), n_mels + 2))[1:-1]
    assert np.allclose(fine.max(axis=1), 1.0, atol=1e-3)
    assert np.allclose(bins[fine.argmax(axis=1)], centres, atol=sr / 2**16)
    assert (fine <= 1.0).all() and (fine >= 0.0).all()


def test_fsdd_real_files(data_root: Path) -> None:
    audio = load_fsdd(data_root)
    assert audio.x.shape == (3000, 1, 32, 48) and audio.x.dtype == np.float32
    assert np.isfinite(audio.x).all()
    assert audio.classes == [str(d) for d in range(10)]
    assert np.bincount(audio.y).tolist() == [300] * 10
    assert "7_jackson_32" in audio.ids and audio.y[audio.ids.tolist().index("7_jackson_32")] == 7
    test = fsdd_official_test_mask(audio.ids)
    assert test.sum() == 300 and np.bincount(audio.y[test]).tolist() == [30] * 10
    assert fsdd_official_test_mask(["3_theo_4", "3_theo_5", "3_theo_40"]).tolist() == [
        True, False, False,
    ]  # fmt: skip


def test_fsdd_options_and_cache(data_root: Path, tmp_path: Path, fresh_cache: Path,
                                monkeypatch) -> None:  # fmt: skip
    root = tmp_path / "root"
    rec = root / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for name in ["0_george_0.wav", "1_jackson_7.wav", "9_theo_49.wav"]:
        shutil.copy2(data_root / "fsdd" / "recordings" / name, rec / name)
    small = load_fsdd(root, n_mels=16, n_frames=20)
    assert small.x.shape == (3, 1, 16, 20) and small.y.tolist() == [0, 1, 9]

    def fail(path: Path) -> np.ndarray:
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(digits, "_read_wav", fail)
    assert np.array_equal(load_fsdd(root, n_mels=16, n_frames=20).x, small.x)
    with pytest.raises(AssertionError):  # other decode options are a cache miss
        load_fsdd(root, n_mels=16, n_frames=21)


def test_fsdd_short_clip_is_padded_with_silence(tmp_path: Path) -> None:
    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    t = np.arange(800) / 8000
    scipy.io.wavfile.write(
        rec / "5_tone_0.wav", 8000, (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    )
    x = load_fsdd(tmp_path).x[0, 0]
    assert x.shape == (32, 48)
    assert x[:, 0].max() < -20 and x[:, 24].max() > 0  # silent edges, loud centre
    peak_hz = mel_to_hz(np.linspace(0, hz_to_mel(4000), 34))[1:-1][x[:, 24].argmax()]
    assert abs(peak_hz - 1000) < 100


def test_fsdd_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CmkdError, match="recordings.*does not exist"):
        load_fsdd(tmp_path)
    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    with pytest.raises(CmkdError, match="is empty"):
        load_fsdd(tmp_path)
    (rec / "12_theo_0.wav").write_bytes(b"")
    with pytest.raises(CmkdError, match=r"12_theo_0.wav has unknown class '12'"):
        load_fsdd(tmp_path)
    (rec / "12_theo_0.wav").rename(rec / "3_theo_0.wav")
    with pytest.raises(CmkdError, match="cannot read WAV .*3_theo_0.wav"):
        load_fsdd(tmp_path)
    (rec / "notes.txt").write_text("x")
    with pytest.raises(CmkdError, match="notes.txt is not named"):
        load_fsdd(tmp_path)


def test_fsdd_download_layout(data_root: Path, tmp_path: Path, monkeypatch) -> None:
    archive = tmp_path / "v1.0.10.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name in ["0_george_0.wav", "4_lucas_12.wav"]:
            tf.add(data_root / "fsdd" / "recordings" / name, f"{digits.FSDD_ARCHIVE_DIR}/{name}")
    monkeypatch.setattr(digits, "FSDD_URL", archive.as_uri())
    audio = load_fsdd(tmp_path / "root", download=True)
    assert audio.ids.tolist() == ["0_george_0", "4_lucas_12"]


def test_mnist_real_files(data_root: Path) -> None:
    mnist = load_mnist(data_root)
    assert mnist.x.shape == (10000, 1, 28, 28) and mnist.x.dtype == np.uint8
    assert mnist.classes == [str(d) for d in range(10)]
    assert np.bincount(mnist.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist.y[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test digits


def test_mnist_download_verifies_the_official_md5(data_root: Path, tmp_path: Path,
                                                   monkeypatch) -> None:  # fmt: skip
    for name, checksum in digits.MNIST_FILES.items():
        assert (
            checksum == "md5:" + hashlib.md5((data_root / "mnist" / name).read_bytes()).hexdigest()
        )
    monkeypatch.setattr(digits, "MNIST_URL", (data_root / "mnist").as_uri() + "/")
    assert len(load_mnist(tmp_path, download=True)) == 10000


def test_mnist_bad_files(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(CmkdError, match="t10k-images-idx3-ubyte.gz does not exist"):
        load_mnist(tmp_path)
    folder = tmp_path / "mnist"
    folder.mkdir()
    labels = data_root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    shutil.copy2(labels, folder / "t10k-labels-idx1-ubyte.gz")
    shutil.copy2(labels, folder / "t10k-images-idx3-ubyte.gz")  # wrong magic
    with pytest.raises(CmkdError, match="t10k-images-idx3-ubyte.gz is not an IDX images file"):
        load_mnist(tmp_path)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(CmkdError, match="cannot read .*t10k-images-idx3-ubyte.gz"):
        load_mnist(tmp_path)
    with gzip.open(data_root / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        truncated = f.read()[:5000]
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(truncated)
    with pytest.raises(CmkdError, match="t10k-images-idx3-ubyte.gz is truncated"):
        load_mnist(tmp_path)
