"""Datasets, as float32 arrays (N, C, H, W) in [0, 1] and int64 labels.

- ``digits``: scikit-learn's 8x8 digits (ships inside scikit-learn; the embedded
  default). 1,797 images; a fixed stratified 80/20 split (random_state=0), so every
  run and every backend sees the same 360 test images.
- ``fashion-mnist``: the idx files of Debian's ``dataset-fashion-mnist`` package
  (/usr/share/datasets/fashion-mnist), else ``$SPIKEBRIDGE_DATA_DIR/fashion-mnist``
  or ``~/.cache/spikebridge/fashion-mnist``, downloading there on first use. Every
  file is checked against the SHA-256 of its decompressed content before use.

- ``cifar10`` / ``cifar100``: the BINARY distributions (cifar-10-binary.tar.gz,
  cifar-100-binary.tar.gz; never the pickled python version), read straight from the
  archive with ``tarfile`` + ``numpy.frombuffer`` (records of label byte(s) + 3072 bytes
  CHW; CIFAR-100 uses the fine label). 32x32x3; augmentation on.
- ``tiny-imagenet``: tiny-imagenet-200.zip; JPEGs decoded with PIL to 64x64x3, labels by
  the order of wnids.txt; the test split is the labelled ``val`` set (the official test
  labels are not public). Decoded arrays are cached as .npy (loaded with
  allow_pickle=False). Augmentation on.
  Archives live in ``$SPIKEBRIDGE_DATA_DIR/<name>`` or ``~/.cache/spikebridge/<name>`` and
  are downloaded there on first use. Each archive is checked against the official MD5
  that the dataset's page publishes and against a SHA-256: the pinned one where this
  file has it, else the one recorded next to the archive (``<archive>.sha256``) when it
  first passed the MD5 check, so a later change of the file is always caught.

- ``nmnist`` / ``dvsgesture`` / ``shd``: event datasets read from the user's local copy
  (``--data-dir``) and binned into time-major frames (T = ``--timesteps`` bins): see
  models/event_data.py and docs/datasets.md. ``load_dataset`` refuses them (they have no static
  samples); ``load_event_dataset`` / ``event_dataset_info`` read them.

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
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikebridge.base.errors import DatasetError
from spikebridge.base.fileio import atomic_save_npy, atomic_write_bytes


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    description: str
    augment: bool = False  # random crop (padding 4) + horizontal flip in training
    events: bool = False  # event recordings binned into frames (models/event_data.py)


DATASETS = {
    "digits": DatasetInfo("digits", (1, 8, 8), 10, "scikit-learn 8x8 digits, 1437 train / 360 test"),
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), 10, "Fashion-MNIST 28x28, 60000 train / 10000 test"),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, "CIFAR-10 (binary version), 50000 train / 10000 test", True),
    "cifar100": DatasetInfo("cifar100", (3, 32, 32), 100, "CIFAR-100 (binary version, fine labels), 50000 / 10000",
                            True),
    "tiny-imagenet": DatasetInfo("tiny-imagenet", (3, 64, 64), 200,
                                 "Tiny ImageNet 64x64, 100000 train / 10000 val (used as test)", True),
    # event datasets: the default input shapes (--event-size changes DVS Gesture's side and SHD's channels)
    "nmnist": DatasetInfo("nmnist", (2, 34, 34), 10, "N-MNIST events (--data-dir), 2 polarities x 34x34, "
                          "60000 / 10000", events=True),
    "dvsgesture": DatasetInfo("dvsgesture", (2, 32, 32), 11, "DVS Gesture events (--data-dir), 2 x 128x128 "
                              "downsampled to 32x32 by default, 1077 / 264 labelled intervals", events=True),
    "shd": DatasetInfo("shd", (700,), 20, "Spiking Heidelberg Digits (--data-dir), 700 channels, 8156 / 2264",
                       events=True),
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


def event_dataset_info(name: str, size: int | None = None) -> DatasetInfo:
    """The DatasetInfo of an event dataset with the input shape of ``--event-size`` ``size``."""
    from dataclasses import replace

    from spikebridge.models.event_data import input_shape

    info = dataset_info(name)
    if not info.events:
        raise DatasetError(f"{name} is not an event dataset")
    return replace(info, input_shape=input_shape(name, size))


def load_dataset(name: str, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Return (images float32 (N, C, H, W) in [0, 1], labels int64 (N,))."""
    if dataset_info(name).events:
        raise DatasetError(f"{name} is an event dataset: it has no static images (calibration, conversion and "
                           "direct encoding need them); train on it with --method snn2ann or bptt, or simulate "
                           "a graph with --dataset (docs/datasets.md)")
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}; use train or test", place=name)
    if name == "digits":
        return _digits(split)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, split)
    if name == "tiny-imagenet":
        return load_tiny_imagenet(split)
    return _fashion(split)


def _digits(split: str):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return (xtr, ytr) if split == "train" else (xte, yte)


def _cache_dir(name: str = "fashion-mnist") -> Path:
    base = os.environ.get("SPIKEBRIDGE_DATA_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "spikebridge") / name


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
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a flipped bit: zlib.error
        msg = " ".join(str(e).split())[:160] or type(e).__name__
        raise DatasetError(f"not a readable gzip file ({msg})", file=where) from None
    return data


MAX_GZ_BYTES = 64 << 20  # the largest Fashion-MNIST .gz is 26 MB


def _decompress_checked(path: Path, sha: str, size: int) -> bytes:
    from spikebridge.base.fileio import read_regular_bytes
    data = _decompress_bytes(read_regular_bytes(path, MAX_GZ_BYTES, DatasetError), str(path), size)
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


# ---- CIFAR-10/100 (binary) and Tiny ImageNet -----------------------------------------

# (url, file name, official MD5 from the dataset's page, pinned SHA-256 or None, max bytes)
ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "cifar-10-binary.tar.gz",
                "c32a1d4ab5d03f1284b67883e8d87530", None, 200 << 20),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", "cifar-100-binary.tar.gz",
                 "03b5dce01913d631647c71ecec9e9cb8", None, 200 << 20),
    "tiny-imagenet": ("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "tiny-imagenet-200.zip",
                      "90528d7ca1a48142e341f4ef8d21d0de", None, 300 << 20),
}
CIFAR_RECORD = 3072
CIFAR_MEMBERS = {
    "cifar10": {"train": [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)],
                "test": ["cifar-10-batches-bin/test_batch.bin"]},
    "cifar100": {"train": ["cifar-100-binary/train.bin"], "test": ["cifar-100-binary/test.bin"]},
}


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def archive_path(name: str) -> Path:
    """The verified archive of ``name`` (downloaded on first use)."""
    url, fname, md5, sha, max_bytes = ARCHIVES[name]
    path = _cache_dir(name) / fname
    if not path.is_file():
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (fixed URL; content checked)
                blob = resp.read(max_bytes + 1)
        except OSError as e:
            raise DatasetError(f"{name}: {fname} not found in {path.parent} and the download failed ({e}); "
                               f"download {url} and place it there", place=fname) from None
        if len(blob) > max_bytes:
            raise DatasetError(f"download larger than {max_bytes} bytes", file=url)
        if hashlib.md5(blob).hexdigest() != md5:  # noqa: S324 (the checksum the dataset publishes)
            raise DatasetError("downloaded archive failed its MD5 check", file=url)
        atomic_write_bytes(path, blob)
    pin = path.with_name(path.name + ".sha256")
    got = _digest(path, "sha256")
    want = sha or (pin.read_text().split()[0] if pin.is_file() else None)
    if want is None:
        if _digest(path, "md5") != md5:
            raise DatasetError(f"archive does not match the official {name} MD5", file=str(path))
        atomic_write_bytes(pin, f"{got}  {fname}\n".encode())
    elif got != want:
        raise DatasetError(f"archive does not match its SHA-256 {want}", file=str(path))
    return path


def parse_cifar_binary(data: bytes, label_bytes: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Records of ``label_bytes`` label byte(s) + 3072 image bytes (CHW, 32x32x3).
    The last label byte is the label (CIFAR-100's fine label). Returns (uint8 N,3,32,32; int64 N)."""
    rec = label_bytes + CIFAR_RECORD
    if len(data) == 0 or len(data) % rec:
        raise DatasetError(f"size {len(data)} is not a multiple of the {rec}-byte record", file=where)
    arr = np.frombuffer(data, dtype=np.uint8).reshape(-1, rec)
    return arr[:, label_bytes:].reshape(-1, 3, 32, 32), arr[:, label_bytes - 1].astype(np.int64)


def load_cifar(name: str, split: str, path: Path | None = None):
    import tarfile

    path = path or archive_path(name)
    label_bytes, classes = (1, 10) if name == "cifar10" else (2, 100)
    xs, ys = [], []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in CIFAR_MEMBERS[name][split]:
                try:
                    info = tar.getmember(member)
                except KeyError:
                    raise DatasetError("member missing from the archive", file=str(path), place=member) from None
                if not info.isfile() or info.size > 200 << 20:
                    raise DatasetError("not a regular file of sane size", file=str(path), place=member)
                x, y = parse_cifar_binary(tar.extractfile(info).read(), label_bytes, f"{path}:{member}")
                xs.append(x)
                ys.append(y)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"not a readable tar.gz ({e})", file=str(path)) from None
    y = np.concatenate(ys)
    if y.max(initial=0) >= classes:
        raise DatasetError(f"label {int(y.max())} out of range 0..{classes - 1}", file=str(path))
    return np.concatenate(xs).astype(np.float32) / 255.0, y


def load_tiny_imagenet(split: str, path: Path | None = None):
    """Decode tiny-imagenet-200.zip (train: train/<wnid>/images/*.JPEG; test: val/ with
    val_annotations.txt), cached as .npy next to the archive."""
    path = path or archive_path("tiny-imagenet")
    cache_x = path.with_name(f"{path.stem}-{split}-x.npy")
    cache_y = path.with_name(f"{path.stem}-{split}-y.npy")
    pin = path.with_name(path.name + ".sha256")
    stamp = path.with_name(f"{path.stem}-{split}.source")
    sha = pin.read_text().split()[0] if pin.is_file() else _digest(path, "sha256")
    if cache_x.is_file() and cache_y.is_file() and stamp.is_file() and stamp.read_text() == sha:
        x = np.load(cache_x, allow_pickle=False)
        y = np.load(cache_y, allow_pickle=False)
        return x.astype(np.float32) / 255.0, y.astype(np.int64)
    x, y = _decode_tiny(path, split)
    atomic_save_npy(cache_x, x)
    atomic_save_npy(cache_y, y)
    atomic_write_bytes(stamp, sha.encode())
    return x.astype(np.float32) / 255.0, y


# What a Tiny ImageNet archive may expand to, checked before anything is read or allocated
# (the real one: 200 classes, 100000 train / 10000 val images of ~2 KB, text members < 1 MB)
TINY_MAX_IMAGES = {"train": 100_000, "test": 10_000}
TINY_MAX_TEXT_BYTES = 4 << 20
TINY_MAX_IMAGE_BYTES = 1 << 20
TINY_MAX_MEMBERS = 200_000


def _zip_member(z, name: str, limit: int, path: Path) -> bytes:
    """A member's bytes, bounded by ``limit`` whatever its header declares."""
    info = z.getinfo(name)
    if info.file_size > limit:
        raise DatasetError(f"member declares {info.file_size} bytes, above the limit {limit}", file=str(path),
                           place=name)
    with z.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise DatasetError(f"member expands past the limit of {limit} bytes", file=str(path), place=name)
    return data


def _decode_tiny(path: Path, split: str):
    """Decode the images of ``split``. Bounded before reading or allocating: member count,
    text members (wnids.txt, val_annotations.txt) at most 4 MiB each, every image referenced
    at most once and at most 1 MiB, at most 100000 train / 10000 val images (the official
    counts), so a small crafted zip cannot expand into gigabytes of memory or cache."""
    import zipfile

    from PIL import Image

    root = "tiny-imagenet-200/"
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > TINY_MAX_MEMBERS:
                raise DatasetError(f"{len(infos)} members, above the limit {TINY_MAX_MEMBERS}", file=str(path))
            names = {i.filename for i in infos}
            if root + "wnids.txt" not in names:
                raise DatasetError("wnids.txt missing", file=str(path), place=root + "wnids.txt")
            wnids = _zip_member(z, root + "wnids.txt", TINY_MAX_TEXT_BYTES, path).decode("ascii", "replace").split()
            classes = DATASETS["tiny-imagenet"].num_classes
            if not 1 <= len(wnids) <= classes or len(set(wnids)) != len(wnids):
                raise DatasetError(f"expected 1..{classes} distinct class ids, found {len(set(wnids))} distinct of "
                                   f"{len(wnids)}", file=str(path), place=root + "wnids.txt")
            index = {w: i for i, w in enumerate(wnids)}
            items = []
            if split == "train":
                for n in sorted(names):
                    parts = n.split("/")
                    if len(parts) == 5 and parts[1] == "train" and parts[3] == "images" and n.endswith(".JPEG"):
                        if parts[2] not in index:
                            raise DatasetError("class not in wnids.txt", file=str(path), place=n)
                        items.append((n, index[parts[2]]))
            else:
                ann = root + "val/val_annotations.txt"
                if ann not in names:
                    raise DatasetError("val_annotations.txt missing", file=str(path), place=ann)
                seen = set()
                text = _zip_member(z, ann, TINY_MAX_TEXT_BYTES, path).decode("utf-8", "replace")
                for line in text.splitlines():
                    f = line.split("\t")
                    if len(f) < 2 or f[1] not in index:
                        raise DatasetError(f"bad annotation line {line[:60]!r}", file=str(path), place=ann)
                    n = root + "val/images/" + f[0]
                    if n in seen:
                        raise DatasetError(f"image {f[0][:60]!r} is annotated twice", file=str(path), place=ann)
                    seen.add(n)
                    items.append((n, index[f[1]]))
                    if len(items) > TINY_MAX_IMAGES[split]:
                        break
            if len(items) > TINY_MAX_IMAGES[split]:
                raise DatasetError(f"more than {TINY_MAX_IMAGES[split]} {split} images (the official count); "
                                   "refusing to decode", file=str(path))
            missing = [n for n, _ in items if n not in names]
            if missing:
                raise DatasetError("annotated image missing from the archive", file=str(path), place=missing[0])
            x = np.empty((len(items), 3, 64, 64), np.uint8)
            y = np.empty(len(items), np.int64)
            for i, (n, label) in enumerate(items):
                with Image.open(io.BytesIO(_zip_member(z, n, TINY_MAX_IMAGE_BYTES, path))) as im:
                    if im.size != (64, 64):
                        raise DatasetError(f"image is {im.size}, expected 64x64", file=str(path), place=n)
                    x[i] = np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
                y[i] = label
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, zlib.error, Image.DecompressionBombError) as e:
        msg = " ".join(str(e).split())[:160] or type(e).__name__
        raise DatasetError(f"not a readable Tiny ImageNet zip ({msg})", file=str(path)) from None
    return x, y
