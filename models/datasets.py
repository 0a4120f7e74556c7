"""Datasets, as float32 arrays (N, C, H, W) in [0, 1] and int64 labels.

- ``digits``: scikit-learn's 8x8 digits (ships inside scikit-learn; the embedded
  default). 1,797 images; a fixed stratified 80/20 split (random_state=0), so every
  run and every backend sees the same 360 test images.
- ``fashion-mnist``: the idx files of Debian's ``dataset-fashion-mnist`` package
  (/usr/share/datasets/fashion-mnist), else ``$SPIKEBRIDGE_DATA_DIR/fashion-mnist``
  or ``~/.cache/spikebridge/fashion-mnist``, downloading there on first use. Every
  file is checked against the SHA-256 of its decompressed content before use.

Parsing never unpickles: idx files are read with ``numpy.frombuffer`` after their
header has been validated.
"""
from __future__ import annotations

import gzip
import io
import hashlib
import os
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hardware.errors import DatasetError
from hardware.fileio import atomic_write_bytes


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    description: str
    augment: bool = False  # random crop (padding 4) + horizontal flip in training


DATASETS = {
    "digits": DatasetInfo("digits", (1, 8, 8), 10, "scikit-learn 8x8 digits, 1437 train / 360 test"),
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), 10, "Fashion-MNIST 28x28, 60000 train / 10000 test"),
}

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 and size of the decompressed idx files (identical in Debian's package and upstream).
FASHION_FILES = {
    ("train", "images"): ("train-images-idx3-ubyte.gz", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
    ("train", "labels"): ("train-labels-idx1-ubyte.gz", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
    ("test", "images"): ("t10k-images-idx3-ubyte.gz", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
    ("test", "labels"): ("t10k-labels-idx1-ubyte.gz", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(name: str, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Return (images float32 (N, C, H, W) in [0, 1], labels int64 (N,))."""
    dataset_info(name)
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}; use train or test", place=name)
    if name == "digits":
        return _digits(split)
    return _fashion(split)


def _digits(split: str):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return (xtr, ytr) if split == "train" else (xte, yte)


def _cache_dir() -> Path:
    base = os.environ.get("SPIKEBRIDGE_DATA_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "spikebridge") / "fashion-mnist"


def _read_verified(fname: str, sha: str, size: int) -> bytes:
    for folder in (DEBIAN_FASHION, _cache_dir()):
        path = folder / fname
        if path.is_file():
            return _decompress_checked(path, sha, size)
    cache = _cache_dir() / fname
    try:
        with urllib.request.urlopen(FASHION_URL + fname, timeout=60) as resp:  # noqa: S310 (fixed URL; content checked by SHA-256)
            blob = resp.read(64 * 1024 * 1024)
    except OSError as e:
        raise DatasetError(
            f"Fashion-MNIST not found in {DEBIAN_FASHION} or {_cache_dir()} and the download failed ({e}); "
            "install Debian's dataset-fashion-mnist or place the idx .gz files there", place=fname) from None
    data = _decompress_bytes(blob, fname, size)
    if hashlib.sha256(data).hexdigest() != sha:
        raise DatasetError("downloaded file failed its SHA-256 check", file=str(cache))
    atomic_write_bytes(cache, blob)
    return data


def _decompress_bytes(blob: bytes, where: str, size: int) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(blob)) as g:
            data = g.read(size + 1)  # bounded: never expands past the known size
    except (OSError, EOFError) as e:
        raise DatasetError(f"not a readable gzip file ({e})", file=where) from None
    return data


def _decompress_checked(path: Path, sha: str, size: int) -> bytes:
    data = _decompress_bytes(path.read_bytes(), str(path), size)
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
        raise DatasetError("content does not match the Fashion-MNIST SHA-256", file=str(path))
    return data


def parse_idx(data: bytes, where: str) -> np.ndarray:
    """Parse an idx (MNIST-format) file of unsigned bytes with header validation."""
    if len(data) < 4:
        raise DatasetError("idx file too short", file=where)
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4:
        raise DatasetError("bad idx magic (expected unsigned-byte data)", file=where)
    if len(data) < 4 + 4 * ndim:
        raise DatasetError("idx header truncated", file=where)
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    n = int(np.prod(dims, dtype=np.int64))
    if len(data) != 4 + 4 * ndim + n:
        raise DatasetError(f"idx size mismatch: header declares {dims}", file=where)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion(split: str):
    fi, si, ni = FASHION_FILES[(split, "images")]
    fl, sl, nl = FASHION_FILES[(split, "labels")]
    images = parse_idx(_read_verified(fi, si, ni), fi)
    labels = parse_idx(_read_verified(fl, sl, nl), fl)
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    return x, labels.astype(np.int64)
