"""Spoken digits (FSDD, as log-mel spectrograms) and written digits (the MNIST test set).

The two share only the label space "0".."9": there is no sample-level pairing.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import scipy.io.wavfile
import torch

from cmkd.data.cache import cached_arrays, fingerprint_files
from cmkd.data.download import download_and_verify
from cmkd.data.samples import Samples
from cmkd.data.sources._files import require_dir, require_file
from cmkd.errors import CmkdError

DIGITS = [str(d) for d in range(10)]
FSDD_SAMPLE_RATE = 8000
# FSDD publishes no checksum for its release archives (and GitHub's generated tarballs are not
# guaranteed byte-stable), so this download is unverified; the loader still checks every file.
FSDD_URL = (
    "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
)
FSDD_ARCHIVE_DIR = "free-spoken-digit-dataset-1.0.10/recordings"

# yann.lecun.com now refuses most downloads; this is torchvision's mirror of the same files,
# checked against the official MD5s.
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = {
    "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
}
_IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # unsigned bytes, 3 or 1 dims


# --- mel filterbank -------------------------------------------------------------------------


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Triangular filters, n_mels x (n_fft // 2 + 1), equally spaced on the HTK mel scale;
    filter m rises from corner m to 1 at corner m+1 and falls to 0 at corner m+2 (unnormalised,
    like torchaudio's melscale_fbanks with norm=None)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    corners = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = corners[:-2, None], corners[1:-1, None], corners[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None).astype(np.float32)


def log_mel(
    waves: np.ndarray, sample_rate: int, n_fft: int, hop_length: int, n_mels: int
) -> np.ndarray:
    """Natural-log mel power spectrogram of float waveforms N x L -> N x n_mels x frames."""
    spec = torch.stft(
        torch.from_numpy(waves),
        n_fft=n_fft,
        hop_length=hop_length,
        window=torch.hann_window(n_fft),
        center=True,
        pad_mode="constant",  # the clips are already padded with silence; stay consistent
        return_complex=True,
    )
    fb = torch.from_numpy(mel_filterbank(n_mels, n_fft, sample_rate))
    mel = fb @ spec.abs().square()
    return torch.log(mel.clamp_min(1e-10)).numpy()


# --- FSDD -----------------------------------------------------------------------------------


def load_fsdd(
    root: Path,
    n_fft: int = 256,
    hop_length: int = 128,
    n_mels: int = 32,
    n_frames: int = 48,
    download: bool = False,
) -> Samples:
    """Free Spoken Digit Dataset as float32 log-mel spectrograms N x 1 x n_mels x n_frames.

    Clips are centred in n_frames worth of samples: shorter ones padded with silence, longer
    ones centre-cropped, so every sample has the same size. ids are "<digit>_<speaker>_<take>".
    """
    for name, value in (("n_fft", n_fft), ("hop_length", hop_length), ("n_mels", n_mels),
                        ("n_frames", n_frames)):  # fmt: skip
        if not isinstance(value, int) or value < 1:
            raise CmkdError(f"FSDD option {name} must be a positive integer, got {value!r}")
    root = Path(root)
    folder = root / "fsdd" / "recordings"
    if not folder.is_dir() and download:
        _download_fsdd(root)
    require_dir(folder, "FSDD recordings", " (pass download=True to fetch it)")
    paths = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    if not paths:
        raise CmkdError(f"FSDD recordings folder {folder} is empty")
    labels = np.array([_fsdd_digit(p) for p in paths], dtype=np.int64)
    length = hop_length * (n_frames - 1)  # with center=True this gives exactly n_frames frames

    def build() -> dict[str, np.ndarray]:
        waves = np.stack([_fit(_read_wav(p), length) for p in paths])
        return {"x": log_mel(waves, FSDD_SAMPLE_RATE, n_fft, hop_length, n_mels)[:, None]}

    key = {
        "files": fingerprint_files(paths, folder),
        "folder": str(folder.resolve()),
        "n_fft": n_fft,
        "hop_length": hop_length,
        "n_mels": n_mels,
        "n_frames": n_frames,
    }
    x = cached_arrays("fsdd", key, build, rows=len(paths))["x"]
    return Samples(x, labels, np.array([p.stem for p in paths]), list(DIGITS))


def fsdd_official_test_mask(ids: np.ndarray | list[str]) -> np.ndarray:
    """FSDD's usual split: takes 0-4 of each speaker and digit are test, the rest train."""
    return np.array([int(str(i).rsplit("_", 1)[1]) < 5 for i in ids], dtype=bool)


def _fsdd_digit(path: Path) -> int:
    parts = path.stem.split("_")
    if path.suffix.lower() != ".wav" or len(parts) != 3 or not parts[2].isdigit():
        raise CmkdError(f"FSDD file {path} is not named <digit>_<speaker>_<take>.wav")
    if parts[0] not in DIGITS:
        raise CmkdError(f"FSDD file {path} has unknown class {parts[0]!r}; classes are 0-9")
    return int(parts[0])


def _read_wav(path: Path) -> np.ndarray:
    try:
        rate, wave = scipy.io.wavfile.read(path)
    except (ValueError, OSError, EOFError) as err:
        raise CmkdError(f"cannot read WAV {path}: {err}") from err
    if rate != FSDD_SAMPLE_RATE or wave.dtype != np.int16 or wave.ndim != 1:
        raise CmkdError(
            f"FSDD file {path} is {rate} Hz {wave.dtype} with shape {wave.shape}; "
            f"expected {FSDD_SAMPLE_RATE} Hz int16 mono"
        )
    return wave.astype(np.float32) / 32768.0


def _fit(wave: np.ndarray, length: int) -> np.ndarray:
    if len(wave) >= length:
        start = (len(wave) - length) // 2
        return wave[start : start + length]
    left = (length - len(wave)) // 2
    return np.pad(wave, (left, length - len(wave) - left))


def _download_fsdd(root: Path) -> None:
    staging = root / "fsdd" / ".download"
    try:
        extracted = download_and_verify(FSDD_URL, staging, checksum=None) / FSDD_ARCHIVE_DIR
        require_dir(extracted, "extracted FSDD archive")
        extracted.rename(root / "fsdd" / "recordings")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- MNIST ----------------------------------------------------------------------------------


def load_mnist(root: Path, download: bool = False) -> Samples:
    """The official MNIST test set (10,000 images) as uint8 N x 1 x 28 x 28."""
    folder = Path(root) / "mnist"
    for name, checksum in MNIST_FILES.items():
        if not (folder / name).is_file() and download:
            download_and_verify(MNIST_URL + name, folder, checksum, extract=False)
    hint = " (pass download=True to fetch it)"
    images = _read_idx(require_file(folder / "t10k-images-idx3-ubyte.gz", "MNIST", hint), "images")
    labels = _read_idx(require_file(folder / "t10k-labels-idx1-ubyte.gz", "MNIST", hint), "labels")
    if images.ndim != 3 or len(images) != len(labels):
        raise CmkdError(
            f"MNIST files in {folder} disagree: images {images.shape}, labels {labels.shape}"
        )
    if labels.max(initial=0) > 9:
        raise CmkdError(f"MNIST labels in {folder} have unknown class {labels.max()}")
    ids = np.array([f"t10k_{i}" for i in range(len(labels))])
    return Samples(images[:, None], labels.astype(np.int64), ids, list(DIGITS))


def _read_idx(path: Path, kind: str) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise CmkdError(f"cannot read gzip IDX file {path}: {err}") from err
    magic = int.from_bytes(data[:4], "big")
    if len(data) < 4 or magic != _IDX_MAGIC[kind]:
        raise CmkdError(
            f"{path} is not an IDX {kind} file (magic {magic:#010x}, "
            f"expected {_IDX_MAGIC[kind]:#010x})"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(dims)):
        raise CmkdError(f"IDX file {path} is truncated or padded: header says {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
